//! The `limits` table (DESIGN.md section 8) and the other admin writes of limits: an account's
//! own rows, the defaults (`user_id` NULL), their one-time seeding from the configuration, and
//! `balances.overdraft_limit`. Every change writes a `limit.changed` event in the transaction
//! that makes it ([`record_event`]). Reading limits for the posting path is not here.

use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::{AccountKey, Currency, LimitKind, LimitSpec, Role, UserId};

/// The event type of every change of a limit (an account's set, the defaults, an overdraft).
pub const LIMIT_CHANGED: &str = "limit.changed";

/// The event stream of an account's limits (`limits:<user id>`), or of the defaults
/// (`limits:defaults`) for `None`.
pub fn stream(user: Option<UserId>) -> String {
    match user {
        Some(user) => format!("limits:{user}"),
        None => "limits:defaults".to_owned(),
    }
}

fn spec(row: &tokio_postgres::Row) -> LimitSpec {
    let kind: &str = row.get("kind");
    let currency: &str = row.get("currency");
    let window_s: Option<i32> = row.get("window_s");
    let kind = LimitKind::parse(kind).expect("limits.kind is constrained to configurable kinds");
    let currency = (currency != "*")
        .then(|| Currency::parse(currency).expect("limits.currency holds codes Tally wrote"));
    LimitSpec::new(kind, currency, row.get("value"), window_s.map(i64::from))
        .expect("limits rows were validated by LimitSpec before they were written")
}

/// The account's own limits (`user` given) or the defaults (`None`), ordered by kind, then
/// currency (`*` first).
pub async fn list(
    client: &impl GenericClient,
    user: Option<UserId>,
) -> Result<Vec<LimitSpec>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT kind, currency, value, window_s FROM limits
             WHERE user_id IS NOT DISTINCT FROM $1
             ORDER BY kind, currency",
            &[&user.map(UserId::as_uuid)],
        )
        .await?;
    Ok(rows.iter().map(spec).collect())
}

/// What [`lock_user`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedUser {
    /// Active, with this role; its row is share-locked until the transaction ends, so a
    /// deletion or role change waits for it (as in the group commit's `lock_parties`).
    Active(Role),
    /// Unknown or deleted.
    Missing,
}

/// How [`lock_user`] locks the user's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLock {
    /// `FOR SHARE`: race-free with `users::soft_delete` and role changes, which lock it for
    /// update.
    Share,
    /// `FOR NO KEY UPDATE`: also against the group commit's share lock on every party, so no
    /// commit moving the user's money runs until this transaction ends, and one that follows
    /// reads what it wrote. Take it first, never after a share lock on the same row in the same
    /// transaction (two such upgrades would deadlock).
    Exclusive,
}

/// Locks the user `id` as `lock` says and returns its role (`Missing` for an unknown or
/// deleted user). Call inside a transaction.
pub async fn lock_user(
    client: &impl GenericClient,
    id: Uuid,
    lock: UserLock,
) -> Result<LockedUser, tokio_postgres::Error> {
    let query = match lock {
        UserLock::Share => "SELECT role FROM users WHERE id = $1 AND deleted_at IS NULL FOR SHARE",
        UserLock::Exclusive => {
            "SELECT role FROM users WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE"
        }
    };
    let row = client.query_opt(query, &[&id]).await?;
    Ok(match row {
        Some(row) => LockedUser::Active(
            Role::parse(row.get(0)).expect("users.role is constrained to known roles"),
        ),
        None => LockedUser::Missing,
    })
}

/// Serializes the writers of one limit set (an account's, or the defaults for `None`) until the
/// transaction ends: two replacements at once would otherwise both delete the old rows and
/// collide on the unique index with each other's new ones. A transaction-scoped advisory lock,
/// so no row the posting path reads or locks is involved.
pub async fn lock_set(
    client: &impl GenericClient,
    user: Option<UserId>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&stream(user)],
        )
        .await?;
    Ok(())
}

/// Of `currencies`, those in which `user` has no balance row (never held).
pub async fn never_held(
    client: &impl GenericClient,
    user: UserId,
    currencies: &[Currency],
) -> Result<Vec<Currency>, tokio_postgres::Error> {
    if currencies.is_empty() {
        return Ok(Vec::new());
    }
    let codes: Vec<&str> = currencies.iter().map(|currency| currency.code()).collect();
    let rows = client
        .query(
            "SELECT currency FROM balances WHERE user_id = $1 AND currency = ANY($2)",
            &[&user.as_uuid(), &codes],
        )
        .await?;
    let held: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    Ok(currencies
        .iter()
        .copied()
        .filter(|currency| !held.iter().any(|code| code == currency.code()))
        .collect())
}

