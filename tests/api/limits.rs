//! Limits (DESIGN.md section 8, invariant 11): each kind refuses exactly what does not fit, with
//! the figures a client needs; no path gets around a limit (a bulk split, holds posted later, a
//! reversal, two instances at once); windows follow a clock the test drives (UTC days, rolling
//! windows exact to the microsecond); balance alerts fire once per crossing.

use std::sync::Arc;

use chrono::{TimeDelta, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::clock::{Clock, ManualClock};

use crate::helpers::{Reply, TestApp, TestUser};

const TRANSFER: &str = "/api/v1/transactions/transfer";
const DEBIT: &str = "/api/v1/transactions/debit";
const REFUSALS_DAILY_DEBIT: &str = "tally_limit_refusals_total{kind=\"daily_debit\"}";
/// Set from this app's own counter at each scrape.
const REFUSED_RETRIES: &str = "tally_batch_retries_total{reason=\"refused\"}";

/// A clock standing at 2026-03-10 12:00:00 UTC.
fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap(),
    ))
}

async fn spawn(clock: &Arc<ManualClock>) -> (TestApp, TestUser) {
    spawn_with(clock, |_| {}).await
}

/// An app on `clock` with the `[bootstrap]` admin and `adjust`'s settings, and the admin.
async fn spawn_with(
    clock: &Arc<ManualClock>,
    adjust: impl FnOnce(&mut tally::config::Settings),
) -> (TestApp, TestUser) {
    let app = TestApp::spawn_with_clock(clock.clone(), |settings| {
        settings.bootstrap.admin_username = crate::helpers::ADMIN_USERNAME.to_owned();
        settings.bootstrap.admin_email = crate::helpers::ADMIN_EMAIL.to_owned();
        settings.bootstrap.admin_password = crate::helpers::ADMIN_PASSWORD.to_owned();
        adjust(settings);
    })
    .await;
    let admin = app
        .login(
            crate::helpers::ADMIN_USERNAME,
            crate::helpers::ADMIN_PASSWORD,
        )
        .await;
    (app, admin)
}

/// Sets `user`'s own limits (the admin API); asserts 200.
pub(crate) async fn set_limits(app: &TestApp, admin: &TestUser, user: &TestUser, limits: Value) {
    let reply = app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{}/limits", user.id),
            Some(&admin.token),
            Some(&json!({ "limits": limits })),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "set limits: {}", reply.body);
}

async fn transfer(app: &TestApp, from: &TestUser, to: &TestUser, amount: i64) -> Reply {
    app.post(
        TRANSFER,
        Some(&from.token),
        &json!({"to_user_id": to.id, "amount": amount, "currency": "USD"}),
    )
    .await
}

async fn debit(app: &TestApp, user: &TestUser, amount: i64) -> Reply {
    app.post(
        DEBIT,
        Some(&user.token),
        &json!({"amount": amount, "currency": "USD"}),
    )
    .await
}

/// Asserts a `limit_exceeded` reply with these figures and returns its body.
#[track_caller]
fn assert_limit(reply: &Reply, kind: &str, value: i64, used: i64, requested: i64) -> Value {
    let body = reply.assert_problem(422, "limit_exceeded").clone();
    assert_eq!(body["limit"]["kind"], kind, "{body}");
    assert_eq!(body["limit"]["currency"], "USD", "{body}");
    assert_eq!(body["limit"]["value"], value, "{body}");
    assert_eq!(body["used"], used, "{body}");
    assert_eq!(body["requested"], requested, "{body}");
    assert_eq!(body["remaining"], (value - used).max(0), "{body}");
    body
}

