//! `tally-load`: Tally's load generator and benchmark harness (issue 6, BENCHMARKS.md).
//!
//! - `tally-load run --workload W`: creates users through the API of a running Tally, runs
//!   workload W for `--duration-s` with `--clients` concurrent clients, prints throughput,
//!   latency percentiles (HdrHistogram) and replies by problem code, as text and JSON, then
//!   checks the ledger contract by SQL (conservation, no overdraft, every acknowledged
//!   transaction present and completed).
//! - `tally-load compare`: one run on this machine and this PostgreSQL: pgbench's built-in TPC-B
//!   script at `--clients`, then every Tally workload against a Tally it starts itself (the
//!   `tally` binary next to this one, on a fresh database); prints each figure and the ratios,
//!   and can write them into BENCHMARKS.md. Every database it creates (pgbench's, one per
//!   Tally it starts) is dropped at the end of its step, on errors and Ctrl-C too.
//!
//! - `tally-load feed`: the live feed's delivery latency. Registers `--users` users, opens one
//!   feed WebSocket (`GET /api/v1/ws`) per user, runs `--transfers` transfers among them with
//!   `--clients` concurrent clients, and reports p50/p99/max of the time from each transfer's
//!   201 reply to the arrival of its event on the payer's feed (an event that arrives before
//!   the reply counts as 0), and how many never arrived within `--wait-s`.
//!
//! - `tally-load ingest`: queue ingestion throughput. Registers `--users` users through a running
//!   Tally, publishes `--messages` requests to its `amqp.requests_queue` acting as an admin that
//!   Tally lists in `amqp.service_users` (each a transfer from the admin's account to a random
//!   user, with `--credits` a credit on behalf of a random user, or with `--bulk-items K` an
//!   independent bulk of K transfers between random users), and reports messages/s and
//!   transactions/s from the first publish to the last reply, the publish-to-reply latency, and
//!   the average group commit over the run (from `/metrics`).
//!
//! - `tally-load touch --accounts N`: the memory benchmark. Registers enough users to have N
//!   accounts over every currency Tally accepts, funds them with admin bulks, then debits one
//!   minor unit from each account once (a reservation on each account's balance actor), and
//!   reports the live balance actors, the actors evicted, and (with `--pid`) Tally's resident
//!   size.
//!
//! Workloads: `transfer-uniform` (random transfers among `--accounts` accounts),
//! `transfer-limited` (the same between accounts that each have every kind of configured limit,
//! none binding), `transfer-hot` (90% of transfers touch one account), `bulk` (`--bulk-clients` clients
//! posting `--bulk-items`-item independent bulks), `read-mix` (80% balance and history reads,
//! 20% transfers), `lifecycle` (each client in a loop: a transfer hold, then a post of all or
//! part of it or a void, then a partial reversal of every other posting). `--rate R` paces the clients to R requests/s in total (Poisson arrivals per
//! client, as `pgbench -R`; open loop: latency is
//! measured from each request's scheduled time, so queueing is not hidden).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Currencies accounts are spread over: an account is a (user, currency) pair, so 10,000
/// accounts need only 400 users (each registration costs an argon2id hash).
const CURRENCIES: [&str; 25] = [
    "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "PLN", "CZK",
    "HUF", "MXN", "BRL", "INR", "CNY", "HKD", "SGD", "KRW", "ZAR", "TRY", "ILS", "THB",
];
/// Minor units credited to every account before a run: what Tally's default `daily_credit`
/// lets a user credit themself in a day (`config/default.toml`, `limits.defaults`).
const FUNDING: i64 = 100_000_000;
/// Registrations and logins in flight during setup.
const SETUP_CONCURRENCY: usize = 16;
/// Pooled connections are dropped after this long idle, before the server's keep-alive (5 s by
/// default) closes them, so that no request is sent on a connection being closed.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
/// The admin (username, password) `compare` bootstraps in the Tally it starts.
const BENCH_ADMIN: (&str, &str) = ("bench-admin", "bench admin password");
/// Items per funding bulk of `touch` (Tally's default `bulk.max_items`).
const BULK_ITEMS_MAX: usize = 10_000;

#[derive(Parser)]
#[command(
    name = "tally-load",
    about = "Tally's load generator and benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against a running Tally.
    Run(RunArgs),
    /// pgbench TPC-B and every Tally workload in one run, with ratios.
    Compare(CompareArgs),
    /// Touch N distinct accounts once each (through their balance actors), then report memory.
    Touch(TouchArgs),
    /// Live feed delivery latency: transfer reply to the event's arrival on the feed.
    Feed(FeedArgs),
    /// Queue ingestion throughput: requests published to RabbitMQ, answered on a reply queue.
    Ingest(IngestArgs),
}

#[derive(clap::Args, Clone)]
struct IngestArgs {
    /// The Tally to set up users through and read `/metrics` from.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Tally's `amqp.requests_queue`.
    #[arg(long, default_value = "tally.requests")]
    queue: String,
    /// An admin listed in Tally's `amqp.service_users`: every request acts as it.
    #[arg(long)]
    admin_username: String,
    #[arg(long)]
    admin_password: String,
    /// Accounts the requests spread over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// 0: each message is one request (see `--credits`); K: each message is an independent bulk
    /// of K transfers between random users.
    #[arg(long, default_value_t = 0)]
    bulk_items: usize,
    /// Single requests are credits on behalf of random users (each also writes an audit entry
    /// in its own database transaction) instead of transfers from the admin's account to
    /// random users.
    #[arg(long)]
    credits: bool,
    /// Bound on waiting for the last replies.
    #[arg(long, default_value_t = 300)]
    wait_s: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(clap::Args, Clone)]
struct FeedArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Users, one feed connection each.
    #[arg(long, default_value_t = 20)]
    users: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 5_000)]
    transfers: usize,
    /// How long to wait for the last events after the last reply.
    #[arg(long, default_value_t = 30)]
    wait_s: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    TransferUniform,
    /// `transfer-uniform` between accounts that each have every kind of configured limit
    /// (none of them binding): what the limit check costs (issue 12). Needs `--admin-username`.
    TransferLimited,
    TransferHot,
    Bulk,
    ReadMix,
    Lifecycle,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Where the contract check reads the ledger (the service's database).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/tally")]
    database_url: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Distinct accounts (user, currency) the transfers spread over.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Concurrent batch clients of the `bulk` workload.
    #[arg(long, default_value_t = 4)]
    bulk_clients: usize,
    #[arg(long, default_value_t = 1_000)]
    bulk_items: usize,
    /// Total requests per second to pace to (open loop); unpaced when absent.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the result as one JSON line too.
    #[arg(long)]
    json: bool,
    /// An admin of that Tally, for `transfer-limited` (it sets the accounts' limits).
    #[arg(long)]
    admin_username: Option<String>,
    #[arg(long)]
    admin_password: Option<String>,
}

