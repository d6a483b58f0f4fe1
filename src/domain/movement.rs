//! A [`Movement`]: one validated, authorized request to move money, as the pipeline carries it.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::fx::Rate;
use super::rules::{Change, Counted, Leg};
use super::{
    Amount, Currency, Description, IdempotencyKey, Reference, TransactionKind, UserId,
    FEES_USER_ID, SYSTEM_USER_ID,
};

/// One account of the ledger: a user's balance in one currency. Balance actors and balance rows
/// are keyed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountKey {
    pub user: UserId,
    pub currency: Currency,
}

/// An account's balance as a commit left it: what the database returned under the row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountState {
    pub account: AccountKey,
    /// Minor units.
    pub amount: i64,
    /// Held by pending holds, minor units (`amount - pending` is available).
    pub pending: i64,
    /// How far below zero `amount - pending` may go (`balances.overdraft_limit`), minor units.
    pub overdraft_limit: i64,
    /// `balances.version`: larger is newer.
    pub version: i64,
}

/// A balance a commit produced, to write through to the cache: the state the database returned
/// and the commit's timestamp (`balances.last_updated_at`).
#[derive(Debug, Clone, Copy)]
pub struct CommittedBalance {
    pub state: AccountState,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// What the initiator's right to a movement rests on. The handler decides it from the request
/// and the access token; the group commit checks it again against the initiator's role as it
/// is at the commit (the user row is share-locked there), so a demoted or deleted admin's token
/// moves nobody's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The initiator owns the account the movement takes from (or, for a credit, gives to).
    Owner,
    /// The initiator acts on another user's account as an admin.
    Admin,
}

/// The key a request carried and the SHA-256 of the request it identifies (invariant 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: IdempotencyKey,
    pub request_hash: [u8; 32],
}

/// When a movement's money moves (DESIGN.md section 7, TigerBeetle's two-phase semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Now: `-amount` on the payer, `+amount` on the payee, two entries.
    Settle,
    /// Reserved on the payer (`pending += amount`), no entries, until it is posted, voided or
    /// expires `timeout_s` seconds after its commit. The transaction is written `pending`.
    Hold { timeout_s: u32 },
    /// Posts `amount` of the hold `hold`, which held `held >= amount`: the payer's pending drops
    /// by `held` and its amount by `amount`, the payee gains `amount`. Written as a new
    /// completed transaction whose `pending_id` is the hold.
    Post { hold: Uuid, held: i64 },
    /// Releases the hold `hold` of `amount` (the held amount): the payer's pending drops by it;
    /// no money moves and no transaction is written, the hold's state becomes `end`.
    Release { hold: Uuid, end: HoldEnd },
}

/// How a released hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    Voided,
    Expired,
}

impl HoldEnd {
    /// The hold's `status` after it.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldEnd::Voided => "voided",
            HoldEnd::Expired => "expired",
        }
    }
}

/// A money movement of `amount` from `from` to `to` (double entry: the two entries are
/// `-amount` on `from` and `+amount` on `to`). A credit comes from the system user, a debit goes
/// to it, a transfer is between two users.
///
/// Invariants, enforced by the constructors ([`Movement::credit`], [`Movement::debit`],
/// [`Movement::transfer`]): `from != to`; `system` is a party only as the counterparty of a
/// credit or debit; the initiator is never `system`; the idempotency claim's hash is the hash
/// of this request (or of the request it is part of, for a bulk item).
#[derive(Debug, Clone)]
pub struct Movement {
    id: Uuid,
    kind: TransactionKind,
    from: UserId,
    to: UserId,
    amount: Amount,
    currency: Currency,
    description: Option<Description>,
    reference: Option<Reference>,
    initiated_by: UserId,
    authority: Authority,
    idempotency: Option<IdempotencyClaim>,
    phase: Phase,
    reversal: Option<Reversal>,
    exchange: Option<Box<Exchange>>,
    schedule: Option<(Uuid, i64)>,
}

