//! Many clients at once (DESIGN.md section 2, invariants 1, 2, 4 and 5 under load): random
//! transfers among many users, overdraw attempts, debits and credits, and Idempotency-Keys
//! re-sent (one after the other and concurrently), reused with another body, or taken by another
//! user (keys are per user). An auditor rebuilds the ledger from the replies alone; the API's
//! balances and the database must agree with it to the cent.
//!
//! The request model, the auditor and the final reconciliation are shared with the crash and
//! database fault tests (`crate::concurrency::*`).

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// Every money test here moves one currency.
pub(crate) const CURRENCY: &str = "USD";

/// The reserved `system` account (the other side of credits and debits).
pub(crate) const SYSTEM: Uuid = Uuid::nil();

/// How long one request may take before the client gives up on it (a bound, not a pace).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// What a request asks for. Users are indices into the test's user list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Transfer { to: usize },
    Debit,
    Credit,
}

/// One money-moving request: sent by `user` (who is also the debited account of a transfer or
/// debit, and the credited one of a credit), with an optional Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub user: usize,
    pub kind: Kind,
    pub amount: i64,
    pub key: Option<String>,
}

impl Op {
    pub(crate) fn path(&self) -> &'static str {
        match self.kind {
            Kind::Transfer { .. } => "/api/v1/transactions/transfer",
            Kind::Debit => "/api/v1/transactions/debit",
            Kind::Credit => "/api/v1/transactions/credit",
        }
    }

    pub(crate) fn body(&self, users: &[TestUser]) -> Value {
        match self.kind {
            Kind::Transfer { to } => {
                json!({"to_user_id": users[to].id, "amount": self.amount, "currency": CURRENCY})
            }
            Kind::Debit | Kind::Credit => json!({"amount": self.amount, "currency": CURRENCY}),
        }
    }

    /// `(from, to)` as user ids, `SYSTEM` for the system side.
    pub(crate) fn parties(&self, users: &[TestUser]) -> (Uuid, Uuid) {
        let user = users[self.user].id;
        match self.kind {
            Kind::Transfer { to } => (user, users[to].id),
            Kind::Debit => (user, SYSTEM),
            Kind::Credit => (SYSTEM, user),
        }
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Transfer { .. } => "transfer",
            Kind::Debit => "debit",
            Kind::Credit => "credit",
        }
    }
}

/// How the service answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 201: committed as this completed transaction.
    Completed(Uuid),
    /// 422 `insufficient_funds`: recorded as this failed transaction, nothing applied.
    Insufficient(Uuid),
    /// 422 `idempotency_key_reused`.
    KeyReused,
    /// A 5xx problem+json reply: nothing acknowledged.
    ServerError { status: u16, code: String },
    /// No reply at all: `sent` is false when no connection could be opened (the request never
    /// reached a server), true when it was cut or timed out (it may have been applied).
    NoReply { sent: bool, error: String },
}

impl Outcome {
    /// Whether the service decided the request (a retry must return the same).
    pub(crate) fn is_decided(&self) -> bool {
        matches!(self, Outcome::Completed(_) | Outcome::Insufficient(_))
    }
}

