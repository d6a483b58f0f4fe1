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
    ("post", "/api/v1/transactions/{id}/post"),
    ("post", "/api/v1/transactions/{id}/void"),
    ("post", "/api/v1/transactions/{id}/reverse"),
    ("get", "/api/v1/transactions/history"),
    ("get", "/api/v1/balances/current"),
    ("get", "/api/v1/balances/historical"),
    ("get", "/api/v1/balances/at-time"),
    ("get", "/api/v1/users/{id}/limits"),
    ("put", "/api/v1/users/{id}/limits"),
    ("put", "/api/v1/users/{id}/accounts/{currency}"),
    ("get", "/api/v1/limits/defaults"),
    ("put", "/api/v1/limits/defaults"),
    ("post", "/api/v1/alerts"),
    ("get", "/api/v1/alerts"),
    ("delete", "/api/v1/alerts/{id}"),
    ("get", "/api/v1/currencies"),
    ("get", "/api/v1/rates"),
    ("put", "/api/v1/rates/{from}/{to}"),
    ("post", "/api/v1/fx/quotes"),
    ("post", "/api/v1/transactions/exchange"),
    ("post", "/api/v1/schedules"),
    ("get", "/api/v1/schedules"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks"),
    ("delete", "/api/v1/webhooks/{id}"),
    ("post", "/api/v1/webhooks/{id}/enable"),
    ("get", "/api/v1/webhooks/{id}/deliveries"),
    ("get", "/api/v1/ws"),
    ("post", "/api/v1/ws/ticket"),
    ("get", "/api/v1/schedules/{id}"),
    ("post", "/api/v1/schedules/{id}/pause"),
    ("post", "/api/v1/schedules/{id}/resume"),
    ("post", "/api/v1/schedules/{id}/cancel"),
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
        let public = !api || path.starts_with("/api/v1/auth/") || path == "/api/v1/currencies";
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
        let concrete = path
            .replace("{id}", &id)
            .replace("{currency}", "USD")
            .replace("{from}", "EUR")
            .replace("{to}", "USD");
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
pub(crate) fn references(html: &str) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------------
// The request schemas and the request parsers agree, field by field.
//
// For every request body property, query parameter and the `Idempotency-Key` header, values are
// derived from the documented schema (each enum value and a near miss, both sides of every
// length and numeric bound, the format's edge cases) plus a fixed set of awkward values (control
// characters, non-ASCII, wrong JSON types). The document's own schema is the oracle: each value
// is put into a request the server otherwise accepts, and the server must answer 422
// `validation_failed` naming that field exactly when the schema refuses the request. A rule in
// a parser that the document lacks, or a constraint in the document that no parser enforces,
// fails here.
//
// Rules that relate a request to the ledger's state or two fields to each other are not the
// document's to state, so the requests are built to stay clear of them: a named user exists and
// is not the sender (probe ids are other existing users), `from` is before `to` and `interval`
// comes with both (only `interval` is probed with them), a cursor is one the server issued
// (cursors are not probed: they are opaque and checked by content).

/// Values every field is probed with, whatever its schema says.
fn awkward_values() -> Vec<Value> {
    let mut values = vec![
        Value::Null,
        json!(true),
        json!([]),
        json!({}),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.5),
        json!(i64::MAX),
        json!(u64::MAX),
    ];
    for text in [
        "",
        " ",
        "a",
        "A",
        "USD",
        "usd",
        "US",
        "USDD",
        "XAU",
        "ZZZ",
        "JPY",
        "KWD",
        "user",
        "admin",
        "system",
        "atomic",
        "independent",
        "credit",
        "debit",
        "transfer",
        "reversal",
        "Credit",
        "pending",
        "completed",
        "failed",
        "posted",
        "voided",
        "expired",
        "hour",
        "day",
        "week",
        "a\u{0}b",
        "\u{0}",
        // Long enough for the length bounds of passwords, so that the NUL rule alone decides.
        "correct\u{0}horse battery",
        "tab\there",
        "line\nbreak",
        "\u{7f}",
        "\u{85}",
        "\u{a0}",
        "é",
        "😀",
        "a b",
        "correct horse battery",
        "0",
        "-1",
        "1.5",
        "1e3",
        "true",
        "null",
    ] {
        values.push(json!(text));
    }
    values.push(json!("x".repeat(1000)));
    values
}

