//! The group commit: one PostgreSQL transaction writes a whole batch of movements (DESIGN.md
//! section 5). Statement order inside the transaction is what keeps invariants 2, 5 and 6 across
//! any number of Tally processes:
//!
//! 1. share-lock the parties (users) and claim the batch's idempotency keys (`ON CONFLICT DO
//!    NOTHING`: a key someone already committed makes its movement a duplicate, applied
//!    nothing);
//! 2. apply each account's summed delta with one conditional `UPDATE` that visits the balance
//!    rows in `(user_id, currency)` order, so it locks them in that order (`amount - pending +
//!    min_prefix >= -overdraft_limit`, where `min_prefix` is the lowest running sum of the
//!    account's deltas in batch order, so no entry's `balance_after` dips below the limit
//!    either). Accounts missing from `RETURNING` have no row yet or were refused: missing rows
//!    are created and those accounts tried once more. Accounts still missing were refused by
//!    the database: the transaction is rolled back and the movements debiting them are re-run
//!    alone, so they never fail their batch-mates;
//! 3. movements marked to run alone are applied one by one (debit side conditionally first);
//! 4. insert transactions and their events, and the entries, whose `balance_after` is derived
//!    from the amounts the database returned, in the order the deltas were applied. Entry ids
//!    therefore grow in commit order for each account: the row lock is held until commit.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, Transaction};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::domain::{AccountKey, Currency, Movement, TransactionStatus, UserId};

/// What the commit decided for one movement of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posting {
    /// Applied: its entries are written and its transaction is `completed`.
    Completed,
    /// Refused by the database's balance check: recorded as a `failed` transaction with reason
    /// `insufficient_funds`; no entries.
    InsufficientFunds,
    /// Its idempotency key was already used (committed earlier, or earlier in this batch):
    /// nothing was written for it. `transaction_id` is the first request's transaction.
    Duplicate {
        transaction_id: Uuid,
        request_hash: Vec<u8>,
    },
    /// A party (sender, recipient or initiator) is unknown or deleted: nothing was written.
    /// Checked in the batch, with the users' rows share-locked, so a user deleted concurrently
    /// can never receive money (the delete locks the same row for update).
    InactiveParty { user: UserId },
}

/// An account's balance as the database returned it after this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountState {
    pub account: AccountKey,
    /// Minor units.
    pub amount: i64,
    /// `balances.version`: larger is newer.
    pub version: i64,
}

/// The result of one committed batch.
#[derive(Debug)]
pub struct BatchReport {
    /// One per input movement, in input order.
    pub postings: Vec<Posting>,
    /// The transaction timestamp (`now()`): `created_at` of every transaction written, and
    /// `completed_at` of the completed ones.
    pub committed_at: DateTime<Utc>,
    /// Final state of every account this batch changed.
    pub accounts: Vec<AccountState>,
    /// How many times the transaction was started (1 unless the database refused accounts).
    pub attempts: u32,
}

/// A movement to write and whether to apply it alone (its reservation was refused by the
/// balance actor's cache, or the database refused its account in a group).
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    pub movement: &'a Movement,
    pub alone: bool,
}

/// Why a batch was not committed. The split matters when the connection is lost: before
/// `COMMIT` was sent nothing can have been written, so the batch may be retried on a new
/// connection; once `COMMIT` was sent, a lost connection leaves the outcome unknown.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A statement before `COMMIT` failed (or `BEGIN`, or the rollback of a refused attempt):
    /// nothing of the batch was written.
    #[error("batch statement failed: {0}")]
    BeforeCommit(#[source] tokio_postgres::Error),
    /// `COMMIT` itself failed. On a lost connection the batch may or may not be committed;
    /// otherwise the server rolled it back (e.g. a deferred constraint) and nothing was written.
    #[error("COMMIT failed: {0}")]
    AtCommit(#[source] tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(error: tokio_postgres::Error) -> BatchError {
        BatchError::BeforeCommit(error)
    }
}

impl BatchError {
    /// The database error, wherever it happened.
    pub fn database_error(&self) -> &tokio_postgres::Error {
        match self {
            BatchError::BeforeCommit(error) | BatchError::AtCommit(error) => error,
        }
    }

    /// The connection (or the server) went away, as opposed to a statement being refused.
    pub fn is_connection_lost(&self) -> bool {
        super::is_connection_error(self.database_error())
    }

