//! Ingestion: transaction requests taken from `amqp.requests_queue` (DESIGN.md section 12).
//!
//! **A message** is one request: its body is the JSON body of the matching REST request plus
//! `type` (`credit`, `debit`, `transfer`, `exchange`, `post`, `void`, `reverse` or `bulk`),
//! `acting_user_id` (the user it acts as, one of `amqp.service_users`) and, for `post`, `void`
//! and `reverse`, `transaction_id` (the path's id). Its AMQP `message_id` is the idempotency key
//! (the `Idempotency-Key` header of the REST request), so it is required.
//!
//! **The path.** A request goes through the very handler of its REST endpoint (validation,
//! authorization, idempotency, the pipeline, the problems), called with the request it stands
//! for; only the transport differs. Its reply (the REST reply's body, with the status in the
//! `tally-status` header) goes to `reply_to`, when set, with the message's `correlation_id`
//! (its `message_id` when it has none).
//!
//! **Guarantees.**
//! - Acknowledged only after its answer is known (a 2xx is committed, invariant 3) and its reply
//!   or dead letter is confirmed by the broker. A message whose instance dies before that is
//!   delivered again, and its `message_id` makes the repeat a replay of the stored result
//!   (invariant 4): nothing is applied twice and the reply is sent again.
//! - Malformed messages (no usable `message_id`, a body that is not a JSON object, an unknown
//!   `type`, an acting user who is not a service identity, a missing `transaction_id`) and
//!   internal errors are moved to `amqp.dead_letter_queue` with the reason in the
//!   `tally-dead-letter-reason` header, and answered with a problem when they have a `reply_to`.
//!   A request that is well formed but refused (a bad field, `insufficient_funds`, ...) is
//!   answered like its REST request and acknowledged.
//! - Backpressure: a request the pipeline refuses as `overloaded` or `unavailable` (503) is held
//!   and tried again with a doubling wait; since at most `amqp.prefetch` messages per consumer
//!   are unacknowledged, consumption slows down to what the ledger takes. After
//!   [`BACKPRESSURE_ATTEMPTS`] it is handed back to the broker (requeued), never failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpMessage, ResponseError};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{BrokerStatus, Role};
use crate::auth::Principal;
use crate::config::AmqpSettings;
use crate::domain::IdempotencyKey;
use crate::error::ApiError;
use crate::routes::input::{BulkJsonObject, Fields, JsonObject};
use crate::routes::middleware::RequestId;
use crate::routes::posting::{IDEMPOTENCY_KEY, RESERVED_KEY_PREFIX};
use crate::routes::{bulk, fx, holds, reversals, transactions, AppState};
use crate::telemetry::names;

/// The header of a reply with the HTTP status of the REST reply it stands for (an integer).
pub const HEADER_STATUS: &str = "tally-status";
/// The header of a reply that repeats a stored result (`true`): the `Idempotent-Replayed` of
/// the REST reply.
pub const HEADER_REPLAYED: &str = "tally-replayed";
/// The header of a dead-lettered message with why it was not applied.
pub const HEADER_DEAD_LETTER_REASON: &str = "tally-dead-letter-reason";
/// Tries of a request the pipeline turned away (503) before it is handed back to the broker.
pub const BACKPRESSURE_ATTEMPTS: u32 = 12;
/// The first wait after a 503; it doubles up to [`BACKPRESSURE_WAIT_MAX`] (12 tries wait about
/// 6 s in all).
const BACKPRESSURE_WAIT_MIN: Duration = Duration::from_millis(10);
const BACKPRESSURE_WAIT_MAX: Duration = Duration::from_millis(1000);
/// How long a resolved service identity is trusted before it is read again. The commit checks
/// the acting user's existence and role again (as for an access token), so this only bounds how
/// long a user removed from the database keeps being accepted here before the commit refuses it.
const IDENTITY_TTL: Duration = Duration::from_secs(5);
/// How long a stop waits for the requests in flight to be answered before closing the
/// connection (whatever is left unacknowledged is delivered again).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The request types a message may carry.
const TYPES: [&str; 8] = [
    "credit", "debit", "transfer", "exchange", "post", "void", "reverse", "bulk",
];

