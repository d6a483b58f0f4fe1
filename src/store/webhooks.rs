//! The webhook tables (migration V12): subscriptions, the delivery log and the dispatcher's
//! cursor. The delivery engine that drives them is `crate::webhooks`; the API is
//! `routes::webhooks`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use uuid::Uuid;

use super::events::{EventCursor, AFTER_CURSOR, IN_CURSOR_ORDER, LIVE_POSITION};
use crate::domain::UserId;

/// The advisory lock that makes one dispatcher at a time (`'tallyhoo'` in ASCII).
const DISPATCHER_LOCK: i64 = 0x7461_6c6c_7968_6f6f;

/// Most subscriptions one user may have.
pub const WEBHOOKS_PER_USER_MAX: i64 = 20;

/// A subscription as stored (the secret is only read by the deliverer and shown at creation).
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub user: UserId,
    pub url: String,
    /// `None`: every event type.
    pub types: Option<Vec<String>>,
    pub description: Option<String>,
    pub secret: String,
    pub active: bool,
    pub consecutive_failures: i32,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, user_id, url, types, description, secret, active, \
                       consecutive_failures, disabled_at, created_at";

fn record(row: &tokio_postgres::Row) -> WebhookRecord {
    WebhookRecord {
        id: row.get("id"),
        user: UserId::from_uuid(row.get("user_id")),
        url: row.get("url"),
        types: row.get("types"),
        description: row.get("description"),
        secret: row.get("secret"),
        active: row.get("active"),
        consecutive_failures: row.get("consecutive_failures"),
        disabled_at: row.get("disabled_at"),
        created_at: row.get("created_at"),
    }
}

/// What [`create`] did.
#[derive(Debug)]
pub enum Created {
    Created(WebhookRecord),
    /// The user already has [`WEBHOOKS_PER_USER_MAX`] subscriptions.
    TooMany,
}

/// A new subscription's fields, validated by the caller.
pub struct NewWebhook<'a> {
    pub user: UserId,
    pub url: &'a str,
    pub types: Option<&'a [String]>,
    pub description: Option<&'a str>,
    pub secret: &'a str,
}

/// Creates a subscription. Call inside a transaction: a user's subscriptions are serialized
/// by an advisory lock, so the cap holds under concurrent creations.
pub async fn create(
    client: &impl GenericClient,
    new: NewWebhook<'_>,
) -> Result<Created, tokio_postgres::Error> {
    let user = new.user.as_uuid();
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("webhooks:{user}")],
        )
        .await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM webhooks WHERE user_id = $1", &[&user])
        .await?
        .get(0);
    if count >= WEBHOOKS_PER_USER_MAX {
        return Ok(Created::TooMany);
    }
    let row = client
        .query_one(
            &format!(
                "INSERT INTO webhooks (id, user_id, url, types, description, secret)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &user,
                &new.url,
                &new.types,
                &new.description,
                &new.secret,
            ],
        )
        .await?;
    Ok(Created::Created(record(&row)))
}

/// The user's subscriptions, oldest first.
pub async fn for_user(
    client: &impl GenericClient,
    user: UserId,
) -> Result<Vec<WebhookRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM webhooks WHERE user_id = $1 ORDER BY created_at, id"),
            &[&user.as_uuid()],
        )
        .await?;
    Ok(rows.iter().map(record).collect())
}

/// The subscription `id`, when it exists and (with `owner`) belongs to `owner`.
pub async fn find(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<UserId>,
) -> Result<Option<WebhookRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)"
            ),
            &[&id, &owner.map(UserId::as_uuid)],
        )
        .await?;
    Ok(row.as_ref().map(record))
}

/// Deletes the subscription `id` (with `owner`: only when it is theirs) and its delivery log;
/// returns what was deleted.
pub async fn delete(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<UserId>,
) -> Result<Option<WebhookRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "DELETE FROM webhooks WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
                 RETURNING {COLUMNS}"
            ),
            &[&id, &owner.map(UserId::as_uuid)],
        )
        .await?;
    Ok(row.as_ref().map(record))
}

