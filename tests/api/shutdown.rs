//! SIGTERM under load (DESIGN.md section 5, "Shutdown"): the real `tally` binary runs as a child
//! process, clients move money with Idempotency-Keys, and after some hundreds of acknowledged
//! replies the process gets SIGTERM with requests in flight. Span export points at a port
//! where no collector listens, so it fails in the background the whole time.
//!
//! The process must: turn readiness to 503 before it closes the listener; answer every request
//! it started reading (its own counters, checked against the replies the clients received);
//! commit every transaction it acknowledged and none it did not answer; exit 0 within
//! `http.shutdown_timeout_ms`; and leave a ledger that `tally verify` finds clean.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::concurrency::{fund, random_op, send, users, Auditor, Op, Outcome};
use crate::helpers::*;
use crate::process::{http_requests_answered, run_verify, unused_port, Service};

const USERS: usize = 16;
const CLIENTS: usize = 24;
/// Upper bound of requests per client (the shutdown comes far earlier).
const OPS_PER_CLIENT_MAX: usize = 2_000;
/// SIGTERM once the load has this many acknowledged replies.
const SIGNAL_AFTER_ACKS: usize = 400;
const SHUTDOWN_DELAY_MS: u64 = 300;
const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Idle keep-alive connections hold a graceful stop until they time out.
const KEEP_ALIVE_S: u64 = 2;
const SEED: u64 = 0x5167_7e53;
/// Bound on the readiness probes after the signal.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// Spaces the readiness probes (never a synchronization by itself).
const PROBE_PAUSE: Duration = Duration::from_millis(20);