/// What an exchange moved (DESIGN.md section 9): `sold` of the payer's `sold_currency` for
/// `bought` of `bought_currency`, paid to the payee (the payer, or `to_user_id`), at `rate`,
/// the spread `fee` (in the sold currency) kept by the `fees` account. Its legs, all in one
/// transaction: payer `-sold`, `system` `+(sold - fee)` and `fees` `+fee` in the sold currency;
/// `system` `-bought` and payee `+bought` in the bought currency. A reversal moves every leg
/// back at the recorded rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub payer: UserId,
    pub payee: UserId,
    pub sold_currency: Currency,
    pub sold: Amount,
    pub bought_currency: Currency,
    pub bought: Amount,
    /// Minor units of the sold currency, `0 <= fee < sold`.
    pub fee: i64,
    pub rate: Rate,
    pub spread_bps: u32,
    /// Where the rate came from (`PUT /rates`' `source`).
    pub rate_source: String,
    /// The quote that fixed the rate, when one did (claimed once, in the commit).
    pub quote: Option<Uuid>,
}

/// What a reversal reverses, and why (DESIGN.md section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    /// The completed transaction it reverses (in part or whole).
    pub of: Uuid,
    pub reason: Description,
}

/// Why a movement could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MovementError {
    #[error("the system account moves money only as the counterparty of a credit or debit")]
    SystemParty,
    #[error("a transfer needs two different users")]
    SameParty,
    #[error("only a transfer or a debit can be held")]
    NotHoldable,
    #[error("a hold's timeout must be at least 1 second")]
    ZeroTimeout,
    #[error("a posting cannot exceed the held amount")]
    ExceedsHold,
    #[error("an exchange needs two different currencies")]
    SameCurrency,
    #[error("an exchange's spread must be less than what it sells")]
    FeeOutOfRange,
}

impl Movement {
    /// A credit of `amount` from `system` to `to`, asked for by `initiated_by` with `authority`.
    ///
    /// Errors: [`MovementError::SystemParty`] when `to` or the initiator is `system`.
    pub fn credit(
        to: UserId,
        amount: Amount,
        currency: Currency,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        Movement::new(
            TransactionKind::Credit,
            SYSTEM_USER_ID,
            to,
            amount,
            currency,
            initiated_by,
            authority,
        )
    }

    /// A debit of `amount` from `from` to `system`. Errors as [`Movement::credit`].
    pub fn debit(
        from: UserId,
        amount: Amount,
        currency: Currency,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        Movement::new(
            TransactionKind::Debit,
            from,
            SYSTEM_USER_ID,
            amount,
            currency,
            initiated_by,
            authority,
        )
    }

    /// A transfer of `amount` from `from` to `to`.
    ///
    /// Errors: [`MovementError::SystemParty`] when a party or the initiator is `system`;
    /// [`MovementError::SameParty`] when `from == to`.
    pub fn transfer(
        from: UserId,
        to: UserId,
        amount: Amount,
        currency: Currency,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        if from.is_system() || to.is_system() {
            return Err(MovementError::SystemParty);
        }
        Movement::new(
            TransactionKind::Transfer,
            from,
            to,
            amount,
            currency,
            initiated_by,
            authority,
        )
    }

    fn new(
        kind: TransactionKind,
        from: UserId,
        to: UserId,
        amount: Amount,
        currency: Currency,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        if initiated_by.is_system() || (from.is_system() && to.is_system()) {
            return Err(MovementError::SystemParty);
        }
        if from == to {
            return Err(MovementError::SameParty);
        }
        Ok(Movement {
            id: Uuid::now_v7(),
            kind,
            from,
            to,
            amount,
            currency,
            description: None,
            reference: None,
            initiated_by,
            authority,
            idempotency: None,
            phase: Phase::Settle,
            reversal: None,
            exchange: None,
            schedule: None,
        })
    }

    /// An exchange (see [`Exchange`]) asked for by `initiated_by` with `authority`. The payee
    /// may be the payer (an exchange between one's own balances).
    ///
    /// Errors: [`MovementError::SystemParty`] when a party or the initiator is reserved;
    /// [`MovementError::SameCurrency`]; [`MovementError::FeeOutOfRange`].
    pub fn exchange(
        exchange: Exchange,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        Self::check_exchange(&exchange, initiated_by)?;
        let (from, to) = (exchange.payer, exchange.payee);
        let (amount, currency) = (exchange.sold, exchange.sold_currency);
        Ok(Self::of_exchange(
            (TransactionKind::Exchange, from, to, amount, currency),
            exchange,
            None,
            (initiated_by, authority),
        ))
    }

