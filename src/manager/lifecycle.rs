//! The lifecycle of an outbound call as a pure state machine: (interaction, input, time) →
//! the next interaction and the one event that records the change. No I/O, no clocks, no
//! channels, so every transition, allowed and refused, is tested below on its own.
//!
//! ```text
//! create ─► DELIVERY_PENDING (DIALING ─► RINGING)
//! DELIVERY_PENDING ─answer─► DELIVERED ─HoldCall─► HOLD ─ResumeCall─► DELIVERED
//! DELIVERY_PENDING ─busy / no answer / failed / EndCall(CANCELED)─► WRAP_UP
//! DELIVERED, HOLD ─remote hangup / EndCall─► WRAP_UP
//! DELIVERED, HOLD ─recovered after a restart─► the same state (an event marked `recovered`)
//! WRAP_UP ─CompleteInteraction, or wrap-up timeout─► COMPLETED   (terminal)
//!
//! DELIVERED/CONNECTED ─TransferCall─► DELIVERED/TRANSFERRING ─target answers─► WRAP_UP (TRANSFERRED)
//! DELIVERED/CONNECTED ─ConferenceCall─► DELIVERED/TRANSFERRING ─target answers─► DELIVERED/CONFERENCED
//! DELIVERED/CONNECTED ─ConsultCall─► HOLD/TRANSFERRING ─target answers─► HOLD/CONSULTING
//! HOLD/CONSULTING ─CompleteTransfer─► WRAP_UP (TRANSFERRED)
//! HOLD/TRANSFERRING, HOLD/CONSULTING ─CancelConsult─► DELIVERED/CONNECTED
//! any TRANSFERRING ─target busy / no answer / refuses─► DELIVERED/TRANSFER_FAILED ─► DELIVERED/CONNECTED
//! ```

use std::time::SystemTime;

use crate::domain::{
    AssociatedObject, CallError, CallProgress, EndReason, Interaction, InteractionEvent,
    InteractionState, Origination, TransferTarget,
};

/// What an agent may ask of an existing interaction: one variant per RPC that changes one.
/// Every place a new operation must touch (the handler, the lifecycle, forwarding to the owner
/// replica, the switch) matches on this enum, so the compiler lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOp {
    /// EndCall: cancel before answer, hang up after.
    End,
    /// HoldCall.
    Hold,
    /// ResumeCall.
    Resume,
    /// CompleteInteraction.
    Complete { disposition: String, notes: String },
    /// TransferCall (blind). `request_id` is the idempotency key, which the lifecycle ignores.
    Transfer {
        target: TransferTarget,
        request_id: Option<String>,
    },
    /// ConsultCall.
    Consult {
        target: TransferTarget,
        request_id: Option<String>,
    },
    /// CompleteTransfer.
    CompleteTransfer { request_id: Option<String> },
    /// CancelConsult.
    CancelConsult { request_id: Option<String> },
    /// ConferenceCall.
    Conference {
        target: TransferTarget,
        request_id: Option<String>,
    },
}

impl AgentOp {
    /// The RPC's name in refusals ("HoldCall is not allowed in state ...").
    pub fn operation(&self) -> &'static str {
        match self {
            AgentOp::End => "EndCall",
            AgentOp::Hold => "HoldCall",
            AgentOp::Resume => "ResumeCall",
            AgentOp::Complete { .. } => "CompleteInteraction",
            AgentOp::Transfer { .. } => "TransferCall",
            AgentOp::Consult { .. } => "ConsultCall",
            AgentOp::CompleteTransfer { .. } => "CompleteTransfer",
            AgentOp::CancelConsult { .. } => "CancelConsult",
            AgentOp::Conference { .. } => "ConferenceCall",
        }
    }

    /// The idempotency key the request carried, if any (the transfer family's).
    pub fn request_id(&self) -> Option<&str> {
        match self {
            AgentOp::Transfer { request_id, .. }
            | AgentOp::Consult { request_id, .. }
            | AgentOp::CompleteTransfer { request_id }
            | AgentOp::CancelConsult { request_id }
            | AgentOp::Conference { request_id, .. } => request_id.as_deref(),
            AgentOp::End | AgentOp::Hold | AgentOp::Resume | AgentOp::Complete { .. } => None,
        }
    }

    /// Whom the operation calls, if it calls anyone.
    pub fn target(&self) -> Option<&TransferTarget> {
        match self {
            AgentOp::Transfer { target, .. }
            | AgentOp::Consult { target, .. }
            | AgentOp::Conference { target, .. } => Some(target),
            _ => None,
        }
    }
}

