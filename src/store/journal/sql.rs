//! The statements of a group commit. Each takes the whole batch as arrays (`unnest`), so a
//! batch costs the same number of round trips whatever its size.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::json;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;
use uuid::Uuid;

use super::alerts::{Alert, AlertChanges};
use super::plan::{DeltaPlan, EntryRows, UsagePlan, UsageRow};
use super::{BatchError, Posting, ReversalRefusal};
use crate::domain::{
    AccountKey, AccountState, Currency, LimitKind, Movement, Phase, Refusal, Snapshot,
    TransactionStatus, UserId, WindowUsage, MONEY_BOUND_MINOR,
};

/// Share-locks the users the movements `indices` name (in id order, `system` excluded: it is
/// never deleted and every credit names it) and returns, for each active one, whether it is an
/// admin. One
/// statement per batch, race-free with `store::users::soft_delete` and role changes, which lock
/// the same row for update: what the commit sees stays true until it commits.
pub(super) async fn lock_parties(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
) -> Result<HashMap<Uuid, bool>, BatchError> {
    let mut wanted: Vec<Uuid> = indices
        .iter()
        .flat_map(|&i| {
            let movement = movements[i];
            [movement.from(), movement.to(), movement.initiated_by()]
        })
        .filter(|user| !user.is_system())
        .map(UserId::as_uuid)
        .collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let statement = transaction
        .prepare_cached(
            "SELECT id, role = 'admin' FROM users
             WHERE id = ANY($1) AND deleted_at IS NULL AND role <> 'system'
             ORDER BY id
             FOR SHARE",
        )
        .await?;
    Ok(transaction
        .query(&statement, &[&wanted])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Inserts the idempotency keys of the movements `indices` (each has one) unless taken, and
/// returns the indices whose key was already taken (`ON CONFLICT` waits for a concurrent
/// claimer to commit or roll back, so a taken key is committed and visible afterwards).
pub(super) async fn claim_keys(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
) -> Result<Vec<usize>, BatchError> {
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    let mut users = Vec::with_capacity(indices.len());
    let mut keys = Vec::with_capacity(indices.len());
    let mut hashes: Vec<&[u8]> = Vec::with_capacity(indices.len());
    let mut ids = Vec::with_capacity(indices.len());
    for &i in indices {
        let movement = movements[i];
        let claim = movement.idempotency().ok_or(BatchError::Inconsistent(
            "claim_keys was given a movement without a key",
        ))?;
        users.push(movement.initiated_by().as_uuid());
        keys.push(claim.key.as_str());
        hashes.push(&claim.request_hash);
        ids.push(movement.id());
    }
    let statement = transaction
        .prepare_cached(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, transaction_id)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[])
             ON CONFLICT (user_id, key) DO NOTHING
             RETURNING transaction_id",
        )
        .await?;
    let claimed: HashSet<Uuid> = transaction
        .query(&statement, &[&users, &keys, &hashes, &ids])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(indices
        .iter()
        .copied()
        .filter(|&i| !claimed.contains(&movements[i].id()))
        .collect())
}

