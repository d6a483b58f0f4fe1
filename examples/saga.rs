//! An order service that pays its supplier through Tally as a saga, over RabbitMQ only
//! (DESIGN.md section 12): hold the money, do its own step, then post the hold or void it (the
//! compensation).
//!
//! The story: for each order, the order service (a Tally user that Tally's operator lists in
//! `amqp.service_users`) pays the supplier the order's amount from its own account, but only if
//! the warehouse ships the order. Money and shipping cannot share one database transaction, so
//! the payment is made in two phases with a hold in between:
//!
//! ```text
//!  order service                        RabbitMQ                              Tally
//!  ─────────────                        ────────                              ─────
//!  transfer + hold ─── message_id order:<id>:hold ──► tally.requests ──► hold (pending)
//!                                                                             │ event log
//!  warehouse ships? ◄── hold.created (reference order:<id>) ◄── tally.events ◄┘
//!     yes: post  ──── message_id order:<id>:post ──► tally.requests ──► hold posted: paid
//!     no:  void  ──── message_id order:<id>:void ──► tally.requests ──► hold voided: cancelled
//!  order done  ◄── hold.posted / hold.voided ◄────── tally.events
//!  rejected    ◄── transaction.failed (e.g. insufficient_funds), or a problem reply to the hold
//! ```
//!
//! - **Events decide.** The service moves an order forward only on Tally's events, published to
//!   the topic exchange `tally.events` (routing key = event type) and read from a queue of its
//!   own bound to `hold.#` and `transaction.failed`: `hold.created` runs the warehouse step and
//!   publishes the post or the void; `hold.posted`, `hold.voided`, `hold.expired` and
//!   `transaction.failed` end the order. Only events of the service's own holds count (payer =
//!   the service user, reference `order:<id>`).
//! - **Replies inform.** Every request names a reply queue. A problem reply (`tally-status`
//!   4xx/5xx) ends the order: refused hold → `rejected`, refused post or void → `failed` (a person
//!   has to look). A successful reply may end an order too, because it shows the hold as it is
//!   now: the post's reply is the posting (so the hold is posted), the void's reply is the voided
//!   hold. Above all, a replayed hold request (a second run with the same orders) is answered with
//!   the hold's current status, whose events an earlier run consumed: `posted` → `paid`, `voided`
//!   → `cancelled`, a recorded refusal → `rejected`. A replayed hold that is still `pending` (a
//!   run that stopped between the hold and its resolution) runs the warehouse step as
//!   `hold.created` would, when the reply says it is a replay (header `tally-replayed`).
//! - **Idempotent.** Each request's AMQP `message_id` is Tally's idempotency key
//!   (`order:<id>:hold|post|void`), so a redelivered or re-sent request is applied once; events
//!   are delivered at least once and de-duplicated by event `id`; an event is acknowledged only
//!   after what it caused (the post or void) is confirmed by the broker. Running the saga again
//!   with the same orders changes nothing in Tally and reports the same outcomes.
//! - **Bounded.** The whole run gives up after `--timeout-s`; orders still open then are
//!   reported as `timed out`, naming what they waited for.
//!
//! Tally lets only the payee of a transfer hold (here the supplier), or an admin, post or void
//! it: the service user must have the admin role for its post and void to be accepted
//! (otherwise they are answered 403 and the order ends `failed`).
//!
//! The saga declares the requests queue and the events exchange as Tally does (durable, no
//! arguments), so it may start before Tally: its requests wait in the queue. Run it against a
//! Tally started with `TALLY__AMQP__URL=amqp://guest:guest@127.0.0.1:5672/%2f` and
//! `TALLY__AMQP__SERVICE_USERS=<service user id or username>` (ingestion and event publishing
//! are on by default):
//!
//! ```sh
//! cargo run --example saga -- \
//!     --service-user 0190c6a2-... --supplier 0190c6a3-... --currency USD \
//!     --order A:3000:ok --order B:2500:fail --order C:4000:ok
//! ```
//!
//! It prints one line per order, e.g. `order A: paid (3000 USD, hold 0190c6b1-...)`, and exits
//! with status 1 when an order `failed` or `timed out`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

