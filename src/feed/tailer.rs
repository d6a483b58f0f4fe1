//! The tailer: one task per instance that follows the event log and publishes it to the hub.
//!
//! It holds a connection of its own (not from a pool: a `LISTEN` belongs to its session) that
//! listens on `tally_events`, which migration V11 notifies on every commit that wrote events.
//! On each notification, and every `feed.poll_interval_ms` without one, it reads the log after
//! its cursor in pages of [`PAGE`] until it is caught up. The cursor read never skips an event
//! that commits later (`store::events::read_after`), so a lost notification, or one that came
//! while an older transaction was still open, only delays events, by at most the interval; and
//! while committed events wait behind an older open transaction it reads again every
//! [`HORIZON_RETRY`].
//! A failed connection is replaced after [`RECONNECT_PAUSE`], from the same cursor.
//!
//! While no connection of the instance is live, it reads only the live position, once per
//! interval, and moves the hub there ([`Skip`]): an instance without listeners does not read
//! the log. The hub wakes it when the first connection goes live.
//!
//! **Invariant:** pages go to the hub one at a time and in cursor order; the next page is read
//! only after the hub took the last (`send`), so a burst waits in the database, not in memory.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::{Frame, Hub, Publish, Skip};
use crate::config::{DatabaseSettings, FeedSettings};
use crate::store::{self, events::EventCursor};

/// Events per read.
pub const PAGE: i64 = 500;
/// Pause before reading again while committed events wait behind an older open transaction.
const HORIZON_RETRY: Duration = Duration::from_millis(5);
/// Pause before replacing a failed connection.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Follows the log from `start` (the live position) for as long as the instance runs.
pub fn spawn(
    database: DatabaseSettings,
    feed: FeedSettings,
    hub: Addr<Hub>,
    listening: Arc<Notify>,
    start: EventCursor,
) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut cursor = start;
        loop {
            if let Err(error) = follow(&database, &feed, &hub, &listening, &mut cursor).await {
                tracing::warn!(error = ?error, cursor = %cursor, "the feed tailer stopped; reconnecting");
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    })
}

/// Reads and publishes until the connection fails; `cursor` is the last event published.
async fn follow(
    database: &DatabaseSettings,
    feed: &FeedSettings,
    hub: &Addr<Hub>,
    listening: &Notify,
    cursor: &mut EventCursor,
) -> anyhow::Result<()> {
    let (client, mut connection) = store::connect_dedicated(database, store::FEED_APP_NAME).await?;
    let wake = Arc::new(Notify::new());
    let (closed, mut connection_closed) = tokio::sync::oneshot::channel::<()>();
    // Drives the connection and turns its notifications into wake-ups (a `Notify` keeps one
    // permit, so a notification that comes while a read runs is not lost).
    let driver = {
        let wake = wake.clone();
        actix_web::rt::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the feed tailer's connection failed");
                        break;
                    }
                }
            }
            drop(closed);
        })
    };
    let _stop_driver = AbortOnDrop(driver);
    client.batch_execute("LISTEN tally_events").await?;
    let mut poll = tokio::time::interval(feed.poll_interval());
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Everything final after the cursor, page by page (events committed after LISTEN and
        // before this read are in it). Afterwards the cursor is where the log ended for this
        // read: a live position.
        loop {
            let page = store::events::read_after(&client, *cursor, PAGE).await?;
            let Some(last) = page.last() else { break };
            *cursor = last.cursor;
            let full = page.len() as i64 == PAGE;
            let frames = page.into_iter().map(Frame::render).collect();
            hub.send(Publish { frames }).await?;
            if !full {
                break;
            }
        }
        // Nobody live on this instance: idle. Until someone listens, notifications and events
        // behind the horizon concern nobody; once per interval, move the hub to the live
        // position without reading or rendering the events in between (granted only while no
        // connection is live; one that goes live later starts after it, or catches up from the
        // log). The hub wakes `listening` when the first connection goes live.
        if hub.send(Skip { to: *cursor }).await? {
            loop {
                tokio::select! {
                    () = listening.notified() => break,
                    _ = poll.tick() => {}
                    _ = &mut connection_closed => anyhow::bail!("the feed tailer's connection closed"),
                }
                let live = store::events::live_position(&client).await?.max(*cursor);
                if !hub.send(Skip { to: live }).await? {
                    break;
                }
                *cursor = live;
            }
            continue;
        }
        // The notification came at commit, but the events are readable only once every older
        // transaction has ended, which notifies nobody (the sealer, another database's work):
        // look again soon rather than at the next poll.
        if store::events::waiting_behind_horizon(&client).await? {
            tokio::select! {
                () = tokio::time::sleep(HORIZON_RETRY) => continue,
                _ = &mut connection_closed => anyhow::bail!("the feed tailer's connection closed"),
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            _ = poll.tick() => {}
            _ = &mut connection_closed => anyhow::bail!("the feed tailer's connection closed"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
