//! Limits and alerts, the admin and data side (DESIGN.md section 8): an account's limits and the
//! defaults set, read and cleared; the overdraft limit on a balance row; balance alerts set,
//! listed and removed. Every refusal names its field and changes nothing; every change is
//! audited and logged as a `limit.changed` event. (Enforcement and firing are the posting
//! path's and are tested there.)

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::config::Settings;
use tally::startup::Application;
use uuid::Uuid;

use crate::helpers::*;

const DEFAULTS: &str = "/api/v1/limits/defaults";
const ALERTS: &str = "/api/v1/alerts";
const SYSTEM: &str = "00000000-0000-0000-0000-000000000000";

fn limits_path(user: impl std::fmt::Display) -> String {
    format!("/api/v1/users/{user}/limits")
}

fn account_path(user: impl std::fmt::Display, currency: &str) -> String {
    format!("/api/v1/users/{user}/accounts/{currency}")
}

async fn put(app: &TestApp, path: &str, token: &str, body: &Value) -> Reply {
    app.request(Method::PUT, path, Some(token), Some(body), None)
        .await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> Reply {
    app.request(Method::DELETE, path, Some(token), None, None)
        .await
}

/// `(limits rows, events, audit rows)` now: a refusal must change none of them.
async fn footprint(app: &TestApp) -> (i64, i64, i64) {
    let db = app.db().await;
    let mut counts = Vec::new();
    for table in ["limits", "events", "audit_logs"] {
        let count: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        counts.push(count);
    }
    (counts[0], counts[1], counts[2])
}

/// The payloads of the `limit.changed` events on `stream`, oldest first.
async fn limit_events(app: &TestApp, stream: &str) -> Vec<Value> {
    app.db()
        .await
        .query(
            "SELECT payload FROM events WHERE stream = $1 AND type = 'limit.changed' ORDER BY seq",
            &[&stream],
        )
        .await
        .expect("events")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The `details` of the audit rows with `action` on `entity_id`, oldest first.
async fn audits(app: &TestApp, action: &str, entity_id: &str) -> Vec<Value> {
    app.db()
        .await
        .query(
            "SELECT details FROM audit_logs WHERE action = $1 AND entity_id = $2 ORDER BY id",
            &[&action, &entity_id],
        )
        .await
        .expect("audit rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[actix_web::test]
async fn an_admin_sets_reads_and_clears_an_accounts_limits() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("limited").await;
    app.credit(&user, 1_000, "USD").await;
    let set = json!({"limits": [
        {"kind": "daily_debit", "currency": "USD", "value": 5_000},
        {"kind": "velocity", "currency": "*", "value": 10, "window_s": 3_600},
        {"kind": "max_per_transaction", "currency": "*", "value": 700, "window_s": null},
    ]});
    let reply = put(&app, &limits_path(user.id), &admin.token, &set).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let expected_own = json!([
        {"kind": "daily_debit", "currency": "USD", "value": 5_000, "window_s": null},
        {"kind": "max_per_transaction", "currency": "*", "value": 700, "window_s": null},
        {"kind": "velocity", "currency": "*", "value": 10, "window_s": 3_600},
    ]);
    assert_eq!(reply.body["user_id"], json!(user.id));
    assert_eq!(reply.body["limits"], expected_own);
    assert_eq!(reply.body["defaults"], json!([]));

    // The user reads the same; so does the admin.
    for token in [&user.token, &admin.token] {
        let read = app.get(&limits_path(user.id), token).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        assert_eq!(read.body, reply.body);
    }

    // Defaults apply to a plain user; the account's own rows win over them.
    let defaults = json!({"limits": [
        {"kind": "daily_debit", "currency": "USD", "value": 1_000},
        {"kind": "daily_debit", "currency": "EUR", "value": 1_500},
        {"kind": "daily_credit", "currency": "*", "value": 9_000},
        {"kind": "max_per_transaction", "currency": "EUR", "value": 300},
    ]});
    let reply = put(&app, DEFAULTS, &admin.token, &defaults).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let read = app.get(&limits_path(user.id), &user.token).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["defaults"].as_array().unwrap().len(), 4);
    let effective: Vec<(String, String, i64, String)> = read.body["effective"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["kind"].as_str().unwrap().to_owned(),
                entry["currency"].as_str().unwrap().to_owned(),
                entry["value"].as_i64().unwrap(),
                entry["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let owned = |kind: &str, currency: &str, value: i64, source: &str| {
        (
            kind.to_owned(),
            currency.to_owned(),
            value,
            source.to_owned(),
        )
    };
    assert_eq!(
        effective,
        vec![
            owned("daily_credit", "*", 9_000, "default"),
            owned("daily_debit", "EUR", 1_500, "default"),
            owned("daily_debit", "USD", 5_000, "account"),
            owned("max_per_transaction", "*", 700, "account"),
            owned("velocity", "*", 10, "account"),
        ],
        "{}",
        read.body
    );
    // An admin's account gets no defaults.
    let read = app.get(&limits_path(admin.id), &admin.token).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(
        read.body,
        json!({"user_id": admin.id, "limits": [], "defaults": [], "effective": []})
    );

    // An empty list clears the set.
    let reply = put(
        &app,
        &limits_path(user.id),
        &admin.token,
        &json!({"limits": []}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["limits"], json!([]));
    let rows: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM limits WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);

    // Each change is one limit.changed event with before and after, and one audit row.
    let events = limit_events(&app, &format!("limits:{}", user.id)).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["user_id"], json!(user.id));
    assert_eq!(events[0]["before"], json!([]));
    assert_eq!(events[0]["after"], expected_own);
    assert_eq!(events[0]["changed_by"], json!(admin.id));
    assert_eq!(events[1]["before"], expected_own);
    assert_eq!(events[1]["after"], json!([]));
    let audited = audits(&app, "limit.changed", &user.id.to_string()).await;
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert_eq!(audited[0]["after"], expected_own);
    assert!(audited[0]["request_id"].is_string());
    let default_events = limit_events(&app, "limits:defaults").await;
    assert_eq!(
        default_events.len(),
        1,
        "the test settings seed no defaults"
    );
    assert_eq!(default_events[0]["user_id"], Value::Null);
    assert_eq!(default_events[0]["after"].as_array().unwrap().len(), 4);
    assert_eq!(audits(&app, "limit.changed", "defaults").await.len(), 1);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_user_reads_only_their_own_limits_and_sets_none() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    app.credit(&ada, 100, "USD").await;
    let own = app.get(&limits_path(ada.id), &ada.token).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    app.get(&limits_path(bob.id), &ada.token)
        .await
        .assert_problem(404, "not_found");
    app.get(&limits_path(Uuid::new_v4()), &admin.token)
        .await
        .assert_problem(404, "not_found");

    let before = footprint(&app).await;
    let set = json!({"limits": [{"kind": "daily_debit", "currency": "USD", "value": 1}]});
    put(&app, &limits_path(ada.id), &ada.token, &set)
        .await
        .assert_problem(403, "forbidden");
    put(&app, &limits_path(bob.id), &ada.token, &set)
        .await
        .assert_problem(403, "forbidden");
    put(&app, DEFAULTS, &ada.token, &json!({"limits": []}))
        .await
        .assert_problem(403, "forbidden");
    put(
        &app,
        &account_path(ada.id, "USD"),
        &ada.token,
        &json!({"overdraft_limit": 1_000}),
    )
    .await
    .assert_problem(403, "forbidden");
    assert_eq!(footprint(&app).await, before);

    // Anyone signed in reads the defaults.
    let defaults = app.get(DEFAULTS, &bob.token).await;
    assert_eq!(defaults.status, StatusCode::OK, "{}", defaults.body);
    assert_eq!(defaults.body, json!({"limits": []}));
}

#[actix_web::test]
async fn every_bad_limit_is_named_and_nothing_changes() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("strict").await;
    app.credit(&user, 100, "USD").await;
    let good = json!({"limits": [{"kind": "daily_debit", "currency": "USD", "value": 500}]});
    let reply = put(&app, &limits_path(user.id), &admin.token, &good).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let set_before = app.get(&limits_path(user.id), &admin.token).await.body;
    let before = footprint(&app).await;

    let over = 2_305_843_009_213_693_953_i64;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"limits": [
                {"kind": "weekly_debit", "currency": "USD", "value": 1},
                {"kind": "daily_debit", "currency": "USD", "value": 0},
                {"kind": "rolling_debit", "currency": "*", "value": 5},
                {"kind": "daily_credit", "currency": "ZZZ", "value": 5},
            ]}),
            vec![
                "limits[0].kind",
                "limits[1].value",
                "limits[2].window_s",
                "limits[3].currency",
            ],
        ),
        (
            json!({"limits": [
                {"kind": "balance_max", "currency": "*", "value": 1},
                {"kind": "supply", "currency": "*", "value": 1},
                {"kind": "max_per_transaction", "currency": "*", "value": over},
                {"kind": "max_per_transaction", "currency": "USD", "value": -5},
                {"kind": "velocity", "currency": "*", "value": 1.5, "window_s": 60},
            ]}),
            vec![
                "limits[0].kind",
                "limits[1].kind",
                "limits[2].value",
                "limits[3].value",
                "limits[4].value",
            ],
        ),
        (
            json!({"limits": [
                {"kind": "daily_debit", "currency": "*", "value": 1, "window_s": 60},
                {"kind": "velocity", "currency": "*", "value": 1, "window_s": 0},
                {"kind": "rolling_debit", "currency": "*", "value": 1, "window_s": 31_622_401},
                {"kind": "rolling_debit", "currency": "USD", "value": 1, "window_s": "60"},
            ]}),
            vec![
                "limits[0].window_s",
                "limits[1].window_s",
                "limits[2].window_s",
                "limits[3].window_s",
            ],
        ),
        (
            json!({"limits": [
                {"kind": "daily_debit", "currency": "USD", "value": 1},
                {"kind": "daily_debit", "currency": "USD", "value": 2},
                {"kind": "daily_debit", "currency": "usd", "value": 2},
                "daily_debit",
                {"kind": "daily_debit", "value": 1, "colour": "red"},
            ]}),
            vec![
                "limits[1].currency",
                "limits[2].currency",
                "limits[3]",
                "limits[4].currency",
                "limits[4].colour",
            ],
        ),
        // A currency the user never held (no balance row): one they could not have debited.
        (
            json!({"limits": [
                {"kind": "daily_debit", "currency": "USD", "value": 1},
                {"kind": "daily_debit", "currency": "EUR", "value": 1},
            ]}),
            vec!["limits[1].currency"],
        ),
        (json!({"limits": "all"}), vec!["limits"]),
        (json!({}), vec!["limits"]),
        (
            json!({"limits": vec![json!({"kind": "daily_debit", "currency": "*", "value": 1}); 101]}),
            vec!["limits"],
        ),
    ];
    for (body, fields) in cases {
        let reply = put(&app, &limits_path(user.id), &admin.token, &body).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), fields, "{body}: {}", reply.body);
    }
    // The defaults take the same rules, without the "held" one.
    let reply = put(
        &app,
        DEFAULTS,
        &admin.token,
        &json!({"limits": [
            {"kind": "daily_debit", "currency": "EUR", "value": 1},
            {"kind": "supply", "currency": "EUR", "value": 1},
        ]}),
    )
    .await;
    reply.assert_problem(422, "validation_failed");
    assert_eq!(reply.error_fields(), ["limits[1].kind"]);

    assert_eq!(footprint(&app).await, before, "a refusal writes nothing");
    assert_eq!(
        app.get(&limits_path(user.id), &admin.token).await.body,
        set_before
    );
}

