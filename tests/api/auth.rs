//! Registration, login, refresh-token rotation and bearer-token checks (DESIGN.md section 4).

use std::collections::BTreeSet;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally::auth::{Claims, JwtKeys};
use tally::domain::{Role, UserId, SYSTEM_USER_ID};
use uuid::Uuid;

use crate::helpers::*;

const PASSWORD: &str = "correct horse battery";
const REGISTER: &str = "/api/v1/auth/register";
const LOGIN: &str = "/api/v1/auth/login";
const REFRESH: &str = "/api/v1/auth/refresh";
/// A route that requires a bearer token and writes nothing.
const PROTECTED: &str = "/api/v1/balances/current";

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..10])
}

fn keys(body: &Value) -> BTreeSet<String> {
    body.as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

async fn register(app: &TestApp, username: &str, email: &str) -> Reply {
    app.post(
        REGISTER,
        None,
        &json!({"username": username, "email": email, "password": PASSWORD}),
    )
    .await
}

async fn login(app: &TestApp, login: &str, password: &str) -> Reply {
    app.post(
        LOGIN,
        None,
        &json!({"username": login, "password": password}),
    )
    .await
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Reply {
    app.post(REFRESH, None, &json!({"refresh_token": refresh_token}))
        .await
}

/// Asserts a token reply of login or refresh and returns (access, refresh).
#[track_caller]
fn assert_tokens(app: &TestApp, reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.body);
    assert!(
        reply.content_type().starts_with("application/json"),
        "{}",
        reply.content_type()
    );
    assert_eq!(
        keys(&reply.body),
        set(&["access_token", "refresh_token", "token_type", "expires_in"])
    );
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(
        reply.body["expires_in"].as_u64(),
        Some(app.settings.auth.access_token_ttl_s)
    );
    let access = reply.body["access_token"].as_str().expect("access_token");
    let refresh = reply.body["refresh_token"].as_str().expect("refresh_token");
    assert_eq!(access.split('.').count(), 3, "a JWT: {access}");
    assert!(refresh.len() >= 32, "an opaque token: {refresh}");
    (access.to_owned(), refresh.to_owned())
}

/// The user id the API sees for this access token (via a protected route).
async fn whoami(app: &TestApp, access_token: &str) -> Reply {
    app.get(PROTECTED, access_token).await
}

#[track_caller]
fn assert_unauthorized(reply: &Reply) {
    reply.assert_problem(401, "unauthorized");
    assert_eq!(
        reply
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer"),
        "a 401 must carry WWW-Authenticate, headers: {:?}",
        reply.headers
    );
}

#[actix_web::test]
async fn register_returns_the_user_without_any_password() {
    let app = TestApp::spawn().await;
    let username = unique("Reg");
    let email = format!("{username}@Example.com");
    let before = app.row_counts().await;

    let reply = register(&app, &username, &email).await;

    assert_eq!(reply.status, StatusCode::CREATED, "body: {}", reply.body);
    assert!(reply.content_type().starts_with("application/json"));
    assert_eq!(
        keys(&reply.body),
        set(&[
            "id",
            "username",
            "email",
            "role",
            "created_at",
            "updated_at",
            "deleted_at"
        ])
    );
    assert!(reply.body["deleted_at"].is_null());
    let id = Uuid::parse_str(reply.body["id"].as_str().unwrap()).expect("a UUID id");
    assert_eq!(reply.body["username"], username.as_str());
    assert_eq!(reply.body["email"], email.as_str());
    assert_eq!(reply.body["role"], "user");
    for field in ["created_at", "updated_at"] {
        let text = reply.body[field].as_str().expect("a timestamp string");
        chrono::DateTime::parse_from_rfc3339(text).expect("an RFC 3339 timestamp");
    }
    let raw = reply.body.to_string().to_lowercase();
    assert!(!raw.contains("password"), "no password field: {raw}");
    assert!(!raw.contains("argon2"), "no password hash: {raw}");
    assert!(!raw.contains(PASSWORD), "no clear text: {raw}");
    assert_eq!(
        reply.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/api/v1/users/{id}").as_str())
    );

    let after = app.row_counts().await;
    assert_eq!(after.users, before.users + 1);
    let db = app.db().await;
    let row = db
        .query_one(
            "SELECT username, password_hash, role FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the user row");
    assert_eq!(row.get::<_, String>(0), username);
    let hash: String = row.get(1);
    assert!(hash.starts_with("$argon2id$"), "stored as argon2id: {hash}");
    assert!(!hash.contains(PASSWORD));
    assert_eq!(row.get::<_, String>(2), "user");

    // The new user can log in with the password chosen at registration.
    let (access, _) = assert_tokens(&app, &login(&app, &username, PASSWORD).await);
    let me = whoami(&app, &access).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["user_id"], id.to_string());
}

