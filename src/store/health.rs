//! Whether the database can be reached, and the connection pool that consults it.
//!
//! A dedicated connection (`application_name = tally-health`) pings PostgreSQL every
//! `database.health_check_interval_ms`. While the ping fails, [`DatabaseHealth`] says "down":
//! readiness answers 503, the ledger refuses writes at once, and [`DbPool::get`] fails without
//! trying to connect, so requests fail fast with 503 instead of piling up behind connect
//! attempts. Any caller that fails to open a new connection marks the database down at once;
//! only a successful ping marks it up again, so Tally recovers by itself when the database
//! returns. A connection that breaks while the server stays reachable (a terminated backend)
//! does not count: the pool simply opens a new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, PoolError, Status, TimeoutType};

use crate::telemetry::names;

/// The shared "is the database reachable" flag. Cheap to clone; reads are one atomic load.
#[derive(Debug, Clone)]
pub struct DatabaseHealth {
    up: Arc<AtomicBool>,
}

impl Default for DatabaseHealth {
    fn default() -> Self {
        DatabaseHealth::new()
    }
}

impl DatabaseHealth {
    /// Starts "up": the application has just connected and migrated.
    pub fn new() -> DatabaseHealth {
        DatabaseHealth {
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records that a new connection could not be opened. Logs the transition only.
    pub fn mark_down(&self, cause: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %cause, "database unreachable: refusing writes until it answers again");
        }
    }

    /// Records a successful ping. Logs the transition only.
    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("database reachable again");
        }
    }
}

/// Pings through `pool` (one connection, kept open) every `interval` until the returned task is
/// aborted. A failed ping is retried at once on a fresh connection before the database is
/// declared down, so a single broken connection is not an outage. Each ping is bounded by
/// `timeout` (the connect timeout: a blackholed server must not stall the monitor).
pub fn spawn_monitor(
    health: DatabaseHealth,
    pool: Pool,
    interval: Duration,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut outcome = ping(&pool, timeout).await;
            if outcome.is_err() {
                outcome = ping(&pool, timeout).await;
            }
            match outcome {
                Ok(()) => health.mark_up(),
                Err(error) => health.mark_down(&error),
            }
        }
    })
}

/// `SELECT 1` on a pooled connection, within `timeout`. A connection that failed is detached
/// from the pool so that the next ping opens a new one.
async fn ping(pool: &Pool, timeout: Duration) -> anyhow::Result<()> {
    let attempt = async {
        let client = pool.get().await?;
        if let Err(error) = client.simple_query("SELECT 1").await {
            drop(deadpool_postgres::Object::take(client));
            return Err(anyhow::Error::new(error).context("database did not answer"));
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("database ping timed out after {timeout:?}"),
    }
}

/// Why no connection was handed out.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The health check says the database is unreachable; no connection was attempted.
    #[error("the database is unreachable")]
    DatabaseDown,
    /// The pool could not provide a connection (wait timeout, connect failure, closed pool).
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A connection pool that fails fast while the database is down and records how long callers
/// wait for a connection (`tally_db_pool_wait_seconds{pool}`) and why they got none
/// (`tally_db_pool_errors_total{pool, reason}`). Cheap to clone.
#[derive(Clone)]
pub struct DbPool {
    pool: Pool,
    health: DatabaseHealth,
    wait_seconds: metrics::Histogram,
    errors: PoolErrorCounters,
}

/// `tally_db_pool_errors_total{pool, reason}`, registered once per pool.
#[derive(Clone)]
struct PoolErrorCounters {
    /// Refused without trying: the health check says the database is down.
    database_down: metrics::Counter,
    /// Every connection stayed busy for `database.acquire_timeout_ms`.
    timeout: metrics::Counter,
    /// A new connection could not be opened.
    connect: metrics::Counter,
    /// The pool is closed (shutdown).
    closed: metrics::Counter,
}

impl DbPool {
    /// Wraps `pool`; `name` is the `pool` label of its metrics (`api`, `journal`). The metrics
    /// recorder must be installed first (`telemetry::metrics_handle`).
    pub fn new(pool: Pool, health: DatabaseHealth, name: &'static str) -> DbPool {
        let errors = |reason: &'static str| metrics::counter!(names::DB_POOL_ERRORS, "pool" => name, "reason" => reason);
        DbPool {
            pool,
            health,
            wait_seconds: metrics::histogram!(names::DB_POOL_WAIT_SECONDS, "pool" => name),
            errors: PoolErrorCounters {
                database_down: errors("database_down"),
                timeout: errors("timeout"),
                connect: errors("connect"),
                closed: errors("closed"),
            },
        }
    }

    /// A pooled connection.
    ///
    /// Errors: [`AcquireError::DatabaseDown`] at once while the health check fails;
    /// [`AcquireError::Pool`] when no connection comes within `database.acquire_timeout_ms` or
    /// a new one cannot be opened (which also marks the database down).
    pub async fn get(&self) -> Result<deadpool_postgres::Client, AcquireError> {
        if !self.health.is_up() {
            self.errors.database_down.increment(1);
            return Err(AcquireError::DatabaseDown);
        }
        let started = Instant::now();
        let result = self.pool.get().await;
        self.wait_seconds.record(started.elapsed().as_secs_f64());
        result.map_err(|error| {
            if cannot_connect(&error) {
                self.errors.connect.increment(1);
                self.health.mark_down(&error);
            } else if matches!(error, PoolError::Closed) {
                self.errors.closed.increment(1);
            } else {
                self.errors.timeout.increment(1);
            }
            AcquireError::Pool(error)
        })
    }

    pub fn health(&self) -> &DatabaseHealth {
        &self.health
    }

    /// Connections open, idle and allowed.
    pub fn status(&self) -> Status {
        self.pool.status()
    }

    /// Closes the pool: idle connections are dropped now, busy ones when they are returned.
    pub fn close(&self) {
        self.pool.close();
    }

    /// The underlying pool, for background jobs that should not count in the wait metric.
    pub fn inner(&self) -> &Pool {
        &self.pool
    }
}

/// Whether a pool error means a new connection could not be opened (the server is down,
/// unreachable, or refuses us), as opposed to every connection being busy.
fn cannot_connect(error: &PoolError) -> bool {
    matches!(
        error,
        PoolError::Backend(_) | PoolError::Timeout(TimeoutType::Create)
    )
}
