//! `kill -9` under load (DESIGN.md section 2, invariants 3 and 4): the real `tally` binary runs
//! as a child process; clients move money with Idempotency-Keys; after some hundreds of
//! acknowledged replies the process is SIGKILLed with requests in flight, then restarted on the
//! same database, three times over (each restart first re-sends what the last kill cut off).
//! Every acknowledged transaction must be there and completed, nothing may be half applied,
//! and re-sending every request with its key must apply each exactly once.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::StatusCode;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::concurrency::{fund, random_op, reconcile, send, users, Auditor, Op, Outcome};
use crate::helpers::*;
use crate::process::Service;

const USERS: usize = 16;
const CLIENTS: usize = 24;
/// Upper bound of requests per client before the kill (the kill comes far earlier).
const OPS_PER_CLIENT_MAX: usize = 400;
/// Each cycle of load ends in a kill -9 once this many of its requests have been acknowledged
/// with a 2xx; then the service restarts on the same database.
const KILL_AFTER_ACKS: [usize; 3] = [300, 120, 450];
const SEED: u64 = 0x0dea_d009;
/// Bound on retrying a request that got a 5xx after the restart.
const RETRY_DEADLINE: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Runs the load against `service` until `kill_after` requests have been acknowledged, then
/// SIGKILLs it with requests in flight. The clients first re-send `retry` (requests an earlier
/// crash cut off), then send new ones. Returns every request sent with its answer.
async fn load_until_kill(
    service: &mut Service,
    app: &TestApp,
    users: &[TestUser],
    cycle: usize,
    kill_after: usize,
    retry: Vec<Op>,
) -> Vec<(Op, Outcome)> {
    let acked = Cell::new(0usize);
    let killed = Cell::new(false);
    let enough = Notify::new();
    let retry = RefCell::new(retry);
    let sent = RefCell::new(Vec::new());
    let client = |client: usize| {
        let (acked, killed, enough, retry, sent) = (&acked, &killed, &enough, &retry, &sent);
        async move {
            let seed = SEED.wrapping_add((cycle * CLIENTS + client) as u64);
            let mut rng = StdRng::seed_from_u64(seed);
            for n in 0..OPS_PER_CLIENT_MAX {
                if killed.get() {
                    break;
                }
                // Every request is keyed, so that any of them can be re-sent safely.
                let op = retry.borrow_mut().pop().unwrap_or_else(|| {
                    random_op(&mut rng, USERS, Some(format!("k{cycle}-{client}-{n}")))
                });
                let (outcome, _) = send(app, users, &op).await;
                let cut = matches!(outcome, Outcome::NoReply { .. });
                if let Outcome::Completed(_) = outcome {
                    acked.set(acked.get() + 1);
                    if acked.get() == kill_after {
                        enough.notify_one();
                    }
                }
                sent.borrow_mut().push((op, outcome));
                if cut {
                    break;
                }
            }
        }
    };
    let killer = async {
        tokio::time::timeout(Duration::from_secs(60), enough.notified())
            .await
            .expect("the load reaches the kill point");
        service.kill_9();
        killed.set(true);
    };
    let ((), _) = futures_util::future::join(killer, join_all((0..CLIENTS).map(client))).await;
    sent.into_inner()
}