#[actix_web::test]
async fn the_system_account_and_unknown_or_deleted_users_are_refused() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let gone = app.user("gone").await;
    let reply = delete(&app, &format!("/api/v1/users/{}", gone.id), &admin.token).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let before = footprint(&app).await;
    let set = json!({"limits": [{"kind": "daily_debit", "currency": "*", "value": 1}]});

    let reply = put(&app, &limits_path(SYSTEM), &admin.token, &set).await;
    reply.assert_problem(422, "validation_failed");
    assert_eq!(reply.error_fields(), ["id"]);
    let reply = put(
        &app,
        &account_path(SYSTEM, "USD"),
        &admin.token,
        &json!({"overdraft_limit": 1}),
    )
    .await;
    reply.assert_problem(422, "validation_failed");
    assert_eq!(reply.error_fields(), ["id"]);
    app.get(&limits_path(SYSTEM), &admin.token)
        .await
        .assert_problem(404, "not_found");

    for id in [gone.id, Uuid::new_v4()] {
        put(&app, &limits_path(id), &admin.token, &set)
            .await
            .assert_problem(404, "not_found");
        put(
            &app,
            &account_path(id, "USD"),
            &admin.token,
            &json!({"overdraft_limit": 1}),
        )
        .await
        .assert_problem(404, "not_found");
        app.get(&limits_path(id), &admin.token)
            .await
            .assert_problem(404, "not_found");
    }
    assert_eq!(footprint(&app).await, before);
}

