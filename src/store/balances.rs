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
    let rows = client
        .query(
            "SELECT currency, amount, pending, overdraft_limit, version, last_updated_at FROM balances
             WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2)
             ORDER BY currency",
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
    let row = client
        .query_opt(
            "SELECT currency, amount, pending, overdraft_limit, version, last_updated_at FROM balances
             WHERE user_id = $1 AND currency = $2",
            &[&account.user.as_uuid(), &account.currency.code()],
        )
        .await?;
    Ok(row.as_ref().map(record))
}
