//! User management (DESIGN.md section 4, issue 3): the admin listing with its cursor, reading,
//! updating and deleting oneself, role changes by admins only, soft delete, and the two ways to
//! get a first admin (`[bootstrap]` and `tally admin create`).

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const USERS: &str = "/api/v1/users";
const LOGIN: &str = "/api/v1/auth/login";
const REFRESH: &str = "/api/v1/auth/refresh";
const NEW_PASSWORD: &str = "a brand new passphrase";

fn user_path(id: Uuid) -> String {
    format!("{USERS}/{id}")
}

async fn put_user(app: &TestApp, token: &str, id: Uuid, body: &Value) -> Reply {
    app.request(Method::PUT, &user_path(id), Some(token), Some(body), None)
        .await
}

async fn delete_user(app: &TestApp, token: &str, id: Uuid) -> Reply {
    app.request(Method::DELETE, &user_path(id), Some(token), None, None)
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

async fn refresh(app: &TestApp, refresh_token: &str) -> Reply {
    app.post(REFRESH, None, &json!({"refresh_token": refresh_token}))
        .await
}

/// The user's row as the database has it: (email, role, updated_at, deleted_at set).
async fn stored(app: &TestApp, id: Uuid) -> (String, String, chrono::DateTime<chrono::Utc>, bool) {
    let row = app
        .db()
        .await
        .query_one(
            "SELECT email, role, updated_at, deleted_at IS NOT NULL FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the user row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn keys(body: &Value) -> BTreeSet<String> {
    body.as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn user_keys() -> BTreeSet<String> {
    [
        "id",
        "username",
        "email",
        "role",
        "created_at",
        "updated_at",
        "deleted_at",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

#[actix_web::test]
async fn admins_list_every_user_once_across_pages_and_others_are_refused() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let mut expected = HashSet::from([admin.id]);
    let mut users = Vec::new();
    for _ in 0..7 {
        let user = app.user("listed").await;
        expected.insert(user.id);
        users.push(user);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("{USERS}?limit=3&cursor={cursor}"),
            None => format!("{USERS}?limit=3"),
        };
        let page = app.get(&path, &admin.token).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        pages += 1;
        let items = page.body["items"].as_array().expect("items");
        assert!(items.len() <= 3, "a page holds at most `limit` users");
        for item in items {
            assert_eq!(keys(item), user_keys(), "{item}");
            assert_ne!(item["role"], "system", "the system account is never listed");
            seen.push(Uuid::parse_str(item["id"].as_str().unwrap()).unwrap());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the cursor does not end");
    }
    assert_eq!(pages, 3, "8 users in pages of 3");
    assert_eq!(
        seen.len(),
        expected.len(),
        "each user exactly once: {seen:?}"
    );
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), expected);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "oldest first (ids are time-ordered)");

    // The default page holds them all; bad limits and cursors are 422.
    let all = app.get(USERS, &admin.token).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 8);
    assert_eq!(all.body["next_cursor"], Value::Null);
    for query in ["limit=0", "limit=201", "cursor=garbage", "limit=x"] {
        let reply = app.get(&format!("{USERS}?{query}"), &admin.token).await;
        reply.assert_problem(422, "validation_failed");
    }

    // A plain user may not list, with or without a query, and learns nothing.
    for path in [USERS.to_owned(), format!("{USERS}?limit=1")] {
        let reply = app.get(&path, &users[0].token).await;
        reply.assert_problem(403, "forbidden");
        assert!(!reply.body.to_string().contains(&users[1].username));
    }
}