/// Settings for an app on `database_url` with the configured default limits kept.
fn shared_settings(database_url: &str) -> Settings {
    let mut settings = test_settings();
    settings.database.url = database_url.to_owned();
    settings.limits = Settings::load(None).expect("settings").limits;
    settings
}

#[actix_web::test]
async fn configured_defaults_are_seeded_once_and_the_api_rules_after() {
    // The first app creates and migrates the database, with the configured defaults kept.
    let (first, admin) = TestApp::spawn_with_limit_defaults(|_| {}).await;
    let seeded = json!({"limits": [
        {"kind": "daily_credit", "currency": "*", "value": 100_000_000, "window_s": null},
    ]});
    let reply = first.get(DEFAULTS, &admin.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, seeded);
    let events = limit_events(&first, "limits:defaults").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["after"], seeded["limits"]);
    assert_eq!(events[0]["changed_by"], Value::Null);

    // Change them through the API; then two more instances start at once on the same
    // database: neither seeds again, and the API's set survives.
    let changed = json!({"limits": [
        {"kind": "daily_credit", "currency": "USD", "value": 5_000, "window_s": null},
        {"kind": "rolling_debit", "currency": "*", "value": 9_000, "window_s": 600},
    ]});
    let reply = put(&first, DEFAULTS, &admin.token, &changed).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, changed);
    let (second, third) = futures_util::future::join(
        Application::build(shared_settings(&first.database_url)),
        Application::build(shared_settings(&first.database_url)),
    )
    .await;
    for app in [second, third] {
        let app = app.expect("another instance starts");
        let port = app.port();
        actix_web::rt::spawn(app.run_until(std::future::pending()));
        let reply = TestApp::checked_reply(
            &Method::GET,
            first
                .http
                .get(format!("http://127.0.0.1:{port}{DEFAULTS}"))
                .bearer_auth(&admin.token)
                .send()
                .await
                .expect("request sent"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body, changed);
    }
    let db = first.db().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM limit_defaults_seeded").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM limits WHERE user_id IS NULL").await,
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE stream = 'limits:defaults'").await,
        2,
        "the seeding and the PUT"
    );
    assert_eq!(
        count("SELECT count(*) FROM audit_logs WHERE action = 'limits.defaults_seeded'").await,
        1
    );
}

