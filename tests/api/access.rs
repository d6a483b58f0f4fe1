//! The access matrix (issue 3): for every route that reads or moves a user's data, an anonymous
//! caller gets 401, another plain user gets 403 or 404 and never the data, and nothing is
//! written; the owner and an admin succeed. Admin-only paths refuse everybody else. Run with
//! `--nocapture` to see the matrix. Then the audit log: every audited action leaves a row with
//! its actor, entity, client IP and the request's `X-Request-Id`.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Other,
    Owner,
    Admin,
}

impl Caller {
    fn name(self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Other => "other user",
            Caller::Owner => "owner",
            Caller::Admin => "admin",
        }
    }
}

/// One request of the matrix, aimed at the victim's data.
struct Case {
    method: Method,
    /// What the matrix prints (the route template and the parameter that names the victim).
    route: &'static str,
    path: String,
    body: Option<Value>,
    /// The status each caller must get (`None`: this caller is not part of the row).
    anonymous: u16,
    other: &'static [u16],
    owner: Option<u16>,
    admin: u16,
    /// What a successful reply must contain (the victim's data, not an empty success).
    shows: String,
}

/// Everything a reply to the other user must not contain.
struct Secrets {
    strings: Vec<String>,
}

impl Secrets {
    fn leaked_in(&self, body: &Value) -> Vec<&str> {
        let text = body.to_string();
        self.strings
            .iter()
            .filter(|secret| text.contains(secret.as_str()))
            .map(String::as_str)
            .collect()
    }
}

async fn send(app: &TestApp, token: Option<String>, case: &Case) -> Reply {
    app.request(
        case.method.clone(),
        &case.path,
        token.as_deref(),
        case.body.as_ref(),
        None,
    )
    .await
}

