//! Scheduled and recurring transactions (DESIGN.md section 9): `POST /api/v1/schedules`,
//! `GET /api/v1/schedules`, `GET /api/v1/schedules/{id}` and `POST
//! /api/v1/schedules/{id}/pause|resume|cancel`. A schedule is a transaction template (the body
//! of a credit, debit or transfer request, with its `type`) and a calendar; the template is
//! parsed here with the very parser of those requests (`transactions::movement_from_template`),
//! so it is refused exactly as the request would be (its fields named `transaction.<field>`),
//! and again at every run by the executor (`crate::scheduler`), as its owner with the owner's
//! role of that moment. Every change is audited and writes its event in its own transaction.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use sha2::{Digest, Sha256};

use super::posting::{idempotency_key, replayed, ONLY_ADMIN};
use super::transactions::{movement_from_template, TEMPLATE_TYPES};
use super::users::current;
use super::{audit_in_transaction, AppState, Page};
use crate::auth::Principal;
use crate::domain::{
    Authority, Calendar, End, Every, IdempotencyKey, MisfirePolicy, Movement, OnFailure,
    Recurrence, RunOutcome, ScheduleStatus,
};
use crate::error::{ApiError, FieldError};
use crate::store::schedules::{
    self as store_schedules, NewSchedule, Progress, RunRecord, ScheduleRecord, StoredRecurrence,
};
use crate::store::transactions::HistoryCursor;
use crate::telemetry::names;

/// 409 for a verb on a cancelled schedule.
const SCHEDULE_CANCELLED: ApiError = ApiError::Conflict {
    code: "schedule_cancelled",
    detail: "the schedule is cancelled: it can no longer be paused, resumed or cancelled",
};
/// 409 for a verb on a schedule whose last occurrence ran.
const SCHEDULE_COMPLETED: ApiError = ApiError::Conflict {
    code: "schedule_completed",
    detail: "the schedule is completed (its last occurrence ran): it can no longer be paused, \
             resumed or cancelled",
};
const NO_SUCH_SCHEDULE: ApiError = ApiError::NotFound("no such schedule");

/// Items per page (schedules, and runs of one schedule) when `limit` is not given, and the most.
const LIMIT_DEFAULT: i64 = 50;
pub(crate) const LIMIT_MAX: i64 = 200;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(web::resource("/{id}/pause").route(web::post().to(pause)))
    .service(web::resource("/{id}/resume").route(web::post().to(resume)))
    .service(web::resource("/{id}/cancel").route(web::post().to(cancel)))
    .service(web::resource("/{id}").route(web::get().to(get_schedule)));
}

/// A schedule's recurrence.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RecurrenceBody {
    /// `day`, `week` or `month`.
    every: &'static str,
    interval: i32,
    /// How many occurrences in all; `null` when it ends at `until` or never.
    count: Option<i32>,
    /// The last occurrence is at or before it; `null` when it ends after `count` or never.
    until: Option<DateTime<Utc>>,
    /// The IANA time zone the calendar is computed in.
    time_zone: String,
}

/// One decided occurrence.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunBody {
    /// From 1.
    occurrence: i64,
    /// The attempt that decided it (above 1 after retries).
    attempt: i32,
    due_at: DateTime<Utc>,
    ran_at: DateTime<Utc>,
    /// `completed`, `failed` or `skipped`.
    outcome: &'static str,
    /// The transaction written: completed, or the failed one of a refused run.
    transaction_id: Option<Uuid>,
    /// Why it failed (a problem as the request would have got) or was skipped
    /// (`{"reason": "misfire"|"paused"}`).
    #[schema(value_type = Option<Object>)]
    problem: Option<Value>,
}

impl From<RunRecord> for RunBody {
    fn from(run: RunRecord) -> RunBody {
        RunBody {
            occurrence: run.occurrence,
            attempt: run.attempt,
            due_at: run.due_at,
            ran_at: run.ran_at,
            outcome: run.outcome.as_str(),
            transaction_id: run.transaction_id,
            problem: run.problem,
        }
    }
}

