//! One call, from the dial to its end, as a task: RFC 3725 Flow IV.
//!
//! 1. INVITE the agent's phone with an offer that lets no media flow (`a=inactive`); its
//!    200 is ACKed at once.
//! 2. INVITE the customer (through the trunk) without a body: its 200 carries the offer.
//! 3. re-INVITE the agent with the customer's offer; the agent's 200 has the answer; ACK
//!    the agent, and send that answer in the ACK to the customer.
//!
//! Media then flows between the phone and the customer; calldesk never touches it.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::DialogState;
use rsipstack::sip::{StatusCodeKind, Uri};
use tokio::sync::{mpsc, oneshot};

use super::super::{Dial, SignalSink, SwitchOp, SwitchSignal};
use super::config::{is_plain_user, short_duration};
use super::conformance::invite_headers;
use super::engine::Engine;
use super::leg::{answer_in_dialog, far_end_hung_up, outcome, status_detail, InviteOutcome, Leg};
use super::outcome::{customer_refused, pushback};
use super::sdp::{self, Direction};

/// What the switch asks of a live call.
pub(crate) enum Command {
    /// CANCEL or BYE every leg; report nothing more.
    Hangup,
    /// Carry out a hold or resume; exactly one `Applied` or `Refused` follows on `sink`.
    Switch { op: SwitchOp, sink: SignalSink },
    /// Like `Hangup`, then say so.
    Shutdown(oneshot::Sender<()>),
}

/// Runs the call `dial` until it ends, then forgets it.
pub(super) async fn run(
    engine: Arc<Engine>,
    dial: Dial,
    sink: SignalSink,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut call = Call {
        engine: engine.clone(),
        id: dial.call_id.clone(),
        sink,
        acknowledged: false,
        ringing: false,
        quiet: false,
        held: false,
    };
    call.drive(&dial, &mut commands).await;
    engine.calls().remove(&dial.call_id);
    tracing::debug!(call_id = %dial.call_id, "call over");
}

struct Call {
    engine: Arc<Engine>,
    id: String,
    sink: SignalSink,
    acknowledged: bool,
    ringing: bool,
    /// Hung up on request, or the call manager is gone: report nothing more.
    quiet: bool,
    held: bool,
}

/// Why a phase stopped early.
enum Interrupt {
    Command(Option<Command>),
    AgentHungUp,
    CustomerHungUp,
}