/// `(initiators, keys)` of the keyed movements `indices`, as statement arrays; `what` names the
/// caller in the error for a movement without a key.
fn key_arrays<'a>(
    movements: &[&'a Movement],
    indices: &[usize],
    what: &'static str,
) -> Result<(Vec<Uuid>, Vec<&'a str>), BatchError> {
    indices
        .iter()
        .map(|&i| {
            let claim = movements[i]
                .idempotency()
                .ok_or(BatchError::Inconsistent(what))?;
            Ok((movements[i].initiated_by().as_uuid(), claim.key.as_str()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|pairs| pairs.into_iter().unzip())
}

/// Gives back the keys the movements `indices` claimed in this database transaction: they were
/// answered without writing anything (a hold no longer pending, a refused reversal claim), so
/// their keys must not stay claimed naming a transaction that does not exist. Only a row that
/// names the movement's own id is deleted.
pub(super) async fn release_keys(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
) -> Result<(), BatchError> {
    let (users, keys) = key_arrays(
        movements,
        indices,
        "release_keys was given a movement without a key",
    )?;
    let ids: Vec<Uuid> = indices.iter().map(|&i| movements[i].id()).collect();
    let statement = transaction
        .prepare_cached(
            "DELETE FROM idempotency_keys k
             USING unnest($1::uuid[], $2::text[], $3::uuid[]) AS r(user_id, key, transaction_id)
             WHERE k.user_id = r.user_id AND k.key = r.key AND k.transaction_id = r.transaction_id",
        )
        .await?;
    transaction
        .execute(&statement, &[&users, &keys, &ids])
        .await?;
    Ok(())
}

/// The stored keys of the movements `indices`: `index → (transaction id, request hash)` for
/// those whose `(initiator, key)` is stored.
pub(super) async fn find_keys(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
) -> Result<HashMap<usize, (Uuid, Vec<u8>)>, BatchError> {
    if indices.is_empty() {
        return Ok(HashMap::new());
    }
    let (users, keys) = key_arrays(
        movements,
        indices,
        "find_keys was given a movement without a key",
    )?;
    let statement = transaction
        .prepare_cached(
            "SELECT k.user_id, k.key, k.transaction_id, k.request_hash
             FROM idempotency_keys k
             JOIN unnest($1::uuid[], $2::text[]) AS wanted(user_id, key)
               ON k.user_id = wanted.user_id AND k.key = wanted.key",
        )
        .await?;
    let stored: HashMap<(Uuid, String), (Uuid, Vec<u8>)> = transaction
        .query(&statement, &[&users, &keys])
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect();
    Ok(indices
        .iter()
        .zip(users.iter().zip(&keys))
        .filter_map(|(&i, (user, key))| {
            stored
                .get(&(*user, (*key).to_owned()))
                .map(|found| (i, found.clone()))
        })
        .collect())
}

/// Creates the balance rows of `accounts` that do not exist yet: zero, with no overdraft for a
/// user; the `system` row's column is the largest bound (its real floor is the configured
/// supply bound, passed to every update).
pub(super) async fn insert_missing_balances(
    transaction: &Transaction<'_>,
    accounts: &[AccountKey],
) -> Result<(), BatchError> {
    if accounts.is_empty() {
        return Ok(());
    }
    let users: Vec<Uuid> = accounts.iter().map(|a| a.user.as_uuid()).collect();
    let currencies: Vec<&str> = accounts.iter().map(|a| a.currency.code()).collect();
    let statement = transaction
        .prepare_cached(
            "INSERT INTO balances (user_id, currency, overdraft_limit)
             SELECT t.user_id, t.currency,
                    CASE WHEN t.user_id = '00000000-0000-0000-0000-000000000000'::uuid
                         THEN $3::bigint ELSE 0 END
             FROM unnest($1::uuid[], $2::text[]) AS t(user_id, currency)
             ORDER BY t.user_id, t.currency
             ON CONFLICT (user_id, currency) DO NOTHING",
        )
        .await?;
    transaction
        .execute(&statement, &[&users, &currencies, &MONEY_BOUND_MINOR])
        .await?;
    Ok(())
}

/// THE conditional update: the posting rule of `domain::rules` in SQL, and the final arbiter
/// of every movement (invariants 2, 6 and 7). For each of `accounts` (in lock order, all in
/// `plan`) it applies the summed changes of amount and pending when no change of the plan that
/// lowers `amount - pending` takes it below the floor (the row's `-overdraft_limit`, or the
/// supply bound for `system`) and none that raises `amount` takes it above the ceiling. The update takes the row locks in array order (the
/// journal connections only plan nested loops over the `unnest`), so concurrent batches of any
/// process lock in the same order.
///
/// Returns the state of every account it changed; an account missing from the result has no
/// row or was refused.
pub(super) async fn update_balances(
    transaction: &Transaction<'_>,
    plan: &DeltaPlan,
    accounts: &[AccountKey],
) -> Result<HashMap<AccountKey, AccountState>, BatchError> {
    let statement = update_balances_statement(transaction).await?;
    update_balances_with(transaction, &statement, plan, accounts).await
}

/// The conditional update of [`update_balances`].
const UPDATE_BALANCES: &str = "UPDATE balances b
             SET amount = b.amount + d.delta, pending = b.pending + d.pending_delta,
                 version = b.version + 1, last_updated_at = now()
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bigint[])
                  AS d(user_id, currency, delta, min_after_debit, max_after_credit, floor, ceiling,
                       pending_delta)
             WHERE b.user_id = d.user_id AND b.currency = d.currency
               AND (d.min_after_debit IS NULL
                    OR b.amount - b.pending + d.min_after_debit >= COALESCE(d.floor, -b.overdraft_limit))
               AND (d.max_after_credit IS NULL OR b.amount + d.max_after_credit <= d.ceiling)
             RETURNING b.user_id, b.currency, b.amount, b.version, b.pending, b.overdraft_limit";

/// The prepared [`UPDATE_BALANCES`] (cached per connection).
async fn update_balances_statement(transaction: &Transaction<'_>) -> Result<Statement, BatchError> {
    Ok(transaction.prepare_cached(UPDATE_BALANCES).await?)
}

/// [`update_balances`] with its statement prepared.
async fn update_balances_with(
    transaction: &Transaction<'_>,
    update: &Statement,
    plan: &DeltaPlan,
    accounts: &[AccountKey],
) -> Result<HashMap<AccountKey, AccountState>, BatchError> {
    let mut users = Vec::with_capacity(accounts.len());
    let mut currencies = Vec::with_capacity(accounts.len());
    let mut sums = Vec::with_capacity(accounts.len());
    let mut pending_sums = Vec::with_capacity(accounts.len());
    let mut min_after_debits = Vec::with_capacity(accounts.len());
    let mut max_after_credits = Vec::with_capacity(accounts.len());
    let mut floors = Vec::with_capacity(accounts.len());
    let mut ceilings = Vec::with_capacity(accounts.len());
    for account in accounts {
        let account_plan = &plan.accounts[account];
        users.push(account.user.as_uuid());
        currencies.push(account.currency.code());
        sums.push(account_plan.sum);
        pending_sums.push(account_plan.pending_sum);
        min_after_debits.push(account_plan.min_after_debit);
        max_after_credits.push(account_plan.max_after_credit);
        floors.push(account_plan.floor);
        ceilings.push(account_plan.ceiling);
    }
    let params: [&(dyn ToSql + Sync); 8] = [
        &users,
        &currencies,
        &sums,
        &min_after_debits,
        &max_after_credits,
        &floors,
        &ceilings,
        &pending_sums,
    ];
    transaction
        .query(update, &params)
        .await?
        .iter()
        .map(|row| {
            let state = AccountState {
                account: account_of(row)?,
                amount: row.get(2),
                pending: row.get(4),
                overdraft_limit: row.get(5),
                version: row.get(3),
            };
            Ok((state.account, state))
        })
        .collect()
}

/// Locks the balance rows of `accounts` (`FOR UPDATE`, given in lock order) and returns each
/// one's snapshot and overdraft limit.
pub(super) async fn lock_balances(
    transaction: &Transaction<'_>,
    accounts: &[AccountKey],
) -> Result<BTreeMap<AccountKey, (Snapshot, i64)>, BatchError> {
    let users: Vec<Uuid> = accounts.iter().map(|a| a.user.as_uuid()).collect();
    let currencies: Vec<&str> = accounts.iter().map(|a| a.currency.code()).collect();
    let statement = transaction
        .prepare_cached(
            "SELECT b.user_id, b.currency, b.amount, b.pending, b.overdraft_limit FROM balances b
             JOIN unnest($1::uuid[], $2::text[]) AS d(user_id, currency)
               ON b.user_id = d.user_id AND b.currency = d.currency
             ORDER BY b.user_id, b.currency
             FOR UPDATE OF b",
        )
        .await?;
    transaction
        .query(&statement, &[&users, &currencies])
        .await?
        .iter()
        .map(|row| {
            let snapshot = Snapshot {
                amount: row.get(2),
                pending: row.get(3),
            };
            Ok((account_of(row)?, (snapshot, row.get(4))))
        })
        .collect()
}

/// The account of a row whose first two columns are `user_id, currency`.
fn account_of(row: &tokio_postgres::Row) -> Result<AccountKey, BatchError> {
    let currency = Currency::parse(row.get(1)).map_err(|_| {
        BatchError::Inconsistent("balances.currency holds a code Tally does not accept")
    })?;
    Ok(AccountKey {
        user: UserId::from_uuid(row.get(0)),
        currency,
    })
}

/// The transaction timestamp (`now()`), for a batch that wrote no transaction.
pub(super) async fn transaction_time(
    transaction: &Transaction<'_>,
) -> Result<DateTime<Utc>, BatchError> {
    let statement = transaction.prepare_cached("SELECT now()").await?;
    Ok(transaction.query_one(&statement, &[]).await?.get(0))
}

/// What the client is shown about a refusal, stored on the failed transaction
/// (`failure_detail`) so that a replay answers the same (DESIGN.md section 8).
pub(crate) fn failure_detail(refusal: &Refusal) -> Option<serde_json::Value> {
    match refusal {
        Refusal::InsufficientFunds => None,
        Refusal::LimitExceeded(breach) => Some(json!({
            "limit": {
                "kind": breach.kind.as_str(),
                "currency": breach.currency.code(),
                "value": breach.value,
                "window_s": breach.window_s,
            },
            "used": breach.used,
            "requested": breach.requested,
            "remaining": breach.remaining(),
        })),
    }
}

/// Writes the transactions (and their events) of the movements `indices` whose posting is
/// completed or refused; duplicates and movements refused before the ledger (an inactive
/// party, lost authority) write nothing. Returns their `created_at` (the transaction
/// timestamp), or `None` when nothing was written.
pub(super) async fn insert_transactions(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
    postings: &[Option<Posting>],
) -> Result<Option<DateTime<Utc>>, BatchError> {
    // A release writes no transaction: it changes the hold's state (`resolve_holds`).
    let written: Vec<(usize, Option<&Refusal>)> = indices
        .iter()
        .filter(|&&i| !matches!(movements[i].phase(), Phase::Release { .. }))
        .filter_map(|&i| match &postings[i] {
            Some(Posting::Completed) => Some((i, None)),
            Some(Posting::Refused(refusal)) => Some((i, Some(refusal))),
            _ => None,
        })
        .collect();
    if written.is_empty() {
        return Ok(None);
    }
    let n = written.len();
    let mut ids = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut froms = Vec::with_capacity(n);
    let mut tos = Vec::with_capacity(n);
    let mut amounts = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut descriptions: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut references: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut failure_reasons: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut failure_details: Vec<Option<serde_json::Value>> = Vec::with_capacity(n);
    let mut initiators = Vec::with_capacity(n);
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut timeouts: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut pending_ids: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut reversal_ofs: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut reasons: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut exchanges: Vec<Option<serde_json::Value>> = Vec::with_capacity(n);
    let mut schedules: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut occurrences: Vec<Option<i64>> = Vec::with_capacity(n);
    for (i, refusal) in written {
        let movement = movements[i];
        let (status, timeout_s, pending_id) = match (refusal, movement.phase()) {
            (Some(_), Phase::Post { hold, .. }) => (TransactionStatus::Failed, None, Some(hold)),
            (Some(_), _) => (TransactionStatus::Failed, None, None),
            (None, Phase::Hold { timeout_s }) => {
                (TransactionStatus::Pending, Some(f64::from(timeout_s)), None)
            }
            (None, Phase::Post { hold, .. }) => (TransactionStatus::Completed, None, Some(hold)),
            (None, _) => (TransactionStatus::Completed, None, None),
        };
        ids.push(movement.id());
        kinds.push(movement.kind().as_str());
        statuses.push(status.as_str());
        froms.push(movement.from().as_uuid());
        tos.push(movement.to().as_uuid());
        amounts.push(movement.amount().minor());
        currencies.push(movement.currency().code());
        descriptions.push(movement.description().map(|d| d.as_str()));
        references.push(movement.reference().map(|r| r.as_str()));
        failure_reasons.push(refusal.map(Refusal::reason));
        failure_details.push(refusal.and_then(failure_detail));
        initiators.push(movement.initiated_by().as_uuid());
        keys.push(movement.idempotency().map(|c| c.key.as_str()));
        timeouts.push(timeout_s);
        pending_ids.push(pending_id);
        reversal_ofs.push(movement.reversal().map(|reversal| reversal.of));
        reasons.push(movement.reversal().map(|reversal| reversal.reason.as_str()));
        exchanges.push(
            movement
                .exchange_details()
                .map(|_| exchange_columns(movement)),
        );
        schedules.push(movement.schedule().map(|(schedule, _)| schedule));
        occurrences.push(movement.schedule().map(|(_, occurrence)| occurrence));
    }
    // Transactions and their events in one statement; the event payload carries the entries so
    // that replaying the log rebuilds every balance (invariant 5). A hold's deadline is the
    // commit's transaction time plus its timeout, so `expires_at - created_at` is exact.
    let records = transaction
        .prepare_cached(
            "WITH t AS (
                 INSERT INTO transactions (id, type, status, from_user_id, to_user_id, amount, currency,
                                           description, reference, failure_reason, failure_detail,
                                           initiated_by, idempotency_key, created_at, completed_at,
                                           expires_at, pending_id, reversal_of, reason,
                                           to_amount, to_currency, fee, rate, spread_bps, rate_source,
                                           quote_id, schedule_id, occurrence)
                 SELECT id, type, status, from_user_id, to_user_id, amount, currency, description,
                        reference, failure_reason, failure_detail, initiated_by, idempotency_key, now(),
                        CASE WHEN status = 'completed' THEN now() END,
                        now() + make_interval(secs => timeout_s), pending_id, reversal_of, reason,
                        (fx->>'to_amount')::bigint, fx->>'to_currency', (fx->>'fee')::bigint,
                        (fx->>'rate')::numeric, (fx->>'spread_bps')::integer, fx->>'rate_source',
                        (fx->>'quote_id')::uuid, schedule_id, occurrence
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::bigint[],
                             $7::text[], $8::text[], $9::text[], $10::text[], $11::jsonb[], $12::uuid[],
                             $13::text[], $14::float8[], $15::uuid[], $16::uuid[], $17::text[],
                             $18::jsonb[], $19::uuid[], $20::bigint[])
                      AS r(id, type, status, from_user_id, to_user_id, amount, currency, description,
                           reference, failure_reason, failure_detail, initiated_by, idempotency_key,
                           timeout_s, pending_id, reversal_of, reason, fx, schedule_id, occurrence)
                 RETURNING *
             )
             INSERT INTO events (stream, type, user_a, user_b, payload, created_at)
             SELECT 'transaction:' || t.id,
                    CASE WHEN t.status = 'pending' THEN 'hold.created' ELSE 'transaction.' || t.status END,
                    t.from_user_id, t.to_user_id,
                    -- The exchange and schedule fields, where set, are merged in (`||` builds
                    -- the whole object again): a plain movement's payload is built once.
                    CASE WHEN num_nonnulls(t.to_amount, t.to_currency, t.fee, t.rate, t.spread_bps,
                                           t.rate_source, t.quote_id, t.schedule_id, t.occurrence) = 0
                         THEN p.payload
                         ELSE (jsonb_strip_nulls(jsonb_build_object(
                                  'to_amount', t.to_amount, 'to_currency', t.to_currency, 'fee', t.fee,
                                  'rate', t.rate::text, 'spread_bps', t.spread_bps,
                                  'rate_source', t.rate_source, 'quote_id', t.quote_id,
                                  'schedule_id', t.schedule_id, 'occurrence', t.occurrence))
                              || p.payload::jsonb)::json
                    END,
                    t.created_at
             FROM t, LATERAL (
                 SELECT json_build_object(
                        'id', t.id, 'type', t.type, 'status', t.status,
                        'from_user_id', t.from_user_id, 'to_user_id', t.to_user_id,
                        'amount', t.amount, 'currency', t.currency,
                        'description', t.description, 'reference', t.reference,
                        'failure_reason', t.failure_reason, 'failure_detail', t.failure_detail,
                        'initiated_by', t.initiated_by,
                        'expires_at', t.expires_at, 'pending_id', t.pending_id,
                        'reversal_of', t.reversal_of, 'reason', t.reason,
                        'entries', CASE WHEN t.status <> 'completed' THEN '[]'::json
                                        WHEN t.to_currency IS NOT NULL THEN (
                                            SELECT (x.fx->'entries')::json
                                            FROM unnest($1::uuid[], $18::jsonb[]) AS x(id, fx)
                                            WHERE x.id = t.id)
                                        ELSE json_build_array(
                            json_build_object('user_id', t.from_user_id, 'currency', t.currency, 'delta', -t.amount),
                            json_build_object('user_id', t.to_user_id, 'currency', t.currency, 'delta', t.amount))
                          END) AS payload
             ) AS p
             RETURNING created_at",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 20] = [
        &ids,
        &kinds,
        &statuses,
        &froms,
        &tos,
        &amounts,
        &currencies,
        &descriptions,
        &references,
        &failure_reasons,
        &failure_details,
        &initiators,
        &keys,
        &timeouts,
        &pending_ids,
        &reversal_ofs,
        &reasons,
        &exchanges,
        &schedules,
        &occurrences,
    ];
    let rows = transaction.query(&records, &params).await?;
    Ok(rows.first().map(|row| row.get(0)))
}