#[actix_web::test]
async fn instances_starting_at_once_on_a_new_database_seed_the_defaults_once() {
    let settings = shared_settings(&test_settings().database.url);
    // Migrated first, so that only the seeding races.
    tally::store::prepare_database(&settings.database)
        .await
        .expect("the database is prepared");
    let apps =
        futures_util::future::join_all((0..3).map(|_| Application::build(settings.clone()))).await;
    for app in apps {
        let app = app.expect("the instance starts");
        actix_web::rt::spawn(app.run_until(std::future::pending()));
    }
    let (client, connection) =
        tokio_postgres::connect(&settings.database.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
    actix_web::rt::spawn(connection);
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM limit_defaults_seeded),
                    (SELECT count(*) FROM limits WHERE user_id IS NULL),
                    (SELECT count(*) FROM events WHERE stream = 'limits:defaults')",
            &[],
        )
        .await
        .expect("counts");
    let counts: (i64, i64, i64) = (counts.get(0), counts.get(1), counts.get(2));
    assert_eq!(counts, (1, 1, 1));
    drop(client);
    // The test's database is dropped like every TestApp's.
    let _cleanup = TestApp {
        address: String::new(),
        port: 0,
        database_url: settings.database.url.clone(),
        settings,
        http: reqwest::Client::new(),
    };
}

