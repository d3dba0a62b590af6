//! The telephony boundary: how the call manager asks a switch to place and hang up calls, and
//! how the switch reports what happens to them.
//!
//! A backend gets each call's id with the dial and reports back through a [`SignalSink`], so
//! the call manager never waits on the switch: acknowledgements and call progress arrive as
//! messages like any other. The only backend today is the deterministic [`SimSwitch`].

mod sim;

pub use sim::{SimSwitch, SimTimings};

use tokio::sync::mpsc;

/// What a switch reports about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchSignal {
    /// The switch accepted the dial: the call exists.
    Acknowledged,
    Ringing,
    Answered,
    Busy,
    NoAnswer,
    Failed,
    RemoteHangup,
}

/// Where a switch sends its signals: `(call id, signal)`, in the order they happened.
#[derive(Debug, Clone)]
pub struct SignalSink {
    tx: mpsc::Sender<(String, SwitchSignal)>,
}

impl SignalSink {
    pub fn new(tx: mpsc::Sender<(String, SwitchSignal)>) -> Self {
        Self { tx }
    }

    /// Reports a signal; false once the call manager is gone (the switch may stop then).
    pub async fn send(&self, call_id: &str, signal: SwitchSignal) -> bool {
        self.tx.send((call_id.to_owned(), signal)).await.is_ok()
    }
}

/// A telephony backend. Every method returns at once; outcomes arrive as signals.
pub trait Telephony: Send + Sync + 'static {
    /// Starts dialing `phone_number` (normalized) for call `call_id`. The switch reports
    /// `Acknowledged` first, then progress, through `signals`.
    fn originate(&self, call_id: &str, phone_number: &str, signals: SignalSink);

    /// Hangs up (or cancels) the call. Signals the switch sends afterwards are ignored.
    fn hangup(&self, call_id: &str);
}
