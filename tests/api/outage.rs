//! PostgreSQL stopped and started under load (DESIGN.md section 5, "Failure"; issue 5 item 7).
//! The test runs its own PostgreSQL server (initdb into a temporary directory, another port),
//! so stopping it disturbs no other test. While it is down, writes must fail fast with 503
//! (no pile-up behind connect attempts) and readiness must say so; when it returns, Tally must
//! recover by itself, under load. Afterwards every failed request is re-sent with its key and
//! decided exactly once, the replies reconcile with the database to the cent, and
//! `tally verify` finds the ledger clean.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::{Method, StatusCode};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::concurrency::{fund, random_op, reconcile, send, users, Auditor, Op, Outcome};
use crate::helpers::*;
use crate::process::{run_verify, unused_port};

const USERS: usize = 16;
const CLIENTS: usize = 16;
/// Upper bound of requests per client (the load is stopped far earlier).
const OPS_PER_CLIENT_MAX: usize = 20_000;
/// Acknowledged replies before the stop, and after the restart (recovery under load).
const ACKS_BEFORE_AND_AFTER: usize = 150;
/// Replies collected while the database is down and readiness says so.
const REPLIES_WHILE_DOWN: usize = 1_000;
/// A refusal while the database is down must come at once: far below any connect or reply
/// timeout (a debug build, on a busy machine).
const FAIL_FAST_MAX: Duration = Duration::from_millis(500);
const SEED: u64 = 0x07a6_e000;
/// Bound on every wait of the test.
const DEADLINE: Duration = Duration::from_secs(30);
/// Spaces the attempts of a poll (never a synchronization by itself).
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// A PostgreSQL server of the test's own, in a temporary directory, stopped and removed on drop.
/// As root (CI), its programs run as the `postgres` user (initdb refuses root).
struct TempPostgres {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl TempPostgres {
    async fn start() -> TempPostgres {
        let bin = postgres_bin_dir();
        let root = std::env::temp_dir().join(format!("tally-outage-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&root).expect("create the server's directory");
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&root));
        }
        let server = TempPostgres {
            bin,
            root,
            port: unused_port(),
            as_postgres,
        };
        let data = server.data();
        server
            .command(
                "initdb",
                &["-A", "trust", "-U", "postgres", "--no-sync", "-D"],
            )
            .arg(&data)
            .output()
            .map(|output| assert!(output.status.success(), "initdb: {output:?}"))
            .expect("run initdb");
        server.start_server().await;
        server
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The program `name` of the server's installation, run as `postgres` when we are root.
    fn command(&self, name: &str, args: &[&str]) -> Command {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args);
        command
    }

