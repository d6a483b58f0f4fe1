//! Balance history, point-in-time balances and the filtered transaction history, checked
//! against a reference model of a seeded random workload (a few users, two currencies,
//! credits, debits and transfers, overdraws included).
//!
//! The model records every transaction the replies describe, in the order they were made (one
//! request at a time), with the instants just before the request and just after its reply: a
//! change is committed inside that window, so at every "probe" instant taken after a reply the
//! model knows every balance exactly. `/balances/at-time` must equal the model at every probe
//! and at every change's own `at`; `/balances/historical` must list every change once, in entry
//! order, with the model's running sums; closing balances per hour and day must follow; and
//! every history filter, paged two by two, must return the model's filtered list exactly, also
//! while new transactions are being created between and during page requests.
//!
//! The seed is printed; `TALLY_TEST_SEED=<n>` replays a run.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};
use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const CURRENCIES: [&str; 2] = ["USD", "EUR"];
const HISTORY: &str = "/api/v1/transactions/history";
const HISTORICAL: &str = "/api/v1/balances/historical";
const AT_TIME: &str = "/api/v1/balances/at-time";
/// Most pages any listing here may take (every loop is bounded).
const MAX_PAGES: usize = 5_000;

fn seed() -> u64 {
    std::env::var("TALLY_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// `t` at the database's precision (microseconds), as the server stores and compares it.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("a representable instant")
}

/// RFC 3339 with microseconds and `Z` (nothing to escape in a query string).
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("bad timestamp {text}: {error}"))
        .with_timezone(&Utc)
}

