//! The actix-web server: its per-worker app (shared data, routes, middleware in order) and its
//! settings (workers, keep-alive, the drain budget of a graceful shutdown).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};

use crate::auth::JwtKeys;
use crate::routes::input::{BodyLimit, BulkBodyLimit};
use crate::routes::middleware::{self, RateLimiters};
use crate::routes::openapi::OpenApiDocument;
use crate::routes::{self, AppState};

/// Starts serving `state`'s routes on `listener` (signals are not handled here: see
/// [`super::Application::run_until`]).
///
/// Errors: the JWT key is unusable, or the listener cannot be used.
pub(super) fn server(
    state: web::Data<AppState>,
    limiters: Arc<RateLimiters>,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let settings = &state.settings;
    let keys = web::Data::new(JwtKeys::new(
        &settings.auth.jwt_secret,
        settings.auth.access_token_ttl_s,
    )?);
    let body_limit = web::Data::new(BodyLimit(settings.http.body_limit_bytes));
    let bulk_body_limit = web::Data::new(BulkBodyLimit(settings.bulk.body_limit_bytes));
    let limiters = web::Data::new(limiters);
    let openapi = web::Data::new(OpenApiDocument::render(
        settings.bulk.max_items,
        settings.holds.timeout_s_max,
    ));
    let cors_origins = settings.http.cors_allowed_origins.clone();
    let workers = match settings.http.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // actix-web's own bound on finishing started requests: what is left of the shutdown budget
    // after the readiness delay, rounded up to whole seconds (its unit).
    let drain_budget = settings
        .http
        .shutdown_timeout()
        .saturating_sub(settings.http.shutdown_delay());
    let keep_alive = Duration::from_secs(settings.http.keep_alive_s);
    let client_request_timeout = Duration::from_millis(settings.http.client_request_timeout_ms);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(body_limit.clone())
            .app_data(bulk_body_limit.clone())
            .app_data(limiters.clone())
            .app_data(openapi.clone())
            .configure(routes::extractor_errors)
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
            // Outermost last: request id → tracing span → metrics → access log → problem+json
            // for every error → CORS → (per scope) security headers → rate limit → auth.
            .wrap(cors(&cors_origins))
            .wrap(ErrorHandlers::new().default_handler(routes::problem_for_plain_errors))
            .wrap(from_fn(middleware::access_log))
            .wrap(from_fn(routes::record_http_metrics))
            .wrap(tracing_actix_web::TracingLogger::default())
            .wrap(from_fn(middleware::request_id_layer))
    })
    .workers(workers)
    .keep_alive(keep_alive)
    .client_request_timeout(client_request_timeout)
    .shutdown_timeout(drain_budget.as_secs_f64().ceil() as u64)
    // Signals are ours (`run_until_stopped`): readiness must turn false before the listener
    // closes, and the pipeline must drain after it.
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// CORS for the configured origins (none by default): the API's methods and headers, and the
/// reply headers a browser client reads.
fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderName::from_static("idempotency-key"),
            actix_web::http::header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            actix_web::http::header::LOCATION,
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(3600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}