/// Replaces the whole set of `user`'s limits (`None`: the defaults) with `specs`, which must
/// not repeat a (kind, currency). Call inside a transaction, after [`lock_set`]. Returns the set
/// as it was before.
pub async fn replace(
    client: &impl GenericClient,
    user: Option<UserId>,
    specs: &[LimitSpec],
    changed_by: Option<UserId>,
) -> Result<Vec<LimitSpec>, tokio_postgres::Error> {
    let before = list(client, user).await?;
    let user_id = user.map(UserId::as_uuid);
    client
        .execute(
            "DELETE FROM limits WHERE user_id IS NOT DISTINCT FROM $1",
            &[&user_id],
        )
        .await?;
    insert(client, user, specs, changed_by).await?;
    Ok(before)
}

async fn insert(
    client: &impl GenericClient,
    user: Option<UserId>,
    specs: &[LimitSpec],
    changed_by: Option<UserId>,
) -> Result<(), tokio_postgres::Error> {
    if specs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = specs.iter().map(|_| Uuid::now_v7()).collect();
    let currencies: Vec<&str> = specs.iter().map(LimitSpec::currency_code).collect();
    let kinds: Vec<&str> = specs.iter().map(|spec| spec.kind().as_str()).collect();
    let values: Vec<i64> = specs.iter().map(LimitSpec::value).collect();
    let windows: Vec<Option<i32>> = specs
        .iter()
        .map(|spec| {
            spec.window_s()
                .map(|seconds| i32::try_from(seconds).expect("WINDOW_MAX_S fits an i32"))
        })
        .collect();
    client
        .execute(
            "INSERT INTO limits (id, user_id, currency, kind, value, window_s, created_by)
             SELECT l.id, $2::uuid, l.currency, l.kind, l.value, l.window_s, $7::uuid
             FROM unnest($1::uuid[], $3::text[], $4::text[], $5::bigint[], $6::int4[])
                  AS l(id, currency, kind, value, window_s)",
            &[
                &ids,
                &user.map(UserId::as_uuid),
                &currencies,
                &kinds,
                &values,
                &windows,
                &changed_by.map(UserId::as_uuid),
            ],
        )
        .await?;
    Ok(())
}

/// A limit as the event log records it: `{kind, currency, value, window_s}` (`currency` a code
/// or `*`; `value` minor units, a count for `velocity`; `window_s` seconds or null).
pub fn limit_json(spec: &LimitSpec) -> Value {
    json!({
        "kind": spec.kind().as_str(),
        "currency": spec.currency_code(),
        "value": spec.value(),
        "window_s": spec.window_s(),
    })
}

/// The payload of a `limit.changed` event on a limit set: `{user_id (null for the defaults),
/// before: [limit], after: [limit], changed_by (null when the configuration seeded it)}`.
pub fn set_changed(
    user: Option<UserId>,
    before: &[LimitSpec],
    after: &[LimitSpec],
    changed_by: Option<UserId>,
) -> Value {
    json!({
        "user_id": user.map(UserId::as_uuid),
        "before": before.iter().map(limit_json).collect::<Vec<_>>(),
        "after": after.iter().map(limit_json).collect::<Vec<_>>(),
        "changed_by": changed_by.map(UserId::as_uuid),
    })
}

/// Appends `payload` to the event log as `event_type` on `stream`, in the caller's transaction
/// (so the event commits exactly when the change it describes does).
pub async fn record_event(
    client: &impl GenericClient,
    stream: &str,
    event_type: &str,
    payload: &Value,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO events (stream, type, payload) VALUES ($1, $2, $3)",
            &[&stream, &event_type, payload],
        )
        .await?;
    Ok(())
}

