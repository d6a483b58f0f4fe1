//! `POST /api/v1/transactions/{id}/post` and `POST /api/v1/transactions/{id}/void`: the second
//! phase of a hold (DESIGN.md section 7, TigerBeetle's semantics).
//!
//! Who may: the payee of a transfer hold, the payer of a debit hold (who has no other
//! counterparty), or an admin. The handler reads the hold to build the movement; the group
//! commit decides (`store::journal::sql::resolve_holds`): the hold must still be pending, before
//! its stored deadline, and exactly as read. So a post and a void of one hold, or a post racing
//! the expiry sweeper at the deadline, resolve it once, on any number of instances.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::posting::{created, idempotency_key, replay, submit_error, TransactionBody};
use super::AppState;
use crate::auth::Principal;
use crate::domain::{Authority, HoldEnd, Movement, TransactionKind, TransactionStatus, UserId};
use crate::error::ApiError;
use crate::ledger::Outcome;
use crate::store::{self, transactions::TransactionRecord};

/// `{amount?}` (default: all of it; 0 voids) → 201 the posting transaction (`pending_id` is the
/// hold); the hold becomes `posted` with `posted_amount` and `posting_id`, and what was held
/// beyond `amount` is released.
///
/// Errors: 404 no such transaction (or not yours); 403 not yours to post; 409 `not_a_hold`;
/// 409 `hold_not_pending` (posted, voided or expired: `hold_status` says which); 422
/// `exceeds_hold`; 422 `limit_exceeded` when the payee would pass `ledger.balance_max_minor`
/// (recorded as a failed posting; the hold stays pending).
#[utoipa::path(
    post, path = "/api/v1/transactions/{id}/post", tag = "transactions", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The hold"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)"),
    ),
    request_body(content = super::schemas::PostRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Posted: the posting transaction", body = TransactionBody),
        (status = 200, description = "`amount` 0: voided, the hold", body = TransactionBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not yours to post", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such transaction, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_a_hold` or `hold_not_pending`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `exceeds_hold`, `limit_exceeded` or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency_key(&req)?;
    let mut fields = Fields::new(body);
    // `Some(None)`: 0, which voids (TigerBeetle: posting 0 is a void in effect).
    let amount = fields.optional("amount", |value: &Value| match value.as_i64() {
        Some(0) => Ok(None),
        _ => parse::amount(value).map(Some),
    });
    let hold = parse::hyphenated_uuid(&id);
    fields.finish()?;
    let (hold, authority) = resolvable(&state, principal, hold).await?;
    let (held, currency) = hold
        .money()
        .map_err(|error| ApiError::Internal(error.context("stored hold")))?;
    let movement = match amount {
        Some(None) => release(&hold, principal.user, authority)?,
        Some(Some(amount)) if amount.minor() > held.minor() => {
            return Err(ApiError::ExceedsHold {
                transaction_id: hold.id,
                held: held.minor(),
            })
        }
        amount => Movement::post(
            hold.id,
            hold.kind,
            hold.from,
            hold.to,
            held,
            amount.flatten().unwrap_or(held),
            currency,
            principal.user,
            authority,
        )
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("stored hold: {error}")))?,
    }
    .with_key(idempotency);
    let voids = movement.resolves() == Some(movement.id());
    let outcome = submit(&state, &movement).await?;
    match outcome {
        Outcome::Completed(_) | Outcome::Duplicate { .. } if voids => {
            current(&state, hold.id).await
        }
        Outcome::Completed(recorded) => Ok(created(TransactionBody::committed(
            &movement, None, recorded,
        ))),
        outcome => answer(&state, &movement, hold.id, outcome).await,
    }
}

