//! Reference-model test of the configured limits (DESIGN.md section 8, invariant 11): each
//! user gets seeded random limits of every kind; concurrent clients on two instances sharing the
//! database (one client per user, alternating instances) send seeded random debits, transfers,
//! holds (then posted in part or voided) and self-service credits, while a driven clock moves
//! between rounds by a second, a window, or past UTC midnight. Every reply is predicted by the
//! model's own limit arithmetic: exactly the movements that fit are accepted, and a refusal
//! names a limit the model says is crossed, with the model's figures. At the end every balance
//! equals the model's and the ledger contract holds.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::clock::{Clock, ManualClock};

use crate::helpers::{Reply, TestApp};

const USERS: usize = 6;
const ROUNDS: usize = 14;
const STEPS_PER_ROUND: usize = 8;
const FUNDING: i64 = 1_000_000_000;

#[derive(Debug, Clone)]
struct Limit {
    kind: &'static str,
    value: i64,
    window_s: Option<i64>,
}

/// One counted movement of a user: a debit, a hold (amount lowered when posted, removed when
/// voided) or a self-service credit.
#[derive(Debug, Clone)]
struct Counted {
    at: DateTime<Utc>,
    amount: i64,
    debit: bool,
    hold: Option<String>,
}

#[derive(Debug, Default)]
struct Account {
    limits: Vec<Limit>,
    counted: Vec<Counted>,
    balance: i64,
    /// Holds still pending: (id, amount).
    open_holds: Vec<(String, i64)>,
}

impl Account {
    /// The limits a movement of `amount` (a debit when `debit`) would cross at `now`, each with
    /// (value, used, requested).
    fn crossed(
        &self,
        now: DateTime<Utc>,
        amount: i64,
        debit: bool,
    ) -> Vec<(&'static str, i64, i64, i64)> {
        let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
        let mut crossed = Vec::new();
        for limit in &self.limits {
            let since = |counted: &Counted| match limit.window_s {
                None => counted.at >= midnight,
                Some(window) => counted.at > now - TimeDelta::seconds(window),
            };
            let sum = |want_debit: bool| -> i64 {
                self.counted
                    .iter()
                    .filter(|c| c.debit == want_debit && since(c))
                    .map(|c| c.amount)
                    .sum()
            };
            let (used, requested) = match (limit.kind, debit) {
                ("max_per_transaction", true) => (0, amount),
                ("daily_debit" | "rolling_debit", true) => (sum(true), amount),
                ("velocity", true) => (
                    self.counted.iter().filter(|c| c.debit && since(c)).count() as i64,
                    1,
                ),
                ("daily_credit", false) => (sum(false), amount),
                _ => continue,
            };
            if used + requested > limit.value {
                crossed.push((limit.kind, limit.value, used, requested));
            }
        }
        crossed
    }
}