    /// `COMMIT` was sent and its answer was lost with the connection: the batch may have been
    /// committed. Nothing may be acknowledged, and cached balances must be reloaded.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, BatchError::AtCommit(_)) && self.is_connection_lost()
    }

    /// A deadlock or serialization failure: the same batch may simply be run again.
    pub fn is_transient(&self) -> bool {
        super::is_transient(self.database_error())
    }
}

/// Writes `items` in one database transaction and commits it.
///
/// Errors: [`BatchError::BeforeCommit`] for any failure before `COMMIT` (the transaction is
/// rolled back, nothing of the batch is written); [`BatchError::AtCommit`] when `COMMIT` fails
/// (see [`BatchError::is_outcome_unknown`]: the caller must then not acknowledge, and
/// idempotency keys make a retry safe).
pub async fn commit_batch(
    client: &mut Client,
    items: &[BatchItem<'_>],
) -> Result<BatchReport, BatchError> {
    let mut alone: Vec<bool> = items.iter().map(|item| item.alone).collect();
    let mut postings: Vec<Option<Posting>> = vec![None; items.len()];
    mark_duplicates_within_batch(items, &mut postings);

    let mut attempts = 0;
    loop {
        attempts += 1;
        let transaction = client.transaction().await?;
        let mut attempt_postings = postings.clone();
        lock_parties(&transaction, items, &mut attempt_postings).await?;
        claim_idempotency_keys(&transaction, items, &mut attempt_postings).await?;

        let grouped: Vec<usize> = (0..items.len())
            .filter(|&i| attempt_postings[i].is_none() && !alone[i])
            .collect();
        let single: Vec<usize> = (0..items.len())
            .filter(|&i| attempt_postings[i].is_none() && alone[i])
            .collect();
        let plan = DeltaPlan::build(items, &grouped);

        // The grouped movements' transactions are written as completed before any balance row
        // is locked, in the same round trip as the update: if the database refuses an account,
        // the attempt is rolled back anyway, and the row locks are held only from the update
        // to the commit.
        let mut entries = EntryRows::default();
        let mut states: BTreeMap<AccountKey, AccountState> = BTreeMap::new();
        let mut committed_at = None;
        if !plan.accounts.is_empty() {
            for &i in &grouped {
                attempt_postings[i] = Some(Posting::Completed);
            }
            let (written_at, returned) = tokio::try_join!(
                insert_transactions(&transaction, items, &grouped, &attempt_postings),
                apply_plan(&transaction, &plan)
            )?;
            let refused: Vec<AccountKey> = plan
                .accounts
                .keys()
                .filter(|account| !returned.contains_key(*account))
                .copied()
                .collect();
            if !refused.is_empty() {
                // The database disagrees with the actors' caches (another process moved money, or
                // a cache is stale). Re-run the movements debiting those accounts alone; every
                // attempt moves at least one movement out of the group, so this loop ends.
                transaction.rollback().await?;
                for &i in &grouped {
                    if refused.contains(&items[i].movement.debited()) {
                        alone[i] = true;
                    }
                }
                continue;
            }
            for (account, deltas) in &plan.accounts {
                let state = returned[account];
                entries.push_account(items, *account, deltas, state.amount);
                states.insert(*account, state);
            }
            committed_at = written_at;
        }
        if !single.is_empty() {
            ensure_balance_rows(&transaction, items, single.iter().copied()).await?;
            for &i in &single {
                let posting =
                    apply_alone(&transaction, items[i].movement, &mut entries, &mut states).await?;
                attempt_postings[i] = Some(posting);
            }
            let written_at =
                insert_transactions(&transaction, items, &single, &attempt_postings).await?;
            committed_at = committed_at.or(written_at);
        }
        debug_assert!(
            entries.sums_to_zero_per_currency(),
            "a batch's entries must sum to zero per currency"
        );
        insert_entries(&transaction, &entries).await?;
        let committed_at = match committed_at {
            Some(at) => at,
            None => transaction_time(&transaction).await?,
        };
        let postings: Vec<Posting> = attempt_postings
            .into_iter()
            .map(|posting| posting.expect("every movement of the batch has been decided"))
            .collect();
        transaction.commit().await.map_err(BatchError::AtCommit)?;
        let postings = resolve_duplicates_within_batch(items, postings);
        return Ok(BatchReport {
            postings,
            committed_at,
            accounts: states.into_values().collect(),
            attempts,
        });
    }
}

/// Share-locks the users the undecided movements name (in id order, `system` excluded: it is
/// never deleted and every credit names it) and marks the movements with an unknown or deleted
/// party. One statement per batch: the handlers need not look users up per request.
async fn lock_parties(
    transaction: &Transaction<'_>,
    items: &[BatchItem<'_>],
    postings: &mut [Option<Posting>],
) -> Result<(), tokio_postgres::Error> {
    let mut wanted: Vec<Uuid> = (0..items.len())
        .filter(|&i| postings[i].is_none())
        .flat_map(|i| {
            let movement = items[i].movement;
            [movement.from, movement.to, movement.initiated_by]
        })
        .filter(|user| !user.is_system())
        .map(UserId::as_uuid)
        .collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(
            "SELECT id FROM users
             WHERE id = ANY($1) AND deleted_at IS NULL AND role <> 'system'
             ORDER BY id
             FOR SHARE",
        )
        .await?;
    let active: std::collections::HashSet<Uuid> = transaction
        .query(&statement, &[&wanted])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if active.len() == wanted.len() {
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if postings[i].is_some() {
            continue;
        }
        let movement = item.movement;
        let inactive = [movement.initiated_by, movement.from, movement.to]
            .into_iter()
            .find(|user| !user.is_system() && !active.contains(&user.as_uuid()));
        if let Some(user) = inactive {
            postings[i] = Some(Posting::InactiveParty { user });
        }
    }
    Ok(())
}

/// A later movement of the batch with the same `(initiated_by, key)` as an earlier one is a
/// duplicate of it. Marked with a placeholder resolved after commit.
fn mark_duplicates_within_batch(items: &[BatchItem<'_>], postings: &mut [Option<Posting>]) {
    let mut first: HashMap<(UserId, &str), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(claim) = &item.movement.idempotency {
            if let Some(&earlier) = first.get(&(item.movement.initiated_by, claim.key.as_str())) {
                postings[i] = Some(Posting::Duplicate {
                    transaction_id: items[earlier].movement.id,
                    request_hash: items[earlier]
                        .movement
                        .idempotency
                        .as_ref()
                        .map(|c| c.request_hash.to_vec())
                        .unwrap_or_default(),
                });
            } else {
                first.insert((item.movement.initiated_by, claim.key.as_str()), i);
            }
        }
    }
}

/// A duplicate of an earlier batch-mate that was itself a duplicate of a committed request
/// points at that committed request.
fn resolve_duplicates_within_batch(
    items: &[BatchItem<'_>],
    postings: Vec<Posting>,
) -> Vec<Posting> {
    let by_id: HashMap<Uuid, usize> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.movement.id, i))
        .collect();
    postings
        .iter()
        .map(|posting| match posting {
            Posting::Duplicate { transaction_id, .. } => {
                match by_id.get(transaction_id).map(|&j| &postings[j]) {
                    Some(original @ Posting::Duplicate { .. }) => original.clone(),
                    _ => posting.clone(),
                }
            }
            other => other.clone(),
        })
        .collect()
}

async fn claim_idempotency_keys(
    transaction: &Transaction<'_>,
    items: &[BatchItem<'_>],
    postings: &mut [Option<Posting>],
) -> Result<(), tokio_postgres::Error> {
    let claims: Vec<usize> = (0..items.len())
        .filter(|&i| postings[i].is_none() && items[i].movement.idempotency.is_some())
        .collect();
    if claims.is_empty() {
        return Ok(());
    }
    let mut users = Vec::with_capacity(claims.len());
    let mut keys = Vec::with_capacity(claims.len());
    let mut hashes: Vec<&[u8]> = Vec::with_capacity(claims.len());
    let mut ids = Vec::with_capacity(claims.len());
    for &i in &claims {
        let movement = items[i].movement;
        let claim = movement
            .idempotency
            .as_ref()
            .expect("filtered on idempotency");
        users.push(movement.initiated_by.as_uuid());
        keys.push(claim.key.as_str());
        hashes.push(&claim.request_hash);
        ids.push(movement.id);
    }
    let statement = transaction
        .prepare_cached(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, transaction_id)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[])
             ON CONFLICT (user_id, key) DO NOTHING
             RETURNING transaction_id",
        )
        .await?;
    let claimed: std::collections::HashSet<Uuid> = transaction
        .query(&statement, &[&users, &keys, &hashes, &ids])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let lost: Vec<usize> = claims
        .iter()
        .copied()
        .filter(|&i| !claimed.contains(&items[i].movement.id))
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    let lost_users: Vec<Uuid> = lost
        .iter()
        .map(|&i| items[i].movement.initiated_by.as_uuid())
        .collect();
    let lost_keys: Vec<&str> = lost
        .iter()
        .map(|&i| {
            items[i]
                .movement
                .idempotency
                .as_ref()
                .expect("filtered on idempotency")
                .key
                .as_str()
        })
        .collect();
    let statement = transaction
        .prepare_cached(
            "SELECT k.user_id, k.key, k.transaction_id, k.request_hash
             FROM idempotency_keys k
             JOIN unnest($1::uuid[], $2::text[]) AS wanted(user_id, key)
               ON k.user_id = wanted.user_id AND k.key = wanted.key",
        )
        .await?;
    let existing: HashMap<(Uuid, String), (Uuid, Vec<u8>)> = transaction
        .query(&statement, &[&lost_users, &lost_keys])
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect();
    for &i in &lost {
        let movement = items[i].movement;
        let key = movement
            .idempotency
            .as_ref()
            .expect("filtered on idempotency")
            .key
            .as_str();
        // The conflicting row is committed (ON CONFLICT waited for it), so it is visible here.
        let (transaction_id, request_hash) = existing
            .get(&(movement.initiated_by.as_uuid(), key.to_owned()))
            .cloned()
            .expect("a key that conflicted exists");
        postings[i] = Some(Posting::Duplicate {
            transaction_id,
            request_hash,
        });
    }
    Ok(())
}

