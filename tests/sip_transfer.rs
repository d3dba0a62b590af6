//! Transfers over SIP against real SIP peers: SIPp plays the customer behind the trunk, the
//! agent's phone and the target (scenarios in `tests/sip/`), baresip a softphone that hangs up
//! when told. Each test checks both sides: calldesk's events through the gRPC API, and each
//! peer's own verdict (SIPp's exit code and call count: a message that does not match its
//! scenario fails it).

mod support;

use std::{path::PathBuf, time::Duration};

use calldesk::{
    proto::{
        CallProgress as P, EndReason, Interaction, InteractionEvent, InteractionState as S,
        Origination,
    },
    server::config::{Config, TelephonyKind},
};
use support::{
    baresip::{AnswerMode, Baresip},
    in_process::TestServer,
    sipp::Sipp,
    *,
};
use tempfile::TempDir;
use tonic::Streaming;

/// The customer's number: any valid E.164 number reaches the trunk.
const CUSTOMER: &str = "+12025550100";
const AGENT: &str = "agent-7";
/// The consulted agent, at its own phone (`--sip-agents`).
const TARGET_AGENT: &str = "agent-9";
/// How long a SIPp peer may take to finish its scenario after the call ended.
const SIPP_WAIT: Duration = Duration::from_secs(15);

/// A server whose SIP backend rings every agent at `agent_uri_template`, except
/// [`TARGET_AGENT`] at `target_uri`, and reaches numbers through `trunk` ("127.0.0.1:PORT").
struct Scene {
    server: TestServer,
    client: Client,
    /// Holds the `--sip-agents` file.
    _dir: TempDir,
}

impl Scene {
    async fn start(agent_uri_template: &str, trunk: &str, target_uri: &str) -> Scene {
        Scene::start_with(agent_uri_template, trunk, target_uri, None).await
    }

    /// As [`Scene::start`], with `--sip-conference-uri room` if any.
    async fn start_with(
        agent_uri_template: &str,
        trunk: &str,
        target_uri: &str,
        room: Option<String>,
    ) -> Scene {
        let dir = tempfile::tempdir().expect("temp dir");
        let agents: PathBuf = dir.path().join("agents.txt");
        std::fs::write(&agents, format!("{TARGET_AGENT} {target_uri}\n")).expect("agents file");
        let server = TestServer::start_with(|c: &mut Config| {
            c.telephony = TelephonyKind::Sip;
            c.sip.sip_listen = "127.0.0.1:0".parse().expect("address");
            c.sip.sip_agent_uri = Some(agent_uri_template.to_owned());
            c.sip.sip_trunk = Some(format!("sip:{trunk}"));
            // A one-call SIPp customer would take the trunk's OPTIONS ping for its call.
            c.sip.sip_keepalive_interval = Duration::ZERO;
            c.sip.sip_agents = Some(agents.clone());
            c.sip.sip_conference_uri = room;
            c.originate_timeout = Duration::from_secs(5);
        })
        .await;
        let client = server.client(AGENT);
        Scene {
            server,
            client,
            _dir: dir,
        }
    }

    /// With SIPp as the agent's phone and the customer (one call each) and `target` as
    /// [`TARGET_AGENT`]'s phone.
    async fn with_sipp(agent: &Sipp, customer: &Sipp, target: &Sipp) -> Scene {
        Scene::start(
            &agent.uri("{agent}"),
            &customer.uri_host(),
            &target.uri(TARGET_AGENT),
        )
        .await
    }

    /// Calls the customer; returns its id once connected, and a watch of what follows.
    async fn connected(&mut self) -> (String, Streaming<InteractionEvent>) {
        let (id, _, events) = call_until(&mut self.client, CUSTOMER, S::Delivered).await;
        let after = events.last().map(|e| e.sequence).unwrap_or_default();
        let w = watch(&mut self.client, &id, after).await;
        (id, w)
    }

    /// ConsultCall to [`TARGET_AGENT`], until the agent talks with it (`HOLD`/`CONSULTING`).
    async fn consulting(&mut self, id: &str, w: &mut Streaming<InteractionEvent>) {
        let reply = consult(&mut self.client, id, &format!("agent:{TARGET_AGENT}"))
            .await
            .expect("ConsultCall");
        assert_eq!(
            (state_of(reply.state), progress_of(reply.progress)),
            (S::Hold, P::Transferring)
        );
        let events = until_progress(w, P::Consulting).await;
        assert_eq!(
            steps(&events),
            vec![(S::Hold, P::Transferring), (S::Hold, P::Consulting)]
        );
    }
}

