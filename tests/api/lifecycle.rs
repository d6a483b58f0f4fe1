//! Reference-model test of the transaction lifecycle (DESIGN.md section 7): a seeded random mix
//! of credits, transfers, holds (long ones posted in part, in full or voided; short ones left to
//! the sweeper or posted as their deadline comes), over-posts and partial reversals, checked
//! against a model of `amount`, `pending` and `available` per account.
//!
//! First one client, whose every reply the model predicts (accept, or refuse with which
//! problem). The only uncertainty is when a short hold expires: until the sweeper has released
//! it, a payer's available amount is known to lie between two figures, and a request between
//! them may go either way. Then concurrent clients on two instances sharing the database: each
//! reply must be one the rules allow, and its effect goes into the model. At the end every short
//! hold has expired (awaited on the observed state, with a deadline), and every balance, hold
//! and original must equal the model, with the ledger contract holding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{Reply, TestApp, TestUser};

const USERS: usize = 4;
const SEQUENTIAL_STEPS: usize = 160;
const CLIENTS: usize = 4;
const CONCURRENT_STEPS: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldState {
    Pending,
    Posted(i64),
    Voided,
    Expired,
}

#[derive(Debug, Clone)]
struct Hold {
    from: usize,
    /// `None`: a debit hold (its posting goes to the system account).
    to: Option<usize>,
    amount: i64,
    /// A one-second hold: the sweeper may release it at any moment.
    short: bool,
    state: HoldState,
}

/// A completed transfer (or transfer posting) that may be reversed.
#[derive(Debug, Clone)]
struct Original {
    from: usize,
    to: usize,
    amount: i64,
    reversed: i64,
}

#[derive(Debug, Default)]
struct Model {
    amount: [i64; USERS],
    pending: [i64; USERS],
    holds: HashMap<String, Hold>,
    originals: HashMap<String, Original>,
    /// Money-outs refused with `insufficient_funds` (the mix must reach the floor).
    refused: usize,
}

impl Model {
    /// What `user` surely has available, and what they may have (once every short hold of
    /// theirs still pending in the model has been released).
    fn available(&self, user: usize) -> (i64, i64) {
        let low = self.amount[user] - self.pending[user];
        let releasable: i64 = self
            .holds
            .values()
            .filter(|hold| hold.from == user && hold.short && hold.state == HoldState::Pending)
            .map(|hold| hold.amount)
            .sum();
        (low, low + releasable)
    }

    fn release(&mut self, id: &str, end: HoldState) {
        let hold = self.holds.get_mut(id).expect("a modelled hold");
        assert_eq!(hold.state, HoldState::Pending, "hold {id} resolved twice");
        hold.state = end;
        self.pending[hold.from] -= hold.amount;
        if let HoldState::Posted(posted) = end {
            self.amount[hold.from] -= posted;
            if let Some(to) = hold.to {
                self.amount[to] += posted;
            }
        }
    }
}

/// What one client knows: the holds and originals it made (only it resolves or reverses them).
#[derive(Default)]
struct Own {
    holds: Vec<String>,
    originals: Vec<String>,
}

/// Whether the model lets a money-out of `amount` from `user` pass: `Some(answer)` when it
/// knows, `None` when a pending short hold could make it go either way, or when other clients
/// run at the same time (`exact` false).
fn predict(model: &Model, user: usize, amount: i64, exact: bool) -> Option<bool> {
    predict_within(model.available(user), amount, exact)
}

/// [`predict`] from an availability range `(low, high)` read earlier.
fn predict_within((low, high): (i64, i64), amount: i64, exact: bool) -> Option<bool> {
    match () {
        _ if !exact => None,
        _ if amount <= low => Some(true),
        _ if amount > high => Some(false),
        _ => None,
    }
}

/// A money-out's reply: 201, or 422 `insufficient_funds` (recorded failed), as predicted.
fn accepted(model: &Mutex<Model>, reply: &Reply, prediction: Option<bool>, what: &str) -> bool {
    let ok = match reply.status {
        StatusCode::CREATED => true,
        StatusCode::UNPROCESSABLE_ENTITY => {
            assert_eq!(
                reply.body["code"], "insufficient_funds",
                "{what}: {}",
                reply.body
            );
            assert!(
                reply.body["transaction_id"].is_string(),
                "{what}: recorded failed"
            );
            model.lock().unwrap().refused += 1;
            false
        }
        status => panic!("{what}: unexpected {status}: {}", reply.body),
    };
    if let Some(expected) = prediction {
        assert_eq!(
            ok, expected,
            "{what}: the model predicted otherwise: {}",
            reply.body
        );
    }
    ok
}