    /// The whole reversal of the exchange `of` (see [`Exchange`]): every leg moves back at the
    /// recorded rate, so the payer gets back exactly what it sold (the spread included) and the
    /// payee gives back what it bought (the side it takes from, which needs the funds).
    ///
    /// Errors: as [`Movement::exchange`].
    pub fn reverse_exchange(
        of: Uuid,
        exchange: Exchange,
        reason: Description,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        Self::check_exchange(&exchange, initiated_by)?;
        let (from, to) = (exchange.payee, exchange.payer);
        let (amount, currency) = (exchange.bought, exchange.bought_currency);
        Ok(Self::of_exchange(
            (TransactionKind::Reversal, from, to, amount, currency),
            exchange,
            Some(Reversal { of, reason }),
            (initiated_by, authority),
        ))
    }

    /// An exchange or its reversal, settled now: `from` is the debited side.
    fn of_exchange(
        (kind, from, to, amount, currency): (TransactionKind, UserId, UserId, Amount, Currency),
        exchange: Exchange,
        reversal: Option<Reversal>,
        (initiated_by, authority): (UserId, Authority),
    ) -> Movement {
        Movement {
            id: Uuid::now_v7(),
            kind,
            from,
            to,
            amount,
            currency,
            description: None,
            reference: None,
            initiated_by,
            authority,
            idempotency: None,
            phase: Phase::Settle,
            reversal,
            exchange: Some(Box::new(exchange)),
            schedule: None,
        }
    }

    fn check_exchange(exchange: &Exchange, initiated_by: UserId) -> Result<(), MovementError> {
        if initiated_by.is_reserved()
            || exchange.payer.is_reserved()
            || exchange.payee.is_reserved()
        {
            return Err(MovementError::SystemParty);
        }
        if exchange.sold_currency == exchange.bought_currency {
            return Err(MovementError::SameCurrency);
        }
        if !(0..exchange.sold.minor()).contains(&exchange.fee) {
            return Err(MovementError::FeeOutOfRange);
        }
        Ok(())
    }

    /// A reversal of `amount` of the completed transaction `of`, which moved money of
    /// `currency` from `from` to `to`: the money goes back, from `to` to `from`, through the
    /// normal posting path (it needs funds on the side it takes from).
    ///
    /// Errors: as [`Movement::transfer`] for the swapped parties.
    #[allow(clippy::too_many_arguments)]
    pub fn reverse(
        of: Uuid,
        from: UserId,
        to: UserId,
        amount: Amount,
        currency: Currency,
        reason: Description,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        let mut movement = Movement::new(
            TransactionKind::Reversal,
            to,
            from,
            amount,
            currency,
            initiated_by,
            authority,
        )?;
        movement.reversal = Some(Reversal { of, reason });
        Ok(movement)
    }

    /// The same movement as a hold that expires `timeout_s` seconds after its commit.
    ///
    /// Errors: [`MovementError::NotHoldable`] for a credit (only what leaves a user's account
    /// can be held); [`MovementError::ZeroTimeout`] for 0.
    pub fn with_hold(mut self, timeout_s: u32) -> Result<Movement, MovementError> {
        if self.kind == TransactionKind::Credit || self.from.is_system() {
            return Err(MovementError::NotHoldable);
        }
        if timeout_s == 0 {
            return Err(MovementError::ZeroTimeout);
        }
        self.phase = Phase::Hold { timeout_s };
        Ok(self)
    }

    /// The posting of `amount` of a pending hold: `hold` is its id, `held` what it holds, and
    /// the parties, currency and kind are the hold's. Asked for by `initiated_by`.
    ///
    /// Errors: [`MovementError::ExceedsHold`] when `amount > held`.
    #[allow(clippy::too_many_arguments)]
    pub fn post(
        hold: Uuid,
        kind: TransactionKind,
        from: UserId,
        to: UserId,
        held: Amount,
        amount: Amount,
        currency: Currency,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        if amount.minor() > held.minor() {
            return Err(MovementError::ExceedsHold);
        }
        let mut movement =
            Movement::new(kind, from, to, amount, currency, initiated_by, authority)?;
        movement.phase = Phase::Post {
            hold,
            held: held.minor(),
        };
        Ok(movement)
    }

