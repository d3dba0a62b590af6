//! The messages calldesk leaves in rsipstack's finished transactions, forgotten after 64*T1.
//!
//! The endpoint answers a retransmitted final response of a finished INVITE transaction with
//! the message kept for it: calldesk leaves its own ACKs there (ack.rs; abandon.rs for a
//! CANCELled INVITE), for 64*T1 as rsipstack does for its own. One task forgets them all, with
//! a timer queue: a sleeping task per ACK cost every call ~1.4 KiB for its first 32 s.

use std::future::poll_fn;

use rsipstack::sip::SipMessage;
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::key::TransactionKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

/// Where keys to forget go, to the task that forgets them.
pub(super) struct FinishedMessages {
    endpoint: EndpointInnerRef,
    /// One channel for the whole switch: its slots are keys, and a leg has none of its own.
    forget: mpsc::UnboundedSender<TransactionKey>,
}

impl FinishedMessages {
    /// Starts the task that forgets what is left; it ends with `cancel`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        endpoint: EndpointInnerRef,
        cancel: CancellationToken,
    ) -> FinishedMessages {
        let (forget, mut keys) = mpsc::unbounded_channel::<TransactionKey>();
        let finished = endpoint.clone();
        runtime.spawn(async move {
            let keep = finished.option.t1x64;
            let mut queue = DelayQueue::new();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    key = keys.recv() => match key {
                        Some(key) => {
                            queue.insert(key, keep);
                        }
                        None => return,
                    },
                    // An empty queue answers None: this branch then waits for the next key.
                    Some(expired) = poll_fn(|cx| queue.poll_expired(cx)) => {
                        finished.finished_transactions.remove(expired.get_ref());
                    }
                }
            }
        });
        FinishedMessages { endpoint, forget }
    }

    /// Leaves `message` as the answer to a retransmitted final response of the transaction
    /// `key`, for 64*T1.
    pub fn leave(&self, key: TransactionKey, message: SipMessage) {
        self.endpoint
            .finished_transactions
            .insert(key.clone(), Some(message));
        if self.forget.send(key.clone()).is_err() {
            // The switch is shutting down: nothing would forget it.
            self.endpoint.finished_transactions.remove(&key);
        }
    }
}