fn parse_id(value: &Value) -> Uuid {
    value
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(|| panic!("not a uuid: {value}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Credit,
    Debit,
    Transfer { to: usize },
}

/// One request: `user` sends it (and is the account credited or debited, or the sender).
#[derive(Debug, Clone, Copy)]
struct Op {
    user: usize,
    kind: Kind,
    amount: i64,
    currency: &'static str,
}

/// A transaction as the model knows it. Parties are user indices; `None` is `system`.
#[derive(Debug, Clone)]
struct Txn {
    id: Uuid,
    kind: &'static str,
    /// `completed` or `failed`.
    status: &'static str,
    from: Option<usize>,
    to: Option<usize>,
    amount: i64,
    currency: &'static str,
    created_at: DateTime<Utc>,
}

/// One balance change of one account in the model.
#[derive(Debug, Clone)]
struct Change {
    transaction_id: Uuid,
    delta: i64,
    balance_after: i64,
    /// Number of the operation (1-based) that made it: it lies between probes `op - 1` and `op`.
    op: usize,
    /// The request was sent at or after `sent`; its reply came before `done`.
    sent: DateTime<Utc>,
    done: DateTime<Utc>,
}

type Account = (usize, &'static str);

/// The reference model: every transaction in the order made, every change per account, and
/// the balances at each probe instant (probe 0 is before the first operation; probe k is
/// right after the reply to operation k).
#[derive(Default)]
struct Model {
    txns: Vec<Txn>,
    balances: HashMap<Account, i64>,
    changes: HashMap<Account, Vec<Change>>,
    probes: Vec<(DateTime<Utc>, HashMap<Account, i64>)>,
}

impl Model {
    fn balance(&self, account: Account) -> i64 {
        self.balances.get(&account).copied().unwrap_or(0)
    }

    fn probe(&mut self, at: DateTime<Utc>) {
        self.probes.push((at, self.balances.clone()));
    }

    fn record(&mut self, txn: Txn, sent: DateTime<Utc>, done: DateTime<Utc>) {
        let op = self.probes.len();
        if txn.status == "completed" {
            for (party, delta) in [(txn.from, -txn.amount), (txn.to, txn.amount)] {
                let Some(user) = party else { continue };
                let account = (user, txn.currency);
                let balance = self.balances.entry(account).or_insert(0);
                *balance += delta;
                let balance_after = *balance;
                self.changes.entry(account).or_default().push(Change {
                    transaction_id: txn.id,
                    delta,
                    balance_after,
                    op,
                    sent,
                    done,
                });
            }
        }
        self.txns.push(txn);
        self.probe(done);
    }

    /// The transactions `user` sees in their history, newest first.
    fn visible(&self, user: usize) -> Vec<&Txn> {
        let mut visible: Vec<&Txn> = self
            .txns
            .iter()
            .filter(|t| t.from == Some(user) || (t.to == Some(user) && t.status != "failed"))
            .collect();
        visible.sort_by_key(|t| std::cmp::Reverse((t.created_at, t.id)));
        visible
    }
}

fn user_index(users: &[TestUser], value: &Value) -> Option<usize> {
    if value.is_null() {
        return None;
    }
    let id = parse_id(value);
    Some(
        users
            .iter()
            .position(|user| user.id == id)
            .unwrap_or_else(|| panic!("{id} is none of the test's users")),
    )
}

fn txn_from_body(users: &[TestUser], body: &Value, currency: &'static str) -> Txn {
    let kind = match body["type"].as_str() {
        Some("credit") => "credit",
        Some("debit") => "debit",
        Some("transfer") => "transfer",
        _ => panic!("unexpected type in {body}"),
    };
    let status = match body["status"].as_str() {
        Some("completed") => "completed",
        Some("failed") => "failed",
        _ => panic!("unexpected status in {body}"),
    };
    assert_eq!(body["currency"], currency, "{body}");
    Txn {
        id: parse_id(&body["id"]),
        kind,
        status,
        from: user_index(users, &body["from_user_id"]),
        to: user_index(users, &body["to_user_id"]),
        amount: body["amount"].as_i64().expect("amount"),
        currency,
        created_at: parse_ts(&body["created_at"]),
    }
}

/// Sends `op`, checks the reply against the model's prediction (an overdraw must be refused as
/// `insufficient_funds` and recorded as a failed transaction, anything else must commit) and
/// records it with its window and a probe.
async fn execute(app: &TestApp, users: &[TestUser], model: &mut Model, op: Op) -> Txn {
    let token = &users[op.user].token;
    let (path, body) = match op.kind {
        Kind::Credit => (
            "/api/v1/transactions/credit",
            json!({"amount": op.amount, "currency": op.currency}),
        ),
        Kind::Debit => (
            "/api/v1/transactions/debit",
            json!({"amount": op.amount, "currency": op.currency}),
        ),
        Kind::Transfer { to } => (
            "/api/v1/transactions/transfer",
            json!({"to_user_id": users[to].id, "amount": op.amount, "currency": op.currency}),
        ),
    };
    let overdraw = op.kind != Kind::Credit && op.amount > model.balance((op.user, op.currency));
    let sent = micros(Utc::now());
    let reply = app.post(path, Some(token), &body).await;
    let txn = if overdraw {
        reply.assert_problem(422, "insufficient_funds");
        let id = parse_id(&reply.body["transaction_id"]);
        let recorded = app.get(&format!("/api/v1/transactions/{id}"), token).await;
        assert_eq!(recorded.status, StatusCode::OK, "{}", recorded.body);
        assert_eq!(recorded.body["status"], "failed", "{}", recorded.body);
        assert_eq!(
            recorded.body["failure_reason"], "insufficient_funds",
            "{}",
            recorded.body
        );
        txn_from_body(users, &recorded.body, op.currency)
    } else {
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{op:?} (model balance {}): {}",
            model.balance((op.user, op.currency)),
            reply.body
        );
        assert_eq!(reply.body["status"], "completed");
        txn_from_body(users, &reply.body, op.currency)
    };
    let (from, to) = match op.kind {
        Kind::Credit => (None, Some(op.user)),
        Kind::Debit => (Some(op.user), None),
        Kind::Transfer { to } => (Some(op.user), Some(to)),
    };
    assert_eq!(
        (txn.from, txn.to, txn.amount),
        (from, to, op.amount),
        "{op:?}"
    );
    let done = micros(Utc::now());
    model.record(txn.clone(), sent, done);
    txn
}

/// A random operation: mostly affordable, about one in four an overdraw.
fn random_op(rng: &mut StdRng, model: &Model, users: usize) -> Op {
    let user = rng.random_range(0..users);
    let currency = CURRENCIES[rng.random_range(0..CURRENCIES.len())];
    let balance = model.balance((user, currency));
    let roll = rng.random_range(0..10);
    let kind = if roll < 3 || balance == 0 && roll < 6 {
        Kind::Credit
    } else if roll < 5 {
        Kind::Debit
    } else {
        let mut to = rng.random_range(0..users - 1);
        if to >= user {
            to += 1;
        }
        Kind::Transfer { to }
    };
    let amount = match kind {
        Kind::Credit => rng.random_range(1..=5_000),
        _ if balance > 0 && rng.random_range(0..4) > 0 => rng.random_range(1..=balance),
        _ => balance + rng.random_range(1..=1_000),
    };
    Op {
        user,
        kind,
        amount,
        currency,
    }
}

/// A change as `/balances/historical` lists it.
#[derive(Debug, Clone, PartialEq)]
struct ApiChange {
    entry_id: i64,
    transaction_id: Uuid,
    delta: i64,
    balance_after: i64,
    at: DateTime<Utc>,
}

/// Every change `/balances/historical?<query>` lists, following `next_cursor` with `limit`.
async fn historical_all(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<ApiChange> {
    let mut changes: Vec<ApiChange> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("{HISTORICAL}?{query}&limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let reply = app.get(&path, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        let items = reply.body["items"].as_array().expect("items");
        assert!(items.len() <= limit, "{path}: more than {limit} items");
        for item in items {
            changes.push(ApiChange {
                entry_id: item["entry_id"].as_i64().expect("entry_id"),
                transaction_id: parse_id(&item["transaction_id"]),
                delta: item["delta"].as_i64().expect("delta"),
                balance_after: item["balance_after"].as_i64().expect("balance_after"),
                at: parse_ts(&item["at"]),
            });
        }
        match reply.body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(
                    items.len(),
                    limit,
                    "{path}: a short page with a next_cursor"
                );
                cursor = Some(next.to_owned());
            }
            None => return changes,
        }
    }
    panic!("{HISTORICAL}?{query}: more than {MAX_PAGES} pages");
}

/// Every transaction `/transactions/history?<query>` lists, following `next_cursor` with
/// `limit`; asserts that no id comes twice.
async fn history_all(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = history_page(app, token, query, limit, cursor.as_deref()).await;
        items.extend(page.0);
        match page.1 {
            Some(next) => cursor = Some(next),
            None => {
                let ids: HashSet<&str> = items.iter().map(|t| t["id"].as_str().unwrap()).collect();
                assert_eq!(ids.len(), items.len(), "?{query}: a transaction came twice");
                return items;
            }
        }
    }
    panic!("{HISTORY}?{query}: more than {MAX_PAGES} pages");
}