/// A page of a schedule's runs, newest occurrence first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunPage {
    items: Vec<RunBody>,
    /// Pass as `runs_cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// A schedule.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleBody {
    id: Uuid,
    user_id: Uuid,
    /// The transaction template: `{type, ...the fields of that request}`.
    #[schema(value_type = Object)]
    transaction: Value,
    start_at: DateTime<Utc>,
    /// `null` for a one-off schedule.
    recurrence: Option<RecurrenceBody>,
    /// `run_once`, `catch_up` or `skip`.
    misfire_policy: &'static str,
    /// `fail` or `retry`.
    on_failure: &'static str,
    /// `active`, `paused`, `cancelled` or `completed`.
    status: &'static str,
    /// The next occurrence to run (from 1); `null` once cancelled or completed.
    next_occurrence: Option<i64>,
    /// When the next occurrence runs (its due time, or its next attempt's); `null` once
    /// cancelled or completed.
    next_run_at: Option<DateTime<Utc>>,
    /// The attempt the next run will be (above 1 while an occurrence is retried).
    attempt: i32,
    /// While an occurrence is retried: the problem of its last attempt.
    #[schema(value_type = Option<Object>)]
    last_problem: Option<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// `GET /schedules/{id}` only: its runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<RunPage>,
}

impl From<ScheduleRecord> for ScheduleBody {
    fn from(schedule: ScheduleRecord) -> ScheduleBody {
        let progress = schedule.progress;
        let finished = progress.status.is_finished();
        ScheduleBody {
            id: schedule.id,
            user_id: schedule.user.as_uuid(),
            transaction: schedule.template,
            start_at: schedule.start_at,
            recurrence: schedule.recurrence.map(|recurrence| RecurrenceBody {
                every: recurrence.every.as_str(),
                interval: recurrence.interval,
                count: recurrence.count,
                until: recurrence.until,
                time_zone: schedule.time_zone.clone(),
            }),
            misfire_policy: schedule.misfire_policy.as_str(),
            on_failure: schedule.on_failure.as_str(),
            status: progress.status.as_str(),
            next_occurrence: (!finished).then_some(progress.next_occurrence),
            next_run_at: progress.next_run_at,
            attempt: progress.attempt,
            last_problem: progress.last_problem,
            created_at: schedule.created_at,
            updated_at: schedule.updated_at,
            runs: None,
        }
    }
}

