//! The messages the pipeline's actors exchange. They live here, not with the actors that
//! handle them, and actors hold each other as [`actix::Recipient`]s of these messages, so the
//! actor modules do not depend on one another: the worker, the directory, the balance actors
//! and the journal writer each depend only on this module (and the directory on the balance
//! actor it starts).

use actix::{Message, Recipient};

use super::Submission;
use crate::domain::{AccountState, WindowUsage};

/// Reserve funds for a movement on its debited account (worker → directory → balance actor),
/// then pass it on to the journal writer.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Reserve(pub Submission);

/// Funds a balance actor set aside for one movement on its way to the journal writer, to be
/// released with [`Settle`] (in memory only; not a ledger hold, which is `Phase::Hold`).
pub(super) struct Reservation {
    pub holder: Recipient<Settle>,
    /// Minor units.
    pub amount: i64,
}

/// A movement ready to be written.
pub(super) struct Item {
    pub submission: Submission,
    pub reservation: Option<Reservation>,
    /// Apply it in the checked path (its account's cache could not cover it).
    pub alone: bool,
}

/// A movement for the next group commit (worker or balance actor → journal writer).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Append(pub Item);

/// A reservation of `release` minor units is settled: committed, refused, or failed. `observed` is the
/// account's balance after the commit, when the commit happened; `reload` means the commit's
/// outcome is unknown and the cache must be reloaded before it is trusted again.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Settle {
    pub release: i64,
    pub observed: Option<AccountState>,
    pub reload: bool,
    /// The account's configured limits and what each had used after the commit, when the
    /// commit read them (`None` with `observed`: the account has none). The actor's fast path
    /// sends a movement these say would cross a limit to the checked path instead of a group.
    pub limits: Option<Vec<WindowUsage>>,
}

/// An account's balance as a commit left it (journal writer → directory → the account's
/// balance actor, if it has one).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Observed(pub AccountState);

/// Stop once no hold is outstanding (directory → a balance actor it forgot).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Retire;
