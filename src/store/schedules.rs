//! The `schedules` and `schedule_runs` tables (DESIGN.md section 9): schedules as their owners
//! made them, their progress, and one run row per decided occurrence. Every change is made by
//! the caller inside a database transaction that also writes its audit entry (API changes) and
//! its event ([`record_event`]), so a change and its record commit together.
//!
//! Concurrency: a schedule row is changed only under its row lock: the API's verbs take it with
//! [`lock`] (waiting for a running tick), the executors with [`claim_due`] (`SKIP LOCKED`: an
//! instance never waits for, nor runs, a schedule another instance holds).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{
    Calendar, CalendarError, End, Every, MisfirePolicy, OnFailure, Recurrence, RunOutcome,
    ScheduleStatus, UserId,
};

/// A schedule's recurrence as stored (the request's `recurrence`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecurrence {
    pub every: Every,
    pub interval: i32,
    pub count: Option<i32>,
    pub until: Option<DateTime<Utc>>,
}

/// A schedule as stored.
#[derive(Debug, Clone)]
pub struct ScheduleRecord {
    pub id: Uuid,
    pub user: UserId,
    /// The transaction template: `{type, ...the fields of that request}`.
    pub template: Value,
    pub start_at: DateTime<Utc>,
    pub recurrence: Option<StoredRecurrence>,
    /// An IANA zone name (`UTC` for a one-off schedule).
    pub time_zone: String,
    pub misfire_policy: MisfirePolicy,
    pub on_failure: OnFailure,
    pub progress: Progress,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What changes as a schedule runs, pauses and ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub status: ScheduleStatus,
    /// The next occurrence to decide (from 1).
    pub next_occurrence: i64,
    /// When it is due; `None` once finished.
    pub next_due_at: Option<DateTime<Utc>>,
    /// When the executor takes it (its due time, or a retry's); `None` once finished.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The attempt the next run is (above 1 while retrying).
    pub attempt: i32,
    /// The problem of the last refused attempt of the next occurrence, while it is retried.
    pub last_problem: Option<Value>,
}

impl ScheduleRecord {
    /// The calendar of this schedule, rebuilt from what was validated at its creation.
    ///
    /// Errors: only if the row was changed by hand (an unknown zone, a bad interval).
    pub fn calendar(&self) -> Result<Calendar, CalendarError> {
        let recurrence = match &self.recurrence {
            None => None,
            Some(stored) => {
                let zone: chrono_tz::Tz = self.time_zone.parse().map_err(|_| {
                    CalendarError::Rule(format!("unknown time zone {}", self.time_zone))
                })?;
                let end = match (stored.count, stored.until) {
                    (Some(count), _) => End::Count(u32::try_from(count).unwrap_or(0)),
                    (None, Some(until)) => End::Until(until),
                    (None, None) => End::Never,
                };
                Some(Recurrence {
                    every: stored.every,
                    interval: u16::try_from(stored.interval).unwrap_or(0),
                    end,
                    zone,
                })
            }
        };
        Calendar::new(self.start_at, recurrence)
    }
}

/// One decided occurrence.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub occurrence: i64,
    pub attempt: i32,
    pub due_at: DateTime<Utc>,
    pub ran_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    pub transaction_id: Option<Uuid>,
    pub problem: Option<Value>,
}

const COLUMNS: &str = "id, user_id, template, start_at, every, repeat_interval, repeat_count, \
    repeat_until, time_zone, misfire_policy, on_failure, status, next_occurrence, next_due_at, \
    next_run_at, attempt, last_problem, created_at, updated_at";