/// A snapshot of everything a refused request must leave alone.
async fn snapshot(app: &TestApp, victim: Uuid) -> (RowCounts, Value, i64, i64) {
    let db = app.db().await;
    let user = db
        .query_one(
            "SELECT to_jsonb(u) - 'password_hash' FROM users u WHERE id = $1",
            &[&victim],
        )
        .await
        .expect("victim row")
        .get::<_, Value>(0);
    let live_tokens: i64 = db
        .query_one(
            "SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let audit: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_logs WHERE action NOT LIKE 'login.%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (app.row_counts().await, user, live_tokens, audit)
}

#[actix_web::test]
async fn access_matrix_a_user_never_reaches_another_users_data() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let victim = app.user("victim").await;
    let other = app.user("mallory").await;
    let friend = app.user("friend").await;
    // The victim's data: a credit, a transfer out, a transfer in, odd amounts to spot leaks.
    let credit = app.credit(&victim, 987_653, "USD").await;
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&victim.token),
            &json!({"to_user_id": friend.id, "amount": 12_347, "currency": "USD", "description": "victim-secret-memo"}),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{}", transfer.body);
    app.credit(&friend, 5_000, "USD").await;
    let incoming = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&friend.token),
            &json!({"to_user_id": victim.id, "amount": 4_321, "currency": "USD"}),
        )
        .await;
    assert_eq!(incoming.status, StatusCode::CREATED, "{}", incoming.body);
    let victim_email = format!("{}@example.com", victim.username);
    let balance = 987_653 - 12_347 + 4_321;
    let secrets = Secrets {
        strings: vec![
            victim.id.to_string(),
            victim.username.clone(),
            victim_email.clone(),
            "987653".into(),
            "12347".into(),
            "4321".into(),
            balance.to_string(),
            "victim-secret-memo".into(),
            credit["id"].as_str().unwrap().to_owned(),
            transfer.body["id"].as_str().unwrap().to_owned(),
            incoming.body["id"].as_str().unwrap().to_owned(),
        ],
    };

    let v = victim.id;
    // An instant after all of the above, for the point-in-time balance.
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let transaction = transfer.body["id"].as_str().unwrap().to_owned();
    let credited = credit["id"].as_str().unwrap().to_owned();
    let cases = vec![
        Case {
            method: Method::GET,
            route: "GET /users/{id}",
            path: format!("/api/v1/users/{v}"),
            body: None,
            anonymous: 401,
            other: &[404],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::PUT,
            route: "PUT /users/{id} {email}",
            path: format!("/api/v1/users/{v}"),
            body: Some(json!({"email": victim_email})),
            anonymous: 401,
            other: &[404],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::PUT,
            route: "PUT /users/{id} {password}",
            path: format!("/api/v1/users/{v}"),
            body: Some(json!({"password": "hijacked password"})),
            anonymous: 401,
            other: &[404],
            owner: None,
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::PUT,
            route: "PUT /users/{id} {role}",
            path: format!("/api/v1/users/{v}"),
            body: Some(json!({"role": "user"})),
            anonymous: 401,
            other: &[404],
            owner: Some(403),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /users (admin only)",
            path: "/api/v1/users".into(),
            body: None,
            anonymous: 401,
            other: &[403],
            owner: Some(403),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::POST,
            route: "POST /transactions/credit {user_id}",
            path: "/api/v1/transactions/credit".into(),
            body: Some(json!({"amount": 11, "currency": "USD", "user_id": v})),
            anonymous: 401,
            other: &[403],
            owner: Some(201),
            admin: 201,
            shows: v.to_string(),
        },
        Case {
            method: Method::POST,
            route: "POST /transactions/debit {user_id}",
            path: "/api/v1/transactions/debit".into(),
            body: Some(json!({"amount": 11, "currency": "USD", "user_id": v})),
            anonymous: 401,
            other: &[403],
            owner: Some(201),
            admin: 201,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /transactions/{id} (transfer)",
            path: format!("/api/v1/transactions/{transaction}"),
            body: None,
            anonymous: 401,
            other: &[404],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /transactions/{id} (credit)",
            path: format!("/api/v1/transactions/{credited}"),
            body: None,
            anonymous: 401,
            other: &[404],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /transactions/history?user_id",
            path: format!("/api/v1/transactions/history?user_id={v}"),
            body: None,
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /balances/current?user_id",
            path: format!("/api/v1/balances/current?user_id={v}"),
            body: None,
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /balances/current?user_id&currency",
            path: format!("/api/v1/balances/current?user_id={v}&currency=USD"),
            body: None,
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::GET,
            route: "GET /balances/historical?user_id",
            path: format!("/api/v1/balances/historical?user_id={v}&currency=USD"),
            body: None,
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: credited.clone(),
        },
        Case {
            method: Method::GET,
            route: "GET /balances/at-time?user_id",
            path: format!("/api/v1/balances/at-time?user_id={v}&currency=USD&at={at}"),
            body: None,
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: format!("\"amount\":{balance}"),
        },
        Case {
            method: Method::POST,
            route: "POST /transactions/bulk {debit user_id}",
            path: "/api/v1/transactions/bulk".into(),
            body: Some(json!({"mode": "independent", "transactions": [
                {"type": "debit", "user_id": v, "amount": 11, "currency": "USD"}]})),
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        Case {
            method: Method::POST,
            route: "POST /transactions/bulk {transfer from_user_id}",
            path: "/api/v1/transactions/bulk".into(),
            body: Some(json!({"mode": "atomic", "transactions": [
                {"type": "transfer", "from_user_id": v, "to_user_id": friend.id, "amount": 11, "currency": "USD"}]})),
            anonymous: 401,
            other: &[403],
            owner: Some(200),
            admin: 200,
            shows: v.to_string(),
        },
        // Last: the admin empties the account (the debit row above left it positive), so this
        // row needs its own setup; see below.
        Case {
            method: Method::DELETE,
            route: "DELETE /users/{id}",
            path: format!("/api/v1/users/{v}"),
            body: None,
            anonymous: 401,
            other: &[404],
            owner: None,
            admin: 204,
            shows: String::new(),
        },
    ];

    let mut matrix = vec![(
        "route".to_owned(),
        "caller".to_owned(),
        "expected".to_owned(),
        "got".to_owned(),
    )];
    let mut failures = Vec::new();
    let token = |caller: Caller| match caller {
        Caller::Anonymous => None,
        Caller::Other => Some(other.token.clone()),
        Caller::Owner => Some(victim.token.clone()),
        Caller::Admin => Some(admin.token.clone()),
    };

    // Refused callers first: nothing may change, nothing may leak.
    for caller in [Caller::Anonymous, Caller::Other] {
        for case in &cases {
            let before = snapshot(&app, v).await;
            let reply = send(&app, token(caller), case).await;
            let expected: Vec<u16> = match caller {
                Caller::Anonymous => vec![case.anonymous],
                _ => case.other.to_vec(),
            };
            let got = reply.status.as_u16();
            let leaks = secrets.leaked_in(&reply.body);
            let changed = snapshot(&app, v).await != before;
            matrix.push((
                case.route.to_owned(),
                caller.name().to_owned(),
                expected
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                format!(
                    "{got} {}{}{}",
                    reply.body["code"].as_str().unwrap_or(""),
                    if leaks.is_empty() { "" } else { " LEAK" },
                    if changed { " WROTE" } else { "" }
                ),
            ));
            if !expected.contains(&got) || !leaks.is_empty() || changed {
                failures.push(format!(
                    "{} as {}: got {got} (expected {expected:?}), leaked {leaks:?}, wrote: {changed}; body {}",
                    case.route,
                    caller.name(),
                    reply.body
                ));
            }
            if got >= 400 {
                let code = match got {
                    401 => "unauthorized",
                    403 => "forbidden",
                    _ => "not_found",
                };
                reply.assert_problem(got, code);
            }
        }
    }

    // Then those who may: the owner (where it is their call), then the admin.
    for caller in [Caller::Owner, Caller::Admin] {
        for case in &cases {
            let expected = match caller {
                Caller::Owner => match case.owner {
                    Some(status) => status,
                    None => continue,
                },
                _ => case.admin,
            };
            if case.method == Method::DELETE {
                // Deleting needs every balance at zero: the admin debits what is left first.
                let left = app
                    .get(
                        &format!("/api/v1/balances/current?user_id={v}&currency=USD"),
                        &admin.token,
                    )
                    .await;
                let amount = left.body["balances"][0]["amount"].as_i64().unwrap();
                let drained = app
                    .post(
                        "/api/v1/transactions/debit",
                        Some(&admin.token),
                        &json!({"amount": amount, "currency": "USD", "user_id": v}),
                    )
                    .await;
                assert_eq!(drained.status, StatusCode::CREATED, "{}", drained.body);
            }
            let reply = send(&app, token(caller), case).await;
            let got = reply.status.as_u16();
            let mut note = String::new();
            if reply.status.is_success()
                && !case.shows.is_empty()
                && !reply.body.to_string().contains(&case.shows)
            {
                // The data is really there (not an empty success).
                note = " (victim's data missing)".into();
            }
            matrix.push((
                case.route.to_owned(),
                caller.name().to_owned(),
                expected.to_string(),
                format!("{got} {}{note}", reply.body["code"].as_str().unwrap_or("")),
            ));
            if got != expected || !note.is_empty() {
                failures.push(format!(
                    "{} as {}: got {got}{note} (expected {expected}); body {}",
                    case.route,
                    caller.name(),
                    reply.body
                ));
            }
        }
    }

    let width = matrix.iter().map(|row| row.0.len()).max().unwrap_or(0);
    println!("\naccess matrix (the victim is a plain user with money and history):");
    for (route, caller, expected, got) in &matrix {
        println!("  {route:<width$}  {caller:<10}  {expected:<8}  {got}");
    }
    assert!(
        failures.is_empty(),
        "access matrix:\n{}",
        failures.join("\n")
    );
    app.assert_ledger_invariants().await;
}

