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

use std::collections::{HashMap, HashSet};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::input::{parse, BulkJsonObject, Fields, JsonObject};
use super::posting::{idempotency_key, TransactionBody};
use super::AppState;
use crate::auth::Principal;
use crate::domain::{
    Authority, Description, IdempotencyClaim, IdempotencyKey, Movement, Reference, TransactionKind,
    TransactionStatus, UserId, SYSTEM_USER_ID,
};
use crate::error::{ApiError, FieldError, Problem};
use crate::ledger::{AtomicResult, Outcome, SubmitError};
use crate::store;

/// One item's result.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    /// Position of the item in the request.
    pub index: usize,
    /// `completed`, `failed` (recorded as a failed transaction in `independent` mode; not
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

/// A validated item, before it becomes a movement.
struct ItemSpec {
    kind: TransactionKind,
    from: UserId,
    to: UserId,
    amount: crate::domain::Amount,
    currency: crate::domain::Currency,
    description: Option<Description>,
    reference: Option<Reference>,
    /// `Admin` when the item moves another user's money (re-checked in the commit).
    authority: Authority,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
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
        match parse_item(index, item, principal) {
            Ok(spec) => specs.push(spec),
            Err(mut item_errors) => errors.append(&mut item_errors),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // The token's role decides here; the commit checks the initiator's role again.
    let forbidden =
        !principal.is_admin() && specs.iter().any(|spec| spec.authority == Authority::Admin);

    let mut movements: Vec<Movement> = specs
        .into_iter()
        .map(|spec| {
            let movement = match spec.kind {
                TransactionKind::Credit => Movement::credit(
                    spec.to,
                    spec.amount,
                    spec.currency,
                    principal.user,
                    spec.authority,
                ),
                TransactionKind::Debit => Movement::debit(
                    spec.from,
                    spec.amount,
                    spec.currency,
                    principal.user,
                    spec.authority,
                ),
                _ => Movement::transfer(
                    spec.from,
                    spec.to,
                    spec.amount,
                    spec.currency,
                    principal.user,
                    spec.authority,
                ),
            };
            movement
                .expect("parse_item refuses system parties and self-transfers")
                .with_details(spec.description, spec.reference)
        })
        .collect();
    if let Some(key) = &key {
        // Every item's stored request hash covers the whole bulk (mode and every item), so the
        // same key with any other body (an item changed, added or removed, the other mode) is
        // `idempotency_key_reused`, never a partial replay or a partial application.
        let bulk_hash = {
            let mut hasher = Sha256::new();
            let mode_name: &[u8] = match mode {
                Mode::Atomic => b"atomic",
                Mode::Independent => b"independent",
            };
            hasher.update(mode_name);
            hasher.update((movements.len() as u64).to_be_bytes());
            for movement in &movements {
                hasher.update(movement.request_hash());
            }
            hasher.finalize()
        };
        movements = movements
            .into_iter()
            .enumerate()
            .map(|(index, movement)| {
                let mut hasher = Sha256::new();
                hasher.update(bulk_hash);
                hasher.update((index as u64).to_be_bytes());
                movement.with_claim(IdempotencyClaim {
                    key: IdempotencyKey::parse(&format!("{}#{index}", key.as_str()))
                        .expect("250 + 5 characters fit"),
                    request_hash: hasher.finalize().into(),
                })
            })
            .collect();
    }

    // The key decides first (invariant 4): a bulk applied before is answered from its stored
    // results whatever changed since (a party deleted, the caller's role).
    let stored = if key.is_some() {
        replay_if_applied(&state, principal, &movements).await?
    } else {
        Stored::None
    };
    let stored_some = match stored {
        Stored::All(replay) => return Ok(replay),
        Stored::Some => true,
        Stored::None => false,
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
        check_parties(&state, principal, &movements).await?;
    }
    // Admin actions on other users' money are audited: one record per bulk, listing them.
    let on_behalf: Vec<Value> = movements
        .iter()
        .enumerate()
        .filter_map(|(index, movement)| {
            let owner = if movement.kind() == TransactionKind::Credit { movement.to() } else { movement.from() };
            (owner != principal.user).then(|| {
                serde_json::json!({
                    "index": index, "transaction_id": movement.id(), "type": movement.kind().as_str(),
                    "user_id": owner.as_uuid(), "amount": movement.amount().minor(), "currency": movement.currency().code(),
                })
            })
        })
        .collect();
    let result = match mode {
        Mode::Independent => independent(&state, movements).await,
        Mode::Atomic => atomic(&state, principal, movements).await,
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

fn parse_item(
    index: usize,
    item: Value,
    principal: Principal,
) -> Result<ItemSpec, Vec<FieldError>> {
    let prefix = |errors: Vec<FieldError>| {
        errors
            .into_iter()
            .map(|error| {
                FieldError::new(
                    format!("transactions[{index}].{}", error.field),
                    error.message,
                )
            })
            .collect()
    };
    let Value::Object(object) = item else {
        return Err(vec![FieldError::new(
            format!("transactions[{index}]"),
            "must be an object",
        )]);
    };
    let mut fields = Fields::new(JsonObject(object));
    let kind = fields.required(
        "type",
        parse::text(|kind: &str| match TransactionKind::parse(kind) {
            Some(
                kind @ (TransactionKind::Credit
                | TransactionKind::Debit
                | TransactionKind::Transfer),
            ) => Ok(kind),
            _ => Err(crate::domain::TextError::Invalid(
                "must be credit, debit or transfer",
            )),
        }),
    );
    let amount = fields.required("amount", parse::amount);
    let currency = fields.required("currency", parse::currency);
    let description = fields.optional("description", parse::text(Description::parse));
    let reference = fields.optional("reference", parse::text(Reference::parse));
    let user_id = fields
        .optional("user_id", parse::uuid)
        .map(UserId::from_uuid);
    let from_user_id = fields
        .optional("from_user_id", parse::uuid)
        .map(UserId::from_uuid);
    let to_user_id = fields
        .optional("to_user_id", parse::uuid)
        .map(UserId::from_uuid);
    // The system account is every credit's and debit's counterparty, never a party by name.
    for (name, value) in [
        ("user_id", user_id),
        ("from_user_id", from_user_id),
        ("to_user_id", to_user_id),
    ] {
        if value.is_some_and(UserId::is_system) {
            fields.error(name, "no such user");
        }
    }
    match kind {
        Some(TransactionKind::Transfer) => {
            if user_id.is_some() {
                fields.error("user_id", "is not a field of a transfer (use from_user_id)");
            }
            if to_user_id.is_none() {
                fields.error("to_user_id", "is required");
            }
            if to_user_id.is_some() && to_user_id == Some(from_user_id.unwrap_or(principal.user)) {
                fields.error("to_user_id", "must be another user than the sender");
            }
        }
        Some(_) => {
            for (name, value) in [("from_user_id", from_user_id), ("to_user_id", to_user_id)] {
                if value.is_some() {
                    fields.error(name, "is not a field of a credit or debit (use user_id)");
                }
            }
        }
        None => {}
    }
    fields.finish().map_err(|error| match error {
        ApiError::Validation(errors) => prefix(errors),
        _ => Vec::new(),
    })?;
    let kind = kind.expect("finish() refuses missing fields");
    let (from, to) = match kind {
        TransactionKind::Credit => (SYSTEM_USER_ID, user_id.unwrap_or(principal.user)),
        TransactionKind::Debit => (user_id.unwrap_or(principal.user), SYSTEM_USER_ID),
        _ => (
            from_user_id.unwrap_or(principal.user),
            to_user_id.expect("checked above"),
        ),
    };
    let owner = if kind == TransactionKind::Credit {
        to
    } else {
        from
    };
    let authority = if owner == principal.user {
        Authority::Owner
    } else {
        Authority::Admin
    };
    Ok(ItemSpec {
        kind,
        from,
        to,
        amount: amount.expect("finish() refuses missing fields"),
        currency: currency.expect("finish() refuses missing fields"),
        description,
        reference,
        authority,
    })
}

/// Every party must be an active user (the caller included: a token outlives its user).
async fn check_parties(
    state: &AppState,
    principal: Principal,
    specs: &[Movement],
) -> Result<(), ApiError> {
    let mut wanted: HashSet<Uuid> = HashSet::from([principal.user.as_uuid()]);
    for spec in specs {
        for party in [spec.from(), spec.to()] {
            if !party.is_system() {
                wanted.insert(party.as_uuid());
            }
        }
    }
    let wanted: Vec<Uuid> = wanted.into_iter().collect();
    let client = state.pool.get().await?;
    let active: HashSet<Uuid> = store::users::active_among(&client, &wanted)
        .await?
        .into_iter()
        .collect();
    if !active.contains(&principal.user.as_uuid()) {
        return Err(ApiError::Unauthorized(
            "the user of this access token no longer exists",
        ));
    }
    let mut errors = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let named = match spec.kind() {
            TransactionKind::Transfer => [("from_user_id", spec.from()), ("to_user_id", spec.to())],
            TransactionKind::Credit => [("user_id", spec.to()), ("user_id", spec.to())],
            _ => [("user_id", spec.from()), ("user_id", spec.from())],
        };
        let mut reported = false;
        for (field, party) in named {
            if !reported && !party.is_system() && !active.contains(&party.as_uuid()) {
                errors.push(FieldError::new(
                    format!("transactions[{index}].{field}"),
                    "no such user",
                ));
                reported = true;
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// What is stored of a bulk's derived keys.
enum Stored {
    /// Every key, with this bulk's hashes: the stored results, replayed.
    All(HttpResponse),
    /// Some keys (an independent bulk cut off before all its items committed).
    Some,
    None,
}

/// When every item's derived key is stored with the same request hash, the bulk was applied
/// before: answer with the stored results. A partial match with another body (another request
/// used some of the keys, or the body changed) is `idempotency_key_reused`.
async fn replay_if_applied(
    state: &AppState,
    principal: Principal,
    movements: &[Movement],
) -> Result<Stored, ApiError> {
    let keys: Vec<&str> = movements
        .iter()
        .filter_map(|m| m.idempotency().map(|c| c.key.as_str()))
        .collect();
    let stored = {
        let client = state.pool.get().await?;
        store::idempotency::find_many(&client, principal.user, &keys).await?
    };
    if stored.is_empty() {
        return Ok(Stored::None);
    }
    let stored: HashMap<String, store::idempotency::StoredKey> = stored.into_iter().collect();
    let mut transaction_ids = Vec::with_capacity(movements.len());
    for movement in movements {
        let claim = movement
            .idempotency()
            .expect("every movement has a derived key");
        match stored.get(claim.key.as_str()) {
            Some(key) if key.request_hash[..] == claim.request_hash[..] => {
                transaction_ids.push(Some(key.transaction_id))
            }
            Some(_) => return Err(ApiError::IdempotencyKeyReused),
            // Independent items are stored one by one: the rest may still be pending.
            None => transaction_ids.push(None),
        }
    }
    if transaction_ids.iter().any(Option::is_none) {
        return Ok(Stored::Some);
    }
    let results = replay_results(state, transaction_ids.into_iter().flatten().collect()).await?;
    Ok(Stored::All(replayed(
        HttpResponse::Ok().json(BulkBody { results }),
    )))
}

fn replayed(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
        actix_web::http::header::HeaderValue::from_static("true"),
    );
    response
}

/// Results rebuilt from stored transactions, in the given order.
async fn replay_results(state: &AppState, ids: Vec<Uuid>) -> Result<Vec<BulkResult>, ApiError> {
    // Acknowledgements like the first replies (see `posting::replay`).
    if !state.cache.ready_to_acknowledge().await {
        return Err(ApiError::Unavailable);
    }
    let records = {
        let client = state.pool.get().await?;
        store::transactions::find_many(&client, &ids).await?
    };
    let mut by_id: HashMap<Uuid, store::transactions::TransactionRecord> = records
        .into_iter()
        .map(|record| (record.id, record))
        .collect();
    ids.iter()
        .enumerate()
        .map(|(index, id)| {
            let record = by_id.remove(id).ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("idempotency key points at missing {id}"))
            })?;
            Ok(result_from_record(index, record))
        })
        .collect()
}

fn result_from_record(index: usize, record: store::transactions::TransactionRecord) -> BulkResult {
    let failed = record.status == TransactionStatus::Failed;
    let error = failed.then(|| {
        ApiError::recorded_failure(
            record.id,
            record.failure_reason.as_deref(),
            record.failure_detail.as_ref(),
        )
        .problem()
    });
    BulkResult {
        index,
        status: if failed { "failed" } else { "completed" },
        transaction: Some(TransactionBody::from(record)),
        error,
    }
}

async fn independent(state: &AppState, movements: Vec<Movement>) -> Result<HttpResponse, ApiError> {
    let outcomes = state.ledger.submit_many(movements.clone()).await;
    if outcomes
        .iter()
        .all(|outcome| matches!(outcome, Err(SubmitError::Overloaded)))
    {
        return Err(super::posting::submit_error(SubmitError::Overloaded, state));
    }
    let duplicates: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Ok(Outcome::Duplicate {
                transaction_id,
                same_request: true,
            }) => Some(*transaction_id),
            _ => None,
        })
        .collect();
    let mut replays: HashMap<Uuid, BulkResult> = if duplicates.is_empty() {
        HashMap::new()
    } else {
        replay_results(state, duplicates.clone())
            .await?
            .into_iter()
            .zip(duplicates)
            .map(|(result, id)| (id, result))
            .collect()
    };
    let results = movements
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(index, (movement, outcome))| match outcome {
            Ok(Outcome::Completed(recorded)) => BulkResult {
                index,
                status: "completed",
                transaction: Some(TransactionBody::committed(movement, None, recorded)),
                error: None,
            },
            Ok(Outcome::Refused(refusal, recorded)) => BulkResult {
                index,
                status: "failed",
                transaction: Some(TransactionBody::committed(
                    movement,
                    Some(&refusal),
                    recorded,
                )),
                error: Some(ApiError::refused(&refusal, Some(movement.id())).problem()),
            },
            Ok(Outcome::Forbidden) => BulkResult {
                index,
                status: "error",
                transaction: None,
                error: Some(ApiError::Forbidden(super::posting::ONLY_ADMIN).problem()),
            },
            Ok(Outcome::Duplicate {
                transaction_id,
                same_request: true,
            }) => {
                let mut result = replays
                    .remove(&transaction_id)
                    .expect("every duplicate was replayed");
                result.index = index;
                result
            }
            Ok(Outcome::InactiveParty { user }) => BulkResult {
                index,
                status: "error",
                transaction: None,
                error: Some(super::posting::inactive_party(movement, user).problem()),
            },
            Ok(Outcome::Duplicate {
                same_request: false,
                ..
            }) => BulkResult {
                index,
                status: "error",
                transaction: None,
                error: Some(ApiError::IdempotencyKeyReused.problem()),
            },
            Err(error) => BulkResult {
                index,
                status: "error",
                transaction: None,
                error: Some(super::posting::submit_error(error, state).problem()),
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(BulkBody { results }))
}

async fn atomic(
    state: &AppState,
    principal: Principal,
    movements: Vec<Movement>,
) -> Result<HttpResponse, ApiError> {
    match state
        .ledger
        .submit_atomic(movements.clone())
        .await
        .map_err(|error| super::posting::submit_error(error, state))?
    {
        AtomicResult::Committed(recorded) => {
            let results = movements
                .iter()
                .enumerate()
                .map(|(index, movement)| BulkResult {
                    index,
                    status: "completed",
                    transaction: Some(TransactionBody::committed(movement, None, recorded)),
                    error: None,
                })
                .collect();
            Ok(HttpResponse::Ok().json(BulkBody { results }))
        }
        AtomicResult::Forbidden(_) => Err(ApiError::Forbidden(super::posting::ONLY_ADMIN)),
        AtomicResult::Refused(refused) => {
            let failing: HashMap<usize, crate::domain::Refusal> = refused.into_iter().collect();
            let results: Vec<BulkResult> = (0..movements.len())
                .map(|index| {
                    if let Some(refusal) = failing.get(&index) {
                        let mut problem = ApiError::refused(refusal, None).problem();
                        // Nothing was recorded: there is no failed transaction to point at.
                        problem.transaction_id = None;
                        BulkResult {
                            index,
                            status: "failed",
                            transaction: None,
                            error: Some(problem),
                        }
                    } else {
                        BulkResult {
                            index,
                            status: "not_applied",
                            transaction: None,
                            error: None,
                        }
                    }
                })
                .collect();
            let results =
                serde_json::to_value(results).map_err(|error| ApiError::Internal(error.into()))?;
            Err(ApiError::BulkFailed { results })
        }
        AtomicResult::InactiveParties(parties) => Err(ApiError::Validation(
            parties
                .into_iter()
                .map(|(index, user)| {
                    let field = super::posting::inactive_party(&movements[index], user);
                    let name = match &field {
                        ApiError::Validation(errors) => errors[0].field.clone(),
                        _ => "initiator".to_owned(),
                    };
                    FieldError::new(format!("transactions[{index}].{name}"), "no such user")
                })
                .collect(),
        )),
        AtomicResult::Duplicate => match replay_if_applied(state, principal, &movements).await? {
            Stored::All(response) => Ok(response),
            Stored::Some | Stored::None => Err(ApiError::IdempotencyKeyReused),
        },
    }
}
