//! Reads of the `balances` table. Writes happen only in `store::journal`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use crate::domain::{AccountKey, Currency, UserId};

/// A balance as stored: amounts in minor units.
#[derive(Debug, Clone)]
pub struct BalanceRecord {
    pub currency: Currency,
    pub amount: i64,
    /// Held, not yet settled.
    pub pending: i64,
    pub overdraft_limit: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

fn record(row: &tokio_postgres::Row) -> BalanceRecord {
    BalanceRecord {
        currency: Currency::parse(row.get("currency"))
            .expect("balances.currency holds only codes Tally wrote"),
        amount: row.get("amount"),
        pending: row.get("pending"),
        overdraft_limit: row.get("overdraft_limit"),
        version: row.get("version"),
        updated_at: row.get("last_updated_at"),
    }
}

/// A user's balances, one per currency they have used, ordered by currency; only `currency`
/// when given.
pub async fn for_user(
    client: &impl GenericClient,
    user: UserId,
    currency: Option<Currency>,
) -> Result<Vec<BalanceRecord>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT currency, amount, pending, overdraft_limit, version, last_updated_at FROM balances
             WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2)
             ORDER BY currency",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[&user.as_uuid(), &currency.map(Currency::code)],
        )
        .await?;
    Ok(rows.iter().map(record).collect())
}

/// One account's balance, or `None` when it was never used.
pub async fn find(
    client: &impl GenericClient,
    account: AccountKey,
) -> Result<Option<BalanceRecord>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT currency, amount, pending, overdraft_limit, version, last_updated_at FROM balances
             WHERE user_id = $1 AND currency = $2",
        )
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[&account.user.as_uuid(), &account.currency.code()],
        )
        .await?;
    Ok(row.as_ref().map(record))
}

/// One balance change: an entry of the ledger.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    pub entry_id: i64,
    pub transaction_id: uuid::Uuid,
    /// Minor units; negative for money out.
    pub delta: i64,
    pub balance_after: i64,
    pub at: DateTime<Utc>,
}

/// Up to `limit` changes of `account` with `from <= at < to`, oldest first, after entry
/// `after`. Ordered and paged on `(created_at, id)` with `entries_account_time_idx`: for one
/// account that is commit order, the order of entry ids (entries are stamped under the
/// account's row lock). An `after` that is not an entry of `account` gives no rows.
pub async fn changes(
    client: &impl GenericClient,
    account: AccountKey,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<ChangeRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, transaction_id, delta, balance_after, created_at FROM entries
             WHERE user_id = $1 AND currency = $2
               AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)
               AND ($5::bigint IS NULL OR (created_at, id) > (
                       SELECT c.created_at, c.id FROM entries c
                       WHERE c.id = $5 AND c.user_id = $1 AND c.currency = $2))
             ORDER BY created_at, id LIMIT $6",
            &[&account.user.as_uuid(), &account.currency.code(), &from, &to, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ChangeRecord {
            entry_id: row.get(0),
            transaction_id: row.get(1),
            delta: row.get(2),
            balance_after: row.get(3),
            at: row.get(4),
        })
        .collect())
}

/// The balance of `account` at the instant `at`: the `balance_after` of its last entry written
/// at or before `at` (0 before the first). One backward scan of `entries_account_time_idx`,
/// never a sum. Entries are stamped with `clock_timestamp()` while their batch holds the
/// account's row lock, so time order and commit order agree for each account.
pub async fn at_time(
    client: &impl GenericClient,
    account: AccountKey,
    at: DateTime<Utc>,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT balance_after FROM entries
             WHERE user_id = $1 AND currency = $2 AND created_at <= $3
             ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&account.user.as_uuid(), &account.currency.code(), &at],
        )
        .await?;
    Ok(row.map_or(0, |row| row.get(0)))
}

/// Interval of a closing-balance series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
        }
    }
}

/// The closing balance of each interval that starts in `[from, to)`, intervals aligned to UTC
/// hours or days (the first one starts at `from` truncated). An interval without a change
/// carries the previous balance. One indexed lookup per interval.
pub async fn closing_balances(
    client: &impl GenericClient,
    account: AccountKey,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: Interval,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s.start, s.start + ('1 ' || $5)::interval AS end,
                    coalesce((SELECT e.balance_after FROM entries e
                              WHERE e.user_id = $1 AND e.currency = $2
                                AND e.created_at < s.start + ('1 ' || $5)::interval
                              ORDER BY e.created_at DESC, e.id DESC LIMIT 1), 0)
             FROM generate_series(date_trunc($5, $3::timestamptz, 'UTC'), $4::timestamptz - interval '1 microsecond',
                                  ('1 ' || $5)::interval) AS s(start)
             ORDER BY s.start",
            &[&account.user.as_uuid(), &account.currency.code(), &from, &to, &interval.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// Up to `limit` users whose balances changed most recently (for the cache warm-up).
pub async fn recently_active_users(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<UserId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT user_id FROM balances WHERE user_id <> '00000000-0000-0000-0000-000000000000'
             GROUP BY user_id ORDER BY max(last_updated_at) DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| UserId::from_uuid(row.get(0)))
        .collect())
}