#[actix_web::test]
async fn a_user_reads_and_changes_their_email_then_deletes_themself() {
    let app = TestApp::spawn().await;
    let user = app.user("self").await;

    let me = app.get(&user_path(user.id), &user.token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(
        keys(&me.body),
        user_keys(),
        "no password or hash: {}",
        me.body
    );
    assert_eq!(me.body["id"], json!(user.id));
    assert_eq!(me.body["username"], user.username.as_str());
    assert_eq!(me.body["role"], "user");
    assert_eq!(me.body["deleted_at"], Value::Null);

    let email = format!("new.{}@example.org", user.username);
    let updated = put_user(&app, &user.token, user.id, &json!({"email": email})).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["email"], email.as_str());
    assert_eq!(updated.body["role"], "user");
    assert!(
        updated.body["updated_at"].as_str() > me.body["updated_at"].as_str(),
        "updated_at moves: {} then {}",
        me.body,
        updated.body
    );
    let again = app.get(&user_path(user.id), &user.token).await;
    assert_eq!(again.body["email"], email.as_str());
    assert_eq!(stored(&app, user.id).await.0, email);
    // The new email is a login name; the old one is not any more.
    assert_eq!(
        login(&app, &email, &user.password).await.status,
        StatusCode::OK
    );
    login(
        &app,
        &format!("{}@example.com", user.username),
        &user.password,
    )
    .await
    .assert_problem(401, "unauthorized");

    let deleted = delete_user(&app, &user.token, user.id).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert!(stored(&app, user.id).await.3, "deleted_at is set");
    // User management checks the caller against the database: the still-unexpired token of a
    // deleted user is refused.
    app.get(&user_path(user.id), &user.token)
        .await
        .assert_problem(401, "unauthorized");
    login(&app, &user.username, &user.password)
        .await
        .assert_problem(401, "unauthorized");
    delete_user(&app, &user.token, user.id)
        .await
        .assert_problem(401, "unauthorized");
}

