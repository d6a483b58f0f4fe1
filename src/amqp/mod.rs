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
//! Readiness reports the connections (`"amqp"`), and `tally_amqp_connected{role}` exports them.

pub mod cdc;
pub mod ingest;

use std::sync::atomic::{AtomicBool, Ordering};
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

/// Whether each role's connection is up (open, topology declared), for readiness and metrics.
#[derive(Debug, Default)]
pub struct BrokerStatus {
    enabled: AtomicBool,
    ingest: AtomicBool,
    cdc: AtomicBool,
}

impl BrokerStatus {
    /// The status of an instance whose `amqp.url` is set (`enabled`) or not.
    pub fn new(enabled: bool) -> BrokerStatus {
        BrokerStatus {
            enabled: AtomicBool::new(enabled),
            ..BrokerStatus::default()
        }
    }

    fn flag(&self, role: Role) -> &AtomicBool {
        match role {
            Role::Ingest => &self.ingest,
            Role::Cdc => &self.cdc,
        }
    }

    pub(crate) fn set(&self, role: Role, connected: bool) {
        self.flag(role).store(connected, Ordering::Relaxed);
        metrics::gauge!(names::AMQP_CONNECTED, "role" => role.as_str()).set(if connected {
            1.0
        } else {
            0.0
        });
    }

    pub fn connected(&self, role: Role) -> bool {
        self.flag(role).load(Ordering::Relaxed)
    }

    /// What readiness shows: `disabled` (no `amqp.url`), `connected` (every running role is
    /// connected) or `reconnecting`. The publisher's connection counts only on the instance
    /// that holds the publishing lock, so `ingest` decides when ingestion runs.
    pub fn readiness(&self, ingest: bool) -> &'static str {
        if !self.enabled.load(Ordering::Relaxed) {
            "disabled"
        } else if !ingest || self.connected(Role::Ingest) {
            "connected"
        } else {
            "reconnecting"
        }
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
    fn readiness_names_the_ingestion_connection() {
        let status = BrokerStatus::new(false);
        assert_eq!(status.readiness(true), "disabled");
        let status = BrokerStatus::new(true);
        assert_eq!(status.readiness(true), "reconnecting");
        assert_eq!(status.readiness(false), "connected");
        status.set(Role::Ingest, true);
        assert_eq!(status.readiness(true), "connected");
    }
}
