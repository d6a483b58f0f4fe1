//! Logs (tracing, JSON by default) and metrics (the `metrics` facade rendered by
//! metrics-exporter-prometheus at `GET /metrics`).

use std::sync::OnceLock;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Metric names. Units are last in the name (Prometheus conventions).
pub mod names {
    /// Counter, labels `type` and `status` (`completed`, `failed`, `error`).
    pub const TRANSACTIONS: &str = "tally_transactions_total";
    /// Counter, label `reason` (`overloaded`): submissions refused before entering the queue.
    pub const PIPELINE_REJECTIONS: &str = "tally_pipeline_rejections_total";
    /// Gauge: submissions waiting in the queue for a worker.
    pub const QUEUE_DEPTH: &str = "tally_pipeline_queue_depth";
    /// Gauge: submissions admitted and not yet answered.
    pub const IN_FLIGHT: &str = "tally_pipeline_in_flight";
    /// Gauge: `pipeline.queue_capacity`.
    pub const QUEUE_CAPACITY: &str = "tally_pipeline_queue_capacity";
    /// Histogram, seconds a submission waited in the queue.
    pub const QUEUE_WAIT_SECONDS: &str = "tally_pipeline_queue_wait_seconds";
    /// Histogram, transactions per group commit.
    pub const BATCH_SIZE: &str = "tally_batch_size";
    /// Histogram, seconds to write and commit one batch.
    pub const BATCH_COMMIT_SECONDS: &str = "tally_batch_commit_duration_seconds";
    /// Counter: group commits.
    pub const BATCHES: &str = "tally_batches_total";
    /// Counter: batch re-runs (refused accounts, splits after errors, transient retries).
    pub const BATCH_RETRIES: &str = "tally_batch_retries_total";
    /// Gauge: live balance actors.
    pub const BALANCE_ACTORS: &str = "tally_balance_actors";
    /// Counter: balance actors retired after being idle.
    pub const ACTOR_EVICTIONS: &str = "tally_balance_actor_evictions_total";
    /// Counter, labels `method`, `route` (the route template) and `status`.
    pub const HTTP_REQUESTS: &str = "tally_http_requests_total";
    /// Histogram, labels `method` and `route`: seconds from request to response.
    pub const HTTP_DURATION_SECONDS: &str = "tally_http_request_duration_seconds";
    /// Counter, label `scope` (`ip` for `/auth/*`, `user` for the rest): requests refused with
    /// 429 `rate_limited`.
    pub const RATE_LIMITED: &str = "tally_rate_limited_total";
    /// Counter, label `result` (`hit`, `miss`, `error`): balance cache lookups.
    pub const CACHE_REQUESTS: &str = "tally_cache_requests_total";
    /// Gauge: the cache circuit breaker (0 closed, 1 open, 2 half-open).
    pub const CACHE_BREAKER_STATE: &str = "tally_cache_breaker_state";
    /// Counter: logins refused because the username is locked after repeated failures.
    pub const LOGIN_LOCKOUTS: &str = "tally_login_lockouts_total";
    /// Gauge, label `pool` (`api`, `journal`): database connections in use / idle.
    pub const DB_CONNECTIONS: &str = "tally_db_pool_connections";
}

/// Latency buckets in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Batch size buckets, transactions.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Installs the Prometheus recorder once per process and returns its handle. Several apps in one
/// process (the tests) share it.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("histogram buckets")?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), BATCH_BUCKETS)
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    match HANDLE.set(handle.clone()) {
        Ok(()) => {
            metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
            describe();
            Ok(handle)
        }
        // Another thread won the race; use its handle.
        Err(_) => Ok(HANDLE.get().expect("set by the winner").clone()),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::TRANSACTIONS,
        "Transactions answered, by type and status"
    );
    describe_counter!(
        names::PIPELINE_REJECTIONS,
        "Submissions refused before the queue, by reason"
    );
    describe_gauge!(names::QUEUE_DEPTH, "Submissions waiting for a worker");
    describe_gauge!(
        names::IN_FLIGHT,
        "Submissions admitted and not yet answered"
    );
    describe_gauge!(names::QUEUE_CAPACITY, "Capacity of the submission queue");
    describe_histogram!(
        names::QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a submission waited for a worker"
    );
    describe_histogram!(
        names::BATCH_SIZE,
        Unit::Count,
        "Transactions per group commit"
    );
    describe_histogram!(
        names::BATCH_COMMIT_SECONDS,
        Unit::Seconds,
        "Time to write and commit one batch"
    );
    describe_counter!(names::BATCHES, "Group commits");
    describe_counter!(
        names::BATCH_RETRIES,
        "Batch re-runs after refusals or errors"
    );
    describe_gauge!(names::BALANCE_ACTORS, "Live balance actors");
    describe_counter!(names::ACTOR_EVICTIONS, "Balance actors retired when idle");
    describe_counter!(
        names::HTTP_REQUESTS,
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        names::HTTP_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request duration by method and route"
    );
    describe_gauge!(
        names::DB_CONNECTIONS,
        "Database connections by pool and state"
    );
}

/// Installs the global tracing subscriber: JSON lines (or human-readable with `pretty`) on
/// stdout, filtered by `RUST_LOG` when set, else by `log.filter`. Safe to call twice; the
/// second call does nothing.
pub fn init_logs(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = if settings.format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
