//! The posting rules: what every movement of money must keep, written once in Rust
//! (DESIGN.md section 2, invariants 2 and 7).
//!
//! An account's balance may move only inside `[floor, ceiling]`:
//!
//! - **floor** (on `amount - pending`): `-overdraft_limit` of the balance row for a user
//!   (invariant 2, no overdraft); `-ledger.supply_max_minor` for the `system` account of the
//!   currency, whose negated balance is the money issued in it (invariant 7, bounded supply).
//! - **ceiling** (on `amount`): `ledger.balance_max_minor` for every account (invariant 7).
//!
//! A movement changes an account by a [`Change`] of its amount and of its pending (held)
//! amount: a settled debit lowers the amount, a hold raises pending, a posting lowers both (by
//! the posted and the held amount), a void or expiry lowers pending (DESIGN.md section 7). The
//! floor is checked on a change that lowers `amount - pending`, the ceiling on one that raises
//! `amount`.
//!
//! A sequence of changes is admitted when every running state stays inside the bounds, which is
//! the same as `amount - pending + min_prefix >= floor AND amount + max_prefix <= ceiling` over
//! the running sums of the changes (of `amount - pending` for the floor, of `amount` for the
//! ceiling): that is the form the database checks in
//! `store::journal::update_balances`, the final arbiter. The balance actors use [`Limits`] as
//! their fast path, and the journal uses it to name the reason when the database refuses.
//! The CHECK constraints of migration V5 are the last line ([`MONEY_BOUND_MINOR`]).
//!
//! A new rule goes here (a bound on the running state) and into `update_balances`' WHERE
//! clause, nowhere else.

use std::collections::BTreeMap;

use super::{AccountKey, Currency};

/// The largest magnitude of any balance, pending amount, overdraft limit or configured bound,
/// in minor units: 2^61. With every stored value inside `±2^61` and the deltas of one statement
/// inside `±2^61` (checked at start: `pipeline.batch_size_max × Amount::MAX_MINOR`), no sum the
/// database or Rust computes can overflow 64 bits. Mirrored by the CHECK constraints of
/// migration V5.
pub const MONEY_BOUND_MINOR: i64 = 1 << 61;

/// The configured bounds of one currency, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrencyBounds {
    /// Highest balance any account may reach (`ledger.balance_max_minor`).
    pub balance_max_minor: i64,
    /// Most money that may be issued in the currency: the `system` balance never goes below
    /// its negation (`ledger.supply_max_minor`).
    pub supply_max_minor: i64,
}

/// Why configured bounds were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("{0} must be from 1 to 2^61 ({MONEY_BOUND_MINOR}) minor units")]
    OutOfRange(String),
    #[error("{0}: balance_max_minor must not exceed supply_max_minor (one account could hold all the money)")]
    BalanceAboveSupply(String),
}

/// The bounds of every currency: a default and per-currency overrides.
#[derive(Debug, Clone)]
pub struct Bounds {
    default: CurrencyBounds,
    overrides: BTreeMap<Currency, CurrencyBounds>,
}

impl Bounds {
    /// Errors: a bound outside `1..=MONEY_BOUND_MINOR`, or a balance maximum above the supply
    /// maximum of the same currency.
    pub fn new(
        default: CurrencyBounds,
        overrides: BTreeMap<Currency, CurrencyBounds>,
    ) -> Result<Bounds, BoundsError> {
        let all = std::iter::once(("ledger".to_owned(), default)).chain(
            overrides
                .iter()
                .map(|(currency, bounds)| (format!("ledger.currencies.{currency}"), *bounds)),
        );
        for (name, bounds) in all {
            for (key, value) in [
                ("balance_max_minor", bounds.balance_max_minor),
                ("supply_max_minor", bounds.supply_max_minor),
            ] {
                if !(1..=MONEY_BOUND_MINOR).contains(&value) {
                    return Err(BoundsError::OutOfRange(format!("{name}.{key}")));
                }
            }
            if bounds.balance_max_minor > bounds.supply_max_minor {
                return Err(BoundsError::BalanceAboveSupply(name));
            }
        }
        Ok(Bounds { default, overrides })
    }

    /// The bounds of `currency`.
    pub fn currency(&self, currency: Currency) -> CurrencyBounds {
        self.overrides
            .get(&currency)
            .copied()
            .unwrap_or(self.default)
    }

