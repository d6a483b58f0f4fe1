//! Reads of the event log (`events`), by cursor. Events are written only in the same database
//! transaction as the change they record (`store::journal`).
//!
//! The cursor is `(tx, seq)`: the id of the PostgreSQL transaction that wrote the event (xid8)
//! and its sequence number. A page holds only events of transactions below the reading
//! snapshot's xmin horizon, all of which have finished, so a reader that pages by cursor never
//! skips an event that commits later (invariant 12; migration V6 explains why `seq` alone
//! cannot be trusted).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// A position in the event log: after the event `(tx, seq)`. The start is `0.0`. On the wire it
/// is the opaque string `"<tx>.<seq>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventCursor {
    pub tx: i64,
    pub seq: i64,
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx, self.seq)
    }
}

/// A cursor string that is not `"<tx>.<seq>"` with two non-negative integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a cursor is two non-negative integers joined by a dot")]
pub struct CursorError;

impl FromStr for EventCursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<EventCursor, CursorError> {
        let (tx, seq) = text.split_once('.').ok_or(CursorError)?;
        let parse = |part: &str| {
            part.parse::<i64>()
                .ok()
                .filter(|value| *value >= 0 && part.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(CursorError)
        };
        Ok(EventCursor {
            tx: parse(tx)?,
            seq: parse(seq)?,
        })
    }
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The stable id (`seq`): unique, never reused; what consumers de-duplicate by.
    pub id: i64,
    pub cursor: EventCursor,
    pub stream: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The accounts it touches: `[{user_id, currency}]`, sorted (`currency` null for an event
    /// about a user); see [`accounts_of`].
    pub accounts: serde_json::Value,
    /// Whose event it is: the sender or the user it is about, and the recipient (migration
    /// V11's `user_a` and `user_b`, derived by the database from the payload).
    pub owners: [Option<uuid::Uuid>; 2],
    pub created_at: DateTime<Utc>,
}

impl EventRecord {
    /// The users whose event it is (the scope of `GET /events`, the feed and webhooks; admins
    /// see every event).
    pub fn users(&self) -> impl Iterator<Item = uuid::Uuid> + '_ {
        self.owners.iter().flatten().copied()
    }
}

/// The accounts an event touches, from its payload: every entry's account, the sender's in the
/// currency sent (`from_user_id`, `currency`), the recipient's in the currency received
/// (`to_user_id`, `to_currency` or else `currency`), and the account (or, without a
/// `currency`, the user) it is about (`user_id`); as `[{user_id, currency}]`, sorted, each
/// once.
pub fn accounts_of(payload: &serde_json::Value) -> serde_json::Value {
    fn text(value: Option<&serde_json::Value>) -> Option<&str> {
        value.and_then(serde_json::Value::as_str)
    }
    let mut accounts: Vec<(&str, Option<&str>)> = Vec::new();
    for entry in payload
        .get("entries")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(user) = text(entry.get("user_id")) {
            accounts.push((user, text(entry.get("currency"))));
        }
    }
    let currency = text(payload.get("currency"));
    for (key, currency) in [
        ("from_user_id", currency),
        ("to_user_id", text(payload.get("to_currency")).or(currency)),
        ("user_id", currency),
    ] {
        if let Some(user) = text(payload.get(key)) {
            accounts.push((user, currency));
        }
    }
    accounts.sort_unstable();
    accounts.dedup();
    accounts
        .into_iter()
        .map(|(user_id, currency)| serde_json::json!({"user_id": user_id, "currency": currency}))
        .collect()
}

/// The condition of every read of the log by cursor, on `events e`: events after the cursor
/// `($1, $2)` (`tx` as a bigint, `seq`) of transactions below the reading snapshot's xmin
/// horizon, all of which have finished, so that no event committing later can appear behind a
/// page already read (invariant 12; migration V6). Pair it with [`IN_CURSOR_ORDER`].
pub const AFTER_CURSOR: &str =
    "(e.tx, e.seq) > ($1::bigint::text::xid8, $2) AND e.tx < pg_snapshot_xmin(pg_current_snapshot())";

/// Cursor order, by the table's own columns: ordering by a `tx::text::bigint` output column
/// instead cannot use the cursor index, and sorts the whole range.
pub const IN_CURSOR_ORDER: &str = "ORDER BY e.tx, e.seq";

const COLUMNS: &str =
    "e.tx::text::bigint AS tx, e.seq, e.stream, e.type, e.payload, e.created_at, e.user_a, e.user_b";

