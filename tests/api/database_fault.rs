//! The database breaks under load (DESIGN.md section 5, "Failure"): while clients move money,
//! every connection of the service (the journal writer's `tally-journal` ones and the handlers'
//! `tally` ones) is terminated from the server side, five times, a few hundred milliseconds apart.
//! A batch cut off before `COMMIT` is retried on a new connection and answered normally; other
//! affected requests must get a clean 503 problem, never a 2xx for something that did not
//! commit; nothing may be half written; the service must recover by itself (under load between
//! faults, and idle after the last); and re-sending the failed requests with their keys must
//! apply each exactly once.
//!
//! A second test makes the "lost before COMMIT" case deterministic: it holds a row lock so the
//! batch waits inside its transaction, terminates the journal's connection there, and expects
//! the retry on a new connection to commit and answer 201.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::concurrency::{fund, random_op, reconcile, send, users, Auditor, Kind, Op, Outcome};
use crate::helpers::*;

const USERS: usize = 16;
const CLIENTS: usize = 16;
/// Upper bound of requests per client (the load is stopped far earlier).
const OPS_PER_CLIENT_MAX: usize = 2_000;
/// Acknowledged replies before the first fault, and between faults: progress after a fault is
/// the proof of recovery under load.
const ACKS_BETWEEN_FAULTS: usize = 150;
const FAULTS: usize = 5;
const SEED: u64 = 0xfa17;
/// How long the service may take to recover from a fault.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);
/// Spaces the attempts of a poll (never a synchronization by itself).
const POLL_PAUSE: Duration = Duration::from_millis(50);

/// Terminates the service's backends from a separate connection; returns how many of them
/// were journal writer connections and how many handler connections.
async fn terminate_backends(db: &tokio_postgres::Client) -> (usize, usize) {
    let rows = db
        .query(
            "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name IN ('tally-journal', 'tally')",
            &[],
        )
        .await
        .expect("pg_terminate_backend");
    let killed = |name: &str| {
        rows.iter()
            .filter(|row| row.get::<_, &str>(0) == name && row.get::<_, bool>(1))
            .count()
    };
    (killed("tally-journal"), killed("tally"))
}

/// Waits until `counter` reaches `target`, woken by `progress`; panics after `deadline`.
async fn until(counter: &Cell<usize>, target: usize, progress: &Notify, deadline: Duration) {
    let give_up = Instant::now() + deadline;
    while counter.get() < target {
        let left = give_up.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, progress.notified())
                .await
                .is_ok(),
            "no progress: {} of {target} acknowledgements after {deadline:?}",
            counter.get()
        );
    }
}

