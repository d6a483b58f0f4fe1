//! Credits, debits, transfers, reads, history, idempotency, balances and the operations
//! endpoints, end to end (DESIGN.md sections 2 and 4).

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const CREDIT: &str = "/api/v1/transactions/credit";
const DEBIT: &str = "/api/v1/transactions/debit";
const TRANSFER: &str = "/api/v1/transactions/transfer";
const HISTORY: &str = "/api/v1/transactions/history";

fn keys(body: &Value) -> BTreeSet<String> {
    body.as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn timestamp(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp string"))
        .expect("an RFC 3339 timestamp")
        .with_timezone(&Utc)
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

fn id_of(body: &Value) -> Uuid {
    Uuid::parse_str(body["id"].as_str().expect("id")).expect("a UUID id")
}

/// What a transaction reply must say.
struct Expected<'a> {
    kind: &'a str,
    status: &'a str,
    from: Option<Uuid>,
    to: Option<Uuid>,
    amount: i64,
    currency: &'a str,
}

/// Asserts the exact shape and values of a transaction on the wire (DESIGN.md section 4).
#[track_caller]
fn assert_transaction(body: &Value, expected: &Expected<'_>) {
    assert_eq!(
        keys(body),
        [
            "id",
            "type",
            "status",
            "from_user_id",
            "to_user_id",
            "amount",
            "currency",
            "description",
            "reference",
            "failure_reason",
            "created_at",
            "completed_at",
        ]
        .iter()
        .map(|k| (*k).to_owned())
        .collect::<BTreeSet<_>>(),
        "body: {body}"
    );
    id_of(body);
    assert_eq!(body["type"], expected.kind, "body: {body}");
    assert_eq!(body["status"], expected.status, "body: {body}");
    let party = |id: Option<Uuid>| id.map_or(Value::Null, |id| Value::String(id.to_string()));
    assert_eq!(body["from_user_id"], party(expected.from), "body: {body}");
    assert_eq!(body["to_user_id"], party(expected.to), "body: {body}");
    assert_eq!(
        body["amount"].as_i64(),
        Some(expected.amount),
        "body: {body}"
    );
    assert!(body["amount"].is_i64(), "an integer amount: {body}");
    assert_eq!(body["currency"], expected.currency, "body: {body}");
    let created = timestamp(&body["created_at"]);
    match expected.status {
        "completed" => {
            assert!(body["failure_reason"].is_null(), "body: {body}");
            assert!(timestamp(&body["completed_at"]) >= created, "body: {body}");
        }
        "failed" => {
            assert_eq!(body["failure_reason"], "insufficient_funds", "body: {body}");
            assert!(body["completed_at"].is_null(), "body: {body}");
        }
        other => panic!("unexpected status {other}"),
    }
}

/// Asserts a 201 transaction reply with a Location header naming it; returns its body.
#[track_caller]
fn assert_created(reply: &Reply, expected: &Expected<'_>) -> Value {
    assert_eq!(reply.status, StatusCode::CREATED, "body: {}", reply.body);
    assert!(
        reply.content_type().starts_with("application/json"),
        "{}",
        reply.content_type()
    );
    assert_transaction(&reply.body, expected);
    assert_eq!(
        header(reply, "location"),
        Some(format!("/api/v1/transactions/{}", id_of(&reply.body)).as_str())
    );
    reply.body.clone()
}

async fn post_keyed(
    app: &TestApp,
    path: &str,
    user: &TestUser,
    body: &Value,
    key: Option<&str>,
) -> Reply {
    app.request(Method::POST, path, Some(&user.token), Some(body), key)
        .await
}

async fn transfer(
    app: &TestApp,
    from: &TestUser,
    to: &TestUser,
    amount: i64,
    currency: &str,
) -> Reply {
    app.post(
        TRANSFER,
        Some(&from.token),
        &json!({"to_user_id": to.id, "amount": amount, "currency": currency}),
    )
    .await
}

async fn debit(app: &TestApp, user: &TestUser, amount: i64, currency: &str) -> Reply {
    app.post(
        DEBIT,
        Some(&user.token),
        &json!({"amount": amount, "currency": currency}),
    )
    .await
}

/// Every page of the user's history with `limit`, following `next_cursor`.
async fn all_pages(app: &TestApp, user: &TestUser, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("{HISTORY}?limit={limit}"),
            Some(cursor) => format!("{HISTORY}?limit={limit}&cursor={cursor}"),
        };
        let reply = app.get(&path, &user.token).await;
        assert_eq!(reply.status, StatusCode::OK, "history: {}", reply.body);
        assert_eq!(
            keys(&reply.body),
            ["items", "next_cursor"]
                .iter()
                .map(|k| (*k).to_owned())
                .collect()
        );
        let items = reply.body["items"].as_array().expect("items").clone();
        assert!(items.len() <= limit, "a page is at most `limit` long");
        pages.push(items);
        match &reply.body["next_cursor"] {
            Value::Null => break,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be a string or null: {other}"),
        }
        assert!(pages.len() < 100, "pagination does not end");
    }
    pages
}

