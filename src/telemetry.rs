//! Logs, traces and metrics.
//!
//! - Logs: `tracing` events as JSON lines (or human-readable), each carrying the spans it
//!   happened in, so a line logged while serving a request names its `request_id` and
//!   `trace_id`.
//! - Traces: every `tracing` span is also an OpenTelemetry span (the layer is always installed,
//!   so trace ids exist and a W3C `traceparent` is honoured even when nothing is exported).
//!   With `telemetry.otlp_endpoint` set, spans are exported over OTLP/HTTP by a batch processor
//!   on its own thread: a missing collector costs failed exports in the background, never a
//!   failed request.
//! - Metrics: the `metrics` facade, rendered by metrics-exporter-prometheus at `GET /metrics`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use metrics::{Counter, Label};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::{LogSettings, TelemetrySettings};

/// Metric names: the taxonomy SREs build dashboards and alerts on (README "Metrics" lists each
/// with its type, labels and meaning). Units are last in the name (Prometheus conventions).
pub mod names {
    // --- Ledger ---
    /// Counter, labels `type` and `status` (`completed`, `failed`, `error`): transactions
    /// answered by the pipeline.
    pub const TRANSACTIONS: &str = "tally_transactions_total";
    /// Counter, labels `type` and `reason` (`insufficient_funds`, `unavailable`, `internal`,
    /// `timeout`): transactions that did not complete, why.
    pub const TRANSACTION_FAILURES: &str = "tally_transaction_failures_total";
    /// Counter, labels `type` and `currency`: money moved by completed transactions, in minor
    /// units of the currency.
    pub const TRANSACTION_VOLUME: &str = "tally_transaction_volume_minor_total";
    /// Counter, label `event` (`created`, `posted`, `voided`, `expired`): holds created and
    /// resolved (DESIGN.md section 7).
    pub const HOLDS: &str = "tally_holds_total";

    /// Counter, label `outcome` (`completed`, `failed`, `skipped`, `retried`): occurrences of
    /// scheduled transactions the executor decided (`retried`: an attempt refused and tried
    /// again later, DESIGN.md section 9).
    pub const SCHEDULE_RUNS: &str = "tally_schedule_runs_total";
    /// Histogram, seconds from an occurrence's due time to its run (completed or failed).
    pub const SCHEDULE_LAG_SECONDS: &str = "tally_schedule_lag_seconds";

    // --- Event log (DESIGN.md section 10) ---
    /// Counter: events sealed into the SHA-256 hash chain by this instance.
    pub const EVENTS_SEALED: &str = "tally_events_sealed_total";
    /// Counter, label `outcome` (`delivered`: a 2xx; `failed`: a failed attempt to be retried;
    /// `gave_up`: the last attempt failed; `stale`: recorded after its lease was taken over,
    /// so not recorded): webhook delivery attempts made by this instance.
    pub const WEBHOOK_DELIVERIES: &str = "tally_webhook_deliveries_total";
    /// Histogram, seconds from an event's `occurred_at` to its delivery (a 2xx), retries
    /// included.
    pub const WEBHOOK_DELIVERY_LAG_SECONDS: &str = "tally_webhook_delivery_lag_seconds";
    /// Gauge: webhook deliveries pending across all instances (due, leased or backing off).
    pub const WEBHOOK_DELIVERIES_PENDING: &str = "tally_webhook_deliveries_pending";
    /// Counter: webhook subscriptions this instance disabled after a run of failures.
    pub const WEBHOOKS_DISABLED: &str = "tally_webhooks_disabled_total";
    /// Gauge: open live feed (WebSocket) connections on this instance.
    pub const FEED_CONNECTIONS: &str = "tally_feed_connections";
    /// Counter: events sent to live feed clients (one per event and connection).
    pub const FEED_MESSAGES: &str = "tally_feed_messages_total";
    /// Counter: feed connections closed because the client fell `feed.buffer_messages` behind.
    pub const FEED_SLOW_CLOSES: &str = "tally_feed_slow_client_closes_total";
    /// Counter, label `reason` (`instance_cap`, `user_cap`, `shutting_down`): feed connections
    /// refused before the upgrade.
    pub const FEED_REFUSED: &str = "tally_feed_refused_total";

