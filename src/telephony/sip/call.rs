//! One call, from the dial to its end, as a task: RFC 3725 Flow IV, in four phases over the
//! call's [`Legs`].
//!
//! 1. [`Call::ring_agent`]: INVITE the agent's phone with an offer that lets no media flow
//!    (`a=inactive`); its 200 is ACKed at once.
//! 2. [`Call::ring_customer`]: INVITE the customer (through the trunk) without a body: its 200
//!    carries the offer.
//! 3. [`Call::bridge`]: re-INVITE the agent's phone with the customer's offer; its 200 has the
//!    answer; ACK the phone, and send that answer in the ACK to the customer.
//! 4. [`Call::connected`]: until someone hangs up; holds and resumes re-INVITE both legs; a
//!    blind transfer hands the customer to its target (transfer.rs), a consultation runs
//!    until it is completed or cancelled (consult.rs), a conference until the call ends
//!    (conference.rs).
//!
//! Media then flows between the phone and the customer; calldesk never touches it.
//!
//! Every phase waits on the same things, through [`next`]: the switch's commands, every leg's
//! events, and one future of its own (a timer, a re-INVITE). A phase returns what the next one
//! needs, or a [`Stop`]: why the call ends, which [`Call::end`] carries out in one place.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::DialogState;
use rsipstack::sip::{Response, StatusCodeKind};
use tracing::Instrument;

use super::super::{Dial, SignalSink, SwitchOp, SwitchSignal};
use super::config::{is_plain_user, short_duration};
use super::conformance::invite_headers;
use super::dialog_store::{self, AnsweredTarget};
use super::engine::Engine;
use super::identity;
use super::leg::{answer_in_dialog, far_end_hung_up, Leg, LegEvent, Role};
use super::legs::{Legs, Missing, Reporter};
use super::live::{next_command, Command, Commands, LiveCalls};
use super::outcome::{agent_refused, customer_refused, pushback, status_detail, InviteOutcome};
use super::parked::PARK_AFTER;
use super::sdp::{self, Direction};
use crate::domain::{spans, TransferTarget};

/// Runs the call `dial` until it ends, then forgets it. The dial comes boxed: the task would
/// keep a `Dial` given by value (twice over) for the call's whole life.
pub(super) async fn run(
    engine: Arc<Engine>,
    live: Arc<LiveCalls>,
    dial: Box<Dial>,
    sink: SignalSink,
    mut commands: Commands,
) {
    let mut call = Call {
        engine,
        live: live.clone(),
        id: dial.call_id.clone(),
        sink,
        acknowledged: false,
        ringing: false,
        quiet: false,
        held: false,
        recorded: None,
    };
    let mut legs = Legs::default();
    // Boxed: what the set-up holds (the dial, the phases' futures) is freed once the call is
    // connected, where it spends its life (BENCHMARKS.md, SIP).
    let set_up = Box::pin(call.ring_and_bridge(dial, &mut legs, &mut commands)).await;
    let Err(stop) = match set_up {
        Ok(()) => call.connected(&mut legs, &mut commands).await,
        Err(stop) => Err(stop),
    };
    finish(&mut call, &mut legs, stop, &live).await;
}

/// Ends every leg for `stop`, then forgets the call.
async fn finish(call: &mut Call, legs: &mut Legs, stop: Stop, live: &LiveCalls) {
    // Boxed: ending (BYEs, CANCELs) is not part of what every live call holds.
    Box::pin(call.end(stop, legs)).await;
    // Its id, which a transfer to an agent may have changed.
    live.remove(&call.id);
    tracing::debug!(call_id = %call.id, "call over");
}

/// Goes on with a connected call another process placed (adopt.rs): its legs rebuilt from
/// the stored dialogs, the connected phase only.
pub(super) async fn run_adopted(
    engine: Arc<Engine>,
    live: Arc<LiveCalls>,
    id: String,
    mut legs: Legs,
    held: bool,
    sink: SignalSink,
    mut commands: Commands,
) {
    let mut call = Call {
        engine,
        live: live.clone(),
        id,
        sink,
        acknowledged: true,
        ringing: true,
        quiet: false,
        held,
        recorded: None,
    };
    let Err(stop) = call.connected(&mut legs, &mut commands).await;
    finish(&mut call, &mut legs, stop, &live).await;
}