async fn history_ids(app: &TestApp, user: &TestUser) -> Vec<Uuid> {
    all_pages(app, user, 200)
        .await
        .concat()
        .iter()
        .map(id_of)
        .collect()
}

#[actix_web::test]
async fn credit_debit_and_transfer_reply_with_the_full_transaction() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let credit = app
        .post(
            CREDIT,
            Some(&alice.token),
            &json!({"amount": 10_000, "currency": "USD", "description": "salary", "reference": "INV-1"}),
        )
        .await;
    let credit = assert_created(
        &credit,
        &Expected {
            kind: "credit",
            status: "completed",
            from: None,
            to: Some(alice.id),
            amount: 10_000,
            currency: "USD",
        },
    );
    assert_eq!(credit["description"], "salary");
    assert_eq!(credit["reference"], "INV-1");

    let debit = debit(&app, &alice, 2_500, "USD").await;
    let debit = assert_created(
        &debit,
        &Expected {
            kind: "debit",
            status: "completed",
            from: Some(alice.id),
            to: None,
            amount: 2_500,
            currency: "USD",
        },
    );
    assert!(debit["description"].is_null() && debit["reference"].is_null());

    let transfer = app
        .post(
            TRANSFER,
            Some(&alice.token),
            &json!({"to_user_id": bob.id, "amount": 3_000, "currency": "USD", "description": "lunch"}),
        )
        .await;
    let transfer = assert_created(
        &transfer,
        &Expected {
            kind: "transfer",
            status: "completed",
            from: Some(alice.id),
            to: Some(bob.id),
            amount: 3_000,
            currency: "USD",
        },
    );
    assert_eq!(transfer["description"], "lunch");

    assert_eq!(app.balance(&alice, "USD").await, 4_500);
    assert_eq!(app.balance(&bob, "USD").await, 3_000);

    // What the POST answered is what is stored.
    for posted in [&credit, &debit, &transfer] {
        let read = app
            .get(
                &format!("/api/v1/transactions/{}", id_of(posted)),
                &alice.token,
            )
            .await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        assert_eq!(&read.body, posted);
    }
    // Three distinct transactions, created in order.
    let ids: HashSet<Uuid> = [&credit, &debit, &transfer]
        .iter()
        .map(|b| id_of(b))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(timestamp(&credit["created_at"]) <= timestamp(&debit["created_at"]));
    assert!(timestamp(&debit["created_at"]) <= timestamp(&transfer["created_at"]));

    // The ledger: the system account holds the other side of credits and debits.
    let db = app.db().await;
    let system: i64 = db
        .query_one(
            "SELECT amount FROM balances WHERE user_id = '00000000-0000-0000-0000-000000000000' AND currency = 'USD'",
            &[],
        )
        .await
        .expect("system balance")
        .get(0);
    assert_eq!(system, -7_500);
    let entries: i64 = db
        .query_one("SELECT count(*) FROM entries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(entries, 6, "two entries per transaction");
    assert_eq!(app.assert_ledger_invariants().await, 3);
}