/// Something that may change an interaction: an agent's request, or what only the switch, a
/// timer or the server itself may say.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An agent's request (an RPC).
    Agent(AgentOp),
    /// The switch reports the remote phone ringing.
    Ringing,
    /// The remote party answered.
    Answered,
    /// The remote line is busy.
    Busy,
    /// The remote party did not answer in time.
    NoAnswer,
    /// The network or switch failed to place the call.
    Failed,
    /// The remote party hung up.
    RemoteHangup,
    /// The agent hung up on the agent's own phone (a SIP backend rings it first).
    AgentHangup,
    /// `--wrap-up-timeout` ran out.
    WrapUpTimeout,
    /// The server restarted while the call was live: the call died with the process.
    ServerRestart,
    /// The server restarted (or a replica took over) while the call was connected, and the
    /// switch took the call up again from its stored dialogs: nothing changes but the record.
    Recovered,
    /// A blind transfer's target answered: the customer is theirs, the agent's leg is gone.
    Transferred,
    /// A consultation's target answered: the agent talks with them.
    Consulting,
    /// A conference's target answered: all three are in the room.
    Conferenced,
    /// The target did not answer or refused: the customer is with the agent again.
    TransferFailed,
    /// After TRANSFER_FAILED: the call goes on as before.
    TransferReturned,
}

impl From<AgentOp> for Input {
    fn from(op: AgentOp) -> Self {
        Input::Agent(op)
    }
}

impl Input {
    /// The operation's name in refusals ("HoldCall is not allowed in state ...").
    pub fn operation(&self) -> &'static str {
        match self {
            Input::Agent(op) => op.operation(),
            Input::Ringing => "ringing",
            Input::Answered => "answer",
            Input::Busy => "busy",
            Input::NoAnswer => "no answer",
            Input::Failed => "failure",
            Input::RemoteHangup => "remote hangup",
            Input::AgentHangup => "agent hangup",
            Input::WrapUpTimeout => "wrap-up timeout",
            Input::ServerRestart => "server restart",
            Input::Recovered => "recovery",
            Input::Transferred => "transferred",
            Input::Consulting => "consulting",
            Input::Conferenced => "conferenced",
            Input::TransferFailed => "transfer failed",
            Input::TransferReturned => "transfer returned",
        }
    }
}

/// What a new interaction is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    pub id: String,
    pub agent_id: String,
    pub phone_number: String,
    pub associated_object: Option<AssociatedObject>,
    pub request_id: Option<String>,
    /// The caller ID presented to the customer.
    pub caller_id: String,
}

/// The interaction as it is created (DELIVERY_PENDING, DIALING) and its first event.
pub fn create(call: NewCall, now: SystemTime) -> InteractionEvent {
    let interaction = Interaction {
        id: call.id,
        agent_id: call.agent_id,
        state: InteractionState::DeliveryPending,
        progress: CallProgress::Dialing,
        phone_number: call.phone_number,
        associated_object: call.associated_object,
        create_time: now,
        connect_time: None,
        end_time: None,
        complete_time: None,
        end_reason: None,
        disposition: String::new(),
        notes: String::new(),
        sequence: 1,
        request_id: call.request_id,
        end_detail: String::new(),
        caller_id: call.caller_id,
        origination: Origination::IntegrationApi,
        transfer_target: String::new(),
        transferred_from: String::new(),
        transfer_detail: String::new(),
    };
    first_event(interaction, now)
}

/// An interaction's first event (sequence 1, no previous state): what it is created with.
fn first_event(interaction: Interaction, now: SystemTime) -> InteractionEvent {
    InteractionEvent {
        sequence: 1,
        state: interaction.state,
        previous_state: None,
        progress: interaction.progress,
        time: now,
        interaction,
        recovered: false,
    }
}

