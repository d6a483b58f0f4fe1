//! Currency exchange (DESIGN.md section 9): `GET /rates`, admin `PUT /rates/{from}/{to}`,
//! `POST /fx/quotes` and `POST /transactions/exchange`.
//!
//! An exchange is one transaction through the one posting path (invariant 8): the payer's sold
//! currency goes to that currency's `system` liquidity balance (the spread to `fees`), and
//! `system`'s bought currency to the payee. Limits and the overdraft floor apply to the debited
//! side, as for any debit. The arithmetic is `domain::fx` (exact, the house never loses a minor
//! unit); a quote fixes it for `fx.quote_ttl_s` and is claimed once, in the exchange's commit.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::posting::{
    created, idempotency_key, inactive_party, replay, replay_or, submit_error, TransactionBody,
    ONLY_ADMIN,
};
use super::AppState;
use crate::auth::Principal;
use crate::domain::{
    convert, Amount, Authority, Currency, Description, Exchange, Movement, Rate, Reference,
    SpreadBps, UserId,
};
use crate::error::ApiError;
use crate::ledger::Outcome;
use crate::store::fx::{self as store, QuoteRecord, RateRecord};

/// `/rates` and `/fx` (the exchange itself is mounted under `/transactions`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/rates").route(web::get().to(list_rates)))
        .service(web::resource("/rates/{from}/{to}").route(web::put().to(put_rate)))
        .service(web::resource("/fx/quotes").route(web::post().to(quote)));
}

/// A currency Tally accepts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CurrencyBody {
    /// ISO 4217 code.
    pub code: &'static str,
    /// Digits after the decimal point of its major unit (ISO 4217: 2 for USD, 0 for JPY, 3 for
    /// BHD): every amount of it is an integer of 10^-exponent major units.
    pub exponent: u16,
}

/// Every currency Tally accepts, by code.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CurrenciesBody {
    pub currencies: Vec<CurrencyBody>,
}

/// Every currency Tally accepts (the ISO 4217 currencies with minor units, exactly what
/// `currency` fields take), with its exponent, so that a client can show major units. Public:
/// the web console needs it before anyone signs in.
#[utoipa::path(
    get, path = "/api/v1/currencies", tag = "exchange",
    responses(
        (status = 200, description = "The currencies, by code", body = CurrenciesBody),
        (status = 429, description = "Rate limited (per client IP, as `/auth/*`)", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn currencies() -> HttpResponse {
    static CURRENCIES: std::sync::OnceLock<CurrenciesBody> = std::sync::OnceLock::new();
    HttpResponse::Ok().json(CURRENCIES.get_or_init(|| {
        CurrenciesBody {
            currencies: crate::domain::Currency::all()
                .into_iter()
                .map(|currency| CurrencyBody {
                    code: currency.code(),
                    exponent: currency.exponent(),
                })
                .collect(),
        }
    }))
}

/// A configured rate.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RateBody {
    pub from_currency: &'static str,
    pub to_currency: &'static str,
    /// Major units of `to_currency` one major unit of `from_currency` buys, as a decimal
    /// string (never a JSON number: no precision is lost).
    pub rate: String,
    /// Where the rate came from (a feed, a desk, a contract).
    pub source: String,
    /// After this instant the rate prices nothing; `null`: until replaced.
    pub valid_until: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Whether it prices exchanges now (`valid_until` not passed).
    pub current: bool,
}

impl RateBody {
    fn of(record: RateRecord, now: DateTime<Utc>) -> RateBody {
        RateBody {
            from_currency: record.from.code(),
            to_currency: record.to.code(),
            rate: record.rate.to_string(),
            current: record.is_current(now),
            source: record.source,
            valid_until: record.valid_until,
            updated_at: record.updated_at,
        }
    }
}

/// Every configured rate.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RatesBody {
    pub items: Vec<RateBody>,
}