pub(super) struct Call {
    /// The SIP endpoint, the dialogs and the configuration every leg uses.
    pub(super) engine: Arc<Engine>,
    /// The live calls, to go on under a transfer target agent's interaction id.
    pub(super) live: Arc<LiveCalls>,
    /// The call manager's id for the call: on every signal and log line.
    pub(super) id: String,
    /// Where the call's signals go to the call manager.
    sink: SignalSink,
    /// `Acknowledged` was reported: it comes first, once.
    acknowledged: bool,
    /// `Ringing` was reported: once, on the customer's first 180 or 183.
    ringing: bool,
    /// Hung up on request, or the call manager is gone: report nothing more.
    quiet: bool,
    /// The media is held (the customer `sendonly`, the agent's phone `inactive`), or the
    /// customer waits on hold while the agent consults (consult.rs).
    pub(super) held: bool,
    /// The dialogs last reported for the store, by their [`dialog_store::fingerprint`]: a
    /// report that changes nothing is not sent.
    pub(super) recorded: Option<u64>,
}

/// Why a call ends.
pub(super) enum Stop {
    /// Report this signal with this detail, then end every leg.
    Report(SwitchSignal, String),
    /// Hangup, Shutdown, or the switch forgot the call (`None`): end every leg quietly.
    Command(Option<Command>),
    /// The far end of this leg hung up: report it, then end the others.
    HungUp(Role),
    /// Nothing more to report (the call manager is gone): end every leg.
    Quiet,
}

/// The call fails with `detail`.
fn fail(detail: impl Into<String>) -> Stop {
    Stop::Report(SwitchSignal::Failed, detail.into())
}

impl From<Missing> for Stop {
    fn from(Missing(role): Missing) -> Stop {
        fail(format!("internal error: no {} leg", role.name()))
    }
}

/// What a phase hears while it waits.
// Large (a SIP response) but never stored: each event is matched once, where it is made.
#[allow(clippy::large_enum_variant)]
pub(super) enum Event<T> {
    /// A switch operation (hold, resume), for the request whose work is the span: only a
    /// connected call carries one out.
    Switch(SwitchOp, SignalSink, tracing::Span),
    /// Something happened on a leg: a state change, an in-dialog request, its INVITE's
    /// outcome (never its far end hanging up: that is [`Stop::HungUp`]).
    Leg(Role, LegEvent),
    /// The phase's own future (a timer, a re-INVITE) is done.
    Done(T),
}

/// The next thing that happens to the call: a command first, then the legs in order, then
/// `until`. A command to hang up (or the switch gone) and a far end hanging up end the call.
pub(super) async fn next<F: Future>(
    commands: &mut Commands,
    legs: &mut Legs,
    until: Pin<&mut F>,
) -> Result<Event<F::Output>, Stop> {
    tokio::select! {
        biased;
        command = next_command(commands) => match command {
            Some(Command::Switch { op, sink, span }) => Ok(Event::Switch(op, sink, span)),
            other => Err(Stop::Command(other)),
        },
        (role, event) = legs.next_event() => match event {
            LegEvent::State(state) if far_end_hung_up(&state) => Err(Stop::HungUp(role)),
            event => Ok(Event::Leg(role, event)),
        },
        output = until => Ok(Event::Done(output)),
    }
}

impl Call {
    /// The first three phases, until the call is connected or one of them stops it.
    async fn ring_and_bridge(
        &mut self,
        dial: Box<Dial>,
        legs: &mut Legs,
        commands: &mut Commands,
    ) -> Result<(), Stop> {
        self.ring_agent(&dial, legs, commands).await?;
        let offer = self.ring_customer(&dial, legs, commands).await?;
        self.bridge(legs, commands, &offer).await
    }

