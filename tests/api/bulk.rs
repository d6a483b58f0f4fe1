//! `POST /api/v1/transactions/bulk`: atomic sets (all or nothing, in order, one commit),
//! independent items (each alone, through the shared group commits), validation by index,
//! authorization, limits, and one Idempotency-Key for the whole bulk.
//!
//! How many database transactions a bulk took is read two ways: the `tally_batches_total`
//! counter of `/metrics`, and `xmin` of the transactions' rows (the id of the PostgreSQL
//! transaction that inserted them).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const BULK: &str = "/api/v1/transactions/bulk";

fn credit(amount: i64, currency: &str) -> Value {
    json!({"type": "credit", "amount": amount, "currency": currency})
}

fn debit(amount: i64, currency: &str) -> Value {
    json!({"type": "debit", "amount": amount, "currency": currency})
}

fn transfer(to: &TestUser, amount: i64, currency: &str) -> Value {
    json!({"type": "transfer", "to_user_id": to.id, "amount": amount, "currency": currency})
}

async fn post_bulk(
    app: &TestApp,
    user: &TestUser,
    mode: &str,
    items: &[Value],
    key: Option<&str>,
) -> Reply {
    let body = json!({"mode": mode, "transactions": items});
    app.request(Method::POST, BULK, Some(&user.token), Some(&body), key)
        .await
}

/// Balances of `users` in `currency`, in order.
async fn balances(app: &TestApp, users: &[&TestUser], currency: &str) -> Vec<i64> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        out.push(app.balance(user, currency).await);
    }
    out
}

fn results(reply: &Reply) -> &Vec<Value> {
    reply.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {}", reply.body))
}

