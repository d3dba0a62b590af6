//! The telephony boundary: how the call manager asks a switch to place, hold and hang up calls,
//! and how the switch reports what happens to them.
//!
//! A backend gets each call's id with the dial and reports back through a [`SignalSink`], so
//! the call manager never waits on the switch: acknowledgements, call progress and the outcome
//! of a hold arrive as messages like any other.

pub mod pacing;
mod sim;
pub mod sip;

pub use pacing::{Pacer, PacingLimits};
pub use sim::{SimSwitch, SimTimings};

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use crate::domain::dialog::CallDialogs;
use crate::domain::{AssociatedObject, TransferTarget};

/// One dial the call manager asks for.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The interaction's id: every signal about this call carries it.
    pub call_id: String,
    /// Whose call it is: a switch that rings the agent's own phone first looks it up by this.
    pub agent_id: String,
    /// The customer's number, normalized to E.164 (`+12025550100`).
    pub phone_number: String,
    /// The caller ID to present to the customer (E.164); empty for the switch's own.
    pub caller_id: String,
    /// The CRM record the call is about: the agent's phone shows its display name, and the
    /// PBX's screen pop gets its id and type (SIP User-to-User).
    pub associated_object: Option<AssociatedObject>,
}

/// What a switch reports about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchSignal {
    /// The switch accepted the dial: the call exists.
    Acknowledged,
    /// The customer's side is ringing (SIP 180 or 183).
    Ringing,
    /// The customer answered and both sides are connected.
    Answered,
    Busy,
    NoAnswer,
    Failed,
    /// The customer hung up.
    RemoteHangup,
    /// The agent's own phone hung up.
    AgentHangup,
    /// An operation asked with [`Telephony::switch`] took effect.
    Applied(SwitchOp),
    /// The far end refused that operation: the call is as it was before.
    Refused(SwitchOp),
    /// Trunk pacing gave the dial up before it reached the switch: no capacity was free in
    /// time. Nothing was dialed.
    TrunkBusy {
        retry_after: Duration,
    },
    /// The trunk pushed back (SIP 503, with its Retry-After if any): a hint for pacing, sent
    /// before the call's own end signal; the call manager ignores it.
    Pushback {
        retry_after: Option<Duration>,
    },
    /// The call's dialogs changed (it connected, it was held or resumed): the report's
    /// `dialogs` is what the store keeps, so that a restart can adopt the call
    /// ([`Telephony::adopt`]). Nothing else changes.
    Dialogs,
}

/// A change the switch makes to a connected call, asked with [`Telephony::switch`]: one
/// variant per operation, so that a new one is a lifecycle rule plus each backend's way of
/// carrying it out.
///
/// Hold, Resume, CompleteTransfer and CancelConsult are answered as soon as the media moved.
/// Transfer, Consult and Conference call a third party first: `Applied` once the target
/// answered (and, for Transfer, the customer is with it and the agent's leg is gone),
/// `Refused` when it did not (busy, no answer, failure), the customer then back with the agent
/// as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOp {
    /// Put the connected call on hold (HoldCall).
    Hold,
    /// Take a held call back (ResumeCall).
    Resume,
    /// TransferCall: call `target`, hand it the customer, hang up the agent's leg. With
    /// `new_call_id` (a target agent's new interaction) the call goes on under that id: its
    /// later signals (the customer or the target agent hanging up) carry it.
    Transfer {
        target: TransferTarget,
        new_call_id: Option<String>,
    },
    /// ConsultCall: hold the customer, call `target`, connect the agent with it.
    Consult { target: TransferTarget },
    /// CompleteTransfer: join the customer and the consulted target, hang up the agent's leg;
    /// with `new_call_id` as for Transfer.
    CompleteTransfer { new_call_id: Option<String> },
    /// CancelConsult: hang up the consulted target (or stop ringing it), resume the customer.
    CancelConsult,
    /// ConferenceCall: call `target` and move customer, agent and target into `room` (the
    /// `--sip-conference-uri` template, filled in).
    Conference {
        target: TransferTarget,
        room: String,
    },
}

impl SwitchOp {
    /// Whether the operation calls a third party first (answered when it answers or not).
    pub fn calls_target(&self) -> bool {
        matches!(
            self,
            Self::Transfer { .. } | Self::Consult { .. } | Self::Conference { .. }
        )
    }
}

/// A signal about one call, and why, where the switch knows (`486 Busy Here`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchReport {
    pub call_id: String,
    pub signal: SwitchSignal,
    /// A short human-readable cause: the SIP status and reason phrase, or what timed out.
    /// Never credentials, SDP or anything the agent typed.
    pub detail: Option<String>,
    /// With [`SwitchSignal::Dialogs`]: the call's dialogs as they are now (boxed: rare).
    pub dialogs: Option<Box<CallDialogs>>,
}