    /// 1. The agent's phone, with no media flowing; its 200 is ACKed at once.
    async fn ring_agent(
        &mut self,
        dial: &Dial,
        legs: &mut Legs,
        commands: &mut Commands,
    ) -> Result<(), Stop> {
        let engine = self.engine.clone();
        let agent_uri = engine.agent_uri(&dial.agent_id).map_err(fail)?;
        if !is_plain_user(&dial.phone_number) {
            return Err(fail("invalid phone number"));
        }
        let agent_uri = engine.with_transport(agent_uri);
        let caller = engine.local_uri(&dial.phone_number).map_err(fail)?;
        let mut origin = sdp::Origin::new(engine.local.ip());
        let offer = sdp::offer_without_media(&mut origin);
        let presentation = identity::agent_leg(
            &engine.presentation(),
            dial,
            &format!("sip:{}", engine.local),
        );
        let mut agent = Leg::start(
            &engine,
            Role::Agent,
            agent_uri,
            caller,
            presentation,
            Some(offer.clone()),
            None,
        )
        .map_err(|e| fail(format!("agent's phone: {e}")))?;
        agent.origin = origin;
        tracing::info!(call_id = %self.id, sip_call_id = %agent.sip_call_id(), "calling the agent's phone");
        legs.add(agent);
        self.record(legs).await;

        let timeout = engine.config.agent_answer_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let answer = loop {
            match next(commands, legs, deadline.as_mut()).await? {
                Event::Switch(op, sink, _) => self.not_connected(op, &sink).await,
                Event::Leg(
                    Role::Agent,
                    LegEvent::State(DialogState::Trying(_) | DialogState::Early(..)),
                ) => self.acknowledge().await,
                Event::Leg(_, LegEvent::State(state)) => answer_in_dialog(state).await,
                Event::Leg(Role::Agent, LegEvent::Invite(outcome)) => match outcome {
                    InviteOutcome::Answered(response) => break response,
                    InviteOutcome::Refused(response) => {
                        tracing::info!(call_id = %self.id, status = response.status_code.code(), "agent's phone refused");
                        return Err(fail(agent_refused(&response)));
                    }
                    InviteOutcome::NoResponse => return Err(fail("agent's phone: no response")),
                    InviteOutcome::Error(e) => return Err(fail(format!("agent's phone: {e}"))),
                },
                Event::Leg(_, LegEvent::Invite(_)) => {}
                Event::Done(()) => {
                    tracing::info!(call_id = %self.id, "agent's phone did not answer");
                    return Err(fail(format!(
                        "agent's phone did not answer within {}",
                        short_duration(timeout)
                    )));
                }
            }
        };
        self.acknowledge().await;
        let agent = legs.get_mut(Role::Agent)?;
        agent.confirmed = true;
        agent.ack(&engine, &answer, None).await;
        agent.last_sdp = Some(offer);
        if self.quiet {
            return Err(Stop::Quiet);
        }
        Ok(())
    }

    /// 2. The customer, without an offer: returns its 200, which carries one.
    async fn ring_customer(
        &mut self,
        dial: &Dial,
        legs: &mut Legs,
        commands: &mut Commands,
    ) -> Result<Response, Stop> {
        let engine = self.engine.clone();
        let credential = engine.config.credential.as_ref().map(|c| Credential {
            username: c.user.clone(),
            password: c.password.clone(),
            realm: None,
            auth_username: None,
        });
        let caller_id = engine.caller_id(&dial.caller_id);
        if caller_id.is_some_and(|c| !is_plain_user(c)) {
            return Err(fail("invalid caller ID"));
        }
        let presentation = identity::customer_leg(
            &engine.presentation(),
            dial,
            caller_id,
            &engine.trunk_host(),
        );
        let customer = Leg::start(
            &engine,
            Role::Customer,
            engine.customer_uri(&dial.phone_number),
            engine.caller_uri(caller_id),
            presentation,
            None,
            credential,
        )
        .map_err(|e| fail(format!("customer: {e}")))?;
        tracing::info!(call_id = %self.id, sip_call_id = %customer.sip_call_id(), "calling the customer");
        legs.add(customer);
        self.record(legs).await;

        let timeout = engine.config.no_answer_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let offer = loop {
            match next(commands, legs, deadline.as_mut()).await? {
                Event::Switch(op, sink, _) => self.not_connected(op, &sink).await,
                Event::Leg(Role::Customer, LegEvent::State(state)) => {
                    // After a 401/407 the INVITE was sent again (a new branch and CSeq).
                    self.record(legs).await;
                    if let DialogState::Early(_, response) = &state {
                        let code = response.status_code.code();
                        if (code == 180 || code == 183) && !self.ringing {
                            self.ringing = true;
                            self.report_plain(SwitchSignal::Ringing).await;
                        }
                    }
                }
                Event::Leg(_, LegEvent::State(state)) => answer_in_dialog(state).await,
                Event::Leg(Role::Customer, LegEvent::Invite(outcome)) => match outcome {
                    InviteOutcome::Answered(response) => break response,
                    InviteOutcome::Refused(response) => {
                        tracing::info!(call_id = %self.id, status = response.status_code.code(), "customer refused");
                        if let Some(retry_after) = pushback(&response) {
                            self.report_plain(SwitchSignal::Pushback { retry_after })
                                .await;
                        }
                        let (signal, detail) = customer_refused(&response);
                        return Err(Stop::Report(signal, detail));
                    }
                    InviteOutcome::NoResponse => return Err(fail("customer: no response")),
                    InviteOutcome::Error(e) => return Err(fail(format!("customer: {e}"))),
                },
                Event::Leg(_, LegEvent::Invite(_)) => {}
                Event::Done(()) => {
                    tracing::info!(call_id = %self.id, "customer did not answer");
                    let detail =
                        format!("customer did not answer within {}", short_duration(timeout));
                    return Err(Stop::Report(SwitchSignal::NoAnswer, detail));
                }
            }
        };
        let customer = legs.get_mut(Role::Customer)?;
        customer.confirmed = true;
        if !sdp::has_media(offer.body()) {
            customer.ack(&engine, &offer, None).await;
            return Err(fail("customer's 200 OK carried no SDP offer"));
        }
        Ok(offer)
    }

