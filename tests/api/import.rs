//! `tally import` killed part way and re-run: every line is applied exactly once (issue 4).
//! The service runs in-process; the importer is the real binary, as a child process.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const LINES: usize = 20_000;
const CHUNK: &str = "250";
/// Bound on waiting for the first run to make progress, and for a full run.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(120);
const POLL_PAUSE: Duration = Duration::from_millis(20);

fn import(app: &TestApp, file: &std::path::Path, user: &TestUser) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("import")
        .arg(file)
        .args([
            "--url",
            &app.address,
            "--username",
            &user.username,
            "--password-stdin",
            "--chunk",
            CHUNK,
            "--quiet",
        ])
        .env_remove("TALLY__PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tally import starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{}", user.password).expect("password written");
    child
}

async fn imported(app: &TestApp) -> (i64, i64, i64) {
    let db = app.db().await;
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT idempotency_key), coalesce(sum(amount), 0)::bigint
             FROM transactions WHERE idempotency_key LIKE 'import-%' AND status = 'completed'",
            &[],
        )
        .await
        .expect("count imported");
    (row.get(0), row.get(1), row.get(2))
}

#[actix_web::test]
async fn an_import_killed_part_way_and_rerun_applies_every_line_exactly_once() {
    let app = TestApp::spawn().await;
    let user = app.user("importer").await;
    let directory =
        std::env::temp_dir().join(format!("tally-import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let file = directory.join("credits.csv");
    let mut csv = String::from("type,amount,currency,reference\n");
    let mut expected_sum: i64 = 0;
    for line in 0..LINES {
        let amount = (line % 997 + 1) as i64;
        expected_sum += amount;
        csv.push_str(&format!("credit,{amount},USD,line-{line}\n"));
    }
    std::fs::write(&file, csv).expect("file written");

    // First run: killed once some chunks are in, well before the end.
    let mut first = import(&app, &file, &user);
    let deadline = Instant::now() + PROGRESS_DEADLINE;
    loop {
        let (count, _, _) = imported(&app).await;
        if count >= 2_000 {
            break;
        }
        assert!(
            first.try_wait().expect("poll import").is_none(),
            "the first import ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "the first import made no progress"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
    first.kill().expect("kill the import");
    first.wait().expect("reap the import");
    let (partial, _, _) = imported(&app).await;
    println!("killed the first import after {partial} of {LINES} lines were applied");
    assert!(
        partial < LINES as i64,
        "the kill came too late to test anything"
    );

    // Second run to completion: applies the rest, replays what the first run applied.
    let second = import(&app, &file, &user);
    let output = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .expect("join")
        .expect("import output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("second run: {stdout}");
    assert!(
        output.status.success(),
        "the re-run failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("{LINES} lines: {LINES} applied, 0 failed")),
        "summary: {stdout}"
    );

    let (count, distinct_keys, sum) = imported(&app).await;
    assert_eq!(count, LINES as i64, "every line applied exactly once");
    assert_eq!(distinct_keys, LINES as i64, "one transaction per line key");
    assert_eq!(sum, expected_sum, "the amounts add up");
    assert_eq!(app.balance(&user, "USD").await, expected_sum);
    let db = app.db().await;
    let references: i64 = db
        .query_one(
            "SELECT count(DISTINCT reference) FROM transactions WHERE reference LIKE 'line-%'",
            &[],
        )
        .await
        .expect("references")
        .get(0);
    assert_eq!(
        references, LINES as i64,
        "every line's reference is there once"
    );
    app.assert_ledger_invariants().await;
    let _ = std::fs::remove_dir_all(&directory);
}

/// Issue 10: the first run applied every line, among them a transfer to a payee who has since
/// spent it and been deleted. The re-run must replay the chunk from its key (the key decides
/// before the parties are checked), not be refused for the deleted payee and send the other
/// lines again under another key.
#[actix_web::test]
async fn a_rerun_after_a_payee_was_deleted_applies_nothing_twice() {
    let app = TestApp::spawn().await;
    let (user, payee) = (app.user("importer").await, app.user("payee").await);
    let directory =
        std::env::temp_dir().join(format!("tally-import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let file = directory.join("lines.csv");
    std::fs::write(
        &file,
        format!(
            "type,to_user_id,amount,currency\ncredit,,500,USD\ntransfer,{},200,USD\ncredit,,7,USD\n",
            payee.id
        ),
    )
    .expect("file written");
    let run = |child: std::process::Child| async move {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("import output");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "import failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let first = run(import(&app, &file, &user)).await;
    assert!(first.contains("3 lines: 3 applied, 0 failed"), "{first}");

    let spent = app
        .post(
            "/api/v1/transactions/debit",
            Some(&payee.token),
            &serde_json::json!({"amount": 200, "currency": "USD"}),
        )
        .await;
    assert_eq!(spent.status, reqwest::StatusCode::CREATED, "{}", spent.body);
    let deleted = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/users/{}", payee.id),
            Some(&payee.token),
            None,
            None,
        )
        .await;
    assert_eq!(
        deleted.status,
        reqwest::StatusCode::NO_CONTENT,
        "{}",
        deleted.body
    );

    let before = app.row_counts().await;
    let second = run(import(&app, &file, &user)).await;
    assert!(second.contains("3 lines: 3 applied, 0 failed"), "{second}");
    assert_eq!(app.row_counts().await, before, "the re-run applied nothing");
    assert_eq!(app.balance(&user, "USD").await, 307);
    app.assert_ledger_invariants().await;
    let _ = std::fs::remove_dir_all(&directory);
}
