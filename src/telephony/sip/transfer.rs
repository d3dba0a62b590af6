//! Blind transfer over SIP (TransferCall) by third-party call control, the moves of RFC 3725
//! Flow IV once more: the target is called without an offer; its 200's offer goes to the
//! customer in a re-INVITE; the customer's answer goes back in the target's ACK; the agent's
//! phone gets a BYE. The target's leg then takes the agent's place ([`Role::Agent`]), so that
//! hold, the hang-ups and the call's end work on it unchanged.
//!
//! Until the target answers, the customer stays with the agent: a target that refuses or does
//! not answer (or a customer that refuses the target's media) leaves the call as it was.

use std::pin::Pin;
use std::sync::Arc;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::sip::{Header, Response, StatusCodeKind};
use tokio::time::Sleep;
use tracing::Instrument;

use super::super::{SignalSink, SwitchOp, SwitchSignal};
use super::call::{next, Event, Stop};
use super::config::short_duration;
use super::conformance::invite_headers;
use super::engine::Engine;
use super::identity::{Presentation, INTERACTION_ID_HEADER};
use super::leg::{answer_in_dialog, Leg, LegEvent, Role};
use super::legs::Legs;
use super::live::Commands;
use super::outcome::{status_detail, InviteOutcome};
use super::sdp;
use crate::domain::TransferTarget;

/// Hands the customer of the connected call `call_id` to `target`. `Ok(Ok(()))`: the customer
/// talks with the target, whose leg is now the call's [`Role::Agent`]; `Ok(Err(why))`: nothing
/// changed; `Err(stop)`: the call ends (someone hung up meanwhile, or EndCall).
pub(super) async fn blind(
    engine: &Arc<Engine>,
    call_id: &str,
    legs: &mut Legs,
    commands: &mut Commands,
    target: &TransferTarget,
) -> Result<Result<(), String>, Stop> {
    if let Err(why) = call_target(engine, call_id, legs, target) {
        return Ok(Err(why));
    }
    let deadline = tokio::time::sleep(engine.config.no_answer_timeout);
    tokio::pin!(deadline);
    let offer = loop {
        match ring(engine, call_id, legs, commands, deadline.as_mut()).await? {
            Ringing::Answered(offer) => break offer,
            Ringing::Gone(why) => return Ok(Err(why)),
            Ringing::Changed => legs.report(),
            Ringing::Switch(op, sink) => {
                let refused = SwitchSignal::Refused(op);
                let _ = sink
                    .send_with_detail(call_id, refused, "a transfer is under way")
                    .await;
            }
        }
    };

    let target = legs.get_mut(Role::Target)?;
    if !sdp::has_media(offer.body()) {
        target.ack(engine, &offer, None).await;
        return Ok(Err(drop_target(
            engine,
            legs,
            "the target's 200 OK carried no SDP offer",
        )
        .await));
    }
    // The customer gets the target's media; its answer goes to the target in the ACK.
    let customer = legs.get_mut(Role::Customer)?;
    let to_customer = sdp::restamp(&String::from_utf8_lossy(offer.body()), &mut customer.origin);
    let dialog = match customer.dialog(engine) {
        Ok(dialog) => dialog.clone(),
        Err(why) => return Ok(Err(drop_target(engine, legs, &why).await)),
    };
    let result = dialog
        .reinvite_with_glare_retry(
            Some(invite_headers(true)),
            Some(to_customer.clone().into_bytes()),
            2,
        )
        .instrument(tracing::debug_span!(
            "sip.reinvite",
            leg = Role::Customer.name()
        ))
        .await;
    let answer = match result {
        Ok(Some(response)) if response.status_code.kind() == StatusCodeKind::Successful => {
            customer.ack(engine, &response, None).await;
            if sdp::has_media(response.body()) {
                Ok(String::from_utf8_lossy(response.body()).into_owned())
            } else {
                Err("the customer answered the target's media without SDP".to_owned())
            }
        }
        Ok(Some(response)) => Err(format!(
            "the customer refused the target's media: {}",
            status_detail(&response)
        )),
        Ok(None) | Err(_) => Err("the customer did not answer the re-INVITE".to_owned()),
    };
    let answer = match answer {
        Ok(answer) => {
            customer.last_sdp = Some(to_customer);
            answer
        }
        Err(why) => {
            // The customer's media is unchanged (still the agent's); the target still needs
            // its ACK before the BYE.
            legs.get_mut(Role::Target)?.ack(engine, &offer, None).await;
            return Ok(Err(drop_target(engine, legs, &why).await));
        }
    };
    let target = legs.get_mut(Role::Target)?;
    let to_target = sdp::restamp(&answer, &mut target.origin);
    target.ack(engine, &offer, Some(to_target.clone())).await;
    target.last_sdp = Some(to_target);

    // The agent's phone is done; the target takes its place.
    if let Some(mut agent) = legs.remove(Role::Agent) {
        agent.end(engine).await;
    }
    legs.get_mut(Role::Target)?.role = Role::Agent;
    tracing::info!(call_id, "transferred");
    Ok(Ok(()))
}

