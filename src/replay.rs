//! `tally replay --into <database URL>`: rebuilds the ledger's projections (balances, entries,
//! holds and transaction states) from the event log alone, writes them into an empty database,
//! and compares them with the source (DESIGN.md section 10: "rebuild state from the event
//! stream").
//!
//! The source is read in one `REPEATABLE READ` snapshot, so the events and the tables compared
//! with them are the same moment of a live ledger. Events are applied in cursor order:
//!
//! | event | projection |
//! |---|---|
//! | `transaction.completed` | the transaction; its entries; each entry's delta on its balance |
//! | `transaction.failed` | the transaction (no entries) |
//! | `hold.created` | the hold (`pending`); its amount on the payer's `pending` |
//! | `hold.posted` / `hold.voided` / `hold.expired` | the hold's status, `posted_amount`, `posting_id`; `released` off the payer's `pending` (the posting is its own `transaction.completed`) |
//! | `transaction.reversed` | the original's `reversed_amount` (the reversal is its own `transaction.completed`) |
//!
//! Other events (users, limits, alerts, rates, schedules, webhooks) change no projection.
//!
//! What is compared: every transaction's state (type, status, parties, amounts, currencies,
//! links), every balance's `amount` and `pending` (an absent row is zero), and each
//! transaction's entries (account and delta). An entry's `balance_after` is rebuilt in cursor
//! order into the target but not compared: the cursor orders events by database transaction
//! id, while an account's entries are ordered by commit, and two concurrent batches can take
//! their ids in one order and the account's row lock in the other. `tally verify`
//! (`running_balance`) checks `balance_after` against the commit order instead.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::store::events::{EventCursor, AFTER_CURSOR, IN_CURSOR_ORDER};

/// Events read per query.
const PAGE: i64 = 10_000;
/// Differences listed in the summary (all are counted).
const DIFFERENCES_SHOWN: usize = 20;

/// The state of one transaction, as the projection keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransactionState {
    pub kind: String,
    pub status: String,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Option<Uuid>,
    pub amount: i64,
    pub currency: String,
    pub to_amount: Option<i64>,
    pub to_currency: Option<String>,
    pub fee: Option<i64>,
    pub failure_reason: Option<String>,
    pub pending_id: Option<Uuid>,
    pub reversal_of: Option<Uuid>,
    pub posting_id: Option<Uuid>,
    pub posted_amount: Option<i64>,
    pub reversed_amount: i64,
}

/// One rebuilt entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    pub transaction_id: Uuid,
    pub user_id: Uuid,
    pub currency: String,
    pub delta: i64,
    pub balance_after: i64,
}

/// An account's amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalanceState {
    pub amount: i64,
    pub pending: i64,
}

/// The projections rebuilt from events.
#[derive(Debug, Default)]
pub struct Projection {
    pub transactions: HashMap<Uuid, TransactionState>,
    pub balances: BTreeMap<(Uuid, String), BalanceState>,
    pub entries: Vec<EntryRow>,
    /// Holds created.
    pub holds: u64,
    /// Events that changed a projection, and all events read.
    pub applied: u64,
    pub read: u64,
}

/// What one event could not be applied for: a payload that does not have the shape its type
/// promises, or a transition the ledger never makes (a corrupted or forged event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent {
    pub seq: i64,
    pub detail: String,
}

impl fmt::Display for BadEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}: {}", self.seq, self.detail)
    }
}

fn uuid_field(payload: &Value, key: &str) -> Result<Option<Uuid>, String> {
    match payload.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("{key} is not a UUID")),
        Some(_) => Err(format!("{key} is not a UUID")),
    }
}

fn required_uuid(payload: &Value, key: &str) -> Result<Uuid, String> {
    uuid_field(payload, key)?.ok_or_else(|| format!("{key} is missing"))
}

fn int_field(payload: &Value, key: &str) -> Result<Option<i64>, String> {
    match payload.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{key} is not an integer")),
    }
}

