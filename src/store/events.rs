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
    /// The accounts it touches: `[{user_id, currency}]` (`currency` null for an event about
    /// a user), derived from the payload by the database (migration V11).
    pub accounts: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl EventRecord {
    /// The users whose accounts the event touches.
    pub fn users(&self) -> impl Iterator<Item = uuid::Uuid> + '_ {
        self.accounts
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|account| account.get("user_id")?.as_str()?.parse().ok())
    }
}

const COLUMNS: &str =
    "e.tx::text::bigint, e.seq, e.stream, e.type, e.payload, e.created_at, e.accounts";

fn record(row: &tokio_postgres::Row) -> EventRecord {
    EventRecord {
        id: row.get(1),
        cursor: EventCursor {
            tx: row.get(0),
            seq: row.get(1),
        },
        stream: row.get(2),
        kind: row.get(3),
        payload: row.get(4),
        created_at: row.get(5),
        accounts: row.get(6),
    }
}

/// Which events a page holds: those touching `user`'s accounts (every event when `None`), of
/// the given `types` (every type when `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub user: Option<uuid::Uuid>,
    pub types: Option<&'a [String]>,
}

/// Up to `limit` events of `scope` after `after`, oldest first, of transactions that have all
/// finished (the rule of [`read_after`]). A user's events are paged on the `event_users`
/// index (migration V11), never by filtering the whole log.
pub async fn read_page(
    client: &impl GenericClient,
    after: EventCursor,
    limit: i64,
    scope: Scope<'_>,
) -> Result<Vec<EventRecord>, tokio_postgres::Error> {
    let rows = match scope.user {
        Some(user) => {
            let statement = format!(
                "SELECT {COLUMNS} FROM event_users u JOIN events e ON e.seq = u.seq
                     WHERE u.user_id = $4
                       AND (u.tx, u.seq) > ($1::bigint::text::xid8, $2)
                       AND u.tx < pg_snapshot_xmin(pg_current_snapshot())
                       AND ($5::text[] IS NULL OR e.type = ANY($5))
                     ORDER BY u.tx, u.seq
                     LIMIT $3"
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
                     WHERE (e.tx, e.seq) > ($1::bigint::text::xid8, $2)
                       AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
                       AND ($4::text[] IS NULL OR e.type = ANY($4))
                     ORDER BY e.tx, e.seq
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
            "SELECT EXISTS (SELECT 1 FROM events e
                 WHERE e.tx >= pg_snapshot_xmin(pg_current_snapshot()))",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The live position: the cursor of the last event of a finished transaction (`0.0` for an
/// empty log). Every event that commits later comes after it (the rule of [`read_after`]).
pub async fn live_position(
    client: &impl GenericClient,
) -> Result<EventCursor, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT e.tx::text::bigint, e.seq FROM events e
                 WHERE e.tx < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY e.tx DESC, e.seq DESC
                 LIMIT 1",
            &[],
        )
        .await?;
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
