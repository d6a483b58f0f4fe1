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
//! `payload` is the stored JSON text, byte for byte (`payload::text`: the column is `json`
//! since migration V14, kept exactly as its writer built it, so sealing reads bytes instead of
//! printing a `jsonb` value; payloads stored as `jsonb` before V14 kept the text `jsonb`
//! printed). `accounts` is derived from the payload, so it is covered too.
//!
//! Events are sealed after they commit, by [`seal`]: one sealer at a time across all instances
//! (a transaction-scoped advisory lock), so the posting path never waits for hashing. Each seal
//! is one `event_seals` row (migration V13): the cursor of its last event, how many events it
//! covers and their links, so sealing writes one row per batch, not one per event. A sealed
//! link is never rewritten; [`verify`] recomputes the chain and names the first link that does
//! not match what is stored.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use super::events::{EventCursor, AFTER_CURSOR, IN_CURSOR_ORDER};

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
    /// `payload::text`: the stored JSON text, byte for byte.
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

/// Bytes of one link.
const LINK: usize = 32;

fn link_at(links: &[u8], index: usize) -> [u8; LINK] {
    links[index * LINK..(index + 1) * LINK]
        .try_into()
        .expect("a seal holds whole links")
}

/// One stored seal: the events after the previous seal up to and including `last`, and their
/// links in cursor order.
struct Seal {
    last: EventCursor,
    links: Vec<u8>,
}

impl Seal {
    fn from_row(row: &tokio_postgres::Row) -> Seal {
        Seal {
            last: EventCursor {
                tx: row.get(0),
                seq: row.get(1),
            },
            links: row.get(2),
        }
    }

    fn len(&self) -> usize {
        self.links.len() / LINK
    }
}

/// The last sealed link: its cursor and hash (`None` before the first seal).
async fn last_link(
    client: &impl GenericClient,
) -> Result<Option<(EventCursor, [u8; 32])>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT s.last_tx::text::bigint, s.last_seq, substring(s.links FROM length(s.links) - 31)
             FROM event_seals s ORDER BY s.last_tx DESC, s.last_seq DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map(|row| {
        let seal = Seal::from_row(&row);
        (seal.last, link_at(&seal.links, 0))
    }))
}

/// The seal after the one that ends at `after` (`None` after the last).
async fn next_seal(
    client: &impl GenericClient,
    after: EventCursor,
) -> Result<Option<Seal>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT s.last_tx::text::bigint, s.last_seq, s.links FROM event_seals s
             WHERE (s.last_tx, s.last_seq) > ($1::bigint::text::xid8, $2)
             ORDER BY s.last_tx, s.last_seq LIMIT 1",
            &[&after.tx, &after.seq],
        )
        .await?;
    Ok(row.as_ref().map(Seal::from_row))
}

/// Up to `limit` events after `after` in cursor order, of finished transactions only (the
/// rule of `events::AFTER_CURSOR`), with what the chain covers.
async fn events_after(
    client: &impl GenericClient,
    after: EventCursor,
    limit: i64,
) -> Result<Vec<ChainedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT e.tx::text::bigint AS tx, e.seq, e.stream, e.type, e.created_at,
                        e.payload::text AS payload
                 FROM events e
                 WHERE {AFTER_CURSOR} {IN_CURSOR_ORDER} LIMIT $3"
            ),
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
    let mut links = Vec::with_capacity(events.len() * LINK);
    for event in &events {
        link = event.link(&link);
        links.extend_from_slice(&link);
    }
    let last = events.last().expect("not empty").cursor;
    let count = i32::try_from(events.len()).expect("a seal is bounded by `events.seal_batch`");
    transaction
        .execute(
            "INSERT INTO event_seals (last_tx, last_seq, events, links)
             VALUES ($1::bigint::text::xid8, $2, $3, $4)",
            &[&last.tx, &last.seq, &count, &links],
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
/// inserted after it was sealed, a stored link changed, or a seal that does not end where its
/// events do. The stored links, seal after seal, are matched one for one with the events in
/// cursor order; the events after the last link are unsealed. Run it inside one snapshot (a
/// `REPEATABLE READ` transaction) on a live database, or the log can grow between pages.
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
    // The seal whose links are being matched, and the next of them.
    let mut seal = next_seal(client, EventCursor::default()).await?;
    let mut index = 0;
    loop {
        let events = events_after(client, after, page).await?;
        let Some(last) = events.last() else { break };
        after = last.cursor;
        for event in &events {
            let broken = |detail: String| BrokenLink {
                seq: event.cursor.seq,
                cursor: event.cursor,
                detail,
            };
            let Some(current) = &seal else {
                report.unsealed += 1;
                continue;
            };
            let stored = link_at(&current.links, index);
            let computed = event.link(&link);
            if stored != computed {
                report.broken = Some(broken(format!(
                    "stored link {} but the chain computes {}: the event or an earlier one \
                     was changed, removed or inserted after it was sealed",
                    hex::encode(stored),
                    hex::encode(computed)
                )));
                return Ok(report);
            }
            link = computed;
            report.sealed += 1;
            index += 1;
            if index == current.len() {
                if event.cursor != current.last {
                    report.broken = Some(broken(format!(
                        "this is the last link of the seal that ends at cursor {}: the seal \
                         does not end where its events do",
                        current.last
                    )));
                    return Ok(report);
                }
                seal = next_seal(client, current.last).await?;
                index = 0;
            }
        }
    }
    if let Some(current) = seal {
        // Links are left over: sealed events are gone from the end of the log.
        report.broken = Some(BrokenLink {
            seq: current.last.seq,
            cursor: current.last,
            detail: format!(
                "{} sealed links have no event: events were removed after they were sealed",
                current.len() - index
            ),
        });
    }
    Ok(report)
}