#[actix_web::test]
async fn a_password_change_revokes_every_refresh_token_and_the_new_password_logs_in() {
    let app = TestApp::spawn().await;
    let user = app.user("pw").await;
    // A second session (another refresh-token family) and a rotated first one.
    let second = login(&app, &user.username, &user.password).await;
    let second_refresh = second.body["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(&app, &user.refresh_token).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let rotated_refresh = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    let other = app.user("bystander").await;

    let changed = put_user(
        &app,
        &user.token,
        user.id,
        &json!({"password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(keys(&changed.body), user_keys());

    for token in [&second_refresh, &rotated_refresh] {
        refresh(&app, token)
            .await
            .assert_problem(401, "unauthorized");
    }
    let live: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL",
            &[&user.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0, "every refresh token of the user is revoked");
    // Other users' sessions are untouched.
    assert_eq!(
        refresh(&app, &other.refresh_token).await.status,
        StatusCode::OK
    );

    login(&app, &user.username, &user.password)
        .await
        .assert_problem(401, "unauthorized");
    let fresh = login(&app, &user.username, NEW_PASSWORD).await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    let next = refresh(&app, fresh.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(next.status, StatusCode::OK, "the new session refreshes");
}

#[actix_web::test]
async fn only_an_admin_changes_a_role_and_new_tokens_carry_it() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("climber").await;
    let before = stored(&app, user.id).await;

    // A user cannot make themself admin, alone or along with a legal change.
    for body in [
        json!({"role": "admin"}),
        json!({"role": "admin", "email": "sneaky@example.com"}),
        json!({"role": "user"}),
    ] {
        put_user(&app, &user.token, user.id, &body)
            .await
            .assert_problem(403, "forbidden");
    }
    assert_eq!(stored(&app, user.id).await, before, "nothing changed");

    let promoted = put_user(&app, &admin.token, user.id, &json!({"role": "admin"})).await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    assert_eq!(promoted.body["role"], "admin");
    assert_eq!(stored(&app, user.id).await.1, "admin");

    // User management acts on the role in the database, not the one in a token that may be 15
    // minutes old: the old token lists users at once; a new login or a refresh carries `admin`
    // in the token too (the money routes read it from there).
    let old_token_listing = app.get(USERS, &user.token).await;
    assert_eq!(
        old_token_listing.status,
        StatusCode::OK,
        "{}",
        old_token_listing.body
    );
    let new_login = app.login(&user.username, &user.password).await;
    let listing = app.get(USERS, &new_login.token).await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.body);
    let refreshed = refresh(&app, &user.refresh_token).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let refreshed_token = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(app.get(USERS, refreshed_token).await.status, StatusCode::OK);
    // ... with admin powers over someone else's money.
    let victim = app.user("other").await;
    let credit = app
        .post(
            "/api/v1/transactions/credit",
            Some(&new_login.token),
            &json!({"amount": 250, "currency": "EUR", "user_id": victim.id}),
        )
        .await;
    assert_eq!(credit.status, StatusCode::CREATED, "{}", credit.body);
    assert_eq!(credit.body["to_user_id"], json!(victim.id));

    // And back: demoted, a new token has no admin powers.
    let demoted = put_user(&app, &admin.token, user.id, &json!({"role": "user"})).await;
    assert_eq!(demoted.body["role"], "user", "{}", demoted.body);
    let plain = app.login(&user.username, &user.password).await;
    app.get(USERS, &plain.token)
        .await
        .assert_problem(403, "forbidden");
}

#[actix_web::test]
async fn bad_updates_are_422_and_change_nothing() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("bad").await;
    let before = stored(&app, user.id).await;
    for (caller, body, field) in [
        (&admin, json!({"role": "system"}), "role"),
        (&admin, json!({"role": "superuser"}), "role"),
        (&admin, json!({"role": ""}), "role"),
        (&admin, json!({}), "body"),
        (&user, json!({}), "body"),
        (&user, json!({"email": "not-an-email"}), "email"),
        (&user, json!({"email": 42}), "email"),
        (&user, json!({"password": "short"}), "password"),
        (&user, json!({"username": "renamed"}), "username"),
        (&user, json!({"email": null, "password": null}), "body"),
    ] {
        let reply = put_user(&app, &caller.token, user.id, &body).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.error_fields(), vec![field.to_owned()], "{body}");
    }
    assert_eq!(stored(&app, user.id).await, before, "nothing changed");
    // The admin cannot make themself `system` either.
    put_user(&app, &admin.token, admin.id, &json!({"role": "system"}))
        .await
        .assert_problem(422, "validation_failed");
    assert_eq!(stored(&app, admin.id).await.1, "admin");
}

#[actix_web::test]
async fn an_email_that_is_taken_is_409() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let before = stored(&app, alice.id).await;
    let taken = format!("{}@EXAMPLE.com", bob.username.to_uppercase());
    put_user(&app, &alice.token, alice.id, &json!({"email": taken}))
        .await
        .assert_problem(409, "email_taken");
    assert_eq!(stored(&app, alice.id).await, before);
    // Keeping one's own email is not a conflict.
    let same = put_user(&app, &alice.token, alice.id, &json!({"email": before.0})).await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
}