/// Routing keys of the events the saga reads (topic patterns on `tally.events`).
const EVENT_BINDINGS: [&str; 2] = ["hold.#", "transaction.failed"];

/// Events delivered and not yet acknowledged at most.
const EVENTS_PREFETCH: u16 = 64;

/// What one run does and where.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// The broker, `amqp://user:password@host:port/vhost`.
    pub amqp_url: String,
    /// The order service's Tally user: it pays, and every request acts as it
    /// (`acting_user_id`); Tally must list it in `amqp.service_users`.
    pub service_user: Uuid,
    /// The supplier's Tally user, who is paid.
    pub supplier: Uuid,
    /// ISO 4217 code of the orders' amounts.
    pub currency: String,
    pub orders: Vec<Order>,
    /// Tally's queue of requests (`amqp.requests_queue`).
    pub requests_queue: String,
    /// Tally's topic exchange of events (`amqp.events_exchange`).
    pub events_exchange: String,
    /// A durable queue of this name collects the events between runs; `None`: a private
    /// queue that lives as long as the run.
    pub events_queue: Option<String>,
    /// How long a hold waits for its post or void before Tally releases it, seconds.
    pub hold_timeout_s: u32,
    /// The whole run's budget; orders still open after it are reported as timed out.
    pub timeout: Duration,
}

/// An order id: 1 to 64 characters from `[A-Za-z0-9_-]`, so that the reference `order:<id>`
/// and the message ids `order:<id>:<step>` are valid in Tally and can be read back unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderId(String);