/// Sees every report a sink sends, before the call manager does (trunk pacing).
pub type SignalObserver = Arc<dyn Fn(&SwitchReport) + Send + Sync>;

/// Where a switch sends its reports, in the order things happened.
#[derive(Clone)]
pub struct SignalSink {
    tx: mpsc::Sender<SwitchReport>,
    /// A layer in front of the backend that watches the call's signals, if any.
    observer: Option<SignalObserver>,
}

impl std::fmt::Debug for SignalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalSink")
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl SignalSink {
    pub fn new(tx: mpsc::Sender<SwitchReport>) -> Self {
        Self { tx, observer: None }
    }

    /// The same sink, with `observer` shown every report first.
    pub fn observed(mut self, observer: SignalObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Whether the call manager is gone: nobody would hear about a call placed now.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Reports a signal; false once the call manager is gone (the switch may stop then).
    pub async fn send(&self, call_id: &str, signal: SwitchSignal) -> bool {
        self.report(call_id, signal, None).await
    }

    /// Reports a signal with its cause.
    pub async fn send_with_detail(
        &self,
        call_id: &str,
        signal: SwitchSignal,
        detail: impl Into<String>,
    ) -> bool {
        self.report(call_id, signal, Some(detail.into())).await
    }

    /// Reports the call's dialogs as they are now ([`SwitchSignal::Dialogs`]).
    pub async fn send_dialogs(&self, call_id: &str, dialogs: CallDialogs) -> bool {
        let report = SwitchReport {
            call_id: call_id.to_owned(),
            signal: SwitchSignal::Dialogs,
            detail: None,
            dialogs: Some(Box::new(dialogs)),
        };
        self.tx.send(report).await.is_ok()
    }

    /// [`Self::send_dialogs`] from where nothing may wait: false (and nothing sent) when the
    /// call manager is gone or its queue of signals is full.
    pub fn try_send_dialogs(&self, call_id: &str, dialogs: CallDialogs) -> bool {
        let report = SwitchReport {
            call_id: call_id.to_owned(),
            signal: SwitchSignal::Dialogs,
            detail: None,
            dialogs: Some(Box::new(dialogs)),
        };
        self.tx.try_send(report).is_ok()
    }

    async fn report(&self, call_id: &str, signal: SwitchSignal, detail: Option<String>) -> bool {
        let report = SwitchReport {
            call_id: call_id.to_owned(),
            signal,
            detail,
            dialogs: None,
        };
        if let Some(observer) = &self.observer {
            observer(&report);
        }
        self.tx.send(report).await.is_ok()
    }
}

/// A telephony backend. Every method returns at once; outcomes arrive as signals.
pub trait Telephony: Send + Sync + 'static {
    /// Starts the call `dial.call_id`. The switch reports `Acknowledged` first (its first
    /// response of any kind), then progress, through `signals`.
    fn originate(&self, dial: Dial, signals: SignalSink);

    /// Hangs up (before the answer: cancels) every leg of the call. Signals the switch sends
    /// afterwards are ignored by the call manager.
    fn hangup(&self, call_id: &str);

    /// Carries out `op` on the connected call. Exactly one `Applied(op)` or `Refused(op)`
    /// (with the switch's words, e.g. the SIP status, as detail) follows through `signals`.
    fn switch(&self, call_id: &str, op: SwitchOp, signals: SignalSink);

    /// Takes up a connected call that a previous process (or another replica) placed, from
    /// the dialogs it reported ([`SwitchSignal::Dialogs`]): afterwards `hangup` and `switch`
    /// work on it as on a call this process placed, and its far ends hanging up are reported.
    /// False when this backend cannot (the simulated switch keeps nothing to adopt) or the
    /// dialogs do not make a call: the caller ends the interaction then.
    fn adopt(&self, call_id: &str, dialogs: CallDialogs, signals: SignalSink) -> bool {
        let _ = (call_id, dialogs, signals);
        false
    }

    /// Ends what a previous process (or another replica) left of a call it cannot take up (a
    /// leg still ringing, a transfer under way, dialogs that do not restore): CANCELs each
    /// ringing INVITE and hangs up each answered leg of `dialogs`, in the background. The
    /// call manager ends the interaction SERVER_RESTART meanwhile; nothing is reported back.
    /// A backend without stored dialogs (the simulated switch) has nothing to do.
    fn abandon(&self, call_id: &str, dialogs: CallDialogs) {
        let _ = (call_id, dialogs);
    }
}