/// The exchange columns of `movement`'s transaction (an exchange or its reversal), with the
/// entries its event carries (every leg, so that replaying the log rebuilds the balances).
fn exchange_columns(movement: &Movement) -> serde_json::Value {
    let Some(exchange) = movement.exchange_details() else {
        return serde_json::Value::Null;
    };
    let (to_amount, to_currency) = if movement.reversal().is_some() {
        (exchange.sold, exchange.sold_currency)
    } else {
        (exchange.bought, exchange.bought_currency)
    };
    let entries: Vec<serde_json::Value> = movement
        .legs()
        .map(|leg| {
            json!({
                "user_id": leg.account.user.as_uuid(),
                "currency": leg.account.currency.code(),
                "delta": leg.change.amount,
            })
        })
        .collect();
    json!({
        "to_amount": to_amount.minor(),
        "to_currency": to_currency.code(),
        "fee": exchange.fee,
        "rate": exchange.rate.to_string(),
        "spread_bps": exchange.spread_bps,
        "rate_source": exchange.rate_source,
        "quote_id": exchange.quote,
        "entries": entries,
    })
}

/// Writes the entries (one `INSERT ... SELECT FROM unnest`).
pub(super) async fn insert_entries(
    transaction: &Transaction<'_>,
    entries: &EntryRows,
) -> Result<(), BatchError> {
    if entries.deltas.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(
            "INSERT INTO entries (transaction_id, user_id, currency, delta, balance_after)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[])",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 5] = [
        &entries.transaction_ids,
        &entries.users,
        &entries.currencies,
        &entries.deltas,
        &entries.balances_after,
    ];
    transaction.execute(&statement, &params).await?;
    Ok(())
}

