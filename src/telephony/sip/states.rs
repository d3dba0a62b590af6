//! Every dialog's state changes on one channel, handed to their leg by Call-ID.
//!
//! rsipstack reports a dialog's state changes, and the requests the far end sends inside it, on
//! a tokio unbounded channel given when the dialog is made. Such a channel allocates its slots 32
//! at a time, and a [`DialogState`] holds a whole response or request: a channel per leg kept
//! ~8.8 KiB per leg for as long as the leg lived, a third of a live call's memory. So every
//! dialog reports on one channel, and one task hands each change to its leg's own channel.
//! Every leg has a Call-ID of its own (a dialog forked from it shares it, and is that leg's
//! too), so the Call-ID is what finds it.
//!
//! A leg's channel is futures' unbounded channel, which allocates a message only while it
//! waits: an empty one is ~100 bytes, where tokio's (its halves cache-padded, its first block
//! of 32 slots made with it) is ~0.8 KiB, for changes that are few and taken at once. Its
//! changes are boxed: the channel keeps one empty node as large as a message.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_core::Stream;
use rsipstack::dialog::dialog::{DialogState, DialogStateSender};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The legs' channels by Call-ID.
type Legs = HashMap<String, UnboundedSender<Box<DialogState>>>;

/// The one channel every dialog reports on, and where to hand what it carries.
pub(super) struct DialogStates {
    /// Given to rsipstack for every dialog.
    sender: DialogStateSender,
    /// Filled by [`DialogStates::register`], emptied as [`LegStates`] drop.
    legs: Arc<Mutex<Legs>>,
}

impl DialogStates {
    /// Starts the task that hands changes to legs; it ends with `cancel`.
    pub fn start(runtime: &tokio::runtime::Handle, cancel: CancellationToken) -> DialogStates {
        let (sender, mut states) = mpsc::unbounded_channel::<DialogState>();
        let legs: Arc<Mutex<Legs>> = Arc::default();
        let routed = legs.clone();
        runtime.spawn(async move {
            loop {
                let state = tokio::select! {
                    () = cancel.cancelled() => return,
                    state = states.recv() => match state {
                        Some(state) => state,
                        None => return,
                    },
                };
                let legs = routed.lock().unwrap_or_else(|e| e.into_inner());
                // A leg that has gone no longer listens: the change is dropped, as it was
                // when each leg's channel closed with it.
                if let Some(leg) = legs.get(&dialog_id(&state).call_id) {
                    let _ = leg.unbounded_send(Box::new(state));
                }
            }
        });
        DialogStates { sender, legs }
    }

    /// The sender to make a dialog with, once its leg is registered.
    pub fn sender(&self) -> DialogStateSender {
        self.sender.clone()
    }

    /// The changes of the dialogs with this Call-ID, from now on: register before the dialog
    /// is made, or its first change could go unheard. None if a leg has it already.
    pub fn register(&self, call_id: &str) -> Option<LegStates> {
        let mut legs = self.legs.lock().unwrap_or_else(|e| e.into_inner());
        if legs.contains_key(call_id) {
            return None;
        }
        let (sender, receiver) = unbounded();
        legs.insert(call_id.to_owned(), sender);
        Some(LegStates {
            receiver,
            call_id: call_id.to_owned(),
            legs: self.legs.clone(),
        })
    }
}

/// One leg's dialog changes. Dropping it stops the handing over.
pub(super) struct LegStates {
    receiver: UnboundedReceiver<Box<DialogState>>,
    /// Its key in `legs`.
    call_id: String,
    legs: Arc<Mutex<Legs>>,
}

impl LegStates {
    /// The next change, as [`mpsc::UnboundedReceiver::poll_recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<DialogState>> {
        Pin::new(&mut self.receiver)
            .poll_next(cx)
            .map(|state| state.map(|s| *s))
    }
}

impl Drop for LegStates {
    fn drop(&mut self) {
        self.legs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.call_id);
    }
}

fn dialog_id(state: &DialogState) -> &rsipstack::dialog::DialogId {
    match state {
        DialogState::Calling(id)
        | DialogState::Trying(id)
        | DialogState::Early(id, _)
        | DialogState::WaitAck(id, _)
        | DialogState::Confirmed(id, _)
        | DialogState::Updated(id, _, _)
        | DialogState::Publish(id, _, _)
        | DialogState::Notify(id, _, _)
        | DialogState::Refer(id, _, _)
        | DialogState::Message(id, _, _)
        | DialogState::Info(id, _, _)
        | DialogState::Options(id, _, _)
        | DialogState::Terminated(id, _) => id,
    }
}
