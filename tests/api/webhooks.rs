//! Webhooks (DESIGN.md section 10, issue 14): subscriptions, signed at-least-once delivery
//! from the event log to a receiver the test runs on 127.0.0.1, retries with backoff,
//! disabling after a run of failures, the allowed hosts, fan-out exactly once across two
//! instances, and no loss across a `kill -9`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tally::config::Settings;
use tokio::sync::watch;

use crate::helpers::*;
use crate::process::Service;

/// Bound on every wait for deliveries.
const DEADLINE: Duration = Duration::from_secs(30);
/// Spaces the polls of the delivery log (each poll is bounded by `DEADLINE`).
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Received {
    fn event(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }

    /// Checks the signature as a receiver would: HMAC-SHA256 of `"<timestamp>.<body>"`, keyed
    /// with the secret, in `v1=<hex>`; and a timestamp within five minutes.
    fn assert_signed_with(&self, secret: &str) {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{}.", self.timestamp).as_bytes());
        mac.update(&self.body);
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(self.signature, expected, "signature of event {}", self.id);
        let sent: i64 = self.timestamp.parse().expect("a Unix timestamp");
        assert!((chrono::Utc::now().timestamp() - sent).abs() < 300);
        assert_eq!(
            self.event()["id"].to_string(),
            self.id,
            "Tally-Webhook-Id is the event id"
        );
    }
}

struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// How many requests came in (woken on each).
    count: watch::Sender<usize>,
    /// Requests are answered only while open.
    gate: watch::Receiver<bool>,
    /// Answers 500 to this many requests first.
    fail_first: AtomicUsize,
    /// Answers 500 to everything.
    always_fail: AtomicBool,
}

