//! A bulk's stored results: when every derived key of the request is stored with this bulk's
//! hash, the first results are answered again.

use std::collections::HashMap;

use actix_web::HttpResponse;
use uuid::Uuid;

use super::{BulkBody, BulkResult};
use crate::auth::Principal;
use crate::domain::{Movement, TransactionStatus};
use crate::error::ApiError;
use crate::routes::posting::{replayed, TransactionBody};
use crate::routes::AppState;
use crate::store;

/// What is stored of a bulk's derived keys.
pub(super) enum Stored {
    /// Every key, with this bulk's hashes: the stored results, replayed.
    All(HttpResponse),
    /// Some keys (an independent bulk cut off before all its items committed).
    Some,
    None,
}

/// When every item's derived key is stored with the same request hash, the bulk was applied
/// before: answer with the stored results. A partial match with another body (another request
/// used some of the keys, or the body changed) is `idempotency_key_reused`.
pub(super) async fn replay_if_applied(
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

/// Results rebuilt from stored transactions, in the given order.
pub(super) async fn replay_results(
    state: &AppState,
    ids: Vec<Uuid>,
) -> Result<Vec<BulkResult>, ApiError> {
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
        // What the item's first reply said: a hold was placed (`pending`), whatever became of
        // it since (its `transaction.status`).
        status: if failed {
            "failed"
        } else if record.expires_at.is_some() {
            "pending"
        } else {
            "completed"
        },
        transaction: Some(TransactionBody::from(record)),
        error,
    }
}