    /// `pg_ctl start`, waiting until it accepts connections (pg_ctl -w, bounded by -t).
    async fn start_server(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.root.display()
        );
        let mut command = self.command("pg_ctl", &["start", "-w", "-t", "30", "-o", &options]);
        command
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("server.log"));
        run_blocking(command).await;
    }

    /// `pg_ctl stop -m fast`: disconnects every client and waits until the server is down.
    async fn stop_server(&self) {
        let mut command = self.command("pg_ctl", &["stop", "-w", "-t", "30", "-m", "fast"]);
        command.arg("-D").arg(self.data());
        run_blocking(command).await;
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl", &["stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `TALLY_TEST_PG_BINDIR`, else the newest `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TALLY_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server programs in /usr/lib/postgresql (or set TALLY_TEST_PG_BINDIR)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("initdb"))
                .exists()
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an installed PostgreSQL with initdb")
        .1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a command");
    assert!(output.status.success(), "{command:?}: {output:?}");
}

/// Runs `command` on the blocking pool, so the test's runtime (the load, the app's health
/// monitor) keeps going meanwhile.
async fn run_blocking(mut command: Command) {
    tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .expect("the command's thread");
}

/// One request of the load: what was sent, how it was answered, when and how fast.
struct Sent {
    op: Op,
    outcome: Outcome,
    at: Instant,
    latency: Duration,
}

async fn wait_until(what: &str, condition: impl Fn() -> bool, progress: &Notify) {
    let give_up = Instant::now() + DEADLINE;
    while !condition() {
        let left = give_up.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, progress.notified())
                .await
                .is_ok(),
            "{what} did not happen within {DEADLINE:?}"
        );
    }
}

/// Polls readiness until it answers `wanted`; returns when it did.
async fn readiness_becomes(app: &TestApp, wanted: StatusCode) -> Instant {
    let give_up = Instant::now() + DEADLINE;
    loop {
        let reply = app
            .request(Method::GET, "/health/ready", None, None, None)
            .await;
        if reply.status == wanted {
            return Instant::now();
        }
        assert!(
            Instant::now() < give_up,
            "readiness stayed {}: {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[actix_web::test]
async fn postgres_down_under_load_gives_fast_503s_and_tally_recovers_when_it_returns() {
    let started = Instant::now();
    let postgres = TempPostgres::start().await;
    let database_url = postgres.url("tally_outage");
    let app = TestApp::spawn_with(|settings| {
        settings.database.url = database_url.clone();
        settings.database.health_check_interval_ms = 100;
        settings.database.connect_timeout_ms = 1_000;
    })
    .await;
    let users = users(&app, "outage", USERS).await;
    let mut auditor = Auditor::default();
    fund(&app, &users, &mut auditor, |_| 100_000).await;

    let acked = Cell::new(0usize);
    let replies = Cell::new(0usize);
    let stop = Cell::new(false);
    let progress = Notify::new();
    let sent: RefCell<Vec<Sent>> = RefCell::new(Vec::new());
    let client = |client: usize| {
        let (app, users, acked, replies, stop, progress, sent) =
            (&app, &users, &acked, &replies, &stop, &progress, &sent);
        async move {
            let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(client as u64));
            for n in 0..OPS_PER_CLIENT_MAX {
                if stop.get() {
                    break;
                }
                let op = random_op(&mut rng, USERS, Some(format!("o{client}-{n}")));
                let at = Instant::now();
                let (outcome, _) = send(app, users, &op).await;
                let latency = at.elapsed();
                replies.set(replies.get() + 1);
                if let Outcome::Completed(_) = outcome {
                    acked.set(acked.get() + 1);
                }
                progress.notify_one();
                sent.borrow_mut().push(Sent {
                    op,
                    outcome,
                    at,
                    latency,
                });
            }
        }
    };
    struct Timeline {
        stopped: Instant,
        unready: Instant,
        restarting: Instant,
        recovered: Instant,
        ready: Instant,
    }
    let controller = async {
        wait_until(
            "the first acknowledgements",
            || acked.get() >= ACKS_BEFORE_AND_AFTER,
            &progress,
        )
        .await;
        postgres.stop_server().await;
        let stopped = Instant::now();
        let unready = readiness_becomes(&app, StatusCode::SERVICE_UNAVAILABLE).await;
        let target = replies.get() + REPLIES_WHILE_DOWN;
        wait_until(
            "replies while the database is down",
            || replies.get() >= target,
            &progress,
        )
        .await;
        let restarting = Instant::now();
        postgres.start_server().await;
        let target = acked.get() + ACKS_BEFORE_AND_AFTER;
        wait_until(
            "acknowledgements after the restart",
            || acked.get() >= target,
            &progress,
        )
        .await;
        let recovered = Instant::now();
        let ready = readiness_becomes(&app, StatusCode::OK).await;
        stop.set(true);
        Timeline {
            stopped,
            unready,
            restarting,
            recovered,
            ready,
        }
    };
    let (timeline, _) =
        futures_util::future::join(controller, join_all((0..CLIENTS).map(client))).await;
    let sent = sent.into_inner();

    // While the database was down and readiness said so, every request was refused at once.
    let mut down_latencies = Vec::new();
    for request in &sent {
        let during_outage =
            request.at >= timeline.unready && request.at + request.latency <= timeline.restarting;
        if during_outage {
            assert_eq!(
                request.outcome,
                Outcome::ServerError {
                    status: 503,
                    code: "unavailable".to_owned()
                },
                "while the database is down: {:?}",
                request.op
            );
            down_latencies.push(request.latency);
        }
        match &request.outcome {
            Outcome::ServerError { status, code } => assert_eq!(
                (*status, code.as_str()),
                (503, "unavailable"),
                "an outage gives 503 unavailable, {:?}",
                request.op
            ),
            Outcome::NoReply { error, .. } => panic!("no reply for {:?}: {error}", request.op),
            _ => {}
        }
        auditor.record(&request.op, &request.outcome);
    }
    down_latencies.sort();
    assert!(
        down_latencies.len() >= REPLIES_WHILE_DOWN / 2,
        "only {} requests fell in the outage window",
        down_latencies.len()
    );
    let slowest = *down_latencies.last().expect("outage replies");
    assert!(
        slowest < FAIL_FAST_MAX,
        "a refusal during the outage took {slowest:?}: requests pile up"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let sample = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    };
    // Money requests go straight to the ledger (the parties are checked in the group commit),
    // which refuses at once while the health flag is down; reads refuse at the pool.
    let refused_down = sample("tally_pipeline_rejections_total{reason=\"database_down\"}")
        + metrics
            .lines()
            .find(|line| {
                line.starts_with(
                    "tally_db_pool_errors_total{pool=\"api\",reason=\"database_down\"}",
                )
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
    assert!(refused_down > 0.0, "nothing was refused as database_down");
    assert_eq!(sample("tally_database_up "), 1.0);

    // Re-send what failed, with the same keys: each is decided now, exactly once.
    let failed: Vec<&Op> = sent
        .iter()
        .filter(|request| !request.outcome.is_decided())
        .map(|request| &request.op)
        .collect();
    let mut committed_despite_503 = 0;
    for chunk in failed.chunks(16) {
        let (app, users) = (&app, &users);
        let outcomes = join_all(chunk.iter().map(|op| async move {
            let give_up = Instant::now() + DEADLINE;
            loop {
                let (outcome, replayed) = send(app, users, op).await;
                if outcome.is_decided() || Instant::now() > give_up {
                    return (outcome, replayed);
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        }))
        .await;
        for (op, (outcome, replayed)) in chunk.iter().zip(outcomes) {
            assert!(outcome.is_decided(), "re-sent {op:?}: {outcome:?}");
            committed_despite_503 += usize::from(replayed);
            auditor.record(op, &outcome);
        }
    }
    let completed = reconcile(&app, &users, &auditor).await;
    let (clean, printed) = run_verify(&database_url);
    assert!(clean, "tally verify after the outage:\n{printed}");

    let acknowledged = sent
        .iter()
        .filter(|request| matches!(request.outcome, Outcome::Completed(_)))
        .count();
    eprintln!(
        "outage: {} requests, {acknowledged} acknowledged, {} got 503 ({committed_despite_503} \
         had committed and were replayed on re-send); readiness 503 {:?} after the stop; {} \
         requests while down, all 503 in p50 {:?} p99 {:?} max {slowest:?}; {refused_down} \
         connection requests refused at once (database_down); database down for {:?}; load acknowledged \
         again {:?} after the restart began, readiness 200 after {:?}; {completed} completed \
         transactions; tally verify clean; total {:?}",
        sent.len(),
        failed.len(),
        timeline.unready - timeline.stopped,
        down_latencies.len(),
        percentile(&down_latencies, 0.5),
        percentile(&down_latencies, 0.99),
        timeline.restarting - timeline.stopped,
        timeline.recovered - timeline.restarting,
        timeline.ready - timeline.restarting,
        started.elapsed()
    );
}