fn uuid_values(existing: &[Uuid]) -> Vec<Value> {
    let mut values: Vec<Value> = existing.iter().map(|id| json!(id)).collect();
    let id = existing[0];
    values.extend([
        json!(Uuid::nil()),
        json!(id.simple().to_string()),
        json!(id.braced().to_string()),
        json!(id.urn().to_string()),
        json!(id.hyphenated().to_string().to_uppercase()),
        json!(format!("{id}0")),
        json!("not-a-uuid"),
    ]);
    values
}

const DATE_TIMES: &[&str] = &[
    "2026-01-02T03:04:05Z",
    "2026-01-02t03:04:05z",
    "2026-01-02T03:04:05.123456789123Z",
    "2026-01-02T03:04:05+05:30",
    "2026-01-02T03:04:05-00:00",
    "2024-02-29T00:00:00Z",
    "2026-12-31T23:59:60Z",
    "2026-12-31T18:29:60-05:30",
    "2026-06-30T12:00:60Z",
    "2026-01-02 03:04:05Z",
    "2026-02-29T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-01-02T24:00:00Z",
    "2026-01-02T03:04Z",
    "2026-01-02T03:04:05",
    "2026-01-02T03:04:05+24:00",
    "2026-01-02T03:04:05+0530",
    "2026-01-02T03:04:05.Z",
    "26-01-02T03:04:05Z",
    "+2026-01-02T03:04:05Z",
    "2026-01-02",
    "yesterday",
];

fn email_values() -> Vec<Value> {
    let mut values: Vec<Value> = [
        "a@example.com",
        "o'hara+tag@mail-1.example.com",
        "a.b.c@x.io",
        "a@b.c",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@example",
        "a@-x.com",
        "a@x-.com",
        "a@x..com",
        "ä@example.com",
        "a(b)@example.com",
        "\"a\"@example.com",
        "a@[127.0.0.1]",
        "a b@example.com",
        "a@@example.com",
        "@example.com",
        "a@",
    ]
    .iter()
    .map(|text| json!(text))
    .collect();
    for local in [64, 65] {
        values.push(json!(format!("{}@example.com", "a".repeat(local))));
    }
    for label in [63, 64] {
        values.push(json!(format!("a@{}.com", "b".repeat(label))));
    }
    // 254 and 255 characters in all.
    for last in [61, 62] {
        values.push(json!(format!(
            "{}@{}.{}.{}",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(last)
        )));
    }
    values
}

/// A schema with its `$ref` followed (within the document).
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(target) => {
            let pointer = target.strip_prefix('#').expect("a local $ref");
            resolve(
                document,
                document.pointer(pointer).expect("the $ref resolves"),
            )
        }
        None => schema,
    }
}

/// Values for a field with this schema: the awkward ones and those its keywords suggest.
fn values_for(document: &Value, schema: &Value, existing: &[Uuid]) -> Vec<Value> {
    let schema = resolve(document, schema);
    let mut values = awkward_values();
    if let Some(allowed) = schema["enum"].as_array() {
        // A long list (the currencies) is sampled at both ends.
        let sample: Vec<&Value> = if allowed.len() > 12 {
            allowed
                .iter()
                .take(4)
                .chain(allowed.iter().rev().take(4))
                .collect()
        } else {
            allowed.iter().collect()
        };
        for value in sample {
            values.push(value.clone());
            if let Some(text) = value.as_str() {
                values.push(json!(text.to_uppercase()));
                values.push(json!(text.to_lowercase()));
                values.push(json!(format!("{text} ")));
                values.push(json!(&text[..text.len() - 1]));
            }
        }
    }
    let mut lengths = Vec::new();
    if let Some(min) = schema["minLength"].as_u64() {
        lengths.extend([min.saturating_sub(1), min]);
    }
    if let Some(max) = schema["maxLength"].as_u64() {
        lengths.extend([max, max + 1]);
    }
    for length in lengths {
        let length = length as usize;
        values.push(json!("a".repeat(length)));
        // Characters, not bytes: the bounds count characters.
        values.push(json!("é".repeat(length)));
        if schema["format"] == "email" && length > 12 {
            values.push(json!(format!("{}@example.com", "a".repeat(length - 12))));
        }
    }
    for bound in ["minimum", "maximum"] {
        if let Some(limit) = schema[bound].as_i64() {
            for value in [limit.checked_sub(1), Some(limit), limit.checked_add(1)]
                .into_iter()
                .flatten()
            {
                values.push(json!(value));
            }
        }
    }
    match schema["format"].as_str() {
        Some("uuid") => values.extend(uuid_values(existing)),
        Some("date-time") => values.extend(DATE_TIMES.iter().map(|text| json!(text))),
        Some("email") => values.extend(email_values()),
        _ => {}
    }
    let mut seen = std::collections::HashSet::new();
    values.retain(|value| seen.insert(value.to_string()));
    values
}