/// What happens while the target rings ([`ring`]).
// Large (a SIP response) but never stored: matched once, where it is made.
#[allow(clippy::large_enum_variant)]
pub(super) enum Ringing {
    /// It answered: its 200, which carries its offer (not ACKed yet).
    Answered(Response),
    /// It refused or did not answer (why): its leg is gone from the call.
    Gone(String),
    /// A switch operation arrived meanwhile: the caller answers it, then rings on.
    Switch(SwitchOp, SignalSink),
    /// Its leg changed (after a 401/407 its INVITE went out again, with a new branch and
    /// CSeq): the caller stores the call's dialogs again, then rings on.
    Changed,
}

/// Calls `target` (without an offer: its 200 brings one) as the call's [`Role::Target`] leg:
/// a number through the trunk, an agent at its phone. `Err(why)`: nothing was sent.
pub(super) fn call_target(
    engine: &Arc<Engine>,
    call_id: &str,
    legs: &mut Legs,
    target: &TransferTarget,
) -> Result<(), String> {
    let (uri, credential) = match target {
        TransferTarget::Number(number) => (engine.customer_uri(number), trunk_credential(engine)),
        TransferTarget::Agent(agent) => match engine.agent_uri(agent) {
            Ok(uri) => (engine.with_transport(uri), None),
            Err(why) => return Err(format!("transfer target: {why}")),
        },
    };
    let presentation = Presentation {
        display_name: None,
        headers: vec![Header::Other(
            INTERACTION_ID_HEADER.into(),
            call_id.to_owned(),
        )],
    };
    let caller = engine.caller_uri(engine.caller_id(""));
    let leg = Leg::start(
        engine,
        Role::Target,
        uri,
        caller,
        presentation,
        None,
        credential,
    )
    .map_err(|e| format!("transfer target: {e}"))?;
    tracing::info!(call_id, sip_call_id = %leg.sip_call_id(), "calling the transfer target");
    legs.add(leg);
    Ok(())
}

/// Waits for the ringing target's answer until `deadline` (`--sip-no-answer-timeout`, when
/// the target's leg is CANCELled); a switch operation or another leg's request meanwhile
/// comes back or is answered. `Err(stop)`: the call ends (someone hung up, EndCall).
pub(super) async fn ring(
    engine: &Arc<Engine>,
    call_id: &str,
    legs: &mut Legs,
    commands: &mut Commands,
    mut deadline: Pin<&mut Sleep>,
) -> Result<Ringing, Stop> {
    loop {
        match next(commands, legs, deadline.as_mut()).await? {
            Event::Switch(op, sink, _) => return Ok(Ringing::Switch(op, sink)),
            Event::Leg(Role::Target, LegEvent::Invite(outcome)) => {
                let why = match outcome {
                    InviteOutcome::Answered(response) => {
                        legs.get_mut(Role::Target)?.confirmed = true;
                        return Ok(Ringing::Answered(response));
                    }
                    InviteOutcome::Refused(response) => status_detail(&response),
                    InviteOutcome::NoResponse => "transfer target: no response".to_owned(),
                    InviteOutcome::Error(e) => format!("transfer target: {e}"),
                };
                tracing::info!(call_id, %why, "the transfer target refused");
                // Its INVITE is over: nothing to CANCEL.
                if let Some(mut target) = legs.remove(Role::Target) {
                    target.ended = true;
                    engine.dialogs.remove_dialog(&target.id());
                }
                return Ok(Ringing::Gone(why));
            }
            Event::Leg(Role::Target, LegEvent::State(state)) => {
                answer_in_dialog(state).await;
                return Ok(Ringing::Changed);
            }
            Event::Leg(_, LegEvent::State(state)) => answer_in_dialog(state).await,
            Event::Leg(_, LegEvent::Invite(_)) => {}
            Event::Done(()) => {
                if let Some(mut target) = legs.remove(Role::Target) {
                    target.end(engine).await;
                }
                let timeout = engine.config.no_answer_timeout;
                return Ok(Ringing::Gone(format!(
                    "the target did not answer within {}",
                    short_duration(timeout)
                )));
            }
        }
    }
}

/// The credential for the trunk's challenges, as the customer's INVITE uses it.
fn trunk_credential(engine: &Engine) -> Option<Credential> {
    engine.config.credential.as_ref().map(|c| Credential {
        username: c.user.clone(),
        password: c.password.clone(),
        realm: None,
        auth_username: None,
    })
}

/// Hangs up the answered target after a failure; returns `why`.
pub(super) async fn drop_target(engine: &Arc<Engine>, legs: &mut Legs, why: &str) -> String {
    if let Some(mut target) = legs.remove(Role::Target) {
        target.end(engine).await;
    }
    why.to_owned()
}
