//! `GET /api/v1/balances/current`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use crate::auth::Principal;
use base64::Engine;

use super::input::{parse, QueryErrors};
use crate::cache::Lookup;
use crate::domain::{AccountKey, Currency};
use crate::error::ApiError;
use crate::store;
use crate::store::balances::Interval;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/current").route(web::get().to(current)))
        .service(web::resource("/historical").route(web::get().to(historical)))
        .service(web::resource("/at-time").route(web::get().to(at_time)));
}

/// Most intervals one closing-balance request may span (a year of hours is 8,784).
const INTERVALS_MAX: i64 = 10_000;
/// Changes per page when `limit` is not given, and the most allowed.
const CHANGES_LIMIT_DEFAULT: i64 = 100;
pub(crate) const CHANGES_LIMIT_MAX: i64 = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoricalQuery {
    /// ISO 4217 code.
    currency: String,
    /// RFC 3339; changes at or after it (required with `interval`).
    from: Option<String>,
    /// RFC 3339; changes before it (required with `interval`).
    to: Option<String>,
    /// `hour` or `day`: the closing balance per interval instead of every change.
    interval: Option<String>,
    /// Changes per page, 1 to 1000 (default 100); not with `interval`.
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Admins only: whose balance.
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

/// One balance change.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChangeBody {
    entry_id: i64,
    transaction_id: Uuid,
    /// Minor units; negative for money out.
    delta: i64,
    balance_after: i64,
    at: DateTime<Utc>,
}

/// Every change in the range, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChangesBody {
    currency: &'static str,
    items: Vec<ChangeBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// The balance at the end of one interval `[start, end)`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClosingBody {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    balance: i64,
}

/// The closing balance of every interval of the range.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClosingBalancesBody {
    currency: &'static str,
    /// `hour` or `day`.
    interval: &'static str,
    items: Vec<ClosingBody>,
}

/// The balance after each change in `[from, to)`, oldest first, cursor-paginated; or, with
/// `interval=hour|day`, the closing balance of each interval of `[from, to)` (intervals
/// without a change carry the previous balance).
#[utoipa::path(
    get, path = "/api/v1/balances/historical", tag = "balances", security(("bearer" = [])), params(HistoricalQuery),
    responses(
        (status = 200, description = "Changes (without `interval`) or closing balances (with it)", body = HistoricalBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's balance (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad parameters", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn historical(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<HistoricalQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let user = super::subject(principal, query.user_id)?;
    let mut errors = QueryErrors::default();
    let currency = errors.check("currency", Some(&query.currency), |code| {
        Currency::parse(code).map_err(|_| "must be an ISO 4217 code with minor units")
    });
    let from = errors.check("from", query.from.as_deref(), parse::rfc3339);
    let to = errors.check("to", query.to.as_deref(), parse::rfc3339);
    let interval = errors.check(
        "interval",
        query.interval.as_deref(),
        |interval| match interval {
            "hour" => Ok(Interval::Hour),
            "day" => Ok(Interval::Day),
            _ => Err("must be hour or day"),
        },
    );
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            errors.push("from", "must be before to");
        }
    }
    if interval.is_some() && (query.from.is_none() || query.to.is_none()) {
        errors.push("interval", "needs both from and to");
    }
    if interval.is_some() && (query.limit.is_some() || query.cursor.is_some()) {
        errors.push(
            "interval",
            "returns every interval at once: limit and cursor do not apply",
        );
    }
    let limit = query.limit.unwrap_or(CHANGES_LIMIT_DEFAULT);
    if !(1..=CHANGES_LIMIT_MAX).contains(&limit) {
        errors.push("limit", "must be from 1 to 1000");
    }
    let after = errors.check("cursor", query.cursor.as_deref(), |cursor| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| "is not a cursor this API issued")?;
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or("is not a cursor this API issued")
    });
    if let (Some(interval), Some(from), Some(to)) = (interval, from, to) {
        let seconds = match interval {
            Interval::Hour => 3_600,
            Interval::Day => 86_400,
        };
        if (to - from).num_seconds() / seconds > INTERVALS_MAX {
            errors.push("interval", "the range spans more than 10000 intervals");
        }
        // The last interval is the one `to` falls in (its start is `to` truncated), and its end
        // is answered: it must be an instant RFC 3339 can write too.
        // Whole seconds since the epoch: UTC days and hours are epoch-aligned.
        let last_start = (to - chrono::Duration::microseconds(1))
            .timestamp()
            .div_euclid(seconds)
            * seconds;
        let last_end = DateTime::from_timestamp(last_start + seconds, 0);
        if !last_end.is_some_and(|end| parse::instants().contains(&end)) {
            errors.push(
                "to",
                "must leave the last interval ending within year 9999 (at most \
                 9999-12-31T00:00:00Z by day, 9999-12-31T23:00:00Z by hour)",
            );
        }
    }
    errors.finish()?;
    let currency = currency.expect("finish() refuses a bad currency");
    let account = AccountKey { user, currency };
    let client = state.pool.get().await?;
    if let Some(interval) = interval {
        let (from, to) = (
            from.expect("checked with interval"),
            to.expect("checked with interval"),
        );
        let closing =
            store::balances::closing_balances(&client, account, from, to, interval).await?;
        return Ok(HttpResponse::Ok().json(ClosingBalancesBody {
            currency: currency.code(),
            interval: interval.as_str(),
            items: closing
                .into_iter()
                .map(|(start, end, balance)| ClosingBody {
                    start,
                    end,
                    balance,
                })
                .collect(),
        }));
    }
    let mut changes =
        store::balances::changes(&client, account, from, to, after, limit + 1).await?;
    let next_cursor = if changes.len() as i64 > limit {
        changes.truncate(limit as usize);
        changes.last().map(|last| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.entry_id.to_string())
        })
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ChangesBody {
        currency: currency.code(),
        items: changes
            .into_iter()
            .map(|change| ChangeBody {
                entry_id: change.entry_id,
                transaction_id: change.transaction_id,
                delta: change.delta,
                balance_after: change.balance_after,
                at: change.at,
            })
            .collect(),
        next_cursor,
    }))
}