    /// 3. The customer's `offer` to the agent's phone; its answer in the customer's ACK.
    async fn bridge(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
        offer: &Response,
    ) -> Result<(), Stop> {
        let engine = self.engine.clone();
        let agent = legs.get_mut(Role::Agent)?;
        let to_agent = sdp::restamp(&String::from_utf8_lossy(offer.body()), &mut agent.origin);
        // rsipstack's `reinvite` adds no Content-Type for the body: calldesk passes it.
        let dialog = agent.dialog(&engine).map_err(fail)?.clone();
        let reinvite = dialog
            .reinvite(
                Some(invite_headers(true)),
                Some(to_agent.clone().into_bytes()),
            )
            .instrument(tracing::debug_span!(
                "sip.reinvite",
                leg = Role::Agent.name()
            ));
        tokio::pin!(reinvite);
        let result = loop {
            match next(commands, legs, reinvite.as_mut()).await {
                Ok(Event::Done(result)) => break result,
                Ok(Event::Switch(op, sink, _)) => self.not_connected(op, &sink).await,
                Ok(Event::Leg(_, LegEvent::State(state))) => answer_in_dialog(state).await,
                Ok(Event::Leg(_, LegEvent::Invite(_))) => {}
                Err(stop) => {
                    // The customer still waits for its ACK; it ends the session anyway.
                    if let Ok(customer) = legs.get_mut(Role::Customer) {
                        customer.ack(&engine, offer, None).await;
                    }
                    return Err(stop);
                }
            }
        };
        let agent = legs.get_mut(Role::Agent)?;
        let answer = match result {
            Ok(Some(response)) if response.status_code.kind() == StatusCodeKind::Successful => {
                agent.ack(&engine, &response, None).await;
                if sdp::has_media(response.body()) {
                    Ok(String::from_utf8_lossy(response.body()).into_owned())
                } else {
                    Err("agent's phone answered the customer's offer without SDP".to_owned())
                }
            }
            Ok(Some(response)) => Err(format!(
                "agent's phone refused the customer's media: {}",
                status_detail(&response)
            )),
            Ok(None) | Err(_) => Err("agent's phone did not answer the re-INVITE".to_owned()),
        };
        let answer = match answer {
            Ok(answer) => {
                agent.last_sdp = Some(to_agent);
                answer
            }
            Err(detail) => {
                legs.get_mut(Role::Customer)?
                    .ack(&engine, offer, None)
                    .await;
                return Err(fail(detail));
            }
        };
        let customer = legs.get_mut(Role::Customer)?;
        let to_customer = sdp::restamp(&answer, &mut customer.origin);
        customer
            .ack(&engine, offer, Some(to_customer.clone()))
            .await;
        customer.last_sdp = Some(to_customer);
        tracing::info!(call_id = %self.id, "connected");
        self.record(legs).await;
        self.report_plain(SwitchSignal::Answered).await;
        if self.quiet {
            return Err(Stop::Quiet);
        }
        Ok(())
    }

