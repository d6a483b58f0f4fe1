//! The journal writer: collects reserved movements into batches and commits each batch in ONE
//! PostgreSQL transaction (group commit), then settles the holds, tells the balance actors what
//! the database returned, and answers every caller. One fsync serves the whole batch.
//!
//! Batching: a batch is written when it reaches `batch_size_max`, or `batch_linger_us` after
//! its first movement arrived, or at once when requests come one at a time (no commit in
//! flight, the last batch carried one movement, and every movement admitted to the pipeline is
//! already in it: nothing could join it by lingering). Up to `pipeline.commit_concurrency` batches are committed at once,
//! each on its own connection (while one waits for its fsync, the next is already written);
//! whatever arrives while all are busy forms the next batch, written as soon as one is done, so
//! the batch size grows with the load by itself. Overlapping batches stay correct because each
//! locks the balance rows it touches in key order before writing entries: two batches that share
//! an account are serialized by that row lock (entry ids still grow in commit order for each
//! account), and the versions the database returns keep the actors' caches in order.
//!
//! Failures: a database error that is not a lost connection splits the batch in halves and
//! retries each, down to single movements, so one bad movement fails alone and never its
//! batch-mates. Deadlocks and serialization failures are retried as they are. A connection lost
//! before `COMMIT` was sent wrote nothing, so the batch is retried once on a new connection. A
//! connection lost during `COMMIT` (unknown outcome), a second loss, or no connection at all
//! answers the rest of the batch `Unavailable` (nothing acknowledged) and tells the balance
//! actors to reload. While the database health check fails, batches fail at once without
//! trying to connect.
//!
//! Metrics: the writer owns its counter handles (registered on first use), so counting a
//! settled movement is an atomic add, with no lock and no registry lookup.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle,
    WrapFuture,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::messages::{Append, Item, Observed, Settle};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::{AtomicResult, Outcome, PipelineStats, Recorded, SubmitError};
use crate::cache::BalanceCache;
use crate::clock::Clock;
use crate::domain::{
    AccountKey, AccountState, Bounds, CommittedBalance, Currency, LimitKind, Movement, Phase,
    Refusal, WindowUsage,
};
use crate::store::journal::{AtomicOutcome, BatchError, BatchItem, BatchReport, Posting};
use crate::store::{AcquireError, DbPool};
use crate::telemetry::{names, CounterFamily};

/// Transient database errors (deadlock, serialization failure, a lock wait past
/// `database.lock_timeout_ms`) are retried this many times before the batch is split (or, for a
/// lock timeout, answered `Unavailable`).
const TRANSIENT_RETRIES_MAX: u32 = 3;

