//! ConferenceCall over SIP: not carried out yet. Refused with a detail that says so; the
//! customer stays with the agent (`TRANSFER_FAILED`, then `CONNECTED`).

use tokio::sync::mpsc;

use super::super::{SignalSink, SwitchOp};
use super::call::{refuse, Call, Stop};
use super::legs::Legs;
use super::live::Command;
use crate::domain::TransferTarget;

/// Why ConferenceCall is refused over SIP (docs/guide/sip.md).
const NOT_YET: &str = "the SIP backend does not carry out conferences yet";

impl Call {
    /// ConferenceCall: refused, the call as it was.
    pub(super) async fn conference(
        &mut self,
        _legs: &mut Legs,
        _commands: &mut mpsc::Receiver<Command>,
        target: TransferTarget,
        room: String,
        sink: SignalSink,
    ) -> Result<(), Stop> {
        let op = SwitchOp::Conference { target, room };
        refuse(&self.id, &sink, op, NOT_YET).await;
        Ok(())
    }
}
