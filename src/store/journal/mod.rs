//! The group commit: one PostgreSQL transaction writes a whole batch of movements (DESIGN.md
//! section 5). This is the one posting path (invariant 8): single requests, credits, both bulk
//! modes (and the lifecycle features after them) all end here, checked by the rule of
//! `domain::rules` and the one conditional update of [`sql::update_balances`].
//!
//! Statement order inside the transaction is what keeps the contract across any number of Tally
//! processes:
//!
//! 1. **Idempotency decides first** (invariant 4): the batch's keys are claimed (`ON CONFLICT
//!    DO NOTHING`); a key taken before makes its movement a duplicate of the stored result,
//!    whatever else changed since (a party deleted, a balance spent, a role changed). Within a
//!    batch, a later movement with an earlier one's key gets that movement's outcome, computed
//!    in this same commit.
//! 2. **Parties and authority as of the commit**: the users are share-locked and read; a
//!    movement naming an unknown or deleted user, or whose initiator no longer has the role it
//!    acted with ([`Authority::Admin`]), writes nothing (and claims no key).
//! 3. **The fast path**: the grouped movements' transactions are inserted pipelined with the
//!    conditional update of every touched account's summed delta, in lock order. An account
//!    the database refuses (the caches were behind, or a bound was reached) rolls the attempt
//!    back and its movements are re-run in the checked path, so they never fail their
//!    batch-mates.
//! 4. **The checked path** (movements marked `alone`, and atomic sets): lock the touched rows,
//!    decide each movement in order with [`check_sequence`] (so each refusal has its reason),
//!    then apply the admitted ones with the same conditional update, which must agree.
//! 5. Entries, with `balance_after` derived from the amounts the database returned, in plan
//!    order: entry ids grow in commit order for each account, as the row lock is held until
//!    commit.

mod alerts;
mod plan;
mod sql;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::domain::{
    check_sequence, AccountKey, AccountState, Authority, Bounds, HoldEnd, Movement, Phase, Refusal,
    UserId, WindowUsage,
};
use plan::{in_lock_order, DeltaPlan, EntryRows, UsagePlan, UsageRow};

pub(crate) use sql::failure_detail;

/// What the commit decided for one movement of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posting {
    /// Applied: its entries are written and its transaction is `completed`.
    Completed,
    /// Refused by a posting rule: recorded as a `failed` transaction with the refusal's reason;
    /// no entries.
    Refused(Refusal),
    /// Its idempotency key was already used (committed earlier, or earlier in this batch):
    /// nothing was written for it. `transaction_id` is the first request's transaction.
    Duplicate {
        transaction_id: Uuid,
        request_hash: Vec<u8>,
    },
    /// A party (sender, recipient or initiator) is unknown or deleted: nothing was written.
    /// Checked with the users' rows share-locked, so a user deleted concurrently can never
    /// receive money (the delete locks the same row for update).
    InactiveParty { user: UserId },
    /// The movement relied on the initiator being an admin, and the initiator no longer is:
    /// nothing was written.
    Forbidden,
    /// It posts or releases a hold that is no longer pending (resolved before, or past its
    /// deadline for a post or void, or not yet past it for an expiry): nothing was written.
    HoldNotPending,
    /// A reversal the transaction it reverses no longer allows: nothing was written.
    ReversalRefused(ReversalRefusal),
    /// An exchange whose quote had expired or was used by another exchange at the commit (or
    /// is not the initiator's): nothing was written.
    QuoteUnusable,
}

/// Why a reversal could not claim its part of the original (invariant 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalRefusal {
    /// The original is not a completed credit, debit or transfer between the reversal's
    /// parties, or nothing of it is left to reverse.
    NotReversible,
    /// More than what is left of the original (`remaining`, minor units).
    ExceedsAmount { remaining: i64 },
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
    /// The configured limits of the accounts this batch counted toward, with what each had
    /// used after it (the balance actors' fast path, DESIGN.md section 8).
    pub limits: BTreeMap<AccountKey, Vec<WindowUsage>>,
}