    // --- Message queues (DESIGN.md section 12) ---
    /// Counter, label `outcome` (`applied`: answered from a new commit; `replayed`: answered
    /// from a stored idempotency key; `refused`: answered with a problem (a business refusal
    /// or a bad field), nothing applied; `dead_lettered`: malformed, moved to the dead-letter
    /// queue with its reason): requests taken from the requests queue by this instance.
    pub const AMQP_MESSAGES: &str = "tally_amqp_messages_total";
    /// Counter: requests this instance held back and tried again because the pipeline was
    /// overloaded or the database unavailable (backpressure instead of a failure).
    pub const AMQP_BACKPRESSURE: &str = "tally_amqp_backpressure_waits_total";
    /// Gauge, label `role` (`ingest`, `cdc`): this instance's broker connections of that role
    /// that are open with their topology declared (`ingest`: one per consumer; `cdc`: 1 on the
    /// publishing instance).
    pub const AMQP_CONNECTED: &str = "tally_amqp_connected";
    /// Counter, label `result` (`ack`, `nack`): publisher confirms of events published to the
    /// events exchange by this instance (a nack, or a lost connection, re-publishes from the
    /// stored cursor).
    pub const CDC_CONFIRMS: &str = "tally_cdc_publish_confirms_total";
    /// Gauge: events of the log after the last cursor the broker confirmed (counted up to
    /// 100000), as the publisher last saw it; 0 on instances that are not the publisher.
    pub const CDC_LAG_EVENTS: &str = "tally_cdc_lag_events";

    // --- Pipeline ---
    /// Counter, label `reason` (`overloaded`, `database_down`, `shutting_down`): submissions
    /// refused before entering the queue (503).
    pub const PIPELINE_REJECTIONS: &str = "tally_pipeline_rejections_total";
    /// Gauge: submissions waiting in the queue for a worker.
    pub const QUEUE_DEPTH: &str = "tally_pipeline_queue_depth";
    /// Gauge: submissions admitted and not yet answered.
    pub const IN_FLIGHT: &str = "tally_pipeline_in_flight";
    /// Gauge: `pipeline.queue_capacity` (the most submissions in flight).
    pub const QUEUE_CAPACITY: &str = "tally_pipeline_queue_capacity";
    /// Histogram, seconds a submission waited in the queue for a worker.
    pub const QUEUE_WAIT_SECONDS: &str = "tally_pipeline_queue_wait_seconds";
    /// Histogram, transactions per group commit (items per commit).
    pub const BATCH_SIZE: &str = "tally_batch_size";
    /// Histogram, seconds to write and commit one batch.
    pub const BATCH_COMMIT_SECONDS: &str = "tally_batch_commit_duration_seconds";
    /// Counter: group commits attempted (one per batch the journal writer took).
    pub const BATCHES: &str = "tally_batches_total";
    /// Counter, label `reason` (`refused`, `transient`, `split`, `reconnect`): batch re-runs.
    pub const BATCH_RETRIES: &str = "tally_batch_retries_total";
    /// Gauge: live balance actors.
    pub const BALANCE_ACTORS: &str = "tally_balance_actors";
    /// Counter: balance actors retired after being idle.
    pub const ACTOR_EVICTIONS: &str = "tally_balance_actor_evictions_total";

    // --- HTTP (RED per route template) ---
    /// Counter, labels `method`, `route` (the route template) and `status`.
    pub const HTTP_REQUESTS: &str = "tally_http_requests_total";
    /// Histogram, labels `method` and `route`: seconds from request to response.
    pub const HTTP_DURATION_SECONDS: &str = "tally_http_request_duration_seconds";
    /// Gauge: HTTP requests being handled.
    pub const HTTP_IN_FLIGHT: &str = "tally_http_requests_in_flight";

    // --- Database ---
    /// Gauge, labels `pool` (`api`, `journal`) and `state` (`in_use`, `idle`, `max`).
    pub const DB_CONNECTIONS: &str = "tally_db_pool_connections";
    /// Histogram, label `pool`: seconds spent waiting for a pooled connection.
    pub const DB_POOL_WAIT_SECONDS: &str = "tally_db_pool_wait_seconds";
    /// Counter, labels `pool` and `reason` (`database_down`, `timeout`, `connect`, `closed`):
    /// requests for a connection that got none.
    pub const DB_POOL_ERRORS: &str = "tally_db_pool_errors_total";
    /// Gauge: 1 while the health check reaches PostgreSQL, 0 while it does not.
    pub const DATABASE_UP: &str = "tally_database_up";

