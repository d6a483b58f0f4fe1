//! The live feed, `GET /api/v1/ws` (DESIGN.md section 10): authentication before the upgrade,
//! each user's events exactly once in cursor order whichever instance committed them, resume by
//! `?after=`, slow clients closed with their last cursor, caps, and shutdown.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::store::events::{read_page, EventCursor, Scope};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::helpers::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Bound on every wait for the feed.
const DEADLINE: Duration = Duration::from_secs(60);

/// How a connection authenticates.
enum Auth<'a> {
    Protocol(&'a str),
    Header(&'a str),
    Ticket(&'a str),
    Nothing,
}

/// Opens the feed; `Err((status, body))` when it is refused before the upgrade.
async fn open(app: &TestApp, auth: Auth<'_>, after: Option<&str>) -> Result<Ws, (u16, Value)> {
    let mut query = Vec::new();
    if let Some(after) = after {
        query.push(format!("after={after}"));
    }
    if let Auth::Ticket(ticket) = auth {
        query.push(format!("ticket={ticket}"));
    }
    let url = format!("ws://127.0.0.1:{}/api/v1/ws?{}", app.port, query.join("&"));
    let mut request = url.into_client_request().expect("a request");
    let headers = request.headers_mut();
    match auth {
        Auth::Protocol(token) => {
            headers.insert(
                "sec-websocket-protocol",
                format!("tally.v1, tally.bearer.{token}").parse().unwrap(),
            );
        }
        Auth::Header(token) => {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            headers.insert("sec-websocket-protocol", "tally.v1".parse().unwrap());
        }
        Auth::Ticket(_) | Auth::Nothing => {
            headers.insert("sec-websocket-protocol", "tally.v1".parse().unwrap());
        }
    }
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake answers in time")
    {
        Ok((ws, response)) => {
            assert_eq!(
                response.headers()["sec-websocket-protocol"],
                "tally.v1",
                "the server answers the feed's subprotocol"
            );
            Ok(ws)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "a refusal is a problem"
            );
            let body = response
                .body()
                .as_deref()
                .map(|bytes| serde_json::from_slice(bytes).expect("a JSON problem"))
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(error) => panic!("the handshake failed: {error}"),
    }
}

async fn open_ok(app: &TestApp, auth: Auth<'_>, after: Option<&str>) -> Ws {
    match open(app, auth, after).await {
        Ok(ws) => ws,
        Err((status, body)) => panic!("the feed was refused: {status} {body}"),
    }
}

/// What the feed said next.
#[derive(Debug)]
enum Next {
    Event(Value),
    Closed(u16, String),
}

/// The next event or close, waiting at most until `deadline`; `None` at the deadline.
async fn next(ws: &mut Ws, deadline: Instant) -> Option<Next> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.next()).await.ok()?;
        match message {
            Some(Ok(Message::Text(text))) => {
                return Some(Next::Event(
                    serde_json::from_str(&text).expect("JSON event"),
                ))
            }
            Some(Ok(Message::Close(frame))) => {
                return Some(match frame {
                    Some(frame) => Next::Closed(u16::from(frame.code), frame.reason.to_string()),
                    None => Next::Closed(1005, String::new()),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("the feed failed: {error}"),
            None => return Some(Next::Closed(1006, String::new())),
        }
    }
}

async fn next_event(ws: &mut Ws) -> Value {
    match next(ws, Instant::now() + DEADLINE).await {
        Some(Next::Event(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The next transaction event: a connection from the live position may first get the events
/// that committed just before it (the registration of its user, say), never fewer.
async fn next_transaction(ws: &mut Ws) -> Value {
    loop {
        let event = next_event(ws).await;
        if event["type"] == "transaction.completed" {
            return event;
        }
        assert!(
            event["type"].as_str().unwrap().starts_with("user."),
            "{event}"
        );
    }
}

fn cursor(event: &Value) -> EventCursor {
    event["cursor"]
        .as_str()
        .expect("cursor")
        .parse()
        .expect("a cursor")
}

/// Every event of `user`'s scope (every event for `None`) in the log, in cursor order, once
/// all of them are readable: the cursor read waits for every older transaction of the server
/// (other tests' too), so it may briefly hold fewer than the table.
async fn stored(app: &TestApp, user: Option<uuid::Uuid>) -> Vec<EventCursor> {
    let db = app.db().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let count: i64 = match user {
            Some(user) => {
                db.query_one(
                    "SELECT count(*) FROM events WHERE $1 IN (user_a, user_b)",
                    &[&user],
                )
                .await
            }
            None => db.query_one("SELECT count(*) FROM events", &[]).await,
        }
        .expect("count events")
        .get(0);
        let mut all = Vec::new();
        let mut after = EventCursor::default();
        loop {
            let page = read_page(&db, after, 1000, Scope { user, types: None })
                .await
                .expect("read events");
            let Some(last) = page.last() else { break };
            after = last.cursor;
            all.extend(page.iter().map(|event| event.cursor));
        }
        if all.len() as i64 == count {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} events readable",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads events until `done` is set and `want` (read when it is) are in; then returns them.
async fn collect(
    ws: &mut Ws,
    done: &Cell<bool>,
    want: impl AsyncFnOnce(&[EventCursor]) -> usize,
    into: &mut Vec<EventCursor>,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done.get() {
        match next(
            ws,
            (Instant::now() + Duration::from_millis(100)).min(deadline),
        )
        .await
        {
            Some(Next::Event(event)) => into.push(cursor(&event)),
            Some(closed) => panic!("the feed closed: {closed:?}"),
            None => assert!(Instant::now() < deadline, "the load did not finish in time"),
        }
    }
    let want = want(into).await;
    while into.len() < want {
        match next(ws, deadline).await {
            Some(Next::Event(event)) => into.push(cursor(&event)),
            other => panic!("{} of {want} events, then {other:?}", into.len()),
        }
    }
}

#[actix_web::test]
async fn every_event_reaches_its_feeds_once_in_order_from_two_instances_and_across_a_resume() {
    let (one, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let url = one.database_url.clone();
    let two = TestApp::spawn_with(|settings| settings.database.url = url).await;
    let alice = one.user("alice").await;
    let bob = one.user("bob").await;
    let carol = two.user("carol").await;
    one.credit(&alice, 1_000_000, "USD").await;
    two.credit(&bob, 1_000_000, "USD").await;

    // Alice from the start of the log on one instance, the admin on the other from the start
    // and from the live position.
    let mut alice_ws = open_ok(&one, Auth::Protocol(&alice.token), Some("0.0")).await;
    let mut admin_ws = open_ok(&two, Auth::Header(&admin.token), Some("0.0")).await;
    let mut live_ws = open_ok(&one, Auth::Protocol(&admin.token), None).await;

    let done = Cell::new(false);
    const WRITERS: usize = 4;
    const TRANSFERS: usize = 15;
    let writers = async {
        let writer = |n: usize| {
            let (apps, alice, bob, carol) = ([&one, &two], &alice, &bob, &carol);
            async move {
                for i in 0..TRANSFERS {
                    let app = apps[(n + i) % 2];
                    let (from, to) = match (n + i) % 3 {
                        0 => (alice, bob),
                        1 => (bob, alice),
                        _ => (bob, carol),
                    };
                    let reply = app
                        .post(
                            "/api/v1/transactions/transfer",
                            Some(&from.token),
                            &json!({"to_user_id": to.id, "amount": 1 + i, "currency": "USD"}),
                        )
                        .await;
                    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
                }
            }
        };
        futures_util::future::join_all((0..WRITERS).map(writer)).await;
        done.set(true);
    };
    // A reader paging GET /events as alice meanwhile.
    let pager = async {
        let mut seen = Vec::new();
        let mut after = "0.0".to_owned();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let finished = done.get();
            let page = one
                .get(
                    &format!("/api/v1/events?after={after}&limit=7"),
                    &alice.token,
                )
                .await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            let items = page.body["items"].as_array().expect("items").clone();
            seen.extend(items.iter().map(cursor));
            after = page.body["next_cursor"]
                .as_str()
                .expect("next_cursor")
                .to_owned();
            if items.is_empty() {
                if finished && seen.len() >= stored(&one, Some(alice.id)).await.len() {
                    return seen;
                }
                assert!(Instant::now() < deadline, "the pager cannot catch up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Alice leaves after ten events and comes back on the other instance with her last cursor.
    let alice_reader = async {
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push(cursor(&next_event(&mut alice_ws).await));
        }
        alice_ws.close(None).await.expect("close");
        let last = seen.last().expect("ten events").to_string();
        let mut again = open_ok(&two, Auth::Protocol(&alice.token), Some(&last)).await;
        collect(
            &mut again,
            &done,
            async |_: &[EventCursor]| stored(&one, Some(alice.id)).await.len(),
            &mut seen,
        )
        .await;
        seen
    };
    let admin_reader = async {
        let mut seen = Vec::new();
        collect(
            &mut admin_ws,
            &done,
            async |_: &[EventCursor]| stored(&one, None).await.len(),
            &mut seen,
        )
        .await;
        seen
    };
    let live_reader = async {
        let mut seen = Vec::new();
        // Everything from its first event on (events that committed just before it connected
        // may come first).
        let want = async |seen: &[EventCursor]| {
            let first = seen.first().copied().unwrap_or_default();
            stored(&one, None)
                .await
                .into_iter()
                .filter(|event| *event >= first)
                .count()
        };
        collect(&mut live_ws, &done, want, &mut seen).await;
        assert!(
            seen.len() >= WRITERS * TRANSFERS,
            "every transfer after it connected"
        );
        seen
    };
    let ((), paged, alice_seen, admin_seen, live_seen) =
        tokio::join!(writers, pager, alice_reader, admin_reader, live_reader);

    let alice_all = stored(&one, Some(alice.id)).await;
    let all = stored(&one, None).await;
    assert!(
        alice_all.len() > 2 * TRANSFERS,
        "the workload touched alice"
    );
    assert_eq!(
        paged, alice_all,
        "the pager saw alice's events once each, in order"
    );
    assert_eq!(
        alice_seen, alice_all,
        "alice's feed, across a resume on another instance"
    );
    assert_eq!(admin_seen, all, "the admin's feed from the start");
    let tail = &all[all.len() - live_seen.len()..];
    assert_eq!(
        live_seen, tail,
        "the live feed is the log's tail, without a gap"
    );
}

#[actix_web::test]
async fn credentials_are_checked_before_the_upgrade_and_tickets_expire_by_the_app_clock() {
    let clock = Arc::new(tally::clock::ManualClock::new(chrono::Utc::now()));
    let app = TestApp::spawn_with_clock(clock.clone(), |_| {}).await;
    let alice = app.user("alice").await;

    for auth in [
        Auth::Protocol("not-a-token"),
        Auth::Header("not-a-token"),
        Auth::Ticket("x.y.z"),
        Auth::Nothing,
    ] {
        let (status, body) = open(&app, auth, None).await.expect_err("refused");
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{body}"
        );
    }
    // An access token is not a ticket.
    let (status, _) = open(&app, Auth::Ticket(&alice.token), None)
        .await
        .expect_err("refused");
    assert_eq!(status, 401);
    let (status, body) = open(&app, Auth::Protocol(&alice.token), Some("nope"))
        .await
        .expect_err("refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("validation_failed"))
    );

    // A plain GET is told to upgrade (and documented so: the reply is checked against it).
    let plain = app.get("/api/v1/ws", &alice.token).await;
    plain.assert_problem(426, "upgrade_required");
    let plain = app
        .request(Method::GET, "/api/v1/ws", None, None, None)
        .await;
    plain.assert_problem(401, "unauthorized");

    let issued = app
        .post("/api/v1/ws/ticket", Some(&alice.token), &json!({}))
        .await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    let ticket = issued.body["ticket"].as_str().expect("ticket").to_owned();
    let expires_at: chrono::DateTime<chrono::Utc> = issued.body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("a time");
    assert_eq!(
        expires_at - tally::clock::Clock::now(&*clock),
        chrono::TimeDelta::seconds(30)
    );
    let mut ws = open_ok(&app, Auth::Ticket(&ticket), None).await;
    app.credit(&alice, 100, "USD").await;
    let event = next_transaction(&mut ws).await;
    assert_eq!(event["payload"]["to_user_id"], json!(alice.id), "{event}");

    clock.advance(chrono::TimeDelta::seconds(30));
    let (status, body) = open(&app, Auth::Ticket(&ticket), None)
        .await
        .expect_err("refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let refused = app
        .request(Method::POST, "/api/v1/ws/ticket", None, None, None)
        .await;
    refused.assert_problem(401, "unauthorized");
}

#[actix_web::test]
async fn a_user_gets_only_their_events_and_an_admin_gets_every_event() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut alice_ws = open_ok(&app, Auth::Protocol(&alice.token), None).await;
    let mut bob_ws = open_ok(&app, Auth::Header(&bob.token), None).await;
    let mut admin_ws = open_ok(&app, Auth::Protocol(&admin.token), None).await;

    let first = app.credit(&alice, 100, "USD").await;
    let bobs = app.credit(&bob, 200, "USD").await;
    let marker = app.credit(&alice, 300, "USD").await;
    let ids = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .map(|event| event["payload"]["id"].clone())
            .collect()
    };
    let alice_got = [
        next_transaction(&mut alice_ws).await,
        next_transaction(&mut alice_ws).await,
    ];
    // Bob's credit committed between alice's two: had it been sent to her, it would be second.
    assert_eq!(
        ids(&alice_got),
        vec![first["id"].clone(), marker["id"].clone()],
        "{alice_got:?}"
    );
    let bob_got = [next_transaction(&mut bob_ws).await];
    assert_eq!(ids(&bob_got), vec![bobs["id"].clone()]);
    let admin_got = [
        next_transaction(&mut admin_ws).await,
        next_transaction(&mut admin_ws).await,
        next_transaction(&mut admin_ws).await,
    ];
    assert_eq!(
        ids(&admin_got),
        vec![
            first["id"].clone(),
            bobs["id"].clone(),
            marker["id"].clone()
        ]
    );
    // The message is the GET /events item.
    let page = app.get("/api/v1/events?limit=1000", &admin.token).await;
    let listed = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["cursor"] == admin_got[0]["cursor"])
        .expect("listed");
    assert_eq!(listed, &admin_got[0]);
}

#[actix_web::test]
async fn a_slow_client_is_closed_with_its_last_cursor_and_resumes_from_it_without_a_gap() {
    let app = TestApp::spawn_with(|settings| settings.feed.buffer_messages = 4).await;
    let alice = app.user("alice").await;
    let page = app.get("/api/v1/events", &alice.token).await;
    let start = page.body["next_cursor"]
        .as_str()
        .expect("next_cursor")
        .to_owned();
    let mut ws = open_ok(&app, Auth::Protocol(&alice.token), Some(&start)).await;
    let slow_before = app.metric("tally_feed_slow_client_closes_total").await;
    // Thirty events in one commit: one page for the tailer, more than the buffer holds. A bulk
    // that commits while the connection still catches up from the log is sent from there, not
    // through the buffer (a loaded machine can delay the connection's start that long): the
    // next bulk then comes live. Bounded: a few bulks at most.
    let items: Vec<Value> = (1..=30)
        .map(|n| json!({"type": "credit", "amount": n, "currency": "USD"}))
        .collect();
    let parsed_start: EventCursor = start.parse().expect("a cursor");
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut closed = None;
    for _ in 0..5 {
        let reply = app
            .post(
                "/api/v1/transactions/bulk",
                Some(&alice.token),
                &json!({"mode": "atomic", "transactions": items}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let written = stored(&app, Some(alice.id))
            .await
            .into_iter()
            .filter(|event| *event > parsed_start)
            .count();
        while seen.len() < written {
            match next(&mut ws, deadline).await.expect("closed in time") {
                Next::Event(event) => seen.push(cursor(&event)),
                Next::Closed(code, reason) => {
                    closed = Some((code, reason));
                    break;
                }
            }
        }
        if closed.is_some() {
            break;
        }
    }
    let (code, reason) = closed.expect("a live bulk overflows the buffer");
    assert_eq!(code, 4008, "{reason}");
    let after = reason
        .split("after=")
        .nth(1)
        .expect("the reason carries the cursor");
    let after: EventCursor = after.parse().expect("a cursor");
    if let Some(last) = seen.last() {
        assert_eq!(&after, last, "the last cursor sent");
    }
    assert!(app.metric("tally_feed_slow_client_closes_total").await >= slow_before + 1.0);

    let mut again = open_ok(&app, Auth::Protocol(&alice.token), Some(&after.to_string())).await;
    let expected: Vec<EventCursor> = stored(&app, Some(alice.id))
        .await
        .into_iter()
        .filter(|event| *event > parsed_start)
        .collect();
    assert!(expected.len() >= 30);
    while seen.len() < expected.len() {
        seen.push(cursor(&next_event(&mut again).await));
    }
    assert_eq!(
        seen, expected,
        "every event after the start, once, in order"
    );
}

/// Resident memory of this process, kB (Linux).
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[actix_web::test]
async fn many_idle_connections_keep_memory_bounded_and_the_caps_refuse_the_excess() {
    const PER_USER: usize = 150;
    const TOTAL: usize = 200;
    let app = TestApp::spawn_with(|settings| {
        settings.feed.max_connections = TOTAL;
        settings.feed.max_connections_per_user = PER_USER;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let before_kb = rss_kb();
    let mut open_sockets = Vec::new();
    for _ in 0..PER_USER {
        open_sockets.push(open_ok(&app, Auth::Protocol(&alice.token), None).await);
    }
    let (status, body) = open(&app, Auth::Protocol(&alice.token), None)
        .await
        .expect_err("refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_connections")),
        "{body}"
    );
    for _ in PER_USER..TOTAL {
        open_sockets.push(open_ok(&app, Auth::Protocol(&bob.token), None).await);
    }
    let (status, body) = open(&app, Auth::Protocol(&bob.token), None)
        .await
        .expect_err("refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("feed_full")),
        "{body}"
    );
    assert!(
        app.metric("tally_feed_refused_total{reason=\"user_cap\"}")
            .await
            >= 1.0
    );
    assert!(
        app.metric("tally_feed_refused_total{reason=\"instance_cap\"}")
            .await
            >= 1.0
    );

    // Every connection is live: one credit reaches each of alice's.
    app.credit(&alice, 5, "USD").await;
    for ws in &mut open_sockets[..PER_USER] {
        next_transaction(ws).await;
    }
    let grown_kb = rss_kb().saturating_sub(before_kb);
    eprintln!("{TOTAL} feed connections (both ends in this process): RSS grew {grown_kb} kB");
    assert!(
        grown_kb < 96 * 1024,
        "RSS grew {grown_kb} kB for {TOTAL} connections"
    );

    // A closed connection frees its place.
    let mut first = open_sockets.swap_remove(0);
    first.close(None).await.expect("close");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match open(&app, Auth::Protocol(&alice.token), None).await {
            Ok(_) => break,
            Err((status, _)) => {
                assert!(
                    Instant::now() < deadline,
                    "the place was not freed: {status}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[actix_web::test]
async fn connections_are_closed_with_1001_and_their_cursor_on_shutdown() {
    let mut settings = test_settings();
    settings.http.shutdown_delay_ms = 0;
    let database_url = settings.database.url.clone();
    let application = tally::startup::Application::build(settings.clone())
        .await
        .expect("builds");
    let port = application.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = actix_web::rt::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        database_url,
        settings,
        http: http_client(),
    };
    let alice = app.user("alice").await;
    let mut ws = open_ok(&app, Auth::Protocol(&alice.token), None).await;
    app.credit(&alice, 100, "USD").await;
    let last = cursor(&next_transaction(&mut ws).await);
    stop.send(()).expect("the app runs");
    match next(&mut ws, Instant::now() + DEADLINE).await {
        Some(Next::Closed(code, reason)) => {
            assert_eq!(code, u16::from(CloseCode::Away), "{reason}");
            assert_eq!(reason, format!("going away; after={last}"));
        }
        other => panic!("expected a close, got {other:?}"),
    }
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the shutdown ends in time")
        .expect("joined")
        .expect("a clean shutdown");
}