#[derive(clap::Args, Clone)]
struct TouchArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Where the contract check reads the ledger (the service's database).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/tally")]
    database_url: String,
    /// Distinct accounts (user, currency) to touch.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// An admin of that Tally: it funds the accounts and debits them (`user_id`).
    #[arg(long)]
    admin_username: String,
    #[arg(long)]
    admin_password: String,
    /// Tally's process id, to report its resident size.
    #[arg(long)]
    pid: Option<u32>,
    /// Print the result as one JSON line too.
    #[arg(long)]
    json: bool,
}

/// What `touch` measured.
#[derive(Debug, Serialize)]
struct TouchReport {
    accounts: usize,
    users: usize,
    currencies: usize,
    /// Seconds spent registering and funding.
    setup_s: f64,
    /// Seconds spent debiting every account once.
    touch_s: f64,
    /// Debits per second.
    throughput: f64,
    latency_ms: Latency,
    replies: BTreeMap<String, u64>,
    acknowledged: usize,
    /// `tally_balance_actors` after the last debit.
    actors_alive: Option<f64>,
    /// `tally_balance_actor_evictions_total` after the last debit.
    actors_evicted: Option<f64>,
    /// Tally's VmRSS after the last debit, MiB.
    rss_mib: Option<f64>,
    /// The highest VmRSS seen while touching (sampled every second), MiB.
    rss_peak_mib: Option<f64>,
    contract: Vec<(String, bool)>,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// PostgreSQL server (no database name) for pgbench and the Tally it starts.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// pgbench scale factor (100,000 accounts per unit).
    #[arg(long, default_value_t = 64)]
    scale: u32,
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Replace the results section of this Markdown file (between `<!-- results:start -->`
    /// and `<!-- results:end -->`).
    #[arg(long)]
    write: Option<PathBuf>,
    /// The `tally` binary; default: next to this one.
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Accounts the memory benchmark touches (`touch`); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    memory_accounts: usize,
}

/// A registered, logged-in user.
#[derive(Clone)]
struct User {
    id: String,
    token: String,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    workload: Workload,
    clients: usize,
    duration_s: f64,
    requests: u64,
    /// Requests per second.
    throughput: f64,
    /// Committed transactions per second (bulk items count one each).
    transactions_per_s: f64,
    latency_ms: Latency,
    /// Replies by status and problem code.
    replies: BTreeMap<String, u64>,
    /// Transactions acknowledged with a 2xx.
    acknowledged: usize,
    contract: Vec<(String, bool)>,
    /// Resident set size of the Tally process after the run, in MiB (`compare` only: it
    /// started that process).
    rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    /// Milliseconds, from a histogram of microseconds.
    fn from_micros(histogram: &Histogram<u64>) -> Latency {
        let quantile = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
            p999: quantile(0.999),
            max: histogram.max() as f64 / 1000.0,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => {
            let report = run(&args).await?;
            finish(&report, print_report, args.json, &report.contract)
        }
        // Ctrl-C drops the comparison future, and with it the services it started and the
        // databases it created.
        Cmd::Compare(args) => tokio::select! {
            result = compare(&args) => result,
            interrupted = tokio::signal::ctrl_c() => {
                interrupted?;
                bail!("interrupted: the databases of this run were dropped")
            }
        },
        Cmd::Touch(args) => {
            let report = touch(&args).await?;
            finish(&report, print_touch_report, args.json, &report.contract)
        }
        Cmd::Feed(args) => feed(&args).await,
        Cmd::Ingest(args) => ingest(&args).await,
    }
}

/// `tally-load ingest` (see the module docs).
async fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    use base64::Engine as _;
    use futures_util::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;
    use std::collections::HashMap;

    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    let http = reqwest::Client::new();
    let base = args.base.trim_end_matches('/');
    let users = create_users(&http, base, args.users, 1).await?;
    let token = log_in(&http, base, &args.admin_username, &args.admin_password).await?;
    // The admin's id is the access token's subject.
    let claims = token
        .split('.')
        .nth(1)
        .context("an access token is a JWT")?;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims)?)?;
    let admin = claims["sub"]
        .as_str()
        .context("the token's subject")?
        .to_owned();
    if args.bulk_items == 0 && !args.credits {
        // The admin pays every transfer: fund it (its own account, so no audit entry).
        let funded = http
            .post(format!("{base}/api/v1/transactions/credit"))
            .bearer_auth(&token)
            .json(&json!({"amount": FUNDING * 1_000, "currency": "USD"}))
            .send()
            .await?;
        anyhow::ensure!(
            funded.status().is_success(),
            "funding the admin: {}",
            funded.text().await?
        );
    }

    let connection =
        lapin::Connection::connect(&args.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let replies = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let reply_to = replies.name().to_string();
    let mut consumer = channel
        .basic_consume(
            reply_to.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let bodies: Vec<Vec<u8>> = (0..args.messages)
        .map(|_| {
            let body = if args.bulk_items == 0 && args.credits {
                let user = &users[rng.random_range(0..users.len())];
                json!({"type": "credit", "acting_user_id": admin, "user_id": user.id, "amount": 1, "currency": "USD"})
            } else if args.bulk_items == 0 {
                let user = &users[rng.random_range(0..users.len())];
                json!({"type": "transfer", "acting_user_id": admin, "to_user_id": user.id, "amount": 1, "currency": "USD"})
            } else {
                let items: Vec<Value> = (0..args.bulk_items)
                    .map(|_| {
                        let from = rng.random_range(0..users.len());
                        let to = (from + rng.random_range(1..users.len())) % users.len();
                        json!({"type": "transfer", "from_user_id": users[from].id, "to_user_id": users[to].id,
                               "amount": 1, "currency": "USD"})
                    })
                    .collect();
                json!({"type": "bulk", "acting_user_id": admin, "mode": "independent", "transactions": items})
            };
            body.to_string().into_bytes()
        })
        .collect();
    let metrics_text = || async {
        anyhow::Ok(
            http.get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?,
        )
    };
    let before = metrics_text().await?;

    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(args.messages);
    let mut confirms = Vec::with_capacity(args.messages);
    for (n, body) in bodies.iter().enumerate() {
        let id = format!("load-{run}-{n}");
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_correlation_id(n.to_string().as_str().into())
            .with_reply_to(reply_to.as_str().into())
            .with_delivery_mode(2);
        sent_at.push(Instant::now());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    args.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?,
        );
    }
    let published = started.elapsed();
    for confirm in confirms {
        confirm.await?;
    }
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut answered: HashMap<usize, ()> = HashMap::with_capacity(args.messages);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_s);
    while answered.len() < args.messages {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let delivery = delivery?;
        let now = Instant::now();
        let Some(n) = delivery
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<usize>().ok())
        else {
            continue;
        };
        if answered.insert(n, ()).is_none() {
            latency.record(now.duration_since(sent_at[n]).as_micros() as u64)?;
            let status = match delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get("tally-status"))
            {
                Some(AMQPValue::LongInt(status)) => status.to_string(),
                _ => "none".to_owned(),
            };
            *statuses.entry(status).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    let after = metrics_text().await?;
    let delta =
        |name: &str| metric(&after, name).unwrap_or(0.0) - metric(&before, name).unwrap_or(0.0);
    let batches = delta("tally_batch_size_count");
    let average_batch = if batches > 0.0 {
        delta("tally_batch_size_sum") / batches
    } else {
        0.0
    };
    let transactions = answered.len() * args.bulk_items.max(1);
    println!(
        "ingest: {} of {} messages answered in {:.1} s (published in {:.1} s): {:.0} messages/s, {:.0} transactions/s",
        answered.len(),
        args.messages,
        elapsed.as_secs_f64(),
        published.as_secs_f64(),
        answered.len() as f64 / elapsed.as_secs_f64(),
        transactions as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "  publish to reply: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; average group commit {:.1} transactions ({batches:.0} commits)",
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
        average_batch,
    );
    println!("  replies by status: {statuses:?}");
    let _ = connection.close(200, "done".into()).await;
    anyhow::ensure!(
        answered.len() == args.messages,
        "{} messages were not answered within --wait-s",
        args.messages - answered.len()
    );
    Ok(())
}