fn record(row: &tokio_postgres::Row) -> EventRecord {
    let payload: serde_json::Value = row.get(4);
    EventRecord {
        id: row.get(1),
        cursor: EventCursor {
            tx: row.get(0),
            seq: row.get(1),
        },
        stream: row.get(2),
        kind: row.get(3),
        accounts: accounts_of(&payload),
        payload,
        created_at: row.get(5),
        owners: [row.get(6), row.get(7)],
    }
}

/// Which events a page holds: `user`'s (every event when `None`), of the given `types` (every
/// type when `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub user: Option<uuid::Uuid>,
    pub types: Option<&'a [String]>,
}

/// Up to `limit` events of `scope` after `after`, oldest first, of transactions that have all
/// finished (the rule of [`read_after`]). A user's events are two index ranges merged in cursor
/// order (`events_user_a_idx`, `events_user_b_idx`, migration V11), never a filter over the
/// whole log.
pub async fn read_page(
    client: &impl GenericClient,
    after: EventCursor,
    limit: i64,
    scope: Scope<'_>,
) -> Result<Vec<EventRecord>, tokio_postgres::Error> {
    let rows = match scope.user {
        Some(user) => {
            let range = |column: &str, also: &str| {
                format!(
                    "(SELECT {COLUMNS} FROM events e
                      WHERE e.{column} = $4 {also} AND {AFTER_CURSOR}
                        AND ($5::text[] IS NULL OR e.type = ANY($5))
                      {IN_CURSOR_ORDER}
                      LIMIT $3)"
                )
            };
            let statement = format!(
                "SELECT * FROM ({} UNION ALL {}) AS page ORDER BY tx, seq LIMIT $3",
                range("user_a", ""),
                // An event of a user to themself (an exchange) is in the first range.
                range("user_b", "AND e.user_a IS DISTINCT FROM $4"),
            );
            client
                .query(
                    &statement,
                    &[&after.tx, &after.seq, &limit, &user, &scope.types],
                )
                .await?
        }
        None => {
            let statement = format!(
                "SELECT {COLUMNS} FROM events e
                     WHERE {AFTER_CURSOR} AND ($4::text[] IS NULL OR e.type = ANY($4))
                     {IN_CURSOR_ORDER}
                     LIMIT $3"
            );
            client
                .query(&statement, &[&after.tx, &after.seq, &limit, &scope.types])
                .await?
        }
    };
    Ok(rows.iter().map(record).collect())
}

/// Up to `limit` events after `after`, oldest first (in cursor order), of transactions that
/// have all finished. An empty page means nothing more is final yet.
pub async fn read_after(
    client: &impl GenericClient,
    after: EventCursor,
    limit: i64,
) -> Result<Vec<EventRecord>, tokio_postgres::Error> {
    read_page(client, after, limit, Scope::default()).await
}

/// Whether committed events wait behind the xmin horizon: visible to this snapshot, but not yet
/// returned by [`read_after`] because an older transaction (of any database of the server) is
/// still open. Such events are readable as soon as it ends, which may notify nobody.
pub async fn waiting_behind_horizon(
    client: &impl GenericClient,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            // The newest event's tx, one step down the cursor index (a filter on `tx` alone
            // was planned as a scan of the whole log, and the feed asks this every 5 ms).
            "SELECT coalesce((SELECT e.tx FROM events e ORDER BY e.tx DESC LIMIT 1)
                             >= pg_snapshot_xmin(pg_current_snapshot()), false)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The query of [`live_position`], `(tx, seq)` of at most one row, for statements that need it
/// in their own snapshot (the webhook dispatcher's idle move).
pub const LIVE_POSITION: &str = "SELECT e.tx::text::bigint AS tx, e.seq FROM events e
     WHERE e.tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY e.tx DESC, e.seq DESC
     LIMIT 1";

/// The live position: the cursor of the last event of a finished transaction (`0.0` for an
/// empty log). Every event that commits later comes after it (the rule of [`read_after`]).
pub async fn live_position(
    client: &impl GenericClient,
) -> Result<EventCursor, tokio_postgres::Error> {
    let row = client.query_opt(LIVE_POSITION, &[]).await?;
    Ok(row.map_or_else(EventCursor::default, |row| EventCursor {
        tx: row.get(0),
        seq: row.get(1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = EventCursor { tx: 7_123, seq: 42 };
        assert_eq!(cursor.to_string().parse(), Ok(cursor));
        assert_eq!("0.0".parse(), Ok(EventCursor::default()));
        for bad in [
            "", "1", "1.", ".1", "-1.2", "1.-2", "1.2.3", "a.b", "+1.2", "1 .2",
        ] {
            assert_eq!(bad.parse::<EventCursor>(), Err(CursorError), "{bad:?}");
        }
    }
}