#[actix_web::test]
async fn current_balances_have_the_documented_shape() {
    let app = TestApp::spawn().await;
    let alice = app.user("bal").await;

    // A new user has no balances, and a named currency reads as zero.
    let empty = app.get("/api/v1/balances/current", &alice.token).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(
        empty.body,
        json!({"user_id": alice.id.to_string(), "balances": []})
    );

    app.credit(&alice, 1_234, "USD").await;
    app.credit(&alice, 500, "JPY").await;
    let reply = app.get("/api/v1/balances/current", &alice.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        keys(&reply.body),
        ["user_id", "balances"]
            .iter()
            .map(|k| (*k).to_owned())
            .collect()
    );
    assert_eq!(reply.body["user_id"], alice.id.to_string());
    let balances = reply.body["balances"].as_array().expect("balances");
    assert_eq!(balances.len(), 2, "{}", reply.body);
    let mut seen = BTreeSet::new();
    for balance in balances {
        assert_eq!(
            keys(balance),
            [
                "currency",
                "amount",
                "pending",
                "available",
                "overdraft_limit",
                "updated_at"
            ]
            .iter()
            .map(|k| (*k).to_owned())
            .collect()
        );
        let expected = match balance["currency"].as_str().unwrap() {
            "USD" => 1_234,
            "JPY" => 500,
            other => panic!("unexpected currency {other}"),
        };
        assert_eq!(balance["amount"].as_i64(), Some(expected));
        assert_eq!(balance["available"].as_i64(), Some(expected));
        timestamp(&balance["updated_at"]);
        seen.insert(balance["currency"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2);

    let usd = app
        .get("/api/v1/balances/current?currency=USD", &alice.token)
        .await;
    assert_eq!(usd.status, StatusCode::OK, "{}", usd.body);
    assert_eq!(usd.body["balances"].as_array().unwrap().len(), 1);
    assert_eq!(usd.body["balances"][0]["currency"], "USD");
    assert_eq!(usd.body["balances"][0]["amount"], 1_234);

    let eur = app
        .get("/api/v1/balances/current?currency=EUR", &alice.token)
        .await;
    assert_eq!(eur.status, StatusCode::OK, "{}", eur.body);
    assert_eq!(
        eur.body,
        json!({
            "user_id": alice.id.to_string(),
            "balances": [{"currency": "EUR", "amount": 0, "pending": 0, "available": 0, "overdraft_limit": 0, "updated_at": null}]
        })
    );
    // Reading a balance creates nothing.
    assert_eq!(
        app.row_counts().await.balances,
        4,
        "alice's and system's USD and JPY"
    );
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_transaction_is_visible_to_its_parties_only() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    app.credit(&alice, 1_000, "EUR").await;
    let sent = transfer(&app, &alice, &bob, 400, "EUR").await;
    let sent = assert_created(
        &sent,
        &Expected {
            kind: "transfer",
            status: "completed",
            from: Some(alice.id),
            to: Some(bob.id),
            amount: 400,
            currency: "EUR",
        },
    );
    let path = format!("/api/v1/transactions/{}", id_of(&sent));

    for party in [&alice, &bob] {
        let read = app.get(&path, &party.token).await;
        assert_eq!(
            read.status,
            StatusCode::OK,
            "{}: {}",
            party.username,
            read.body
        );
        assert_eq!(read.body, sent);
    }
    app.get(&path, &carol.token)
        .await
        .assert_problem(404, "not_found");
    app.get(
        &format!("/api/v1/transactions/{}", Uuid::now_v7()),
        &alice.token,
    )
    .await
    .assert_problem(404, "not_found");
    for malformed in [
        "not-a-uuid",
        "12345",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        app.get(&format!("/api/v1/transactions/{malformed}"), &alice.token)
            .await
            .assert_problem(404, "not_found");
    }
    // The third user's 404 is the same as for a transaction that does not exist.
    let hidden = app.get(&path, &carol.token).await;
    let missing = app
        .get(
            &format!("/api/v1/transactions/{}", Uuid::now_v7()),
            &carol.token,
        )
        .await;
    assert_eq!(hidden.body, missing.body);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn history_is_newest_first_and_pages_cover_every_transaction_once() {
    let app = TestApp::spawn().await;
    let alice = app.user("hist").await;
    let bob = app.user("peer").await;

    // Seven transactions alice is a party to, of every kind and direction.
    let mut created = Vec::new();
    created.push(id_of(&app.credit(&alice, 10_000, "USD").await));
    created.push(id_of(&app.credit(&alice, 500, "EUR").await));
    let reply = debit(&app, &alice, 100, "USD").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    created.push(id_of(&reply.body));
    let reply = transfer(&app, &alice, &bob, 1_000, "USD").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    created.push(id_of(&reply.body));
    let reply = transfer(&app, &bob, &alice, 250, "USD").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    created.push(id_of(&reply.body));
    created.push(id_of(&app.credit(&alice, 1, "USD").await));
    let reply = transfer(&app, &alice, &bob, 50, "EUR").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    created.push(id_of(&reply.body));
    // Bob's own credit is not in alice's history.
    let bobs_own = id_of(&app.credit(&bob, 77, "USD").await);

    let pages = all_pages(&app, &alice, 3).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 1],
        "pages: {pages:?}"
    );
    let items = pages.concat();
    let ids: Vec<Uuid> = items.iter().map(id_of).collect();
    let newest_first: Vec<Uuid> = created.iter().rev().copied().collect();
    assert_eq!(
        ids, newest_first,
        "every transaction exactly once, newest first"
    );
    assert!(!ids.contains(&bobs_own));
    for pair in items.windows(2) {
        assert!(timestamp(&pair[0]["created_at"]) >= timestamp(&pair[1]["created_at"]));
    }
    // Items are full transactions, identical to GET /transactions/{id}.
    for item in &items {
        let read = app
            .get(
                &format!("/api/v1/transactions/{}", id_of(item)),
                &alice.token,
            )
            .await;
        assert_eq!(&read.body, item);
    }

    // A limit that divides the count exactly still ends with a null cursor.
    let pages = all_pages(&app, &alice, 7).await;
    let lengths: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert!(
        lengths == vec![7] || lengths == vec![7, 0],
        "lengths: {lengths:?}"
    );
    assert_eq!(
        pages.concat().iter().map(id_of).collect::<Vec<_>>(),
        newest_first
    );
    // The default page holds everything.
    let all = app.get(HISTORY, &alice.token).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body["items"].as_array().unwrap().len(), 7);
    assert!(all.body["next_cursor"].is_null());

    // Bob sees the three transfers he is party to and his own credit.
    let bob_ids = history_ids(&app, &bob).await;
    assert_eq!(bob_ids, vec![bobs_own, created[6], created[4], created[3]]);
    assert_eq!(app.assert_ledger_invariants().await, 8);
}