/// Claims the quotes of the exchanges `indices` (each names one; the caller keeps the first of
/// a batch's movements naming the same quote): a quote is used once, by its own user, before
/// its deadline, and only for the amounts and currencies it was given for. Returns the quotes
/// claimed; an exchange whose quote is missing from it must not be applied (`quote_expired`).
pub(super) async fn claim_quotes(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
    now: DateTime<Utc>,
) -> Result<HashSet<Uuid>, BatchError> {
    let n = indices.len();
    let (mut quotes, mut users, mut transactions) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut sold, mut bought, mut sold_in, mut bought_in) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut seen = HashSet::new();
    for &i in indices {
        let movement = movements[i];
        let Some(exchange) = movement.exchange_details() else {
            continue;
        };
        let Some(quote) = exchange.quote else {
            continue;
        };
        if !seen.insert(quote) {
            continue;
        }
        quotes.push(quote);
        users.push(movement.initiated_by().as_uuid());
        transactions.push(movement.id());
        sold.push(exchange.sold.minor());
        bought.push(exchange.bought.minor());
        sold_in.push(exchange.sold_currency.code());
        bought_in.push(exchange.bought_currency.code());
    }
    let statement = transaction
        .prepare_cached(
            "UPDATE fx_quotes AS q
             SET transaction_id = c.transaction_id, used_at = $8
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[])
                  AS c(id, user_id, transaction_id, sold, bought, sold_in, bought_in)
             WHERE q.id = c.id AND q.user_id = c.user_id AND q.transaction_id IS NULL
               AND q.expires_at > $8 AND q.source_amount = c.sold AND q.target_amount = c.bought
               AND q.from_currency = c.sold_in AND q.to_currency = c.bought_in
             RETURNING q.id",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 8] = [
        &quotes,
        &users,
        &transactions,
        &sold,
        &bought,
        &sold_in,
        &bought_in,
        &now,
    ];
    Ok(transaction
        .query(&statement, &params)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Claims the resolution of the holds that the movements `indices` post or release (each
/// hold at most once among them: the caller keeps the first): the hold's row goes from
/// `pending` to `posted`, `voided` or `expired` with a conditional update, and its event is
/// written in the same statement. A posting or void is claimed only before the stored
/// deadline, an expiry only at or after it (DESIGN.md section 7: expiry is decided from the
/// deadline at resolution time, never from whether a sweeper ran), and only while the hold is
/// the one the movement was built from (same parties, currency and amount).
///
/// Returns the holds claimed; a movement whose hold is missing from it must not be applied
/// (`hold_not_pending`).
pub(super) async fn resolve_holds(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
) -> Result<HashSet<Uuid>, BatchError> {
    let n = indices.len();
    let mut holds = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut helds = Vec::with_capacity(n);
    let mut postings: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut posted: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut payers = Vec::with_capacity(n);
    let mut payees = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut initiators = Vec::with_capacity(n);
    for &i in indices {
        let movement = movements[i];
        let (hold, status, held, posting) = match movement.phase() {
            Phase::Post { hold, held } => (hold, "posted", held, Some(movement.id())),
            Phase::Release { hold, end } => (hold, end.as_str(), movement.amount().minor(), None),
            Phase::Settle | Phase::Hold { .. } => continue,
        };
        holds.push(hold);
        statuses.push(status);
        helds.push(held);
        postings.push(posting);
        posted.push(posting.map(|_| movement.amount().minor()));
        payers.push(movement.from().as_uuid());
        payees.push(movement.to().as_uuid());
        currencies.push(movement.currency().code());
        initiators.push(movement.initiated_by().as_uuid());
    }
    if holds.is_empty() {
        return Ok(HashSet::new());
    }
    let statement = transaction
        .prepare_cached(
            "WITH r AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::bigint[],
                                      $6::uuid[], $7::uuid[], $8::text[], $9::uuid[])
                      AS r(hold, status, held, posting_id, posted_amount, payer, payee, currency,
                           initiated_by)
                 ORDER BY hold
             ), resolved AS (
                 UPDATE transactions t
                 SET status = r.status, resolved_at = now(), posting_id = r.posting_id,
                     posted_amount = r.posted_amount
                 FROM r
                 WHERE t.id = r.hold AND t.status = 'pending' AND t.amount = r.held
                   AND t.from_user_id = r.payer AND t.to_user_id = r.payee AND t.currency = r.currency
                   AND CASE WHEN r.status = 'expired' THEN t.expires_at <= now()
                            ELSE t.expires_at > now() END
                 RETURNING t.*, r.initiated_by AS resolved_by
             ), logged AS (
                 INSERT INTO events (stream, type, user_a, user_b, payload, created_at)
                 SELECT 'transaction:' || id, 'hold.' || status, from_user_id, to_user_id,
                        json_build_object(
                            'id', id, 'status', status, 'from_user_id', from_user_id,
                            'to_user_id', to_user_id, 'currency', currency, 'amount', amount, 'released', amount,
                            'posted_amount', posted_amount, 'posting_id', posting_id,
                            'resolved_by', resolved_by, 'resolved_at', resolved_at),
                        resolved_at
                 FROM resolved
             ), given_back AS (
                 -- What the hold counted toward its payer's limits (limit_usage): a void or
                 -- expiry gives it all back, a posting keeps the posted amount.
                 DELETE FROM limit_usage u USING resolved
                 WHERE u.transaction_id = resolved.id AND resolved.status <> 'posted'
             ), lowered AS (
                 UPDATE limit_usage u SET amount = LEAST(u.amount, resolved.posted_amount)
                 FROM resolved
                 WHERE u.transaction_id = resolved.id AND resolved.status = 'posted'
             )
             SELECT id FROM resolved",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 9] = [
        &holds,
        &statuses,
        &helds,
        &postings,
        &posted,
        &payers,
        &payees,
        &currencies,
        &initiators,
    ];
    Ok(transaction
        .query(&statement, &params)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Claims `movement`'s part of the transaction it reverses: `reversed_amount` grows by its
/// amount only while the original is a completed credit, debit or transfer between the same
/// parties and the sum of its reversals stays within its amount (invariant 10, also a CHECK of
/// migration V7), and `transaction.reversed` is written in the same statement. The row lock it
/// takes serializes concurrent reversals of one transaction, on any instance.
///
/// Returns `Err` with why when the original does not allow it.
pub(super) async fn claim_reversal(
    transaction: &Transaction<'_>,
    movement: &Movement,
) -> Result<Result<(), ReversalRefusal>, BatchError> {
    let Some(reversal) = movement.reversal() else {
        return Ok(Ok(()));
    };
    let statement = transaction
        .prepare_cached(
            "WITH claimed AS (
                 UPDATE transactions
                 SET reversed_amount = reversed_amount + $2
                 WHERE id = $1 AND status = 'completed'
                   AND type IN ('credit', 'debit', 'transfer', 'exchange') AND (type = 'exchange') = $7
                   AND from_user_id = $3 AND to_user_id = $4 AND currency = $5
                   AND reversed_amount + $2 <= amount
                 RETURNING id, amount, reversed_amount, from_user_id, to_user_id, currency,
                           to_currency
             ), logged AS (
                 INSERT INTO events (stream, type, user_a, user_b, payload)
                 SELECT 'transaction:' || id, 'transaction.reversed', from_user_id, to_user_id,
                        json_strip_nulls(json_build_object(
                            'id', id, 'reversal_id', $6::uuid, 'amount', $2::bigint,
                            'reversed_amount', reversed_amount, 'from_user_id', from_user_id,
                            'to_user_id', to_user_id, 'currency', currency,
                            'to_currency', to_currency))
                 FROM claimed
             )
             SELECT count(*) FROM claimed",
        )
        .await?;
    let (of, from, to) = (
        reversal.of,
        // The original moved money the other way.
        movement.to().as_uuid(),
        movement.from().as_uuid(),
    );
    // An exchange is reversed whole: its claim is the amount it sold, in the sold currency.
    let exchange = movement.exchange_details();
    let (amount, currency) = match exchange {
        Some(exchange) => (exchange.sold.minor(), exchange.sold_currency.code()),
        None => (movement.amount().minor(), movement.currency().code()),
    };
    let is_exchange = exchange.is_some();
    let claimed: i64 = transaction
        .query_one(
            &statement,
            &[
                &of,
                &amount,
                &from,
                &to,
                &currency,
                &movement.id(),
                &is_exchange,
            ],
        )
        .await?
        .get(0);
    if claimed == 1 {
        return Ok(Ok(()));
    }
    // Why not: read again in a statement of its own, whose snapshot includes a reversal that
    // committed while this one waited for the row lock (the update's snapshot does not).
    let why = transaction
        .prepare_cached(
            "SELECT status = 'completed' AND type IN ('credit', 'debit', 'transfer', 'exchange')
                      AND (type = 'exchange') = $5
                      AND from_user_id = $2 AND to_user_id = $3 AND currency = $4,
                    amount - reversed_amount
             FROM transactions WHERE id = $1",
        )
        .await?;
    let Some(row) = transaction
        .query_opt(&why, &[&of, &from, &to, &currency, &is_exchange])
        .await?
    else {
        return Ok(Err(ReversalRefusal::NotReversible));
    };
    let reversible: bool = row.get(0);
    let remaining: i64 = row.get(1);
    Ok(Err(if reversible && remaining > 0 {
        ReversalRefusal::ExceedsAmount { remaining }
    } else {
        ReversalRefusal::NotReversible
    }))
}

/// What [`check_usage`] found: each account's configured limits with what they had counted
/// before the statement, and the accounts the statement's movements would take past one.
#[derive(Debug, Default)]
pub(super) struct CountedUsage {
    pub limits: BTreeMap<AccountKey, Vec<WindowUsage>>,
    pub exceeded: Vec<AccountKey>,
}

impl CountedUsage {
    /// The usage rows of `plan` worth keeping: those of accounts with a windowed limit in the
    /// row's direction (`max_per_transaction` keeps no count).
    pub fn rows_to_record(&self, plan: &UsagePlan) -> Vec<UsageRow> {
        plan.rows
            .iter()
            .filter(|row| {
                self.limits.get(&row.account).is_some_and(|limits| {
                    limits.iter().any(|limit| {
                        limit.kind != LimitKind::MaxPerTransaction
                            && (limit.kind == LimitKind::DailyCredit) != row.debit
                    })
                })
            })
            .copied()
            .collect()
    }
}

/// The final arbiter of the configured limits (DESIGN.md section 8, invariant 11) for the
/// accounts of `plan`; read-only. Must execute after their balance rows are locked, as a
/// statement of its own (its snapshot then holds every usage row a previous holder of the lock
/// committed): [`update_balances_then_check_usage`] sends it right behind the update.
///
/// For each account it finds the effective limits of what the plan counts there (debits, or
/// credits a user gives themself; the account's own row wins over a default,
/// which applies when `defaults` says the account's user has role `user`; a row naming the
/// currency wins over `*`), reads what each has counted in its window as of `now`
/// (`limit_usage`: a UTC calendar day, or the last `window_s` seconds, exact to the
/// microsecond), and marks the account exceeded when `used + what the plan adds > value` for
/// any of them (`max_per_transaction`: when the plan's largest debit is `> value`): the same
/// sums `domain::WindowUsage::admit` checks one movement at a time. The plan's own rows are
/// written later by [`record_usage`], in the same transaction.
///
/// A new kind of limit is one arm in each `CASE` below and one in `WindowUsage::requested`.
const CHECK_USAGE: &str = "WITH d AS (
         SELECT * FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                              $7::bigint[], $8::bool[])
              AS d(user_id, currency, debit_sum, debit_count, debit_max, credit_sum, role_user)
     ), defaults AS MATERIALIZED (
         SELECT * FROM limits WHERE user_id IS NULL
     ), candidates AS (
         -- The account's own rows (one index probe per account), then the defaults that apply
         -- (a handful, read once). Only the limits of what the plan counts: a transfer's payer
         -- is not asked about its daily_credit.
         SELECT d.*, l.kind, l.value, l.window_s, false AS is_default, l.currency = '*' AS any_currency
         FROM d JOIN limits l ON l.user_id = d.user_id AND l.currency IN (d.currency, '*')
         WHERE CASE WHEN l.kind = 'daily_credit' THEN d.credit_sum > 0 ELSE d.debit_count > 0 END
         UNION ALL
         SELECT d.*, l.kind, l.value, l.window_s, true, l.currency = '*'
         FROM d JOIN defaults l ON d.role_user AND l.currency IN (d.currency, '*')
         WHERE CASE WHEN l.kind = 'daily_credit' THEN d.credit_sum > 0 ELSE d.debit_count > 0 END
     ), effective AS (
         SELECT DISTINCT ON (c.user_id, c.currency, c.kind) c.*,
                CASE WHEN c.kind = 'daily_credit' THEN 'credit' ELSE 'debit' END AS direction,
                CASE WHEN c.window_s IS NULL THEN date_trunc('day', $1::timestamptz)
                     ELSE $1::timestamptz - make_interval(secs => c.window_s)
                          + interval '1 microsecond' END AS since
         FROM candidates c
         ORDER BY c.user_id, c.currency, c.kind, c.is_default, c.any_currency
     )
     SELECT e.user_id, e.currency, e.kind, e.value, e.window_s, w.used,
            CASE e.kind
                WHEN 'max_per_transaction' THEN e.debit_max > e.value
                WHEN 'velocity' THEN w.used + e.debit_count > e.value
                WHEN 'daily_credit' THEN w.used + e.credit_sum > e.value
                ELSE w.used + e.debit_sum > e.value
            END AS exceeded
     FROM effective e
     CROSS JOIN LATERAL (
         -- Capped: every value is at most 2^61, so the cap changes no verdict and the sums
         -- above cannot overflow.
         SELECT LEAST(CASE e.kind WHEN 'max_per_transaction' THEN 0
                                  WHEN 'velocity' THEN count(*)
                                  ELSE coalesce(sum(u.amount), 0) END,
                      4611686018427387904)::bigint AS used
         FROM limit_usage u
         WHERE e.kind <> 'max_per_transaction'
           AND u.user_id = e.user_id AND u.currency = e.currency
           AND u.direction = e.direction AND u.at >= e.since
     ) w";

