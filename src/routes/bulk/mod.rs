//! `POST /api/v1/transactions/bulk`: up to `bulk.max_items` credits, debits and transfers in one
//! request, for batch jobs.
//!
//! - `independent`: every item goes through the pipeline on its own and shares group commits
//!   with everything else, so a large bulk is committed in a few commits; each item succeeds or
//!   fails alone. 200 with one result per item, in request order.
//! - `atomic`: all or nothing, in one commit of its own (`store::journal::commit_atomic`). When
//!   an item does not fit, nothing is applied and nothing is recorded: 422 `bulk_failed` whose
//!   `results` name the failing items (`failed`, with their problem) and the rest
//!   (`not_applied`).
//!
//! Items are validated before anything is submitted; invalid items are reported by index
//! (`transactions[3].amount`) and nothing is applied. One `Idempotency-Key` covers the whole
//! request: item `i` is submitted under the key `<key>#<i>`, so a repeated bulk applies nothing
//! again and answers with the first results; each item's request hash covers the whole body, so
//! the same key with another body is `idempotency_key_reused`.

mod apply;
mod items;
mod replay;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::input::{parse, BulkJsonObject, Fields, JsonObject};
use super::posting::{idempotency_key, TransactionBody};
use super::AppState;
use crate::auth::Principal;
use crate::domain::{Authority, IdempotencyKey};
use crate::error::{ApiError, Problem};

/// One item's result.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    /// Position of the item in the request.
    pub index: usize,
    /// `completed`, `pending` (a hold was placed; `transaction.status` says what became of it
    /// since, on a replay), `failed` (recorded as a failed transaction in `independent` mode; not
    /// recorded in `atomic` mode), `not_applied` (atomic mode: another item failed) or `error`
    /// (the item could not be processed: retry with the same Idempotency-Key).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// The reply of a bulk request.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkBody {
    pub results: Vec<BulkResult>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Atomic,
    Independent,
}

/// `{mode: "atomic" | "independent", transactions: [{type, from_user_id?, to_user_id?,
/// user_id?, amount, currency, description?, reference?}]}`. A user may only move money out of
/// their own accounts (and credit or debit their own); an admin may name any account.
#[utoipa::path(
    post, path = "/api/v1/transactions/bulk", tag = "transactions", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Covers the whole bulk (at most 250 characters)")),
    request_body(content = super::schemas::BulkRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per item, in request order", body = BulkBody),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An item moves another user's money", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (items by index), `bulk_failed` (atomic: `results` say which item failed) or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn bulk(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: BulkJsonObject,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    if key
        .as_ref()
        .is_some_and(|key| key.as_str().len() > IdempotencyKey::MAX_LEN - 5)
    {
        return Err(ApiError::field(
            super::posting::IDEMPOTENCY_KEY,
            "must be at most 250 characters on a bulk",
        ));
    }
    let mut fields = Fields::new(JsonObject(body.0));
    let mode = fields.required(
        "mode",
        parse::text(|mode: &str| match mode {
            "atomic" => Ok(Mode::Atomic),
            "independent" => Ok(Mode::Independent),
            _ => Err(crate::domain::TextError::Invalid(
                "must be atomic or independent",
            )),
        }),
    );
    let max_items = state.settings.bulk.max_items;
    let items = fields.required("transactions", |value| match value {
        Value::Array(items) if items.is_empty() => Err("must not be empty".to_owned()),
        Value::Array(items) if items.len() > max_items => {
            Err(format!("must have at most {max_items} items"))
        }
        Value::Array(items) => Ok(items.clone()),
        _ => Err("must be an array of transactions".to_owned()),
    });
    fields.finish()?;
    let (mode, items) = (
        mode.expect("finish() refuses missing fields"),
        items.expect("finish() refuses missing fields"),
    );

    let mut errors = Vec::new();
    let mut specs = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match items::parse_item(index, item, principal, state.settings.holds.timeout_s_max) {
            Ok(spec) => specs.push(spec),
            Err(mut item_errors) => errors.append(&mut item_errors),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // The token's role decides here; the commit checks the initiator's role again.
    let forbidden = !principal.is_admin()
        && specs
            .iter()
            .any(|spec| spec.authority() == Authority::Admin);

    let movements = items::movements(specs, principal, mode, key.as_ref());

    // The key decides first (invariant 4): a bulk applied before is answered from its stored
    // results whatever changed since (a party deleted, the caller's role).
    let stored = if key.is_some() {
        replay::replay_if_applied(&state, principal, &movements).await?
    } else {
        replay::Stored::None
    };
    let stored_some = match stored {
        replay::Stored::All(replay) => return Ok(replay),
        replay::Stored::Some => true,
        replay::Stored::None => false,
    };
    if forbidden {
        return Err(ApiError::Forbidden(
            "only an admin may move money on other users' accounts",
        ));
    }
    // Unknown or deleted parties fail the request as a whole before anything is submitted,
    // unless some items were applied before under this key: then each item is settled in the
    // commit (the applied ones replayed, the others checked there).
    if !stored_some {
        items::check_parties(&state, principal, &movements).await?;
    }
    // Admin actions on other users' money are audited: one record per bulk, listing them.
    let on_behalf: Vec<Value> = movements
        .iter()
        .enumerate()
        .filter_map(|(index, movement)| {
            let owner = movement.owner();
            (owner != principal.user).then(|| {
                serde_json::json!({
                    "index": index, "transaction_id": movement.id(), "type": movement.kind().as_str(),
                    "user_id": owner.as_uuid(), "amount": movement.amount().minor(), "currency": movement.currency().code(),
                })
            })
        })
        .collect();
    let result = match mode {
        Mode::Independent => apply::independent(&state, movements).await,
        Mode::Atomic => apply::atomic(&state, principal, movements).await,
    };
    if !on_behalf.is_empty() {
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(error) => actix_web::ResponseError::status_code(error).as_u16(),
        };
        let details = serde_json::json!({
            "mode": if mode == Mode::Atomic { "atomic" } else { "independent" },
            "status": status,
            "items": on_behalf,
        });
        let client = state.pool.get().await?;
        super::audit(
            &client,
            &req,
            Some(principal.user),
            ("bulk", None),
            "transaction.admin_bulk",
            details,
        )
        .await;
    }
    result
}
