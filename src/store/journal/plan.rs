//! The pure half of a group commit: which deltas each account gets, in what order, with what
//! bounds, and the entry rows that follow from the amounts the database returned. No I/O here.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::domain::{AccountKey, Bounds, Change, Counted, Movement, Prefixes, WindowUsage};

/// One account's part of a statement: its changes in batch order `(item index, change)` and
/// the parameters of the conditional update (DESIGN.md section 5; the rule is `domain::rules`).
#[derive(Debug, Clone)]
pub(super) struct AccountPlan {
    pub deltas: Vec<(usize, Change)>,
    /// Sum of the amount changes.
    pub sum: i64,
    /// Sum of the pending changes.
    pub pending_sum: i64,
    /// Lowest running sum of available changes right after one that lowers it (`None`: none
    /// does).
    pub min_after_debit: Option<i64>,
    /// Highest running sum of amount changes right after one that raises it (`None`: none
    /// does).
    pub max_after_credit: Option<i64>,
    /// The floor that replaces the row's `-overdraft_limit` (`system`: the supply bound).
    pub floor: Option<i64>,
    /// Highest allowed amount.
    pub ceiling: i64,
}

/// What the movements of a statement count toward the configured limits (DESIGN.md section 8),
/// per account with anything counted: the parameters of `sql::check_usage`, which checks them
/// against each account's limits (the same sums `domain::WindowUsage::admit` checks one by
/// one), and the `rows` that `sql::record_usage` writes for the accounts with a windowed limit
/// in that direction.
#[derive(Debug, Default)]
pub(super) struct UsagePlan {
    pub accounts: BTreeMap<AccountKey, AccountUsage>,
    /// One per counted movement.
    pub rows: Vec<UsageRow>,
}

/// One counted movement, as a row of `limit_usage`.
#[derive(Debug, Clone, Copy)]
pub(super) struct UsageRow {
    pub transaction_id: Uuid,
    pub account: AccountKey,
    /// A debit (or hold) of the account; else a credit the user gave themself.
    pub debit: bool,
    /// Minor units.
    pub amount: i64,
}

/// One account's counted movements in a statement, minor units.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AccountUsage {
    pub debit_sum: i64,
    pub debit_count: i64,
    pub debit_max: i64,
    pub credit_sum: i64,
}