/// A transfer hold of `amount` USD from `payer` to `payee` for `timeout_s`; its id.
async fn hold(
    app: &TestApp,
    payer: &TestUser,
    payee: &TestUser,
    amount: i64,
    timeout_s: u32,
) -> String {
    let reply = app
        .post(
            TRANSFER,
            Some(&payer.token),
            &json!({"to_user_id": payee.id, "amount": amount, "currency": "USD",
                    "hold": {"timeout_s": timeout_s}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "hold: {}", reply.body);
    reply.body["id"].as_str().expect("id").to_owned()
}

/// A payer funded with 10,000 USD whose own limits are `limits`, and a payee.
async fn payer_with_limits(app: &TestApp, admin: &TestUser, limits: Value) -> (TestUser, TestUser) {
    let payer = funded(app, admin, "payer", 10_000).await;
    set_limits(app, admin, &payer, limits).await;
    (payer, app.user("payee").await)
}

/// A user credited `amount` USD by the admin (an admin credit counts toward no limit).
async fn funded(app: &TestApp, admin: &TestUser, prefix: &str, amount: i64) -> TestUser {
    let user = app.user(prefix).await;
    let reply = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            &json!({"user_id": user.id, "amount": amount, "currency": "USD"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "credit: {}", reply.body);
    user
}

#[actix_web::test]
async fn a_daily_debit_limit_refuses_what_does_not_fit_records_it_and_resets_at_utc_midnight() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 10_000).await,
        app.user("payee").await,
    );
    set_limits(
        &app,
        &admin,
        &payer,
        json!([{"kind": "daily_debit", "currency": "USD", "value": 500}]),
    )
    .await;
    let refusals = app.metric(REFUSALS_DAILY_DEBIT).await;

    assert_eq!(
        transfer(&app, &payer, &payee, 300).await.status,
        StatusCode::CREATED
    );
    let refused = transfer(&app, &payer, &payee, 250).await;
    let body = assert_limit(&refused, "daily_debit", 500, 300, 250);
    assert!(body["limit"]["window_s"].is_null(), "{body}");
    // Recorded as a failed transaction with that reason; a replay of its id shows it.
    let id = body["transaction_id"]
        .as_str()
        .expect("the failed transaction's id");
    let recorded = app
        .get(&format!("/api/v1/transactions/{id}"), &payer.token)
        .await;
    assert_eq!(recorded.body["status"], "failed", "{}", recorded.body);
    assert_eq!(recorded.body["failure_reason"], "limit_exceeded");
    // Shared by every app of the test process (other tests refuse too): at least this one.
    assert!(app.metric(REFUSALS_DAILY_DEBIT).await >= refusals + 1.0);

    // Exactly the rest fits; then not one minor unit more, by any kind of debit.
    assert_eq!(debit(&app, &payer, 200).await.status, StatusCode::CREATED);
    assert_limit(&debit(&app, &payer, 1).await, "daily_debit", 500, 500, 1);

    // 23:59:59.999999 is still the same UTC day; midnight starts a new one.
    clock.set(
        Utc.with_ymd_and_hms(2026, 3, 10, 23, 59, 59).unwrap() + TimeDelta::microseconds(999_999),
    );
    assert_limit(&debit(&app, &payer, 1).await, "daily_debit", 500, 500, 1);
    clock.set(Utc.with_ymd_and_hms(2026, 3, 11, 0, 0, 0).unwrap());
    assert_eq!(debit(&app, &payer, 500).await.status, StatusCode::CREATED);
    assert_eq!(app.balance(&payer, "USD").await, 10_000 - 1_000);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn rolling_windows_and_velocity_count_exactly_the_last_window_s() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let payer = funded(&app, &admin, "payer", 10_000).await;
    set_limits(
        &app,
        &admin,
        &payer,
        json!([
            {"kind": "rolling_debit", "currency": "USD", "value": 100, "window_s": 60},
            {"kind": "velocity", "currency": "*", "value": 3, "window_s": 10},
        ]),
    )
    .await;
    let start = clock.now();
    assert_eq!(debit(&app, &payer, 60).await.status, StatusCode::CREATED);
    clock.set(start + TimeDelta::seconds(30));
    assert_eq!(debit(&app, &payer, 40).await.status, StatusCode::CREATED);
    // One microsecond before the first debit leaves the window, it still counts.
    clock.set(start + TimeDelta::seconds(60) - TimeDelta::microseconds(1));
    let refused = debit(&app, &payer, 1).await;
    let body = assert_limit(&refused, "rolling_debit", 100, 100, 1);
    assert_eq!(body["limit"]["window_s"], 60);
    // At exactly 60 s it has left: 40 used.
    clock.set(start + TimeDelta::seconds(60));
    assert_eq!(debit(&app, &payer, 60).await.status, StatusCode::CREATED);
    assert_limit(&debit(&app, &payer, 1).await, "rolling_debit", 100, 100, 1);

    // Velocity: three debits in any 10 s.
    clock.set(start + TimeDelta::seconds(200));
    for _ in 0..3 {
        assert_eq!(debit(&app, &payer, 1).await.status, StatusCode::CREATED);
    }
    let body = assert_limit(&debit(&app, &payer, 1).await, "velocity", 3, 3, 1);
    assert_eq!(body["limit"]["window_s"], 10);
    clock.set(start + TimeDelta::seconds(210));
    assert_eq!(debit(&app, &payer, 1).await.status, StatusCode::CREATED);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn max_per_transaction_and_daily_credit_and_who_they_apply_to() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 10_000).await,
        app.user("payee").await,
    );
    set_limits(
        &app,
        &admin,
        &payer,
        json!([
            {"kind": "max_per_transaction", "currency": "USD", "value": 100},
            {"kind": "daily_credit", "currency": "USD", "value": 1_000},
        ]),
    )
    .await;
    assert_eq!(
        transfer(&app, &payer, &payee, 100).await.status,
        StatusCode::CREATED
    );
    assert_limit(
        &transfer(&app, &payer, &payee, 101).await,
        "max_per_transaction",
        100,
        0,
        101,
    );
    // A hold is a debit too.
    let hold = app
        .post(
            TRANSFER,
            Some(&payer.token),
            &json!({"to_user_id": payee.id, "amount": 101, "currency": "USD",
                    "hold": {"timeout_s": 600}}),
        )
        .await;
    assert_limit(&hold, "max_per_transaction", 100, 0, 101);
    // The payee's receipt is not the payer's business, and the payee has no limit.
    assert_eq!(
        transfer(&app, &payee, &payer, 100).await.status,
        StatusCode::CREATED
    );

    // daily_credit bounds what the user credits themself, not what an admin credits them.
    let own_credit = |amount: i64| {
        let app = &app;
        let payer = &payer;
        async move {
            app.post(
                "/api/v1/transactions/credit",
                Some(&payer.token),
                &json!({"amount": amount, "currency": "USD"}),
            )
            .await
        }
    };
    assert_eq!(own_credit(900).await.status, StatusCode::CREATED);
    assert_limit(&own_credit(101).await, "daily_credit", 1_000, 900, 101);
    let by_admin = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            &json!({"user_id": payer.id, "amount": 5_000, "currency": "USD"}),
        )
        .await;
    assert_eq!(by_admin.status, StatusCode::CREATED, "{}", by_admin.body);
    assert_eq!(own_credit(100).await.status, StatusCode::CREATED);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn holds_count_when_created_give_back_on_void_and_keep_the_posted_part() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 10_000).await,
        app.user("payee").await,
    );
    set_limits(
        &app,
        &admin,
        &payer,
        json!([{"kind": "daily_debit", "currency": "USD", "value": 100}]),
    )
    .await;
    let hold = |amount: i64| hold(&app, &payer, &payee, amount, 600);
    let first = hold(80).await;
    assert_limit(&debit(&app, &payer, 30).await, "daily_debit", 100, 80, 30);
    // The void gives the 80 back.
    let void = app
        .request(
            Method::POST,
            &format!("/api/v1/transactions/{first}/void"),
            Some(&payee.token),
            None,
            None,
        )
        .await;
    assert_eq!(void.status, StatusCode::OK, "{}", void.body);
    assert_eq!(debit(&app, &payer, 30).await.status, StatusCode::CREATED);
    // A hold of 70 posted for 20: the 50 released come back, the posting is not counted again.
    let second = hold(70).await;
    let post = app
        .request(
            Method::POST,
            &format!("/api/v1/transactions/{second}/post"),
            Some(&payee.token),
            Some(&json!({"amount": 20})),
            None,
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.body);
    assert_eq!(debit(&app, &payer, 50).await.status, StatusCode::CREATED);
    assert_limit(&debit(&app, &payer, 1).await, "daily_debit", 100, 100, 1);
    // Posting a hold in full later never passes the limit: the hold used the room already.
    clock.advance(TimeDelta::days(1));
    let third = hold(100).await;
    assert_limit(&debit(&app, &payer, 1).await, "daily_debit", 100, 100, 1);
    let post = app
        .request(
            Method::POST,
            &format!("/api/v1/transactions/{third}/post"),
            Some(&payee.token),
            Some(&json!({})),
            None,
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{}", post.body);
    assert_limit(&debit(&app, &payer, 1).await, "daily_debit", 100, 100, 1);
    app.assert_ledger_invariants().await;

    // `tally verify` holds what the limits counted to the ledger: a count that drifted from
    // its transaction is named.
    app.db()
        .await
        .execute(
            "UPDATE limit_usage SET amount = amount + 1 WHERE transaction_id = $1::text::uuid",
            &[&third],
        )
        .await
        .expect("tamper");
    let report = app.verify().await;
    let usage = crate::helpers::check(&report, "limit_usage");
    assert_eq!(usage.violations, 1, "{report}");
    assert!(usage.examples[0].contains(&third), "{report}");
}