#[actix_web::test]
async fn duplicate_usernames_and_emails_conflict_without_regard_to_case() {
    let app = TestApp::spawn().await;
    let username = unique("dup");
    let email = format!("{username}@example.com");
    let first = register(&app, &username, &email).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let before = app.row_counts().await;

    for (name, mail) in [
        (username.clone(), unique("other") + "@example.com"),
        (username.to_uppercase(), unique("other") + "@example.com"),
    ] {
        let reply = register(&app, &name, &mail).await;
        reply.assert_problem(409, "username_taken");
    }
    for mail in [email.clone(), email.to_uppercase()] {
        let reply = register(&app, &unique("other"), &mail).await;
        reply.assert_problem(409, "email_taken");
    }
    assert_eq!(app.row_counts().await, before, "a conflict writes nothing");

    // The first account is intact: it still logs in with its own password.
    assert_tokens(&app, &login(&app, &username, PASSWORD).await);
}

#[actix_web::test]
async fn login_by_username_or_email_issues_working_tokens() {
    let app = TestApp::spawn().await;
    let username = unique("Login");
    let email = format!("{username}@example.com");
    let registered = register(&app, &username, &email).await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    let id = registered.body["id"].as_str().unwrap().to_owned();

    let mut refresh_tokens = BTreeSet::new();
    for name in [
        username.clone(),
        email.clone(),
        username.to_lowercase(),
        email.to_uppercase(),
    ] {
        let (access, refresh) = assert_tokens(&app, &login(&app, &name, PASSWORD).await);
        let me = whoami(&app, &access).await;
        assert_eq!(me.status, StatusCode::OK, "login {name}: {}", me.body);
        assert_eq!(me.body["user_id"], id.as_str(), "login {name}");
        assert!(
            refresh_tokens.insert(refresh),
            "each login gets its own refresh token"
        );
    }
}

#[actix_web::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let app = TestApp::spawn().await;
    let user = app.user("pw").await;

    let wrong_password = login(&app, &user.username, "not the password").await;
    assert_unauthorized(&wrong_password);
    let unknown_user = login(&app, &unique("nobody"), PASSWORD).await;
    assert_unauthorized(&unknown_user);
    let unknown_email = login(&app, "nobody@example.com", PASSWORD).await;
    assert_unauthorized(&unknown_email);

    assert_eq!(
        wrong_password.body["detail"], unknown_user.body["detail"],
        "the reply must not reveal whether the user exists"
    );
    assert_eq!(wrong_password.body, unknown_user.body);
    assert_eq!(wrong_password.body, unknown_email.body);
    assert!(wrong_password.body.get("access_token").is_none());

    // The system user has no password and can never log in.
    assert_unauthorized(&login(&app, "system", "").await);
    assert_unauthorized(&login(&app, "system", PASSWORD).await);
}

#[actix_web::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = TestApp::spawn().await;
    let user = app.user("rot").await;
    let original = user.refresh_token.clone();

    // Rotation: new tokens that work; the presented one is used up.
    let (access1, refresh1) = assert_tokens(&app, &refresh(&app, &original).await);
    assert_ne!(refresh1, original);
    let me = whoami(&app, &access1).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["user_id"], user.id.to_string());

    let (access2, refresh2) = assert_tokens(&app, &refresh(&app, &refresh1).await);
    assert_ne!(refresh2, refresh1);
    assert_eq!(whoami(&app, &access2).await.status, StatusCode::OK);

    // An independent session (another login) is another family.
    let other_session = login(&app, &user.username, PASSWORD).await;
    let (_, other_refresh) = assert_tokens(&app, &other_session);

    // Reuse of a rotated token is refused ...
    assert_unauthorized(&refresh(&app, &original).await);
    // ... and kills the newest token of its family, which was never used.
    assert_unauthorized(&refresh(&app, &refresh2).await);
    assert_unauthorized(&refresh(&app, &refresh1).await);

    // The other family is untouched.
    let (access3, _) = assert_tokens(&app, &refresh(&app, &other_refresh).await);
    assert_eq!(whoami(&app, &access3).await.status, StatusCode::OK);

    // Tokens that were never issued.
    assert_unauthorized(&refresh(&app, "not-a-refresh-token").await);
    assert_unauthorized(&refresh(&app, &"A".repeat(43)).await);
    assert_unauthorized(&refresh(&app, &user.token).await);
}

