//! The hub: the actor that owns every feed connection of an instance, by user (seed 001's "a
//! hub with the connections of each user"), and gives each event to the connections it
//! concerns.
//!
//! **Invariants:**
//! - A connection's buffer holds at most `feed.buffer_messages` events; when an event does not
//!   fit, the connection is closed as too slow ([`CloseCause::Slow`]) rather than buffered
//!   further, so memory never grows with a slow client.
//! - Events are handed over in the order the tailer publishes them, which is cursor order, and a
//!   connection that went live at position `p` ([`GoLive`]) is given every event after `p`.
//! - The position moves without publishing ([`Skip`]) only while no connection is live, so
//!   the tailer reads the log only for an instance that has listeners.
//! - At most `feed.max_connections` connections, and `feed.max_connections_per_user` per user,
//!   are registered; the decision is the actor's, so concurrent upgrades cannot both take the
//!   last place.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::{CloseCause, Delivery, Frame, Refusal};
use crate::config::FeedSettings;
use crate::store::events::EventCursor;
use crate::telemetry::names;

/// The connections of one instance.
pub struct Hub {
    buffer_messages: usize,
    max_connections: usize,
    max_connections_per_user: usize,
    /// Every registered connection, live or still catching up.
    connections: HashMap<u64, Entry>,
    /// The live connections of each non-admin user.
    by_user: HashMap<Uuid, Vec<u64>>,
    /// The live connections of admins (who get every event).
    admins: Vec<u64>,
    /// Registered connections per user (live or not), for the per-user cap.
    per_user: HashMap<Uuid, usize>,
    /// The cursor of the last event published (the tailer's start before the first): a
    /// connection that goes live now is given every event after it.
    position: EventCursor,
    /// Woken when the first connection goes live: the tailer, idle while nobody listens
    /// ([`Skip`]), follows the log again from the hub's position.
    listening: Arc<Notify>,
    next_id: u64,
    shutting_down: bool,
}

struct Entry {
    user: Uuid,
    admin: bool,
    live: bool,
    deliveries: mpsc::Sender<Delivery>,
    close: oneshot::Sender<CloseCause>,
}

impl Hub {
    /// A hub whose position is `start` (the live position when the tailer starts); it wakes
    /// `listening` when the first connection goes live.
    pub fn new(settings: &FeedSettings, start: EventCursor, listening: Arc<Notify>) -> Hub {
        Hub {
            buffer_messages: settings.buffer_messages,
            max_connections: settings.max_connections,
            max_connections_per_user: settings.max_connections_per_user,
            connections: HashMap::new(),
            by_user: HashMap::new(),
            admins: Vec::new(),
            per_user: HashMap::new(),
            position: start,
            listening,
            next_id: 0,
            shutting_down: false,
        }
    }

    /// Whether any connection is live (given events as they are published).
    fn anyone_live(&self) -> bool {
        !self.by_user.is_empty() || !self.admins.is_empty()
    }

    /// Forgets connection `id`; tells it why when `cause` is given (it may be gone already).
    fn remove(&mut self, id: u64, cause: Option<CloseCause>) {
        let Some(entry) = self.connections.remove(&id) else {
            return;
        };
        metrics::gauge!(names::FEED_CONNECTIONS).decrement(1.0);
        if let Some(count) = self.per_user.get_mut(&entry.user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&entry.user);
            }
        }
        if entry.live {
            let list = if entry.admin {
                &mut self.admins
            } else {
                self.by_user.entry(entry.user).or_default()
            };
            list.retain(|other| *other != id);
            if !entry.admin && list.is_empty() {
                self.by_user.remove(&entry.user);
            }
        }
        if let Some(cause) = cause {
            if cause == CloseCause::Slow {
                metrics::counter!(names::FEED_SLOW_CLOSES).increment(1);
            }
            // The connection may have ended meanwhile; then there is nobody to tell.
            let _ = entry.close.send(cause);
        }
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The tailer waits for each page to be taken (`send`), so the mailbox stays short.
        ctx.set_mailbox_capacity(64);
    }
}

/// A new connection of `user`: registered (counted against the caps) but not live until
/// [`GoLive`].
#[derive(Message)]
#[rtype(result = "Result<Registration, Refusal>")]
pub struct Connect {
    pub user: Uuid,
    pub admin: bool,
}

/// What a registered connection reads: its events and, once, why the hub ended it.
pub struct Registration {
    pub id: u64,
    pub deliveries: mpsc::Receiver<Delivery>,
    pub close: oneshot::Receiver<CloseCause>,
}

impl Handler<Connect> for Hub {
    type Result = Result<Registration, Refusal>;

    fn handle(&mut self, message: Connect, _: &mut Context<Self>) -> Self::Result {
        let refusal = if self.shutting_down {
            Some(Refusal::ShuttingDown)
        } else if self.connections.len() >= self.max_connections {
            Some(Refusal::InstanceCap)
        } else if self.per_user.get(&message.user).copied().unwrap_or(0)
            >= self.max_connections_per_user
        {
            Some(Refusal::UserCap)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            metrics::counter!(names::FEED_REFUSED, "reason" => refusal.as_str()).increment(1);
            return Err(refusal);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (deliveries, receiver) = mpsc::channel(self.buffer_messages);
        let (close, close_receiver) = oneshot::channel();
        self.connections.insert(
            id,
            Entry {
                user: message.user,
                admin: message.admin,
                live: false,
                deliveries,
                close,
            },
        );
        *self.per_user.entry(message.user).or_default() += 1;
        metrics::gauge!(names::FEED_CONNECTIONS).increment(1.0);
        Ok(Registration {
            id,
            deliveries: receiver,
            close: close_receiver,
        })
    }
}

/// Connection `id` is given every event published from now on; answers the position it starts
/// after (`None` when the connection was ended meanwhile).
#[derive(Message)]
#[rtype(result = "Option<EventCursor>")]
pub struct GoLive {
    pub id: u64,
}

impl Handler<GoLive> for Hub {
    type Result = Option<EventCursor>;