/// Every configured rate, by pair. Any signed-in user may read them.
#[utoipa::path(
    get, path = "/api/v1/rates", tag = "exchange", security(("bearer" = [])),
    responses(
        (status = 200, description = "The rates", body = RatesBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_rates(
    state: web::Data<AppState>,
    _principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await?;
    let now = state.clock.now();
    let items = store::list_rates(&client)
        .await?
        .into_iter()
        .map(|record| RateBody::of(record, now))
        .collect();
    Ok(HttpResponse::Ok().json(RatesBody { items }))
}

/// `{rate, source, valid_until?}` → 200 the rate of `from` → `to` (set or replaced). Admins
/// only; audited, and writes `rate.changed`. The inverse pair is a rate of its own: it is never
/// implied.
///
/// Errors: 403 for a non-admin; 404 for a path that is not two currencies; 422 for the same
/// currency twice, a rate that is not a positive decimal string, an empty source, a
/// `valid_until` not in the future.
#[utoipa::path(
    put, path = "/api/v1/rates/{from}/{to}", tag = "exchange", security(("bearer" = [])),
    params(
        ("from" = String, Path, description = "The currency sold (ISO 4217)"),
        ("to" = String, Path, description = "The currency bought (ISO 4217)"),
    ),
    request_body(content = super::schemas::RateRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The rate as stored", body = RateBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admins only", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a currency pair", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_rate(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    if !principal.is_admin() {
        return Err(ApiError::Forbidden("only an admin may set exchange rates"));
    }
    let (from, to) = path.into_inner();
    let (Ok(from), Ok(to)) = (Currency::parse(&from), Currency::parse(&to)) else {
        return Err(ApiError::NotFound(
            "no such currency pair: both must be ISO 4217 codes with minor units",
        ));
    };
    let now = state.clock.now();
    let mut fields = Fields::new(body);
    let rate = fields.required("rate", rate);
    let source = fields.required("source", source);
    let valid_until = fields.optional("valid_until", |value| {
        let at = value
            .as_str()
            .ok_or("must be an RFC 3339 timestamp")
            .and_then(parse::rfc3339)?;
        if at <= now {
            return Err("must be in the future".to_owned());
        }
        Ok(at)
    });
    if from == to {
        fields.error("to", "must be another currency than from");
    }
    fields.finish()?;
    let (rate, source) = (
        rate.expect("finish() refuses missing fields"),
        source.expect("finish() refuses missing fields"),
    );
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let stored = store::put_rate(
        &transaction,
        (from, to),
        rate,
        &source,
        valid_until,
        principal.user,
    )
    .await?;
    let details = serde_json::json!({
        "rate": rate.to_string(), "source": source, "valid_until": valid_until,
    });
    let entity = ("rate", Some(format!("{from}/{to}")));
    super::audit_in_transaction(
        &transaction,
        &req,
        Some(principal.user),
        entity,
        "rate.changed",
        details,
    )
    .await?;
    transaction.commit().await?;
    Ok(HttpResponse::Ok().json(RateBody::of(stored, now)))
}

fn rate(value: &serde_json::Value) -> Result<Rate, String> {
    let text = value
        .as_str()
        .ok_or("must be a decimal number written as a string, such as \"1.0842\"")?;
    Rate::parse(text).map_err(|error| error.to_string())
}

fn source(value: &serde_json::Value) -> Result<String, String> {
    let description = parse::text(Description::parse)(value)?;
    let text = description.as_str().trim();
    if text.is_empty() || text.chars().count() > 100 {
        return Err("must say where the rate comes from (1 to 100 characters)".to_owned());
    }
    Ok(text.to_owned())
}

/// A quote: the rate and both amounts, fixed until `expires_at` for its user, used at most once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QuoteBody {
    pub id: Uuid,
    pub from_currency: &'static str,
    pub to_currency: &'static str,
    /// What the exchange takes, minor units of `from_currency`.
    pub amount: i64,
    /// The spread kept by the house, minor units of `from_currency` (rounded up), and its rate
    /// in basis points.
    pub fee: i64,
    pub spread_bps: u32,
    /// What the exchange pays, minor units of `to_currency` (rounded down).
    pub to_amount: i64,
    /// As in `GET /rates`.
    pub rate: String,
    pub rate_source: String,
    pub expires_at: DateTime<Utc>,
}