/// A page of schedules, newest first.
#[derive(utoipa::ToSchema)]
pub struct SchedulePage {
    pub items: Vec<ScheduleBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The movement a template asks for, as `principal`: the template without its `type`, parsed
/// by the parser of that request. `Err` holds the field errors, named as in the request.
pub(crate) async fn template_movement(
    state: &AppState,
    principal: Principal,
    template: &Map<String, Value>,
) -> Result<Movement, Vec<FieldError>> {
    let mut fields = template.clone();
    let kind = match fields.remove("type") {
        None | Some(Value::Null) => {
            return Err(vec![FieldError::new("type", "is required")]);
        }
        Some(Value::String(kind)) => kind,
        Some(_) => {
            return Err(vec![FieldError::new(
                "type",
                format!("must be one of {}", TEMPLATE_TYPES.join(", ")),
            )])
        }
    };
    match movement_from_template(state, principal, &kind, Fields::new(JsonObject(fields))).await {
        Ok(movement) => Ok(movement),
        Err(ApiError::Validation(errors)) => Err(errors),
        Err(other) => Err(vec![FieldError::new("type", other.to_string())]),
    }
}

/// One of `choices`, for a [`Fields`] parser.
fn choice<T>(
    parse: impl FnOnce(&str) -> Option<T>,
    choices: &'static str,
) -> impl FnOnce(&Value) -> Result<T, String> {
    move |value| {
        value
            .as_str()
            .and_then(parse)
            .ok_or_else(|| format!("must be {choices}"))
    }
}

fn timestamp(value: &Value) -> Result<DateTime<Utc>, String> {
    let text = value
        .as_str()
        .ok_or("must be an RFC 3339 timestamp such as 2026-11-21T10:00:00Z")?;
    parse::rfc3339(text).map_err(str::to_owned)
}

fn object(value: &Value) -> Result<Map<String, Value>, String> {
    value
        .as_object()
        .cloned()
        .ok_or_else(|| "must be an object".to_owned())
}

/// Parses `recurrence` (`{every, interval, count?, until?, time_zone}`) into the recurrence and
/// the zone's name, recording errors on `outer` as `recurrence.<field>`.
fn parse_recurrence(
    object: Map<String, Value>,
    outer: &mut Fields,
) -> Option<(Every, u16, End, chrono_tz::Tz)> {
    let mut fields = Fields::new(JsonObject(object));
    let every = fields.required("every", choice(Every::parse, "day, week or month"));
    let interval = fields.required("interval", |value| {
        value
            .as_u64()
            .and_then(|interval| u16::try_from(interval).ok())
            .ok_or_else(|| {
                "must be a whole number from 1 (at most 3660 days, 520 weeks or 120 months)"
                    .to_owned()
            })
    });
    let count = fields.optional("count", |value| {
        value
            .as_u64()
            .and_then(|count| u32::try_from(count).ok())
            .ok_or_else(|| {
                format!(
                    "must be a whole number from 1 to {}",
                    crate::domain::COUNT_MAX
                )
            })
    });
    let until = fields.optional("until", timestamp);
    let zone = fields.required("time_zone", |value| {
        value
            .as_str()
            .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
            .ok_or_else(|| "must be an IANA time zone name such as Europe/Berlin".to_owned())
    });
    // The range depends on `every`; named here so that it is reported with the other fields.
    if let (Some(every), Some(interval)) = (every, interval) {
        if !(1..=every.interval_max()).contains(&interval) {
            fields.error(
                "interval",
                format!(
                    "must be from 1 to {} for every {}",
                    every.interval_max(),
                    every.as_str()
                ),
            );
        }
    }
    if count.is_some() && until.is_some() {
        fields.error(
            "until",
            "must not be given with count: a schedule ends one way",
        );
    }
    let result = fields.finish();
    if let Err(ApiError::Validation(errors)) = result {
        for error in errors {
            outer.error(&format!("recurrence.{}", error.field), error.message);
        }
        return None;
    }
    let end = match (count, until) {
        (Some(count), _) => End::Count(count),
        (None, Some(until)) => End::Until(until),
        (None, None) => End::Never,
    };
    Some((every?, interval?, end, zone?))
}

/// `{transaction: {type, ...}, start_at, recurrence?: {every, interval, count?, until?,
/// time_zone}, misfire_policy, on_failure}` → 201 the schedule, its first occurrence due at
/// `start_at` (whole seconds). `transaction` is the body of `POST /transactions/<type>` with
/// its `type` (`credit`, `debit`, `transfer` or `exchange`), refused as that request would be, its errors
/// named `transaction.<field>`; it runs as the caller, with the caller's role at each run.
///
/// Errors: 403 for a template acting on another user's account by a non-admin; 422 naming
/// every bad field: `start_at` more than `schedules.start_grace_s` in the past, an unknown
/// `recurrence.time_zone`, an `interval` of 0 or too large, `count` and `until` both, `until`
/// before `start_at`, an unknown `transaction.type`.
#[utoipa::path(
    post, path = "/api/v1/schedules", tag = "schedules", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the creation exactly-once: a repeat with the same body returns the schedule it made (1 to 255 visible ASCII characters)")),
    request_body(content = super::schemas::ScheduleRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The schedule", body = ScheduleBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "A template on another user's account (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`transaction.<field>` for the template), or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    // The key decides first (invariant 4): a repeated creation returns the schedule it made.
    let key = idempotency_key(&req)?;
    let request_hash: [u8; 32] = Sha256::digest(
        serde_json::to_vec(&body.0).map_err(|error| ApiError::Internal(error.into()))?,
    )
    .into();
    if let Some(key) = &key {
        let client = state.pool.get().await?;
        if let Some(response) = replay_creation(&client, principal, key, &request_hash).await? {
            return Ok(response);
        }
    }
    let now = state.clock.now();
    let grace_s = state.settings.schedules.start_grace_s;
    let mut fields = Fields::new(body);
    let template = fields.required("transaction", |value| {
        object(value).map_err(|_| {
            "must be an object: {\"type\": \"credit\"|\"debit\"|\"transfer\"|\"exchange\", ...the fields of that request}"
                .to_owned()
        })
    });
    let start_at = fields.required("start_at", timestamp);
    let recurrence = fields.optional("recurrence", object);
    let misfire_policy = fields.required(
        "misfire_policy",
        choice(MisfirePolicy::parse, "run_once, catch_up or skip"),
    );
    let on_failure = fields.required("on_failure", choice(OnFailure::parse, "fail or retry"));
    let movement = match template.as_ref() {
        Some(template) => match template_movement(&state, principal, template).await {
            Ok(movement) => Some(movement),
            Err(errors) => {
                for error in errors {
                    fields.error(&format!("transaction.{}", error.field), error.message);
                }
                None
            }
        },
        None => None,
    };
    let recurrence = recurrence.and_then(|object| parse_recurrence(object, &mut fields));
    let grace = chrono::Duration::seconds(i64::try_from(grace_s).unwrap_or(i64::MAX));
    if start_at.is_some_and(|start| start < now - grace) {
        fields.error(
            "start_at",
            format!("must not be more than {grace_s} s in the past (schedules.start_grace_s)"),
        );
    }
    let calendar = match (start_at, &recurrence) {
        (Some(start), Some((every, interval, end, zone))) => Calendar::new(
            start,
            Some(Recurrence {
                every: *every,
                interval: *interval,
                end: *end,
                zone: *zone,
            }),
        )
        .map_err(|error| fields.error(&format!("recurrence.{}", error.field()), error.to_string()))
        .ok(),
        (Some(start), None) => Calendar::new(start, None).ok(),
        _ => None,
    };
    fields.finish()?;
    let (template, movement, calendar, misfire_policy, on_failure) = (
        template.expect("finish() refuses a missing transaction"),
        movement.expect("finish() refuses a bad transaction"),
        calendar.expect("finish() refuses a bad calendar"),
        misfire_policy.expect("finish() refuses a missing misfire_policy"),
        on_failure.expect("finish() refuses a missing on_failure"),
    );
    if movement.authority() == Authority::Admin && !principal.is_admin() {
        return Err(ApiError::Forbidden(ONLY_ADMIN));
    }
    let stored = recurrence.map(|(every, interval, end, _)| StoredRecurrence {
        every,
        interval: i32::from(interval),
        count: match end {
            End::Count(count) => i32::try_from(count).ok(),
            _ => None,
        },
        until: match end {
            End::Until(until) => Some(until),
            _ => None,
        },
    });
    let time_zone = recurrence.map_or("UTC", |(_, _, _, zone)| zone.name());
    let template = Value::Object(template);
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let schedule = store_schedules::create(
        &transaction,
        &NewSchedule {
            user: principal.user,
            template: &template,
            start_at: calendar.start(),
            recurrence: stored,
            time_zone,
            misfire_policy,
            on_failure,
            key: key.as_ref().map(|key| (key.as_str(), request_hash)),
        },
    )
    .await?;
    let Some(schedule) = schedule else {
        // A concurrent creation with the same key committed first.
        drop(transaction);
        let key = key.ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("a schedule without a key conflicted"))
        })?;
        return replay_creation(&client, principal, &key, &request_hash)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a taken key has no schedule")));
    };
    let id = schedule.id;
    let body = ScheduleBody::from(schedule);
    let payload = serde_json::to_value(&body).map_err(|error| ApiError::Internal(error.into()))?;
    audit_in_transaction(
        &transaction,
        &req,
        Some(principal.user),
        ("schedule", Some(id.to_string())),
        "schedule.created",
        json!({"schedule": payload}),
    )
    .await?;
    store_schedules::record_event(&transaction, id, "schedule.created", &payload).await?;
    transaction.commit().await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/schedules/{id}")))
        .json(body))
}