#[actix_web::test]
async fn a_limit_cannot_be_passed_by_splitting_across_a_bulk_in_either_mode() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 10_000).await,
        app.user("payee").await,
    );
    set_limits(
        &app,
        &admin,
        &payer,
        json!([{"kind": "daily_debit", "currency": "*", "value": 100}]),
    )
    .await;
    let items: Vec<Value> = (0..5)
        .map(|_| json!({"type": "transfer", "to_user_id": payee.id, "amount": 30, "currency": "USD"}))
        .collect();
    let bulk = |mode: &str, items: Vec<Value>| {
        let (app, payer) = (&app, &payer);
        let body = json!({"mode": mode, "transactions": items});
        async move {
            app.request(
                Method::POST,
                "/api/v1/transactions/bulk",
                Some(&payer.token),
                Some(&body),
                None,
            )
            .await
        }
    };
    // Atomic: 150 > 100, nothing applies, the item that crosses is named.
    let counts = app.row_counts().await;
    let refused = bulk("atomic", items.clone()).await;
    let body = refused.assert_problem(422, "bulk_failed");
    assert_eq!(body["results"][3]["status"], "failed", "{body}");
    assert_eq!(
        body["results"][3]["error"]["code"], "limit_exceeded",
        "{body}"
    );
    assert_eq!(body["results"][3]["error"]["used"], 90, "{body}");
    assert_eq!(app.row_counts().await, counts);

    // Independent: exactly the first three fit.
    let reply = bulk("independent", items).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let statuses: Vec<&str> = reply.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["completed", "completed", "completed", "failed", "failed"]
    );
    assert_eq!(reply.body["results"][4]["error"]["code"], "limit_exceeded");
    assert_eq!(
        reply.body["results"][4]["error"]["limit"]["kind"],
        "daily_debit"
    );
    assert_eq!(app.balance(&payee, "USD").await, 90);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_reversal_is_a_debit_of_the_side_it_takes_from() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 1_000).await,
        app.user("payee").await,
    );
    let sent = transfer(&app, &payer, &payee, 300).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    set_limits(
        &app,
        &admin,
        &payee,
        json!([{"kind": "daily_debit", "currency": "USD", "value": 200}]),
    )
    .await;
    let path = format!(
        "/api/v1/transactions/{}/reverse",
        sent.body["id"].as_str().unwrap()
    );
    let reverse = |amount: i64| {
        let (app, admin, path) = (&app, &admin, &path);
        async move {
            app.request(
                Method::POST,
                path,
                Some(&admin.token),
                Some(&json!({"amount": amount, "reason": "chargeback"})),
                None,
            )
            .await
        }
    };
    assert_limit(&reverse(300).await, "daily_debit", 200, 0, 300);
    assert_eq!(reverse(200).await.status, StatusCode::CREATED);
    assert_limit(&reverse(100).await, "daily_debit", 200, 200, 100);
    assert_eq!(app.balance(&payee, "USD").await, 100);
    app.assert_ledger_invariants().await;
}