/// Re-enables the subscription `id` (with `owner`: only theirs), resetting its run of
/// failures; its pending deliveries are sent again from now. Returns the subscription, and
/// whether it was disabled.
pub async fn enable(
    client: &impl GenericClient,
    id: Uuid,
    owner: Option<UserId>,
) -> Result<Option<(WebhookRecord, bool)>, tokio_postgres::Error> {
    let Some(before) = client
        .query_opt(
            "SELECT active FROM webhooks WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
             FOR NO KEY UPDATE",
            &[&id, &owner.map(UserId::as_uuid)],
        )
        .await?
    else {
        return Ok(None);
    };
    let was_active: bool = before.get(0);
    let row = client
        .query_one(
            &format!(
                "UPDATE webhooks SET active = true, disabled_at = NULL, consecutive_failures = 0
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    if !was_active {
        // What waited while it was disabled is due now, not at its backed-off time.
        client
            .execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now()
                 WHERE webhook_id = $1 AND status = 'pending' AND next_attempt_at > now()",
                &[&id],
            )
            .await?;
    }
    Ok(Some((record(&row), !was_active)))
}

/// One row of the delivery log.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub event_id: i64,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// For a pending delivery: when it is (next) due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` deliveries of `webhook`, newest event first, of events before `before` (an
/// event id) when given.
pub async fn deliveries(
    client: &impl GenericClient,
    webhook: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeliveryRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT event_seq, event_type, status, attempts, last_status_code, last_error,
                    CASE WHEN status = 'pending' THEN next_attempt_at END, delivered_at,
                    created_at
             FROM webhook_deliveries
             WHERE webhook_id = $1 AND ($2::bigint IS NULL OR event_seq < $2)
             ORDER BY event_seq DESC
             LIMIT $3",
            &[&webhook, &before, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DeliveryRecord {
            event_id: row.get(0),
            event_type: row.get(1),
            status: row.get(2),
            attempts: row.get(3),
            last_status_code: row.get(4),
            last_error: row.get(5),
            next_attempt_at: row.get(6),
            delivered_at: row.get(7),
            created_at: row.get(8),
        })
        .collect())
}

/// What one dispatch pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// Another instance is dispatching.
    Busy,
    /// Events fanned out (maybe to no subscription), deliveries created.
    Advanced { events: usize, deliveries: u64 },
}

/// One dispatch pass, in one transaction: takes the dispatcher's advisory lock (skipping when
/// another instance holds it; with no active subscription, it moves the cursor to the live
/// position and reads nothing), reads up to `batch` committed events after it, inserts a pending
/// delivery per matching active subscription (type filter; an admin's subscription takes
/// every event, another's the events touching the owner's accounts; only events from the
/// subscription's `from_tx` on), and advances the cursor. Fan-out is exactly once per
/// (subscription, event): the cursor moves in the transaction that inserts, and the primary
/// key would turn a repeat into a no-op.
pub async fn dispatch(
    client: &mut deadpool_postgres::Client,
    batch: i64,
) -> Result<Dispatched, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    // An advisory lock, not a row lock: a row lock would give every idle pass a transaction
    // id, and a running transaction id holds back every reader of the log (they read below
    // the xmin horizon), on every database of the server.
    let locked: bool = transaction
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&DISPATCHER_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(Dispatched::Busy);
    }
    // With no active subscription there is nothing to fan out: the cursor moves to the live
    // position without reading the events in between (the passes below would read every
    // cursor of the log and match it to nobody). One statement, so one snapshot decides both:
    // a subscription it does not see has not committed yet, and the transactions still
    // running then (every one that can commit later) are above the live position.
    let idle = transaction
        .query_one(
            &format!(
                "WITH live AS ({LIVE_POSITION}), idle AS (
                 SELECT NOT EXISTS (SELECT 1 FROM webhooks WHERE active) AS idle
             ), moved AS (
                 UPDATE webhook_dispatch d SET tx = live.tx, seq = live.seq
                 FROM live, idle
                 WHERE idle.idle AND (live.tx, live.seq) > (d.tx, d.seq)
                 RETURNING 1
             )
             SELECT idle.idle, (SELECT count(*) FROM moved) FROM idle"
            ),
            &[],
        )
        .await?;
    if idle.get::<_, bool>(0) {
        if idle.get::<_, i64>(1) > 0 {
            transaction.commit().await?;
        }
        return Ok(Dispatched::Advanced {
            events: 0,
            deliveries: 0,
        });
    }
    // Read after the lock: the last holder's cursor has committed.
    let row = transaction
        .query_one("SELECT tx, seq FROM webhook_dispatch", &[])
        .await?;
    let after = EventCursor {
        tx: row.get(0),
        seq: row.get(1),
    };
    // Cursors only, of finished transactions (the rule of `events::read_after`): the range
    // (after, last] is closed, no event can still appear in it.
    let cursors = transaction
        .query(
            &format!(
                "SELECT e.tx::text::bigint, e.seq FROM events e
                 WHERE {AFTER_CURSOR} {IN_CURSOR_ORDER} LIMIT $3"
            ),
            &[&after.tx, &after.seq, &batch],
        )
        .await?;
    let Some(last) = cursors.last() else {
        return Ok(Dispatched::Advanced {
            events: 0,
            deliveries: 0,
        });
    };
    let last = EventCursor {
        tx: last.get(0),
        seq: last.get(1),
    };
    let deliveries = transaction
        .execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_seq, event_type)
             SELECT w.id, e.seq, e.type
             FROM events e
             JOIN webhooks w ON w.active AND e.tx >= w.from_tx
                            AND (w.types IS NULL OR e.type = ANY (w.types))
             JOIN users u ON u.id = w.user_id AND u.deleted_at IS NULL
             WHERE (e.tx, e.seq) > ($1::bigint::text::xid8, $2)
               AND (e.tx, e.seq) <= ($3::bigint::text::xid8, $4)
               AND (u.role = 'admin'
                    OR e.user_a = w.user_id OR e.user_b = w.user_id)
             ON CONFLICT DO NOTHING",
            &[&after.tx, &after.seq, &last.tx, &last.seq],
        )
        .await?;
    transaction
        .execute(
            "UPDATE webhook_dispatch SET tx = $1, seq = $2",
            &[&last.tx, &last.seq],
        )
        .await?;
    transaction.commit().await?;
    Ok(Dispatched::Advanced {
        events: cursors.len(),
        deliveries,
    })
}