impl OrderId {
    pub fn parse(text: &str) -> anyhow::Result<OrderId> {
        let valid = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        anyhow::ensure!(
            valid,
            "an order id is 1 to 64 characters of letters, digits, '_' or '-', not {text:?}"
        );
        Ok(OrderId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hold's `reference` in Tally, which `hold.created` and `transaction.failed` carry.
    fn reference(&self) -> String {
        format!("order:{}", self.0)
    }

    /// The AMQP `message_id` (Tally's idempotency key, and the reply's correlation id) of this
    /// order's request for `step`.
    fn message_id(&self, step: Step) -> String {
        format!("order:{}:{}", self.0, step.as_str())
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One order: what the supplier is owed for it, and whether the warehouse will ship it (the
/// stand-in for the service's own step, fixed so that a run is deterministic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    /// In minor units of [`SagaConfig::currency`], > 0.
    pub amount_minor: i64,
    pub ships: bool,
}

impl FromStr for Order {
    type Err = anyhow::Error;

    /// `<id>:<amount in minor units>:<ok|fail>`, e.g. `A:3000:ok`.
    fn from_str(spec: &str) -> anyhow::Result<Order> {
        let mut parts = spec.split(':');
        let (Some(id), Some(amount), Some(shipping), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("an order is <id>:<amount>:<ok|fail>, not {spec:?}");
        };
        let amount_minor: i64 = amount
            .parse()
            .ok()
            .filter(|amount| *amount > 0)
            .with_context(|| format!("the amount of {spec:?} is not a positive integer"))?;
        let ships = match shipping {
            "ok" => true,
            "fail" => false,
            other => bail!("the shipping of {spec:?} is `ok` or `fail`, not {other:?}"),
        };
        Ok(Order {
            id: OrderId::parse(id)?,
            amount_minor,
            ships,
        })
    }
}

/// How an order ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The warehouse shipped and the hold was posted: the supplier has the money.
    Paid,
    /// The warehouse could not ship and the hold was voided (the compensation): nothing moved.
    Cancelled,
    /// Tally refused the hold; `reason` is its failure reason or problem code (e.g.
    /// `insufficient_funds`).
    Rejected { reason: String },
    /// The hold reached its deadline before it was posted or voided; nothing moved.
    Expired,
    /// Tally refused the post or the void (`reason`: status, code and detail); the hold may
    /// still be pending and a person has to decide.
    Failed { reason: String },
    /// The run's budget ran out while the order waited for `waiting_for`.
    TimedOut { waiting_for: &'static str },
}

impl Outcome {
    /// Whether the saga reached an end Tally and the service agree on (everything but a
    /// failure or a timeout).
    pub fn is_settled(&self) -> bool {
        !matches!(self, Outcome::Failed { .. } | Outcome::TimedOut { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Paid => f.write_str("paid"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::Rejected { reason } => write!(f, "rejected ({reason})"),
            Outcome::Expired => f.write_str("expired"),
            Outcome::Failed { reason } => write!(f, "failed ({reason})"),
            Outcome::TimedOut { waiting_for } => write!(f, "timed out waiting for {waiting_for}"),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct OrderOutcome {
    pub order: Order,
    /// The hold's transaction id, once Tally named it.
    pub hold_id: Option<Uuid>,
    pub outcome: Outcome,
}

/// Runs the saga for every order of `config` and returns their outcomes, in the orders' order.
///
/// Requests wait in `requests_queue` until Tally consumes them, so Tally need not be up first
/// (the run's timeout still counts).
///
/// Errors: the broker cannot be reached, refuses a declaration (a queue or exchange of that
/// name exists with other properties), refuses or cannot route a request, or cancels a
/// consumer. Tally's refusals are outcomes, not errors.
pub async fn run(config: SagaConfig) -> anyhow::Result<Vec<OrderOutcome>> {
    let connection = Connection::connect(&config.amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to the broker at {}", redacted(&config.amqp_url)))?;
    let result = run_on(&connection, &config).await;
    // A connection that is already gone (the error above, perhaps) has nothing left to close.
    if let Err(error) = connection.close(200, "saga done".into()).await {
        tracing::debug!(%error, "closing the broker connection");
    }
    result
}

async fn run_on(connection: &Connection, config: &SagaConfig) -> anyhow::Result<Vec<OrderOutcome>> {
    let deadline = Instant::now() + config.timeout;
    let publisher = connection
        .create_channel()
        .await
        .context("open the publishing channel")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("turn on publisher confirms")?;
    let consumer = connection
        .create_channel()
        .await
        .context("open the consuming channel")?;
    consumer
        .basic_qos(EVENTS_PREFETCH, BasicQosOptions::default())
        .await
        .context("set the events prefetch")?;

    // Declared as Tally declares it, so that requests published before Tally consumes wait
    // in it rather than come back unroutable.
    publisher
        .queue_declare(
            config.requests_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declare the requests queue {}", config.requests_queue))?;
    // The events queue is bound before the first request is published, so that no event of
    // this run's holds can pass unseen.
    let events_queue = bind_events_queue(&consumer, config).await?;
    let mut events = consumer
        .basic_consume(
            events_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consume the events queue {events_queue}"))?;
    let reply_queue = consumer
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declare the reply queue")?
        .name()
        .to_string();
    let mut replies = consumer
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consume the reply queue")?;

    let mut saga = Saga::new(config, publisher.clone(), reply_queue);
    for index in 0..saga.orders.len() {
        saga.request_hold(index).await?;
    }
    while saga.open_orders() > 0 {
        tokio::select! {
            event = events.next() => {
                let delivery = event
                    .context("the broker cancelled the events consumer")?
                    .context("receive an event")?;
                saga.on_event(&delivery).await?;
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .context("acknowledge an event")?;
            }
            reply = replies.next() => {
                let delivery = reply
                    .context("the broker cancelled the reply consumer")?
                    .context("receive a reply")?;
                saga.on_reply(&delivery).await?;
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let outcomes = saga.finish();
    // Closed here rather than dropped: what a drop closes (a channel, its consumers) is closed
    // by a task that may run after the connection closed, which lapin logs as an error.
    for channel in [consumer, publisher] {
        channel
            .close(200, "saga done".into())
            .await
            .context("close a channel")?;
    }
    Ok(outcomes)
}

/// Declares the events exchange (as Tally does: a durable topic exchange, so whichever of the
/// two starts first creates it) and this run's queue bound to [`EVENT_BINDINGS`]; returns the
/// queue's name.
async fn bind_events_queue(channel: &Channel, config: &SagaConfig) -> anyhow::Result<String> {
    channel
        .exchange_declare(
            config.events_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declare the events exchange {}", config.events_exchange))?;
    let options = match &config.events_queue {
        Some(_) => QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        None => QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
    };
    let name = config.events_queue.as_deref().unwrap_or("");
    let queue = channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .context("declare the events queue")?
        .name()
        .to_string();
    for binding in EVENT_BINDINGS {
        channel
            .queue_bind(
                queue.as_str().into(),
                config.events_exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!("bind {queue} to {} with {binding}", config.events_exchange)
            })?;
    }
    Ok(queue)
}

/// The requests the saga sends for an order; the last part of their message ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Hold,
    Post,
    Void,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Hold => "hold",
            Step::Post => "post",
            Step::Void => "void",
        }
    }

    fn parse(text: &str) -> Option<Step> {
        match text {
            "hold" => Some(Step::Hold),
            "post" => Some(Step::Post),
            "void" => Some(Step::Void),
            _ => None,
        }
    }
}

/// Where an order stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// The hold is requested; waiting for `hold.created` or a refusal.
    AwaitingHold,
    /// The warehouse step ran and `Step::Post` or `Step::Void` is requested; waiting for the
    /// hold's end.
    Resolving(Step),
    Done(Outcome),
}

struct OrderState {
    order: Order,
    hold_id: Option<Uuid>,
    stage: Stage,
}

/// The run's state: one owner (the loop in [`run_on`]), reached by its methods.
struct Saga<'a> {
    config: &'a SagaConfig,
    publisher: Channel,
    reply_queue: String,
    orders: Vec<OrderState>,
    /// `order:<id>` → index into `orders`.
    by_reference: HashMap<String, usize>,
    /// The hold's transaction id → index into `orders` (the end events carry no reference).
    by_hold: HashMap<Uuid, usize>,
    /// Events already handled. Grows with the events of one run, which the timeout bounds.
    seen_events: HashSet<i64>,
}

/// The part of a Tally event the saga reads.
#[derive(Debug, Deserialize)]
struct Event {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
    payload: Value,
}

impl<'a> Saga<'a> {
    fn new(config: &'a SagaConfig, publisher: Channel, reply_queue: String) -> Saga<'a> {
        let orders: Vec<OrderState> = config
            .orders
            .iter()
            .map(|order| OrderState {
                order: order.clone(),
                hold_id: None,
                stage: Stage::AwaitingHold,
            })
            .collect();
        let by_reference = orders
            .iter()
            .enumerate()
            .map(|(index, state)| (state.order.id.reference(), index))
            .collect();
        Saga {
            config,
            publisher,
            reply_queue,
            orders,
            by_reference,
            by_hold: HashMap::new(),
            seen_events: HashSet::new(),
        }
    }

    fn open_orders(&self) -> usize {
        self.orders
            .iter()
            .filter(|state| !matches!(state.stage, Stage::Done(_)))
            .count()
    }

    fn finish(self) -> Vec<OrderOutcome> {
        self.orders
            .into_iter()
            .map(|state| OrderOutcome {
                outcome: match state.stage {
                    Stage::Done(outcome) => outcome,
                    Stage::AwaitingHold => Outcome::TimedOut {
                        waiting_for: "the hold",
                    },
                    Stage::Resolving(Step::Void) => Outcome::TimedOut {
                        waiting_for: "the void",
                    },
                    Stage::Resolving(_) => Outcome::TimedOut {
                        waiting_for: "the post",
                    },
                },
                order: state.order,
                hold_id: state.hold_id,
            })
            .collect()
    }

    /// Step 1: the transfer with a hold, from the service user to the supplier.
    async fn request_hold(&mut self, index: usize) -> anyhow::Result<()> {
        let order = &self.orders[index].order;
        let mut body = hold_request_body(self.config, order);
        body["type"] = json!("transfer");
        body["acting_user_id"] = json!(self.config.service_user);
        self.publish(&order.id.message_id(Step::Hold), &body).await
    }

    /// Step 2, once the hold exists: the warehouse ships or cannot, and the hold is posted or
    /// voided accordingly. Only from `AwaitingHold`, so a redelivered `hold.created` does
    /// nothing.
    async fn resolve(&mut self, index: usize, hold_id: Uuid) -> anyhow::Result<()> {
        if self.orders[index].stage != Stage::AwaitingHold {
            return Ok(());
        }
        self.by_hold.insert(hold_id, index);
        let state = &mut self.orders[index];
        state.hold_id = Some(hold_id);
        let step = if warehouse_ships(&state.order) {
            Step::Post
        } else {
            Step::Void
        };
        state.stage = Stage::Resolving(step);
        let message_id = state.order.id.message_id(step);
        tracing::info!(order = %state.order.id, %hold_id, step = step.as_str(), "hold created");
        let body = json!({
            "type": step.as_str(),
            "acting_user_id": self.config.service_user,
            "transaction_id": hold_id,
        });
        self.publish(&message_id, &body).await
    }

    /// Ends the order at `index` with `outcome`, unless it has ended already (the first word
    /// on an order wins: an event and a reply often say the same thing).
    fn conclude(&mut self, index: usize, outcome: Outcome) {
        let state = &mut self.orders[index];
        if let Stage::Done(_) = state.stage {
            return;
        }
        tracing::info!(order = %state.order.id, %outcome, "order done");
        state.stage = Stage::Done(outcome);
    }

    /// Publishes a request to Tally and waits for the broker to confirm it took it.
    async fn publish(&self, message_id: &str, body: &Value) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(body).context("encode a request")?;
        let properties = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_correlation_id(message_id.into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirmation = self
            .publisher
            .basic_publish(
                "".into(),
                self.config.requests_queue.as_str().into(),
                // Mandatory: a request no queue takes comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await
            .with_context(|| format!("publish {message_id}"))?
            .await
            .with_context(|| format!("wait for the broker to confirm {message_id}"))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => bail!(
                "the broker has no queue {:?} for {message_id} (deleted while the saga ran?)",
                self.config.requests_queue
            ),
            Confirmation::Nack(_) => bail!("the broker refused {message_id}"),
            Confirmation::NotRequested => {
                bail!("the broker did not confirm {message_id} (publisher confirms are off)")
            }
        }
    }

    /// Handles one event from `tally.events`. Events of other payers, other references or
    /// other types are ignored; so is a redelivered event.
    async fn on_event(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        let event: Event = match serde_json::from_slice(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, routing_key = %delivery.routing_key, "an event that is not Tally's shape; skipped");
                return Ok(());
            }
        };
        if !self.seen_events.insert(event.id) {
            tracing::debug!(event = event.id, "redelivered event skipped");
            return Ok(());
        }
        let payload = &event.payload;
        let hold_id = payload["id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok());
        match event.kind.as_str() {
            "hold.created" => {
                if let (Some(index), Some(hold_id)) = (self.own_order(payload), hold_id) {
                    self.resolve(index, hold_id).await?;
                }
            }
            "hold.posted" | "hold.voided" | "hold.expired" => {
                let Some(&index) = hold_id.as_ref().and_then(|id| self.by_hold.get(id)) else {
                    return Ok(());
                };
                let outcome = match event.kind.as_str() {
                    "hold.posted" => Outcome::Paid,
                    "hold.voided" => Outcome::Cancelled,
                    _ => Outcome::Expired,
                };
                self.conclude(index, outcome);
            }
            "transaction.failed" => {
                if let Some(index) = self.own_order(payload) {
                    if self.orders[index].stage == Stage::AwaitingHold {
                        let reason = payload["failure_reason"]
                            .as_str()
                            .unwrap_or("failed")
                            .to_owned();
                        self.conclude(index, Outcome::Rejected { reason });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The order a transaction's payload belongs to: paid by the service user, with the
    /// reference of one of this run's orders.
    fn own_order(&self, payload: &Value) -> Option<usize> {
        let payer = payload["from_user_id"].as_str()?;
        if Uuid::parse_str(payer).ok()? != self.config.service_user {
            return None;
        }
        self.by_reference
            .get(payload["reference"].as_str()?)
            .copied()
    }

    /// Handles one reply from Tally (see the module docs for what a reply may decide).
    async fn on_reply(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        let properties = &delivery.properties;
        let correlation = properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str())
            .unwrap_or_default();
        let Some((index, step)) = self.request_of(correlation) else {
            tracing::warn!(correlation, "a reply to no request of this run; skipped");
            return Ok(());
        };
        let body: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        let status = header(properties, "tally-status").and_then(integer);
        let is_problem = status.map_or_else(
            || {
                properties.content_type().as_ref().map(|t| t.as_str())
                    == Some("application/problem+json")
            },
            |status| status >= 400,
        );
        if is_problem {
            self.on_problem(index, step, status, &body);
            return Ok(());
        }
        let replayed = header(properties, "tally-replayed").is_some_and(is_true);
        tracing::debug!(correlation, ?status, replayed, "reply");
        match step {
            Step::Hold => {
                let Some(hold_id) = body["id"].as_str().and_then(|id| Uuid::parse_str(id).ok())
                else {
                    tracing::warn!(correlation, %body, "a hold reply without an id");
                    return Ok(());
                };
                self.orders[index].hold_id = Some(hold_id);
                self.by_hold.insert(hold_id, index);
                match body["status"].as_str().unwrap_or_default() {
                    // A fresh hold waits for its `hold.created`; a replayed one was created by
                    // an earlier run, whose event is gone.
                    "pending" if replayed => self.resolve(index, hold_id).await?,
                    "posted" => self.conclude(index, Outcome::Paid),
                    "voided" => self.conclude(index, Outcome::Cancelled),
                    "expired" => self.conclude(index, Outcome::Expired),
                    _ => {}
                }
            }
            // The posting transaction exists, so the hold is posted.
            Step::Post => self.conclude(index, Outcome::Paid),
            Step::Void => {
                if body["status"] == "voided" {
                    self.conclude(index, Outcome::Cancelled);
                }
            }
        }
        Ok(())
    }

    /// A problem reply: a refused hold rejects the order; a post or void refused because the
    /// hold has already ended tells how it ended; any other refusal of them, and any 5xx (Tally
    /// dead-lettered the request and applied nothing known), fails the order.
    fn on_problem(&mut self, index: usize, step: Step, status: Option<i64>, problem: &Value) {
        let code = problem["code"].as_str().unwrap_or("unknown");
        tracing::warn!(order = %self.orders[index].order.id, step = step.as_str(), ?status, %problem, "problem reply");
        let server_error = status.is_some_and(|status| status >= 500);
        let outcome = match (step, code, problem["hold_status"].as_str()) {
            (Step::Hold, _, _) if !server_error => Outcome::Rejected {
                reason: code.to_owned(),
            },
            (_, "hold_not_pending", Some("posted")) => Outcome::Paid,
            (_, "hold_not_pending", Some("voided")) => Outcome::Cancelled,
            (_, "hold_not_pending", Some("expired")) => Outcome::Expired,
            _ => Outcome::Failed {
                reason: format!(
                    "{} refused: {} {code}: {}",
                    step.as_str(),
                    status.map_or_else(|| "?".to_owned(), |status| status.to_string()),
                    problem["detail"].as_str().unwrap_or_default()
                ),
            },
        };
        self.conclude(index, outcome);
    }

    /// The order and step of a correlation id `order:<id>:<step>`.
    fn request_of(&self, correlation: &str) -> Option<(usize, Step)> {
        let (reference, step) = correlation.rsplit_once(':')?;
        Some((*self.by_reference.get(reference)?, Step::parse(step)?))
    }
}

/// The body of `order`'s hold as the REST request `POST /api/v1/transactions/transfer` takes
/// it; the message adds `type` and `acting_user_id`. Its idempotency key is
/// `order:<id>:hold`, and a request with that key must carry exactly this body.
pub fn hold_request_body(config: &SagaConfig, order: &Order) -> Value {
    json!({
        "to_user_id": config.supplier,
        "amount": order.amount_minor,
        "currency": config.currency,
        "reference": order.id.reference(),
        "description": format!("supplier payment for order {}", order.id),
        "hold": {"timeout_s": config.hold_timeout_s},
    })
}

/// The order service's own step, the stand-in for the warehouse: it ships the order or cannot.
/// Fixed by the order's spec (`ok` or `fail`) so that a run is deterministic.
fn warehouse_ships(order: &Order) -> bool {
    order.ships
}

fn header<'p>(properties: &'p BasicProperties, name: &str) -> Option<&'p AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// An AMQP header as an integer, whatever integer type the publisher chose.
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongString(text) => text.to_string().parse().ok(),
        AMQPValue::ShortString(text) => text.as_str().parse().ok(),
        _ => None,
    }
}

/// An AMQP header that says yes: `true`, or the text `true`.
fn is_true(value: &AMQPValue) -> bool {
    match value {
        AMQPValue::Boolean(yes) => *yes,
        AMQPValue::LongString(text) => text.to_string() == "true",
        AMQPValue::ShortString(text) => text.as_str() == "true",
        _ => false,
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Parser)]
#[command(about = "An order service paying its supplier through Tally as a saga over RabbitMQ")]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The order service's Tally user id (listed in Tally's `amqp.service_users`).
    #[arg(long)]
    service_user: Uuid,
    /// The supplier's Tally user id.
    #[arg(long)]
    supplier: Uuid,
    #[arg(long, default_value = "USD")]
    currency: String,
    /// `<id>:<amount in minor units>:<ok|fail>` (whether the warehouse ships it); repeatable.
    #[arg(long = "order", required = true)]
    orders: Vec<Order>,
    #[arg(long, default_value = "tally.requests")]
    requests_queue: String,
    #[arg(long, default_value = "tally.events")]
    events_exchange: String,
    /// A durable queue that keeps the events between runs; default: a private queue per run.
    #[arg(long)]
    events_queue: Option<String>,
    /// How long a hold waits for its post or void, seconds.
    #[arg(long, default_value_t = 300)]
    hold_timeout_s: u32,
    /// Give up on the orders still open after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let outcomes = run(SagaConfig {
        amqp_url: args.amqp_url,
        service_user: args.service_user,
        supplier: args.supplier,
        currency: args.currency.clone(),
        orders: args.orders,
        requests_queue: args.requests_queue,
        events_exchange: args.events_exchange,
        events_queue: args.events_queue,
        hold_timeout_s: args.hold_timeout_s,
        timeout: Duration::from_secs(args.timeout_s),
    })
    .await?;
    for line in &outcomes {
        let hold = line
            .hold_id
            .map_or_else(|| "no hold".to_owned(), |id| format!("hold {id}"));
        println!(
            "order {}: {} ({} {}, {hold})",
            line.order.id, line.outcome, line.order.amount_minor, args.currency
        );
    }
    if !outcomes.iter().all(|line| line.outcome.is_settled()) {
        std::process::exit(1);
    }
    Ok(())
}