/// One consumer: consumes requests until `stop` turns true, reconnecting after any failure (see
/// the module docs). Every instance with `amqp.url` set and `amqp.ingest` on runs
/// `amqp.consumers` of them, each on an arbiter of its own (`startup`).
pub async fn run(
    state: web::Data<AppState>,
    status: Arc<BrokerStatus>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let settings = state.settings.amqp.clone();
    let identities = Arc::new(Identities::new(&settings.service_users));
    let mut backoff = super::Backoff::new(settings.reconnect_max());
    loop {
        let result = consume(
            &state,
            &settings,
            &identities,
            &status,
            &mut backoff,
            &mut stop,
        )
        .await;
        match result {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "request ingestion lost the broker; reconnecting")
            }
        }
        if super::wait_or_stop(backoff.step(), &mut stop).await {
            return;
        }
    }
}

/// One connection's life: declares the queues, consumes, and hands each delivery to a task of
/// its own (at most `amqp.prefetch` are unacknowledged, so at most that many run). `Ok` when
/// stopped; `Err` when the connection or a channel failed.
async fn consume(
    state: &web::Data<AppState>,
    settings: &AmqpSettings,
    identities: &Arc<Identities>,
    status: &BrokerStatus,
    backoff: &mut super::Backoff,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connection = super::connect(&settings.url, Role::Ingest).await?;
    let consuming = connection.create_channel().await?;
    // Replies and dead letters go out on a channel with publisher confirms: a message is
    // acknowledged only once the broker has what replaces it.
    let publishing = connection.create_channel().await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for queue in [&settings.requests_queue, &settings.dead_letter_queue] {
        consuming
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    consuming
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("tally-{}", Uuid::new_v4().simple());
    let mut deliveries = consuming
        .basic_consume(
            settings.requests_queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _up = status.up(Role::Ingest);
    backoff.reset();
    tracing::info!(queue = %settings.requests_queue, prefetch = settings.prefetch, "consuming requests");

    let mut tasks = tokio::task::JoinSet::new();
    let outcome = loop {
        tokio::select! {
            delivery = deliveries.next() => match delivery {
                Some(Ok(delivery)) => {
                    let (state, identities, publishing) =
                        (state.clone(), identities.clone(), publishing.clone());
                    let dead_letter_queue = settings.dead_letter_queue.clone();
                    tasks.spawn_local(async move {
                        let acker = delivery.acker.clone();
                        match handle(&state, &identities, &publishing, &dead_letter_queue, delivery).await {
                            Ok(()) => true,
                            Err(error) => {
                                // Handed back: delivered again (to any consumer), it is answered
                                // from its idempotency key if it was applied.
                                tracing::warn!(error = %format!("{error:#}"), "a request goes back to the queue");
                                let _ = acker
                                    .nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() })
                                    .await;
                                publishing.status().connected()
                            }
                        }
                    });
                }
                Some(Err(error)) => break Err(error.into()),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
            Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                // A reply or dead letter failed because the publishing channel closed: nothing
                // more can be acknowledged on this connection, so reconnect.
                if matches!(finished, Ok(false)) {
                    break Err(anyhow::anyhow!("the channel for replies and dead letters closed"));
                }
            }
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                break Ok(());
            },
        }
    };
    if outcome.is_ok() {
        // Stopping: no new deliveries; the ones in flight are answered and acknowledged
        // (bounded), and anything left unacknowledged goes back to the queue on close.
        let _ = tokio::time::timeout(
            super::CLOSE_TIMEOUT,
            consuming.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .is_ok_and(|next| next.is_some())
        {}
    }
    // After a failure the requests in flight cannot be acknowledged on this connection any
    // more: they are dropped, and the broker delivers them again.
    tasks.shutdown().await;
    super::close(&connection).await;
    outcome
}

