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
    pub cursor: EventCursor,
    pub stream: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` events after `after`, oldest first (in cursor order), of transactions that
/// have all finished. An empty page means nothing more is final yet.
pub async fn read_after(
    client: &impl GenericClient,
    after: EventCursor,
    limit: i64,
) -> Result<Vec<EventRecord>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT tx::text::bigint, seq, stream, type, payload, created_at FROM events
             WHERE (tx, seq) > ($1::bigint::text::xid8, $2)
               AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY tx, seq
             LIMIT $3",
            &[&after.tx, &after.seq, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| EventRecord {
            cursor: EventCursor {
                tx: row.get(0),
                seq: row.get(1),
            },
            stream: row.get(2),
            kind: row.get(3),
            payload: row.get(4),
            created_at: row.get(5),
        })
        .collect())
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
