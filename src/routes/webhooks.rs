//! Webhook subscriptions (DESIGN.md section 10): `POST /api/v1/webhooks`,
//! `GET /api/v1/webhooks`, `DELETE /api/v1/webhooks/{id}`, `POST /api/v1/webhooks/{id}/enable`
//! and the delivery log `GET /api/v1/webhooks/{id}/deliveries`. A user's subscription receives
//! the events touching their accounts, an admin's every event; delivery is `crate::webhooks`'.
//! Every change is audited in its own transaction; a subscription's secret appears only in the
//! reply that creates it.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::users::current;
use super::AppState;
use crate::auth::Principal;
use crate::domain::UserId;
use crate::error::{ApiError, FieldError};
use crate::store::webhooks::{self as store_hooks, Created, NewWebhook, WebhookRecord};

/// 409 when the user already has `WEBHOOKS_PER_USER_MAX` subscriptions.
const TOO_MANY_WEBHOOKS: ApiError = ApiError::Conflict {
    code: "too_many_webhooks",
    detail: "this user already has 20 webhooks (the most allowed): delete one first",
};
const NO_SUCH_WEBHOOK: ApiError = ApiError::NotFound("no such webhook");
/// Longest description, characters.
const DESCRIPTION_LENGTH_MAX: usize = 500;
/// Deliveries per page by default, and at most.
const DELIVERIES_LIMIT_DEFAULT: i64 = 50;
const DELIVERIES_LIMIT_MAX: i64 = 500;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(web::resource("/{id}").route(web::delete().to(delete)))
    .service(web::resource("/{id}/enable").route(web::post().to(enable)))
    .service(web::resource("/{id}/deliveries").route(web::get().to(deliveries)));
}

/// One subscription.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookBody {
    id: Uuid,
    /// The owner: a user's subscription receives the events touching their accounts, an
    /// admin's every event.
    user_id: Uuid,
    /// Where events are POSTed.
    url: String,
    /// The event types it receives; `null`: every type.
    types: Option<Vec<String>>,
    description: Option<String>,
    /// `active`, or `disabled` after a run of failed attempts (`POST .../enable` resumes).
    status: &'static str,
    /// Failed attempts in a row (a 2xx resets it).
    consecutive_failures: i32,
    disabled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// The HMAC-SHA256 signing key: only in the reply to `POST /api/v1/webhooks`, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WebhookBody {
    fn new(hook: WebhookRecord, with_secret: bool) -> WebhookBody {
        WebhookBody {
            id: hook.id,
            user_id: hook.user.as_uuid(),
            url: hook.url,
            types: hook.types,
            description: hook.description,
            status: if hook.active { "active" } else { "disabled" },
            consecutive_failures: hook.consecutive_failures,
            disabled_at: hook.disabled_at,
            created_at: hook.created_at,
            secret: with_secret.then_some(hook.secret),
        }
    }
}

/// A user's subscriptions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhooksBody {
    /// Oldest first.
    webhooks: Vec<WebhookBody>,
}

fn parse_url(allowed: &[String]) -> impl FnOnce(&Value) -> Result<String, String> + '_ {
    move |value| {
        let text = value.as_str().ok_or("must be a string")?;
        crate::webhooks::check_url(text, allowed)
            .map(|_| text.to_owned())
            .map_err(|error| error.to_string())
    }
}

fn parse_types(value: &Value) -> Result<Vec<String>, String> {
    let message = || {
        format!(
            "must be a non-empty array of event types (omit it for every type): {}",
            super::events::EVENT_TYPES.join(", ")
        )
    };
    let items = value
        .as_array()
        .filter(|items| !items.is_empty())
        .ok_or_else(message)?;
    let mut types: Vec<String> = Vec::new();
    for item in items {
        let name = item
            .as_str()
            .filter(|name| super::events::EVENT_TYPES.contains(name))
            .ok_or_else(message)?;
        if !types.iter().any(|known| known == name) {
            types.push(name.to_owned());
        }
    }
    Ok(types)
}

fn parse_description(value: &Value) -> Result<String, String> {
    let text = value.as_str().ok_or("must be a string")?;
    if text.contains('\0') {
        return Err("must not contain a NUL character (U+0000)".into());
    }
    if text.chars().count() > DESCRIPTION_LENGTH_MAX {
        return Err(format!(
            "must be at most {DESCRIPTION_LENGTH_MAX} characters"
        ));
    }
    Ok(text.to_owned())
}