    /// The limits of `account`, whose balance row has `overdraft_limit` (ignored for `system`).
    pub fn limits(&self, account: AccountKey, overdraft_limit: i64) -> Limits {
        let bounds = self.currency(account.currency);
        Limits {
            currency: account.currency,
            system: account.user.is_system(),
            floor: if account.user.is_system() {
                -bounds.supply_max_minor
            } else {
                -overdraft_limit
            },
            ceiling: bounds.balance_max_minor,
        }
    }

    /// The floor the database must use for `account` instead of the row's `-overdraft_limit`
    /// (`Some` only for `system`, whose floor is the supply bound), and the ceiling: the two
    /// per-account parameters of the conditional update.
    pub fn sql_bounds(&self, account: AccountKey) -> (Option<i64>, i64) {
        let bounds = self.currency(account.currency);
        let floor = account.user.is_system().then_some(-bounds.supply_max_minor);
        (floor, bounds.balance_max_minor)
    }
}

/// What a rule reads of an account: its committed amount and what is held on it, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub amount: i64,
    pub pending: i64,
}

/// One account's part of a movement: how it changes the balance, and what it counts toward the
/// account's configured limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub account: AccountKey,
    pub change: Change,
    pub counted: Counted,
}

/// What a movement counts toward one account's configured limits (DESIGN.md section 8), minor
/// units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counted {
    /// Nothing: a credit from someone else, a posting or release of a hold (the hold was
    /// counted when it was created), either side of `system`.
    #[default]
    Nothing,
    /// A debit or a hold of a user account: `max_per_transaction`, `daily_debit`,
    /// `rolling_debit` count its amount, `velocity` counts one.
    Debit(i64),
    /// A credit a user gives themself: `daily_credit` counts its amount.
    SelfCredit(i64),
}

/// One configured limit of an account, with what it has counted in its window as of the commit
/// (`used`: minor units, or a number of debits for `velocity`; always 0 for
/// `max_per_transaction`, which has no window). The checked path reads these under the balance
/// row's lock (`store::journal::sql::check_usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    pub kind: LimitKind,
    pub value: i64,
    pub window_s: Option<u32>,
    pub used: i64,
}

impl WindowUsage {
    /// What `counted` adds to this limit (`None`: the limit does not count it).
    pub fn requested(&self, counted: Counted) -> Option<i64> {
        match (self.kind, counted) {
            (
                LimitKind::MaxPerTransaction | LimitKind::DailyDebit | LimitKind::RollingDebit,
                Counted::Debit(amount),
            ) => Some(amount),
            (LimitKind::Velocity, Counted::Debit(_)) => Some(1),
            (LimitKind::DailyCredit, Counted::SelfCredit(amount)) => Some(amount),
            _ => None,
        }
    }

    /// Whether a movement counting `counted` fits: `used + requested <= value` (the database
    /// checks the same sum over a whole batch). In `i128`, so nothing overflows.
    ///
    /// Errors: [`Refusal::LimitExceeded`] with this limit's figures.
    pub fn admit(&self, currency: Currency, counted: Counted) -> Result<(), Refusal> {
        let Some(requested) = self.requested(counted) else {
            return Ok(());
        };
        if i128::from(self.used) + i128::from(requested) > i128::from(self.value) {
            return Err(Refusal::LimitExceeded(LimitBreach {
                kind: self.kind,
                currency,
                value: self.value,
                window_s: self.window_s,
                used: self.used,
                requested,
            }));
        }
        Ok(())
    }

    /// Counts an admitted movement (`max_per_transaction` keeps no count).
    pub fn count(&mut self, counted: Counted) {
        if self.kind == LimitKind::MaxPerTransaction {
            return;
        }
        if let Some(requested) = self.requested(counted) {
            self.used = self.used.saturating_add(requested);
        }
    }
}

/// How one movement changes one account, minor units: `amount` (the settled balance, which
/// entries record) and `pending` (what holds reserve). What is available, `amount - pending`,
/// changes by `amount - pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    pub amount: i64,
    pub pending: i64,
}

impl Change {
    /// A settled change of the amount alone.
    pub fn settled(amount: i64) -> Change {
        Change { amount, pending: 0 }
    }

    /// The change of what is available (`amount - pending`), in `i128`: never overflows.
    pub fn available(self) -> i128 {
        i128::from(self.amount) - i128::from(self.pending)
    }
}

