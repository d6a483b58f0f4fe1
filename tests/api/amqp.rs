//! Queue ingestion and change data capture against the real RabbitMQ on 127.0.0.1:5672
//! (DESIGN.md section 12, issue 16). Every test uses queues and an exchange of its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;
use crate::process::Service;

pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Bound on waiting for replies or events (debug builds on a 2-core machine).
const WAIT: Duration = Duration::from_secs(240);

/// The queue and exchange names of one test.
pub struct Names {
    pub requests: String,
    pub dead: String,
    pub events: String,
}

impl Names {
    pub fn unique() -> Names {
        let suffix = Uuid::new_v4().simple().to_string();
        Names {
            requests: format!("tally.test.requests.{suffix}"),
            dead: format!("tally.test.dead.{suffix}"),
            events: format!("tally.test.events.{suffix}"),
        }
    }

    /// `settings.amqp` pointed at `url` and these names, acting as `service_users`.
    pub fn configure(
        &self,
        settings: &mut tally::config::Settings,
        url: &str,
        service_users: &[&str],
    ) {
        settings.amqp.url = url.to_owned();
        settings.amqp.requests_queue = self.requests.clone();
        settings.amqp.dead_letter_queue = self.dead.clone();
        settings.amqp.events_exchange = self.events.clone();
        settings.amqp.service_users = service_users
            .iter()
            .map(|user| (*user).to_owned())
            .collect();
    }

    /// The same as `TALLY__AMQP__*` variables for a child process.
    pub fn env(&self, url: &str, service_users: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TALLY__AMQP__URL", url.to_owned()),
            ("TALLY__AMQP__REQUESTS_QUEUE", self.requests.clone()),
            ("TALLY__AMQP__DEAD_LETTER_QUEUE", self.dead.clone()),
            ("TALLY__AMQP__EVENTS_EXCHANGE", self.events.clone()),
            ("TALLY__AMQP__SERVICE_USERS", service_users.to_owned()),
        ]
    }
}

/// A test's own client of the broker.
pub struct Broker {
    connection: Connection,
    pub channel: Channel,
}

/// A reply as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub status: i64,
    pub replayed: bool,
    pub body: Value,
}

impl Broker {
    pub async fn connect() -> Broker {
        let connection = Connection::connect(BROKER_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ answers on 127.0.0.1:5672");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("publisher confirms");
        Broker {
            connection,
            channel,
        }
    }

    /// Declares the durable `queue` (Tally declares it too, with the same arguments), so that
    /// messages published before Tally consumes wait in it.
    pub async fn declare(&self, queue: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a queue");
    }

    /// A server-named exclusive queue, and a consumer on it.
    pub async fn private_queue(&self) -> (String, lapin::Consumer) {
        let queue = self
            .channel
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
            .expect("declare a private queue");
        let name = queue.name().to_string();
        let consumer = self.consume(&self.channel, &name).await;
        (name, consumer)
    }

    /// A consumer on `queue` (on `channel`), acknowledging as it receives.
    pub async fn consume(&self, channel: &Channel, queue: &str) -> lapin::Consumer {
        channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume a queue")
    }

    /// Publishes `body` to `queue` (default exchange) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        message_id: Option<&str>,
        reply_to: &str,
        correlation: &str,
        body: &[u8],
    ) {
        let mut properties = BasicProperties::default()
            .with_reply_to(reply_to.into())
            .with_correlation_id(correlation.into())
            .with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    /// Publishes the request `body` with `id` as its message id and correlation id.
    pub async fn request(&self, queue: &str, id: &str, reply_to: &str, body: &Value) {
        self.publish(queue, Some(id), reply_to, id, body.to_string().as_bytes())
            .await;
    }

    /// Every message in `queue` (taken with basic.get and acknowledged), with its headers.
    pub async fn drain(&self, queue: &str) -> Vec<(FieldTable, Vec<u8>)> {
        let mut taken = Vec::new();
        for _ in 0..100_000 {
            let Some(message) = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            else {
                break;
            };
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            taken.push((headers, message.delivery.data.clone()));
        }
        taken
    }

    pub async fn delete(&self, queues: &[&str]) {
        for queue in queues {
            let _ = self
                .channel
                .queue_delete((*queue).into(), QueueDeleteOptions::default())
                .await;
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Reads replies from `consumer` into `replies` (by correlation id) until `expected` have come,
/// within [`WAIT`].
pub async fn collect_replies(
    consumer: &mut lapin::Consumer,
    replies: &mut HashMap<String, Vec<Received>>,
    expected: usize,
) {
    let deadline = Instant::now() + WAIT;
    let mut count: usize = replies.values().map(Vec::len).sum();
    while count < expected {
        let next = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(delivery))) => delivery,
            other => panic!("{count} of {expected} replies came: {other:?}"),
        };
        let correlation = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.to_string())
            .expect("every reply is correlated");
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let status = match headers.inner().get("tally-status") {
            Some(AMQPValue::LongInt(status)) => i64::from(*status),
            other => panic!("a reply without its status: {other:?}"),
        };
        let replayed = matches!(
            headers.inner().get("tally-replayed"),
            Some(AMQPValue::Boolean(true))
        );
        let body = serde_json::from_slice(&delivery.data).expect("a JSON reply");
        replies.entry(correlation).or_default().push(Received {
            status,
            replayed,
            body,
        });
        count += 1;
    }
}

