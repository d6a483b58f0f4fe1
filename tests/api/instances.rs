//! Two Tally processes on one database (DESIGN.md section 2, invariants 6 and 12): the seeded
//! concurrency workload spread over both, one of them killed -9 mid-load, the requests it cut
//! off re-sent to the survivor. The reference model, the ledger invariants and `tally verify`
//! must hold, and a reader tailing the event log by cursor during all of it must see every
//! event exactly once.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tally::store::events::{read_after, EventCursor};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::concurrency::{fund, random_op, reconcile, send, users, Auditor, Op, Outcome};
use crate::helpers::*;
use crate::process::{run_verify, Service};

const USERS: usize = 12;
const CLIENTS: usize = 16;
const OPS_PER_CLIENT: usize = 120;
/// The second instance is killed once this many requests were acknowledged.
const KILL_AFTER_ACKS: usize = 400;
const SEED: u64 = 0x2_1257;
/// Bounds on re-sending what the kill cut off, and on the reader catching up.
const RETRY_DEADLINE: Duration = Duration::from_secs(30);
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);
/// Spaces polls; never a synchronization by itself.
const POLL_PAUSE: Duration = Duration::from_millis(5);
const PAGE: i64 = 200;

/// Tails the event log by cursor until `done` is set and it has caught up with every event in
/// the table; returns the cursors it read, in order.
async fn tail(app: &TestApp, done: &Cell<bool>) -> Vec<EventCursor> {
    let db = app.db().await;
    let mut seen = Vec::new();
    let mut after = EventCursor::default();
    let mut caught_up_since: Option<Instant> = None;
    loop {
        let page = read_after(&db, after, PAGE).await.expect("read events");
        if let Some(last) = page.last() {
            after = last.cursor;
        }
        let empty = page.is_empty();
        seen.extend(page.into_iter().map(|event| event.cursor));
        if !done.get() {
            if empty {
                tokio::time::sleep(POLL_PAUSE).await;
            }
            continue;
        }
        let total: i64 = db
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .expect("count events")
            .get(0);
        if seen.len() as i64 >= total && empty {
            return seen;
        }
        let since = *caught_up_since.get_or_insert_with(Instant::now);
        assert!(
            since.elapsed() < CATCH_UP_DEADLINE,
            "the reader saw {} of {total} events and cannot catch up",
            seen.len()
        );
        if empty {
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

#[actix_web::test]
async fn two_instances_keep_the_contract_through_a_kill_and_the_log_reads_gap_free() {
    let database_url = format!(
        "{}/tally_test_instances_{}",
        database_server(),
        Uuid::new_v4().simple()
    );
    let survivor = Service::start(&database_url).await;
    let mut victim = Service::start(&database_url).await;
    let apps = [survivor.app(&database_url), victim.app(&database_url)];
    let users = users(&apps[0], "pair", USERS).await;
    let mut auditor = Auditor::default();
    fund(&apps[1], &users, &mut auditor, |_| 20_000).await;

    let done = Cell::new(false);
    let acked = Cell::new(0usize);
    let killed = Cell::new(false);
    // Requests sent to the victim and not yet answered: the kill waits for one, so that it
    // cuts something off (between two requests it would cut nothing).
    let at_victim = Cell::new(0usize);
    let enough = Notify::new();
    let sent: RefCell<Vec<(Op, Outcome)>> = RefCell::new(Vec::new());
    let client = |client: usize| {
        let (apps, users, acked, killed, enough, sent, at_victim) =
            (&apps, &users, &acked, &killed, &enough, &sent, &at_victim);
        async move {
            let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(client as u64));
            for n in 0..OPS_PER_CLIENT {
                let op = random_op(&mut rng, USERS, Some(format!("c{client}-{n}")));
                // Alternate between the instances; once the victim is dead, the survivor.
                let to_victim = n % 2 == 1 && !killed.get();
                let app = if to_victim { &apps[1] } else { &apps[0] };
                at_victim.set(at_victim.get() + usize::from(to_victim));
                let (outcome, _) = send(app, users, &op).await;
                at_victim.set(at_victim.get() - usize::from(to_victim));
                if let Outcome::Completed(_) = outcome {
                    acked.set(acked.get() + 1);
                    if acked.get() == KILL_AFTER_ACKS {
                        enough.notify_one();
                    }
                }
                sent.borrow_mut().push((op, outcome));
            }
        }
    };
    let killer = async {
        tokio::time::timeout(Duration::from_secs(120), enough.notified())
            .await
            .expect("the load reaches the kill point");
        // Bounded: with 16 clients alternating, requests reach the victim all the time.
        let deadline = Instant::now() + Duration::from_secs(30);
        while at_victim.get() < 2 && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        victim.kill_9();
        killed.set(true);
    };
    let load = async {
        futures_util::future::join(killer, join_all((0..CLIENTS).map(client))).await;
        done.set(true);
    };
    let (seen, ()) = futures_util::future::join(tail(&apps[0], &done), load).await;

    // Decide every request: the ones the kill cut off are re-sent to the survivor with their
    // keys until it answers (the committed ones replay, the others apply now, once).
    let mut cut_off = 0;
    for (op, outcome) in sent.take() {
        let outcome = if outcome.is_decided() || matches!(outcome, Outcome::KeyReused) {
            outcome
        } else {
            cut_off += 1;
            let deadline = Instant::now() + RETRY_DEADLINE;
            loop {
                let (outcome, _) = send(&apps[0], &users, &op).await;
                if outcome.is_decided() || Instant::now() >= deadline {
                    break outcome;
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        };
        assert!(outcome.is_decided(), "{op:?}: {outcome:?}");
        auditor.record(&op, &outcome);
    }
    assert!(cut_off > 0, "the kill must cut requests off");

    let completed = reconcile(&apps[0], &users, &auditor).await;
    apps[0].assert_ledger_invariants().await;
    let (clean, report) = run_verify(&database_url);
    assert!(clean, "tally verify: {report}");

    // The reader's view of the log: every event exactly once, in cursor order, none skipped.
    // Events written after the reader stopped (the re-sent requests) are read now.
    let db = apps[0].db().await;
    let mut all = seen;
    let mut after = all.last().copied().unwrap_or_default();
    loop {
        let page = read_after(&db, after, PAGE).await.expect("read events");
        let Some(last) = page.last() else { break };
        after = last.cursor;
        all.extend(page.into_iter().map(|event| event.cursor));
    }
    assert!(all.windows(2).all(|pair| pair[0] < pair[1]), "cursor order");
    let distinct: HashSet<EventCursor> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "no event read twice");
    let stored: HashSet<(i64, i64)> = db
        .query("SELECT tx::text::bigint, seq FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let read: HashSet<(i64, i64)> = all.iter().map(|cursor| (cursor.tx, cursor.seq)).collect();
    assert_eq!(read, stored, "the reader saw exactly the stored events");
    eprintln!(
        "two instances: {completed} completed transactions, {cut_off} requests cut off by the \
         kill and re-sent, {} events read by cursor",
        all.len()
    );
}