/// Each account's deltas in batch order: `(item index, delta)`, with their sum and the lowest
/// running sum (never above 0).
#[derive(Debug, Default)]
struct DeltaPlan {
    accounts: BTreeMap<AccountKey, Vec<(usize, i64)>>,
}

impl DeltaPlan {
    fn build(items: &[BatchItem<'_>], grouped: &[usize]) -> DeltaPlan {
        let mut accounts: BTreeMap<AccountKey, Vec<(usize, i64)>> = BTreeMap::new();
        for &i in grouped {
            let movement = items[i].movement;
            accounts
                .entry(movement.debited())
                .or_default()
                .push((i, -movement.amount.minor()));
            accounts
                .entry(movement.credited())
                .or_default()
                .push((i, movement.amount.minor()));
        }
        DeltaPlan { accounts }
    }
}

/// Sum and lowest running sum of deltas. Amounts are at most 10^15 and batches at most a few
/// thousand items, so the sums stay far inside `i64`; checked all the same.
fn sum_and_min_prefix(deltas: &[(usize, i64)]) -> (i64, i64) {
    let mut sum: i64 = 0;
    let mut min_prefix: i64 = 0;
    for &(_, delta) in deltas {
        sum = sum.checked_add(delta).expect("batch delta sums fit in i64");
        min_prefix = min_prefix.min(sum);
    }
    (sum, min_prefix)
}

/// Creates the balance rows of `accounts` that do not exist yet (zero, with the default
/// overdraft limit; unlimited for the `system` account, the other side of every credit).
async fn insert_missing_balances(
    transaction: &Transaction<'_>,
    accounts: &[AccountKey],
) -> Result<(), tokio_postgres::Error> {
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
                         THEN 9223372036854775807 ELSE 0 END
             FROM unnest($1::uuid[], $2::text[]) AS t(user_id, currency)
             ORDER BY t.user_id, t.currency
             ON CONFLICT (user_id, currency) DO NOTHING",
        )
        .await?;
    transaction
        .execute(&statement, &[&users, &currencies])
        .await?;
    Ok(())
}