    /// The release of a pending hold of `held` (voided by `initiated_by`, or expired): the
    /// parties, currency and kind are the hold's. The movement's id is the hold's: nothing new
    /// is written under it.
    #[allow(clippy::too_many_arguments)]
    pub fn release(
        hold: Uuid,
        kind: TransactionKind,
        from: UserId,
        to: UserId,
        held: Amount,
        currency: Currency,
        end: HoldEnd,
        initiated_by: UserId,
        authority: Authority,
    ) -> Result<Movement, MovementError> {
        let mut movement = Movement::new(kind, from, to, held, currency, initiated_by, authority)?;
        movement.id = hold;
        movement.phase = Phase::Release { hold, end };
        Ok(movement)
    }

    /// The same movement as occurrence `occurrence` (1-based) of the schedule `schedule`
    /// (DESIGN.md section 9); recorded on its transaction. Not part of the request hash: the
    /// run's idempotency key (`schedule:<id>:<n>`) names the occurrence already.
    pub fn with_schedule(mut self, schedule: Uuid, occurrence: i64) -> Movement {
        self.schedule = Some((schedule, occurrence));
        self
    }

    /// The schedule and occurrence this movement runs, when a schedule runs it.
    pub fn schedule(&self) -> Option<(Uuid, i64)> {
        self.schedule
    }

    /// What this movement exchanges, for an exchange or its reversal.
    pub fn exchange_details(&self) -> Option<&Exchange> {
        self.exchange.as_deref()
    }

    /// The same movement with its free-text fields.
    pub fn with_details(
        mut self,
        description: Option<Description>,
        reference: Option<Reference>,
    ) -> Movement {
        self.description = description;
        self.reference = reference;
        self
    }

    /// The same movement made exactly-once by `key`, claimed with the hash of this request (so
    /// it is called after every other builder).
    pub fn with_key(mut self, key: Option<IdempotencyKey>) -> Movement {
        self.idempotency = key.map(|key| IdempotencyClaim {
            key,
            request_hash: self.request_hash(),
        });
        self
    }

    /// The same movement claimed with `claim`, whose hash covers a larger request this movement
    /// is part of (a bulk item: the whole bulk's hash).
    pub fn with_claim(mut self, claim: IdempotencyClaim) -> Movement {
        self.idempotency = Some(claim);
        self
    }

    /// The transaction id this movement is written under (UUIDv7, time-ordered).
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn kind(&self) -> TransactionKind {
        self.kind
    }

    /// The account owner losing money (`system` for a credit).
    pub fn from(&self) -> UserId {
        self.from
    }

    /// The account owner gaining money (`system` for a debit).
    pub fn to(&self) -> UserId {
        self.to
    }