/// `tally-load feed` (see the module docs).
async fn feed(args: &FeedArgs) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    let http = reqwest::Client::new();
    let base = args.base.trim_end_matches('/');
    let users = create_users(&http, base, args.users, 1).await?;
    // Arrival time of each transaction's event on its payer's feed, by transaction id. A lock
    // is right here: the readers only insert, and the report reads once they are done.
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut readers = Vec::new();
    for user in &users {
        let url = format!("{}/api/v1/ws", base.replacen("http", "ws", 1));
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("tally.v1, tally.bearer.{}", user.token).parse()?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("opening the feed")?;
        let (arrivals, me) = (arrivals.clone(), user.id.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    let now = Instant::now();
                    let Ok(event) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if event["payload"]["from_user_id"].as_str() == Some(me.as_str()) {
                        if let Some(id) = event["payload"]["id"].as_str() {
                            arrivals
                                .lock()
                                .expect("not poisoned")
                                .insert(id.to_owned(), now);
                        }
                    }
                }
            }
        }));
    }
    let replies: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let clients = (0..args.clients).map(|client| {
        let (http, users, replies, next) = (http.clone(), &users, replies.clone(), next.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(client as u64));
        async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < args.transfers {
                let from = rng.random_range(0..users.len());
                let to = (from + rng.random_range(1..users.len())) % users.len();
                let reply = http
                    .post(format!("{base}/api/v1/transactions/transfer"))
                    .bearer_auth(&users[from].token)
                    .json(&json!({"to_user_id": users[to].id, "amount": 1, "currency": CURRENCIES[0]}))
                    .send()
                    .await?;
                let at = Instant::now();
                if reply.status() == reqwest::StatusCode::CREATED {
                    let body: Value = reply.json().await?;
                    if let Some(id) = body["id"].as_str() {
                        replies.lock().expect("not poisoned").push((id.to_owned(), at));
                    }
                }
            }
            anyhow::Ok(())
        }
    });
    for result in futures_util::future::join_all(clients).await {
        result?;
    }
    let elapsed = started.elapsed();
    let replies = std::mem::take(&mut *replies.lock().expect("not poisoned"));
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    while Instant::now() < deadline {
        let arrived = arrivals.lock().expect("not poisoned").len();
        if arrived >= replies.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for reader in &readers {
        reader.abort();
    }
    let arrivals = arrivals.lock().expect("not poisoned").clone();
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let (mut missing, mut early) = (0, 0);
    for (id, replied) in &replies {
        match arrivals.get(id) {
            Some(arrived) => {
                if arrived < replied {
                    early += 1;
                }
                histogram.record(arrived.saturating_duration_since(*replied).as_micros() as u64)?;
            }
            None => missing += 1,
        }
    }
    println!(
        "feed: {} transfers acknowledged in {:.1} s ({:.0}/s) over {} users, {} clients",
        replies.len(),
        elapsed.as_secs_f64(),
        replies.len() as f64 / elapsed.as_secs_f64(),
        users.len(),
        args.clients
    );
    println!(
        "delivery latency, 201 reply to the event on the payer's feed: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({early} arrived before the reply, counted as 0; {missing} missing after {} s)",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        args.wait_s
    );
    anyhow::ensure!(missing == 0, "{missing} events never arrived on the feed");
    Ok(())
}

/// Prints `report` (and one JSON line with `--json`), then fails when the contract check did.
fn finish<R: Serialize>(
    report: &R,
    print: fn(&R),
    json: bool,
    contract: &[(String, bool)],
) -> anyhow::Result<()> {
    print(report);
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    anyhow::ensure!(
        contract.iter().all(|(_, held)| *held),
        "the ledger contract is violated"
    );
    Ok(())
}

fn print_report(report: &Report) {
    println!(
        "{:?}: {} clients, {:.1} s: {} requests, {:.0} requests/s, {:.0} transactions/s",
        report.workload,
        report.clients,
        report.duration_s,
        report.requests,
        report.throughput,
        report.transactions_per_s
    );
    print_latency_and_replies(&report.latency_ms, &report.replies);
    print_contract(&report.contract);
}