impl From<QuoteRecord> for QuoteBody {
    fn from(quote: QuoteRecord) -> QuoteBody {
        QuoteBody {
            id: quote.id,
            from_currency: quote.from.code(),
            to_currency: quote.to.code(),
            amount: quote.source_amount,
            fee: quote.fee,
            spread_bps: quote.spread_bps,
            to_amount: quote.target_amount,
            rate: quote.rate.to_string(),
            rate_source: quote.rate_source,
            expires_at: quote.expires_at,
        }
    }
}

/// `{from_currency, to_currency, amount}` → 201 a quote for exchanging `amount` (minor units of
/// `from_currency`), valid for `fx.quote_ttl_s` seconds, usable once and only by the caller.
///
/// Errors: 422 `rate_unavailable` (no current rate for the pair), `validation_failed` (the same
/// currency twice, an amount too small to buy one minor unit, or too large).
#[utoipa::path(
    post, path = "/api/v1/fx/quotes", tag = "exchange", security(("bearer" = [])),
    request_body(content = super::schemas::QuoteRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The quote", body = QuoteBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` or `rate_unavailable`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn quote(
    state: web::Data<AppState>,
    principal: Principal,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body);
    let from = fields.required("from_currency", parse::currency);
    let to = fields.required("to_currency", parse::currency);
    let amount = fields.required("amount", parse::amount);
    if from.is_some() && from == to {
        fields.error("to_currency", "must be another currency than from_currency");
    }
    fields.finish()?;
    let (from, to, amount) = (
        from.expect("finish() refuses missing fields"),
        to.expect("finish() refuses missing fields"),
        amount.expect("finish() refuses missing fields"),
    );
    let client = state.pool.get().await?;
    // Microseconds, as PostgreSQL stores it: the reply says what a later read will say.
    let now = chrono::SubsecRound::trunc_subsecs(state.clock.now(), 6);
    let priced = price(&state, &client, (from, to), amount, now).await?;
    let quote = QuoteRecord {
        id: Uuid::now_v7(),
        user: principal.user,
        from,
        to,
        source_amount: amount.minor(),
        fee: priced.exchange.fee,
        target_amount: priced.exchange.bought.minor(),
        rate: priced.exchange.rate,
        spread_bps: priced.exchange.spread_bps,
        rate_source: priced.exchange.rate_source,
        created_at: now,
        expires_at: now + chrono::Duration::seconds(i64::from(state.settings.fx.quote_ttl_s)),
        transaction_id: None,
    };
    store::insert_quote(&client, &quote).await?;
    Ok(HttpResponse::Created().json(QuoteBody::from(quote)))
}

/// An exchange priced at the current rate (the parties are filled in by the caller).
struct Priced {
    exchange: Exchange,
}

/// Prices `amount` of `from` in `to` at the current rate and the configured spread.
///
/// Errors: 422 `rate_unavailable`; 422 on `amount` when it buys nothing or too much.
async fn price(
    state: &AppState,
    client: &impl deadpool_postgres::GenericClient,
    (from, to): (Currency, Currency),
    amount: Amount,
    now: DateTime<Utc>,
) -> Result<Priced, ApiError> {
    let rate = store::find_rate(client, from, to)
        .await?
        .filter(|rate| rate.is_current(now))
        .ok_or(ApiError::RateUnavailable {
            from: from.code(),
            to: to.code(),
        })?;
    let spread = SpreadBps::new(state.settings.fx.spread_bps)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("fx.spread_bps was validated")))?;
    let conversion = convert(amount, from, to, rate.rate, spread)
        .map_err(|error| ApiError::field("amount", error.to_string()))?;
    Ok(Priced {
        exchange: Exchange {
            payer: UserId::from_uuid(Uuid::nil()),
            payee: UserId::from_uuid(Uuid::nil()),
            sold_currency: from,
            sold: amount,
            bought_currency: to,
            bought: conversion.target,
            fee: conversion.fee,
            rate: rate.rate,
            spread_bps: spread.bps(),
            rate_source: rate.source,
            quote: None,
        },
    })
}

