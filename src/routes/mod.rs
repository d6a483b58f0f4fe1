//! The REST surface: one module per endpoint group, the shared app state, and the app-wide
//! middleware (HTTP metrics, and the error handler that turns every error reply, actix's own
//! included, into problem+json).

pub mod alerts;
pub mod auth;
pub mod balances;
pub mod bulk;
pub mod console;
pub mod events;
pub mod feed;
pub mod fx;
pub mod holds;
pub mod input;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod posting;
pub mod reversals;
pub mod schedules;
pub mod schemas;
pub mod transactions;
pub mod users;
pub mod webhooks;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, ConnectionType, StatusCode};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{web, HttpResponse, ResponseError};
use metrics_exporter_prometheus::PrometheusHandle;
use uuid::Uuid;

use crate::auth::Principal;
use crate::config::Settings;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::ledger::Ledger;
use crate::lifecycle::Lifecycle;
use crate::store::DbPool;
use crate::telemetry::names;

/// What every handler can reach.
pub struct AppState {
    /// Connections for handlers and balance loads. `pool.get()` fails fast while the database
    /// is down and records the wait in `tally_db_pool_wait_seconds{pool="api"}`.
    pub pool: DbPool,
    /// The journal writer's connections (only read here, for `/metrics`).
    pub journal_pool: DbPool,
    pub ledger: Ledger,
    /// The Redis balance cache (disabled when `redis.url` is empty).
    pub cache: std::sync::Arc<crate::cache::BalanceCache>,
    pub settings: Settings,
    pub metrics: PrometheusHandle,
    /// Draining for shutdown, and the HTTP request counters.
    pub lifecycle: Lifecycle,
    /// The ledger clock: "now" for the limits' windows and the schedules (tests drive a
    /// `clock::ManualClock`).
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
    /// The live feed's hub (`GET /ws`).
    pub feed: feed::Feed,
    /// The broker connections of queue ingestion and event publishing (`crate::amqp`).
    pub broker: std::sync::Arc<crate::amqp::BrokerStatus>,
}

/// Mounts every route: operations endpoints, `/openapi.json`, Swagger UI at `/docs/`, and
/// `/api/v1`, whose `/auth/*` is public (rate limited per client IP) and whose rest requires a
/// bearer token (then rate limited per user).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use actix_web::middleware::from_fn;
    cfg.configure(ops::configure)
        .configure(console::configure)
        .service(web::resource("/openapi.json").route(web::get().to(openapi::openapi_json)))
        .service(web::resource("/docs").route(web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, "/docs/"))
                .finish()
        })))
        .service(
            web::scope("/docs")
                .wrap(middleware::docs_security_headers())
                .service(
                    utoipa_swagger_ui::SwaggerUi::new("/{_:.*}")
                        .config(utoipa_swagger_ui::Config::from("/openapi.json")),
                ),
        )
        .service(
            web::scope("/api/v1")
                .wrap(middleware::api_security_headers())
                .service(
                    web::scope("/auth")
                        .wrap(from_fn(middleware::rate_limit_by_ip))
                        .configure(auth::configure),
                )
                // The live feed authenticates itself (a browser cannot send the header), before
                // the bearer scope, whose "" prefix would take it.
                .configure(feed::configure_socket)
                // Public (the console reads it before anyone signs in), limited per client IP.
                .service(
                    web::resource("/currencies")
                        .wrap(from_fn(middleware::rate_limit_by_ip))
                        .route(web::get().to(fx::currencies)),
                )
                .service(
                    web::scope("")
                        .wrap(from_fn(middleware::rate_limit_by_user))
                        .wrap(from_fn(crate::auth::require_bearer))
                        .service(
                            web::scope("/users")
                                .configure(users::configure)
                                .configure(limits::user_routes),
                        )
                        .service(web::scope("/limits").configure(limits::configure))
                        .service(web::scope("/alerts").configure(alerts::configure))
                        .service(web::scope("/events").configure(events::configure))
                        .service(web::scope("/webhooks").configure(webhooks::configure))
                        .configure(feed::configure)
                        .configure(fx::configure)
                        // Before the `/transactions` scope, whose `/{id}` would take it.
                        .service(
                            web::resource("/transactions/exchange")
                                .route(web::post().to(fx::exchange)),
                        )
                        .service(web::scope("/schedules").configure(schedules::configure))
                        .service(web::scope("/transactions").configure(transactions::configure))
                        .service(web::scope("/balances").configure(balances::configure)),
                ),
        );
}

/// A page of a keyset-paginated listing.
#[derive(serde::Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The user whose data a request reads: the caller, or `user_id` for an admin. Errors: 403 for
/// a non-admin naming another user.
pub fn subject(principal: Principal, user_id: Option<Uuid>) -> Result<UserId, ApiError> {
    match user_id.map(UserId::from_uuid) {
        None => Ok(principal.user),
        Some(user) if user == principal.user || principal.is_admin() => Ok(user),
        Some(_) => Err(ApiError::Forbidden(
            "only an admin may read another user's data",
        )),
    }
}

