//! The schedule executor (DESIGN.md section 9): every instance runs one (started by
//! `startup::background`), ticking every `schedules.tick_ms`. A tick is one database
//! transaction:
//!
//! 1. claim up to `schedules.batch_max` active schedules due at the ledger clock's now
//!    (`FOR UPDATE SKIP LOCKED`: another instance's tick, or a pause in progress, holds the
//!    others);
//! 2. for each, decide its due occurrences in order: build the movement from the stored
//!    template again (as the owner, with the owner's role now; limits and balances are the
//!    pipeline's to decide at this moment), submit it through `Ledger::submit` (the one posting
//!    path) with the idempotency key `schedule:<id>:<n>` (`schedule:<id>:<n>:<attempt>` from the
//!    second attempt of a retried occurrence on), and record the run;
//! 3. advance the schedule, write the runs and their events, COMMIT.
//!
//! **Exactly once.** A run's transaction commits in the pipeline before the tick's own
//! transaction records it. If the process dies in between, the tick rolls back, the row lock is
//! released, and the next tick (of any instance) submits the same occurrence with the same key:
//! the pipeline answers `Duplicate` and the run is recorded from the stored transaction. Each
//! occurrence has one run row (the primary key) and at most one transaction per attempt key.
//! This holds while the key is kept (`idempotency.retention_hours` after the first attempt).
//!
//! **Misfires.** An occurrence due more than `schedules.misfire_grace_s` before now (the
//! service was down) is decided by the schedule's policy: `catch_up` runs every missed
//! occurrence in order, `run_once` runs the latest missed one and records the others
//! `skipped`, `skip` records them all `skipped`. A tick decides at most
//! [`OCCURRENCES_PER_TICK`] occurrences of a schedule; the rest follow at the next tick.
//!
//! **Failures.** A refused run (insufficient funds, a limit, a template no longer valid) is
//! recorded `failed` with its problem and failed transaction, or, with `on_failure: retry`,
//! tried again every `schedules.retry_interval_s` up to `schedules.retry_max_attempts`
//! attempts. A transient answer (503: overloaded, database unavailable) leaves the occurrence
//! due, to be tried again at the next tick without counting as an attempt.

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::{
    Authority, IdempotencyKey, MisfirePolicy, OnFailure, RunOutcome, ScheduleStatus,
    TransactionStatus,
};
use crate::error::{ApiError, FieldError};
use crate::ledger::{Outcome, SubmitError};
use crate::routes::posting::{inactive_party, ONLY_ADMIN};
use crate::routes::schedules::template_movement;
use crate::routes::AppState;
use crate::store::schedules::{self as store_schedules, Progress, RunRecord, ScheduleRecord};
use crate::store::{self, transactions::TransactionRecord};
use crate::telemetry::names;

/// Most occurrences of one schedule decided by one tick (runs and skips alike).
pub const OCCURRENCES_PER_TICK: usize = 100;

/// The idempotency key of attempt `attempt` (from 1) of occurrence `n` of schedule `id`.
pub fn run_key(id: Uuid, n: i64, attempt: i32) -> String {
    if attempt <= 1 {
        format!("schedule:{id}:{n}")
    } else {
        format!("schedule:{id}:{n}:{attempt}")
    }
}

/// How one attempt ended.
enum Attempt {
    /// Committed: the transaction (completed, or a pending hold).
    Completed(Uuid),
    /// Refused: the problem, and the failed transaction when the ledger recorded one.
    Refused {
        transaction_id: Option<Uuid>,
        problem: Value,
    },
    /// Not decided (503): try again next tick, not counted as an attempt.
    Transient,
}