/// How the server names the field at a JSON Schema error's instance path
/// (`/transactions/0/user_id` → `transactions[0].user_id`).
fn field_name(instance_path: &str) -> String {
    let mut name = String::new();
    for segment in instance_path.split('/').skip(1) {
        if segment.chars().all(|c| c.is_ascii_digit()) {
            name.push_str(&format!("[{segment}]"));
        } else {
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(segment);
        }
    }
    name
}

/// A validator for a request schema of `document` (JSON Schema 2020-12 with formats asserted,
/// objects exactly as documented).
fn request_validator(document: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = document["components"].clone();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|error| panic!("{schema} does not compile: {error}"))
}

/// Whether the server refused the request as invalid, and the fields it named.
fn refused_fields(reply: &Reply) -> Option<Vec<String>> {
    (reply.status == StatusCode::UNPROCESSABLE_ENTITY && reply.body["code"] == "validation_failed")
        .then(|| reply.error_fields())
}

/// One disagreement, or none.
fn disagreement(
    case: &str,
    schema_errors: Vec<String>,
    reply: &Reply,
    accepted_names: &[&str],
) -> Option<String> {
    let refused = refused_fields(reply);
    if reply.status.is_server_error() {
        return Some(format!("{case}: {} {}", reply.status, reply.body));
    }
    match (schema_errors.is_empty(), refused) {
        (true, None) => None,
        (true, Some(fields)) => Some(format!(
            "{case}: the document accepts it, the server refuses {fields:?}: {}",
            reply.body["errors"]
        )),
        (false, None) => Some(format!(
            "{case}: the document refuses it ({}), the server answered {}",
            schema_errors.join("; "),
            reply.status
        )),
        (false, Some(fields)) => (!fields
            .iter()
            .any(|field| accepted_names.contains(&field.as_str())))
        .then(|| {
            format!("{case}: refused, but the server names {fields:?}, not {accepted_names:?}")
        }),
    }
}

/// What the probes found: every disagreement, and how many requests were sent.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    probes: usize,
}

/// A body to probe: `base` is a request the server accepts; the object at `object_pointer`
/// has its properties probed, and `prefix` is how the server names them (`transactions[0].`
/// for a bulk item).
struct BodyCase<'a> {
    path: String,
    token: Option<&'a str>,
    base: Value,
    object_pointer: &'static str,
    prefix: &'static str,
}