#[actix_web::test]
async fn insufficient_funds_is_recorded_as_a_failed_transaction() {
    let app = TestApp::spawn().await;
    let alice = app.user("poor").await;
    let bob = app.user("payee").await;
    app.credit(&alice, 100, "USD").await;
    let before = app.row_counts().await;

    let refused = transfer(&app, &alice, &bob, 101, "USD").await;
    let problem = refused.assert_problem(422, "insufficient_funds");
    let failed_id = Uuid::parse_str(problem["transaction_id"].as_str().expect("transaction_id"))
        .expect("a UUID");
    let refused_debit = debit(&app, &alice, 500, "USD").await;
    let debit_problem = refused_debit.assert_problem(422, "insufficient_funds");
    let failed_debit_id =
        Uuid::parse_str(debit_problem["transaction_id"].as_str().unwrap()).unwrap();
    assert_ne!(failed_id, failed_debit_id);

    // Money did not move, but the attempt is on record.
    assert_eq!(app.balance(&alice, "USD").await, 100);
    assert_eq!(app.balance(&bob, "USD").await, 0);
    let after = app.row_counts().await;
    assert_eq!(after.transactions, before.transactions + 2);
    assert_eq!(
        after.entries, before.entries,
        "a failed transaction has no entries"
    );

    let read = app
        .get(&format!("/api/v1/transactions/{failed_id}"), &alice.token)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_transaction(
        &read.body,
        &Expected {
            kind: "transfer",
            status: "failed",
            from: Some(alice.id),
            to: Some(bob.id),
            amount: 101,
            currency: "USD",
        },
    );
    let read = app
        .get(
            &format!("/api/v1/transactions/{failed_debit_id}"),
            &alice.token,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_transaction(
        &read.body,
        &Expected {
            kind: "debit",
            status: "failed",
            from: Some(alice.id),
            to: None,
            amount: 500,
            currency: "USD",
        },
    );

    // The recipient never sees a transfer that did not reach them.
    app.get(&format!("/api/v1/transactions/{failed_id}"), &bob.token)
        .await
        .assert_problem(404, "not_found");
    assert!(history_ids(&app, &bob).await.is_empty());
    // The sender sees the attempt in their history.
    let alice_history = history_ids(&app, &alice).await;
    assert_eq!(alice_history.len(), 3);
    assert!(alice_history.contains(&failed_id) && alice_history.contains(&failed_debit_id));

    // The exact balance can still be spent.
    let spent = transfer(&app, &alice, &bob, 100, "USD").await;
    assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
    assert_eq!(app.balance(&alice, "USD").await, 0);
    assert_eq!(app.balance(&bob, "USD").await, 100);
    debit(&app, &alice, 1, "USD")
        .await
        .assert_problem(422, "insufficient_funds");
    assert_eq!(app.assert_ledger_invariants().await, 2);
}

#[actix_web::test]
async fn an_idempotency_key_applies_a_request_once() {
    let app = TestApp::spawn().await;
    let alice = app.user("idem").await;
    let bob = app.user("idem_peer").await;
    let body = json!({"amount": 1_000, "currency": "USD"});

    let first = post_keyed(&app, CREDIT, &alice, &body, Some("key-1")).await;
    let first = assert_created(
        &first,
        &Expected {
            kind: "credit",
            status: "completed",
            from: None,
            to: Some(alice.id),
            amount: 1_000,
            currency: "USD",
        },
    );
    let counts = app.row_counts().await;
    assert_eq!(counts.idempotency_keys, 1);
    for _ in 0..3 {
        let again = post_keyed(&app, CREDIT, &alice, &body, Some("key-1")).await;
        assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
        assert_eq!(again.body, first, "the original result is replayed");
        assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
        assert_eq!(
            header(&again, "location"),
            Some(format!("/api/v1/transactions/{}", id_of(&first)).as_str())
        );
    }
    assert_eq!(app.row_counts().await, counts, "a replay writes nothing");
    assert_eq!(app.balance(&alice, "USD").await, 1_000);

    // The same key with another body is refused and applies nothing.
    for other in [
        json!({"amount": 1_001, "currency": "USD"}),
        json!({"amount": 1_000, "currency": "EUR"}),
        json!({"amount": 1_000, "currency": "USD", "description": "different"}),
    ] {
        post_keyed(&app, CREDIT, &alice, &other, Some("key-1"))
            .await
            .assert_problem(422, "idempotency_key_reused");
    }
    // The same body on another endpoint is another request, not a replay of the credit.
    post_keyed(&app, DEBIT, &alice, &body, Some("key-1"))
        .await
        .assert_problem(422, "idempotency_key_reused");
    post_keyed(
        &app,
        TRANSFER,
        &alice,
        &json!({"to_user_id": bob.id, "amount": 1_000, "currency": "USD"}),
        Some("key-1"),
    )
    .await
    .assert_problem(422, "idempotency_key_reused");
    assert_eq!(app.row_counts().await, counts);
    assert_eq!(app.balance(&alice, "USD").await, 1_000);

    // Keys belong to a user: bob's "key-1" is a new request.
    let bobs = post_keyed(&app, CREDIT, &bob, &body, Some("key-1")).await;
    assert_eq!(bobs.status, StatusCode::CREATED, "{}", bobs.body);
    assert_ne!(id_of(&bobs.body), id_of(&first));
    assert_eq!(bobs.body["to_user_id"], bob.id.to_string());
    assert!(header(&bobs, "idempotent-replayed").is_none());
    assert_eq!(app.balance(&bob, "USD").await, 1_000);
    assert_eq!(app.balance(&alice, "USD").await, 1_000);

    // Transfers and debits too.
    let transfer_body = json!({"to_user_id": bob.id, "amount": 300, "currency": "USD"});
    let t1 = post_keyed(&app, TRANSFER, &alice, &transfer_body, Some("pay-bob")).await;
    assert_eq!(t1.status, StatusCode::CREATED, "{}", t1.body);
    let t2 = post_keyed(&app, TRANSFER, &alice, &transfer_body, Some("pay-bob")).await;
    assert_eq!(t2.status, StatusCode::CREATED, "{}", t2.body);
    assert_eq!(t2.body, t1.body);
    let debit_body = json!({"amount": 200, "currency": "USD"});
    let d1 = post_keyed(&app, DEBIT, &alice, &debit_body, Some("cash-out")).await;
    let d2 = post_keyed(&app, DEBIT, &alice, &debit_body, Some("cash-out")).await;
    assert_eq!(d1.status, StatusCode::CREATED, "{}", d1.body);
    assert_eq!(d2.status, StatusCode::CREATED, "{}", d2.body);
    assert_eq!(d1.body, d2.body);
    assert_eq!(app.balance(&alice, "USD").await, 500);
    assert_eq!(app.balance(&bob, "USD").await, 1_300);
    // Without a key, the same body is a new transaction every time.
    let a = debit(&app, &alice, 10, "USD").await;
    let b = debit(&app, &alice, 10, "USD").await;
    assert_ne!(id_of(&a.body), id_of(&b.body));
    assert_eq!(app.balance(&alice, "USD").await, 480);
    assert_eq!(app.assert_ledger_invariants().await, 6);
}

#[actix_web::test]
async fn a_repeated_key_replays_an_insufficient_funds_rejection() {
    let app = TestApp::spawn().await;
    let alice = app.user("idem_fail").await;
    let bob = app.user("idem_fail_peer").await;
    app.credit(&alice, 50, "GBP").await;
    let body = json!({"to_user_id": bob.id, "amount": 80, "currency": "GBP"});

    let first = post_keyed(&app, TRANSFER, &alice, &body, Some("too-much")).await;
    let failed_id = first.assert_problem(422, "insufficient_funds")["transaction_id"].clone();
    assert!(failed_id.is_string(), "{}", first.body);
    let counts = app.row_counts().await;

    // Even after the money arrives, the key replays its first result.
    app.credit(&alice, 100, "GBP").await;
    let counts_after_credit = app.row_counts().await;
    assert_ne!(counts_after_credit, counts);
    for _ in 0..2 {
        let again = post_keyed(&app, TRANSFER, &alice, &body, Some("too-much")).await;
        let problem = again.assert_problem(422, "insufficient_funds");
        assert_eq!(problem["transaction_id"], failed_id);
    }
    assert_eq!(app.row_counts().await, counts_after_credit);
    assert_eq!(app.balance(&alice, "GBP").await, 150);
    assert_eq!(app.balance(&bob, "GBP").await, 0);

    let read = app
        .get(
            &format!("/api/v1/transactions/{}", failed_id.as_str().unwrap()),
            &alice.token,
        )
        .await;
    assert_eq!(read.body["status"], "failed", "{}", read.body);

    // A new key is a new attempt, which now succeeds.
    let fresh = post_keyed(&app, TRANSFER, &alice, &body, Some("retry-2")).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.body);
    assert_eq!(app.balance(&alice, "GBP").await, 70);
    assert_eq!(app.balance(&bob, "GBP").await, 80);
    assert_eq!(app.assert_ledger_invariants().await, 3);
}