/// Sends `op` to the service at `app.address` and classifies the reply; the second value is
/// whether the reply said it replays a stored result (`Idempotent-Replayed: true`). Panics on
/// a reply outside the contract (a 201 that does not describe the request, an unexpected
/// status, a 5xx that is not problem+json).
pub(crate) async fn send(app: &TestApp, users: &[TestUser], op: &Op) -> (Outcome, bool) {
    let mut request = app
        .http
        .post(format!("{}{}", app.address, op.path()))
        .bearer_auth(&users[op.user].token)
        .timeout(REQUEST_TIMEOUT)
        .json(&op.body(users));
    if let Some(key) = &op.key {
        request = request.header("Idempotency-Key", key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            let outcome = Outcome::NoReply {
                sent: !error.is_connect(),
                error: format!("{error:?}"),
            };
            return (outcome, false);
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => {
            let outcome = Outcome::NoReply {
                sent: true,
                error: format!("{error:?}"),
            };
            return (outcome, false);
        }
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let replayed = headers
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    // Every reply matches the OpenAPI document; a 500 is left to the callers, which report it
    // with their own context.
    if status != StatusCode::INTERNAL_SERVER_ERROR {
        check_reply(
            &reqwest::Method::POST,
            op.path(),
            status,
            content_type,
            bytes.len(),
            &body,
        );
    }
    let outcome = match status {
        StatusCode::CREATED => {
            let (from, to) = op.parties(users);
            let side = |id: Uuid| {
                if id == SYSTEM {
                    Value::Null
                } else {
                    json!(id)
                }
            };
            assert_eq!(body["status"], "completed", "201 for {op:?}: {body}");
            assert_eq!(body["type"], op.type_name(), "201 for {op:?}: {body}");
            assert_eq!(body["amount"], op.amount, "201 for {op:?}: {body}");
            assert_eq!(body["currency"], CURRENCY, "201 for {op:?}: {body}");
            assert_eq!(body["from_user_id"], side(from), "201 for {op:?}: {body}");
            assert_eq!(body["to_user_id"], side(to), "201 for {op:?}: {body}");
            Outcome::Completed(transaction_id(&body["id"], &body))
        }
        StatusCode::UNPROCESSABLE_ENTITY if body["code"] == "insufficient_funds" => {
            assert_eq!(content_type, "application/problem+json", "body: {body}");
            Outcome::Insufficient(transaction_id(&body["transaction_id"], &body))
        }
        StatusCode::UNPROCESSABLE_ENTITY if body["code"] == "idempotency_key_reused" => {
            assert_eq!(content_type, "application/problem+json", "body: {body}");
            Outcome::KeyReused
        }
        status if status.is_server_error() => {
            assert_eq!(
                content_type, "application/problem+json",
                "a {status} must be a problem, body: {body}"
            );
            assert_eq!(body["status"], status.as_u16(), "body: {body}");
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(
                    headers.contains_key("retry-after"),
                    "a 503 says when to retry, body: {body}"
                );
            }
            Outcome::ServerError {
                status: status.as_u16(),
                code: body["code"].as_str().unwrap_or("").to_owned(),
            }
        }
        status => panic!("unexpected {status} for {op:?}: {body}"),
    };
    (outcome, replayed)
}

fn transaction_id(value: &Value, body: &Value) -> Uuid {
    value
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(|| panic!("no transaction id in {body}"))
}

/// The reference model, built from the replies only: every distinct completed transaction id
/// applies its request's delta once, a failed one applies nothing, and every answer given for
/// one Idempotency-Key must be the first answer.
#[derive(Debug, Default)]
pub(crate) struct Auditor {
    pub completed: HashMap<Uuid, Op>,
    pub failed: HashMap<Uuid, Op>,
    /// The first decided answer per `(user, key)`, with its request.
    keys: HashMap<(usize, String), (Op, Outcome)>,
}

impl Auditor {
    /// Takes one reply into the model; panics when it contradicts an earlier one.
    #[track_caller]
    pub(crate) fn record(&mut self, op: &Op, outcome: &Outcome) {
        match outcome {
            Outcome::Completed(id) | Outcome::Insufficient(id) => {
                if let Some(key) = &op.key {
                    match self.keys.entry((op.user, key.clone())) {
                        Entry::Occupied(first) => {
                            let (first_op, first_outcome) = first.get();
                            assert_eq!(
                                first_op, op,
                                "key {key} decided two different requests (the second must be 422 idempotency_key_reused)"
                            );
                            assert_eq!(
                                first_outcome, outcome,
                                "a repeat of key {key} did not return the original result"
                            );
                        }
                        Entry::Vacant(slot) => {
                            slot.insert((op.clone(), outcome.clone()));
                        }
                    }
                }
                let (this, other) = match outcome {
                    Outcome::Completed(_) => (&mut self.completed, &self.failed),
                    _ => (&mut self.failed, &self.completed),
                };
                assert!(
                    !other.contains_key(id),
                    "{id} reported both completed and failed"
                );
                if let Some(earlier) = this.insert(*id, op.clone()) {
                    assert_eq!(&earlier, op, "one transaction id answered two requests");
                }
            }
            Outcome::KeyReused => {
                let key = op
                    .key
                    .as_ref()
                    .expect("only a keyed request can reuse a key");
                let (first_op, _) = self.keys.get(&(op.user, key.clone())).unwrap_or_else(|| {
                    panic!("422 idempotency_key_reused for an unused key {key}")
                });
                assert_ne!(
                    first_op, op,
                    "the same request was refused as idempotency_key_reused"
                );
            }
            Outcome::ServerError { .. } | Outcome::NoReply { .. } => {}
        }
    }

    /// The model's balance of user `index`.
    pub(crate) fn balance(&self, users: &[TestUser], index: usize) -> i64 {
        let id = users[index].id;
        self.completed
            .values()
            .map(|op| {
                let (from, to) = op.parties(users);
                if from == id {
                    -op.amount
                } else if to == id {
                    op.amount
                } else {
                    0
                }
            })
            .sum()
    }

    /// What the users hold together: credits minus debits.
    pub(crate) fn users_total(&self) -> i64 {
        self.completed
            .values()
            .map(|op| match op.kind {
                Kind::Credit => op.amount,
                Kind::Debit => -op.amount,
                Kind::Transfer { .. } => 0,
            })
            .sum()
    }
}

/// Credits every user `amount(i)` through the API (keyed, so it is a recorded request too).
pub(crate) async fn fund(
    app: &TestApp,
    users: &[TestUser],
    auditor: &mut Auditor,
    amount: impl Fn(usize) -> i64,
) {
    for chunk in (0..users.len()).collect::<Vec<_>>().chunks(10) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&user| Op {
                user,
                kind: Kind::Credit,
                amount: amount(user),
                key: Some(format!("fund-{user}")),
            })
            .collect();
        let outcomes = join_all(ops.iter().map(|op| send(app, users, op))).await;
        for (op, (outcome, _)) in ops.iter().zip(outcomes) {
            assert!(
                matches!(outcome, Outcome::Completed(_)),
                "funding: {outcome:?}"
            );
            auditor.record(op, &outcome);
        }
    }
}