/// The reply to a creation whose key `principal` used before: the schedule it made (201,
/// `Idempotent-Replayed: true`) when the body is the same, `idempotency_key_reused` when not;
/// `None` when the key is unused.
async fn replay_creation(
    client: &impl deadpool_postgres::GenericClient,
    principal: Principal,
    key: &IdempotencyKey,
    request_hash: &[u8; 32],
) -> Result<Option<HttpResponse>, ApiError> {
    let Some((schedule, hash)) =
        store_schedules::find_by_key(client, principal.user, key.as_str()).await?
    else {
        return Ok(None);
    };
    if hash.as_slice() != request_hash.as_slice() {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let id = schedule.id;
    Ok(Some(replayed(
        HttpResponse::Created()
            .insert_header(("Location", format!("/api/v1/schedules/{id}")))
            .json(ScheduleBody::from(schedule)),
    )))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Admins only: whose schedules (default: the caller's).
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

fn page_limit(limit: Option<i64>, name: &str) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(LIMIT_DEFAULT);
    if (1..=LIMIT_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field(
            name,
            format!("must be from 1 to {LIMIT_MAX}"),
        ))
    }
}

/// `?limit&cursor&user_id` → 200 `{items, next_cursor}`: the caller's schedules (an admin may
/// name `user_id`), newest first.
///
/// Errors: 403 for a non-admin naming another user; 422 for a bad limit or cursor.
#[utoipa::path(
    get, path = "/api/v1/schedules", tag = "schedules", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page, newest first", body = SchedulePage),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's schedules (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let user = super::subject(principal, query.user_id)?;
    let limit = page_limit(query.limit, "limit")?;
    let after = query
        .cursor
        .as_deref()
        .map(|cursor| {
            super::transactions::decode_cursor(cursor)
                .map(|cursor| (cursor.created_at, cursor.id))
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API issued"))
        })
        .transpose()?;
    let client = state.pool.get().await?;
    let mut schedules = store_schedules::for_user(&client, user, after, limit + 1).await?;
    let next_cursor = if schedules.len() as i64 > limit {
        schedules.truncate(limit as usize);
        schedules.last().map(|last| {
            super::transactions::encode_cursor(HistoryCursor {
                created_at: last.created_at,
                id: last.id,
            })
        })
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        items: schedules
            .into_iter()
            .map(ScheduleBody::from)
            .collect::<Vec<_>>(),
        next_cursor,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Runs per page, 1 to 200 (default 50).
    runs_limit: Option<i64>,
    /// `runs.next_cursor` of the previous page.
    runs_cursor: Option<String>,
}

/// → 200 the schedule with `next_run_at` and a page of its runs (newest occurrence first; page
/// with `runs_limit` and `runs_cursor`). The owner's, or any for an admin.
///
/// Errors: 404 for no such schedule, or another user's; 422 for a bad `runs_limit` or
/// `runs_cursor`.
#[utoipa::path(
    get, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id"), GetQuery),
    responses(
        (status = 200, description = "The schedule and its runs", body = ScheduleBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad runs_limit or runs_cursor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_schedule(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    query: web::Query<GetQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let id = parse::hyphenated_uuid(&id).ok_or(NO_SUCH_SCHEDULE)?;
    let limit = page_limit(query.runs_limit, "runs_limit")?;
    let before = query
        .runs_cursor
        .as_deref()
        .map(|cursor| {
            cursor
                .parse::<i64>()
                .ok()
                .filter(|occurrence| *occurrence >= 1 && cursor.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ApiError::field("runs_cursor", "is not a cursor this API issued"))
        })
        .transpose()?;
    let owner = (!principal.is_admin()).then_some(principal.user);
    let client = state.pool.get().await?;
    let schedule = store_schedules::find(&client, id, owner)
        .await?
        .ok_or(NO_SUCH_SCHEDULE)?;
    let mut runs = store_schedules::runs(&client, id, before, limit + 1).await?;
    let next_cursor = if runs.len() as i64 > limit {
        runs.truncate(limit as usize);
        runs.last().map(|last| last.occurrence.to_string())
    } else {
        None
    };
    let mut body = ScheduleBody::from(schedule);
    body.runs = Some(RunPage {
        items: runs.into_iter().map(RunBody::from).collect(),
        next_cursor,
    });
    Ok(HttpResponse::Ok().json(body))
}

/// What a verb does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Pause,
    Resume,
    Cancel,
}

/// → 200 the schedule, `paused`: no occurrence runs until it is resumed. Pausing a paused
/// schedule changes nothing.
///
/// Errors: 404 for no such schedule, or another user's (admins may act on any); 409
/// `schedule_cancelled` or `schedule_completed`.
#[utoipa::path(
    post, path = "/api/v1/schedules/{id}/pause", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The paused schedule", body = ScheduleBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`schedule_cancelled` or `schedule_completed`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    change(&state, principal, &id, &req, Verb::Pause).await
}

/// → 200 the schedule, `active` again. The occurrences that came due while it was paused are
/// recorded `skipped` (reason `paused`), whatever the misfire policy; it goes on with the first
/// occurrence due from now (or is `completed` when none is left). Resuming an active schedule
/// changes nothing.
///
/// Errors: as pause.
#[utoipa::path(
    post, path = "/api/v1/schedules/{id}/resume", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The resumed schedule", body = ScheduleBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`schedule_cancelled` or `schedule_completed`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    change(&state, principal, &id, &req, Verb::Resume).await
}

