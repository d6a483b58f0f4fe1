//! Operations surface: the metrics taxonomy as `/metrics` exposes it and the README documents
//! it, and `tally verify` (library and binary) catching a ledger that breaks the contract.

use reqwest::StatusCode;
use serde_json::json;
use tally::telemetry::names;

use crate::helpers::*;
use crate::process::run_verify;

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[actix_web::test]
async fn metrics_expose_the_whole_taxonomy_and_the_readme_documents_it() {
    let app = TestApp::spawn().await;
    let alice = app.user("metrics").await;
    let bob = app.user("metrics").await;
    app.credit(&alice, 1_000, "USD").await;
    app.credit(&alice, 500, "EUR").await;
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            &json!({"to_user_id": bob.id, "amount": 250, "currency": "EUR"}),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{}", transfer.body);
    app.post(
        "/api/v1/transactions/debit",
        Some(&alice.token),
        &json!({"amount": 1_000_000, "currency": "USD"}),
    )
    .await
    .assert_problem(422, "insufficient_funds");

    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let missing: Vec<&str> = names::ALL
        .iter()
        .copied()
        .filter(|name| !names::RESERVED.contains(name))
        .filter(|name| !metrics.lines().any(|line| line.starts_with(name)))
        .collect();
    assert!(missing.is_empty(), "/metrics lacks {missing:?}:\n{metrics}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!("tally_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "tally_database_up "), Some(1.0));
    // Counters are process-wide (other tests add to them): at least this test's amounts.
    let volume = |kind: &str, currency: &str| {
        sample(
            &metrics,
            &format!(
                "tally_transaction_volume_minor_total{{type=\"{kind}\",currency=\"{currency}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(volume("credit", "EUR") >= 500.0, "{metrics}");
    assert!(volume("transfer", "EUR") >= 250.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            "tally_transaction_failures_total{type=\"debit\",reason=\"insufficient_funds\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    for pool in ["api", "journal"] {
        assert!(
            sample(
                &metrics,
                &format!("tally_db_pool_wait_seconds_count{{pool=\"{pool}\"}}")
            )
            .unwrap_or(0.0)
                >= 1.0,
            "no wait recorded for the {pool} pool:\n{metrics}"
        );
    }
    for reason in ["refused", "transient", "split", "reconnect"] {
        assert!(
            metrics.contains(&format!("tally_batch_retries_total{{reason=\"{reason}\"}}")),
            "{metrics}"
        );
    }
    for reason in ["overloaded", "database_down", "shutting_down"] {
        assert!(
            metrics.contains(&format!(
                "tally_pipeline_rejections_total{{reason=\"{reason}\"}}"
            )),
            "{metrics}"
        );
    }

    // The README's metrics table documents every name, reserved ones included.
    let readme = include_str!("../../README.md");
    for name in names::ALL {
        assert!(
            readme.contains(&format!("| `{name}`")),
            "README.md's metrics table lacks {name}"
        );
    }
}

#[actix_web::test]
async fn verify_reports_each_broken_invariant_and_the_binary_exits_non_zero() {
    let app = TestApp::spawn().await;
    let alice = app.user("verify").await;
    app.credit(&alice, 1_000, "USD").await;
    assert_eq!(app.assert_ledger_invariants().await, 1);
    let (clean, printed) = run_verify(&app.database_url);
    assert!(clean, "{printed}");
    assert!(printed.contains("ledger verified"), "{printed}");

    // Money from nowhere: a balance changed behind the ledger's back.
    let db = app.db().await;
    db.execute(
        "UPDATE balances SET amount = amount + 1 WHERE user_id = $1",
        &[&alice.id],
    )
    .await
    .expect("tamper with a balance");
    let report = app.verify().await;
    let failed: Vec<&str> = report.failures().map(|check| check.name).collect();
    assert_eq!(
        failed,
        ["conservation", "entries_sum", "event_replay"],
        "{report}"
    );
    let (clean, printed) = run_verify(&app.database_url);
    assert!(!clean, "tally verify must exit non-zero:\n{printed}");
    assert!(
        printed.contains("FAIL  conservation") && printed.contains("USD: balances sum to 1"),
        "{printed}"
    );

    // An entry lost: the transaction is no longer double entry and the running sums break.
    db.execute(
        "UPDATE balances SET amount = amount - 1 WHERE user_id = $1",
        &[&alice.id],
    )
    .await
    .expect("undo");
    db.execute(
        "DELETE FROM entries WHERE id = (SELECT min(id) FROM entries WHERE user_id = $1)",
        &[&alice.id],
    )
    .await
    .expect("delete an entry");
    let report = app.verify().await;
    let failed: Vec<&str> = report.failures().map(|check| check.name).collect();
    assert_eq!(failed, ["double_entry", "entries_sum"], "{report}");

    // References the database no longer enforces (migration V4): an entry of a transaction that
    // does not exist, on an account without a balance row, and a transaction naming no user.
    db.execute(
        "INSERT INTO entries (transaction_id, user_id, currency, delta, balance_after)
         VALUES (gen_random_uuid(), $1, 'EUR', 1, 1)",
        &[&alice.id],
    )
    .await
    .expect("insert an orphan entry");
    db.execute(
        "UPDATE transactions SET initiated_by = gen_random_uuid()
         WHERE id = (SELECT min(id::text)::uuid FROM transactions)",
        &[],
    )
    .await
    .expect("point a transaction at no user");
    let report = app.verify().await;
    let references = crate::helpers::check(&report, "references");
    assert_eq!(references.violations, 3, "{report}");
    for expected in [
        "which does not exist",
        "which has no balance row",
        "who does not exist",
    ] {
        assert!(
            references
                .examples
                .iter()
                .any(|example| example.contains(expected)),
            "{expected}: {report}"
        );
    }
}

/// A credit of 1,000 USD with `key` as its Idempotency-Key; returns the reply.
async fn keyed_credit(app: &TestApp, user: &TestUser, key: &str) -> Reply {
    app.request(
        reqwest::Method::POST,
        "/api/v1/transactions/credit",
        Some(&user.token),
        Some(&json!({"amount": 1_000, "currency": "USD"})),
        Some(key),
    )
    .await
}

/// Invariant 4 with expiry: once a key is older than `idempotency.retention_hours` it is
/// forgotten and the same key is a new request, so a healthy ledger can hold two transactions
/// with one key, a retention apart; `tally verify` accepts that, and still catches a key that
/// made two transactions within the retention (a key forgotten early).
#[actix_web::test]
async fn verify_accepts_a_key_reused_after_it_expired_but_not_within_the_retention() {
    let app = TestApp::spawn().await;
    let retention_hours = app.settings.idempotency.retention_hours;
    assert_eq!(retention_hours, 24, "the default retention");
    let alice = app.user("expiry").await;
    let db = app.db().await;

    let first = keyed_credit(&app, &alice, "monthly-fee").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // The credit was made 25 hours ago: its key and transaction are aged as time would have.
    let first_id: uuid::Uuid = first.body["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    db.execute(
        "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours' WHERE user_id = $1",
        &[&alice.id],
    )
    .await
    .expect("age the key");
    db.execute(
        "UPDATE transactions SET created_at = created_at - interval '25 hours',
                                 completed_at = completed_at - interval '25 hours'
         WHERE id = $1",
        &[&first_id],
    )
    .await
    .expect("age the transaction");
    // What the hourly sweeper runs.
    let pool = tally::store::pool(&app.settings.database, tally::store::APP_NAME, 1).expect("pool");
    let expired =
        tally::store::idempotency::expire(&pool.get().await.expect("connection"), retention_hours)
            .await
            .expect("expire keys");
    assert_eq!(expired, 1);
    let second = keyed_credit(&app, &alice, "monthly-fee").await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_ne!(
        second.body["id"], first.body["id"],
        "a forgotten key is a new request"
    );
    assert!(second.headers.get("idempotent-replayed").is_none());
    assert_eq!(app.balance(&alice, "USD").await, 2_000);
    assert_eq!(app.assert_ledger_invariants().await, 2);
    let (clean, printed) = run_verify(&app.database_url);
    assert!(clean, "tally verify on a healthy ledger:\n{printed}");

    // A key forgotten before its time (deleted behind the sweeper's back) lets a repeat apply
    // twice within the retention: a broken invariant 4.
    let third = keyed_credit(&app, &alice, "one-off").await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.body);
    db.execute(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = 'one-off'",
        &[&alice.id],
    )
    .await
    .expect("forget the key early");
    let fourth = keyed_credit(&app, &alice, "one-off").await;
    assert_eq!(fourth.status, StatusCode::CREATED, "{}", fourth.body);
    let report = app.verify().await;
    let failed: Vec<&str> = report.failures().map(|check| check.name).collect();
    assert_eq!(failed, ["idempotency"], "{report}");
    let idempotency = crate::helpers::check(&report, "idempotency");
    assert_eq!(idempotency.violations, 1, "{report}");
    assert!(
        idempotency.examples[0].contains("key one-off of user")
            && idempotency.examples[0].contains("within the retention of 24:00:00"),
        "{report}"
    );
    let (clean, printed) = run_verify(&app.database_url);
    assert!(!clean, "tally verify must exit non-zero:\n{printed}");
}