/// Registers `count` users, a few at a time (argon2 is slow in a debug build).
pub(crate) async fn users(app: &TestApp, prefix: &str, count: usize) -> Vec<TestUser> {
    let mut users = Vec::with_capacity(count);
    while users.len() < count {
        let batch = (count - users.len()).min(8);
        users.extend(join_all((0..batch).map(|_| app.user(prefix))).await);
    }
    users
}

/// Reconciles the auditor with the service and the database, after every request has been
/// decided: balances through the API, every transaction row, idempotency keys, conservation, and
/// the harness's invariant checks. Returns the number of completed transactions.
pub(crate) async fn reconcile(app: &TestApp, users: &[TestUser], auditor: &Auditor) -> usize {
    for index in 0..users.len() {
        assert_eq!(
            app.balance(&users[index], CURRENCY).await,
            auditor.balance(users, index),
            "user {index}: the API balance differs from the auditor's"
        );
    }
    let db = app.db().await;
    let rows = db
        .query(
            "SELECT id, status, type, from_user_id, to_user_id, amount, currency, initiated_by, idempotency_key
             FROM transactions",
            &[],
        )
        .await
        .expect("transactions");
    let mut completed = HashSet::new();
    let mut failed = HashSet::new();
    for row in &rows {
        let id: Uuid = row.get("id");
        let status: &str = row.get("status");
        let op = match status {
            "completed" => {
                completed.insert(id);
                auditor.completed.get(&id)
            }
            "failed" => {
                failed.insert(id);
                auditor.failed.get(&id)
            }
            other => panic!("transaction {id} is {other}"),
        };
        let op = op.unwrap_or_else(|| {
            panic!("{status} transaction {id} in the database was never reported as {status}")
        });
        let (from, to) = op.parties(users);
        assert_eq!(row.get::<_, &str>("type"), op.type_name(), "{id}");
        assert_eq!(row.get::<_, Uuid>("from_user_id"), from, "{id}");
        assert_eq!(row.get::<_, Uuid>("to_user_id"), to, "{id}");
        assert_eq!(row.get::<_, i64>("amount"), op.amount, "{id}");
        assert_eq!(row.get::<_, &str>("currency"), CURRENCY, "{id}");
        assert_eq!(
            row.get::<_, Uuid>("initiated_by"),
            users[op.user].id,
            "{id}"
        );
        assert_eq!(
            row.get::<_, Option<&str>>("idempotency_key"),
            op.key.as_deref(),
            "{id}"
        );
    }
    let reported: HashSet<Uuid> = auditor.completed.keys().copied().collect();
    let missing: Vec<_> = reported.difference(&completed).collect();
    assert!(
        missing.is_empty(),
        "acknowledged (201) but not completed in the database: {missing:?}"
    );
    let reported: HashSet<Uuid> = auditor.failed.keys().copied().collect();
    let missing: Vec<_> = reported.difference(&failed).collect();
    assert!(
        missing.is_empty(),
        "reported insufficient_funds but not a failed transaction: {missing:?}"
    );

    let doubled = db
        .query(
            "SELECT initiated_by, idempotency_key, count(*) FROM transactions
             WHERE idempotency_key IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1",
            &[],
        )
        .await
        .expect("doubled keys");
    assert!(
        doubled.is_empty(),
        "an idempotency key produced several transactions: {:?}",
        doubled
            .iter()
            .map(|row| row.get::<_, String>(1))
            .collect::<Vec<_>>()
    );
    let orphan_keys: i64 = db
        .query_one(
            "SELECT count(*) FROM idempotency_keys k
             LEFT JOIN transactions t ON t.id = k.transaction_id
             WHERE t.id IS NULL OR t.initiated_by <> k.user_id
                OR t.idempotency_key IS DISTINCT FROM k.key",
            &[],
        )
        .await
        .expect("key rows")
        .get(0);
    assert_eq!(
        orphan_keys, 0,
        "an idempotency key points at another transaction"
    );
    let (keys, keyed): (i64, i64) = {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM idempotency_keys),
                        (SELECT count(*) FROM transactions WHERE idempotency_key IS NOT NULL)",
                &[],
            )
            .await
            .expect("key counts");
        (row.get(0), row.get(1))
    };
    assert_eq!(keys, keyed, "one stored key per keyed transaction");

    let row = db
        .query_one(
            "SELECT coalesce(sum(amount) FILTER (WHERE user_id <> $1), 0)::bigint,
                    coalesce(sum(amount), 0)::bigint
             FROM balances WHERE currency = $2",
            &[&SYSTEM, &CURRENCY],
        )
        .await
        .expect("sums");
    let (users_sum, all_sum): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        users_sum,
        auditor.users_total(),
        "the users hold more or less than was credited minus debited"
    );
    assert_eq!(
        all_sum, 0,
        "money was created or destroyed (system included)"
    );

    let completed_in_db = app.assert_ledger_invariants().await;
    assert_eq!(
        completed_in_db as usize,
        auditor.completed.len(),
        "completed transactions in the database vs distinct 201 ids"
    );
    auditor.completed.len()
}

