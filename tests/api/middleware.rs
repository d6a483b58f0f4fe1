//! The middleware stack (issue 3): request ids, security headers, CORS, rate limiting per client
//! IP and per user, login lockout, problem+json for every error, the "not yet valid" token, and
//! the JSON access log of the real binary.

use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const PROTECTED: &str = "/api/v1/balances/current";
const REGISTER: &str = "/api/v1/auth/register";
const LOGIN: &str = "/api/v1/auth/login";
const ORIGIN: &str = "https://app.example";
/// Bound on waiting for a limit or a lock to lift (configured to 1 s in these tests).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(10);
/// Spacing of the attempts while polling for recovery.
const POLL_PAUSE: Duration = Duration::from_millis(50);

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..10])
}

async fn with_request_id(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    request_id: &str,
) -> Reply {
    app.request_with(method, path, token, body, &[("X-Request-Id", request_id)])
        .await
}

async fn login(app: &TestApp, username: &str, password: &str) -> Reply {
    app.post(
        LOGIN,
        None,
        &json!({"username": username, "password": password}),
    )
    .await
}

/// `Retry-After` as whole seconds; asserts it is there and sensible.
#[track_caller]
fn retry_after(reply: &Reply) -> u64 {
    let value = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("a 429 says when to retry; headers: {:?}", reply.headers));
    let seconds: u64 = value.parse().expect("Retry-After is whole seconds");
    assert!(
        (1..=60).contains(&seconds),
        "Retry-After {seconds} s for a 1 s window"
    );
    seconds
}

/// Sends `attempt` until its status is not `blocked`, at most until `RECOVERY_DEADLINE`;
/// returns the first other reply and how long it took.
async fn poll_until_not<F, Fut>(blocked: StatusCode, mut attempt: F) -> (Reply, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let started = Instant::now();
    loop {
        let reply = attempt().await;
        if reply.status != blocked {
            return (reply, started.elapsed());
        }
        assert!(
            started.elapsed() < RECOVERY_DEADLINE,
            "still {blocked} after {RECOVERY_DEADLINE:?}: {}",
            reply.body
        );
        // Polling with a bounded deadline; the pause only spaces the attempts.
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Sends `attempt` until it is refused with 429, and returns the refusal and how many passed
/// before it: at least `at_least` (what is left of the burst), at most `capacity` (a full
/// bucket) plus one per second elapsed (the sustained rate of these tests), so the count does
/// not depend on how fast the machine is.
async fn until_limited<F, Fut>(at_least: u32, capacity: u32, mut attempt: F) -> (Reply, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let started = Instant::now();
    let mut passed = 0;
    loop {
        let reply = attempt().await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            let refill = started.elapsed().as_secs() as u32 + 1;
            assert!(
                passed >= at_least && passed <= capacity + refill,
                "{passed} requests passed before the limit (expected {at_least} to {capacity} \
                 plus 1/s, {:?} elapsed)",
                started.elapsed()
            );
            return (reply, passed);
        }
        assert!(reply.status.as_u16() < 500, "{}", reply.body);
        passed += 1;
        assert!(
            passed <= capacity + 10,
            "never limited after {passed} requests"
        );
    }
}

#[actix_web::test]
async fn request_ids_are_echoed_or_generated_and_bad_ones_replaced() {
    let app = TestApp::spawn().await;
    let user = app.user("rid").await;
    let token = Some(user.token.as_str());
    let bad_login = json!({"username": "nobody-here", "password": "wrong password"});
    // Echoed on successes and on every kind of error, inside and outside /api/v1.
    for (method, path, token, body, status) in [
        (Method::GET, PROTECTED, token, None, 200),
        (Method::GET, PROTECTED, None, None, 401),
        (Method::GET, "/api/v1/nope", token, None, 404),
        (Method::DELETE, LOGIN, None, None, 405),
        (Method::POST, LOGIN, None, Some(&bad_login), 401),
        (Method::GET, "/health/live", None, None, 200),
        (Method::GET, "/nope", None, None, 404),
    ] {
        let id = format!("client-{}", Uuid::new_v4());
        let reply = with_request_id(&app, method.clone(), path, token, body, &id).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path}: {}",
            reply.body
        );
        assert_eq!(
            reply.header("x-request-id"),
            Some(id.as_str()),
            "{method} {path} → {status}: the request id is echoed"
        );
    }
    // The longest accepted id, and visible ASCII punctuation.
    for id in ["r".repeat(128), "a.b_c-d:e/f=g+h@i".to_owned()] {
        let reply = with_request_id(&app, Method::GET, PROTECTED, token, None, &id).await;
        assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
    }

    // None sent: a fresh UUID each time.
    let mut generated = Vec::new();
    for _ in 0..2 {
        let reply = app.get(PROTECTED, &user.token).await;
        let id = reply
            .header("x-request-id")
            .expect("a generated request id");
        generated.push(Uuid::parse_str(id).expect("a UUID"));
    }
    assert_ne!(generated[0], generated[1]);

    // Invalid ones are replaced by a generated UUID (never echoed into logs or replies).
    for id in [
        "r".repeat(129),
        "x".repeat(200),
        "has space".into(),
        String::new(),
    ] {
        let reply = with_request_id(&app, Method::GET, PROTECTED, token, None, &id).await;
        assert_eq!(reply.status, StatusCode::OK);
        let echoed = reply.header("x-request-id").expect("a request id");
        assert_ne!(echoed, id);
        Uuid::parse_str(echoed).unwrap_or_else(|_| panic!("{id:?} replaced by {echoed:?}"));
    }
    let response = app
        .http
        .get(format!("{}{PROTECTED}", app.address))
        .bearer_auth(&user.token)
        .header(
            "X-Request-Id",
            HeaderValue::from_bytes("clé-1".as_bytes()).unwrap(),
        )
        .send()
        .await
        .expect("request sent");
    let reply = TestApp::checked_reply(&Method::GET, response).await;
    Uuid::parse_str(reply.header("x-request-id").expect("a request id"))
        .expect("a non-ASCII id is replaced by a UUID");
}