#[actix_web::test]
async fn deleting_a_user_whose_balance_is_not_zero_is_409_and_changes_nothing() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let user = app.user("rich").await;
    app.credit(&user, 500, "USD").await;
    app.credit(&user, 7, "EUR").await;
    let debit = app
        .post(
            "/api/v1/transactions/debit",
            Some(&user.token),
            &json!({"amount": 500, "currency": "USD"}),
        )
        .await;
    assert_eq!(debit.status, StatusCode::CREATED, "{}", debit.body);
    let before = (app.row_counts().await, stored(&app, user.id).await);

    // USD is back to zero, EUR is not.
    for caller in [&user, &admin] {
        let reply = delete_user(&app, &caller.token, user.id).await;
        reply.assert_problem(409, "balance_not_zero");
    }
    assert_eq!(
        (app.row_counts().await, stored(&app, user.id).await),
        before
    );
    assert_eq!(
        login(&app, &user.username, &user.password).await.status,
        StatusCode::OK,
        "still an active user"
    );
    assert_eq!(
        refresh(&app, &user.refresh_token).await.status,
        StatusCode::OK,
        "the sessions were not revoked"
    );

    let out = app
        .post(
            "/api/v1/transactions/debit",
            Some(&user.token),
            &json!({"amount": 7, "currency": "EUR"}),
        )
        .await;
    assert_eq!(out.status, StatusCode::CREATED, "{}", out.body);
    let deleted = delete_user(&app, &user.token, user.id).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn a_deleted_user_cannot_log_in_or_be_paid_and_their_history_stays() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let alice = app.user("alice").await;
    let bob = app.user("leaver").await;
    app.credit(&alice, 1_000, "USD").await;
    let to_bob = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            &json!({"to_user_id": bob.id, "amount": 300, "currency": "USD"}),
        )
        .await;
    assert_eq!(to_bob.status, StatusCode::CREATED, "{}", to_bob.body);
    let back = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&bob.token),
            &json!({"to_user_id": alice.id, "amount": 300, "currency": "USD"}),
        )
        .await;
    assert_eq!(back.status, StatusCode::CREATED, "{}", back.body);

    let deleted = delete_user(&app, &admin.token, bob.id).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let counts = app.row_counts().await;

    // No login, no refresh.
    login(&app, &bob.username, &bob.password)
        .await
        .assert_problem(401, "unauthorized");
    refresh(&app, &bob.refresh_token)
        .await
        .assert_problem(401, "unauthorized");
    // Nobody can pay them: a transfer names no such user, and neither does an admin credit.
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            &json!({"to_user_id": bob.id, "amount": 1, "currency": "USD"}),
        )
        .await;
    transfer.assert_problem(422, "validation_failed");
    assert_eq!(transfer.error_fields(), vec!["to_user_id"]);
    let credit = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            &json!({"amount": 1, "currency": "USD", "user_id": bob.id}),
        )
        .await;
    credit.assert_problem(422, "validation_failed");
    assert_eq!(credit.error_fields(), vec!["user_id"]);
    assert_eq!(app.row_counts().await, counts, "nothing was written");

    // The admin still sees them, marked deleted, in the list and by id.
    let shown = app.get(&user_path(bob.id), &admin.token).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert!(shown.body["deleted_at"].is_string(), "{}", shown.body);
    let listed = app.get(USERS, &admin.token).await;
    let entry = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == json!(bob.id))
        .expect("a deleted user is still listed")
        .clone();
    assert_eq!(entry["deleted_at"], shown.body["deleted_at"]);
    // A deleted user cannot be changed.
    put_user(
        &app,
        &admin.token,
        bob.id,
        &json!({"email": "x@example.com"}),
    )
    .await
    .assert_problem(404, "not_found");

    // Their history stays readable: by the admin, and by the other party.
    let history = app
        .get(
            &format!("/api/v1/transactions/history?user_id={}", bob.id),
            &admin.token,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let ids: HashSet<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        HashSet::from([
            to_bob.body["id"].as_str().unwrap(),
            back.body["id"].as_str().unwrap()
        ])
    );
    for caller in [&admin, &alice] {
        let transaction = app
            .get(
                &format!(
                    "/api/v1/transactions/{}",
                    to_bob.body["id"].as_str().unwrap()
                ),
                &caller.token,
            )
            .await;
        assert_eq!(transaction.status, StatusCode::OK, "{}", transaction.body);
    }
    let balances = app
        .get(
            &format!("/api/v1/balances/current?user_id={}", bob.id),
            &admin.token,
        )
        .await;
    assert_eq!(
        balances.body["balances"][0]["amount"], 0,
        "{}",
        balances.body
    );

    // Deleting twice is 404 for the admin; the user's old token is refused outright.
    delete_user(&app, &admin.token, bob.id)
        .await
        .assert_problem(404, "not_found");
    delete_user(&app, &bob.token, bob.id)
        .await
        .assert_problem(401, "unauthorized");
    app.assert_ledger_invariants().await;
}