const USERS: usize = 50;
const CLIENTS: usize = 32;
const ITERATIONS_PER_CLIENT: usize = 200;
const SEED: u64 = 0x7a11_2024;
/// More than all the money in any of these tests: a transfer of this much is always refused.
pub(crate) const OVERDRAW: i64 = 100_000_000;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    completed: u64,
    insufficient: u64,
    reused: u64,
    replays: u64,
    concurrent_repeats: u64,
    shared_keys: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.requests += other.requests;
        self.completed += other.completed;
        self.insufficient += other.insufficient;
        self.reused += other.reused;
        self.replays += other.replays;
        self.concurrent_repeats += other.concurrent_repeats;
        self.shared_keys += other.shared_keys;
    }
}

impl Tally {
    fn count(&mut self, outcome: &Outcome) {
        self.requests += 1;
        match outcome {
            Outcome::Completed(_) => self.completed += 1,
            Outcome::Insufficient(_) => self.insufficient += 1,
            Outcome::KeyReused => self.reused += 1,
            other => panic!("no fault is injected here, so every request is decided: {other:?}"),
        }
    }
}

/// A seeded random request: mostly small transfers between two distinct users, some debits and
/// credits, and overdraw attempts (more than all the money there is, so always refused).
pub(crate) fn random_op(rng: &mut StdRng, users: usize, key: Option<String>) -> Op {
    let user = rng.random_range(0..users);
    let roll: f64 = rng.random();
    let (kind, amount) = if roll < 0.08 {
        let to = (user + rng.random_range(1..users)) % users;
        (Kind::Transfer { to }, OVERDRAW)
    } else if roll < 0.16 {
        (Kind::Debit, rng.random_range(1..=1_500))
    } else if roll < 0.20 {
        (Kind::Credit, rng.random_range(1..=2_000))
    } else {
        let to = (user + rng.random_range(1..users)) % users;
        (Kind::Transfer { to }, rng.random_range(1..=3_000))
    };
    Op {
        user,
        kind,
        amount,
        key,
    }
}

