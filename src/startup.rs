//! Builds the application: database (created and migrated), pools, the ledger pipeline, and the
//! HTTP server bound to `http.bind`. Tests call [`Application::build`] with port 0 and read the
//! port back.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::ledger::Ledger;
use crate::routes::input::{BodyLimit, BulkBodyLimit};
use crate::routes::middleware::{self, RateLimiters};
use crate::routes::openapi::OpenApiDocument;
use crate::routes::{self, AppState};
use crate::store;

/// Connections reserved for the journal writer: it uses one at a time; the second lets it
/// reconnect while a dead connection is being recycled.
const JOURNAL_POOL_SIZE: usize = 2;
/// How often the rate limiters forget clients whose buckets are full again.
const RATE_LIMITER_CLEANUP_PERIOD: Duration = Duration::from_secs(60);
/// How often expired idempotency keys are swept.
const IDEMPOTENCY_SWEEP_PERIOD: Duration = Duration::from_secs(3600);

/// A built, bound, not yet running Tally.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Prepares the database, starts the pipeline actors and binds the HTTP listener. Must run
    /// inside an actix `System` (`#[actix_web::main]`, `#[actix_web::test]`).
    ///
    /// Errors: the database cannot be reached or migrated, the address cannot be bound, or the
    /// settings are invalid.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        // Bind first: a taken port fails fast, before any actor or pool exists.
        let listener = TcpListener::bind(&settings.http.bind)
            .with_context(|| format!("binding {}", settings.http.bind))?;
        let address = listener.local_addr().context("reading the bound address")?;
        store::prepare_database(&settings.database).await?;
        let api_pool_size = settings
            .database
            .pool_size
            .saturating_sub(JOURNAL_POOL_SIZE)
            .max(1);
        let pool = store::pool(&settings.database, store::APP_NAME, api_pool_size)?;
        let journal_pool = store::pool(
            &settings.database,
            store::JOURNAL_APP_NAME,
            JOURNAL_POOL_SIZE,
        )?;
        let cache = crate::cache::BalanceCache::new(&settings.redis)?;
        let ledger = Ledger::start(
            &settings.pipeline,
            pool.clone(),
            journal_pool.clone(),
            cache.clone(),
        );
        let keys = web::Data::new(JwtKeys::new(
            &settings.auth.jwt_secret,
            settings.auth.access_token_ttl_s,
        )?);
        let metrics = crate::telemetry::metrics_handle()?;

        let body_limit = web::Data::new(BodyLimit(settings.http.body_limit_bytes));
        let bulk_body_limit = web::Data::new(BulkBodyLimit(settings.bulk.body_limit_bytes));
        let limiters = web::Data::new(RateLimiters::new(&settings.rate_limit)?);
        let openapi = web::Data::new(OpenApiDocument::render());
        let cors_origins = settings.http.cors_allowed_origins.clone();
        bootstrap_admin(&pool, &settings.bootstrap).await?;
        spawn_rate_limiter_cleanup(limiters.get_ref().clone());
        let workers = match settings.http.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        spawn_idempotency_sweeper(pool.clone(), settings.idempotency.retention_hours);
        spawn_cache_warm_up(pool.clone(), cache.clone(), settings.redis.warm_up_users);
        let state = web::Data::new(AppState {
            pool,
            journal_pool,
            ledger,
            cache,
            settings,
            metrics,
        });

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
        .listen(listener)?
        .run();
        tracing::info!(address = %address, "listening");
        Ok(Application {
            port: address.port(),
            server,
        })
    }

    /// The bound port (useful when `http.bind` asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Deletes idempotency keys older than the retention, hourly. Failures are logged and retried at
/// the next tick.
fn spawn_idempotency_sweeper(pool: deadpool_postgres::Pool, retention_hours: u64) {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(IDEMPOTENCY_SWEEP_PERIOD);
        loop {
            ticks.tick().await;
            let swept = async {
                let client = pool.get().await?;
                anyhow::Ok(store::idempotency::expire(&client, retention_hours).await?)
            };
            match swept.await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "expired idempotency keys"),
                Err(error) => tracing::warn!(error = ?error, "idempotency key sweep failed"),
            }
        }
    });
}

/// CORS: only the configured origins, the API's methods and headers; replies expose the
/// headers clients need (request id, location, retry hints, idempotent replay).
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

fn spawn_rate_limiter_cleanup(limiters: std::sync::Arc<RateLimiters>) {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(RATE_LIMITER_CLEANUP_PERIOD);
        loop {
            ticks.tick().await;
            limiters.retain_recent();
        }
    });
}

/// Creates the configured bootstrap admin when all of its settings are given.
async fn bootstrap_admin(
    pool: &deadpool_postgres::Pool,
    settings: &crate::config::BootstrapSettings,
) -> anyhow::Result<()> {
    let values = [
        &settings.admin_username,
        &settings.admin_email,
        &settings.admin_password,
    ];
    if values.iter().all(|value| value.is_empty()) {
        return Ok(());
    }
    anyhow::ensure!(
        values.iter().all(|value| !value.is_empty()),
        "bootstrap.admin_username, admin_email and admin_password must be set together"
    );
    let created = crate::auth::create_admin(
        pool,
        &settings.admin_username,
        &settings.admin_email,
        &settings.admin_password,
    )
    .await?;
    if created {
        tracing::info!(username = %settings.admin_username, "bootstrap admin created");
    }
    Ok(())
}

/// Loads the balances of the most recently active users into the cache, in the background.
fn spawn_cache_warm_up(
    pool: deadpool_postgres::Pool,
    cache: std::sync::Arc<crate::cache::BalanceCache>,
    users: u32,
) {
    if cache.health() == crate::cache::CacheHealth::Disabled || users == 0 {
        return;
    }
    actix_web::rt::spawn(async move {
        let warmed = async {
            let client = pool.get().await?;
            let active = store::balances::recently_active_users(&client, i64::from(users)).await?;
            for user in &active {
                if let crate::cache::Lookup::Miss(token) = cache.get(*user).await {
                    let records = store::balances::for_user(&client, *user, None).await?;
                    cache.fill(*user, &records, token).await;
                }
            }
            anyhow::Ok(active.len())
        };
        match warmed.await {
            Ok(count) => tracing::info!(users = count, "balance cache warmed up"),
            Err(error) => tracing::warn!(error = ?error, "balance cache warm-up failed"),
        }
    });
}
