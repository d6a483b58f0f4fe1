//! The transaction pipeline (DESIGN.md section 5), built from actix actors:
//!
//! ```text
//! Ledger::submit ──try_send──► submission queue (bounded) ──► Worker × N
//!        ▲                                                      │ debits: Reserve
//!        │ reply (oneshot)                                       ▼
//!        │                                                  Directory ──► BalanceActor per (user, currency)
//!        │                                                      (spawns, routes, evicts)   │ hold taken
//!        └──────────────── JournalWriter (group commit) ◄───────────────────────────────────┘
//! ```
//!
//! Admission control covers the whole pipeline, not just the queue: a submission takes one of
//! `queue_capacity` permits and holds it until its caller has been answered, so at most
//! `queue_capacity` transactions are inside the pipeline at any moment and every actor mailbox
//! behind the queue is bounded by that same number. When no permit is free the caller gets
//! [`SubmitError::Overloaded`] at once (503 with `Retry-After`).
//!
//! Fail fast: while the database health check fails, or once shutdown has begun, a submission
//! is refused before it takes a permit ([`SubmitError::Unavailable`]), so an outage never
//! fills the pipeline with work that can only time out.
//!
//! Shutdown: [`Ledger::drain`] refuses new submissions and waits until every admitted one has
//! been answered, which means its batch was committed (or failed) first; it holds all permits
//! at the end, so nothing can be admitted after it.
//!
//! Tracing: each submission runs in a `ledger.submit` span (a child of the HTTP request's
//! span); a `ledger.queue_wait` span lasts from the queue to a worker; the journal writer's
//! `ledger.commit_batch` span links to the `ledger.submit` span of every movement it carried.

mod balance;
mod directory;
mod journal;
mod messages;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Arbiter, AsyncContext};
use chrono::{DateTime, Utc};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::cache::BalanceCache;
use crate::config::PipelineSettings;
use crate::domain::{Bounds, Movement, Refusal};
use crate::store::{DatabaseHealth, DbPool};
use crate::telemetry::names;

/// How the ledger settled a movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: the transaction is `completed` and its entries are written.
    Completed(Recorded),
    /// Committed as a `failed` transaction: a posting rule refused it (`domain::rules`).
    Refused(Refusal, Recorded),
    /// The idempotency key was used before: nothing was applied. `same_request` tells whether
    /// the first request had the same body (then the caller replays `transaction_id`'s result).
    Duplicate {
        transaction_id: Uuid,
        same_request: bool,
    },
    /// `user` (a party or the initiator) is unknown or deleted: nothing was applied or recorded.
    InactiveParty { user: crate::domain::UserId },
    /// The movement relied on the initiator being an admin, and at the commit the initiator no
    /// longer was: nothing was applied or recorded.
    Forbidden,
    /// The movement posts or releases a hold that was no longer pending at the commit (resolved
    /// before, or its deadline passed): nothing was applied or recorded.
    HoldNotPending,
    /// The reversal was refused by the transaction it reverses (not reversible, or more than
    /// is left of it): nothing was applied or recorded.
    ReversalRefused(crate::store::journal::ReversalRefusal),
    /// The exchange's quote had expired, was used, or is not the initiator's at the commit:
    /// nothing was applied or recorded.
    QuoteUnusable,
}

/// How the ledger settled a set of movements submitted all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtomicResult {
    /// All applied in one commit.
    Committed(Recorded),
    /// None applied or recorded: the movements at these indices would break a posting rule at
    /// their turn in the sequence.
    Refused(Vec<(usize, Refusal)>),
    /// Their idempotency keys were used before: the set was applied by an earlier request.
    Duplicate,
    /// None applied: these movements (index, user) name an unknown or deleted user.
    InactiveParties(Vec<(usize, crate::domain::UserId)>),
    /// None applied: the initiator is no longer an admin and these movements relied on it.
    Forbidden(Vec<usize>),
}

/// Timestamps of a transaction the journal wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Why a movement got no outcome. None of these acknowledges anything: a retry with the same
/// idempotency key is always safe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The pipeline is full (503 `overloaded`).
    #[error("the submission queue is full")]
    Overloaded,
    /// The database is unreachable or the commit did not finish in time (503).
    #[error("the ledger database is unavailable")]
    Unavailable,
    /// The movement failed on its own in the database for an unexpected reason (500). The
    /// cause chain is kept for the log.
    #[error("internal ledger error")]
    Internal(#[source] Arc<anyhow::Error>),
}