/// One client: a seeded sequence of requests, some of them repeats of its earlier keys.
async fn client(
    app: &TestApp,
    users: &[TestUser],
    auditor: &RefCell<Auditor>,
    client: usize,
) -> Tally {
    let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(client as u64));
    let mut tally = Tally::default();
    // Keyed requests this client has seen decided, with their answer.
    let mut decided: Vec<(Op, Outcome)> = Vec::new();
    // Key strings already taken by a second user.
    let mut shared: HashSet<String> = HashSet::new();
    for n in 0..ITERATIONS_PER_CLIENT {
        let roll: f64 = rng.random();
        if roll < 0.08 && !decided.is_empty() {
            // The same request again: the original answer, nothing applied.
            let (op, first) = decided[rng.random_range(0..decided.len())].clone();
            let (outcome, replayed) = send(app, users, &op).await;
            assert_eq!(outcome, first, "replay of {op:?}");
            if let Outcome::Completed(_) = outcome {
                assert!(replayed, "a replayed 201 says Idempotent-Replayed");
            }
            tally.count(&outcome);
            tally.replays += 1;
            auditor.borrow_mut().record(&op, &outcome);
        } else if roll < 0.12 && !decided.is_empty() {
            // The same key with another body: refused, nothing applied.
            let (op, _) = decided[rng.random_range(0..decided.len())].clone();
            let other = Op {
                amount: op.amount + 1,
                ..op
            };
            let (outcome, _) = send(app, users, &other).await;
            assert_eq!(outcome, Outcome::KeyReused, "{other:?}");
            tally.count(&outcome);
            auditor.borrow_mut().record(&other, &outcome);
        } else {
            // Keys belong to their user: now and then another user takes a key string this
            // client already used, and must get a transaction of its own.
            let borrowed = if roll < 0.14 && !decided.is_empty() {
                let (first, _) = &decided[rng.random_range(0..decided.len())];
                let key = first.key.clone().expect("decided requests are keyed");
                shared.insert(key.clone()).then_some((key, first.user))
            } else {
                None
            };
            let (key, owner) = match borrowed {
                Some((key, owner)) => (Some(key), Some(owner)),
                None => (rng.random_bool(0.9).then(|| format!("c{client}-{n}")), None),
            };
            let mut op = random_op(&mut rng, USERS, key);
            if let Some(owner) = owner {
                tally.shared_keys += 1;
                if op.user == owner {
                    op.user = (owner + 1) % USERS;
                    if op.kind == (Kind::Transfer { to: op.user }) {
                        op.kind = Kind::Transfer { to: owner };
                    }
                }
            }
            // Some keyed requests go out several times at once (a client retrying early).
            let copies = if op.key.is_some() && (0.14..0.22).contains(&roll) {
                3
            } else {
                1
            };
            let outcomes = join_all((0..copies).map(|_| send(app, users, &op))).await;
            if copies > 1 {
                tally.concurrent_repeats += 1;
            }
            for (outcome, _) in &outcomes {
                tally.count(outcome);
                assert_eq!(outcome, &outcomes[0].0, "concurrent copies of {op:?}");
                auditor.borrow_mut().record(&op, outcome);
            }
            let outcome = outcomes[0].0.clone();
            if op.amount == OVERDRAW {
                assert!(
                    matches!(outcome, Outcome::Insufficient(_)),
                    "an overdraw must be refused: {outcome:?}"
                );
            }
            if op.key.is_some() {
                decided.push((op, outcome));
            }
        }
    }
    tally
}

#[actix_web::test]
async fn concurrent_transfers_reconcile_to_the_cent() {
    let started = Instant::now();
    let app = TestApp::spawn().await;
    if std::env::var("TALLY_TEST_LOGS").is_ok() {
        let _ = tally::telemetry::init(&app.settings.log, &app.settings.telemetry);
    }
    let users = users(&app, "conc", USERS).await;
    let mut auditor = Auditor::default();
    let mut seed_rng = StdRng::seed_from_u64(SEED);
    let initial: Vec<i64> = (0..USERS)
        .map(|_| seed_rng.random_range(5_000..=20_000))
        .collect();
    fund(&app, &users, &mut auditor, |user| initial[user]).await;
    let credited: i64 = initial.iter().sum();
    assert_eq!(auditor.users_total(), credited);
    let setup = started.elapsed();

    let load_started = Instant::now();
    let auditor = RefCell::new(auditor);
    let tallies = join_all((0..CLIENTS).map(|n| client(&app, &users, &auditor, n))).await;
    let load = load_started.elapsed();
    let mut total = Tally::default();
    for tally in tallies {
        total += tally;
    }
    let auditor = auditor.into_inner();

    let completed = reconcile(&app, &users, &auditor).await;
    assert!(
        total.insufficient > 0
            && total.reused > 0
            && total.replays > 0
            && total.concurrent_repeats > 0
            && total.shared_keys > 0,
        "the load must exercise refusals and repeats: {total:?}"
    );
    eprintln!(
        "concurrency: {USERS} users, {CLIENTS} clients, {} requests in {load:?} \
         ({} 201, {} insufficient_funds, {} key reused, {} sequential replays, \
         {} concurrent triples, {} keys shared by two users); {completed} distinct completed \
         transactions, {} failed; setup {setup:?}, total {:?}",
        total.requests,
        total.completed,
        total.insufficient,
        total.reused,
        total.replays,
        total.concurrent_repeats,
        total.shared_keys,
        auditor.failed.len(),
        started.elapsed()
    );
}