#[actix_web::test]
async fn refreshed_token_cannot_be_used_twice_in_a_row() {
    let app = TestApp::spawn().await;
    let user = app.user("twice").await;
    let (_, fresh) = assert_tokens(&app, &refresh(&app, &user.refresh_token).await);
    // The same live token presented twice: the second presentation is a reuse.
    let (_, newer) = assert_tokens(&app, &refresh(&app, &fresh).await);
    assert_unauthorized(&refresh(&app, &fresh).await);
    assert_unauthorized(&refresh(&app, &newer).await);
}

fn sign(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

async fn with_authorization(app: &TestApp, method: Method, path: &str, value: &str) -> Reply {
    let response = app
        .http
        .request(method.clone(), format!("{}{}", app.address, path))
        .header("Authorization", value)
        .send()
        .await
        .expect("request sent");
    TestApp::checked_reply(&method, response).await
}

#[actix_web::test]
async fn protected_routes_refuse_missing_malformed_and_forged_tokens() {
    let app = TestApp::spawn().await;
    let user = app.user("bearer").await;
    let secret = app.settings.auth.jwt_secret.clone();
    let now = chrono::Utc::now().timestamp();

    // Sanity: the real token works, in both spellings of the scheme.
    assert_eq!(whoami(&app, &user.token).await.status, StatusCode::OK);
    let lower = with_authorization(
        &app,
        Method::GET,
        PROTECTED,
        &format!("bearer {}", user.token),
    )
    .await;
    assert_eq!(lower.status, StatusCode::OK, "{}", lower.body);

    // No Authorization header at all.
    let missing = app.request(Method::GET, PROTECTED, None, None, None).await;
    assert_unauthorized(&missing);

    let other_key = JwtKeys::new("another-key-another-key-another-key!", 900)
        .unwrap()
        .issue(UserId::from_uuid(user.id), Role::User)
        .unwrap();
    let expired = sign(
        &secret,
        &Claims {
            sub: user.id,
            role: "user".into(),
            iat: now - 3600,
            exp: now - 600,
        },
    );
    let unknown_role = sign(
        &secret,
        &Claims {
            sub: user.id,
            role: "superuser".into(),
            iat: now,
            exp: now + 600,
        },
    );
    let system = JwtKeys::new(&secret, 900)
        .unwrap()
        .issue(SYSTEM_USER_ID, Role::System)
        .unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = {
        use base64::Engine;
        let header = engine.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = user.token.split('.').nth(1).unwrap();
        format!("{header}.{payload}.")
    };
    let tampered = {
        use base64::Engine;
        let parts: Vec<&str> = user.token.split('.').collect();
        let payload = String::from_utf8(engine.decode(parts[1]).unwrap())
            .unwrap()
            .replace("\"user\"", "\"admin\"");
        format!("{}.{}.{}", parts[0], engine.encode(payload), parts[2])
    };

    let cases: Vec<(&str, String)> = vec![
        ("empty header", String::new()),
        ("scheme only", "Bearer".into()),
        ("scheme and space", "Bearer ".into()),
        ("basic scheme", "Basic dXNlcjpwYXNz".into()),
        ("token without scheme", user.token.clone()),
        ("garbage token", "Bearer not.a.jwt".into()),
        ("random text", "Bearer abcdef".into()),
        ("signed with another key", format!("Bearer {other_key}")),
        ("expired", format!("Bearer {expired}")),
        ("unknown role", format!("Bearer {unknown_role}")),
        ("system user", format!("Bearer {system}")),
        ("alg none", format!("Bearer {unsigned}")),
        ("tampered payload", format!("Bearer {tampered}")),
        (
            "refresh token as bearer",
            format!("Bearer {}", user.refresh_token),
        ),
    ];
    for (case, value) in &cases {
        let reply = with_authorization(&app, Method::GET, PROTECTED, value).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            reply.body
        );
        assert_unauthorized(&reply);
    }

    // The same on a route that would write: nothing is written.
    let before = app.row_counts().await;
    for (case, value) in &cases {
        let response = app
            .http
            .post(format!("{}/api/v1/transactions/credit", app.address))
            .header("Authorization", value)
            .json(&json!({"amount": 100, "currency": "USD"}))
            .send()
            .await
            .expect("request sent");
        let reply = TestApp::checked_reply(&Method::POST, response).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            reply.body
        );
        assert_unauthorized(&reply);
    }
    let no_token = app
        .post(
            "/api/v1/transactions/credit",
            None,
            &json!({"amount": 100, "currency": "USD"}),
        )
        .await;
    assert_unauthorized(&no_token);
    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.balance(&user, "USD").await, 0);
}

