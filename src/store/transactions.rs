//! Reads of the `transactions` table. Writes happen only in `store::journal`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::domain::{
    Amount, Authority, Currency, HoldEnd, Movement, TransactionKind, TransactionStatus, UserId,
};

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
    /// What the refusal was shown with (e.g. the limit of `limit_exceeded`), when anything.
    pub failure_detail: Option<serde_json::Value>,
    pub initiated_by: UserId,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A hold's: its deadline.
    pub expires_at: Option<DateTime<Utc>>,
    /// A hold's: when it was posted, voided or expired.
    pub resolved_at: Option<DateTime<Utc>>,
    /// A posted hold's: the amount posted (minor units) and the posting transaction.
    pub posted_amount: Option<i64>,
    pub posting_id: Option<Uuid>,
    /// A posting's: the hold it posts.
    pub pending_id: Option<Uuid>,
    /// A reversal's: the transaction it reverses, and why.
    pub reversal_of: Option<Uuid>,
    pub reason: Option<String>,
    /// The sum of this transaction's reversals, minor units.
    pub reversed_amount: i64,
    /// An exchange's (or its reversal's) pricing and other side.
    pub exchange: Option<ExchangeRecord>,
    /// The schedule whose run wrote it, and which occurrence.
    pub schedule_id: Option<Uuid>,
    pub occurrence: Option<i64>,
}

/// The exchange columns of a transaction (migration V9): what `to` got, in which currency, the
/// spread kept in the sold currency, and how it was priced.
#[derive(Debug, Clone)]
pub struct ExchangeRecord {
    /// Minor units of `to_currency`.
    pub to_amount: i64,
    pub to_currency: String,
    /// Minor units of the sold currency.
    pub fee: i64,
    pub rate: rust_decimal::Decimal,
    pub spread_bps: i32,
    pub rate_source: String,
    pub quote_id: Option<Uuid>,
}

const COLUMNS: &str =
    "id, type, status, from_user_id, to_user_id, amount, currency, description, reference, \
     failure_reason, failure_detail, initiated_by, created_at, completed_at, expires_at, \
     resolved_at, posted_amount, posting_id, pending_id, reversal_of, reason, reversed_amount, \
     to_amount, to_currency, fee, rate, spread_bps, rate_source, quote_id, schedule_id, occurrence";

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
        failure_detail: row.get("failure_detail"),
        initiated_by: UserId::from_uuid(row.get("initiated_by")),
        created_at: row.get("created_at"),
        completed_at: row.get("completed_at"),
        expires_at: row.get("expires_at"),
        resolved_at: row.get("resolved_at"),
        posted_amount: row.get("posted_amount"),
        posting_id: row.get("posting_id"),
        pending_id: row.get("pending_id"),
        reversal_of: row.get("reversal_of"),
        reason: row.get("reason"),
        reversed_amount: row.get("reversed_amount"),
        exchange: row
            .get::<_, Option<String>>("to_currency")
            .map(|to_currency| ExchangeRecord {
                to_amount: row.get("to_amount"),
                to_currency,
                fee: row.get("fee"),
                rate: row.get("rate"),
                spread_bps: row.get("spread_bps"),
                rate_source: row.get("rate_source"),
                quote_id: row.get("quote_id"),
            }),
        schedule_id: row.get("schedule_id"),
        occurrence: row.get("occurrence"),
    }
}

impl TransactionRecord {
    /// The movement that releases this hold (`end`: voided by `initiated_by`, or expired).
    ///
    /// Errors: the stored row is not a hold Tally could have written (bad amount or currency).
    pub fn release(
        &self,
        end: HoldEnd,
        initiated_by: UserId,
        authority: Authority,
    ) -> anyhow::Result<Movement> {
        let (amount, currency) = self.money()?;
        Ok(Movement::release(
            self.id,
            self.kind,
            self.from,
            self.to,
            amount,
            currency,
            end,
            initiated_by,
            authority,
        )?)
    }

    /// The stored amount and currency as domain values.
    ///
    /// Errors: the row holds what Tally never writes (an amount out of range, an unknown code).
    pub fn money(&self) -> anyhow::Result<(Amount, Currency)> {
        Ok((Amount::new(self.amount)?, Currency::parse(&self.currency)?))
    }
}

