//! Attended transfer over SIP (ConsultCall, then CompleteTransfer or CancelConsult) by
//! third-party call control, as a state machine the connected call runs until the
//! consultation ends:
//!
//! 1. **Consult**: the customer is put on hold as HoldCall does (`sendonly`, the agent's phone
//!    `inactive`); the target is called without an offer (transfer.rs: a number through the
//!    trunk, an agent at its phone); its 200's offer goes to the agent's phone in a re-INVITE,
//!    the phone's answer back in the target's ACK. `Applied` then; refused, unanswered or
//!    cancelled, the customer is resumed and `Refused` (the customer is with the agent again).
//! 2. **Consulting**, until one of:
//!    - CompleteTransfer: an offerless re-INVITE to the customer, its offer to the target, the
//!      target's answer in the customer's ACK ([`moves::join`]); the agent's phone gets a BYE
//!      and the target takes the agent's place, as after a blind transfer.
//!    - CancelConsult: the same move between the customer and the agent's phone, then a BYE
//!      to the target.
//!    - The target hanging up: the customer stays on hold, as the interaction says
//!      (`HOLD`/`CONSULTING`); CompleteTransfer is refused then, CancelConsult takes the
//!      customer back.
//!    - EndCall, the customer or the agent's phone hanging up: the call ends, every leg with
//!      it ([`Stop`], as in any phase).
//!
//! Every operation asked of the switch is answered once, `Applied` or `Refused`; the
//! consultation itself once too (`Applied` when the target answered), unless the call ends
//! first.
//!
//! The target's leg is stored with the call's dialogs (dialog_store.rs) from its INVITE on,
//! ringing and then answered, so that a restart mid-consultation CANCELs or BYEs it as it does
//! the customer and the agent's phone (abandon.rs); the dialogs are stored again without it
//! once the consultation is over (completed, cancelled, refused, the target gone).

use std::pin::Pin;

use rsipstack::dialog::dialog::DialogState;
use tokio::time::Sleep;

use super::super::{SignalSink, SwitchOp, SwitchSignal};
use super::call::{next, refuse, Call, Event, Stop};
use super::leg::{answer_in_dialog, LegEvent, Role};
use super::legs::Legs;
use super::live::Commands;
use super::moves;
use super::sdp;
use super::transfer::{call_target, drop_target, ring, Ringing};
use crate::domain::TransferTarget;

/// Why other operations are refused while a consultation is under way.
const UNDER_WAY: &str = "a consultation is under way";
/// Why CompleteTransfer is refused once the consulted target hung up.
const TARGET_GONE: &str = "the consulted target hung up";

/// How a consultation's target is reached, or why it is not: the customer is resumed then.
enum Reached {
    /// The agent's phone talks with the target.
    Consulting,
    /// The target refused, did not answer, or its media could not reach the agent (why).
    Not(String),
    /// CancelConsult while the target rang: answered already, the customer resumed.
    Cancelled,
}

impl Call {
    /// ConsultCall: see the module's steps. Returns once the consultation is over (the
    /// customer with the agent again, or with the target); `Err(stop)` ends the call.
    /// `deadline` is the call's `--max-call-duration`.
    pub(super) async fn consult(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
        deadline: Pin<&mut Sleep>,
        target: TransferTarget,
        sink: SignalSink,
    ) -> Result<(), Stop> {
        let op = SwitchOp::Consult {
            target: target.clone(),
        };
        if let Err(why) = self.hold_media(legs, true).await {
            refuse(&self.id, &sink, op, &why).await;
            return Ok(());
        }
        match self.reach(legs, commands, &target).await? {
            Reached::Consulting => {
                tracing::info!(call_id = %self.id, "consulting");
                // The target's answered leg stored with the others: a restart BYEs it.
                self.record(legs).await;
                let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
                self.consulting(legs, commands, deadline).await
            }
            Reached::Not(why) => {
                self.resume_after(legs).await;
                refuse(&self.id, &sink, op, &why).await;
                Ok(())
            }
            Reached::Cancelled => {
                refuse(&self.id, &sink, op, "the consultation was cancelled").await;
                Ok(())
            }
        }
    }

    /// Calls the target, and connects the agent's phone with it when it answers.
    async fn reach(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
        target: &TransferTarget,
    ) -> Result<Reached, Stop> {
        let engine = self.engine.clone();
        if let Err(why) = call_target(&engine, &self.id, legs, target) {
            return Ok(Reached::Not(why));
        }
        // Its INVITE stored while it rings: a restart CANCELs it.
        self.record(legs).await;
        let deadline = tokio::time::sleep(engine.config.no_answer_timeout);
        tokio::pin!(deadline);
        let answer = loop {
            match ring(&engine, &self.id, legs, commands, deadline.as_mut()).await? {
                Ringing::Answered(answer) => break answer,
                Ringing::Gone(why) => return Ok(Reached::Not(why)),
                Ringing::Changed => self.record(legs).await,
                Ringing::Switch(SwitchOp::CancelConsult, sink) => {
                    // Stop its ringing (CANCEL), then the customer back.
                    if let Some(mut leg) = legs.remove(Role::Target) {
                        leg.end(&engine).await;
                    }
                    self.resume_after(legs).await;
                    let applied = SwitchSignal::Applied(SwitchOp::CancelConsult);
                    let _ = sink.send(&self.id, applied).await;
                    return Ok(Reached::Cancelled);
                }
                Ringing::Switch(op, sink) => refuse(&self.id, &sink, op, UNDER_WAY).await,
            }
        };
        let target_leg = legs.get_mut(Role::Target)?;
        if !sdp::has_media(answer.body()) {
            target_leg.ack(&engine, &answer, None).await;
            let why = "the target's 200 OK carried no SDP offer";
            return Ok(Reached::Not(drop_target(&engine, legs, why).await));
        }
        let offer = String::from_utf8_lossy(answer.body()).into_owned();
        let agent = legs.get_mut(Role::Agent)?;
        match moves::offer_to(&engine, agent, &offer).await {
            Ok(from_agent) => {
                let target_leg = legs.get_mut(Role::Target)?;
                let to_target = sdp::restamp(&from_agent, &mut target_leg.origin);
                target_leg
                    .ack(&engine, &answer, Some(to_target.clone()))
                    .await;
                target_leg.last_sdp = Some(to_target);
                Ok(Reached::Consulting)
            }
            Err(why) => {
                // The target still needs its ACK before the BYE.
                legs.get_mut(Role::Target)?
                    .ack(&engine, &answer, None)
                    .await;
                Ok(Reached::Not(drop_target(&engine, legs, &why).await))
            }
        }
    }