#[actix_web::test]
async fn auth_routes_need_no_token_and_ignore_a_bad_one() {
    let app = TestApp::spawn().await;
    let username = unique("open");
    let response = app
        .http
        .post(format!("{}{}", app.address, REGISTER))
        .header("Authorization", "Bearer garbage")
        .json(&json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .expect("request sent");
    let reply = TestApp::checked_reply(&Method::POST, response).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_tokens(&app, &login(&app, &username, PASSWORD).await);
}

/// Money routes refuse a correctly signed token whose user does not exist or is deleted: 401,
/// and nothing is written (it used to be a 500 from a foreign-key violation in the journal).
#[actix_web::test]
async fn a_token_whose_user_is_gone_cannot_move_money() {
    let app = TestApp::spawn().await;
    let peer = app.user("peer").await;
    let keys = JwtKeys::new(&app.settings.auth.jwt_secret, 900).unwrap();
    let ghost = keys
        .issue(UserId::from_uuid(Uuid::now_v7()), Role::User)
        .unwrap();
    let deleted = app.user("deleted").await;
    app.credit(&deleted, 500, "USD").await;
    app.db()
        .await
        .execute(
            "UPDATE users SET deleted_at = now() WHERE id = $1",
            &[&deleted.id],
        )
        .await
        .expect("soft delete");
    let before = app.row_counts().await;

    for token in [ghost.as_str(), deleted.token.as_str()] {
        for (path, body) in [
            (
                "/api/v1/transactions/credit",
                json!({"amount": 5, "currency": "USD"}),
            ),
            (
                "/api/v1/transactions/debit",
                json!({"amount": 5, "currency": "USD"}),
            ),
            (
                "/api/v1/transactions/transfer",
                json!({"to_user_id": peer.id, "amount": 5, "currency": "USD"}),
            ),
        ] {
            let reply = app
                .request(Method::POST, path, Some(token), Some(&body), Some("k1"))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{path}: {}",
                reply.body
            );
            assert_unauthorized(&reply);
        }
    }
    assert_eq!(app.row_counts().await, before);
    // A deleted user can neither log in nor refresh, and cannot be paid.
    assert_unauthorized(&login(&app, &deleted.username, PASSWORD).await);
    assert_unauthorized(&refresh(&app, &deleted.refresh_token).await);
    let payment = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&peer.token),
            &json!({"to_user_id": deleted.id, "amount": 1, "currency": "USD"}),
        )
        .await;
    payment.assert_problem(422, "validation_failed");
    assert_eq!(payment.error_fields(), vec!["to_user_id"]);
    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.assert_ledger_invariants().await, 1);
}

#[actix_web::test]
async fn an_expired_refresh_token_is_refused() {
    let app = TestApp::spawn_with(|settings| settings.auth.refresh_token_ttl_s = 0).await;
    let user = app.user("expiring").await;
    assert_unauthorized(&refresh(&app, &user.refresh_token).await);
    // The access token is unaffected by the refresh token's lifetime.
    assert_eq!(whoami(&app, &user.token).await.status, StatusCode::OK);
}