#[track_caller]
fn assert_api_security_headers(reply: &Reply, case: &str) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(
            reply.header(name),
            Some(value),
            "{case}: {name}; headers: {:?}",
            reply.headers
        );
    }
}

#[actix_web::test]
async fn api_replies_carry_security_headers_and_the_docs_a_csp() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.enabled = true;
        settings.rate_limit.api_per_second = 1;
        settings.rate_limit.api_burst = 1;
    })
    .await;
    let user = app.user("headers").await;
    let name = unique("hdr");
    let big = json!({"email": "x".repeat(70 * 1024)});
    let cases: Vec<(&str, Method, String, Option<&str>, Option<Value>, u16)> = vec![
        (
            "balances",
            Method::GET,
            PROTECTED.into(),
            Some(&user.token),
            None,
            200,
        ),
        (
            "register",
            Method::POST,
            REGISTER.into(),
            None,
            Some(
                json!({"username": name, "email": format!("{name}@example.com"), "password": "long enough pw"}),
            ),
            201,
        ),
        ("no token", Method::GET, PROTECTED.into(), None, None, 401),
        (
            "unknown route",
            Method::GET,
            "/api/v1/auth/nope".into(),
            None,
            None,
            404,
        ),
        (
            "wrong method",
            Method::DELETE,
            LOGIN.into(),
            None,
            None,
            405,
        ),
        (
            "too large",
            Method::POST,
            LOGIN.into(),
            None,
            Some(big),
            413,
        ),
        (
            "invalid",
            Method::POST,
            LOGIN.into(),
            None,
            Some(json!({"username": 1})),
            422,
        ),
    ];
    for (case, method, path, token, body, status) in cases {
        let reply = app.request(method, &path, token, body.as_ref(), None).await;
        assert_eq!(reply.status.as_u16(), status, "{case}: {}", reply.body);
        assert_api_security_headers(&reply, case);
        assert!(
            reply.header("content-security-policy").is_none(),
            "{case}: the CSP is for the docs page"
        );
    }

    let (limited, _) = until_limited(0, 1, || app.get(PROTECTED, &user.token)).await;
    limited.assert_problem(429, "rate_limited");
    assert_api_security_headers(&limited, "rate limited");

    // Swagger UI: a Content Security Policy that only allows the page's own resources, on the
    // page, its assets, and its errors.
    let client = reqwest::Client::new();
    for (path, status) in [
        ("/docs/", 200),
        ("/docs/swagger-ui.css", 200),
        ("/docs/swagger-initializer.js", 200),
        ("/docs/no-such-file.js", 404),
    ] {
        let response = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("request sent");
        let reply = TestApp::reply(response).await;
        assert_eq!(reply.status.as_u16(), status, "{path}");
        let csp = reply
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: a CSP; headers {:?}", reply.headers));
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp}");
        }
        assert!(!csp.contains("http"), "{path}: no outside origin in {csp}");
        assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
}