/// Movements to apply all or nothing, in one commit of their own (the bulk endpoint's atomic
/// mode). They take no holds: the commit locks their rows and checks the whole sequence.
pub(super) struct AtomicItem {
    pub movements: Vec<Movement>,
    pub reply: oneshot::Sender<Result<AtomicResult, SubmitError>>,
    pub _permit: OwnedSemaphorePermit,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct AppendAtomic(pub AtomicItem);

/// Many movements at once (an independent bulk), without holds: the database's conditional
/// update decides each, and a refused account's movements are re-run alone, so none fails
/// another. One message instead of four actor hops per movement.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct AppendMany(pub Vec<Item>);

#[derive(Debug, Clone, Copy)]
pub(super) struct JournalSettings {
    pub batch_size_max: usize,
    pub linger: Duration,
    /// Batches (or atomic sets) being committed at once, each on its own connection.
    pub commit_concurrency: usize,
}

/// The pipeline's admission count, read by the writer: movements admitted (each holds a permit
/// of the ledger's admission semaphore until it is answered) and not yet answered.
pub(super) struct Admitted {
    pub semaphore: Arc<tokio::sync::Semaphore>,
    pub capacity: usize,
}

impl Admitted {
    fn count(&self) -> usize {
        self.capacity - self.semaphore.available_permits()
    }
}

pub(super) struct JournalWriter {
    pool: DbPool,
    bounds: Arc<Bounds>,
    /// "Now" for the configured limits' windows.
    clock: Arc<dyn Clock>,
    /// Committed balances are written through to it before callers are answered.
    cache: Arc<BalanceCache>,
    directory: Recipient<Observed>,
    settings: JournalSettings,
    stats: Arc<PipelineStats>,
    metrics: JournalMetrics,
    buffer: Vec<Item>,
    atomics: VecDeque<AtomicItem>,
    /// Whether the last write was a batch: atomics and batches take turns, so neither starves.
    last_was_batch: bool,
    /// Batches and atomic sets being committed now (at most `commit_concurrency`).
    in_flight: usize,
    linger_timer: Option<SpawnHandle>,
    admitted: Admitted,
    /// Movements in the last batch written: 1 when requests come one at a time.
    last_batch_size: usize,
}

/// The writer's metric handles.
struct JournalMetrics {
    batch_size: metrics::Histogram,
    commit_seconds: metrics::Histogram,
    /// By `(type, status)`.
    transactions: CounterFamily<(&'static str, &'static str)>,
    /// By `(type, reason)`.
    failures: CounterFamily<(&'static str, &'static str)>,
    /// By `(type, currency)`, minor units.
    volume: CounterFamily<(&'static str, Currency)>,
    /// By the kind of limit.
    limit_refusals: CounterFamily<LimitKind>,
}

impl JournalMetrics {
    fn new() -> JournalMetrics {
        JournalMetrics {
            batch_size: metrics::histogram!(names::BATCH_SIZE),
            commit_seconds: metrics::histogram!(names::BATCH_COMMIT_SECONDS),
            transactions: CounterFamily::new(names::TRANSACTIONS),
            failures: CounterFamily::new(names::TRANSACTION_FAILURES),
            volume: CounterFamily::new(names::TRANSACTION_VOLUME),
            limit_refusals: CounterFamily::new(names::LIMIT_REFUSALS),
        }
    }

    /// Counts a `limit_exceeded` refusal by the kind of limit.
    fn limit_refusal(&mut self, refusal: &Refusal) {
        if let Refusal::LimitExceeded(breach) = refusal {
            self.limit_refusals
                .get(breach.kind, |kind| {
                    vec![metrics::Label::new("kind", kind.as_str())]
                })
                .increment(1);
        }
    }

    fn transaction(&mut self, kind: &'static str, status: &'static str) {
        self.transactions
            .get((kind, status), |(kind, status)| {
                vec![
                    metrics::Label::new("type", kind),
                    metrics::Label::new("status", status),
                ]
            })
            .increment(1);
    }

    fn failure(&mut self, kind: &'static str, reason: &'static str) {
        self.failures
            .get((kind, reason), |(kind, reason)| {
                vec![
                    metrics::Label::new("type", kind),
                    metrics::Label::new("reason", reason),
                ]
            })
            .increment(1);
    }

    fn volume(&mut self, kind: &'static str, currency: Currency, amount_minor: i64) {
        self.volume
            .get((kind, currency), |(kind, currency)| {
                vec![
                    metrics::Label::new("type", kind),
                    metrics::Label::new("currency", currency.code()),
                ]
            })
            .increment(amount_minor.unsigned_abs());
    }
}

/// Batch re-runs by reason, for [`PipelineStats`].
#[derive(Debug, Default, Clone, Copy)]
struct Retries {
    refused: u64,
    transient: u64,
    split: u64,
    reconnect: u64,
}

/// What happened to one movement of a written batch.
enum Written {
    Posted(Posting, chrono::DateTime<chrono::Utc>),
    Failed(SubmitError),
}

impl JournalWriter {
    pub(super) fn new(
        pool: DbPool,
        (bounds, clock): (Arc<Bounds>, Arc<dyn Clock>),
        cache: Arc<BalanceCache>,
        directory: Recipient<Observed>,
        settings: JournalSettings,
        stats: Arc<PipelineStats>,
        admitted: Admitted,
    ) -> JournalWriter {
        JournalWriter {
            pool,
            bounds,
            clock,
            cache,
            directory,
            settings,
            stats,
            metrics: JournalMetrics::new(),
            buffer: Vec::with_capacity(settings.batch_size_max),
            atomics: VecDeque::new(),
            last_was_batch: false,
            in_flight: 0,
            linger_timer: None,
            admitted,
            last_batch_size: 1,
        }
    }