/// The audit rows written for `request_id`, oldest first: (action, actor, entity_type,
/// entity_id, details).
async fn audit_rows(
    app: &TestApp,
    request_id: &str,
) -> Vec<(String, Option<Uuid>, String, Option<String>, Value)> {
    app.db()
        .await
        .query(
            "SELECT action, actor_id, entity_type, entity_id, details FROM audit_logs
             WHERE details->>'request_id' = $1 ORDER BY id",
            &[&request_id],
        )
        .await
        .expect("audit rows")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
        .collect()
}

/// Asserts that `request_id` left exactly the `expected` audit rows: (action, actor, entity
/// type, entity id), each from 127.0.0.1 with the request id; returns their details.
#[track_caller]
fn assert_audit(
    rows: &[(String, Option<Uuid>, String, Option<String>, Value)],
    request_id: &str,
    expected: &[(&str, Option<Uuid>, &str, Option<String>)],
) -> Vec<Value> {
    let got: Vec<(&str, Option<Uuid>, &str, Option<String>)> = rows
        .iter()
        .map(|(action, actor, kind, id, _)| (action.as_str(), *actor, kind.as_str(), id.clone()))
        .collect();
    assert_eq!(got, expected, "audit rows of request {request_id}");
    for (action, _, _, _, details) in rows {
        assert_eq!(details["ip"], "127.0.0.1", "{action}: {details}");
        assert_eq!(details["request_id"], request_id, "{action}: {details}");
        let text = details.to_string();
        assert!(
            !text.contains("password") || text.contains("password_changed"),
            "{action}: no secrets in the audit log: {details}"
        );
    }
    rows.iter().map(|row| row.4.clone()).collect()
}

