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
//! 3. queue ingestion stops (requests in flight are answered, the rest stay queued) and so does
//!    event publishing;
//! 4. the ledger refuses new submissions and waits until every admitted one is answered;
//! 5. background tasks stop, the pools close, and spans are flushed.
//!
//! It ends with one `shutdown complete` log line with the HTTP requests started and finished;
//! when time ran out first it returns an error (the process exits non-zero).

mod background;
mod http;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::web;
use anyhow::Context;

use crate::config::Settings;
use crate::ledger::Ledger;
use crate::lifecycle::Lifecycle;
use crate::routes::middleware::RateLimiters;
use crate::routes::AppState;
use crate::store::{self, DatabaseHealth, DbPool};
use crate::telemetry::TelemetryGuard;

/// Time kept for flushing spans at the end of a shutdown, when spans are exported.
const SPAN_FLUSH_BUDGET: Duration = Duration::from_millis(1000);

/// A built, bound, not yet running Tally.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    health_pool: deadpool_postgres::Pool,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Queue ingestion and event publishing, stopped before the ledger drains.
    broker: BrokerTasks,
    telemetry: Option<TelemetryGuard>,
}

/// The broker tasks (`crate::amqp`) and the signal that stops them: the ingestion consumers,
/// each on an arbiter (thread) of its own, and the event publisher.
struct BrokerTasks {
    stop: tokio::sync::watch::Sender<bool>,
    /// Each consumer's arbiter, and the signal that its consumer returned.
    consumers: Vec<(actix::Arbiter, tokio::sync::oneshot::Receiver<()>)>,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl BrokerTasks {
    /// Stops consuming (requests in flight are answered and acknowledged, the rest go back to
    /// the queue) and publishing, waiting until `deadline` at most.
    async fn stop(self, deadline: Instant) {
        self.stop.send_replace(true);
        for (arbiter, done) in self.consumers {
            let _ = tokio::time::timeout_at(deadline.into(), done).await;
            arbiter.stop();
        }
        if let Some(mut publisher) = self.publisher {
            if tokio::time::timeout_at(deadline.into(), &mut publisher)
                .await
                .is_err()
            {
                publisher.abort();
            }
        }
    }
}

/// Starts queue ingestion (`amqp.consumers` consumers) and event publishing when `amqp.url` is
/// set, each as configured.
fn spawn_broker_tasks(state: &web::Data<AppState>) -> BrokerTasks {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let amqp = &state.settings.amqp;
    let mut consumers = Vec::new();
    if amqp.enabled() && amqp.ingest {
        for _ in 0..amqp.consumers {
            // The handlers' futures are not `Send`: each consumer runs on its arbiter's thread.
            let arbiter = actix::Arbiter::new();
            let (done, finished) = tokio::sync::oneshot::channel();
            let (state, status, stopped) = (state.clone(), state.broker.clone(), stopped.clone());
            arbiter.spawn_fn(move || {
                actix_web::rt::spawn(async move {
                    crate::amqp::ingest::run(state, status, stopped).await;
                    let _ = done.send(());
                });
            });
            consumers.push((arbiter, finished));
        }
    }
    let publisher = (amqp.enabled() && amqp.publish_events).then(|| {
        actix_web::rt::spawn(crate::amqp::cdc::run(
            state.settings.clone(),
            state.broker.clone(),
            stopped,
        ))
    });
    BrokerTasks {
        stop,
        consumers,
        publisher,
    }
}

impl Application {
    /// Prepares the database, starts the health monitor and the pipeline actors, and binds the
    /// HTTP listener. Must run inside an actix `System` (`#[actix_web::main]`,
    /// `#[actix_web::test]`).
    ///
    /// Errors: the database cannot be reached or migrated, the address cannot be bound, or the
    /// settings are invalid.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        Application::build_with_clock(settings, Arc::new(crate::clock::SystemClock)).await
    }