/// A movement on its way through the pipeline, with the channel its caller waits on and the
/// admission permit released when it is answered.
pub(crate) struct Submission {
    movement: Movement,
    reply: oneshot::Sender<Result<Outcome, SubmitError>>,
    enqueued_at: Instant,
    /// Open from submission until a worker takes it (the trace's view of the queue wait).
    queue_span: tracing::Span,
    /// The submitting `ledger.submit` span, which the batch commit span links to (invalid when
    /// no OpenTelemetry layer is installed, and then no link is made).
    trace_context: SpanContext,
    _permit: OwnedSemaphorePermit,
}

impl Submission {
    fn answer(self, result: Result<Outcome, SubmitError>) {
        // The caller may have gone (timeout, disconnect); the outcome stands either way.
        let _ = self.reply.send(result);
    }
}

/// Counters the pipeline keeps with atomics (no lock on the hot path); `/metrics` reads them.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub balance_actors: AtomicU64,
    pub actor_evictions: AtomicU64,
    pub batches: AtomicU64,
    pub batch_items: AtomicU64,
    /// Re-runs because the database refused accounts the caches had accepted.
    pub retries_refused: AtomicU64,
    /// Re-runs after a deadlock or serialization failure.
    pub retries_transient: AtomicU64,
    /// Halves re-run after a statement error, to isolate the culprit.
    pub retries_split: AtomicU64,
    /// Re-runs on a new connection after the old one was lost before `COMMIT`.
    pub retries_reconnect: AtomicU64,
    pub rejected_overloaded: AtomicU64,
    pub rejected_database_down: AtomicU64,
    pub rejected_shutting_down: AtomicU64,
    /// When the journal writer last showed progress (a commit finished, or it was idle), in
    /// milliseconds of the process's monotonic clock ([`monotonic_ms`]).
    pub journal_heartbeat_ms: AtomicU64,
}

/// Milliseconds since the first call in this process, from the monotonic clock.
pub fn monotonic_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl PipelineStats {
    /// The journal writer is making progress now.
    pub(crate) fn journal_heartbeat(&self) {
        self.journal_heartbeat_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long since the journal writer last showed progress.
    pub fn journal_silent_for(&self) -> Duration {
        let last = self.journal_heartbeat_ms.load(Ordering::Relaxed);
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }
}

/// The handle request handlers use to submit movements. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    queue: async_channel::Sender<Submission>,
    journal: actix::Addr<journal::JournalWriter>,
    admission: Arc<Semaphore>,
    capacity: usize,
    reply_timeout: Duration,
    stats: Arc<PipelineStats>,
    health: DatabaseHealth,
    closing: Arc<AtomicBool>,
    /// With work in flight and no commit finished for this long, the journal writer counts as
    /// stuck (`pipeline.reply_timeout_ms`: its callers have given up by then).
    journal_stuck_after: Duration,
}

