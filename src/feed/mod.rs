//! The live feed (DESIGN.md section 10, `GET /api/v1/ws`): every event of the log pushed to the
//! WebSocket connections of the users whose accounts it touches, whichever instance committed
//! it.
//!
//! Two parts, both per instance:
//! - the [`tailer`]: one task on a connection of its own that `LISTEN`s on `tally_events`
//!   (migration V11 notifies on every commit that wrote events) and, on each notification and
//!   on a fallback timer, reads the log after its cursor (`store::events::read_after`, which
//!   only returns events of finished transactions, so nothing committing later is skipped) and
//!   hands each page to the hub, in cursor order;
//! - the [`hub`]: an actor that owns the connections of each user and gives every event to the
//!   bounded buffer of each connection it concerns (admins get every event). A buffer that is
//!   full closes its connection as too slow instead of growing.
//!
//! The WebSocket side (authentication, catch-up from a cursor, heartbeats, close codes) is in
//! `routes::feed`.

pub mod hub;
pub mod tailer;

pub use hub::{Connect, Disconnect, GoLive, Hub, Publish, Registration, Shutdown, Skip};

use bytestring::ByteString;

use crate::store::events::{EventCursor, EventRecord};

/// One event as the feed sends it: its cursor, the users it concerns and its wire text (the
/// JSON of `GET /events`' items, rendered once for every connection).
#[derive(Debug, Clone)]
pub struct Frame {
    pub cursor: EventCursor,
    /// Each user at most once.
    pub users: Vec<uuid::Uuid>,
    pub text: ByteString,
}

impl Frame {
    pub fn render(event: EventRecord) -> Frame {
        let mut users: Vec<uuid::Uuid> = event.users().collect();
        users.sort_unstable();
        users.dedup();
        let cursor = event.cursor;
        let body = crate::routes::events::EventBody::from(event);
        let text = serde_json::to_string(&body).expect("an event body always serializes");
        Frame {
            cursor,
            users,
            text: ByteString::from(text),
        }
    }
}

/// What waits in a connection's buffer: an event's cursor and text.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub cursor: EventCursor,
    pub text: ByteString,
}

/// Why the hub ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// Its buffer was full: the client did not keep up (close code 4008).
    Slow,
    /// The instance shuts down (close code 1001).
    GoingAway,
}

/// Why a connection is refused before the upgrade (`tally_feed_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `feed.max_connections` are open on this instance (503).
    InstanceCap,
    /// `feed.max_connections_per_user` of this user are open on this instance (429).
    UserCap,
    /// The instance is shutting down (503).
    ShuttingDown,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::InstanceCap,
        Refusal::UserCap,
        Refusal::ShuttingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InstanceCap => "instance_cap",
            Refusal::UserCap => "user_cap",
            Refusal::ShuttingDown => "shutting_down",
        }
    }
}