fn required_int(payload: &Value, key: &str) -> Result<i64, String> {
    int_field(payload, key)?.ok_or_else(|| format!("{key} is missing"))
}

fn text_field(payload: &Value, key: &str) -> Result<Option<String>, String> {
    match payload.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("{key} is not a string")),
    }
}

fn required_text(payload: &Value, key: &str) -> Result<String, String> {
    text_field(payload, key)?.ok_or_else(|| format!("{key} is missing"))
}

impl Projection {
    /// Applies one event, in cursor order.
    ///
    /// Errors: the payload lacks what its type needs, or describes a transition that cannot
    /// happen (a hold resolved that is not pending, a transaction recorded twice, an amount
    /// that overflows).
    pub fn apply(&mut self, kind: &str, payload: &Value) -> Result<(), String> {
        self.read += 1;
        match kind {
            "transaction.completed" | "transaction.failed" | "hold.created" => {
                let id = required_uuid(payload, "id")?;
                let state = TransactionState {
                    kind: required_text(payload, "type")?,
                    status: required_text(payload, "status")?,
                    from_user_id: uuid_field(payload, "from_user_id")?,
                    to_user_id: uuid_field(payload, "to_user_id")?,
                    amount: required_int(payload, "amount")?,
                    currency: required_text(payload, "currency")?,
                    to_amount: int_field(payload, "to_amount")?,
                    to_currency: text_field(payload, "to_currency")?,
                    fee: int_field(payload, "fee")?,
                    failure_reason: text_field(payload, "failure_reason")?,
                    pending_id: uuid_field(payload, "pending_id")?,
                    reversal_of: uuid_field(payload, "reversal_of")?,
                    posting_id: None,
                    posted_amount: None,
                    reversed_amount: 0,
                };
                let expected = match kind {
                    "hold.created" => "pending",
                    "transaction.completed" => "completed",
                    _ => "failed",
                };
                if state.status != expected {
                    return Err(format!("{kind} with status {}", state.status));
                }
                if kind == "hold.created" {
                    self.holds += 1;
                    let payer = state.from_user_id.ok_or("a hold without from_user_id")?;
                    let balance = self
                        .balances
                        .entry((payer, state.currency.clone()))
                        .or_default();
                    balance.pending = balance
                        .pending
                        .checked_add(state.amount)
                        .ok_or("pending overflows")?;
                }
                if kind == "transaction.completed" {
                    let entries = payload
                        .get("entries")
                        .and_then(Value::as_array)
                        .ok_or("entries is missing")?;
                    for entry in entries {
                        let user_id = required_uuid(entry, "user_id")?;
                        let currency = required_text(entry, "currency")?;
                        let delta = required_int(entry, "delta")?;
                        let balance = self
                            .balances
                            .entry((user_id, currency.clone()))
                            .or_default();
                        balance.amount = balance
                            .amount
                            .checked_add(delta)
                            .ok_or("a balance overflows")?;
                        self.entries.push(EntryRow {
                            transaction_id: id,
                            user_id,
                            currency,
                            delta,
                            balance_after: balance.amount,
                        });
                    }
                }
                if self.transactions.insert(id, state).is_some() {
                    return Err(format!("transaction {id} recorded twice"));
                }
            }
            "hold.posted" | "hold.voided" | "hold.expired" => {
                let id = required_uuid(payload, "id")?;
                let released = required_int(payload, "released")?;
                let hold = self
                    .transactions
                    .get_mut(&id)
                    .ok_or_else(|| format!("resolves hold {id}, which no event created"))?;
                if hold.status != "pending" {
                    return Err(format!("resolves hold {id}, which is {}", hold.status));
                }
                hold.status = kind.trim_start_matches("hold.").to_owned();
                hold.posted_amount = int_field(payload, "posted_amount")?;
                hold.posting_id = uuid_field(payload, "posting_id")?;
                let payer = hold.from_user_id.ok_or("a hold without from_user_id")?;
                let balance = self
                    .balances
                    .entry((payer, hold.currency.clone()))
                    .or_default();
                balance.pending = balance
                    .pending
                    .checked_sub(released)
                    .filter(|pending| *pending >= 0)
                    .ok_or("releases more than is pending")?;
            }
            "transaction.reversed" => {
                let id = required_uuid(payload, "id")?;
                let amount = required_int(payload, "amount")?;
                let original = self
                    .transactions
                    .get_mut(&id)
                    .ok_or_else(|| format!("reverses {id}, which no event recorded"))?;
                original.reversed_amount = original
                    .reversed_amount
                    .checked_add(amount)
                    .ok_or("reversed_amount overflows")?;
            }
            _ => return Ok(()),
        }
        self.applied += 1;
        Ok(())
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub applied: u64,
    pub transactions: u64,
    pub entries: u64,
    pub balances: u64,
    pub holds: u64,
    /// Every difference counted; the first [`DIFFERENCES_SHOWN`] described.
    pub difference_count: u64,
    pub differences: Vec<String>,
    pub elapsed: Duration,
}

impl Summary {
    fn differ(&mut self, detail: String) {
        self.difference_count += 1;
        if self.differences.len() < DIFFERENCES_SHOWN {
            self.differences.push(detail);
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "events read        {} ({} applied to a projection) in {:.1} s, {:.0} events/s",
            self.events,
            self.applied,
            seconds,
            self.events as f64 / seconds
        )?;
        writeln!(
            f,
            "rows rebuilt       {} transactions ({} holds), {} entries, {} balances",
            self.transactions, self.holds, self.entries, self.balances
        )?;
        writeln!(f, "differences        {}", self.difference_count)?;
        for difference in &self.differences {
            writeln!(f, "  {difference}")?;
        }
        if self.difference_count > self.differences.len() as u64 {
            writeln!(
                f,
                "  ... and {} more",
                self.difference_count - self.differences.len() as u64
            )?;
        }
        if self.difference_count == 0 {
            writeln!(f, "replay matches the source")
        } else {
            writeln!(f, "replay DIFFERS from the source")
        }
    }
}

/// Replays the log of `source` into the empty database `target`, then compares. `progress`
/// is called with (events read, events in the snapshot) after each page.
///
/// Errors: `target` is not empty, or a query failed. Differences (including events that cannot
/// be applied) are not errors: they are in the summary.
pub async fn replay(
    source: &tokio_postgres::Client,
    target: &mut tokio_postgres::Client,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let tables: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .await?
        .get(0);
    if tables > 0 {
        bail!("the target database is not empty ({tables} tables): replay into an empty one");
    }
    source
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = replay_in_snapshot(source, target, &mut progress, started).await;
    let _ = source.batch_execute("ROLLBACK").await;
    result
}

async fn replay_in_snapshot(
    source: &tokio_postgres::Client,
    target: &mut tokio_postgres::Client,
    progress: &mut impl FnMut(u64, u64),
    started: Instant,
) -> anyhow::Result<Summary> {
    let total: i64 = source
        .query_one(
            "SELECT count(*) FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot())",
            &[],
        )
        .await?
        .get(0);
    let mut summary = Summary::default();
    let mut projection = Projection::default();
    let mut after = EventCursor::default();
    loop {
        let rows = source
            .query(
                &format!(
                    "SELECT e.tx::text::bigint, e.seq, e.type, e.payload FROM events e
                     WHERE {AFTER_CURSOR} {IN_CURSOR_ORDER} LIMIT $3"
                ),
                &[&after.tx, &after.seq, &PAGE],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = EventCursor {
            tx: last.get(0),
            seq: last.get(1),
        };
        for row in &rows {
            let kind: &str = row.get(2);
            let payload: Value = row.get(3);
            if let Err(detail) = projection.apply(kind, &payload) {
                let seq: i64 = row.get(1);
                summary.differ(BadEvent { seq, detail }.to_string());
            }
        }
        progress(projection.read, total.max(0) as u64);
    }
    summary.events = projection.read;
    summary.applied = projection.applied;
    summary.holds = projection.holds;
    write_projection(target, &projection, &mut summary).await?;
    compare(source, &projection, &mut summary).await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The target's tables: the projections, as replay rebuilt them.
const TARGET_SCHEMA: &str = "
CREATE TABLE replay_transactions (
    id uuid PRIMARY KEY, type text NOT NULL, status text NOT NULL,
    from_user_id uuid, to_user_id uuid, amount bigint NOT NULL, currency text NOT NULL,
    to_amount bigint, to_currency text, fee bigint, failure_reason text,
    pending_id uuid, reversal_of uuid, posting_id uuid, posted_amount bigint,
    reversed_amount bigint NOT NULL
);
CREATE TABLE replay_entries (
    n bigint PRIMARY KEY, transaction_id uuid NOT NULL, user_id uuid NOT NULL,
    currency text NOT NULL, delta bigint NOT NULL, balance_after bigint NOT NULL
);
CREATE TABLE replay_balances (
    user_id uuid NOT NULL, currency text NOT NULL, amount bigint NOT NULL,
    pending bigint NOT NULL, PRIMARY KEY (user_id, currency)
);";

async fn write_projection(
    target: &mut tokio_postgres::Client,
    projection: &Projection,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let transaction = target.transaction().await?;
    transaction.batch_execute(TARGET_SCHEMA).await?;

    let sink = transaction
        .copy_in(
            "COPY replay_transactions (id, type, status, from_user_id, to_user_id, amount, currency,
                  to_amount, to_currency, fee, failure_reason, pending_id, reversal_of, posting_id,
                  posted_amount, reversed_amount) FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::UUID,
            Type::UUID,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::UUID,
            Type::UUID,
            Type::UUID,
            Type::INT8,
            Type::INT8,
        ],
    );
    futures_util::pin_mut!(writer);
    for (id, t) in &projection.transactions {
        writer
            .as_mut()
            .write(&[
                id,
                &t.kind,
                &t.status,
                &t.from_user_id,
                &t.to_user_id,
                &t.amount,
                &t.currency,
                &t.to_amount,
                &t.to_currency,
                &t.fee,
                &t.failure_reason,
                &t.pending_id,
                &t.reversal_of,
                &t.posting_id,
                &t.posted_amount,
                &t.reversed_amount,
            ])
            .await?;
        summary.transactions += 1;
    }
    writer.finish().await?;

    let sink = transaction
        .copy_in(
            "COPY replay_entries (n, transaction_id, user_id, currency, delta, balance_after)
             FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::UUID,
            Type::UUID,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
        ],
    );
    futures_util::pin_mut!(writer);
    for (n, entry) in projection.entries.iter().enumerate() {
        let n = n as i64 + 1;
        writer
            .as_mut()
            .write(&[
                &n,
                &entry.transaction_id,
                &entry.user_id,
                &entry.currency,
                &entry.delta,
                &entry.balance_after,
            ])
            .await?;
        summary.entries += 1;
    }
    writer.finish().await?;