    fn write_next_batch(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight >= self.settings.commit_concurrency {
            return;
        }
        if let Some(timer) = self.linger_timer.take() {
            ctx.cancel_future(timer);
        }
        if !self.atomics.is_empty() && (self.buffer.is_empty() || self.last_was_batch) {
            let atomic = self.atomics.pop_front().expect("checked non-empty");
            self.write_atomic(atomic, ctx);
            return;
        }
        if self.buffer.is_empty() {
            return;
        }
        self.in_flight += 1;
        self.last_was_batch = true;
        let take = self.buffer.len().min(self.settings.batch_size_max);
        self.last_batch_size = take;
        let items: Vec<Item> = self.buffer.drain(..take).collect();
        let (pool, cache, bounds) = (self.pool.clone(), self.cache.clone(), self.bounds.clone());
        let clock = self.clock.clone();
        let started = Instant::now();
        // A root span of its own (a batch serves many traces), linked to the `ledger.submit`
        // span of every movement it carries. The SDK keeps the first 128 links by default.
        let span =
            tracing::info_span!(parent: None, "ledger.commit_batch", batch.size = items.len());
        for item in &items {
            span.add_link(item.submission.trace_context.clone());
        }
        let write = async move {
            let (written, committed, retries, limits) =
                write_batch(&pool, (&bounds, clock.as_ref()), &items).await;
            // Before any caller is answered, so that every client reads its own writes, on
            // any process (or is told the outcome is unknown when that cannot be made sure).
            let acknowledge = cache.write_through(&committed).await.may_acknowledge();
            let accounts: Vec<AccountState> =
                committed.into_iter().map(|balance| balance.state).collect();
            (items, written, accounts, retries, acknowledge, limits)
        }
        .instrument(span);
        ctx.spawn(write.into_actor(self).map(
            move |(items, written, accounts, retries, acknowledge, limits), writer, ctx| {
                writer.metrics.batch_size.record(items.len() as f64);
                writer
                    .metrics
                    .commit_seconds
                    .record(started.elapsed().as_secs_f64());
                let stats = &writer.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .batch_items
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                stats
                    .retries_refused
                    .fetch_add(retries.refused, Ordering::Relaxed);
                stats
                    .retries_transient
                    .fetch_add(retries.transient, Ordering::Relaxed);
                stats
                    .retries_split
                    .fetch_add(retries.split, Ordering::Relaxed);
                stats
                    .retries_reconnect
                    .fetch_add(retries.reconnect, Ordering::Relaxed);
                writer.settle(items, written, (accounts, limits), acknowledge);
                writer.in_flight -= 1;
                writer.stats.journal_heartbeat();
                // What arrived during the commit has waited long enough: write it now.
                writer.write_next_batch(ctx);
            },
        ));
    }