impl<'a> BodyCase<'a> {
    fn top_level(path: &str, token: Option<&'a str>, base: Value) -> BodyCase<'a> {
        BodyCase {
            path: path.to_owned(),
            token,
            base,
            object_pointer: "",
            prefix: "",
        }
    }
}

/// Probes every property of a body case, and its object's unknown and missing fields.
async fn probe_body(
    app: &TestApp,
    document: &Value,
    case: BodyCase<'_>,
    existing: &[Uuid],
    findings: &mut Findings,
) {
    let BodyCase {
        path,
        token,
        base,
        object_pointer,
        prefix,
    } = case;
    let path = path.as_str();
    let template = documented_path_in(document, path);
    let operation_name = format!("POST {template}");
    let method = if path.starts_with("/api/v1/users/") {
        Method::PUT
    } else {
        Method::POST
    };
    let operation_name = operation_name.replace("POST", method.as_str());
    let body_schema = &document["paths"][template][method.as_str().to_lowercase()]["requestBody"]
        ["content"]["application/json"]["schema"];
    let validator = request_validator(document, body_schema);
    let object_schema = {
        let root = resolve(document, body_schema);
        if object_pointer.is_empty() {
            root
        } else {
            resolve(document, &root["properties"]["transactions"]["items"])
        }
    };
    let properties = object_schema["properties"].as_object().expect("properties");
    assert!(
        validator.is_valid(&base),
        "{operation_name}: the base request {base} must be valid"
    );
    let send = |body: Value| {
        let method = method.clone();
        async move { app.request(method, path, token, Some(&body), None).await }
    };
    let baseline = send(base.clone()).await;
    assert!(
        refused_fields(&baseline).is_none() && !baseline.status.is_server_error(),
        "{operation_name}: the base request {base} is refused: {} {}",
        baseline.status,
        baseline.body
    );
    let mut cases: Vec<(String, Option<Value>)> = Vec::new();
    for (name, schema) in properties {
        cases.push((name.clone(), None));
        let mut values = values_for(document, schema, existing);
        if schema["type"] == "array" {
            let item = base.pointer(&format!("{object_pointer}/{name}/0")).cloned();
            let item = item.expect("a base array has an item");
            for bound in ["minItems", "maxItems"] {
                let limit = schema[bound].as_u64().expect("arrays are bounded") as usize;
                for length in [limit.saturating_sub(1), limit, limit + 1] {
                    values.push(Value::Array(vec![item.clone(); length]));
                }
            }
        }
        cases.extend(values.into_iter().map(|value| (name.clone(), Some(value))));
    }
    cases.push(("nickname".to_owned(), Some(json!("x"))));
    for (name, value) in cases {
        let mut body = base.clone();
        let object = body
            .pointer_mut(object_pointer)
            .and_then(Value::as_object_mut)
            .expect("the probed object");
        match &value {
            Some(value) => object.insert(name.clone(), value.clone()),
            None => object.remove(&name),
        };
        let shown = value.as_ref().map_or("(absent)".to_owned(), |value| {
            let text = value.to_string();
            text.chars().take(80).collect()
        });
        let case = format!("{operation_name} {prefix}{name} = {shown}");
        let mut names = vec![
            format!("{prefix}{name}"),
            // A body that changes nothing is refused as a whole.
            "body".to_owned(),
            prefix.trim_end_matches('.').to_owned(),
        ];
        let mut errors = Vec::new();
        for error in validator.iter_errors(&body) {
            // A rule between fields (a transfer's payee) names the other field.
            names.push(field_name(&error.instance_path.to_string()));
            errors.push(format!("at '{}': {error}", error.instance_path));
        }
        let reply = send(body).await;
        findings.probes += 1;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        findings
            .problems
            .extend(disagreement(&case, errors, &reply, &names));
    }
}

/// [`documented_path`] for a document other than the default one.
fn documented_path_in<'a>(document: &'a Value, path: &str) -> &'a str {
    let path = path.split('?').next().unwrap_or(path);
    let (template, _) = documented_path(path).expect("a documented path");
    let (template, _) = document["paths"]
        .as_object()
        .expect("paths")
        .get_key_value(template)
        .expect("the same paths");
    template
}

/// A query parameter's text as the JSON value its schema describes: an integer parameter
/// written in plain decimal is a number, anything else stays a string (and fails `integer`).
fn query_value(schema: &Value, text: &str) -> Value {
    let integer = schema["type"] == "integer"
        && !text.is_empty()
        && text
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit());
    if integer {
        serde_json::from_str(text).unwrap_or_else(|_| json!(text))
    } else {
        json!(text)
    }
}

/// Query parameters as `(name, value)` pairs.
type Query<'a> = &'a [(&'a str, &'a str)];

/// A path, its required query parameters, and the parameters that must come with a probed one.
type QueryCase<'a> = (&'a str, Query<'a>, &'a [(&'a str, Query<'a>)]);

