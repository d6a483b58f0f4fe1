//! The `alerts` table (DESIGN.md section 8): balance alerts as their owners set them. Firing
//! them (`balance.alert`, disarming and re-arming under the balance row's lock) belongs to the
//! posting path, not here.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::domain::{AccountKey, Currency, UserId};

/// Most alerts one user may have.
pub const ALERTS_PER_USER_MAX: i64 = 100;

/// When an alert's condition holds, on the settled balance `amount` (what entries record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `amount < threshold`.
    Below,
    /// `amount > threshold`.
    Above,
}

impl Condition {
    pub fn parse(text: &str) -> Option<Condition> {
        match text {
            "below" => Some(Condition::Below),
            "above" => Some(Condition::Above),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Below => "below",
            Condition::Above => "above",
        }
    }

    /// Whether the condition holds for a settled balance of `amount` against `threshold`
    /// (minor units; strict comparisons).
    pub fn holds(self, amount: i64, threshold: i64) -> bool {
        match self {
            Condition::Below => amount < threshold,
            Condition::Above => amount > threshold,
        }
    }
}

/// An alert as stored; amounts in minor units.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub id: Uuid,
    pub user: UserId,
    pub currency: Currency,
    pub condition: Condition,
    pub threshold: i64,
    /// True while the condition does not hold (the next crossing fires it).
    pub armed: bool,
    pub fired_count: i64,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, user_id, currency, condition, threshold, armed, fired_count, last_fired_at, created_at";

fn record(row: &tokio_postgres::Row) -> AlertRecord {
    AlertRecord {
        id: row.get("id"),
        user: UserId::from_uuid(row.get("user_id")),
        currency: Currency::parse(row.get("currency"))
            .expect("alerts.currency holds only codes Tally wrote"),
        condition: Condition::parse(row.get("condition"))
            .expect("alerts.condition is constrained to below and above"),
        threshold: row.get("threshold"),
        armed: row.get("armed"),
        fired_count: row.get("fired_count"),
        last_fired_at: row.get("last_fired_at"),
        created_at: row.get("created_at"),
    }
}

/// What [`create`] did.
#[derive(Debug)]
pub enum Created {
    Created(AlertRecord),
    /// The user already has [`ALERTS_PER_USER_MAX`] alerts.
    TooMany,
}

/// Creates an alert on `account`, armed when its condition does not hold for the account's
/// settled `amount` now (0 when the account was never used). Call inside a transaction: the
/// user's alerts are serialized by an advisory lock (so the cap holds under concurrent
/// creations). The caller must hold the user's row `FOR NO KEY UPDATE`
/// (`store::limits::lock_user` with `UserLock::Exclusive`), against the group commit's share lock on every
/// party: a commit that moves this user's money either finished before this read or starts
/// after this transaction (and reads this alert under its balance lock), even when the account
/// has no balance row yet.
pub async fn create(
    client: &impl GenericClient,
    account: AccountKey,
    condition: Condition,
    threshold: i64,
) -> Result<Created, tokio_postgres::Error> {
    let user = account.user.as_uuid();
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("alerts:{user}")],
        )
        .await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM alerts WHERE user_id = $1", &[&user])
        .await?
        .get(0);
    if count >= ALERTS_PER_USER_MAX {
        return Ok(Created::TooMany);
    }
    let amount: i64 = client
        .query_opt(
            "SELECT amount FROM balances WHERE user_id = $1 AND currency = $2 FOR SHARE",
            &[&user, &account.currency.code()],
        )
        .await?
        .map_or(0, |row| row.get(0));
    let armed = !condition.holds(amount, threshold);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO alerts (id, user_id, currency, condition, threshold, armed)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &user,
                &account.currency.code(),
                &condition.as_str(),
                &threshold,
                &armed,
            ],
        )
        .await?;
    Ok(Created::Created(record(&row)))
}

/// The user's alerts, oldest first.
pub async fn for_user(
    client: &impl GenericClient,
    user: UserId,
) -> Result<Vec<AlertRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM alerts WHERE user_id = $1 ORDER BY created_at, id"),
            &[&user.as_uuid()],
        )
        .await?;
    Ok(rows.iter().map(record).collect())
}

/// Deletes the alert `id` when `owner` is `None` (an admin) or owns it; returns what was
/// deleted, `None` when there was no such alert (or not `owner`'s).
pub async fn delete(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<UserId>,
) -> Result<Option<AlertRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "DELETE FROM alerts WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
                 RETURNING {COLUMNS}"
            ),
            &[&id, &owner.map(UserId::as_uuid)],
        )
        .await?;
    Ok(row.as_ref().map(record))
}
