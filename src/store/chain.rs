//! The SHA-256 hash chain over the event log (DESIGN.md section 10, migration V11).
//!
//! Link `n` of the chain is `sha256(link(n-1) || canonical(event n))`, in cursor order, starting
//! from 32 zero bytes. The canonical bytes of an event are the UTF-8 text
//!
//! ```text
//! <seq>\n<tx>\n<stream>\n<type>\n<occurred_at>\n<payload>
//! ```
//!
//! where `occurred_at` is RFC 3339 in UTC with microseconds (`2026-11-29T17:50:52.123456Z`) and
//! `payload` is PostgreSQL's text form of the stored `jsonb` (keys sorted, no insignificant
//! whitespace: the same bytes for the same value, whoever wrote it). `accounts` is derived from
//! the payload, so it is covered too.
//!
//! Events are sealed after they commit, by [`seal`]: one sealer at a time across all instances
//! (a transaction-scoped advisory lock), so the posting path never waits for hashing. A sealed
//! link is never rewritten; [`verify`] recomputes the chain and names the first link that does
//! not match what is stored.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use super::events::EventCursor;

/// The advisory lock key that makes one sealer at a time (`'tally.chain'` in ASCII).
const SEALER_LOCK: i64 = 0x7461_6c6c_7963_6861;

/// The link before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of one stored event that the chain covers.
#[derive(Debug, Clone)]
pub struct ChainedEvent {
    pub cursor: EventCursor,
    pub stream: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    /// `payload::text`, as PostgreSQL prints the stored `jsonb`.
    pub payload: String,
}

impl ChainedEvent {
    /// The link that follows `previous` for this event.
    pub fn link(&self, previous: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(
            format!(
                "{}\n{}\n{}\n{}\n{}\n",
                self.cursor.seq,
                self.cursor.tx,
                self.stream,
                self.kind,
                self.occurred_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            )
            .as_bytes(),
        );
        hasher.update(self.payload.as_bytes());
        hasher.finalize().into()
    }
}

fn chained(row: &tokio_postgres::Row) -> ChainedEvent {
    ChainedEvent {
        cursor: EventCursor {
            tx: row.get("tx"),
            seq: row.get("seq"),
        },
        stream: row.get("stream"),
        kind: row.get("type"),
        occurred_at: row.get("created_at"),
        payload: row.get("payload"),
    }
}

/// The last sealed link: its cursor and hash (`None` before the first seal).
async fn last_link(
    client: &impl GenericClient,
) -> Result<Option<(EventCursor, [u8; 32])>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.tx::text::bigint, c.seq, c.hash FROM event_chain c ORDER BY c.tx DESC, c.seq DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map(|row| {
        let hash: Vec<u8> = row.get(2);
        let mut link = [0; 32];
        link.copy_from_slice(&hash);
        (
            EventCursor {
                tx: row.get(0),
                seq: row.get(1),
            },
            link,
        )
    }))
}

/// Up to `limit` events after `after` in cursor order, of finished transactions only (the
/// rule of `events::read_after`), with what the chain covers.
async fn events_after(
    client: &impl GenericClient,
    after: EventCursor,
    limit: i64,
) -> Result<Vec<ChainedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT e.tx::text::bigint AS tx, e.seq, e.stream, e.type, e.created_at,
                    e.payload::text AS payload
             FROM events e
             WHERE (e.tx, e.seq) > ($1::bigint::text::xid8, $2)
               AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY e.tx, e.seq
             LIMIT $3",
            &[&after.tx, &after.seq, &limit],
        )
        .await?;
    Ok(rows.iter().map(chained).collect())
}

/// Whether [`seal`] waits for another sealer or gives way to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contention {
    /// Return 0 at once when another sealer holds the lock (the background task).
    GiveWay,
    /// Wait for the other sealer to finish, then seal (tools and tests that need the chain
    /// to reach a point).
    Wait,
}