#[actix_web::test]
async fn audited_actions_record_actor_entity_ip_and_request_id() {
    let (app, admin) = TestApp::spawn_with_admin(|settings| {
        settings.auth.lockout_threshold = 3;
    })
    .await;
    let password = "correct horse battery";
    let name = format!("audited_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let rid = |action: &str| format!("audit-{action}-{}", Uuid::new_v4().simple());
    let send = |method: Method,
                path: String,
                token: Option<String>,
                body: Option<Value>,
                request_id: String| {
        let app = &app;
        async move {
            app.request_with(
                method,
                &path,
                token.as_deref(),
                body.as_ref(),
                &[("X-Request-Id", request_id.as_str())],
            )
            .await
        }
    };

    // user.registered: the new user is the actor.
    let id = rid("register");
    let registered = send(
        Method::POST,
        "/api/v1/auth/register".into(),
        None,
        Some(
            json!({"username": name, "email": format!("{name}@example.com"), "password": password}),
        ),
        id.clone(),
    )
    .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    assert_eq!(registered.header("x-request-id"), Some(id.as_str()));
    let user = Uuid::parse_str(registered.body["id"].as_str().unwrap()).unwrap();
    let entity = Some(user.to_string());
    assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("user.registered", Some(user), "user", entity.clone())],
    );

    // login.succeeded
    let id = rid("login");
    let login = send(
        Method::POST,
        "/api/v1/auth/login".into(),
        None,
        Some(json!({"username": name, "password": password})),
        id.clone(),
    )
    .await;
    assert_eq!(login.status, StatusCode::OK);
    let token = login.body["access_token"].as_str().unwrap().to_owned();
    let first_refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("login.succeeded", Some(user), "user", entity.clone())],
    );

    // login.failed (anonymous; the entity is the login name, lower-cased), then login.locked
    // with the failure that reaches the threshold.
    let upper = name.to_uppercase();
    for attempt in 1..=3 {
        let id = rid("login-failed");
        let failed = send(
            Method::POST,
            "/api/v1/auth/login".into(),
            None,
            Some(json!({"username": upper, "password": "wrong password"})),
            id.clone(),
        )
        .await;
        failed.assert_problem(401, "unauthorized");
        let login_entity = Some(name.to_lowercase());
        let rows = audit_rows(&app, &id).await;
        if attempt < 3 {
            assert_audit(&rows, &id, &[("login.failed", None, "login", login_entity)]);
        } else {
            let details = assert_audit(
                &rows,
                &id,
                &[
                    ("login.failed", None, "login", login_entity.clone()),
                    ("login.locked", None, "login", login_entity),
                ],
            );
            assert!(details[1]["until"].is_string(), "{}", details[1]);
        }
    }
    app.db()
        .await
        .execute("DELETE FROM login_failures", &[])
        .await
        .unwrap();

    // refresh_token.reused: the first refresh token, rotated, then presented again.
    let rotated = app
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": first_refresh}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let id = rid("reuse");
    let reused = send(
        Method::POST,
        "/api/v1/auth/refresh".into(),
        None,
        Some(json!({"refresh_token": first_refresh})),
        id.clone(),
    )
    .await;
    reused.assert_problem(401, "unauthorized");
    assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("refresh_token.reused", Some(user), "user", entity.clone())],
    );

    // logout
    let session = app.login(&name, password).await;
    let id = rid("logout");
    let logout = send(
        Method::POST,
        "/api/v1/auth/logout".into(),
        None,
        Some(json!({"refresh_token": session.refresh_token})),
        id.clone(),
    )
    .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("logout", Some(user), "user", entity.clone())],
    );

    // user.updated by the user: before and after, and whether the password changed.
    let id = rid("update");
    let new_email = format!("{name}@example.net");
    let updated = send(
        Method::PUT,
        format!("/api/v1/users/{user}"),
        Some(token.clone()),
        Some(json!({"email": new_email, "password": "another password"})),
        id.clone(),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let details = assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("user.updated", Some(user), "user", entity.clone())],
    );
    assert_eq!(details[0]["before"]["email"], format!("{name}@example.com"));
    assert_eq!(details[0]["after"]["email"], new_email.as_str());
    assert_eq!(details[0]["password_changed"], true);

    // user.role_changed by the admin (with its user.updated).
    let id = rid("role");
    let promoted = send(
        Method::PUT,
        format!("/api/v1/users/{user}"),
        Some(admin.token.clone()),
        Some(json!({"role": "admin"})),
        id.clone(),
    )
    .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    let details = assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[
            ("user.updated", Some(admin.id), "user", entity.clone()),
            ("user.role_changed", Some(admin.id), "user", entity.clone()),
        ],
    );
    assert_eq!(details[1]["before"], "user");
    assert_eq!(details[1]["after"], "admin");

    // transaction.admin_credit and transaction.admin_debit: on another user's money.
    let mut transactions = Vec::new();
    for (kind, action) in [
        ("credit", "transaction.admin_credit"),
        ("debit", "transaction.admin_debit"),
    ] {
        let id = rid(kind);
        let moved = send(
            Method::POST,
            format!("/api/v1/transactions/{kind}"),
            Some(admin.token.clone()),
            Some(json!({"amount": 700, "currency": "EUR", "user_id": user})),
            id.clone(),
        )
        .await;
        assert_eq!(moved.status, StatusCode::CREATED, "{}", moved.body);
        let details = assert_audit(
            &audit_rows(&app, &id).await,
            &id,
            &[(action, Some(admin.id), "user", entity.clone())],
        );
        assert_eq!(details[0]["transaction_id"], moved.body["id"]);
        assert_eq!(details[0]["amount"], 700);
        assert_eq!(details[0]["currency"], "EUR");
        assert_eq!(details[0]["status"], 201);
        transactions.push(moved.body["id"].clone());
    }
    // A refused admin debit is audited too, with its status.
    let id = rid("refused-debit");
    let refused = send(
        Method::POST,
        "/api/v1/transactions/debit".into(),
        Some(admin.token.clone()),
        Some(json!({"amount": 1, "currency": "EUR", "user_id": user})),
        id.clone(),
    )
    .await;
    refused.assert_problem(422, "insufficient_funds");
    let details = assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[(
            "transaction.admin_debit",
            Some(admin.id),
            "user",
            entity.clone(),
        )],
    );
    assert_eq!(details[0]["status"], 422);
    // An admin bulk touching another user's money: one record listing those items only.
    let id = rid("bulk");
    let bulk = send(
        Method::POST,
        "/api/v1/transactions/bulk".into(),
        Some(admin.token.clone()),
        Some(json!({"mode": "independent", "transactions": [
            {"type": "credit", "amount": 3, "currency": "EUR"},
            {"type": "credit", "user_id": user, "amount": 40, "currency": "EUR"},
            {"type": "credit", "user_id": user, "amount": 15, "currency": "EUR"},
        ]})),
        id.clone(),
    )
    .await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.body);
    let details = assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("transaction.admin_bulk", Some(admin.id), "bulk", None)],
    );
    let items = details[0]["items"].as_array().expect("items");
    assert_eq!(
        items
            .iter()
            .map(|item| item["index"].clone())
            .collect::<Vec<_>>(),
        vec![json!(1), json!(2)],
        "only the items on another user's money: {}",
        details[0]
    );
    for item in items {
        assert_eq!(item["user_id"], json!(user));
        let index = item["index"].as_u64().unwrap() as usize;
        assert_eq!(
            item["transaction_id"],
            bulk.body["results"][index]["transaction"]["id"]
        );
    }
    assert_eq!(details[0]["status"], 200);
    let drained = app
        .post(
            "/api/v1/transactions/debit",
            Some(&admin.token),
            &json!({"amount": 55, "currency": "EUR", "user_id": user}),
        )
        .await;
    assert_eq!(drained.status, StatusCode::CREATED, "{}", drained.body);

    // Moving one's own money is not an admin action.
    let own = app.credit(&admin, 5, "EUR").await;
    let own_rows: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM audit_logs WHERE details->>'transaction_id' = $1",
            &[&own["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(own_rows, 0);

    // user.deleted by the admin.
    let id = rid("delete");
    let deleted = send(
        Method::DELETE,
        format!("/api/v1/users/{user}"),
        Some(admin.token.clone()),
        None,
        id.clone(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_audit(
        &audit_rows(&app, &id).await,
        &id,
        &[("user.deleted", Some(admin.id), "user", entity.clone())],
    );

    // Requests that change nothing are not audited.
    let id = rid("read");
    let read = send(
        Method::GET,
        format!("/api/v1/users/{user}"),
        Some(admin.token.clone()),
        None,
        id.clone(),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(audit_rows(&app, &id).await.is_empty());
}