/// Fallback for paths no route matches: 404 problem.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such resource"))
}

/// Error handler for the whole app: an error reply that is not already JSON (actix's own 404,
/// 405, 413, bad path or query) is replaced by the problem for its status. JSON replies pass:
/// problems, and the readiness probe's 503 body.
pub fn problem_for_plain_errors<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| {
            let value = value.as_bytes();
            value.starts_with(b"application/problem+json") || value.starts_with(b"application/json")
        });
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let error = match res.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound("no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit_bytes: 0 },
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized("authentication required"),
        StatusCode::FORBIDDEN => ApiError::Forbidden("forbidden"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        status if status.is_server_error() => {
            ApiError::Internal(anyhow::anyhow!("{status} from the framework"))
        }
        _ => ApiError::MalformedRequest("the request could not be understood".into()),
    };
    let (req, original) = res.into_parts();
    let mut response = error.error_response();
    // Keep the headers the layers inside added (security headers, CORS); only the body and its
    // type are replaced.
    let own: Vec<header::HeaderName> = response.headers().keys().cloned().collect();
    for (name, value) in original.headers() {
        if !own.contains(name) && name != header::CONTENT_LENGTH {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

/// Rejects a bad path or query string with 404 (path) or 422 (query) problems instead of
/// actix's plain text.
pub fn extractor_errors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|_, _| ApiError::NotFound("no such resource").into()),
    )
    .app_data(web::QueryConfig::default().error_handler(|error, _| {
        ApiError::Validation(vec![crate::error::FieldError::new(
            "query",
            error.to_string(),
        )])
        .into()
    }));
}

/// Middleware: counts requests and records their duration by method, route template (not the
/// raw path, so ids do not explode the label set) and status (the access line is
/// `middleware::access_log`). While the process
/// drains for shutdown, every response closes its connection, so that keep-alive clients move
/// on instead of holding the server open.
pub async fn record_http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    if let Some(state) = &state {
        state.lifecycle.request_started();
    }
    let mut result = next.call(req).await;
    if let Some(state) = &state {
        state.lifecycle.request_finished();
        if state.lifecycle.is_draining() {
            if let Ok(response) = &mut result {
                response
                    .response_mut()
                    .head_mut()
                    .set_connection_type(ConnectionType::Close);
            }
        }
    }
    let (route, status) = match &result {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned()),
            response.status(),
        ),
        Err(error) => (
            "unmatched".to_owned(),
            error.as_response_error().status_code(),
        ),
    };
    metrics::counter!(names::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string())
        .increment(1);
    let elapsed = started.elapsed();
    metrics::histogram!(names::HTTP_DURATION_SECONDS, "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
    result
}

/// Records an audit entry with the request's client IP and request id merged into `details`.
/// A failure to write it is logged, not returned: the action it describes has already happened.
pub async fn audit(
    client: &impl deadpool_postgres::GenericClient,
    req: &actix_web::HttpRequest,
    actor: Option<UserId>,
    entity: (&'static str, Option<String>),
    action: &'static str,
    details: serde_json::Value,
) {
    if let Err(error) = audit_in_transaction(client, req, actor, entity, action, details).await {
        tracing::error!(%error, action, "could not write the audit log");
    }
}

/// Writes the event of a change (`action` on the stream `<entity>:<id>`, with `payload`, which
/// names the owner's `user_id` so that the owner's scope holds it) and its audit entry, both in
/// `transaction`: the change, its event and its audit entry commit together (invariant 12).
pub async fn record_change(
    transaction: &deadpool_postgres::Transaction<'_>,
    req: &actix_web::HttpRequest,
    actor: UserId,
    entity: (&'static str, Uuid),
    action: &'static str,
    payload: serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    let (kind, id) = entity;
    crate::store::limits::record_event(transaction, &format!("{kind}:{id}"), action, &payload)
        .await?;
    audit_in_transaction(
        transaction,
        req,
        Some(actor),
        (kind, Some(id.to_string())),
        action,
        payload,
    )
    .await
}

/// Like [`audit`], for an entry written in the transaction of the change it records: the error
/// is returned, so the change is not committed unaudited (a failed statement aborts the
/// transaction, and PostgreSQL answers a `COMMIT` of an aborted transaction with a rollback,
/// not an error).
pub async fn audit_in_transaction(
    client: &impl deadpool_postgres::GenericClient,
    req: &actix_web::HttpRequest,
    actor: Option<UserId>,
    entity: (&'static str, Option<String>),
    action: &'static str,
    mut details: serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    if let Some(object) = details.as_object_mut() {
        object.insert(
            "ip".into(),
            middleware::client_ip(req).map_or(serde_json::Value::Null, |ip| ip.to_string().into()),
        );
        object.insert("request_id".into(), middleware::request_id(req).into());
    }
    let entry = crate::store::audit::AuditEntry {
        entity_type: entity.0,
        entity_id: entity.1,
        action,
        actor,
        details: &details,
    };
    crate::store::audit::record(client, entry).await
}