    /// 4. Connected, until someone hangs up or `--max-call-duration` passes.
    async fn connected(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
    ) -> Result<Infallible, Stop> {
        let limit = self.engine.config.max_call_duration;
        // Without a limit, a timer that never fires in the call's lifetime.
        let deadline = tokio::time::sleep(limit.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        // While it waits, its dialogs wait outside rsipstack's dialog layer (parked.rs), from
        // PARK_AFTER after the last event on.
        let mut park_at = Some(tokio::time::Instant::now() + PARK_AFTER);
        loop {
            let event = match park_at {
                None => next(commands, legs, deadline.as_mut()).await?,
                Some(at) => {
                    // Boxed: only a call that has not parked yet (or just acted) waits on it.
                    let mut wake = Box::pin(async {
                        tokio::select! {
                            biased;
                            () = deadline.as_mut() => false,
                            () = tokio::time::sleep_until(at) => true,
                        }
                    });
                    match next(commands, legs, wake.as_mut()).await? {
                        Event::Done(true) => {
                            legs.park(&self.engine);
                            park_at = None;
                            continue;
                        }
                        Event::Done(false) => Event::Done(()),
                        Event::Switch(op, sink, span) => Event::Switch(op, sink, span),
                        Event::Leg(role, event) => Event::Leg(role, event),
                    }
                }
            };
            park_at = Some(tokio::time::Instant::now() + PARK_AFTER);
            // Boxed: a live call spends its life waiting above, and what an event leads to (a
            // re-INVITE, a transfer) is rare and large; held inline, it and the event made
            // every live call's task ~0.7 KiB larger (BENCHMARKS.md, SIP).
            Box::pin(self.on_event(event, legs, commands, deadline.as_mut())).await?;
        }
    }

    /// What a connected call does with `event`. Each arm's work is boxed (a transfer, a
    /// consultation, a hold's re-INVITEs: KiB each): inline, every event (an in-dialog
    /// OPTIONS too) cost a box as large as the largest, 7.8 KiB; now 0.8 KiB.
    async fn on_event(
        &mut self,
        event: Event<()>,
        legs: &mut Legs,
        commands: &mut Commands,
        deadline: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Stop> {
        match event {
            Event::Switch(
                SwitchOp::Transfer {
                    target,
                    new_call_id,
                },
                sink,
                _,
            ) => Box::pin(self.transfer(legs, commands, target, new_call_id, sink)).await,
            Event::Switch(SwitchOp::Consult { target }, sink, _) => {
                // Until the consultation ends (consult.rs).
                Box::pin(self.consult(legs, commands, deadline, target, sink)).await
            }
            Event::Switch(SwitchOp::Conference { target, room }, sink, _) => {
                let conference = self.conference(legs, commands, deadline, target, room, sink);
                Box::pin(conference).await
            }
            Event::Switch(op, sink, span) => {
                let work = tracing::debug_span!(parent: None, "sip.switch", operation = ?op, trace_id = tracing::field::Empty);
                spans::continue_from(&work, &span);
                Box::pin(self.switch(legs, op, &sink).instrument(work)).await;
                Ok(())
            }
            Event::Leg(_, LegEvent::State(state)) => {
                Box::pin(answer_in_dialog(state)).await;
                Ok(())
            }
            Event::Leg(_, LegEvent::Invite(_)) => Ok(()),
            Event::Done(()) => Err(self.max_call_duration()),
        }
    }

    /// A blind transfer (transfer.rs), answered `Applied` or `Refused`; with `new_call_id`
    /// the call goes on under the target agent's interaction.
    async fn transfer(
        &mut self,
        legs: &mut Legs,
        commands: &mut Commands,
        target: TransferTarget,
        new_call_id: Option<String>,
        sink: SignalSink,
    ) -> Result<(), Stop> {
        // The target's INVITE is stored while it rings (`Legs::add` reports it: a restart
        // CANCELs it); the call's dialogs are reported again once the transfer is over.
        legs.report_to(Some(Reporter {
            sink: self.sink.clone(),
            call_id: self.id.clone(),
            held: self.held,
        }));
        let outcome = super::transfer::blind(&self.engine, &self.id, legs, commands, &target).await;
        legs.report_to(None);
        self.recorded = None;
        let outcome = outcome?;
        let op = SwitchOp::Transfer {
            target,
            new_call_id: new_call_id.clone(),
        };
        match outcome {
            Ok(()) => {
                let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
                self.handed_over(legs, new_call_id).await;
            }
            Err(detail) => {
                self.record(legs).await;
                refuse(&self.id, &sink, op, &detail).await
            }
        }
        Ok(())
    }

    /// The customer is with a transfer's target, now the call's agent leg: with
    /// `new_call_id` (a target agent's interaction) the call goes on under that id.
    pub(super) async fn handed_over(&mut self, legs: &mut Legs, new_call_id: Option<String>) {
        if let Some(new_id) = new_call_id {
            self.live.rename(&self.id, &new_id);
            self.id = new_id;
        }
        // The dialogs of the interaction the call now belongs to, for a restart.
        self.record(legs).await;
    }

    /// Carries out why the call ends: its report (unless quiet), then every leg ended.
    async fn end(&mut self, stop: Stop, legs: &mut Legs) {
        let engine = self.engine.clone();
        match stop {
            Stop::Report(signal, detail) => {
                self.report(signal, detail).await;
                legs.end_all(&engine).await;
            }
            Stop::Quiet => legs.end_all(&engine).await,
            Stop::Command(command) => {
                self.quiet = true;
                tracing::info!(call_id = %self.id, "hanging up");
                let work = tracing::debug_span!(parent: None, "sip.hangup", trace_id = tracing::field::Empty);
                if let Some(Command::Hangup { span }) = &command {
                    spans::continue_from(&work, span);
                }
                legs.end_all(&engine).instrument(work).await;
                if let Some(Command::Shutdown(done)) = command {
                    let _ = done.send(());
                }
            }
            Stop::HungUp(role) => {
                if let Ok(leg) = legs.get_mut(role) {
                    // Its dialog is over: nothing to send on it.
                    leg.ended = true;
                    engine.dialogs.remove_dialog(&leg.id());
                }
                let signal = match role {
                    // A target reaches here only as the call's agent (transfer.rs): consult.rs
                    // and conference.rs take a consulted or conferenced target's BYE.
                    Role::Agent | Role::Target => {
                        tracing::info!(call_id = %self.id, "the agent's phone hung up");
                        SwitchSignal::AgentHangup
                    }
                    Role::Customer => {
                        tracing::info!(call_id = %self.id, "the customer hung up");
                        SwitchSignal::RemoteHangup
                    }
                };
                self.report_plain(signal).await;
                legs.end_all(&engine).await;
            }
        }
    }

    /// Holds (`a=sendonly` to the customer, `a=inactive` to the agent's phone) or resumes
    /// (`a=sendrecv` to both). Exactly one `Applied(op)` or `Refused(op)` follows.
    async fn switch(&mut self, legs: &mut Legs, op: SwitchOp, sink: &SignalSink) {
        let held = match op {
            SwitchOp::Hold => true,
            SwitchOp::Resume => false,
            // Not consulting: nothing to complete or cancel.
            SwitchOp::CompleteTransfer { .. } | SwitchOp::CancelConsult => {
                return refuse(&self.id, sink, op, "no consultation is under way").await;
            }
            // Handled by `connected` before it gets here.
            SwitchOp::Transfer { .. } | SwitchOp::Consult { .. } | SwitchOp::Conference { .. } => {
                return self.not_connected(op, sink).await;
            }
        };
        match self.hold_media(legs, held).await {
            Ok(()) => {
                self.record(legs).await;
                let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
            }
            Err(detail) => refuse(&self.id, sink, op, &detail).await,
        }
    }

    /// Puts the customer and the agent's phone on hold (`held`) or back: re-INVITEs both, the
    /// customer first; refused by the agent's phone, the customer is put back as it was.
    pub(super) async fn hold_media(&mut self, legs: &mut Legs, held: bool) -> Result<(), String> {
        if self.held == held {
            return Ok(());
        }
        let (customer, agent) = legs
            .pair_mut(Role::Customer, Role::Agent)
            .map_err(|_| "call not connected".to_owned())?;
        let (customer_sdp, agent_sdp) = match (customer.last_sdp.clone(), agent.last_sdp.clone()) {
            (Some(c), Some(a)) => (c, a),
            _ => return Err("call not connected".to_owned()),
        };
        let (to_customer, to_agent) = if held {
            (Direction::SendOnly, Direction::Inactive)
        } else {
            (Direction::SendRecv, Direction::SendRecv)
        };
        self.change_media(customer, &customer_sdp, to_customer)
            .await?;
        if let Err(detail) = self.change_media(agent, &agent_sdp, to_agent).await {
            // Put the customer back as it was.
            let back = if held {
                Direction::SendRecv
            } else {
                Direction::SendOnly
            };
            if self
                .change_media(customer, &customer_sdp, back)
                .await
                .is_err()
            {
                tracing::warn!(call_id = %self.id, "could not restore the customer's media after a refused hold");
            }
            return Err(detail);
        }
        self.held = held;
        tracing::info!(call_id = %self.id, held, "hold applied");
        Ok(())
    }

    /// Reports the call's dialogs as they are now, for the store (dialog_store.rs), unless
    /// they are as last reported: a consultation's target with them, ringing or answered.
    pub(super) async fn record(&mut self, legs: &mut Legs) {
        self.record_with(legs, AnsweredTarget::Kept).await
    }

    /// As [`Call::record`], an answered target's leg kept or not (a conference's is not).
    pub(super) async fn record_with(&mut self, legs: &mut Legs, target: AnsweredTarget) {
        if let Some(dialogs) = dialog_store::call_dialogs(legs, self.held, target) {
            let fingerprint = dialog_store::fingerprint(&dialogs);
            if !self.quiet && self.recorded != Some(fingerprint) {
                self.sink.send_dialogs(&self.id, dialogs).await;
                self.recorded = Some(fingerprint);
            }
        }
    }

    /// re-INVITEs `leg` with `sdp` set to `direction` (retrying once on 491).
    async fn change_media(
        &self,
        leg: &mut Leg,
        sdp: &str,
        direction: Direction,
    ) -> Result<(), String> {
        let body = sdp::restamp(&sdp::with_direction(sdp, direction), &mut leg.origin);
        let result = leg
            .dialog(&self.engine)?
            .clone()
            .reinvite_with_glare_retry(
                Some(invite_headers(true)),
                Some(body.clone().into_bytes()),
                2,
            )
            .instrument(tracing::debug_span!("sip.reinvite", leg = leg.role.name()))
            .await;
        let name = leg.role.name();
        match result {
            Ok(Some(response)) if response.status_code.kind() == StatusCodeKind::Successful => {
                leg.ack(&self.engine, &response, None).await;
                leg.last_sdp = Some(body);
                Ok(())
            }
            Ok(Some(response)) => {
                tracing::info!(call_id = %self.id, status = response.status_code.code(), leg = name, "re-INVITE refused");
                Err(status_detail(&response))
            }
            Ok(None) => Err(format!("{name}: no response to the re-INVITE")),
            Err(rsipstack::Error::Error(text)) if text.contains("491") => {
                Err("491 Request Pending".to_owned())
            }
            Err(_) => Err(format!("{name}: re-INVITE failed")),
        }
    }

    /// `--max-call-duration` passed: the call ends as if the agent hung up.
    pub(super) fn max_call_duration(&self) -> Stop {
        tracing::info!(call_id = %self.id, "max call duration reached");
        Stop::Report(
            SwitchSignal::AgentHangup,
            "max call duration reached".to_owned(),
        )
    }

    /// A switch operation asked of a call that is not connected (yet, or any more).
    async fn not_connected(&self, op: SwitchOp, sink: &SignalSink) {
        refuse(&self.id, sink, op, "call not connected").await;
    }

    async fn acknowledge(&mut self) {
        if !self.acknowledged {
            self.acknowledged = true;
            self.deliver(SwitchSignal::Acknowledged, None).await;
        }
    }

    /// Reports `signal` (after `Acknowledged`, always first) with `detail`.
    async fn report(&mut self, signal: SwitchSignal, detail: impl Into<String>) {
        self.acknowledge().await;
        self.deliver(signal, Some(detail.into())).await;
    }

    async fn report_plain(&mut self, signal: SwitchSignal) {
        self.acknowledge().await;
        self.deliver(signal, None).await;
    }

    async fn deliver(&mut self, signal: SwitchSignal, detail: Option<String>) {
        if self.quiet {
            return;
        }
        let delivered = match detail {
            Some(detail) => self.sink.send_with_detail(&self.id, signal, detail).await,
            None => self.sink.send(&self.id, signal).await,
        };
        if !delivered {
            tracing::info!(call_id = %self.id, "the call manager is gone; hanging up");
            self.quiet = true;
        }
    }
}

/// Answers `op` with `Refused(op)` and `detail`: the call is as it was.
pub(super) async fn refuse(call_id: &str, sink: &SignalSink, op: SwitchOp, detail: &str) {
    let _ = sink
        .send_with_detail(call_id, SwitchSignal::Refused(op), detail)
        .await;
}