/// Two instances on one database, 40 concurrent debits of 100 against a daily limit of 1,000:
/// exactly ten are accepted, whichever instance took them.
#[actix_web::test]
async fn two_instances_at_once_cannot_pass_a_limit() {
    let clock = clock();
    let (first, admin) = spawn(&clock).await;
    let url = first.database_url.clone();
    let second = TestApp::spawn_with_clock(clock.clone(), move |settings| {
        settings.database.url = url;
    })
    .await;
    let payer = funded(&first, &admin, "payer", 100_000).await;
    set_limits(
        &first,
        &admin,
        &payer,
        json!([{"kind": "daily_debit", "currency": "USD", "value": 1_000}]),
    )
    .await;
    let apps = [&first, &second];
    let replies =
        futures_util::future::join_all((0..40).map(|n| debit(apps[n % 2], &payer, 100))).await;
    let accepted = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::CREATED)
        .count();
    for reply in replies
        .iter()
        .filter(|reply| reply.status != StatusCode::CREATED)
    {
        reply.assert_problem(422, "limit_exceeded");
    }
    assert_eq!(accepted, 10);
    assert_eq!(first.balance(&payer, "USD").await, 100_000 - 1_000);
    first.assert_ledger_invariants().await;
}

/// Balance alerts are edge-triggered: a concurrent burst that takes the balance below the
/// threshold writes one event, however many debits cross it together; a credit above re-arms.
#[actix_web::test]
async fn an_alert_fires_once_per_crossing_under_a_concurrent_burst() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 1_000).await,
        app.user("payee").await,
    );
    let created = app
        .post(
            "/api/v1/alerts",
            Some(&payer.token),
            &json!({"currency": "USD", "condition": "below", "threshold": 500}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["armed"], true);
    let alert_id = created.body["id"].as_str().expect("id").to_owned();
    let events = || {
        let app = &app;
        let alert_id = alert_id.clone();
        async move {
            app.db()
                .await
                .query(
                    "SELECT payload FROM events WHERE type = 'balance.alert' AND stream = $1 ORDER BY seq",
                    &[&format!("alert:{alert_id}")],
                )
                .await
                .expect("events")
                .iter()
                .map(|row| row.get::<_, Value>(0))
                .collect::<Vec<_>>()
        }
    };

    // 20 debits of 30 at once: 1,000 → 400, crossing 500 once.
    let burst =
        futures_util::future::join_all((0..20).map(|_| transfer(&app, &payer, &payee, 30))).await;
    assert!(burst
        .iter()
        .all(|reply| reply.status == StatusCode::CREATED));
    let fired = events().await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(fired[0]["balance"].as_i64().unwrap() < 500);
    assert!(fired[0]["balance"].as_i64().unwrap() >= 470);

    // Still below: nothing more. Back above re-arms it; the next crossing fires again.
    assert_eq!(
        transfer(&app, &payer, &payee, 10).await.status,
        StatusCode::CREATED
    );
    assert_eq!(events().await.len(), 1);
    assert_eq!(
        transfer(&app, &payee, &payer, 200).await.status,
        StatusCode::CREATED
    );
    assert_eq!(events().await.len(), 1);
    let listed = app.get("/api/v1/alerts", &payer.token).await;
    assert_eq!(listed.body["alerts"][0]["armed"], true, "{}", listed.body);
    assert_eq!(
        listed.body["alerts"][0]["fired_count"], 1,
        "{}",
        listed.body
    );
    let burst =
        futures_util::future::join_all((0..10).map(|_| transfer(&app, &payer, &payee, 30))).await;
    assert!(burst
        .iter()
        .all(|reply| reply.status == StatusCode::CREATED));
    assert_eq!(events().await.len(), 2);
    app.assert_ledger_invariants().await;
}

