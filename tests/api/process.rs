//! The real `tally` binary as a child process, for the tests that need a process of their own:
//! `kill -9` (crash), SIGTERM (shutdown), and span export (tracing, whose subscriber is global).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::helpers::TestApp;

/// Fixed so that access tokens issued by one process are valid in the next.
pub const JWT_SECRET: &str = "process-test-secret-process-test-secret!";
/// Bound on the service's start (database creation and migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Recent log lines kept (access lines included); lines of other targets are all kept.
const LOG_LINES_KEPT: usize = 200;
/// Spaces the polls of `wait_for_exit` (never a synchronization by itself).
const EXIT_POLL_PAUSE: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Logs {
    recent: VecDeque<String>,
    /// Every line that is not an access line: startup, shutdown, warnings.
    notable: Vec<Value>,
}

/// A running `tally serve` child process. Dropping it kills the process (also on panic).
pub struct Service {
    child: Child,
    pub address: String,
    pub port: u16,
    logs: Arc<Mutex<Logs>>,
}

impl Service {
    /// Starts the binary on `database_url` and waits for its `listening` log line.
    pub async fn start(database_url: &str) -> Service {
        Service::start_with(database_url, &[]).await
    }

    /// Like [`Service::start`], with extra environment variables (`TALLY__...` settings).
    pub async fn start_with(database_url: &str, env: &[(&str, String)]) -> Service {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .arg("serve")
            .env("TALLY__DATABASE__URL", database_url)
            .env("TALLY__DATABASE__POOL_SIZE", "10")
            .env("TALLY__HTTP__BIND", "127.0.0.1:0")
            .env("TALLY__HTTP__WORKERS", "2")
            .env("TALLY__AUTH__JWT_SECRET", JWT_SECRET)
            // All of a test's clients share 127.0.0.1.
            .env("TALLY__RATE_LIMIT__ENABLED", "false")
            .env("TALLY__LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("TALLY__PROFILE")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tally binary starts");
        let logs = Arc::new(Mutex::new(Logs::default()));
        let (listening, address) = oneshot::channel::<String>();
        // The pipes are drained until the process dies, so it never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_drain(stdout, logs.clone(), Some(listening));
        spawn_drain(stderr, logs.clone(), None);
        let address = match tokio::time::timeout(START_TIMEOUT, address).await {
            Ok(Ok(address)) => address,
            outcome => {
                let _ = child.kill();
                let status = child.wait();
                let recent = logs
                    .lock()
                    .unwrap()
                    .recent
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>();
                panic!(
                    "tally did not report `listening` ({outcome:?}, exit {status:?}); last logs:\n{}",
                    recent.join("\n")
                );
            }
        };
        let port = address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {address}"));
        Service {
            child,
            address,
            port,
            logs,
        }
    }

    /// A harness handle on this process, to reuse the helpers' requests and SQL checks.
    pub fn app(&self, database_url: &str) -> TestApp {
        TestApp {
            address: format!("http://{}", self.address),
            port: self.port,
            database_url: database_url.to_owned(),
            settings: tally::config::Settings::load(None).expect("settings"),
            http: crate::helpers::http_client(),
        }
    }

    /// SIGKILL (`Child::kill`), then reap it.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the service");
        let status = self.child.wait().expect("reap the service");
        assert!(!status.success(), "the service was killed, not stopped");
    }

    /// Sends SIGTERM (through `kill`, which every Unix has).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit by itself, at most `timeout`; `None` when it is still
    /// running then.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the service") {
                return Some(status);
            }
            if Instant::now() >= give_up {
                return None;
            }
            tokio::time::sleep(EXIT_POLL_PAUSE).await;
        }
    }

    /// The JSON log events (access lines excluded) whose `message` is `message`.
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .notable
            .iter()
            .filter(|event| event["message"] == message)
            .cloned()
            .collect()
    }

    /// The most recent log lines that are JSON events, access lines included.
    pub fn recent_events(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .recent
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .collect()
    }

    /// The most recent log lines, access lines included.
    pub fn recent_logs(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .recent
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "last logs of tally (port {}):\n{}",
                self.port,
                self.recent_logs()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` line by line on a thread until it closes, keeping the last lines and every
/// notable event; the first `listening` line's `address` goes to `listening`.
fn spawn_drain(
    pipe: impl std::io::Read + Send + 'static,
    logs: Arc<Mutex<Logs>>,
    mut listening: Option<oneshot::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let event = serde_json::from_str::<Value>(&line).ok();
            if let Some(event) = &event {
                if event["message"] == "listening" {
                    if let (Some(sender), Some(address)) =
                        (listening.take(), event["address"].as_str())
                    {
                        let _ = sender.send(address.to_owned());
                    }
                }
            }
            let mut logs = logs.lock().unwrap();
            if let Some(event) = event {
                if event["target"] != "tally::access" {
                    logs.notable.push(event);
                }
            }
            if logs.recent.len() == LOG_LINES_KEPT {
                logs.recent.pop_front();
            }
            logs.recent.push_back(line);
        }
    });
}

/// Runs `tally verify` against `database_url`: whether it exited 0, and what it printed.
pub fn run_verify(database_url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("verify")
        .env("TALLY__DATABASE__URL", database_url)
        .env("TALLY__LOG__FORMAT", "json")
        .env_remove("TALLY__PROFILE")
        .output()
        .expect("run tally verify");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// A TCP port nothing listens on (bound, read, released).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The sum of `tally_http_requests_total` in a `/metrics` text: HTTP requests answered.
pub fn http_requests_answered(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("tally_http_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