#[actix_web::test]
async fn kill_9_loses_no_acknowledged_transaction_and_retries_apply_once() {
    let started = Instant::now();
    let database_url = format!(
        "{}/tally_test_crash_{}",
        database_server(),
        Uuid::new_v4().simple()
    );
    let mut service = Service::start(&database_url).await;
    let mut app = service.app(&database_url);
    let users = users(&app, "crash", USERS).await;
    let mut auditor = Auditor::default();
    fund(&app, &users, &mut auditor, |_| 50_000).await;

    // Every request sent in any cycle, with the answer it got then.
    let mut sent: Vec<(Op, Outcome)> = Vec::new();
    // Requests the last crash cut off, re-sent first by the next cycle.
    let mut cut_off: Vec<Op> = Vec::new();
    let mut figures = Vec::new();
    for (cycle, &kill_after) in KILL_AFTER_ACKS.iter().enumerate() {
        let retried = cut_off.len();
        let cycle_started = Instant::now();
        let cycle_sent =
            load_until_kill(&mut service, &app, &users, cycle, kill_after, cut_off).await;
        let load = cycle_started.elapsed();
        let (mut acked, mut in_flight, mut refused) = (0, 0, 0);
        cut_off = Vec::new();
        for (op, outcome) in &cycle_sent {
            match outcome {
                Outcome::Completed(_) => acked += 1,
                Outcome::NoReply { sent: true, .. } => in_flight += 1,
                Outcome::NoReply { sent: false, .. } => refused += 1,
                Outcome::ServerError { status, code } => {
                    panic!("{status} {code} before the kill for {op:?}")
                }
                _ => {}
            }
            if !outcome.is_decided() {
                cut_off.push(op.clone());
            }
            auditor.record(op, outcome);
        }
        assert!(acked >= kill_after);
        assert!(
            in_flight > 0,
            "cycle {cycle}: the kill must catch requests in flight ({} sent, {refused} refused)",
            cycle_sent.len()
        );
        let requests = cycle_sent.len();
        sent.extend(cycle_sent);

        // Restart on the same database.
        service = Service::start(&database_url).await;
        app.address = format!("http://{}", service.address);
        app.port = service.port;

        // Every transaction acknowledged so far survived, completed and whole.
        let db = app.db().await;
        let acked_ids: Vec<Uuid> = auditor.completed.keys().copied().collect();
        let durable: i64 = db
            .query_one(
                "SELECT count(*) FROM transactions t WHERE t.id = ANY($1) AND t.status = 'completed'
                   AND (SELECT count(*) FROM entries e WHERE e.transaction_id = t.id) = 2",
                &[&acked_ids],
            )
            .await
            .expect("durable acks")
            .get(0);
        assert_eq!(
            durable as usize,
            acked_ids.len(),
            "cycle {cycle}: acknowledged transactions lost or partial after kill -9"
        );
        // Which of the cut-off requests had committed all the same, unacknowledged.
        let cut_users: Vec<Uuid> = cut_off.iter().map(|op| users[op.user].id).collect();
        let cut_keys: Vec<&str> = cut_off
            .iter()
            .map(|op| op.key.as_deref().expect("keyed"))
            .collect();
        let committed_unacknowledged: i64 = db
            .query_one(
                "SELECT count(*) FROM transactions t
                 JOIN unnest($1::uuid[], $2::text[]) AS c(user_id, key)
                   ON t.initiated_by = c.user_id AND t.idempotency_key = c.key",
                &[&cut_users, &cut_keys],
            )
            .await
            .expect("committed cut-off requests")
            .get(0);
        app.assert_ledger_invariants().await;
        figures.push(format!(
            "cycle {cycle}: {} requests ({retried} re-sent from the last crash) in {load:?}, \
             {acked} acknowledged, killed with {in_flight} in flight ({refused} refused \
             connections), {committed_unacknowledged} of the unanswered had committed",
            requests
        ));
    }

    // Every acknowledged transaction, through the API.
    let acked: Vec<(Op, Uuid)> = auditor
        .completed
        .iter()
        .map(|(id, op)| (op.clone(), *id))
        .collect();
    for chunk in acked.chunks(32) {
        let (app, users) = (&app, &users);
        let replies = join_all(chunk.iter().map(|(op, id)| async move {
            app.get(&format!("/api/v1/transactions/{id}"), &users[op.user].token)
                .await
        }))
        .await;
        for ((op, id), reply) in chunk.iter().zip(replies) {
            assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.body);
            assert_eq!(reply.body["status"], "completed", "{id}: {}", reply.body);
            assert_eq!(reply.body["amount"], op.amount, "{id}: {}", reply.body);
        }
    }

    // Re-send every request ever sent with its key, twice: the answered ones get their answer
    // again, and the ones the last crash cut off are decided now, once.
    let mut keys = HashSet::new();
    let distinct: Vec<&Op> = sent
        .iter()
        .map(|(op, _)| op)
        .filter(|op| keys.insert(op.key.clone()))
        .collect();
    for pass in 0..2 {
        for chunk in distinct.chunks(32) {
            let outcomes = join_all(chunk.iter().map(|op| resend(&app, &users, op))).await;
            for (op, (outcome, _)) in chunk.iter().zip(outcomes) {
                assert!(
                    outcome.is_decided(),
                    "pass {pass}: {op:?} after the restart: {outcome:?}"
                );
                auditor.record(op, &outcome);
            }
        }
    }

    let completed = reconcile(&app, &users, &auditor).await;
    eprintln!(
        "crash: {}; after the last restart {} distinct requests re-sent twice; {completed} \
         completed transactions in all; total {:?}",
        figures.join("; "),
        distinct.len(),
        started.elapsed()
    );
}

/// Sends `op` again until the service decides it (a 5xx is retried until `RETRY_DEADLINE`).
async fn resend(app: &TestApp, users: &[TestUser], op: &Op) -> (Outcome, bool) {
    let deadline = Instant::now() + RETRY_DEADLINE;
    loop {
        let (outcome, replayed) = send(app, users, op).await;
        match outcome {
            Outcome::ServerError { .. } if Instant::now() < deadline => {
                // Polling until the deadline; the pause only spaces the attempts.
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            outcome => return (outcome, replayed),
        }
    }
}