/// How a request ended, the `outcome` label of `tally_amqp_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Replayed,
    Refused,
    DeadLettered,
    /// Handed back to the broker after [`BACKPRESSURE_ATTEMPTS`] 503s (not counted: it is
    /// counted when it is answered).
    Requeued,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Replayed => "replayed",
            Outcome::Refused => "refused",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Requeued => "requeued",
        }
    }
}

/// Answers one delivery and acknowledges it.
///
/// Errors: the pipeline stayed unavailable for [`BACKPRESSURE_ATTEMPTS`] tries, or publishing
/// the reply or dead letter, or the acknowledgement, failed. The caller hands the message back
/// to the queue (nack with requeue); delivered again, it is answered from its idempotency key if
/// it was applied.
async fn handle(
    state: &web::Data<AppState>,
    identities: &Identities,
    publishing: &Channel,
    dead_letter_queue: &str,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let outcome = match decide(state, identities, &delivery).await {
        Decision::Malformed(reason) => {
            let problem = Answer::problem(&ApiError::field("message", reason.clone()));
            dead_letter(publishing, dead_letter_queue, &delivery, &reason, &problem).await?;
            Outcome::DeadLettered
        }
        Decision::Requeue => Outcome::Requeued,
        Decision::Answered(answer) if answer.status >= 500 => {
            let reason = format!(
                "internal error (status {}): the outcome is unknown; publish it again with the \
                 same message_id (its idempotency key makes that safe)",
                answer.status
            );
            dead_letter(publishing, dead_letter_queue, &delivery, &reason, &answer).await?;
            Outcome::DeadLettered
        }
        Decision::Answered(answer) => {
            reply(publishing, &delivery, &answer).await?;
            if answer.status >= 300 {
                Outcome::Refused
            } else if answer.replayed {
                Outcome::Replayed
            } else {
                Outcome::Applied
            }
        }
    };
    if outcome == Outcome::Requeued {
        anyhow::bail!("the pipeline stayed unavailable for {BACKPRESSURE_ATTEMPTS} tries");
    }
    if !delivery.acker.ack(BasicAckOptions::default()).await? {
        anyhow::bail!("the acknowledgement was not sent (its channel closed)");
    }
    metrics::counter!(names::AMQP_MESSAGES, "outcome" => outcome.as_str()).increment(1);
    Ok(())
}

/// A well-formed request, ready for its handler.
struct Request {
    kind: &'static str,
    principal: Principal,
    key: IdempotencyKey,
    /// The `{id}` of `post`, `void` and `reverse`.
    transaction_id: Option<String>,
    /// The REST body: the message's body without `type`, `acting_user_id`, `transaction_id`.
    body: Map<String, Value>,
}