/// `{quote_id}` or `{from_currency, to_currency, amount}`, with `to_user_id?`, `description?`,
/// `reference?` → 201 the exchange (`type: "exchange"`, its `exchange` object: what was bought,
/// the rate, the spread and the quote). Without a quote the current rate prices it. With
/// `to_user_id` the bought currency goes to that user (a cross-currency transfer).
///
/// Errors: 404 `not_found` for a quote that is not the caller's; 409 `quote_expired` for a
/// quote past its deadline or used before; 422 `insufficient_funds` or `limit_exceeded`
/// (recorded as a failed transaction), `rate_unavailable`, `validation_failed` (a quote together
/// with other pricing fields that disagree with it, the same currency twice, an unknown payee).
#[utoipa::path(
    post, path = "/api/v1/transactions/exchange", tag = "exchange", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)")),
    request_body(content = super::schemas::ExchangeRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed", body = TransactionBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such quote, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`quote_expired`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `rate_unavailable`, `insufficient_funds`, `limit_exceeded` (the last two recorded as a failed transaction) or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn exchange(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency_key(&req)?;
    let mut fields = Fields::new(body);
    let quote_id = fields.optional("quote_id", parse::uuid);
    let requested = ExchangeFields::parse(&mut fields, quote_id.is_none());
    let (from, to, amount) = (requested.from, requested.to, requested.amount);
    fields.finish()?;
    let client = state.pool.get().await?;
    let now = state.clock.now();
    let exchange = match quote_id {
        Some(id) => {
            let quote = store::find_quote(&client, id)
                .await?
                .filter(|quote| quote.user == principal.user)
                .ok_or(ApiError::NotFound("no such quote"))?;
            let mut disagree = Vec::new();
            if from.is_some_and(|from| from != quote.from) {
                disagree.push("from_currency");
            }
            if to.is_some_and(|to| to != quote.to) {
                disagree.push("to_currency");
            }
            if amount.is_some_and(|amount| amount.minor() != quote.source_amount) {
                disagree.push("amount");
            }
            if let Some(name) = disagree.first() {
                return Err(ApiError::field(
                    *name,
                    "disagrees with the quote; leave it out or give the quote's value",
                ));
            }
            let stored = |what: &str| ApiError::Internal(anyhow::anyhow!("stored quote: {what}"));
            Exchange {
                payer: principal.user,
                payee: principal.user,
                sold_currency: quote.from,
                sold: Amount::new(quote.source_amount).map_err(|_| stored("amount"))?,
                bought_currency: quote.to,
                bought: Amount::new(quote.target_amount).map_err(|_| stored("to_amount"))?,
                fee: quote.fee,
                rate: quote.rate,
                spread_bps: quote.spread_bps,
                rate_source: quote.rate_source,
                quote: Some(quote.id),
            }
        }
        None => {
            let pair = (from.expect("checked above"), to.expect("checked above"));
            price(&state, &client, pair, amount.expect("checked above"), now)
                .await?
                .exchange
        }
    };
    drop(client);
    let quoted = exchange.quote;
    let movement = requested
        .movement(exchange, principal)?
        .with_key(idempotency);
    submit(&state, movement, quoted).await
}

/// A schedule's exchange template: `{from_currency, to_currency, amount, to_user_id?,
/// description?, reference?}` (no quote: it would expire before the run), priced at the rate
/// current when it is parsed (at creation, to check it, and again at every run).
///
/// Errors: 422 naming every bad field; a pair without a current rate is named on
/// `to_currency`, and an amount that buys nothing on `amount`.
pub(crate) async fn exchange_template(
    state: &AppState,
    principal: Principal,
    mut fields: Fields,
) -> Result<Movement, ApiError> {
    let requested = ExchangeFields::parse(&mut fields, true);
    fields.finish()?;
    let missing = || ApiError::Internal(anyhow::anyhow!("finish() refuses missing fields"));
    let pair = (
        requested.from.ok_or_else(missing)?,
        requested.to.ok_or_else(missing)?,
    );
    let amount = requested.amount.ok_or_else(missing)?;
    let client = state.pool.get().await?;
    let exchange = match price(state, &client, pair, amount, state.clock.now()).await {
        Ok(priced) => priced.exchange,
        Err(error @ ApiError::RateUnavailable { .. }) => {
            return Err(ApiError::field("to_currency", error.to_string()))
        }
        Err(error) => return Err(error),
    };
    requested.movement(exchange, principal)
}