#[actix_web::test]
async fn an_overdraft_lets_debits_go_below_zero_up_to_the_limit() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("borrower").await;
    app.credit(&user, 100, "USD").await;
    // Cached before the change: the write-through must replace it.
    assert_eq!(app.balance(&user, "USD").await, 100);

    let reply = put(
        &app,
        &account_path(user.id, "USD"),
        &admin.token,
        &json!({"overdraft_limit": 50}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["currency"], "USD");
    assert_eq!(reply.body["amount"], 100);
    assert_eq!(reply.body["available"], 100);
    assert_eq!(reply.body["overdraft_limit"], 50);
    let current = app
        .get("/api/v1/balances/current?currency=USD", &user.token)
        .await;
    assert_eq!(current.body["balances"][0], reply.body, "read your writes");

    let debit = |amount: i64| {
        let app = &app;
        let token = user.token.clone();
        async move {
            app.post(
                "/api/v1/transactions/debit",
                Some(&token),
                &json!({"amount": amount, "currency": "USD"}),
            )
            .await
        }
    };
    let reply = debit(150).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    debit(1).await.assert_problem(422, "insufficient_funds");
    assert_eq!(app.balance(&user, "USD").await, -50);

    // Lowering it below what is in use is refused and changes nothing.
    let before = footprint(&app).await;
    let reply = put(
        &app,
        &account_path(user.id, "USD"),
        &admin.token,
        &json!({"overdraft_limit": 49}),
    )
    .await;
    reply.assert_problem(409, "overdraft_in_use");
    assert_eq!(footprint(&app).await, before);
    let current = app
        .get("/api/v1/balances/current?currency=USD", &user.token)
        .await;
    assert_eq!(current.body["balances"][0]["overdraft_limit"], 50);

    // Raising it works at once, for a debit too.
    let reply = put(
        &app,
        &account_path(user.id, "USD"),
        &admin.token,
        &json!({"overdraft_limit": 80}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["available"], -50);
    let reply = debit(30).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    // A currency never used gets its balance row.
    let reply = put(
        &app,
        &account_path(user.id, "EUR"),
        &admin.token,
        &json!({"overdraft_limit": 0}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["amount"], 0);
    let current = app.get("/api/v1/balances/current", &user.token).await;
    let currencies: Vec<&str> = current.body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|balance| balance["currency"].as_str().unwrap())
        .collect();
    assert_eq!(currencies, ["EUR", "USD"]);

    let events = limit_events(&app, &format!("limits:{}", user.id)).await;
    let changes: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|event| {
            (
                event["after"]["currency"].clone(),
                event["before"]["value"].clone(),
                event["after"]["value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (json!("USD"), json!(0), json!(50)),
            (json!("USD"), json!(50), json!(80)),
            (json!("EUR"), json!(0), json!(0)),
        ]
    );
    assert!(events.iter().all(
        |event| event["after"]["kind"] == "overdraft" && event["changed_by"] == json!(admin.id)
    ));
    assert_eq!(
        audits(&app, "limit.changed", &format!("{}:USD", user.id))
            .await
            .len(),
        2
    );
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_bad_overdraft_request_is_named() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("odd").await;
    let before = footprint(&app).await;
    for (path, body, fields) in [
        (
            account_path(user.id, "USD"),
            json!({"overdraft_limit": -1}),
            vec!["overdraft_limit"],
        ),
        (
            account_path(user.id, "USD"),
            json!({"overdraft_limit": 2_305_843_009_213_693_953_i64}),
            vec!["overdraft_limit"],
        ),
        (
            account_path(user.id, "USD"),
            json!({"overdraft_limit": "10"}),
            vec!["overdraft_limit"],
        ),
        (
            account_path(user.id, "USD"),
            json!({}),
            vec!["overdraft_limit"],
        ),
        (
            account_path(user.id, "usd"),
            json!({"overdraft_limit": 10, "currency": "USD"}),
            vec!["currency", "currency"],
        ),
    ] {
        let reply = put(&app, &path, &admin.token, &body).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), fields, "{body}: {}", reply.body);
    }
    assert_eq!(footprint(&app).await, before);
}