/// Writes the configured defaults the first time a database is started, and never again (from
/// then on `PUT /limits/defaults` rules), in one transaction guarded by the one-row marker
/// `limit_defaults_seeded`: of instances starting at once, the first to insert the marker
/// writes the defaults, the others wait on its unique key and find it taken. A non-empty seeding
/// is audited (`limits.defaults_seeded`, no actor) and logged as a `limit.changed` event (no
/// `changed_by`) in the same transaction.
///
/// Returns whether this call seeded.
pub async fn seed_defaults(
    client: &mut deadpool_postgres::Client,
    specs: &[LimitSpec],
) -> Result<bool, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let claimed = transaction
        .query_opt(
            "INSERT INTO limit_defaults_seeded DEFAULT VALUES ON CONFLICT DO NOTHING RETURNING seeded_at",
            &[],
        )
        .await?
        .is_some();
    if !claimed {
        transaction.rollback().await?;
        return Ok(false);
    }
    if specs.is_empty() {
        // Claimed: from now on the API decides. Nothing changed, so nothing to log.
        transaction.commit().await?;
        return Ok(true);
    }
    insert(&transaction, None, specs, None).await?;
    super::audit::record(
        &transaction,
        super::audit::AuditEntry {
            entity_type: "limits",
            entity_id: Some("defaults".to_owned()),
            action: "limits.defaults_seeded",
            actor: None,
            details: &json!({"after": specs.iter().map(limit_json).collect::<Vec<_>>()}),
        },
    )
    .await?;
    let event = set_changed(None, &[], specs, None);
    record_event(&transaction, &stream(None), LIMIT_CHANGED, &event).await?;
    transaction.commit().await?;
    Ok(true)
}

/// A balance row as the overdraft change left it, minor units.
#[derive(Debug, Clone, Copy)]
pub struct OverdraftChange {
    /// The overdraft limit before the change.
    pub before: i64,
    pub amount: i64,
    pub pending: i64,
    pub overdraft_limit: i64,
    pub version: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// What [`set_overdraft`] did.
#[derive(Debug, Clone, Copy)]
pub enum OverdraftOutcome {
    Set(OverdraftChange),
    /// `amount - pending` is below `-overdraft_limit`: the account already uses more overdraft
    /// than the new limit allows (`available` is `amount - pending`, minor units).
    InUse {
        available: i64,
    },
}

/// Sets `balances.overdraft_limit` of `account` to `limit` (minor units, `0..=2^61`), creating
/// the row if it is missing, bumping `version` and `last_updated_at` (so the cache's
/// write-through replaces the field). The row is locked for update first, so a group commit
/// cannot change `amount - pending` between the check and the update. Call inside a
/// transaction; on `InUse` nothing was changed (roll back: a row created here must go too).
pub async fn set_overdraft(
    client: &impl GenericClient,
    account: AccountKey,
    limit: i64,
) -> Result<OverdraftOutcome, tokio_postgres::Error> {
    let (user, currency) = (account.user.as_uuid(), account.currency.code());
    client
        .execute(
            "INSERT INTO balances (user_id, currency) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&user, &currency],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT amount, pending, overdraft_limit FROM balances
             WHERE user_id = $1 AND currency = $2 FOR UPDATE",
            &[&user, &currency],
        )
        .await?;
    let (amount, pending, before): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    // Both bounded by 2^61 (migration V5): no overflow.
    let available = amount - pending;
    if available < -limit {
        return Ok(OverdraftOutcome::InUse { available });
    }
    let row = client
        .query_one(
            "UPDATE balances SET overdraft_limit = $3, version = version + 1, last_updated_at = now()
             WHERE user_id = $1 AND currency = $2
             RETURNING amount, pending, overdraft_limit, version, last_updated_at",
            &[&user, &currency, &limit],
        )
        .await?;
    Ok(OverdraftOutcome::Set(OverdraftChange {
        before,
        amount: row.get(0),
        pending: row.get(1),
        overdraft_limit: row.get(2),
        version: row.get(3),
        updated_at: row.get(4),
    }))
}

/// How long `limit_usage` keeps a row, days: the longest window a limit may have
/// (`domain::WINDOW_MAX_S`, 366 days) and a day to spare. No limit reads an older row.
pub const USAGE_RETENTION_DAYS: i64 = 367;

/// Forgets at most `batch` rows of `limit_usage` older than [`USAGE_RETENTION_DAYS`] (by the
/// database's clock) and returns how many. Rows a commit holds are skipped, never waited for.
pub async fn forget_usage(
    client: &tokio_postgres::Client,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM limit_usage WHERE transaction_id IN (
                 SELECT transaction_id FROM limit_usage
                 WHERE at < now() - $1::bigint * interval '1 day'
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&USAGE_RETENTION_DAYS, &batch],
        )
        .await
}
