//! Adopting a connected call another process placed (a restart, a dead replica's calls): its
//! legs rebuilt from the stored dialogs (dialog_store.rs), registered as a live call, and run
//! from the connected phase on (call.rs `run_adopted`), so that hang-ups, holds and resumes,
//! and the far ends' BYEs, work on it as on a call this process placed.

use tracing::Instrument;

use super::super::SignalSink;
use super::{call, dialog_store, live, SipSwitch};
use crate::domain::dialog::CallDialogs;

impl SipSwitch {
    pub(super) fn adopt_call(
        &self,
        call_id: &str,
        dialogs: &CallDialogs,
        signals: SignalSink,
    ) -> bool {
        let legs = match dialog_store::restore(&self.engine, dialogs) {
            Ok(legs) => legs,
            Err(why) => {
                tracing::warn!(%call_id, why, "could not adopt the call's dialogs");
                return false;
            }
        };
        let (sender, commands) = live::command_queue();
        if !self.live.register(call_id, sender) {
            tracing::warn!(%call_id, "a call with this id is already live");
            return false;
        }
        tracing::info!(%call_id, held = dialogs.held, "adopted a connected call");
        self.runtime.spawn(
            call::run_adopted(
                self.engine.clone(),
                self.live.clone(),
                call_id.to_owned(),
                legs,
                dialogs.held,
                signals,
                commands,
            )
            .instrument(tracing::info_span!(parent: None, "sip.call", adopted = true)),
        );
        true
    }
}