/// The balance actor's fast path: once a commit told it the account's limits and usage, a
/// debit that would cross one goes straight to the checked path, and no group commit is rolled
/// back for it.
#[actix_web::test]
async fn a_debit_the_actor_knows_is_over_the_limit_never_rolls_a_group_back() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let payer = funded(&app, &admin, "payer", 10_000).await;
    set_limits(
        &app,
        &admin,
        &payer,
        json!([{"kind": "daily_debit", "currency": "USD", "value": 100}]),
    )
    .await;
    assert_eq!(debit(&app, &payer, 100).await.status, StatusCode::CREATED);
    let before = app.metric(REFUSED_RETRIES).await;
    for _ in 0..5 {
        assert_limit(&debit(&app, &payer, 1).await, "daily_debit", 100, 100, 1);
    }
    assert_eq!(app.metric(REFUSED_RETRIES).await, before);
}

/// Out of the box (the configured defaults), a plain user can no longer create money without
/// bound: self-service credits stop at `daily_credit` (1,000,000.00 a UTC day), while an admin
/// still credits freely; an account's own limit wins over the default.
#[actix_web::test]
async fn the_default_configuration_bounds_self_service_credits() {
    let (app, admin) = TestApp::spawn_with_limit_defaults(|_| {}).await;
    let user = app.user("saver").await;
    let own = |amount: i64| {
        let (app, user) = (&app, &user);
        async move {
            app.post(
                "/api/v1/transactions/credit",
                Some(&user.token),
                &json!({"amount": amount, "currency": "EUR"}),
            )
            .await
        }
    };
    assert_eq!(own(99_999_999).await.status, StatusCode::CREATED);
    let refused = own(2).await;
    let body = refused.assert_problem(422, "limit_exceeded");
    assert_eq!(body["limit"]["kind"], "daily_credit", "{body}");
    assert_eq!(body["limit"]["currency"], "EUR", "{body}");
    assert_eq!(body["remaining"], 1, "{body}");
    let by_admin = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            &json!({"user_id": user.id, "amount": 500_000_000, "currency": "EUR"}),
        )
        .await;
    assert_eq!(by_admin.status, StatusCode::CREATED, "{}", by_admin.body);
    set_limits(
        &app,
        &admin,
        &user,
        json!([{"kind": "daily_credit", "currency": "*", "value": 200_000_000}]),
    )
    .await;
    assert_eq!(own(2).await.status, StatusCode::CREATED);
    app.assert_ledger_invariants().await;
}

