//! Hostile and sloppy input: every refusal is a problem+json with the documented status and
//! code, names the offending fields, and writes nothing (row counts unchanged).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::helpers::*;

/// One POST endpoint: a body it accepts, and the fields it requires.
struct Endpoint {
    path: &'static str,
    /// Whether it needs the bearer token.
    auth: bool,
    valid: Value,
    required: &'static [&'static str],
}

/// Every POST endpoint, with a valid body for `user` (who must not be `peer`).
fn endpoints(user: &TestUser, peer: &TestUser) -> Vec<Endpoint> {
    vec![
        Endpoint {
            path: "/api/v1/auth/register",
            auth: false,
            valid: json!({"username": "newcomer", "email": "newcomer@example.com", "password": "long enough password"}),
            required: &["username", "email", "password"],
        },
        Endpoint {
            path: "/api/v1/auth/login",
            auth: false,
            valid: json!({"username": user.username, "password": user.password}),
            required: &["username", "password"],
        },
        Endpoint {
            path: "/api/v1/auth/refresh",
            auth: false,
            valid: json!({"refresh_token": user.refresh_token}),
            required: &["refresh_token"],
        },
        Endpoint {
            path: "/api/v1/transactions/credit",
            auth: true,
            valid: json!({"amount": 100, "currency": "USD"}),
            required: &["amount", "currency"],
        },
        Endpoint {
            path: "/api/v1/transactions/debit",
            auth: true,
            valid: json!({"amount": 100, "currency": "USD"}),
            required: &["amount", "currency"],
        },
        Endpoint {
            path: "/api/v1/transactions/transfer",
            auth: true,
            valid: json!({"to_user_id": peer.id, "amount": 100, "currency": "USD"}),
            required: &["to_user_id", "amount", "currency"],
        },
    ]
}

/// The money-moving endpoints only.
fn money_endpoints(user: &TestUser, peer: &TestUser) -> Vec<Endpoint> {
    endpoints(user, peer)
        .into_iter()
        .filter(|endpoint| endpoint.auth)
        .collect()
}

/// Sends raw bytes with an optional content type, as a client that is not careful would.
async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut request = app
        .http
        .request(method.clone(), format!("{}{}", app.address, path))
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request sent");
    TestApp::checked_reply(&method, response).await
}

async fn post_json(app: &TestApp, endpoint: &Endpoint, user: &TestUser, body: &Value) -> Reply {
    let token = endpoint.auth.then_some(user.token.as_str());
    app.post(endpoint.path, token, body).await
}

fn with(base: &Value, field: &str, value: Value) -> Value {
    let mut object = base.as_object().expect("an object").clone();
    object.insert(field.to_owned(), value);
    Value::Object(object)
}

fn without(base: &Value, field: &str) -> Value {
    let mut object = base.as_object().expect("an object").clone();
    object.remove(field);
    Value::Object(object)
}

fn field_set(reply: &Reply) -> BTreeSet<String> {
    reply.error_fields().into_iter().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// Asserts a 422 validation problem naming exactly `fields`, each with a message.
#[track_caller]
fn assert_fields(reply: &Reply, fields: &[&str], case: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{case}: {}",
        reply.body
    );
    reply.assert_problem(422, "validation_failed");
    assert_eq!(field_set(reply), set(fields), "{case}: {}", reply.body);
    for error in reply.body["errors"].as_array().expect("errors") {
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: every error has a message: {}",
            reply.body
        );
    }
}

struct Setup {
    app: TestApp,
    user: TestUser,
    peer: TestUser,
    before: RowCounts,
}

/// An app with two users; the first holds 1000 USD (so that a debit or transfer would succeed
/// if the input were accepted).
async fn setup() -> Setup {
    let app = TestApp::spawn().await;
    let user = app.user("input").await;
    let peer = app.user("input_peer").await;
    app.credit(&user, 1_000, "USD").await;
    let before = app.row_counts().await;
    Setup {
        app,
        user,
        peer,
        before,
    }
}