/// Up to `limit` pending holds whose deadline has passed, oldest deadline first (the index
/// `transactions_open_holds_idx`).
pub async fn expired_holds(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<TransactionRecord>, tokio_postgres::Error> {
    let statement = format!(
        "SELECT {COLUMNS} FROM transactions
         WHERE status = 'pending' AND expires_at <= now()
         ORDER BY expires_at LIMIT $1"
    );
    Ok(client
        .query(&statement, &[&limit])
        .await?
        .iter()
        .map(record)
        .collect())
}

/// The completed reversals of `id`, oldest first.
pub async fn reversals_of(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let statement = "SELECT id FROM transactions
                     WHERE reversal_of = $1 AND status = 'completed' ORDER BY created_at, id";
    Ok(client
        .query(statement, &[&id])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

pub async fn find(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<TransactionRecord>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM transactions WHERE id = $1"))
        .await?;
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

/// Narrows a history listing; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub kind: Option<TransactionKind>,
    pub status: Option<TransactionStatus>,
    pub currency: Option<&'static str>,
    /// `created_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// `created_at < to`.
    pub to: Option<DateTime<Utc>>,
    /// The other party (never `system`: credits and debits have none on the wire).
    pub counterparty: Option<UserId>,
    /// Minor units, inclusive.
    pub min_amount: Option<i64>,
    pub max_amount: Option<i64>,
}

/// Up to `limit` transactions that `user` is a party to and that match `filter`, newest first
/// (`created_at`, then `id`, descending), strictly after `after`. A user sees their failed
/// outgoing transactions but not failed transfers addressed to them (those never touched their
/// account).
///
/// Each branch of the `UNION ALL` is one ordered index range scan (`transactions_from_idx`,
/// `transactions_to_idx`); a transaction appears in at most one branch: `from <> to`, but for
/// one's own exchange, which the second branch leaves out.
/// Paging guarantee: the key (created_at, id) is immutable and total, so a listing shows,
/// exactly once and in order, every transaction committed before its first page was read.
/// `created_at` is the commit batch's start time, so a transaction that commits while a listing
/// is under way can sort between pages already read and is then only in listings started after
/// it (as with a snapshot taken at the first page). Readers that need every change in commit
/// order use the event log's cursor (`store::events`), not this listing.
pub async fn history(
    client: &impl GenericClient,
    user: UserId,
    filter: &HistoryFilter,
    after: Option<HistoryCursor>,
    limit: i64,
) -> Result<Vec<TransactionRecord>, tokio_postgres::Error> {
    const FILTERS: &str = "($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          AND ($5::text IS NULL OR type = $5) AND ($6::text IS NULL OR status = $6)
          AND ($8::timestamptz IS NULL OR created_at >= $8) AND ($9::timestamptz IS NULL OR created_at < $9)
          AND ($11::bigint IS NULL OR amount >= $11) AND ($12::bigint IS NULL OR amount <= $12)";
    // The currency is the one that left the payer, and for the payee of an exchange the one it
    // bought (`to_currency`); one's own exchange touches both and is listed by the first
    // branch only.
    let statement = format!(
        "(SELECT {COLUMNS} FROM transactions
          WHERE from_user_id = $1 AND ($10::uuid IS NULL OR to_user_id = $10) AND {FILTERS}
            AND ($7::text IS NULL OR currency = $7 OR (to_user_id = $1 AND to_currency = $7))
          ORDER BY created_at DESC, id DESC LIMIT $4)
         UNION ALL
         (SELECT {COLUMNS} FROM transactions
          WHERE to_user_id = $1 AND from_user_id <> $1 AND status <> 'failed'
            AND ($10::uuid IS NULL OR from_user_id = $10) AND {FILTERS}
            AND ($7::text IS NULL OR coalesce(to_currency, currency) = $7)
          ORDER BY created_at DESC, id DESC LIMIT $4)
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let (created_at, id) = match after {
        Some(cursor) => (Some(cursor.created_at), Some(cursor.id)),
        None => (None, None),
    };
    // Prepared once per connection: planning this query is most of its cost in the database
    // (every index and constraint of `transactions` is considered for both branches).
    let statement = client.prepare_cached(&statement).await?;
    let rows = client
        .query(
            &statement,
            &[
                &user.as_uuid(),
                &created_at,
                &id,
                &limit,
                &filter.kind.map(TransactionKind::as_str),
                &filter.status.map(TransactionStatus::as_str),
                &filter.currency,
                &filter.from,
                &filter.to,
                &filter.counterparty.map(UserId::as_uuid),
                &filter.min_amount,
                &filter.max_amount,
            ],
        )
        .await?;
    Ok(rows.iter().map(record).collect())
}

/// The transactions with these ids (in no particular order; unknown ids are skipped).
pub async fn find_many(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<TransactionRecord>, tokio_postgres::Error> {
    let statement = format!("SELECT {COLUMNS} FROM transactions WHERE id = ANY($1)");
    Ok(client
        .query(&statement, &[&ids])
        .await?
        .iter()
        .map(record)
        .collect())
}
