//! Configuration keys are part of the interface (DESIGN.md section 6): an unknown key, in a
//! file or in a `TALLY__SECTION__KEY` variable, stops the start with the key's name instead of
//! being silently ignored, and every variable the repository itself sets is a known key.

use std::path::Path;
use std::process::{Command, Output};

use crate::process::unused_port;

/// `tally healthcheck` in `dir` with `env`: loads the configuration, then (when it loads) fails
/// fast on a port nothing listens on.
fn healthcheck(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .current_dir(dir)
        .args(args)
        .arg("healthcheck")
        .env("TALLY__HTTP__BIND", format!("127.0.0.1:{}", unused_port()))
        .env_remove("TALLY__PROFILE")
        .env_remove("RUST_BACKTRACE");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run tally healthcheck");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

#[test]
fn an_unknown_key_in_a_variable_is_refused_with_its_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The real key is log.filter.
    let (output, stderr) = healthcheck(dir, &[], &[("TALLY__LOG__LEVEL", "debug")]);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown configuration key `log.level`")
            && stderr.contains("TALLY__LOG__LEVEL"),
        "{stderr}"
    );
    // A section that does not exist, and a known key beside it: only the unknown one is named.
    let (output, stderr) = healthcheck(
        dir,
        &[],
        &[("TALLY__LEDGERS__MAX", "1"), ("TALLY__LOG__FILTER", "warn")],
    );
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("`ledgers.max`"), "{stderr}");
    assert!(!stderr.contains("log.filter"), "{stderr}");

    // The same invocation with only known keys gets past the configuration.
    let (output, stderr) = healthcheck(dir, &[], &[("TALLY__LOG__FILTER", "warn")]);
    assert!(!output.status.success(), "nothing listens there: {stderr}");
    assert!(stderr.contains("connecting to 127.0.0.1"), "{stderr}");
}

#[test]
fn an_unknown_key_in_a_profile_file_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("tally-config-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("config")).expect("a temporary directory");
    std::fs::write(
        dir.join("config/typo.toml"),
        "[database]\nstatement_timeout = 100\nlock_timeout_ms = 50\n",
    )
    .expect("write config/typo.toml");
    let (output, stderr) = healthcheck(&dir, &["--profile", "typo"], &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown configuration key `database.statement_timeout`"),
        "{stderr}"
    );
    assert!(!stderr.contains("lock_timeout_ms"), "{stderr}");
}

/// Every `TALLY__SECTION__KEY` variable named in the tests, the CI scripts, docker-compose,
/// the Dockerfile, the README and the examples is a key the service knows, so that refusing
/// unknown keys breaks none of them (and a renamed key cannot leave them behind).
#[test]
fn every_variable_the_repository_sets_is_a_known_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("docker-compose.yml"),
        root.join("Dockerfile"),
        root.join("README.md"),
    ];
    for dir in ["tests/api", ".ci", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).expect(dir).flatten() {
            // This file names unknown keys on purpose.
            if entry.path().is_file() && !entry.path().ends_with("tests/api/config.rs") {
                files.push(entry.path());
            }
        }
    }
    let known = tally::config::known_keys();
    let mut checked = 0;
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (start, _) in text.match_indices("TALLY__") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // Placeholders: "TALLY__SECTION__KEY", "TALLY__<SECTION>", "..._ADMIN_*".
            if name == "TALLY__" || name == "TALLY__SECTION__KEY" || name.ends_with('_') {
                continue;
            }
            let key = name["TALLY__".len()..].replace("__", ".").to_lowercase();
            assert!(
                known.contains(&key),
                "{}: {name} names no configuration key ({key})",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} variables found");
}
