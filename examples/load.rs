//! A small load driver for a running Tally: registers users, credits them, then runs concurrent
//! clients doing random transfers (some overdrawing, some repeating an Idempotency-Key), with a
//! few debits, credits, holds (half posted by their payee, half left to expire) and refunds
//! mixed in, and prints throughput, latency percentiles, replies by
//! status/code, the average group-commit batch size from `/metrics`, and the ledger contract
//! checked by `tally::verify` (what `tally verify` runs).
//!
//! ```sh
//! cargo run --release --example load -- --clients 64 --transfers 20000
//! cargo run --release --example load -- --clients 16 --duration-s 60   # steady load for a dashboard
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/tally")]
    database_url: String,
    #[arg(long, default_value_t = 200)]
    users: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Total requests across all clients (one in ten is a retry of the previous one; one in ten
    /// a debit, one in twenty a credit, the rest transfers).
    #[arg(long, default_value_t = 20_000)]
    transfers: usize,
    /// Run for this many seconds instead of a number of requests.
    #[arg(long)]
    duration_s: Option<u64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Balance reads (GET /balances/current) after the transfers, across all clients, with one
    /// transfer per `--reads-per-write` reads interleaved (a read-heavy mix).
    #[arg(long, default_value_t = 0)]
    reads: usize,
    #[arg(long, default_value_t = 10)]
    reads_per_write: usize,
}

struct User {
    id: String,
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    let setup = Instant::now();
    let mut users = Vec::with_capacity(args.users);
    for chunk in (0..args.users).collect::<Vec<_>>().chunks(16) {
        let created = futures_util::future::join_all(chunk.iter().map(|i| {
            let http = http.clone();
            let base = args.base.clone();
            let name = format!("load{run}u{i}");
            async move {
                let body = json!({"username": name, "email": format!("{name}@example.com"), "password": "load-password"});
                let user: Value = http.post(format!("{base}/api/v1/auth/register")).json(&body).send().await?.json().await?;
                let login: Value = http
                    .post(format!("{base}/api/v1/auth/login"))
                    .json(&json!({"username": name, "password": "load-password"}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let user = User {
                    id: user["id"].as_str().unwrap_or_default().to_owned(),
                    token: login["access_token"].as_str().unwrap_or_default().to_owned(),
                };
                let credit = http
                    .post(format!("{base}/api/v1/transactions/credit"))
                    .bearer_auth(&user.token)
                    .json(&json!({"amount": 100_000, "currency": "USD"}))
                    .send()
                    .await?;
                anyhow::ensure!(credit.status() == 201, "credit failed: {}", credit.status());
                anyhow::Ok(user)
            }
        }))
        .await;
        for user in created {
            users.push(user?);
        }
    }
    println!(
        "setup: {} users registered, logged in and credited in {:.1?}",
        users.len(),
        setup.elapsed()
    );

    let users = Arc::new(users);
    let metrics_before = scrape(&http, &args.base).await?;
    let per_client = match args.duration_s {
        Some(_) => usize::MAX,
        None => args.transfers / args.clients,
    };
    let deadline = args
        .duration_s
        .map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, users, base) = (http.clone(), users.clone(), args.base.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed + client as u64);
            let run = run.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client.min(100_000));
                let mut replies: BTreeMap<String, u64> = BTreeMap::new();
                let mut previous: Option<(&str, usize, usize, i64, String)> = None;
                for n in 0..per_client {
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        break;
                    }
                    // One in ten re-sends the previous request with its key and body: a client retry.
                    let (kind, from, to, amount, key) = match previous.take() {
                        Some(last) if rng.random_ratio(1, 10) => last,
                        _ => {
                            let from = rng.random_range(0..users.len());
                            let to = (from + rng.random_range(1..users.len())) % users.len();
                            // One request in twenty asks for more than any balance holds.
                            let amount = if rng.random_ratio(1, 20) {
                                10_000_000
                            } else {
                                rng.random_range(1..2_000)
                            };
                            let kind = match rng.random_range(0..20) {
                                0 | 1 => "debit",
                                2 => "credit",
                                3 => "hold",
                                _ => "transfer",
                            };
                            (kind, from, to, amount, format!("{run}-{client}-{n}"))
                        }
                    };
                    previous = Some((kind, from, to, amount, key.clone()));
                    let body = match kind {
                        "transfer" => {
                            json!({"to_user_id": users[to].id, "amount": amount, "currency": "USD"})
                        }
                        // A two-second hold, which the payee captures half of the time; the
                        // rest expire (the sweeper releases them).
                        "hold" => json!({"to_user_id": users[to].id, "amount": amount,
                                         "currency": "USD", "hold": {"timeout_s": 2}}),
                        _ => json!({"amount": amount.min(5_000), "currency": "USD"}),
                    };
                    let path = if kind == "hold" { "transfer" } else { kind };
                    let sent = Instant::now();
                    let reply = http
                        .post(format!("{base}/api/v1/transactions/{path}"))
                        .bearer_auth(&users[from].token)
                        .header("Idempotency-Key", key)
                        .json(&body)
                        .send()
                        .await;
                    latencies.push(sent.elapsed());
                    let label = match reply {
                        Ok(reply) => {
                            let status = reply.status().as_u16();
                            let replayed = reply.headers().contains_key("idempotent-replayed");
                            let body: Value = reply.json().await.unwrap_or(Value::Null);
                            if kind == "hold" && status == 201 && !replayed && n % 2 == 0 {
                                let id = body["id"].as_str().unwrap_or_default();
                                let posted = http
                                    .post(format!("{base}/api/v1/transactions/{id}/post"))
                                    .bearer_auth(&users[to].token)
                                    .json(&json!({}))
                                    .send()
                                    .await
                                    .map(|reply| reply.status().as_u16());
                                let label = format!("hold post: {posted:?}");
                                *replies.entry(label).or_default() += 1;
                            }
                            // One transfer in ten is refunded by its payee.
                            if kind == "transfer" && status == 201 && !replayed && n % 10 == 0 {
                                let id = body["id"].as_str().unwrap_or_default();
                                let refunded = http
                                    .post(format!("{base}/api/v1/transactions/{id}/reverse"))
                                    .bearer_auth(&users[to].token)
                                    .json(&json!({"reason": "load refund"}))
                                    .send()
                                    .await
                                    .map(|reply| reply.status().as_u16());
                                let label = format!("refund: {refunded:?}");
                                *replies.entry(label).or_default() += 1;
                            }
                            match (body["code"].as_str(), replayed) {
                                (Some(code), _) => format!("{status} {code}"),
                                (None, true) => format!("{status} (idempotent replay)"),
                                (None, false) => status.to_string(),
                            }
                        }
                        Err(error) => format!("transport error: {error}"),
                    };
                    *replies.entry(label).or_default() += 1;
                }
                (latencies, replies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let (task_latencies, task_replies) = task.await?;
        latencies.extend(task_latencies);
        for (label, count) in task_replies {
            *replies.entry(label).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    let metrics_after = scrape(&http, &args.base).await?;

    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{} requests, {} clients, {:.2?}: {:.0} requests/s",
        latencies.len(),
        args.clients,
        elapsed,
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  p99.9 {:.2?}  max {:.2?}",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(0.999),
        latencies.last().copied().unwrap_or(Duration::ZERO)
    );
    for (label, count) in &replies {
        println!("  {label}: {count}");
    }
    let batches = metric(&metrics_after, "tally_batch_size_count")
        - metric(&metrics_before, "tally_batch_size_count");
    let items = metric(&metrics_after, "tally_batch_size_sum")
        - metric(&metrics_before, "tally_batch_size_sum");
    println!("group commits during the run: {batches:.0}, transactions in them: {items:.0}, average batch size {:.1}", items / batches.max(1.0));

    if args.reads > 0 {
        read_mix(&http, &args, users.clone()).await?;
    }
    check_invariants(&args.database_url).await
}