#[actix_web::test]
async fn the_bootstrap_admin_is_created_once_and_is_an_admin() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let me = app.get(&user_path(admin.id), &admin.token).await;
    assert_eq!(me.body["role"], "admin", "{}", me.body);
    assert_eq!(me.body["email"], ADMIN_EMAIL);
    assert_eq!(app.get(USERS, &admin.token).await.status, StatusCode::OK);

    // A second start on the same database with the same settings keeps the one admin.
    let database_url = app.database_url.clone();
    let again = TestApp::spawn_with(|settings| {
        settings.database.url = database_url.clone();
        settings.bootstrap.admin_username = ADMIN_USERNAME.to_owned();
        settings.bootstrap.admin_email = ADMIN_EMAIL.to_owned();
        settings.bootstrap.admin_password = ADMIN_PASSWORD.to_owned();
    })
    .await;
    let admins: i64 = again
        .db()
        .await
        .query_one("SELECT count(*) FROM users WHERE role = 'admin'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 1);
    assert_eq!(
        again.login(ADMIN_USERNAME, ADMIN_PASSWORD).await.id,
        admin.id
    );

    // Half a bootstrap configuration is refused at start.
    let mut partial = test_settings();
    partial.bootstrap.admin_username = "half".to_owned();
    // The start is refused after the database was created and migrated: it is dropped like
    // every TestApp's.
    let _cleanup = TestApp {
        address: String::new(),
        port: 0,
        database_url: partial.database.url.clone(),
        settings: partial.clone(),
        http: http_client(),
    };
    let error = tally::startup::Application::build(partial)
        .await
        .err()
        .expect("a partial bootstrap must not start");
    assert!(
        error.to_string().contains("bootstrap"),
        "the error names the settings: {error:#}"
    );
}

/// Runs `tally admin create --username <username> --password-stdin` on `database_url` with
/// `stdin` piped in; returns (success, stdout, stderr).
fn admin_create(database_url: &str, username: &str, stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "admin",
            "create",
            "--username",
            username,
            "--password-stdin",
        ])
        .env("TALLY__DATABASE__URL", database_url)
        .env("TALLY__LOG__FORMAT", "json")
        .env_remove("TALLY__PROFILE")
        .env_remove("TALLY__BOOTSTRAP__ADMIN_USERNAME")
        .env_remove("TALLY__BOOTSTRAP__ADMIN_EMAIL")
        .env_remove("TALLY__BOOTSTRAP__ADMIN_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tally binary starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write the password");
    let output = child.wait_with_output().expect("tally admin create ends");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn tally_admin_create_reads_the_password_from_stdin_and_is_idempotent() {
    let database_url = test_settings().database.url;
    let password = "stdin password 0987";

    let (ok, stdout, stderr) = admin_create(&database_url, "chief", &format!("{password}\n"));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("admin chief created"), "stdout: {stdout}");
    assert!(!stdout.contains(password) && !stderr.contains(password));
    let (ok, stdout, stderr) = admin_create(&database_url, "chief", &format!("{password}\n"));
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("admin chief already exists"),
        "stdout: {stdout}"
    );

    // The server on that database lets the admin in, with admin powers; the trailing newline
    // was not part of the password.
    let app = TestApp::spawn_with(|settings| settings.database.url = database_url.clone()).await;
    let chief = app.login("chief", password).await;
    let me = app.get(&user_path(chief.id), &chief.token).await;
    assert_eq!(me.body["role"], "admin", "{}", me.body);
    assert_eq!(me.body["email"], "chief@admin.invalid");
    assert_eq!(app.get(USERS, &chief.token).await.status, StatusCode::OK);

    // A password that is too short, and a username that belongs to a plain user, are refused.
    let (ok, stdout, _) = admin_create(&database_url, "shorty", "short\n");
    assert!(!ok, "a short password must fail: {stdout}");
    let plain = app.user("plain").await;
    let (ok, stdout, stderr) =
        admin_create(&database_url, &plain.username, "long enough password\n");
    assert!(!ok, "a plain user's name must fail: {stdout}");
    assert!(stderr.contains("not an admin"), "stderr: {stderr}");
    let admins: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM users WHERE role = 'admin'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 1);
}

