//! Exchange rates and quotes (DESIGN.md section 9, migration V9). Rates are admin data, one row
//! per ordered pair; a quote fixes a rate and both amounts for one user until it expires, and is
//! used at most once: the exchange's own commit claims it (`store::journal::sql::claim_quotes`).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::{Currency, Rate, UserId};

/// A configured rate.
#[derive(Debug, Clone)]
pub struct RateRecord {
    pub from: Currency,
    pub to: Currency,
    pub rate: Rate,
    pub source: String,
    pub valid_until: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl RateRecord {
    /// Whether the rate may price an exchange at `now`.
    pub fn is_current(&self, now: DateTime<Utc>) -> bool {
        self.valid_until.is_none_or(|until| until > now)
    }
}

fn rate_record(row: &tokio_postgres::Row) -> Result<RateRecord, tokio_postgres::Error> {
    let currency = |column: &str| {
        Currency::parse(row.get::<_, &str>(column)).expect("rates hold codes Tally parsed")
    };
    Ok(RateRecord {
        from: currency("from_currency"),
        to: currency("to_currency"),
        rate: Rate::new(row.get::<_, Decimal>("rate")).expect("rates hold rates Tally parsed"),
        source: row.get("source"),
        valid_until: row.get("valid_until"),
        updated_at: row.get("updated_at"),
    })
}

/// Every configured rate, by pair.
pub async fn list_rates(
    client: &impl GenericClient,
) -> Result<Vec<RateRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT from_currency, to_currency, rate, source, valid_until, updated_at
             FROM rates ORDER BY from_currency, to_currency",
            &[],
        )
        .await?;
    rows.iter().map(rate_record).collect()
}

/// The rate of `from` → `to`, if one is configured (current or not).
pub async fn find_rate(
    client: &impl GenericClient,
    from: Currency,
    to: Currency,
) -> Result<Option<RateRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT from_currency, to_currency, rate, source, valid_until, updated_at
             FROM rates WHERE from_currency = $1 AND to_currency = $2",
            &[&from.code(), &to.code()],
        )
        .await?;
    row.as_ref().map(rate_record).transpose()
}

/// Sets the rate of `from` → `to` (insert or replace) and writes `rate.changed` in the caller's
/// transaction. Returns the stored row.
pub async fn put_rate(
    client: &impl GenericClient,
    (from, to): (Currency, Currency),
    rate: Rate,
    source: &str,
    valid_until: Option<DateTime<Utc>>,
    by: UserId,
) -> Result<RateRecord, tokio_postgres::Error> {
    let row = client
        .query_one(
            "WITH stored AS (
                 INSERT INTO rates (from_currency, to_currency, rate, source, valid_until, updated_by, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now())
                 ON CONFLICT (from_currency, to_currency) DO UPDATE
                 SET rate = EXCLUDED.rate, source = EXCLUDED.source,
                     valid_until = EXCLUDED.valid_until, updated_by = EXCLUDED.updated_by,
                     updated_at = EXCLUDED.updated_at
                 RETURNING *
             ), logged AS (
                 INSERT INTO events (stream, type, payload)
                 SELECT 'rate:' || from_currency || '/' || to_currency, 'rate.changed',
                        jsonb_build_object('from_currency', from_currency, 'to_currency', to_currency,
                                           'rate', rate::text, 'source', source,
                                           'valid_until', valid_until, 'updated_by', updated_by)
                 FROM stored
             )
             SELECT from_currency, to_currency, rate, source, valid_until, updated_at FROM stored",
            &[
                &from.code(),
                &to.code(),
                &rate.value(),
                &source,
                &valid_until,
                &by.as_uuid(),
            ],
        )
        .await?;
    rate_record(&row)
}

/// A quote: a rate and both amounts fixed for one user until `expires_at`.
#[derive(Debug, Clone)]
pub struct QuoteRecord {
    pub id: Uuid,
    pub user: UserId,
    pub from: Currency,
    pub to: Currency,
    /// Minor units of `from`.
    pub source_amount: i64,
    /// Minor units of `from`, kept by the house.
    pub fee: i64,
    /// Minor units of `to`.
    pub target_amount: i64,
    pub rate: Rate,
    pub spread_bps: u32,
    pub rate_source: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The exchange that used it.
    pub transaction_id: Option<Uuid>,
}

/// Stores a new quote.
pub async fn insert_quote(
    client: &impl GenericClient,
    quote: &QuoteRecord,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO fx_quotes (id, user_id, from_currency, to_currency, source_amount, fee,
                                    target_amount, rate, spread_bps, rate_source, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &quote.id,
                &quote.user.as_uuid(),
                &quote.from.code(),
                &quote.to.code(),
                &quote.source_amount,
                &quote.fee,
                &quote.target_amount,
                &quote.rate.value(),
                &i32::try_from(quote.spread_bps).unwrap_or(i32::MAX),
                &quote.rate_source,
                &quote.created_at,
                &quote.expires_at,
            ],
        )
        .await?;
    Ok(())
}

/// The quote `id`, whoever's it is.
pub async fn find_quote(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<QuoteRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT id, user_id, from_currency, to_currency, source_amount, fee, target_amount, rate,
                    spread_bps, rate_source, created_at, expires_at, transaction_id
             FROM fx_quotes WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| {
        let currency = |column: &str| {
            Currency::parse(row.get::<_, &str>(column)).expect("quotes hold codes Tally parsed")
        };
        QuoteRecord {
            id: row.get("id"),
            user: UserId::from_uuid(row.get("user_id")),
            from: currency("from_currency"),
            to: currency("to_currency"),
            source_amount: row.get("source_amount"),
            fee: row.get("fee"),
            target_amount: row.get("target_amount"),
            rate: Rate::new(row.get::<_, Decimal>("rate")).expect("quotes hold rates Tally parsed"),
            spread_bps: u32::try_from(row.get::<_, i32>("spread_bps")).unwrap_or_default(),
            rate_source: row.get("rate_source"),
            created_at: row.get("created_at"),
            expires_at: row.get("expires_at"),
            transaction_id: row.get("transaction_id"),
        }
    }))
}

/// How long after expiry a quote is kept (so that a late use is told `quote_expired`, not
/// `not_found`), seconds: one day.
pub const QUOTE_RETENTION_S: i64 = 86_400;

/// Forgets up to `batch` quotes that expired more than [`QUOTE_RETENTION_S`] before `now`.
/// Returns how many.
pub async fn forget_quotes(
    client: &impl GenericClient,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM fx_quotes WHERE id IN (
                 SELECT id FROM fx_quotes
                 WHERE expires_at < $1::timestamptz - make_interval(secs => $2::float8)
                 ORDER BY expires_at LIMIT $3)",
            &[&now, &(QUOTE_RETENTION_S as f64), &batch],
        )
        .await
}
