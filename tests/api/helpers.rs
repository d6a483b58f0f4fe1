//! Test harness: every test starts the real application on port 0 against its own freshly
//! created PostgreSQL database (`tally_test_<uuid>`), then talks HTTP to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::config::Settings;
use tally::startup::Application;
use uuid::Uuid;

/// The server tests run against; override with TALLY_TEST_DATABASE_SERVER.
pub fn database_server() -> String {
    std::env::var("TALLY_TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Settings for one test: a new database, port 0, a fixed JWT key, small pools.
pub fn test_settings() -> Settings {
    let mut settings = Settings::load(None).expect("default settings load");
    let database = format!("tally_test_{}", Uuid::new_v4().simple());
    settings.database.url = format!("{}/{}", database_server(), database);
    // The journal writer takes commit_concurrency + 1 (5) of them; the handlers get 3.
    settings.database.pool_size = 8;
    settings.http.bind = "127.0.0.1:0".to_owned();
    settings.http.workers = 2;
    settings.auth.jwt_secret = "test-secret-test-secret-test-secret!".to_owned();
    // The suite runs tests side by side on a small machine (and one runs pgbench): a worker
    // can stall past the 5 s header timeout, which actix-web counts from accept and answers
    // with 408 (actix-web #1269). Tests of the pipeline must not fail on that.
    settings.http.client_request_timeout_ms = 30_000;
    // Every test client shares 127.0.0.1; the rate-limit tests turn limiting back on.
    settings.rate_limit.enabled = false;
    // No default limits: many tests credit large amounts as plain users. The limits tests keep
    // the configured ones with `TestApp::spawn_with_limit_defaults`.
    settings.limits.defaults.clear();
    settings
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub database_url: String,
    pub settings: Settings,
    pub http: reqwest::Client,
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub username: String,
    pub password: String,
    pub token: String,
    pub refresh_token: String,
}

/// A reply: status, headers and body (JSON, or `Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// A header's value as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json reply with this status and code, and returns the body.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status, body: {}",
            self.body
        );
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "body: {}",
            self.body
        );
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status, "body: {}", self.body);
        assert!(
            self.body["type"].is_string()
                && self.body["title"].is_string()
                && self.body["detail"].is_string()
        );
        &self.body
    }

    /// The fields named in a 422 validation problem.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestApp {
    /// Drops the test's database, so that test runs do not pile databases up on the server.
    /// `WITH (FORCE)` ends the app's own connections (the app stops with the test's runtime
    /// anyway). Best effort, on a thread of its own because `drop` cannot wait on the test's
    /// runtime: a server that is already gone leaves nothing to clean.
    fn drop(&mut self) {
        let url = self.database_url.clone();
        let _ = std::thread::spawn(move || drop_database(&url)).join();
    }
}

/// Creates an empty database `tally_test_<uuid>` on the test server and returns its URL (the
/// caller drops it, e.g. with [`drop_database`] or by handing it to a [`TestApp`]).
pub async fn create_database() -> String {
    let name = format!("tally_test_{}", Uuid::new_v4().simple());
    let (admin, connection) = tokio_postgres::connect(
        &format!("{}/postgres", database_server()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the server");
    actix_web::rt::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a database");
    format!("{}/{name}", database_server())
}

/// Drops the database `url` names (best effort; `WITH (FORCE)`).
pub fn drop_database(url: &str) {
    let Ok(mut config) = url.parse::<tokio_postgres::Config>() else {
        return;
    };
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return;
    };
    config
        .dbname("postgres")
        .connect_timeout(std::time::Duration::from_secs(2));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        if let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await {
            tokio::spawn(connection);
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
                .await;
        }
    });
}

static USER_SEQ: AtomicU64 = AtomicU64::new(0);