async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .pool_idle_timeout(POOL_IDLE)
        .build()?;
    let currencies = (args.accounts.min(CURRENCIES.len())).max(1);
    let user_count = args
        .accounts
        .div_ceil(currencies)
        .max(2)
        .max(args.bulk_clients + 1);
    let setup = Instant::now();
    let users = Arc::new(create_users(&http, &args.base, user_count, currencies).await?);
    eprintln!(
        "setup: {} users x {currencies} currencies funded in {:.1?}",
        users.len(),
        setup.elapsed()
    );
    if args.workload == Workload::TransferLimited {
        set_limits(&http, args, &users).await?;
    }

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let clients = if args.workload == Workload::Bulk {
        args.bulk_clients
    } else {
        args.clients
    };
    let per_client_rate = args.rate.map(|rate| rate / clients as f64);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, users, base) = (http.clone(), users.clone(), args.base.clone());
            let (workload, bulk_items, seed) = (args.workload, args.bulk_items, args.seed);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client as u64));
                let mut worker = Worker::new(client);
                let mut lifecycle = Lifecycle::new();
                // Paced: Poisson arrivals per client (exponential gaps, as `pgbench -R`), so
                // the clients do not fire in step; a late reply delays the next send but not
                // its schedule, and latency counts from the schedule (open loop).
                let mut next =
                    per_client_rate.map(|rate| Instant::now() + arrival_gap(&mut rng, rate));
                while Instant::now() < deadline {
                    let scheduled = match (&mut next, per_client_rate) {
                        (Some(next), Some(rate)) => {
                            let scheduled = *next;
                            tokio::time::sleep_until(scheduled.into()).await;
                            *next = scheduled + arrival_gap(&mut rng, rate);
                            scheduled
                        }
                        _ => Instant::now(),
                    };
                    if workload == Workload::Lifecycle {
                        let request = lifecycle.request(&users, &mut rng);
                        let reply = worker.send(&http, &base, request, scheduled).await;
                        lifecycle.advance(reply, &mut rng);
                        continue;
                    }
                    let request = workload_request(
                        workload, client, bulk_items, currencies, &users, &mut rng,
                    );
                    worker.send(&http, &base, request, scheduled).await;
                }
                worker
            })
        })
        .collect();
    let mut total = Worker::new(usize::MAX);
    for task in tasks {
        total.merge(task.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let contract = check_contract(&args.database_url, &total.acknowledged).await?;
    Ok(Report {
        workload: args.workload,
        clients,
        duration_s: elapsed,
        requests: total.latency.len(),
        throughput: total.latency.len() as f64 / elapsed,
        transactions_per_s: total.acknowledged.len() as f64 / elapsed,
        latency_ms: Latency::from_micros(&total.latency),
        replies: total.replies,
        acknowledged: total.acknowledged.len(),
        contract,
        rss_mib: None,
    })
}

/// The gap to the next arrival of a Poisson process of `rate` per second: exponentially
/// distributed with mean `1 / rate` (inverse transform of a uniform sample in (0, 1]).
fn arrival_gap(rng: &mut StdRng, rate: f64) -> Duration {
    let uniform: f64 = 1.0 - rng.random::<f64>();
    Duration::from_secs_f64(-uniform.ln() / rate)
}

/// One client of the `lifecycle` workload: its place in the loop (place a transfer hold in the
/// first currency, resolve it, reverse the posting) and the payee of its current hold (a user
/// index: the payee posts, voids and refunds).
struct Lifecycle {
    step: Step,
    payee: usize,
}

enum Step {
    Hold,
    Resolve { hold: String },
    Reverse { posting: String, amount: i64 },
}

impl Lifecycle {
    fn new() -> Lifecycle {
        Lifecycle {
            step: Step::Hold,
            payee: 0,
        }
    }

    fn request<'a>(&mut self, users: &'a [User], rng: &mut StdRng) -> Request<'a> {
        let post = |path: String, token: &'a str, body: Option<Value>| Request {
            get: false,
            path,
            token,
            body,
        };
        match &self.step {
            Step::Hold => {
                let from = rng.random_range(0..users.len());
                self.payee = (from + rng.random_range(1..users.len())) % users.len();
                let body = json!({"to_user_id": users[self.payee].id,
                                  "amount": rng.random_range(2..=100), "currency": CURRENCIES[0],
                                  "hold": {"timeout_s": 3600}});
                post(
                    "/api/v1/transactions/transfer".into(),
                    &users[from].token,
                    Some(body),
                )
            }
            Step::Resolve { hold } => {
                // Two in three are posted (half of those in part), one in three voided.
                let (action, body) = match rng.random_range(0..6) {
                    0 | 1 => ("void", None),
                    2 | 3 => ("post", Some(json!({}))),
                    _ => ("post", Some(json!({"amount": 1}))),
                };
                post(
                    format!("/api/v1/transactions/{hold}/{action}"),
                    &users[self.payee].token,
                    body,
                )
            }
            Step::Reverse { posting, amount } => post(
                format!("/api/v1/transactions/{posting}/reverse"),
                &users[self.payee].token,
                Some(json!({"amount": (amount / 2).max(1), "reason": "tally-load refund"})),
            ),
        }
    }

    /// The next step after `reply` (status, body) to this step's request. A refused or failed
    /// step starts the loop over.
    fn advance(&mut self, reply: Option<(u16, Value)>, rng: &mut StdRng) {
        let previous = std::mem::replace(&mut self.step, Step::Hold);
        let Some((200 | 201, body)) = reply else {
            return;
        };
        self.step = match previous {
            Step::Hold if body["status"] == "pending" => match body["id"].as_str() {
                Some(hold) => Step::Resolve {
                    hold: hold.to_owned(),
                },
                None => Step::Hold,
            },
            Step::Resolve { .. } if body["status"] == "completed" && rng.random_bool(0.5) => {
                match (body["id"].as_str(), body["amount"].as_i64()) {
                    (Some(posting), Some(amount)) => Step::Reverse {
                        posting: posting.to_owned(),
                        amount,
                    },
                    _ => Step::Hold,
                }
            }
            _ => Step::Hold,
        };
    }
}

/// One request of a workload: method, path, token, body.
struct Request<'a> {
    get: bool,
    path: String,
    token: &'a str,
    body: Option<Value>,
}