#[actix_web::test]
async fn cors_allows_the_configured_origin_only() {
    let app = TestApp::spawn_with(|settings| {
        settings.http.cors_allowed_origins = vec![ORIGIN.to_owned()];
    })
    .await;
    let user = app.user("cors").await;
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let app = &app;
        async move {
            let response = app
                .http
                .request(
                    Method::OPTIONS,
                    format!("{}/api/v1/transactions/credit", app.address),
                )
                .header("Origin", origin)
                .header("Access-Control-Request-Method", method)
                .header("Access-Control-Request-Headers", headers)
                .send()
                .await
                .expect("request sent");
            TestApp::reply(response).await
        }
    };
    let list = |reply: &Reply, name: &str| -> Vec<String> {
        reply
            .header(name)
            .unwrap_or("")
            .split(',')
            .map(|item| item.trim().to_ascii_lowercase())
            .filter(|item| !item.is_empty())
            .collect()
    };

    // A preflight from the allowed origin, for every method and header the API uses; no
    // token needed.
    for method in ["POST", "GET", "PUT", "DELETE"] {
        let reply = preflight(
            ORIGIN,
            method,
            "authorization, content-type, idempotency-key, x-request-id",
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "preflight {method}: {:?}",
            reply.headers
        );
        assert_eq!(reply.header("access-control-allow-origin"), Some(ORIGIN));
        let methods = list(&reply, "access-control-allow-methods");
        assert!(
            methods.contains(&method.to_ascii_lowercase()),
            "{methods:?}"
        );
        let headers = list(&reply, "access-control-allow-headers");
        for header in [
            "authorization",
            "content-type",
            "idempotency-key",
            "x-request-id",
        ] {
            assert!(
                headers.contains(&header.to_owned()),
                "{header} in {headers:?}"
            );
        }
        assert_eq!(reply.header("access-control-max-age"), Some("3600"));
        assert!(reply.header("access-control-allow-credentials").is_none());
    }
    // Refused: another origin, a method or a header the API does not use.
    for (origin, method, headers) in [
        (
            "https://evil.example",
            "POST",
            "authorization, content-type",
        ),
        ("http://app.example", "POST", "content-type"),
        ("https://app.example.evil.example", "GET", "authorization"),
        (ORIGIN, "PATCH", "content-type"),
        (ORIGIN, "POST", "x-evil"),
    ] {
        let reply = preflight(origin, method, headers).await;
        assert!(
            !reply.status.is_success(),
            "preflight {origin} {method} {headers}: {}",
            reply.status
        );
        assert_eq!(
            reply.header("access-control-allow-origin"),
            None,
            "preflight {origin} {method} {headers}"
        );
    }

    // Simple requests from the allowed origin: the reply is readable by the page, errors too,
    // and the headers clients need are exposed.
    let id = format!("cors-{}", Uuid::new_v4());
    for (token, status) in [(Some(user.token.as_str()), 200), (None, 401)] {
        let reply = app
            .request_with(
                Method::GET,
                PROTECTED,
                token,
                None,
                &[("Origin", ORIGIN), ("X-Request-Id", id.as_str())],
            )
            .await;
        assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some(ORIGIN),
            "{status}: {:?}",
            reply.headers
        );
        let exposed = list(&reply, "access-control-expose-headers");
        for header in [
            "x-request-id",
            "location",
            "retry-after",
            "idempotent-replayed",
        ] {
            assert!(
                exposed.contains(&header.to_owned()),
                "{header} in {exposed:?}"
            );
        }
        assert!(list(&reply, "vary").contains(&"origin".to_owned()));
    }
    // From another origin the page may not read the reply.
    let response = app
        .http
        .get(format!("{}{PROTECTED}", app.address))
        .bearer_auth(&user.token)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("request sent");
    let reply = TestApp::checked_reply(&Method::GET, response).await;
    assert_eq!(reply.header("access-control-allow-origin"), None);

    // With no origins configured (the default), every preflight is refused.
    let closed = TestApp::spawn().await;
    let response = closed
        .http
        .request(Method::OPTIONS, format!("{}{PROTECTED}", closed.address))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .expect("request sent");
    let reply = TestApp::reply(response).await;
    assert!(!reply.status.is_success(), "{}", reply.status);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[actix_web::test]
