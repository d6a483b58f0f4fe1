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

mod balance;
mod directory;
mod journal;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Arbiter, AsyncContext};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::cache::BalanceCache;
use crate::config::PipelineSettings;
use crate::domain::Movement;

/// How the ledger settled a movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: the transaction is `completed` and its entries are written.
    Completed(Recorded),
    /// Committed as a `failed` transaction: the debited account's balance (with its overdraft
    /// limit) was lower than the amount.
    InsufficientFunds(Recorded),
    /// The idempotency key was used before: nothing was applied. `same_request` tells whether
    /// the first request had the same body (then the caller replays `transaction_id`'s result).
    Duplicate {
        transaction_id: Uuid,
        same_request: bool,
    },
}

/// How the ledger settled a set of movements submitted all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtomicResult {
    /// All applied in one commit.
    Committed(Recorded),
    /// None applied: the movements at these indices did not fit their debited account's
    /// balance (with its overdraft limit) at their turn in the sequence.
    InsufficientFunds(Vec<usize>),
    /// Their idempotency keys were used before: the set was applied by an earlier request.
    Duplicate,
}

/// Timestamps of a transaction the journal wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Why a movement got no outcome. None of these acknowledges anything: a retry with the same
/// idempotency key is always safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The pipeline is full (503 `overloaded`).
    #[error("the submission queue is full")]
    Overloaded,
    /// The database is unreachable or the commit did not finish in time (503).
    #[error("the ledger database is unavailable")]
    Unavailable,
    /// The movement failed on its own in the database for an unexpected reason (500).
    #[error("internal ledger error: {0}")]
    Internal(String),
}

/// A movement on its way through the pipeline, with the channel its caller waits on and the
/// admission permit released when it is answered.
pub(crate) struct Submission {
    movement: Movement,
    reply: oneshot::Sender<Result<Outcome, SubmitError>>,
    enqueued_at: Instant,
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
    pub batch_retries: AtomicU64,
    pub rejected_overloaded: AtomicU64,
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
}

impl Ledger {
    /// Starts the actors: the journal writer on its own arbiter, the directory, `workers` worker
    /// actors, and one arbiter per core for the balance actors. Must be called inside a running
    /// actix `System`.
    ///
    /// `pool` serves balance loads; `journal_pool` the group commits; committed balances are
    /// written through to `cache` before callers are answered.
    pub fn start(
        settings: &PipelineSettings,
        pool: Pool,
        journal_pool: Pool,
        cache: Arc<BalanceCache>,
    ) -> Ledger {
        let stats = Arc::new(PipelineStats::default());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let balance_arbiters: Vec<_> = (0..cores).map(|_| Arbiter::new().handle()).collect();

        let directory_context = actix::Context::<directory::Directory>::new();
        let directory_address = directory_context.address();
        let journal_settings = journal::JournalSettings {
            batch_size_max: settings.batch_size_max,
            linger: Duration::from_micros(settings.batch_linger_us),
        };
        let journal_stats = stats.clone();
        let journal =
            journal::JournalWriter::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                journal::JournalWriter::new(
                    journal_pool,
                    cache,
                    directory_address,
                    journal_settings,
                    journal_stats,
                )
            });
        let directory = directory_context.run(directory::Directory::new(
            balance_arbiters,
            pool,
            journal.clone(),
            Duration::from_millis(settings.actor_idle_timeout_ms),
            stats.clone(),
        ));

        let (sender, receiver) = async_channel::bounded(settings.queue_capacity);
        for _ in 0..settings.workers {
            worker::Worker::start(receiver.clone(), directory.clone(), journal.clone());
        }
        Ledger {
            queue: sender,
            journal,
            admission: Arc::new(Semaphore::new(settings.queue_capacity)),
            capacity: settings.queue_capacity,
            reply_timeout: Duration::from_millis(settings.reply_timeout_ms),
            stats,
        }
    }

    /// Submits a movement and waits for its commit.
    ///
    /// Errors: [`SubmitError::Overloaded`] at once when `queue_capacity` movements are in
    /// flight; [`SubmitError::Unavailable`] when the database fails or no answer came within
    /// `reply_timeout_ms` (the movement may still commit later; its idempotency key makes the
    /// retry safe); [`SubmitError::Internal`] when the movement failed alone in the database.
    pub async fn submit(&self, movement: Movement) -> Result<Outcome, SubmitError> {
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            self.stats
                .rejected_overloaded
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded);
        };
        let (reply, answer) = oneshot::channel();
        let submission = Submission {
            movement,
            reply,
            enqueued_at: Instant::now(),
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
            Ok(Err(_)) => Err(SubmitError::Internal(
                "the pipeline dropped the submission".into(),
            )),
            Err(_) => Err(SubmitError::Unavailable),
        }
    }

    /// Submits many movements that succeed or fail each on its own (they share group commits
    /// with everything else in the pipeline). Answers in input order. All are admitted or none:
    /// when fewer than `movements.len()` permits are free, every answer is `Overloaded`.
    pub async fn submit_many(&self, movements: Vec<Movement>) -> Vec<Result<Outcome, SubmitError>> {
        let count = movements.len();
        let Some(permits) = self.admit(count) else {
            return vec![Err(SubmitError::Overloaded); count];
        };
        let answers: Vec<_> = movements
            .into_iter()
            .zip(permits)
            .map(|(movement, permit)| {
                let (reply, answer) = oneshot::channel();
                let submission = Submission {
                    movement,
                    reply,
                    enqueued_at: Instant::now(),
                    _permit: permit,
                };
                let sent = self
                    .queue
                    .try_send(submission)
                    .map_err(|_| SubmitError::Unavailable);
                (sent, answer)
            })
            .collect();
        let waits = answers.into_iter().map(|(sent, answer)| async move {
            sent?;
            self.await_answer(answer).await
        });
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
            Ok(Err(_)) => Err(SubmitError::Internal(
                "the pipeline dropped the submission".into(),
            )),
            Err(_) => Err(SubmitError::Unavailable),
        }
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