fn workload_request<'a>(
    workload: Workload,
    client: usize,
    bulk_items: usize,
    currencies: usize,
    users: &'a [User],
    rng: &mut StdRng,
) -> Request<'a> {
    let transfer = |from: usize, to: usize, currency: usize, rng: &mut StdRng| Request {
        get: false,
        path: "/api/v1/transactions/transfer".into(),
        token: &users[from].token,
        body: Some(
            json!({"to_user_id": users[to].id, "amount": rng.random_range(1..=100), "currency": CURRENCIES[currency]}),
        ),
    };
    let uniform = |rng: &mut StdRng| {
        let from = rng.random_range(0..users.len());
        let to = (from + rng.random_range(1..users.len())) % users.len();
        (from, to, rng.random_range(0..currencies))
    };
    match workload {
        Workload::TransferUniform | Workload::TransferLimited => {
            let (from, to, currency) = uniform(rng);
            transfer(from, to, currency, rng)
        }
        Workload::TransferHot => {
            if rng.random_ratio(9, 10) {
                // Account 0 (user 0, first currency) is on one side of 90% of transfers.
                let other = rng.random_range(1..users.len());
                if rng.random_bool(0.5) {
                    transfer(0, other, 0, rng)
                } else {
                    transfer(other, 0, 0, rng)
                }
            } else {
                let (from, to, currency) = uniform(rng);
                transfer(from, to, currency, rng)
            }
        }
        Workload::Bulk => {
            // Batch client `client` moves money out of its own accounts (user `client`).
            let items: Vec<Value> = (0..bulk_items)
                .map(|_| {
                    let to = (client + rng.random_range(1..users.len())) % users.len();
                    json!({"type": "transfer", "to_user_id": users[to].id, "amount": rng.random_range(1..=100),
                           "currency": CURRENCIES[rng.random_range(0..currencies)]})
                })
                .collect();
            Request {
                get: false,
                path: "/api/v1/transactions/bulk".into(),
                token: &users[client].token,
                body: Some(json!({"mode": "independent", "transactions": items})),
            }
        }
        Workload::Lifecycle => unreachable!("the lifecycle workload's requests depend on replies"),
        Workload::ReadMix => {
            let user = rng.random_range(0..users.len());
            match rng.random_range(0..10) {
                0..=3 => Request {
                    get: true,
                    path: "/api/v1/balances/current".into(),
                    token: &users[user].token,
                    body: None,
                },
                4..=7 => Request {
                    get: true,
                    path: "/api/v1/transactions/history?limit=20".into(),
                    token: &users[user].token,
                    body: None,
                },
                _ => {
                    let (from, to, currency) = uniform(rng);
                    transfer(from, to, currency, rng)
                }
            }
        }
    }
}

/// One client's tallies.
struct Worker {
    latency: Histogram<u64>,
    replies: BTreeMap<String, u64>,
    acknowledged: Vec<Uuid>,
}

impl Worker {
    fn new(_client: usize) -> Worker {
        Worker {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
            replies: BTreeMap::new(),
            acknowledged: Vec::new(),
        }
    }

    /// Sends `request` and records it; returns the reply's status and body (`None` on a
    /// transport error).
    async fn send(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        request: Request<'_>,
        scheduled: Instant,
    ) -> Option<(u16, Value)> {
        let url = format!("{base}{}", request.path);
        let builder = if request.get {
            http.get(url)
        } else {
            http.post(url).json(&request.body)
        };
        let reply = builder.bearer_auth(request.token).send().await;
        let (label, reply) = match reply {
            Ok(reply) => {
                let status = reply.status().as_u16();
                let body: Value = reply.json().await.unwrap_or(Value::Null);
                self.collect_acknowledged(status, &body);
                let label = match body["code"].as_str() {
                    Some(code) => format!("{status} {code}"),
                    None => status.to_string(),
                };
                (label, Some((status, body)))
            }
            Err(error) => (format!("transport error: {}", error.without_url()), None),
        };
        let micros = scheduled.elapsed().as_micros().clamp(1, 120_000_000) as u64;
        self.latency.saturating_record(micros);
        *self.replies.entry(label).or_default() += 1;
        reply
    }

    fn collect_acknowledged(&mut self, status: u16, body: &Value) {
        let mut add = |transaction: &Value| {
            if transaction["status"] == "completed" {
                if let Some(id) = transaction["id"]
                    .as_str()
                    .and_then(|id| Uuid::parse_str(id).ok())
                {
                    self.acknowledged.push(id);
                }
            }
        };
        if status == 201 {
            add(body);
        } else if status == 200 {
            for result in body["results"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                add(&result["transaction"]);
            }
        }
    }

    fn merge(&mut self, other: Worker) -> anyhow::Result<()> {
        self.latency
            .add(&other.latency)
            .context("merging histograms")?;
        for (label, count) in other.replies {
            *self.replies.entry(label).or_default() += count;
        }
        self.acknowledged.extend(other.acknowledged);
        Ok(())
    }
}