async fn auth_routes_are_rate_limited_per_client_ip_and_recover() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.enabled = true;
        settings.rate_limit.auth_per_second = 1;
        settings.rate_limit.auth_burst = 3;
    })
    .await;
    let name = unique("burst");
    let password = "long enough password";
    let register = |name: String| {
        let app = &app;
        async move {
            app.post(
                REGISTER,
                None,
                &json!({"username": name, "email": format!("{name}@example.com"), "password": password}),
            )
            .await
        }
    };
    // The burst: requests of any kind on /auth/* pass, whatever they answer (a login of an
    // unknown user, an invalid body), until the burst of 3 is spent.
    assert_eq!(register(name.clone()).await.status, StatusCode::CREATED);
    let session = login(&app, &name, password).await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    let mut kinds = 0;
    let (refused, _) = until_limited(1, 3, || {
        kinds += 1;
        let app = &app;
        async move {
            if kinds % 2 == 1 {
                login(app, &unique("nobody"), password).await
            } else {
                app.post(LOGIN, None, &json!({"username": 1})).await
            }
        }
    })
    .await;
    let users = app.row_counts().await.users;

    // Then every /auth/* route is refused, and nothing is done.
    refused.assert_problem(429, "rate_limited");
    retry_after(&refused);
    let late = register(unique("late")).await;
    late.assert_problem(429, "rate_limited");
    for (path, body) in [
        (LOGIN, json!({"username": name, "password": password})),
        (
            "/api/v1/auth/refresh",
            json!({"refresh_token": session.body["refresh_token"]}),
        ),
        (
            "/api/v1/auth/logout",
            json!({"refresh_token": session.body["refresh_token"]}),
        ),
    ] {
        let reply = app.post(path, None, &body).await;
        reply.assert_problem(429, "rate_limited");
        retry_after(&reply);
    }
    assert_eq!(
        app.row_counts().await.users,
        users,
        "the refused register wrote nothing"
    );
    // The rest of the API has its own, per-user limit.
    let token = session.body["access_token"].as_str().unwrap();
    assert_eq!(app.get(PROTECTED, token).await.status, StatusCode::OK);

    // It recovers after the window, at the configured rate: one request per second.
    let (reply, waited) = poll_until_not(StatusCode::TOO_MANY_REQUESTS, || {
        login(&app, &name, password)
    })
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        waited < Duration::from_secs(3),
        "recovered after {waited:?}"
    );
    let mut passed = 0;
    while login(&app, &name, password).await.status == StatusCode::OK {
        passed += 1;
        assert!(passed <= 3, "the limit applies again after the recovery");
    }
}

