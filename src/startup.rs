//! Builds the application: database (created and migrated), pools, the database health
//! monitor, the ledger pipeline, and the HTTP server bound to `http.bind`. Tests call
//! [`Application::build`] with port 0 and read the port back.
//!
//! Shutdown ([`Application::run_until`]), in this order, all within `http.shutdown_timeout_ms`
//! of the signal:
//! 1. readiness turns 503 (`shutting_down`) and every response closes its connection;
//! 2. after `http.shutdown_delay_ms` (load balancers notice), the listener closes and the HTTP
//!    server finishes the requests it has started (each waits for its commit, so the pipeline
//!    flushes their batches);
//! 3. the ledger refuses new submissions and waits until every admitted one is answered;
//! 4. background tasks stop, the pools close, and spans are flushed.
//!
//! It ends with one `shutdown complete` log line with the HTTP requests started and finished;
//! when time ran out first it returns an error (the process exits non-zero).

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::ledger::Ledger;
use crate::lifecycle::Lifecycle;
use crate::routes::input::{BodyLimit, BulkBodyLimit};
use crate::routes::middleware::{self, RateLimiters};
use crate::routes::openapi::OpenApiDocument;
use crate::routes::{self, AppState};
use crate::store::{self, DatabaseHealth, DbPool};
use crate::telemetry::TelemetryGuard;

/// How often the rate limiters forget clients whose buckets are full again.
const RATE_LIMITER_CLEANUP_PERIOD: Duration = Duration::from_secs(60);
/// How often the histograms' recorded samples are folded into their buckets. The Prometheus
/// recorder keeps every sample until then (metrics-exporter-prometheus `run_upkeep`): without
/// it, memory grows with every request between scrapes.
const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(1);
/// How often expired idempotency keys are swept.
const IDEMPOTENCY_SWEEP_PERIOD: Duration = Duration::from_secs(3600);
/// Time kept for flushing spans at the end of a shutdown, when spans are exported.
const SPAN_FLUSH_BUDGET: Duration = Duration::from_millis(1000);

/// A built, bound, not yet running Tally.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    health_pool: deadpool_postgres::Pool,
    background: Vec<tokio::task::JoinHandle<()>>,
    telemetry: Option<TelemetryGuard>,
}