/// Probes every query parameter of `GET path` (except `cursor`) on top of `base`, the
/// required parameters; `companions` are added while probing the named parameter.
async fn probe_query(
    app: &TestApp,
    document: &Value,
    (path, base, companions): QueryCase<'_>,
    token: &str,
    existing: &[Uuid],
    findings: &mut Findings,
) {
    let operation = &document["paths"][path]["get"];
    let parameters: Vec<&Value> = operation["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|parameter| parameter["in"] == "query")
        .collect();
    let check = |query: &[(String, String)]| {
        let mut errors = Vec::new();
        for parameter in &parameters {
            let name = parameter["name"].as_str().expect("a name");
            let schema = resolve(document, &parameter["schema"]);
            match query.iter().find(|(key, _)| key == name) {
                Some((_, text)) => {
                    let validator = request_validator(document, schema);
                    errors.extend(
                        validator
                            .iter_errors(&query_value(schema, text))
                            .map(|error| format!("{name}: {error}")),
                    );
                }
                None if parameter["required"] == true => errors.push(format!("{name} missing")),
                None => {}
            }
        }
        errors
    };
    for parameter in &parameters {
        let name = parameter["name"].as_str().expect("a name");
        if name == "cursor" {
            continue;
        }
        let mut values: Vec<Option<String>> = vec![None];
        for value in values_for(document, &parameter["schema"], existing) {
            match value {
                Value::String(text) => values.push(Some(text)),
                Value::Number(number) => values.push(Some(number.to_string())),
                _ => {}
            }
        }
        let extra = companions
            .iter()
            .find(|(companion_of, _)| *companion_of == name)
            .map_or(&[][..], |(_, extra)| *extra);
        for value in values {
            let mut query: Vec<(String, String)> = base
                .iter()
                .chain(extra)
                .filter(|(key, _)| *key != name)
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect();
            if let Some(text) = &value {
                query.push((name.to_owned(), text.clone()));
            }
            let mut url = reqwest::Url::parse("http://tally.invalid").unwrap();
            url.set_path(path);
            url.query_pairs_mut().extend_pairs(&query);
            let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
            let reply = app.get(&target, token).await;
            findings.probes += 1;
            let shown: String = value
                .as_deref()
                .unwrap_or("(absent)")
                .chars()
                .take(80)
                .collect();
            let case = format!("GET {path}?{name}={shown:?}");
            findings
                .problems
                .extend(disagreement(&case, check(&query), &reply, &[name, "query"]));
        }
    }
}

#[actix_web::test]
async fn the_request_schemas_and_the_parsers_agree_field_by_field() {
    // A small bulk limit, to show the document takes it from the configuration.
    let (app, admin) = TestApp::spawn_with_admin(|settings| settings.bulk.max_items = 3).await;
    let document: Value = serde_json::from_str(
        &tally::routes::openapi::OpenApiDocument::render(
            app.settings.bulk.max_items,
            app.settings.holds.timeout_s_max,
        )
        .0,
    )
    .unwrap();
    let served = app
        .request(Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(served.body, document, "the app serves this document");
    assert_eq!(
        document.pointer("/components/schemas/BulkRequest/properties/transactions/maxItems"),
        Some(&json!(3))
    );
    let target = app.user("target").await;
    let other = app.user("other").await;
    let payee = app.user("payee").await;
    let existing = [other.id];
    let mut findings = Findings::default();

    let admin_token = admin.token.as_str();
    let target_token = target.token.as_str();
    let register_name = format!("probe_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let body = BodyCase::top_level;
    let bulk_item = |base: Value| BodyCase {
        object_pointer: "/transactions/0",
        prefix: "transactions[0].",
        ..BodyCase::top_level("/api/v1/transactions/bulk", Some(admin_token), base)
    };
    let bodies = vec![
        body(
            "/api/v1/auth/register",
            None,
            json!({"username": register_name, "email": "probe@example.com",
                   "password": "correct horse battery"}),
        ),
        body(
            "/api/v1/auth/login",
            None,
            json!({"username": target.username, "password": target.password}),
        ),
        body(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "not a token"}),
        ),
        body(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": "not a token"}),
        ),
        body(
            &format!("/api/v1/users/{}", target.id),
            Some(admin_token),
            json!({"email": "target@example.com"}),
        ),
        body(
            "/api/v1/transactions/credit",
            Some(admin_token),
            json!({"amount": 100, "currency": "USD", "user_id": target.id}),
        ),
        body(
            "/api/v1/transactions/debit",
            Some(admin_token),
            json!({"amount": 1, "currency": "USD", "user_id": target.id,
                   "description": "probe", "reference": "r"}),
        ),
        body(
            "/api/v1/transactions/transfer",
            Some(target_token),
            json!({"amount": 1, "currency": "USD", "to_user_id": other.id}),
        ),
        body(
            "/api/v1/transactions/bulk",
            Some(admin_token),
            json!({"mode": "independent",
                   "transactions": [{"type": "credit", "amount": 1, "currency": "USD",
                                     "user_id": target.id}]}),
        ),
        bulk_item(json!({"mode": "independent",
                         "transactions": [{"type": "credit", "amount": 1, "currency": "USD",
                                           "user_id": target.id, "description": "d"}]})),
        bulk_item(json!({"mode": "atomic",
                         "transactions": [{"type": "transfer", "amount": 1, "currency": "USD",
                                           "from_user_id": target.id, "to_user_id": payee.id}]})),
    ];
    for case in bodies {
        probe_body(&app, &document, case, &existing, &mut findings).await;
    }

    let from_to: Query = &[
        ("from", "2026-01-01T00:00:00Z"),
        ("to", "2026-01-02T00:00:00Z"),
    ];
    let queries: [QueryCase; 5] = [
        ("/api/v1/users", &[], &[]),
        ("/api/v1/transactions/history", &[], &[]),
        ("/api/v1/balances/current", &[], &[]),
        (
            "/api/v1/balances/historical",
            &[("currency", "USD")],
            &[("interval", from_to)],
        ),
        (
            "/api/v1/balances/at-time",
            &[("currency", "USD"), ("at", "2026-01-01T00:00:00Z")],
            &[],
        ),
    ];
    for query in queries {
        probe_query(
            &app,
            &document,
            query,
            admin_token,
            &existing,
            &mut findings,
        )
        .await;
    }

    // The Idempotency-Key header (values an HTTP header can carry).
    for path in ["credit", "bulk"] {
        let path = format!("/api/v1/transactions/{path}");
        let parameter = document["paths"][&path]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "Idempotency-Key")
            .expect("the header is documented");
        let validator = request_validator(&document, &parameter["schema"]);
        let body = if path.ends_with("bulk") {
            json!({"mode": "atomic", "transactions": [{"type": "credit", "amount": 1, "currency": "USD"}]})
        } else {
            json!({"amount": 1, "currency": "USD"})
        };
        let mut keys: Vec<String> = ["", " ", "a b", "~", "k-1", "a\tb"]
            .iter()
            .map(|key| (*key).to_owned())
            .collect();
        keys.extend([249, 250, 251, 255, 256].map(|length| "k".repeat(length)));
        for key in keys {
            let unique = if key.len() >= 3 && !key.contains(' ') && !key.contains('\t') {
                // Fresh keys, so that a repeat is never a replay of another probe's body.
                format!("{}{}", &Uuid::new_v4().simple().to_string()[..3], &key[3..])
            } else {
                key.clone()
            };
            let reply = app
                .request(
                    Method::POST,
                    &path,
                    Some(&target.token),
                    Some(&body),
                    Some(&unique),
                )
                .await;
            findings.probes += 1;
            let errors: Vec<String> = validator
                .iter_errors(&json!(unique))
                .map(|error| error.to_string())
                .collect();
            let case = format!(
                "POST {path} Idempotency-Key: {:?} ({} chars)",
                unique,
                unique.len()
            );
            findings
                .problems
                .extend(disagreement(&case, errors, &reply, &["Idempotency-Key"]));
        }
    }

    let Findings { problems, probes } = findings;
    assert!(
        problems.is_empty(),
        "{} of {probes} probes disagree:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(probes > 1_500, "{probes} probes");
    app.assert_ledger_invariants().await;
}