/// The balance rows every movement of `indices` touches, created where missing.
async fn ensure_balance_rows(
    transaction: &Transaction<'_>,
    items: &[BatchItem<'_>],
    indices: impl Iterator<Item = usize>,
) -> Result<(), tokio_postgres::Error> {
    let mut accounts: Vec<AccountKey> = indices
        .flat_map(|i| [items[i].movement.debited(), items[i].movement.credited()])
        .collect();
    accounts.sort();
    accounts.dedup();
    insert_missing_balances(transaction, &accounts).await
}

/// Applies each account's summed delta with one conditional `UPDATE` and returns the state of
/// every account it changed. The update takes the row locks, in the plan's key order (the
/// journal connections only plan nested loops over the `unnest`, so rows are visited in array
/// order): concurrent batches of this or another process lock in the same order and never
/// deadlock over existing rows.
///
/// An account missing from the result was either refused by the balance check or has no row
/// yet (its first movement). Only then are the missing rows created and those accounts tried
/// once more; what is still missing was refused. In the steady state this is one statement.
async fn apply_plan(
    transaction: &Transaction<'_>,
    plan: &DeltaPlan,
) -> Result<HashMap<AccountKey, AccountState>, tokio_postgres::Error> {
    let mut all: Vec<AccountKey> = plan.accounts.keys().copied().collect();
    in_lock_order(&mut all);
    let mut returned = update_balances(transaction, plan, &all).await?;
    let absent: Vec<AccountKey> = all
        .into_iter()
        .filter(|account| !returned.contains_key(account))
        .collect();
    if !absent.is_empty() {
        insert_missing_balances(transaction, &absent).await?;
        returned.extend(update_balances(transaction, plan, &absent).await?);
    }
    Ok(returned)
}

/// The order in which every statement of the journal locks balance rows: the primary key's
/// order in the database (`user_id`, then the currency code), so that batches and atomic sets
/// of any number of processes never wait on each other in a cycle. `AccountKey`'s own `Ord`
/// cannot serve: it compares currencies by their position in the ISO table, not by code.
fn in_lock_order(accounts: &mut [AccountKey]) {
    accounts.sort_by_key(|account| (account.user.as_uuid(), account.currency.code()));
}

/// The conditional `UPDATE` of `accounts` (in lock order, all in `plan`): `amount - pending +
/// min_prefix >= -overdraft_limit`, where `min_prefix` is the lowest running sum of the
/// account's deltas in batch order, so no entry's `balance_after` dips below the limit.
async fn update_balances(
    transaction: &Transaction<'_>,
    plan: &DeltaPlan,
    accounts: &[AccountKey],
) -> Result<HashMap<AccountKey, AccountState>, tokio_postgres::Error> {
    let mut users = Vec::with_capacity(accounts.len());
    let mut currencies = Vec::with_capacity(accounts.len());
    let mut sums = Vec::with_capacity(accounts.len());
    let mut min_prefixes = Vec::with_capacity(accounts.len());
    for account in accounts {
        let (sum, min_prefix) = sum_and_min_prefix(&plan.accounts[account]);
        users.push(account.user.as_uuid());
        currencies.push(account.currency.code());
        sums.push(sum);
        min_prefixes.push(min_prefix);
    }
    let update = transaction
        .prepare_cached(
            "UPDATE balances b
             SET amount = b.amount + d.delta, version = b.version + 1, last_updated_at = now()
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) AS d(user_id, currency, delta, min_prefix)
             WHERE b.user_id = d.user_id AND b.currency = d.currency
               AND b.amount - b.pending + d.min_prefix >= -b.overdraft_limit
             RETURNING b.user_id, b.currency, b.amount, b.version",
        )
        .await?;
    let rows = transaction
        .query(&update, &[&users, &currencies, &sums, &min_prefixes])
        .await?;
    Ok(rows.iter().map(account_state).collect())
}

