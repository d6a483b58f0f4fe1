//! Operations endpoints outside `/api/v1`: `GET /metrics` (Prometheus text format),
//! `GET /health/live` and `GET /health/ready`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::telemetry::names;

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/metrics").route(web::get().to(metrics)))
        .service(web::resource("/health/live").route(web::get().to(live)))
        .service(web::resource("/health/ready").route(web::get().to(ready)));
}

/// A health reply.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// `ok`, `unreachable` or `timeout` (readiness only).
    pub database: Option<String>,
    /// `ok`, `degraded` (Redis failing: reads go to PostgreSQL) or `disabled` (readiness only).
    pub cache: Option<String>,
}

/// 200 while the process serves HTTP.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, description = "Alive", body = HealthBody)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 when the database answers within 2 s, else 503 (take this instance out of rotation).
/// While the cache is degraded, each call also probes Redis through the breaker, so readiness
/// sees Redis come back even when no balance is read.
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses(
    (status = 200, description = "Ready", body = HealthBody),
    (status = 503, description = "The database does not answer", body = HealthBody),
))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    state.cache.probe().await;
    match tokio::time::timeout(READY_TIMEOUT, crate::store::ping(&state.pool)).await {
        // Redis down is "degraded", still ready: the cache is only a fast path.
        Ok(Ok(())) => HttpResponse::Ok().json(json!({
            "status": "ready", "database": "ok", "cache": state.cache.health().as_str(),
        })),
        Ok(Err(error)) => {
            tracing::warn!(error = ?error, "not ready");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "unavailable", "database": "unreachable" }))
        }
        Err(_) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "database": "timeout" })),
    }
}

/// The Prometheus exposition. Gauges that mirror the pipeline's atomic counters are set here,
/// at scrape time, so the hot path only touches atomics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let ledger = &state.ledger;
    let stats = ledger.stats();
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(names::QUEUE_DEPTH).set(ledger.queued() as f64);
    metrics::gauge!(names::IN_FLIGHT).set(ledger.in_flight() as f64);
    metrics::gauge!(names::QUEUE_CAPACITY).set(ledger.capacity() as f64);
    metrics::gauge!(names::CACHE_BREAKER_STATE).set(f64::from(state.cache.breaker_state()));
    metrics::gauge!(names::BALANCE_ACTORS).set(load(&stats.balance_actors) as f64);
    metrics::counter!(names::ACTOR_EVICTIONS).absolute(load(&stats.actor_evictions));
    metrics::counter!(names::BATCHES).absolute(load(&stats.batches));
    metrics::counter!(names::BATCH_RETRIES).absolute(load(&stats.batch_retries));
    metrics::counter!(names::PIPELINE_REJECTIONS, "reason" => "overloaded")
        .absolute(load(&stats.rejected_overloaded));
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