impl Request {
    /// Errors: why the message is malformed (the dead letter's reason), or that the acting
    /// user could not be checked now (the database is unavailable).
    async fn parse(
        state: &AppState,
        identities: &Identities,
        delivery: &Delivery,
    ) -> Result<Request, Rejection> {
        let key = delivery
            .properties
            .message_id()
            .as_ref()
            .ok_or("the message_id property is required: it is the idempotency key")?;
        let key = IdempotencyKey::parse(key.as_str())
            .ok()
            .filter(|key| !key.as_str().starts_with(RESERVED_KEY_PREFIX))
            .ok_or_else(|| {
                format!(
                    "message_id must be 1 to 255 visible ASCII characters, not beginning with \
                     `{RESERVED_KEY_PREFIX}`"
                )
            })?;
        // The REST body limits: `bulk.body_limit_bytes` for a bulk, `http.body_limit_bytes` for
        // the rest (checked again below, once the type is known).
        let (single, bulk) = (
            state.settings.http.body_limit_bytes,
            state.settings.bulk.body_limit_bytes,
        );
        if delivery.data.len() > single.max(bulk) {
            return Err(format!("the body is larger than {} bytes", single.max(bulk)).into());
        }
        let mut body = match serde_json::from_slice::<Value>(&delivery.data) {
            Ok(Value::Object(body)) => body,
            _ => return Err("the body must be a JSON object".into()),
        };
        let kind: &'static str = match body.remove("type") {
            Some(Value::String(kind)) => TYPES
                .into_iter()
                .find(|known| *known == kind)
                .ok_or_else(|| format!("type must be one of {}", TYPES.join(", ")))?,
            _ => return Err(format!("type must be one of {}", TYPES.join(", ")).into()),
        };
        if kind != "bulk" && delivery.data.len() > single {
            return Err(format!("the body of a {kind} is larger than {single} bytes").into());
        }
        let acting = match body.remove("acting_user_id") {
            Some(Value::String(id)) => Uuid::try_parse(&id).ok(),
            _ => None,
        }
        .ok_or("acting_user_id must be the id of a service user (amqp.service_users)")?;
        let principal = identities
            .resolve(state, acting)
            .await
            .map_err(|error| Rejection::Unavailable(error.to_string()))?
            .ok_or_else(|| {
                format!(
                    "acting_user_id {acting} is not an active service user (amqp.service_users)"
                )
            })?;
        let transaction_id = match (kind, body.remove("transaction_id")) {
            ("post" | "void" | "reverse", Some(Value::String(id))) => Some(id),
            ("post" | "void" | "reverse", _) => {
                return Err(format!("transaction_id (a string) is required by {kind}").into())
            }
            (_, None) => None,
            (_, Some(_)) => return Err(format!("transaction_id is not a field of {kind}").into()),
        };
        Ok(Request {
            kind,
            principal,
            key,
            transaction_id,
            body,
        })
    }
}

/// A request's answer: the REST reply it stands for.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
    replayed: bool,
}

impl Answer {
    async fn of(response: actix_web::HttpResponse) -> Answer {
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(actix_web::http::header::CONTENT_TYPE)
            .unwrap_or_else(|| "application/json".to_owned());
        let replayed = header(actix_web::http::header::HeaderName::from_static(
            "idempotent-replayed",
        ))
        .is_some();
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .map(|bytes| bytes.to_vec())
            .unwrap_or_default();
        Answer {
            status,
            content_type,
            body,
            replayed,
        }
    }

    /// Whether an independent bulk's results hold an item the pipeline turned away (503): the
    /// whole bulk is tried again with its key, which replays the items already applied.
    fn has_unavailable_items(&self) -> bool {
        self.status == 200
            && serde_json::from_slice::<Value>(&self.body).is_ok_and(|body| {
                body["results"].as_array().is_some_and(|results| {
                    results.iter().any(|item| item["error"]["status"] == 503)
                })
            })
    }

    fn problem(error: &ApiError) -> Answer {
        let response = error.error_response();
        let status = response.status().as_u16();
        let body = match actix_web::body::MessageBody::try_into_bytes(response.into_body()) {
            Ok(bytes) => bytes.to_vec(),
            Err(_) => Vec::new(),
        };
        Answer {
            status,
            content_type: "application/problem+json".to_owned(),
            body,
            replayed: false,
        }
    }
}

/// Why a message was not turned into a request.
#[derive(Debug)]
enum Rejection {
    /// Malformed: the dead letter's reason.
    Malformed(String),
    /// The acting user could not be checked now (the database is unavailable).
    Unavailable(String),
}

impl From<String> for Rejection {
    fn from(reason: String) -> Rejection {
        Rejection::Malformed(reason)
    }
}

impl From<&str> for Rejection {
    fn from(reason: &str) -> Rejection {
        Rejection::Malformed(reason.to_owned())
    }
}

/// What to do with a delivery.
enum Decision {
    Malformed(String),
    Answered(Answer),
    /// Handed back to the broker after [`BACKPRESSURE_ATTEMPTS`] tries that found the pipeline
    /// or the database unavailable.
    Requeue,
}