/// [`CHECK_USAGE`] for `plan`; `defaults(user)` says whether the defaults apply to the user's
/// accounts (role `user`, as the commit share-locked it).
pub(super) async fn check_usage(
    transaction: &Transaction<'_>,
    statement: &Statement,
    now: DateTime<Utc>,
    plan: &UsagePlan,
    defaults: &(dyn Fn(UserId) -> bool + Sync),
) -> Result<CountedUsage, BatchError> {
    let n = plan.accounts.len();
    let mut users = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut debit_sums = Vec::with_capacity(n);
    let mut debit_counts = Vec::with_capacity(n);
    let mut debit_maxes = Vec::with_capacity(n);
    let mut credit_sums = Vec::with_capacity(n);
    let mut applies = Vec::with_capacity(n);
    for (account, usage) in &plan.accounts {
        users.push(account.user.as_uuid());
        currencies.push(account.currency.code());
        debit_sums.push(usage.debit_sum);
        debit_counts.push(usage.debit_count);
        debit_maxes.push(usage.debit_max);
        credit_sums.push(usage.credit_sum);
        applies.push(defaults(account.user));
    }
    let params: [&(dyn ToSql + Sync); 8] = [
        &now,
        &users,
        &currencies,
        &debit_sums,
        &debit_counts,
        &debit_maxes,
        &credit_sums,
        &applies,
    ];
    let mut counted = CountedUsage::default();
    for row in transaction.query(statement, &params).await? {
        let account = account_of(&row)?;
        let kind = LimitKind::parse(row.get(2)).ok_or(BatchError::Inconsistent(
            "limits.kind holds a kind Tally does not know",
        ))?;
        let window_s: Option<i32> = row.get(4);
        counted
            .limits
            .entry(account)
            .or_default()
            .push(WindowUsage {
                kind,
                value: row.get(3),
                window_s: window_s.and_then(|s| u32::try_from(s).ok()),
                used: row.get(5),
            });
        if row.get::<_, bool>(6) && !counted.exceeded.contains(&account) {
            counted.exceeded.push(account);
        }
    }
    Ok(counted)
}

