//! Scheduled and recurring transactions (DESIGN.md section 9, issue 13): a monthly rent driven
//! across months by a `ManualClock`, pause/resume/cancel, bad input, refusals with `fail` and
//! `retry`, the misfire policies after a jump of the clock (what an executor sees after
//! downtime), exactly once with two instances on one database, and exactly once through a
//! `kill -9` of the real binary. Waiting is always polling a condition with a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::clock::ManualClock;
use uuid::Uuid;

use crate::helpers::*;
use crate::process::Service;

/// Bound on every wait for the executor.
const DEADLINE: Duration = Duration::from_secs(60);
/// Spaces polls; never a synchronization by itself.
const POLL_PAUSE: Duration = Duration::from_millis(10);

fn clock_at(at: DateTime<Utc>) -> Arc<ManualClock> {
    Arc::new(ManualClock::new(at))
}

/// An app on `clock` whose executor ticks every 10 ms, with the `[bootstrap]` admin.
async fn spawn(
    clock: &Arc<ManualClock>,
    adjust: impl FnOnce(&mut tally::config::Settings),
) -> (TestApp, TestUser) {
    let app = TestApp::spawn_with_clock(clock.clone(), |settings| {
        settings.schedules.tick_ms = 10;
        settings.bootstrap.admin_username = ADMIN_USERNAME.to_owned();
        settings.bootstrap.admin_email = ADMIN_EMAIL.to_owned();
        settings.bootstrap.admin_password = ADMIN_PASSWORD.to_owned();
        adjust(settings);
    })
    .await;
    let admin = app.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
    (app, admin)
}

async fn create(app: &TestApp, user: &TestUser, body: &Value) -> Value {
    let reply = app.post("/api/v1/schedules", Some(&user.token), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "create: {}", reply.body);
    reply.body
}

async fn schedule(app: &TestApp, user: &TestUser, id: &str) -> Value {
    let reply = app
        .get(&format!("/api/v1/schedules/{id}"), &user.token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "get: {}", reply.body);
    reply.body
}

/// The schedule's runs, oldest first.
async fn runs(app: &TestApp, user: &TestUser, id: &str) -> Vec<Value> {
    let mut runs: Vec<Value> = schedule(app, user, id).await["runs"]["items"]
        .as_array()
        .expect("runs")
        .clone();
    runs.reverse();
    runs
}