/// The interaction a transfer to agent `agent_id` hands the customer to, and its first event:
/// already connected (the target agent answered), origination TRANSFER, the same number, object
/// and caller ID as `from`, which it names as `transferred_from`.
pub fn create_transferred(
    from: &Interaction,
    id: String,
    agent_id: String,
    now: SystemTime,
) -> InteractionEvent {
    let interaction = Interaction {
        id,
        agent_id,
        state: InteractionState::Delivered,
        progress: CallProgress::Connected,
        phone_number: from.phone_number.clone(),
        associated_object: from.associated_object.clone(),
        create_time: now,
        connect_time: Some(now),
        end_time: None,
        complete_time: None,
        end_reason: None,
        disposition: String::new(),
        notes: String::new(),
        sequence: 1,
        request_id: None,
        end_detail: String::new(),
        caller_id: from.caller_id.clone(),
        origination: Origination::Transfer,
        transfer_target: String::new(),
        transferred_from: from.id.clone(),
        transfer_detail: String::new(),
    };
    first_event(interaction, now)
}

/// Applies `input` to `current`: the event that records the change (its `interaction` is the
/// next snapshot), or `InvalidState` when the input is not allowed in the current state.
pub fn apply(
    current: &Interaction,
    input: Input,
    now: SystemTime,
) -> Result<InteractionEvent, CallError> {
    use AgentOp as A;
    use CallProgress as P;
    use InteractionState as S;

    let mut next = current.clone();
    let recovered = input == Input::Recovered;
    let refused = CallError::InvalidState {
        operation: input.operation(),
        state: current.state,
    };
    let end = |next: &mut Interaction, reason: EndReason| {
        next.state = S::WrapUp;
        next.progress = P::Ended;
        next.end_reason = Some(reason);
        next.end_time = Some(now);
    };
    match (current.state, current.progress, input) {
        (S::DeliveryPending, P::Dialing, Input::Ringing) => next.progress = P::Ringing,
        (S::DeliveryPending, _, Input::Answered) => {
            next.state = S::Delivered;
            next.progress = P::Connected;
            next.connect_time = Some(now);
        }
        (S::DeliveryPending, _, Input::Busy) => end(&mut next, EndReason::Busy),
        (S::DeliveryPending, _, Input::NoAnswer) => end(&mut next, EndReason::NoAnswer),
        (S::DeliveryPending, _, Input::Failed) => end(&mut next, EndReason::Failed),
        (S::DeliveryPending, _, Input::Agent(A::End) | Input::AgentHangup) => {
            end(&mut next, EndReason::Canceled)
        }
        (S::Delivered | S::Hold, _, Input::RemoteHangup) => end(&mut next, EndReason::RemoteHangup),
        (S::Delivered, P::Connected, Input::Agent(A::Transfer { target, .. })) => {
            next.progress = P::Transferring;
            next.transfer_target = target.to_string();
            next.transfer_detail.clear();
        }
        (S::Delivered, P::Connected, Input::Agent(A::Conference { target, .. })) => {
            next.progress = P::Transferring;
            next.transfer_target = target.to_string();
            next.transfer_detail.clear();
        }
        (S::Delivered, P::Connected, Input::Agent(A::Consult { target, .. })) => {
            next.state = S::Hold;
            next.progress = P::Transferring;
            next.transfer_target = target.to_string();
            next.transfer_detail.clear();
        }
        (S::Delivered, P::Transferring, Input::Transferred)
        | (S::Hold, P::Consulting, Input::Agent(A::CompleteTransfer { .. })) => {
            end(&mut next, EndReason::Transferred)
        }
        (S::Delivered, P::Transferring, Input::Conferenced) => next.progress = P::Conferenced,
        (S::Hold, P::Transferring, Input::Consulting) => next.progress = P::Consulting,
        (S::Delivered | S::Hold, P::Transferring, Input::TransferFailed) => {
            next.state = S::Delivered;
            next.progress = P::TransferFailed;
        }
        (S::Delivered, P::TransferFailed, Input::TransferReturned) => next.progress = P::Connected,
        (S::Hold, P::Transferring | P::Consulting, Input::Agent(A::CancelConsult { .. })) => {
            next.state = S::Delivered;
            next.progress = P::Connected;
        }
        (S::Delivered | S::Hold, _, Input::Agent(A::End) | Input::AgentHangup) => {
            end(&mut next, EndReason::AgentHangup)
        }
        (S::DeliveryPending | S::Delivered | S::Hold, _, Input::ServerRestart) => {
            end(&mut next, EndReason::ServerRestart)
        }
        (S::Delivered, P::Connected, Input::Agent(A::Hold)) => {
            next.state = S::Hold;
            next.progress = P::Held;
        }
        (S::Hold, P::Held, Input::Agent(A::Resume)) => {
            next.state = S::Delivered;
            next.progress = P::Connected;
        }
        (S::WrapUp, _, Input::Agent(A::Complete { disposition, notes })) => {
            next.state = S::Completed;
            next.disposition = disposition;
            next.notes = notes;
            next.complete_time = Some(now);
        }
        (S::WrapUp, _, Input::WrapUpTimeout) => {
            next.state = S::Completed;
            next.complete_time = Some(now);
        }
        // Not during a transfer: its third leg died with the process (the actor ends such a
        // call SERVER_RESTART instead of adopting it).
        (S::Delivered, P::Connected | P::Conferenced, Input::Recovered)
        | (S::Hold, P::Held, Input::Recovered) => {}
        _ => return Err(refused),
    }
    next.sequence = current.sequence + 1;
    Ok(InteractionEvent {
        sequence: next.sequence,
        state: next.state,
        previous_state: Some(current.state),
        progress: next.progress,
        time: now,
        interaction: next,
        recovered,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use CallProgress as P;
    use InteractionState as S;

    const END: Input = Input::Agent(AgentOp::End);
    const HOLD: Input = Input::Agent(AgentOp::Hold);
    const RESUME: Input = Input::Agent(AgentOp::Resume);

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    fn new_call() -> Interaction {
        create(
            NewCall {
                id: "i1".into(),
                agent_id: "a1".into(),
                phone_number: "+12025550100".into(),
                associated_object: None,
                request_id: None,
                caller_id: String::new(),
            },
            t(0),
        )
        .interaction
    }

    /// Drives a fresh call through `inputs`, each of which must be allowed.
    fn drive(inputs: &[Input]) -> Interaction {
        let mut current = new_call();
        for (n, input) in inputs.iter().enumerate() {
            let event = apply(&current, input.clone(), t(100 * (n as u64 + 1)))
                .unwrap_or_else(|e| panic!("{input:?} refused after {current:?}: {e}"));
            assert_eq!(event.sequence, current.sequence + 1);
            assert_eq!(event.previous_state, Some(current.state));
            assert_eq!(event.interaction.sequence, event.sequence);
            assert_eq!(event.state, event.interaction.state);
            assert_eq!(event.progress, event.interaction.progress);
            // Every event changes the state or the progress.
            assert!(event.state != current.state || event.progress != current.progress);
            current = event.interaction;
        }
        current
    }

    fn complete() -> Input {
        Input::Agent(AgentOp::Complete {
            disposition: "sale".into(),
            notes: "n".into(),
        })
    }

    fn agent_b() -> TransferTarget {
        TransferTarget::Agent("b".into())
    }

    fn transfer() -> Input {
        Input::Agent(AgentOp::Transfer {
            target: agent_b(),
            request_id: None,
        })
    }

    fn consult() -> Input {
        Input::Agent(AgentOp::Consult {
            target: TransferTarget::Number("+12025550100".into()),
            request_id: None,
        })
    }

    fn conference() -> Input {
        Input::Agent(AgentOp::Conference {
            target: agent_b(),
            request_id: Some("k".into()),
        })
    }

    fn complete_transfer() -> Input {
        Input::Agent(AgentOp::CompleteTransfer { request_id: None })
    }

    fn cancel_consult() -> Input {
        Input::Agent(AgentOp::CancelConsult { request_id: None })
    }

    fn all_inputs() -> Vec<Input> {
        vec![
            transfer(),
            consult(),
            conference(),
            complete_transfer(),
            cancel_consult(),
            Input::Transferred,
            Input::Consulting,
            Input::Conferenced,
            Input::TransferFailed,
            Input::TransferReturned,
            Input::Ringing,
            Input::Answered,
            Input::Busy,
            Input::NoAnswer,
            Input::Failed,
            Input::RemoteHangup,
            Input::AgentHangup,
            END,
            HOLD,
            RESUME,
            complete(),
            Input::WrapUpTimeout,
            Input::ServerRestart,
            Input::Recovered,
        ]
    }

    #[test]
    fn create_starts_dialing_at_sequence_one() {
        let event = create(
            NewCall {
                id: "i1".into(),
                agent_id: "a1".into(),
                phone_number: "1234".into(),
                associated_object: None,
                request_id: Some("r".into()),
                caller_id: "+12125550100".into(),
            },
            t(0),
        );
        assert_eq!(event.sequence, 1);
        assert_eq!(event.previous_state, None);
        assert_eq!(
            (event.state, event.progress),
            (S::DeliveryPending, P::Dialing)
        );
        assert_eq!(event.interaction.request_id.as_deref(), Some("r"));
        assert_eq!(event.interaction.caller_id, "+12125550100");
    }

    #[test]
    fn answered_call_connects_holds_resumes_and_ends_by_agent() {
        let i = drive(&[Input::Ringing, Input::Answered]);
        assert_eq!((i.state, i.progress), (S::Delivered, P::Connected));
        assert_eq!(i.connect_time, Some(t(200)));
        let i = drive(&[Input::Ringing, Input::Answered, HOLD]);
        assert_eq!((i.state, i.progress), (S::Hold, P::Held));
        let i = drive(&[Input::Ringing, Input::Answered, HOLD, RESUME]);
        assert_eq!((i.state, i.progress), (S::Delivered, P::Connected));
        let i = drive(&[Input::Ringing, Input::Answered, END]);
        assert_eq!((i.state, i.progress), (S::WrapUp, P::Ended));
        assert_eq!(i.end_reason, Some(EndReason::AgentHangup));
        assert_eq!(i.talk_duration(), Some(Duration::from_millis(100)));
        assert_eq!(i.sequence, 4);
    }

    #[test]
    fn answer_may_come_without_ringing() {
        let i = drive(&[Input::Answered]);
        assert_eq!(i.state, S::Delivered);
    }

    #[test]
    fn unanswered_calls_end_with_their_reason() {
        for (inputs, reason) in [
            (vec![Input::Busy], EndReason::Busy),
            (vec![Input::Ringing, Input::NoAnswer], EndReason::NoAnswer),
            (vec![Input::Failed], EndReason::Failed),
            (vec![END], EndReason::Canceled),
            (vec![Input::Ringing, END], EndReason::Canceled),
            (vec![Input::AgentHangup], EndReason::Canceled),
            (
                vec![Input::Ringing, Input::AgentHangup],
                EndReason::Canceled,
            ),
            (vec![Input::ServerRestart], EndReason::ServerRestart),
        ] {
            let i = drive(&inputs);
            assert_eq!((i.state, i.progress), (S::WrapUp, P::Ended), "{inputs:?}");
            assert_eq!(i.end_reason, Some(reason));
            assert_eq!(i.talk_duration(), None, "never connected");
        }
    }

    #[test]
    fn connected_calls_end_by_remote_agent_or_restart_also_from_hold() {
        for (last, reason) in [
            (Input::RemoteHangup, EndReason::RemoteHangup),
            (END, EndReason::AgentHangup),
            (Input::AgentHangup, EndReason::AgentHangup),
            (Input::ServerRestart, EndReason::ServerRestart),
        ] {
            let i = drive(&[Input::Answered, last.clone()]);
            assert_eq!(i.end_reason, Some(reason));
            let i = drive(&[Input::Answered, HOLD, last]);
            assert_eq!(i.end_reason, Some(reason));
            assert_eq!(i.state, S::WrapUp);
        }
    }

    #[test]
    fn a_recovered_call_keeps_its_state_and_its_event_says_so() {
        for path in [vec![Input::Answered], vec![Input::Answered, HOLD]] {
            let current = drive(&path);
            let event = apply(&current, Input::Recovered, t(10_000)).expect("recovered");
            assert!(event.recovered);
            assert_eq!(event.previous_state, Some(current.state));
            assert_eq!(
                (event.state, event.progress),
                (current.state, current.progress)
            );
            assert_eq!(event.sequence, current.sequence + 1);
            let mut unchanged = event.interaction.clone();
            unchanged.sequence = current.sequence;
            assert_eq!(unchanged, current);
        }
        let other = apply(&drive(&[Input::Answered]), HOLD, t(10_000)).expect("hold");
        assert!(!other.recovered);
    }

    #[test]
    fn wrap_up_completes_by_agent_or_timeout() {
        let i = drive(&[Input::Busy, complete()]);
        assert_eq!(i.state, S::Completed);
        assert_eq!((i.disposition.as_str(), i.notes.as_str()), ("sale", "n"));
        assert_eq!(i.complete_time, Some(t(200)));
        let i = drive(&[Input::Busy, Input::WrapUpTimeout]);
        assert_eq!(i.state, S::Completed);
        assert_eq!(i.progress, P::Ended);
        assert_eq!(i.disposition, "");
    }

    #[test]
    fn blind_transfer_ends_the_call_transferred_with_its_target() {
        let i = drive(&[Input::Answered, transfer()]);
        assert_eq!((i.state, i.progress), (S::Delivered, P::Transferring));
        assert_eq!(i.transfer_target, "agent:b");
        let i = drive(&[Input::Answered, transfer(), Input::Transferred]);
        assert_eq!((i.state, i.progress), (S::WrapUp, P::Ended));
        assert_eq!(i.end_reason, Some(EndReason::Transferred));
        assert_eq!(i.transfer_target, "agent:b");
        assert_eq!(i.talk_duration(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn a_failed_transfer_gives_the_customer_back_to_the_agent() {
        for start in [transfer(), consult(), conference()] {
            let i = drive(&[Input::Answered, start.clone(), Input::TransferFailed]);
            assert_eq!((i.state, i.progress), (S::Delivered, P::TransferFailed));
            let i = drive(&[
                Input::Answered,
                start.clone(),
                Input::TransferFailed,
                Input::TransferReturned,
            ]);
            assert_eq!(
                (i.state, i.progress),
                (S::Delivered, P::Connected),
                "{start:?}"
            );
            // And the agent may try again.
            let i = drive(&[
                Input::Answered,
                start.clone(),
                Input::TransferFailed,
                Input::TransferReturned,
                start,
            ]);
            assert_eq!(i.progress, P::Transferring);
        }
    }

    #[test]
    fn consult_holds_the_customer_then_completes_or_cancels() {
        let i = drive(&[Input::Answered, consult()]);
        assert_eq!((i.state, i.progress), (S::Hold, P::Transferring));
        assert_eq!(i.transfer_target, "+12025550100");
        let i = drive(&[Input::Answered, consult(), Input::Consulting]);
        assert_eq!((i.state, i.progress), (S::Hold, P::Consulting));
        let i = drive(&[
            Input::Answered,
            consult(),
            Input::Consulting,
            complete_transfer(),
        ]);
        assert_eq!((i.state, i.progress), (S::WrapUp, P::Ended));
        assert_eq!(i.end_reason, Some(EndReason::Transferred));
        for before in [vec![], vec![Input::Consulting]] {
            let mut path = vec![Input::Answered, consult()];
            path.extend(before);
            path.push(cancel_consult());
            let i = drive(&path);
            assert_eq!((i.state, i.progress), (S::Delivered, P::Connected));
        }
    }

    #[test]
    fn conference_keeps_the_call_delivered() {
        let i = drive(&[Input::Answered, conference(), Input::Conferenced]);
        assert_eq!((i.state, i.progress), (S::Delivered, P::Conferenced));
        let i = drive(&[Input::Answered, conference(), Input::Conferenced, END]);
        assert_eq!(i.end_reason, Some(EndReason::AgentHangup));
    }

    #[test]
    fn a_new_transfer_clears_the_last_failure() {
        let mut i = drive(&[Input::Answered]);
        i.transfer_detail = "486 Busy Here".into();
        let e = apply(&i, transfer(), t(1)).unwrap();
        assert_eq!(e.interaction.transfer_detail, "");
    }

    #[test]
    fn a_transferred_interaction_starts_connected_for_the_target_agent() {
        let mut from = drive(&[Input::Answered, transfer(), Input::Transferred]);
        from.associated_object = Some(AssociatedObject {
            id: "c1".into(),
            ..Default::default()
        });
        let e = create_transferred(&from, "i2".into(), "b".into(), t(5));
        let i = &e.interaction;
        assert_eq!((e.sequence, e.previous_state), (1, None));
        assert_eq!((i.state, i.progress), (S::Delivered, P::Connected));
        assert_eq!(i.origination, Origination::Transfer);
        assert_eq!(i.transferred_from, "i1");
        assert_eq!((i.id.as_str(), i.agent_id.as_str()), ("i2", "b"));
        assert_eq!(i.phone_number, from.phone_number);
        assert_eq!(i.associated_object, from.associated_object);
        assert_eq!(i.connect_time, Some(t(5)));
        // It goes on like any connected call.
        let e = apply(i, Input::RemoteHangup, t(6)).unwrap();
        assert_eq!(e.interaction.end_reason, Some(EndReason::RemoteHangup));
    }

    /// Every input in every state: exactly the allowed ones pass, the rest are refused with
    /// INVALID_STATE naming the state, and a refusal changes nothing.
    #[test]
    fn every_other_transition_is_refused() {
        let reachable: Vec<(Vec<Input>, Vec<&str>)> = vec![
            (
                vec![],
                vec![
                    "ringing",
                    "answer",
                    "busy",
                    "no answer",
                    "failure",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                ],
            ),
            (
                vec![Input::Ringing],
                vec![
                    "answer",
                    "busy",
                    "no answer",
                    "failure",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                ],
            ),
            (
                vec![Input::Answered],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "HoldCall",
                    "server restart",
                    "recovery",
                    "TransferCall",
                    "ConsultCall",
                    "ConferenceCall",
                ],
            ),
            (
                vec![Input::Answered, transfer()],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                    "transferred",
                    "conferenced",
                    "transfer failed",
                ],
            ),
            (
                vec![Input::Answered, consult()],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                    "consulting",
                    "transfer failed",
                    "CancelConsult",
                ],
            ),
            (
                vec![Input::Answered, consult(), Input::Consulting],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                    "CompleteTransfer",
                    "CancelConsult",
                ],
            ),
            (
                vec![Input::Answered, transfer(), Input::TransferFailed],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                    "transfer returned",
                ],
            ),
            (
                vec![Input::Answered, conference(), Input::Conferenced],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "server restart",
                    "recovery",
                ],
            ),
            (
                vec![Input::Answered, HOLD],
                vec![
                    "remote hangup",
                    "agent hangup",
                    "EndCall",
                    "ResumeCall",
                    "server restart",
                    "recovery",
                ],
            ),
            (
                vec![Input::Busy],
                vec!["CompleteInteraction", "wrap-up timeout"],
            ),
            (
                vec![Input::Answered, transfer(), Input::Transferred],
                vec!["CompleteInteraction", "wrap-up timeout"],
            ),
            (vec![Input::Busy, complete()], vec![]),
        ];
        for (path, allowed) in reachable {
            let current = drive(&path);
            for input in all_inputs() {
                let op = input.operation();
                match apply(&current, input, t(10_000)) {
                    Ok(_) => assert!(allowed.contains(&op), "{op} allowed in {path:?}"),
                    Err(e) => {
                        assert!(!allowed.contains(&op), "{op} refused in {path:?}");
                        assert_eq!(
                            e,
                            CallError::InvalidState {
                                operation: op,
                                state: current.state
                            }
                        );
                    }
                }
            }
        }
    }
}