/// Many balance reads with a few transfers among them; prints the read rate and the cache hit
/// ratio seen in `/metrics`.
async fn read_mix(
    http: &reqwest::Client,
    args: &Args,
    users: Arc<Vec<User>>,
) -> anyhow::Result<()> {
    let before = scrape(http, &args.base).await?;
    let per_client = args.reads / args.clients;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, users, base) = (http.clone(), users.clone(), args.base.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed + 1_000 + client as u64);
            let reads_per_write = args.reads_per_write.max(1);
            tokio::spawn(async move {
                let mut failures = 0u64;
                for n in 0..per_client {
                    let user = &users[rng.random_range(0..users.len())];
                    let reply = if n % reads_per_write == 0 {
                        let to = &users[rng.random_range(0..users.len())];
                        if to.id == user.id {
                            continue;
                        }
                        http.post(format!("{base}/api/v1/transactions/transfer"))
                            .bearer_auth(&user.token)
                            .json(&json!({"to_user_id": to.id, "amount": 1, "currency": "USD"}))
                            .send()
                            .await
                    } else {
                        http.get(format!("{base}/api/v1/balances/current"))
                            .bearer_auth(&user.token)
                            .send()
                            .await
                    };
                    if !reply
                        .is_ok_and(|reply| reply.status().is_success() || reply.status() == 422)
                    {
                        failures += 1;
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = 0;
    for task in tasks {
        failures += task.await?;
    }
    let elapsed = started.elapsed();
    let after = scrape(http, &args.base).await?;
    let count = |text: &str, result: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("tally_cache_requests_total")
                    && line.contains(&format!("result=\"{result}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hits = count(&after, "hit") - count(&before, "hit");
    let misses = count(&after, "miss") - count(&before, "miss");
    let errors = count(&after, "error") - count(&before, "error");
    println!(
        "read mix: {} requests ({} reads per write) in {:.2?}: {:.0} requests/s, {failures} failed",
        per_client * args.clients,
        args.reads_per_write,
        elapsed,
        (per_client * args.clients) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "cache: {hits:.0} hits, {misses:.0} misses, {errors:.0} errors: hit ratio {:.1}%",
        100.0 * hits / (hits + misses + errors).max(1.0)
    );
    Ok(())
}

async fn scrape(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The ledger contract, checked by `tally::verify` (what `tally verify` runs).
async fn check_invariants(database_url: &str) -> anyhow::Result<()> {
    let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // The retention this environment configures, as `tally verify` would read it.
    let retention = tally::config::Settings::load(None)?.idempotency.retention();
    let report = tally::verify::verify(&db, retention).await?;
    print!("{report}");
    anyhow::ensure!(report.is_clean(), "ledger invariants violated");
    Ok(())
}