    // --- Process ---
    /// Gauge, label `version`: always 1.
    pub const BUILD_INFO: &str = "tally_build_info";

    // --- Edge and cache ---
    /// Counter, label `scope` (`ip` for `/auth/*`, `user` for the rest of `/api/v1`): requests
    /// refused with 429 `rate_limited`.
    pub const RATE_LIMITED: &str = "tally_rate_limited_total";
    /// Counter: logins refused with 429 `login_locked` (too many failures for the account).
    pub const LOGIN_LOCKOUTS: &str = "tally_login_lockouts_total";
    /// Counter, label `kind` (`max_per_transaction`, `daily_debit`, `rolling_debit`,
    /// `daily_credit`, `velocity`, `balance_max`, `supply`): movements refused with 422
    /// `limit_exceeded` (DESIGN.md section 8), single or bulk items alike.
    pub const LIMIT_REFUSALS: &str = "tally_limit_refusals_total";
    /// Counter, label `result` (`hit`, `miss`, `error`): balance cache lookups.
    pub const CACHE_REQUESTS: &str = "tally_cache_requests_total";
    /// Gauge: the Redis circuit breaker, 0 closed, 1 half-open, 2 open.
    pub const CACHE_BREAKER_STATE: &str = "tally_cache_breaker_state";

    /// Every name above: the README's metrics table must list each one (a test checks).
    pub const ALL: &[&str] = &[
        TRANSACTIONS,
        TRANSACTION_FAILURES,
        TRANSACTION_VOLUME,
        SCHEDULE_RUNS,
        SCHEDULE_LAG_SECONDS,
        EVENTS_SEALED,
        WEBHOOK_DELIVERIES,
        WEBHOOK_DELIVERY_LAG_SECONDS,
        WEBHOOK_DELIVERIES_PENDING,
        WEBHOOKS_DISABLED,
        FEED_CONNECTIONS,
        FEED_MESSAGES,
        FEED_SLOW_CLOSES,
        FEED_REFUSED,
        AMQP_MESSAGES,
        AMQP_BACKPRESSURE,
        AMQP_CONNECTED,
        CDC_CONFIRMS,
        CDC_LAG_EVENTS,
        PIPELINE_REJECTIONS,
        QUEUE_DEPTH,
        IN_FLIGHT,
        QUEUE_CAPACITY,
        QUEUE_WAIT_SECONDS,
        BATCH_SIZE,
        BATCH_COMMIT_SECONDS,
        BATCHES,
        BATCH_RETRIES,
        BALANCE_ACTORS,
        ACTOR_EVICTIONS,
        HTTP_REQUESTS,
        HTTP_DURATION_SECONDS,
        HTTP_IN_FLIGHT,
        DB_CONNECTIONS,
        DB_POOL_WAIT_SECONDS,
        DB_POOL_ERRORS,
        DATABASE_UP,
        BUILD_INFO,
        RATE_LIMITED,
        LOGIN_LOCKOUTS,
        LIMIT_REFUSALS,
        CACHE_REQUESTS,
        CACHE_BREAKER_STATE,
    ];
    /// The names no code emits yet (their features come later). Empty since the cache and the
    /// rate limiter landed; kept so that a future reserved name has a place.
    pub const RESERVED: &[&str] = &[];
}

/// Counter handles of one metric family, keyed by label values: registered with the recorder on
/// first use, then incremented with one atomic add and no registry lookup. Owned by one actor
/// (the journal writer), so the map needs no lock.
pub struct CounterFamily<K> {
    name: &'static str,
    handles: HashMap<K, Counter>,
}

impl<K: Hash + Eq + Copy> CounterFamily<K> {
    pub fn new(name: &'static str) -> CounterFamily<K> {
        CounterFamily {
            name,
            handles: HashMap::new(),
        }
    }

    /// The counter for `key`; `labels` names its label values the first time.
    pub fn get(&mut self, key: K, labels: impl FnOnce(K) -> Vec<Label>) -> &Counter {
        let name = self.name;
        self.handles
            .entry(key)
            .or_insert_with(|| metrics::counter!(name, labels(key)))
    }
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

/// Schedule lag buckets in seconds: a tick late (under a second) to a week of downtime.
const SCHEDULE_LAG_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, 604800.0,
];