    pub fn amount(&self) -> Amount {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn description(&self) -> Option<&Description> {
        self.description.as_ref()
    }

    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    /// The authenticated user who asked for it; idempotency keys are scoped to this user.
    pub fn initiated_by(&self) -> UserId {
        self.initiated_by
    }

    /// What the initiator's right rests on; re-checked in the commit (see [`Authority`]).
    pub fn authority(&self) -> Authority {
        self.authority
    }

    pub fn idempotency(&self) -> Option<&IdempotencyClaim> {
        self.idempotency.as_ref()
    }

    /// The user whose account the movement is about: the credited one of a credit, the
    /// debited one otherwise.
    pub fn owner(&self) -> UserId {
        if self.kind == TransactionKind::Credit {
            self.to
        } else {
            self.from
        }
    }

    /// The account that loses money: the one that needs a reservation (unless it is `system`,
    /// whose floor is the supply bound, which only the database knows the state of).
    pub fn debited(&self) -> AccountKey {
        AccountKey {
            user: self.from,
            currency: self.currency,
        }
    }

    /// The account that gains money: the payee's (for an exchange, the payee's account in the
    /// bought currency; for its reversal, the payer's in the sold one).
    pub fn credited(&self) -> AccountKey {
        let currency = match (&self.exchange, &self.reversal) {
            (Some(exchange), None) => exchange.bought_currency,
            (Some(exchange), Some(_)) => exchange.sold_currency,
            (None, _) => self.currency,
        };
        AccountKey {
            user: self.to,
            currency,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What this movement reverses, when it is a reversal.
    pub fn reversal(&self) -> Option<&Reversal> {
        self.reversal.as_ref()
    }

    /// The hold this movement posts or releases.
    pub fn resolves(&self) -> Option<Uuid> {
        match self.phase {
            Phase::Post { hold, .. } | Phase::Release { hold, .. } => Some(hold),
            Phase::Settle | Phase::Hold { .. } => None,
        }
    }

    /// What the movement does to each account, payer first: a settled movement takes `amount`
    /// from the payer's amount and gives it to the payee; a hold adds it to the payer's pending
    /// only; a posting drops the payer's pending by the held amount and moves `amount`; a
    /// release drops the payer's pending only.
    /// What this movement counts toward the configured limits of the debited and of the
    /// credited account (DESIGN.md section 8): a settled debit or a hold of a user account
    /// counts as a debit of it (a reversal too: it debits the side it takes from); a credit a
    /// user gives themself counts toward their `daily_credit`. A posting or release counts
    /// nothing new: the hold was counted when it was created (the journal lowers or removes
    /// that count when it resolves).
    pub fn counted(&self) -> (Counted, Counted) {
        let amount = self.amount.minor();
        let counts = matches!(self.phase, Phase::Settle | Phase::Hold { .. });
        let debit = if counts && !self.from.is_system() {
            Counted::Debit(amount)
        } else {
            Counted::Nothing
        };
        let self_credit = if counts
            && self.kind == TransactionKind::Credit
            && !self.to.is_system()
            && self.initiated_by == self.to
        {
            Counted::SelfCredit(amount)
        } else {
            Counted::Nothing
        };
        (debit, self_credit)
    }

    pub fn legs(&self) -> impl Iterator<Item = Leg> {
        let mut legs: [Option<Leg>; 5] = [None; 5];
        if let Some(exchange) = &self.exchange {
            let leg = |user: UserId, currency: Currency, delta: i64| {
                (delta != 0).then_some(Leg {
                    account: AccountKey { user, currency },
                    change: Change::settled(delta),
                    counted: Counted::Nothing,
                })
            };
            let (sold, bought, fee) =
                (exchange.sold.minor(), exchange.bought.minor(), exchange.fee);
            let (sold_in, bought_in) = (exchange.sold_currency, exchange.bought_currency);
            legs = if self.reversal.is_none() {
                [
                    leg(exchange.payer, sold_in, -sold),
                    leg(SYSTEM_USER_ID, sold_in, sold - fee),
                    leg(FEES_USER_ID, sold_in, fee),
                    leg(SYSTEM_USER_ID, bought_in, -bought),
                    leg(exchange.payee, bought_in, bought),
                ]
            } else {
                [
                    leg(exchange.payee, bought_in, -bought),
                    leg(SYSTEM_USER_ID, bought_in, bought),
                    leg(SYSTEM_USER_ID, sold_in, fee - sold),
                    leg(FEES_USER_ID, sold_in, -fee),
                    leg(exchange.payer, sold_in, sold),
                ]
            };
            // The debited side (first) counts toward its limits, as any debit.
            if let Some(first) = &mut legs[0] {
                first.counted = self.counted().0;
            }
            return legs.into_iter().flatten();
        }
        let amount = self.amount.minor();
        let (payer, payee) = match self.phase {
            Phase::Settle => (Change::settled(-amount), Some(Change::settled(amount))),
            Phase::Hold { .. } => (
                Change {
                    amount: 0,
                    pending: amount,
                },
                None,
            ),
            Phase::Post { held, .. } => (
                Change {
                    amount: -amount,
                    pending: -held,
                },
                Some(Change::settled(amount)),
            ),
            Phase::Release { .. } => (
                Change {
                    amount: 0,
                    pending: -amount,
                },
                None,
            ),
        };
        let (debited, credited) = (self.debited(), self.credited());
        let (payer_counted, payee_counted) = self.counted();
        legs[0] = Some(Leg {
            account: debited,
            change: payer,
            counted: payer_counted,
        });
        legs[1] = payee.map(|change| Leg {
            account: credited,
            change,
            counted: payee_counted,
        });
        legs.into_iter().flatten()
    }

    /// Whether the payer's account must reserve funds first: a settled movement or a hold from
    /// any account but `system` (whose floor is the supply bound, which only the database
    /// knows the state of). A posting or a release only frees what a hold reserved.
    pub fn needs_reservation(&self) -> bool {
        matches!(self.phase, Phase::Settle | Phase::Hold { .. }) && !self.from.is_system()
    }

    /// What the payer's balance actor reserves: the drop of its available amount.
    pub fn reservation(&self) -> i64 {
        self.amount.minor()
    }

    /// SHA-256 over the canonical form of what the client asked for (not the body's bytes, so
    /// whitespace or field order do not matter; not the generated id). Two requests with the
    /// same key must have the same hash to be the same request.
    pub fn request_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut field = |value: &[u8]| {
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value);
        };
        field(self.kind.as_str().as_bytes());
        field(self.from.as_uuid().as_bytes());
        field(self.to.as_uuid().as_bytes());
        field(&self.amount.minor().to_be_bytes());
        field(self.currency.code().as_bytes());
        field(
            self.description
                .as_ref()
                .map_or(&b"\xff"[..], |d| d.as_str().as_bytes()),
        );
        field(
            self.reference
                .as_ref()
                .map_or(&b"\xff"[..], |r| r.as_str().as_bytes()),
        );
        // Only holds add a field, so that the hash of a settled request (stored with its key)
        // stays what it was before holds existed.
        match self.phase {
            Phase::Settle => {}
            Phase::Hold { timeout_s } => {
                field(b"hold");
                field(&timeout_s.to_be_bytes());
            }
            Phase::Post { hold, .. } => {
                field(b"post");
                field(hold.as_bytes());
            }
            Phase::Release { hold, end } => {
                field(end.as_str().as_bytes());
                field(hold.as_bytes());
            }
        }
        if let Some(exchange) = &self.exchange {
            // What the client chose: the currencies, the payee and the quote (the rate and the
            // amounts bought follow from them at the time of the first request).
            field(b"exchange");
            field(exchange.bought_currency.code().as_bytes());
            match &exchange.quote {
                Some(quote) => field(quote.as_bytes()),
                None => field(b"\xff"),
            }
        }
        if let Some(reversal) = &self.reversal {
            field(b"reversal");
            field(reversal.of.as_bytes());
            field(reversal.reason.as_str().as_bytes());
        }
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn movement(amount: i64, description: Option<&str>) -> Movement {
        Movement::credit(
            user(7),
            Amount::new(amount).unwrap(),
            Currency::parse("USD").unwrap(),
            user(7),
            Authority::Owner,
        )
        .unwrap()
        .with_details(description.map(|d| Description::parse(d).unwrap()), None)
    }

    #[test]
    fn request_hash_ignores_the_id_and_sees_every_field() {
        assert_eq!(
            movement(5, None).request_hash(),
            movement(5, None).request_hash()
        );
        assert_ne!(
            movement(5, None).request_hash(),
            movement(6, None).request_hash()
        );
        assert_ne!(
            movement(5, None).request_hash(),
            movement(5, Some("")).request_hash()
        );
        assert_ne!(
            movement(5, Some("a")).request_hash(),
            movement(5, Some("b")).request_hash()
        );
    }

    #[test]
    fn constructors_keep_the_invariants() {
        let (usd, one) = (Currency::parse("USD").unwrap(), Amount::new(1).unwrap());
        let owner = Authority::Owner;
        assert_eq!(
            Movement::transfer(user(1), user(1), one, usd, user(1), owner).unwrap_err(),
            MovementError::SameParty
        );
        for (from, to) in [(SYSTEM_USER_ID, user(1)), (user(1), SYSTEM_USER_ID)] {
            assert_eq!(
                Movement::transfer(from, to, one, usd, user(1), owner).unwrap_err(),
                MovementError::SystemParty
            );
        }
        assert!(Movement::credit(SYSTEM_USER_ID, one, usd, user(1), owner).is_err());
        assert!(Movement::debit(SYSTEM_USER_ID, one, usd, user(1), owner).is_err());
        assert!(Movement::credit(user(1), one, usd, SYSTEM_USER_ID, owner).is_err());
        let credit = Movement::credit(user(1), one, usd, user(2), Authority::Admin).unwrap();
        assert_eq!(
            (credit.from(), credit.to(), credit.owner()),
            (SYSTEM_USER_ID, user(1), user(1))
        );
        let keyed = credit
            .clone()
            .with_key(Some(IdempotencyKey::parse("k").unwrap()));
        assert_eq!(
            keyed.idempotency().unwrap().request_hash,
            credit.request_hash()
        );
    }
}