/// Parses the delivery and runs its handler until the pipeline takes it: a 503 (`overloaded`,
/// `unavailable`), or an acting user that cannot be checked now, waits and tries again, up to
/// [`BACKPRESSURE_ATTEMPTS`] times.
async fn decide(
    state: &web::Data<AppState>,
    identities: &Identities,
    delivery: &Delivery,
) -> Decision {
    let mut wait = BACKPRESSURE_WAIT_MIN;
    for attempt in 1..=BACKPRESSURE_ATTEMPTS {
        match Request::parse(state, identities, delivery).await {
            Err(Rejection::Malformed(reason)) => return Decision::Malformed(reason),
            Err(Rejection::Unavailable(error)) => {
                tracing::debug!(%error, "the acting user could not be checked; waiting");
            }
            Ok(request) => {
                let answer = answer(state, &request).await;
                if answer.status != 503
                    && !(request.kind == "bulk" && answer.has_unavailable_items())
                {
                    return Decision::Answered(answer);
                }
            }
        }
        metrics::counter!(names::AMQP_BACKPRESSURE).increment(1);
        if attempt < BACKPRESSURE_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(BACKPRESSURE_WAIT_MAX);
        }
    }
    Decision::Requeue
}

/// Calls the handler of the REST request that `request` stands for.
async fn answer(state: &web::Data<AppState>, request: &Request) -> Answer {
    let id = request.transaction_id.clone().unwrap_or_default();
    let path = match request.kind {
        "post" | "void" | "reverse" => format!("/api/v1/transactions/{id}/{}", request.kind),
        kind => format!("/api/v1/transactions/{kind}"),
    };
    // actix-web builds an `HttpRequest` only for a connection or through `TestRequest`, a plain
    // builder of its public API: the request carries what the handlers read from one (the
    // idempotency key, and the request id the audit log records).
    let http = actix_web::test::TestRequest::post()
        .uri(&path)
        .insert_header((IDEMPOTENCY_KEY, request.key.as_str()))
        .to_http_request();
    http.extensions_mut()
        .insert(RequestId(format!("amqp:{}", request.key.as_str())));
    let (principal, body) = (request.principal, request.body.clone());
    let result = match request.kind {
        "credit" => transactions::credit(state.clone(), principal, http, JsonObject(body)).await,
        "debit" => transactions::debit(state.clone(), principal, http, JsonObject(body)).await,
        "transfer" => {
            transactions::transfer(state.clone(), principal, http, JsonObject(body)).await
        }
        "exchange" => fx::exchange(state.clone(), principal, http, JsonObject(body)).await,
        "post" => holds::post(state.clone(), principal, http, id.into(), JsonObject(body)).await,
        "void" => match Fields::new(JsonObject(body)).finish() {
            Ok(()) => holds::void(state.clone(), principal, http, id.into()).await,
            Err(error) => Err(error),
        },
        "reverse" => {
            reversals::reverse(state.clone(), principal, http, id.into(), JsonObject(body)).await
        }
        _ => bulk::bulk(state.clone(), principal, http, BulkJsonObject(body)).await,
    };
    match result {
        Ok(response) => Answer::of(response).await,
        Err(error) => Answer::problem(&error),
    }
}

/// The reply's properties: the message's `correlation_id` (else its `message_id`) and the
/// status headers.
fn reply_properties(delivery: &Delivery, answer: &Answer) -> BasicProperties {
    let correlation = delivery
        .properties
        .correlation_id()
        .clone()
        .or_else(|| delivery.properties.message_id().clone())
        .unwrap_or_else(|| ShortString::from(""));
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_STATUS.into(),
        AMQPValue::LongInt(i32::from(answer.status)),
    );
    if answer.replayed {
        headers.insert(HEADER_REPLAYED.into(), AMQPValue::Boolean(true));
    }
    BasicProperties::default()
        .with_correlation_id(correlation)
        .with_content_type(answer.content_type.as_str().into())
        .with_headers(headers)
}