async fn history_page(
    app: &TestApp,
    token: &str,
    query: &str,
    limit: usize,
    cursor: Option<&str>,
) -> (Vec<Value>, Option<String>) {
    let mut path = format!("{HISTORY}?limit={limit}");
    if !query.is_empty() {
        path.push_str(&format!("&{query}"));
    }
    if let Some(cursor) = cursor {
        path.push_str(&format!("&cursor={cursor}"));
    }
    let reply = app.get(&path, token).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    let items = reply.body["items"].as_array().expect("items").clone();
    assert!(items.len() <= limit, "{path}: more than {limit} items");
    let next = reply.body["next_cursor"].as_str().map(str::to_owned);
    if next.is_some() {
        assert_eq!(
            items.len(),
            limit,
            "{path}: a short page with a next_cursor"
        );
    }
    (items, next)
}

/// The balance a change list gives at `t`: the last change at or before `t` (`inclusive`) or
/// strictly before it.
fn balance_from_changes(changes: &[ApiChange], t: DateTime<Utc>, inclusive: bool) -> i64 {
    changes
        .iter()
        .rev()
        .find(|c| if inclusive { c.at <= t } else { c.at < t })
        .map_or(0, |c| c.balance_after)
}

async fn at_time(app: &TestApp, token: &str, currency: &str, t: DateTime<Utc>) -> i64 {
    let path = format!("{AT_TIME}?at={}&currency={currency}", ts(t));
    let reply = app.get(&path, token).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    assert_eq!(reply.body["currency"], currency);
    assert_eq!(parse_ts(&reply.body["at"]), t, "{path}: {}", reply.body);
    reply.body["amount"].as_i64().expect("amount")
}

/// A history filter in the model's terms, with its query string.
#[derive(Debug, Default, Clone)]
struct Filter {
    kind: Option<&'static str>,
    status: Option<&'static str>,
    currency: Option<&'static str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    counterparty: Option<usize>,
    min_amount: Option<i64>,
    max_amount: Option<i64>,
}

impl Filter {
    fn query(&self, users: &[TestUser]) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = self.kind {
            parts.push(format!("type={kind}"));
        }
        if let Some(status) = self.status {
            parts.push(format!("status={status}"));
        }
        if let Some(currency) = self.currency {
            parts.push(format!("currency={currency}"));
        }
        if let Some(from) = self.from {
            parts.push(format!("from={}", ts(from)));
        }
        if let Some(to) = self.to {
            parts.push(format!("to={}", ts(to)));
        }
        if let Some(counterparty) = self.counterparty {
            parts.push(format!("counterparty={}", users[counterparty].id));
        }
        if let Some(min) = self.min_amount {
            parts.push(format!("min_amount={min}"));
        }
        if let Some(max) = self.max_amount {
            parts.push(format!("max_amount={max}"));
        }
        parts.join("&")
    }

    fn matches(&self, user: usize, t: &Txn) -> bool {
        self.kind.is_none_or(|kind| t.kind == kind)
            && self.status.is_none_or(|status| t.status == status)
            && self.currency.is_none_or(|currency| t.currency == currency)
            && self.from.is_none_or(|from| t.created_at >= from)
            && self.to.is_none_or(|to| t.created_at < to)
            && self.counterparty.is_none_or(|other| {
                (t.from == Some(user) && t.to == Some(other))
                    || (t.to == Some(user) && t.from == Some(other))
            })
            && self.min_amount.is_none_or(|min| t.amount >= min)
            && self.max_amount.is_none_or(|max| t.amount <= max)
    }
}

