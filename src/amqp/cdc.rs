//! Change data capture: the event log published to the `amqp.events_exchange` topic exchange
//! (DESIGN.md section 12).
//!
//! Each event is one persistent message: routing key = the event type (`transaction.completed`,
//! `hold.created`, ...; bind with `hold.#` or `#`), `message_id` = the event id (what consumers
//! de-duplicate by), `type` = the event type, header `tally-cursor` = its cursor, and the body
//! of `GET /api/v1/events` for one event. Events go out in cursor order.
//!
//! **At least once, without gaps.** The publisher reads a page after its cursor (only events of
//! finished transactions, so nothing can commit behind it: `store::events`), publishes it with
//! publisher confirms, waits for every confirm, and only then stores the page's last cursor in
//! `cdc_cursors` (migration V15). A crash, a nack or a lost connection before that publishes the
//! page again from the stored cursor, so an event may arrive twice, never not at all.
//!
//! **One publisher per exchange.** Every instance runs this task; the one holding a
//! session-level advisory lock on its own database connection publishes, the others try again
//! every [`STANDBY_RETRY`]. PostgreSQL releases the lock when that connection ends (a crash
//! included), and another instance takes over from the stored cursor.
//!
//! **Lag.** `tally_cdc_lag_events` is the number of events after the stored cursor (counted up
//! to [`LAG_COUNT_MAX`]), measured at most every [`LAG_PERIOD`] by the publishing instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, ExchangeKind};

use super::{BrokerStatus, Role};
use crate::config::Settings;
use crate::routes::events::EventBody;
use crate::store::events::{self, EventCursor, EventRecord};
use crate::telemetry::names;

/// The header of every published event with its cursor (`"<tx>.<seq>"`).
pub const HEADER_CURSOR: &str = "tally-cursor";
/// How often an instance that does not hold the publishing lock tries to take it.
pub const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// How often the publisher counts its lag.
const LAG_PERIOD: Duration = Duration::from_secs(1);
/// The lag is counted up to this many events (a bounded index range, whatever the backlog).
pub const LAG_COUNT_MAX: i64 = 100_000;
/// The longest wait for a page's confirms before it counts as failed (a broker under a memory
/// alarm blocks publishers instead of refusing them).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes until `stop` turns true, reconnecting (to the database and the broker) after any
/// failure; see the module docs. Runs on every instance with `amqp.url` set and
/// `amqp.publish_events` on.
pub async fn run(
    settings: Settings,
    status: Arc<BrokerStatus>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = super::Backoff::new(settings.amqp.reconnect_max());
    loop {
        // After a failure the gauge keeps the lag last measured (each attempt measures it again
        // as soon as it holds the lock), so a broker outage shows as a growing lag, not as 0.
        let result = publish(&settings, &status, &mut backoff, &mut stop).await;
        match result {
            Ok(()) => {
                metrics::gauge!(names::CDC_LAG_EVENTS).set(0.0);
                return;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "the event publisher stopped; reconnecting")
            }
        }
        if super::wait_or_stop(backoff.step(), &mut stop).await {
            return;
        }
    }
}

/// The advisory lock key of the publisher of `exchange`.
const LOCK_KEY: &str = "SELECT hashtextextended('tally.cdc:' || $1, 0)";

/// One session: takes the lock (or waits for it), connects to the broker and publishes until
/// stopped (`Ok`) or something fails (`Err`).
async fn publish(
    settings: &Settings,
    status: &BrokerStatus,
    backoff: &mut super::Backoff,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let amqp = &settings.amqp;
    let exchange = amqp.events_exchange.as_str();
    let (client, connection) =
        crate::store::connect_dedicated(&settings.database, crate::store::CDC_APP_NAME).await?;
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "the event publisher's database connection failed");
        }
        let _ = closed_tx.send(());
    });
    let _driver = AbortOnDrop(driver);
    let key: i64 = client.query_one(LOCK_KEY, &[&exchange]).await?.get(0);
    loop {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if locked {
            break;
        }
        // Another instance publishes (and reports the lag).
        metrics::gauge!(names::CDC_LAG_EVENTS).set(0.0);
        backoff.reset();
        if super::wait_or_stop(STANDBY_RETRY, stop).await {
            return Ok(());
        }
    }
    tracing::info!(exchange, "publishing the event log");
    client
        .execute(
            "INSERT INTO cdc_cursors (exchange) VALUES ($1) ON CONFLICT (exchange) DO NOTHING",
            &[&exchange],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT tx, seq FROM cdc_cursors WHERE exchange = $1",
            &[&exchange],
        )
        .await?;
    let cursor = EventCursor {
        tx: row.get(0),
        seq: row.get(1),
    };
    // Measured before the broker is reached: while it cannot be, the lag shows it.
    measure_lag(&client, cursor).await?;

    let broker = super::connect(&amqp.url, Role::Cdc).await?;
    let result = publish_on(
        settings,
        (&client, &mut closed),
        &broker,
        cursor,
        status,
        backoff,
        stop,
    )
    .await;
    super::close(&broker).await;
    result
}

