//! `GET /api/v1/balances/current`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use crate::auth::Principal;
use crate::domain::Currency;
use crate::error::ApiError;
use crate::store;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/current").route(web::get().to(current)));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CurrentQuery {
    /// Only this ISO 4217 currency.
    currency: Option<String>,
    /// Admins only: whose balances.
    user_id: Option<Uuid>,
}

/// One balance on the wire, minor units.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BalanceBody {
    currency: &'static str,
    /// The settled balance.
    amount: i64,
    /// `amount` minus held funds: what is settled and free.
    available: i64,
    /// `null` for a currency the account never used.
    updated_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BalancesBody {
    user_id: Uuid,
    balances: Vec<BalanceBody>,
}

/// `?currency&user_id` → 200 `{user_id, balances: [{currency, amount, available, updated_at}]}`:
/// every currency the account has used, or just `currency` (zero when never used). `user_id`
/// is for admins. Errors: 422 for an unknown currency; 403 for another user's account.
#[utoipa::path(
    get, path = "/api/v1/balances/current", tag = "balances", security(("bearer" = [])),
    params(CurrentQuery),
    responses(
        (status = 200, description = "Balances", body = BalancesBody),
        (status = 403, description = "Another user's balances (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown currency", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn current(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<CurrentQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let user = super::subject(principal, query.user_id)?;
    let currency = query
        .currency
        .as_deref()
        .map(|code| {
            Currency::parse(code).map_err(|error| ApiError::field("currency", error.to_string()))
        })
        .transpose()?;
    let client = state.pool.get().await?;
    let records = store::balances::for_user(&client, user, currency).await?;
    let mut balances: Vec<BalanceBody> = records
        .into_iter()
        .map(|record| BalanceBody {
            currency: record.currency.code(),
            amount: record.amount,
            available: record.amount - record.pending,
            updated_at: Some(record.updated_at),
        })
        .collect();
    if let (Some(currency), true) = (currency, balances.is_empty()) {
        balances.push(BalanceBody {
            currency: currency.code(),
            amount: 0,
            available: 0,
            updated_at: None,
        });
    }
    Ok(HttpResponse::Ok().json(BalancesBody {
        user_id: user.as_uuid(),
        balances,
    }))
}
