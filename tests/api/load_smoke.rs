//! A short smoke of the load generator (`tally-load`), so that it keeps working: every workload
//! for a second against the real app, and its contract check must pass. The full runs are for
//! BENCHMARKS.md (`tally-load compare`), not for CI.

use std::process::Command;

use crate::helpers::*;

#[actix_web::test]
async fn every_workload_of_the_load_generator_runs_and_its_contract_check_passes() {
    let app = TestApp::spawn().await;
    for workload in ["transfer-uniform", "transfer-hot", "bulk", "read-mix"] {
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
        for check in report["contract"].as_array().expect("contract checks") {
            assert_eq!(check[1], true, "{workload}: {check}");
        }
    }
}