fn reason(headers: &FieldTable) -> String {
    match headers.inner().get("tally-dead-letter-reason") {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("a dead letter without its reason: {other:?}"),
    }
}

/// 10,000 requests (credits on behalf of 20 users, transfers from the service account) with
/// 5% published twice and 100 malformed ones: every valid one is applied exactly once and
/// answered (its duplicate with the same transaction, marked replayed), every reply correlated,
/// the malformed ones dead-lettered with their reason, and the ledger adds up.
#[actix_web::test]
async fn ten_thousand_requests_with_duplicates_and_malformed_ones() {
    const REQUESTS: usize = 10_000;
    const USERS: usize = 20;
    let names = Names::unique();
    let broker = Broker::connect().await;
    broker.declare(&names.requests).await;
    let (app, admin) = TestApp::spawn_with_admin(|settings| {
        names.configure(settings, BROKER_URL, &[ADMIN_USERNAME]);
        settings.amqp.publish_events = false;
    })
    .await;
    let outsider = app.user("outsider").await;
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(app.user("queued").await);
    }
    let funded = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            &json!({"amount": 1_000_000_000, "currency": "USD"}),
        )
        .await;
    assert_eq!(funded.status, 201, "{}", funded.body);
    let (reply_to, mut consumer) = broker.private_queue().await;

    // The valid requests, and what each must do.
    let mut expected: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut requests = Vec::with_capacity(REQUESTS);
    for n in 0..REQUESTS {
        let user = &users[n % USERS];
        let amount = 1 + (n as i64 % 97);
        *expected.entry(user.id).or_default() += amount;
        let body = if n % 3 == 0 {
            json!({"type": "transfer", "acting_user_id": admin.id, "to_user_id": user.id,
                   "amount": amount, "currency": "USD", "reference": format!("queued-{n}")})
        } else {
            json!({"type": "credit", "acting_user_id": admin.id, "user_id": user.id,
                   "amount": amount, "currency": "USD"})
        };
        requests.push((format!("request-{n}"), body));
    }
    let transferred: i64 = (0..REQUESTS)
        .filter(|n| n % 3 == 0)
        .map(|n| 1 + (n as i64 % 97))
        .sum();
    let mut malformed: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    for n in 0..100 {
        let id = Some(format!("malformed-{n}"));
        malformed.push(match n % 5 {
            0 => (id, b"{not json".to_vec()),
            1 => (None, json!({"type": "credit", "acting_user_id": admin.id, "amount": 5, "currency": "USD"}).to_string().into_bytes()),
            2 => (id, json!({"type": "mint", "acting_user_id": admin.id, "amount": 5, "currency": "USD"}).to_string().into_bytes()),
            // A real user, but not a service identity.
            3 => (id, json!({"type": "credit", "acting_user_id": outsider.id, "amount": 5, "currency": "USD"}).to_string().into_bytes()),
            _ => (id, json!({"type": "void", "acting_user_id": admin.id}).to_string().into_bytes()),
        });
    }
    // One refused request: well formed, answered with its problem, nothing applied.
    let refused =
        json!({"type": "credit", "acting_user_id": admin.id, "amount": -5, "currency": "USD"});

    let started = Instant::now();
    let mut published = 0;
    for (n, (id, body)) in requests.iter().enumerate() {
        let bytes = body.to_string().into_bytes();
        broker
            .publish(&names.requests, Some(id), &reply_to, id, &bytes)
            .await;
        published += 1;
        if n % 20 == 0 {
            // 5%: the same message again (same message_id), as a redelivery or a retry would.
            broker
                .publish(&names.requests, Some(id), &reply_to, id, &bytes)
                .await;
            published += 1;
        }
        if n % 100 == 0 {
            let (id, body) = &malformed[n / 100];
            let correlation = id.clone().unwrap_or_else(|| format!("no-id-{n}"));
            broker
                .publish(
                    &names.requests,
                    id.as_deref(),
                    &reply_to,
                    &correlation,
                    body,
                )
                .await;
            published += 1;
        }
    }
    broker
        .publish(
            &names.requests,
            Some("refused-1"),
            &reply_to,
            "refused-1",
            refused.to_string().as_bytes(),
        )
        .await;
    published += 1;

    let mut replies = HashMap::new();
    collect_replies(&mut consumer, &mut replies, published).await;
    let elapsed = started.elapsed();
    eprintln!(
        "{published} messages answered in {:.1} s ({:.0} messages/s, debug build)",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64()
    );

    // Every valid request: one transaction, answered 201; its duplicate answered with it.
    for (n, (id, _)) in requests.iter().enumerate() {
        let answers = &replies[id];
        assert_eq!(
            answers.len(),
            if n % 20 == 0 { 2 } else { 1 },
            "{id}: {answers:?}"
        );
        let first = &answers[0];
        assert_eq!(first.status, 201, "{id}: {first:?}");
        for again in &answers[1..] {
            assert_eq!(again.status, 201, "{id}: {again:?}");
            assert_eq!(
                again.body["id"], first.body["id"],
                "{id}: a duplicate applied again"
            );
        }
        assert_eq!(
            answers.iter().filter(|answer| answer.replayed).count(),
            answers.len() - 1,
            "{id}"
        );
    }
    let db = app.db().await;
    let keyed: i64 = db
        .query_one(
            "SELECT count(DISTINCT idempotency_key) FROM transactions WHERE idempotency_key LIKE 'request-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM transactions WHERE idempotency_key LIKE 'request-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((keyed, rows), (REQUESTS as i64, REQUESTS as i64));
    for user in &users {
        assert_eq!(
            app.balance(user, "USD").await,
            expected[&user.id],
            "{}",
            user.username
        );
    }
    assert_eq!(
        app.balance(&admin, "USD").await,
        1_000_000_000 - transferred
    );
    assert_eq!(app.balance(&outsider, "USD").await, 0);

    // The refused request: its problem, nothing applied.
    let answer = &replies["refused-1"][0];
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.body["code"], "validation_failed");

    // The malformed ones: a problem to reply_to, and the message itself in the dead-letter
    // queue with its reason.
    for (n, (id, _)) in malformed.iter().enumerate() {
        let correlation = id.clone().unwrap_or_else(|| format!("no-id-{}", n * 100));
        let answer = &replies[&correlation];
        assert_eq!(answer.len(), 1, "{correlation}");
        assert_eq!(answer[0].status, 422, "{correlation}: {answer:?}");
    }
    let dead = broker.drain(&names.dead).await;
    assert_eq!(dead.len(), malformed.len());
    let reasons: Vec<String> = dead.iter().map(|(headers, _)| reason(headers)).collect();
    for expected in [
        "the body must be a JSON object",
        "the message_id property is required",
        "type must be one of",
        "is not an active service user",
        "transaction_id (a string) is required by void",
    ] {
        assert_eq!(
            reasons
                .iter()
                .filter(|reason| reason.contains(expected))
                .count(),
            20,
            "{expected}: {reasons:?}"
        );
    }
    let applied = app
        .metric("tally_amqp_messages_total{outcome=\"applied\"}")
        .await;
    assert!(applied >= REQUESTS as f64, "{applied}");
    app.assert_ledger_invariants().await;
    broker.delete(&[&names.requests, &names.dead]).await;
    broker.close().await;
}

