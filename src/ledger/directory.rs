//! The directory: owns the map from account to balance actor. It starts an actor on first use
//! (spread round-robin over one arbiter per core), forwards reservations to it, relays the
//! balances the journal writer observed, and retires actors idle longer than
//! `actor_idle_timeout_ms` so memory stays bounded however many accounts are touched.
//!
//! Retirement goes through the actor's own mailbox, after every reservation already sent to it,
//! so no reservation is ever dropped; an actor still holding funds stops only once its holds
//! are settled.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, ArbiterHandle, AsyncContext, Context, Handler, Recipient};

use super::balance::BalanceActor;
use super::messages::{Append, Observed, Reserve, Retire};
use super::PipelineStats;
use crate::domain::{AccountKey, Bounds};
use crate::store::DbPool;

struct Slot {
    actor: Addr<BalanceActor>,
    last_used: Instant,
}

pub(super) struct Directory {
    actors: HashMap<AccountKey, Slot>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    pool: DbPool,
    journal: Recipient<Append>,
    bounds: Arc<Bounds>,
    idle_timeout: Duration,
    stats: Arc<PipelineStats>,
}

impl Directory {
    pub(super) fn new(
        arbiters: Vec<ArbiterHandle>,
        pool: DbPool,
        journal: Recipient<Append>,
        bounds: Arc<Bounds>,
        idle_timeout: Duration,
        stats: Arc<PipelineStats>,
    ) -> Directory {
        assert!(
            !arbiters.is_empty(),
            "balance actors need at least one arbiter"
        );
        Directory {
            actors: HashMap::new(),
            arbiters,
            next_arbiter: 0,
            pool,
            journal,
            bounds,
            idle_timeout,
            stats,
        }
    }

    fn actor_for(&mut self, account: AccountKey) -> &Addr<BalanceActor> {
        let now = Instant::now();
        let stale = self
            .actors
            .get(&account)
            .is_some_and(|slot| !slot.actor.connected());
        if stale {
            // The actor stopped by itself (its balance could not be loaded): start a fresh one.
            self.actors.remove(&account);
            self.stats.balance_actors.fetch_sub(1, Ordering::Relaxed);
        }
        if !self.actors.contains_key(&account) {
            let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
            self.next_arbiter = self.next_arbiter.wrapping_add(1);
            let (pool, journal) = (self.pool.clone(), self.journal.clone());
            let bounds = self.bounds.clone();
            let actor = BalanceActor::start_in_arbiter(arbiter, move |_| {
                BalanceActor::new(account, bounds, pool, journal)
            });
            self.stats.balance_actors.fetch_add(1, Ordering::Relaxed);
            self.actors.insert(
                account,
                Slot {
                    actor,
                    last_used: now,
                },
            );
        }
        let slot = self.actors.get_mut(&account).expect("inserted above");
        slot.last_used = now;
        &slot.actor
    }

    fn retire_idle(&mut self) {
        let idle_timeout = self.idle_timeout;
        let stats = &self.stats;
        self.actors.retain(|_, slot| {
            if slot.last_used.elapsed() < idle_timeout {
                return true;
            }
            slot.actor.do_send(Retire);
            stats.balance_actors.fetch_sub(1, Ordering::Relaxed);
            stats.actor_evictions.fetch_add(1, Ordering::Relaxed);
            false
        });
    }
}

impl Actor for Directory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let period = (self.idle_timeout / 2).max(Duration::from_millis(10));
        ctx.run_interval(period, |directory, _| directory.retire_idle());
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> actix::Running {
        for slot in self.actors.values() {
            slot.actor.do_send(Retire);
        }
        actix::Running::Stop
    }
}

impl Handler<Reserve> for Directory {
    type Result = ();

    fn handle(&mut self, Reserve(submission): Reserve, _ctx: &mut Context<Self>) {
        let account = submission.movement.debited();
        self.actor_for(account).do_send(Reserve(submission));
    }
}

impl Handler<Observed> for Directory {
    type Result = ();

    fn handle(&mut self, Observed(state): Observed, _ctx: &mut Context<Self>) {
        if let Some(slot) = self.actors.get(&state.account) {
            slot.actor.do_send(Observed(state));
        }
    }
}