impl UsagePlan {
    /// What the movements `indices` count. Sums fit 64 bits: a statement holds at most
    /// `pipeline.batch_size_max` movements of at most `Amount::MAX_MINOR` (checked at start).
    pub fn build(movements: &[&Movement], indices: &[usize]) -> UsagePlan {
        let mut plan = UsagePlan::default();
        for &i in indices {
            for leg in movements[i].legs() {
                let (debit, amount) = match leg.counted {
                    Counted::Nothing => continue,
                    Counted::Debit(amount) => (true, amount),
                    Counted::SelfCredit(amount) => (false, amount),
                };
                let account = plan.accounts.entry(leg.account).or_default();
                if debit {
                    account.debit_sum += amount;
                    account.debit_count += 1;
                    account.debit_max = account.debit_max.max(amount);
                } else {
                    account.credit_sum += amount;
                }
                plan.rows.push(UsageRow {
                    transaction_id: movements[i].id(),
                    account: leg.account,
                    debit,
                    amount,
                });
            }
        }
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Counts this plan's movements into `limits` (what each had used before it).
    pub fn count_into(&self, limits: &mut BTreeMap<AccountKey, Vec<WindowUsage>>) {
        for row in &self.rows {
            let counted = if row.debit {
                Counted::Debit(row.amount)
            } else {
                Counted::SelfCredit(row.amount)
            };
            for window in limits.get_mut(&row.account).into_iter().flatten() {
                window.count(counted);
            }
        }
    }
}

/// Each touched account's plan, keyed (and so iterated) in `AccountKey` order.
#[derive(Debug, Default)]
pub(super) struct DeltaPlan {
    pub accounts: BTreeMap<AccountKey, AccountPlan>,
}

impl DeltaPlan {
    /// The plan of the movements `indices` of `movements`, in that order.
    ///
    /// Errors: the accounts whose running sums do not fit the 64-bit parameters of the
    /// statement (only possible for more deltas than `pipeline.batch_size_max` allows): the
    /// caller applies their movements another way.
    pub fn build(
        movements: &[&Movement],
        indices: &[usize],
        bounds: &Bounds,
    ) -> Result<DeltaPlan, Vec<AccountKey>> {
        let mut deltas: BTreeMap<AccountKey, Vec<(usize, Change)>> = BTreeMap::new();
        for &i in indices {
            for leg in movements[i].legs() {
                deltas.entry(leg.account).or_default().push((i, leg.change));
            }
        }
        let mut accounts = BTreeMap::new();
        let mut too_large = Vec::new();
        for (account, deltas) in deltas {
            let available = Prefixes::of(
                deltas
                    .iter()
                    .map(|&(_, change)| change.amount - change.pending),
            );
            let amounts = Prefixes::of(deltas.iter().map(|&(_, change)| change.amount));
            let pending_sum: i128 = deltas
                .iter()
                .map(|&(_, change)| i128::from(change.pending))
                .sum();
            let narrow = |value: Option<i128>| value.map(i64::try_from).transpose();
            let (Ok(sum), Ok(pending_sum), Ok(min_after_debit), Ok(max_after_credit)) = (
                i64::try_from(amounts.sum),
                i64::try_from(pending_sum),
                narrow(available.min_after_debit),
                narrow(amounts.max_after_credit),
            ) else {
                too_large.push(account);
                continue;
            };
            let (floor, ceiling) = bounds.sql_bounds(account);
            accounts.insert(
                account,
                AccountPlan {
                    deltas,
                    sum,
                    pending_sum,
                    min_after_debit,
                    max_after_credit,
                    floor,
                    ceiling,
                },
            );
        }
        if too_large.is_empty() {
            Ok(DeltaPlan { accounts })
        } else {
            Err(too_large)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// The order in which every statement of the journal locks balance rows: the primary key's
/// order in the database (`user_id`, then the currency code), so that batches and atomic sets
/// of any number of processes never wait on each other in a cycle. `AccountKey`'s own `Ord`
/// cannot serve: it compares currencies by their place in the ISO table, not by code.
pub(super) fn in_lock_order(accounts: &mut [AccountKey]) {
    accounts.sort_by_key(|account| (account.user.as_uuid(), account.currency.code()));
}

/// The entries of a batch as column arrays for one `INSERT ... SELECT FROM unnest`.
#[derive(Debug, Default)]
pub(super) struct EntryRows {
    pub transaction_ids: Vec<Uuid>,
    pub users: Vec<Uuid>,
    pub currencies: Vec<&'static str>,
    pub deltas: Vec<i64>,
    pub balances_after: Vec<i64>,
}

impl EntryRows {
    /// One account's entries in plan order (one per change of its amount: holds and releases
    /// write none), given the amount the database returned after applying all of them: the
    /// running balance starts at `returned - sum`.
    pub fn push_account(
        &mut self,
        movements: &[&Movement],
        account: AccountKey,
        plan: &AccountPlan,
        returned: i64,
    ) {
        // Cannot overflow: `returned` and every running balance lie within ±MONEY_BOUND_MINOR
        // (the conditional update admitted them) and so does `sum`.
        let mut balance = returned - plan.sum;
        for &(i, change) in &plan.deltas {
            let delta = change.amount;
            if delta == 0 {
                continue;
            }
            balance += delta;
            self.transaction_ids.push(movements[i].id());
            self.users.push(account.user.as_uuid());
            self.currencies.push(account.currency.code());
            self.deltas.push(delta);
            self.balances_after.push(balance);
        }
        debug_assert_eq!(
            balance, returned,
            "running balance must end at the returned amount"
        );
    }

    /// Double entry (invariant 1), asserted before a batch is written.
    pub fn sums_to_zero_per_currency(&self) -> bool {
        let mut sums: HashMap<&str, i128> = HashMap::new();
        for (currency, delta) in self.currencies.iter().zip(&self.deltas) {
            *sums.entry(currency).or_default() += i128::from(*delta);
        }
        sums.values().all(|&sum| sum == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Amount, Authority, Currency, CurrencyBounds, UserId, SYSTEM_USER_ID};

    fn movement(from: UserId, to: UserId, amount: i64) -> Movement {
        let (amount, usd) = (
            Amount::new(amount).unwrap(),
            Currency::parse("USD").unwrap(),
        );
        if from.is_system() {
            Movement::credit(to, amount, usd, to, Authority::Owner).unwrap()
        } else {
            Movement::transfer(from, to, amount, usd, from, Authority::Owner).unwrap()
        }
    }

    fn bounds() -> Bounds {
        Bounds::new(
            CurrencyBounds {
                balance_max_minor: 1 << 60,
                supply_max_minor: 1 << 61,
            },
            Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_plan_keeps_batch_order_and_the_prefixes() {
        let (a, b) = (
            UserId::from_uuid(Uuid::from_u128(1)),
            UserId::from_uuid(Uuid::from_u128(2)),
        );
        let owned = [movement(a, b, 5), movement(b, a, 3), movement(a, b, 4)];
        let movements: Vec<&Movement> = owned.iter().collect();
        let plan = DeltaPlan::build(&movements, &[0, 1, 2], &bounds()).unwrap();
        let account_a = movements[0].debited();
        let plan_a = &plan.accounts[&account_a];
        let deltas: Vec<(usize, i64)> = plan_a.deltas.iter().map(|&(i, c)| (i, c.amount)).collect();
        assert_eq!(deltas, vec![(0, -5), (1, 3), (2, -4)]);
        assert_eq!(plan_a.sum, -6);
        assert_eq!(plan_a.min_after_debit, Some(-6));
        assert_eq!(plan_a.max_after_credit, Some(-2));
        assert_eq!(plan_a.floor, None);

        let mut entries = EntryRows::default();
        entries.push_account(&movements, account_a, plan_a, 94);
        assert_eq!(entries.balances_after, vec![95, 98, 94]);
    }

    #[test]
    fn the_system_account_gets_the_supply_floor() {
        let user = UserId::from_uuid(Uuid::from_u128(1));
        let owned = [movement(SYSTEM_USER_ID, user, 5)];
        let movements: Vec<&Movement> = owned.iter().collect();
        let plan = DeltaPlan::build(&movements, &[0], &bounds()).unwrap();
        assert_eq!(
            plan.accounts[&movements[0].debited()].floor,
            Some(-(1 << 61))
        );
    }

    #[test]
    fn sums_past_64_bits_are_refused_not_wrapped() {
        let user = UserId::from_uuid(Uuid::from_u128(1));
        let owned: Vec<Movement> = (0..10_000)
            .map(|_| movement(SYSTEM_USER_ID, user, Amount::MAX_MINOR))
            .collect();
        let movements: Vec<&Movement> = owned.iter().collect();
        let indices: Vec<usize> = (0..owned.len()).collect();
        let too_large = DeltaPlan::build(&movements, &indices, &bounds()).unwrap_err();
        assert_eq!(too_large.len(), 2, "both sides overflow: {too_large:?}");
    }
}
