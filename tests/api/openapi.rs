//! The OpenAPI 3.1 contract (issue 3): `GET /openapi.json` documents exactly the routes the app
//! serves, with the bearer scheme and problem+json errors; Swagger UI is served from the
//! binary. (Every reply of every API test is also checked against this document: see
//! `check_reply` in helpers.rs; the last test here shows that check is not vacuous.)

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// Every route the app serves, by method and path template. Adding a route means adding it
/// here and to the document.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/{id}"),
    ("put", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}"),
    ("post", "/api/v1/transactions/credit"),
    ("post", "/api/v1/transactions/debit"),
    ("post", "/api/v1/transactions/transfer"),
    ("post", "/api/v1/transactions/bulk"),
    ("get", "/api/v1/transactions/{id}"),
    ("get", "/api/v1/transactions/history"),
    ("get", "/api/v1/balances/current"),
    ("get", "/api/v1/balances/historical"),
    ("get", "/api/v1/balances/at-time"),
    ("get", "/metrics"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/openapi.json"),
];

/// Served, but not part of the API: the interactive docs (`/docs` redirects to `/docs/`).
const DOCS: &str = "/docs/";

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

/// Every `$ref` in `value`.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|value| refs(value, found));
        }
        Value::Array(items) => items.iter().for_each(|value| refs(value, found)),
        _ => {}
    }
}

#[actix_web::test]
async fn the_document_is_openapi_3_1_with_the_bearer_scheme_and_problem_errors() {
    let app = TestApp::spawn().await;
    let reply = app
        .request(Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type().starts_with("application/json"));
    let document = &reply.body;
    assert_eq!(
        document,
        openapi(),
        "the served document is the one the tests check replies against"
    );
    let version = document["openapi"].as_str().expect("openapi");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert_eq!(document["info"]["title"], "Tally");
    assert!(document["info"]["version"].is_string());
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    );

    let mut problems = Vec::new();
    for (method, path) in documented_operations(document) {
        let operation = &document["paths"][&path][&method];
        let operation_name = format!("{} {path}", method.to_uppercase());
        let responses = operation["responses"].as_object().expect("responses");
        let has = |status: &str| responses.contains_key(status);
        let api = path.starts_with("/api/v1/");
        let public = !api || path.starts_with("/api/v1/auth/");
        // The bearer scheme on exactly the routes that need a token.
        let security = &operation["security"];
        if public {
            if !security.is_null() {
                problems.push(format!("{operation_name}: public, but security {security}"));
            }
        } else {
            if *security != json!([{"bearer": []}]) {
                problems.push(format!("{operation_name}: security {security}"));
            }
            if !has("401") {
                problems.push(format!("{operation_name}: needs a token, documents no 401"));
            }
        }
        // The whole of /api/v1 is rate limited.
        if api && !has("429") {
            problems.push(format!("{operation_name}: rate limited, documents no 429"));
        }
        // A JSON body can be malformed, too large, not JSON, or invalid.
        if operation.get("requestBody").is_some() {
            for status in ["400", "413", "415", "422"] {
                if !has(status) {
                    problems.push(format!(
                        "{operation_name}: takes a body, documents no {status}"
                    ));
                }
            }
        }
        // A path parameter that is no such thing, or is not yours.
        if path.contains('{') && !has("404") {
            problems.push(format!("{operation_name}: a path id, documents no 404"));
        }
        // Every 4xx is a problem.
        for (status, response) in responses {
            if !status.starts_with('4') {
                continue;
            }
            let content = &response["content"];
            if content.as_object().map(|c| c.len()) != Some(1)
                || content["application/problem+json"]["schema"]
                    != json!({"$ref": "#/components/schemas/Problem"})
            {
                problems.push(format!(
                    "{operation_name} {status}: not a Problem: {content}"
                ));
            }
        }
        if !operation["summary"].is_string() && !operation["description"].is_string() {
            problems.push(format!("{operation_name}: no summary or description"));
        }
    }
    let mut targets = Vec::new();
    refs(document, &mut targets);
    for target in targets {
        let pointer = target.strip_prefix('#').expect("a local $ref");
        if document.pointer(pointer).is_none() {
            problems.push(format!("dangling $ref {target}"));
        }
    }
    assert!(
        problems.is_empty(),
        "the document:\n{}",
        problems.join("\n")
    );
}

#[actix_web::test]
async fn every_route_the_app_serves_is_documented_and_nothing_more() {
    let (app, admin) = TestApp::spawn_with_admin(|_| {}).await;
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    let documented = documented_operations(openapi());
    assert_eq!(
        documented.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served (per ROUTES)"
    );
    assert_eq!(
        listed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );

    // ROUTES is what the app really serves: each answers as a route (not an unknown-route 404
    // nor a 405), and every other method on its path is a 405.
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, path)| *path).collect();
    let id = Uuid::new_v4().to_string();
    for path in paths {
        let concrete = path.replace("{id}", &id);
        for method in METHODS {
            let served = listed.contains(&((*method).to_owned(), path.to_owned()));
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (*method == "post" || *method == "put").then(|| json!({}));
            let reply = app
                .request(
                    http_method,
                    &concrete,
                    Some(&admin.token),
                    body.as_ref(),
                    None,
                )
                .await;
            let status = reply.status.as_u16();
            if served {
                let unknown_route = status == 404 && reply.body["detail"] == "no such resource";
                assert!(
                    status != 405 && !unknown_route,
                    "{method} {path} is listed but the app does not serve it: {status} {}",
                    reply.body
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path}: the app serves a method the document does not have: {}",
                    reply.body
                );
            }
        }
    }
    // Nothing else under the API's prefixes.
    for path in [
        "/api/v1",
        "/api/v1/",
        "/api/v1/admin",
        "/api/v1/users/me",
        &format!("/api/v1/users/{id}/balances"),
        "/api/v1/transactions",
        "/api/v1/balances",
        "/api/v1/auth",
        "/health",
        "/openapi.yaml",
    ] {
        let reply = app.get(path, &admin.token).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.body
        );
    }
}

