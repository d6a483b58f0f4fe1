//! Submitting a bulk to the ledger and building its reply: each item's outcome in independent
//! mode, all or nothing in atomic mode.

use std::collections::HashMap;

use actix_web::HttpResponse;
use uuid::Uuid;

use super::replay::{replay_if_applied, replay_results, Stored};
use super::{BulkBody, BulkResult};
use crate::auth::Principal;
use crate::domain::Movement;
use crate::error::{ApiError, FieldError};
use crate::ledger::{AtomicResult, Outcome, Recorded, SubmitError};
use crate::routes::posting::TransactionBody;
use crate::routes::AppState;

pub(super) async fn independent(
    state: &AppState,
    movements: Vec<Movement>,
) -> Result<HttpResponse, ApiError> {
    let outcomes = state.ledger.submit_many(movements.clone()).await;
    if outcomes
        .iter()
        .all(|outcome| matches!(outcome, Err(SubmitError::Overloaded)))
    {
        return Err(crate::routes::posting::submit_error(
            SubmitError::Overloaded,
            state,
        ));
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
            Ok(Outcome::Completed(recorded)) => applied(index, movement, recorded),
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
                error: Some(ApiError::Forbidden(crate::routes::posting::ONLY_ADMIN).problem()),
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
            Ok(Outcome::HoldNotPending | Outcome::ReversalRefused(_) | Outcome::QuoteUnusable) => {
                BulkResult {
                    index,
                    status: "error",
                    transaction: None,
                    error: Some(
                        ApiError::Internal(anyhow::anyhow!(
                            "a bulk item resolved a hold or reversed a transaction"
                        ))
                        .problem(),
                    ),
                }
            }
            Ok(Outcome::InactiveParty { user }) => BulkResult {
                index,
                status: "error",
                transaction: None,
                error: Some(crate::routes::posting::inactive_party(movement, user).problem()),
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
                error: Some(crate::routes::posting::submit_error(error, state).problem()),
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(BulkBody { results }))
}

pub(super) async fn atomic(
    state: &AppState,
    principal: Principal,
    movements: Vec<Movement>,
) -> Result<HttpResponse, ApiError> {
    match state
        .ledger
        .submit_atomic(movements.clone())
        .await
        .map_err(|error| crate::routes::posting::submit_error(error, state))?
    {
        AtomicResult::Committed(recorded) => {
            let results = movements
                .iter()
                .enumerate()
                .map(|(index, movement)| applied(index, movement, recorded))
                .collect();
            Ok(HttpResponse::Ok().json(BulkBody { results }))
        }
        AtomicResult::Forbidden(_) => Err(ApiError::Forbidden(crate::routes::posting::ONLY_ADMIN)),
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
                    let field = crate::routes::posting::inactive_party(&movements[index], user);
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

/// The result of item `index`, applied as `movement`: `pending` for a hold, else `completed`.
fn applied(index: usize, movement: &Movement, recorded: Recorded) -> BulkResult {
    let transaction = TransactionBody::committed(movement, None, recorded);
    BulkResult {
        index,
        status: transaction.status,
        transaction: Some(transaction),
        error: None,
    }
}
