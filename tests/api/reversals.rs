//! Reversals (DESIGN.md section 7): who may reverse what, partial reversals bounded by the
//! original's amount on every instance (invariant 10), through the normal posting path.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{TestApp, TestUser};

async fn transfer(app: &TestApp, from: &TestUser, to: &TestUser, amount: i64) -> Value {
    let reply = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&from.token),
            &json!({"to_user_id": to.id, "amount": amount, "currency": "USD"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

async fn reverse(app: &TestApp, user: &TestUser, id: &Value, body: Value) -> crate::helpers::Reply {
    reverse_keyed(app, user, id, body, None).await
}

async fn reverse_keyed(
    app: &TestApp,
    user: &TestUser,
    id: &Value,
    body: Value,
    key: Option<&str>,
) -> crate::helpers::Reply {
    let path = format!("/api/v1/transactions/{}/reverse", id.as_str().expect("id"));
    app.request(Method::POST, &path, Some(&user.token), Some(&body), key)
        .await
}

async fn transaction(app: &TestApp, user: &TestUser, id: &Value) -> Value {
    let reply = app
        .get(
            &format!("/api/v1/transactions/{}", id.as_str().unwrap()),
            &user.token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

#[actix_web::test]
async fn a_payee_refunds_in_parts_until_nothing_is_left() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.credit(&alice, 1_000, "USD").await;
    let paid = transfer(&app, &alice, &bob, 1_000).await;

    let first = reverse(
        &app,
        &bob,
        &paid["id"],
        json!({"amount": 300, "reason": "damaged"}),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["type"], "reversal");
    assert_eq!(first.body["status"], "completed");
    assert_eq!(first.body["reversal_of"], paid["id"]);
    assert_eq!(first.body["from_user_id"], bob.id.to_string());
    assert_eq!(first.body["to_user_id"], alice.id.to_string());
    assert_eq!(first.body["reason"], "damaged");
    assert_eq!(app.balance(&alice, "USD").await, 300);
    assert_eq!(app.balance(&bob, "USD").await, 700);

    let original = transaction(&app, &alice, &paid["id"]).await;
    assert_eq!(original["reversed_amount"], 300);
    assert_eq!(original["reversals"], json!([first.body["id"]]));

    let too_much = reverse(
        &app,
        &bob,
        &paid["id"],
        json!({"amount": 701, "reason": "x"}),
    )
    .await;
    assert_eq!(
        too_much.assert_problem(422, "reversal_exceeds_amount")["remaining"],
        700
    );
    let rest = reverse(&app, &bob, &paid["id"], json!({"reason": "returned"})).await;
    assert_eq!(rest.status, StatusCode::CREATED, "{}", rest.body);
    assert_eq!(rest.body["amount"], 700);
    assert_eq!(app.balance(&alice, "USD").await, 1_000);
    assert_eq!(app.balance(&bob, "USD").await, 0);
    reverse(&app, &bob, &paid["id"], json!({"reason": "again"}))
        .await
        .assert_problem(409, "not_reversible");

    let history = app
        .get("/api/v1/transactions/history?type=reversal", &alice.token)
        .await;
    assert_eq!(history.status, StatusCode::OK);
    assert_eq!(history.body["items"].as_array().unwrap().len(), 2);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn who_may_reverse_what_and_bad_input_change_nothing() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    app.credit(&alice, 1_000, "USD").await;
    let paid = transfer(&app, &alice, &bob, 100).await;
    let refused = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&carol.token),
            &json!({"to_user_id": bob.id, "amount": 5, "currency": "USD"}),
        )
        .await;
    refused.assert_problem(422, "insufficient_funds");
    let failed_id = refused.body["transaction_id"].clone();
    let hold = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            &json!({"to_user_id": bob.id, "amount": 5, "currency": "USD", "hold": {"timeout_s": 60}}),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.body);
    let before = app.row_counts().await;

    // The payer of a transfer cannot take it back; a stranger does not see it.
    reverse(&app, &alice, &paid["id"], json!({"reason": "mine"}))
        .await
        .assert_problem(403, "forbidden");
    reverse(&app, &carol, &paid["id"], json!({"reason": "x"}))
        .await
        .assert_problem(404, "not_found");
    for id in [json!("00000000-0000-0000-0000-000000000001"), json!("nope")] {
        reverse(&app, &admin, &id, json!({"reason": "x"}))
            .await
            .assert_problem(404, "not_found");
    }
    // Not a completed credit, debit or transfer.
    reverse(&app, &admin, &failed_id, json!({"reason": "x"}))
        .await
        .assert_problem(409, "not_reversible");
    reverse(&app, &bob, &hold.body["id"], json!({"reason": "x"}))
        .await
        .assert_problem(409, "not_reversible");
    // Bad bodies.
    for body in [
        json!({"amount": 0, "reason": "x"}),
        json!({"amount": -5, "reason": "x"}),
        json!({"amount": "5", "reason": "x"}),
        json!({"amount": 5}),
        json!({"amount": 5, "reason": ""}),
        json!({"amount": 5, "reason": "a\u{0}b"}),
        json!({"amount": 5, "reason": "x", "other": 1}),
    ] {
        reverse(&app, &bob, &paid["id"], body.clone())
            .await
            .assert_problem(422, "validation_failed");
    }
    assert_eq!(app.row_counts().await, before);

    // A reversal of a reversal is refused.
    let refund = reverse(
        &app,
        &bob,
        &paid["id"],
        json!({"amount": 10, "reason": "x"}),
    )
    .await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.body);
    reverse(&app, &admin, &refund.body["id"], json!({"reason": "x"}))
        .await
        .assert_problem(409, "not_reversible");

    // An admin reverses a credit; with the money spent it fails like any debit, is recorded
    // failed, and leaves the original reversible.
    let credit = app.credit(&carol, 50, "USD").await;
    transfer(&app, &carol, &bob, 50).await;
    let broke = reverse(&app, &admin, &credit["id"], json!({"reason": "fraud"})).await;
    let failed = broke.assert_problem(422, "insufficient_funds")["transaction_id"].clone();
    let recorded = transaction(&app, &admin, &failed).await;
    assert_eq!(recorded["status"], "failed");
    assert_eq!(recorded["reversal_of"], credit["id"]);
    let original = transaction(&app, &admin, &credit["id"]).await;
    assert!(original.get("reversed_amount").is_none(), "{original}");
    // Bob refunds carol; now the admin's reversal of the credit goes through.
    let carols_payment = app
        .get("/api/v1/transactions/history?type=transfer", &carol.token)
        .await;
    let payment = carols_payment.body["items"][0]["id"].clone();
    let back = reverse(&app, &bob, &payment, json!({"reason": "refund"})).await;
    assert_eq!(back.status, StatusCode::CREATED, "{}", back.body);
    let reversed = reverse(&app, &admin, &credit["id"], json!({"reason": "fraud"})).await;
    assert_eq!(reversed.status, StatusCode::CREATED, "{}", reversed.body);
    assert_eq!(app.balance(&carol, "USD").await, 0);
    app.assert_ledger_invariants().await;
}