fn record(row: &tokio_postgres::Row) -> ScheduleRecord {
    let every: Option<&str> = row.get("every");
    ScheduleRecord {
        id: row.get("id"),
        user: UserId::from_uuid(row.get("user_id")),
        template: row.get("template"),
        start_at: row.get("start_at"),
        recurrence: every.map(|every| StoredRecurrence {
            every: Every::parse(every).expect("schedules.every is constrained"),
            interval: row.get("repeat_interval"),
            count: row.get("repeat_count"),
            until: row.get("repeat_until"),
        }),
        time_zone: row.get("time_zone"),
        misfire_policy: MisfirePolicy::parse(row.get("misfire_policy"))
            .expect("schedules.misfire_policy is constrained"),
        on_failure: OnFailure::parse(row.get("on_failure"))
            .expect("schedules.on_failure is constrained"),
        progress: Progress {
            status: ScheduleStatus::parse(row.get("status"))
                .expect("schedules.status is constrained"),
            next_occurrence: row.get("next_occurrence"),
            next_due_at: row.get("next_due_at"),
            next_run_at: row.get("next_run_at"),
            attempt: row.get("attempt"),
            last_problem: row.get("last_problem"),
        },
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// A schedule to create: active, its first occurrence due at `start_at`.
pub struct NewSchedule<'a> {
    pub user: UserId,
    pub template: &'a Value,
    pub start_at: DateTime<Utc>,
    pub recurrence: Option<StoredRecurrence>,
    pub time_zone: &'a str,
    pub misfire_policy: MisfirePolicy,
    pub on_failure: OnFailure,
    /// The creation's Idempotency-Key and the SHA-256 of its body.
    pub key: Option<(&'a str, [u8; 32])>,
}

/// The schedule a user created with `key`, and the hash of the request that created it.
pub async fn find_by_key(
    client: &impl GenericClient,
    user: UserId,
    key: &str,
) -> Result<Option<(ScheduleRecord, Vec<u8>)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS}, request_hash FROM schedules
                 WHERE user_id = $1 AND idempotency_key = $2"
            ),
            &[&user.as_uuid(), &key],
        )
        .await?;
    Ok(row.map(|row| (record(&row), row.get("request_hash"))))
}

/// Inserts `schedule`, active with occurrence 1 due at its start. `None` when its key is
/// taken (a concurrent creation with the same key committed first: read it with
/// [`find_by_key`]).
pub async fn create(
    client: &impl GenericClient,
    schedule: &NewSchedule<'_>,
) -> Result<Option<ScheduleRecord>, tokio_postgres::Error> {
    let recurrence = schedule.recurrence.as_ref();
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO schedules (id, user_id, template, start_at, every, repeat_interval,
                     repeat_count, repeat_until, time_zone, misfire_policy, on_failure, status,
                     next_due_at, next_run_at, idempotency_key, request_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'active', $4, $4, $12, $13)
                 ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &schedule.user.as_uuid(),
                schedule.template,
                &schedule.start_at,
                &recurrence.map(|r| r.every.as_str()),
                &recurrence.map(|r| r.interval),
                &recurrence.and_then(|r| r.count),
                &recurrence.and_then(|r| r.until),
                &schedule.time_zone,
                &schedule.misfire_policy.as_str(),
                &schedule.on_failure.as_str(),
                &schedule.key.map(|(key, _)| key),
                &schedule.key.map(|(_, hash)| hash.to_vec()),
            ],
        )
        .await?;
    Ok(row.as_ref().map(record))
}

/// The schedule `id`, when `owner` is `None` (an admin) or owns it.
pub async fn find(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<UserId>,
) -> Result<Option<ScheduleRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM schedules
                 WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)"
            ),
            &[&id, &owner.map(UserId::as_uuid)],
        )
        .await?;
    Ok(row.as_ref().map(record))
}

/// Like [`find`], locking the row (`FOR UPDATE`) until the caller's transaction ends: waits
/// for an executor that is running the schedule.
pub async fn lock(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<UserId>,
) -> Result<Option<ScheduleRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM schedules
                 WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
                 FOR UPDATE"
            ),
            &[&id, &owner.map(UserId::as_uuid)],
        )
        .await?;
    Ok(row.as_ref().map(record))
}

/// Up to `limit` of `user`'s schedules, newest first, after the keyset position `after`
/// (`(created_at, id)` of the last one of the previous page).
pub async fn for_user(
    client: &impl GenericClient,
    user: UserId,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ScheduleRecord>, tokio_postgres::Error> {
    let (created_at, id) = after.unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM schedules
                 WHERE user_id = $1
                   AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                 ORDER BY created_at DESC, id DESC
                 LIMIT $4"
            ),
            &[&user.as_uuid(), &created_at, &id, &limit],
        )
        .await?;
    Ok(rows.iter().map(record).collect())
}

