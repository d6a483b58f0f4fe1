//! Reads of the `transactions` table. Writes happen only in `store::journal`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::domain::{TransactionKind, TransactionStatus, UserId};

/// A transaction as stored. `from` is `system` for a credit, `to` is `system` for a debit.
#[derive(Debug, Clone)]
pub struct TransactionRecord {
    pub id: Uuid,
    pub kind: TransactionKind,
    pub status: TransactionStatus,
    pub from: UserId,
    pub to: UserId,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub failure_reason: Option<String>,
    pub initiated_by: UserId,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, type, status, from_user_id, to_user_id, amount, currency, description, reference, \
                       failure_reason, initiated_by, created_at, completed_at";

fn record(row: &tokio_postgres::Row) -> TransactionRecord {
    TransactionRecord {
        id: row.get("id"),
        kind: TransactionKind::parse(row.get("type")).expect("transactions.type is constrained"),
        status: TransactionStatus::parse(row.get("status"))
            .expect("transactions.status is constrained"),
        from: UserId::from_uuid(row.get("from_user_id")),
        to: UserId::from_uuid(row.get("to_user_id")),
        amount: row.get("amount"),
        currency: row.get("currency"),
        description: row.get("description"),
        reference: row.get("reference"),
        failure_reason: row.get("failure_reason"),
        initiated_by: UserId::from_uuid(row.get("initiated_by")),
        created_at: row.get("created_at"),
        completed_at: row.get("completed_at"),
    }
}

pub async fn find(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<TransactionRecord>, tokio_postgres::Error> {
    let statement = format!("SELECT {COLUMNS} FROM transactions WHERE id = $1");
    Ok(client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| record(&row)))
}

/// A position in a newest-first listing: the last item seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// Up to `limit` transactions that `user` is a party to, newest first (`created_at`, then `id`,
/// descending), strictly after `after`. A user sees their failed outgoing transactions but not
/// failed transfers addressed to them (those never touched their account).
///
/// Each branch of the `UNION ALL` is one ordered index range scan (`transactions_from_idx`,
/// `transactions_to_idx`); a transaction appears in at most one branch because `from <> to`.
pub async fn history(
    client: &impl GenericClient,
    user: UserId,
    after: Option<HistoryCursor>,
    limit: i64,
) -> Result<Vec<TransactionRecord>, tokio_postgres::Error> {
    let statement = format!(
        "(SELECT {COLUMNS} FROM transactions
          WHERE from_user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC LIMIT $4)
         UNION ALL
         (SELECT {COLUMNS} FROM transactions
          WHERE to_user_id = $1 AND status <> 'failed' AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC LIMIT $4)
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let (created_at, id) = match after {
        Some(cursor) => (Some(cursor.created_at), Some(cursor.id)),
        None => (None, None),
    };
    let rows = client
        .query(&statement, &[&user.as_uuid(), &created_at, &id, &limit])
        .await?;
    Ok(rows.iter().map(record).collect())
}