/// Asserts that a listing is exactly the model's transactions, in order, field by field.
#[track_caller]
fn assert_same_transactions(context: &str, users: &[TestUser], got: &[Value], want: &[&Txn]) {
    let got_ids: Vec<Uuid> = got.iter().map(|t| parse_id(&t["id"])).collect();
    let want_ids: Vec<Uuid> = want.iter().map(|t| t.id).collect();
    assert_eq!(
        got_ids,
        want_ids,
        "{context}: the listing differs from the model ({} listed, {} expected)",
        got_ids.len(),
        want_ids.len()
    );
    for (body, txn) in got.iter().zip(want) {
        let listed = txn_from_body(users, body, txn.currency);
        assert_eq!(
            (
                listed.kind,
                listed.status,
                listed.from,
                listed.to,
                listed.amount,
                listed.created_at
            ),
            (
                txn.kind,
                txn.status,
                txn.from,
                txn.to,
                txn.amount,
                txn.created_at
            ),
            "{context}: {body}"
        );
    }
}

#[actix_web::test]
async fn random_workload_matches_the_model_at_every_instant() {
    let seed = seed();
    println!("history workload seed: {seed} (TALLY_TEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = TestApp::spawn().await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(app.user("hist").await);
    }
    let mut model = Model::default();
    model.probe(micros(Utc::now()));
    let operations = 120;
    for _ in 0..operations {
        let op = random_op(&mut rng, &model, users.len());
        execute(&app, &users, &mut model, op).await;
    }
    let failed = model.txns.iter().filter(|t| t.status == "failed").count();
    println!(
        "history workload: {} transactions ({failed} failed overdraws), {} accounts changed",
        model.txns.len(),
        model.changes.len()
    );
    assert!(failed > 0, "the workload must include refused overdraws");

    let accounts: Vec<Account> = (0..users.len())
        .flat_map(|user| CURRENCIES.map(|currency| (user, currency)))
        .collect();
    let mut at_time_checks = 0usize;
    for &(user, currency) in &accounts {
        let token = &users[user].token;
        let context = format!("user {user} {currency}");
        let current = app.balance(&users[user], currency).await;
        assert_eq!(
            current,
            model.balance((user, currency)),
            "{context}: current"
        );

        // Every change once, in entry order, small pages; the same as one big page.
        let changes = historical_all(&app, token, &format!("currency={currency}"), 3).await;
        let unpaged = historical_all(&app, token, &format!("currency={currency}"), 1000).await;
        assert_eq!(
            changes, unpaged,
            "{context}: pages of 3 differ from one page"
        );
        let empty = Vec::new();
        let want = model.changes.get(&(user, currency)).unwrap_or(&empty);
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.transaction_id, c.delta, c.balance_after))
                .collect::<Vec<_>>(),
            want.iter()
                .map(|c| (c.transaction_id, c.delta, c.balance_after))
                .collect::<Vec<_>>(),
            "{context}: the changes differ from the model's running sums"
        );
        for pair in changes.windows(2) {
            assert!(
                pair[0].entry_id < pair[1].entry_id,
                "{context}: entry order"
            );
            assert!(pair[0].at < pair[1].at, "{context}: change times go back");
        }
        for (change, model_change) in changes.iter().zip(want) {
            assert!(
                model_change.sent <= change.at && change.at <= model_change.done,
                "{context}: change {change:?} is stamped outside its request ({} to {})",
                model_change.sent,
                model_change.done
            );
        }
        assert_eq!(
            changes.iter().map(|c| c.delta).sum::<i64>(),
            current,
            "{context}: the deltas do not sum to the balance"
        );
        assert_eq!(changes.last().map_or(0, |c| c.balance_after), current);

        // at-time at every probe (the model's balance, and what the change list says), at
        // every change, and just before it.
        let mut instants: Vec<(DateTime<Utc>, i64)> = Vec::new();
        for (at, balances) in &model.probes {
            let want = balances.get(&(user, currency)).copied().unwrap_or(0);
            assert_eq!(
                balance_from_changes(&changes, *at, true),
                want,
                "{context}: the change list and the model disagree at probe {at}"
            );
            instants.push((*at, want));
        }
        for (index, change) in want.iter().enumerate() {
            let at = changes[index].at;
            let before = if index == 0 {
                0
            } else {
                want[index - 1].balance_after
            };
            instants.push((at, change.balance_after));
            instants.push((at - Duration::microseconds(1), before));
        }
        for chunk in instants.chunks(16) {
            let answers = join_all(
                chunk
                    .iter()
                    .map(|(t, _)| at_time(&app, token, currency, *t)),
            )
            .await;
            for ((t, want), got) in chunk.iter().zip(answers) {
                assert_eq!(got, *want, "{context}: at-time {}", ts(*t));
            }
        }
        at_time_checks += instants.len();

        // Windows between probes: the changes of exactly the operations in between.
        let probes = model.probes.len();
        for (i, j) in [
            (0, probes - 1),
            (probes / 4, probes / 2),
            (probes / 3, probes / 3 + 1),
            (probes / 2, probes - 1),
            (7, 7 + 13),
        ] {
            let (from, to) = (model.probes[i].0, model.probes[j].0);
            let query = format!("currency={currency}&from={}&to={}", ts(from), ts(to));
            let window = historical_all(&app, token, &query, 2).await;
            let want_ids: Vec<Uuid> = want
                .iter()
                .filter(|c| c.op > i && c.op <= j)
                .map(|c| c.transaction_id)
                .collect();
            assert_eq!(
                window.iter().map(|c| c.transaction_id).collect::<Vec<_>>(),
                want_ids,
                "{context}: changes in [probe {i}, probe {j})"
            );
        }

        // Closing balances per hour and per day: each interval closes with the last change
        // before its end; before the first change 0, after the last one the balance.
        let first = model.probes[0].0;
        let now = micros(Utc::now());
        for (interval, step, from, to) in [
            (
                "hour",
                Duration::hours(1),
                first - Duration::minutes(5 * 60 + 17),
                now + Duration::minutes(2 * 60 + 5),
            ),
            (
                "day",
                Duration::days(1),
                first - Duration::hours(3 * 24 + 5),
                now + Duration::hours(24 + 3),
            ),
        ] {
            let path = format!(
                "{HISTORICAL}?currency={currency}&interval={interval}&from={}&to={}",
                ts(from),
                ts(to)
            );
            let reply = app.get(&path, token).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
            assert_eq!(reply.body["currency"], currency);
            assert_eq!(reply.body["interval"], interval);
            let items = reply.body["items"].as_array().expect("items");
            let mut start = from.duration_trunc(step).expect("truncates");
            let mut want_items = Vec::new();
            while start < to {
                want_items.push((start, start + step));
                start += step;
            }
            assert_eq!(
                items.len(),
                want_items.len(),
                "{context} {interval}: {}",
                reply.body
            );
            for (item, (start, end)) in items.iter().zip(&want_items) {
                assert_eq!(
                    parse_ts(&item["start"]),
                    *start,
                    "{context} {interval}: {item}"
                );
                assert_eq!(parse_ts(&item["end"]), *end, "{context} {interval}: {item}");
                let balance = item["balance"].as_i64().expect("balance");
                assert_eq!(
                    balance,
                    balance_from_changes(&changes, *end, false),
                    "{context} {interval}: closing balance of {item}"
                );
                if changes.first().is_none_or(|c| *end <= c.at) {
                    assert_eq!(
                        balance, 0,
                        "{context} {interval}: before any change: {item}"
                    );
                }
                if changes.last().is_none_or(|c| *start > c.at) {
                    assert_eq!(
                        balance, current,
                        "{context} {interval}: after the last change the balance carries: {item}"
                    );
                }
            }
            let last = items.last().expect("at least one interval");
            assert_eq!(
                last["balance"], current,
                "{context} {interval}: last interval"
            );
            assert_eq!(
                items[0]["balance"], 0,
                "{context} {interval}: first interval"
            );
        }
    }
    println!("history workload: {at_time_checks} at-time instants checked");

    // History filters, paged two by two, against the model.
    let mut filter_checks = 0usize;
    for user in 0..users.len() {
        let token = &users[user].token;
        let visible = model.visible(user);
        let amounts: Vec<i64> = {
            let mut amounts: Vec<i64> = visible.iter().map(|t| t.amount).collect();
            amounts.sort_unstable();
            amounts
        };
        let median = amounts[amounts.len() / 2];
        let created: Vec<DateTime<Utc>> = {
            let mut created: Vec<DateTime<Utc>> = visible.iter().map(|t| t.created_at).collect();
            created.sort_unstable();
            created
        };
        let (third, two_thirds) = (created[created.len() / 3], created[2 * created.len() / 3]);
        let mut filters = vec![
            Filter::default(),
            Filter {
                kind: Some("credit"),
                ..Filter::default()
            },
            Filter {
                kind: Some("debit"),
                ..Filter::default()
            },
            Filter {
                kind: Some("transfer"),
                ..Filter::default()
            },
            Filter {
                status: Some("completed"),
                ..Filter::default()
            },
            Filter {
                status: Some("failed"),
                ..Filter::default()
            },
            Filter {
                currency: Some("USD"),
                ..Filter::default()
            },
            Filter {
                currency: Some("EUR"),
                ..Filter::default()
            },
            // Boundaries are transactions' own timestamps: `from` inclusive, `to` exclusive.
            Filter {
                from: Some(third),
                to: Some(two_thirds),
                ..Filter::default()
            },
            Filter {
                from: Some(two_thirds),
                ..Filter::default()
            },
            Filter {
                to: Some(third),
                ..Filter::default()
            },
            Filter {
                from: Some(third),
                to: Some(third),
                ..Filter::default()
            },
            Filter {
                min_amount: Some(median),
                ..Filter::default()
            },
            Filter {
                max_amount: Some(median),
                ..Filter::default()
            },
            Filter {
                min_amount: Some(median),
                max_amount: Some(median),
                ..Filter::default()
            },
            Filter {
                kind: Some("transfer"),
                status: Some("completed"),
                currency: Some("EUR"),
                min_amount: Some(amounts[amounts.len() / 4]),
                ..Filter::default()
            },
            Filter {
                kind: Some("debit"),
                status: Some("failed"),
                currency: Some("USD"),
                from: Some(third),
                ..Filter::default()
            },
        ];
        for other in (0..users.len()).filter(|&other| other != user) {
            filters.push(Filter {
                counterparty: Some(other),
                ..Filter::default()
            });
            filters.push(Filter {
                counterparty: Some(other),
                currency: Some("USD"),
                status: Some("completed"),
                ..Filter::default()
            });
        }
        for filter in &filters {
            let query = filter.query(&users);
            let want: Vec<&Txn> = visible
                .iter()
                .copied()
                .filter(|t| filter.matches(user, t))
                .collect();
            let got = history_all(&app, token, &query, 2).await;
            assert_same_transactions(&format!("user {user} ?{query}"), &users, &got, &want);
            filter_checks += 1;
        }
    }
    println!("history workload: {filter_checks} filtered listings checked");
    app.assert_ledger_invariants().await;
}