fn transaction_ids(results: &[Value]) -> Vec<Uuid> {
    results
        .iter()
        .map(|result| {
            result["transaction"]["id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .unwrap_or_else(|| panic!("no transaction id in {result}"))
        })
        .collect()
}

/// `(distinct xmin, distinct created_at)` over these transactions: how many database
/// transactions wrote them, and how many commit timestamps they carry.
async fn commits_of(app: &TestApp, ids: &[Uuid]) -> (i64, i64) {
    let row = app
        .db()
        .await
        .query_one(
            "SELECT count(DISTINCT xmin::text), count(DISTINCT created_at), count(*)
             FROM transactions WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("commit count");
    assert_eq!(
        row.get::<_, i64>(2),
        ids.len() as i64,
        "some transactions are missing"
    );
    (row.get(0), row.get(1))
}

#[track_caller]
fn assert_completed_like(
    result: &Value,
    index: usize,
    item: &Value,
    from: Option<Uuid>,
    to: Option<Uuid>,
) {
    assert_eq!(result["index"], index, "{result}");
    assert_eq!(result["status"], "completed", "item {index}: {result}");
    assert!(result.get("error").is_none(), "item {index}: {result}");
    let transaction = &result["transaction"];
    assert_eq!(transaction["status"], "completed", "item {index}: {result}");
    assert_eq!(transaction["type"], item["type"], "item {index}: {result}");
    assert_eq!(
        transaction["amount"], item["amount"],
        "item {index}: {result}"
    );
    assert_eq!(
        transaction["currency"], item["currency"],
        "item {index}: {result}"
    );
    assert_eq!(
        transaction["from_user_id"],
        json!(from),
        "item {index}: {result}"
    );
    assert_eq!(
        transaction["to_user_id"],
        json!(to),
        "item {index}: {result}"
    );
}

#[actix_web::test]
async fn an_atomic_bulk_with_a_failing_item_applies_nothing() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("atom").await, app.user("atom").await);
    app.credit(&alice, 1_000, "USD").await;
    app.credit(&alice, 500, "EUR").await;
    let items = vec![
        credit(100, "USD"),
        transfer(&bob, 300, "USD"),
        transfer(&bob, 200, "EUR"),
        debit(5_000, "USD"), // 1000 + 100 - 300 = 800 left at its turn
        transfer(&bob, 50, "USD"),
        credit(7, "EUR"),
    ];
    let counts = app.row_counts().await;
    let usd = balances(&app, &[&alice, &bob], "USD").await;
    let eur = balances(&app, &[&alice, &bob], "EUR").await;
    for key in [None, Some("atomic-fails-1")] {
        let reply = post_bulk(&app, &alice, "atomic", &items, key).await;
        let body = reply.assert_problem(422, "bulk_failed");
        let results = body["results"].as_array().expect("results");
        assert_eq!(results.len(), items.len(), "{body}");
        for (index, result) in results.iter().enumerate() {
            assert_eq!(result["index"], index, "{body}");
            assert!(
                result.get("transaction").is_none(),
                "nothing was recorded: {result}"
            );
            if index == 3 {
                assert_eq!(result["status"], "failed", "{body}");
                assert_eq!(result["error"]["code"], "insufficient_funds", "{body}");
                assert_eq!(result["error"]["status"], 422, "{body}");
                assert!(
                    result["error"].get("transaction_id").is_none(),
                    "no failed transaction is recorded in atomic mode: {result}"
                );
            } else {
                assert_eq!(result["status"], "not_applied", "{body}");
                assert!(result.get("error").is_none(), "{result}");
            }
        }
        assert_eq!(
            app.row_counts().await,
            counts,
            "an atomic failure wrote something"
        );
        assert_eq!(balances(&app, &[&alice, &bob], "USD").await, usd);
        assert_eq!(balances(&app, &[&alice, &bob], "EUR").await, eur);
    }

    // Two failing items: both named, judged in order without the failed ones applied.
    let reply = post_bulk(
        &app,
        &alice,
        "atomic",
        &[
            debit(2_000, "USD"),
            credit(10, "USD"),
            debit(1_500, "USD"),
            debit(1_000, "USD"),
        ],
        None,
    )
    .await;
    let body = reply.assert_problem(422, "bulk_failed");
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["failed", "not_applied", "failed", "not_applied"],
        "{body}"
    );
    assert_eq!(app.row_counts().await, counts);

    // Items are judged in order: a debit is covered by a credit before it, not after it.
    let carol = app.user("atom").await;
    let reply = post_bulk(
        &app,
        &carol,
        "atomic",
        &[debit(400, "USD"), credit(500, "USD")],
        None,
    )
    .await;
    let body = reply.assert_problem(422, "bulk_failed");
    assert_eq!(body["results"][0]["status"], "failed", "{body}");
    assert_eq!(body["results"][1]["status"], "not_applied", "{body}");
    let reply = post_bulk(
        &app,
        &carol,
        "atomic",
        &[credit(500, "USD"), debit(400, "USD")],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.balance(&carol, "USD").await, 100);

    // Nothing was recorded under the key either: once the money is there, the same request
    // with the same key is applied (it is not a replay of the refusal).
    app.credit(&alice, 10_000, "USD").await;
    let reply = post_bulk(&app, &alice, "atomic", &items, Some("atomic-fails-1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.header("idempotent-replayed").is_none());
    assert_eq!(
        app.balance(&alice, "USD").await,
        11_000 + 100 - 300 - 5_000 - 50
    );
    assert_eq!(app.balance(&bob, "USD").await, 350);
    assert_eq!(app.balance(&bob, "EUR").await, 200);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn an_atomic_bulk_applies_everything_in_one_commit() {
    let app = TestApp::spawn().await;
    let alice = app.user("one").await;
    let others = [app.user("one").await, app.user("one").await];
    app.credit(&alice, 10_000, "USD").await;
    let mut items = Vec::new();
    let mut parties = Vec::new();
    let (mut a, mut o) = (10_000i64, [0i64; 2]);
    for i in 0..30i64 {
        match i % 3 {
            0 => {
                items.push(credit(100 + i, "USD"));
                parties.push((None, Some(alice.id)));
                a += 100 + i;
            }
            1 => {
                let to = &others[(i as usize / 3) % 2];
                items.push(transfer(to, 200 + i, "USD"));
                parties.push((Some(alice.id), Some(to.id)));
                a -= 200 + i;
                o[(i as usize / 3) % 2] += 200 + i;
            }
            _ => {
                items.push(debit(50 + i, "USD"));
                parties.push((Some(alice.id), None));
                a -= 50 + i;
            }
        }
    }
    let batches_before = app.metric("tally_batches_total").await;
    let reply = post_bulk(&app, &alice, "atomic", &items, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = results(&reply);
    assert_eq!(results.len(), items.len());
    for (index, (result, item)) in results.iter().zip(&items).enumerate() {
        assert_completed_like(result, index, item, parties[index].0, parties[index].1);
    }
    let ids = transaction_ids(results);
    let (xmins, stamps) = commits_of(&app, &ids).await;
    let batches = app.metric("tally_batches_total").await - batches_before;
    println!(
        "atomic bulk: {} items, {xmins} database transaction(s), {batches} batch(es) counted",
        ids.len()
    );
    assert_eq!((xmins, stamps), (1, 1), "an atomic bulk is one commit");
    assert_eq!(app.balance(&alice, "USD").await, a);
    assert_eq!(
        balances(&app, &[&others[0], &others[1]], "USD").await,
        o.to_vec()
    );
    // Each is a transaction like any other.
    let fetched = app
        .get(
            &format!("/api/v1/transactions/{}", ids[1]),
            &others[0].token,
        )
        .await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.body);
    assert_eq!(fetched.body, results[1]["transaction"]);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn an_independent_bulk_applies_the_rest_and_records_the_failure() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("ind").await, app.user("ind").await);
    app.credit(&alice, 1_000, "USD").await;
    // The outcomes do not depend on the order the items are applied in: the debit of 5000
    // cannot fit whatever happens first, and the rest fit together.
    let items = vec![
        credit(100, "USD"),
        transfer(&bob, 300, "USD"),
        debit(5_000, "USD"),
        transfer(&bob, 50, "USD"),
        debit(10, "USD"),
    ];
    let counts = app.row_counts().await;
    let reply = post_bulk(&app, &alice, "independent", &items, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = results(&reply);
    assert_eq!(results.len(), items.len());
    let parties = [
        (None, Some(alice.id)),
        (Some(alice.id), Some(bob.id)),
        (Some(alice.id), None),
        (Some(alice.id), Some(bob.id)),
        (Some(alice.id), None),
    ];
    for (index, result) in results.iter().enumerate() {
        if index == 2 {
            continue;
        }
        assert_completed_like(
            result,
            index,
            &items[index],
            parties[index].0,
            parties[index].1,
        );
    }
    let failed = &results[2];
    assert_eq!(failed["index"], 2);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "insufficient_funds", "{failed}");
    assert_eq!(failed["transaction"]["status"], "failed", "{failed}");
    assert_eq!(
        failed["transaction"]["failure_reason"], "insufficient_funds",
        "{failed}"
    );
    assert_eq!(
        failed["error"]["transaction_id"], failed["transaction"]["id"],
        "the problem points at the recorded failed transaction: {failed}"
    );
    let id = failed["transaction"]["id"].as_str().expect("id");
    let recorded = app
        .get(&format!("/api/v1/transactions/{id}"), &alice.token)
        .await;
    assert_eq!(recorded.status, StatusCode::OK, "{}", recorded.body);
    assert_eq!(
        recorded.body, failed["transaction"],
        "the failed transaction as recorded"
    );

    assert_eq!(
        app.balance(&alice, "USD").await,
        1_000 + 100 - 300 - 50 - 10
    );
    assert_eq!(app.balance(&bob, "USD").await, 350);
    let after = app.row_counts().await;
    assert_eq!(
        after.transactions,
        counts.transactions + 5,
        "4 completed and 1 failed"
    );
    assert_eq!(
        after.entries,
        counts.entries + 8,
        "two entries per completed item"
    );
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn invalid_items_are_reported_by_index_and_nothing_is_applied() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("val").await, app.user("val").await);
    app.credit(&alice, 1_000, "USD").await;
    let items = vec![
        credit(10, "USD"),
        transfer(&bob, 10, "USD"),
        debit(10, "USD"),
        json!({"type": "credit", "amount": -5, "currency": "USD"}),
        json!({"type": "refund", "amount": 1, "currency": "USD"}),
        json!({"type": "credit", "amount": 1}),
        json!({"type": "transfer", "amount": 1, "currency": "USD"}),
        json!("not an object"),
        json!({"type": "debit", "amount": 1.5, "currency": "USD"}),
        json!({"type": "credit", "amount": 1, "currency": "USD", "from_user_id": bob.id}),
        json!({"type": "transfer", "to_user_id": alice.id, "amount": 1, "currency": "USD"}),
        json!({"type": "debit", "amount": 1, "currency": "XYZ", "amout": 2}),
        credit(10, "USD"),
    ];
    let want = [
        "transactions[3].amount",
        "transactions[4].type",
        "transactions[5].currency",
        "transactions[6].to_user_id",
        "transactions[7]",
        "transactions[8].amount",
        "transactions[9].from_user_id",
        "transactions[10].to_user_id",
        "transactions[11].currency",
        "transactions[11].amout",
    ];
    let counts = app.row_counts().await;
    for mode in ["atomic", "independent"] {
        let reply = post_bulk(&app, &alice, mode, &items, Some("invalid-1")).await;
        reply.assert_problem(422, "validation_failed");
        let fields: HashSet<String> = reply.error_fields().into_iter().collect();
        let want: HashSet<String> = want.iter().map(|f| f.to_string()).collect();
        assert_eq!(fields, want, "{mode}: {}", reply.body);
        assert_eq!(
            app.row_counts().await,
            counts,
            "{mode}: an invalid bulk wrote something"
        );
    }
    // Parties that do not exist, found after parsing: also by index.
    let ghost = Uuid::new_v4();
    let reply = post_bulk(
        &app,
        &alice,
        "independent",
        &[
            credit(1, "USD"),
            json!({"type": "transfer", "to_user_id": ghost, "amount": 1, "currency": "USD"}),
        ],
        None,
    )
    .await;
    reply.assert_problem(422, "validation_failed");
    assert_eq!(
        reply.error_fields(),
        ["transactions[1].to_user_id"],
        "{}",
        reply.body
    );
    // The envelope.
    for (body, field) in [
        (
            json!({"mode": "sometimes", "transactions": [credit(1, "USD")]}),
            "mode",
        ),
        (json!({"transactions": [credit(1, "USD")]}), "mode"),
        (
            json!({"mode": "atomic", "transactions": []}),
            "transactions",
        ),
        (
            json!({"mode": "atomic", "transactions": {"0": credit(1, "USD")}}),
            "transactions",
        ),
        (json!({"mode": "atomic"}), "transactions"),
        (
            json!({"mode": "atomic", "transactions": [credit(1, "USD")], "extra": 1}),
            "extra",
        ),
    ] {
        let reply = app
            .request(Method::POST, BULK, Some(&alice.token), Some(&body), None)
            .await;
        reply.assert_problem(422, "validation_failed");
        assert!(
            reply.error_fields().iter().any(|f| f == field),
            "{body}: {}",
            reply.body
        );
    }
    assert_eq!(app.row_counts().await, counts);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn moving_another_users_money_in_a_bulk_is_forbidden() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let (alice, bob) = (app.user("own").await, app.user("own").await);
    app.credit(&alice, 1_000, "USD").await;
    app.credit(&bob, 1_000, "USD").await;
    let counts = app.row_counts().await;
    let theft = [
        json!({"type": "transfer", "from_user_id": bob.id, "to_user_id": alice.id, "amount": 10, "currency": "USD"}),
        json!({"type": "debit", "user_id": bob.id, "amount": 10, "currency": "USD"}),
        json!({"type": "credit", "user_id": bob.id, "amount": 10, "currency": "USD"}),
    ];
    for mode in ["atomic", "independent"] {
        for item in &theft {
            let items = [credit(5, "USD"), transfer(&bob, 5, "USD"), item.clone()];
            let reply = post_bulk(&app, &alice, mode, &items, None).await;
            reply.assert_problem(403, "forbidden");
            assert_eq!(
                app.row_counts().await,
                counts,
                "{mode} {item}: a refused bulk wrote"
            );
        }
    }
    // Naming oneself explicitly is fine.
    let own = [
        json!({"type": "transfer", "from_user_id": alice.id, "to_user_id": bob.id, "amount": 10, "currency": "USD"}),
        json!({"type": "debit", "user_id": alice.id, "amount": 10, "currency": "USD"}),
    ];
    let reply = post_bulk(&app, &alice, "atomic", &own, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // An admin may move anyone's money, and it is audited.
    let reply = post_bulk(&app, &admin, "atomic", &theft, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.balance(&alice, "USD").await, 1_000 - 20 + 10);
    assert_eq!(app.balance(&bob, "USD").await, 1_000 + 10 - 10 - 10 + 10);
    let audited: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM audit_logs WHERE action = 'transaction.admin_bulk' AND actor_id = $1",
            &[&admin.id],
        )
        .await
        .expect("audit count")
        .get(0);
    assert_eq!(audited, 1);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_ten_thousand_item_bulk_is_committed_in_few_database_transactions() {
    const ITEMS: usize = 10_000;
    let app = TestApp::spawn().await;
    let payer = app.user("big").await;
    let payees = [
        app.user("big").await,
        app.user("big").await,
        app.user("big").await,
    ];
    let start_balance = 100_000_000;
    app.credit(&payer, start_balance, "USD").await;
    let mut items = Vec::with_capacity(ITEMS);
    let mut payer_balance = start_balance;
    let mut payee_balances = [0i64; 3];
    for i in 0..ITEMS {
        if i % 3 == 0 {
            let amount = (i % 97) as i64 + 1;
            items.push(credit(amount, "USD"));
            payer_balance += amount;
        } else {
            let amount = (i % 89) as i64 + 1;
            let to = i % 3;
            items.push(transfer(&payees[to], amount, "USD"));
            payer_balance -= amount;
            payee_balances[to] += amount;
        }
    }
    let body_bytes = json!({"mode": "independent", "transactions": items})
        .to_string()
        .len();
    let batches_before = app.metric("tally_batches_total").await;
    let started = Instant::now();
    let reply = post_bulk(&app, &payer, "independent", &items, None).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = results(&reply);
    assert_eq!(results.len(), ITEMS);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["index"], index);
        assert_eq!(result["status"], "completed", "{result}");
    }
    let batches = app.metric("tally_batches_total").await - batches_before;
    let ids = transaction_ids(results);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ITEMS,
        "distinct ids"
    );
    let (xmins, stamps) = commits_of(&app, &ids).await;
    println!(
        "bulk of {ITEMS} items ({body_bytes} bytes): {xmins} database transactions wrote them \
         ({stamps} commit timestamps), tally_batches_total +{batches}, {:.2} s, {:.0} items/s",
        elapsed.as_secs_f64(),
        ITEMS as f64 / elapsed.as_secs_f64()
    );
    assert!(
        xmins <= (ITEMS / 10) as i64,
        "{xmins} database transactions for {ITEMS} items: not group-committed"
    );
    // The metric is informative only here: every app of this test process shares one metrics
    // registry, and `tally_batches_total` mirrors each app's own atomic counter at scrape time,
    // so concurrent tests move it. The database's transaction ids above are the exact count.
    println!(
        "tally_batches_total moved by {batches} while {xmins} database transactions wrote the bulk"
    );
    assert_eq!(app.balance(&payer, "USD").await, payer_balance);
    for (payee, want) in payees.iter().zip(payee_balances) {
        assert_eq!(app.balance(payee, "USD").await, want);
    }
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn repeating_the_idempotency_key_returns_the_first_result() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("idem").await, app.user("idem").await);
    app.credit(&alice, 1_000, "USD").await;
    for (mode, items) in [
        (
            "independent",
            vec![
                credit(10, "USD"),
                transfer(&bob, 20, "USD"),
                debit(5_000, "USD"),
                transfer(&bob, 5, "USD"),
            ],
        ),
        (
            "atomic",
            vec![
                credit(10, "USD"),
                transfer(&bob, 20, "USD"),
                debit(7, "USD"),
                transfer(&bob, 5, "USD"),
            ],
        ),
    ] {
        let key = format!("bulk-{mode}-1");
        let first = post_bulk(&app, &alice, mode, &items, Some(&key)).await;
        assert_eq!(first.status, StatusCode::OK, "{mode}: {}", first.body);
        assert!(first.header("idempotent-replayed").is_none());
        let counts = app.row_counts().await;
        let usd = balances(&app, &[&alice, &bob], "USD").await;

        let again = post_bulk(&app, &alice, mode, &items, Some(&key)).await;
        assert_eq!(again.status, StatusCode::OK, "{mode}: {}", again.body);
        assert_eq!(again.header("idempotent-replayed"), Some("true"), "{mode}");
        assert_eq!(
            again.body, first.body,
            "{mode}: the repeat must return the first result"
        );
        // Concurrent repeats too.
        let repeats =
            join_all((0..4).map(|_| post_bulk(&app, &alice, mode, &items, Some(&key)))).await;
        for repeat in &repeats {
            assert_eq!(repeat.status, StatusCode::OK, "{mode}: {}", repeat.body);
            assert_eq!(
                repeat.body, first.body,
                "{mode}: a concurrent repeat differs"
            );
        }
        assert_eq!(
            app.row_counts().await,
            counts,
            "{mode}: a repeat applied something"
        );
        assert_eq!(balances(&app, &[&alice, &bob], "USD").await, usd);

        // The same key with another body: refused, nothing applied.
        let mut changed_amount = items.clone();
        changed_amount[1] = transfer(&bob, 21, "USD");
        let mut longer = items.clone();
        longer.push(credit(1, "USD"));
        let shorter = items[..items.len() - 1].to_vec();
        let other_mode = if mode == "atomic" {
            "independent"
        } else {
            "atomic"
        };
        for (name, variant_mode, variant) in [
            ("an item changed", mode, &changed_amount),
            ("an item added", mode, &longer),
            ("an item removed", mode, &shorter),
            ("the other mode", other_mode, &items),
        ] {
            let reply = post_bulk(&app, &alice, variant_mode, variant, Some(&key)).await;
            assert_eq!(
                (reply.status.as_u16(), reply.body["code"].as_str()),
                (422, Some("idempotency_key_reused")),
                "{mode}, same key with {name}: {}",
                reply.body
            );
            assert_eq!(
                app.row_counts().await,
                counts,
                "{mode}, {name}: applied something"
            );
        }
        assert_eq!(balances(&app, &[&alice, &bob], "USD").await, usd);
    }
    // Keys are per user: bob may use alice's key for his own bulk.
    let reply = post_bulk(
        &app,
        &bob,
        "atomic",
        &[debit(1, "USD")],
        Some("bulk-atomic-1"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.header("idempotent-replayed").is_none());
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn bulk_size_and_body_limits() {
    let app = TestApp::spawn_with(|settings| {
        settings.bulk.max_items = 5;
        settings.bulk.body_limit_bytes = 2_048;
    })
    .await;
    let alice = app.user("lim").await;
    let counts = app.row_counts().await;
    let six: Vec<Value> = (1..=6).map(|i| credit(i, "USD")).collect();
    for mode in ["atomic", "independent"] {
        let reply = post_bulk(&app, &alice, mode, &six, None).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), ["transactions"], "{}", reply.body);
    }
    assert_eq!(app.row_counts().await, counts);
    // Over the body limit (but few items): 413 before anything is parsed.
    let padded: Vec<Value> = (1..=5)
        .map(|i| json!({"type": "credit", "amount": i, "currency": "USD", "description": "x".repeat(500)}))
        .collect();
    let body_len = json!({"mode": "atomic", "transactions": padded})
        .to_string()
        .len();
    assert!(body_len > 2_048, "{body_len}");
    let reply = post_bulk(&app, &alice, "atomic", &padded, None).await;
    reply.assert_problem(413, "payload_too_large");
    assert_eq!(app.row_counts().await, counts);
    // At the limits: accepted.
    let five: Vec<Value> = (1..=5).map(|i| credit(i, "USD")).collect();
    let reply = post_bulk(&app, &alice, "independent", &five, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.balance(&alice, "USD").await, 15);
    app.assert_ledger_invariants().await;
}

/// A bulk body may be larger than the ordinary request limit (`http.body_limit_bytes`).
#[actix_web::test]
async fn a_bulk_body_may_exceed_the_ordinary_body_limit() {
    let app = TestApp::spawn_with(|settings| settings.http.body_limit_bytes = 2_048).await;
    let alice = app.user("big").await;
    let items: Vec<Value> = (1..=100).map(|i| credit(i, "USD")).collect();
    assert!(
        json!({"mode": "atomic", "transactions": items})
            .to_string()
            .len()
            > 2_048
    );
    let started = Instant::now();
    let reply = post_bulk(&app, &alice, "atomic", &items, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(app.balance(&alice, "USD").await, 5_050);
    app.assert_ledger_invariants().await;
}