/// Creates an alert; asserts 201.
async fn alert(app: &TestApp, token: &str, body: Value) -> Value {
    let reply = app.post(ALERTS, Some(token), &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{body}: {}", reply.body);
    reply.body
}

#[actix_web::test]
async fn alerts_are_armed_from_the_balance_listed_and_deleted_by_their_owner() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    app.credit(&ada, 1_000, "USD").await;

    let below = alert(
        &app,
        &ada.token,
        json!({"currency": "USD", "condition": "below", "threshold": 500}),
    )
    .await;
    assert_eq!(below["armed"], true, "1000 is not below 500: armed");
    assert_eq!(below["user_id"], json!(ada.id));
    assert_eq!(below["fired_count"], 0);
    assert_eq!(below["last_fired_at"], Value::Null);
    let above = alert(
        &app,
        &ada.token,
        json!({"currency": "USD", "condition": "above", "threshold": 500}),
    )
    .await;
    assert_eq!(above["armed"], false, "1000 is above 500: it holds now");
    // No balance row: the amount is 0.
    let negative = alert(
        &app,
        &ada.token,
        json!({"currency": "EUR", "condition": "below", "threshold": -10}),
    )
    .await;
    assert_eq!(negative["armed"], true);
    // An admin sets one on another user's account.
    let by_admin = alert(
        &app,
        &admin.token,
        json!({"currency": "USD", "condition": "below", "threshold": 2_000, "user_id": ada.id}),
    )
    .await;
    assert_eq!(by_admin["user_id"], json!(ada.id));
    assert_eq!(by_admin["armed"], false);

    let listed = app.get(ALERTS, &ada.token).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let ids: Vec<&Value> = listed.body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| &alert["id"])
        .collect();
    assert_eq!(
        ids,
        [&below["id"], &above["id"], &negative["id"], &by_admin["id"]]
    );
    assert_eq!(listed.body["alerts"][0], below);
    let for_admin = app
        .get(&format!("{ALERTS}?user_id={}", ada.id), &admin.token)
        .await;
    assert_eq!(for_admin.body, listed.body);
    assert_eq!(
        app.get(ALERTS, &bob.token).await.body,
        json!({"alerts": []})
    );
    app.get(&format!("{ALERTS}?user_id={}", ada.id), &bob.token)
        .await
        .assert_problem(403, "forbidden");

    // Another user's alert is not there for bob; its owner deletes it, then it is gone.
    let below_path = format!("{ALERTS}/{}", below["id"].as_str().unwrap());
    delete(&app, &below_path, &bob.token)
        .await
        .assert_problem(404, "not_found");
    let reply = delete(&app, &below_path, &ada.token).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    delete(&app, &below_path, &ada.token)
        .await
        .assert_problem(404, "not_found");
    // An admin deletes anyone's.
    let reply = delete(
        &app,
        &format!("{ALERTS}/{}", by_admin["id"].as_str().unwrap()),
        &admin.token,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    delete(&app, &format!("{ALERTS}/not-an-id"), &ada.token)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(
        app.get(ALERTS, &ada.token).await.body["alerts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let db = app.db().await;
    let audited: Vec<(String, Option<Uuid>)> = db
        .query(
            "SELECT action, actor_id FROM audit_logs WHERE entity_type = 'alert' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let created = |actor: Uuid| ("alert.created".to_owned(), Some(actor));
    let deleted = |actor: Uuid| ("alert.deleted".to_owned(), Some(actor));
    assert_eq!(
        audited,
        vec![
            created(ada.id),
            created(ada.id),
            created(ada.id),
            created(admin.id),
            deleted(ada.id),
            deleted(admin.id),
        ]
    );
}

#[actix_web::test]
async fn bad_alerts_are_named_and_refused() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let before = footprint(&app).await;
    for (body, fields) in [
        (
            json!({"currency": "usd", "condition": "sideways", "threshold": "10"}),
            vec!["currency", "condition", "threshold"],
        ),
        (
            json!({"currency": "ZZZ", "condition": "below", "threshold": 1.5}),
            vec!["currency", "threshold"],
        ),
        (
            json!({"condition": "above", "threshold": 2_305_843_009_213_693_953_i64}),
            vec!["currency", "threshold"],
        ),
        (
            json!({"currency": "USD", "condition": "Below", "threshold": 1, "user_id": "x"}),
            vec!["condition", "user_id"],
        ),
        (
            json!({"currency": "USD", "condition": "below", "threshold": 1, "user_id": SYSTEM}),
            vec!["user_id"],
        ),
        (
            json!({"currency": "USD", "condition": "below", "threshold": 1, "when": "now"}),
            vec!["when"],
        ),
    ] {
        let reply = app.post(ALERTS, Some(&ada.token), &body).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), fields, "{body}: {}", reply.body);
    }
    let valid = |user: Uuid| json!({"currency": "USD", "condition": "below", "threshold": -2_305_843_009_213_693_952_i64, "user_id": user});
    app.post(ALERTS, Some(&ada.token), &valid(bob.id))
        .await
        .assert_problem(403, "forbidden");
    let reply = app
        .post(ALERTS, Some(&admin.token), &valid(Uuid::new_v4()))
        .await;
    reply.assert_problem(422, "validation_failed");
    assert_eq!(reply.error_fields(), ["user_id"]);
    assert_eq!(footprint(&app).await, before);

    // At most 100 alerts per user.
    for _ in 0..100 {
        alert(&app, &ada.token, valid(ada.id)).await;
    }
    app.post(ALERTS, Some(&ada.token), &valid(ada.id))
        .await
        .assert_problem(409, "too_many_alerts");
    let count: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM alerts WHERE user_id = $1", &[&ada.id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 100);
}