/// Registers `count` users (through the API), logs them in, and funds every account with one
/// independent bulk of credits per user.
async fn create_users(
    http: &reqwest::Client,
    base: &str,
    count: usize,
    currencies: usize,
) -> anyhow::Result<Vec<User>> {
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut users = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(SETUP_CONCURRENCY) {
        let created = futures_util::future::join_all(chunk.iter().map(|i| {
            let name = format!("ld{run}u{i}");
            async move {
                let password = "load-password";
                let body = json!({"username": name, "email": format!("{name}@example.com"), "password": password});
                let user: Value = http.post(format!("{base}/api/v1/auth/register")).json(&body).send().await?.json().await?;
                let id = user["id"].as_str().with_context(|| format!("register: {user}"))?.to_owned();
                let login: Value = http
                    .post(format!("{base}/api/v1/auth/login"))
                    .json(&json!({"username": name, "password": password}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let token = login["access_token"].as_str().with_context(|| format!("login: {login}"))?.to_owned();
                let credits: Vec<Value> = CURRENCIES[..currencies]
                    .iter()
                    .map(|currency| json!({"type": "credit", "amount": FUNDING, "currency": currency}))
                    .collect();
                let funded = http
                    .post(format!("{base}/api/v1/transactions/bulk"))
                    .bearer_auth(&token)
                    .json(&json!({"mode": "atomic", "transactions": credits}))
                    .send()
                    .await?;
                if !funded.status().is_success() {
                    bail!("funding failed: {}", funded.text().await.unwrap_or_default());
                }
                anyhow::Ok(User { id, token })
            }
        }))
        .await;
        for user in created {
            users.push(user?);
        }
    }
    Ok(users)
}

/// Logs `username` in and returns the access token.
async fn log_in(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let login: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    Ok(login["access_token"]
        .as_str()
        .with_context(|| format!("login {username}: {login}"))?
        .to_owned())
}

/// Gives every user every kind of configured limit in every currency, each far above what a
/// run moves, so that each transfer pays for the whole check and none is refused.
async fn set_limits(http: &reqwest::Client, args: &RunArgs, users: &[User]) -> anyhow::Result<()> {
    let (Some(username), Some(password)) = (&args.admin_username, &args.admin_password) else {
        bail!("transfer-limited needs --admin-username and --admin-password");
    };
    let admin = log_in(http, &args.base, username, password).await?;
    let limits = json!({"limits": [
        {"kind": "max_per_transaction", "currency": "*", "value": 1_000_000},
        {"kind": "daily_debit", "currency": "*", "value": 1_000_000_000_000i64},
        {"kind": "rolling_debit", "currency": "*", "value": 1_000_000_000_000i64, "window_s": 3600},
        {"kind": "velocity", "currency": "*", "value": 1_000_000_000, "window_s": 60},
        {"kind": "daily_credit", "currency": "*", "value": 1_000_000_000_000i64},
    ]});
    for chunk in users.chunks(SETUP_CONCURRENCY) {
        for reply in futures_util::future::join_all(chunk.iter().map(|user| {
            http.put(format!("{}/api/v1/users/{}/limits", args.base, user.id))
                .bearer_auth(&admin)
                .json(&limits)
                .send()
        }))
        .await
        {
            let reply = reply?;
            if !reply.status().is_success() {
                bail!(
                    "setting limits failed: {}",
                    reply.text().await.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Every currency Tally accepts (ISO 4217 with minor units), in code order.
fn all_currencies() -> Vec<&'static str> {
    let mut codes = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            for c in b'A'..=b'Z' {
                let code = [a, b, c];
                let code = std::str::from_utf8(&code).expect("ASCII");
                if let Ok(currency) = tally::domain::Currency::parse(code) {
                    codes.push(currency.code());
                }
            }
        }
    }
    codes
}

/// VmRSS of process `pid`, MiB, from /proc (Linux).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A sample's value from Prometheus text (`name value` lines without labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

async fn touch(args: &TouchArgs) -> anyhow::Result<TouchReport> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .pool_idle_timeout(POOL_IDLE)
        .build()?;
    let base = args.base.as_str();
    let admin = log_in(&http, base, &args.admin_username, &args.admin_password).await?;
    let currencies = all_currencies();
    let currencies = &currencies[..currencies.len().min(args.accounts.max(1))];
    let user_count = args.accounts.div_ceil(currencies.len());

    let setup = Instant::now();
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut users: Vec<String> = Vec::with_capacity(user_count);
    let indices: Vec<usize> = (0..user_count).collect();
    for chunk in indices.chunks(SETUP_CONCURRENCY * 4) {
        let created = futures_util::future::join_all(chunk.iter().map(|i| {
            let (http, name) = (&http, format!("tc{run}u{i}"));
            async move {
                let body = json!({"username": name, "email": format!("{name}@example.com"), "password": "load-password"});
                let user: Value = http.post(format!("{base}/api/v1/auth/register")).json(&body).send().await?.json().await?;
                anyhow::Ok(user["id"].as_str().with_context(|| format!("register: {user}"))?.to_owned())
            }
        }))
        .await;
        for id in created {
            users.push(id?);
        }
    }
    // Account k is (user k / currencies, currency k % currencies).
    let account = |k: usize| {
        (
            &users[k / currencies.len()],
            currencies[k % currencies.len()],
        )
    };
    let funding: Vec<usize> = (0..args.accounts).collect();
    for chunk in funding.chunks(BULK_ITEMS_MAX) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|&k| {
                let (user, currency) = account(k);
                json!({"type": "credit", "user_id": user, "amount": 100, "currency": currency})
            })
            .collect();
        let reply = http
            .post(format!("{base}/api/v1/transactions/bulk"))
            .bearer_auth(&admin)
            .json(&json!({"mode": "atomic", "transactions": items}))
            .send()
            .await?;
        if !reply.status().is_success() {
            bail!("funding failed: {}", reply.text().await.unwrap_or_default());
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!(
        "setup: {} users x {} currencies registered and funded in {setup_s:.1} s",
        users.len(),
        currencies.len()
    );

    // Every account debited once, each by whichever client takes the next index.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let users = Arc::new(users);
    let currencies: Arc<Vec<&'static str>> = Arc::new(currencies.to_vec());
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = args.pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticks.tick().await;
                if let Some(rss) = rss_mib(pid) {
                    peak.fetch_max(rss as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, base, admin) = (http.clone(), args.base.clone(), admin.clone());
            let (next, users, currencies, total) = (
                next.clone(),
                users.clone(),
                currencies.clone(),
                args.accounts,
            );
            tokio::spawn(async move {
                let mut worker = Worker::new(client);
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= total {
                        break;
                    }
                    let request = Request {
                        get: false,
                        path: "/api/v1/transactions/debit".into(),
                        token: &admin,
                        body: Some(json!({"user_id": users[k / currencies.len()], "amount": 1,
                                          "currency": currencies[k % currencies.len()]})),
                    };
                    worker.send(&http, &base, request, Instant::now()).await;
                }
                worker
            })
        })
        .collect();
    let mut total = Worker::new(usize::MAX);
    for task in tasks {
        total.merge(task.await?)?;
    }
    let touch_s = started.elapsed().as_secs_f64();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let rss = args.pid.and_then(rss_mib);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let contract = check_contract(&args.database_url, &total.acknowledged).await?;
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed) as f64;
    Ok(TouchReport {
        accounts: args.accounts,
        users: users.len(),
        currencies: currencies.len(),
        setup_s,
        touch_s,
        throughput: total.latency.len() as f64 / touch_s,
        latency_ms: Latency::from_micros(&total.latency),
        replies: total.replies,
        acknowledged: total.acknowledged.len(),
        actors_alive: metric(&metrics, "tally_balance_actors"),
        actors_evicted: metric(&metrics, "tally_balance_actor_evictions_total"),
        rss_mib: rss,
        rss_peak_mib: args.pid.map(|_| peak.max(rss.unwrap_or(0.0))),
        contract,
    })
}