    fn write_atomic(&mut self, atomic: AtomicItem, ctx: &mut Context<Self>) {
        self.in_flight += 1;
        self.last_was_batch = false;
        let (pool, cache, bounds) = (self.pool.clone(), self.cache.clone(), self.bounds.clone());
        let clock = self.clock.clone();
        let started = Instant::now();
        let span = tracing::info_span!(parent: None, "ledger.commit_atomic", batch.size = atomic.movements.len());
        let write = async move {
            let mut result =
                write_atomic(&pool, (&bounds, clock.as_ref()), &atomic.movements).await;
            if let Ok(AtomicOutcome::Committed(report)) = &result {
                let committed: Vec<CommittedBalance> = report
                    .accounts
                    .iter()
                    .map(|state| CommittedBalance {
                        state: *state,
                        at: report.committed_at,
                    })
                    .collect();
                if !cache.write_through(&committed).await.may_acknowledge() {
                    // Committed, but another process could still serve the old balances: the
                    // outcome is answered as unknown (the retry with the same key replays it).
                    result = Err(SubmitError::Unavailable);
                }
            }
            (atomic, result)
        }
        .instrument(span);
        ctx.spawn(
            write
                .into_actor(self)
                .map(move |(atomic, result), writer, ctx| {
                    let reply = match result {
                        Ok(AtomicOutcome::Committed(report)) => {
                            writer
                                .metrics
                                .batch_size
                                .record(atomic.movements.len() as f64);
                            writer
                                .metrics
                                .commit_seconds
                                .record(started.elapsed().as_secs_f64());
                            writer.stats.batches.fetch_add(1, Ordering::Relaxed);
                            writer
                                .stats
                                .batch_items
                                .fetch_add(atomic.movements.len() as u64, Ordering::Relaxed);
                            for movement in &atomic.movements {
                                let kind = movement.kind().as_str();
                                writer.metrics.transaction(kind, "completed");
                                writer.metrics.volume(
                                    kind,
                                    movement.currency(),
                                    movement.amount().minor(),
                                );
                            }
                            for state in report.accounts {
                                writer.directory.do_send(Observed(state));
                            }
                            let at = report.committed_at;
                            Ok(AtomicResult::Committed(Recorded {
                                created_at: at,
                                completed_at: Some(at),
                            }))
                        }
                        Ok(AtomicOutcome::Refused(refused)) => {
                            for (_, refusal) in &refused {
                                writer.metrics.limit_refusal(refusal);
                            }
                            Ok(AtomicResult::Refused(refused))
                        }
                        Ok(AtomicOutcome::Forbidden(items)) => Ok(AtomicResult::Forbidden(items)),
                        Ok(AtomicOutcome::Duplicate) => Ok(AtomicResult::Duplicate),
                        Ok(AtomicOutcome::InactiveParties(parties)) => {
                            Ok(AtomicResult::InactiveParties(parties))
                        }
                        Err(error) => Err(error),
                    };
                    let _ = atomic.reply.send(reply);
                    writer.in_flight -= 1;
                    writer.stats.journal_heartbeat();
                    writer.write_next_batch(ctx);
                }),
        );
    }