/// An expired hold gives its count back like a void: once the sweeper has released it (awaited
/// on the hold's observed state, with a deadline), the room it used is free again.
#[actix_web::test]
async fn an_expired_hold_gives_its_count_back() {
    let clock = clock();
    let (app, admin) = spawn_with(&clock, |settings| settings.holds.sweep_interval_ms = 50).await;
    let (payer, payee) = payer_with_limits(
        &app,
        &admin,
        json!([{"kind": "velocity", "currency": "USD", "value": 1, "window_s": 3600}]),
    )
    .await;
    let id = hold(&app, &payer, &payee, 100, 1).await;
    let id = id.as_str();
    assert_limit(&debit(&app, &payer, 1).await, "velocity", 1, 1, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let current = app
            .get(&format!("/api/v1/transactions/{id}"), &payer.token)
            .await;
        if current.body["status"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {}",
            current.body
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(debit(&app, &payer, 1).await.status, StatusCode::CREATED);
    app.assert_ledger_invariants().await;
}

/// What the limits counted is forgotten once no window can reach it (367 days), and not
/// before: the sweep keeps every row a limit may still read.
#[actix_web::test]
async fn usage_older_than_any_window_is_forgotten() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let payer = funded(&app, &admin, "payer", 10_000).await;
    set_limits(
        &app,
        &admin,
        &payer,
        json!([{"kind": "rolling_debit", "currency": "USD", "value": 1_000, "window_s": 31_622_400}]),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(debit(&app, &payer, 10).await.status, StatusCode::CREATED);
    }
    let db = app.db().await;
    // Age two of the three rows: one just past the retention, one just inside it (by the
    // database's clock, which the sweep reads).
    let aged = db
        .execute(
            "UPDATE limit_usage u
             SET at = now() - CASE r.n WHEN 1 THEN interval '367 days 1 hour'
                                       ELSE interval '366 days 23 hours' END
             FROM (SELECT transaction_id, row_number() OVER (ORDER BY transaction_id) AS n
                   FROM limit_usage) r
             WHERE u.transaction_id = r.transaction_id AND r.n <= 2",
            &[],
        )
        .await
        .expect("age two rows");
    assert_eq!(aged, 2);
    let forgotten = tally::store::limits::forget_usage(&db, 100)
        .await
        .expect("sweep");
    assert_eq!(forgotten, 1);
    let left: i64 = db
        .query_one("SELECT count(*) FROM limit_usage", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 2);
    app.assert_ledger_invariants().await;
}

/// Alerts created at once for one user, while the user's money moves, all succeed: the
/// creation locks the user's row once (never a share lock upgraded later, which two creations
/// would deadlock on), and the cap counts them all.
#[actix_web::test]
async fn alerts_created_at_once_while_money_moves_all_succeed() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = (
        funded(&app, &admin, "payer", 10_000).await,
        app.user("payee").await,
    );
    let create = |threshold: i64| {
        let (app, payer) = (&app, &payer);
        async move {
            app.post(
                "/api/v1/alerts",
                Some(&payer.token),
                &json!({"currency": "USD", "condition": "below", "threshold": threshold}),
            )
            .await
        }
    };
    let alerts = futures_util::future::join_all((1..=12).map(|n| create(n * 100)));
    let transfers =
        futures_util::future::join_all((0..12).map(|_| transfer(&app, &payer, &payee, 10)));
    let (alerts, transfers) = futures_util::future::join(alerts, transfers).await;
    for reply in alerts.iter().chain(&transfers) {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let listed = app.get("/api/v1/alerts", &payer.token).await;
    assert_eq!(listed.body["alerts"].as_array().map(Vec::len), Some(12));
    app.assert_ledger_invariants().await;
}

/// A scheduled run goes through the same commit as a request: it counts toward its payer's
/// window, and a run that does not fit is refused `limit_exceeded`, recorded as a failed run,
/// with nothing moved.
#[actix_web::test]
async fn a_scheduled_run_counts_toward_a_limit_and_cannot_pass_it() {
    let clock = clock();
    let (app, admin) = spawn_with(&clock, |settings| settings.schedules.tick_ms = 10).await;
    let (payer, payee) = payer_with_limits(
        &app,
        &admin,
        json!([{"kind": "daily_debit", "currency": "USD", "value": 1_000}]),
    )
    .await;
    // 600 a day at 13:00 UTC, twice.
    let created = app
        .post(
            "/api/v1/schedules",
            Some(&payer.token),
            &json!({"transaction": {"type": "transfer", "to_user_id": payee.id, "amount": 600,
                                    "currency": "USD"},
                    "start_at": "2026-03-10T13:00:00Z",
                    "recurrence": {"every": "day", "interval": 1, "count": 2, "time_zone": "UTC"},
                    "misfire_policy": "skip", "on_failure": "fail"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let schedule = created.body["id"].as_str().expect("id").to_owned();
    let runs = |count: usize| {
        let (app, payer, schedule) = (&app, &payer, &schedule);
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let reply = app
                    .get(&format!("/api/v1/schedules/{schedule}"), &payer.token)
                    .await;
                let mut runs = reply.body["runs"]["items"]
                    .as_array()
                    .expect("runs")
                    .clone();
                if runs.len() >= count {
                    runs.reverse();
                    return runs;
                }
                assert!(std::time::Instant::now() < deadline, "{}", reply.body);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    // Day one: the run uses 600 of the day's 1,000.
    clock.set(Utc.with_ymd_and_hms(2026, 3, 10, 13, 0, 1).unwrap());
    assert_eq!(runs(1).await[0]["outcome"], "completed");
    assert_limit(
        &debit(&app, &payer, 401).await,
        "daily_debit",
        1_000,
        600,
        401,
    );
    assert_eq!(debit(&app, &payer, 400).await.status, StatusCode::CREATED);
    // Day two: 500 spent before the run leaves 500; the run of 600 is refused.
    clock.set(Utc.with_ymd_and_hms(2026, 3, 11, 10, 0, 0).unwrap());
    assert_eq!(debit(&app, &payer, 500).await.status, StatusCode::CREATED);
    clock.set(Utc.with_ymd_and_hms(2026, 3, 11, 13, 0, 1).unwrap());
    let both = runs(2).await;
    assert_eq!(both[1]["outcome"], "failed", "{both:?}");
    let problem = &both[1]["problem"];
    assert_eq!(problem["code"], "limit_exceeded", "{problem}");
    assert_eq!(problem["limit"]["kind"], "daily_debit", "{problem}");
    assert_eq!(problem["used"], 500, "{problem}");
    assert_eq!(problem["requested"], 600, "{problem}");
    let failed = app
        .get(
            &format!(
                "/api/v1/transactions/{}",
                both[1]["transaction_id"].as_str().expect("transaction id")
            ),
            &payer.token,
        )
        .await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.body);
    assert_eq!(
        failed.body["failure_reason"], "limit_exceeded",
        "{}",
        failed.body
    );
    assert_eq!(app.balance(&payee, "USD").await, 600);
    assert_eq!(app.balance(&payer, "USD").await, 10_000 - 600 - 400 - 500);
    app.assert_ledger_invariants().await;
}

/// A void gives a rolling window its room back at once, as it does for a calendar day.
#[actix_web::test]
async fn a_void_gives_rolling_debit_room_back() {
    let clock = clock();
    let (app, admin) = spawn(&clock).await;
    let (payer, payee) = payer_with_limits(
        &app,
        &admin,
        json!([{"kind": "rolling_debit", "currency": "USD", "value": 100, "window_s": 3600}]),
    )
    .await;
    let hold = hold(&app, &payer, &payee, 90, 600).await;
    clock.advance(TimeDelta::seconds(5));
    assert_limit(&debit(&app, &payer, 11).await, "rolling_debit", 100, 90, 11);
    let void = app
        .request(
            Method::POST,
            &format!("/api/v1/transactions/{hold}/void"),
            Some(&payee.token),
            None,
            None,
        )
        .await;
    assert_eq!(void.status, StatusCode::OK, "{}", void.body);
    assert_eq!(debit(&app, &payer, 100).await.status, StatusCode::CREATED);
    assert_limit(&debit(&app, &payer, 1).await, "rolling_debit", 100, 100, 1);
    app.assert_ledger_invariants().await;
}