impl Ledger {
    /// Starts the actors: the journal writer on its own arbiter, the directory, `workers` worker
    /// actors, and one arbiter per core for the balance actors. Must be called inside a running
    /// actix `System`.
    ///
    /// `pool` serves balance loads; `journal_pool` the group commits. Both fail fast while
    /// their (shared) database health says the database is down. Committed balances are
    /// written through to `cache` before callers are answered.
    pub fn start(
        settings: &PipelineSettings,
        (bounds, clock): (Arc<Bounds>, Arc<dyn crate::clock::Clock>),
        pool: DbPool,
        journal_pool: DbPool,
        cache: Arc<BalanceCache>,
    ) -> Ledger {
        let health = pool.health().clone();
        let stats = Arc::new(PipelineStats::default());
        stats.journal_heartbeat();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let balance_arbiters: Vec<_> = (0..cores).map(|_| Arbiter::new().handle()).collect();

        let directory_context = actix::Context::<directory::Directory>::new();
        let directory_address = directory_context.address();
        let journal_settings = journal::JournalSettings {
            batch_size_max: settings.batch_size_max,
            linger: Duration::from_micros(settings.batch_linger_us),
            commit_concurrency: settings.commit_concurrency,
        };
        let admission = Arc::new(Semaphore::new(settings.queue_capacity));
        let admitted = journal::Admitted {
            semaphore: admission.clone(),
            capacity: settings.queue_capacity,
        };
        let journal_stats = stats.clone();
        let journal_bounds = bounds.clone();
        let journal =
            journal::JournalWriter::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                journal::JournalWriter::new(
                    journal_pool,
                    (journal_bounds, clock),
                    cache,
                    directory_address.recipient(),
                    journal_settings,
                    journal_stats,
                    admitted,
                )
            });
        let directory = directory_context.run(directory::Directory::new(
            balance_arbiters,
            pool,
            journal.clone().recipient(),
            bounds,
            Duration::from_millis(settings.actor_idle_timeout_ms),
            stats.clone(),
        ));

        let (sender, receiver) = async_channel::bounded(settings.queue_capacity);
        for _ in 0..settings.workers {
            worker::Worker::start(
                receiver.clone(),
                directory.clone().recipient(),
                journal.clone().recipient(),
            );
        }
        Ledger {
            queue: sender,
            journal,
            admission,
            capacity: settings.queue_capacity,
            reply_timeout: Duration::from_millis(settings.reply_timeout_ms),
            stats,
            health,
            closing: Arc::new(AtomicBool::new(false)),
            journal_stuck_after: Duration::from_millis(settings.reply_timeout_ms),
        }
    }

    /// Submits a movement and waits for its commit.
    ///
    /// Errors: [`SubmitError::Overloaded`] at once when `queue_capacity` movements are in
    /// flight; [`SubmitError::Unavailable`] when the database fails or no answer came within
    /// `reply_timeout_ms` (the movement may still commit later; its idempotency key makes the
    /// retry safe); [`SubmitError::Internal`] when the movement failed alone in the database.
    /// Also [`SubmitError::Unavailable`] at once while the database is down or after
    /// [`Ledger::drain`] began.
    pub async fn submit(&self, movement: Movement) -> Result<Outcome, SubmitError> {
        let span = tracing::info_span!(
            "ledger.submit",
            transaction.id = %movement.id(),
            "transaction.type" = movement.kind().as_str(),
        );
        let kind = movement.kind().as_str();
        let result = self.submit_in_span(movement).instrument(span).await;
        if let Err(SubmitError::Unavailable) = &result {
            tracing::debug!(kind, "submission refused: ledger unavailable");
        }
        result
    }

    /// Refuses at once while shutting down or while the database is down.
    fn accepting(&self) -> Result<(), SubmitError> {
        if self.closing.load(Ordering::Relaxed) {
            self.stats
                .rejected_shutting_down
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Unavailable);
        }
        if !self.health.is_up() {
            self.stats
                .rejected_database_down
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Unavailable);
        }
        Ok(())
    }

    async fn submit_in_span(&self, movement: Movement) -> Result<Outcome, SubmitError> {
        self.accepting()?;
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            self.stats
                .rejected_overloaded
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded);
        };
        let (reply, answer) = oneshot::channel();
        let kind = movement.kind().as_str();
        let submission = Submission {
            movement,
            reply,
            enqueued_at: Instant::now(),
            queue_span: tracing::info_span!("ledger.queue_wait"),
            trace_context: tracing::Span::current()
                .context()
                .span()
                .span_context()
                .clone(),
            _permit: permit,
        };
        self.queue
            .try_send(submission)
            .map_err(|error| match error {
                // Cannot happen while the queue is as large as the number of permits; kept exact.
                async_channel::TrySendError::Full(_) => SubmitError::Overloaded,
                async_channel::TrySendError::Closed(_) => SubmitError::Unavailable,
            })?;
        match tokio::time::timeout(self.reply_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SubmitError::Internal(Arc::new(anyhow::anyhow!(
                "the pipeline dropped the submission"
            )))),
            Err(_) => {
                metrics::counter!(names::TRANSACTION_FAILURES, "type" => kind, "reason" => "timeout")
                    .increment(1);
                Err(SubmitError::Unavailable)
            }
        }
    }

    /// Submits many movements that succeed or fail each on its own (they share group commits
    /// with everything else in the pipeline; they go to the journal writer in one message and
    /// take no holds, the database's conditional update deciding each). Answers in input order. All are admitted or none:
    /// when fewer than `movements.len()` permits are free, every answer is `Overloaded`.
    pub async fn submit_many(&self, movements: Vec<Movement>) -> Vec<Result<Outcome, SubmitError>> {
        let count = movements.len();
        if let Err(error) = self.accepting() {
            return vec![Err(error); count];
        }
        let Some(permits) = self.admit(count) else {
            return vec![Err(SubmitError::Overloaded); count];
        };
        // Straight to the journal writer, in one message: no hold is taken, the database's
        // conditional update decides each movement (see `journal::AppendMany`).
        let mut answers = Vec::with_capacity(count);
        let items: Vec<messages::Item> = movements
            .into_iter()
            .zip(permits)
            .map(|(movement, permit)| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                let submission = Submission {
                    movement,
                    reply,
                    enqueued_at: Instant::now(),
                    queue_span: tracing::Span::none(),
                    trace_context: tracing::Span::current()
                        .context()
                        .span()
                        .span_context()
                        .clone(),
                    _permit: permit,
                };
                messages::Item {
                    submission,
                    reservation: None,
                    alone: false,
                }
            })
            .collect();
        self.journal.do_send(journal::AppendMany(items));
        let waits = answers.into_iter().map(|answer| self.await_answer(answer));
        futures_util::future::join_all(waits).await
    }

    /// Submits movements to apply all or nothing, in order, in one commit of their own.
    ///
    /// Errors: as [`Ledger::submit`]; `Overloaded` when fewer than `movements.len()` permits
    /// are free.
    pub async fn submit_atomic(
        &self,
        movements: Vec<Movement>,
    ) -> Result<AtomicResult, SubmitError> {
        self.accepting()?;
        let permits = self.admit(movements.len()).ok_or(SubmitError::Overloaded)?;
        let permit = permits.into_iter().reduce(|mut all, permit| {
            all.merge(permit);
            all
        });
        let Some(permit) = permit else {
            return Ok(AtomicResult::Committed(Recorded {
                created_at: chrono::Utc::now(),
                completed_at: None,
            }));
        };
        let (reply, answer) = oneshot::channel();
        self.journal
            .do_send(journal::AppendAtomic(journal::AtomicItem {
                movements,
                reply,
                _permit: permit,
            }));
        self.await_answer(answer).await
    }

    /// `count` permits, or none (and a rejection counted) when not that many are free.
    fn admit(&self, count: usize) -> Option<Vec<OwnedSemaphorePermit>> {
        let mut permits = Vec::with_capacity(count);
        for _ in 0..count {
            match self.admission.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    self.stats
                        .rejected_overloaded
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        Some(permits)
    }

    async fn await_answer<T>(
        &self,
        answer: oneshot::Receiver<Result<T, SubmitError>>,
    ) -> Result<T, SubmitError> {
        match tokio::time::timeout(self.reply_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SubmitError::Internal(Arc::new(anyhow::anyhow!(
                "the pipeline dropped the submission"
            )))),
            Err(_) => Err(SubmitError::Unavailable),
        }
    }

    /// Refuses new submissions, then waits until every admitted one has been answered (its
    /// batch committed or failed), at most `timeout`.
    ///
    /// Errors: the number of submissions still in flight when `timeout` ran out.
    pub async fn drain(&self, timeout: Duration) -> Result<(), usize> {
        self.closing.store(true, Ordering::Relaxed);
        let permits = u32::try_from(self.capacity).expect("queue_capacity fits in u32");
        // Bound first: the timed-out acquisition must be dropped (returning the permits it had
        // gathered) before `in_flight` is read.
        let acquired = tokio::time::timeout(timeout, self.admission.acquire_many(permits)).await;
        match acquired {
            Ok(Ok(all)) => {
                // Keep them: nothing may be admitted after the drain.
                all.forget();
                Ok(())
            }
            Ok(Err(_)) => unreachable!("the admission semaphore is never closed"),
            Err(_) => Err(self.in_flight()),
        }
    }

    /// Whether the journal writer is alive and not stuck: its actor runs, and it finished a
    /// commit (or had nothing to do) within `pipeline.reply_timeout_ms`. Readiness is false
    /// otherwise, since nothing submitted could be committed.
    pub fn journal_healthy(&self) -> bool {
        self.journal.connected() && self.stats.journal_silent_for() < self.journal_stuck_after
    }

    /// Whether the database health check currently succeeds.
    pub fn database_up(&self) -> bool {
        self.health.is_up()
    }

    /// Movements admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.admission.available_permits()
    }

    /// Movements waiting in the submission queue for a worker.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The submission queue's capacity (`pipeline.queue_capacity`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }
}

/// The queue wait of a submission, for the histogram.
fn queue_wait(submission: &Submission) -> Duration {
    submission.enqueued_at.elapsed()
}