fn print_latency_and_replies(l: &Latency, replies: &BTreeMap<String, u64>) {
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    for (label, count) in replies {
        println!("  {label}: {count}");
    }
}

fn print_contract(contract: &[(String, bool)]) {
    for (check, held) in contract {
        println!(
            "  contract: {check}: {}",
            if *held { "holds" } else { "VIOLATED" }
        );
    }
}

fn print_touch_report(report: &TouchReport) {
    println!(
        "touch: {} accounts ({} users x {} currencies) set up in {:.1} s, each debited once in {:.1} s ({:.0} requests/s)",
        report.accounts, report.users, report.currencies, report.setup_s, report.touch_s, report.throughput
    );
    print_latency_and_replies(&report.latency_ms, &report.replies);
    let show = |value: Option<f64>| value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
    println!(
        "  balance actors alive: {}, evicted: {}; Tally RSS: {} MiB (peak {} MiB)",
        show(report.actors_alive),
        show(report.actors_evicted),
        show(report.rss_mib),
        show(report.rss_peak_mib)
    );
    print_contract(&report.contract);
}

/// The ledger contract by SQL: conservation, no overdraft, balance = sum of entries, and every
/// acknowledged transaction present and completed.
async fn check_contract(
    database_url: &str,
    acknowledged: &[Uuid],
) -> anyhow::Result<Vec<(String, bool)>> {
    let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .context("contract check")?;
    tokio::spawn(connection);
    let zero = |sql: &'static str| {
        let db = &db;
        async move { anyhow::Ok(db.query_one(sql, &[]).await?.get::<_, i64>(0) == 0) }
    };
    let mut checks = vec![
        (
            "sum of balances per currency is 0".to_owned(),
            zero("SELECT count(*) FROM (SELECT 1 FROM balances GROUP BY currency HAVING sum(amount) <> 0) x").await?,
        ),
        (
            "no balance below its overdraft limit".to_owned(),
            zero("SELECT count(*) FROM balances WHERE amount - pending < -overdraft_limit").await?,
        ),
        (
            "pending = sum of its open holds".to_owned(),
            zero(
                "SELECT count(*) FROM balances b LEFT JOIN (SELECT from_user_id, currency, sum(amount) t
                 FROM transactions WHERE status = 'pending' GROUP BY 1, 2) h
                 ON h.from_user_id = b.user_id AND h.currency = b.currency WHERE b.pending <> coalesce(h.t, 0)",
            )
            .await?,
        ),
        (
            "balance = sum of its entries".to_owned(),
            zero(
                "SELECT count(*) FROM balances b LEFT JOIN (SELECT user_id, currency, sum(delta) t FROM entries GROUP BY 1, 2) e
                 USING (user_id, currency) WHERE b.amount <> coalesce(e.t, 0)",
            )
            .await?,
        ),
    ];
    let mut present = 0_i64;
    for chunk in acknowledged.chunks(10_000) {
        let chunk = chunk.to_vec();
        present += db
            .query_one(
                "SELECT count(*) FROM transactions WHERE id = ANY($1) AND status = 'completed'",
                &[&chunk],
            )
            .await?
            .get::<_, i64>(0);
    }
    checks.push((
        format!(
            "every acknowledged transaction is committed ({present} of {})",
            acknowledged.len()
        ),
        present == acknowledged.len() as i64,
    ));
    Ok(checks)
}

/// A database this run creates on `server`, dropped (`WITH (FORCE)`) when the guard goes out of
/// scope: at the end of its step, and on an error or a panic alike, so that no run leaves
/// databases behind. Only an interruption that skips destructors (SIGKILL) can.
struct ScratchDatabase {
    server: String,
    name: String,
}