#[actix_web::test]
async fn the_api_is_rate_limited_per_user() {
    let app = TestApp::spawn_with(|settings| {
        settings.rate_limit.enabled = true;
        settings.rate_limit.api_per_second = 1;
        settings.rate_limit.api_burst = 3;
    })
    .await;
    let alice = app.user("busy").await;
    let bob = app.user("calm").await;
    let (limited, _) = until_limited(3, 3, || app.get(PROTECTED, &alice.token)).await;
    let counts = app.row_counts().await;
    limited.assert_problem(429, "rate_limited");
    retry_after(&limited);
    let credit = app
        .post(
            "/api/v1/transactions/credit",
            Some(&alice.token),
            &json!({"amount": 5, "currency": "USD"}),
        )
        .await;
    credit.assert_problem(429, "rate_limited");
    let users = app
        .get(&format!("/api/v1/users/{}", alice.id), &alice.token)
        .await;
    users.assert_problem(429, "rate_limited");
    assert_eq!(
        app.row_counts().await,
        counts,
        "a limited request writes nothing"
    );

    // Another user, and alice's own logins (limited per IP, not per user), are unaffected.
    for _ in 0..3 {
        assert_eq!(app.get(PROTECTED, &bob.token).await.status, StatusCode::OK);
    }
    assert_eq!(
        login(&app, &alice.username, &alice.password).await.status,
        StatusCode::OK
    );

    let (reply, waited) = poll_until_not(StatusCode::TOO_MANY_REQUESTS, || {
        app.get(PROTECTED, &alice.token)
    })
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        waited < Duration::from_secs(3),
        "recovered after {waited:?}"
    );
}

#[actix_web::test]
async fn repeated_failed_logins_lock_the_username_for_the_configured_time() {
    let app = TestApp::spawn_with(|settings| {
        settings.auth.lockout_threshold = 3;
        settings.auth.lockout_duration_s = 1;
    })
    .await;
    let user = app.user("target").await;
    let bystander = app.user("bystander").await;

    for _ in 0..3 {
        login(&app, &user.username, "wrong password")
            .await
            .assert_problem(401, "unauthorized");
    }
    // Locked: even the right password is refused, under any spelling of the name, and through
    // the account's email too (one counter per account, so the email gives no extra guesses).
    let email = format!("{}@example.com", user.username);
    for name in [user.username.clone(), user.username.to_uppercase(), email] {
        let locked = login(&app, &name, &user.password).await;
        locked.assert_problem(429, "login_locked");
        assert!(locked.body.get("access_token").is_none());
        retry_after(&locked);
    }
    // Other users are not locked out.
    assert_eq!(
        login(&app, &bystander.username, &bystander.password)
            .await
            .status,
        StatusCode::OK
    );

    // After the lock's duration the right password works again...
    let (reply, waited) = poll_until_not(StatusCode::TOO_MANY_REQUESTS, || {
        login(&app, &user.username, &user.password)
    })
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(waited < Duration::from_secs(3), "unlocked after {waited:?}");
    // ... and a success forgets earlier failures: two more do not lock. Failures through the
    // email count on the same account: one more by email then locks it.
    for _ in 0..2 {
        login(&app, &user.username, "wrong password")
            .await
            .assert_problem(401, "unauthorized");
    }
    assert_eq!(
        login(&app, &user.username, &user.password).await.status,
        StatusCode::OK
    );
    for _ in 0..2 {
        login(&app, &user.username, "wrong password")
            .await
            .assert_problem(401, "unauthorized");
    }
    login(
        &app,
        &format!("{}@example.com", user.username),
        "wrong password",
    )
    .await
    .assert_problem(401, "unauthorized");
    login(&app, &user.username, &user.password)
        .await
        .assert_problem(429, "login_locked");
    let (reply, _) = poll_until_not(StatusCode::TOO_MANY_REQUESTS, || {
        login(&app, &user.username, &user.password)
    })
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for _ in 0..2 {
        login(&app, &user.username, "wrong password")
            .await
            .assert_problem(401, "unauthorized");
    }
    assert_eq!(
        login(&app, &user.username, &user.password).await.status,
        StatusCode::OK
    );

    // An unknown username locks the same way (a lock says nothing about whether it exists).
    let ghost = unique("ghost");
    for _ in 0..3 {
        login(&app, &ghost, "whatever password")
            .await
            .assert_problem(401, "unauthorized");
    }
    let locked = login(&app, &ghost, "whatever password").await;
    locked.assert_problem(429, "login_locked");
    retry_after(&locked);
    let (reply, _) = poll_until_not(StatusCode::TOO_MANY_REQUESTS, || {
        login(&app, &ghost, "whatever password")
    })
    .await;
    reply.assert_problem(401, "unauthorized");
}