    /// Settles holds, shares the observed balances, and answers the callers.
    /// `acknowledge` is false when the batch's write-through neither landed nor invalidated the
    /// cache: its completed movements are answered `Unavailable` (outcome unknown).
    fn settle(
        &mut self,
        items: Vec<Item>,
        written: Vec<Written>,
        (accounts, limits): (Vec<AccountState>, Vec<(AccountKey, Vec<WindowUsage>)>),
        acknowledge: bool,
    ) {
        let limits: HashMap<AccountKey, Vec<WindowUsage>> = limits.into_iter().collect();
        let mut told: HashSet<AccountKey> = HashSet::new();
        for (item, written) in items.into_iter().zip(written) {
            let movement = &item.submission.movement;
            let kind = movement.kind().as_str();
            let debited = movement.debited();
            let result = match written {
                Written::Posted(posting, at) => match posting {
                    Posting::Completed if !acknowledge => {
                        self.metrics.transaction(kind, "completed");
                        self.metrics.failure(kind, "cache_unknown");
                        Err(SubmitError::Unavailable)
                    }
                    Posting::Completed => {
                        self.metrics.transaction(kind, "completed");
                        if let Some(event) = hold_event(movement.phase()) {
                            metrics::counter!(names::HOLDS, "event" => event).increment(1);
                        }
                        if matches!(movement.phase(), Phase::Settle | Phase::Post { .. }) {
                            self.metrics.volume(
                                kind,
                                movement.currency(),
                                movement.amount().minor(),
                            );
                        }
                        Ok(Outcome::Completed(Recorded {
                            created_at: at,
                            completed_at: Some(at),
                        }))
                    }
                    Posting::Refused(refusal) => {
                        self.metrics.transaction(kind, "failed");
                        self.metrics.failure(kind, refusal.reason());
                        self.metrics.limit_refusal(&refusal);
                        Ok(Outcome::Refused(
                            refusal,
                            Recorded {
                                created_at: at,
                                completed_at: None,
                            },
                        ))
                    }
                    Posting::Forbidden => {
                        self.metrics.failure(kind, "forbidden");
                        Ok(Outcome::Forbidden)
                    }
                    Posting::HoldNotPending => {
                        self.metrics.failure(kind, "hold_not_pending");
                        Ok(Outcome::HoldNotPending)
                    }
                    Posting::QuoteUnusable => {
                        self.metrics.failure(kind, "quote_expired");
                        Ok(Outcome::QuoteUnusable)
                    }
                    Posting::ReversalRefused(refusal) => {
                        self.metrics.failure(kind, "not_reversible");
                        Ok(Outcome::ReversalRefused(refusal))
                    }
                    Posting::InactiveParty { user } => {
                        self.metrics.failure(kind, "inactive_party");
                        Ok(Outcome::InactiveParty { user })
                    }
                    Posting::Duplicate {
                        transaction_id,
                        request_hash,
                    } => {
                        let same_request = movement
                            .idempotency()
                            .as_ref()
                            .is_some_and(|claim| claim.request_hash[..] == request_hash[..]);
                        Ok(Outcome::Duplicate {
                            transaction_id,
                            same_request,
                        })
                    }
                },
                Written::Failed(error) => {
                    self.metrics.transaction(kind, "error");
                    let reason = match error {
                        SubmitError::Internal(_) => "internal",
                        SubmitError::Unavailable | SubmitError::Overloaded => "unavailable",
                    };
                    self.metrics.failure(kind, reason);
                    Err(error)
                }
            };
            if let Some(reservation) = item.reservation {
                let observed = accounts
                    .iter()
                    .find(|state| state.account == debited)
                    .copied();
                if observed.is_some() {
                    told.insert(debited);
                }
                let reload = matches!(result, Err(SubmitError::Unavailable));
                reservation.holder.do_send(Settle {
                    release: reservation.amount,
                    observed,
                    reload,
                    limits: limits.get(&debited).cloned(),
                });
            }
            item.submission.answer(result);
        }
        for state in accounts {
            if !told.contains(&state.account) {
                self.directory.do_send(Observed(state));
            }
        }
    }
}

/// How one attempt at writing a range of the batch failed.
enum Failure {
    /// No connection: the database is down (health check) or the pool could not provide one.
    NoConnection(AcquireError),
    Batch(BatchError),
}

/// Writes `items`, splitting on errors so that each failure stays with its own movement.
/// Returns one [`Written`] per item, the final account states, and the re-runs it took.
async fn write_batch(
    pool: &DbPool,
    (bounds, clock): (&Bounds, &dyn Clock),
    items: &[Item],
) -> (
    Vec<Written>,
    Vec<CommittedBalance>,
    Retries,
    Vec<(AccountKey, Vec<WindowUsage>)>,
) {
    let mut written: Vec<Option<Written>> = (0..items.len()).map(|_| None).collect();
    let mut accounts = Vec::new();
    let mut limits = Vec::new();
    let mut retries = Retries::default();
    // Ranges still to write, last popped first; pushed so that earlier movements go first.
    // Each carries how many transient retries it had and whether it was already re-run on a
    // new connection.
    let mut pending: Vec<(Range<usize>, u32, bool)> = vec![(0..items.len(), 0, false)];
    while let Some((range, transient_attempts, reconnected)) = pending.pop() {
        let batch: Vec<BatchItem<'_>> = items[range.clone()]
            .iter()
            .map(|item| BatchItem {
                movement: &item.submission.movement,
                alone: item.alone,
            })
            .collect();
        let result = match pool.get().await {
            Ok(mut client) => {
                let result =
                    crate::store::journal::commit_batch(&mut client, &batch, bounds, clock.now())
                        .await;
                if matches!(&result, Err(error) if error.is_connection_lost()) {
                    // Never hand a broken connection back to the pool.
                    drop(deadpool_postgres::Client::take(client));
                }
                result.map_err(Failure::Batch)
            }
            Err(error) => Err(Failure::NoConnection(error)),
        };
        let error = match result {
            Ok(BatchReport {
                postings,
                committed_at,
                accounts: states,
                attempts,
                limits: counted,
            }) => {
                limits.extend(counted);
                retries.refused += u64::from(attempts - 1);
                for (slot, posting) in written[range].iter_mut().zip(postings) {
                    *slot = Some(Written::Posted(posting, committed_at));
                }
                accounts.extend(states.into_iter().map(|state| CommittedBalance {
                    state,
                    at: committed_at,
                }));
                continue;
            }
            Err(Failure::NoConnection(error)) => {
                if !matches!(error, AcquireError::DatabaseDown) {
                    tracing::warn!(%error, "journal writer: no database connection");
                }
                fail_the_rest(&mut written, &mut pending);
                continue;
            }
            Err(Failure::Batch(error)) => error,
        };
        if (error.is_transient() || error.is_lock_timeout())
            && transient_attempts < TRANSIENT_RETRIES_MAX
        {
            tracing::info!(%error, "journal writer: transient failure, retrying the batch");
            retries.transient += 1;
            pending.push((range, transient_attempts + 1, reconnected));
        } else if error.is_timeout() {
            // Waiting longer will not help this batch: answer 503 now (nothing was written;
            // the idempotency key makes the retry safe).
            tracing::warn!(error = ?error, items = range.len(), "journal writer: batch timed out");
            for slot in &mut written[range] {
                *slot = Some(Written::Failed(SubmitError::Unavailable));
            }
        } else if error.is_outcome_unknown() {
            tracing::warn!(%error, items = range.len(), "journal writer: connection lost during COMMIT, outcome unknown");
            fail_the_rest(&mut written, &mut pending);
        } else if error.is_connection_lost() && !reconnected {
            // Nothing was written (COMMIT was never sent): run it again on a new connection.
            tracing::info!(%error, items = range.len(), "journal writer: connection lost before COMMIT, retrying on a new one");
            retries.reconnect += 1;
            pending.push((range, transient_attempts, true));
        } else if error.is_connection_lost() {
            tracing::warn!(%error, "journal writer: database connection lost again");
            fail_the_rest(&mut written, &mut pending);
        } else if range.len() > 1 {
            tracing::warn!(error = ?error, items = range.len(), "journal writer: batch failed, splitting it");
            retries.split += 1;
            let middle = range.start + range.len() / 2;
            pending.push((middle..range.end, 0, reconnected));
            pending.push((range.start..middle, 0, reconnected));
        } else {
            tracing::error!(error = ?error, "journal writer: a movement failed on its own");
            written[range.start] = Some(Written::Failed(SubmitError::Internal(Arc::new(
                anyhow::Error::new(error).context("a movement failed on its own"),
            ))));
        }
    }
    let written = written
        .into_iter()
        .map(|slot| slot.expect("every range is written or failed"))
        .collect();
    (written, accounts, retries, limits)
}

/// The database is gone: everything not yet written is answered `Unavailable` now rather than
/// queued behind the outage.
fn fail_the_rest(written: &mut [Option<Written>], pending: &mut Vec<(Range<usize>, u32, bool)>) {
    for slot in written.iter_mut().filter(|slot| slot.is_none()) {
        *slot = Some(Written::Failed(SubmitError::Unavailable));
    }
    pending.clear();
}

/// The `tally_holds_total` event a completed movement of `phase` counts as, if any.
fn hold_event(phase: Phase) -> Option<&'static str> {
    match phase {
        Phase::Settle => None,
        Phase::Hold { .. } => Some("created"),
        Phase::Post { .. } => Some("posted"),
        Phase::Release { end, .. } => Some(end.as_str()),
    }
}

/// How often an idle writer reports that it is alive (for readiness).
const IDLE_HEARTBEAT: Duration = Duration::from_millis(500);

impl Actor for JournalWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(IDLE_HEARTBEAT, |writer, _| {
            if writer.in_flight == 0 {
                writer.stats.journal_heartbeat();
            }
        });
    }
}

