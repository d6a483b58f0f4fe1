//! `POST /api/v1/transactions/{id}/reverse`: a reversal (refund) of a completed transaction, in
//! whole or in parts (DESIGN.md section 7).
//!
//! Who may: an admin, on any completed credit, debit, transfer or exchange; the payee of a
//! transfer (a refund to its payer). An exchange is reversed whole, every leg at its recorded
//! rate (DESIGN.md section 9): the payer gets back all it sold, the spread included. Not on a reversal, a hold or a failed transaction. The reversal is a
//! new transaction of type `reversal` that moves money the other way through the one posting
//! path: it needs funds on the side it takes from, and is recorded failed when it has none.
//! The sum of a transaction's reversals never exceeds its amount: the commit claims each
//! reversal's part with a conditional update (`store::journal::sql::claim_reversal`), so two
//! concurrent reversals on any instances cannot both pass (invariant 10).

use actix_web::{web, HttpRequest, HttpResponse};

use super::input::{parse, Fields, JsonObject};
use super::posting::{
    created, idempotency_key, inactive_party, replay, replay_or, submit_error, TransactionBody,
};
use super::AppState;
use crate::auth::Principal;
use crate::domain::{
    Amount, Authority, Currency, Description, Exchange, Movement, Rate, TransactionKind,
    TransactionStatus,
};
use crate::error::ApiError;
use crate::ledger::Outcome;
use crate::store::journal::ReversalRefusal;
use crate::store::transactions::TransactionRecord;

const NOT_REVERSIBLE: &str =
    "only a completed credit, debit, transfer or exchange with something left to reverse can be reversed";
const ONLY_ADMIN_EXCHANGE: &str = "only an admin may reverse an exchange";
const ONLY_PAYEE_OR_ADMIN: &str =
    "only an admin, or the payee of a transfer (a refund), may reverse a transaction";