/// → 200 the hold, `status: "voided"`: everything it held is released.
///
/// Errors: as `post` (no `exceeds_hold`).
#[utoipa::path(
    post, path = "/api/v1/transactions/{id}/void", tag = "transactions", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The hold"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)"),
    ),
    responses(
        (status = 200, description = "Voided: the hold", body = TransactionBody),
        (status = 403, description = "Not yours to void", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such transaction, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_a_hold` or `hold_not_pending`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn void(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency_key(&req)?;
    let id = parse::hyphenated_uuid(&id);
    let (hold, authority) = resolvable(&state, principal, id).await?;
    let movement = release(&hold, principal.user, authority)?.with_key(idempotency);
    match submit(&state, &movement).await? {
        Outcome::Completed(_) | Outcome::Duplicate { .. } => current(&state, hold.id).await,
        outcome => answer(&state, &movement, hold.id, outcome).await,
    }
}

/// The void of `hold` by `initiated_by`.
fn release(
    hold: &TransactionRecord,
    initiated_by: UserId,
    authority: Authority,
) -> Result<Movement, ApiError> {
    hold.release(HoldEnd::Voided, initiated_by, authority)
        .map_err(|error| ApiError::Internal(error.context("stored hold")))
}

/// The hold `id` and the authority `principal` resolves it with.
///
/// Errors: 404 when it does not exist or `principal` is neither a party nor an admin; 403 for
/// the payer of a transfer hold; 409 `not_a_hold`.
async fn resolvable(
    state: &AppState,
    principal: Principal,
    id: Option<Uuid>,
) -> Result<(TransactionRecord, Authority), ApiError> {
    let hold = super::transactions::find_visible(state, principal, id).await?;
    if hold.expires_at.is_none() {
        return Err(ApiError::Conflict {
            code: "not_a_hold",
            detail: "only a hold (a transfer or debit made with `hold`) can be posted or voided",
        });
    }
    // The party that receives the money decides; a debit hold's payee is the system, so its
    // payer does.
    let entitled = if hold.kind == TransactionKind::Debit {
        hold.from
    } else {
        hold.to
    };
    let authority = if principal.user == entitled {
        Authority::Owner
    } else if principal.is_admin() {
        Authority::Admin
    } else {
        return Err(ApiError::Forbidden(
            "only the payee of a hold (the payer of a debit hold) or an admin may resolve it",
        ));
    };
    Ok((hold, authority))
}

async fn submit(state: &AppState, movement: &Movement) -> Result<Outcome, ApiError> {
    state
        .ledger
        .submit(movement.clone())
        .await
        .map_err(|error| submit_error(error, state))
}

/// The reply to what is not a fresh resolution.
async fn answer(
    state: &AppState,
    movement: &Movement,
    hold: Uuid,
    outcome: Outcome,
) -> Result<HttpResponse, ApiError> {
    match outcome {
        Outcome::Duplicate {
            transaction_id,
            same_request: true,
        } => replay(state, transaction_id).await,
        Outcome::Duplicate {
            same_request: false,
            ..
        } => Err(ApiError::IdempotencyKeyReused),
        Outcome::HoldNotPending => {
            let client = state.pool.get().await?;
            let record = store::transactions::find(&client, hold).await?;
            let hold_status = match record {
                // Past its deadline, not yet released by the sweeper: expired in effect.
                Some(record) if record.status == TransactionStatus::Pending => "expired",
                Some(record) => record.status.as_str(),
                None => "expired",
            };
            Err(ApiError::HoldNotPending {
                transaction_id: hold,
                hold_status,
            })
        }
        Outcome::Refused(refusal, _) => Err(ApiError::refused(&refusal, Some(movement.id()))),
        Outcome::Forbidden => Err(ApiError::Forbidden(
            "only the payee of a hold (the payer of a debit hold) or an admin may resolve it",
        )),
        Outcome::InactiveParty { user } => Err(super::posting::inactive_party(movement, user)),
        Outcome::Completed(_) | Outcome::ReversalRefused(_) | Outcome::QuoteUnusable => {
            Err(ApiError::Internal(anyhow::anyhow!(
                "a hold resolution reached the fallback reply with {outcome:?}"
            )))
        }
    }
}

/// 200 with the hold as it is now.
async fn current(state: &AppState, hold: Uuid) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await?;
    let record = store::transactions::find(&client, hold)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("hold {hold} vanished")))?;
    Ok(HttpResponse::Ok().json(TransactionBody::from(record)))
}
