//! Balance alerts (DESIGN.md section 8): `POST /api/v1/alerts`, `GET /api/v1/alerts`,
//! `DELETE /api/v1/alerts/{id}`. An alert watches the settled balance `amount` of one account
//! (what entries record) and is edge-triggered: `armed` while its condition does not hold, the
//! commit that makes it hold writes one `balance.alert` event and disarms it, the one that makes
//! it stop holding re-arms it. Firing is the posting path's; here alerts are set, listed and
//! removed, each change audited.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::users::current;
use super::{record_change, AppState};
use crate::auth::Principal;
use crate::domain::{AccountKey, UserId, MONEY_BOUND_MINOR, SYSTEM_USER_ID};
use crate::error::ApiError;
use crate::store::alerts::{self as store_alerts, AlertRecord, Condition, Created};
use crate::store::limits::{lock_user, LockedUser, UserLock};

/// 409 when the user already has `ALERTS_PER_USER_MAX` alerts.
const TOO_MANY_ALERTS: ApiError = ApiError::Conflict {
    code: "too_many_alerts",
    detail: "this user already has 100 alerts (the most allowed): delete one first",
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(web::resource("/{id}").route(web::delete().to(delete)));
}

/// One alert; amounts in minor units.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertBody {
    id: Uuid,
    user_id: Uuid,
    currency: &'static str,
    /// `below` (fires when `amount < threshold`) or `above` (when `amount > threshold`).
    condition: &'static str,
    /// Minor units.
    threshold: i64,
    /// True while the condition does not hold: the next crossing fires the alert.
    armed: bool,
    /// How many times it fired.
    fired_count: i64,
    last_fired_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<AlertRecord> for AlertBody {
    fn from(alert: AlertRecord) -> AlertBody {
        AlertBody {
            id: alert.id,
            user_id: alert.user.as_uuid(),
            currency: alert.currency.code(),
            condition: alert.condition.as_str(),
            threshold: alert.threshold,
            armed: alert.armed,
            fired_count: alert.fired_count,
            last_fired_at: alert.last_fired_at,
            created_at: alert.created_at,
        }
    }
}

/// A user's alerts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertsBody {
    /// Oldest first.
    alerts: Vec<AlertBody>,
}

/// `{currency, condition: "below"|"above", threshold, user_id?}` → 201 the alert, `armed` when
/// the condition does not hold for the account's settled `amount` now (0 for a currency never
/// used). `threshold` is in minor units, from -2^61 to 2^61; `user_id` (default: the caller)
/// names another user for an admin only.
///
/// Errors: 403 for a non-admin naming another user; 409 `too_many_alerts` at 100 alerts; 422
/// naming every bad field (`user_id` also for an unknown or deleted user, or the system
/// account).
#[utoipa::path(
    post, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])),
    request_body(content = super::schemas::AlertRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The alert", body = AlertBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's account (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`too_many_alerts`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or no such user", body = crate::error::Problem, content_type = "application/problem+json"),
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
    let currency = fields.required("currency", parse::currency);
    let condition = fields.required("condition", |value| {
        value
            .as_str()
            .and_then(Condition::parse)
            .ok_or_else(|| "must be below or above".to_owned())
    });
    let threshold = fields.required("threshold", |value| {
        let range = format!("must be from -2^61 to 2^61 (±{MONEY_BOUND_MINOR}), minor units");
        super::limits::integer(value, &range).and_then(|threshold| {
            (-MONEY_BOUND_MINOR..=MONEY_BOUND_MINOR)
                .contains(&threshold)
                .then_some(threshold)
                .ok_or(range)
        })
    });
    let user_id = fields.optional("user_id", parse::uuid);
    if user_id == Some(SYSTEM_USER_ID.as_uuid()) {
        fields.error("user_id", "is the system account, which has no alerts");
    }
    fields.finish()?;
    let (currency, condition, threshold) = (
        currency.expect("finish() refuses a missing currency"),
        condition.expect("finish() refuses a missing condition"),
        threshold.expect("finish() refuses a missing threshold"),
    );
    let user = match user_id.map(UserId::from_uuid) {
        None => principal.user,
        Some(user) if user == principal.user || principal.is_admin() => user,
        Some(_) => {
            return Err(ApiError::Forbidden(
                "only an admin may set an alert on another user's account",
            ))
        }
    };
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    if lock_user(&transaction, user.as_uuid(), UserLock::Exclusive).await? == LockedUser::Missing {
        return Err(ApiError::field("user_id", "no such user"));
    }
    let account = AccountKey { user, currency };
    let alert = match store_alerts::create(&transaction, account, condition, threshold).await? {
        Created::TooMany => return Err(TOO_MANY_ALERTS),
        Created::Created(alert) => alert,
    };
    record_change(
        &transaction,
        &req,
        principal.user,
        ("alert", alert.id),
        "alert.created",
        json!({
            "alert_id": alert.id,
            "user_id": user.as_uuid(),
            "currency": currency.code(),
            "condition": condition.as_str(),
            "threshold": threshold,
            "armed": alert.armed,
        }),
    )
    .await?;
    transaction.commit().await?;
    Ok(HttpResponse::Created().json(AlertBody::from(alert)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Admins only: whose alerts (default: the caller's).
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

/// → 200 `{"alerts": [alert]}`: the caller's alerts (an admin may pass `user_id`), oldest
/// first.
///
/// Errors: 403 for a non-admin naming another user; 422 for a bad query.
#[utoipa::path(
    get, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "The alerts", body = AlertsBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's alerts (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
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
    let alerts = store_alerts::for_user(&client, user).await?;
    Ok(HttpResponse::Ok().json(AlertsBody {
        alerts: alerts.into_iter().map(AlertBody::from).collect(),
    }))
}

/// → 204: the alert is gone. The owner or an admin.
///
/// Errors: 404 for no such alert, or another user's (for a non-admin).
#[utoipa::path(
    delete, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Alert id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such alert, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
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
    let id = parse::hyphenated_uuid(&id).ok_or(ApiError::NotFound("no such alert"))?;
    let owner = (!principal.is_admin()).then_some(principal.user);
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let alert = store_alerts::delete(&transaction, id, owner)
        .await?
        .ok_or(ApiError::NotFound("no such alert"))?;
    record_change(
        &transaction,
        &req,
        principal.user,
        ("alert", id),
        "alert.deleted",
        json!({
            "alert_id": id,
            "user_id": alert.user.as_uuid(),
            "currency": alert.currency.code(),
            "condition": alert.condition.as_str(),
            "threshold": alert.threshold,
        }),
    )
    .await?;
    transaction.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}