impl JournalWriter {
    /// After items were buffered: start full batches while commit slots are free, and arm the
    /// linger timer for what is left.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        while self.buffer.len() >= self.settings.batch_size_max
            && self.in_flight < self.settings.commit_concurrency
        {
            self.write_next_batch(ctx);
        }
        if self.buffer.is_empty() || self.in_flight >= self.settings.commit_concurrency {
            return;
        }
        if self.linger_timer.is_none() {
            self.linger_timer = Some(ctx.run_later(self.settings.linger, |writer, ctx| {
                writer.linger_timer = None;
                writer.write_next_batch(ctx);
            }));
        }
    }
}

impl Handler<AppendMany> for JournalWriter {
    type Result = ();

    fn handle(&mut self, AppendMany(items): AppendMany, ctx: &mut Context<Self>) {
        self.buffer.extend(items);
        self.schedule(ctx);
    }
}

impl Handler<Append> for JournalWriter {
    type Result = ();

    fn handle(&mut self, Append(item): Append, ctx: &mut Context<Self>) {
        self.buffer.push(item);
        if self.in_flight >= self.settings.commit_concurrency {
            return;
        }
        // Lingering only pays when another movement can join the batch. When requests come
        // one at a time (the last batch carried one movement), no commit is in flight and
        // every admitted movement is already in the buffer, none can arrive before a new
        // request is admitted, so the batch is written at once (PostgreSQL's `commit_delay`
        // applies a like test: it waits only with `commit_siblings` others active). Under
        // load the batch lingers: admitted movements are upstream, and after a wave of
        // replies the last batch was large, so the first request of the next wave waits for
        // the rest instead of taking a commit (and its row locks) alone.
        let alone = self.in_flight == 0
            && self.last_batch_size <= 1
            && self.admitted.count() <= self.buffer.len();
        if self.buffer.len() >= self.settings.batch_size_max || alone {
            self.write_next_batch(ctx);
        } else if self.linger_timer.is_none() {
            self.linger_timer = Some(ctx.run_later(self.settings.linger, |writer, ctx| {
                writer.linger_timer = None;
                writer.write_next_batch(ctx);
            }));
        }
    }
}