/// The admin that [`TestApp::spawn_with_admin`] bootstraps through `[bootstrap]`.
pub const ADMIN_USERNAME: &str = "root";
pub const ADMIN_EMAIL: &str = "root@example.com";
pub const ADMIN_PASSWORD: &str = "admin password 1234";

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the app with settings adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        Self::spawn_with_clock(Arc::new(tally::clock::SystemClock), adjust).await
    }

    /// Starts the app with settings adjusted by `adjust`, its ledger reading "now" from
    /// `clock` (a `ManualClock` the test drives across days and windows).
    pub async fn spawn_with_clock(
        clock: Arc<dyn tally::clock::Clock>,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let mut settings = test_settings();
        adjust(&mut settings);
        let database_url = settings.database.url.clone();
        let app = Application::build_with_clock(settings.clone(), clock)
            .await
            .expect("the application builds");
        let port = app.port();
        // Serves until the test's runtime ends; signals are left to the test harness.
        actix_web::rt::spawn(app.run_until(std::future::pending()));
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            database_url,
            settings,
            http: http_client(),
        }
    }

    /// Starts the app with the `[bootstrap]` admin configured (as [`TestApp::spawn_with_admin`])
    /// and the `limits.defaults` of `config/default.toml` kept (which [`test_settings`] clears).
    pub async fn spawn_with_limit_defaults(
        adjust: impl FnOnce(&mut Settings),
    ) -> (TestApp, TestUser) {
        let configured = Settings::load(None).expect("default settings load").limits;
        Self::spawn_with_admin(|settings| {
            settings.limits = configured;
            adjust(settings);
        })
        .await
    }

    /// Starts the app with the `[bootstrap]` admin configured (what `TALLY__BOOTSTRAP__ADMIN_*`
    /// sets) and returns it logged in.
    pub async fn spawn_with_admin(adjust: impl FnOnce(&mut Settings)) -> (TestApp, TestUser) {
        let app = Self::spawn_with(|settings| {
            settings.bootstrap.admin_username = ADMIN_USERNAME.to_owned();
            settings.bootstrap.admin_email = ADMIN_EMAIL.to_owned();
            settings.bootstrap.admin_password = ADMIN_PASSWORD.to_owned();
            adjust(settings);
        })
        .await;
        let admin = app.login(ADMIN_USERNAME, ADMIN_PASSWORD).await;
        (app, admin)
    }

    /// Logs in an existing user; asserts 200. The id is read from the database.
    pub async fn login(&self, username: &str, password: &str) -> TestUser {
        let login = self
            .post(
                "/api/v1/auth/login",
                None,
                &json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(
            login.status,
            StatusCode::OK,
            "login {username}: {}",
            login.body
        );
        let id: Uuid = self
            .db()
            .await
            .query_one(
                "SELECT id FROM users WHERE lower(username) = lower($1)",
                &[&username],
            )
            .await
            .expect("the user's id")
            .get(0);
        TestUser {
            id,
            username: username.to_owned(),
            password: password.to_owned(),
            token: login.body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh_token: login.body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }

    /// A metric's value from `/metrics`. The metrics registry is shared by every app of the test
    /// process, and `tally_batches_total` is set from this app's own counter at each scrape, so
    /// the value is read until two scrapes in a row agree (this app is idle meanwhile).
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let scrape = || async {
            let text = self
                .http
                .get(format!("{}/metrics", self.address))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics text");
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(line_prefix)
                        .and_then(|rest| rest.strip_prefix(' '))
                        .and_then(|value| value.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0)
        };
        let mut last = scrape().await;
        for _ in 0..20 {
            let next = scrape().await;
            if next == last {
                return next;
            }
            last = next;
        }
        panic!("{line_prefix} never read the same twice in a row");
    }

    /// A direct connection to the test's database, for checks by SQL.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect to test db");
        actix_web::rt::spawn(connection);
        client
    }

    /// Sends a request; `body` is sent as JSON when given. The reply is checked against the
    /// OpenAPI document (see [`check_reply`]).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|key| ("Idempotency-Key", key))
            .into_iter()
            .collect();
        self.request_with(method, path, token, body, &headers).await
    }

    /// Like [`TestApp::request`], with extra headers. The reply is checked against the OpenAPI
    /// document, and a 2xx must have been a reply to a request body the document allows.
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{}", self.address, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let reply = Self::checked_reply(&method, response).await;
        if let Some(body) = body {
            check_request_body(&method, path, reply.status, body);
        }
        reply
    }

    /// Reads a reply without checking it (for pages outside the API, such as `/docs/`).
    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Reads a reply to a `method` request and checks it against the OpenAPI document.
    pub async fn checked_reply(method: &Method, response: reqwest::Response) -> Reply {
        let path = response.url().path().to_owned();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        check_reply(method, &path, status, content_type, bytes.len(), &body);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None, None)
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.request(Method::POST, path, token, Some(body), None)
            .await
    }

    /// Registers and logs in a new user with a unique name starting with `prefix`.
    pub async fn user(&self, prefix: &str) -> TestUser {
        let n = USER_SEQ.fetch_add(1, Ordering::Relaxed);
        let username = format!("{prefix}{n}_{}", &Uuid::new_v4().simple().to_string()[..6]);
        self.user_named(username).await
    }

    /// Registers and logs in a new user named exactly `username` (e.g. one that the settings
    /// name before it exists).
    pub async fn user_named(&self, username: String) -> TestUser {
        let password = "correct horse battery".to_owned();
        let registered = self
            .post(
                "/api/v1/auth/register",
                None,
                &json!({"username": username, "email": format!("{username}@example.com"), "password": password}),
            )
            .await;
        assert_eq!(
            registered.status,
            StatusCode::CREATED,
            "register: {}",
            registered.body
        );
        let id = Uuid::parse_str(registered.body["id"].as_str().expect("id")).expect("uuid id");
        let login = self
            .post(
                "/api/v1/auth/login",
                None,
                &json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(login.status, StatusCode::OK, "login: {}", login.body);
        TestUser {
            id,
            username,
            password,
            token: login.body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh_token: login.body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }

    /// Credits `amount` minor units of `currency` to `user`; asserts 201.
    pub async fn credit(&self, user: &TestUser, amount: i64, currency: &str) -> Value {
        let reply = self
            .post(
                "/api/v1/transactions/credit",
                Some(&user.token),
                &json!({"amount": amount, "currency": currency}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "credit: {}", reply.body);
        reply.body
    }

    /// The user's balance in `currency` through the API (0 when never used).
    pub async fn balance(&self, user: &TestUser, currency: &str) -> i64 {
        let reply = self
            .get(
                &format!("/api/v1/balances/current?currency={currency}"),
                &user.token,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "balance: {}", reply.body);
        reply.body["balances"][0]["amount"]
            .as_i64()
            .expect("amount")
    }

    /// Row counts of every ledger table, to assert that a refused request wrote nothing.
    pub async fn row_counts(&self) -> RowCounts {
        let db = self.db().await;
        let count = |table: &'static str| {
            let db = &db;
            async move {
                db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .expect("count")
                    .get::<_, i64>(0)
            }
        };
        RowCounts {
            users: count("users").await,
            balances: count("balances").await,
            transactions: count("transactions").await,
            entries: count("entries").await,
            events: count("events").await,
            idempotency_keys: count("idempotency_keys").await,
        }
    }

    /// Checks the ledger contract by SQL (`tally::verify`, what `tally verify` runs: DESIGN.md
    /// section 2, invariants 1, 2, 4 and 5) and panics with the violations. Returns the number
    /// of completed transactions.
    /// `tally verify`'s report on this app's database, as it is now.
    /// Waits until every database transaction of the cluster that was running when it was
    /// called has finished: from then on the event log's readers (which read only below the
    /// oldest running transaction, invariant 12) see every event committed before the call.
    /// Transactions of other tests on the same server hold that horizon back for a moment.
    pub async fn wait_for_log_horizon(&self) {
        let db = self.db().await;
        let horizon: i64 = db
            .query_one(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await
            .expect("read the snapshot")
            .get(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let oldest: i64 = db
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                    &[],
                )
                .await
                .expect("read the snapshot")
                .get(0);
            if oldest >= horizon {
                return;
            }
            // A pause between polls of the condition, not a synchronization by itself.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("a database transaction older than the test's writes ran for over 60 s");
    }

    pub async fn verify(&self) -> tally::verify::Report {
        let db = self.db().await;
        tally::verify::verify(&db, self.settings.idempotency.retention())
            .await
            .expect("verify queries")
    }

    pub async fn assert_ledger_invariants(&self) -> i64 {
        let report = self.verify().await;
        assert!(
            report.is_clean(),
            "the ledger contract is broken:\n{report}"
        );
        report.completed_transactions
    }
}

/// The check `name` of `report`.
pub fn check<'a>(report: &'a tally::verify::Report, name: &str) -> &'a tally::verify::Check {
    report
        .checks
        .iter()
        .find(|check| check.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCounts {
    pub users: i64,
    pub balances: i64,
    pub transactions: i64,
    pub entries: i64,
    pub events: i64,
    pub idempotency_keys: i64,
}

// ---------------------------------------------------------------------------------------------
// Every reply checked against the OpenAPI document.
//
// The document is built in-process (the same code renders `GET /openapi.json`). A reply must
// have a documented response for (method, path template, status), carry a documented content
// type, and a JSON body must validate against the documented schema (JSON Schema 2020-12, the
// OpenAPI 3.1 dialect, formats checked). Objects are closed: a reply field the document does not
// name is an error too. Paths or methods the document does not have (unknown routes, wrong
// methods) may only get a problem+json reply.

/// The OpenAPI document, as JSON.
pub fn openapi() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let settings = test_settings();
        let document = tally::routes::openapi::OpenApiDocument::render(
            settings.bulk.max_items,
            settings.holds.timeout_s_max,
        );
        serde_json::from_str(&document.0).expect("the OpenAPI document is JSON")
    })
}