/// The interaction the events end with, once it is in `WRAP_UP`.
async fn wrapped_up(w: &mut Streaming<InteractionEvent>) -> Interaction {
    let events = wait_for_state(w, S::WrapUp).await;
    events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction")
}

async fn passed(peer: Sipp) {
    peer.finish_async(SIPP_WAIT).await.assert_passed(1);
}

/// The call given back after a busy target: `ringing` (its state) while the target rang, then
/// TRANSFER_FAILED naming the target's 486, then CONNECTED again.
fn assert_given_back_after_a_busy_target(events: &[InteractionEvent], ringing: S) {
    assert_eq!(
        steps(events),
        vec![
            (ringing, P::Transferring),
            (S::Delivered, P::TransferFailed),
            (S::Delivered, P::Connected)
        ]
    );
    let failed = events[1].interaction.clone().expect("interaction");
    assert_eq!(failed.transfer_detail, "486 Busy Here");
}

impl Scene {
    /// EndCall, then each phone's scenario must have passed; the server stops.
    async fn end_and_check(mut self, id: &str, phones: [Sipp; 3]) {
        end(&mut self.client, id).await.expect("EndCall");
        for phone in phones {
            passed(phone).await;
        }
        self.server.shutdown().await;
    }
}

/// Runs a blocking baresip wait off the runtime.
async fn baresip_event(phone: &std::sync::Arc<Baresip>, event: &'static str) {
    let phone = phone.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let seen = phone.wait_event(event, WAIT);
        seen.map_err(|e| format!("{e}\n{}", phone.log()))
    })
    .await
    .expect("baresip wait");
    assert!(seen.is_ok(), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Attended transfer

#[tokio::test]
async fn a_completed_consultation_hands_the_customer_to_the_target_agent() {
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("consult_customer.xml").start();
    let target = Sipp::uas("consult_target.xml").start();
    let mut scene = Scene::with_sipp(&agent, &customer, &target).await;
    let (id, mut w) = scene.connected().await;
    scene.consulting(&id, &mut w).await;

    let reply = complete_transfer(&mut scene.client, &id)
        .await
        .expect("CompleteTransfer");
    assert_eq!(reason_of(reply.end_reason), EndReason::Transferred);
    // The agent's phone got its BYE: its scenario is through.
    passed(agent).await;

    // The target agent's new interaction is the call now: its EndCall hangs up customer and
    // target (each got its re-INVITE, offerless to the customer, and the ACKs checked).
    let mut target_client = scene.server.client(TARGET_AGENT);
    let theirs = list_all(
        &mut target_client,
        calldesk::proto::InteractionState::Delivered,
    )
    .await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0].origination, Origination::Transfer as i32);
    assert_eq!(theirs[0].transferred_from, id);
    end(&mut target_client, &theirs[0].id)
        .await
        .expect("EndCall by the target agent");
    passed(customer).await;
    passed(target).await;
    scene.server.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_consultation_gives_the_customer_back_to_the_agent() {
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("consult_customer.xml").start();
    let target = Sipp::uas("consult_target.xml").start();
    let mut scene = Scene::with_sipp(&agent, &customer, &target).await;
    let (id, mut w) = scene.connected().await;
    scene.consulting(&id, &mut w).await;

    let reply = cancel_consult(&mut scene.client, &id)
        .await
        .expect("CancelConsult");
    assert_eq!(
        (state_of(reply.state), progress_of(reply.progress)),
        (S::Delivered, P::Connected)
    );
    // The target got its BYE; the customer its offerless re-INVITE, whose offer went to the
    // agent's phone.
    passed(target).await;
    end(&mut scene.client, &id).await.expect("EndCall");
    passed(agent).await;
    passed(customer).await;
    scene.server.shutdown().await;
}

#[tokio::test]
async fn a_busy_consultation_target_resumes_the_customer() {
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("consult_resumed_customer.xml").start();
    let target = Sipp::uas("customer_busy.xml").start();
    let mut scene = Scene::with_sipp(&agent, &customer, &target).await;
    let (id, mut w) = scene.connected().await;

    consult(&mut scene.client, &id, &format!("agent:{TARGET_AGENT}"))
        .await
        .expect("ConsultCall");
    let events = until_progress(&mut w, P::Connected).await;
    assert_given_back_after_a_busy_target(&events, S::Hold);
    // The customer's scenario checks it was resumed (a=sendrecv) after the hold.
    scene.end_and_check(&id, [target, agent, customer]).await;
}