/// Commits an atomic set, retrying transient failures (and once on a new connection when the
/// old one was lost before `COMMIT`). A lost connection is `Unavailable`; any other database
/// error fails the set (nothing was written).
async fn write_atomic(
    pool: &DbPool,
    (bounds, clock): (&Bounds, &dyn Clock),
    movements: &[Movement],
) -> Result<AtomicOutcome, SubmitError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut client = pool.get().await.map_err(|error| {
            tracing::warn!(%error, "journal writer: no database connection");
            SubmitError::Unavailable
        })?;
        let result =
            crate::store::journal::commit_atomic(&mut client, movements, bounds, clock.now()).await;
        if matches!(&result, Err(error) if error.is_connection_lost()) {
            // Never hand a broken connection back to the pool.
            drop(deadpool_postgres::Client::take(client));
        }
        match result {
            Ok(outcome) => return Ok(outcome),
            Err(error)
                if (error.is_transient() || error.is_lock_timeout())
                    && attempts <= TRANSIENT_RETRIES_MAX =>
            {
                tracing::info!(error = ?error, "journal writer: transient failure, retrying the atomic set");
            }
            Err(error) if error.is_connection_lost() || error.is_timeout() => {
                tracing::warn!(error = ?error, "journal writer: atomic set not committed");
                return Err(SubmitError::Unavailable);
            }
            Err(error) => {
                tracing::error!(error = ?error, "journal writer: an atomic set failed");
                return Err(SubmitError::Internal(Arc::new(
                    anyhow::Error::new(error).context("an atomic set failed"),
                )));
            }
        }
    }
}

impl Handler<AppendAtomic> for JournalWriter {
    type Result = ();

    fn handle(&mut self, AppendAtomic(atomic): AppendAtomic, ctx: &mut Context<Self>) {
        self.atomics.push_back(atomic);
        self.write_next_batch(ctx);
    }
}
