//! The two watch streams.
//!
//! WatchInteraction subscribes to the interaction's live feed *before* reading its history from
//! the store, so every committed event is in one or the other (or both: duplicates are dropped
//! by sequence). A watcher that falls behind the feed's buffer is not ended: it reads what it
//! missed from the store and goes on, so it never loses an event and never slows anyone else.
//! WatchInteractions has no history to fall back on, so a watcher that falls behind is ended
//! with UNAVAILABLE instead.
//!
//! Both end with UNAVAILABLE when the server shuts down, so that clients resume elsewhere, and
//! WatchInteractions also when the store's feed it follows is interrupted (PostgreSQL), saying
//! so.

use std::pin::Pin;

use tokio::sync::{broadcast::error::RecvError, watch};
use tokio_stream::Stream;
use tonic::Status;

use super::limits::WatchPermit;
use crate::{domain::EncodedEvent, manager::CallManager, proto};

/// Events as the store and the call manager encoded them: sent as they are (build.rs).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedEvent, Status>> + Send>>;

/// How many stored events one history read takes. A stream whose client stops reading holds
/// the rest of its batch besides its send buffer (docs/api.md §4), so the batch is small.
const HISTORY_BATCH: usize = 8;

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; watch again with the last sequence you saw")
}

/// WatchInteractions: the agent's live feed ended while the server goes on. Only the
/// PostgreSQL store ends one so (its listening connection broke, or notified events could not
/// be read): events may have been missed, and this watcher cannot tell which.
fn feed_interrupted() -> Status {
    Status::unavailable(
        "this replica's feed of event notifications from the store was interrupted (its \
         PostgreSQL listening connection broke, or notified events could not be read), so \
         events may have been missed; watch again, and use WatchInteraction with \
         after_sequence to recover an interaction's events",
    )
}

/// OUT_OF_RANGE for an `after_sequence` past the interaction's `latest` sequence: no client
/// can have seen it, and waiting for it could mean waiting forever.
fn beyond_the_end(after: u64, latest: u64) -> Status {
    use tonic_types::StatusExt;
    let description =
        format!("{after} is beyond the interaction's end: its latest sequence is {latest}");
    Status::with_error_details(
        tonic::Code::OutOfRange,
        format!("after_sequence: {description}"),
        tonic_types::ErrorDetails::with_bad_request_violation("after_sequence", description),
    )
}

/// Resolves once the server starts shutting down (or has stopped: the sender is gone). Made
/// once per stream: a wait made anew at each event registered with the shutdown channel and
/// unregistered again, for each of thousands of watchers of one event (BENCHMARKS.md, watch).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What woke a live watcher.
enum Wake {
    Event(EncodedEvent),
    /// The feed's buffer moved past us, or the feed closed: catch up from the store.
    CatchUp {
        closed: bool,
    },
    /// (WatchInteractions) the feed's buffer moved this many events past us (they are gone;
    /// those still buffered are not counted).
    Lagged(u64),
    /// (WatchInteractions) the feed ended while the server goes on.
    FeedEnded,
    Shutdown,
}

/// Every event of one interaction after `after`, then the live ones, until COMPLETED. The
/// caller has checked that the interaction is the agent's.
pub async fn interaction(
    manager: CallManager,
    agent_id: String,
    interaction: proto::Interaction,
    after: u64,
    shutdown: watch::Receiver<bool>,
    permit: WatchPermit,
) -> Result<EventStream, Status> {
    let id = interaction.id.clone();
    let completed = interaction.state == proto::InteractionState::Completed as i32;
    if completed && interaction.sequence <= after {
        if after > interaction.sequence {
            return Err(beyond_the_end(after, interaction.sequence));
        }
        return Ok(Box::pin(tokio_stream::empty()));
    }
    let feed = manager.watch(&agent_id, &id).await?;
    if after > interaction.sequence {
        // The snapshot was read before subscribing, and the interaction may have moved on
        // since. Read it again now that every later event reaches the feed: a sequence any
        // client has seen was committed before this read.
        let latest = manager.interaction(&agent_id, &id).await?.sequence;
        if after > latest {
            return Err(beyond_the_end(after, latest));
        }
    }
    Ok(Box::pin(async_stream::try_stream! {
        // Held for as long as the stream is open.
        let _permit = permit;
        let mut last = after;
        // History first, then the feed. Catching up reads the store again from `last`.
        let mut catch_up = true;
        let mut feed = feed;
        let stopping = stopped(shutdown);
        tokio::pin!(stopping);
        loop {
            if catch_up {
                loop {
                    let batch = manager.history(&id, last, HISTORY_BATCH).await?;
                    let full = batch.len() == HISTORY_BATCH;
                    for event in batch {
                        last = event.sequence;
                        let done = event.completed;
                        yield event;
                        if done {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                catch_up = false;
            }
            let Some(live) = feed.as_mut() else {
                // Not held by the call manager any more: the history was everything there is.
                return;
            };
            let wake = tokio::select! {
                // The feed first: the shutdown is looked at only while no event is waiting.
                biased;
                received = live.recv() => match received {
                    Ok(event) => Wake::Event(event),
                    Err(RecvError::Lagged(_)) => Wake::CatchUp { closed: false },
                    Err(RecvError::Closed) => Wake::CatchUp { closed: true },
                },
                () = &mut stopping => Wake::Shutdown,
            };
            match wake {
                Wake::Event(event) if event.sequence <= last => {}
                Wake::Event(event) if event.sequence == last + 1 => {
                    last = event.sequence;
                    let done = event.completed;
                    yield event;
                    if done {
                        return;
                    }
                }
                // A gap: the missing events are committed, so the store has them (and this one).
                Wake::Event(_) => catch_up = true,
                Wake::CatchUp { closed } => {
                    catch_up = true;
                    if closed {
                        feed = None;
                    }
                }
                Wake::Lagged(_) | Wake::FeedEnded | Wake::Shutdown => Err(shutting_down())?,
            }
        }
    }))
}

/// The live events of all of an agent's interactions.
pub async fn agent(
    manager: CallManager,
    agent_id: String,
    shutdown: watch::Receiver<bool>,
    permit: WatchPermit,
) -> Result<EventStream, Status> {
    let mut feed = manager.watch_agent(&agent_id).await?;
    Ok(Box::pin(async_stream::try_stream! {
        let _permit = permit;
        let stopping = stopped(shutdown.clone());
        tokio::pin!(stopping);
        loop {
            let wake = tokio::select! {
                biased;
                received = feed.recv() => match received {
                    Ok(event) => Wake::Event(event),
                    Err(RecvError::Lagged(missed)) => Wake::Lagged(missed),
                    Err(RecvError::Closed) => Wake::FeedEnded,
                },
                () = &mut stopping => Wake::Shutdown,
            };
            match wake {
                Wake::Event(event) => yield event,
                // What the client misses: every event after the last it was sent, i.e. those
                // gone from the buffer and those still in it (this stream sends no more).
                Wake::Lagged(gone) => Err(Status::unavailable(format!(
                    "this watcher fell {} events behind and was ended; watch again, \
                     and use WatchInteraction with after_sequence to recover an interaction's events",
                    gone + feed.unreceived() as u64
                )))?,
                // The call manager's feed closes only when it stops (shutdown); the store's
                // when it lost track of what it notifies.
                Wake::FeedEnded if !*shutdown.borrow() => Err(feed_interrupted())?,
                Wake::FeedEnded | Wake::CatchUp { .. } | Wake::Shutdown => Err(shutting_down())?,
            }
        }
    }))
}