/// Seals up to `limit` events that follow the last sealed link, in one database transaction
/// holding the sealer lock. Returns how many it sealed (0 when none is waiting, or when
/// another sealer holds the lock and `contention` is [`Contention::GiveWay`]).
pub async fn seal(
    client: &mut tokio_postgres::Client,
    limit: i64,
    contention: Contention,
) -> Result<usize, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let locked = match contention {
        Contention::GiveWay => transaction
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SEALER_LOCK])
            .await?
            .get(0),
        Contention::Wait => {
            transaction
                .execute("SELECT pg_advisory_xact_lock($1)", &[&SEALER_LOCK])
                .await?;
            true
        }
    };
    if !locked {
        return Ok(0);
    }
    let (after, mut link) = last_link(&transaction)
        .await?
        .unwrap_or((EventCursor::default(), GENESIS));
    let events = events_after(&transaction, after, limit).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut seqs = Vec::with_capacity(events.len());
    let mut txs = Vec::with_capacity(events.len());
    let mut hashes = Vec::with_capacity(events.len());
    for event in &events {
        link = event.link(&link);
        seqs.push(event.cursor.seq);
        txs.push(event.cursor.tx);
        hashes.push(link.to_vec());
    }
    transaction
        .execute(
            "INSERT INTO event_chain (seq, tx, hash)
             SELECT seq, tx::text::xid8, hash FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])
                  AS sealed(seq, tx, hash)",
            &[&seqs, &txs, &hashes],
        )
        .await?;
    transaction.commit().await?;
    Ok(events.len())
}

/// Where the chain breaks: the first event whose stored link is not what the chain computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The event's id (`seq`) and cursor.
    pub seq: i64,
    pub cursor: EventCursor,
    /// What is wrong, in words.
    pub detail: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events whose links were recomputed and matched, up to the first broken one.
    pub sealed: u64,
    /// Finished events not sealed yet (after the last sealed link).
    pub unsealed: u64,
    /// The first link that does not match, if any.
    pub broken: Option<BrokenLink>,
}

/// Recomputes the chain over the whole log, in cursor order, `page` events at a time, and
/// stops at the first link that differs from the stored one: an event changed, removed or
/// inserted after it was sealed, a stored link changed, or an event left unsealed before a
/// sealed one. Run it inside one snapshot (a `REPEATABLE READ` transaction) on a live
/// database, or the log can grow between pages.
pub async fn verify(
    client: &impl GenericClient,
    page: i64,
) -> Result<ChainReport, tokio_postgres::Error> {
    let mut report = ChainReport {
        sealed: 0,
        unsealed: 0,
        broken: None,
    };
    let mut link = GENESIS;
    let mut after = EventCursor::default();
    let mut unsealed_from: Option<EventCursor> = None;
    loop {
        let rows = client
            .query(
                "SELECT e.tx::text::bigint AS tx, e.seq, e.stream, e.type, e.created_at,
                        e.payload::text AS payload, c.hash
                 FROM events e LEFT JOIN event_chain c ON c.tx = e.tx AND c.seq = e.seq
                 WHERE (e.tx, e.seq) > ($1::bigint::text::xid8, $2)
                   AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY e.tx, e.seq
                 LIMIT $3",
                &[&after.tx, &after.seq, &page],
            )
            .await?;
        let Some(last) = rows.last() else {
            return Ok(report);
        };
        after = chained(last).cursor;
        for row in &rows {
            let event = chained(row);
            let stored: Option<Vec<u8>> = row.get("hash");
            let broken = |detail: String| BrokenLink {
                seq: event.cursor.seq,
                cursor: event.cursor,
                detail,
            };
            let Some(stored) = stored else {
                unsealed_from.get_or_insert(event.cursor);
                report.unsealed += 1;
                continue;
            };
            if let Some(first) = unsealed_from {
                report.broken = Some(broken(format!(
                    "sealed, but the event at cursor {first} before it is not"
                )));
                return Ok(report);
            }
            let computed = event.link(&link);
            if stored.as_slice() != computed {
                report.broken = Some(broken(format!(
                    "stored link {} but the chain computes {}: the event or an earlier one \
                     was changed, removed or inserted after it was sealed",
                    hex::encode(&stored),
                    hex::encode(computed)
                )));
                return Ok(report);
            }
            link = computed;
            report.sealed += 1;
        }
    }
}