    /// [`Application::build`] with the clock the ledger reads "now" from: the windows of the
    /// configured limits, quotes and rates, and the schedules (tests drive a
    /// `clock::ManualClock`).
    ///
    /// Errors: as [`Application::build`].
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> anyhow::Result<Application> {
        settings.validate()?;
        // Bind first: a taken port fails fast, before any actor or pool exists.
        let listener = TcpListener::bind(&settings.http.bind)
            .with_context(|| format!("binding {}", settings.http.bind))?;
        let address = listener.local_addr().context("reading the bound address")?;
        // Then metrics: the pools and actors below register their metric handles with it.
        let metrics = crate::telemetry::metrics_handle()?;
        store::prepare_database(&settings.database).await?;
        let pools = Pools::open(&settings)?;
        seed_limit_defaults(pools.api.inner(), &settings.limits).await?;
        let cache = crate::cache::BalanceCache::new(&settings.redis)?;
        let ledger = Ledger::start(
            &settings.pipeline,
            (Arc::new(settings.ledger.bounds()?), clock.clone()),
            pools.api.clone(),
            pools.journal.clone(),
            cache.clone(),
        );
        bootstrap_admin(pools.api.inner(), &settings.bootstrap).await?;
        let limiters = RateLimiters::new(&settings.rate_limit)?;
        let mut background = background::spawn_all(
            &settings,
            pools.api.inner(),
            &ledger,
            &cache,
            &limiters,
            &metrics,
            &clock,
        );
        background.push(store::health::spawn_monitor(
            pools.health,
            pools.health_pool.clone(),
            settings.database.health_check_interval(),
            settings.database.connect_timeout(),
        ));
        // The live feed starts at the live position, read now so that a connection made as
        // soon as `build` returns has a position (`feed::hub::GoLive`).
        let feed_start = {
            let client = pools
                .api
                .inner()
                .get()
                .await
                .context("a connection to read the event log's live position")?;
            store::events::live_position(&**client)
                .await
                .context("reading the event log's live position")?
        };
        let listening = Arc::new(tokio::sync::Notify::new());
        let hub = actix::Actor::start(crate::feed::Hub::new(
            &settings.feed,
            feed_start,
            listening.clone(),
        ));
        background.push(crate::feed::tailer::spawn(
            settings.database.clone(),
            settings.feed.clone(),
            hub.clone(),
            listening,
            feed_start,
        ));
        let settings_amqp_enabled = settings.amqp.enabled();
        let broker_consumers = if settings.amqp.ingest {
            settings.amqp.consumers
        } else {
            0
        };
        let state = web::Data::new(AppState {
            pool: pools.api,
            journal_pool: pools.journal,
            ledger,
            cache,
            settings,
            metrics,
            lifecycle: Lifecycle::default(),
            clock,
            feed: crate::routes::feed::Feed { hub },
            broker: Arc::new(crate::amqp::BrokerStatus::new(
                settings_amqp_enabled,
                broker_consumers,
            )),
        });
        // The schedule executor builds movements as the request handlers do, from the state.
        background.push(background::spawn_schedule_executor(state.clone()));
        let broker = spawn_broker_tasks(&state);
        let server = http::server(state.clone(), limiters, listener)?;
        tracing::info!(address = %address, "listening");
        Ok(Application {
            port: address.port(),
            server,
            state,
            health_pool: pools.health_pool,
            background,
            broker,
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
            broker,
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
                close_feed(&state).await;
                drop(handle.stop(true));
                match tokio::time::timeout_at(deadline.into(), &mut server).await {
                    Ok(result) => server_error = result.err(),
                    Err(_) => tracing::warn!("the HTTP server did not stop in time"),
                }
            }
        }
        if !signalled {
            close_feed(&state).await;
        }
        let http_stopped_ms = started.elapsed().as_millis() as u64;
        // No request may come from the queue once the ledger drains.
        broker.stop(deadline).await;
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

/// Tells every live feed connection to close (1001, with the cursor to resume from) and refuses
/// new ones: the HTTP server's graceful stop waits for open responses, and a feed's never ends by
/// itself.
async fn close_feed(state: &AppState) {
    match state.feed.hub.send(crate::feed::Shutdown).await {
        Ok(open) => tracing::info!(connections = open, "closing the live feed's connections"),
        Err(error) => tracing::warn!(%error, "the live feed's hub is gone"),
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

/// The three connection pools of an instance, all reporting to one [`DatabaseHealth`].
struct Pools {
    /// Requests' reads and writes outside the group commit.
    api: DbPool,
    /// The journal writer's: one connection per concurrent commit, plus one to reconnect with
    /// while a dead connection is being recycled.
    journal: DbPool,
    /// The health monitor's single connection (never queued behind requests).
    health_pool: deadpool_postgres::Pool,
    health: DatabaseHealth,
}

impl Pools {
    /// Errors: `database.url` is not a valid connection string.
    fn open(settings: &Settings) -> anyhow::Result<Pools> {
        let health = DatabaseHealth::new();
        let journal_size = settings.pipeline.commit_concurrency + 1;
        let api_size = settings
            .database
            .pool_size
            .saturating_sub(journal_size)
            .max(1);
        Ok(Pools {
            api: DbPool::new(
                store::pool(&settings.database, store::APP_NAME, api_size)?,
                health.clone(),
                "api",
            ),
            journal: DbPool::new(
                store::journal_pool(&settings.database, journal_size)?,
                health.clone(),
                "journal",
            ),
            health_pool: store::pool(&settings.database, store::HEALTH_APP_NAME, 1)?,
            health,
        })
    }
}

/// Creates the configured bootstrap admin when all of its settings are given.
/// Writes `limits.defaults` into a database started for the first time (see
/// `store::limits::seed_defaults`); a database seeded before keeps what it has.
///
/// Errors: the database cannot be reached or written.
async fn seed_limit_defaults(
    pool: &deadpool_postgres::Pool,
    settings: &crate::config::LimitsSettings,
) -> anyhow::Result<()> {
    let defaults = settings.defaults()?;
    let mut client = pool
        .get()
        .await
        .context("a connection to seed the default limits")?;
    if store::limits::seed_defaults(&mut client, &defaults)
        .await
        .context("seeding the default limits")?
    {
        tracing::info!(
            limits = defaults.len(),
            "default limits seeded from limits.defaults"
        );
    }
    Ok(())
}

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