/// Sets `tally_cdc_lag_events` to the events after `cursor` (up to [`LAG_COUNT_MAX`]).
async fn measure_lag(
    client: &tokio_postgres::Client,
    cursor: EventCursor,
) -> Result<(), tokio_postgres::Error> {
    let lag: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM events e WHERE {} LIMIT {LAG_COUNT_MAX}) AS behind",
                events::AFTER_CURSOR
            ),
            &[&cursor.tx, &cursor.seq],
        )
        .await?
        .get(0);
    metrics::gauge!(names::CDC_LAG_EVENTS).set(lag as f64);
    Ok(())
}

/// Publishes on `broker` from the stored cursor until stopped (`Ok`) or something fails
/// (`Err`), while this session holds the lock.
async fn publish_on(
    settings: &Settings,
    (client, closed): (
        &tokio_postgres::Client,
        &mut tokio::sync::oneshot::Receiver<()>,
    ),
    broker: &lapin::Connection,
    mut cursor: EventCursor,
    status: &BrokerStatus,
    backoff: &mut super::Backoff,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let amqp = &settings.amqp;
    let exchange = amqp.events_exchange.as_str();
    let channel = broker.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _up = status.up(Role::Cdc);
    backoff.reset();

    let mut lag_measured = Instant::now();
    loop {
        // Checked on every page, so that catching up on a long log stops in time too.
        if *stop.borrow() {
            return Ok(());
        }
        let page = events::read_after(client, cursor, i64::from(amqp.publish_batch)).await?;
        let full = page.len() >= amqp.publish_batch as usize;
        if let Some(last) = page.last() {
            let last = last.cursor;
            // A page not confirmed in time (a blocked broker) or cut short (a stop, the lock's
            // session gone) is published again from the stored cursor, by whoever holds the
            // lock then; nothing of it was stored.
            tokio::select! {
                published = tokio::time::timeout(PUBLISH_TIMEOUT, publish_page(&channel, exchange, page)) => {
                    published.map_err(|_| anyhow::anyhow!("the broker confirmed no page within {PUBLISH_TIMEOUT:?}"))??;
                }
                _ = &mut *closed => anyhow::bail!("the database connection closed"),
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    return Ok(());
                },
            }
            client
                .execute(
                    "UPDATE cdc_cursors SET tx = $2, seq = $3, updated_at = now() WHERE exchange = $1",
                    &[&exchange, &last.tx, &last.seq],
                )
                .await?;
            cursor = last;
        }
        if lag_measured.elapsed() >= LAG_PERIOD {
            measure_lag(client, cursor).await?;
            lag_measured = Instant::now();
        }
        if broker.status().errored() || !broker.status().connected() {
            anyhow::bail!("the broker connection closed");
        }
        // A full page goes on at once; otherwise wait for the next poll (or a stop).
        if !full {
            tokio::select! {
                () = tokio::time::sleep(amqp.poll_interval()) => {}
                _ = &mut *closed => anyhow::bail!("the database connection closed"),
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    return Ok(());
                },
            }
        }
    }
}

/// Publishes `page` in order and waits for every confirm.
///
/// Errors: a publish failed, or the broker nacked any event (the page is published again).
async fn publish_page(
    channel: &lapin::Channel,
    exchange: &str,
    page: Vec<EventRecord>,
) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(page.len());
    for event in page {
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_CURSOR.into(),
            AMQPValue::LongString(event.cursor.to_string().into()),
        );
        let properties = BasicProperties::default()
            .with_message_id(event.id.to_string().into())
            .with_type(event.kind.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(event.created_at.timestamp()).unwrap_or(0))
            .with_headers(headers);
        let routing_key = event.kind.clone();
        let body = serde_json::to_vec(&EventBody::from(event))?;
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?,
        );
    }
    let (mut acked, mut nacked) = (0u64, 0u64);
    for confirm in confirms {
        match confirm.await? {
            Confirmation::Nack(_) => nacked += 1,
            _ => acked += 1,
        }
    }
    metrics::counter!(names::CDC_CONFIRMS, "result" => "ack").increment(acked);
    if nacked > 0 {
        metrics::counter!(names::CDC_CONFIRMS, "result" => "nack").increment(nacked);
        anyhow::bail!("the broker nacked {nacked} events; publishing them again");
    }
    Ok(())
}

/// Aborts the task when dropped (the database connection's driver ends with its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
