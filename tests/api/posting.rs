//! The one posting path (issue 10): bounded money (invariant 7), the idempotency key deciding
//! before anything else (invariant 4), and authority taken from the initiator's role at the
//! commit rather than from the token.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const CREDIT: &str = "/api/v1/transactions/credit";
const DEBIT: &str = "/api/v1/transactions/debit";
const TRANSFER: &str = "/api/v1/transactions/transfer";
const BULK: &str = "/api/v1/transactions/bulk";

async fn post_keyed(app: &TestApp, token: &str, path: &str, body: &Value, key: &str) -> Reply {
    app.request(Method::POST, path, Some(token), Some(body), Some(key))
        .await
}

/// An admin sets `user`'s role; asserts 200.
async fn set_role(app: &TestApp, admin: &TestUser, user: Uuid, role: &str) {
    let reply = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{user}"),
            Some(&admin.token),
            Some(&json!({"role": role})),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["role"], role);
}

/// `token`'s holder deletes `user`; asserts 204.
async fn delete_user(app: &TestApp, token: &str, user: Uuid) {
    let reply = app
        .request(
            Method::DELETE,
            &format!("/api/v1/users/{user}"),
            Some(token),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
}

/// The committed supply of `currency` (the negated `system` balance), by SQL.
async fn supply(app: &TestApp, currency: &str) -> i64 {
    app.db()
        .await
        .query_opt(
            "SELECT -amount FROM balances
             WHERE user_id = '00000000-0000-0000-0000-000000000000' AND currency = $1",
            &[&currency],
        )
        .await
        .expect("supply query")
        .map_or(0, |row| row.get(0))
}

/// Reproduces the report of issue 10: one user posting independent bulks of 10,000
/// self-credits of 10^15 USD got 9,223 credits, a balance of 9.22 × 10^18 and `internal` for
/// the rest. Now every item is either committed or refused with `limit_exceeded` (recorded as
/// failed), the balance stops at `ledger.balance_max_minor`, and another user's credits keep
/// working because one user cannot exhaust the supply.
#[actix_web::test]
async fn credits_past_the_balance_bound_are_limit_exceeded_never_internal() {
    let app = TestApp::spawn().await;
    let balance_max = app.settings.ledger.balance_max_minor;
    let greedy = app.user("greedy").await;
    let item = json!({"type": "credit", "amount": 1_000_000_000_000_000i64, "currency": "USD"});
    let items: Vec<Value> = vec![item; 10_000];
    let mut completed = 0;
    for round in 0..2 {
        let reply = app
            .request(
                Method::POST,
                BULK,
                Some(&greedy.token),
                Some(&json!({"mode": "independent", "transactions": items})),
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: {}",
            reply.body
        );
        for result in reply.body["results"].as_array().expect("results") {
            match result["status"].as_str() {
                Some("completed") => completed += 1,
                Some("failed") => {
                    let error = &result["error"];
                    assert_eq!(error["code"], "limit_exceeded", "{result}");
                    assert_eq!(error["limit"]["kind"], "balance_max", "{result}");
                    assert_eq!(error["limit"]["value"], balance_max, "{result}");
                    assert_eq!(error["requested"], 1_000_000_000_000_000i64);
                    assert_eq!(
                        result["transaction"]["failure_reason"], "limit_exceeded",
                        "{result}"
                    );
                    assert!(error["transaction_id"].is_string(), "recorded: {result}");
                }
                _ => panic!("round {round}: neither committed nor refused: {result}"),
            }
        }
    }
    assert_eq!(
        completed,
        balance_max / 1_000_000_000_000_000,
        "exactly the credits that fit are applied"
    );
    assert_eq!(app.balance(&greedy, "USD").await, balance_max);
    // Another user's credits still work: the supply is not exhausted by one user.
    let modest = app.user("modest").await;
    app.credit(&modest, 1_000_000_000_000_000, "USD").await;
    let counts = app.row_counts().await;
    assert_eq!(
        counts.transactions, 20_001,
        "every refusal is recorded as failed"
    );
    app.assert_ledger_invariants().await;
}

/// The supply bound (`ledger.supply_max_minor`) refuses credits that would issue more money
/// than allowed, with the figures a client needs; debits give the room back; the refusal is
/// recorded, and replaying its key answers exactly the same.
#[actix_web::test]
async fn the_supply_bound_refuses_with_the_figures_and_replays_the_same() {
    let app = TestApp::spawn_with(|settings| {
        settings.ledger.balance_max_minor = 600;
        settings.ledger.supply_max_minor = 1_000;
    })
    .await;
    let (a, b) = (app.user("a").await, app.user("b").await);
    app.credit(&a, 600, "EUR").await;
    // Above the balance bound: refused as such, not as supply.
    let over = app
        .post(
            CREDIT,
            Some(&a.token),
            &json!({"amount": 1, "currency": "EUR"}),
        )
        .await;
    let problem = over.assert_problem(422, "limit_exceeded");
    assert_eq!(
        problem["limit"],
        json!({"kind": "balance_max", "currency": "EUR", "value": 600, "window_s": null})
    );
    assert_eq!(
        (problem["used"].as_i64(), problem["remaining"].as_i64()),
        (Some(600), Some(0))
    );

    let body = json!({"amount": 500, "currency": "EUR"});
    let refused = post_keyed(&app, &b.token, CREDIT, &body, "supply-1").await;
    let problem = refused.assert_problem(422, "limit_exceeded").clone();
    assert_eq!(
        problem["limit"],
        json!({"kind": "supply", "currency": "EUR", "value": 1000, "window_s": null})
    );
    assert_eq!(problem["used"], 600);
    assert_eq!(problem["requested"], 500);
    assert_eq!(problem["remaining"], 400);
    let failed_id = problem["transaction_id"].as_str().expect("recorded");
    let record = app
        .get(&format!("/api/v1/transactions/{failed_id}"), &b.token)
        .await;
    assert_eq!(record.body["status"], "failed", "{}", record.body);
    assert_eq!(record.body["failure_reason"], "limit_exceeded");

    // What fits still goes through, and money going back to system makes room.
    app.credit(&b, 400, "EUR").await;
    assert_eq!(supply(&app, "EUR").await, 1_000);
    let debit = app
        .post(
            DEBIT,
            Some(&a.token),
            &json!({"amount": 300, "currency": "EUR"}),
        )
        .await;
    assert_eq!(debit.status, StatusCode::CREATED, "{}", debit.body);

    // The replay answers the first result, although the credit would fit now.
    let replayed = post_keyed(&app, &b.token, CREDIT, &body, "supply-1").await;
    assert_eq!(replayed.assert_problem(422, "limit_exceeded"), &problem);
    assert_eq!(app.balance(&b, "EUR").await, 400);
    assert_eq!(supply(&app, "EUR").await, 700);
    app.assert_ledger_invariants().await;
}

/// An atomic bulk that would take the `system` balance past the supply bound is refused with
/// `limit_exceeded` on the item that crosses it (found by fuzzing: it used to say
/// `insufficient_funds`), and nothing is applied or recorded.
#[actix_web::test]
async fn an_atomic_bulk_past_the_supply_is_limit_exceeded_and_applies_nothing() {
    let (app, admin) = TestApp::spawn_with_admin(|settings| {
        settings.ledger.balance_max_minor = 1_000_000_000_000_000_000;
        settings.ledger.supply_max_minor = 2_000_000_000_000_000_000;
    })
    .await;
    let users = [
        app.user("holder").await,
        app.user("holder").await,
        app.user("holder").await,
    ];
    let items: Vec<Value> = users
        .iter()
        .flat_map(|user| {
            (0..1_000).map(move |_| {
                json!({"type": "credit", "user_id": user.id, "amount": 1_000_000_000_000_000i64, "currency": "USD"})
            })
        })
        .collect();
    let before = app.row_counts().await;
    let reply = app
        .request(
            Method::POST,
            BULK,
            Some(&admin.token),
            Some(&json!({"mode": "atomic", "transactions": items})),
            None,
        )
        .await;
    let problem = reply.assert_problem(422, "bulk_failed");
    let results = problem["results"].as_array().expect("results");
    let failed: Vec<&Value> = results.iter().filter(|r| r["status"] == "failed").collect();
    // 2,000 credits of 10^15 reach the supply of 2 × 10^18; the next 1,000 cross it.
    assert_eq!(failed.len(), 1_000, "{}", failed[0]);
    for result in failed {
        assert_eq!(result["error"]["code"], "limit_exceeded", "{result}");
        assert_eq!(result["error"]["limit"]["kind"], "supply", "{result}");
        assert!(
            result["error"].get("transaction_id").is_none(),
            "nothing recorded"
        );
    }
    let after = app.row_counts().await;
    assert_eq!(
        (after.transactions, after.entries),
        (before.transactions, before.entries)
    );
    app.assert_ledger_invariants().await;
}

/// Settings that could overflow are refused at start, with the key named.
#[test]
fn settings_that_could_overflow_are_refused() {
    let mut settings = test_settings();
    settings.pipeline.batch_size_max = 5_000;
    let error = settings.validate().expect_err("5,000 × 10^15 exceeds 2^61");
    assert!(
        format!("{error:#}").contains("pipeline.batch_size_max"),
        "{error:#}"
    );

    let mut settings = test_settings();
    settings.ledger.supply_max_minor = i64::MAX;
    let error = settings.validate().expect_err("beyond 2^61");
    assert!(
        format!("{error:#}").contains("supply_max_minor"),
        "{error:#}"
    );

    let mut settings = test_settings();
    settings.ledger.balance_max_minor = settings.ledger.supply_max_minor + 1;
    assert!(
        settings.validate().is_err(),
        "one account could hold all the money"
    );
}

/// Invariant 4: the key decides first. A request repeated after its recipient was deleted,
/// after the balance it spent was spent again, and after the initiator lost the admin role gets
/// the original reply every time and applies nothing.
#[actix_web::test]
async fn repeats_get_the_original_reply_whatever_changed() {
    let (app, root) = TestApp::spawn_with_admin(|_| {}).await;
    let (payer, payee) = (app.user("payer").await, app.user("payee").await);
    app.credit(&payer, 1_000, "USD").await;

    // After the payee was deleted, and after the balance was spent.
    let body = json!({"to_user_id": payee.id, "amount": 1_000, "currency": "USD"});
    let first = post_keyed(&app, &payer.token, TRANSFER, &body, "pay-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // The payee spends it all (a deleted user must hold nothing), then is deleted.
    let spent = app
        .post(
            DEBIT,
            Some(&payee.token),
            &json!({"amount": 1_000, "currency": "USD"}),
        )
        .await;
    assert_eq!(spent.status, StatusCode::CREATED, "{}", spent.body);
    delete_user(&app, &root.token, payee.id).await;
    let again = post_keyed(&app, &payer.token, TRANSFER, &body, "pay-1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // After the role changed: an admin's credit on another account, repeated with a token
    // that no longer carries the role.
    let helper = app.user("helper").await;
    set_role(&app, &root, helper.id, "admin").await;
    let helper = app.login(&helper.username, &helper.password).await;
    let grant = json!({"user_id": payer.id, "amount": 70, "currency": "USD"});
    let granted = post_keyed(&app, &helper.token, CREDIT, &grant, "grant-1").await;
    assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.body);
    set_role(&app, &root, helper.id, "user").await;
    let plain = app.login(&helper.username, &helper.password).await;
    let before = app.row_counts().await;
    for token in [&helper.token, &plain.token] {
        let repeat = post_keyed(&app, token, CREDIT, &grant, "grant-1").await;
        assert_eq!(repeat.status, StatusCode::CREATED, "{}", repeat.body);
        assert_eq!(repeat.body, granted.body);
    }
    // The same key with another body is still refused as such, not as forbidden.
    let other = json!({"user_id": payer.id, "amount": 71, "currency": "USD"});
    post_keyed(&app, &plain.token, CREDIT, &other, "grant-1")
        .await
        .assert_problem(422, "idempotency_key_reused");
    // A new request from the demoted token is refused.
    post_keyed(&app, &plain.token, CREDIT, &grant, "grant-2")
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(app.row_counts().await, before, "nothing was applied again");
    assert_eq!(app.balance(&payer, "USD").await, 70);
    app.assert_ledger_invariants().await;
}

/// A demoted admin's token, still carrying the admin role, moves nobody's money: the commit
/// reads the initiator's role (the user row is share-locked there), not the token's. Single
/// requests, both bulk modes.
#[actix_web::test]
async fn a_demoted_admins_token_cannot_credit_another_user() {
    let (app, root) = TestApp::spawn_with_admin(|_| {}).await;
    let (former, victim) = (app.user("former").await, app.user("victim").await);
    set_role(&app, &root, former.id, "admin").await;
    let token = app.login(&former.username, &former.password).await.token;
    set_role(&app, &root, former.id, "user").await;
    let before = app.row_counts().await;

    let credit = json!({"user_id": victim.id, "amount": 5, "currency": "USD"});
    app.post(CREDIT, Some(&token), &credit)
        .await
        .assert_problem(403, "forbidden");
    app.post(DEBIT, Some(&token), &credit)
        .await
        .assert_problem(403, "forbidden");
    let item = json!({"type": "credit", "user_id": victim.id, "amount": 5, "currency": "USD"});
    app.post(
        BULK,
        Some(&token),
        &json!({"mode": "atomic", "transactions": [item]}),
    )
    .await
    .assert_problem(403, "forbidden");
    let independent = app
        .post(
            BULK,
            Some(&token),
            &json!({"mode": "independent", "transactions": [item]}),
        )
        .await;
    assert_eq!(independent.status, StatusCode::OK, "{}", independent.body);
    assert_eq!(independent.body["results"][0]["status"], "error");
    assert_eq!(independent.body["results"][0]["error"]["code"], "forbidden");
    assert_eq!(app.row_counts().await, before, "nothing was written");
    assert_eq!(app.balance(&victim, "USD").await, 0);
}

/// Two identical requests with one key that land in the same batch, naming a deleted payee:
/// the first is refused before the ledger (nothing written, no key stored), and the second must
/// get the same refusal, not a replay of a transaction that was never written (it used to be
/// a 500).
#[actix_web::test]
async fn a_batch_mate_repeating_a_refused_request_gets_the_same_refusal() {
    let (app, root) = TestApp::spawn_with_admin(|settings| {
        // A long linger puts concurrent requests into one batch.
        settings.pipeline.batch_linger_us = 200_000;
    })
    .await;
    let (payer, payee) = (app.user("payer").await, app.user("gone").await);
    app.credit(&payer, 100, "USD").await;
    delete_user(&app, &root.token, payee.id).await;
    let body = json!({"to_user_id": payee.id, "amount": 10, "currency": "USD"});
    let replies =
        join_all((0..4).map(|_| post_keyed(&app, &payer.token, TRANSFER, &body, "same-key"))).await;
    for reply in &replies {
        let problem = reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), vec!["to_user_id"], "{problem}");
    }
    let keys: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE key = 'same-key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0, "a request refused before the ledger stores no key");
    assert_eq!(app.balance(&payer, "USD").await, 100);
}