fn id_of(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("an id").to_owned()
}

async fn send(app: &TestApp, user: &TestUser, path: &str, body: Option<Value>) -> Reply {
    app.request(Method::POST, path, Some(&user.token), body.as_ref(), None)
        .await
}

/// One random step by one client.
async fn step(
    app: &TestApp,
    users: &[TestUser],
    model: &Mutex<Model>,
    own: &mut Own,
    rng: &mut StdRng,
    exact: bool,
) {
    let from = rng.random_range(0..USERS);
    let to = (from + rng.random_range(1..USERS)) % USERS;
    let amount = rng.random_range(1..=400);
    let roll = rng.random_range(0..100);
    match roll {
        // A credit always passes.
        0..=9 => {
            let reply = send(
                app,
                &users[to],
                "/api/v1/transactions/credit",
                Some(json!({"amount": amount, "currency": "USD"})),
            )
            .await;
            assert_eq!(reply.status, StatusCode::CREATED, "credit: {}", reply.body);
            model.lock().unwrap().amount[to] += amount;
        }
        // A transfer, or a hold of a transfer or a debit (long, or short: one second).
        10..=59 => {
            let (hold, debit, short) = match roll {
                10..=29 => (false, false, false),
                30..=39 => (true, false, false),
                40..=47 => (true, true, false),
                _ => (true, rng.random_bool(0.3), true),
            };
            let prediction = predict(&model.lock().unwrap(), from, amount, exact);
            let mut body = json!({"amount": amount, "currency": "USD"});
            if !debit {
                body["to_user_id"] = json!(users[to].id);
            }
            if hold {
                body["hold"] = json!({"timeout_s": if short { 1 } else { 3600 }});
            }
            let path = if debit {
                "/api/v1/transactions/debit"
            } else {
                "/api/v1/transactions/transfer"
            };
            let reply = send(app, &users[from], path, Some(body)).await;
            if !accepted(model, &reply, prediction, "transfer or hold") {
                return;
            }
            let id = id_of(&reply);
            let mut model = model.lock().unwrap();
            if hold {
                assert_eq!(reply.body["status"], "pending", "{}", reply.body);
                model.pending[from] += amount;
                let to = (!debit).then_some(to);
                let state = HoldState::Pending;
                model.holds.insert(
                    id.clone(),
                    Hold {
                        from,
                        to,
                        amount,
                        short,
                        state,
                    },
                );
                own.holds.push(id);
            } else {
                assert_eq!(reply.body["status"], "completed", "{}", reply.body);
                model.amount[from] -= amount;
                model.amount[to] += amount;
                let reversed = 0;
                model.originals.insert(
                    id.clone(),
                    Original {
                        from,
                        to,
                        amount,
                        reversed,
                    },
                );
                own.originals.push(id);
            }
        }
        // Post one of this client's holds: in full, in part, or more than it holds.
        60..=74 => {
            let Some(id) = pick(&own.holds, rng) else {
                return;
            };
            let hold = model.lock().unwrap().holds[&id].clone();
            let resolver = &users[hold.to.unwrap_or(hold.from)];
            let path = format!("/api/v1/transactions/{id}/post");
            let over = !hold.short && rng.random_bool(0.15);
            let (body, posted) = match rng.random_range(0..3) {
                _ if over => (json!({"amount": hold.amount + 1}), 0),
                0 => (json!({}), hold.amount),
                _ => {
                    let part = rng.random_range(1..=hold.amount);
                    (json!({"amount": part}), part)
                }
            };
            let reply = send(app, resolver, &path, Some(body)).await;
            settle_resolution(model, &id, &hold, &reply, over, HoldState::Posted(posted));
            if let (StatusCode::CREATED, Some(to)) = (reply.status, hold.to) {
                let posting = id_of(&reply);
                let original = Original {
                    from: hold.from,
                    to,
                    amount: posted,
                    reversed: 0,
                };
                model
                    .lock()
                    .unwrap()
                    .originals
                    .insert(posting.clone(), original);
                own.originals.push(posting);
            }
        }
        // Void one of this client's holds.
        75..=84 => {
            let Some(id) = pick(&own.holds, rng) else {
                return;
            };
            let hold = model.lock().unwrap().holds[&id].clone();
            let resolver = &users[hold.to.unwrap_or(hold.from)];
            let reply = send(
                app,
                resolver,
                &format!("/api/v1/transactions/{id}/void"),
                None,
            )
            .await;
            settle_resolution(model, &id, &hold, &reply, false, HoldState::Voided);
        }
        // Reverse part of one of this client's originals (its payee pays it back).
        _ => {
            let Some(id) = pick(&own.originals, rng) else {
                return;
            };
            let (original, prediction) = {
                let model = model.lock().unwrap();
                let original = model.originals[&id].clone();
                (original.clone(), model.available(original.to))
            };
            let remaining = original.amount - original.reversed;
            let over = remaining == 0 || rng.random_bool(0.1);
            let amount = if over {
                remaining + 1
            } else {
                rng.random_range(1..=remaining)
            };
            let body = json!({"amount": amount, "reason": "model refund"});
            let reply = send(
                app,
                &users[original.to],
                &format!("/api/v1/transactions/{id}/reverse"),
                Some(body),
            )
            .await;
            if remaining == 0 {
                // Fully reversed: nothing is left, so it is no longer reversible at all.
                reply.assert_problem(409, "not_reversible");
                return;
            }
            if over {
                let problem = reply.assert_problem(422, "reversal_exceeds_amount");
                assert_eq!(problem["remaining"], remaining, "{}", reply.body);
                return;
            }
            let prediction = predict_within(prediction, amount, exact);
            if accepted(model, &reply, prediction, "reversal") {
                assert_eq!(reply.body["reversal_of"], id.as_str(), "{}", reply.body);
                let mut model = model.lock().unwrap();
                model.amount[original.to] -= amount;
                model.amount[original.from] += amount;
                model.originals.get_mut(&id).unwrap().reversed += amount;
            }
        }
    }
}