    /// Step 2: the agent talks with the target, the customer waits on hold, until the
    /// consultation is completed or cancelled.
    async fn consulting(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<(), Stop> {
        // The target hung up: the customer waits on hold until CancelConsult.
        let mut target_gone = false;
        loop {
            let event = match next(commands, legs, deadline.as_mut()).await {
                Err(Stop::HungUp(Role::Target)) => {
                    tracing::info!(call_id = %self.id, "the consulted target hung up");
                    if let Some(mut leg) = legs.remove(Role::Target) {
                        // Its dialog is over: nothing to send on it.
                        leg.ended = true;
                        self.engine.dialogs.remove_dialog(&leg.id());
                    }
                    self.record(legs).await;
                    target_gone = true;
                    continue;
                }
                other => other?,
            };
            match event {
                Event::Switch(SwitchOp::CompleteTransfer { new_call_id }, sink, _) => {
                    let result = match target_gone {
                        true => Err(TARGET_GONE.to_owned()),
                        false => self.complete(legs).await,
                    };
                    let op = SwitchOp::CompleteTransfer {
                        new_call_id: new_call_id.clone(),
                    };
                    match result {
                        Ok(()) => {
                            let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
                            self.handed_over(legs, new_call_id).await;
                            return Ok(());
                        }
                        Err(why) => refuse(&self.id, &sink, op, &why).await,
                    }
                }
                Event::Switch(SwitchOp::CancelConsult, sink, _) => {
                    let op = SwitchOp::CancelConsult;
                    match self.take_back(legs).await {
                        Ok(()) => {
                            self.record(legs).await;
                            let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
                            return Ok(());
                        }
                        Err(why) => refuse(&self.id, &sink, op, &why).await,
                    }
                }
                Event::Switch(op, sink, _) => refuse(&self.id, &sink, op, UNDER_WAY).await,
                Event::Leg(_, LegEvent::State(state)) => answer_in_dialog(state).await,
                Event::Leg(_, LegEvent::Invite(_)) => {}
                Event::Done(()) => return Err(self.max_call_duration()),
            }
        }
    }

    /// CompleteTransfer: the customer joined with the target, the agent's phone hung up; the
    /// target's leg is the call's agent leg from now on. Refused, nothing changed.
    async fn complete(&mut self, legs: &mut Legs) -> Result<(), String> {
        let engine = self.engine.clone();
        let (customer, target) = legs
            .pair_mut(Role::Customer, Role::Target)
            .map_err(|_| "no consultation is under way".to_owned())?;
        if target
            .live_dialog()
            .is_some_and(|dialog| matches!(dialog.state(), DialogState::Terminated(..)))
        {
            // Its BYE is in, not yet taken from the leg's events.
            return Err(TARGET_GONE.to_owned());
        }
        moves::join(&engine, customer, target).await?;
        self.held = false;
        if let Some(mut agent) = legs.remove(Role::Agent) {
            agent.end(&engine).await;
        }
        if let Ok(target) = legs.get_mut(Role::Target) {
            target.role = Role::Agent;
        }
        tracing::info!(call_id = %self.id, "transferred after a consultation");
        Ok(())
    }

    /// CancelConsult: the customer joined with the agent's phone again, then the target hung
    /// up (if it has not already). Refused, nothing changed.
    async fn take_back(&mut self, legs: &mut Legs) -> Result<(), String> {
        let engine = self.engine.clone();
        let (customer, agent) = legs
            .pair_mut(Role::Customer, Role::Agent)
            .map_err(|_| "call not connected".to_owned())?;
        moves::join(&engine, customer, agent).await?;
        self.held = false;
        if let Some(mut target) = legs.remove(Role::Target) {
            target.end(&engine).await;
        }
        tracing::info!(call_id = %self.id, "consultation cancelled");
        Ok(())
    }

    /// The consultation did not happen: the customer and the agent's phone off hold, and the
    /// dialogs stored without the target (a later restart adopts the call).
    async fn resume_after(&mut self, legs: &mut Legs) {
        if let Err(why) = self.hold_media(legs, false).await {
            // The interaction says CONNECTED: the agent may hold and resume to try again.
            tracing::warn!(call_id = %self.id, %why, "could not resume the customer after a consultation")
        }
        self.record(legs).await;
    }
}