impl Setup {
    async fn assert_unchanged(&self, case: &str) {
        assert_eq!(
            self.app.row_counts().await,
            self.before,
            "{case}: a refused request wrote something"
        );
    }

    async fn finish(&self) {
        self.assert_unchanged("at the end").await;
        assert_eq!(self.app.balance(&self.user, "USD").await, 1_000);
        assert_eq!(self.app.balance(&self.peer, "USD").await, 0);
        // The refresh token was never rotated by a refused request.
        let refreshed = self
            .app
            .post(
                "/api/v1/auth/refresh",
                None,
                &json!({"refresh_token": self.user.refresh_token}),
            )
            .await;
        assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
        self.app.assert_ledger_invariants().await;
    }
}

#[actix_web::test]
async fn malformed_json_is_400() {
    let s = setup().await;
    for endpoint in endpoints(&s.user, &s.peer) {
        let token = endpoint.auth.then_some(s.user.token.as_str());
        for raw in [
            &b"{"[..],
            b"{\"amount\": }",
            b"{\"amount\": 100, \"currency\": \"USD\"",
            b"{'amount': 100}",
            b"{\"amount\": 100,}",
            b"not json at all",
            b"",
            b"\xff\xfe\x00",
            b"{\"a\": 1} trailing",
        ] {
            let case = format!("{} {:?}", endpoint.path, String::from_utf8_lossy(raw));
            let reply = send_raw(
                &s.app,
                Method::POST,
                endpoint.path,
                token,
                Some("application/json"),
                raw.to_vec(),
            )
            .await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{case}: {}",
                reply.body
            );
            reply.assert_problem(400, "malformed_request");
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn json_that_is_not_an_object_is_400() {
    let s = setup().await;
    for endpoint in endpoints(&s.user, &s.peer) {
        for body in [
            json!([endpoint.valid.clone()]),
            json!("a string"),
            json!(42),
            json!(true),
            Value::Null,
            json!([]),
        ] {
            let case = format!("{} {body}", endpoint.path);
            let reply = post_json(&s.app, &endpoint, &s.user, &body).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{case}: {}",
                reply.body
            );
            reply.assert_problem(400, "malformed_request");
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn a_body_that_is_not_json_is_415() {
    let s = setup().await;
    for endpoint in endpoints(&s.user, &s.peer) {
        let token = endpoint.auth.then_some(s.user.token.as_str());
        let valid = serde_json::to_vec(&endpoint.valid).unwrap();
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            Some("application/jsonp"),
        ] {
            let case = format!("{} {content_type:?}", endpoint.path);
            let reply = send_raw(
                &s.app,
                Method::POST,
                endpoint.path,
                token,
                content_type,
                valid.clone(),
            )
            .await;
            assert_eq!(
                reply.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{case}: {}",
                reply.body
            );
            reply.assert_problem(415, "unsupported_media_type");
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn missing_fields_are_all_listed() {
    let s = setup().await;
    for endpoint in endpoints(&s.user, &s.peer) {
        let reply = post_json(&s.app, &endpoint, &s.user, &json!({})).await;
        assert_fields(
            &reply,
            endpoint.required,
            &format!("{} {{}}", endpoint.path),
        );
        s.assert_unchanged(endpoint.path).await;

        // Null counts as missing.
        let nulls: Map<String, Value> = endpoint
            .required
            .iter()
            .map(|field| ((*field).to_owned(), Value::Null))
            .collect();
        let reply = post_json(&s.app, &endpoint, &s.user, &Value::Object(nulls)).await;
        assert_fields(
            &reply,
            endpoint.required,
            &format!("{} nulls", endpoint.path),
        );
        s.assert_unchanged(endpoint.path).await;

        for field in endpoint.required {
            let case = format!("{} without {field}", endpoint.path);
            let reply =
                post_json(&s.app, &endpoint, &s.user, &without(&endpoint.valid, field)).await;
            assert_fields(&reply, &[field], &case);
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn unknown_fields_are_named() {
    let s = setup().await;
    for endpoint in endpoints(&s.user, &s.peer) {
        let case = format!("{} + bogus", endpoint.path);
        let reply = post_json(
            &s.app,
            &endpoint,
            &s.user,
            &with(&endpoint.valid, "bogus", json!(1)),
        )
        .await;
        assert_fields(&reply, &["bogus"], &case);
        s.assert_unchanged(&case).await;

        // Field names are case-sensitive: "Amount" is not "amount".
        let renamed_field = endpoint.required[0];
        let value = endpoint.valid[renamed_field].clone();
        let renamed = with(
            &without(&endpoint.valid, renamed_field),
            &renamed_field.to_uppercase(),
            value,
        );
        let case = format!("{} upper-case {renamed_field}", endpoint.path);
        let reply = post_json(&s.app, &endpoint, &s.user, &renamed).await;
        assert_fields(
            &reply,
            &[renamed_field, renamed_field.to_uppercase().as_str()],
            &case,
        );
        s.assert_unchanged(&case).await;
    }
    // Everything wrong at once is reported at once.
    let reply = s
        .app
        .post(
            "/api/v1/transactions/transfer",
            Some(&s.user.token),
            &json!({"amount": 0, "currency": "usd", "to_user_id": "nope", "extra": [], "zzz": {}}),
        )
        .await;
    assert_fields(
        &reply,
        &["amount", "currency", "to_user_id", "extra", "zzz"],
        "all at once",
    );
    s.finish().await;
}

#[actix_web::test]
async fn bad_amounts_are_422_naming_amount() {
    let s = setup().await;
    // Raw JSON for the amounts, so that the number forms reach the server exactly as written.
    let amounts = [
        "0",
        "-1",
        "-100",
        "12.5",
        "100.0",
        "\"100\"",
        "1e3",
        "1E3",
        "1000000000000001",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "99999999999999999999",
        "-99999999999999999999",
        "true",
        "[100]",
        "{\"minor\": 100}",
    ];
    for endpoint in money_endpoints(&s.user, &s.peer) {
        for amount in amounts {
            let mut object = endpoint.valid.as_object().unwrap().clone();
            object.remove("amount");
            let rest = serde_json::to_string(&Value::Object(object)).unwrap();
            let raw = format!("{{\"amount\": {amount}, {}", &rest[1..]);
            let case = format!("{} {raw}", endpoint.path);
            let reply = send_raw(
                &s.app,
                Method::POST,
                endpoint.path,
                Some(&s.user.token),
                Some("application/json"),
                raw.into_bytes(),
            )
            .await;
            assert_fields(&reply, &["amount"], &case);
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn bad_currencies_are_422_naming_currency() {
    let s = setup().await;
    for endpoint in money_endpoints(&s.user, &s.peer) {
        for currency in [
            json!("usd"),
            json!("Usd"),
            json!("ZZZ"),
            json!("XAU"),
            json!("US"),
            json!("USDD"),
            json!(" USD"),
            json!(""),
            json!(840),
            json!(["USD"]),
            json!({"code": "USD"}),
            json!(true),
        ] {
            let case = format!("{} currency {currency}", endpoint.path);
            let reply = post_json(
                &s.app,
                &endpoint,
                &s.user,
                &with(&endpoint.valid, "currency", currency),
            )
            .await;
            assert_fields(&reply, &["currency"], &case);
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn bad_transfer_recipients_are_422_naming_to_user_id() {
    let s = setup().await;
    let transfer = "/api/v1/transactions/transfer";
    for to in [
        json!(Uuid::now_v7()),
        json!(s.user.id),
        json!(Uuid::nil()),
        json!("not-a-uuid"),
        json!(s.peer.username),
        json!(12),
        json!([s.peer.id]),
    ] {
        let case = format!("to_user_id {to}");
        let reply = s
            .app
            .post(
                transfer,
                Some(&s.user.token),
                &json!({"to_user_id": to, "amount": 100, "currency": "USD"}),
            )
            .await;
        assert_fields(&reply, &["to_user_id"], &case);
        s.assert_unchanged(&case).await;
    }
    // Credits and debits take no recipient.
    for path in ["/api/v1/transactions/credit", "/api/v1/transactions/debit"] {
        let reply = s
            .app
            .post(
                path,
                Some(&s.user.token),
                &json!({"to_user_id": s.peer.id, "amount": 100, "currency": "USD"}),
            )
            .await;
        assert_fields(&reply, &["to_user_id"], path);
        s.assert_unchanged(path).await;
    }
    s.finish().await;
}

#[actix_web::test]
async fn bad_optional_text_fields_are_named() {
    let s = setup().await;
    for endpoint in money_endpoints(&s.user, &s.peer) {
        for (field, value) in [
            ("description", json!("x".repeat(501))),
            ("description", json!("line\nbreak")),
            ("description", json!(5)),
            ("reference", json!("")),
            ("reference", json!("r".repeat(129))),
            ("reference", json!({"a": 1})),
            ("user_id", json!("not-a-uuid")),
        ] {
            if field == "user_id" && endpoint.path.ends_with("transfer") {
                continue;
            }
            let case = format!("{} {field}={value}", endpoint.path);
            let reply = post_json(
                &s.app,
                &endpoint,
                &s.user,
                &with(&endpoint.valid, field, value),
            )
            .await;
            assert_fields(&reply, &[field], &case);
            s.assert_unchanged(&case).await;
        }
    }
    s.finish().await;
}

#[actix_web::test]
async fn bad_registrations_are_named_field_by_field() {
    let s = setup().await;
    let valid = json!({"username": "fine_name", "email": "fine@example.com", "password": "long enough password"});
    for (field, value) in [
        ("username", json!("ab")),
        ("username", json!("_leading")),
        ("username", json!("has space")),
        ("username", json!("a".repeat(33))),
        ("username", json!(12345)),
        ("email", json!("no-at-sign")),
        ("email", json!("a@b")),
        ("email", json!("a @example.com")),
        ("email", json!(["a@example.com"])),
        ("password", json!("short")),
        ("password", json!("p".repeat(129))),
        ("password", json!(12345678)),
    ] {
        let case = format!("register {field}={value}");
        let reply = s
            .app
            .post("/api/v1/auth/register", None, &with(&valid, field, value))
            .await;
        assert_fields(&reply, &[field], &case);
        s.assert_unchanged(&case).await;
    }
    for (field, value) in [("username", json!(1)), ("password", json!(["x"]))] {
        let case = format!("login {field}={value}");
        let reply = s
            .app
            .post(
                "/api/v1/auth/login",
                None,
                &with(
                    &json!({"username": s.user.username, "password": s.user.password}),
                    field,
                    value,
                ),
            )
            .await;
        assert_fields(&reply, &[field], &case);
    }
    let reply = s
        .app
        .post("/api/v1/auth/refresh", None, &json!({"refresh_token": 7}))
        .await;
    assert_fields(&reply, &["refresh_token"], "refresh_token=7");
    s.finish().await;
}

#[actix_web::test]
async fn bodies_over_the_limit_are_413() {
    let s = setup().await;
    assert_eq!(s.app.settings.http.body_limit_bytes, 65_536);
    let padding = "x".repeat(70 * 1024);
    for endpoint in endpoints(&s.user, &s.peer) {
        let field = if endpoint.auth {
            "description"
        } else {
            "padding"
        };
        let body = with(&endpoint.valid, field, json!(padding));
        let case = format!("{} 70 KB", endpoint.path);
        let reply = post_json(&s.app, &endpoint, &s.user, &body).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{case}: {}",
            reply.body
        );
        reply.assert_problem(413, "payload_too_large");
        s.assert_unchanged(&case).await;
    }
    // Just under the limit is read (and refused for what it says, not for its size).
    let endpoint = &money_endpoints(&s.user, &s.peer)[0];
    let body = with(&endpoint.valid, "description", json!("y".repeat(60 * 1024)));
    let reply = post_json(&s.app, endpoint, &s.user, &body).await;
    assert_fields(&reply, &["description"], "60 KB description");
    s.assert_unchanged("60 KB").await;
    s.finish().await;
}

#[actix_web::test]
async fn bad_idempotency_keys_are_422() {
    let s = setup().await;
    for endpoint in money_endpoints(&s.user, &s.peer) {
        for key in [
            "k".repeat(256),
            "k".repeat(300),
            String::new(),
            "has space".to_owned(),
            "tab\tinside".to_owned(),
        ] {
            let case = format!("{} key {key:?}", endpoint.path);
            let reply = s
                .app
                .request(
                    Method::POST,
                    endpoint.path,
                    Some(&s.user.token),
                    Some(&endpoint.valid),
                    Some(&key),
                )
                .await;
            assert_fields(&reply, &["Idempotency-Key"], &case);
            s.assert_unchanged(&case).await;
        }
        // A header value that is not ASCII at all.
        let response = s
            .app
            .http
            .post(format!("{}{}", s.app.address, endpoint.path))
            .bearer_auth(&s.user.token)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
            )
            .json(&endpoint.valid)
            .send()
            .await
            .expect("request sent");
        let reply = TestApp::checked_reply(&Method::POST, response).await;
        assert_fields(&reply, &["Idempotency-Key"], "non-ASCII key");
        s.assert_unchanged("non-ASCII key").await;
    }
    s.finish().await;
}

#[actix_web::test]
async fn bad_query_strings_are_422() {
    let s = setup().await;
    let history = "/api/v1/transactions/history";
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "query"),
        ("limit=1.5", "query"),
        ("limit=", "query"),
        ("cursor=garbage", "cursor"),
        ("cursor=", "cursor"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("foo=1", "query"),
        ("limit=5&foo=1", "query"),
        ("user_id=not-a-uuid", "query"),
    ] {
        let case = format!("history?{query}");
        let reply = s
            .app
            .get(&format!("{history}?{query}"), &s.user.token)
            .await;
        assert_fields(&reply, &[field], &case);
    }
    for (query, field) in [
        ("currency=usd", "currency"),
        ("currency=ZZZ", "currency"),
        ("currency=", "currency"),
        ("bogus=1", "query"),
        ("user_id=42", "query"),
    ] {
        let case = format!("balances?{query}");
        let reply = s
            .app
            .get(&format!("/api/v1/balances/current?{query}"), &s.user.token)
            .await;
        assert_fields(&reply, &[field], &case);
    }
    s.finish().await;
}

#[actix_web::test]
async fn unknown_routes_are_404_and_wrong_methods_405_problems() {
    let s = setup().await;
    let token = Some(s.user.token.as_str());
    for (method, path, token) in [
        (Method::GET, "/nope", None),
        (Method::POST, "/nope", None),
        (Method::GET, "/api/v2/transactions/history", token),
        (Method::GET, "/api/v1/nope", token),
        (Method::GET, "/api/v1/transactions", token),
        (Method::GET, "/api/v1/transactions/history/extra", token),
        (Method::GET, "/api/v1/balances/nope", token),
        (Method::GET, "/api/v1/auth/nope", None),
    ] {
        let reply = s.app.request(method.clone(), path, token, None, None).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.body
        );
        reply.assert_problem(404, "not_found");
    }
    for (method, path, token) in [
        (Method::GET, "/api/v1/transactions/credit", token),
        (Method::GET, "/api/v1/transactions/debit", token),
        (Method::PUT, "/api/v1/transactions/transfer", token),
        (Method::POST, "/api/v1/transactions/history", token),
        (Method::DELETE, "/api/v1/balances/current", token),
        (Method::GET, "/api/v1/auth/login", None),
        (Method::PUT, "/api/v1/auth/register", None),
        (Method::POST, "/health/live", None),
        (Method::DELETE, "/metrics", None),
    ] {
        let reply = s
            .app
            .request(method.clone(), path, token, Some(&json!({})), None)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            reply.body
        );
        assert_eq!(reply.content_type(), "application/problem+json");
        reply.assert_problem(405, "method_not_allowed");
        s.assert_unchanged(&format!("{method} {path}")).await;
    }
    s.finish().await;
}

/// Sends a chunked request (no Content-Length) over a plain TCP connection and returns the
/// status and the JSON body of the reply.
async fn send_chunked(app: &TestApp, path: &str, token: &str, body: &[u8]) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut request = head.into_bytes();
    for chunk in body.chunks(4096) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and stop reading before the body ends; that is its right.
    let _ = stream.write_all(&request).await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (head, rest) = text.split_once("\r\n\r\n").expect("a complete head");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let json = match (rest.find('{'), rest.rfind('}')) {
        (Some(start), Some(end)) => serde_json::from_str(&rest[start..=end]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, content_type, json)
}

#[actix_web::test]
async fn chunked_bodies_over_the_limit_are_413_too() {
    let s = setup().await;
    let body = serde_json::to_vec(&json!({
        "amount": 100, "currency": "USD", "description": "z".repeat(70 * 1024)
    }))
    .unwrap();
    for path in ["/api/v1/transactions/credit", "/api/v1/transactions/debit"] {
        let (status, content_type, problem) =
            send_chunked(&s.app, path, &s.user.token, &body).await;
        assert_eq!(status, 413, "{path}: {problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["code"], "payload_too_large", "{path}: {problem}");
        s.assert_unchanged(path).await;
    }
    // A small chunked body is read like any other.
    let small = serde_json::to_vec(&json!({"amount": 100, "currency": "USD"})).unwrap();
    let (status, _, reply) =
        send_chunked(&s.app, "/api/v1/transactions/debit", &s.user.token, &small).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["amount"], 100);
    assert_eq!(s.app.balance(&s.user, "USD").await, 900);
    s.app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn json_content_types_with_parameters_or_odd_case_are_accepted() {
    let s = setup().await;
    let body = serde_json::to_vec(&json!({"amount": 10, "currency": "USD"})).unwrap();
    for content_type in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ] {
        let reply = send_raw(
            &s.app,
            Method::POST,
            "/api/v1/transactions/credit",
            Some(&s.user.token),
            Some(content_type),
            body.clone(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{content_type}: {}",
            reply.body
        );
    }
    assert_eq!(s.app.balance(&s.user, "USD").await, 1_030);
    assert_eq!(s.app.assert_ledger_invariants().await, 4);
}

/// PostgreSQL cannot store a NUL character (U+0000) in `text` or `jsonb`: every text field of
/// every request refuses one with a 422 naming the field, instead of failing in the database
/// with a 500 (found by fuzzing: `POST /auth/login` with a NUL in `username`).
#[actix_web::test]
async fn text_fields_with_a_nul_character_are_422_naming_the_field() {
    let s = setup().await;
    let nul = |text: &str| Value::String(format!("{text}\u{0}{text}"));

    let login = json!({"username": nul(&s.user.username), "password": s.user.password});
    let reply = s.app.post("/api/v1/auth/login", None, &login).await;
    assert_fields(&reply, &["username"], "login username");
    let login = json!({"username": s.user.username, "password": nul("correct horse")});
    let reply = s.app.post("/api/v1/auth/login", None, &login).await;
    assert_fields(&reply, &["password"], "login password");
    // A login name longer than any username or email (the failed-login counter is keyed by
    // it, and a few kilobytes do not fit its index).
    let long: String = (0..400).map(|i| format!("{i:x}")).collect();
    let login = json!({"username": long, "password": "correct horse"});
    let reply = s.app.post("/api/v1/auth/login", None, &login).await;
    assert_fields(&reply, &["username"], "login username of 1,000 characters");

    let register = json!({
        "username": nul("newcomer"),
        "email": nul("newcomer@example.com"),
        "password": nul("long enough password"),
    });
    let reply = s.app.post("/api/v1/auth/register", None, &register).await;
    assert_fields(&reply, &["username", "email", "password"], "register");

    let update = json!({"email": nul("new@example.com"), "password": nul("another long password")});
    let reply = s
        .app
        .request(
            Method::PUT,
            &format!("/api/v1/users/{}", s.user.id),
            Some(&s.user.token),
            Some(&update),
            None,
        )
        .await;
    assert_fields(&reply, &["email", "password"], "user update");

    let refresh = json!({"refresh_token": nul("token")});
    let reply = s.app.post("/api/v1/auth/refresh", None, &refresh).await;
    assert_fields(&reply, &["refresh_token"], "refresh");

    for endpoint in money_endpoints(&s.user, &s.peer) {
        let body = with(
            &with(&endpoint.valid, "description", nul("rent")),
            "reference",
            nul("INV-1"),
        );
        let reply = post_json(&s.app, &endpoint, &s.user, &body).await;
        assert_fields(&reply, &["description", "reference"], endpoint.path);
    }
    s.assert_unchanged("NUL characters").await;
    s.finish().await;
}

/// RFC 3339 years have four digits: an instant outside years 0000 to 9999 in UTC (reachable
/// through an offset) could not be answered as RFC 3339, so it is refused with a 422 naming the
/// parameter (found by fuzzing: `at=9999-12-31T23:59:59-23:59` was echoed as
/// `+10000-01-01T23:58:59Z`).
#[actix_web::test]
async fn instants_outside_years_0000_to_9999_are_422_naming_the_parameter() {
    let s = setup().await;
    let get = |path: String| {
        let (app, token) = (&s.app, s.user.token.clone());
        async move { app.get(&path, &token).await }
    };
    // `+` must be sent percent-encoded in a query string.
    let late = "9999-12-31T23:59:59-23:59";
    let early = "0000-01-01T00:00:00%2B00:01";
    for at in [late, early] {
        let reply = get(format!("/api/v1/balances/at-time?currency=USD&at={at}")).await;
        assert_fields(&reply, &["at"], &format!("at-time at={at}"));
    }
    for (query, field) in [
        (format!("from={early}&to=2024-01-01T00:00:00Z"), "from"),
        (format!("from=2024-01-01T00:00:00Z&to={late}"), "to"),
        // Every instant is within range, but the last day would end in year 10000.
        (
            "from=9999-12-30T00:00:00Z&to=9999-12-31T12:00:00Z&interval=day".to_owned(),
            "to",
        ),
        (
            "from=9999-12-31T22:00:00Z&to=9999-12-31T23:30:00Z&interval=hour".to_owned(),
            "to",
        ),
    ] {
        let reply = get(format!("/api/v1/balances/historical?currency=USD&{query}")).await;
        assert_fields(&reply, &[field], &format!("historical {query}"));
    }
    let reply = get(format!("/api/v1/transactions/history?to={late}")).await;
    assert_fields(&reply, &["to"], "history to");

    // The edges themselves are fine, and answered as they were asked.
    let reply =
        get("/api/v1/balances/at-time?currency=USD&at=9999-12-31T23:59:59Z".to_owned()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["at"], "9999-12-31T23:59:59Z");
    assert_eq!(reply.body["amount"], 1_000);
    let reply =
        get("/api/v1/balances/at-time?currency=USD&at=0000-01-01T00:00:00Z".to_owned()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["at"], "0000-01-01T00:00:00Z");
    assert_eq!(reply.body["amount"], 0);
    let reply = get("/api/v1/balances/historical?currency=USD&interval=day\
         &from=9999-12-30T00:00:00Z&to=9999-12-31T00:00:00Z"
        .to_owned())
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["items"][0]["end"], "9999-12-31T00:00:00Z");
    let reply = get("/api/v1/balances/historical?currency=USD&interval=hour\
         &from=9999-12-31T22:00:00Z&to=9999-12-31T23:00:00Z"
        .to_owned())
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["items"][0]["end"], "9999-12-31T23:00:00Z");
    s.finish().await;
}
