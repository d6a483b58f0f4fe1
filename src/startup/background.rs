//! The background tasks every instance runs beside the pipeline: the idempotency key sweeper,
//! the rate limiters' cleanup, the histogram upkeep and the cache warm-up. Each is a tokio task
//! that [`super::Application::run_until`] aborts at the end of a shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::BalanceCache;
use crate::config::Settings;
use crate::routes::middleware::RateLimiters;
use crate::store;

/// How often the rate limiters forget clients whose buckets are full again.
const RATE_LIMITER_CLEANUP_PERIOD: Duration = Duration::from_secs(60);
/// How often the histograms' recorded samples are folded into their buckets. The Prometheus
/// recorder keeps every sample until then (metrics-exporter-prometheus `run_upkeep`): without
/// it, memory grows with every request between scrapes.
const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(1);
/// How often expired idempotency keys are swept.
const IDEMPOTENCY_SWEEP_PERIOD: Duration = Duration::from_secs(3600);

/// Starts every background task but the database health monitor (started with the pools).
pub(super) fn spawn_all(
    settings: &Settings,
    pool: &deadpool_postgres::Pool,
    cache: &Arc<BalanceCache>,
    limiters: &Arc<RateLimiters>,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        spawn_idempotency_sweeper(pool.clone(), settings.idempotency.retention_hours),
        spawn_rate_limiter_cleanup(limiters.clone()),
        spawn_metrics_upkeep(metrics.clone()),
        spawn_cache_warm_up(pool.clone(), cache.clone(), settings.redis.warm_up_users),
    ]
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

/// Forgets the rate limiters' full buckets every `RATE_LIMITER_CLEANUP_PERIOD`.
fn spawn_rate_limiter_cleanup(limiters: Arc<RateLimiters>) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(RATE_LIMITER_CLEANUP_PERIOD);
        loop {
            ticks.tick().await;
            limiters.retain_recent();
        }
    })
}

/// Loads the balances of the most recently active users into the cache, in the background.
fn spawn_cache_warm_up(
    pool: deadpool_postgres::Pool,
    cache: Arc<BalanceCache>,
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