impl Application {
    /// Prepares the database, starts the health monitor and the pipeline actors, and binds the
    /// HTTP listener. Must run inside an actix `System` (`#[actix_web::main]`,
    /// `#[actix_web::test]`).
    ///
    /// Errors: the database cannot be reached or migrated, the address cannot be bound, or the
    /// settings are invalid.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        // Bind first: a taken port fails fast, before any actor or pool exists.
        let listener = TcpListener::bind(&settings.http.bind)
            .with_context(|| format!("binding {}", settings.http.bind))?;
        let address = listener.local_addr().context("reading the bound address")?;
        // Then metrics: the pools and actors below register their metric handles with it.
        let metrics = crate::telemetry::metrics_handle()?;
        store::prepare_database(&settings.database).await?;
        let health = DatabaseHealth::new();
        // One connection per concurrent commit, plus one to reconnect with while a dead
        // connection is being recycled.
        let journal_pool_size = settings.pipeline.commit_concurrency + 1;
        let api_pool_size = settings
            .database
            .pool_size
            .saturating_sub(journal_pool_size)
            .max(1);
        let pool = DbPool::new(
            store::pool(&settings.database, store::APP_NAME, api_pool_size)?,
            health.clone(),
            "api",
        );
        let journal_pool = DbPool::new(
            store::journal_pool(&settings.database, journal_pool_size)?,
            health.clone(),
            "journal",
        );
        let health_pool = store::pool(&settings.database, store::HEALTH_APP_NAME, 1)?;
        let cache = crate::cache::BalanceCache::new(&settings.redis)?;
        let ledger = Ledger::start(
            &settings.pipeline,
            Arc::new(settings.ledger.bounds()?),
            pool.clone(),
            journal_pool.clone(),
            cache.clone(),
        );
        let keys = web::Data::new(JwtKeys::new(
            &settings.auth.jwt_secret,
            settings.auth.access_token_ttl_s,
        )?);
        let body_limit = web::Data::new(BodyLimit(settings.http.body_limit_bytes));
        let bulk_body_limit = web::Data::new(BulkBodyLimit(settings.bulk.body_limit_bytes));
        let limiters = web::Data::new(RateLimiters::new(&settings.rate_limit)?);
        let openapi = web::Data::new(OpenApiDocument::render(settings.bulk.max_items));
        let cors_origins = settings.http.cors_allowed_origins.clone();
        bootstrap_admin(pool.inner(), &settings.bootstrap).await?;
        let workers = match settings.http.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let background = vec![
            store::health::spawn_monitor(
                health,
                health_pool.clone(),
                settings.database.health_check_interval(),
                settings.database.connect_timeout(),
            ),
            spawn_idempotency_sweeper(pool.inner().clone(), settings.idempotency.retention_hours),
            spawn_rate_limiter_cleanup(limiters.get_ref().clone()),
            spawn_metrics_upkeep(metrics.clone()),
            spawn_cache_warm_up(
                pool.inner().clone(),
                cache.clone(),
                settings.redis.warm_up_users,
            ),
        ];
        // actix-web's own bound on finishing started requests: what is left of the shutdown
        // budget after the readiness delay, rounded up to whole seconds (its unit).
        let drain_budget = settings
            .http
            .shutdown_timeout()
            .saturating_sub(settings.http.shutdown_delay());
        let keep_alive = Duration::from_secs(settings.http.keep_alive_s);
        let state = web::Data::new(AppState {
            pool,
            journal_pool,
            ledger,
            cache,
            settings,
            metrics,
            lifecycle: Lifecycle::default(),
        });

        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
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
        .shutdown_timeout(drain_budget.as_secs_f64().ceil() as u64)
        // Signals are ours (`run_until_stopped`): readiness must turn false before the
        // listener closes, and the pipeline must drain after it.
        .disable_signals()
        .listen(listener)?
        .run();
        tracing::info!(address = %address, "listening");
        Ok(Application {
            port: address.port(),
            server,
            state,
            health_pool,
            background,
            telemetry: None,
        })
    }

    /// Flushes `guard`'s spans as the last step of the shutdown, within its budget.
    pub fn with_telemetry(mut self, guard: TelemetryGuard) -> Application {
        self.telemetry = Some(guard);
        self
    }

    /// The bound port (useful when `http.bind` asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully (see the module docs).
    ///
    /// Errors: the server failed, or the shutdown did not finish within
    /// `http.shutdown_timeout_ms` (requests or transactions were left unanswered).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then shuts down gracefully (see the module docs). Tests
    /// pass `std::future::pending()` to serve until the test ends.
    ///
    /// Errors: as [`Application::run_until_stopped`].
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            server,
            state,
            health_pool,
            background,
            telemetry,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let settings = &state.settings.http;
        let mut budget = settings.shutdown_timeout();
        if telemetry.is_some() {
            budget = budget.saturating_sub(SPAN_FLUSH_BUDGET);
        }
        // An HTTP server that stops by itself (an I/O failure) still gets the pipeline drained;
        // its error is returned at the end.
        let mut server_error = None;
        let signalled = tokio::select! {
            result = &mut server => {
                server_error = result.err();
                false
            }
            () = stop => true,
        };
        let started = Instant::now();
        let deadline = started + budget;
        state.lifecycle.begin_drain();
        if signalled {
            tracing::info!(
                delay_ms = settings.shutdown_delay_ms,
                timeout_ms = settings.shutdown_timeout_ms,
                requests_in_flight = state.lifecycle.requests_in_flight(),
                transactions_in_flight = state.ledger.in_flight(),
                "shutting down: readiness is now false"
            );
            // The server future runs the server's command loop: keep polling it throughout.
            let still_serving = tokio::select! {
                result = &mut server => {
                    server_error = result.err();
                    false
                }
                () = tokio::time::sleep(settings.shutdown_delay()) => true,
            };
            if still_serving {
                // Sends the command now; the server future carries it out: the listener closes,
                // started requests finish (actix-web force-closes what is left after its
                // shutdown timeout).
                tracing::info!(
                    requests_in_flight = state.lifecycle.requests_in_flight(),
                    transactions_in_flight = state.ledger.in_flight(),
                    "closing the listener"
                );
                drop(handle.stop(true));
                match tokio::time::timeout_at(deadline.into(), &mut server).await {
                    Ok(result) => server_error = result.err(),
                    Err(_) => tracing::warn!("the HTTP server did not stop in time"),
                }
            }
        }
        let http_stopped_ms = started.elapsed().as_millis() as u64;
        let drained = state
            .ledger
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await;
        for task in background {
            task.abort();
        }
        state.pool.close();
        state.journal_pool.close();
        health_pool.close();
        let (requests_started, requests_finished) = state.lifecycle.requests();
        let unanswered_requests = requests_started.saturating_sub(requests_finished);
        let unanswered_transactions = drained.err().unwrap_or(0);
        tracing::info!(
            requests_started,
            requests_finished,
            unanswered_requests,
            unanswered_transactions,
            http_stopped_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown complete"
        );
        if let Some(telemetry) = telemetry {
            telemetry.shutdown(SPAN_FLUSH_BUDGET);
        }
        if let Some(error) = server_error {
            return Err(error).context("the HTTP server failed");
        }
        anyhow::ensure!(
            unanswered_requests == 0 && unanswered_transactions == 0,
            "shutdown timed out: {unanswered_requests} HTTP requests and \
             {unanswered_transactions} transactions were left unanswered"
        );
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}

/// Deletes idempotency keys older than the retention, hourly. Failures are logged and retried at
/// the next tick.
fn spawn_idempotency_sweeper(
    pool: deadpool_postgres::Pool,
    retention_hours: u64,
) -> tokio::task::JoinHandle<()> {
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
    })
}
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

fn spawn_rate_limiter_cleanup(
    limiters: std::sync::Arc<RateLimiters>,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(RATE_LIMITER_CLEANUP_PERIOD);
        loop {
            ticks.tick().await;
            limiters.retain_recent();
        }
    })
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
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        if cache.health() == crate::cache::CacheHealth::Disabled || users == 0 {
            return;
        }
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
    })
}

/// Folds recorded histogram samples into buckets every `METRICS_UPKEEP_PERIOD`, so memory stays
/// flat however long it is between scrapes.
fn spawn_metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(METRICS_UPKEEP_PERIOD);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    })
}