/// An HTTP server on 127.0.0.1:0 that records every request and answers 200 (or 500 as told).
struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
    gate: watch::Sender<bool>,
    handle: actix_web::dev::ServerHandle,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ReceiverState>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    state.received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        id: header("Tally-Webhook-Id"),
        timestamp: header("Tally-Webhook-Timestamp"),
        signature: header("Tally-Webhook-Signature"),
        body: body.to_vec(),
    });
    state.count.send_modify(|count| *count += 1);
    let mut gate = state.gate.clone();
    let _ = gate.wait_for(|open| *open).await;
    let fail = state.always_fail.load(Ordering::SeqCst)
        || state
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
    if fail {
        HttpResponse::InternalServerError().body("try again")
    } else {
        HttpResponse::Ok().finish()
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let (gate, gate_open) = watch::channel(true);
        let state = Arc::new(ReceiverState {
            received: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            gate: gate_open,
            fail_first: AtomicUsize::new(0),
            always_fail: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Receiver {
            base: format!("http://127.0.0.1:{port}"),
            state,
            gate,
            handle,
        }
    }

    fn received(&self, path: &str) -> Vec<Received> {
        let all = self.state.received.lock().unwrap();
        all.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until at least `count` requests came in, within `DEADLINE`.
    async fn wait_for_requests(&self, count: usize) {
        let mut seen = self.state.count.subscribe();
        tokio::time::timeout(DEADLINE, seen.wait_for(|n| *n >= count))
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} requests within {DEADLINE:?}"))
            .expect("the receiver runs");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Fast polling and backoff, so that tests take milliseconds per step.
fn fast(settings: &mut Settings) {
    let hooks = &mut settings.webhooks;
    hooks.poll_interval_ms = 20;
    hooks.timeout_ms = 2000;
    hooks.lease_ms = 5000;
    hooks.backoff_base_ms = 10;
    hooks.backoff_max_ms = 40;
}

/// Creates a subscription; returns (id, secret).
async fn subscribe(app: &TestApp, user: &TestUser, body: Value) -> (String, String) {
    let reply = app.post("/api/v1/webhooks", Some(&user.token), &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let secret = reply.body["secret"]
        .as_str()
        .expect("the secret")
        .to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
    (reply.body["id"].as_str().unwrap().to_owned(), secret)
}

/// Every event of `user`'s scope (all for an admin), oldest first.
async fn events(app: &TestApp, user: &TestUser, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = "0.0".to_owned();
    loop {
        let page = app
            .get(
                &format!("/api/v1/events?limit=1000&after={after}{query}"),
                &user.token,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let items = page.body["items"].as_array().unwrap().clone();
        after = page.body["next_cursor"].as_str().unwrap().to_owned();
        if items.is_empty() {
            return all;
        }
        all.extend(items);
    }
}

/// Like [`events`], once the events of every transaction in `transactions` can be read: a
/// reader sees an event only when every database transaction that started before its own has
/// ended (invariant 12), which on a busy server may be a moment after the commit.
async fn events_of(
    app: &TestApp,
    user: &TestUser,
    query: &str,
    transactions: &[&Value],
) -> Vec<Value> {
    let streams: BTreeSet<String> = transactions
        .iter()
        .map(|reply| {
            format!(
                "transaction:{}",
                reply["id"].as_str().expect("a transaction id")
            )
        })
        .collect();
    let give_up = Instant::now() + DEADLINE;
    loop {
        let found = events(app, user, query).await;
        let seen: BTreeSet<String> = found
            .iter()
            .filter_map(|event| event["stream"].as_str().map(str::to_owned))
            .collect();
        if streams.is_subset(&seen) {
            return found;
        }
        assert!(
            Instant::now() < give_up,
            "the events of {streams:?} never showed"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

fn ids(events: &[Value]) -> BTreeSet<i64> {
    events
        .iter()
        .map(|event| event["id"].as_i64().unwrap())
        .collect()
}

/// The delivery log of a subscription (first page of up to 500).
async fn deliveries(app: &TestApp, user: &TestUser, hook: &str) -> Vec<Value> {
    let reply = app
        .get(
            &format!("/api/v1/webhooks/{hook}/deliveries?limit=500"),
            &user.token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["items"].as_array().unwrap().clone()
}

/// Polls the delivery log until `done` holds, within `DEADLINE`.
async fn wait_for_log(
    app: &TestApp,
    user: &TestUser,
    hook: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let give_up = Instant::now() + DEADLINE;
    loop {
        let log = deliveries(app, user, hook).await;
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < give_up,
            "delivery log never done: {log:#?}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Whether every event id in `expected` is in the log and delivered.
fn all_delivered(log: &[Value], expected: &BTreeSet<i64>) -> bool {
    let delivered: BTreeSet<i64> = log
        .iter()
        .filter(|d| d["status"] == "delivered")
        .map(|d| d["event_id"].as_i64().unwrap())
        .collect();
    expected.is_subset(&delivered)
}

/// Waits until the dispatcher has fanned out every event committed so far.
async fn wait_for_dispatch(app: &TestApp, admin: &TestUser) {
    let last = events(app, admin, "")
        .await
        .last()
        .cloned()
        .expect("events");
    let last: tally::store::events::EventCursor = last["cursor"].as_str().unwrap().parse().unwrap();
    let db = app.db().await;
    let give_up = Instant::now() + DEADLINE;
    loop {
        let row = db
            .query_one("SELECT tx, seq FROM webhook_dispatch", &[])
            .await
            .unwrap();
        let at = tally::store::events::EventCursor {
            tx: row.get(0),
            seq: row.get(1),
        };
        if at >= last {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "the dispatcher never reached {last}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

#[actix_web::test]
async fn deliveries_are_signed_scoped_to_the_owner_and_filtered_by_type() {
    let (app, admin) = TestApp::spawn_with_admin(fast).await;
    let receiver = Receiver::start().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (all_hook, all_secret) = subscribe(
        &app,
        &alice,
        json!({"url": format!("{}/alice", receiver.base), "description": "everything"}),
    )
    .await;
    let (typed_hook, typed_secret) = subscribe(
        &app,
        &alice,
        json!({"url": format!("{}/typed", receiver.base), "types": ["transaction.completed"]}),
    )
    .await;
    let (admin_hook, admin_secret) = subscribe(
        &app,
        &admin,
        json!({"url": format!("{}/admin", receiver.base)}),
    )
    .await;
    let before = ids(&events(&app, &admin, "").await);
    let mut alices_transactions = Vec::new();
    for amount in [100, 200, 300] {
        alices_transactions.push(app.credit(&alice, amount, "USD").await);
    }
    let mut bobs_transactions = Vec::new();
    for amount in [400, 500] {
        bobs_transactions.push(app.credit(&bob, amount, "USD").await);
    }
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            &json!({"to_user_id": bob.id, "amount": 50, "currency": "USD"}),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{}", transfer.body);
    alices_transactions.push(transfer.body.clone());

    let all_transactions: Vec<&Value> = alices_transactions
        .iter()
        .chain(&bobs_transactions)
        .collect();
    let everything = events_of(&app, &admin, "", &all_transactions).await;
    let alices = events_of(
        &app,
        &alice,
        "",
        &alices_transactions.iter().collect::<Vec<_>>(),
    )
    .await;
    let new =
        |events: &[Value]| -> BTreeSet<i64> { ids(events).difference(&before).copied().collect() };
    let alice_new = new(&alices);
    let alice_completed: BTreeSet<i64> = new(&alices
        .iter()
        .filter(|e| e["type"] == "transaction.completed")
        .cloned()
        .collect::<Vec<_>>());
    let not_alices: BTreeSet<i64> = ids(&everything)
        .difference(&ids(&alices))
        .copied()
        .collect();
    assert_eq!(alice_completed.len(), 4, "three credits and a transfer");
    assert!(!not_alices.is_empty(), "bob's credits are not alice's");

    // Fanned out first, so that the log holds every delivery there will be; then all sent.
    wait_for_dispatch(&app, &admin).await;
    let settled = |expected: BTreeSet<i64>| {
        move |log: &[Value]| {
            all_delivered(log, &expected) && log.iter().all(|d| d["status"] == "delivered")
        }
    };
    wait_for_log(&app, &alice, &all_hook, settled(alice_new.clone())).await;
    wait_for_log(&app, &alice, &typed_hook, settled(alice_completed.clone())).await;
    wait_for_log(&app, &admin, &admin_hook, settled(new(&everything))).await;

    let by_id: BTreeMap<i64, &Value> = everything
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e))
        .collect();
    for (path, secret, hook, owner) in [
        ("/alice", &all_secret, &all_hook, &alice),
        ("/typed", &typed_secret, &typed_hook, &alice),
        ("/admin", &admin_secret, &admin_hook, &admin),
    ] {
        let received = receiver.received(path);
        let mut seen = BTreeSet::new();
        for delivery in &received {
            delivery.assert_signed_with(secret);
            let event = delivery.event();
            let id = event["id"].as_i64().unwrap();
            assert!(seen.insert(id), "{path}: event {id} delivered twice");
            // The body is the event as GET /events shows it.
            assert_eq!(&&event, by_id.get(&id).expect("a logged event"), "{path}");
        }
        // The delivery log shows each of them, delivered at the first attempt.
        let log = deliveries(&app, owner, hook).await;
        assert_eq!(log.len(), received.len(), "{path}: {log:#?}");
        for entry in &log {
            assert_eq!(entry["status"], "delivered");
            assert_eq!(entry["attempts"], 1);
            assert_eq!(entry["last_status_code"], 200);
            assert!(entry["next_attempt_at"].is_null() && entry["delivered_at"].is_string());
        }
    }
    let alice_all = ids(&receiver
        .received("/alice")
        .iter()
        .map(Received::event)
        .collect::<Vec<_>>());
    assert!(alice_new.is_subset(&alice_all));
    assert!(
        alice_all.is_subset(&ids(&alices)),
        "only events of alice's accounts"
    );
    assert!(alice_all.is_disjoint(&not_alices));
    let typed: Vec<Value> = receiver
        .received("/typed")
        .iter()
        .map(Received::event)
        .collect();
    assert!(typed.iter().all(|e| e["type"] == "transaction.completed"));
    assert!(ids(&typed).is_subset(&ids(&alices)) && alice_completed.is_subset(&ids(&typed)));
    let admin_all = ids(&receiver
        .received("/admin")
        .iter()
        .map(Received::event)
        .collect::<Vec<_>>());
    assert!(not_alices
        .intersection(&new(&everything))
        .all(|id| admin_all.contains(id)));

    // Listings hide the secret and other users' subscriptions; another user's is 404.
    let listed = app.get("/api/v1/webhooks", &alice.token).await;
    assert_eq!(listed.status, StatusCode::OK);
    let hooks = listed.body["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert!(hooks
        .iter()
        .all(|h| h.get("secret").is_none() && h["status"] == "active"));
    assert_eq!(hooks[1]["types"], json!(["transaction.completed"]));
    let bobs = app.get("/api/v1/webhooks", &bob.token).await;
    assert_eq!(bobs.body["webhooks"], json!([]));
    app.get(
        &format!("/api/v1/webhooks?user_id={}", alice.id),
        &bob.token,
    )
    .await
    .assert_problem(403, "forbidden");
    let as_admin = app
        .get(
            &format!("/api/v1/webhooks?user_id={}", alice.id),
            &admin.token,
        )
        .await;
    assert_eq!(as_admin.body["webhooks"].as_array().unwrap().len(), 2);
    for (method, path) in [
        (
            Method::GET,
            format!("/api/v1/webhooks/{all_hook}/deliveries"),
        ),
        (Method::POST, format!("/api/v1/webhooks/{all_hook}/enable")),
        (Method::DELETE, format!("/api/v1/webhooks/{all_hook}")),
    ] {
        app.request(method, &path, Some(&bob.token), None, None)
            .await
            .assert_problem(404, "not_found");
    }

    // Paging the log, newest first.
    let first = app
        .get(
            &format!("/api/v1/webhooks/{all_hook}/deliveries?limit=2"),
            &alice.token,
        )
        .await;
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let second = app
        .get(
            &format!("/api/v1/webhooks/{all_hook}/deliveries?limit=2&cursor={cursor}"),
            &alice.token,
        )
        .await;
    let page_ids: Vec<i64> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["items"].as_array().unwrap())
        .map(|d| d["event_id"].as_i64().unwrap())
        .collect();
    assert!(
        page_ids.windows(2).all(|pair| pair[0] > pair[1]),
        "{page_ids:?}"
    );

    // Deleting stops deliveries and is audited.
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/api/v1/webhooks/{typed_hook}"),
            Some(&alice.token),
            None,
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let audited: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM audit_logs WHERE entity_type = 'webhook' AND action IN ('webhook.created', 'webhook.deleted')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 4);
}

#[actix_web::test]
async fn failed_attempts_are_retried_with_backoff_until_a_2xx() {
    let (app, _admin) = TestApp::spawn_with_admin(fast).await;
    let receiver = Receiver::start().await;
    receiver.state.fail_first.store(2, Ordering::SeqCst);
    let alice = app.user("alice").await;
    let (hook, secret) = subscribe(
        &app,
        &alice,
        json!({"url": format!("{}/retry", receiver.base), "types": ["transaction.completed"]}),
    )
    .await;
    let credit = app.credit(&alice, 700, "EUR").await;
    let completed = events_of(&app, &alice, "&types=transaction.completed", &[&credit]).await;
    let event = completed
        .iter()
        .find(|e| e["payload"]["id"] == credit["id"])
        .unwrap_or_else(|| panic!("the credit's event among {completed:#?}"));
    let id = event["id"].as_i64().unwrap();
    let log = wait_for_log(&app, &alice, &hook, |log| {
        all_delivered(log, &BTreeSet::from([id]))
    })
    .await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["attempts"], 3, "two 500s, then a 200: {log:#?}");
    assert_eq!(log[0]["last_status_code"], 200);
    let received = receiver.received("/retry");
    assert_eq!(received.len(), 3);
    for delivery in &received {
        delivery.assert_signed_with(&secret);
        assert_eq!(
            delivery.id,
            id.to_string(),
            "every attempt carries the same event id"
        );
    }
    let listed = app.get("/api/v1/webhooks", &alice.token).await;
    assert_eq!(
        listed.body["webhooks"][0]["consecutive_failures"], 0,
        "a 2xx ends the run"
    );
}

#[actix_web::test]
async fn a_run_of_failures_disables_the_subscription_and_says_so_in_the_log() {
    let (app, _admin) = TestApp::spawn_with_admin(|settings| {
        fast(settings);
        settings.webhooks.max_attempts = 2;
        settings.webhooks.disable_after_failures = 3;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.state.always_fail.store(true, Ordering::SeqCst);
    let alice = app.user("alice").await;
    let (hook, _) = subscribe(
        &app,
        &alice,
        json!({"url": format!("{}/down", receiver.base), "types": ["transaction.completed"]}),
    )
    .await;
    app.credit(&alice, 100, "USD").await;
    app.credit(&alice, 200, "USD").await;

    let give_up = Instant::now() + DEADLINE;
    let disabled = loop {
        let found = events(&app, &alice, "&types=webhook.disabled").await;
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < give_up, "never disabled");
        tokio::time::sleep(POLL_PAUSE).await;
    };
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["stream"], format!("webhook:{hook}"));
    assert_eq!(disabled[0]["payload"]["webhook_id"], hook);
    assert_eq!(disabled[0]["payload"]["consecutive_failures"], 3);
    assert_eq!(disabled[0]["payload"]["last_status_code"], 500);
    let listed = app.get("/api/v1/webhooks", &alice.token).await;
    let listed = &listed.body["webhooks"][0];
    assert_eq!(listed["status"], "disabled");
    assert!(listed["disabled_at"].is_string());
    // Three attempts made the run: the first delivery failed twice (gave up), the second once.
    // Deliveries are sent side by side, so the second's next attempt may already have been
    // under way when the third failure disabled the subscription: at most one more.
    let log = deliveries(&app, &alice, &hook).await;
    let attempts: i64 = log.iter().map(|d| d["attempts"].as_i64().unwrap()).sum();
    assert!((3..=4).contains(&attempts), "{log:#?}");
    assert!(log.iter().any(|d| d["status"] == "failed"));
    assert!(log.iter().all(|d| d["last_status_code"] == 500));
    // An attempt is counted when it is claimed, so the last may still be on its way.
    let give_up = Instant::now() + DEADLINE;
    while (receiver.received("/down").len() as i64) < attempts && Instant::now() < give_up {
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert_eq!(
        receiver.received("/down").len() as i64,
        attempts,
        "nothing is sent once disabled"
    );

    // Enabling resumes the pending delivery; the receiver is back.
    receiver.state.always_fail.store(false, Ordering::SeqCst);
    let enabled = app
        .post(
            &format!("/api/v1/webhooks/{hook}/enable"),
            Some(&alice.token),
            &json!({}),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    assert_eq!(enabled.body["status"], "active");
    assert_eq!(enabled.body["consecutive_failures"], 0);
    // The second delivery is pending again, unless its last attempt was the one already under
    // way at the disabling (then it gave up too): a new event is delivered either way.
    app.credit(&alice, 300, "USD").await;
    wait_for_log(&app, &alice, &hook, |log| {
        log.iter().any(|d| d["status"] == "delivered")
    })
    .await;
    let audited: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT action FROM audit_logs WHERE entity_type = 'webhook' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        audited,
        ["webhook.created", "webhook.disabled", "webhook.enabled"]
    );
}

#[actix_web::test]
async fn bad_subscriptions_are_refused_and_change_nothing() {
    let app = TestApp::spawn_with(fast).await;
    let alice = app.user("alice").await;
    let long = "x".repeat(501);
    for (body, fields) in [
        (json!({"url": "http://example.com/hook"}), vec!["url"]),
        (json!({"url": "http://10.0.0.1/hook"}), vec!["url"]),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            vec!["url"],
        ),
        (
            json!({"url": "http://127.0.0.1.evil.example/"}),
            vec!["url"],
        ),
        (json!({"url": "https://127.0.0.1/hook"}), vec!["url"]),
        (json!({"url": "ftp://127.0.0.1/hook"}), vec!["url"]),
        (
            json!({"url": "http://user:secret@127.0.0.1/hook"}),
            vec!["url"],
        ),
        (json!({"url": "127.0.0.1/hook"}), vec!["url"]),
        (json!({"url": 7}), vec!["url"]),
        (json!({}), vec!["url"]),
        (
            json!({"url": "http://127.0.0.1/", "types": ["transaction.exploded"]}),
            vec!["types"],
        ),
        (
            json!({"url": "http://127.0.0.1/", "types": []}),
            vec!["types"],
        ),
        (
            json!({"url": "http://127.0.0.1/", "types": "hold.created"}),
            vec!["types"],
        ),
        (
            json!({"url": "http://127.0.0.1/", "description": long}),
            vec!["description"],
        ),
        (
            json!({"url": "http://127.0.0.1/", "secret": "mine"}),
            vec!["secret"],
        ),
        (
            json!({"url": "http://example.com/", "types": ["nope"], "description": 1, "user_id": alice.id}),
            vec!["url", "types", "description", "user_id"],
        ),
    ] {
        let reply = app
            .post("/api/v1/webhooks", Some(&alice.token), &body)
            .await;
        reply.assert_problem(422, "validation_failed");
        let mut named = reply.error_fields();
        named.sort();
        let mut fields: Vec<String> = fields.into_iter().map(str::to_owned).collect();
        fields.sort();
        assert_eq!(named, fields, "{body}: {}", reply.body);
    }
    let refused = app
        .post(
            "/api/v1/webhooks",
            Some(&alice.token),
            &json!({"url": "http://example.com/"}),
        )
        .await;
    assert!(
        refused.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("webhooks.allowed_hosts"),
        "{}",
        refused.body
    );
    let https = app
        .post(
            "/api/v1/webhooks",
            Some(&alice.token),
            &json!({"url": "https://127.0.0.1/"}),
        )
        .await;
    assert!(https.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("https"));

    // Nothing was stored or audited.
    let listed = app.get("/api/v1/webhooks", &alice.token).await;
    assert_eq!(listed.body["webhooks"], json!([]));
    let db = app.db().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM webhooks").await, 0);
    assert_eq!(
        count("SELECT count(*) FROM audit_logs WHERE entity_type = 'webhook'").await,
        0
    );

    // Unknown ids and bad queries.
    for path in [
        "/api/v1/webhooks/not-a-uuid/deliveries".to_owned(),
        format!("/api/v1/webhooks/{}/deliveries", uuid::Uuid::new_v4()),
    ] {
        app.get(&path, &alice.token)
            .await
            .assert_problem(404, "not_found");
    }
    let (hook, _) = subscribe(&app, &alice, json!({"url": "http://localhost:9/"})).await;
    let bad = app
        .get(
            &format!("/api/v1/webhooks/{hook}/deliveries?limit=0&cursor=x"),
            &alice.token,
        )
        .await;
    bad.assert_problem(422, "validation_failed");
    let mut named = bad.error_fields();
    named.sort();
    assert_eq!(named, ["cursor", "limit"]);
}

#[actix_web::test]
async fn two_instances_fan_each_event_out_once_per_subscription() {
    let (first, admin) = TestApp::spawn_with_admin(fast).await;
    let url = first.database_url.clone();
    let second = TestApp::spawn_with(|settings| {
        fast(settings);
        settings.database.url = url;
    })
    .await;
    let receiver = Receiver::start().await;
    let alice = first.user("alice").await;
    let (hook, secret) = subscribe(
        &first,
        &alice,
        json!({"url": format!("{}/both", receiver.base), "types": ["transaction.completed"]}),
    )
    .await;
    let (admin_hook, _) = subscribe(
        &second,
        &admin,
        json!({"url": format!("{}/all", receiver.base)}),
    )
    .await;
    let mut credits = Vec::new();
    for n in 0..30 {
        let app = if n % 2 == 0 { &first } else { &second };
        credits.push(app.credit(&alice, 10 + n, "USD").await);
    }
    let credits: Vec<&Value> = credits.iter().collect();
    let expected = ids(&events_of(&first, &alice, "&types=transaction.completed", &credits).await);
    assert_eq!(expected.len(), 30);
    wait_for_log(&second, &alice, &hook, |log| all_delivered(log, &expected)).await;
    wait_for_dispatch(&first, &admin).await;
    let all = ids(&events(&first, &admin, "").await);
    wait_for_log(&first, &admin, &admin_hook, |log| {
        log.iter().all(|d| d["status"] == "delivered") && log.len() >= expected.len()
    })
    .await;

    let received = receiver.received("/both");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for delivery in &received {
        delivery.assert_signed_with(&secret);
        *counts.entry(delivery.id.clone()).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "each event once: {counts:?}"
    );
    assert_eq!(counts.len(), expected.len());
    let mut admin_counts: BTreeMap<String, usize> = BTreeMap::new();
    for delivery in receiver.received("/all") {
        *admin_counts.entry(delivery.id).or_default() += 1;
    }
    assert!(admin_counts.values().all(|&n| n == 1), "{admin_counts:?}");
    assert!(admin_counts
        .keys()
        .all(|id| all.contains(&id.parse().unwrap())));
    // One delivery row per (subscription, event), whichever instance dispatched.
    let rows: i64 = first
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1::text::uuid",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, expected.len());
}

#[actix_web::test]
async fn no_delivery_is_lost_across_a_kill_9_mid_delivery() {
    let database_url = format!(
        "{}/tally_test_{}",
        database_server(),
        uuid::Uuid::new_v4().simple()
    );
    let env = [
        ("TALLY__WEBHOOKS__POLL_INTERVAL_MS", "20".to_owned()),
        ("TALLY__WEBHOOKS__TIMEOUT_MS", "1000".to_owned()),
        ("TALLY__WEBHOOKS__LEASE_MS", "1500".to_owned()),
        ("TALLY__WEBHOOKS__BACKOFF_BASE_MS", "10".to_owned()),
        ("TALLY__WEBHOOKS__BACKOFF_MAX_MS", "40".to_owned()),
        ("TALLY__WEBHOOKS__CONCURRENCY", "4".to_owned()),
    ];
    let mut service = Service::start_with(&database_url, &env).await;
    // Drops the database at the end (TestApp's Drop).
    let app = service.app(&database_url);
    let receiver = Receiver::start().await;
    // Requests are held until the gate opens: the kill comes with deliveries in flight.
    receiver.gate.send_replace(false);
    let alice = app.user("alice").await;
    let (hook, secret) = subscribe(
        &app,
        &alice,
        json!({"url": format!("{}/crash", receiver.base), "types": ["transaction.completed"]}),
    )
    .await;
    let mut credits = Vec::new();
    for n in 0..12 {
        credits.push(app.credit(&alice, 100 + n, "USD").await);
    }
    let credits: Vec<&Value> = credits.iter().collect();
    let expected = ids(&events_of(&app, &alice, "&types=transaction.completed", &credits).await);
    assert_eq!(expected.len(), 12);
    receiver.wait_for_requests(1).await;
    service.kill_9();
    let cut_off = receiver.received("/crash").len();
    assert!(cut_off >= 1);
    receiver.gate.send_replace(true);

    let restarted = Service::start_with(&database_url, &env).await;
    let app2 = restarted.app(&database_url);
    let log = wait_for_log(&app2, &alice, &hook, |log| all_delivered(log, &expected)).await;
    assert_eq!(log.len(), expected.len());
    let received = receiver.received("/crash");
    let mut got = BTreeSet::new();
    for delivery in &received {
        delivery.assert_signed_with(&secret);
        got.insert(delivery.id.parse::<i64>().unwrap());
    }
    assert_eq!(got, expected, "every event at least once");
    // The deliveries cut off by the kill were sent again after their lease.
    assert!(
        received.len() >= expected.len() + cut_off,
        "{} requests, {cut_off} cut off",
        received.len()
    );
}

/// With no active subscription the dispatcher moves its cursor to the live position without
/// fanning anything out; a subscription made then gets what commits after it, nothing before.
#[actix_web::test]
async fn with_no_subscription_the_dispatcher_moves_on_and_a_new_one_starts_from_then() {
    let (app, admin) = TestApp::spawn_with_admin(fast).await;
    let receiver = Receiver::start().await;
    let alice = app.user("alice").await;
    let mut earlier = Vec::new();
    for amount in [100, 200, 300] {
        earlier.push(app.credit(&alice, amount, "USD").await);
    }
    let earlier_events = events_of(&app, &alice, "", &earlier.iter().collect::<Vec<_>>()).await;
    wait_for_dispatch(&app, &admin).await;
    let fanned_out: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(fanned_out, 0);

    let (hook, secret) = subscribe(
        &app,
        &alice,
        json!({"url": format!("{}/alice", receiver.base), "types": ["transaction.completed"]}),
    )
    .await;
    let later = app.credit(&alice, 400, "USD").await;
    let later_events = events_of(&app, &alice, "", &[&later]).await;
    let later_id = later_events
        .iter()
        .find(|e| e["stream"] == format!("transaction:{}", later["id"].as_str().unwrap()))
        .expect("the later credit's event")["id"]
        .as_i64()
        .unwrap();
    wait_for_dispatch(&app, &admin).await;
    let log = wait_for_log(&app, &alice, &hook, |log| {
        all_delivered(log, &BTreeSet::from([later_id]))
    })
    .await;
    let logged: BTreeSet<i64> = log
        .iter()
        .map(|d| d["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(logged, BTreeSet::from([later_id]), "{log:#?}");
    assert!(ids(&earlier_events).is_disjoint(&logged));
    for delivery in receiver.received("/alice") {
        delivery.assert_signed_with(&secret);
    }
}