/// The bounds one account must stay inside (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    currency: Currency,
    system: bool,
    /// Lowest allowed `amount - pending`.
    floor: i64,
    /// Highest allowed `amount`.
    ceiling: i64,
}

/// Which limit a refused movement would have crossed: a bound of invariant 7 from the
/// configuration, or a configured limit of DESIGN.md section 8 (rows of `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    /// `ledger.balance_max_minor`: the credited account would hold too much.
    BalanceMax,
    /// `ledger.supply_max_minor`: more money would be issued than the currency allows.
    Supply,
    /// The largest single debit (or hold) from the account.
    MaxPerTransaction,
    /// The sum of debits (holds included) per UTC calendar day.
    DailyDebit,
    /// The sum of debits (holds included) in the last `window_s` seconds.
    RollingDebit,
    /// The sum of credits a user gives themself per UTC calendar day.
    DailyCredit,
    /// The number of debits (holds included) in the last `window_s` seconds.
    Velocity,
}

impl LimitKind {
    /// Every kind, in the order they are checked.
    pub const ALL: [LimitKind; 7] = [
        LimitKind::BalanceMax,
        LimitKind::Supply,
        LimitKind::MaxPerTransaction,
        LimitKind::DailyDebit,
        LimitKind::RollingDebit,
        LimitKind::DailyCredit,
        LimitKind::Velocity,
    ];

    /// The name on the wire (`limit.kind`), in `failure_detail` and in the `limits` table.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::BalanceMax => "balance_max",
            LimitKind::Supply => "supply",
            LimitKind::MaxPerTransaction => "max_per_transaction",
            LimitKind::DailyDebit => "daily_debit",
            LimitKind::RollingDebit => "rolling_debit",
            LimitKind::DailyCredit => "daily_credit",
            LimitKind::Velocity => "velocity",
        }
    }

    pub fn parse(kind: &str) -> Option<LimitKind> {
        LimitKind::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == kind)
    }

    /// Set through the limits API (a row of `limits`), as opposed to the configuration.
    pub fn is_configurable(self) -> bool {
        !matches!(self, LimitKind::BalanceMax | LimitKind::Supply)
    }

    /// Counts over the last `window_s` seconds.
    pub fn has_window(self) -> bool {
        matches!(self, LimitKind::RollingDebit | LimitKind::Velocity)
    }
}

/// A bound a movement would have crossed, with the figures the client is shown (DESIGN.md
/// section 8): `used` of `value` before the movement, `requested` by it, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitBreach {
    pub kind: LimitKind,
    pub currency: Currency,
    pub value: i64,
    /// The window of a rolling limit, seconds.
    pub window_s: Option<u32>,
    pub used: i64,
    pub requested: i64,
}

impl LimitBreach {
    /// What could still be moved under this bound (never negative).
    pub fn remaining(&self) -> i64 {
        self.value.saturating_sub(self.used).max(0)
    }
}

/// Why a movement was refused: the closed set of business refusals, in the order they are
/// checked (debited side first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The debited user account would go below `-overdraft_limit` (counting holds).
    InsufficientFunds,
    /// A bound of invariant 7 would be crossed.
    LimitExceeded(LimitBreach),
}

impl Refusal {
    /// The `failure_reason` recorded on the failed transaction.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::LimitExceeded(_) => "limit_exceeded",
        }
    }
}

impl Limits {
    /// Whether `change` may be applied to `snapshot`; the snapshot is unchanged either way.
    /// Arithmetic is in `i128`, so no snapshot or change can overflow it.
    ///
    /// Errors: [`Refusal::InsufficientFunds`] for a user account whose available amount would
    /// go below its floor; [`Refusal::LimitExceeded`] with [`LimitKind::Supply`] for a `system`
    /// account that would, and with [`LimitKind::BalanceMax`] for any account whose amount
    /// would go above its ceiling.
    pub fn admit(&self, snapshot: Snapshot, change: Change) -> Result<(), Refusal> {
        let available = i128::from(snapshot.amount) - i128::from(snapshot.pending);
        if change.available() < 0 && available + change.available() < i128::from(self.floor) {
            if !self.system {
                return Err(Refusal::InsufficientFunds);
            }
            return Err(Refusal::LimitExceeded(LimitBreach {
                kind: LimitKind::Supply,
                currency: self.currency,
                value: -self.floor,
                window_s: None,
                used: snapshot.amount.saturating_neg().max(0),
                requested: change.amount.saturating_neg(),
            }));
        }
        let amount = i128::from(snapshot.amount) + i128::from(change.amount);
        if change.amount > 0 && amount > i128::from(self.ceiling) {
            return Err(Refusal::LimitExceeded(LimitBreach {
                kind: LimitKind::BalanceMax,
                currency: self.currency,
                value: self.ceiling,
                window_s: None,
                used: snapshot.amount.max(0),
                requested: change.amount,
            }));
        }
        Ok(())
    }
}