/// → 200 the schedule, `cancelled`: no occurrence runs any more (one running at this moment
/// finishes first: the cancellation waits for it). Final.
///
/// Errors: as pause (cancelling a cancelled schedule is 409 `schedule_cancelled`).
#[utoipa::path(
    post, path = "/api/v1/schedules/{id}/cancel", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The cancelled schedule", body = ScheduleBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`schedule_cancelled` or `schedule_completed`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    change(&state, principal, &id, &req, Verb::Cancel).await
}

/// Applies `verb` under the schedule's row lock, with its audit entry and event.
async fn change(
    state: &AppState,
    principal: Principal,
    id: &str,
    req: &HttpRequest,
    verb: Verb,
) -> Result<HttpResponse, ApiError> {
    let principal = current(state, principal).await?;
    let id = parse::hyphenated_uuid(id).ok_or(NO_SUCH_SCHEDULE)?;
    let owner = (!principal.is_admin()).then_some(principal.user);
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let schedule = store_schedules::lock(&transaction, id, owner)
        .await?
        .ok_or(NO_SUCH_SCHEDULE)?;
    let before = schedule.progress.clone();
    match before.status {
        ScheduleStatus::Cancelled => return Err(SCHEDULE_CANCELLED),
        ScheduleStatus::Completed => return Err(SCHEDULE_COMPLETED),
        ScheduleStatus::Active if verb == Verb::Resume => {
            return Ok(HttpResponse::Ok().json(ScheduleBody::from(schedule)))
        }
        ScheduleStatus::Paused if verb == Verb::Pause => {
            return Ok(HttpResponse::Ok().json(ScheduleBody::from(schedule)))
        }
        ScheduleStatus::Active | ScheduleStatus::Paused => {}
    }
    let now = state.clock.now();
    let mut skipped = Vec::new();
    let (progress, event) = match verb {
        Verb::Pause => (
            Progress {
                status: ScheduleStatus::Paused,
                ..before.clone()
            },
            "schedule.paused",
        ),
        Verb::Cancel => (
            Progress {
                status: ScheduleStatus::Cancelled,
                next_due_at: None,
                next_run_at: None,
                attempt: 1,
                last_problem: None,
                ..before.clone()
            },
            "schedule.cancelled",
        ),
        Verb::Resume => {
            let calendar = schedule
                .calendar()
                .map_err(|error| ApiError::Internal(error.into()))?;
            let occurrence = u64::try_from(before.next_occurrence).unwrap_or(1);
            let mut next = None;
            for (n, due) in calendar.from_occurrence(occurrence) {
                if due >= now {
                    next = Some((n, due));
                    break;
                }
                skipped.push(RunRecord {
                    occurrence: i64::try_from(n).expect("occurrences are bounded"),
                    attempt: 1,
                    due_at: due,
                    ran_at: now,
                    outcome: RunOutcome::Skipped,
                    transaction_id: None,
                    problem: Some(json!({"reason": "paused"})),
                });
            }
            let progress = match next {
                Some((n, due)) => Progress {
                    status: ScheduleStatus::Active,
                    next_occurrence: i64::try_from(n).expect("occurrences are bounded"),
                    next_due_at: Some(due),
                    next_run_at: Some(due),
                    attempt: 1,
                    last_problem: None,
                },
                None => Progress {
                    status: ScheduleStatus::Completed,
                    next_occurrence: before.next_occurrence + skipped.len() as i64,
                    next_due_at: None,
                    next_run_at: None,
                    attempt: 1,
                    last_problem: None,
                },
            };
            (progress, "schedule.resumed")
        }
    };
    store_schedules::save_progress(&transaction, id, &progress).await?;
    store_schedules::record_runs(&transaction, id, &skipped).await?;
    let skipped_occurrences: Vec<i64> = skipped.iter().map(|run| run.occurrence).collect();
    let details = json!({
        "schedule_id": id,
        "user_id": schedule.user.as_uuid(),
        "by": principal.user.as_uuid(),
        "status_before": before.status.as_str(),
        "status": progress.status.as_str(),
        "next_occurrence": (!progress.status.is_finished()).then_some(progress.next_occurrence),
        "next_run_at": progress.next_run_at,
        "skipped": skipped_occurrences,
    });
    audit_in_transaction(
        &transaction,
        req,
        Some(principal.user),
        ("schedule", Some(id.to_string())),
        event,
        details.clone(),
    )
    .await?;
    store_schedules::record_event(&transaction, id, event, &details).await?;
    let schedule = store_schedules::find(&transaction, id, None)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("schedule {id} vanished")))?;
    transaction.commit().await?;
    if !skipped.is_empty() {
        metrics::counter!(names::SCHEDULE_RUNS, "outcome" => "skipped")
            .increment(skipped.len() as u64);
    }
    Ok(HttpResponse::Ok().json(ScheduleBody::from(schedule)))
}
