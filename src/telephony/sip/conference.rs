//! ConferenceCall over SIP by third-party call control: customer, agent and target each get a
//! leg of their own into the PBX's conference room (`--sip-conference-uri`, filled in as
//! `room`), calldesk in the middle of each pair as in RFC 3725 Flow IV:
//!
//! 1. The target is called first, without an offer (transfer.rs); its 200's offer goes into
//!    the room in the INVITE of the target's room leg; the room's answer goes back in the
//!    target's ACK.
//! 2. Then the customer and the agent's phone: an INVITE to the room without an offer; the
//!    room's offer in a re-INVITE to the party; the party's answer in the room leg's ACK.
//!
//! `Applied` once all three are in the room; a target that refuses or does not answer, or a
//! room that refuses a leg, leaves the customer with the agent as before (room legs and
//! target hung up, the customer and the agent joined again if the customer had moved):
//! `Refused`. Once conferenced, the call stays so until it ends: EndCall, the customer or the
//! agent's phone hanging up end every leg, room legs too; the target hanging up leaves the
//! other two in the room.
//!
//! The room legs are kept apart from the call's [`Legs`] (a second set, each under the role of
//! the party it carries), so that the call's own legs, and what is stored of them for a
//! restart (dialog_store.rs: the customer and the agent's phone; the target's INVITE while it
//! rings), are unchanged.

use std::convert::Infallible;
use std::pin::Pin;

use rsipstack::sip::{Header, Response, Scheme, Uri};
use tokio::time::Sleep;

use super::super::{SignalSink, SwitchOp, SwitchSignal};
use super::call::{next, refuse, Call, Event, Stop};
use super::dialog_store::AnsweredTarget;
use super::identity::{Presentation, INTERACTION_ID_HEADER};
use super::leg::{answer_in_dialog, far_end_hung_up, Leg, LegEvent, Role};
use super::legs::Legs;
use super::live::Commands;
use super::moves;
use super::outcome::{status_detail, InviteOutcome};
use super::sdp;
use super::transfer::{call_target, drop_target, ring, Ringing};
use crate::domain::TransferTarget;

/// Why other operations are refused while the conference is set up, or held.
const SETTING_UP: &str = "a conference is being set up";
const IN_CONFERENCE: &str = "the call is a conference";