/// Webhook delivery lag buckets in seconds: a poll interval (tens of milliseconds) to a day of
/// retries.
const WEBHOOK_LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
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
        .set_buckets_for_metric(
            Matcher::Full(names::SCHEDULE_LAG_SECONDS.into()),
            SCHEDULE_LAG_BUCKETS,
        )
        .context("histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full(names::WEBHOOK_DELIVERY_LAG_SECONDS.into()),
            WEBHOOK_LAG_BUCKETS,
        )
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    match HANDLE.set(handle.clone()) {
        Ok(()) => {
            metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
            describe();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Series read as 0 before their first event (dashboards, alerts, the metrics
            // test): registered now, without changing them.
            for scope in ["ip", "user"] {
                metrics::counter!(names::RATE_LIMITED, "scope" => scope).increment(0);
            }
            for result in ["hit", "miss", "error"] {
                metrics::counter!(names::CACHE_REQUESTS, "result" => result).increment(0);
            }
            metrics::counter!(names::LOGIN_LOCKOUTS).increment(0);
            metrics::counter!(names::EVENTS_SEALED).increment(0);
            for outcome in ["delivered", "failed", "gave_up", "stale"] {
                metrics::counter!(names::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(0);
            }
            drop(metrics::histogram!(names::WEBHOOK_DELIVERY_LAG_SECONDS));
            metrics::gauge!(names::WEBHOOK_DELIVERIES_PENDING).set(0.0);
            metrics::counter!(names::WEBHOOKS_DISABLED).increment(0);
            metrics::gauge!(names::FEED_CONNECTIONS).increment(0.0);
            metrics::counter!(names::FEED_MESSAGES).increment(0);
            metrics::counter!(names::FEED_SLOW_CLOSES).increment(0);
            for reason in crate::feed::Refusal::ALL {
                metrics::counter!(names::FEED_REFUSED, "reason" => reason.as_str()).increment(0);
            }
            for outcome in ["completed", "failed", "skipped", "retried"] {
                metrics::counter!(names::SCHEDULE_RUNS, "outcome" => outcome).increment(0);
            }
            // Exchanges are rare next to transfers: their series exist before the first one.
            for status in ["completed", "failed"] {
                metrics::counter!(names::TRANSACTIONS, "type" => "exchange", "status" => status)
                    .increment(0);
            }
            // Registered (empty) so that it is served before the first scheduled run.
            drop(metrics::histogram!(names::SCHEDULE_LAG_SECONDS));
            for kind in crate::domain::LimitKind::ALL {
                metrics::counter!(names::LIMIT_REFUSALS, "kind" => kind.as_str()).increment(0);
            }
            for outcome in ["applied", "replayed", "refused", "dead_lettered"] {
                metrics::counter!(names::AMQP_MESSAGES, "outcome" => outcome).increment(0);
            }
            metrics::counter!(names::AMQP_BACKPRESSURE).increment(0);
            for role in ["ingest", "cdc"] {
                metrics::gauge!(names::AMQP_CONNECTED, "role" => role).set(0.0);
            }
            for result in ["ack", "nack"] {
                metrics::counter!(names::CDC_CONFIRMS, "result" => result).increment(0);
            }
            metrics::gauge!(names::CDC_LAG_EVENTS).set(0.0);
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
    describe_counter!(
        names::WEBHOOK_DELIVERIES,
        "Webhook delivery attempts, by outcome"
    );
    describe_histogram!(
        names::WEBHOOK_DELIVERY_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event to its webhook delivery"
    );
    describe_gauge!(
        names::WEBHOOK_DELIVERIES_PENDING,
        "Webhook deliveries pending, all instances"
    );
    describe_counter!(
        names::WEBHOOKS_DISABLED,
        "Webhook subscriptions disabled after a run of failures"
    );
    describe_counter!(
        names::SCHEDULE_RUNS,
        "Occurrences of scheduled transactions decided, by outcome"
    );
    describe_histogram!(
        names::SCHEDULE_LAG_SECONDS,
        Unit::Seconds,
        "Time from an occurrence's due time to its run"
    );
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
    describe_counter!(
        names::TRANSACTION_FAILURES,
        "Transactions that did not complete, by type and reason"
    );
    describe_counter!(
        names::TRANSACTION_VOLUME,
        "Money moved by completed transactions, by type and currency, in minor units"
    );
    describe_gauge!(names::HTTP_IN_FLIGHT, "HTTP requests being handled");
    describe_histogram!(
        names::DB_POOL_WAIT_SECONDS,
        Unit::Seconds,
        "Time spent waiting for a pooled database connection"
    );
    describe_counter!(
        names::DB_POOL_ERRORS,
        "Requests for a pooled connection that got none, by pool and reason"
    );
    describe_gauge!(
        names::DATABASE_UP,
        "1 while the database health check succeeds, else 0"
    );
    describe_gauge!(names::BUILD_INFO, "Build information; always 1");
    describe_counter!(
        names::RATE_LIMITED,
        "Requests refused with 429 by the rate limiter, by scope"
    );
    describe_counter!(
        names::CACHE_REQUESTS,
        "Cache lookups by result (hit, miss, error)"
    );
    describe_gauge!(
        names::CACHE_BREAKER_STATE,
        "Cache circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        names::LIMIT_REFUSALS,
        "Movements refused with limit_exceeded, by the kind of limit"
    );
    describe_counter!(
        names::EVENTS_SEALED,
        "Events sealed into the event log's SHA-256 hash chain by this instance"
    );
    describe_gauge!(
        names::FEED_CONNECTIONS,
        "Open live feed (WebSocket) connections on this instance"
    );
    describe_counter!(
        names::FEED_MESSAGES,
        "Events sent to live feed clients, one per event and connection"
    );
    describe_counter!(
        names::FEED_SLOW_CLOSES,
        "Live feed connections closed because the client fell feed.buffer_messages behind"
    );
    describe_counter!(
        names::FEED_REFUSED,
        "Live feed connections refused before the upgrade, by reason"
    );
    describe_counter!(
        names::LOGIN_LOCKOUTS,
        "Logins refused while the account is locked after repeated failures"
    );
}

/// What [`init`] installed that must be flushed before the process exits.
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Flushes the spans not yet exported and stops the exporter, waiting at most `timeout` (a
    /// collector that does not answer must not hold the process).
    pub fn shutdown(self, timeout: Duration) {
        if !self.exporting {
            return;
        }
        // The SDK's shutdown blocks; run it on a plain thread and wait for it with a bound.
        let (done, finished) = std::sync::mpsc::channel();
        let provider = self.tracer_provider;
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown_with_timeout(timeout));
        });
        match finished.recv_timeout(timeout + Duration::from_millis(100)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "span export did not shut down cleanly"),
            Err(_) => tracing::warn!(?timeout, "span export shutdown timed out"),
        }
    }
}

