//! `GET /events`: the event log, paged by its commit-ordered cursor (DESIGN.md section 10,
//! invariant 12). A user reads the events that touch their accounts; an admin reads all, or
//! one user's with `user_id`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::store::events::{read_page, EventCursor, EventRecord, Scope};

/// Every event type the log holds (DESIGN.md section 10 and the lifecycle sections): what
/// `types` may name.
pub const EVENT_TYPES: &[&str] = &[
    "transaction.completed",
    "transaction.failed",
    "transaction.reversed",
    "hold.created",
    "hold.posted",
    "hold.voided",
    "hold.expired",
    "balance.alert",
    "alert.created",
    "alert.deleted",
    "limit.changed",
    "rate.changed",
    "schedule.created",
    "schedule.paused",
    "schedule.resumed",
    "schedule.cancelled",
    "schedule.run",
    "schedule.retry",
    "schedule.failed",
    "user.created",
    "user.updated",
    "user.deleted",
    "webhook.created",
    "webhook.deleted",
    "webhook.enabled",
    "webhook.disabled",
];

/// Events per page by default, and at most.
const LIMIT_DEFAULT: i64 = 100;
const LIMIT_MAX: i64 = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("").route(web::get().to(list)));
}

/// One account an event touches.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventAccount {
    pub user_id: Uuid,
    /// ISO 4217 code; `null` for an event about the user rather than one of its accounts.
    pub currency: Option<String>,
}

/// One event of the log.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventBody {
    /// Stable and unique: what consumers de-duplicate by.
    pub id: i64,
    /// This event's position: pass it as `after` to read what follows.
    pub cursor: String,
    /// One of the event types (see `types`).
    #[serde(rename = "type")]
    pub kind: String,
    /// What the event is about: `transaction:<id>`, `user:<id>`, `schedule:<id>`,
    /// `alert:<id>`, `limits:<user id or defaults>`, `rate:<FROM>/<TO>`, `webhook:<id>`.
    pub stream: String,
    pub occurred_at: DateTime<Utc>,
    /// The accounts it touches (the scope users read by).
    #[schema(value_type = Vec<EventAccount>)]
    pub accounts: Value,
    /// The change, complete enough to rebuild the ledger's projections (`tally replay`).
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl From<EventRecord> for EventBody {
    fn from(event: EventRecord) -> EventBody {
        EventBody {
            id: event.id,
            cursor: event.cursor.to_string(),
            kind: event.kind,
            stream: event.stream,
            occurred_at: event.created_at,
            accounts: event.accounts,
            payload: event.payload,
        }
    }
}

/// A page of events, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub items: Vec<EventBody>,
    /// Pass as `after` for the next page. Always set: after the last event of a full page, or
    /// the position read up to when the page is not full (poll again from there; events that
    /// commit later all come after it).
    pub next_cursor: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// A `cursor` or `next_cursor` from before (`<tx>.<seq>`); the start of the log when
    /// absent.
    after: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    limit: Option<i64>,
    /// Comma-separated event types to keep, e.g. `transaction.completed,hold.created`.
    types: Option<String>,
    /// Admins only: the events touching this user's accounts (default: every event).
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

/// `?after&limit&types&user_id` → 200 `{items, next_cursor}`: events in commit (cursor) order,
/// oldest first. A user sees the events that touch their accounts; an admin sees every event,
/// or one user's with `user_id`. Only events of finished database transactions are returned,
/// so paging by `next_cursor` never skips an event that commits later (invariant 12).
///
/// Errors: 403 for a non-admin naming `user_id` other than their own; 422 for a bad `after`,
/// `limit` or `types` (all named at once).
#[utoipa::path(
    get, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page, oldest first", body = EventPage),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's events (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad after, limit or types", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let user = match query.user_id {
        None if principal.is_admin() => None,
        named => Some(super::subject(principal, named)?.as_uuid()),
    };
    let mut errors = Vec::new();
    let after = match query.after.as_deref().map(str::parse::<EventCursor>) {
        None => EventCursor::default(),
        Some(Ok(after)) => after,
        Some(Err(error)) => {
            errors.push(crate::error::FieldError::new("after", error.to_string()));
            EventCursor::default()
        }
    };
    let limit = query.limit.unwrap_or(LIMIT_DEFAULT);
    if !(1..=LIMIT_MAX).contains(&limit) {
        errors.push(crate::error::FieldError::new(
            "limit",
            format!("must be from 1 to {LIMIT_MAX}"),
        ));
    }
    let types = match query.types.as_deref().map(parse_types) {
        None => None,
        Some(Ok(types)) => Some(types),
        Some(Err(message)) => {
            errors.push(crate::error::FieldError::new("types", message));
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let client = state.pool.get().await?;
    let events = read_page(
        &**client,
        after,
        limit,
        Scope {
            user,
            types: types.as_deref(),
        },
    )
    .await?;
    let next_cursor = events.last().map_or(after, |last| last.cursor).to_string();
    Ok(HttpResponse::Ok().json(EventPage {
        items: events.into_iter().map(EventBody::from).collect(),
        next_cursor,
    }))
}

/// A comma-separated list of known event types, each at most once.
fn parse_types(text: &str) -> Result<Vec<String>, String> {
    let mut types: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim) {
        if !EVENT_TYPES.contains(&name) {
            return Err(format!(
                "must be a comma-separated list of event types: {}",
                EVENT_TYPES.join(", ")
            ));
        }
        if !types.iter().any(|known| known == name) {
            types.push(name.to_owned());
        }
    }
    Ok(types)
}