/// The prepared [`CHECK_USAGE`] (cached per connection).
pub(super) async fn check_usage_statement(
    transaction: &Transaction<'_>,
) -> Result<Statement, BatchError> {
    Ok(transaction.prepare_cached(CHECK_USAGE).await?)
}

/// The conditional update of `accounts` and, when `usage` counts anything, the limits' check
/// of its accounts, pipelined: both statements are prepared first, so the check is sent right
/// behind the update and executes after it took the row locks (one round trip). The check's
/// verdict holds only for accounts the update locked: the caller checks again the accounts it
/// had to create.
pub(super) async fn update_balances_then_check_usage(
    transaction: &Transaction<'_>,
    plan: &DeltaPlan,
    accounts: &[AccountKey],
    (now, usage, defaults): (DateTime<Utc>, &UsagePlan, &(dyn Fn(UserId) -> bool + Sync)),
) -> Result<(HashMap<AccountKey, AccountState>, Option<CountedUsage>), BatchError> {
    if usage.is_empty() {
        return Ok((update_balances(transaction, plan, accounts).await?, None));
    }
    let (update, check) = tokio::try_join!(
        update_balances_statement(transaction),
        check_usage_statement(transaction)
    )?;
    // `join` polls the update first, so it is sent first; `tokio::join!` rotates the order it
    // polls in. When the update fails (a lock timeout, say), the check fails only because the
    // transaction is aborted: the update's error is the one that says why.
    let (returned, counted) = futures_util::future::join(
        update_balances_with(transaction, &update, plan, accounts),
        check_usage(transaction, &check, now, usage, defaults),
    )
    .await;
    Ok((returned?, Some(counted?)))
}