/// Up to `limit` runs of the schedule, newest occurrence first, below occurrence `before`.
pub async fn runs(
    client: &impl GenericClient,
    schedule: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RunRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT occurrence, attempt, due_at, ran_at, outcome, transaction_id, problem
             FROM schedule_runs
             WHERE schedule_id = $1 AND ($2::bigint IS NULL OR occurrence < $2)
             ORDER BY occurrence DESC
             LIMIT $3",
            &[&schedule, &before, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| RunRecord {
            occurrence: row.get(0),
            attempt: row.get(1),
            due_at: row.get(2),
            ran_at: row.get(3),
            outcome: RunOutcome::parse(row.get(4)).expect("schedule_runs.outcome is constrained"),
            transaction_id: row.get(5),
            problem: row.get(6),
        })
        .collect())
}

/// Locks and returns up to `limit` active schedules due at `now` (the ledger clock's), those
/// due first first, skipping rows another transaction holds (another instance's executor, or a
/// verb of the API). The locks last until the caller's transaction ends.
pub async fn claim_due(
    client: &impl GenericClient,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ScheduleRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM schedules
                 WHERE status = 'active' AND next_run_at <= $1
                 ORDER BY next_run_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&now, &limit],
        )
        .await?;
    Ok(rows.iter().map(record).collect())
}

/// Writes the schedule's new progress (the caller holds its row lock).
pub async fn save_progress(
    client: &impl GenericClient,
    id: Uuid,
    progress: &Progress,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE schedules SET status = $2, next_occurrence = $3, next_due_at = $4,
                 next_run_at = $5, attempt = $6, last_problem = $7, updated_at = now()
             WHERE id = $1",
            &[
                &id,
                &progress.status.as_str(),
                &progress.next_occurrence,
                &progress.next_due_at,
                &progress.next_run_at,
                &progress.attempt,
                &progress.last_problem,
            ],
        )
        .await?;
    Ok(())
}

/// Records decided occurrences of the schedule `id` (one statement). A second row for an
/// occurrence is a primary key violation: the caller's transaction fails and writes nothing.
pub async fn record_runs(
    client: &impl GenericClient,
    id: Uuid,
    runs: &[RunRecord],
) -> Result<(), tokio_postgres::Error> {
    if runs.is_empty() {
        return Ok(());
    }
    let occurrences: Vec<i64> = runs.iter().map(|run| run.occurrence).collect();
    let attempts: Vec<i32> = runs.iter().map(|run| run.attempt).collect();
    let due: Vec<DateTime<Utc>> = runs.iter().map(|run| run.due_at).collect();
    let ran: Vec<DateTime<Utc>> = runs.iter().map(|run| run.ran_at).collect();
    let outcomes: Vec<&str> = runs.iter().map(|run| run.outcome.as_str()).collect();
    let transactions: Vec<Option<Uuid>> = runs.iter().map(|run| run.transaction_id).collect();
    let problems: Vec<Option<Value>> = runs.iter().map(|run| run.problem.clone()).collect();
    client
        .execute(
            "INSERT INTO schedule_runs (schedule_id, occurrence, attempt, due_at, ran_at, outcome,
                 transaction_id, problem)
             SELECT $1, * FROM unnest($2::bigint[], $3::integer[], $4::timestamptz[],
                 $5::timestamptz[], $6::text[], $7::uuid[], $8::jsonb[])",
            &[
                &id,
                &occurrences,
                &attempts,
                &due,
                &ran,
                &outcomes,
                &transactions,
                &problems,
            ],
        )
        .await?;
    Ok(())
}

/// The event stream of a schedule (`schedule:<id>`).
pub fn stream(id: Uuid) -> String {
    format!("schedule:{id}")
}

/// Appends an event on the schedule's stream in the caller's transaction.
pub async fn record_event(
    client: &impl GenericClient,
    id: Uuid,
    event_type: &str,
    payload: &Value,
) -> Result<(), tokio_postgres::Error> {
    super::limits::record_event(client, &stream(id), event_type, payload).await
}

/// The status of the transaction `id` and its failure reason (`None` when there is no such
/// transaction): what a run whose idempotency key was already used is recorded from.
pub async fn transaction_outcome(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<(String, Option<String>)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT status, failure_reason FROM transactions WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}