#[actix_web::test]
async fn a_plain_user_cannot_move_money_on_another_account() {
    let app = TestApp::spawn().await;
    let mallory = app.user("mallory").await;
    let victim = app.user("victim").await;
    app.credit(&victim, 5_000, "USD").await;
    let before = app.row_counts().await;

    for path in [CREDIT, DEBIT] {
        for key in [None, Some("sneaky")] {
            post_keyed(
                &app,
                path,
                &mallory,
                &json!({"amount": 100, "currency": "USD", "user_id": victim.id}),
                key,
            )
            .await
            .assert_problem(403, "forbidden");
        }
    }
    // Nor read it.
    app.get(
        &format!("/api/v1/balances/current?user_id={}", victim.id),
        &mallory.token,
    )
    .await
    .assert_problem(403, "forbidden");
    app.get(&format!("{HISTORY}?user_id={}", victim.id), &mallory.token)
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(app.row_counts().await, before, "nothing written");
    assert_eq!(app.balance(&victim, "USD").await, 5_000);
    assert_eq!(app.balance(&mallory, "USD").await, 0);

    // Naming oneself is allowed.
    let own = app
        .post(
            CREDIT,
            Some(&mallory.token),
            &json!({"amount": 100, "currency": "USD", "user_id": mallory.id}),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    assert_eq!(own.body["to_user_id"], mallory.id.to_string());
    assert_eq!(app.balance(&mallory, "USD").await, 100);
    assert_eq!(app.assert_ledger_invariants().await, 2);
}

#[actix_web::test]
async fn an_admin_may_credit_and_debit_another_account() {
    let app = TestApp::spawn().await;
    let admin = app.user("admin").await;
    let customer = app.user("customer").await;
    app.db()
        .await
        .execute(
            "UPDATE users SET role = 'admin' WHERE id = $1",
            &[&admin.id],
        )
        .await
        .expect("promote");
    // The role is in the token, so log in again.
    let login = app
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"username": admin.username, "password": admin.password}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let admin = TestUser {
        token: login.body["access_token"].as_str().unwrap().to_owned(),
        ..admin
    };

    let credit = app
        .post(
            CREDIT,
            Some(&admin.token),
            &json!({"amount": 900, "currency": "CHF", "user_id": customer.id}),
        )
        .await;
    assert_created(
        &credit,
        &Expected {
            kind: "credit",
            status: "completed",
            from: None,
            to: Some(customer.id),
            amount: 900,
            currency: "CHF",
        },
    );
    let debit = app
        .post(
            DEBIT,
            Some(&admin.token),
            &json!({"amount": 400, "currency": "CHF", "user_id": customer.id}),
        )
        .await;
    assert_created(
        &debit,
        &Expected {
            kind: "debit",
            status: "completed",
            from: Some(customer.id),
            to: None,
            amount: 400,
            currency: "CHF",
        },
    );
    assert_eq!(app.balance(&customer, "CHF").await, 500);
    assert_eq!(app.balance(&admin, "CHF").await, 0);
    // An admin reads another user's balances and history.
    let read = app
        .get(
            &format!("/api/v1/balances/current?user_id={}", customer.id),
            &admin.token,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["user_id"], customer.id.to_string());
    assert_eq!(read.body["balances"][0]["amount"], 500);
    // A user that does not exist is a validation error, and nothing is written.
    let before = app.row_counts().await;
    let unknown = app
        .post(
            CREDIT,
            Some(&admin.token),
            &json!({"amount": 1, "currency": "CHF", "user_id": Uuid::now_v7()}),
        )
        .await;
    unknown.assert_problem(422, "validation_failed");
    assert_eq!(unknown.error_fields(), vec!["user_id"]);
    let system = app
        .post(
            CREDIT,
            Some(&admin.token),
            &json!({"amount": 1, "currency": "CHF", "user_id": Uuid::nil()}),
        )
        .await;
    system.assert_problem(422, "validation_failed");
    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.assert_ledger_invariants().await, 2);
}

