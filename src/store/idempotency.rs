//! The `idempotency_keys` table (invariant 4). Keys are claimed by the journal writer in the
//! same commit as their transaction (`store::journal`); this module reads and expires them.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::domain::UserId;

/// A key's stored response: the first request's hash and the transaction it produced.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub request_hash: Vec<u8>,
    pub transaction_id: Uuid,
}

/// Forgets keys older than `retention_hours`; returns how many. After this a repeated key is a
/// new request.
pub async fn expire(
    client: &impl GenericClient,
    retention_hours: u64,
) -> Result<u64, tokio_postgres::Error> {
    let hours = i64::try_from(retention_hours).unwrap_or(i64::MAX);
    client
        .execute("DELETE FROM idempotency_keys WHERE created_at < now() - $1::bigint * interval '1 hour'", &[&hours])
        .await
}

/// The stored keys among `keys` of `user`, as `(key, stored)`.
pub async fn find_many(
    client: &impl GenericClient,
    user: UserId,
    keys: &[&str],
) -> Result<Vec<(String, StoredKey)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT key, request_hash, transaction_id FROM idempotency_keys WHERE user_id = $1 AND key = ANY($2)",
            &[&user.as_uuid(), &keys],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0),
                StoredKey {
                    request_hash: row.get(1),
                    transaction_id: row.get(2),
                },
            )
        })
        .collect())
}
