//! The background tasks every instance runs beside the pipeline: the idempotency key sweeper,
//! the rate limiters' cleanup, the histogram upkeep, the cache warm-up, the chain sealer and
//! webhook delivery (`crate::webhooks::run`). Each is a tokio task
//! that [`super::Application::run_until`] aborts at the end of a shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::BalanceCache;
use crate::config::{HoldSettings, Settings};
use crate::domain::{Authority, HoldEnd};
use crate::ledger::{Ledger, Outcome};
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
/// How often old `limit_usage` rows are forgotten, and how many per statement.
const USAGE_SWEEP_PERIOD: Duration = Duration::from_secs(3600);
const USAGE_SWEEP_BATCH: i64 = 10_000;

/// Starts every background task but the database health monitor (started with the pools).
pub(super) fn spawn_all(
    settings: &Settings,
    pool: &deadpool_postgres::Pool,
    ledger: &Ledger,
    cache: &Arc<BalanceCache>,
    limiters: &Arc<RateLimiters>,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    clock: &Arc<dyn crate::clock::Clock>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        spawn_hold_sweeper(pool.clone(), ledger.clone(), settings.holds.clone()),
        spawn_idempotency_sweeper(pool.clone(), settings.idempotency.retention_hours),
        spawn_usage_sweeper(pool.clone(), clock.clone()),
        spawn_rate_limiter_cleanup(limiters.clone()),
        spawn_metrics_upkeep(metrics.clone()),
        spawn_cache_warm_up(pool.clone(), cache.clone(), settings.redis.warm_up_users),
        spawn_chain_sealer(pool.clone(), settings.events.clone()),
        actix_web::rt::spawn(crate::webhooks::run(
            pool.clone(),
            settings.webhooks.clone(),
        )),
    ]
}

/// Releases holds past their deadline, every `holds.sweep_interval_ms`, at most
/// `holds.sweep_batch` per sweep (a full sweep is followed by the next at once). Each release
/// goes through the pipeline like any movement; the commit claims it only while the hold is
/// pending and past its deadline, so with several instances sweeping (or a post racing the
/// deadline) each hold is released exactly once and the others are answered
/// `hold_not_pending`, which is not an error here. Failures are logged and retried next tick.
fn spawn_hold_sweeper(
    pool: deadpool_postgres::Pool,
    ledger: Ledger,
    settings: HoldSettings,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(settings.sweep_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Bounded: a sweep that filled its batch goes on at once, at most 100 times a tick.
            for _ in 0..100 {
                match sweep_holds(&pool, &ledger, settings.sweep_batch).await {
                    Ok(full) if full => continue,
                    Ok(_) => {}
                    Err(error) => tracing::warn!(error = ?error, "hold sweep failed"),
                }
                break;
            }
        }
    })
}

/// One sweep; `Ok(true)` when it found a full batch (more may be waiting).
async fn sweep_holds(
    pool: &deadpool_postgres::Pool,
    ledger: &Ledger,
    batch: u32,
) -> anyhow::Result<bool> {
    let expired = {
        let client = pool.get().await?;
        store::transactions::expired_holds(&client, i64::from(batch)).await?
    };
    if expired.is_empty() {
        return Ok(false);
    }
    let movements = expired
        .iter()
        .map(|hold| hold.release(HoldEnd::Expired, hold.from, Authority::Owner))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut released, mut raced, mut failed) = (0, 0, 0);
    for outcome in ledger.submit_many(movements).await {
        match outcome {
            Ok(Outcome::Completed(_)) => released += 1,
            Ok(Outcome::HoldNotPending) => raced += 1,
            Ok(_) | Err(_) => failed += 1,
        }
    }
    tracing::info!(released, raced, failed, "expired holds swept");
    anyhow::ensure!(failed == 0, "{failed} expired holds were not released");
    Ok(expired.len() == batch as usize)
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

/// Forgets exchange quotes a day after they expired (`store::fx::QUOTE_RETENTION_S`: until
/// then a late use is told `quote_expired`), at most 100 batches of `USAGE_SWEEP_BATCH`.
async fn forget_quotes(pool: &deadpool_postgres::Pool, now: chrono::DateTime<chrono::Utc>) {
    for _ in 0..100 {
        let swept = async {
            let client = pool.get().await?;
            anyhow::Ok(store::fx::forget_quotes(&client, now, USAGE_SWEEP_BATCH).await?)
        };
        match swept.await {
            Ok(count) if count == USAGE_SWEEP_BATCH as u64 => continue,
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "forgot expired quotes"),
            Err(error) => tracing::warn!(error = ?error, "quote sweep failed"),
        }
        break;
    }
}

/// Forgets what the limits counted once no window can reach it
/// (`store::limits::USAGE_RETENTION_DAYS`), every `USAGE_SWEEP_PERIOD`, in batches of
/// `USAGE_SWEEP_BATCH` (at most 100 a tick, so one tick is bounded), and expired quotes with
/// it. Failures are logged and retried next tick.
fn spawn_usage_sweeper(
    pool: deadpool_postgres::Pool,
    clock: Arc<dyn crate::clock::Clock>,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(USAGE_SWEEP_PERIOD);
        loop {
            ticks.tick().await;
            forget_quotes(&pool, clock.now()).await;
            for _ in 0..100 {
                let swept = async {
                    let client = pool.get().await?;
                    anyhow::Ok(store::limits::forget_usage(&client, USAGE_SWEEP_BATCH).await?)
                };
                match swept.await {
                    Ok(count) if count == USAGE_SWEEP_BATCH as u64 => continue,
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "forgot old limit usage"),
                    Err(error) => tracing::warn!(error = ?error, "limit usage sweep failed"),
                }
                break;
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

/// Runs the schedule executor (`crate::scheduler`) every `schedules.tick_ms`: a tick that
/// filled its batch is followed by the next at once, at most 10 times a tick. Failures are
/// logged and retried next tick (what a failed tick submitted is recorded from its keys then).
pub(super) fn spawn_schedule_executor(
    state: actix_web::web::Data<crate::routes::AppState>,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(state.settings.schedules.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for _ in 0..10 {
                match crate::scheduler::tick(&state).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => tracing::warn!(error = ?error, "schedule tick failed"),
                }
                break;
            }
        }
    })
}

/// Seals committed events into the hash chain (`store::chain`) every `events.seal_interval_ms`:
/// a full batch is followed by the next at once, at most 100 times a tick. Every instance runs
/// one; while one seals (an advisory lock), the others give way. Failures are logged and
/// retried next tick; `tally_events_sealed_total` counts the sealed events.
fn spawn_chain_sealer(
    pool: deadpool_postgres::Pool,
    settings: crate::config::EventSettings,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(settings.seal_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch = i64::from(settings.seal_batch);
        loop {
            ticks.tick().await;
            for _ in 0..100 {
                let sealed = match pool.get().await {
                    Ok(mut client) => {
                        store::chain::seal(&mut client, batch, store::chain::Contention::GiveWay)
                            .await
                            .map_err(anyhow::Error::from)
                    }
                    Err(error) => Err(error.into()),
                };
                match sealed {
                    Ok(count) => {
                        metrics::counter!(crate::telemetry::names::EVENTS_SEALED)
                            .increment(count as u64);
                        if count as i64 == batch {
                            continue;
                        }
                    }
                    Err(error) => tracing::warn!(error = ?error, "sealing the event chain failed"),
                }
                break;
            }
        }
    })
}