/// Documentation only: the two shapes `historical` answers with.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum HistoricalBody {
    Changes(ChangesBody),
    Closing(ClosingBalancesBody),
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AtTimeQuery {
    /// RFC 3339 instant.
    at: String,
    /// ISO 4217 code.
    currency: String,
    /// Admins only: whose balance.
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

/// A balance at an instant.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AtTimeBody {
    currency: &'static str,
    /// Minor units: the balance after the last change at or before `at` (0 before the first).
    amount: i64,
    at: DateTime<Utc>,
}

/// The exact balance at an instant, read from the entries index (one indexed lookup).
#[utoipa::path(
    get, path = "/api/v1/balances/at-time", tag = "balances", security(("bearer" = [])), params(AtTimeQuery),
    responses(
        (status = 200, description = "The balance at `at`", body = AtTimeBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another user's balance (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad parameters", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn at_time(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<AtTimeQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let user = super::subject(principal, query.user_id)?;
    let mut errors = QueryErrors::default();
    let at = errors.check("at", Some(&query.at), parse::rfc3339);
    let currency = errors.check("currency", Some(&query.currency), |code| {
        Currency::parse(code).map_err(|_| "must be an ISO 4217 code with minor units")
    });
    errors.finish()?;
    let (at, currency) = (
        at.expect("finish() refuses a bad at"),
        currency.expect("finish() refuses a bad currency"),
    );
    let client = state.pool.get().await?;
    let amount = store::balances::at_time(&client, AccountKey { user, currency }, at).await?;
    Ok(HttpResponse::Ok().json(AtTimeBody {
        currency: currency.code(),
        amount,
        at,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CurrentQuery {
    /// Only this ISO 4217 currency.
    currency: Option<String>,
    /// Admins only: whose balances.
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
}

/// One balance on the wire, minor units.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BalanceBody {
    currency: &'static str,
    /// The settled balance, minor units.
    amount: i64,
    /// Held by pending holds, minor units.
    pending: i64,
    /// `amount - pending`: what is settled and free.
    available: i64,
    /// How far below zero `available` may go, minor units (0: no overdraft).
    overdraft_limit: i64,
    /// `null` for a currency the account never used.
    updated_at: Option<DateTime<Utc>>,
}

impl BalanceBody {
    /// The balance of `currency`: `amount`, `pending` and `overdraft_limit` in minor units,
    /// `updated_at` `None` for a currency the account never used.
    pub(crate) fn new(
        currency: Currency,
        amount: i64,
        pending: i64,
        overdraft_limit: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> BalanceBody {
        BalanceBody {
            currency: currency.code(),
            amount,
            pending,
            available: amount - pending,
            overdraft_limit,
            updated_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BalancesBody {
    user_id: Uuid,
    balances: Vec<BalanceBody>,
}

/// Served from the Redis cache when it holds the user's balances (see `cache.rs`).
/// `?currency&user_id` → 200 `{user_id, balances: [{currency, amount, pending, available, overdraft_limit,
/// updated_at}]}`:
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
    // The cache holds all of a user's balances or none; a miss reads them all and fills it.
    let all: Vec<BalanceBody> = match state.cache.get(user).await {
        Lookup::Hit(cached) => cached
            .into_iter()
            .map(|balance| BalanceBody {
                currency: balance.currency.code(),
                amount: balance.amount,
                pending: balance.pending,
                available: balance.amount - balance.pending,
                overdraft_limit: balance.overdraft_limit,
                updated_at: Some(balance.updated_at),
            })
            .collect(),
        lookup => {
            let client = state.pool.get().await?;
            let records = store::balances::for_user(&client, user, None).await?;
            drop(client);
            if let Lookup::Miss(token) = lookup {
                state.cache.fill(user, &records, token).await;
            }
            records
                .into_iter()
                .map(|record| BalanceBody {
                    currency: record.currency.code(),
                    amount: record.amount,
                    pending: record.pending,
                    available: record.amount - record.pending,
                    overdraft_limit: record.overdraft_limit,
                    updated_at: Some(record.updated_at),
                })
                .collect()
        }
    };
    let mut balances: Vec<BalanceBody> = all
        .into_iter()
        .filter(|balance| currency.is_none_or(|wanted| wanted.code() == balance.currency))
        .collect();
    if let (Some(currency), true) = (currency, balances.is_empty()) {
        balances.push(BalanceBody {
            currency: currency.code(),
            amount: 0,
            pending: 0,
            available: 0,
            overdraft_limit: 0,
            updated_at: None,
        });
    }
    Ok(HttpResponse::Ok().json(BalancesBody {
        user_id: user.as_uuid(),
        balances,
    }))
}