/// The dispatcher's position (tests and operators: how far fan-out has gone).
pub async fn dispatch_cursor(
    client: &impl GenericClient,
) -> Result<EventCursor, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT tx, seq FROM webhook_dispatch", &[])
        .await?;
    Ok(EventCursor {
        tx: row.get(0),
        seq: row.get(1),
    })
}

/// A delivery claimed by [`claim`]: what to send, and the lease to record it under.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub webhook_id: Uuid,
    pub event_id: i64,
    pub lease: Uuid,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub url: String,
    pub secret: String,
    pub event: super::events::EventRecord,
}

/// Claims up to `limit` due deliveries of active subscriptions (`FOR UPDATE SKIP LOCKED`, so
/// deliverers on other instances take others), leasing each for `lease_ms`: it is not due
/// again until then, and its attempt is counted now (an attempt cut off by a crash counts).
pub async fn claim(
    client: &impl GenericClient,
    limit: i64,
    lease_ms: i64,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH due AS (
                 SELECT d.webhook_id, d.event_seq
                 FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id AND w.active
                 WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                 ORDER BY d.next_attempt_at
                 LIMIT $1
                 FOR UPDATE OF d SKIP LOCKED
             )
             UPDATE webhook_deliveries d
             SET attempts = d.attempts + 1, lease = gen_random_uuid(),
                 next_attempt_at = now() + $2::float8 * interval '1 millisecond'
             FROM due, webhooks w, events e
             WHERE d.webhook_id = due.webhook_id AND d.event_seq = due.event_seq
               AND w.id = d.webhook_id AND e.seq = d.event_seq
             RETURNING d.webhook_id, d.event_seq, d.lease, d.attempts, w.url, w.secret,
                       e.tx::text::bigint, e.stream, e.type, e.payload, e.created_at, e.user_a, e.user_b",
            &[&limit, &(lease_ms as f64)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Claimed {
            webhook_id: row.get(0),
            event_id: row.get(1),
            lease: row.get(2),
            attempt: row.get(3),
            url: row.get(4),
            secret: row.get(5),
            event: super::events::EventRecord {
                id: row.get(1),
                cursor: EventCursor {
                    tx: row.get(6),
                    seq: row.get(1),
                },
                stream: row.get(7),
                kind: row.get(8),
                accounts: super::events::accounts_of(&row.get(9)),
                payload: row.get(9),
                created_at: row.get(10),
                owners: [row.get(11), row.get(12)],
            },
        })
        .collect())
}