/// Two instances consume one queue on one database; `kill -9` of one while thousands of requests
/// are in flight, then its restart: every request is applied exactly once, and answered (some
/// twice: a request committed but not yet acknowledged is delivered again and replayed).
#[actix_web::test]
async fn a_killed_consumer_applies_nothing_twice_and_loses_nothing() {
    const REQUESTS: usize = 3_000;
    let names = Names::unique();
    let broker = Broker::connect().await;
    broker.declare(&names.requests).await;
    let database_url = create_database().await;
    let mut env = names.env(BROKER_URL, ADMIN_USERNAME);
    env.extend([
        (
            "TALLY__BOOTSTRAP__ADMIN_USERNAME",
            ADMIN_USERNAME.to_owned(),
        ),
        ("TALLY__BOOTSTRAP__ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
        (
            "TALLY__BOOTSTRAP__ADMIN_PASSWORD",
            ADMIN_PASSWORD.to_owned(),
        ),
        ("TALLY__AMQP__PUBLISH_EVENTS", "false".to_owned()),
        ("TALLY__AMQP__PREFETCH", "64".to_owned()),
    ]);
    let mut service = Service::start_with(&database_url, &env).await;
    let app = service.app(&database_url);
    let admin = app.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(app.user("crashed").await);
    }
    // A second instance on the same database consumes the same queue.
    let _second = Service::start_with(&database_url, &env).await;
    let (reply_to, mut consumer) = broker.private_queue().await;
    let mut expected: HashMap<Uuid, i64> = HashMap::new();
    for n in 0..REQUESTS {
        let user = &users[n % users.len()];
        let amount = 1 + n as i64 % 13;
        *expected.entry(user.id).or_default() += amount;
        let body = json!({"type": "credit", "acting_user_id": admin.id, "user_id": user.id,
                          "amount": amount, "currency": "USD"});
        let id = format!("crash-{n}");
        broker.request(&names.requests, &id, &reply_to, &body).await;
    }
    // Some hundreds answered, the rest queued or in flight: kill it.
    let mut replies = HashMap::new();
    collect_replies(&mut consumer, &mut replies, 400).await;
    service.kill_9();
    let before: usize = replies.len();
    assert!(before < REQUESTS, "everything was answered before the kill");

    let service = Service::start_with(&database_url, &env).await;
    let mut app = app;
    app.address = format!("http://{}", service.address);
    app.port = service.port;
    // Every request answered at least once (the total counts replies, replays included).
    let deadline = Instant::now() + WAIT;
    while replies.len() < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "{} of {REQUESTS} answered",
            replies.len()
        );
        let have: usize = replies.values().map(Vec::len).sum();
        collect_replies(&mut consumer, &mut replies, have + 1).await;
    }
    let replayed = replies
        .values()
        .flatten()
        .filter(|answer| answer.replayed)
        .count();
    eprintln!("{replayed} answers were replays of requests delivered again after the kill");
    for (id, answers) in &replies {
        let first = &answers[0].body["id"];
        for answer in answers {
            assert_eq!(answer.status, 201, "{id}: {answer:?}");
            assert_eq!(&answer.body["id"], first, "{id}: applied twice");
        }
    }
    let db = app.db().await;
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT idempotency_key) FROM transactions WHERE idempotency_key LIKE 'crash-%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (REQUESTS as i64, REQUESTS as i64)
    );
    for user in &users {
        assert_eq!(app.balance(user, "USD").await, expected[&user.id]);
    }
    app.assert_ledger_invariants().await;
    drop(service);
    broker.delete(&[&names.requests, &names.dead]).await;
    broker.close().await;
}