    fn handle(&mut self, message: GoLive, _: &mut Context<Self>) -> Self::Result {
        let first = !self.anyone_live();
        let entry = self.connections.get_mut(&message.id)?;
        if !entry.live {
            entry.live = true;
            if entry.admin {
                self.admins.push(message.id);
            } else {
                self.by_user.entry(entry.user).or_default().push(message.id);
            }
            if first {
                self.listening.notify_one();
            }
        }
        Some(self.position)
    }
}

/// Connection `id` has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub id: u64,
}

impl Handler<Disconnect> for Hub {
    type Result = ();

    fn handle(&mut self, message: Disconnect, _: &mut Context<Self>) {
        self.remove(message.id, None);
    }
}

/// Events read by the tailer, in cursor order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub frames: Vec<Frame>,
}

impl Handler<Publish> for Hub {
    type Result = ();

    fn handle(&mut self, message: Publish, _: &mut Context<Self>) {
        let mut slow = Vec::new();
        for frame in message.frames {
            debug_assert!(
                frame.cursor > self.position,
                "events arrive in cursor order"
            );
            self.position = frame.cursor;
            let targets = frame
                .users
                .iter()
                .filter_map(|user| self.by_user.get(user))
                .flatten()
                .chain(&self.admins);
            for id in targets {
                let Some(entry) = self.connections.get(id) else {
                    continue;
                };
                let delivery = Delivery {
                    cursor: frame.cursor,
                    text: frame.text.clone(),
                };
                match entry.deliveries.try_send(delivery) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => slow.push(*id),
                    // The connection ended and its `Disconnect` is on its way.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            // Ended at once: a later event must not reach a connection that missed this one.
            for id in slow.drain(..) {
                self.remove(id, Some(CloseCause::Slow));
            }
        }
    }
}

/// The tailer found the log at `to` (a live position: every event at or before it is final,
/// every later one commits after the read) and asks to move there without publishing what lies
/// between. Granted (`true`, and the hub's position becomes `to`) only while no connection is
/// live: then nobody is owed those events, and a connection that goes live later starts after
/// `to` and catches up from the log. Refused (`false`) otherwise; the tailer then reads and
/// publishes them as usual. A granted tailer idles until the first connection goes live (the
/// hub wakes it) or its poll interval passes.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Skip {
    pub to: EventCursor,
}

impl Handler<Skip> for Hub {
    type Result = bool;

    fn handle(&mut self, message: Skip, _: &mut Context<Self>) -> bool {
        if self.anyone_live() {
            return false;
        }
        debug_assert!(message.to >= self.position, "the log only grows");
        self.position = self.position.max(message.to);
        true
    }
}

/// The instance shuts down: every connection is told to close (1001) and new ones are refused.
/// Answers how many were open.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

impl Handler<Shutdown> for Hub {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> usize {
        self.shutting_down = true;
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        let open = ids.len();
        for id in ids {
            self.remove(id, Some(CloseCause::GoingAway));
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> FeedSettings {
        FeedSettings {
            heartbeat_s: 30,
            buffer_messages: 4,
            max_connections: 10,
            max_connections_per_user: 2,
            ticket_ttl_s: 30,
            poll_interval_ms: 1000,
        }
    }

    fn at(seq: i64) -> EventCursor {
        EventCursor { tx: seq, seq }
    }

    #[actix_web::test]
    async fn the_position_moves_without_publishing_only_while_nobody_is_live() {
        let listening = Arc::new(Notify::new());
        let hub = Hub::new(&settings(), at(1), listening.clone()).start();
        assert!(
            hub.send(Skip { to: at(5) }).await.unwrap(),
            "nobody connected"
        );

        // Registered but still catching up: not live, nobody is owed events yet.
        let user = Uuid::now_v7();
        let registration = hub
            .send(Connect { user, admin: false })
            .await
            .unwrap()
            .unwrap();
        assert!(hub.send(Skip { to: at(7) }).await.unwrap());

        // Live: it starts after the position the tailer skipped to, the tailer is woken, and
        // no further skip is granted while it is live.
        let position = hub
            .send(GoLive {
                id: registration.id,
            })
            .await
            .unwrap();
        assert_eq!(position, Some(at(7)));
        tokio::time::timeout(std::time::Duration::from_secs(5), listening.notified())
            .await
            .expect("the first live connection wakes the tailer");
        assert!(!hub.send(Skip { to: at(9) }).await.unwrap());

        // Gone: skipping is allowed again.
        hub.send(Disconnect {
            id: registration.id,
        })
        .await
        .unwrap();
        assert!(hub.send(Skip { to: at(9) }).await.unwrap());
    }
}
