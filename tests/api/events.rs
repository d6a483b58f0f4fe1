//! The event log as an API (DESIGN.md section 10, issue 14): `GET /events` scoped to the
//! caller's accounts and paged by cursor, the SHA-256 hash chain that `tally verify` checks
//! link by link, and `tally replay`, which rebuilds the projections from the events alone.

use std::collections::HashSet;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::store::chain::{seal, Contention};

use crate::helpers::{check, create_database, Reply, TestApp, TestUser};
use crate::process::run_verify;

const TRANSFER: &str = "/api/v1/transactions/transfer";

/// `from` sends `amount` USD cents to `to` (`extra` fields merged into the body).
async fn transfer(
    app: &TestApp,
    from: &TestUser,
    to: &TestUser,
    amount: i64,
    extra: Value,
) -> Reply {
    let mut body = json!({"to_user_id": to.id, "amount": amount, "currency": "USD"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    app.post(TRANSFER, Some(&from.token), &body).await
}

/// Every event `user` may read, paged `page` at a time from the start; asserts the pages
/// chain (each starts after the last one's `next_cursor`) and never repeat an event.
async fn read_all(app: &TestApp, user: &TestUser, query: &str, page: usize) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    let mut after = "0.0".to_owned();
    // Bounded: far more pages than the test writes events.
    for _ in 0..1_000 {
        let reply = app
            .get(
                &format!("/api/v1/events?after={after}&limit={page}{query}"),
                &user.token,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let items = reply.body["items"].as_array().expect("items").clone();
        let next = reply.body["next_cursor"].as_str().expect("next_cursor");
        if items.is_empty() {
            assert_eq!(next, after, "an empty page stays where it was");
            return events;
        }
        assert_eq!(items.last().unwrap()["cursor"], next);
        events.extend(items);
        after = next.to_owned();
    }
    panic!("the log did not end");
}

fn cursor(event: &Value) -> (i64, i64) {
    let text = event["cursor"].as_str().expect("cursor");
    let (tx, seq) = text.split_once('.').expect("tx.seq");
    (tx.parse().unwrap(), seq.parse().unwrap())
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect()
}

fn touches(event: &Value, user: &TestUser) -> bool {
    event["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .any(|account| account["user_id"] == json!(user.id))
}

#[actix_web::test]
async fn users_read_the_events_of_their_accounts_in_cursor_order_and_admins_read_all() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let anna = app.user("anna").await;
    let ben = app.user("ben").await;
    let carl = app.user("carl").await;
    app.credit(&anna, 5_000, "USD").await;
    let paid = transfer(&app, &anna, &ben, 1_200, json!({})).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.body);
    let refused = transfer(&app, &ben, &anna, 99_999, json!({})).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    app.credit(&carl, 700, "EUR").await;
    // A webhook subscription's life is in its owner's log too.
    let hook = app
        .post(
            "/api/v1/webhooks",
            Some(&anna.token),
            &json!({"url": "http://127.0.0.1:9/hooks"}),
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.body);
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/api/v1/webhooks/{}", hook.body["id"].as_str().unwrap()),
            Some(&anna.token),
            None,
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.wait_for_log_horizon().await;
    let annas = read_all(&app, &anna, "", 1).await;
    assert_eq!(
        types(&annas),
        [
            "user.created",
            "transaction.completed",
            "transaction.completed",
            "transaction.failed",
            "webhook.created",
            "webhook.deleted"
        ],
        "{annas:#?}"
    );
    let bens = read_all(&app, &ben, "", 2).await;
    assert_eq!(
        types(&bens),
        [
            "user.created",
            "transaction.completed",
            "transaction.failed"
        ]
    );
    for (user, events) in [(&anna, &annas), (&ben, &bens)] {
        assert!(events.iter().all(|event| touches(event, user)));
        let cursors: Vec<(i64, i64)> = events.iter().map(cursor).collect();
        assert!(
            cursors.windows(2).all(|pair| pair[0] < pair[1]),
            "{cursors:?}"
        );
        let ids: HashSet<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
        assert_eq!(ids.len(), events.len(), "ids are unique");
    }
    // The transfer's event: both parties, its entries, and the accounts it touches.
    let moved = &annas[2];
    assert_eq!(
        moved["stream"],
        format!("transaction:{}", paid.body["id"].as_str().unwrap())
    );
    assert_eq!(moved["payload"]["amount"], 1_200);
    assert_eq!(moved["payload"]["entries"].as_array().unwrap().len(), 2);
    assert_eq!(
        moved["accounts"],
        json!([{"user_id": anna.id, "currency": "USD"}, {"user_id": ben.id, "currency": "USD"}])
            .as_array()
            .map(|accounts| {
                let mut accounts = accounts.clone();
                accounts.sort_by_key(|account| account.to_string());
                Value::Array(accounts)
            })
            .unwrap(),
    );
    assert!(annas.iter().all(|event| !touches(event, &carl)));

    // A filter by type, and the admin's views: everything, or one user's.
    let completed = read_all(&app, &anna, "&types=transaction.completed", 10).await;
    assert_eq!(types(&completed), ["transaction.completed"; 2]);
    let everything = read_all(&app, &admin, "", 3).await;
    for event in annas.iter().chain(&bens) {
        assert!(everything.contains(event), "the admin misses {event}");
    }
    assert!(everything.iter().any(|event| touches(event, &carl)));
    let as_admin = read_all(&app, &admin, &format!("&user_id={}", ben.id), 100).await;
    assert_eq!(as_admin, bens);

    // Another user's events are not a user's to read.
    let reply = app
        .get(&format!("/api/v1/events?user_id={}", ben.id), &anna.token)
        .await;
    reply.assert_problem(403, "forbidden");
}

#[actix_web::test]
async fn a_bad_query_is_named_field_by_field_and_reads_nothing() {
    let app = TestApp::spawn().await;
    let anna = app.user("anna").await;
    let reply = app
        .get(
            "/api/v1/events?after=12&limit=0&types=transaction.completed,nonsense",
            &anna.token,
        )
        .await;
    reply.assert_problem(422, "validation_failed");
    let mut fields = reply.error_fields();
    fields.sort();
    assert_eq!(fields, ["after", "limit", "types"]);
    for query in [
        "after=-1.2",
        "after=1.2.3",
        "limit=1001",
        "types=",
        "unknown=1",
    ] {
        let reply = app
            .get(&format!("/api/v1/events?{query}"), &anna.token)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            reply.body
        );
    }
    let reply = app
        .request(Method::GET, "/api/v1/events", None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

/// Seals every finished event into the chain, as the background sealer would.
async fn seal_all(app: &TestApp) {
    app.wait_for_log_horizon().await;
    let mut client = app.db().await;
    // Bounded: each round seals up to 10,000 events.
    for _ in 0..100 {
        if seal(&mut client, 10_000, Contention::Wait)
            .await
            .expect("seal")
            == 0
        {
            return;
        }
    }
    panic!("sealing did not finish");
}

#[actix_web::test]
async fn tally_verify_names_the_first_link_of_the_chain_a_changed_event_breaks() {
    let app = TestApp::spawn().await;
    let anna = app.user("anna").await;
    let ben = app.user("ben").await;
    app.credit(&anna, 10_000, "USD").await;
    for amount in 1..=5 {
        let reply = transfer(&app, &anna, &ben, amount, json!({})).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    seal_all(&app).await;
    let report = app.verify().await;
    assert_eq!(check(&report, "event_chain").violations, 0, "{report}");
    let db = app.db().await;
    let sealed: i64 = db
        .query_one(
            "SELECT coalesce(sum(events), 0)::bigint FROM event_seals",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let events: i64 = db
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sealed, events, "every event is sealed");

    // Change the third transfer's amount in its event, as someone with database access might.
    let stored = db
        .query_one(
            "SELECT seq, payload::text FROM events
             WHERE type = 'transaction.completed' AND payload->>'amount' = '3'",
            &[],
        )
        .await
        .unwrap();
    let (seq, original): (i64, String) = (stored.get(0), stored.get(1));
    db.execute(
        "UPDATE events SET payload = jsonb_set(payload::jsonb, '{amount}', '3000') WHERE seq = $1",
        &[&seq],
    )
    .await
    .unwrap();
    let report = app.verify().await;
    let chain = check(&report, "event_chain");
    assert_eq!(chain.violations, 1, "{report}");
    assert!(
        chain.examples[0].starts_with(&format!("first broken link: event {seq} ")),
        "{report}"
    );
    let (clean, printed) = run_verify(&app.database_url);
    assert!(!clean, "{printed}");
    assert!(
        printed.contains("FAIL  event_chain")
            && printed.contains(&format!("first broken link: event {seq} ")),
        "{printed}"
    );

    // The same value written back in another layout is a change too: the chain covers the
    // stored bytes.
    db.execute(
        "UPDATE events SET payload = jsonb_set(payload::jsonb, '{amount}', '3') WHERE seq = $1",
        &[&seq],
    )
    .await
    .unwrap();
    assert_eq!(check(&app.verify().await, "event_chain").violations, 1);

    // Put it back: the chain holds again. Then remove a sealed event: the next event no longer
    // follows the link stored for it.
    db.execute(
        "UPDATE events SET payload = $2::text::json WHERE seq = $1",
        &[&seq, &original],
    )
    .await
    .unwrap();
    assert_eq!(check(&app.verify().await, "event_chain").violations, 0);
    let next: i64 = db
        .query_one(
            "SELECT e.seq FROM events e, events d WHERE d.seq = $1 AND (e.tx, e.seq) > (d.tx, d.seq)
             ORDER BY e.tx, e.seq LIMIT 1",
            &[&seq],
        )
        .await
        .unwrap()
        .get(0);
    db.execute("DELETE FROM events WHERE seq = $1", &[&seq])
        .await
        .unwrap();
    let report = app.verify().await;
    let chain = check(&report, "event_chain");
    assert!(
        chain.examples[0].starts_with(&format!("first broken link: event {next} ")),
        "{report}"
    );
}

/// `tally replay --into <url>` on the app's database; returns (exit success, output).
fn run_replay(app: &TestApp, into: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["replay", "--quiet", "--into", into])
        .env("TALLY__DATABASE__URL", &app.database_url)
        .env("TALLY__LOG__FORMAT", "json")
        .env_remove("TALLY__PROFILE")
        .output()
        .expect("run tally replay");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// A new empty database on the test server, dropped with the returned guard.
async fn empty_database() -> EmptyDatabase {
    EmptyDatabase {
        url: create_database().await,
    }
}

struct EmptyDatabase {
    url: String,
}

impl Drop for EmptyDatabase {
    fn drop(&mut self) {
        // On a thread of its own: `drop` cannot wait on the test's runtime.
        let url = self.url.clone();
        let _ = std::thread::spawn(move || crate::helpers::drop_database(&url)).join();
    }
}

#[actix_web::test]
async fn replay_rebuilds_the_ledger_from_its_events_and_a_corrupted_event_fails_it() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let anna = app.user("anna").await;
    let ben = app.user("ben").await;
    app.credit(&anna, 50_000, "USD").await;
    app.credit(&anna, 20_000, "EUR").await;
    let mut transfers = Vec::new();
    for amount in [1_000, 2_500, 300] {
        let reply = transfer(&app, &anna, &ben, amount, json!({})).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        transfers.push(reply.body);
    }
    // A refused transfer, two holds (one posted in part, one voided), a partial reversal and
    // an exchange.
    let refused = transfer(&app, &ben, &anna, 1_000_000, json!({})).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut holds = Vec::new();
    for amount in [4_000, 600] {
        let reply = transfer(
            &app,
            &anna,
            &ben,
            amount,
            json!({"hold": {"timeout_s": 600}}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        holds.push(reply.body);
    }
    let posted = app
        .request(
            Method::POST,
            &format!(
                "/api/v1/transactions/{}/post",
                holds[0]["id"].as_str().unwrap()
            ),
            Some(&ben.token),
            Some(&json!({"amount": 3_000})),
            None,
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    let voided = app
        .request(
            Method::POST,
            &format!(
                "/api/v1/transactions/{}/void",
                holds[1]["id"].as_str().unwrap()
            ),
            Some(&ben.token),
            None,
            None,
        )
        .await;
    assert!(voided.status.is_success(), "{}", voided.body);
    let reversed = app
        .request(
            Method::POST,
            &format!(
                "/api/v1/transactions/{}/reverse",
                transfers[1]["id"].as_str().unwrap()
            ),
            Some(&ben.token),
            Some(&json!({"amount": 500, "reason": "partial refund"})),
            None,
        )
        .await;
    assert_eq!(reversed.status, StatusCode::CREATED, "{}", reversed.body);
    let rate = app
        .request(
            Method::PUT,
            "/api/v1/rates/EUR/USD",
            Some(&admin.token),
            Some(&json!({"rate": "1.0850", "source": "test desk"})),
            None,
        )
        .await;
    assert_eq!(rate.status, StatusCode::OK, "{}", rate.body);
    let exchanged = app
        .post(
            "/api/v1/transactions/exchange",
            Some(&anna.token),
            &json!({"from_currency": "EUR", "to_currency": "USD", "amount": 10_000,
                    "to_user_id": ben.id}),
        )
        .await;
    assert_eq!(exchanged.status, StatusCode::CREATED, "{}", exchanged.body);
    app.assert_ledger_invariants().await;
    app.wait_for_log_horizon().await;

    let target = empty_database().await;
    let (clean, printed) = run_replay(&app, &target.url);
    assert!(clean, "{printed}");
    assert!(printed.contains("differences        0"), "{printed}");
    assert!(printed.contains("replay matches the source"), "{printed}");
    assert!(printed.contains("2 holds"), "{printed}");
    // What it rebuilt is in the target: the balances equal the source's.
    let (rebuilt, connection) = tokio_postgres::connect(&target.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the replay");
    actix_web::rt::spawn(connection);
    let anna_usd: i64 = rebuilt
        .query_one(
            "SELECT amount FROM replay_balances WHERE user_id = $1 AND currency = 'USD'",
            &[&anna.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(anna_usd, app.balance(&anna, "USD").await);
    // The target is no longer empty: a second replay into it is refused.
    let (clean, printed) = run_replay(&app, &target.url);
    assert!(!clean && printed.contains("not empty"), "{printed}");

    // One corrupted event (an entry's delta changed): the replay differs and says where.
    let db = app.db().await;
    db.execute(
        "UPDATE events SET payload = jsonb_set(payload::jsonb, '{entries,1,delta}', '301')
         WHERE type = 'transaction.completed' AND payload->>'id' = $1",
        &[&transfers[2]["id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    let target = empty_database().await;
    let (clean, printed) = run_replay(&app, &target.url);
    assert!(!clean, "{printed}");
    assert!(
        printed.contains("replay DIFFERS from the source"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("balance {} USD", ben.id)),
        "the payee's balance differs: {printed}"
    );
}