/// A TCP proxy in front of the broker whose connections can be cut (the broker and Tally each
/// see the other vanish), while new connections still go through.
struct CuttableProxy {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
}

impl CuttableProxy {
    async fn start(target: u16) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        actix_web::rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                actix_web::rt::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        CuttableProxy { port, cut }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes every connection open through the proxy.
    fn cut(&self) {
        self.cut.send_modify(|cuts| *cuts += 1);
    }
}

/// The event log published to the exchange by one of two instances: a mixed workload (credits,
/// transfers, holds posted and voided, a reversal, a refusal) in three parts, with the broker
/// connections cut after the first and one instance killed (-9) and restarted after the second. A queue bound with `#` sees
/// every event of the log at least once, each with its type as routing key and its id as
/// message id, and, first arrivals taken, every account's events in cursor order.
#[actix_web::test]
async fn every_event_is_published_in_order_across_a_connection_loss_and_a_restart() {
    let names = Names::unique();
    let broker = Broker::connect().await;
    // The exchange exists before Tally publishes, so the test's queue misses nothing.
    broker
        .channel
        .exchange_declare(
            names.events.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the events exchange");
    let events_queue = format!("{}.all", names.events);
    broker.declare(&events_queue).await;
    broker
        .channel
        .queue_bind(
            events_queue.as_str().into(),
            names.events.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let proxy = CuttableProxy::start(5672).await;
    let database_url = create_database().await;
    let mut env = names.env(&proxy.url(), "");
    env.extend([
        ("TALLY__AMQP__INGEST", "false".to_owned()),
        ("TALLY__AMQP__PUBLISH_BATCH", "50".to_owned()),
        ("TALLY__AMQP__RECONNECT_MAX_MS", "200".to_owned()),
        (
            "TALLY__BOOTSTRAP__ADMIN_USERNAME",
            ADMIN_USERNAME.to_owned(),
        ),
        ("TALLY__BOOTSTRAP__ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
        (
            "TALLY__BOOTSTRAP__ADMIN_PASSWORD",
            ADMIN_PASSWORD.to_owned(),
        ),
    ]);
    let mut service = Service::start_with(&database_url, &env).await;
    let mut app = service.app(&database_url);
    // A second instance: it publishes only while it holds the publishing lock.
    let second = Service::start_with(&database_url, &env).await;
    let admin = app.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    let mut users = Vec::new();
    for _ in 0..4 {
        let user = app.user("cdc").await;
        app.credit(&user, 100_000, "USD").await;
        users.push(user);
    }

    for part in 0..3 {
        for round in 0..15 {
            let (payer, payee) = (&users[round % 4], &users[(round + 1) % 4]);
            let transfer = app
                .post(
                    "/api/v1/transactions/transfer",
                    Some(&payer.token),
                    &json!({"to_user_id": payee.id, "amount": 10 + round, "currency": "USD"}),
                )
                .await;
            assert_eq!(transfer.status, 201, "{}", transfer.body);
            let hold = app
                .post("/api/v1/transactions/transfer", Some(&payer.token),
                      &json!({"to_user_id": payee.id, "amount": 50, "currency": "USD", "hold": {"timeout_s": 600}}))
                .await;
            assert_eq!(hold.status, 201, "{}", hold.body);
            let hold_id = hold.body["id"].as_str().unwrap().to_owned();
            let verb = if round % 2 == 0 { "post" } else { "void" };
            let resolved = app
                // The payee of a hold decides it.
                .post(
                    &format!("/api/v1/transactions/{hold_id}/{verb}"),
                    Some(&payee.token),
                    &json!({}),
                )
                .await;
            assert!(resolved.status.is_success(), "{verb}: {}", resolved.body);
            if round % 5 == 0 {
                let id = transfer.body["id"].as_str().unwrap();
                let reversal = app
                    .post(
                        &format!("/api/v1/transactions/{id}/reverse"),
                        Some(&admin.token),
                        &json!({"reason": "test"}),
                    )
                    .await;
                assert_eq!(reversal.status, 201, "{}", reversal.body);
            }
            let refused = app
                .post(
                    "/api/v1/transactions/debit",
                    Some(&payer.token),
                    &json!({"amount": 10_000_000, "currency": "USD"}),
                )
                .await;
            assert_eq!(refused.status, 422);
        }
        match part {
            0 => {
                proxy.cut();
                // The publisher saw its connection go, and a publisher came back (bounded
                // wait; the lock may change hands meanwhile).
                let count =
                    |message: &str| service.events(message).len() + second.events(message).len();
                let deadline = Instant::now() + Duration::from_secs(60);
                while count("the event publisher stopped; reconnecting") == 0
                    || count("publishing the event log") < 2
                {
                    assert!(Instant::now() < deadline, "no reconnect after the cut");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            1 => {
                service.kill_9();
                service = Service::start_with(&database_url, &env).await;
                // The same harness, pointed at the new process (a new `TestApp` would drop the
                // database when the old one goes).
                app.address = format!("http://{}", service.address);
                app.port = service.port;
            }
            _ => {}
        }
    }

    // Every event of the log, from the database.
    app.wait_for_log_horizon().await;
    let db = app.db().await;
    let logged: Vec<(i64, String, String)> = db
        .query(
            "SELECT seq, tx::text, type FROM events ORDER BY tx, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let wanted: HashSet<i64> = logged.iter().map(|(id, ..)| *id).collect();

    // Read the queue until every one of them came.
    let consumer_channel = broker.connection.create_channel().await.unwrap();
    let mut consumer = broker.consume(&consumer_channel, &events_queue).await;
    let deadline = Instant::now() + WAIT;
    let mut seen: HashSet<i64> = HashSet::new();
    let mut arrivals: Vec<Value> = Vec::new();
    let mut duplicates = 0;
    while !wanted.is_subset(&seen) {
        let next = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(delivery))) => delivery,
            other => panic!(
                "{} of {} events came: {other:?}",
                wanted.intersection(&seen).count(),
                wanted.len()
            ),
        };
        let event: Value = serde_json::from_slice(&delivery.data).expect("an event body");
        let id = event["id"].as_i64().expect("an id");
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            Some(id.to_string())
        );
        assert_eq!(
            delivery.routing_key.as_str(),
            event["type"].as_str().unwrap()
        );
        if seen.insert(id) {
            arrivals.push(event);
        } else {
            duplicates += 1;
        }
    }
    eprintln!("{} events, {duplicates} delivered again", wanted.len());
    let types: HashSet<&str> = logged.iter().map(|(_, _, kind)| kind.as_str()).collect();
    for kind in [
        "transaction.completed",
        "transaction.failed",
        "hold.created",
        "hold.posted",
        "hold.voided",
        "transaction.reversed",
    ] {
        assert!(types.contains(kind), "{kind} in {types:?}");
    }

    // Per account, in cursor order.
    let cursor = |event: &Value| -> (i64, i64) {
        let (tx, seq) = event["cursor"].as_str().unwrap().split_once('.').unwrap();
        (tx.parse().unwrap(), seq.parse().unwrap())
    };
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    for event in &arrivals {
        for account in event["accounts"].as_array().unwrap() {
            let key = account.to_string();
            let position = cursor(event);
            if let Some(before) = last.insert(key.clone(), position) {
                assert!(before < position, "{key}: {before:?} then {position:?}");
            }
        }
    }
    // One publisher at a time: of the two instances' publisher sessions, one holds the lock
    // (bounded wait: the restarted instance's session may still be connecting).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE l.pid IS NOT NULL), count(DISTINCT a.pid)
                   FROM pg_stat_activity a
                   LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                  WHERE a.application_name = 'tally-cdc' AND a.datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        let (holders, sessions) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        assert!(holders <= 1, "{holders} publishers hold the lock");
        if (holders, sessions) == (1, 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{holders} lock holders, {sessions} publisher sessions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stored cursor reaches the end of the log as read above (it is stored after the
    // confirms, so possibly just after the last event came; an event written since, such as a
    // restarted instance's, may take it further).
    let (last_tx, last_seq) = logged
        .last()
        .map(|(seq, tx, _)| (tx.parse::<i64>().unwrap(), *seq))
        .unwrap();
    // Bounded by WAIT: a page whose confirms hang is published again after cdc::PUBLISH_TIMEOUT.
    let deadline = Instant::now() + WAIT;
    loop {
        let row = db
            .query_one(
                "SELECT tx, seq FROM cdc_cursors WHERE exchange = $1",
                &[&names.events],
            )
            .await
            .unwrap();
        let stored = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if stored >= (last_tx, last_seq) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stored cursor {stored:?} stays behind the log's last event {:?}; logs: {:?} {:?}",
            (last_tx, last_seq),
            service.events("the event publisher stopped; reconnecting"),
            second.events("the event publisher stopped; reconnecting"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.assert_ledger_invariants().await;
    drop(service);
    broker.delete(&[&events_queue]).await;
    let _ = broker
        .channel
        .exchange_delete(names.events.as_str().into(), Default::default())
        .await;
    broker.close().await;
}

/// Broker settings that cannot work stop the start, naming their key.
#[test]
fn broker_settings_out_of_range_are_refused_with_their_key() {
    type Adjust = fn(&mut tally::config::AmqpSettings);
    let cases: [(Adjust, &str); 7] = [
        (
            |amqp| amqp.url = "amqps://broker:5671/%2f".into(),
            "amqp.url",
        ),
        (|amqp| amqp.prefetch = 0, "amqp.prefetch"),
        (|amqp| amqp.publish_batch = 0, "amqp.publish_batch"),
        (|amqp| amqp.poll_interval_ms = 1, "amqp.poll_interval_ms"),
        (
            |amqp| amqp.events_exchange = "amq.topic".into(),
            "amqp.events_exchange",
        ),
        (
            |amqp| amqp.dead_letter_queue = amqp.requests_queue.clone(),
            "amqp.dead_letter_queue",
        ),
        (|amqp| amqp.url = BROKER_URL.into(), "amqp.service_users"),
    ];
    for (adjust, key) in cases {
        let mut settings = tally::config::Settings::load(None).expect("default settings load");
        settings.auth.jwt_secret = "test-secret-test-secret-test-secret!".to_owned();
        settings.validate().expect("the defaults are valid");
        adjust(&mut settings.amqp);
        let error = settings.validate().expect_err(key).to_string();
        assert!(error.contains(key), "{key}: {error}");
    }
}

/// Backpressure: a pipeline that admits 8 submissions at a time against 256 requests delivered at
/// once (and bulks whose items it turns away): nothing is failed for it; every request is applied
/// once and answered once with its 201 (or 200), as the consumers wait and try again.
#[actix_web::test]
async fn an_overloaded_pipeline_slows_consumption_and_fails_nothing() {
    const REQUESTS: usize = 600;
    let names = Names::unique();
    let broker = Broker::connect().await;
    broker.declare(&names.requests).await;
    let (app, admin) = TestApp::spawn_with_admin(|settings| {
        names.configure(settings, BROKER_URL, &[ADMIN_USERNAME]);
        settings.amqp.publish_events = false;
        settings.pipeline.queue_capacity = 8;
        settings.bulk.max_items = 8;
    })
    .await;
    let user = app.user("pressed").await;
    let waits_before = app.metric("tally_amqp_backpressure_waits_total").await;
    let (reply_to, mut consumer) = broker.private_queue().await;
    for n in 0..REQUESTS {
        let id = format!("pressed-{n}");
        let body = if n % 50 == 0 {
            let items: Vec<Value> = (0..8)
                .map(|_| json!({"type": "credit", "user_id": user.id, "amount": 1, "currency": "USD"}))
                .collect();
            json!({"type": "bulk", "acting_user_id": admin.id, "mode": "independent", "transactions": items})
        } else {
            json!({"type": "credit", "acting_user_id": admin.id, "user_id": user.id, "amount": 1, "currency": "USD"})
        };
        broker.request(&names.requests, &id, &reply_to, &body).await;
    }
    let mut replies = HashMap::new();
    collect_replies(&mut consumer, &mut replies, REQUESTS).await;
    let mut credited = 0;
    for (id, answers) in &replies {
        assert_eq!(answers.len(), 1, "{id}: {answers:?}");
        let answer = &answers[0];
        if answer.body["results"].is_array() {
            assert_eq!(answer.status, 200, "{id}: {answer:?}");
            for item in answer.body["results"].as_array().unwrap() {
                assert_eq!(item["status"], "completed", "{id}: {item}");
                credited += 1;
            }
        } else {
            assert_eq!(answer.status, 201, "{id}: {answer:?}");
            credited += 1;
        }
    }
    assert_eq!(replies.len(), REQUESTS);
    assert_eq!(app.balance(&user, "USD").await, credited);
    let waits = app.metric("tally_amqp_backpressure_waits_total").await - waits_before;
    assert!(waits > 0.0, "the pipeline never pushed back");
    eprintln!("{waits} backpressure waits for {REQUESTS} requests");
    app.assert_ledger_invariants().await;
    broker.delete(&[&names.requests, &names.dead]).await;
    broker.close().await;
}
