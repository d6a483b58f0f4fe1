//! Test harness: every test starts the real application on port 0 against its own freshly
//! created PostgreSQL database (`tally_test_<uuid>`), then talks HTTP to it.

use std::sync::atomic::{AtomicU64, Ordering};

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
    settings.database.pool_size = 6;
    settings.http.bind = "127.0.0.1:0".to_owned();
    settings.http.workers = 2;
    settings.auth.jwt_secret = "test-secret-test-secret-test-secret!".to_owned();
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

static USER_SEQ: AtomicU64 = AtomicU64::new(0);

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the app with settings adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = test_settings();
        adjust(&mut settings);
        let database_url = settings.database.url.clone();
        let app = Application::build(settings.clone())
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
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
        }
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

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.address, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("request sent");
        Self::reply(response).await
    }

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
    pub async fn assert_ledger_invariants(&self) -> i64 {
        let db = self.db().await;
        let report = tally::verify::verify(&db).await.expect("verify queries");
        assert!(
            report.is_clean(),
            "the ledger contract is broken:\n{report}"
        );
        report.completed_transactions
    }
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