fn account_state(row: &tokio_postgres::Row) -> (AccountKey, AccountState) {
    let user = UserId::from_uuid(row.get(0));
    let currency =
        Currency::parse(row.get(1)).expect("balances.currency holds only codes Tally wrote");
    let account = AccountKey { user, currency };
    (
        account,
        AccountState {
            account,
            amount: row.get(2),
            version: row.get(3),
        },
    )
}

/// Applies one movement by itself: the debit side only if the database's balance allows it,
/// then the credit side.
async fn apply_alone(
    transaction: &Transaction<'_>,
    movement: &Movement,
    entries: &mut EntryRows,
    states: &mut BTreeMap<AccountKey, AccountState>,
) -> Result<Posting, tokio_postgres::Error> {
    let debit = transaction
        .prepare_cached(
            "UPDATE balances
             SET amount = amount - $3, version = version + 1, last_updated_at = now()
             WHERE user_id = $1 AND currency = $2 AND amount - pending - $3 >= -overdraft_limit
             RETURNING user_id, currency, amount, version",
        )
        .await?;
    let credit = transaction
        .prepare_cached(
            "UPDATE balances
             SET amount = amount + $3, version = version + 1, last_updated_at = now()
             WHERE user_id = $1 AND currency = $2
             RETURNING user_id, currency, amount, version",
        )
        .await?;
    let amount = movement.amount.minor();
    let debited = movement.debited();
    let Some(row) = transaction
        .query_opt(
            &debit,
            &[&debited.user.as_uuid(), &debited.currency.code(), &amount],
        )
        .await?
    else {
        return Ok(Posting::InsufficientFunds);
    };
    let (_, state) = account_state(&row);
    entries.push(movement.id, debited, -amount, state.amount);
    states.insert(debited, state);

    let credited = movement.credited();
    let row = transaction
        .query_one(
            &credit,
            &[&credited.user.as_uuid(), &credited.currency.code(), &amount],
        )
        .await?;
    let (_, state) = account_state(&row);
    entries.push(movement.id, credited, amount, state.amount);
    states.insert(credited, state);
    Ok(Posting::Completed)
}

