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
    for name in names::ALL {
        if names::RESERVED.contains(name) {
            continue;
        }
        assert!(
            metrics.lines().any(|line| line.starts_with(name)),
            "/metrics lacks {name}:\n{metrics}"
        );
    }
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
    let report = tally::verify::verify(&db).await.expect("verify");
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
    let report = tally::verify::verify(&db).await.expect("verify");
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
    let report = tally::verify::verify(&db).await.expect("verify");
    let references = report
        .checks
        .iter()
        .find(|check| check.name == "references")
        .expect("the references check runs");
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