/// A movement to write and whether to apply it in the checked path (its reservation was refused
/// by the balance actor's cache, or the database refused its account in a group).
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
    #[error("batch statement failed")]
    BeforeCommit(#[source] tokio_postgres::Error),
    /// `COMMIT` itself failed. On a lost connection the batch may or may not be committed;
    /// otherwise the server rolled it back (e.g. a deferred constraint) and nothing was written.
    #[error("COMMIT failed")]
    AtCommit(#[source] tokio_postgres::Error),
    /// The database returned something that breaks an invariant the writer relies on (a
    /// currency code Tally never wrote, the arbiter refusing what the rules admitted on locked
    /// rows). The transaction is rolled back; the batch is split like after a statement error,
    /// so the culprit fails alone, and nothing panics.
    #[error("inconsistent ledger data: {0}")]
    Inconsistent(&'static str),
    /// A race the transaction cannot settle by itself (an idempotency key that conflicted was
    /// expired before it could be read): the batch may simply be run again.
    #[error("raced: {0}")]
    Raced(&'static str),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(error: tokio_postgres::Error) -> BatchError {
        BatchError::BeforeCommit(error)
    }
}

impl BatchError {
    /// The database error, when there is one.
    pub fn database_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            BatchError::BeforeCommit(error) | BatchError::AtCommit(error) => Some(error),
            BatchError::Inconsistent(_) | BatchError::Raced(_) => None,
        }
    }

    /// The connection (or the server) went away, as opposed to a statement being refused.
    pub fn is_connection_lost(&self) -> bool {
        self.database_error()
            .is_some_and(super::is_connection_error)
    }

    /// `COMMIT` was sent and its answer was lost with the connection: the batch may have been
    /// committed. Nothing may be acknowledged, and cached balances must be reloaded.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, BatchError::AtCommit(_)) && self.is_connection_lost()
    }

    /// A deadlock, serialization failure or race: the same batch may simply be run again.
    pub fn is_transient(&self) -> bool {
        matches!(self, BatchError::Raced(_))
            || self.database_error().is_some_and(super::is_transient)
    }

    /// A lock wait ran past `database.lock_timeout_ms`. In a group commit that is a queue
    /// behind other batches' row locks on a loaded machine (or a row held outside Tally):
    /// nothing was written, and the batch may be run again a few times before it is answered
    /// `Unavailable`.
    pub fn is_lock_timeout(&self) -> bool {
        self.database_error().is_some_and(|error| {
            error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
        })
    }

    /// A statement or lock waited longer than `database.statement_timeout_ms` or
    /// `database.lock_timeout_ms`.
    pub fn is_timeout(&self) -> bool {
        self.database_error().is_some_and(super::is_timeout)
    }
}

