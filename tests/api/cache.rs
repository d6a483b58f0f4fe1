//! The Redis balance cache against a redis-server of the test's own (a free port on
//! 127.0.0.1, no persistence), which the test kills and restarts: `GET /balances/current` is
//! served from Redis when it holds the user's balances, a writer always reads its own writes
//! (before, during and after the outage), requests keep succeeding while Redis is down, and
//! `/health/ready` reports the cache `degraded` and then `ok` again.
//!
//! `tally_cache_requests_total` is read from `/metrics`, whose registry every app of the test
//! process shares: a count can only grow through other tests, so the checks are "at least".

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A redis-server child process on 127.0.0.1; killed when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

impl RedisServer {
    async fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.connection().await.is_some() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer within 10 s"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection that answered PING, or `None`.
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        let attempt = async {
            let mut connection = client.get_multiplexed_async_connection().await.ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut connection).await.ok()?;
            (pong == "PONG").then_some(connection)
        };
        actix_web::rt::time::timeout(Duration::from_secs(1), attempt)
            .await
            .ok()
            .flatten()
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill redis-server");
            child.wait().expect("reap redis-server");
        }
    }

    /// Sends a signal (STOP, CONT) to the server process.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The cached hash of `user` at the current epoch, as Redis holds it.
async fn cached_hash(redis: &RedisServer, user: &TestUser) -> HashMap<String, String> {
    let mut connection = redis.connection().await.expect("redis answers");
    let epoch: Option<String> = redis::cmd("GET")
        .arg("tally:cache:epoch")
        .query_async(&mut connection)
        .await
        .expect("GET epoch");
    let key = format!("tally:bal:{}:{}", epoch.as_deref().unwrap_or("0"), user.id);
    redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .expect("HGETALL")
}