/// The entries of a batch as column arrays for one `INSERT ... SELECT FROM unnest`.
#[derive(Debug, Default)]
struct EntryRows {
    transaction_ids: Vec<Uuid>,
    users: Vec<Uuid>,
    currencies: Vec<&'static str>,
    deltas: Vec<i64>,
    balances_after: Vec<i64>,
}

impl EntryRows {
    fn push(&mut self, transaction_id: Uuid, account: AccountKey, delta: i64, balance_after: i64) {
        self.transaction_ids.push(transaction_id);
        self.users.push(account.user.as_uuid());
        self.currencies.push(account.currency.code());
        self.deltas.push(delta);
        self.balances_after.push(balance_after);
    }

    /// One account's entries in batch order, given the amount the database returned after
    /// applying all of them: the running balance starts at `returned - sum`.
    fn push_account(
        &mut self,
        items: &[BatchItem<'_>],
        account: AccountKey,
        deltas: &[(usize, i64)],
        returned: i64,
    ) {
        let (sum, _) = sum_and_min_prefix(deltas);
        let mut balance = returned - sum;
        for &(i, delta) in deltas {
            balance += delta;
            self.push(items[i].movement.id, account, delta, balance);
        }
        debug_assert_eq!(
            balance, returned,
            "running balance must end at the returned amount"
        );
    }

    fn sums_to_zero_per_currency(&self) -> bool {
        let mut sums: HashMap<&str, i128> = HashMap::new();
        for (currency, delta) in self.currencies.iter().zip(&self.deltas) {
            *sums.entry(currency).or_default() += i128::from(*delta);
        }
        sums.values().all(|&sum| sum == 0)
    }
}

/// The transaction timestamp (`now()`), for a batch that wrote no transaction.
async fn transaction_time(
    transaction: &Transaction<'_>,
) -> Result<DateTime<Utc>, tokio_postgres::Error> {
    let statement = transaction.prepare_cached("SELECT now()").await?;
    Ok(transaction.query_one(&statement, &[]).await?.get(0))
}

/// Writes the transactions (and their events) of the movements `indices` whose posting is
/// completed or failed; duplicates and movements with an inactive party write nothing. Returns
/// their `created_at` (the transaction timestamp), or `None` when nothing was written.
async fn insert_transactions(
    transaction: &Transaction<'_>,
    items: &[BatchItem<'_>],
    indices: &[usize],
    postings: &[Option<Posting>],
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let written: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| {
            matches!(
                postings[i],
                Some(Posting::Completed | Posting::InsufficientFunds)
            )
        })
        .collect();
    if written.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::with_capacity(written.len());
    let mut kinds = Vec::with_capacity(written.len());
    let mut statuses = Vec::with_capacity(written.len());
    let mut froms = Vec::with_capacity(written.len());
    let mut tos = Vec::with_capacity(written.len());
    let mut amounts = Vec::with_capacity(written.len());
    let mut currencies = Vec::with_capacity(written.len());
    let mut descriptions: Vec<Option<&str>> = Vec::with_capacity(written.len());
    let mut references: Vec<Option<&str>> = Vec::with_capacity(written.len());
    let mut failure_reasons: Vec<Option<&str>> = Vec::with_capacity(written.len());
    let mut initiators = Vec::with_capacity(written.len());
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(written.len());
    for &i in &written {
        let movement = items[i].movement;
        let (status, reason) = match postings[i] {
            Some(Posting::Completed) => (TransactionStatus::Completed, None),
            Some(Posting::InsufficientFunds) => {
                (TransactionStatus::Failed, Some("insufficient_funds"))
            }
            _ => unreachable!("only completed and failed transactions are written"),
        };
        ids.push(movement.id);
        kinds.push(movement.kind.as_str());
        statuses.push(status.as_str());
        froms.push(movement.from.as_uuid());
        tos.push(movement.to.as_uuid());
        amounts.push(movement.amount.minor());
        currencies.push(movement.currency.code());
        descriptions.push(movement.description.as_ref().map(|d| d.as_str()));
        references.push(movement.reference.as_ref().map(|r| r.as_str()));
        failure_reasons.push(reason);
        initiators.push(movement.initiated_by.as_uuid());
        keys.push(movement.idempotency.as_ref().map(|c| c.key.as_str()));
    }
    // Transactions and their events in one statement; the event payload carries the entries so
    // that replaying the log rebuilds every balance (invariant 5).
    let records = transaction
        .prepare_cached(
            "WITH t AS (
                 INSERT INTO transactions (id, type, status, from_user_id, to_user_id, amount, currency,
                                           description, reference, failure_reason, initiated_by,
                                           idempotency_key, created_at, completed_at)
                 SELECT id, type, status, from_user_id, to_user_id, amount, currency, description,
                        reference, failure_reason, initiated_by, idempotency_key, now(),
                        CASE WHEN status = 'completed' THEN now() END
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::bigint[],
                             $7::text[], $8::text[], $9::text[], $10::text[], $11::uuid[], $12::text[])
                      AS r(id, type, status, from_user_id, to_user_id, amount, currency, description,
                           reference, failure_reason, initiated_by, idempotency_key)
                 RETURNING *
             )
             INSERT INTO events (stream, type, payload, created_at)
             SELECT 'transaction:' || t.id, 'transaction.' || t.status,
                    jsonb_build_object(
                        'id', t.id, 'type', t.type, 'status', t.status,
                        'from_user_id', t.from_user_id, 'to_user_id', t.to_user_id,
                        'amount', t.amount, 'currency', t.currency,
                        'description', t.description, 'reference', t.reference,
                        'failure_reason', t.failure_reason, 'initiated_by', t.initiated_by,
                        'entries', CASE WHEN t.status = 'completed' THEN jsonb_build_array(
                            jsonb_build_object('user_id', t.from_user_id, 'currency', t.currency, 'delta', -t.amount),
                            jsonb_build_object('user_id', t.to_user_id, 'currency', t.currency, 'delta', t.amount))
                          ELSE '[]'::jsonb END),
                    t.created_at
             FROM t
             RETURNING created_at",
        )
        .await?;
    let record_params: [&(dyn ToSql + Sync); 12] = [
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
        &initiators,
        &keys,
    ];
    let rows = transaction.query(&records, &record_params).await?;
    Ok(Some(rows[0].get(0)))
}