/// Two reversals that together exceed the original, sent at once to two instances on one
/// database: exactly one passes, every time.
#[actix_web::test]
async fn concurrent_reversals_on_two_instances_never_exceed_the_original() {
    let first = TestApp::spawn().await;
    let url = first.database_url.clone();
    let second = TestApp::spawn_with(move |settings| settings.database.url = url).await;
    let (alice, bob) = (first.user("alice").await, first.user("bob").await);
    const ROUNDS: i64 = 20;
    first.credit(&alice, ROUNDS * 100, "USD").await;
    for round in 0..ROUNDS {
        let paid = transfer(&first, &alice, &bob, 100).await;
        // Keyed: the loser's key must not stay claimed naming a reversal never written.
        let (key_a, key_b) = (format!("a-{round}"), format!("b-{round}"));
        let (one, other) = futures_util::future::join(
            reverse_keyed(
                &first,
                &bob,
                &paid["id"],
                json!({"amount": 60, "reason": "a"}),
                Some(&key_a),
            ),
            reverse_keyed(
                &second,
                &bob,
                &paid["id"],
                json!({"amount": 60, "reason": "b"}),
                Some(&key_b),
            ),
        )
        .await;
        let mut statuses = [one.status, other.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::UNPROCESSABLE_ENTITY],
            "{} {}",
            one.body,
            other.body
        );
        let loser = if one.status == StatusCode::CREATED {
            &other
        } else {
            &one
        };
        assert_eq!(
            loser.assert_problem(422, "reversal_exceeds_amount")["remaining"],
            40
        );
        assert_eq!(
            transaction(&second, &alice, &paid["id"]).await["reversed_amount"],
            60
        );
    }
    assert_eq!(first.balance(&bob, "USD").await, ROUNDS * 40);
    assert_eq!(second.balance(&alice, "USD").await, ROUNDS * 60);
    first.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn verify_finds_reversals_that_do_not_add_up() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.credit(&alice, 1_000, "USD").await;
    let paid = transfer(&app, &alice, &bob, 600).await;
    let refund = reverse(
        &app,
        &bob,
        &paid["id"],
        json!({"amount": 200, "reason": "late"}),
    )
    .await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.body);
    app.assert_ledger_invariants().await;

    // Tamper: the original forgets part of its reversal, and the reversal names other parties.
    let db = app.db().await;
    let original = uuid::Uuid::parse_str(paid["id"].as_str().unwrap()).unwrap();
    let reversal = uuid::Uuid::parse_str(refund.body["id"].as_str().unwrap()).unwrap();
    db.execute(
        "UPDATE transactions SET reversed_amount = 150 WHERE id = $1",
        &[&original],
    )
    .await
    .expect("tamper with reversed_amount");
    db.execute(
        "UPDATE transactions SET to_user_id = from_user_id, from_user_id = to_user_id
         WHERE id = $1",
        &[&reversal],
    )
    .await
    .expect("tamper with the reversal's parties");
    let report = app.verify().await;
    let reversals = crate::helpers::check(&report, "reversals");
    assert_eq!(reversals.violations, 2, "{report}");
    assert!(
        reversals
            .examples
            .iter()
            .any(|example| example.contains("reversed_amount 150, completed reversals sum to 200")),
        "{report}"
    );
    // Replaying the events gives the reversed amount the log recorded, not the tampered one.
    let replay = crate::helpers::check(&report, "event_replay_states");
    assert_eq!(replay.violations, 1, "{report}");
    assert!(
        replay.examples[0].contains("reversed_amount 150, events replay to 200"),
        "{report}"
    );
}