/// Polls until the schedule has `count` runs (or its attempt is `attempt`); returns the runs.
async fn wait_for_runs(app: &TestApp, user: &TestUser, id: &str, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let runs = runs(app, user, id).await;
        if runs.len() >= count {
            assert_eq!(runs.len(), count, "more runs than expected: {runs:?}");
            return runs;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "schedule {id} has {} runs, not {count}",
            runs.len()
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

async fn wait_for_attempt(app: &TestApp, user: &TestUser, id: &str, attempt: i64) -> Value {
    let started = Instant::now();
    loop {
        let body = schedule(app, user, id).await;
        if body["attempt"] == attempt {
            return body;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "attempt never reached {attempt}: {body}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

fn transfer(to: Uuid, amount: i64) -> Value {
    json!({"type": "transfer", "to_user_id": to, "amount": amount, "currency": "EUR",
           "description": "rent"})
}

#[actix_web::test]
async fn a_monthly_rent_runs_on_month_ends_across_months_driven_by_the_clock() {
    let clock = clock_at(Utc.with_ymd_and_hms(2031, 1, 20, 12, 0, 0).unwrap());
    let (app, _admin) = spawn(&clock, |_| {}).await;
    let tenant = app.user("tenant").await;
    let landlord = app.user("landlord").await;
    app.credit(&tenant, 10_000, "EUR").await;
    // 09:00 in Berlin on the 31st: the last day of shorter months.
    let created = create(
        &app,
        &tenant,
        &json!({
            "transaction": transfer(landlord.id, 1_200),
            "start_at": "2031-01-31T09:00:00+01:00",
            "recurrence": {"every": "month", "interval": 1, "count": 3, "time_zone": "Europe/Berlin"},
            "misfire_policy": "run_once",
            "on_failure": "fail",
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "active");
    assert_eq!(created["next_occurrence"], 1);
    assert_eq!(created["next_run_at"], "2031-01-31T08:00:00Z");
    // Not due yet: nothing runs however long the executor ticks (checked after the next run).
    let dues = [
        "2031-01-31T08:00:00Z",
        "2031-02-28T08:00:00Z",
        "2031-03-31T07:00:00Z", // CEST from 30 March
    ];
    for (index, due) in dues.iter().enumerate() {
        let due: DateTime<Utc> = due.parse().unwrap();
        clock.set(due + TimeDelta::seconds(1));
        let runs = wait_for_runs(&app, &tenant, &id, index + 1).await;
        let run = &runs[index];
        assert_eq!(run["occurrence"], index as i64 + 1);
        assert_eq!(run["outcome"], "completed", "{run}");
        assert_eq!(
            run["due_at"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap(),
            due
        );
        let transaction_id = run["transaction_id"].as_str().unwrap();
        let transaction = app
            .get(
                &format!("/api/v1/transactions/{transaction_id}"),
                &tenant.token,
            )
            .await;
        assert_eq!(transaction.body["status"], "completed");
        assert_eq!(transaction.body["amount"], 1_200);
        assert_eq!(transaction.body["to_user_id"], json!(landlord.id));
        // The transaction carries its schedule and occurrence.
        let row = app
            .db()
            .await
            .query_one(
                "SELECT schedule_id, occurrence, idempotency_key FROM transactions WHERE id = $1",
                &[&Uuid::parse_str(transaction_id).unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, Option<Uuid>>(0),
            Some(Uuid::parse_str(&id).unwrap())
        );
        assert_eq!(row.get::<_, Option<i64>>(1), Some(index as i64 + 1));
        assert_eq!(
            row.get::<_, Option<String>>(2),
            Some(format!("schedule:{id}:{}", index + 1))
        );
    }
    let finished = schedule(&app, &tenant, &id).await;
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["next_run_at"], Value::Null);
    assert_eq!(app.balance(&tenant, "EUR").await, 10_000 - 3 * 1_200);
    assert_eq!(app.balance(&landlord, "EUR").await, 3 * 1_200);
    // The listing shows it; the events and the audit log have it.
    let list = app.get("/api/v1/schedules", &tenant.token).await;
    assert_eq!(list.body["items"][0]["id"], json!(id));
    let db = app.db().await;
    let events: Vec<String> = db
        .query(
            "SELECT type FROM events WHERE stream = $1 ORDER BY tx, seq",
            &[&format!("schedule:{id}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        events,
        [
            "schedule.created",
            "schedule.run",
            "schedule.run",
            "schedule.run"
        ]
    );
    assert!(
        app.metric("tally_schedule_runs_total{outcome=\"completed\"}")
            .await
            >= 3.0
    );
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn pause_resume_and_cancel_are_real_verbs_and_others_get_404() {
    let clock = clock_at(Utc.with_ymd_and_hms(2031, 5, 1, 0, 0, 0).unwrap());
    let (app, admin) = spawn(&clock, |_| {}).await;
    let owner = app.user("owner").await;
    let stranger = app.user("stranger").await;
    let start = Utc.with_ymd_and_hms(2031, 5, 1, 10, 0, 0).unwrap();
    let created = create(
        &app,
        &owner,
        &json!({
            "transaction": {"type": "credit", "amount": 100, "currency": "USD"},
            "start_at": start.to_rfc3339(),
            "recurrence": {"every": "day", "interval": 1, "time_zone": "UTC"},
            "misfire_policy": "catch_up",
            "on_failure": "fail",
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let verb = |verb: &'static str, user: &TestUser| {
        let (app, id, token) = (&app, id.clone(), user.token.clone());
        async move {
            app.request(
                Method::POST,
                &format!("/api/v1/schedules/{id}/{verb}"),
                Some(&token),
                None,
                None,
            )
            .await
        }
    };
    // Another user's schedule does not exist for them; an admin reads it.
    app.get(&format!("/api/v1/schedules/{id}"), &stranger.token)
        .await
        .assert_problem(404, "not_found");
    verb("pause", &stranger)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(schedule(&app, &admin, &id).await["id"], json!(id));

    // The first occurrence runs; then paused, the next three days run nothing: they are
    // skipped at the resume (with catch_up, a misfire would have run them).
    clock.set(start + TimeDelta::seconds(1));
    wait_for_runs(&app, &owner, &id, 1).await;
    let paused = verb("pause", &owner).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    assert_eq!(paused.body["status"], "paused");
    assert_eq!(verb("pause", &owner).await.body["status"], "paused");
    clock.set(start + TimeDelta::days(3) + TimeDelta::hours(1));
    let resumed = verb("resume", &owner).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    assert_eq!(resumed.body["status"], "active");
    assert_eq!(resumed.body["next_occurrence"], 5);
    let expected_next =
        (start + TimeDelta::days(4)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert_eq!(resumed.body["next_run_at"], json!(expected_next));
    let after_resume = runs(&app, &owner, &id).await;
    let outcomes: Vec<&str> = after_resume
        .iter()
        .map(|run| run["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["completed", "skipped", "skipped", "skipped"]);
    assert_eq!(after_resume[1]["problem"]["reason"], "paused");
    assert_eq!(app.balance(&owner, "USD").await, 100);

    // Cancelled is final; every verb is then 409.
    let cancelled = verb("cancel", &owner).await;
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["next_run_at"], Value::Null);
    for name in ["pause", "resume", "cancel"] {
        verb(name, &owner)
            .await
            .assert_problem(409, "schedule_cancelled");
    }
    clock.set(start + TimeDelta::days(10));
    // A one-off that ran is completed: 409 too.
    let one_off = create(
        &app,
        &owner,
        &json!({"transaction": {"type": "credit", "amount": 5, "currency": "USD"},
                "start_at": (start + TimeDelta::days(10)).to_rfc3339(),
                "misfire_policy": "skip", "on_failure": "fail"}),
    )
    .await;
    let one_off_id = one_off["id"].as_str().unwrap().to_owned();
    wait_for_runs(&app, &owner, &one_off_id, 1).await;
    let done = app
        .request(
            Method::POST,
            &format!("/api/v1/schedules/{one_off_id}/cancel"),
            Some(&owner.token),
            None,
            None,
        )
        .await;
    done.assert_problem(409, "schedule_completed");
    // The cancelled schedule never ran again.
    assert_eq!(runs(&app, &owner, &id).await.len(), 4);
    let audited: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM audit_logs WHERE entity_type = 'schedule' AND entity_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 4, "created, paused, resumed, cancelled");
}

#[actix_web::test]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let clock = clock_at(Utc.with_ymd_and_hms(2031, 6, 1, 0, 0, 0).unwrap());
    let (app, _admin) = spawn(&clock, |_| {}).await;
    let user = app.user("bad").await;
    let other = app.user("other").await;
    let good = json!({
        "transaction": {"type": "transfer", "to_user_id": other.id, "amount": 10, "currency": "EUR"},
        "start_at": "2031-06-02T00:00:00Z",
        "recurrence": {"every": "week", "interval": 1, "time_zone": "America/New_York"},
        "misfire_policy": "skip",
        "on_failure": "retry",
    });
    let with = |pointer: &str, value: Value| {
        let mut body = good.clone();
        *body.pointer_mut(pointer).expect(pointer) = value;
        body
    };
    let before = app.row_counts().await;
    let cases: Vec<(Value, &str)> = vec![
        (with("/start_at", json!("2031-05-31T23:58:00Z")), "start_at"),
        (with("/start_at", json!("yesterday")), "start_at"),
        (
            with("/recurrence/time_zone", json!("Mars/Olympus_Mons")),
            "recurrence.time_zone",
        ),
        (
            with("/recurrence/interval", json!(0)),
            "recurrence.interval",
        ),
        (
            with("/recurrence/interval", json!(521)),
            "recurrence.interval",
        ),
        (
            with(
                "/recurrence",
                json!({"every": "day", "interval": 1, "count": 3,
                                        "until": "2031-07-01T00:00:00Z", "time_zone": "UTC"}),
            ),
            "recurrence.until",
        ),
        (
            with(
                "/recurrence",
                json!({"every": "day", "interval": 1,
                                        "until": "2031-06-01T12:00:00Z", "time_zone": "UTC"}),
            ),
            "recurrence.until",
        ),
        (
            with("/recurrence/every", json!("fortnight")),
            "recurrence.every",
        ),
        (with("/transaction/amount", json!(0)), "transaction.amount"),
        (
            with("/transaction/currency", json!("XXX")),
            "transaction.currency",
        ),
        (
            with("/transaction/to_user_id", json!(user.id)),
            "transaction.to_user_id",
        ),
        (
            with("/transaction/type", json!("refund")),
            "transaction.type",
        ),
        (
            with(
                "/transaction",
                json!({"type": "credit", "amount": 1, "currency": "EUR", "hold": {"timeout_s": 5}}),
            ),
            "transaction.hold",
        ),
        (with("/misfire_policy", json!("whenever")), "misfire_policy"),
        (with("/on_failure", json!("shrug")), "on_failure"),
        (with("/transaction", json!("credit")), "transaction"),
    ];
    // Every bad field at once is named at once.
    let mut several = with("/recurrence/interval", json!(0));
    several["recurrence"]["time_zone"] = json!("Mars/Olympus");
    several["start_at"] = json!("2020-01-01T00:00:00Z");
    let reply = app
        .post("/api/v1/schedules", Some(&user.token), &several)
        .await;
    reply.assert_problem(422, "validation_failed");
    let mut named = reply.error_fields();
    named.sort();
    assert_eq!(
        named,
        vec!["recurrence.interval", "recurrence.time_zone", "start_at"]
    );
    for (body, field) in cases {
        let reply = app
            .post("/api/v1/schedules", Some(&user.token), &body)
            .await;
        reply.assert_problem(422, "validation_failed");
        assert!(
            reply.error_fields().contains(&field.to_owned()),
            "{field}: {}",
            reply.body
        );
    }
    // The template's errors are exactly the direct request's, under `transaction.`.
    let direct = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&user.token),
            &json!({"to_user_id": user.id, "amount": -1, "currency": "eur", "colour": "red"}),
        )
        .await;
    let scheduled = app
        .post(
            "/api/v1/schedules",
            Some(&user.token),
            &with(
                "/transaction",
                json!({"type": "transfer", "to_user_id": user.id, "amount": -1,
                                          "currency": "eur", "colour": "red"}),
            ),
        )
        .await;
    let prefixed: Vec<Value> = direct.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            json!({"field": format!("transaction.{}", error["field"].as_str().unwrap()),
                            "message": error["message"]})
        })
        .collect();
    assert_eq!(scheduled.body["errors"], json!(prefixed));
    // A non-admin's template on another user's account.
    app.post(
        "/api/v1/schedules",
        Some(&user.token),
        &with(
            "/transaction",
            json!({"type": "debit", "user_id": other.id, "amount": 1, "currency": "EUR"}),
        ),
    )
    .await
    .assert_problem(403, "forbidden");
    // The keys of scheduled runs are reserved.
    let reserved = app
        .request(
            Method::POST,
            "/api/v1/transactions/credit",
            Some(&user.token),
            Some(&json!({"amount": 1, "currency": "EUR"})),
            Some("schedule:00000000-0000-0000-0000-000000000000:1"),
        )
        .await;
    reserved.assert_problem(422, "validation_failed");
    assert_eq!(reserved.error_fields(), ["Idempotency-Key"]);
    assert_eq!(app.row_counts().await, before);
    let schedules: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM schedules", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schedules, 0);
}

#[actix_web::test]
async fn a_refused_run_fails_or_is_retried_until_the_money_is_there() {
    let clock = clock_at(Utc.with_ymd_and_hms(2031, 7, 1, 0, 0, 0).unwrap());
    let (app, _admin) = spawn(&clock, |settings| {
        settings.schedules.retry_interval_s = 600;
        settings.schedules.retry_max_attempts = 3;
    })
    .await;
    let payer = app.user("payer").await;
    let payee = app.user("payee").await;
    let start = Utc.with_ymd_and_hms(2031, 7, 1, 1, 0, 0).unwrap();
    let body = |on_failure: &str| {
        json!({"transaction": transfer(payee.id, 500), "start_at": start.to_rfc3339(),
               "misfire_policy": "run_once", "on_failure": on_failure})
    };
    let failing = create(&app, &payer, &body("fail")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let retrying = create(&app, &payer, &body("retry")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    clock.set(start + TimeDelta::seconds(1));
    let failed = wait_for_runs(&app, &payer, &failing, 1).await;
    assert_eq!(failed[0]["outcome"], "failed");
    assert_eq!(failed[0]["problem"]["code"], "insufficient_funds");
    let failed_transaction = failed[0]["transaction_id"].as_str().unwrap();
    let recorded = app
        .get(
            &format!("/api/v1/transactions/{failed_transaction}"),
            &payer.token,
        )
        .await;
    assert_eq!(recorded.body["status"], "failed");
    assert_eq!(
        schedule(&app, &payer, &failing).await["status"],
        "completed"
    );

    // Retried: attempt 2 after the interval, still short; then the money arrives.
    let waiting = wait_for_attempt(&app, &payer, &retrying, 2).await;
    assert_eq!(waiting["last_problem"]["code"], "insufficient_funds");
    assert!(runs(&app, &payer, &retrying).await.is_empty());
    clock.advance(TimeDelta::seconds(601));
    wait_for_attempt(&app, &payer, &retrying, 3).await;
    app.credit(&payer, 500, "EUR").await;
    clock.advance(TimeDelta::seconds(601));
    let done = wait_for_runs(&app, &payer, &retrying, 1).await;
    assert_eq!(done[0]["outcome"], "completed", "{}", done[0]);
    assert_eq!(done[0]["attempt"], 3);
    assert_eq!(app.balance(&payee, "EUR").await, 500);
    let keys: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT idempotency_key FROM transactions WHERE idempotency_key LIKE $1 ORDER BY created_at",
            &[&format!("schedule:{retrying}:%")],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        keys,
        [
            format!("schedule:{retrying}:1"),
            format!("schedule:{retrying}:1:2"),
            format!("schedule:{retrying}:1:3"),
        ]
    );
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn after_downtime_the_misfire_policy_decides() {
    let now = Utc.with_ymd_and_hms(2031, 8, 1, 0, 0, 0).unwrap();
    let clock = clock_at(now);
    let (app, _admin) = spawn(&clock, |_| {}).await;
    let user = app.user("misfire").await;
    let start = now + TimeDelta::hours(1);
    let mut ids = Vec::new();
    for policy in ["catch_up", "run_once", "skip"] {
        let created = create(
            &app,
            &user,
            &json!({"transaction": {"type": "credit", "amount": 1, "currency": "USD"},
                    "start_at": start.to_rfc3339(),
                    "recurrence": {"every": "day", "interval": 1, "time_zone": "UTC"},
                    "misfire_policy": policy, "on_failure": "fail"}),
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // The executor sees four occurrences (days 0 to 3) long past at once, as after downtime.
    clock.set(start + TimeDelta::days(3) + TimeDelta::hours(1));
    let expected: [&[&str]; 3] = [
        &["completed", "completed", "completed", "completed"],
        &["skipped", "skipped", "skipped", "completed"],
        &["skipped", "skipped", "skipped", "skipped"],
    ];
    for (id, expected) in ids.iter().zip(expected) {
        let runs = wait_for_runs(&app, &user, id, 4).await;
        let outcomes: Vec<&str> = runs
            .iter()
            .map(|run| run["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, expected, "{id}");
        let body = schedule(&app, &user, id).await;
        assert_eq!(body["next_occurrence"], 5);
        assert_eq!(
            body["next_run_at"],
            json!((start + TimeDelta::days(4)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        );
    }
    assert_eq!(app.balance(&user, "USD").await, 4 + 1);
}

/// Every completed scheduled transaction, by (schedule, occurrence): exactly one each, and as
/// many as the completed runs.
async fn assert_exactly_once(db: &tokio_postgres::Client, expected: i64) {
    let duplicates: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT schedule_id, occurrence FROM transactions
              WHERE schedule_id IS NOT NULL AND status = 'completed'
              GROUP BY 1, 2 HAVING count(*) <> 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicates, 0);
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM transactions WHERE schedule_id IS NOT NULL
                      AND status = 'completed'),
                    (SELECT count(*) FROM schedule_runs WHERE outcome = 'completed'),
                    (SELECT count(*) FROM schedule_runs r JOIN transactions t
                       ON t.id = r.transaction_id AND t.schedule_id = r.schedule_id
                      AND t.occurrence = r.occurrence)",
            &[],
        )
        .await
        .unwrap();
    let (transactions, runs, matching): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (transactions, runs, matching),
        (expected, expected, expected)
    );
}

#[actix_web::test]
async fn two_instances_run_every_occurrence_exactly_once() {
    let now = Utc.with_ymd_and_hms(2031, 9, 1, 0, 0, 0).unwrap();
    let clock = clock_at(now);
    let (first, _admin) = spawn(&clock, |settings| settings.schedules.batch_max = 4).await;
    let url = first.database_url.clone();
    let second = TestApp::spawn_with_clock(clock.clone(), |settings| {
        settings.database.url = url;
        settings.schedules.tick_ms = 10;
        settings.schedules.batch_max = 4;
    })
    .await;
    let user = first.user("twin").await;
    const SCHEDULES: usize = 24;
    const DAYS: usize = 4;
    let start = now + TimeDelta::minutes(10);
    let mut ids = Vec::new();
    for n in 0..SCHEDULES {
        let app = if n % 2 == 0 { &first } else { &second };
        let created = create(
            app,
            &user,
            &json!({"transaction": {"type": "credit", "amount": 1 + n as i64, "currency": "USD"},
                    "start_at": start.to_rfc3339(),
                    "recurrence": {"every": "day", "interval": 1, "count": DAYS, "time_zone": "UTC"},
                    "misfire_policy": "catch_up", "on_failure": "fail"}),
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    for day in 0..DAYS {
        clock.set(start + TimeDelta::days(day as i64) + TimeDelta::seconds(1));
        for (n, id) in ids.iter().enumerate() {
            let app = if n % 2 == 0 { &second } else { &first };
            wait_for_runs(app, &user, id, day + 1).await;
        }
    }
    let db = first.db().await;
    assert_exactly_once(&db, (SCHEDULES * DAYS) as i64).await;
    let expected: i64 = (0..SCHEDULES as i64).map(|n| (1 + n) * DAYS as i64).sum();
    assert_eq!(first.balance(&user, "USD").await, expected);
    first.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_kill_9_mid_run_loses_and_repeats_nothing() {
    let database_url = format!(
        "{}/tally_test_schedules_kill_{}",
        database_server(),
        Uuid::new_v4().simple()
    );
    let env = [
        ("TALLY__SCHEDULES__TICK_MS", "20".to_owned()),
        ("TALLY__SCHEDULES__BATCH_MAX", "5".to_owned()),
    ];
    let mut service = Service::start_with(&database_url, &env).await;
    let app = service.app(&database_url);
    let user = app.user("crash").await;
    const SCHEDULES: usize = 150;
    let start = Utc::now() + TimeDelta::seconds(3);
    for n in 0..SCHEDULES {
        create(
            &app,
            &user,
            &json!({"transaction": {"type": "credit", "amount": 1 + n as i64, "currency": "USD"},
                    "start_at": start.to_rfc3339(),
                    "misfire_policy": "catch_up", "on_failure": "fail"}),
        )
        .await;
    }
    let db = app.db().await;
    let count_runs = || async {
        db.query_one("SELECT count(*) FROM schedule_runs", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // Killed as soon as the first runs are recorded, while the rest are running.
    let started = Instant::now();
    while count_runs().await == 0 {
        assert!(started.elapsed() < DEADLINE, "no run was recorded");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    service.kill_9();
    let at_kill = count_runs().await;
    let _restarted = Service::start_with(&database_url, &env).await;
    let started = Instant::now();
    while count_runs().await < SCHEDULES as i64 {
        assert!(
            started.elapsed() < DEADLINE,
            "{} of {SCHEDULES} runs",
            count_runs().await
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
    eprintln!("runs recorded at the kill: {at_kill} of {SCHEDULES}");
    assert_exactly_once(&db, SCHEDULES as i64).await;
    let (clean, report) = crate::process::run_verify(&database_url);
    assert!(clean, "{report}");
}

/// An exchange can be scheduled: the template is checked at creation (a pair without a rate is
/// named), and each run is priced at the rate current at that run, with its limits and funds.
#[actix_web::test]
async fn a_scheduled_exchange_runs_at_the_rate_of_its_run() {
    let clock = clock_at(Utc.with_ymd_and_hms(2031, 3, 1, 8, 0, 0).unwrap());
    let (app, admin) = spawn(&clock, |_| {}).await;
    let anna = app.user("anna").await;
    app.credit(&anna, 20_000, "EUR").await;
    let body = json!({
        "transaction": {"type": "exchange", "from_currency": "EUR", "to_currency": "USD",
                        "amount": 10_000},
        "start_at": "2031-03-02T09:00:00+01:00",
        "recurrence": {"every": "day", "interval": 1, "count": 2, "time_zone": "Europe/Berlin"},
        "misfire_policy": "skip", "on_failure": "fail"});
    let no_rate = app
        .post("/api/v1/schedules", Some(&anna.token), &body)
        .await;
    no_rate.assert_problem(422, "validation_failed");
    assert_eq!(no_rate.error_fields(), vec!["transaction.to_currency"]);
    let set_rate = |rate: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            let reply = app
                .request(
                    Method::PUT,
                    "/api/v1/rates/EUR/USD",
                    Some(&admin.token),
                    Some(&json!({"rate": rate, "source": "desk"})),
                    None,
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    };
    set_rate("1.0842").await;
    let created = create(&app, &anna, &body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // The rate changes before the first run: the run uses the new one.
    set_rate("1.1").await;
    clock.set(Utc.with_ymd_and_hms(2031, 3, 2, 8, 0, 0).unwrap());
    let first = wait_for_runs(&app, &anna, &id, 1).await;
    assert_eq!(first[0]["outcome"], "completed", "{first:?}");
    let transaction = app
        .get(
            &format!(
                "/api/v1/transactions/{}",
                first[0]["transaction_id"].as_str().unwrap()
            ),
            &anna.token,
        )
        .await;
    assert_eq!(transaction.body["type"], "exchange");
    assert_eq!(transaction.body["schedule_id"], json!(id));
    assert_eq!(transaction.body["occurrence"], 1);
    // 99.75 EUR at 1.1 = 109.725 USD, rounded down.
    assert_eq!(transaction.body["exchange"]["to_amount"], 10_972);
    assert_eq!(transaction.body["exchange"]["rate"], "1.1");
    // The second run has no money left for it after Anna spends it: failed, recorded.
    app.post(
        "/api/v1/transactions/debit",
        Some(&anna.token),
        &json!({"amount": 5_000, "currency": "EUR"}),
    )
    .await;
    clock.set(Utc.with_ymd_and_hms(2031, 3, 3, 8, 0, 0).unwrap());
    let both = wait_for_runs(&app, &anna, &id, 2).await;
    assert_eq!(both[1]["outcome"], "failed", "{both:?}");
    assert_eq!(both[1]["problem"]["code"], "insufficient_funds");
    assert_eq!(app.balance(&anna, "EUR").await, 5_000);
    assert_eq!(app.balance(&anna, "USD").await, 10_972);
    app.assert_ledger_invariants().await;
}

/// Creating a schedule is exactly-once by its Idempotency-Key: repeats (at once, or later)
/// return the one schedule made, another body with the key is refused, and nothing else is
/// written.
#[actix_web::test]
async fn a_repeated_creation_with_its_key_makes_one_schedule() {
    let clock = clock_at(Utc.with_ymd_and_hms(2031, 6, 1, 8, 0, 0).unwrap());
    let (app, _admin) = spawn(&clock, |_| {}).await;
    let (anna, ben) = (app.user("anna").await, app.user("ben").await);
    let body = json!({
        "transaction": transfer(ben.id, 100),
        "start_at": "2031-06-02T08:00:00Z",
        "misfire_policy": "skip", "on_failure": "fail"});
    let create = |key: &'static str, body: Value| {
        let (app, anna) = (&app, &anna);
        async move {
            app.request(
                Method::POST,
                "/api/v1/schedules",
                Some(&anna.token),
                Some(&body),
                Some(key),
            )
            .await
        }
    };
    let replies =
        futures_util::future::join_all((0..8).map(|_| create("rent-2031", body.clone()))).await;
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            reply.body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one schedule for one key: {ids:?}");
    assert!(replies
        .iter()
        .any(|reply| reply.header("Idempotent-Replayed") == Some("true")));
    let mut other = body.clone();
    other["transaction"]["amount"] = json!(200);
    create("rent-2031", other)
        .await
        .assert_problem(422, "idempotency_key_reused");
    let count: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM schedules", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    // Another user's key is their own.
    let theirs = app
        .request(
            Method::POST,
            "/api/v1/schedules",
            Some(&ben.token),
            Some(
                &json!({"transaction": transfer(anna.id, 100), "start_at": "2031-06-02T08:00:00Z",
                         "misfire_policy": "skip", "on_failure": "fail"}),
            ),
            Some("rent-2031"),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.body);
    assert!(!ids.contains(theirs.body["id"].as_str().unwrap()));
}