/// What a tick did to one schedule, to report after its commit.
#[derive(Default)]
struct Decided {
    /// (outcome label, lag in seconds for runs).
    outcomes: Vec<(&'static str, Option<f64>)>,
}

fn problem(error: &ApiError) -> Value {
    serde_json::to_value(error.problem()).unwrap_or_else(|_| json!({"code": "internal"}))
}

/// One tick: decides the due occurrences of up to `schedules.batch_max` schedules in one
/// database transaction. Returns whether the batch was full (more may be due).
///
/// Errors: the database failed; nothing of the tick is recorded (the runs it submitted are
/// recorded from their keys by a later tick).
pub async fn tick(state: &AppState) -> anyhow::Result<bool> {
    let settings = &state.settings.schedules;
    let now = state.clock.now();
    let batch = i64::from(settings.batch_max);
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let due = store_schedules::claim_due(&transaction, now, batch).await?;
    if due.is_empty() {
        return Ok(false);
    }
    let full = due.len() as i64 == batch;
    let decided = join_all(
        due.into_iter()
            .map(|schedule| run_schedule(state, &transaction, schedule, now)),
    )
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<Decided>>>()?;
    transaction.commit().await?;
    for (outcome, lag_s) in decided.iter().flat_map(|decided| &decided.outcomes) {
        metrics::counter!(names::SCHEDULE_RUNS, "outcome" => *outcome).increment(1);
        if let Some(lag_s) = lag_s {
            metrics::histogram!(names::SCHEDULE_LAG_SECONDS).record(*lag_s);
        }
    }
    Ok(full)
}

/// Decides the due occurrences of `schedule` (locked by the caller's transaction), writing its
/// runs, events and progress in that transaction.
async fn run_schedule(
    state: &AppState,
    client: &impl deadpool_postgres::GenericClient,
    schedule: ScheduleRecord,
    now: DateTime<Utc>,
) -> anyhow::Result<Decided> {
    let settings = &state.settings.schedules;
    let mut decided = Decided::default();
    let calendar = match schedule.calendar() {
        Ok(calendar) => calendar,
        Err(error) => {
            // Only a row changed by hand can get here; it is left alone, and said.
            tracing::error!(schedule = %schedule.id, %error, "a schedule's calendar is invalid");
            return Ok(decided);
        }
    };
    let owner = store::users::find_active(client, schedule.user.as_uuid())
        .await?
        .map(|user| Principal {
            user: user.id,
            role: user.role,
        });
    let grace = chrono::Duration::seconds(i64::try_from(settings.misfire_grace_s)?);
    let retry = chrono::Duration::seconds(i64::try_from(settings.retry_interval_s)?);
    let retry_max = i32::try_from(settings.retry_max_attempts)?;
    let mut progress = schedule.progress.clone();
    let first = u64::try_from(progress.next_occurrence)?;
    // The occurrences after the current one, walked once.
    let mut rest = calendar.from_occurrence(first + 1).peekable();
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut retried: Option<Value> = None;
    for _ in 0..OCCURRENCES_PER_TICK {
        let (Some(due), Some(run_at)) = (progress.next_due_at, progress.next_run_at) else {
            break;
        };
        if progress.status != ScheduleStatus::Active || run_at > now {
            break;
        }
        let n = progress.next_occurrence;
        let misfired = progress.attempt == 1 && due < now - grace;
        let skip = misfired
            && match schedule.misfire_policy {
                MisfirePolicy::Skip => true,
                MisfirePolicy::CatchUp => false,
                // Only the latest missed occurrence runs.
                MisfirePolicy::RunOnce => rest.peek().is_some_and(|(_, next)| *next < now - grace),
            };
        let outcome = if skip {
            None
        } else {
            match attempt(state, client, &schedule, owner, n, progress.attempt).await? {
                Attempt::Transient => break,
                other => Some(other),
            }
        };
        let run = |outcome, transaction_id, problem| RunRecord {
            occurrence: n,
            attempt: progress.attempt,
            due_at: due,
            ran_at: now,
            outcome,
            transaction_id,
            problem,
        };
        let lag_s = Some((now - due).as_seconds_f64());
        match outcome {
            None => {
                runs.push(run(
                    RunOutcome::Skipped,
                    None,
                    Some(json!({"reason": "misfire"})),
                ));
                decided.outcomes.push(("skipped", None));
            }
            Some(Attempt::Completed(transaction_id)) => {
                runs.push(run(RunOutcome::Completed, Some(transaction_id), None));
                decided.outcomes.push(("completed", lag_s));
            }
            Some(Attempt::Refused {
                transaction_id,
                problem,
            }) => {
                if schedule.on_failure == OnFailure::Retry && progress.attempt < retry_max {
                    progress.attempt += 1;
                    progress.next_run_at = Some(now + retry);
                    progress.last_problem = Some(problem.clone());
                    retried = Some(json!({
                        "occurrence": n,
                        "failed_attempt": progress.attempt - 1,
                        "transaction_id": transaction_id,
                        "problem": problem,
                        "next_attempt": progress.attempt,
                        "next_run_at": progress.next_run_at,
                    }));
                    decided.outcomes.push(("retried", None));
                    break;
                }
                runs.push(run(RunOutcome::Failed, transaction_id, Some(problem)));
                decided.outcomes.push(("failed", lag_s));
            }
            Some(Attempt::Transient) => unreachable!("a transient attempt breaks the loop"),
        }
        // On to the next occurrence, or the end of the schedule.
        progress = match rest.next() {
            Some((next, next_due)) => Progress {
                status: ScheduleStatus::Active,
                next_occurrence: i64::try_from(next)?,
                next_due_at: Some(next_due),
                next_run_at: Some(next_due),
                attempt: 1,
                last_problem: None,
            },
            None => Progress {
                status: ScheduleStatus::Completed,
                next_occurrence: n + 1,
                next_due_at: None,
                next_run_at: None,
                attempt: 1,
                last_problem: None,
            },
        };
    }
    if progress == schedule.progress {
        return Ok(decided);
    }
    store_schedules::save_progress(client, schedule.id, &progress).await?;
    store_schedules::record_runs(client, schedule.id, &runs).await?;
    let common = |payload: &mut Value| {
        payload["schedule_id"] = json!(schedule.id);
        payload["user_id"] = json!(schedule.user.as_uuid());
        payload["schedule_status"] = json!(progress.status.as_str());
    };
    for run in &runs {
        let mut payload = json!({
            "occurrence": run.occurrence,
            "attempt": run.attempt,
            "due_at": run.due_at,
            "ran_at": run.ran_at,
            "outcome": run.outcome.as_str(),
            "transaction_id": run.transaction_id,
            "problem": run.problem,
        });
        common(&mut payload);
        let event = if run.outcome == RunOutcome::Failed {
            "schedule.failed"
        } else {
            "schedule.run"
        };
        store_schedules::record_event(client, schedule.id, event, &payload).await?;
    }
    if let Some(mut payload) = retried {
        common(&mut payload);
        store_schedules::record_event(client, schedule.id, "schedule.retry", &payload).await?;
    }
    Ok(decided)
}

/// Submits attempt `attempt` of occurrence `n` of `schedule` as `owner` (`None`: the owner was
/// deleted).
async fn attempt(
    state: &AppState,
    client: &impl deadpool_postgres::GenericClient,
    schedule: &ScheduleRecord,
    owner: Option<Principal>,
    n: i64,
    attempt: i32,
) -> anyhow::Result<Attempt> {
    let refused = |error: ApiError| Attempt::Refused {
        transaction_id: None,
        problem: problem(&error),
    };
    let Some(owner) = owner else {
        return Ok(refused(ApiError::Unauthorized(
            "the schedule's owner no longer exists",
        )));
    };
    let Some(template) = schedule.template.as_object() else {
        anyhow::bail!(
            "schedule {} has a template that is not an object",
            schedule.id
        );
    };
    let movement = match template_movement(state, owner, template).await {
        Ok(movement) => movement,
        Err(errors) => {
            let errors = errors
                .into_iter()
                .map(|error| FieldError::new(format!("transaction.{}", error.field), error.message))
                .collect();
            return Ok(refused(ApiError::Validation(errors)));
        }
    };
    if movement.authority() == Authority::Admin && !owner.is_admin() {
        return Ok(refused(ApiError::Forbidden(ONLY_ADMIN)));
    }
    let key = IdempotencyKey::parse(&run_key(schedule.id, n, attempt))
        .map_err(|error| anyhow::anyhow!("a run's key is not a valid key: {error}"))?;
    let movement = movement.with_schedule(schedule.id, n).with_key(Some(key));
    let outcome = match state.ledger.submit(movement.clone()).await {
        Ok(outcome) => outcome,
        Err(SubmitError::Overloaded | SubmitError::Unavailable) => return Ok(Attempt::Transient),
        Err(error @ SubmitError::Internal(_)) => {
            tracing::warn!(schedule = %schedule.id, occurrence = n, %error, "a scheduled run was not decided");
            return Ok(Attempt::Transient);
        }
    };
    Ok(match outcome {
        Outcome::Completed(_) => Attempt::Completed(movement.id()),
        Outcome::Refused(refusal, _) => Attempt::Refused {
            transaction_id: Some(movement.id()),
            problem: problem(&ApiError::refused(&refusal, Some(movement.id()))),
        },
        // A previous tick committed this attempt and died before recording it.
        Outcome::Duplicate {
            transaction_id,
            same_request: true,
        } => {
            let record = store::transactions::find(client, transaction_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("a run's key points at missing {transaction_id}"))?;
            from_stored(&record)
        }
        Outcome::Duplicate {
            same_request: false,
            ..
        } => refused(ApiError::IdempotencyKeyReused),
        Outcome::InactiveParty { user } => refused(inactive_party(&movement, user)),
        Outcome::Forbidden => refused(ApiError::Forbidden(ONLY_ADMIN)),
        Outcome::HoldNotPending | Outcome::ReversalRefused(_) | Outcome::QuoteUnusable => {
            anyhow::bail!(
                "a scheduled movement was answered as a hold resolution, a reversal or a quoted exchange"
            )
        }
    })
}

/// The attempt a stored transaction was: failed, or committed.
fn from_stored(record: &TransactionRecord) -> Attempt {
    match record.status {
        TransactionStatus::Failed => Attempt::Refused {
            transaction_id: Some(record.id),
            problem: problem(&ApiError::recorded_failure(
                record.id,
                record.failure_reason.as_deref(),
                record.failure_detail.as_ref(),
            )),
        },
        _ => Attempt::Completed(record.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_are_valid_idempotency_keys() {
        let id = Uuid::now_v7();
        assert_eq!(run_key(id, 7, 1), format!("schedule:{id}:7"));
        assert_eq!(run_key(id, 7, 3), format!("schedule:{id}:7:3"));
        let longest = run_key(id, i64::MAX, i32::MAX);
        assert!(IdempotencyKey::parse(&longest).is_ok(), "{longest}");
    }
}