/// The fields an exchange request and a schedule's exchange template share.
struct ExchangeFields {
    from: Option<Currency>,
    to: Option<Currency>,
    amount: Option<Amount>,
    payee: Option<Uuid>,
    description: Option<Description>,
    reference: Option<Reference>,
}

impl ExchangeFields {
    /// Reads them from `fields`, recording every bad one there; the pricing fields are
    /// required when `priced_here` (no quote prices the exchange).
    fn parse(fields: &mut Fields, priced_here: bool) -> ExchangeFields {
        let pricing = |fields: &mut Fields, name: &str, parse| {
            if priced_here {
                fields.required(name, parse)
            } else {
                fields.optional(name, parse)
            }
        };
        let from = pricing(fields, "from_currency", parse::currency);
        let to = pricing(fields, "to_currency", parse::currency);
        let amount = if priced_here {
            fields.required("amount", parse::amount)
        } else {
            fields.optional("amount", parse::amount)
        };
        let payee = fields.optional("to_user_id", parse::uuid);
        let description = fields.optional("description", parse::text(Description::parse));
        let reference = fields.optional("reference", parse::text(Reference::parse));
        if payee.is_some_and(|payee| UserId::from_uuid(payee).is_reserved()) {
            fields.error("to_user_id", "no such user");
        }
        if from.is_some() && from == to {
            fields.error("to_currency", "must be another currency than from_currency");
        }
        ExchangeFields {
            from,
            to,
            amount,
            payee,
            description,
            reference,
        }
    }

    /// The exchange `principal` asks for at `exchange`'s price, paid to the payee (default:
    /// the principal).
    fn movement(self, mut exchange: Exchange, principal: Principal) -> Result<Movement, ApiError> {
        exchange.payer = principal.user;
        exchange.payee = self.payee.map_or(principal.user, UserId::from_uuid);
        Ok(
            Movement::exchange(exchange, principal.user, Authority::Owner)
                .map_err(|error| ApiError::field("to_currency", error.to_string()))?
                .with_details(self.description, self.reference),
        )
    }
}

/// Submits an exchange and answers with it, or why not.
async fn submit(
    state: &AppState,
    movement: Movement,
    quote: Option<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let outcome = state
        .ledger
        .submit(movement.clone())
        .await
        .map_err(|error| submit_error(error, state))?;
    match outcome {
        Outcome::Completed(recorded) => Ok(created(TransactionBody::committed(
            &movement, None, recorded,
        ))),
        Outcome::Refused(refusal, _) => Err(ApiError::refused(&refusal, Some(movement.id()))),
        Outcome::Duplicate {
            transaction_id,
            same_request: true,
        } => replay(state, transaction_id).await,
        Outcome::Duplicate {
            same_request: false,
            ..
        } => Err(ApiError::IdempotencyKeyReused),
        Outcome::QuoteUnusable => {
            let expired = quote_expired();
            // A retry of an exchange that used its quote is answered from its key.
            replay_or(state, &movement, expired).await
        }
        Outcome::InactiveParty { user } => Err(inactive_party(&movement, user)),
        Outcome::Forbidden => Err(ApiError::Forbidden(ONLY_ADMIN)),
        Outcome::HoldNotPending | Outcome::ReversalRefused(_) => Err(ApiError::Internal(
            anyhow::anyhow!("an exchange was answered {outcome:?} (quote {quote:?})"),
        )),
    }
}

fn quote_expired() -> ApiError {
    ApiError::Conflict {
        code: "quote_expired",
        detail: "the quote has expired or was used; ask for a new one",
    }
}