/// The active admins, by id, as the database has them.
async fn active_admins(app: &TestApp) -> Vec<Uuid> {
    app.db()
        .await
        .query(
            "SELECT id FROM users WHERE role = 'admin' AND deleted_at IS NULL ORDER BY id",
            &[],
        )
        .await
        .expect("admins")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Someone must always be able to manage users and roles: the last active admin can neither
/// demote nor delete itself (409 `last_admin`); with a second admin, either can.
#[actix_web::test]
async fn the_last_admin_cannot_demote_or_delete_itself() {
    let (app, root) = TestApp::spawn_with_admin(|_| {}).await;
    let before = stored(&app, root.id).await;
    put_user(&app, &root.token, root.id, &json!({"role": "user"}))
        .await
        .assert_problem(409, "last_admin");
    delete_user(&app, &root.token, root.id)
        .await
        .assert_problem(409, "last_admin");
    assert_eq!(stored(&app, root.id).await, before, "nothing changed");
    // Changing anything else of the last admin is fine.
    let email = put_user(
        &app,
        &root.token,
        root.id,
        &json!({"email": "root2@example.com"}),
    )
    .await;
    assert_eq!(email.status, StatusCode::OK, "{}", email.body);

    let bob = app.user("second").await;
    let promoted = put_user(&app, &root.token, bob.id, &json!({"role": "admin"})).await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    let demoted = put_user(&app, &root.token, root.id, &json!({"role": "user"})).await;
    assert_eq!(demoted.status, StatusCode::OK, "{}", demoted.body);
    assert_eq!(active_admins(&app).await, [bob.id]);
    delete_user(&app, &bob.token, bob.id)
        .await
        .assert_problem(409, "last_admin");
    // Deleting a user who is not an admin needs no other admin.
    let deleted = delete_user(&app, &bob.token, root.id).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_eq!(active_admins(&app).await, [bob.id]);
}

/// Two admins take the role from each other at the same moment, through two instances of the
/// service on one database (one demotes, the other deletes): exactly one succeeds, the other
/// is refused with 409 `last_admin`, and one admin is left. A session of the test holds both
/// admin rows locked until both requests are waiting on them, so that both check "is there
/// another admin" before either has acted.
#[actix_web::test]
async fn two_admins_removing_each_other_at_once_leave_one() {
    let long_lock_waits = |settings: &mut tally::config::Settings| {
        settings.database.lock_timeout_ms = 30_000;
        settings.database.statement_timeout_ms = 60_000;
    };
    let (first, root) = TestApp::spawn_with_admin(long_lock_waits).await;
    let second = TestApp::spawn_with(|settings| {
        settings.database.url = first.database_url.clone();
        long_lock_waits(settings);
    })
    .await;
    let bob = first.user("rival").await;
    let promoted = put_user(&first, &root.token, bob.id, &json!({"role": "admin"})).await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);

    let mut blocker = first.db().await;
    let monitor = first.db().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.query(
        "SELECT 1 FROM users WHERE id = ANY($1) FOR UPDATE",
        &[&vec![root.id, bob.id]],
    )
    .await
    .expect("lock both admins");

    let demotion = json!({"role": "user"});
    let demote_bob = put_user(&first, &root.token, bob.id, &demotion);
    let delete_root = delete_user(&second, &bob.token, root.id);
    let release = async {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiting: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'tally'
                       AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "the two requests never both waited on the admin rows ({waiting} waiting)"
            );
            // Spaces the polls; the condition above is what synchronizes.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        lock.rollback().await.expect("release the admins");
    };
    let (demoted, deleted, ()) =
        futures_util::future::join3(demote_bob, delete_root, release).await;
    let outcomes = [demoted.status.as_u16(), deleted.status.as_u16()];
    assert!(
        outcomes == [200, 409] || outcomes == [409, 204],
        "exactly one succeeds: demote {} {}, delete {} {}",
        demoted.status,
        demoted.body,
        deleted.status,
        deleted.body
    );
    let refused = if outcomes[0] == 409 {
        &demoted
    } else {
        &deleted
    };
    refused.assert_problem(409, "last_admin");
    assert_eq!(active_admins(&first).await.len(), 1, "one admin is left");
}