/// `{url, types?, description?}` → 201 the subscription with its `secret` (shown only here).
/// `url`: absolute `http` (this build has no TLS stack, so `https` is refused), no user name
/// or password, a host allowed by `webhooks.allowed_hosts`. `types`: event types to receive
/// (default: all). `description`: up to 500 characters. A subscription receives the events
/// that commit after it is created: a user's, those touching their accounts; an admin's, all.
///
/// Errors: 409 `too_many_webhooks` at 20 subscriptions; 422 naming every bad or unknown field.
#[utoipa::path(
    post, path = "/api/v1/webhooks", tag = "events", security(("bearer" = [])),
    request_body(content = super::schemas::WebhookRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The subscription, with its signing secret", body = WebhookBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`too_many_webhooks`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields: a URL that is not http, has a user name or password, or names a host not allowed; an unknown event type", body = crate::error::Problem, content_type = "application/problem+json"),
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
    let mut fields = Fields::new(body);
    let url = fields.required("url", parse_url(&state.settings.webhooks.allowed_hosts));
    let types = fields.optional("types", parse_types);
    let description = fields.optional("description", parse_description);
    fields.finish()?;
    let url = url.expect("finish() refuses a missing url");
    let secret = crate::webhooks::new_secret();
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let new = NewWebhook {
        user: principal.user,
        url: &url,
        types: types.as_deref(),
        description: description.as_deref(),
        secret: &secret,
    };
    let hook = match store_hooks::create(&transaction, new).await? {
        Created::TooMany => return Err(TOO_MANY_WEBHOOKS),
        Created::Created(hook) => hook,
    };
    record_change(
        &transaction,
        &req,
        principal.user,
        hook.id,
        "webhook.created",
        json!({
            "user_id": hook.user.as_uuid(),
            "url": hook.url,
            "types": hook.types,
            "description": hook.description,
        }),
    )
    .await?;
    transaction.commit().await?;
    Ok(HttpResponse::Created().json(WebhookBody::new(hook, true)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Admins only: whose subscriptions (default: the caller's).
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

/// → 200 `{"webhooks": [webhook]}`: the caller's subscriptions (an admin may pass `user_id`),
/// oldest first, without their secrets.
///
/// Errors: 403 for a non-admin naming another user; 422 for a bad query.
#[utoipa::path(
    get, path = "/api/v1/webhooks", tag = "events", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "The subscriptions", body = WebhooksBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's webhooks (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = super::subject(principal, query.into_inner().user_id)?;
    let client = state.pool.get().await?;
    let hooks = store_hooks::for_user(&client, user).await?;
    Ok(HttpResponse::Ok().json(WebhooksBody {
        webhooks: hooks
            .into_iter()
            .map(|hook| WebhookBody::new(hook, false))
            .collect(),
    }))
}

/// [`super::record_change`] for the subscription `id`, its payload naming it as `webhook_id`.
async fn record_change(
    transaction: &deadpool_postgres::Transaction<'_>,
    req: &HttpRequest,
    actor: UserId,
    id: Uuid,
    action: &'static str,
    mut payload: serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    payload["webhook_id"] = json!(id);
    super::record_change(transaction, req, actor, ("webhook", id), action, payload).await
}

/// The subscription id of a path, and whose it must be (`None` for an admin).
fn target(principal: Principal, id: &str) -> Result<(Uuid, Option<UserId>), ApiError> {
    let id = parse::hyphenated_uuid(id).ok_or(NO_SUCH_WEBHOOK)?;
    Ok((id, (!principal.is_admin()).then_some(principal.user)))
}

/// → 204: the subscription and its delivery log are gone; nothing more is sent to it (an
/// attempt already under way may still arrive). The owner or an admin.
///
/// Errors: 404 for no such subscription, or another user's (for a non-admin).
#[utoipa::path(
    delete, path = "/api/v1/webhooks/{id}", tag = "events", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    let (id, owner) = target(principal, &id)?;
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let hook = store_hooks::delete(&transaction, id, owner)
        .await?
        .ok_or(NO_SUCH_WEBHOOK)?;
    record_change(
        &transaction,
        &req,
        principal.user,
        id,
        "webhook.deleted",
        json!({"user_id": hook.user.as_uuid(), "url": hook.url}),
    )
    .await?;
    transaction.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// → 200 the subscription, active again with its run of failures reset; deliveries left
/// pending while it was disabled are due at once. Events committed while it was disabled were
/// not fanned out to it and are not sent (read them with `GET /api/v1/events`). Enabling an
/// active subscription changes nothing. The owner or an admin.
///
/// Errors: 404 for no such subscription, or another user's (for a non-admin).
#[utoipa::path(
    post, path = "/api/v1/webhooks/{id}/enable", tag = "events", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The subscription, active", body = WebhookBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn enable(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    let (id, owner) = target(principal, &id)?;
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let (hook, was_disabled) = store_hooks::enable(&transaction, id, owner)
        .await?
        .ok_or(NO_SUCH_WEBHOOK)?;
    if was_disabled {
        record_change(
            &transaction,
            &req,
            principal.user,
            id,
            "webhook.enabled",
            json!({"user_id": hook.user.as_uuid(), "url": hook.url}),
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(HttpResponse::Ok().json(WebhookBody::new(hook, false)))
}

/// One delivery of one event to one subscription.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryBody {
    /// The event's `id` (also sent as `Tally-Webhook-Id`).
    event_id: i64,
    event_type: String,
    /// `pending` (to be sent, or being sent), `delivered` (a 2xx) or `failed` (every attempt
    /// failed).
    status: String,
    /// Attempts made (an attempt cut off by a crash counts).
    attempts: i32,
    /// The receiver's status code at the last attempt; `null` when it did not answer.
    last_status_code: Option<i32>,
    /// Why the last attempt failed; `null` after a success.
    last_error: Option<String>,
    /// For a pending delivery: when it is (next) due.
    next_attempt_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// A page of the delivery log, newest event first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    items: Vec<DeliveryBody>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Deliveries per page, 1 to 500 (default 50).
    limit: Option<i64>,
    /// A `next_cursor` from before.
    cursor: Option<String>,
}

/// `?limit&cursor` → 200 `{items, next_cursor}`: the subscription's delivery log, newest event
/// first. The owner or an admin.
///
/// Errors: 404 for no such subscription, or another user's (for a non-admin); 422 for a bad
/// `limit` or `cursor`.
#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}/deliveries", tag = "events", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Webhook id"), DeliveriesQuery),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = DeliveryPage),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deliveries(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, owner) = target(principal, &id)?;
    let query = query.into_inner();
    let mut errors = Vec::new();
    let limit = query.limit.unwrap_or(DELIVERIES_LIMIT_DEFAULT);
    if !(1..=DELIVERIES_LIMIT_MAX).contains(&limit) {
        errors.push(FieldError::new(
            "limit",
            format!("must be from 1 to {DELIVERIES_LIMIT_MAX}"),
        ));
    }
    let before = match query.cursor.as_deref() {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(before) if before > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Some(before),
            _ => {
                errors.push(FieldError::new(
                    "cursor",
                    "must be a next_cursor from before",
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let client = state.pool.get().await?;
    store_hooks::find(&client, id, owner)
        .await?
        .ok_or(NO_SUCH_WEBHOOK)?;
    let mut records = store_hooks::deliveries(&client, id, before, limit + 1).await?;
    let next_cursor = (records.len() as i64 > limit).then(|| {
        records.truncate(limit as usize);
        records
            .last()
            .map(|last| last.event_id.to_string())
            .expect("a page longer than limit >= 1 is not empty")
    });
    Ok(HttpResponse::Ok().json(DeliveryPage {
        items: records
            .into_iter()
            .map(|delivery| DeliveryBody {
                event_id: delivery.event_id,
                event_type: delivery.event_type,
                status: delivery.status,
                attempts: delivery.attempts,
                last_status_code: delivery.last_status_code,
                last_error: delivery.last_error,
                next_attempt_at: delivery.next_attempt_at,
                delivered_at: delivery.delivered_at,
                created_at: delivery.created_at,
            })
            .collect(),
        next_cursor,
    }))
}