    let sink = transaction
        .copy_in("COPY replay_balances (user_id, currency, amount, pending) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::TEXT, Type::INT8, Type::INT8]);
    futures_util::pin_mut!(writer);
    for ((user, currency), balance) in &projection.balances {
        writer
            .as_mut()
            .write(&[user, currency, &balance.amount, &balance.pending])
            .await?;
        summary.balances += 1;
    }
    writer.finish().await?;
    transaction
        .commit()
        .await
        .context("committing the replay")?;
    Ok(())
}

/// Compares the projections with the source's tables, in the same snapshot as the events.
async fn compare(
    source: &tokio_postgres::Client,
    projection: &Projection,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    // Transactions.
    let rows = source
        .query(
            "SELECT id, type, status, from_user_id, to_user_id, amount, currency, to_amount,
                    to_currency, fee, failure_reason, pending_id, reversal_of, posting_id,
                    posted_amount, reversed_amount
             FROM transactions",
            &[],
        )
        .await?;
    let mut seen = 0usize;
    for row in &rows {
        let id: Uuid = row.get(0);
        let stored = TransactionState {
            kind: row.get(1),
            status: row.get(2),
            from_user_id: row.get(3),
            to_user_id: row.get(4),
            amount: row.get(5),
            currency: row.get(6),
            to_amount: row.get(7),
            to_currency: row.get(8),
            fee: row.get(9),
            failure_reason: row.get(10),
            pending_id: row.get(11),
            reversal_of: row.get(12),
            posting_id: row.get(13),
            posted_amount: row.get(14),
            reversed_amount: row.get(15),
        };
        match projection.transactions.get(&id) {
            None => summary.differ(format!("transaction {id}: in the source, no event for it")),
            Some(rebuilt) => {
                seen += 1;
                if *rebuilt != stored {
                    summary.differ(format!(
                        "transaction {id}: source {stored:?}, events rebuild {rebuilt:?}"
                    ));
                }
            }
        }
    }
    if seen < projection.transactions.len() {
        let stored: std::collections::HashSet<Uuid> = rows.iter().map(|row| row.get(0)).collect();
        for id in projection.transactions.keys() {
            if !stored.contains(id) {
                summary.differ(format!(
                    "transaction {id}: rebuilt from events, not in the source"
                ));
            }
        }
    }

    // Balances: an absent row is zero on either side.
    let rows = source
        .query(
            "SELECT user_id, currency, amount, pending FROM balances",
            &[],
        )
        .await?;
    let mut stored_balances: BTreeMap<(Uuid, String), BalanceState> = BTreeMap::new();
    for row in &rows {
        stored_balances.insert(
            (row.get(0), row.get(1)),
            BalanceState {
                amount: row.get(2),
                pending: row.get(3),
            },
        );
    }
    let accounts: std::collections::BTreeSet<&(Uuid, String)> = stored_balances
        .keys()
        .chain(projection.balances.keys())
        .collect();
    for account in accounts {
        let stored = stored_balances.get(account).copied().unwrap_or_default();
        let rebuilt = projection
            .balances
            .get(account)
            .copied()
            .unwrap_or_default();
        if stored != rebuilt {
            summary.differ(format!(
                "balance {} {}: source amount {} pending {}, events rebuild amount {} pending {}",
                account.0,
                account.1,
                stored.amount,
                stored.pending,
                rebuilt.amount,
                rebuilt.pending
            ));
        }
    }

    // Entries: each transaction's (account, delta) rows, as multisets.
    type EntryKey = (Uuid, Uuid, String, i64);
    let mut counts: HashMap<EntryKey, i64> = HashMap::new();
    for entry in &projection.entries {
        *counts
            .entry((
                entry.transaction_id,
                entry.user_id,
                entry.currency.clone(),
                entry.delta,
            ))
            .or_default() += 1;
    }
    let rows = source
        .query(
            "SELECT transaction_id, user_id, currency, delta, count(*) FROM entries GROUP BY 1, 2, 3, 4",
            &[],
        )
        .await?;
    for row in &rows {
        let key: EntryKey = (row.get(0), row.get(1), row.get(2), row.get(3));
        let stored: i64 = row.get(4);
        let rebuilt = counts.remove(&key).unwrap_or(0);
        if rebuilt != stored {
            summary.differ(format!(
                "entries of transaction {} on {} {} delta {}: {} in the source, {} rebuilt",
                key.0, key.1, key.2, key.3, stored, rebuilt
            ));
        }
    }
    for (key, rebuilt) in counts {
        summary.differ(format!(
            "entries of transaction {} on {} {} delta {}: 0 in the source, {} rebuilt",
            key.0, key.1, key.2, key.3, rebuilt
        ));
    }
    Ok(())
}