#[actix_web::test]
async fn every_error_is_problem_json() {
    let app = TestApp::spawn().await;
    let user = app.user("errors").await;
    let token = Some(user.token.as_str());
    let me = format!("/api/v1/users/{}", user.id);
    let big = json!({"email": "y".repeat(70 * 1024)});
    let before = app.row_counts().await;
    for (method, path, token, body, status, code) in [
        (
            Method::GET,
            "/nope".to_owned(),
            None,
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/nope".to_owned(),
            token,
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/users/me/extra".to_owned(),
            token,
            None,
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            me.clone(),
            token,
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            me.clone(),
            token,
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            "/api/v1/transactions/history".to_owned(),
            token,
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/openapi.json".to_owned(),
            None,
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/users/not-a-uuid".to_owned(),
            token,
            None,
            404,
            "not_found",
        ),
        (
            Method::PUT,
            "/api/v1/users/123".to_owned(),
            token,
            Some(&json!({"email": "a@b.example"})),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/users/xyz".to_owned(),
            token,
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/transactions/not-a-uuid".to_owned(),
            token,
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/transactions/history?limit=abc".to_owned(),
            token,
            None,
            422,
            "validation_failed",
        ),
        (
            Method::GET,
            "/api/v1/users?limit=abc".to_owned(),
            token,
            None,
            422,
            "validation_failed",
        ),
        (
            Method::GET,
            "/api/v1/balances/current?user_id=1".to_owned(),
            token,
            None,
            422,
            "validation_failed",
        ),
        (
            Method::PUT,
            me.clone(),
            token,
            Some(&big),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            LOGIN.to_owned(),
            None,
            Some(&big),
            413,
            "payload_too_large",
        ),
        (
            Method::PUT,
            me.clone(),
            token,
            Some(&json!([1])),
            400,
            "malformed_request",
        ),
        (
            Method::PUT,
            me.clone(),
            token,
            Some(&json!({"nope": 1})),
            422,
            "validation_failed",
        ),
    ] {
        let reply = app.request(method.clone(), &path, token, body, None).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path}: {}",
            reply.body
        );
        reply.assert_problem(status, code);
    }
    // Not JSON at all, and the wrong content type, on PUT too.
    for (content_type, body, status, code) in [
        ("application/json", "{not json", 400, "malformed_request"),
        (
            "text/plain",
            "{\"email\": \"a@b.example\"}",
            415,
            "unsupported_media_type",
        ),
    ] {
        let response = app
            .http
            .put(format!("{}{me}", app.address))
            .bearer_auth(&user.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let reply = TestApp::checked_reply(&Method::PUT, response).await;
        reply.assert_problem(status, code);
    }
    assert_eq!(app.row_counts().await, before);
}