/// `(hit, miss, error)` counts of `tally_cache_requests_total`.
async fn cache_counts(app: &TestApp) -> (f64, f64, f64) {
    let text = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let count = |result: &str| {
        let prefix = format!("tally_cache_requests_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (count("hit"), count("miss"), count("error"))
}

/// The cache's state in `/health/ready`, which must say ready (Redis down is only degraded).
async fn cache_health(app: &TestApp) -> String {
    let reply = app
        .http
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .expect("readiness");
    let reply = TestApp::checked_reply(&reqwest::Method::GET, reply).await;
    assert_eq!(reply.status, StatusCode::OK, "readiness: {}", reply.body);
    assert_eq!(reply.body["status"], "ready", "{}", reply.body);
    assert_eq!(reply.body["database"], "ok", "{}", reply.body);
    reply.body["cache"].as_str().expect("cache").to_owned()
}

/// Polls readiness until the cache reports `want` (at most `within`); between polls, `between`
/// runs (traffic, or nothing). Returns how long it took.
async fn wait_for_cache<F, Fut>(
    app: &TestApp,
    want: &str,
    within: Duration,
    mut between: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..100_000 {
        last = cache_health(app).await;
        if last == want {
            return started.elapsed();
        }
        if started.elapsed() > within {
            break;
        }
        between().await;
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("readiness did not report the cache {want:?} within {within:?} (last: {last:?})");
}

type Model = HashMap<(usize, &'static str), i64>;

/// The user's balances as `/balances/current` reports them (currency → amount), zeros left
/// out; asserts 200 and `available == amount`.
async fn current(app: &TestApp, user: &TestUser) -> BTreeMap<String, i64> {
    let reply = app.get("/api/v1/balances/current", &user.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .inspect(|b| assert_eq!(b["available"], b["amount"], "{b}"))
        .map(|b| {
            (
                b["currency"].as_str().unwrap().to_owned(),
                b["amount"].as_i64().unwrap(),
            )
        })
        .filter(|(_, amount)| *amount != 0)
        .collect()
}

fn expected(model: &Model, user: usize) -> BTreeMap<String, i64> {
    model
        .iter()
        .filter(|((u, _), amount)| *u == user && **amount != 0)
        .map(|((_, currency), amount)| (currency.to_string(), *amount))
        .collect()
}

/// One random money movement by one of `users`, then an immediate read of the balances of
/// everyone it touched: each must equal the model (read-your-writes, never stale). Returns the
/// longest request time.
/// One random write of `step`: the request, and how the model changes when it commits.
struct Write {
    path: &'static str,
    body: serde_json::Value,
    /// `(user, currency, delta)` applied to the model on commit.
    effects: Vec<(usize, &'static str, i64)>,
    /// The model says it must be refused (`insufficient_funds`).
    refused: bool,
    readers: [usize; 2],
}

fn random_write(users: &[TestUser], model: &Model, rng: &mut StdRng) -> Write {
    let user = rng.random_range(0..users.len());
    let other = (user + 1) % users.len();
    let currency = ["USD", "EUR"][rng.random_range(0..2)];
    let balance = model.get(&(user, currency)).copied().unwrap_or(0);
    let kind = rng.random_range(0..3);
    let amount = if kind == 0 || balance == 0 || rng.random_range(0..5) == 0 {
        rng.random_range(1..=2_000)
    } else {
        rng.random_range(1..=balance)
    };
    let (path, body, effects) = match kind {
        0 => (
            "/api/v1/transactions/credit",
            json!({"amount": amount, "currency": currency}),
            vec![(user, currency, amount)],
        ),
        1 => (
            "/api/v1/transactions/debit",
            json!({"amount": amount, "currency": currency}),
            vec![(user, currency, -amount)],
        ),
        _ => (
            "/api/v1/transactions/transfer",
            json!({"to_user_id": users[other].id, "amount": amount, "currency": currency}),
            vec![(user, currency, -amount), (other, currency, amount)],
        ),
    };
    Write {
        path,
        body,
        effects,
        refused: kind != 0 && amount > balance,
        readers: [user, other],
    }
}

/// Sends `write` as `users[writer]` (with `key` when given) and returns the reply.
async fn send_write(app: &TestApp, token: &str, write: &Write, key: Option<&str>) -> Reply {
    app.request(
        reqwest::Method::POST,
        write.path,
        Some(token),
        Some(&write.body),
        key,
    )
    .await
}

/// A committed (201) or refused (422) reply to `write`, checked against the model and applied
/// to it.
fn settle(model: &mut Model, write: &Write, reply: &Reply, context: &str) {
    if write.refused {
        reply.assert_problem(422, "insufficient_funds");
    } else {
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{context}: {} {}: {}",
            write.path,
            write.body,
            reply.body
        );
        for &(user, currency, delta) in &write.effects {
            *model.entry((user, currency)).or_insert(0) += delta;
        }
    }
}

/// One random write by a random user, then both parties read their balances back: they must be
/// what the model says (read your writes). Returns the slowest of the three requests.
async fn step(
    app: &TestApp,
    users: &[TestUser],
    model: &mut Model,
    rng: &mut StdRng,
    context: &str,
) -> Duration {
    let write = random_write(users, model, rng);
    let started = Instant::now();
    let reply = send_write(app, &users[write.readers[0]].token, &write, None).await;
    let mut slowest = started.elapsed();
    settle(model, &write, &reply, context);
    for reader in write.readers {
        let started = Instant::now();
        let got = current(app, &users[reader]).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            got,
            expected(model, reader),
            "{context}: user {reader} read a stale balance right after {} {}",
            write.path,
            write.body
        );
    }
    slowest
}

#[actix_web::test]
async fn no_stale_balance_across_a_redis_outage_and_recovery() {
    let seed: u64 = rand::rng().random();
    println!("cache outage seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut redis = RedisServer::start(free_port()).await;
    let url = redis.url();
    let app = TestApp::spawn_with(|settings| {
        settings.redis.url = url;
        settings.redis.timeout_ms = 250;
        settings.redis.invalidate_timeout_ms = 400;
        settings.redis.breaker_failures = 3;
        settings.redis.breaker_cooldown_ms = 200;
    })
    .await;
    let users = vec![app.user("cache").await, app.user("cache").await];
    let mut model = Model::new();
    wait_for_cache(&app, "ok", Duration::from_secs(10), || async {}).await;

    // A miss fills the cache with the user's complete balances; the next read is a hit.
    let (hits, misses, _) = cache_counts(&app).await;
    assert!(current(&app, &users[0]).await.is_empty());
    let (_, misses_after, _) = cache_counts(&app).await;
    assert!(misses_after >= misses + 1.0, "the first read is a miss");
    let hash = cached_hash(&redis, &users[0]).await;
    assert_eq!(
        hash.get("_complete").map(String::as_str),
        Some("1"),
        "filled: {hash:?}"
    );
    for _ in 0..5 {
        assert!(current(&app, &users[0]).await.is_empty());
    }
    let (hits_after, _, _) = cache_counts(&app).await;
    assert!(
        hits_after >= hits + 5.0,
        "the next reads are hits ({hits} → {hits_after})"
    );
    // Hits really come from Redis: a value planted in the hash is what the API answers.
    {
        let mut connection = redis.connection().await.expect("redis");
        let epoch: Option<String> = redis::cmd("GET")
            .arg("tally:cache:epoch")
            .query_async(&mut connection)
            .await
            .expect("GET");
        let key = format!(
            "tally:bal:{}:{}",
            epoch.as_deref().unwrap_or("0"),
            users[0].id
        );
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("JPY")
            .arg("4242:0:999999:1795254541696364:0")
            .query_async(&mut connection)
            .await
            .expect("HSET");
        assert_eq!(
            current(&app, &users[0]).await.get("JPY"),
            Some(&4242),
            "served from Redis"
        );
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("DEL");
        assert!(
            current(&app, &users[0]).await.is_empty(),
            "refilled from PostgreSQL"
        );
    }

    // 1. Redis up: every write is read back at once.
    for i in 0..40 {
        step(&app, &users, &mut model, &mut rng, &format!("up, step {i}")).await;
    }
    let (hits_up, _, _) = cache_counts(&app).await;
    assert!(
        hits_up > hits_after,
        "reads after writes are served from the cache"
    );
    for (user, _) in users.iter().enumerate() {
        let hash = cached_hash(&redis, &users[user]).await;
        assert!(
            hash.contains_key("_complete"),
            "user {user} is cached: {hash:?}"
        );
    }

    // 2. Redis killed: requests keep succeeding, from PostgreSQL, and readiness degrades.
    redis.kill().await;
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        slowest = slowest.max(
            step(
                &app,
                &users,
                &mut model,
                &mut rng,
                &format!("down, step {i}"),
            )
            .await,
        );
    }
    let degraded_after =
        wait_for_cache(&app, "degraded", Duration::from_secs(10), || async {}).await;
    for i in 40..60 {
        slowest = slowest.max(
            step(
                &app,
                &users,
                &mut model,
                &mut rng,
                &format!("down, step {i}"),
            )
            .await,
        );
    }
    assert_eq!(cache_health(&app).await, "degraded");
    println!("cache outage: slowest request while Redis was down {slowest:?}");

    // 3. Redis back on the same port, empty: readiness recovers by itself.
    let redis = RedisServer::start(redis.port).await;
    let recovered_in = wait_for_cache(&app, "ok", Duration::from_secs(20), || async {}).await;
    println!("cache outage: degraded {degraded_after:?} after the kill; ok {recovered_in:?} after the restart");
    // Every write made while it was down is visible, and the cache is in use again.
    for (user, _) in users.iter().enumerate() {
        assert_eq!(
            current(&app, &users[user]).await,
            expected(&model, user),
            "user {user} after recovery"
        );
        assert_eq!(
            current(&app, &users[user]).await,
            expected(&model, user),
            "user {user} after recovery"
        );
        let hash = cached_hash(&redis, &users[user]).await;
        assert!(
            hash.contains_key("_complete"),
            "user {user} cached again: {hash:?}"
        );
    }
    for i in 0..30 {
        step(
            &app,
            &users,
            &mut model,
            &mut rng,
            &format!("recovered, step {i}"),
        )
        .await;
    }

    // 4. Redis frozen (SIGSTOP) keeps its data and would answer another Tally process again
    //    later: a write whose write-through neither lands nor can invalidate the cache commits
    //    but is answered 503 `unavailable` (outcome unknown: no process may serve the old
    //    balance after the new one was acknowledged), and so is a replay while the cache is in
    //    doubt. Refusals change no balance and are answered as usual. Once Redis answers, the
    //    same keys replay the committed writes, and nothing Redis held from before is served.
    redis.signal("STOP");
    let mut unknown = Vec::new();
    for i in 0..12 {
        let write = random_write(&users, &model, &mut rng);
        let key = format!("frozen-{i}");
        let token = &users[write.readers[0]].token;
        let reply = send_write(&app, token, &write, Some(&key)).await;
        if write.refused {
            settle(&mut model, &write, &reply, "frozen");
            continue;
        }
        reply.assert_problem(503, "unavailable");
        // Not acknowledged, and not acknowledged on a retry either while Redis is frozen.
        send_write(&app, token, &write, Some(&key))
            .await
            .assert_problem(503, "unavailable");
        // The writes that follow are judged on what committed.
        for &(user, currency, delta) in &write.effects {
            *model.entry((user, currency)).or_insert(0) += delta;
        }
        unknown.push((write, key));
    }
    assert!(!unknown.is_empty(), "the freeze must catch writes");
    wait_for_cache(&app, "degraded", Duration::from_secs(10), || async {}).await;
    redis.signal("CONT");
    wait_for_cache(&app, "ok", Duration::from_secs(20), || async {}).await;
    for (write, key) in &unknown {
        let reply = send_write(&app, &users[write.readers[0]].token, write, Some(key)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{key}: {}", reply.body);
        assert_eq!(reply.header("idempotent-replayed"), Some("true"), "{key}");
    }
    for (user, _) in users.iter().enumerate() {
        assert_eq!(
            current(&app, &users[user]).await,
            expected(&model, user),
            "user {user} after the freeze"
        );
    }
    for i in 0..30 {
        step(
            &app,
            &users,
            &mut model,
            &mut rng,
            &format!("thawed, step {i}"),
        )
        .await;
    }
    let (hits_end, misses_end, errors_end) = cache_counts(&app).await;
    println!(
        "cache outage: process-wide cache requests: {hits_end} hits, {misses_end} misses, {errors_end} errors"
    );
    app.assert_ledger_invariants().await;
}

/// Readers hammer one account while its owner writes: the owner always reads its own last
/// write, and no reader ever sees the balance go back.
#[actix_web::test]
async fn readers_and_a_writer_on_one_account() {
    let redis = RedisServer::start(free_port()).await;
    let url = redis.url();
    let app = TestApp::spawn_with(|settings| {
        settings.redis.url = url;
        settings.redis.timeout_ms = 250;
        settings.redis.invalidate_timeout_ms = 400;
        settings.redis.ttl_s = 1;
    })
    .await;
    let owner = app.user("hot").await;
    let payer = app.user("hot").await;
    app.credit(&payer, 1_000_000, "USD").await;
    let acknowledged = std::cell::Cell::new(0i64);
    let sent_total = std::cell::Cell::new(0i64);
    let done = std::cell::Cell::new(false);
    let writes = 80;
    let writer = async {
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..writes {
            let amount: i64 = rng.random_range(1..=500);
            sent_total.set(sent_total.get() + amount);
            // Credits by the owner and transfers to it: the balance only grows.
            let reply = if i % 2 == 0 {
                app.post(
                    "/api/v1/transactions/credit",
                    Some(&owner.token),
                    &json!({"amount": amount, "currency": "USD"}),
                )
                .await
            } else {
                app.post(
                    "/api/v1/transactions/transfer",
                    Some(&payer.token),
                    &json!({"to_user_id": owner.id, "amount": amount, "currency": "USD"}),
                )
                .await
            };
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            acknowledged.set(acknowledged.get() + amount);
            let read = app.balance(&owner, "USD").await;
            assert_eq!(
                read,
                acknowledged.get(),
                "write {i}: the owner read a stale balance"
            );
        }
        done.set(true);
    };
    let reader = |n: usize| {
        let (app, owner) = (&app, &owner);
        let (acknowledged, sent_total, done) = (&acknowledged, &sent_total, &done);
        async move {
            let mut last = 0;
            let mut reads = 0;
            for _ in 0..100_000 {
                let floor = acknowledged.get();
                let read = app.balance(owner, "USD").await;
                let ceiling = sent_total.get();
                assert!(
                    read >= floor,
                    "reader {n}: {read} is below {floor}, acknowledged before the read"
                );
                assert!(read <= ceiling, "reader {n}: {read} was never written");
                assert!(
                    read >= last,
                    "reader {n}: the balance went back from {last} to {read}"
                );
                last = read;
                reads += 1;
                if done.get() {
                    break;
                }
            }
            reads
        }
    };
    let readers = join_all((0..6).map(reader));
    let ((), reads) = futures_util::future::join(writer, readers).await;
    println!(
        "hot account: {writes} writes, {} reads by 6 readers",
        reads.iter().sum::<usize>()
    );
    assert_eq!(app.balance(&owner, "USD").await, acknowledged.get());
    app.assert_ledger_invariants().await;
    drop(redis);
}

/// A TCP proxy in front of a Redis server that can be frozen: while frozen it forwards nothing
/// (to the process behind it, Redis hangs), while other clients reach Redis directly.
struct FreezableProxy {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl FreezableProxy {
    async fn start(target_port: u16) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (frozen, watch) = tokio::sync::watch::channel(false);
        actix_web::rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                actix_web::rt::spawn(forward(client_read, server_write, watch.clone()));
                actix_web::rt::spawn(forward(server_read, client_write, watch.clone()));
            }
        });
        FreezableProxy { port, frozen }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

/// Copies `from` to `to`, holding what it read while the proxy is frozen.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Issue 10: two instances share one Redis; A's write-through can neither land nor invalidate
/// the cache (Redis hangs for A only), while B still reads Redis. A must not acknowledge the
/// commit (503, outcome unknown), nor its replay while the cache is in doubt; once A reaches
/// Redis again, the replay is acknowledged only after the cache was invalidated, and B never
/// serves the old balance after that acknowledgement.
#[actix_web::test]
async fn no_instance_serves_the_old_balance_after_another_acknowledged_the_new() {
    let redis = RedisServer::start(free_port()).await;
    let proxy = FreezableProxy::start(redis.port).await;
    let (proxy_url, redis_url) = (proxy.url(), redis.url());
    let a = TestApp::spawn_with(|settings| {
        settings.redis.url = proxy_url;
        settings.redis.timeout_ms = 200;
        settings.redis.invalidate_timeout_ms = 400;
    })
    .await;
    let database_url = a.database_url.clone();
    let b = TestApp::spawn_with(|settings| {
        settings.database.url = database_url;
        settings.redis.url = redis_url;
        settings.redis.timeout_ms = 200;
        settings.redis.invalidate_timeout_ms = 400;
    })
    .await;
    let user = a.user("shared").await;
    a.credit(&user, 1_000, "USD").await;
    // B caches the balance: a miss fills it, the next read is a hit.
    assert_eq!(b.balance(&user, "USD").await, 1_000);
    let (hits, _, _) = cache_counts(&b).await;
    assert_eq!(b.balance(&user, "USD").await, 1_000);
    assert!(cache_counts(&b).await.0 > hits, "B reads from Redis");

    proxy.freeze(true);
    let debit = json!({"amount": 300, "currency": "USD"});
    let send = || {
        a.request(
            reqwest::Method::POST,
            "/api/v1/transactions/debit",
            Some(&user.token),
            Some(&debit),
            Some("debit-1"),
        )
    };
    send().await.assert_problem(503, "unavailable");
    let committed: i64 = a
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM transactions WHERE idempotency_key = 'debit-1' AND status = 'completed'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(committed, 1, "committed, but not acknowledged");
    send().await.assert_problem(503, "unavailable");

    proxy.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let acknowledged = loop {
        let reply = send().await;
        if reply.status == StatusCode::CREATED || Instant::now() >= deadline {
            break reply;
        }
        reply.assert_problem(503, "unavailable");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        acknowledged.status,
        StatusCode::CREATED,
        "{}",
        acknowledged.body
    );
    assert_eq!(acknowledged.header("idempotent-replayed"), Some("true"));
    assert_eq!(b.balance(&user, "USD").await, 700, "B after A acknowledged");
    assert_eq!(a.balance(&user, "USD").await, 700);
    a.assert_ledger_invariants().await;
}