/// Writes the usage rows `rows` at `now`.
pub(super) async fn record_usage(
    transaction: &Transaction<'_>,
    now: DateTime<Utc>,
    rows: &[UsageRow],
) -> Result<(), BatchError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.transaction_id).collect();
    let users: Vec<Uuid> = rows.iter().map(|row| row.account.user.as_uuid()).collect();
    let currencies: Vec<&str> = rows.iter().map(|row| row.account.currency.code()).collect();
    let directions: Vec<&str> = rows
        .iter()
        .map(|row| if row.debit { "debit" } else { "credit" })
        .collect();
    let amounts: Vec<i64> = rows.iter().map(|row| row.amount).collect();
    let statement = transaction
        .prepare_cached(
            "INSERT INTO limit_usage (transaction_id, user_id, currency, direction, amount, at)
             SELECT r.*, $6 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[])
                  AS r(transaction_id, user_id, currency, direction, amount)",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 6] = [&ids, &users, &currencies, &directions, &amounts, &now];
    transaction.execute(&statement, &params).await?;
    Ok(())
}

/// The alerts of the accounts `entries` touch, read after their balance rows are locked.
pub(super) async fn read_alerts(
    transaction: &Transaction<'_>,
    entries: &EntryRows,
) -> Result<Vec<Alert>, BatchError> {
    let statement = transaction
        .prepare_cached(
            "SELECT a.id, a.user_id, a.currency, a.condition = 'below', a.threshold, a.armed
             FROM alerts a
             JOIN (SELECT DISTINCT * FROM unnest($1::uuid[], $2::text[])) AS d(user_id, currency)
               ON a.user_id = d.user_id AND a.currency = d.currency
             ORDER BY a.id",
        )
        .await?;
    Ok(transaction
        .query(&statement, &[&entries.users, &entries.currencies])
        .await?
        .iter()
        .map(|row| Alert {
            id: row.get(0),
            user: row.get(1),
            currency: row.get(2),
            below: row.get(3),
            threshold: row.get(4),
            armed: row.get(5),
        })
        .collect())
}