/// A random element of `ids`.
fn pick(ids: &[String], rng: &mut StdRng) -> Option<String> {
    (!ids.is_empty()).then(|| ids[rng.random_range(0..ids.len())].clone())
}

/// The reply to a post or void of `hold`, checked against the model, whose state it advances
/// (to `end`, or to expired when the reply says the deadline passed first).
fn settle_resolution(
    model: &Mutex<Model>,
    id: &str,
    hold: &Hold,
    reply: &Reply,
    over: bool,
    end: HoldState,
) {
    // The amount is checked against the hold first, whatever its state (as TigerBeetle orders
    // `exceeds_pending_transfer_amount` before `pending_transfer_already_posted`).
    if over {
        let problem = reply.assert_problem(422, "exceeds_hold");
        assert_eq!(problem["held"], hold.amount, "{}", reply.body);
        return;
    }
    let mut model = model.lock().unwrap();
    let state = model.holds[id].state;
    if state != HoldState::Pending {
        let problem = reply.assert_problem(409, "hold_not_pending");
        let expected = match state {
            HoldState::Posted(_) => "posted",
            HoldState::Voided => "voided",
            _ => "expired",
        };
        assert_eq!(problem["hold_status"], expected, "{}", reply.body);
        return;
    }
    match reply.status {
        StatusCode::CREATED | StatusCode::OK => model.release(id, end),
        StatusCode::CONFLICT if hold.short => {
            // The deadline came first: the sweeper has released it, or will.
            let problem = reply.assert_problem(409, "hold_not_pending");
            assert_eq!(problem["hold_status"], "expired", "{}", reply.body);
            model.release(id, HoldState::Expired);
        }
        status => panic!(
            "resolving {id} ({hold:?}): unexpected {status}: {}",
            reply.body
        ),
    }
}