impl Call {
    async fn drive(&mut self, dial: &Dial, commands: &mut mpsc::Receiver<Command>) {
        let engine = self.engine.clone();

        // 1. The agent's phone, with no media flowing.
        let Some(agent_uri) = engine.config.agents.uri_for(&dial.agent_id) else {
            return self
                .report(SwitchSignal::Failed, "no SIP URI for agent")
                .await;
        };
        let Ok(agent_uri) = Uri::try_from(agent_uri.as_str()) else {
            return self
                .report(SwitchSignal::Failed, "invalid SIP URI for agent")
                .await;
        };
        if !is_plain_user(&dial.phone_number) {
            return self
                .report(SwitchSignal::Failed, "invalid phone number")
                .await;
        }
        let agent_uri = engine.with_transport(agent_uri);
        let caller = match engine.local_uri(&dial.phone_number) {
            Ok(uri) => uri,
            Err(detail) => return self.report(SwitchSignal::Failed, detail).await,
        };
        let mut origin = sdp::Origin::new(engine.local.ip());
        let offer = sdp::offer_without_media(&mut origin);
        let mut agent = match Leg::start(
            &engine,
            "agent's phone",
            agent_uri,
            caller,
            Some(offer.clone()),
            None,
        ) {
            Ok(leg) => leg,
            Err(e) => {
                return self
                    .report(SwitchSignal::Failed, format!("agent's phone: {e}"))
                    .await
            }
        };
        agent.origin = origin;
        tracing::info!(call_id = %self.id, sip_call_id = %agent.sip_call_id(), "calling the agent's phone");

        let timeout = engine.config.agent_answer_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let answer = loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Switch { op, sink }) => refuse(&self.id, &sink, op, "call not connected").await,
                    other => return self.stop(other, &mut [&mut agent]).await,
                },
                Some(state) = agent.states.recv() => {
                    if matches!(state, DialogState::Trying(_) | DialogState::Early(..)) {
                        self.acknowledge().await;
                    }
                }
                result = outcome(&mut agent.invite) => match result {
                    InviteOutcome::Answered(response) => break response,
                    InviteOutcome::Refused(response) => {
                        let detail = if super::outcome::is_local(&response) {
                            "agent's phone: no response".to_owned()
                        } else {
                            format!("agent's phone: {}", status_detail(&response))
                        };
                        tracing::info!(call_id = %self.id, status = response.status_code.code(), "agent's phone refused");
                        self.report(SwitchSignal::Failed, detail).await;
                        return self.finish(&mut [&mut agent]).await;
                    }
                    InviteOutcome::NoResponse => {
                        self.report(SwitchSignal::Failed, "agent's phone: no response").await;
                        return self.finish(&mut [&mut agent]).await;
                    }
                    InviteOutcome::Error(e) => {
                        self.report(SwitchSignal::Failed, format!("agent's phone: {e}")).await;
                        return self.finish(&mut [&mut agent]).await;
                    }
                },
                () = &mut deadline => {
                    tracing::info!(call_id = %self.id, "agent's phone did not answer");
                    let detail = format!("agent's phone did not answer within {}", short_duration(timeout));
                    self.report(SwitchSignal::Failed, detail).await;
                    return self.finish(&mut [&mut agent]).await;
                }
            }
        };
        self.acknowledge().await;
        agent.confirmed = true;
        agent.ack(&engine, &answer, None).await;
        agent.last_sdp = Some(offer);
        if self.quiet {
            return self.finish(&mut [&mut agent]).await;
        }

        // 2. The customer, without an offer.
        let customer_uri = engine.customer_uri(&dial.phone_number);
        let credential = engine.config.credential.as_ref().map(|c| Credential {
            username: c.user.clone(),
            password: c.password.clone(),
            realm: None,
            auth_username: None,
        });
        let mut customer = match Leg::start(
            &engine,
            "customer",
            customer_uri,
            engine.caller_uri(),
            None,
            credential,
        ) {
            Ok(leg) => leg,
            Err(e) => {
                self.report(SwitchSignal::Failed, format!("customer: {e}"))
                    .await;
                return self.finish(&mut [&mut agent]).await;
            }
        };
        tracing::info!(call_id = %self.id, sip_call_id = %customer.sip_call_id(), "calling the customer");

        let timeout = engine.config.no_answer_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let offer = loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Switch { op, sink }) => refuse(&self.id, &sink, op, "call not connected").await,
                    other => return self.stop(other, &mut [&mut customer, &mut agent]).await,
                },
                Some(state) = agent.states.recv() => {
                    if far_end_hung_up(&state) {
                        return self.agent_hung_up(&mut agent, &mut customer).await;
                    }
                    answer_in_dialog(state).await;
                }
                Some(state) = customer.states.recv() => {
                    if let DialogState::Early(_, response) = &state {
                        let code = response.status_code.code();
                        if (code == 180 || code == 183) && !self.ringing {
                            self.ringing = true;
                            self.report_plain(SwitchSignal::Ringing).await;
                        }
                    }
                }
                result = outcome(&mut customer.invite) => match result {
                    InviteOutcome::Answered(response) => break response,
                    InviteOutcome::Refused(response) => {
                        if let Some(retry_after) = pushback(&response) {
                            self.report_plain(SwitchSignal::Pushback { retry_after }).await;
                        }
                        let (signal, detail) = customer_refused(&response);
                        tracing::info!(call_id = %self.id, status = response.status_code.code(), "customer refused");
                        self.report(signal, detail).await;
                        return self.finish(&mut [&mut customer, &mut agent]).await;
                    }
                    InviteOutcome::NoResponse => {
                        self.report(SwitchSignal::Failed, "customer: no response").await;
                        return self.finish(&mut [&mut customer, &mut agent]).await;
                    }
                    InviteOutcome::Error(e) => {
                        self.report(SwitchSignal::Failed, format!("customer: {e}")).await;
                        return self.finish(&mut [&mut customer, &mut agent]).await;
                    }
                },
                () = &mut deadline => {
                    tracing::info!(call_id = %self.id, "customer did not answer");
                    let detail = format!("customer did not answer within {}", short_duration(timeout));
                    self.report(SwitchSignal::NoAnswer, detail).await;
                    return self.finish(&mut [&mut customer, &mut agent]).await;
                }
            }
        };
        customer.confirmed = true;
        if !sdp::has_media(offer.body()) {
            customer.ack(&engine, &offer, None).await;
            self.report(
                SwitchSignal::Failed,
                "customer's 200 OK carried no SDP offer",
            )
            .await;
            return self.finish(&mut [&mut customer, &mut agent]).await;
        }

        // 3. The customer's offer to the agent's phone; its answer in the customer's ACK.
        let to_agent = sdp::restamp(&String::from_utf8_lossy(offer.body()), &mut agent.origin);
        let step = {
            // rsipstack's `reinvite` adds no Content-Type for the body: calldesk passes it.
            let reinvite = agent.dialog.reinvite(
                Some(invite_headers(true)),
                Some(to_agent.clone().into_bytes()),
            );
            tokio::pin!(reinvite);
            loop {
                tokio::select! {
                    biased;
                    command = commands.recv() => match command {
                        Some(Command::Switch { op, sink }) => refuse(&self.id, &sink, op, "call not connected").await,
                        other => break Err(Interrupt::Command(other)),
                    },
                    Some(state) = agent.states.recv() => {
                        if far_end_hung_up(&state) {
                            break Err(Interrupt::AgentHungUp);
                        }
                        answer_in_dialog(state).await;
                    }
                    Some(state) = customer.states.recv() => {
                        if far_end_hung_up(&state) {
                            break Err(Interrupt::CustomerHungUp);
                        }
                        answer_in_dialog(state).await;
                    }
                    result = &mut reinvite => break Ok(result),
                }
            }
        };
        let reinvite = match step {
            Ok(result) => result,
            Err(interrupt) => {
                // The customer still waits for its ACK; it ends the session anyway.
                customer.ack(&engine, &offer, None).await;
                return self.interrupted(interrupt, &mut agent, &mut customer).await;
            }
        };
        let answer = match reinvite {
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
            Ok(answer) => answer,
            Err(detail) => {
                customer.ack(&engine, &offer, None).await;
                self.report(SwitchSignal::Failed, detail).await;
                return self.finish(&mut [&mut customer, &mut agent]).await;
            }
        };
        agent.last_sdp = Some(to_agent);
        let to_customer = sdp::restamp(&answer, &mut customer.origin);
        customer
            .ack(&engine, &offer, Some(to_customer.clone()))
            .await;
        customer.last_sdp = Some(to_customer);
        tracing::info!(call_id = %self.id, "connected");
        self.report_plain(SwitchSignal::Answered).await;
        if self.quiet {
            return self.finish(&mut [&mut customer, &mut agent]).await;
        }

        // Connected, until someone hangs up.
        let limit = engine.config.max_call_duration;
        let limit_timer = tokio::time::sleep(limit.unwrap_or(Duration::MAX / 4));
        tokio::pin!(limit_timer);
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Switch { op, sink }) => self.switch(&mut agent, &mut customer, op, &sink).await,
                    other => return self.stop(other, &mut [&mut customer, &mut agent]).await,
                },
                Some(state) = agent.states.recv() => {
                    if far_end_hung_up(&state) {
                        return self.agent_hung_up(&mut agent, &mut customer).await;
                    }
                    answer_in_dialog(state).await;
                }
                Some(state) = customer.states.recv() => {
                    if far_end_hung_up(&state) {
                        return self.customer_hung_up(&mut agent, &mut customer).await;
                    }
                    answer_in_dialog(state).await;
                }
                () = &mut limit_timer, if limit.is_some() => {
                    tracing::info!(call_id = %self.id, "max call duration reached");
                    self.report(SwitchSignal::AgentHangup, "max call duration reached").await;
                    return self.finish(&mut [&mut customer, &mut agent]).await;
                }
            }
        }
    }

    /// Holds (`a=sendonly` to the customer, `a=inactive` to the agent's phone) or resumes
    /// (`a=sendrecv` to both). Exactly one `Applied(op)` or `Refused(op)` follows.
    async fn switch(
        &mut self,
        agent: &mut Leg,
        customer: &mut Leg,
        op: SwitchOp,
        sink: &SignalSink,
    ) {
        let held = op == SwitchOp::Hold;
        if self.held == held {
            let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
            return;
        }
        let (customer_sdp, agent_sdp) = match (customer.last_sdp.clone(), agent.last_sdp.clone()) {
            (Some(c), Some(a)) => (c, a),
            _ => return refuse(&self.id, sink, op, "call not connected").await,
        };
        let (to_customer, to_agent) = if held {
            (Direction::SendOnly, Direction::Inactive)
        } else {
            (Direction::SendRecv, Direction::SendRecv)
        };
        if let Err(detail) = self
            .change_media(customer, &customer_sdp, to_customer)
            .await
        {
            return refuse(&self.id, sink, op, &detail).await;
        }
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
            return refuse(&self.id, sink, op, &detail).await;
        }
        self.held = held;
        tracing::info!(call_id = %self.id, held, "hold applied");
        let _ = sink.send(&self.id, SwitchSignal::Applied(op)).await;
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
            .dialog
            .reinvite_with_glare_retry(
                Some(invite_headers(true)),
                Some(body.clone().into_bytes()),
                2,
            )
            .await;
        match result {
            Ok(Some(response)) if response.status_code.kind() == StatusCodeKind::Successful => {
                leg.ack(&self.engine, &response, None).await;
                leg.last_sdp = Some(body);
                Ok(())
            }
            Ok(Some(response)) => {
                tracing::info!(call_id = %self.id, status = response.status_code.code(), leg = leg.name, "re-INVITE refused");
                Err(status_detail(&response))
            }
            Ok(None) => Err(format!("{}: no response to the re-INVITE", leg.name)),
            Err(rsipstack::Error::Error(text)) if text.contains("491") => {
                Err("491 Request Pending".to_owned())
            }
            Err(_) => Err(format!("{}: re-INVITE failed", leg.name)),
        }
    }

    async fn agent_hung_up(&mut self, agent: &mut Leg, customer: &mut Leg) {
        tracing::info!(call_id = %self.id, "the agent's phone hung up");
        agent.ended = true;
        self.engine.dialogs.remove_dialog(&agent.dialog.id());
        self.report_plain(SwitchSignal::AgentHangup).await;
        customer.end(&self.engine).await;
    }

    async fn customer_hung_up(&mut self, agent: &mut Leg, customer: &mut Leg) {
        tracing::info!(call_id = %self.id, "the customer hung up");
        customer.ended = true;
        self.engine.dialogs.remove_dialog(&customer.dialog.id());
        self.report_plain(SwitchSignal::RemoteHangup).await;
        agent.end(&self.engine).await;
    }

    async fn interrupted(&mut self, interrupt: Interrupt, agent: &mut Leg, customer: &mut Leg) {
        match interrupt {
            Interrupt::AgentHungUp => self.agent_hung_up(agent, customer).await,
            Interrupt::CustomerHungUp => self.customer_hung_up(agent, customer).await,
            Interrupt::Command(command) => self.stop(command, &mut [customer, agent]).await,
        }
    }

    /// Hangup, Shutdown, or the switch forgot the call: end every leg quietly.
    async fn stop(&mut self, command: Option<Command>, legs: &mut [&mut Leg]) {
        self.quiet = true;
        tracing::info!(call_id = %self.id, "hanging up");
        self.finish(legs).await;
        if let Some(Command::Shutdown(done)) = command {
            let _ = done.send(());
        }
    }

    /// Ends every leg at once (CANCEL or BYE) and waits for them.
    async fn finish(&mut self, legs: &mut [&mut Leg]) {
        let engine = self.engine.clone();
        match legs {
            [one] => one.end(&engine).await,
            [first, second] => {
                tokio::join!(first.end(&engine), second.end(&engine));
            }
            more => {
                for leg in more.iter_mut() {
                    leg.end(&engine).await;
                }
            }
        }
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

async fn refuse(call_id: &str, sink: &SignalSink, op: SwitchOp, detail: &str) {
    let _ = sink
        .send_with_detail(call_id, SwitchSignal::Refused(op), detail)
        .await;
}