/// Publishes `answer` to the message's `reply_to` (nothing when it has none) and waits for the
/// broker's confirm.
async fn reply(publishing: &Channel, delivery: &Delivery, answer: &Answer) -> anyhow::Result<()> {
    let Some(reply_to) = delivery.properties.reply_to() else {
        return Ok(());
    };
    let properties = reply_properties(delivery, answer);
    publish_confirmed(publishing, reply_to.clone(), &answer.body, properties).await
}

/// Moves the message to the dead-letter queue, as it came and with `reason`, answering `answer`
/// to its `reply_to` first when it has one.
async fn dead_letter(
    publishing: &Channel,
    dead_letter_queue: &str,
    delivery: &Delivery,
    reason: &str,
    answer: &Answer,
) -> anyhow::Result<()> {
    tracing::warn!(reason, "dead-lettering a request");
    reply(publishing, delivery, answer).await?;
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        HEADER_DEAD_LETTER_REASON.into(),
        AMQPValue::LongString(reason.into()),
    );
    // What identifies and routes the message, and nothing the broker checks against this
    // connection (`user_id`) or that would drop it (`expiration`).
    let original = &delivery.properties;
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    if let Some(id) = original.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    if let Some(reply_to) = original.reply_to() {
        properties = properties.with_reply_to(reply_to.clone());
    }
    if let Some(content_type) = original.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    publish_confirmed(
        publishing,
        dead_letter_queue.into(),
        &delivery.data,
        properties,
    )
    .await
}

/// Publishes to the default exchange (straight to the queue `routing_key`) and waits for the
/// broker's confirm.
///
/// Errors: the publish failed or the broker nacked it.
async fn publish_confirmed(
    publishing: &Channel,
    routing_key: ShortString,
    body: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let confirmation = publishing
        .basic_publish(
            "".into(),
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    match confirmation {
        Confirmation::Nack(_) => anyhow::bail!("the broker refused the message (nack)"),
        _ => Ok(()),
    }
}

/// The configured service identities (`amqp.service_users`: ids or usernames), resolved to
/// principals on use and remembered for [`IDENTITY_TTL`].
struct Identities {
    ids: Vec<Uuid>,
    usernames: Vec<String>,
    resolved: Mutex<HashMap<Uuid, (Principal, Instant)>>,
}

impl Identities {
    fn new(configured: &[String]) -> Identities {
        let (mut ids, mut usernames) = (Vec::new(), Vec::new());
        for entry in configured.iter().map(|entry| entry.trim()) {
            match Uuid::try_parse(entry) {
                Ok(id) => ids.push(id),
                Err(_) => usernames.push(entry.to_lowercase()),
            }
        }
        Identities {
            ids,
            usernames,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The principal `id` acts as, when it is an active user named by `amqp.service_users`
    /// (by id or username); `None` otherwise.
    ///
    /// Errors: the database could not be asked.
    async fn resolve(&self, state: &AppState, id: Uuid) -> Result<Option<Principal>, ApiError> {
        if let Some((principal, at)) = self.lock().get(&id) {
            if at.elapsed() < IDENTITY_TTL {
                return Ok(Some(*principal));
            }
        }
        if self.ids.is_empty() && self.usernames.is_empty() {
            return Ok(None);
        }
        let client = state.pool.get().await?;
        let Some(user) = crate::store::users::find_active(&client, id).await? else {
            return Ok(None);
        };
        let named =
            self.ids.contains(&id) || self.usernames.contains(&user.username.to_lowercase());
        if !named {
            return Ok(None);
        }
        let principal = Principal {
            user: user.id,
            role: user.role,
        };
        self.lock().insert(id, (principal, Instant::now()));
        Ok(Some(principal))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Principal, Instant)>> {
        self.resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