/// Installs the global tracing subscriber: JSON lines (or human-readable with `pretty`) on
/// stdout, filtered by `RUST_LOG` when set, else by `log.filter`; the OpenTelemetry layer; and
/// the W3C trace-context propagator that reads `traceparent`. Call once, at start.
///
/// Errors: an invalid `telemetry.otlp_endpoint`, or a subscriber already installed.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = otlp_traces_url(&telemetry.otlp_endpoint);
    let exporting = endpoint.is_some();
    if let Some(endpoint) = &endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .with_timeout(OTLP_EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("telemetry.otlp_endpoint {endpoint:?}"))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tally"))
        .with_tracked_inactivity(false)
        .with_threads(false);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let (json, pretty) = if log.format == "pretty" {
        (
            None,
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stdout)),
        )
    } else {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stdout);
        (Some(json), None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
    }
    Ok(TelemetryGuard {
        tracer_provider: provider,
        exporting,
    })
}

/// Bound on one OTLP export request.
const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP/HTTP traces URL for a configured endpoint: `None` when empty; `/v1/traces` appended
/// when the URL has no path (the collector's base address, as `OTEL_EXPORTER_OTLP_ENDPOINT`).
fn otlp_traces_url(endpoint: &str) -> Option<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return None;
    }
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    Some(if after_scheme.contains('/') {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    })
}

#[cfg(test)]
mod tests {
    use super::otlp_traces_url;

    #[test]
    fn otlp_urls_get_the_traces_path_only_when_they_have_none() {
        assert_eq!(otlp_traces_url(""), None);
        assert_eq!(otlp_traces_url("  "), None);
        assert_eq!(
            otlp_traces_url("http://127.0.0.1:4318").as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            otlp_traces_url("http://jaeger:4318/").as_deref(),
            Some("http://jaeger:4318/v1/traces")
        );
        assert_eq!(
            otlp_traces_url("http://collector:4318/custom/traces").as_deref(),
            Some("http://collector:4318/custom/traces")
        );
    }
}