impl ScratchDatabase {
    /// A new, unused name `<prefix>_<uuid>` on `server`; the database itself is created by
    /// whoever uses it.
    fn new(server: &str, prefix: &str) -> ScratchDatabase {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        eprintln!("tally-load: database {name} (dropped at the end of its step)");
        ScratchDatabase {
            server: server.trim_end_matches('/').to_owned(),
            name,
        }
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for ScratchDatabase {
    /// On a thread of its own with its own runtime: `drop` cannot wait on the caller's runtime.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || drop_database(&server, &name))
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread dropping it panicked")));
        match dropped {
            Ok(()) => eprintln!("tally-load: dropped database {}", self.name),
            Err(error) => eprintln!(
                "tally-load: could not drop database {} (drop it by hand): {error:#}",
                self.name
            ),
        }
    }
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` through the server's `postgres` database.
fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config: tokio_postgres::Config = format!("{server}/postgres")
            .parse()
            .context("the server URL")?;
        config.connect_timeout(Duration::from_secs(5));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting")?;
        tokio::spawn(connection);
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .await
            .context("DROP DATABASE")?;
        anyhow::Ok(())
    })
}

/// A `tally serve` child on a fresh database; on drop the child is killed, then its database
/// dropped.
struct Service {
    child: Child,
    base: String,
    database_url: String,
    /// Dropped after [`Service::drop`] killed the child (fields drop after `drop`).
    _database: ScratchDatabase,
}

impl Service {
    /// VmRSS of the process, MiB, from /proc (Linux).
    fn rss_mib(&self) -> Option<f64> {
        rss_mib(self.child.id())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_tally(binary: &PathBuf, server: &str) -> anyhow::Result<Service> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Before the child starts: whatever happens next, the database it creates is dropped.
    let database = ScratchDatabase::new(server, "tally_bench");
    let database_url = database.url();
    let child = Command::new(binary)
        .arg("serve")
        .env("TALLY__DATABASE__URL", &database_url)
        .env("TALLY__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("TALLY__RATE_LIMIT__ENABLED", "false")
        .env("TALLY__LOG__FILTER", "warn")
        .env("TALLY__BOOTSTRAP__ADMIN_USERNAME", BENCH_ADMIN.0)
        .env(
            "TALLY__BOOTSTRAP__ADMIN_EMAIL",
            format!("{}@example.com", BENCH_ADMIN.0),
        )
        .env("TALLY__BOOTSTRAP__ADMIN_PASSWORD", BENCH_ADMIN.1)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
        database_url,
        _database: database,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = service.child.try_wait()? {
            bail!("tally exited before it was ready: {status}");
        }
        if let Ok(reply) = http
            .get(format!("{}/health/ready", service.base))
            .send()
            .await
        {
            if reply.status().is_success() {
                return Ok(service);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "tally did not become ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// pgbench's built-in TPC-B-like script: one database transaction per transfer.
fn pgbench(server: &str, clients: usize, duration_s: u64, scale: u32) -> anyhow::Result<f64> {
    let scratch = ScratchDatabase::new(server, "tally_pgbench");
    let database = scratch.name.clone();
    let url = |db: &str| format!("{server}/{db}");
    let status = Command::new("psql")
        .arg(url("postgres"))
        .args(["-qc", &format!("CREATE DATABASE {database}")])
        .status()?;
    anyhow::ensure!(status.success(), "creating the pgbench database");
    eprintln!("pgbench: initializing scale {scale}");
    let status = Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(url(&database))
        .status()?;
    anyhow::ensure!(status.success(), "pgbench -i failed");
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &duration_s.to_string(),
        ])
        .arg(url(&database))
        .output()?;
    drop(scratch);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

async fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let binary = match &args.tally {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tally"),
    };
    let pgbench_tps = pgbench(&args.server, args.clients, args.duration_s, args.scale)?;
    println!(
        "pgbench TPC-B, {} clients, scale {}: {pgbench_tps:.0} tps",
        args.clients, args.scale
    );
    let mut rows = Vec::new();
    for workload in [
        Workload::TransferUniform,
        Workload::TransferLimited,
        Workload::TransferHot,
        Workload::Bulk,
        Workload::ReadMix,
        Workload::Lifecycle,
    ] {
        let service = start_tally(&binary, &args.server).await?;
        let run_args = RunArgs {
            workload,
            base: service.base.clone(),
            database_url: service.database_url.clone(),
            clients: args.clients,
            duration_s: args.duration_s,
            accounts: args.accounts,
            bulk_clients: 4,
            bulk_items: 1_000,
            rate: None,
            seed: 42,
            json: false,
            admin_username: Some(BENCH_ADMIN.0.to_owned()),
            admin_password: Some(BENCH_ADMIN.1.to_owned()),
        };
        let mut report = run(&run_args).await?;
        report.rss_mib = service.rss_mib();
        print_report(&report);
        rows.push(report);
        drop(service);
    }
    // p99 at half of the maximum transfer-uniform throughput (open loop).
    let half = rows[0].throughput / 2.0;
    let service = start_tally(&binary, &args.server).await?;
    let paced = run(&RunArgs {
        workload: Workload::TransferUniform,
        base: service.base.clone(),
        database_url: service.database_url.clone(),
        clients: args.clients,
        duration_s: args.duration_s,
        accounts: args.accounts,
        bulk_clients: 4,
        bulk_items: 1_000,
        rate: Some(half),
        seed: 43,
        json: false,
        admin_username: None,
        admin_password: None,
    })
    .await?;
    print_report(&paced);
    drop(service);

    let touched = if args.memory_accounts > 0 {
        let service = start_tally(&binary, &args.server).await?;
        let report = touch(&TouchArgs {
            base: service.base.clone(),
            database_url: service.database_url.clone(),
            accounts: args.memory_accounts,
            clients: args.clients,
            admin_username: BENCH_ADMIN.0.to_owned(),
            admin_password: BENCH_ADMIN.1.to_owned(),
            pid: Some(service.child.id()),
            json: false,
        })
        .await?;
        print_touch_report(&report);
        drop(service);
        Some(report)
    } else {
        None
    };

    let uniform = rows[0].transactions_per_s;
    let mut table = String::new();
    table.push_str(&format!(
        "| workload | clients | requests/s | transactions/s | p50 ms | p99 ms | p99.9 ms | vs pgbench TPC-B | Tally RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n| pgbench TPC-B (scale {}) | {} | | {pgbench_tps:.0} | | | | 1.00 | |\n",
        args.scale, args.clients
    ));
    for report in &rows {
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            serde_json::to_value(report.workload)?
                .as_str()
                .unwrap_or_default(),
            report.clients,
            report.throughput,
            report.transactions_per_s,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.p999,
            report.transactions_per_s / pgbench_tps,
            report
                .rss_mib
                .map_or_else(String::new, |rss| format!("{rss:.0}"))
        ));
    }
    table.push_str(&format!(
        "\nRatios: transfer-uniform / pgbench = {:.2}; transfer-limited / transfer-uniform = {:.2}; \
         transfer-hot / transfer-uniform = {:.2}; bulk = {:.0} transfers/s; \
         p99 at half of the transfer-uniform maximum ({half:.0} requests/s paced, {:.0} achieved) = {:.2} ms.\n",
        uniform / pgbench_tps,
        rows[1].transactions_per_s / uniform.max(1e-9),
        rows[2].transactions_per_s / uniform.max(1e-9),
        rows[3].transactions_per_s,
        paced.throughput,
        paced.latency_ms.p99
    ));
    if let Some(touched) = &touched {
        table.push_str(&format!(
            "\nMemory: {} distinct accounts ({} users x {} currencies) each debited once through its balance actor \
             ({:.0} requests/s, p99 {:.2} ms): Tally RSS {:.0} MiB after the last debit, peak {:.0} MiB; \
             {:.0} balance actors alive, {:.0} evicted when idle.\n",
            touched.accounts,
            touched.users,
            touched.currencies,
            touched.throughput,
            touched.latency_ms.p99,
            touched.rss_mib.unwrap_or(f64::NAN),
            touched.rss_peak_mib.unwrap_or(f64::NAN),
            touched.actors_alive.unwrap_or(f64::NAN),
            touched.actors_evicted.unwrap_or(f64::NAN),
        ));
    }
    println!("\n{table}");
    if let Some(path) = &args.write {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (start, end) = ("<!-- results:start -->", "<!-- results:end -->");
        let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
            bail!("{} has no {start} ... {end} section", path.display());
        };
        let updated = format!("{}{start}\n{table}{}", &text[..a], &text[b..]);
        std::fs::write(path, updated)?;
        println!("wrote the results into {}", path.display());
    }
    Ok(())
}