/// The running sums of one account's deltas in a statement, in the form the conditional update
/// checks (see the module docs): the sum, the lowest running sum right after a debit (negative
/// delta), the highest right after a credit. `None` where there is no such delta, so that an
/// account is never refused for a state it was already in (a bound lowered in the
/// configuration): only a movement that goes the wrong way past a bound is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefixes {
    pub sum: i128,
    pub min_after_debit: Option<i128>,
    pub max_after_credit: Option<i128>,
}

impl Prefixes {
    /// The prefixes of `deltas`, in order. `i128`: no number of 64-bit deltas a process can
    /// hold overflows it.
    pub fn of(deltas: impl IntoIterator<Item = i64>) -> Prefixes {
        let mut prefixes = Prefixes::default();
        for delta in deltas {
            prefixes.sum += i128::from(delta);
            if delta < 0 {
                let min = prefixes.min_after_debit.get_or_insert(prefixes.sum);
                *min = (*min).min(prefixes.sum);
            } else if delta > 0 {
                let max = prefixes.max_after_credit.get_or_insert(prefixes.sum);
                *max = (*max).max(prefixes.sum);
            }
        }
        prefixes
    }
}

/// Checks a sequence of movements (each given by its legs, debited side first) against the
/// accounts' snapshots and configured limits, in order: each movement is admitted when every
/// leg is (the bounds first, then each configured limit), and then applied to the snapshots and
/// counted in the usage, so later movements are judged on what would really be there. Refused
/// movements are neither applied nor counted. Returns one result per movement.
///
/// `limits` and `snapshots` must hold every account the movements touch; `usage` holds the
/// configured limits of the accounts that have any.
pub fn check_sequence<L: IntoIterator<Item = Leg>>(
    movements: impl IntoIterator<Item = L>,
    limits: &BTreeMap<AccountKey, Limits>,
    snapshots: &mut BTreeMap<AccountKey, Snapshot>,
    usage: &mut BTreeMap<AccountKey, Vec<WindowUsage>>,
) -> Vec<Result<(), Refusal>> {
    const EMPTY: Snapshot = Snapshot {
        amount: 0,
        pending: 0,
    };
    movements
        .into_iter()
        .map(|legs| {
            let legs: Vec<Leg> = legs.into_iter().collect();
            for leg in &legs {
                let limit = limits
                    .get(&leg.account)
                    .expect("check_sequence is given the limits of every account");
                let snapshot = snapshots.get(&leg.account).copied().unwrap_or(EMPTY);
                limit.admit(snapshot, leg.change)?;
                for window in usage.get(&leg.account).into_iter().flatten() {
                    window.admit(leg.account.currency, leg.counted)?;
                }
            }
            for leg in legs {
                let entry = snapshots.entry(leg.account).or_insert(EMPTY);
                // Cannot overflow: the admitted state lies within ±MONEY_BOUND_MINOR.
                entry.amount += leg.change.amount;
                entry.pending += leg.change.pending;
                for window in usage.get_mut(&leg.account).into_iter().flatten() {
                    window.count(leg.counted);
                }
            }
            Ok(())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{UserId, SYSTEM_USER_ID};
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn bounds(balance_max_minor: i64, supply_max_minor: i64) -> Bounds {
        Bounds::new(
            CurrencyBounds {
                balance_max_minor,
                supply_max_minor,
            },
            BTreeMap::new(),
        )
        .unwrap()
    }

    fn user(n: u128) -> AccountKey {
        AccountKey {
            user: UserId::from_uuid(uuid::Uuid::from_u128(n)),
            currency: usd(),
        }
    }

    fn system() -> AccountKey {
        AccountKey {
            user: SYSTEM_USER_ID,
            currency: usd(),
        }
    }

    #[test]
    fn bounds_are_checked_at_construction() {
        let ok = CurrencyBounds {
            balance_max_minor: 10,
            supply_max_minor: 20,
        };
        assert!(Bounds::new(ok, BTreeMap::new()).is_ok());
        for bad in [
            CurrencyBounds {
                balance_max_minor: 0,
                supply_max_minor: 20,
            },
            CurrencyBounds {
                balance_max_minor: 10,
                supply_max_minor: MONEY_BOUND_MINOR + 1,
            },
            CurrencyBounds {
                balance_max_minor: 30,
                supply_max_minor: 20,
            },
        ] {
            assert!(Bounds::new(bad, BTreeMap::new()).is_err(), "{bad:?}");
            assert!(Bounds::new(ok, BTreeMap::from([(usd(), bad)])).is_err());
        }
    }

    #[test]
    fn overrides_apply_to_their_currency_only() {
        let jpy = Currency::parse("JPY").unwrap();
        let small = CurrencyBounds {
            balance_max_minor: 5,
            supply_max_minor: 7,
        };
        let bounds = Bounds::new(
            CurrencyBounds {
                balance_max_minor: 10,
                supply_max_minor: 20,
            },
            BTreeMap::from([(jpy, small)]),
        )
        .unwrap();
        assert_eq!(bounds.currency(jpy), small);
        assert_eq!(bounds.currency(usd()).balance_max_minor, 10);
    }

    #[test]
    fn a_user_floor_is_insufficient_funds_and_counts_pending() {
        let limits = bounds(1_000, 10_000).limits(user(1), 5);
        let snapshot = Snapshot {
            amount: 10,
            pending: 4,
        };
        assert_eq!(limits.admit(snapshot, Change::settled(-11)), Ok(()));
        assert_eq!(
            limits.admit(snapshot, Change::settled(-12)),
            Err(Refusal::InsufficientFunds)
        );
    }

    #[test]
    fn the_system_floor_is_the_supply_bound() {
        let limits = bounds(1_000, 10_000).limits(system(), i64::MAX);
        let snapshot = Snapshot {
            amount: -9_000,
            pending: 0,
        };
        assert_eq!(limits.admit(snapshot, Change::settled(-1_000)), Ok(()));
        let Err(Refusal::LimitExceeded(breach)) = limits.admit(snapshot, Change::settled(-1_001))
        else {
            panic!("the supply bound must refuse");
        };
        assert_eq!(breach.kind, LimitKind::Supply);
        assert_eq!(
            (breach.value, breach.used, breach.requested),
            (10_000, 9_000, 1_001)
        );
        assert_eq!(breach.remaining(), 1_000);
    }

    #[test]
    fn the_ceiling_is_the_balance_bound() {
        let limits = bounds(1_000, 10_000).limits(user(1), 0);
        let snapshot = Snapshot {
            amount: 900,
            pending: 0,
        };
        assert_eq!(limits.admit(snapshot, Change::settled(100)), Ok(()));
        let Err(Refusal::LimitExceeded(breach)) = limits.admit(snapshot, Change::settled(101))
        else {
            panic!("the balance bound must refuse");
        };
        assert_eq!(breach.kind, LimitKind::BalanceMax);
        assert_eq!(breach.remaining(), 100);
    }

    #[test]
    fn a_sequence_applies_what_it_admits_and_skips_what_it_refuses() {
        let bounds = bounds(1_000, 10_000);
        let limits: BTreeMap<_, _> = [user(1), user(2), system()]
            .into_iter()
            .map(|account| (account, bounds.limits(account, 0)))
            .collect();
        let mut snapshots = BTreeMap::new();
        let transfer = |from: AccountKey, to: AccountKey, minor: i64| {
            [
                Leg {
                    account: from,
                    change: Change::settled(-minor),
                    counted: Counted::Nothing,
                },
                Leg {
                    account: to,
                    change: Change::settled(minor),
                    counted: Counted::Nothing,
                },
            ]
        };
        let results = check_sequence(
            [
                transfer(user(1), user(2), 1),    // nothing there yet
                transfer(system(), user(1), 600), // credit
                transfer(user(1), user(2), 500),  // fits
                transfer(user(1), user(2), 200),  // 100 left
                transfer(system(), user(2), 600), // 500 + 600 > 1000
            ],
            &limits,
            &mut snapshots,
            &mut BTreeMap::new(),
        );
        assert_eq!(results[0], Err(Refusal::InsufficientFunds));
        assert_eq!(results[1], Ok(()));
        assert_eq!(results[2], Ok(()));
        assert_eq!(results[3], Err(Refusal::InsufficientFunds));
        assert!(matches!(
            results[4],
            Err(Refusal::LimitExceeded(LimitBreach {
                kind: LimitKind::BalanceMax,
                ..
            }))
        ));
        assert_eq!(snapshots[&user(1)].amount, 100);
        assert_eq!(snapshots[&user(2)].amount, 500);
        assert_eq!(snapshots[&system()].amount, -600);
    }

    fn window(kind: LimitKind, value: i64, used: i64) -> WindowUsage {
        WindowUsage {
            kind,
            value,
            window_s: kind.has_window().then_some(60),
            used,
        }
    }

    #[test]
    fn configured_limits_count_what_they_are_about() {
        let debit = Counted::Debit(40);
        let credit = Counted::SelfCredit(40);
        assert_eq!(
            window(LimitKind::DailyDebit, 100, 60).admit(usd(), debit),
            Ok(())
        );
        let Err(Refusal::LimitExceeded(breach)) =
            window(LimitKind::RollingDebit, 100, 61).admit(usd(), debit)
        else {
            panic!("61 + 40 > 100 must be refused");
        };
        assert_eq!(
            (breach.kind, breach.used, breach.requested, breach.window_s),
            (LimitKind::RollingDebit, 61, 40, Some(60))
        );
        assert_eq!(breach.remaining(), 39);
        // A credit does not count toward a debit limit, nor a debit toward daily_credit.
        assert_eq!(
            window(LimitKind::DailyDebit, 1, 1).admit(usd(), credit),
            Ok(())
        );
        assert_eq!(
            window(LimitKind::DailyCredit, 1, 1).admit(usd(), debit),
            Ok(())
        );
        assert!(window(LimitKind::DailyCredit, 79, 40)
            .admit(usd(), credit)
            .is_err());
        // Velocity counts debits, max_per_transaction looks at one.
        assert_eq!(
            window(LimitKind::Velocity, 3, 2).admit(usd(), debit),
            Ok(())
        );
        assert!(window(LimitKind::Velocity, 3, 3)
            .admit(usd(), debit)
            .is_err());
        assert!(window(LimitKind::MaxPerTransaction, 39, 0)
            .admit(usd(), debit)
            .is_err());
        let mut max = window(LimitKind::MaxPerTransaction, 40, 0);
        max.count(debit);
        assert_eq!(max.admit(usd(), debit), Ok(()));
    }

    #[test]
    fn a_sequence_counts_what_it_admits_toward_the_limits() {
        let bounds = bounds(1_000_000, 10_000_000);
        let limits: BTreeMap<_, _> = [user(1), user(2), system()]
            .into_iter()
            .map(|account| (account, bounds.limits(account, 0)))
            .collect();
        let mut snapshots = BTreeMap::from([(
            user(1),
            Snapshot {
                amount: 1_000,
                pending: 0,
            },
        )]);
        let mut usage = BTreeMap::from([(
            user(1),
            vec![
                window(LimitKind::Velocity, 3, 0),
                window(LimitKind::DailyDebit, 101, 0),
            ],
        )]);
        let debit = |minor: i64| {
            [
                Leg {
                    account: user(1),
                    change: Change::settled(-minor),
                    counted: Counted::Debit(minor),
                },
                Leg {
                    account: user(2),
                    change: Change::settled(minor),
                    counted: Counted::Nothing,
                },
            ]
        };
        let results = check_sequence(
            [debit(60), debit(50), debit(40), debit(1), debit(1)],
            &limits,
            &mut snapshots,
            &mut usage,
        );
        assert_eq!(results[0], Ok(()));
        assert!(matches!(
            results[1],
            Err(Refusal::LimitExceeded(LimitBreach {
                kind: LimitKind::DailyDebit,
                used: 60,
                ..
            }))
        ));
        assert_eq!(results[2], Ok(()));
        assert_eq!(results[3], Ok(()));
        assert!(matches!(
            results[4],
            Err(Refusal::LimitExceeded(LimitBreach {
                kind: LimitKind::Velocity,
                used: 3,
                ..
            }))
        ));
        assert_eq!(usage[&user(1)][0].used, 3);
        assert_eq!(usage[&user(1)][1].used, 101);
        assert_eq!(snapshots[&user(1)].amount, 1_000 - 101);
    }

    proptest! {
        /// The sequence rule and the sum the database checks over a batch agree: counted
        /// movements are all admitted one by one exactly when `used + their sum <= value`
        /// (`max_per_transaction`: when the largest is `<= value`).
        #[test]
        fn one_by_one_equals_the_batch_sum(
            kind in proptest::sample::select(vec![
                LimitKind::MaxPerTransaction, LimitKind::DailyDebit, LimitKind::RollingDebit,
                LimitKind::Velocity, LimitKind::DailyCredit,
            ]),
            value in 1i64..1_000,
            used in 0i64..1_000,
            amounts in proptest::collection::vec(1i64..300, 0..8),
            credits in any::<bool>(),
        ) {
            let used = if kind == LimitKind::MaxPerTransaction { 0 } else { used };
            let counted: Vec<Counted> = amounts
                .iter()
                .map(|&a| if credits { Counted::SelfCredit(a) } else { Counted::Debit(a) })
                .collect();
            let mut limit = window(kind, value, used);
            let mut all = true;
            for &c in &counted {
                if limit.admit(usd(), c).is_err() {
                    all = false;
                    break;
                }
                limit.count(c);
            }
            let requested: Vec<i64> = counted
                .iter()
                .filter_map(|&c| window(kind, value, used).requested(c))
                .collect();
            // The database is asked only about statements that count something.
            let batch = requested.is_empty() || if kind == LimitKind::MaxPerTransaction {
                requested.iter().copied().max().unwrap_or(0) <= value
            } else {
                used + requested.iter().sum::<i64>() <= value
            };
            prop_assert_eq!(all, batch);
        }

        /// The sequence rule and the prefix form the database checks agree: a run of changes on
        /// one account (settled amounts, holds, postings, releases) is admitted one by one
        /// exactly when `amount - pending + min_prefix >= floor` (the lowest running sum of
        /// available changes right after one that lowers it) and `amount + max_prefix <=
        /// ceiling` (the highest running sum of amount changes right after one that raises it),
        /// whatever the state it starts from.
        #[test]
        fn one_by_one_equals_the_prefix_form(
            amount in -1_000i64..3_000,
            pending in 0i64..500,
            overdraft in 0i64..500,
            changes in proptest::collection::vec((-400i64..400, -1i64..=1, 0i64..400), 1..12),
        ) {
            // (amount change, kind of pending change, size): settled, hold (+), release (-).
            let changes: Vec<Change> = changes
                .iter()
                .map(|&(delta, kind, held)| match kind {
                    0 => Change::settled(delta),
                    1 => Change { amount: 0, pending: held },
                    _ => Change { amount: -(delta.abs().min(held)), pending: -held },
                })
                .filter(|change| *change != Change::default())
                .collect();
            let limits = bounds(2_000, 10_000).limits(user(1), overdraft);
            let mut snapshot = Snapshot { amount, pending };
            let mut one_by_one = true;
            for &change in &changes {
                if limits.admit(snapshot, change).is_err() {
                    one_by_one = false;
                    break;
                }
                snapshot.amount += change.amount;
                snapshot.pending += change.pending;
            }
            let available = Prefixes::of(changes.iter().map(|c| c.amount - c.pending));
            let amounts = Prefixes::of(changes.iter().map(|c| c.amount));
            let floor_ok = available.min_after_debit.is_none_or(|min| {
                i128::from(amount - pending) + min >= i128::from(-overdraft)
            });
            let ceiling_ok = amounts
                .max_after_credit
                .is_none_or(|max| i128::from(amount) + max <= 2_000);
            prop_assert_eq!(one_by_one, floor_ok && ceiling_ok);
        }

        /// No snapshot or delta within 64 bits makes the rule overflow or panic.
        #[test]
        fn admit_never_overflows(amount in any::<i64>(), pending in any::<i64>(), delta in any::<i64>()) {
            let limits = bounds(MONEY_BOUND_MINOR, MONEY_BOUND_MINOR).limits(user(1), MONEY_BOUND_MINOR);
            let _ = limits.admit(Snapshot { amount, pending }, Change { amount: delta, pending: delta.wrapping_neg() });
            let _ = limits.admit(Snapshot { amount, pending }, Change::settled(delta));
            let limits = bounds(MONEY_BOUND_MINOR, MONEY_BOUND_MINOR).limits(system(), 0);
            let _ = limits.admit(Snapshot { amount, pending }, Change { amount: delta, pending: delta.wrapping_neg() });
            let _ = limits.admit(Snapshot { amount, pending }, Change::settled(delta));
        }
    }
}
