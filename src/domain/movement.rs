//! A [`Movement`]: one validated, authorized request to move money, as the pipeline carries it.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Amount, Currency, Description, IdempotencyKey, Reference, TransactionKind, UserId};

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
    /// `balances.version`: larger is newer.
    pub version: i64,
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

/// A money movement of `amount` from `from` to `to` (double entry: the two entries are
/// `-amount` on `from` and `+amount` on `to`). A credit comes from the system user, a debit goes
/// to it. Invariant: `from != to`.
#[derive(Debug, Clone)]
pub struct Movement {
    pub id: Uuid,
    pub kind: TransactionKind,
    pub from: UserId,
    pub to: UserId,
    pub amount: Amount,
    pub currency: Currency,
    pub description: Option<Description>,
    pub reference: Option<Reference>,
    /// The authenticated user who asked for it; idempotency keys are scoped to this user.
    pub initiated_by: UserId,
    /// Re-checked in the commit: see [`Authority`].
    pub authority: Authority,
    pub idempotency: Option<IdempotencyClaim>,
}

impl Movement {
    /// The account that loses money: the one that needs a reservation (unless it is `system`,
    /// which has no limit).
    pub fn debited(&self) -> AccountKey {
        AccountKey {
            user: self.from,
            currency: self.currency,
        }
    }

    /// The account that gains money.
    pub fn credited(&self) -> AccountKey {
        AccountKey {
            user: self.to,
            currency: self.currency,
        }
    }

    /// Whether the debited account must reserve funds first (every account but `system`).
    pub fn needs_reservation(&self) -> bool {
        !self.from.is_system()
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
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SYSTEM_USER_ID;

    fn movement(amount: i64, description: Option<&str>) -> Movement {
        let user = UserId::from_uuid(Uuid::from_u128(7));
        Movement {
            id: Uuid::now_v7(),
            kind: TransactionKind::Credit,
            from: SYSTEM_USER_ID,
            to: user,
            amount: Amount::new(amount).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            description: description.map(|d| Description::parse(d).unwrap()),
            reference: None,
            initiated_by: user,
            authority: Authority::Owner,
            idempotency: None,
        }
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
}
