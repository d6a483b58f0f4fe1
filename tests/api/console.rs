//! The web console (DESIGN.md section 11): served from the binary under a strict
//! Content-Security-Policy, `/` leads to it, `GET /api/v1/currencies` gives it the exponents; and
//! the whole console end to end in headless Chromium (`tests/browser/console.mjs`, Playwright),
//! against this app, with every host but 127.0.0.1 unreachable.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, ADMIN_PASSWORD, ADMIN_USERNAME};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[actix_web::test]
async fn the_console_is_served_from_the_binary_under_a_strict_policy() {
    let app = TestApp::spawn().await;
    let client = client();
    for path in ["/", "/console"] {
        let reply = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::FOUND, "{path}");
        assert_eq!(reply.headers()["location"], "/console/", "{path}");
    }
    let page = client
        .get(format!("{}/console/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(policy, tally::routes::console::CONTENT_SECURITY_POLICY);
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();

    // Every file the page and its modules load is served from the binary with its type and
    // the same policy; none comes from elsewhere.
    let mut pending: Vec<String> = crate::openapi::references(&html);
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = pending.pop() {
        // The page's one link out, for browsers without JavaScript: the API docs.
        if path.starts_with('#') || path == "/docs/" || !seen.insert(path.clone()) {
            continue;
        }
        assert!(path.starts_with("/console/"), "{path} is not the console's");
        let reply = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{path}");
        assert_eq!(
            reply.headers()["content-security-policy"],
            policy.as_str(),
            "{path}"
        );
        let kind = reply.headers()["content-type"].to_str().unwrap().to_owned();
        let body = reply.text().await.unwrap();
        if path.ends_with(".js") {
            assert!(kind.starts_with("text/javascript"), "{path}: {kind}");
            let directory = path.rsplit_once('/').unwrap().0.to_owned();
            for line in body.lines().filter(|line| line.starts_with("import ")) {
                let Some(target) = line.split('"').nth(1) else {
                    continue;
                };
                pending.push(format!("{directory}/{}", target.trim_start_matches("./")));
            }
        } else if path.ends_with(".css") {
            assert!(kind.starts_with("text/css"), "{path}: {kind}");
        }
    }
    assert!(seen.len() >= 8, "{seen:?}");

    let missing = client
        .get(format!("{}/console/nothing.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
}

#[actix_web::test]
async fn currencies_are_public_with_their_exponents() {
    let app = TestApp::spawn().await;
    let reply = client()
        .get(format!("{}/api/v1/currencies", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let body: Value = reply.json().await.unwrap();
    let exponent = |code: &str| {
        body["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"] == code)
            .map(|c| c["exponent"].as_i64().unwrap())
    };
    assert_eq!(exponent("USD"), Some(2));
    assert_eq!(exponent("JPY"), Some(0));
    assert_eq!(exponent("BHD"), Some(3));
    // Only what `currency` fields accept: no precious metals, no fund codes without units.
    assert_eq!(exponent("XAU"), None);
    let codes: Vec<&str> = body["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    assert_eq!(codes, sorted);
}

/// Where the browser test writes its screenshots (kept as CI artifacts).
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

/// The console end to end in headless Chromium: `tests/browser/console.mjs` (read it for the
/// steps) drives two users and an admin through this app. Needs Node.js and Debian's
/// `chromium` (`.ci/run` installs Chromium when missing); installs the pinned Playwright driver
/// on its first run.
#[actix_web::test]
async fn the_console_works_end_to_end_in_a_real_browser() {
    // Access tokens that expire while the test runs: the console must refresh them.
    let (app, _admin) = TestApp::spawn_with_admin(|settings| {
        settings.auth.access_token_ttl_s = 8;
    })
    .await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/console.mjs");
    // The pinned driver (tests/browser/package-lock.json), installed on the first run.
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        let installed = Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(root.join("tests/browser"))
            .status()
            .expect("npm runs (Node.js is a test prerequisite: README)");
        assert!(installed.success(), "npm ci in tests/browser failed");
    }
    let base = app.address.clone();
    let output = actix_web::rt::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("TALLY_BASE", base)
            .env("TALLY_ADMIN_USERNAME", ADMIN_USERNAME)
            .env("TALLY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("SCREENSHOTS", screenshots())
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    eprintln!("{printed}");
    app.assert_ledger_invariants().await;
}
