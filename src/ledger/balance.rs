//! Balance actors: one per account (user, currency). Each serializes the reservations on its
//! account: it knows the committed amount (from the database), the overdraft limit, and the
//! reservations of movements that are on their way to the journal writer, and admits a new one
//! with the posting rule of `domain::rules` (the fast path of invariant 8), counting the
//! outstanding ones as pending. (A reservation lives in memory until its commit; a ledger hold,
//! `Phase::Hold`, is a transaction whose `pending` is in the database.)
//!
//! The cache is a fast path, never the arbiter (invariant 6). A movement the cache cannot cover
//! is not rejected here: it goes to the journal writer marked `alone`, and the database's
//! conditional update decides. A reservation the database refuses is re-checked alone there too. After
//! every commit the actor learns the amount the database returned, with its version, so a stale
//! cache corrects itself.

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Recipient, WrapFuture,
};

use super::messages::{Append, Item, Observed, Reservation, Reserve, Retire, Settle};
use super::{Submission, SubmitError};
use crate::domain::{
    AccountKey, AccountState, Bounds, Change, LimitKind, Limits, Snapshot, WindowUsage,
};
use crate::store::{AcquireError, DbPool};

/// What the database said about the account when the actor loaded it.
#[derive(Debug, Clone, Copy)]
struct Cached {
    amount: i64,
    pending: i64,
    overdraft_limit: i64,
    version: i64,
}

pub(super) struct BalanceActor {
    account: AccountKey,
    bounds: std::sync::Arc<Bounds>,
    pool: DbPool,
    journal: Recipient<Append>,
    /// `None` until loaded, or after a load failed or a commit's outcome became unknown.
    cached: Option<Cached>,
    /// Sum of the reservations of movements not yet settled by the journal writer, minor units.
    reserved: i64,
    /// How many reservations are outstanding.
    reservations: u64,
    /// The account's configured limits and what each had used after the last commit that
    /// counted toward them (empty: none, or none seen yet). A fast path only: the database
    /// decides (`store::journal::sql::check_usage`).
    limits: Vec<WindowUsage>,
    retiring: bool,
}

impl BalanceActor {
    pub(super) fn new(
        account: AccountKey,
        bounds: std::sync::Arc<Bounds>,
        pool: DbPool,
        journal: Recipient<Append>,
    ) -> BalanceActor {
        BalanceActor {
            account,
            bounds,
            pool,
            journal,
            cached: None,
            reserved: 0,
            reservations: 0,
            limits: Vec::new(),
            retiring: false,
        }
    }

    /// Loads the balance, blocking the mailbox until done (`ctx.wait`), then runs `then`.
    fn load_then(
        &mut self,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let (pool, account) = (self.pool.clone(), self.account);
        let load = async move {
            let client = pool.get().await.map_err(|error| match error {
                // Already logged when the health check failed; one line per load would flood.
                AcquireError::DatabaseDown => {}
                error => tracing::warn!(%error, "balance load: no connection"),
            })?;
            crate::store::balances::find(&client, account)
                .await
                .map_err(|error| tracing::warn!(%error, "balance load failed"))
        };
        ctx.wait(load.into_actor(self).map(move |loaded, actor, ctx| {
            actor.cached = match loaded {
                Ok(Some(record)) => Some(Cached {
                    amount: record.amount,
                    pending: record.pending,
                    overdraft_limit: record.overdraft_limit,
                    version: record.version,
                }),
                // Never used: the journal writer creates the row with the defaults.
                Ok(None) => Some(Cached {
                    amount: 0,
                    pending: 0,
                    overdraft_limit: 0,
                    version: 0,
                }),
                Err(()) => None,
            };
            then(actor, ctx);
        }));
    }

    fn reserve(&mut self, submission: Submission, ctx: &mut Context<Self>) {
        let Some(cached) = self.cached else {
            // The database could not be read: answer now rather than queue behind an outage.
            submission.answer(Err(SubmitError::Unavailable));
            return;
        };
        let amount = submission.movement.reservation();
        let limits: Limits = self.bounds.limits(self.account, cached.overdraft_limit);
        let snapshot = Snapshot {
            amount: cached.amount,
            // Outstanding reservations count as pending: they are on their way to being
            // debited.
            pending: cached.pending.saturating_add(self.reserved),
        };
        if limits.admit(snapshot, Change::settled(-amount)).is_ok()
            && self.within_limits(&submission)
        {
            self.reserved += amount;
            self.reservations += 1;
            let reservation = Reservation {
                holder: ctx.address().recipient(),
                amount,
            };
            self.journal.do_send(Append(Item {
                submission,
                reservation: Some(reservation),
                alone: false,
            }));
        } else {
            // Let the database decide: the cache may be behind another process's credit.
            self.journal.do_send(Append(Item {
                submission,
                reservation: None,
                alone: true,
            }));
        }
    }

    /// Whether the movement fits the configured limits as the last commit left them, counting
    /// the outstanding reservations as used (their sum toward the amounts, their number toward
    /// `velocity`). One that would not fit goes to the checked path, so it never makes a
    /// group's commit roll back.
    fn within_limits(&self, submission: &Submission) -> bool {
        let (counted, _) = submission.movement.counted();
        let reserved = i64::try_from(self.reservations).unwrap_or(i64::MAX);
        self.limits.iter().all(|window| {
            let in_flight = match window.kind {
                LimitKind::Velocity => reserved,
                LimitKind::MaxPerTransaction => 0,
                _ => self.reserved,
            };
            WindowUsage {
                used: window.used.saturating_add(in_flight),
                ..*window
            }
            .admit(self.account.currency, counted)
            .is_ok()
        })
    }

    fn observe(&mut self, state: AccountState) {
        if let Some(cached) = &mut self.cached {
            if state.version > cached.version {
                cached.amount = state.amount;
                cached.pending = state.pending;
                cached.overdraft_limit = state.overdraft_limit;
                cached.version = state.version;
            }
        }
    }

    fn stop_if_retired(&mut self, ctx: &mut Context<Self>) {
        if self.retiring && self.reservations == 0 {
            ctx.stop();
        }
    }
}

impl Actor for BalanceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_then(ctx, |_, _| {});
    }
}

impl Handler<Reserve> for BalanceActor {
    type Result = ();

    fn handle(&mut self, Reserve(submission): Reserve, ctx: &mut Context<Self>) {
        if self.cached.is_none() {
            self.load_then(ctx, move |actor, ctx| actor.reserve(submission, ctx));
        } else {
            self.reserve(submission, ctx);
        }
    }
}

impl Handler<Settle> for BalanceActor {
    type Result = ();

    fn handle(&mut self, settle: Settle, ctx: &mut Context<Self>) {
        self.reserved -= settle.release;
        self.reservations -= 1;
        debug_assert!(
            self.reserved >= 0,
            "reservations never release more than they took"
        );
        match settle.limits {
            Some(limits) => self.limits = limits,
            // Committed without any limit read: the account has none (any more).
            None if settle.observed.is_some() => self.limits.clear(),
            None => {}
        }
        if let Some(state) = settle.observed {
            self.observe(state);
        }
        if settle.reload {
            self.cached = None;
        }
        self.stop_if_retired(ctx);
    }
}

impl Handler<Observed> for BalanceActor {
    type Result = ();

    fn handle(&mut self, Observed(state): Observed, _ctx: &mut Context<Self>) {
        self.observe(state);
    }
}

impl Handler<Retire> for BalanceActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.retiring = true;
        self.stop_if_retired(ctx);
    }
}