/// `components` with every object schema closed (`additionalProperties: false` unless it says
/// otherwise), so that undocumented reply fields fail. Only schemas that say `type: object` are
/// closed: a bare `{required, properties}` inside `anyOf` or `if`/`then` (the request schemas'
/// cross-field rules) constrains some fields of an object described elsewhere.
fn closed_components() -> &'static Value {
    static COMPONENTS: OnceLock<Value> = OnceLock::new();
    COMPONENTS.get_or_init(|| {
        let mut components = openapi()["components"].clone();
        close_objects(&mut components);
        components
    })
}

fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_object = map.get("type").is_some_and(|kind| {
                kind == "object"
                    || kind
                        .as_array()
                        .is_some_and(|kinds| kinds.contains(&json!("object")))
            });
            if is_object
                && map.contains_key("properties")
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The documented path template matching `path` and its path item; the template with the most
/// literal segments wins (`/transactions/history` over `/transactions/{id}`, as in the router).
pub fn documented_path(path: &str) -> Option<(&'static str, &'static Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    openapi()["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut literal = 0;
            for (part, segment) in parts.iter().zip(&segments) {
                if part.starts_with('{') && part.ends_with('}') {
                    if segment.is_empty() {
                        return None;
                    }
                } else if part == segment {
                    literal += 1;
                } else {
                    return None;
                }
            }
            Some((literal, template.as_str(), item))
        })
        .max_by_key(|(literal, _, _)| *literal)
        .map(|(_, template, item)| (template, item))
}