/// Writes what the batch did to its accounts' alerts: their `armed` flags and counts, and one
/// `balance.alert` event per firing (DESIGN.md section 8).
pub(super) async fn write_alerts(
    transaction: &Transaction<'_>,
    changes: &AlertChanges,
) -> Result<(), BatchError> {
    let ids: Vec<Uuid> = changes.states.iter().map(|state| state.0).collect();
    let armed: Vec<bool> = changes.states.iter().map(|state| state.1).collect();
    let fired: Vec<i64> = changes.states.iter().map(|state| state.2).collect();
    let firing_alerts: Vec<Uuid> = changes.firings.iter().map(|f| f.alert).collect();
    let firing_transactions: Vec<Uuid> = changes.firings.iter().map(|f| f.transaction_id).collect();
    let firing_balances: Vec<i64> = changes.firings.iter().map(|f| f.balance).collect();
    let statement = transaction
        .prepare_cached(
            "WITH changed AS (
                 UPDATE alerts a
                 SET armed = d.armed, fired_count = a.fired_count + d.fired,
                     last_fired_at = CASE WHEN d.fired > 0 THEN now() ELSE a.last_fired_at END
                 FROM unnest($1::uuid[], $2::bool[], $3::bigint[]) AS d(id, armed, fired)
                 WHERE a.id = d.id
                 RETURNING a.*
             )
             INSERT INTO events (stream, type, user_a, payload)
             SELECT 'alert:' || c.id, 'balance.alert', c.user_id,
                    json_build_object('alert_id', c.id, 'user_id', c.user_id,
                                       'currency', c.currency, 'condition', c.condition,
                                       'threshold', c.threshold, 'balance', f.balance,
                                       'transaction_id', f.transaction_id)
             FROM unnest($4::uuid[], $5::uuid[], $6::bigint[]) WITH ORDINALITY
                  AS f(alert_id, transaction_id, balance, n)
             JOIN changed c ON c.id = f.alert_id
             ORDER BY f.n",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 6] = [
        &ids,
        &armed,
        &fired,
        &firing_alerts,
        &firing_transactions,
        &firing_balances,
    ];
    transaction.execute(&statement, &params).await?;
    Ok(())
}