#[actix_web::test]
async fn currencies_are_separate_accounts() {
    let app = TestApp::spawn().await;
    let alice = app.user("fx").await;
    let bob = app.user("fx_peer").await;
    app.credit(&alice, 1_000, "USD").await;
    app.credit(&alice, 300, "EUR").await;
    app.credit(&alice, 7, "JPY").await;

    // USD money does not pay for EUR.
    debit(&app, &alice, 301, "EUR")
        .await
        .assert_problem(422, "insufficient_funds");
    transfer(&app, &alice, &bob, 8, "JPY")
        .await
        .assert_problem(422, "insufficient_funds");
    let sent = transfer(&app, &alice, &bob, 250, "EUR").await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let sent = transfer(&app, &alice, &bob, 7, "JPY").await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);

    assert_eq!(app.balance(&alice, "USD").await, 1_000);
    assert_eq!(app.balance(&alice, "EUR").await, 50);
    assert_eq!(app.balance(&alice, "JPY").await, 0);
    assert_eq!(app.balance(&bob, "USD").await, 0);
    assert_eq!(app.balance(&bob, "EUR").await, 250);
    assert_eq!(app.balance(&bob, "JPY").await, 7);
    // Amounts are minor units of their own currency: 7 JPY is 7 yen, not 0.07.
    let bob_all = app.get("/api/v1/balances/current", &bob.token).await;
    let mut codes: Vec<&str> = bob_all.body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["currency"].as_str().unwrap())
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, vec!["EUR", "JPY"]);

    // Each currency sums to zero across all accounts, system included.
    let db = app.db().await;
    let rows = db
        .query(
            "SELECT currency, sum(amount)::bigint, count(*) FROM balances GROUP BY currency ORDER BY currency",
            &[],
        )
        .await
        .unwrap();
    let sums: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        sums,
        vec![
            ("EUR".to_owned(), 0, 3),
            ("JPY".to_owned(), 0, 3),
            ("USD".to_owned(), 0, 2)
        ]
    );
    assert_eq!(app.assert_ledger_invariants().await, 5);
}