#[tokio::test]
async fn the_customer_hanging_up_during_a_consultation_ends_the_call_and_the_targets_leg() {
    // baresip as the customer behind the trunk: it hangs up when the test says.
    let customer = std::sync::Arc::new(Baresip::start(CUSTOMER, AnswerMode::Auto));
    let agent = Sipp::uas("agent_answer.xml").start();
    let target = Sipp::uas("consult_target.xml").start();
    let trunk = format!("127.0.0.1:{}", customer.port());
    let mut scene = Scene::start(&agent.uri("{agent}"), &trunk, &target.uri(TARGET_AGENT)).await;
    let (id, mut w) = scene.connected().await;
    scene.consulting(&id, &mut w).await;

    customer.hangup();
    let ended = wrapped_up(&mut w).await;
    assert_eq!(reason_of(ended.end_reason), EndReason::RemoteHangup);
    // Both the agent's phone and the target got their BYE.
    passed(agent).await;
    passed(target).await;
    baresip_event(&customer, "CALL_CLOSED").await;
    scene.server.shutdown().await;
}

#[tokio::test]
async fn the_agent_hanging_up_during_a_consultation_ends_the_call_and_the_targets_leg() {
    // baresip as the agent's phone: it hangs up when the test says.
    let phone = std::sync::Arc::new(Baresip::start(AGENT, AnswerMode::Auto));
    let customer = Sipp::uas("customer_answer.xml").start();
    let target = Sipp::uas("consult_target.xml").start();
    let template = phone.uri().replace(AGENT, "{agent}");
    let mut scene = Scene::start(&template, &customer.uri_host(), &target.uri(TARGET_AGENT)).await;
    let (id, mut w) = scene.connected().await;
    scene.consulting(&id, &mut w).await;

    phone.hangup();
    let ended = wrapped_up(&mut w).await;
    assert_eq!(reason_of(ended.end_reason), EndReason::AgentHangup);
    // Both the customer (on hold) and the target got their BYE.
    passed(customer).await;
    passed(target).await;
    scene.server.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_consultation_while_the_target_rings_cancels_it_and_resumes_the_customer() {
    // baresip as the target agent's phone, ringing until it is CANCELled.
    let phone = std::sync::Arc::new(Baresip::start(TARGET_AGENT, AnswerMode::Manual));
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("consult_resumed_customer.xml").start();
    let mut scene = Scene::start(&agent.uri("{agent}"), &customer.uri_host(), &phone.uri()).await;
    let (id, _w) = scene.connected().await;
    consult(&mut scene.client, &id, &format!("agent:{TARGET_AGENT}"))
        .await
        .expect("ConsultCall");
    baresip_event(&phone, "CALL_INCOMING").await;

    let reply = cancel_consult(&mut scene.client, &id)
        .await
        .expect("CancelConsult");
    assert_eq!(
        (state_of(reply.state), progress_of(reply.progress)),
        (S::Delivered, P::Connected)
    );
    // The target's INVITE got its CANCEL; the customer its resume (a=sendrecv).
    baresip_event(&phone, "CALL_CLOSED").await;
    end(&mut scene.client, &id).await.expect("EndCall");
    passed(agent).await;
    passed(customer).await;
    scene.server.shutdown().await;
}

#[tokio::test]
async fn after_the_consulted_target_hangs_up_the_agent_takes_the_customer_back() {
    // baresip as the target agent's phone: it hangs up when the test says.
    let phone = std::sync::Arc::new(Baresip::start(TARGET_AGENT, AnswerMode::Auto));
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("consult_customer.xml").start();
    let mut scene = Scene::start(&agent.uri("{agent}"), &customer.uri_host(), &phone.uri()).await;
    let (id, mut w) = scene.connected().await;
    scene.consulting(&id, &mut w).await;

    phone.hangup();
    baresip_event(&phone, "CALL_CLOSED").await;
    // The customer waits on hold, as the interaction says; there is nobody to hand it to
    // ("the consulted target hung up"; or, if its BYE is still on its way, the target's
    // re-INVITE unanswered).
    let refused = complete_transfer(&mut scene.client, &id)
        .await
        .expect_err("CompleteTransfer without a target");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("refused by the switch"),
        "{refused:?}"
    );
    let reply = cancel_consult(&mut scene.client, &id)
        .await
        .expect("CancelConsult");
    assert_eq!(
        (state_of(reply.state), progress_of(reply.progress)),
        (S::Delivered, P::Connected)
    );
    // The customer got its offerless re-INVITE (its offer to the agent's phone).
    end(&mut scene.client, &id).await.expect("EndCall");
    passed(agent).await;
    passed(customer).await;
    scene.server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Conference

#[tokio::test]
async fn a_conference_moves_customer_agent_and_target_into_the_room() {
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let target = Sipp::uas("consult_target.xml").start();
    // One call per party: the target's (with its offer), the customer's and the agent's
    // (the room offers).
    let room = Sipp::uas("conference_room.xml").calls(3).start();
    let room_uri = room.uri("conf-{interaction}");
    let mut scene = Scene::start_with(
        &agent.uri("{agent}"),
        &customer.uri_host(),
        &target.uri(TARGET_AGENT),
        Some(room_uri),
    )
    .await;
    let (id, mut w) = scene.connected().await;

    let reply = conference(&mut scene.client, &id, &format!("agent:{TARGET_AGENT}"))
        .await
        .expect("ConferenceCall");
    assert_eq!(progress_of(reply.progress), P::Transferring);
    let events = until_progress(&mut w, P::Conferenced).await;
    assert_eq!(
        steps(&events),
        vec![
            (S::Delivered, P::Transferring),
            (S::Delivered, P::Conferenced)
        ]
    );
    // EndCall ends it for everyone: the three phones and the three room legs get a BYE.
    end(&mut scene.client, &id).await.expect("EndCall");
    passed(agent).await;
    passed(customer).await;
    passed(target).await;
    room.finish_async(SIPP_WAIT).await.assert_passed(3);
    scene.server.shutdown().await;
}

#[tokio::test]
async fn a_busy_conference_target_leaves_the_customer_with_the_agent_and_the_room_uncalled() {
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let target = Sipp::uas("customer_busy.xml").start();
    // Nothing listens at the room: a leg into it would fail the conference another way.
    let mut scene = Scene::start_with(
        &agent.uri("{agent}"),
        &customer.uri_host(),
        &target.uri(TARGET_AGENT),
        Some("sip:conf-{interaction}@127.0.0.1:9".to_owned()),
    )
    .await;
    let (id, mut w) = scene.connected().await;
    conference(&mut scene.client, &id, &format!("agent:{TARGET_AGENT}"))
        .await
        .expect("ConferenceCall");
    let events = until_progress(&mut w, P::Connected).await;
    assert_given_back_after_a_busy_target(&events, S::Delivered);
    scene.end_and_check(&id, [target, agent, customer]).await;
}

// ---------------------------------------------------------------------------------------------
// Blind transfer

#[tokio::test]
async fn a_blind_transfer_to_a_number_hands_the_customer_over_and_hangs_up_the_agent() {
    // The trunk's SIPp takes two calls: the customer's, then the transfer target's (the same
    // scenario: answered with an offer, re-INVITEs accepted, BYE at the end).
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").calls(2).start();
    let mut scene = Scene::start(&agent.uri("{agent}"), &customer.uri_host(), &unused_uri()).await;
    let (id, mut w) = scene.connected().await;
    let reply = transfer(&mut scene.client, &id, "+12025550177", "")
        .await
        .expect("TransferCall");
    assert_eq!(progress_of(reply.progress), P::Transferring);
    let ended = wrapped_up(&mut w).await;
    assert_eq!(reason_of(ended.end_reason), EndReason::Transferred);
    // The agent's phone got its BYE: its scenario is through, while customer and target talk.
    passed(agent).await;
    // The server's shutdown hangs up what is left: both of the trunk's calls end with a BYE.
    scene.server.shutdown().await;
    customer.finish_async(SIPP_WAIT).await.assert_passed(2);
}

#[tokio::test]
async fn a_busy_transfer_target_leaves_the_customer_with_the_agent() {
    // Another agent's phone (--sip-agents) that answers 486.
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let busy = Sipp::uas("customer_busy.xml").start();
    let mut scene = Scene::with_sipp(&agent, &customer, &busy).await;
    let (id, mut w) = scene.connected().await;
    transfer(&mut scene.client, &id, &format!("agent:{TARGET_AGENT}"), "")
        .await
        .expect("TransferCall");
    let events = until_progress(&mut w, P::Connected).await;
    assert_given_back_after_a_busy_target(&events, S::Delivered);
    // The customer is still the agent's: hold re-INVITEs both legs as before.
    hold(&mut scene.client, &id).await.expect("HoldCall");
    scene.end_and_check(&id, [busy, agent, customer]).await;
}

/// A phone URI nobody is called at (the test transfers to a number, not to the agent).
fn unused_uri() -> String {
    format!("sip:{TARGET_AGENT}@127.0.0.1:9")
}
