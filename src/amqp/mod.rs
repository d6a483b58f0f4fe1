//! Message-queue ingestion and change data capture over RabbitMQ (AMQP 0-9-1; DESIGN.md
//! section 12). Both run only when `amqp.url` is set, each on a connection of its own, and each
//! reconnects on its own with a doubling backoff (100 ms up to `amqp.reconnect_max_ms`):
//!
//! - [`ingest`]: consumes transaction requests from `amqp.requests_queue` and puts each through
//!   the handler of the REST request it carries (one posting path, invariant 8), acknowledging it
//!   only after its answer is known and its reply is confirmed by the broker; the AMQP
//!   `message_id` is the idempotency key, so a redelivered message applies nothing twice.
//! - [`cdc`]: publishes the event log to the `amqp.events_exchange` topic exchange with
//!   publisher confirms, at least once and in cursor order, from the cursor stored in
//!   `cdc_cursors`; one publisher per exchange at a time across instances.
//!
//! Neither is on the posting path: a broker that is down never fails or slows a REST request.
//! Readiness reports the ingestion consumers' connections (`"amqp"`); `tally_amqp_connected{role}`
//! exports both roles, and `tally_cdc_lag_events` keeps growing while the publisher is cut off.

pub mod cdc;
pub mod ingest;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::telemetry::names;

/// The first wait before reconnecting; it doubles up to `amqp.reconnect_max_ms`.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// How long opening a connection (TCP, handshake, topology) may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's role, the `role` label of `tally_amqp_connected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Cdc,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Cdc => "cdc",
        }
    }
}

/// How many of each role's connections are up (open, topology declared), for readiness and
/// `tally_amqp_connected`.
#[derive(Debug, Default)]
pub struct BrokerStatus {
    enabled: bool,
    /// Ingestion consumers configured (`amqp.consumers`, 0 when ingestion is off).
    consumers: usize,
    ingest: AtomicUsize,
    cdc: AtomicUsize,
}

impl BrokerStatus {
    /// The status of an instance whose `amqp.url` is set (`enabled`) or not, running
    /// `consumers` ingestion consumers.
    pub fn new(enabled: bool, consumers: usize) -> BrokerStatus {
        BrokerStatus {
            enabled,
            consumers,
            ..BrokerStatus::default()
        }
    }

    fn count(&self, role: Role) -> &AtomicUsize {
        match role {
            Role::Ingest => &self.ingest,
            Role::Cdc => &self.cdc,
        }
    }

    /// Counts a connection of `role` as up until the guard is dropped.
    pub(crate) fn up(&self, role: Role) -> Up<'_> {
        self.count(role).fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(names::AMQP_CONNECTED, "role" => role.as_str()).increment(1.0);
        Up { status: self, role }
    }

    /// This instance's connections of `role` that are up.
    pub fn connected(&self, role: Role) -> usize {
        self.count(role).load(Ordering::Relaxed)
    }

    /// What readiness shows: `disabled` (no `amqp.url`), `connected` (every ingestion consumer
    /// is connected, or ingestion is off) or `reconnecting`. The publisher's connection does not
    /// count: only the instance holding the publishing lock opens one.
    pub fn readiness(&self) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if self.connected(Role::Ingest) >= self.consumers {
            "connected"
        } else {
            "reconnecting"
        }
    }
}

/// A connection counted as up by [`BrokerStatus::up`], until dropped.
pub(crate) struct Up<'a> {
    status: &'a BrokerStatus,
    role: Role,
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.status.count(self.role).fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(names::AMQP_CONNECTED, "role" => self.role.as_str()).decrement(1.0);
    }
}

/// Opens a connection named `tally-<role>` (shown in the broker's management UI).
///
/// Errors: the broker cannot be reached or refuses the credentials, or this takes longer than
/// [`CONNECT_TIMEOUT`].
async fn connect(url: &str, role: Role) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("tally-{}", role.as_str()).into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))?
        .map_err(anyhow::Error::from)
}

/// How long closing a connection may take (a broken one may never answer).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `connection` (its unacknowledged deliveries go back to their queues), within
/// [`CLOSE_TIMEOUT`]; a connection that is already broken is simply dropped.
async fn close(connection: &Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "closing".into())).await;
}

/// The wait between attempts to reach the broker: doubling from [`RECONNECT_MIN`] to `max`, back
/// to the start once a connection works.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: RECONNECT_MIN,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = RECONNECT_MIN;
    }

    /// The wait before the next attempt (and doubles the one after).
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// Waits `wait`, or less when `stop` turns true (or its sender is gone). Returns whether to stop.
async fn wait_or_stop(wait: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.step().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.step(), RECONNECT_MIN);
    }

    #[test]
    fn readiness_waits_for_every_ingestion_consumer() {
        assert_eq!(BrokerStatus::new(false, 0).readiness(), "disabled");
        assert_eq!(BrokerStatus::new(true, 0).readiness(), "connected");
        let status = BrokerStatus::new(true, 2);
        assert_eq!(status.readiness(), "reconnecting");
        let first = status.up(Role::Ingest);
        let publisher = status.up(Role::Cdc);
        assert_eq!(status.readiness(), "reconnecting");
        let second = status.up(Role::Ingest);
        assert_eq!(status.readiness(), "connected");
        drop(first);
        assert_eq!(
            (
                status.readiness(),
                status.connected(Role::Ingest),
                status.connected(Role::Cdc)
            ),
            ("reconnecting", 1, 1)
        );
        drop((second, publisher));
        assert_eq!(status.connected(Role::Ingest), 0);
    }
}
