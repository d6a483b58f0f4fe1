//! A short smoke of the load generator (`tally-load`), so that it keeps working: every workload
//! for a second against the real app, and its contract check must pass. The full runs are for
//! BENCHMARKS.md (`tally-load compare`), not for CI.

use std::process::Command;

use crate::helpers::*;

#[actix_web::test]
async fn every_workload_of_the_load_generator_runs_and_its_contract_check_passes() {
    let (app, _) = TestApp::spawn_with_admin(|_| {}).await;
    for workload in [
        "transfer-uniform",
        "transfer-limited",
        "transfer-hot",
        "bulk",
        "read-mix",
        "lifecycle",
    ] {
        let (address, database_url) = (app.address.clone(), app.database_url.clone());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_tally-load"))
                .args([
                    "run",
                    "--workload",
                    workload,
                    "--base",
                    &address,
                    "--database-url",
                    &database_url,
                ])
                .args([
                    "--duration-s",
                    "1",
                    "--clients",
                    "4",
                    "--accounts",
                    "50",
                    "--bulk-clients",
                    "2",
                ])
                .args(["--bulk-items", "50", "--json"])
                .args([
                    "--admin-username",
                    ADMIN_USERNAME,
                    "--admin-password",
                    ADMIN_PASSWORD,
                ])
                .output()
        })
        .await
        .expect("join")
        .expect("tally-load runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{workload}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = stdout
            .lines()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("{workload}: no JSON report in {stdout}"));
        assert!(
            report["requests"].as_u64().unwrap_or(0) > 0,
            "{workload}: no requests: {report}"
        );
        assert!(
            report["acknowledged"].as_u64().unwrap_or(0) > 0,
            "{workload}: nothing acknowledged: {report}"
        );
        if workload == "lifecycle" {
            // Every step of the loop (hold, post or void, refund) found what it acts on.
            let replies = report["replies"].as_object().expect("replies");
            assert!(
                replies
                    .keys()
                    .all(|status| status == "200" || status == "201"),
                "{workload}: {report}"
            );
            assert!(replies.contains_key("200"), "no void in {report}");
        }
        for check in report["contract"].as_array().expect("contract checks") {
            assert_eq!(check[1], true, "{workload}: {check}");
        }
    }
}

#[actix_web::test]
async fn the_memory_benchmark_touches_every_account_once_and_reports_the_actors() {
    let (app, _admin) = TestApp::spawn_with_admin(|_| {}).await;
    let (address, database_url) = (app.address.clone(), app.database_url.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tally-load"))
            .args(["touch", "--base", &address, "--database-url", &database_url])
            .args(["--accounts", "400", "--clients", "4"])
            .args([
                "--admin-username",
                ADMIN_USERNAME,
                "--admin-password",
                ADMIN_PASSWORD,
            ])
            .args(["--pid", &std::process::id().to_string(), "--json"])
            .output()
    })
    .await
    .expect("join")
    .expect("tally-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON report in {stdout}"));
    // 400 accounts over every accepted currency: 3 users; each account debited exactly once.
    assert_eq!(report["accounts"], 400, "{report}");
    assert_eq!(report["acknowledged"], 400, "{report}");
    assert_eq!(report["replies"]["201"], 400, "{report}");
    // The test app runs in this process, next to other tests' apps that share its metrics
    // recorder: the figures are read, but their values are not this app's alone.
    assert!(report["actors_alive"].is_number(), "{report}");
    assert!(report["actors_evicted"].is_number(), "{report}");
    assert!(report["rss_mib"].as_f64().unwrap_or(0.0) > 0.0, "{report}");
    for check in report["contract"].as_array().expect("contract checks") {
        assert_eq!(check[1], true, "{check}");
    }
}

/// `tally-load compare`, as small as it goes, drops every database it created: pgbench's and
/// one per Tally it started (they used to stay behind, five per run). It names each database
/// as it creates it; none of them may exist afterwards.
#[actix_web::test]
async fn compare_drops_every_database_it_creates() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_tally-load"))
            .args(["compare", "--server", &database_server()])
            .args(["--tally", env!("CARGO_BIN_EXE_tally")])
            .args(["--clients", "2", "--duration-s", "1", "--scale", "1"])
            .args(["--accounts", "20", "--memory-accounts", "0"])
            .output()
    })
    .await
    .expect("join")
    .expect("tally-load runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    let created: Vec<String> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("tally-load: database "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // pgbench's, six workloads and the paced run.
    assert_eq!(created.len(), 8, "{stderr}");
    let (admin, connection) = tokio_postgres::connect(
        &format!("{}/postgres", database_server()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the server");
    actix_web::rt::spawn(connection);
    let left: Vec<String> = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname = ANY($1)",
            &[&created],
        )
        .await
        .expect("list databases")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{stderr}");
}