#[actix_web::test]
async fn killed_database_connections_give_503s_and_the_service_recovers() {
    let started = Instant::now();
    let app = TestApp::spawn().await;
    let users = users(&app, "dbfault", USERS).await;
    let mut auditor = Auditor::default();
    fund(&app, &users, &mut auditor, |_| 100_000).await;
    let db = app.db().await;

    let acked = Cell::new(0usize);
    let stop = Cell::new(false);
    let progress = Notify::new();
    let sent: RefCell<Vec<(Op, Outcome)>> = RefCell::new(Vec::new());
    let client = |client: usize| {
        let (app, users, acked, stop, progress, sent) =
            (&app, &users, &acked, &stop, &progress, &sent);
        async move {
            let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(client as u64));
            for n in 0..OPS_PER_CLIENT_MAX {
                if stop.get() {
                    break;
                }
                let op = random_op(&mut rng, USERS, Some(format!("f{client}-{n}")));
                let (outcome, _) = send(app, users, &op).await;
                if let Outcome::Completed(_) = outcome {
                    acked.set(acked.get() + 1);
                    progress.notify_one();
                }
                sent.borrow_mut().push((op, outcome));
            }
        }
    };
    // Each fault hits the service under load, once it has made progress since the last one (the
    // proof that it recovered by itself); after the last fault the load stops, and a probe
    // measures the recovery.
    let mut faults = Vec::new();
    let controller = async {
        for fault in 0..FAULTS {
            let target = acked.get() + ACKS_BETWEEN_FAULTS;
            until(&acked, target, &progress, RECOVERY_DEADLINE).await;
            let killed = terminate_backends(&db).await;
            assert!(
                killed.0 >= 1,
                "fault {fault}: the journal writer had no connection to kill: {killed:?}"
            );
            faults.push((killed, acked.get()));
        }
        stop.set(true);
    };
    let load_started = Instant::now();
    let ((), _) = futures_util::future::join(controller, join_all((0..CLIENTS).map(client))).await;
    let load = load_started.elapsed();
    let sent = sent.into_inner();

    // Every failure was a clean 503 problem; every 2xx is a completed transaction.
    let mut server_errors = 0;
    for (op, outcome) in &sent {
        match outcome {
            Outcome::ServerError { status, code } => {
                assert_eq!(
                    (*status, code.as_str()),
                    (503, "unavailable"),
                    "a database fault must give 503 unavailable, {op:?}"
                );
                server_errors += 1;
            }
            Outcome::NoReply { error, .. } => panic!("no reply for {op:?}: {error}"),
            _ => {}
        }
        auditor.record(op, outcome);
    }
    let acknowledged: Vec<Uuid> = sent
        .iter()
        .filter_map(|(_, outcome)| match outcome {
            Outcome::Completed(id) => Some(*id),
            _ => None,
        })
        .collect();
    let durable: i64 = db
        .query_one(
            "SELECT count(*) FROM transactions t WHERE t.id = ANY($1) AND t.status = 'completed'
               AND (SELECT count(*) FROM entries e WHERE e.transaction_id = t.id) = 2",
            &[&acknowledged],
        )
        .await
        .expect("acknowledged transactions")
        .get(0);
    assert_eq!(
        durable as usize,
        acknowledged.len(),
        "a 2xx for a transaction that is not committed (or not whole)"
    );
    app.assert_ledger_invariants().await;

    // The service recovers by itself after the last fault: a new request is decided and the
    // readiness probe says so.
    let recovery_started = Instant::now();
    let probe = Op {
        user: 0,
        kind: Kind::Transfer { to: 1 },
        amount: 1,
        key: Some("recovery-probe".to_owned()),
    };
    let mut probe_attempts = 0;
    let probe_outcome = loop {
        probe_attempts += 1;
        let (outcome, _) = send(&app, &users, &probe).await;
        if outcome.is_decided() || recovery_started.elapsed() > RECOVERY_DEADLINE {
            break outcome;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    };
    assert!(
        probe_outcome.is_decided(),
        "no recovery within {RECOVERY_DEADLINE:?}: {probe_outcome:?}"
    );
    auditor.record(&probe, &probe_outcome);
    let ready = loop {
        let reply = app
            .request(Method::GET, "/health/ready", None, None, None)
            .await;
        if reply.status == StatusCode::OK || recovery_started.elapsed() > RECOVERY_DEADLINE {
            break reply;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    };
    assert_eq!(ready.status, StatusCode::OK, "readiness: {}", ready.body);
    let recovery = recovery_started.elapsed();

    // Re-send what failed, with the same keys: each is decided now, exactly once (a 503 whose
    // commit did go through is replayed, not applied again).
    let failed: Vec<&Op> = sent
        .iter()
        .filter(|(_, outcome)| !outcome.is_decided())
        .map(|(op, _)| op)
        .collect();
    let mut committed_despite_503 = 0;
    for chunk in failed.chunks(16) {
        let (app, users) = (&app, &users);
        let outcomes = join_all(chunk.iter().map(|op| async move {
            let deadline = Instant::now() + RECOVERY_DEADLINE;
            loop {
                let (outcome, replayed) = send(app, users, op).await;
                if outcome.is_decided() || Instant::now() > deadline {
                    return (outcome, replayed);
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        }))
        .await;
        for (op, (outcome, replayed)) in chunk.iter().zip(outcomes) {
            assert!(outcome.is_decided(), "re-sent {op:?}: {outcome:?}");
            committed_despite_503 += usize::from(replayed);
            auditor.record(op, &outcome);
        }
    }

    let completed = reconcile(&app, &users, &auditor).await;
    let fault_report: Vec<String> = faults
        .iter()
        .map(|((journal, handlers), at)| {
            format!("after {at} acks: {journal} journal + {handlers} handler backends")
        })
        .collect();
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let reconnects = metrics
        .lines()
        .find(|line| line.starts_with("tally_batch_retries_total{reason=\"reconnect\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or("0")
        .to_owned();
    eprintln!(
        "database_fault: {} requests in {load:?}, {} acknowledged, {server_errors} got 503 \
         ({committed_despite_503} of them had committed and were replayed on re-send), \
         {reconnects} batches retried on a new connection; terminated {}; recovery probe: \
         {probe_attempts} attempt(s), ready after {recovery:?}; {completed} completed \
         transactions; total {:?}",
        sent.len(),
        acknowledged.len(),
        fault_report.join(", "),
        started.elapsed()
    );
}

/// The backend of a journal writer connection (other than `not`) that waits on a lock in the
/// test's database, polled until `RECOVERY_DEADLINE`.
async fn journal_waiting_on_lock(db: &tokio_postgres::Client, not: Option<i32>) -> i32 {
    let give_up = Instant::now() + RECOVERY_DEADLINE;
    loop {
        let waiting = db
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'tally-journal'
                   AND wait_event_type = 'Lock' AND pid <> $1
                 LIMIT 1",
                &[&not.unwrap_or(0)],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = waiting {
            return row.get(0);
        }
        assert!(
            Instant::now() < give_up,
            "no journal connection waits on the lock"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

#[actix_web::test]
async fn a_batch_that_loses_its_connection_before_commit_is_retried_on_a_new_one() {
    // The batch must still be waiting on the lock when it is terminated and again when the lock
    // is released: lock waits far longer than the default `database.lock_timeout_ms`.
    let app = TestApp::spawn_with(|settings| {
        settings.database.lock_timeout_ms = 30_000;
        settings.database.statement_timeout_ms = 60_000;
    })
    .await;
    let alice = app.user("retry").await;
    let bob = app.user("retry").await;
    app.credit(&alice, 10_000, "USD").await;

    // Another session locks alice's balance row: the batch debiting her waits on it inside its
    // transaction, before COMMIT.
    let mut blocker = app.db().await;
    let monitor = app.db().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.query(
        "SELECT 1 FROM balances WHERE user_id = $1 AND currency = 'USD' FOR UPDATE",
        &[&alice.id],
    )
    .await
    .expect("lock alice's balance");

    let body = json!({"to_user_id": bob.id, "amount": 2_500, "currency": "USD"});
    let transfer = app.post("/api/v1/transactions/transfer", Some(&alice.token), &body);
    let controller = async {
        let first = journal_waiting_on_lock(&monitor, None).await;
        let terminated: bool = monitor
            .query_one("SELECT pg_terminate_backend($1)", &[&first])
            .await
            .expect("pg_terminate_backend")
            .get(0);
        assert!(terminated, "terminate the waiting journal connection");
        // The retry runs on a new connection and waits on the same lock.
        let second = journal_waiting_on_lock(&monitor, Some(first)).await;
        lock.rollback().await.expect("release the lock");
        (first, second)
    };
    let (reply, (first, second)) = futures_util::future::join(transfer, controller).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "a batch cut off before COMMIT is retried, not answered 503: {}",
        reply.body
    );
    assert_ne!(first, second);
    assert_eq!(app.balance(&alice, "USD").await, 7_500);
    assert_eq!(app.balance(&bob, "USD").await, 2_500);
    assert_eq!(app.assert_ledger_invariants().await, 2);
}