#[actix_web::test]
async fn the_largest_amount_is_accepted() {
    let app = TestApp::spawn().await;
    let whale = app.user("whale").await;
    let max = 1_000_000_000_000_000_i64;
    app.credit(&whale, max, "USD").await;
    app.credit(&whale, max, "USD").await;
    assert_eq!(app.balance(&whale, "USD").await, 2 * max);
    let reply = debit(&app, &whale, max, "USD").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["amount"].as_i64(), Some(max));
    assert_eq!(app.balance(&whale, "USD").await, max);
    assert_eq!(app.assert_ledger_invariants().await, 3);
}

#[actix_web::test]
async fn health_and_metrics_endpoints() {
    let app = TestApp::spawn().await;
    let alice = app.user("ops").await;
    let tx = app.credit(&alice, 42, "USD").await;
    let read = app
        .get(
            &format!("/api/v1/transactions/{}", id_of(&tx)),
            &alice.token,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);

    let live = app
        .request(Method::GET, "/health/live", None, None, None)
        .await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.body);
    assert_eq!(live.body["status"], "ok");
    let ready = app
        .request(Method::GET, "/health/ready", None, None, None)
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["database"], "ok");

    let response = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("metrics text");
    for needle in [
        "tally_transactions_total",
        "tally_batch_size",
        "tally_batch_commit_duration_seconds",
        "tally_pipeline_queue_depth",
        "tally_http_requests_total",
        "tally_http_request_duration_seconds",
        "route=\"/api/v1/transactions/{id}\"",
        "route=\"/api/v1/transactions/credit\"",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    // The route label is the template, never a raw id.
    assert!(
        !text.contains(&id_of(&tx).to_string()),
        "a transaction id leaked into a label"
    );
    // Counters and the credit's type label are there.
    assert!(
        text.lines()
            .any(|line| line.starts_with("tally_transactions_total{")
                && line.contains("credit")
                && line.contains("completed")),
        "no completed-credit counter:\n{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("tally_http_requests_total{")
                && line.contains("route=\"/api/v1/transactions/{id}\"")
                && line.contains("status=\"200\"")),
        "{text}"
    );
    app.assert_ledger_invariants().await;
}