fn validator(schema: &Value) -> Arc<jsonschema::Validator> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let key = schema.to_string();
    let cache = VALIDATORS.get_or_init(Default::default);
    if let Some(validator) = cache.lock().unwrap().get(&key) {
        return validator.clone();
    }
    let mut root = schema.clone();
    close_objects(&mut root);
    let root = match root {
        Value::Object(mut map) => {
            map.insert("components".into(), closed_components().clone());
            Value::Object(map)
        }
        other => other,
    };
    let validator = Arc::new(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|error| {
                panic!("the documented schema {schema} does not compile: {error}")
            }),
    );
    cache.lock().unwrap().insert(key, validator.clone());
    validator
}

/// The differences between `instance` and `schema`, one line each (empty when it matches).
pub fn schema_errors(schema: &Value, instance: &Value) -> Vec<String> {
    validator(schema)
        .iter_errors(instance)
        .map(|error| format!("at '{}': {error}", error.instance_path))
        .collect()
}

/// A body for a failure message, cut to a readable length.
fn shown(body: &Value) -> String {
    let text = body.to_string();
    match text.char_indices().nth(1500) {
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
        None => text,
    }
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Checks one reply against the OpenAPI document and panics with what differs.
#[track_caller]
pub fn check_reply(
    method: &Method,
    path: &str,
    status: StatusCode,
    content_type: &str,
    body_len: usize,
    body: &Value,
) {
    let path = path.split('?').next().unwrap_or(path);
    let operation = documented_path(path)
        .and_then(|(template, item)| Some((template, item.get(method.as_str().to_lowercase())?)));
    let Some((template, operation)) = operation else {
        // An unknown route or a wrong method: only the problem shape is promised.
        check_problem(
            &format!("{method} {path} (not in the OpenAPI document) → {status}"),
            status,
            content_type,
            body,
        );
        return;
    };
    let context = format!("{method} {template} → {status}");
    let responses = operation["responses"].as_object().expect("responses");
    let class = format!("{}XX", status.as_u16() / 100);
    let response = responses
        .get(status.as_str())
        .or_else(|| responses.get(&class))
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| {
            panic!(
                "{context}: the OpenAPI document lists no response {} for this operation \
                 (it lists {:?}); body: {}",
                status.as_u16(),
                responses.keys().collect::<Vec<_>>(),
                shown(body)
            )
        });
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let content = response
        .get("content")
        .and_then(Value::as_object)
        .filter(|content| !content.is_empty());
    let Some(content) = content else {
        assert_eq!(
            body_len,
            0,
            "{context}: the OpenAPI document says this reply has no body, but it has a \
             {content_type:?} body: {}",
            shown(body)
        );
        return;
    };
    let Some(media) = content.get(&media_type) else {
        panic!(
            "{context}: content type {content_type:?} is not documented (documented: {:?}); body: {}",
            content.keys().collect::<Vec<_>>(),
            shown(body)
        );
    };
    if media_type == "application/problem+json" {
        check_problem(&context, status, content_type, body);
    }
    if let (true, Some(schema)) = (is_json(&media_type), media.get("schema")) {
        let errors = schema_errors(schema, body);
        assert!(
            errors.is_empty(),
            "{context}: the reply does not match its documented schema {schema}:\n  {}\nbody: {}",
            errors.join("\n  "),
            shown(body)
        );
    }
}

