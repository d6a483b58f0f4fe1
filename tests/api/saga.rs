//! The saga of `examples/saga.rs` against the real app and a real RabbitMQ on 127.0.0.1:5672
//! (DESIGN.md section 12): an order service pays its supplier over the queues only (a hold per
//! order, its own step, then a post or a void), advancing on the events Tally publishes; a
//! second run with the same orders is answered from Tally's idempotency keys and changes nothing;
//! and a hold that a stopped run left pending is finished by the next run.

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::amqp::{Broker, Names, BROKER_URL};
use crate::helpers::{TestApp, TestUser};

#[path = "../../examples/saga.rs"]
#[allow(dead_code)]
mod saga_example;

use saga_example::{Order, OrderOutcome, Outcome, SagaConfig};

/// `(amount, pending)` of `user` in USD.
async fn usd(app: &TestApp, user: &TestUser) -> (i64, i64) {
    let reply = app
        .get("/api/v1/balances/current?currency=USD", &user.token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let row = &reply.body["balances"][0];
    (
        row["amount"].as_i64().expect("amount"),
        row["pending"].as_i64().expect("pending"),
    )
}

/// `(order id, outcome, hold id)` of each line, for comparing runs.
fn summary(outcomes: &[OrderOutcome]) -> Vec<(String, Outcome, Option<Uuid>)> {
    outcomes
        .iter()
        .map(|line| {
            (
                line.order.id.as_str().to_owned(),
                line.outcome.clone(),
                line.hold_id,
            )
        })
        .collect()
}

#[actix_web::test]
async fn the_order_saga_pays_cancels_and_rejects_over_the_queues_and_a_rerun_changes_nothing() {
    // Queues and exchange of this test alone: tests run side by side on one broker. The
    // service user is named before it exists (usernames are resolved per message).
    let names = Names::unique();
    let shop_name = format!("shop{}", &Uuid::new_v4().simple().to_string()[..24]);
    let (app, admin) = TestApp::spawn_with_admin(|settings| {
        names.configure(settings, BROKER_URL, &[&shop_name]);
    })
    .await;
    let shop = app.user_named(shop_name.clone()).await;
    let supplier = app.user("supplier").await;
    app.credit(&shop, 10_000, "USD").await;
    // Tally lets only the payee of a transfer hold, or an admin, post or void it; the shop is
    // the payer, so it needs the admin role for its post and void (before its first message:
    // ingestion remembers a service identity's role for a few seconds).
    let promoted = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{}", shop.id),
            Some(&admin.token),
            Some(&json!({"role": "admin"})),
            None,
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    let shop = app.login(&shop_name, &shop.password).await;

    // A and C ship, B does not; D asks for more than the shop ever had, whatever the order in
    // which Tally takes the holds (A + B + C = 9,500 fit in 10,000 in any order).
    let orders: Vec<Order> = ["A:3000:ok", "B:2500:fail", "C:4000:ok", "D:20000:ok"]
        .into_iter()
        .map(|spec| spec.parse().expect("an order spec"))
        .collect();
    let config = SagaConfig {
        amqp_url: BROKER_URL.to_owned(),
        service_user: shop.id,
        supplier: supplier.id,
        currency: "USD".to_owned(),
        orders,
        requests_queue: names.requests.clone(),
        events_exchange: names.events.clone(),
        events_queue: None,
        hold_timeout_s: 300,
        // A bound, not a pace: a run ends as soon as its orders do (well under a second
        // alone), and the suite runs tests side by side on a small machine.
        timeout: std::time::Duration::from_secs(240),
    };

    let started = std::time::Instant::now();
    let first = saga_example::run(config.clone())
        .await
        .expect("the saga runs");
    println!("first run: {:?}", started.elapsed());
    let outcomes: Vec<(&str, &Outcome)> = first
        .iter()
        .map(|line| (line.order.id.as_str(), &line.outcome))
        .collect();
    let rejected = Outcome::Rejected {
        reason: "insufficient_funds".to_owned(),
    };
    assert_eq!(
        outcomes,
        [
            ("A", &Outcome::Paid),
            ("B", &Outcome::Cancelled),
            ("C", &Outcome::Paid),
            ("D", &rejected),
        ],
        "{first:#?}"
    );
    assert!(first[..3].iter().all(|line| line.hold_id.is_some()));
    assert_eq!(usd(&app, &shop).await, (3_000, 0));
    assert_eq!(usd(&app, &supplier).await, (7_000, 0));
    // The holds as Tally keeps them, by their references.
    let holds: Vec<(String, String)> = app
        .db()
        .await
        .query(
            "SELECT reference, status FROM transactions WHERE reference LIKE 'order:%' \
             ORDER BY reference",
            &[],
        )
        .await
        .expect("the orders' transactions")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(String, String)> = [
        ("order:A", "posted"),
        ("order:B", "voided"),
        ("order:C", "posted"),
        ("order:D", "failed"),
    ]
    .into_iter()
    .map(|(reference, status)| (reference.to_owned(), status.to_owned()))
    .collect();
    assert_eq!(holds, expected);
    app.assert_ledger_invariants().await;

    // The same orders again: every hold request is a replay, answered with the hold as it is
    // now (or its recorded refusal), so the run ends from the replies alone (this run's events
    // queue sees nothing new) and writes nothing.
    let before = app.row_counts().await;
    let started = std::time::Instant::now();
    let second = saga_example::run(config.clone())
        .await
        .expect("the saga runs again");
    println!("second run: {:?}", started.elapsed());
    assert_eq!(summary(&second), summary(&first));
    assert_eq!(app.row_counts().await, before);
    assert_eq!(usd(&app, &shop).await, (3_000, 0));
    assert_eq!(usd(&app, &supplier).await, (7_000, 0));
    app.assert_ledger_invariants().await;

    // A run that stopped after its hold: the hold of order E exists (made here over REST with
    // the key and body of the saga's own request) but nothing resolved it. A new run's hold
    // request is a replay that shows it pending, and the run finishes it: from that reply
    // (`tally-replayed`) or from `hold.created`, if the event reaches its queue after all.
    let resumed = SagaConfig {
        orders: vec!["E:500:ok".parse().expect("an order spec")],
        ..config
    };
    let hold = app
        .request(
            Method::POST,
            "/api/v1/transactions/transfer",
            Some(&shop.token),
            Some(&saga_example::hold_request_body(
                &resumed,
                &resumed.orders[0],
            )),
            Some("order:E:hold"),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.body);
    assert_eq!(hold.body["status"], "pending");
    assert_eq!(usd(&app, &shop).await, (3_000, 500));
    let third = saga_example::run(resumed).await.expect("the saga resumes");
    assert_eq!(third[0].outcome, Outcome::Paid, "{third:#?}");
    assert_eq!(
        third[0].hold_id.map(|id| id.to_string()).as_deref(),
        hold.body["id"].as_str()
    );
    assert_eq!(usd(&app, &shop).await, (2_500, 0));
    assert_eq!(usd(&app, &supplier).await, (7_500, 0));
    app.assert_ledger_invariants().await;

    let broker = Broker::connect().await;
    broker.delete(&[&names.requests, &names.dead]).await;
    let _ = broker
        .channel
        .exchange_delete(names.events.as_str().into(), Default::default())
        .await;
    broker.close().await;
}