/// The `src` and `href` attributes of an HTML page.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').expect("a closing quote");
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[actix_web::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .expect("request sent");
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.headers()["location"], "/docs/");

    let page = client
        .get(format!("{}{DOCS}", app.address))
        .send()
        .await
        .expect("request sent");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");

    // Every script, style sheet and icon the page loads comes from the binary, none from the
    // internet.
    let assets = references(&html);
    assert!(
        assets
            .iter()
            .any(|asset| asset.ends_with("swagger-ui-bundle.js")),
        "{assets:?}"
    );
    for asset in &assets {
        assert!(
            !asset.contains("//"),
            "the docs page loads {asset} from outside the binary"
        );
        let url = format!("{}{DOCS}{}", app.address, asset.trim_start_matches("./"));
        let response = client.get(&url).send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = response.bytes().await.unwrap();
        assert!(!bytes.is_empty(), "{url}");
        let expected = match asset.rsplit('.').next() {
            Some("js") => "javascript",
            Some("css") => "text/css",
            Some("png") => "image/png",
            other => panic!("unexpected asset type {other:?}: {asset}"),
        };
        assert!(content_type.contains(expected), "{url}: {content_type}");
        if asset.ends_with("swagger-ui-bundle.js") {
            assert!(
                bytes.len() > 100_000,
                "the real bundle, {} bytes",
                bytes.len()
            );
        }
        if asset.ends_with("swagger-initializer.js") {
            let script = String::from_utf8_lossy(&bytes);
            assert!(script.contains("\"/openapi.json\""), "{script}");
        }
    }
}

/// Whether `check` panics (the validator refuses), without the harness treating it as a failure.
fn refuses(check: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(check)).is_err()
}

#[test]
fn the_reply_validator_refuses_replies_that_differ_from_the_document() {
    let user = json!({
        "id": Uuid::new_v4(), "username": "ada", "email": "ada@example.com", "role": "user",
        "created_at": "2026-01-02T03:04:05.123456Z", "updated_at": "2026-01-02T03:04:05Z",
        "deleted_at": null
    });
    let path = format!("/api/v1/users/{}", Uuid::new_v4());
    let ok = StatusCode::OK;
    let json = "application/json";
    let check = |status: StatusCode, content_type: &str, body: &Value| {
        let path = path.clone();
        let content_type = content_type.to_owned();
        let body = body.clone();
        move || check_reply(&Method::GET, &path, status, &content_type, 1, &body)
    };
    // The baseline passes.
    check(ok, json, &user)();
    check(ok, "application/json; charset=utf-8", &user)();

    let mut missing = user.clone();
    missing.as_object_mut().unwrap().remove("username");
    let mut extra = user.clone();
    extra["password_hash"] = json!("$argon2id$...");
    let mut wrong_type = user.clone();
    wrong_type["created_at"] = json!(12);
    let mut bad_format = user.clone();
    bad_format["id"] = json!("not-a-uuid");
    let mut bad_date = user.clone();
    bad_date["updated_at"] = json!("yesterday");
    for (case, body) in [
        ("a required field missing", &missing),
        ("an undocumented field", &extra),
        ("a wrong type", &wrong_type),
        ("a uuid that is not one", &bad_format),
        ("a date-time that is not one", &bad_date),
    ] {
        assert!(refuses(check(ok, json, body)), "{case} must be refused");
    }
    assert!(
        refuses(check(StatusCode::IM_A_TEAPOT, json, &user)),
        "an undocumented status"
    );
    assert!(
        refuses(check(ok, "text/html", &user)),
        "an undocumented content type"
    );
    let problem = json!({"type": "urn:tally:problem:not_found", "title": "Not found",
                         "status": 404, "detail": "no such user", "code": "not_found"});
    check(StatusCode::NOT_FOUND, "application/problem+json", &problem)();
    assert!(
        refuses(check(StatusCode::NOT_FOUND, json, &problem)),
        "an error that is not problem+json"
    );
    assert!(
        refuses(check(
            StatusCode::UNAUTHORIZED,
            "application/problem+json",
            &problem
        )),
        "a problem whose status is not the reply's"
    );
    // A path the document does not have may only answer with a problem.
    assert!(refuses(|| check_reply(
        &Method::GET,
        "/api/v1/secret",
        ok,
        json,
        1,
        &user
    )));
    check_reply(
        &Method::GET,
        "/api/v1/secret",
        StatusCode::NOT_FOUND,
        "application/problem+json",
        1,
        &problem,
    );
    // A 204 has no body.
    let delete = || {
        check_reply(
            &Method::DELETE,
            &path,
            StatusCode::NO_CONTENT,
            "",
            0,
            &Value::Null,
        )
    };
    delete();
    assert!(refuses(|| check_reply(
        &Method::DELETE,
        &path,
        StatusCode::NO_CONTENT,
        json,
        2,
        &json!({})
    )));
    // A request body the document refuses must not have been accepted.
    assert!(refuses(|| check_request_body(
        &Method::PUT,
        &path,
        ok,
        &json!({"email": "a@b.example", "nickname": "x"})
    )));
    check_request_body(&Method::PUT, &path, ok, &json!({"email": "a@b.example"}));
}