/// How one attempt ended, to record.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    /// A 2xx.
    Delivered { status_code: u16 },
    /// Another status, or no answer (`status_code` `None`: the error says why).
    Failed {
        status_code: Option<u16>,
        error: String,
        /// When the next attempt is due, milliseconds from now; `None`: give up (the last
        /// attempt).
        retry_in_ms: Option<i64>,
    },
}

/// What [`record_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    /// Failed; will be tried again.
    Retrying,
    /// Failed for the last time.
    GaveUp,
    /// The lease was taken over (or the subscription deleted): nothing recorded.
    Stale,
}

/// Records the outcome of a claimed attempt under its lease, in one transaction. A failure
/// counts towards the subscription's run of failures; the one that reaches
/// `disable_after_failures` disables it and writes its `webhook.disabled` event (stream
/// `webhook:<id>`, payload naming the owner so that they see it) and an audit entry, in the
/// same transaction. A success ends the run. Returns what was recorded and whether this
/// disabled the subscription.
pub async fn record_attempt(
    client: &mut deadpool_postgres::Client,
    claimed: &Claimed,
    outcome: &AttemptOutcome,
    disable_after_failures: i32,
) -> Result<(Recorded, bool), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let (status, status_code, error, retry_in_ms) = match outcome {
        AttemptOutcome::Delivered { status_code } => ("delivered", Some(*status_code), None, None),
        AttemptOutcome::Failed {
            status_code,
            error,
            retry_in_ms,
        } => (
            if retry_in_ms.is_some() {
                "pending"
            } else {
                "failed"
            },
            *status_code,
            Some(error.as_str()),
            *retry_in_ms,
        ),
    };
    let updated = transaction
        .execute(
            "UPDATE webhook_deliveries
             SET status = $4, last_status_code = $5, last_error = $6, lease = NULL,
                 delivered_at = CASE WHEN $4 = 'delivered' THEN now() END,
                 next_attempt_at = now() + coalesce($7::float8, 0) * interval '1 millisecond'
             WHERE webhook_id = $1 AND event_seq = $2 AND lease = $3 AND status = 'pending'",
            &[
                &claimed.webhook_id,
                &claimed.event_id,
                &claimed.lease,
                &status,
                &status_code.map(i32::from),
                &error,
                &retry_in_ms.map(|ms| ms as f64),
            ],
        )
        .await?;
    if updated == 0 {
        return Ok((Recorded::Stale, false));
    }
    if status == "delivered" {
        transaction
            .execute(
                "UPDATE webhooks SET consecutive_failures = 0
                 WHERE id = $1 AND consecutive_failures <> 0",
                &[&claimed.webhook_id],
            )
            .await?;
        transaction.commit().await?;
        return Ok((Recorded::Delivered, false));
    }
    let row = transaction
        .query_one(
            "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1
             WHERE id = $1 RETURNING consecutive_failures, active, user_id, url",
            &[&claimed.webhook_id],
        )
        .await?;
    let (failures, active, owner, url): (i32, bool, Uuid, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let disabled = active && failures >= disable_after_failures;
    if disabled {
        transaction
            .execute(
                "UPDATE webhooks SET active = false, disabled_at = now() WHERE id = $1",
                &[&claimed.webhook_id],
            )
            .await?;
        let details = json!({
            "webhook_id": claimed.webhook_id,
            "user_id": owner,
            "url": url,
            "consecutive_failures": failures,
            "last_status_code": status_code,
            "last_error": error,
        });
        super::limits::record_event(
            &transaction,
            &format!("webhook:{}", claimed.webhook_id),
            "webhook.disabled",
            &details,
        )
        .await?;
        super::audit::record(
            &transaction,
            super::audit::AuditEntry {
                entity_type: "webhook",
                entity_id: Some(claimed.webhook_id.to_string()),
                action: "webhook.disabled",
                actor: None,
                details: &details,
            },
        )
        .await?;
    }
    transaction.commit().await?;
    let recorded = if retry_in_ms.is_some() {
        Recorded::Retrying
    } else {
        Recorded::GaveUp
    };
    Ok((recorded, disabled))
}

/// Deliveries pending across all instances (the gauge).
pub async fn pending_count(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
            &[],
        )
        .await?
        .get(0))
}