/// Checks a reply against the model's prediction; returns whether it was accepted.
#[track_caller]
fn check(reply: &Reply, crossed: &[(&'static str, i64, i64, i64)], what: &str) -> bool {
    if crossed.is_empty() {
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{what}: the model admits it: {}",
            reply.body
        );
        return true;
    }
    let body = reply.assert_problem(422, "limit_exceeded");
    let kind = body["limit"]["kind"].as_str().expect("kind");
    let Some(&(_, value, used, requested)) = crossed.iter().find(|c| c.0 == kind) else {
        panic!("{what}: refused for {kind}, the model crosses {crossed:?}: {body}");
    };
    assert_eq!(
        (
            body["limit"]["value"].as_i64(),
            body["used"].as_i64(),
            body["requested"].as_i64()
        ),
        (Some(value), Some(used), Some(requested)),
        "{what}: {body}"
    );
    false
}

fn random_limits(rng: &mut StdRng) -> Vec<Limit> {
    let mut limits = Vec::new();
    let mut maybe = |kind: &'static str,
                     value: std::ops::Range<i64>,
                     window: Option<std::ops::Range<i64>>,
                     rng: &mut StdRng| {
        if rng.random_bool(0.7) {
            limits.push(Limit {
                kind,
                value: rng.random_range(value),
                window_s: window.map(|w| rng.random_range(w)),
            });
        }
    };
    maybe("max_per_transaction", 150..400, None, rng);
    maybe("daily_debit", 800..3_000, None, rng);
    maybe("rolling_debit", 300..1_200, Some(5..120), rng);
    maybe("velocity", 2..7, Some(5..60), rng);
    maybe("daily_credit", 300..1_500, None, rng);
    limits
}

#[actix_web::test]
async fn concurrent_clients_on_two_instances_get_exactly_what_the_limits_allow() {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 23, 50, 0).unwrap(),
    ));
    let first = TestApp::spawn_with_clock(clock.clone(), |settings| {
        settings.bootstrap.admin_username = crate::helpers::ADMIN_USERNAME.to_owned();
        settings.bootstrap.admin_email = crate::helpers::ADMIN_EMAIL.to_owned();
        settings.bootstrap.admin_password = crate::helpers::ADMIN_PASSWORD.to_owned();
    })
    .await;
    let url = first.database_url.clone();
    let second = TestApp::spawn_with_clock(clock.clone(), move |settings| {
        settings.database.url = url;
    })
    .await;
    let admin = first
        .login(
            crate::helpers::ADMIN_USERNAME,
            crate::helpers::ADMIN_PASSWORD,
        )
        .await;
    let sink = first.user("sink").await;
    let mut rng = StdRng::seed_from_u64(20261129);
    let mut users = Vec::new();
    let mut accounts = Vec::new();
    for _ in 0..USERS {
        let user = first.user("limited").await;
        let credit = first
            .post(
                "/api/v1/transactions/credit",
                Some(&admin.token),
                &json!({"user_id": user.id, "amount": FUNDING, "currency": "USD"}),
            )
            .await;
        assert_eq!(credit.status, StatusCode::CREATED, "{}", credit.body);
        let limits = random_limits(&mut rng);
        let wire: Vec<Value> = limits
            .iter()
            .map(|l| {
                json!({"kind": l.kind, "currency": if rng.random_bool(0.5) { "USD" } else { "*" },
                            "value": l.value, "window_s": l.window_s})
            })
            .collect();
        crate::limits::set_limits(&first, &admin, &user, json!(wire)).await;
        users.push(user);
        accounts.push(Account {
            limits,
            balance: FUNDING,
            ..Account::default()
        });
    }

    let apps = [&first, &second];
    let mut accepted = 0;
    let mut refused = 0;
    for round in 0..ROUNDS {
        let now = clock.now();
        let clients = accounts.iter_mut().enumerate().map(|(n, account)| {
            let (app, user, sink) = (apps[(n + round) % 2], &users[n], &sink);
            let mut rng = StdRng::seed_from_u64((round * USERS + n) as u64);
            async move {
                let (mut yes, mut no) = (0, 0);
                for step in 0..STEPS_PER_ROUND {
                    let what = format!("round {round} user {n} step {step}");
                    let amount = rng.random_range(1..400);
                    let ok = match rng.random_range(0..10) {
                        0..=2 => {
                            let crossed = account.crossed(now, amount, true);
                            let reply = app
                                .post(
                                    "/api/v1/transactions/debit",
                                    Some(&user.token),
                                    &json!({"amount": amount, "currency": "USD"}),
                                )
                                .await;
                            let ok = check(&reply, &crossed, &what);
                            if ok {
                                account.balance -= amount;
                                account.counted.push(Counted { at: now, amount, debit: true, hold: None });
                            }
                            ok
                        }
                        3..=4 => {
                            let crossed = account.crossed(now, amount, true);
                            let reply = app
                                .post(
                                    "/api/v1/transactions/transfer",
                                    Some(&user.token),
                                    &json!({"to_user_id": sink.id, "amount": amount, "currency": "USD"}),
                                )
                                .await;
                            let ok = check(&reply, &crossed, &what);
                            if ok {
                                account.balance -= amount;
                                account.counted.push(Counted { at: now, amount, debit: true, hold: None });
                            }
                            ok
                        }
                        5..=6 => {
                            let crossed = account.crossed(now, amount, true);
                            let reply = app
                                .post(
                                    "/api/v1/transactions/transfer",
                                    Some(&user.token),
                                    &json!({"to_user_id": sink.id, "amount": amount, "currency": "USD",
                                            "hold": {"timeout_s": 86_400}}),
                                )
                                .await;
                            let ok = check(&reply, &crossed, &what);
                            if ok {
                                let id = reply.body["id"].as_str().expect("id").to_owned();
                                account.counted.push(Counted { at: now, amount, debit: true, hold: Some(id.clone()) });
                                account.open_holds.push((id, amount));
                            }
                            ok
                        }
                        7 if !account.open_holds.is_empty() => {
                            // The payee resolves one of the user's holds: a partial post or a void.
                            let (id, held) = account.open_holds.remove(rng.random_range(0..account.open_holds.len()));
                            let post = rng.random_bool(0.5);
                            let posted = rng.random_range(1..=held);
                            let reply = if post {
                                app.request(Method::POST, &format!("/api/v1/transactions/{id}/post"),
                                    Some(&sink.token), Some(&json!({"amount": posted})), None).await
                            } else {
                                app.request(Method::POST, &format!("/api/v1/transactions/{id}/void"),
                                    Some(&sink.token), None, None).await
                            };
                            assert!(reply.status.is_success(), "{what}: resolve: {}", reply.body);
                            let at = account.counted.iter().position(|c| c.hold.as_deref() == Some(&id)).expect("counted hold");
                            if post {
                                account.balance -= posted;
                                account.counted[at].amount = posted;
                            } else {
                                account.counted.remove(at);
                            }
                            continue;
                        }
                        _ => {
                            let crossed = account.crossed(now, amount, false);
                            let reply = app
                                .post(
                                    "/api/v1/transactions/credit",
                                    Some(&user.token),
                                    &json!({"amount": amount, "currency": "USD"}),
                                )
                                .await;
                            let ok = check(&reply, &crossed, &what);
                            if ok {
                                account.balance += amount;
                                account.counted.push(Counted { at: now, amount, debit: false, hold: None });
                            }
                            ok
                        }
                    };
                    if ok { yes += 1 } else { no += 1 }
                }
                (yes, no)
            }
        });
        for (yes, no) in futures_util::future::join_all(clients).await {
            accepted += yes;
            refused += no;
        }
        // Move on: within a window, just past one, or across UTC midnight.
        let step = [1, 4, 9, 30, 61, 600, 3_600][rng.random_range(0..7)];
        clock.advance(TimeDelta::seconds(step));
    }
    eprintln!("limits model: {accepted} accepted, {refused} refused");
    assert!(
        accepted > 100 && refused > 30,
        "a mix worth checking: {accepted} accepted, {refused} refused"
    );
    for (user, account) in users.iter().zip(&accounts) {
        assert_eq!(
            first.balance(user, "USD").await,
            account.balance,
            "{}",
            user.username
        );
    }
    first.assert_ledger_invariants().await;
}