#[actix_web::test]
async fn a_random_lifecycle_mix_matches_the_model_on_one_and_on_two_instances() {
    let adjust = |settings: &mut tally::config::Settings| settings.holds.sweep_interval_ms = 50;
    let first = TestApp::spawn_with(adjust).await;
    let url = first.database_url.clone();
    let second = TestApp::spawn_with(move |settings| {
        adjust(settings);
        settings.database.url = url;
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..USERS {
        let user = first.user("model").await;
        first.credit(&user, 600, "USD").await;
        users.push(user);
    }
    let model = Arc::new(Mutex::new(Model {
        amount: [600; USERS],
        ..Model::default()
    }));

    // One client: every reply predicted.
    let mut rng = StdRng::seed_from_u64(20261129);
    let mut own = Own::default();
    for _ in 0..SEQUENTIAL_STEPS {
        step(&first, &users, &model, &mut own, &mut rng, true).await;
    }
    compare(&first, &users, &model, false).await;

    // Concurrent clients, alternating between the two instances.
    let apps = [&first, &second];
    let clients = (0..CLIENTS).map(|client| {
        let (app, users, model) = (apps[client % 2], &users, &model);
        async move {
            let mut rng = StdRng::seed_from_u64(client as u64);
            let mut own = Own::default();
            for _ in 0..CONCURRENT_STEPS {
                step(app, users, model, &mut own, &mut rng, false).await;
            }
        }
    });
    futures_util::future::join_all(clients).await;

    // Every short hold still pending in the model must expire; then everything must match.
    let short: Vec<String> = model
        .lock()
        .unwrap()
        .holds
        .iter()
        .filter(|(_, hold)| hold.short && hold.state == HoldState::Pending)
        .map(|(id, _)| id.clone())
        .collect();
    for id in short {
        let from = model.lock().unwrap().holds[&id].from;
        await_expired(&second, &users[from], &id).await;
        model.lock().unwrap().release(&id, HoldState::Expired);
    }
    compare(&second, &users, &model, true).await;
    first.assert_ledger_invariants().await;
    // The mix reached every outcome.
    let model = model.lock().unwrap();
    let ended =
        |end: fn(&HoldState) -> bool| model.holds.values().filter(|h| end(&h.state)).count();
    let coverage = (
        ended(|state| matches!(state, HoldState::Posted(_))),
        ended(|state| *state == HoldState::Voided),
        ended(|state| *state == HoldState::Expired),
        model.originals.values().filter(|o| o.reversed > 0).count(),
        model.refused,
    );
    eprintln!("lifecycle mix: (posted, voided, expired, reversed, refused) = {coverage:?}");
    assert!(
        coverage.0 > 5 && coverage.1 > 5 && coverage.2 > 5 && coverage.3 > 5 && coverage.4 > 5,
        "(posted, voided, expired, reversed, refused) = {coverage:?}"
    );
}

/// Polls the hold until the sweeper has expired it (20 s at most).
async fn await_expired(app: &TestApp, user: &TestUser, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = app
            .get(&format!("/api/v1/transactions/{id}"), &user.token)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        match reply.body["status"].as_str() {
            Some("expired") => return,
            Some("pending") => {}
            _ => panic!(
                "short hold {id} was resolved outside the model: {}",
                reply.body
            ),
        }
        assert!(
            Instant::now() < deadline,
            "{id} never expired: {}",
            reply.body
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every balance (`amount`, `pending`, `available`) and, when `settled` (no short hold can
/// still move), every hold's state and every original's reversed amount, as the model says.
async fn compare(app: &TestApp, users: &[TestUser], model: &Mutex<Model>, settled: bool) {
    let model_now = |user: usize| {
        let model = model.lock().unwrap();
        let (amount, pending) = (model.amount[user], model.pending[user]);
        (amount, pending, amount - pending)
    };
    for (n, user) in users.iter().enumerate() {
        let reply = app
            .get("/api/v1/balances/current?currency=USD", &user.token)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let row = &reply.body["balances"][0];
        let figure = |name: &str| row[name].as_i64().expect("a figure");
        let actual = (figure("amount"), figure("pending"), figure("available"));
        let expected = model_now(n);
        if settled {
            assert_eq!(actual, expected, "user {n}");
        } else {
            // Short holds may have been released already: only `pending` can be lower.
            assert_eq!(actual.0, expected.0, "user {n}: amount");
            let (low, high) = model.lock().unwrap().available(n);
            assert!(
                (low..=high).contains(&actual.2),
                "user {n}: available {actual:?}, model {low}..={high}"
            );
        }
    }
    if !settled {
        return;
    }
    let (holds, originals) = {
        let model = model.lock().unwrap();
        (model.holds.clone(), model.originals.clone())
    };
    for (id, hold) in holds {
        let body = app
            .get(
                &format!("/api/v1/transactions/{id}"),
                &users[hold.from].token,
            )
            .await
            .body;
        let expected = match hold.state {
            HoldState::Pending => ("pending", None),
            HoldState::Posted(amount) => ("posted", Some(amount)),
            HoldState::Voided => ("voided", None),
            HoldState::Expired => ("expired", None),
        };
        assert_eq!(
            (
                body["status"].as_str().unwrap(),
                body["posted_amount"].as_i64()
            ),
            expected,
            "hold {id}: {body}"
        );
    }
    for (id, original) in originals {
        let body = app
            .get(
                &format!("/api/v1/transactions/{id}"),
                &users[original.from].token,
            )
            .await
            .body;
        assert_eq!(
            body["reversed_amount"].as_i64().unwrap_or(0),
            original.reversed,
            "original {id}: {body}"
        );
    }
}
