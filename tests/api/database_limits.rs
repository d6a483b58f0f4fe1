//! Limits on waiting and on time (issue 10, item 6): every PostgreSQL session Tally opens has a
//! `statement_timeout`, a `lock_timeout` and the UTC time zone (`database.statement_timeout_ms`,
//! `database.lock_timeout_ms`), so a request held up by another session's lock is answered
//! within the configured bound instead of hanging, and the server's or database's default time
//! zone changes nothing Tally computes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// The lock timeout of the lock tests: short, so a test waits little.
const LOCK_TIMEOUT_MS: u64 = 300;
/// A request blocked by a lock must be answered before this: the lock timeout, not the
/// statement timeout, ends the wait (the difference is slack for a loaded test machine).
const STATEMENT_TIMEOUT_MS: u64 = 5_000;
/// Past this the test gives up instead of hanging (the test itself holds the lock).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Sends a request without checking the reply against the OpenAPI document: the document does
/// not list 5xx replies for every operation yet (any route that reads the database can answer
/// 503 `unavailable`).
async fn unchecked(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Reply {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    TestApp::reply(request.send().await.expect("request sent")).await
}

/// The reply of `request`; panics after [`GIVE_UP_AFTER`] rather than hanging the test.
async fn answered(request: impl std::future::Future<Output = Reply>) -> Reply {
    tokio::time::timeout(GIVE_UP_AFTER, request)
        .await
        .expect("no reply: the request hangs on the lock")
}

/// `statement_timeout` and `lock_timeout` (in milliseconds) and `TimeZone` of `client`'s session.
async fn session_limits(client: &tokio_postgres::Client) -> (String, String, String) {
    let row = client
        .query_one(
            "SELECT (SELECT setting FROM pg_settings WHERE name = 'statement_timeout'), \
                    (SELECT setting FROM pg_settings WHERE name = 'lock_timeout'), \
                    current_setting('TimeZone')",
            &[],
        )
        .await
        .expect("session settings");
    (row.get(0), row.get(1), row.get(2))
}

fn short_timeouts(settings: &mut tally::config::Settings) {
    settings.database.lock_timeout_ms = LOCK_TIMEOUT_MS;
    settings.database.statement_timeout_ms = STATEMENT_TIMEOUT_MS;
}

#[actix_web::test]
async fn a_debit_blocked_by_a_held_balance_lock_is_answered_within_the_lock_timeout() {
    let app = TestApp::spawn_with(short_timeouts).await;
    // Without a lock or statement timeout the reply timeout would answer it, 503 after 30 s.
    assert!(STATEMENT_TIMEOUT_MS < app.settings.pipeline.reply_timeout_ms);
    let alice = app.user("locked").await;
    app.credit(&alice, 10_000, "USD").await;
    let before = app.row_counts().await;

    // Another session locks alice's balance row and keeps it.
    let mut blocker = app.db().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.query(
        "SELECT 1 FROM balances WHERE user_id = $1 AND currency = 'USD' FOR UPDATE",
        &[&alice.id],
    )
    .await
    .expect("lock alice's balance");

    let started = Instant::now();
    let reply = answered(unchecked(
        &app,
        reqwest::Method::POST,
        "/api/v1/transactions/debit",
        &alice.token,
        Some(&json!({"amount": 2_500, "currency": "USD"})),
    ))
    .await;
    let waited = started.elapsed();
    // Nothing was written and the retry with the same key is safe: 503 `unavailable`.
    reply.assert_problem(503, "unavailable");
    assert!(
        waited >= Duration::from_millis(LOCK_TIMEOUT_MS)
            && waited < Duration::from_millis(STATEMENT_TIMEOUT_MS),
        "answered after {waited:?}: the lock timeout is {LOCK_TIMEOUT_MS} ms, the statement \
         timeout {STATEMENT_TIMEOUT_MS} ms"
    );
    assert_eq!(
        app.row_counts().await,
        before,
        "the refused debit wrote nothing"
    );

    // Once the lock is released, the account works again.
    lock.rollback().await.expect("release the lock");
    let reply = app
        .post(
            "/api/v1/transactions/debit",
            Some(&alice.token),
            &json!({"amount": 2_500, "currency": "USD"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(app.balance(&alice, "USD").await, 7_500);
    assert_eq!(app.assert_ledger_invariants().await, 2);
}

#[actix_web::test]
async fn a_request_handler_blocked_by_a_held_user_lock_answers_503() {
    let app = TestApp::spawn_with(short_timeouts).await;
    let alice = app.user("lockeduser").await;

    // Deleting a user locks its row (so no batch can post to it meanwhile); another session
    // holds that lock.
    let mut blocker = app.db().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&alice.id])
        .await
        .expect("lock alice's user row");

    let started = Instant::now();
    let reply = answered(unchecked(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/users/{}", alice.id),
        &alice.token,
        None,
    ))
    .await;
    let waited = started.elapsed();
    reply.assert_problem(503, "unavailable");
    assert!(reply.header("retry-after").is_some());
    assert!(
        waited >= Duration::from_millis(LOCK_TIMEOUT_MS)
            && waited < Duration::from_millis(STATEMENT_TIMEOUT_MS),
        "answered after {waited:?}: the lock timeout is {LOCK_TIMEOUT_MS} ms, the statement \
         timeout {STATEMENT_TIMEOUT_MS} ms"
    );
    lock.rollback().await.expect("release the lock");
    let deleted: Option<chrono::DateTime<chrono::Utc>> = app
        .db()
        .await
        .query_one("SELECT deleted_at FROM users WHERE id = $1", &[&alice.id])
        .await
        .expect("alice")
        .get(0);
    assert!(deleted.is_none(), "the refused delete wrote nothing");
}

/// Every pool the service builds, and the maintenance connection of `tally verify`, open
/// sessions with the configured timeouts and the UTC time zone.
#[actix_web::test]
async fn every_session_has_the_configured_timeouts_and_utc() {
    let app = TestApp::spawn_with(short_timeouts).await;
    let database = &app.settings.database;
    let expected = (
        STATEMENT_TIMEOUT_MS.to_string(),
        LOCK_TIMEOUT_MS.to_string(),
        "UTC".to_owned(),
    );
    for (name, pool) in [
        (
            "api",
            tally::store::pool(database, tally::store::APP_NAME, 1).expect("api pool"),
        ),
        (
            "journal",
            tally::store::journal_pool(database, 1).expect("journal pool"),
        ),
        (
            "health",
            tally::store::pool(database, tally::store::HEALTH_APP_NAME, 1).expect("health pool"),
        ),
    ] {
        let client = pool.get().await.expect("a pooled connection");
        assert_eq!(session_limits(&client).await, expected, "{name} pool");
    }
    let (client, connection) =
        tally::store::connect_for_maintenance(database, tally::store::VERIFY_APP_NAME)
            .await
            .expect("maintenance connection");
    assert_eq!(
        session_limits(&client).await,
        ("0".to_owned(), expected.1.clone(), expected.2.clone()),
        "maintenance sessions (migrations, verify) keep the lock timeout and UTC"
    );
    drop(client);
    let _ = connection.await;
}

/// The database's default time zone (`ALTER DATABASE ... SET timezone`, as an operator might
/// set it) does not reach Tally's sessions: a day of the closing-balance series is 24 hours
/// from midnight UTC even across a daylight saving change of that zone. In a session on New
/// York time, `+ interval '1 day'` from 2024-03-10T00:00Z would give a 23-hour day.
#[actix_web::test]
async fn days_are_utc_days_whatever_the_database_time_zone() {
    let url = crate::helpers::create_database().await;
    let name = url.rsplit('/').next().expect("a database name").to_owned();
    let (admin, connection) = tokio_postgres::connect(
        &format!("{}/postgres", database_server()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the server");
    actix_web::rt::spawn(connection);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET timezone = 'America/New_York'"
        ))
        .await
        .expect("give it a New York time zone");
    let app = TestApp::spawn_with(|settings| settings.database.url = url.clone()).await;
    let zone: String = app
        .db()
        .await
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .expect("time zone")
        .get(0);
    assert_eq!(
        zone, "America/New_York",
        "the database default applies to plain sessions"
    );

    let alice = app.user("utc").await;
    let reply = app
        .get(
            "/api/v1/balances/historical?currency=USD&interval=day\
             &from=2024-03-09T00:00:00Z&to=2024-03-12T00:00:00Z",
            &alice.token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let days: Vec<(String, String)> = reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["start"].as_str().expect("start").to_owned(),
                item["end"].as_str().expect("end").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [9, 10, 11]
        .iter()
        .map(|day| {
            (
                format!("2024-03-{day:02}T00:00:00Z"),
                format!("2024-03-{:02}T00:00:00Z", day + 1),
            )
        })
        .collect();
    assert_eq!(days, expected, "UTC days: {}", reply.body);
}
