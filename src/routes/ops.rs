//! Operations endpoints outside `/api/v1`: `GET /metrics` (Prometheus text format),
//! `GET /health/live` and `GET /health/ready`.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::telemetry::names;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/metrics").route(web::get().to(metrics)))
        .service(web::resource("/health/live").route(web::get().to(live)))
        .service(web::resource("/health/ready").route(web::get().to(ready)));
}

/// A health reply.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `ok` (liveness), `ready`, `unavailable` or `shutting_down`.
    pub status: String,
    /// `ok` or `unreachable` (readiness only).
    pub database: Option<String>,
    /// `ok`, `degraded` (Redis failing: reads go to PostgreSQL) or `disabled` (readiness only).
    pub cache: Option<String>,
    /// `ok`, or `stuck` when the journal writer is dead or has committed nothing for
    /// `pipeline.reply_timeout_ms` while it had work (readiness only).
    pub journal: Option<String>,
    /// `connected`, `reconnecting` (the request queue's broker connection is down: queued
    /// requests wait, REST is unaffected) or `disabled` (no `amqp.url`) (readiness only).
    pub amqp: Option<String>,
}

/// 200 while the process serves HTTP.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, description = "Alive", body = HealthBody)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 when this instance should get traffic: not shutting down, and the database health check
/// (a ping every `database.health_check_interval_ms`) succeeds. Else 503: take it out of
/// rotation. Answers from flags, without touching the database, so a busy pool cannot make a
/// healthy instance look unready. Redis down is `"cache": "degraded"`, still ready (the cache
/// is only a fast path), and so is a broker connection being re-established (`"amqp":
/// "reconnecting"`: queued requests wait for it); while degraded each call probes Redis through the breaker, so
/// readiness sees it come back even when no balance is read.
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses(
    (status = 200, description = "Ready", body = HealthBody),
    (status = 503, description = "Shutting down, or the database does not answer", body = HealthBody),
))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.lifecycle.is_draining() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "shutting_down", "database": database(&state) }));
    }
    if !state.ledger.database_up() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "database": "unreachable" }));
    }
    if !state.ledger.journal_healthy() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "database": "ok", "journal": "stuck" }));
    }
    state.cache.probe().await;
    HttpResponse::Ok().json(json!({
        "status": "ready", "database": "ok", "cache": state.cache.health().as_str(),
        "journal": "ok",
        "amqp": state.broker.readiness(),
    }))
}

fn database(state: &AppState) -> &'static str {
    if state.ledger.database_up() {
        "ok"
    } else {
        "unreachable"
    }
}

/// The Prometheus exposition. Gauges and counters that mirror the pipeline's atomics are set
/// here, at scrape time, so the hot path only touches atomics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let ledger = &state.ledger;
    let stats = ledger.stats();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    metrics::gauge!(names::QUEUE_DEPTH).set(ledger.queued() as f64);
    metrics::gauge!(names::IN_FLIGHT).set(ledger.in_flight() as f64);
    metrics::gauge!(names::QUEUE_CAPACITY).set(ledger.capacity() as f64);
    metrics::gauge!(names::BALANCE_ACTORS).set(load(&stats.balance_actors) as f64);
    metrics::counter!(names::ACTOR_EVICTIONS).absolute(load(&stats.actor_evictions));
    metrics::counter!(names::BATCHES).absolute(load(&stats.batches));
    for (reason, counter) in [
        ("refused", &stats.retries_refused),
        ("transient", &stats.retries_transient),
        ("split", &stats.retries_split),
        ("reconnect", &stats.retries_reconnect),
    ] {
        metrics::counter!(names::BATCH_RETRIES, "reason" => reason).absolute(load(counter));
    }
    for (reason, counter) in [
        ("overloaded", &stats.rejected_overloaded),
        ("database_down", &stats.rejected_database_down),
        ("shutting_down", &stats.rejected_shutting_down),
    ] {
        metrics::counter!(names::PIPELINE_REJECTIONS, "reason" => reason).absolute(load(counter));
    }
    metrics::gauge!(names::CACHE_BREAKER_STATE).set(f64::from(state.cache.breaker_state()));
    metrics::gauge!(names::DATABASE_UP).set(if ledger.database_up() { 1.0 } else { 0.0 });
    metrics::gauge!(names::HTTP_IN_FLIGHT).set(state.lifecycle.requests_in_flight() as f64);
    for (pool_name, pool) in [("api", &state.pool), ("journal", &state.journal_pool)] {
        let status = pool.status();
        metrics::gauge!(names::DB_CONNECTIONS, "pool" => pool_name, "state" => "in_use")
            .set(status.size.saturating_sub(status.available) as f64);
        metrics::gauge!(names::DB_CONNECTIONS, "pool" => pool_name, "state" => "idle")
            .set(status.available as f64);
        metrics::gauge!(names::DB_CONNECTIONS, "pool" => pool_name, "state" => "max")
            .set(status.max_size as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