/// Keyset pages stay exact while transactions arrive: new ones never show up on later pages
/// of a listing already started, and older ones are neither repeated nor skipped.
#[actix_web::test]
async fn history_pages_stay_exact_while_transactions_arrive() {
    let seed = seed();
    println!("history paging seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = TestApp::spawn().await;
    let users = vec![app.user("page").await, app.user("page").await];
    let mut model = Model::default();
    model.probe(micros(Utc::now()));
    for _ in 0..24 {
        let op = random_op(&mut rng, &model, users.len());
        execute(&app, &users, &mut model, op).await;
    }

    // 1. A write between every two page requests, matching the filter being paged.
    let filters: [(&str, Filter, Kind, usize); 3] = [
        ("none", Filter::default(), Kind::Credit, 0),
        (
            "transfers",
            Filter {
                kind: Some("transfer"),
                ..Filter::default()
            },
            Kind::Transfer { to: 0 },
            1,
        ),
        (
            "USD credits",
            Filter {
                kind: Some("credit"),
                currency: Some("USD"),
                ..Filter::default()
            },
            Kind::Credit,
            0,
        ),
    ];
    for (name, filter, kind, sender) in filters {
        let query = filter.query(&users);
        let want: Vec<Txn> = model
            .visible(0)
            .into_iter()
            .filter(|t| filter.matches(0, t))
            .cloned()
            .collect();
        let mut got: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut arrived = 0;
        for _ in 0..MAX_PAGES {
            let (items, next) =
                history_page(&app, &users[0].token, &query, 2, cursor.as_deref()).await;
            got.extend(items);
            let op = Op {
                user: sender,
                kind,
                amount: rng.random_range(1..=50),
                currency: "USD",
            };
            let op = if op.kind != Kind::Credit && model.balance((sender, "USD")) < op.amount {
                Op {
                    kind: Kind::Credit,
                    user: 0,
                    ..op
                }
            } else {
                op
            };
            let new = execute(&app, &users, &mut model, op).await;
            assert!(filter.matches(0, &new) || name == "transfers");
            arrived += 1;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let want_refs: Vec<&Txn> = want.iter().collect();
        assert_same_transactions(
            &format!("paging {name} while {arrived} transactions arrived"),
            &users,
            &got,
            &want_refs,
        );
        // And the new ones are there for a listing started afterwards.
        let after = history_all(&app, &users[0].token, &query, 2).await;
        let now: Vec<&Txn> = model
            .visible(0)
            .into_iter()
            .filter(|t| filter.matches(0, t))
            .collect();
        assert_same_transactions(&format!("{name} afterwards"), &users, &after, &now);
    }

    // 2. Two writers that never pause (so their batches overlap in the commit slots, and a
    //    transaction can commit after another one with a later `created_at`) against a reader
    //    paging two by two. The guarantee of a newest-first keyset listing: it shows, exactly
    //    once and in key order, everything committed before its first page was asked for; a
    //    transaction that commits while the listing is under way may or may not be in it (a
    //    listing started afterwards has it). Readers that must see every change in commit
    //    order tail `/events`, whose cursor is commit-ordered (invariant 12).
    struct Written {
        id: Uuid,
        sent: DateTime<Utc>,
        acknowledged: DateTime<Utc>,
    }
    struct Listing {
        asked: DateTime<Utc>,
        first_page: DateTime<Utc>,
        ids: Vec<Uuid>,
    }
    let writes = std::cell::RefCell::new(Vec::<Written>::new());
    let writers_left = std::cell::Cell::new(2);
    let write = |lane: usize| {
        let (writes, writers_left, app, users) = (&writes, &writers_left, &app, &users);
        async move {
            for i in 0..30 {
                let (path, body, token) = if lane == 1 {
                    (
                        "/api/v1/transactions/transfer",
                        json!({"to_user_id": users[0].id, "amount": 1, "currency": "EUR"}),
                        &users[1].token,
                    )
                } else {
                    (
                        "/api/v1/transactions/credit",
                        json!({"amount": 1 + i, "currency": "USD"}),
                        &users[0].token,
                    )
                };
                let sent = micros(Utc::now());
                let reply = app.post(path, Some(token), &body).await;
                // A transfer from user 1 may be an overdraw; either way it is user 0's only if
                // completed, and a failed one is invisible to user 0.
                let acknowledged = micros(Utc::now());
                if reply.status == StatusCode::CREATED {
                    writes.borrow_mut().push(Written {
                        id: parse_id(&reply.body["id"]),
                        sent,
                        acknowledged,
                    });
                } else {
                    reply.assert_problem(422, "insufficient_funds");
                }
            }
            writers_left.set(writers_left.get() - 1);
        }
    };
    let writer = futures_util::future::join(write(0), write(1));
    let reader = async {
        let mut listings = Vec::new();
        for _ in 0..1_000 {
            let asked = micros(Utc::now());
            let (items, mut next) = history_page(&app, &users[0].token, "", 2, None).await;
            let first_page = micros(Utc::now());
            let mut ids: Vec<Uuid> = items.iter().map(|t| parse_id(&t["id"])).collect();
            for _ in 0..MAX_PAGES {
                let Some(cursor) = next else { break };
                let (items, following) =
                    history_page(&app, &users[0].token, "", 2, Some(&cursor)).await;
                ids.extend(items.iter().map(|t| parse_id(&t["id"])));
                next = following;
            }
            listings.push(Listing {
                asked,
                first_page,
                ids,
            });
            if writers_left.get() == 0 {
                break;
            }
        }
        listings
    };
    let (((), ()), listings) = futures_util::future::join(writer, reader).await;
    let writes = writes.into_inner();
    let final_ids: Vec<Uuid> = history_all(&app, &users[0].token, "", 200)
        .await
        .iter()
        .map(|t| parse_id(&t["id"]))
        .collect();
    for write in &writes {
        assert!(final_ids.contains(&write.id), "{} is missing", write.id);
    }
    assert!(listings.len() >= 2, "the reader listed at least twice");
    for (n, listing) in listings.iter().enumerate() {
        let first = listing.ids.first().expect("never empty");
        let start = final_ids
            .iter()
            .position(|id| id == first)
            .expect("a listed transaction is in the final history");
        // In key order without repeats: the listing is the final history's tail from its first
        // item, less some of what committed while it was under way.
        let mut tail = final_ids[start..].iter().peekable();
        for id in &listing.ids {
            while tail.peek().is_some_and(|&next| next != id) {
                let skipped = tail.next().expect("peeked");
                let late = writes
                    .iter()
                    .find(|w| &w.id == skipped)
                    .is_some_and(|w| w.acknowledged > listing.asked);
                assert!(
                    late,
                    "listing {n}: skips {skipped}, committed before the listing began"
                );
            }
            assert_eq!(
                tail.next(),
                Some(id),
                "listing {n}: {id} repeated or out of order"
            );
        }
        for skipped in tail {
            let late = writes
                .iter()
                .find(|w| &w.id == skipped)
                .is_some_and(|w| w.acknowledged > listing.asked);
            assert!(late, "listing {n}: ends before {skipped}");
        }
        for write in &writes {
            let listed = listing.ids.contains(&write.id);
            if write.acknowledged <= listing.asked {
                assert!(
                    listed,
                    "listing {n}: misses {} acknowledged before it began",
                    write.id
                );
            }
            if write.sent >= listing.first_page {
                assert!(
                    !listed,
                    "listing {n}: shows {} created after its first page",
                    write.id
                );
            }
        }
    }
    println!(
        "history paging: {} listings of 2-item pages while {} transactions were written",
        listings.len(),
        writes.len()
    );
    app.assert_ledger_invariants().await;
}

/// Bad parameters are refused with 422 naming each bad parameter; another user's balances are
/// 403 for a non-admin.
#[actix_web::test]
async fn bad_history_parameters_are_named() {
    let app = TestApp::spawn().await;
    let user = app.user("badq").await;
    let other = app.user("badq").await;
    app.credit(&user, 100, "USD").await;
    let now = ts(micros(Utc::now()));
    let later = ts(micros(Utc::now()) + Duration::hours(1));
    let cases: Vec<(String, Vec<&str>)> = vec![
        // /transactions/history
        (format!("{HISTORY}?type=refund"), vec!["type"]),
        (format!("{HISTORY}?status=done"), vec!["status"]),
        (format!("{HISTORY}?currency=XYZ"), vec!["currency"]),
        (format!("{HISTORY}?currency=usd1"), vec!["currency"]),
        (format!("{HISTORY}?from=yesterday"), vec!["from"]),
        (format!("{HISTORY}?to=2026-13-01T00:00:00Z"), vec!["to"]),
        (format!("{HISTORY}?from={later}&to={now}"), vec!["from"]),
        (format!("{HISTORY}?min_amount=10&max_amount=5"), vec!["min_amount"]),
        (format!("{HISTORY}?counterparty=not-a-uuid"), vec!["counterparty"]),
        (format!("{HISTORY}?min_amount=ten"), vec!["min_amount"]),
        (format!("{HISTORY}?max_amount=1.5"), vec!["max_amount"]),
        (format!("{HISTORY}?limit=0"), vec!["limit"]),
        (format!("{HISTORY}?limit=201"), vec!["limit"]),
        (format!("{HISTORY}?cursor=garbage"), vec!["cursor"]),
        (
            format!("{HISTORY}?type=x&status=y&currency=Q&from=z"),
            vec!["type", "status", "currency", "from"],
        ),
        // /balances/historical
        (format!("{HISTORICAL}?currency=XYZ"), vec!["currency"]),
        (format!("{HISTORICAL}?currency=USD&from=noon"), vec!["from"]),
        (format!("{HISTORICAL}?currency=USD&to=noon"), vec!["to"]),
        (format!("{HISTORICAL}?currency=USD&from={later}&to={now}"), vec!["from"]),
        (format!("{HISTORICAL}?currency=USD&from={now}&to={now}"), vec!["from"]),
        (
            format!("{HISTORICAL}?currency=USD&interval=week&from={now}&to={later}"),
            vec!["interval"],
        ),
        (format!("{HISTORICAL}?currency=USD&interval=hour"), vec!["interval"]),
        (
            format!("{HISTORICAL}?currency=USD&interval=hour&from={now}&to={later}&limit=5"),
            vec!["interval"],
        ),
        (
            format!(
                "{HISTORICAL}?currency=USD&interval=hour&from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"
            ),
            vec!["interval"],
        ),
        (format!("{HISTORICAL}?currency=USD&limit=0"), vec!["limit"]),
        (format!("{HISTORICAL}?currency=USD&limit=1001"), vec!["limit"]),
        (format!("{HISTORICAL}?currency=USD&cursor=@@@"), vec!["cursor"]),
        (format!("{HISTORICAL}?currency=USD&cursor=bm90LWFuLWlk"), vec!["cursor"]),
        (format!("{HISTORICAL}?currency=X&from=a&to=b"), vec!["currency", "from", "to"]),
        (format!("{HISTORICAL}?from={now}"), vec!["currency"]),
        // /balances/at-time
        (format!("{AT_TIME}?at=now&currency=USD"), vec!["at"]),
        (format!("{AT_TIME}?at={now}&currency=usd"), vec!["currency"]),
        (format!("{AT_TIME}?at=2026-11-21&currency=USD"), vec!["at"]),
        (format!("{AT_TIME}?currency=USD"), vec!["at"]),
        (format!("{AT_TIME}?at={now}"), vec!["currency"]),
    ];
    let before = app.row_counts().await;
    let mut unnamed = Vec::new();
    for (path, fields) in &cases {
        let reply = app.get(path, &user.token).await;
        reply.assert_problem(422, "validation_failed");
        let named = reply.error_fields();
        let text = reply.body.to_string();
        for field in fields {
            if !named.iter().any(|named| named == field) {
                // A parameter the query parser refused names it in the message at least.
                if named.iter().any(|named| named == "query")
                    && text.contains(&format!("`{field}`"))
                {
                    continue;
                }
                unnamed.push(format!("{path}: {field} not named in {}", reply.body));
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "bad parameters not named:\n{}",
        unnamed.join("\n")
    );

    // Another user's balances and history: admins only.
    for path in [
        format!("{HISTORICAL}?currency=USD&user_id={}", other.id),
        format!("{AT_TIME}?at={now}&currency=USD&user_id={}", other.id),
        format!("{HISTORY}?user_id={}", other.id),
    ] {
        app.get(&path, &user.token)
            .await
            .assert_problem(403, "forbidden");
    }
    // One's own id is fine.
    let own = app
        .get(
            &format!("{AT_TIME}?at={later}&currency=USD&user_id={}", user.id),
            &user.token,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(own.body["amount"], 100);
    assert_eq!(
        app.row_counts().await,
        before,
        "a refused read wrote something"
    );
}