/// `{amount?, reason}` → 201 the reversal (`type: "reversal"`, `reversal_of`); the original's
/// `reversed_amount` grows by `amount` (default: all that is left).
///
/// Errors: 404 no such transaction (or not yours); 403 not yours to reverse (e.g. the payer of
/// a transfer); 409 `not_reversible`; 422 `reversal_exceeds_amount` (with `remaining`),
/// `insufficient_funds` (recorded as a failed reversal), `validation_failed`.
#[utoipa::path(
    post, path = "/api/v1/transactions/{id}/reverse", tag = "transactions", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The transaction to reverse"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)"),
    ),
    request_body(content = super::schemas::ReverseRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Reversed: the reversal", body = TransactionBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not yours to reverse", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such transaction, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_reversible`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `reversal_exceeds_amount`, `insufficient_funds`, `limit_exceeded` or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reverse(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency_key(&req)?;
    let mut fields = Fields::new(body);
    let amount = fields.optional("amount", parse::amount);
    let reason = fields.required("reason", |value| {
        let reason = parse::text(Description::parse)(value)?;
        if reason.as_str().trim().is_empty() {
            return Err("must say why (1 to 500 characters)".to_owned());
        }
        Ok(reason)
    });
    let id = parse::hyphenated_uuid(&id);
    fields.finish()?;
    let reason = reason.expect("finish() refuses missing fields");
    let original = super::transactions::find_visible(&state, principal, id).await?;

    let refund = original.kind == TransactionKind::Transfer && original.to == principal.user;
    let authority = if refund {
        Authority::Owner
    } else if principal.is_admin() {
        Authority::Admin
    } else {
        return Err(ApiError::Forbidden(ONLY_PAYEE_OR_ADMIN));
    };
    let reversible = original.status == TransactionStatus::Completed
        && matches!(
            original.kind,
            TransactionKind::Credit
                | TransactionKind::Debit
                | TransactionKind::Transfer
                | TransactionKind::Exchange
        );
    let remaining = original.amount - original.reversed_amount;
    if original.kind == TransactionKind::Exchange {
        let movement =
            exchange_reversal(&original, amount, reason, principal)?.with_key(idempotency);
        if !reversible || remaining < original.amount {
            return replay_or(&state, &movement, not_reversible()).await;
        }
        return submit(&state, &original, movement).await;
    }
    let amount = match amount {
        Some(amount) => amount,
        None => Amount::new(remaining.max(1)).map_err(|error| {
            ApiError::Internal(anyhow::anyhow!("stored amount left to reverse: {error}"))
        })?,
    };
    let currency = Currency::parse(&original.currency)
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("stored currency: {error}")))?;
    let movement = Movement::reverse(
        original.id,
        original.from,
        original.to,
        amount,
        currency,
        reason,
        principal.user,
        authority,
    )
    .map_err(|error| ApiError::Internal(anyhow::anyhow!("stored transaction: {error}")))?
    .with_key(idempotency);
    // The key decides first (invariant 4): a retry of a reversal that consumed the rest is
    // answered from its key, not with `not_reversible`.
    if !reversible || remaining <= 0 {
        return replay_or(&state, &movement, not_reversible()).await;
    }
    if amount.minor() > remaining {
        let exceeds = ApiError::ReversalExceedsAmount {
            transaction_id: original.id,
            remaining,
        };
        return replay_or(&state, &movement, exceeds).await;
    }
    submit(&state, &original, movement).await
}

/// The whole reversal of the exchange `original`, by an admin. `amount`, when given, must be
/// all of it (what the exchange sold).
///
/// Errors: 403 for anyone but an admin; 422 on `amount` for a part.
fn exchange_reversal(
    original: &TransactionRecord,
    amount: Option<Amount>,
    reason: Description,
    principal: Principal,
) -> Result<Movement, ApiError> {
    if !principal.is_admin() {
        return Err(ApiError::Forbidden(ONLY_ADMIN_EXCHANGE));
    }
    if amount.is_some_and(|amount| amount.minor() != original.amount) {
        return Err(ApiError::field(
            "amount",
            format!(
                "an exchange is reversed whole: leave it out, or give {}",
                original.amount
            ),
        ));
    }
    let stored = |what: &str| ApiError::Internal(anyhow::anyhow!("stored exchange: {what}"));
    let record = original
        .exchange
        .as_ref()
        .ok_or_else(|| stored("no exchange columns"))?;
    let exchange = Exchange {
        payer: original.from,
        payee: original.to,
        sold_currency: Currency::parse(&original.currency).map_err(|_| stored("currency"))?,
        sold: Amount::new(original.amount).map_err(|_| stored("amount"))?,
        bought_currency: Currency::parse(&record.to_currency).map_err(|_| stored("to_currency"))?,
        bought: Amount::new(record.to_amount).map_err(|_| stored("to_amount"))?,
        fee: record.fee,
        rate: Rate::new(record.rate).map_err(|_| stored("rate"))?,
        spread_bps: u32::try_from(record.spread_bps).map_err(|_| stored("spread_bps"))?,
        rate_source: record.rate_source.clone(),
        quote: record.quote_id,
    };
    Movement::reverse_exchange(
        original.id,
        exchange,
        reason,
        principal.user,
        Authority::Admin,
    )
    .map_err(|error| stored(&error.to_string()))
}

/// Submits a reversal of `original` and answers with the reversal, or why not.
async fn submit(
    state: &AppState,
    original: &TransactionRecord,
    movement: Movement,
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
        Outcome::ReversalRefused(ReversalRefusal::ExceedsAmount { remaining }) => {
            Err(ApiError::ReversalExceedsAmount {
                transaction_id: original.id,
                remaining,
            })
        }
        Outcome::ReversalRefused(ReversalRefusal::NotReversible) => Err(not_reversible()),
        Outcome::Duplicate {
            transaction_id,
            same_request: true,
        } => replay(state, transaction_id).await,
        Outcome::Duplicate {
            same_request: false,
            ..
        } => Err(ApiError::IdempotencyKeyReused),
        Outcome::Forbidden => Err(ApiError::Forbidden(ONLY_PAYEE_OR_ADMIN)),
        Outcome::InactiveParty { user } => Err(inactive_party(&movement, user)),
        Outcome::HoldNotPending | Outcome::QuoteUnusable => Err(ApiError::Internal(
            anyhow::anyhow!("a reversal was answered {outcome:?}"),
        )),
    }
}

fn not_reversible() -> ApiError {
    ApiError::Conflict {
        code: "not_reversible",
        detail: NOT_REVERSIBLE,
    }
}