#[test]
fn a_bad_configured_default_stops_the_start_naming_its_key() {
    use tally::config::LimitDefaultSettings;
    let entry =
        |kind: &str, currency: &str, value: i64, window_s: Option<i64>| LimitDefaultSettings {
            kind: kind.to_owned(),
            currency: currency.to_owned(),
            value,
            window_s,
        };
    for (defaults, key) in [
        (
            vec![entry("weekly", "*", 1, None)],
            "limits.defaults[0].kind",
        ),
        (
            vec![entry("supply", "*", 1, None)],
            "limits.defaults[0].kind",
        ),
        (
            vec![
                entry("daily_debit", "USD", 1, None),
                entry("daily_debit", "usd", 1, None),
            ],
            "limits.defaults[1].currency",
        ),
        (
            vec![entry("velocity", "*", 3, None)],
            "limits.defaults[0].window_s",
        ),
        (
            vec![entry("daily_debit", "*", 0, None)],
            "limits.defaults[0].value",
        ),
        (
            vec![
                entry("daily_debit", "*", 1, None),
                entry("daily_debit", "*", 2, None),
            ],
            "limits.defaults[1].currency",
        ),
    ] {
        let mut settings = test_settings();
        settings.limits.defaults = defaults;
        let error = settings.validate().expect_err("refused").to_string();
        assert!(error.starts_with(key), "{key}: {error}");
    }
    let mut settings = test_settings();
    settings.limits.defaults = vec![entry("rolling_debit", "EUR", 5, Some(60))];
    settings.validate().expect("a valid default");
}