/// Writes the entries (one `INSERT ... SELECT FROM unnest`).
async fn insert_entries(
    transaction: &Transaction<'_>,
    entries: &EntryRows,
) -> Result<(), tokio_postgres::Error> {
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

/// What an atomic commit decided.
#[derive(Debug)]
pub enum AtomicOutcome {
    /// Every movement was applied, in one commit.
    Committed(BatchReport),
    /// Nothing was applied: these movements (indices) would take their debited account below
    /// its limit at their turn in the sequence.
    InsufficientFunds(Vec<usize>),
    /// The movements' idempotency keys were claimed before: the whole set was applied by an
    /// earlier request (keys are claimed all together or not at all). Nothing was written.
    Duplicate,
    /// Nothing was applied: these movements (index, user) name an unknown or deleted user.
    InactiveParties(Vec<(usize, UserId)>),
}

/// Applies `movements` all or nothing, in their order, in one database transaction: the bulk
/// endpoint's atomic mode. Every touched balance row is locked first (in key order), the
/// sequence is checked against the locked amounts, and only when every movement fits is it
/// applied with the same statements as a group commit.
///
/// Errors: any database error; nothing is then written (unless `COMMIT` itself was cut off).
pub async fn commit_atomic(
    client: &mut Client,
    movements: &[Movement],
) -> Result<AtomicOutcome, tokio_postgres::Error> {
    let items: Vec<BatchItem<'_>> = movements
        .iter()
        .map(|movement| BatchItem {
            movement,
            alone: false,
        })
        .collect();
    let transaction = client.transaction().await?;
    let mut postings: Vec<Option<Posting>> = vec![None; items.len()];
    lock_parties(&transaction, &items, &mut postings).await?;
    let inactive: Vec<(usize, UserId)> = postings
        .iter()
        .enumerate()
        .filter_map(|(i, posting)| match posting {
            Some(Posting::InactiveParty { user }) => Some((i, *user)),
            _ => None,
        })
        .collect();
    if !inactive.is_empty() {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::InactiveParties(inactive));
    }
    mark_duplicates_within_batch(&items, &mut postings);
    claim_idempotency_keys(&transaction, &items, &mut postings).await?;
    if postings.iter().any(Option::is_some) {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::Duplicate);
    }
    let all: Vec<usize> = (0..items.len()).collect();
    let plan = DeltaPlan::build(&items, &all);
    let failing = check_sequence(&transaction, &items, &plan).await?;
    if !failing.is_empty() {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::InsufficientFunds(failing));
    }
    let returned = apply_plan(&transaction, &plan).await?;
    let mut entries = EntryRows::default();
    let mut states = Vec::with_capacity(plan.accounts.len());
    for (account, deltas) in &plan.accounts {
        // The rows are locked and the sequence was checked against them: every update passes.
        let state = *returned
            .get(account)
            .expect("a checked, locked account is never refused");
        entries.push_account(&items, *account, deltas, state.amount);
        states.push(state);
    }
    debug_assert!(
        entries.sums_to_zero_per_currency(),
        "an atomic set's entries must sum to zero per currency"
    );
    let completed = vec![Some(Posting::Completed); items.len()];
    let committed_at = insert_transactions(&transaction, &items, &all, &completed)
        .await?
        .expect("an atomic set writes at least one transaction");
    insert_entries(&transaction, &entries).await?;
    transaction.commit().await?;
    let postings = vec![Posting::Completed; items.len()];
    Ok(AtomicOutcome::Committed(BatchReport {
        postings,
        committed_at,
        accounts: states,
        attempts: 1,
    }))
}