/// A problem+json reply: the content type, the Problem schema, and `status` repeating the
/// HTTP status.
#[track_caller]
fn check_problem(context: &str, status: StatusCode, content_type: &str, body: &Value) {
    assert_eq!(
        content_type,
        "application/problem+json",
        "{context}: an error reply must be problem+json; body: {}",
        shown(body)
    );
    let errors = schema_errors(&json!({"$ref": "#/components/schemas/Problem"}), body);
    assert!(
        errors.is_empty(),
        "{context}: not a Problem:\n  {}\nbody: {}",
        errors.join("\n  "),
        shown(body)
    );
    assert_eq!(
        body["status"].as_u64(),
        Some(u64::from(status.as_u16())),
        "{context}: the problem's status differs from the HTTP status; body: {}",
        shown(body)
    );
}

/// A request the app accepted (2xx) must be one the OpenAPI document allows: otherwise the
/// document is stricter than the code.
#[track_caller]
pub fn check_request_body(method: &Method, path: &str, status: StatusCode, body: &Value) {
    if !status.is_success() {
        return;
    }
    let Some((template, item)) = documented_path(path) else {
        return;
    };
    let Some(schema) = item
        .get(method.as_str().to_lowercase())
        .and_then(|operation| {
            operation["requestBody"]["content"]["application/json"].get("schema")
        })
    else {
        return;
    };
    let errors = schema_errors(schema, body);
    assert!(
        errors.is_empty(),
        "{method} {template} → {status}: the app accepted a request body that the documented \
         request schema {schema} refuses:\n  {}\nrequest: {body}",
        errors.join("\n  ")
    );
}

/// The suite's HTTP client. Its pooled connections are dropped after 2 s idle, before the
/// server's keep-alive (`http.keep_alive_s`, 5 s) closes them: a request sent on a connection
/// the server is closing at that instant fails with `IncompleteMessage` (hyper's keep-alive race,
/// seen in CI while a busy machine left a client idle for 5 s).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("http client")
}