#[actix_web::test]
async fn sigterm_under_load_answers_every_started_request_and_commits_every_2xx() {
    let started = Instant::now();
    let database_url = format!(
        "{}/tally_test_shutdown_{}",
        database_server(),
        Uuid::new_v4().simple()
    );
    let dead_collector = format!("http://127.0.0.1:{}", unused_port());
    let mut service = Service::start_with(
        &database_url,
        &[
            (
                "TALLY__HTTP__SHUTDOWN_DELAY_MS",
                SHUTDOWN_DELAY_MS.to_string(),
            ),
            (
                "TALLY__HTTP__SHUTDOWN_TIMEOUT_MS",
                SHUTDOWN_TIMEOUT_MS.to_string(),
            ),
            ("TALLY__HTTP__KEEP_ALIVE_S", KEEP_ALIVE_S.to_string()),
            ("TALLY__TELEMETRY__OTLP_ENDPOINT", dead_collector),
            // Longer batches: more transactions are between submission and commit at the signal.
            ("TALLY__PIPELINE__BATCH_LINGER_US", "2000".to_owned()),
        ],
    )
    .await;
    let app = service.app(&database_url);
    let users = users(&app, "term", USERS).await;
    let mut auditor = Auditor::default();
    fund(&app, &users, &mut auditor, |_| 50_000).await;
    // The server's own count of the requests it answered so far; the scrape itself is answered
    // right after, so it counts one more.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let answered_before = http_requests_answered(&metrics) + 1;

    let acked = Cell::new(0usize);
    let replies = Cell::new(0u64);
    let enough = Notify::new();
    let sent: RefCell<Vec<(Op, Outcome)>> = RefCell::new(Vec::new());
    let client = |client: usize| {
        let (app, users, acked, replies, enough, sent) =
            (&app, &users, &acked, &replies, &enough, &sent);
        async move {
            let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(client as u64));
            for n in 0..OPS_PER_CLIENT_MAX {
                let op = random_op(&mut rng, USERS, Some(format!("t{client}-{n}")));
                let (outcome, _) = send(app, users, &op).await;
                let refused = matches!(outcome, Outcome::NoReply { sent: false, .. });
                if !matches!(outcome, Outcome::NoReply { .. }) {
                    replies.set(replies.get() + 1);
                }
                if let Outcome::Completed(_) = outcome {
                    acked.set(acked.get() + 1);
                    if acked.get() == SIGNAL_AFTER_ACKS {
                        enough.notify_one();
                    }
                }
                sent.borrow_mut().push((op, outcome));
                if refused {
                    // The listener is closed: the service is going away.
                    break;
                }
            }
        }
    };
    // Readiness is probed on a new connection each time, from the signal until the listener
    // refuses connections.
    let probes: RefCell<Vec<(StatusCode, Value)>> = RefCell::new(Vec::new());
    let mut signalled_at = None;
    let controller = async {
        tokio::time::timeout(Duration::from_secs(60), enough.notified())
            .await
            .expect("the load reaches the signal point");
        service.terminate();
        signalled_at = Some(Instant::now());
        let prober = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("probe client");
        let give_up = Instant::now() + PROBE_DEADLINE;
        while Instant::now() < give_up {
            match prober
                .get(format!("{}/health/ready", app.address))
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status();
                    let body = response.json().await.unwrap_or(Value::Null);
                    replies.set(replies.get() + 1);
                    probes.borrow_mut().push((status, body));
                }
                Err(error) if error.is_connect() => break,
                // Cut by the closing listener: not answered, not counted.
                Err(_) => {}
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    };
    let ((), _) = futures_util::future::join(controller, join_all((0..CLIENTS).map(client))).await;
    let signalled_at = signalled_at.expect("signalled");
    let status = service
        .wait_for_exit(Duration::from_millis(SHUTDOWN_TIMEOUT_MS + 5_000))
        .await
        .expect("the service exits after SIGTERM");
    let exit_after = signalled_at.elapsed();
    assert!(status.success(), "a clean shutdown exits 0: {status:?}");
    assert!(
        exit_after < Duration::from_millis(SHUTDOWN_TIMEOUT_MS),
        "exited {exit_after:?} after SIGTERM, over the shutdown timeout"
    );

    // Readiness said "shutting down" before the listener closed.
    let probes = probes.into_inner();
    let draining = probes
        .iter()
        .filter(|(status, body)| {
            *status == StatusCode::SERVICE_UNAVAILABLE && body["status"] == "shutting_down"
        })
        .count();
    assert!(
        draining > 0,
        "readiness never reported shutting_down: {probes:?}"
    );
    if let Some(first) = probes
        .iter()
        .position(|(status, _)| *status != StatusCode::OK)
    {
        assert!(
            probes[first..]
                .iter()
                .all(|(status, _)| *status != StatusCode::OK),
            "readiness went back to ready: {probes:?}"
        );
    }

    // The service's own account: every request it started was answered, nothing was left in
    // the pipeline, and every answer reached a client.
    let signal = service.events("shutting down: readiness is now false");
    let closing = service.events("closing the listener");
    let complete = service.events("shutdown complete");
    assert_eq!(complete.len(), 1, "one shutdown complete line");
    let complete = &complete[0];
    let in_flight_at_signal = signal[0]["requests_in_flight"].as_u64().unwrap_or(0);
    let in_flight_at_close = closing[0]["requests_in_flight"].as_u64().unwrap_or(0);
    let transactions_at_close = closing[0]["transactions_in_flight"].as_u64().unwrap_or(0);
    assert!(
        in_flight_at_signal + in_flight_at_close > 0,
        "the signal must catch requests in flight: {signal:?} {closing:?}"
    );
    assert_eq!(complete["unanswered_requests"], 0, "{complete}");
    assert_eq!(complete["unanswered_transactions"], 0, "{complete}");
    let requests_started = complete["requests_started"].as_u64().expect("started");
    let requests_finished = complete["requests_finished"].as_u64().expect("finished");
    assert_eq!(requests_started, requests_finished, "{complete}");
    assert_eq!(
        requests_finished,
        answered_before + replies.get(),
        "the service answered {requests_finished} requests, the clients received {} replies",
        answered_before + replies.get()
    );

    // Every reply was a decision (no 5xx during the drain), every 2xx is committed, and no
    // request left without a reply was applied.
    let sent = sent.into_inner();
    let (mut completed, mut no_reply) = (0, Vec::new());
    for (op, outcome) in &sent {
        match outcome {
            Outcome::ServerError { status, code } => {
                panic!("{status} {code} during a graceful shutdown for {op:?}")
            }
            Outcome::NoReply { .. } => no_reply.push(op),
            Outcome::Completed(_) => completed += 1,
            _ => {}
        }
        auditor.record(op, outcome);
    }
    let db = app.db().await;
    let acknowledged: Vec<Uuid> = auditor.completed.keys().copied().collect();
    let durable: i64 = db
        .query_one(
            "SELECT count(*) FROM transactions t WHERE t.id = ANY($1) AND t.status = 'completed'
               AND (SELECT count(*) FROM entries e WHERE e.transaction_id = t.id) = 2",
            &[&acknowledged],
        )
        .await
        .expect("durable acks")
        .get(0);
    assert_eq!(
        durable as usize,
        acknowledged.len(),
        "acknowledged transactions missing after the shutdown"
    );
    let unanswered_users: Vec<Uuid> = no_reply.iter().map(|op| users[op.user].id).collect();
    let unanswered_keys: Vec<&str> = no_reply
        .iter()
        .map(|op| op.key.as_deref().expect("keyed"))
        .collect();
    let applied_unanswered: i64 = db
        .query_one(
            "SELECT count(*) FROM transactions t
             JOIN unnest($1::uuid[], $2::text[]) AS c(user_id, key)
               ON t.initiated_by = c.user_id AND t.idempotency_key = c.key",
            &[&unanswered_users, &unanswered_keys],
        )
        .await
        .expect("unanswered requests")
        .get(0);
    assert_eq!(
        applied_unanswered, 0,
        "a request that got no reply was applied"
    );
    // The database holds exactly what the replies said, nothing more.
    let rows = db
        .query("SELECT id, status FROM transactions", &[])
        .await
        .expect("transactions");
    let in_db: HashSet<(Uuid, String)> = rows
        .iter()
        .map(|row| (row.get(0), row.get::<_, String>(1)))
        .collect();
    let reported: HashSet<(Uuid, String)> = auditor
        .completed
        .keys()
        .map(|id| (*id, "completed".to_owned()))
        .chain(auditor.failed.keys().map(|id| (*id, "failed".to_owned())))
        .collect();
    assert_eq!(in_db, reported, "the database differs from the replies");
    app.assert_ledger_invariants().await;
    let (clean, printed) = run_verify(&database_url);
    assert!(clean, "tally verify after the shutdown:\n{printed}");

    eprintln!(
        "shutdown: {} requests, {completed} acknowledged; SIGTERM with {in_flight_at_signal} \
         requests in flight ({in_flight_at_close} requests and {transactions_at_close} \
         transactions when the listener closed); {} readiness probes ({draining} said \
         shutting_down); {} requests without a reply (none applied); the service answered \
         {requests_finished} of {requests_started} started requests and exited 0 after \
         {exit_after:?}; total {:?}",
        sent.len(),
        probes.len(),
        no_reply.len(),
        started.elapsed()
    );
}