/// Locks the plan's balance rows in key order and replays the movements against them: the
/// indices of movements whose debited account would go below its limit at their turn (the
/// failing movements themselves are not applied in the replay, so later ones are judged on
/// what would really be there).
async fn check_sequence(
    transaction: &Transaction<'_>,
    items: &[BatchItem<'_>],
    plan: &DeltaPlan,
) -> Result<Vec<usize>, tokio_postgres::Error> {
    let accounts: Vec<AccountKey> = plan.accounts.keys().copied().collect();
    let mut room = lock_balances(transaction, &accounts).await?;
    let missing: Vec<AccountKey> = accounts
        .into_iter()
        .filter(|account| !room.contains_key(account))
        .collect();
    if !missing.is_empty() {
        // First movements of these accounts: create their rows, then lock them as well (another
        // process may have created some in between).
        insert_missing_balances(transaction, &missing).await?;
        room.extend(lock_balances(transaction, &missing).await?);
    }
    let mut failing = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let amount = i128::from(item.movement.amount.minor());
        let debited = room.get(&item.movement.debited()).copied().unwrap_or(0);
        if debited < amount {
            failing.push(i);
            continue;
        }
        *room.entry(item.movement.debited()).or_default() -= amount;
        *room.entry(item.movement.credited()).or_default() += amount;
    }
    Ok(failing)
}

/// Locks the existing balance rows of `accounts` (`FOR UPDATE`, in lock order) and returns what
/// each may still be debited: settled balance plus overdraft limit.
async fn lock_balances(
    transaction: &Transaction<'_>,
    accounts: &[AccountKey],
) -> Result<HashMap<AccountKey, i128>, tokio_postgres::Error> {
    let users: Vec<Uuid> = accounts.iter().map(|a| a.user.as_uuid()).collect();
    let currencies: Vec<&str> = accounts.iter().map(|a| a.currency.code()).collect();
    let statement = transaction
        .prepare_cached(
            "SELECT b.user_id, b.currency, b.amount - b.pending, b.overdraft_limit FROM balances b
             JOIN unnest($1::uuid[], $2::text[]) AS d(user_id, currency)
               ON b.user_id = d.user_id AND b.currency = d.currency
             ORDER BY b.user_id, b.currency
             FOR UPDATE OF b",
        )
        .await?;
    let mut room = HashMap::with_capacity(accounts.len());
    for row in transaction
        .query(&statement, &[&users, &currencies])
        .await?
    {
        let account = AccountKey {
            user: UserId::from_uuid(row.get(0)),
            currency: Currency::parse(row.get(1))
                .expect("balances.currency holds only codes Tally wrote"),
        };
        room.insert(
            account,
            i128::from(row.get::<_, i64>(2)) + i128::from(row.get::<_, i64>(3)),
        );
    }
    Ok(room)
}