/// Writes `items` in one database transaction and commits it.
///
/// Errors: [`BatchError::BeforeCommit`] for any failure before `COMMIT` (the transaction is
/// rolled back, nothing of the batch is written); [`BatchError::AtCommit`] when `COMMIT` fails
/// (see [`BatchError::is_outcome_unknown`]: the caller must then not acknowledge, and
/// idempotency keys make a retry safe); [`BatchError::Inconsistent`], [`BatchError::Raced`].
pub async fn commit_batch(
    client: &mut Client,
    items: &[BatchItem<'_>],
    bounds: &Bounds,
    now: DateTime<Utc>,
) -> Result<BatchReport, BatchError> {
    let movements: Vec<&Movement> = items.iter().map(|item| item.movement).collect();
    let mut alone: Vec<bool> = items.iter().map(|item| item.alone).collect();
    let earlier = duplicates_within_batch(&movements);
    let undecided: Vec<usize> = (0..movements.len())
        .filter(|&i| earlier[i].is_none())
        .collect();

    // Decisions that stand for every attempt: resolutions of a hold that another movement of
    // the batch resolves first, and postings the checked path refused (their hold stays
    // pending: the attempt that claimed it was rolled back).
    let mut standing: Vec<Option<Posting>> = resolved_earlier_in_batch(&movements, &undecided);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let transaction = client.transaction().await?;
        let mut postings: Vec<Option<Posting>> = vec![None; movements.len()];
        let roles =
            decide_keys_and_parties(&transaction, &movements, &undecided, &mut postings).await?;
        let defaults = |user: UserId| has_defaults(&roles, user);
        for &i in &undecided {
            if postings[i].is_none() {
                postings[i] = standing[i].clone();
            }
        }
        let resolving: Vec<usize> = undecided
            .iter()
            .copied()
            .filter(|&i| postings[i].is_none() && movements[i].resolves().is_some())
            .collect();
        if !resolving.is_empty() {
            let claimed = sql::resolve_holds(&transaction, &movements, &resolving).await?;
            for &i in &resolving {
                if !movements[i]
                    .resolves()
                    .is_some_and(|hold| claimed.contains(&hold))
                {
                    postings[i] = Some(Posting::HoldNotPending);
                }
            }
        }
        // Exchanges claim their quotes, each at most once (invariant 4 for quotes).
        let quoted: Vec<usize> = undecided
            .iter()
            .copied()
            .filter(|&i| postings[i].is_none() && quote_of(movements[i]).is_some())
            .collect();
        if !quoted.is_empty() {
            let claimed = sql::claim_quotes(&transaction, &movements, &quoted, now).await?;
            let mut first = HashSet::new();
            for &i in &quoted {
                let quote = quote_of(movements[i]);
                let usable =
                    quote.is_some_and(|quote| claimed.contains(&quote) && first.insert(quote));
                if !usable {
                    postings[i] = Some(Posting::QuoteUnusable);
                }
            }
        }
        // Reversals claim their part of the original one by one, in batch order: two
        // reversals of one transaction in a batch are bounded together (invariant 10).
        for &i in &undecided {
            if postings[i].is_none() && movements[i].reversal().is_some() {
                if let Err(refusal) = sql::claim_reversal(&transaction, movements[i]).await? {
                    postings[i] = Some(Posting::ReversalRefused(refusal));
                }
            }
        }
        // Resolutions and reversals answered without writing anything give their keys back.
        let unwritten: Vec<usize> = undecided
            .iter()
            .copied()
            .filter(|&i| {
                movements[i].idempotency().is_some()
                    && matches!(
                        postings[i],
                        Some(
                            Posting::HoldNotPending
                                | Posting::ReversalRefused(_)
                                | Posting::QuoteUnusable
                        )
                    )
            })
            .collect();
        if !unwritten.is_empty() {
            sql::release_keys(&transaction, &movements, &unwritten).await?;
        }
        let open: Vec<usize> = undecided
            .iter()
            .copied()
            .filter(|&i| postings[i].is_none())
            .collect();

        // The fast path: one conditional update for every grouped movement.
        let (plan, grouped) = loop {
            let grouped: Vec<usize> = open.iter().copied().filter(|&i| !alone[i]).collect();
            match DeltaPlan::build(&movements, &grouped, bounds) {
                Ok(plan) => break (plan, grouped),
                Err(too_large) => {
                    move_to_checked_path(&movements, &grouped, &too_large, &mut alone)
                }
            }
        };
        let mut applied = Applied::default();
        let mut committed_at = None;
        if !plan.is_empty() {
            // The transactions are written as completed before any balance row is locked, in
            // the same round trip as the update: if the database refuses an account the attempt
            // is rolled back anyway, and the row locks are held only from update to commit.
            for &i in &grouped {
                postings[i] = Some(Posting::Completed);
            }
            // The configured limits are checked in the same round trip, right behind the update.
            let usage = UsagePlan::build(&movements, &grouped);
            let (written_at, (returned, counted)) = tokio::try_join!(
                sql::insert_transactions(&transaction, &movements, &grouped, &postings),
                apply_plan(&transaction, &plan, (now, &usage, &defaults))
            )?;
            let refused: Vec<AccountKey> = plan
                .accounts
                .keys()
                .filter(|account| !returned.contains_key(*account))
                .copied()
                .collect();
            if !refused.is_empty() {
                // The database disagrees with the actors' caches (another process moved money,
                // a cache is stale) or a bound was reached: re-run the movements touching those
                // accounts in the checked path. Every attempt moves at least one movement out of
                // the group, so this loop ends.
                transaction.rollback().await?;
                move_to_checked_path(&movements, &grouped, &refused, &mut alone);
                continue;
            }
            if let Some(counted) = counted {
                if !counted.exceeded.is_empty() {
                    // A limit would be crossed: the checked path finds which movements fit.
                    transaction.rollback().await?;
                    move_to_checked_path(&movements, &grouped, &counted.exceeded, &mut alone);
                    continue;
                }
                applied.usage_rows = counted.rows_to_record(&usage);
                applied.limits = counted.limits;
                usage.count_into(&mut applied.limits);
            }
            for (account, account_plan) in &plan.accounts {
                let state = returned[account];
                applied
                    .entries
                    .push_account(&movements, *account, account_plan, state.amount);
                applied.states.insert(*account, state);
            }
            committed_at = written_at;
        }

        // The checked path, for what the fast path could not take.
        let checked: Vec<usize> = open.iter().copied().filter(|&i| alone[i]).collect();
        if !checked.is_empty() {
            // What the fast path counted must be there when the checked path reads the usage.
            sql::record_usage(&transaction, now, &applied.usage_rows).await?;
            applied.usage_rows.clear();
            let decisions = check_and_apply(
                &transaction,
                &movements,
                &checked,
                (bounds, now, &defaults),
                Apply::Admitted,
                &mut applied,
            )
            .await?;
            let refused_postings: Vec<(usize, Refusal)> = checked
                .iter()
                .zip(&decisions)
                .filter_map(|(&i, decision)| match decision {
                    Err(refusal)
                        if matches!(movements[i].phase(), Phase::Post { .. })
                            || movements[i].reversal().is_some()
                            || quote_of(movements[i]).is_some() =>
                    {
                        Some((i, *refusal))
                    }
                    _ => None,
                })
                .collect();
            if !refused_postings.is_empty() {
                // This attempt claimed their holds as posted, their part of the original as
                // reversed, or their quote as used: run it again without them, so that each is
                // recorded failed and what it claimed stays as it was.
                transaction.rollback().await?;
                for (i, refusal) in refused_postings {
                    standing[i] = Some(Posting::Refused(refusal));
                }
                continue;
            }
            for (&i, decision) in checked.iter().zip(decisions) {
                postings[i] = Some(match decision {
                    Ok(()) => Posting::Completed,
                    Err(refusal) => Posting::Refused(refusal),
                });
            }
            let written_at =
                sql::insert_transactions(&transaction, &movements, &checked, &postings).await?;
            committed_at = committed_at.or(written_at);
        }
        // Postings and reversals refused in an earlier attempt are recorded failed now.
        let refused_before: Vec<usize> = undecided
            .iter()
            .copied()
            .filter(|&i| {
                matches!(standing[i], Some(Posting::Refused(_)))
                    && matches!(postings[i], Some(Posting::Refused(_)))
            })
            .collect();
        if !refused_before.is_empty() {
            let written_at =
                sql::insert_transactions(&transaction, &movements, &refused_before, &postings)
                    .await?;
            committed_at = committed_at.or(written_at);
        }
        debug_assert!(
            applied.entries.sums_to_zero_per_currency(),
            "a batch's entries must sum to zero per currency"
        );
        write_entries(&transaction, &applied.entries, (now, &applied.usage_rows)).await?;
        let committed_at = match committed_at {
            Some(at) => at,
            None => sql::transaction_time(&transaction).await?,
        };
        resolve_duplicates_within_batch(&movements, &earlier, &mut postings);
        let postings = postings
            .into_iter()
            .map(|posting| {
                posting.ok_or(BatchError::Inconsistent(
                    "a movement of the batch was left undecided",
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        transaction.commit().await.map_err(BatchError::AtCommit)?;
        return Ok(BatchReport {
            postings,
            committed_at,
            accounts: applied.states.into_values().collect(),
            attempts,
            limits: applied.limits,
        });
    }
}

/// Writes the batch's entries and what it counted toward the limits and, from the entries,
/// fires its accounts' balance alerts: the alerts are read in the same round trip, after every
/// balance row the batch changes is locked.
async fn write_entries(
    transaction: &Transaction<'_>,
    entries: &EntryRows,
    (now, usage_rows): (DateTime<Utc>, &[UsageRow]),
) -> Result<(), BatchError> {
    if entries.deltas.is_empty() {
        return sql::record_usage(transaction, now, usage_rows).await;
    }
    // Polled (so sent) in this order, and the first statement's error wins: the later ones
    // fail only because the transaction is aborted.
    let (inserted, alerts, recorded) = futures_util::future::join3(
        sql::insert_entries(transaction, entries),
        sql::read_alerts(transaction, entries),
        sql::record_usage(transaction, now, usage_rows),
    )
    .await;
    inserted?;
    let alerts = alerts?;
    recorded?;
    if alerts.is_empty() {
        return Ok(());
    }
    let changes = alerts::crossings(&alerts, entries);
    if !changes.states.is_empty() {
        sql::write_alerts(transaction, &changes).await?;
    }
    Ok(())
}

/// Marks the movements of `indices` that touch any of `accounts` to be applied in the checked
/// path.
fn move_to_checked_path(
    movements: &[&Movement],
    indices: &[usize],
    accounts: &[AccountKey],
    alone: &mut [bool],
) {
    for &i in indices {
        if movements[i]
            .legs()
            .any(|leg| accounts.contains(&leg.account))
        {
            alone[i] = true;
        }
    }
}

/// The quote an exchange claims in the commit (a reversal claims none).
fn quote_of(movement: &Movement) -> Option<Uuid> {
    if movement.reversal().is_some() {
        return None;
    }
    movement
        .exchange_details()
        .and_then(|exchange| exchange.quote)
}

/// `hold_not_pending` for every movement of `indices` that resolves a hold an earlier one of
/// them resolves: one resolution per hold, the first in batch order.
fn resolved_earlier_in_batch(movements: &[&Movement], indices: &[usize]) -> Vec<Option<Posting>> {
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut standing = vec![None; movements.len()];
    for &i in indices {
        if let Some(hold) = movements[i].resolves() {
            if !seen.insert(hold) {
                standing[i] = Some(Posting::HoldNotPending);
            }
        }
    }
    standing
}

/// For each movement, the index of an earlier movement of the batch with the same
/// `(initiator, key)`, if any.
fn duplicates_within_batch(movements: &[&Movement]) -> Vec<Option<usize>> {
    let mut first: HashMap<(UserId, &str), usize> = HashMap::new();
    movements
        .iter()
        .enumerate()
        .map(|(i, movement)| {
            let claim = movement.idempotency()?;
            match first.entry((movement.initiated_by(), claim.key.as_str())) {
                std::collections::hash_map::Entry::Occupied(earlier) => Some(*earlier.get()),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                    None
                }
            }
        })
        .collect()
}

/// A movement repeating an earlier batch-mate's key gets what that movement got: a duplicate
/// of its transaction when one was written (or of the stored one it replayed), and the same
/// refusal when nothing was written (a request refused before the ledger stores no key, so
/// there is no transaction to replay).
fn resolve_duplicates_within_batch(
    movements: &[&Movement],
    earlier: &[Option<usize>],
    postings: &mut [Option<Posting>],
) {
    for (j, first) in earlier.iter().enumerate() {
        let Some(i) = *first else { continue };
        let hash = |movement: &Movement| {
            movement
                .idempotency()
                .as_ref()
                .map(|claim| claim.request_hash.to_vec())
                .unwrap_or_default()
        };
        let same_request = hash(movements[i]) == hash(movements[j]);
        postings[j] = match &postings[i] {
            Some(original @ Posting::Duplicate { .. }) => Some(original.clone()),
            Some(
                original @ (Posting::InactiveParty { .. }
                | Posting::Forbidden
                | Posting::HoldNotPending
                | Posting::ReversalRefused(_)
                | Posting::QuoteUnusable),
            ) if same_request => Some(original.clone()),
            _ => Some(Posting::Duplicate {
                transaction_id: movements[i].id(),
                request_hash: hash(movements[i]),
            }),
        };
    }
}

/// Steps 1 and 2 of the module docs for the movements `indices`: each keyed movement whose key
/// is stored becomes a [`Posting::Duplicate`], whatever its parties; the others with an
/// inactive party or lost authority become [`Posting::InactiveParty`] or
/// [`Posting::Forbidden`] (and do not claim their key). The rest stay undecided, with their
/// keys claimed.
async fn decide_keys_and_parties(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
    postings: &mut [Option<Posting>],
) -> Result<HashMap<Uuid, bool>, BatchError> {
    let admins = sql::lock_parties(transaction, movements, indices).await?;
    let refusal = |movement: &Movement| -> Option<Posting> {
        // Releasing a hold frees the payer's own money whatever became of the parties since:
        // a void needs only an active initiator, an expiry (the sweeper's) nobody.
        let parties = match movement.phase() {
            Phase::Release {
                end: HoldEnd::Expired,
                ..
            } => vec![],
            Phase::Release { .. } => vec![movement.initiated_by()],
            _ => vec![movement.initiated_by(), movement.from(), movement.to()],
        };
        let inactive = parties
            .into_iter()
            .find(|user| !user.is_system() && !admins.contains_key(&user.as_uuid()));
        if let Some(user) = inactive {
            return Some(Posting::InactiveParty { user });
        }
        let is_admin = admins.get(&movement.initiated_by().as_uuid()) == Some(&true);
        (movement.authority() == Authority::Admin && !is_admin).then_some(Posting::Forbidden)
    };
    let refused: HashMap<usize, Posting> = indices
        .iter()
        .filter_map(|&i| refusal(movements[i]).map(|posting| (i, posting)))
        .collect();
    let keyed = |i: &usize| movements[*i].idempotency().is_some();
    let claiming: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|i| keyed(i) && !refused.contains_key(i))
        .collect();
    let mut lookup = sql::claim_keys(transaction, movements, &claiming).await?;
    let lost = lookup.len();
    lookup.extend(refused.keys().copied().filter(keyed));
    let stored = sql::find_keys(transaction, movements, &lookup).await?;
    for (n, &i) in lookup.iter().enumerate() {
        match stored.get(&i) {
            Some((transaction_id, request_hash)) => {
                postings[i] = Some(Posting::Duplicate {
                    transaction_id: *transaction_id,
                    request_hash: request_hash.clone(),
                });
            }
            // The key conflicted, then vanished: expired by the retention job in between.
            None if n < lost => {
                return Err(BatchError::Raced("idempotency key expired while claimed"))
            }
            None => {}
        }
    }
    for (i, posting) in refused {
        postings[i].get_or_insert(posting);
    }
    Ok(admins)
}

/// Whether the default limits apply to `user`'s accounts: role `user` (the parties' roles as
/// [`decide_keys_and_parties`] share-locked them: `true` for an admin).
fn has_defaults(roles: &HashMap<Uuid, bool>, user: UserId) -> bool {
    roles.get(&user.as_uuid()) == Some(&false)
}

/// Applies a plan with the conditional update, creating the missing rows only when the update
/// misses them (in the steady state this is one statement), and returns the state of every
/// account it changed (an account missing from the result was refused) and, when `usage`
/// counts anything, the limits' verdict on its accounts (`sql::check_usage`, sent right
/// behind the update; checked again after creating missing rows, which it ran before).
async fn apply_plan(
    transaction: &Transaction<'_>,
    plan: &DeltaPlan,
    (now, usage, defaults): (DateTime<Utc>, &UsagePlan, &(dyn Fn(UserId) -> bool + Sync)),
) -> Result<(HashMap<AccountKey, AccountState>, Option<sql::CountedUsage>), BatchError> {
    let mut all: Vec<AccountKey> = plan.accounts.keys().copied().collect();
    in_lock_order(&mut all);
    let (mut returned, mut counted) =
        sql::update_balances_then_check_usage(transaction, plan, &all, (now, usage, defaults))
            .await?;
    let absent: Vec<AccountKey> = all
        .into_iter()
        .filter(|account| !returned.contains_key(account))
        .collect();
    if !absent.is_empty() {
        sql::insert_missing_balances(transaction, &absent).await?;
        let (more, recounted) = sql::update_balances_then_check_usage(
            transaction,
            plan,
            &absent,
            (now, usage, defaults),
        )
        .await?;
        returned.extend(more);
        counted = recounted.or(counted);
    }
    Ok((returned, counted))
}

/// What an attempt has applied so far, for the statements that end it.
#[derive(Debug, Default)]
struct Applied {
    entries: EntryRows,
    /// Final state of every account changed.
    states: BTreeMap<AccountKey, AccountState>,
    /// The configured limits of the counted accounts, with what each used after the attempt.
    limits: BTreeMap<AccountKey, Vec<WindowUsage>>,
    /// What to write to `limit_usage` with the entries.
    usage_rows: Vec<UsageRow>,
}

/// What [`check_and_apply`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// Every admitted movement (the refused ones are recorded as failed by the caller).
    Admitted,
    /// All or nothing: nothing when any movement is refused.
    AllOrNothing,
}

/// The checked path: locks the rows the movements `indices` touch (creating the missing ones),
/// reads the configured limits of the accounts with counted legs and what they have used,
/// decides each movement in order with the posting rule, then applies the admitted ones with
/// the conditional update and checks them with `sql::check_usage` in the same round trip,
/// which must both agree (the rows are locked); their usage rows go to `out`. Returns one
/// decision per movement of `indices`.
async fn check_and_apply(
    transaction: &Transaction<'_>,
    movements: &[&Movement],
    indices: &[usize],
    (bounds, now, defaults): (&Bounds, DateTime<Utc>, &(dyn Fn(UserId) -> bool + Sync)),
    apply: Apply,
    out: &mut Applied,
) -> Result<Vec<Result<(), Refusal>>, BatchError> {
    let Applied {
        entries,
        states,
        limits: windows,
        usage_rows,
    } = out;
    let mut accounts: Vec<AccountKey> = indices
        .iter()
        .flat_map(|&i| movements[i].legs().map(|leg| leg.account))
        .collect();
    in_lock_order(&mut accounts);
    accounts.dedup();
    // Lock what exists first; only the rows missing then are created (and locked) — in the
    // steady state every row exists and this is one statement.
    let mut locked = sql::lock_balances(transaction, &accounts).await?;
    if locked.len() != accounts.len() {
        let missing: Vec<AccountKey> = accounts
            .iter()
            .filter(|account| !locked.contains_key(account))
            .copied()
            .collect();
        sql::insert_missing_balances(transaction, &missing).await?;
        locked.extend(sql::lock_balances(transaction, &missing).await?);
    }
    if locked.len() != accounts.len() {
        return Err(BatchError::Inconsistent(
            "a balance row was missing after it was created",
        ));
    }
    let limits = locked
        .iter()
        .map(|(account, (_, overdraft_limit))| {
            (*account, bounds.limits(*account, *overdraft_limit))
        })
        .collect();
    let mut snapshots = locked
        .iter()
        .map(|(account, (snapshot, _))| (*account, *snapshot))
        .collect();
    // What each limit of the counted accounts has used (the verdicts on all of `indices`
    // together are not needed: the rule decides them one by one).
    let counting = UsagePlan::build(movements, indices);
    let mut usage = if counting.is_empty() {
        BTreeMap::new()
    } else {
        let statement = sql::check_usage_statement(transaction).await?;
        sql::check_usage(transaction, &statement, now, &counting, defaults)
            .await?
            .limits
    };
    let decisions = check_sequence(
        indices.iter().map(|&i| movements[i].legs()),
        &limits,
        &mut snapshots,
        &mut usage,
    );
    let admitted: Vec<usize> = indices
        .iter()
        .zip(&decisions)
        .filter(|(_, decision)| decision.is_ok())
        .map(|(&i, _)| i)
        .collect();
    let refused_any = admitted.len() < indices.len();
    if admitted.is_empty() || (refused_any && apply == Apply::AllOrNothing) {
        return Ok(decisions);
    }
    let plan = DeltaPlan::build(movements, &admitted, bounds)
        .map_err(|_| BatchError::Inconsistent("admitted movements' sums do not fit 64 bits"))?;
    let mut in_order: Vec<AccountKey> = plan.accounts.keys().copied().collect();
    in_lock_order(&mut in_order);
    // The rows are locked: the update and the limits' final check go in one round trip.
    let counting = UsagePlan::build(movements, &admitted);
    let (returned, counted) = sql::update_balances_then_check_usage(
        transaction,
        &plan,
        &in_order,
        (now, &counting, defaults),
    )
    .await?;
    for (account, account_plan) in &plan.accounts {
        let state = returned.get(account).ok_or(BatchError::Inconsistent(
            "the conditional update refused what the posting rule admitted on locked rows",
        ))?;
        entries.push_account(movements, *account, account_plan, state.amount);
        states.insert(*account, *state);
    }
    if let Some(counted) = counted {
        if !counted.exceeded.is_empty() {
            return Err(BatchError::Inconsistent(
                "the limits' arbiter refused what the posting rule admitted on locked rows",
            ));
        }
        usage_rows.extend(counted.rows_to_record(&counting));
    }
    windows.extend(usage);
    Ok(decisions)
}

/// What an atomic commit decided.
#[derive(Debug)]
pub enum AtomicOutcome {
    /// Every movement was applied, in one commit.
    Committed(BatchReport),
    /// Nothing was applied or recorded: these movements (index, why) would break a posting rule
    /// at their turn in the sequence.
    Refused(Vec<(usize, Refusal)>),
    /// The movements' idempotency keys were claimed before: the whole set was applied by an
    /// earlier request (keys are claimed all together or not at all). Nothing was written.
    Duplicate,
    /// Nothing was applied: these movements (index, user) name an unknown or deleted user.
    InactiveParties(Vec<(usize, UserId)>),
    /// Nothing was applied: the initiator is no longer an admin, and these movements relied on
    /// it.
    Forbidden(Vec<usize>),
}

/// Applies `movements` all or nothing, in their order, in one database transaction: the bulk
/// endpoint's atomic mode, through the checked path of [`commit_batch`] (same rule, same
/// conditional update).
///
/// Errors: as [`commit_batch`]; nothing is then written (unless `COMMIT` itself was cut off).
pub async fn commit_atomic(
    client: &mut Client,
    movements: &[Movement],
    bounds: &Bounds,
    now: DateTime<Utc>,
) -> Result<AtomicOutcome, BatchError> {
    let movements: Vec<&Movement> = movements.iter().collect();
    let all: Vec<usize> = (0..movements.len()).collect();
    let transaction = client.transaction().await?;
    let mut postings: Vec<Option<Posting>> = vec![None; movements.len()];
    if duplicates_within_batch(&movements)
        .iter()
        .any(Option::is_some)
    {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::Duplicate);
    }
    let roles = decide_keys_and_parties(&transaction, &movements, &all, &mut postings).await?;
    let defaults = |user: UserId| has_defaults(&roles, user);
    if postings
        .iter()
        .any(|posting| matches!(posting, Some(Posting::Duplicate { .. })))
    {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::Duplicate);
    }
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
    let forbidden: Vec<usize> = (0..movements.len())
        .filter(|&i| postings[i] == Some(Posting::Forbidden))
        .collect();
    if !forbidden.is_empty() {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::Forbidden(forbidden));
    }
    let mut applied = Applied::default();
    let decisions = check_and_apply(
        &transaction,
        &movements,
        &all,
        (bounds, now, &defaults),
        Apply::AllOrNothing,
        &mut applied,
    )
    .await?;
    let refused: Vec<(usize, Refusal)> = decisions
        .iter()
        .enumerate()
        .filter_map(|(i, decision)| decision.err().map(|refusal| (i, refusal)))
        .collect();
    if !refused.is_empty() {
        transaction.rollback().await?;
        return Ok(AtomicOutcome::Refused(refused));
    }
    debug_assert!(
        applied.entries.sums_to_zero_per_currency(),
        "an atomic set's entries must sum to zero per currency"
    );
    let completed = vec![Some(Posting::Completed); movements.len()];
    let committed_at =
        match sql::insert_transactions(&transaction, &movements, &all, &completed).await? {
            Some(at) => at,
            None => sql::transaction_time(&transaction).await?,
        };
    write_entries(&transaction, &applied.entries, (now, &applied.usage_rows)).await?;
    transaction.commit().await.map_err(BatchError::AtCommit)?;
    Ok(AtomicOutcome::Committed(BatchReport {
        postings: vec![Posting::Completed; movements.len()],
        committed_at,
        accounts: applied.states.into_values().collect(),
        attempts: 1,
        limits: applied.limits,
    }))
}
