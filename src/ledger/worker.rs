//! Worker actors: drain the submission queue and route each movement. A movement whose debited
//! account is a user's needs a reservation, so it goes to that account's balance actor (through
//! the directory); a credit debits `system`, which has no limit, so it goes straight to the
//! journal writer.

use actix::{Actor, Addr, Context, Recipient, StreamHandler};

use super::messages::{Append, Item, Reserve};
use super::{queue_wait, Submission};

pub(super) struct Worker {
    directory: Recipient<Reserve>,
    journal: Recipient<Append>,
    /// Registered once: recording is then an atomic update, no registry lookup.
    queue_wait_seconds: metrics::Histogram,
}

impl Worker {
    /// Starts a worker that consumes `queue` until every sender is gone.
    pub(super) fn start(
        queue: async_channel::Receiver<Submission>,
        directory: Recipient<Reserve>,
        journal: Recipient<Append>,
    ) -> Addr<Worker> {
        Worker::create(|ctx| {
            Worker::add_stream(queue, ctx);
            Worker {
                directory,
                journal,
                queue_wait_seconds: metrics::histogram!(
                    crate::telemetry::names::QUEUE_WAIT_SECONDS
                ),
            }
        })
    }
}

impl Actor for Worker {
    type Context = Context<Self>;
}

impl StreamHandler<Submission> for Worker {
    fn handle(&mut self, mut submission: Submission, _ctx: &mut Context<Self>) {
        self.queue_wait_seconds
            .record(queue_wait(&submission).as_secs_f64());
        // The wait is over: close its span.
        drop(std::mem::replace(
            &mut submission.queue_span,
            tracing::Span::none(),
        ));
        debug_assert!(
            submission.movement.from() != submission.movement.to()
                || submission.movement.exchange_details().is_some(),
            "handlers refuse self-transfers (only an exchange may pay its own payer)"
        );
        // do_send ignores the mailbox limit; the admission permits bound what is in flight.
        if submission.movement.needs_reservation() {
            self.directory.do_send(Reserve(submission));
        } else {
            self.journal.do_send(Append(Item {
                submission,
                reservation: None,
                alone: false,
            }));
        }
    }
}