#[actix_web::test]
async fn tokens_that_are_not_yet_valid_are_401() {
    let app = TestApp::spawn().await;
    let user = app.user("early").await;
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(app.settings.auth.jwt_secret.as_bytes()),
        )
        .expect("sign")
    };
    // The crafting is right: the same claims valid now are accepted.
    let valid = sign(
        json!({"sub": user.id, "role": "user", "iat": now - 10, "nbf": now - 10, "exp": now + 900}),
    );
    assert_eq!(app.get(PROTECTED, &valid).await.status, StatusCode::OK);
    for (case, claims) in [
        (
            "nbf in an hour",
            json!({"sub": user.id, "role": "user", "iat": now, "nbf": now + 3600, "exp": now + 7200}),
        ),
        (
            "nbf and iat in an hour",
            json!({"sub": user.id, "role": "user", "iat": now + 3600, "nbf": now + 3600, "exp": now + 7200}),
        ),
        (
            "issued in an hour",
            json!({"sub": user.id, "role": "user", "iat": now + 3600, "exp": now + 7200}),
        ),
    ] {
        let reply = app.get(PROTECTED, &sign(claims)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            reply.body
        );
        reply.assert_problem(401, "unauthorized");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{case}");
    }
}

/// The access log lines (target `tally::access`) of `service` with `request_id`.
fn access_lines(service: &crate::process::Service, request_id: &str) -> Vec<Value> {
    service
        .recent_events()
        .into_iter()
        .filter(|event| event["target"] == "tally::access" && event["request_id"] == request_id)
        .collect()
}

#[actix_web::test]
async fn the_binary_writes_a_json_access_line_per_request() {
    let database_url = test_settings().database.url;
    let service = crate::process::Service::start(&database_url).await;
    let app = service.app(&database_url);
    let user = app.user("logged").await;
    let credit = app.credit(&user, 100, "USD").await;
    let transaction = credit["id"].as_str().unwrap();
    let user_id = user.id.to_string();

    let cases = [
        (
            Method::GET,
            format!("/api/v1/transactions/{transaction}"),
            Some(user.token.as_str()),
            200,
            "/api/v1/transactions/{id}",
            user_id.as_str(),
        ),
        (
            Method::GET,
            format!("/api/v1/users/{}", user.id),
            Some(user.token.as_str()),
            200,
            "/api/v1/users/{id}",
            user_id.as_str(),
        ),
        (Method::GET, PROTECTED.to_owned(), None, 401, PROTECTED, "-"),
        (
            Method::GET,
            "/health/live".to_owned(),
            None,
            200,
            "/health/live",
            "-",
        ),
    ];
    let mut ids = Vec::new();
    for (method, path, token, status, _, _) in &cases {
        let id = format!("access-{}", Uuid::new_v4());
        let reply = with_request_id(&app, method.clone(), path, *token, None, &id).await;
        assert_eq!(reply.status.as_u16(), *status, "{path}: {}", reply.body);
        ids.push(id);
    }

    // The lines are read from the child's stdout by another thread: wait for them, bounded.
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    for ((method, path, _, status, route, user), id) in cases.iter().zip(&ids) {
        let line = loop {
            if let Some(line) = access_lines(&service, id).pop() {
                break line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no access line for {method} {path} ({id}); last lines:\n{}",
                    service.recent_logs()
                );
            }
            tokio::time::sleep(POLL_PAUSE).await;
        };
        assert_eq!(access_lines(&service, id).len(), 1, "one line per request");
        assert_eq!(line["method"], method.as_str(), "{line}");
        assert_eq!(line["route"], *route, "the route template: {line}");
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["user_id"], *user, "{line}");
        assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        let duration = line["duration_ms"]
            .as_f64()
            .expect("duration_ms is a number");
        assert!((0.0..60_000.0).contains(&duration), "{line}");
    }
}