impl Call {
    /// ConferenceCall: see the module's steps. Returns (`Ok`) when the conference did not
    /// happen; once it did, runs it until the call ends (`Err(stop)`).
    pub(super) async fn conference(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
        deadline: Pin<&mut Sleep>,
        target: TransferTarget,
        room: String,
        sink: SignalSink,
    ) -> Result<(), Stop> {
        let op = SwitchOp::Conference {
            target: target.clone(),
            room: room.clone(),
        };
        let room = match room_uri(self, &room) {
            Ok(uri) => uri,
            Err(why) => {
                refuse(&self.id, &sink, op, why).await;
                return Ok(());
            }
        };
        let mut rooms = Legs::default();
        let set_up = self
            .set_up(legs, &mut rooms, commands, &target, &room)
            .await;
        match set_up {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                self.give_back(legs, &mut rooms).await;
                refuse(&self.id, &sink, op, &why).await;
                return Ok(());
            }
            Err(stop) => {
                rooms.end_all(&self.engine).await;
                return Err(stop);
            }
        }
        tracing::info!(call_id = %self.id, "conferenced");
        // Adopted after a restart with the two parties' legs (docs/api.md §8.3).
        self.record_with(legs, AnsweredTarget::Left).await;
        let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
        let Err(stop) = self.conferenced(legs, &mut rooms, commands, deadline).await;
        rooms.end_all(&self.engine).await;
        Err(stop)
    }

    /// Steps 1 and 2: `Ok(Err(why))` when someone refused (the caller puts things back).
    async fn set_up(
        &mut self,
        legs: &mut Legs,
        rooms: &mut Legs,
        commands: &mut Commands,
        target: &TransferTarget,
        room: &Uri,
    ) -> Result<Result<(), String>, Stop> {
        let engine = self.engine.clone();
        if let Err(why) = call_target(&engine, &self.id, legs, target) {
            return Ok(Err(why));
        }
        // Its INVITE stored while it rings: a restart CANCELs it.
        self.record(legs).await;
        let deadline = tokio::time::sleep(engine.config.no_answer_timeout);
        tokio::pin!(deadline);
        let answered = loop {
            match ring(&engine, &self.id, legs, commands, deadline.as_mut()).await? {
                Ringing::Answered(answered) => break answered,
                Ringing::Gone(why) => return Ok(Err(why)),
                Ringing::Changed => self.record(legs).await,
                Ringing::Switch(op, sink) => refuse(&self.id, &sink, op, SETTING_UP).await,
            }
        };
        // 1. The target's offer into the room, the room's answer in the target's ACK.
        if !sdp::has_media(answered.body()) {
            legs.get_mut(Role::Target)?
                .ack(&engine, &answered, None)
                .await;
            let why = "the target's 200 OK carried no SDP offer";
            return Ok(Err(drop_target(&engine, legs, why).await));
        }
        let offer = String::from_utf8_lossy(answered.body()).into_owned();
        let entered = self
            .enter(legs, rooms, commands, Role::Target, room, Some(offer))
            .await?;
        let target_leg = legs.get_mut(Role::Target)?;
        match entered {
            Ok((room_200, answer)) => {
                // The room answered the target's offer: its ACK carries nothing.
                rooms
                    .get_mut(Role::Target)?
                    .ack(&engine, &room_200, None)
                    .await;
                let to_target = sdp::restamp(&answer, &mut target_leg.origin);
                target_leg
                    .ack(&engine, &answered, Some(to_target.clone()))
                    .await;
                target_leg.last_sdp = Some(to_target);
            }
            Err(why) => {
                // Its 200 carried an offer: the ACK answers it, with no media, before the BYE.
                let mut origin = sdp::Origin::new(engine.local.ip());
                let nothing = sdp::offer_without_media(&mut origin);
                target_leg.ack(&engine, &answered, Some(nothing)).await;
                return Ok(Err(drop_target(&engine, legs, &why).await));
            }
        }
        // 2. The customer, then the agent's phone.
        for party in [Role::Customer, Role::Agent] {
            let (room_200, offer) =
                match self.enter(legs, rooms, commands, party, room, None).await? {
                    Ok(answered) => answered,
                    Err(why) => return Ok(Err(why)),
                };
            let leg = legs.get_mut(party)?;
            let answer = moves::offer_to(&engine, leg, &offer).await;
            let room_leg = rooms.get_mut(party)?;
            match answer {
                Ok(answer) => {
                    let to_room = sdp::restamp(&answer, &mut room_leg.origin);
                    room_leg
                        .ack(&engine, &room_200, Some(to_room.clone()))
                        .await;
                    room_leg.last_sdp = Some(to_room);
                }
                Err(why) => {
                    let nothing = sdp::offer_without_media(&mut room_leg.origin);
                    room_leg.ack(&engine, &room_200, Some(nothing)).await;
                    return Ok(Err(why));
                }
            }
        }
        self.held = false;
        Ok(Ok(()))
    }

    /// INVITEs the room for `party` (with `offer`, or without: the room offers) and waits for
    /// its 200: `Ok((200, its SDP))`, the 200 not ACKed yet (unless it carried no SDP).
    async fn enter(
        &mut self,
        legs: &mut Legs,
        rooms: &mut Legs,
        commands: &mut Commands,
        party: Role,
        room: &Uri,
        offer: Option<String>,
    ) -> Result<Result<(Response, String), String>, Stop> {
        let engine = self.engine.clone();
        let mut origin = sdp::Origin::new(engine.local.ip());
        let offer = offer.map(|offer| sdp::restamp(&offer, &mut origin));
        let presentation = Presentation {
            display_name: None,
            headers: vec![Header::Other(INTERACTION_ID_HEADER.into(), self.id.clone())],
        };
        let caller = engine.caller_uri(engine.caller_id(""));
        let mut leg = match Leg::start(
            &engine,
            party,
            room.clone(),
            caller,
            presentation,
            offer.clone(),
            None,
        ) {
            Ok(leg) => leg,
            Err(e) => return Ok(Err(format!("conference room: {e}"))),
        };
        leg.origin = origin;
        tracing::info!(call_id = %self.id, sip_call_id = %leg.sip_call_id(), party = party.name(), "calling the conference room");
        rooms.add(leg);
        let outcome = loop {
            let room_event = std::pin::pin!(rooms.next_event());
            match next(commands, legs, room_event).await? {
                Event::Done((role, LegEvent::Invite(outcome))) if role == party => break outcome,
                Event::Done((_, LegEvent::State(state))) => answer_in_dialog(state).await,
                Event::Done((_, LegEvent::Invite(_))) => {}
                Event::Switch(op, sink, _) => refuse(&self.id, &sink, op, SETTING_UP).await,
                Event::Leg(_, LegEvent::State(state)) => answer_in_dialog(state).await,
                Event::Leg(_, LegEvent::Invite(_)) => {}
            }
        };
        let why = match outcome {
            InviteOutcome::Answered(response) => {
                let room_leg = rooms.get_mut(party)?;
                room_leg.confirmed = true;
                if !sdp::has_media(response.body()) {
                    room_leg.ack(&engine, &response, None).await;
                    return Ok(Err("the conference room answered without SDP".to_owned()));
                }
                room_leg.last_sdp = offer;
                let body = String::from_utf8_lossy(response.body()).into_owned();
                return Ok(Ok((response, body)));
            }
            InviteOutcome::Refused(response) => {
                format!("conference room: {}", status_detail(&response))
            }
            InviteOutcome::NoResponse => "conference room: no response".to_owned(),
            InviteOutcome::Error(e) => format!("conference room: {e}"),
        };
        if let Some(mut room_leg) = rooms.remove(party) {
            // Its INVITE is over: nothing to CANCEL.
            room_leg.ended = true;
            engine.dialogs.remove_dialog(&room_leg.id());
        }
        Ok(Err(why))
    }

    /// After a failed set-up: room legs and target hung up, the customer back with the agent
    /// (if it had moved into the room: joined again as CancelConsult does; else resumed).
    async fn give_back(&mut self, legs: &mut Legs, rooms: &mut Legs) {
        let engine = self.engine.clone();
        let customer_moved = rooms.get_mut(Role::Customer).is_ok();
        rooms.end_all(&engine).await;
        if let Some(mut target) = legs.remove(Role::Target) {
            target.end(&engine).await;
        }
        if customer_moved {
            if let Ok((customer, agent)) = legs.pair_mut(Role::Customer, Role::Agent) {
                if let Err(why) = moves::join(&engine, customer, agent).await {
                    tracing::warn!(call_id = %self.id, %why, "could not give the customer back after a failed conference");
                }
            }
        }
        self.record(legs).await;
    }

    /// The conference, until the call ends; the target may leave it.
    async fn conferenced(
        &mut self,
        legs: &mut Legs,
        rooms: &mut Legs,
        commands: &mut Commands,
        mut deadline: Pin<&mut Sleep>,
    ) -> Result<Infallible, Stop> {
        loop {
            let happened = {
                let until = std::pin::pin!(async {
                    tokio::select! {
                        biased;
                        event = rooms.next_event() => Some(event),
                        () = deadline.as_mut() => None,
                    }
                });
                next(commands, legs, until).await
            };
            let event = match happened {
                Err(Stop::HungUp(Role::Target)) => {
                    tracing::info!(call_id = %self.id, "the conference's target hung up");
                    if let Some(mut leg) = legs.remove(Role::Target) {
                        leg.ended = true;
                        self.engine.dialogs.remove_dialog(&leg.id());
                    }
                    if let Some(mut room_leg) = rooms.remove(Role::Target) {
                        room_leg.end(&self.engine).await;
                    }
                    continue;
                }
                other => other?,
            };
            match event {
                Event::Switch(op, sink, _) => refuse(&self.id, &sink, op, IN_CONFERENCE).await,
                Event::Leg(_, LegEvent::State(state)) => answer_in_dialog(state).await,
                Event::Leg(_, LegEvent::Invite(_)) => {}
                Event::Done(Some((party, LegEvent::State(state)))) => {
                    if !far_end_hung_up(&state) {
                        answer_in_dialog(state).await;
                        continue;
                    }
                    if let Ok(room_leg) = rooms.get_mut(party) {
                        room_leg.ended = true;
                        self.engine.dialogs.remove_dialog(&room_leg.id());
                    }
                    if party == Role::Target {
                        // The target is out of the room: hang its phone up, the others stay.
                        rooms.remove(Role::Target);
                        if let Some(mut leg) = legs.remove(Role::Target) {
                            leg.end(&self.engine).await;
                        }
                        continue;
                    }
                    tracing::info!(call_id = %self.id, party = party.name(), "the conference room hung up");
                    return Err(Stop::Report(
                        SwitchSignal::AgentHangup,
                        "the conference room hung up".to_owned(),
                    ));
                }
                Event::Done(Some((_, LegEvent::Invite(_)))) => {}
                Event::Done(None) => return Err(self.max_call_duration()),
            }
        }
    }
}

/// The room's URI: the template filled in by the call manager, a `sip:` or `sips:` URI.
fn room_uri(call: &Call, room: &str) -> Result<Uri, &'static str> {
    Uri::try_from(room)
        .ok()
        .filter(|uri| matches!(uri.scheme, Some(Scheme::Sip | Scheme::Sips)))
        .map(|uri| call.engine.with_transport(uri))
        .ok_or("--sip-conference-uri is not a SIP URI")
}
