//! The SIP backend against real SIP peers: SIPp plays the agent's phone and the customer
//! behind the trunk (scenarios in `tests/sip/`), baresip plays a real softphone. Each test
//! checks both sides: calldesk's events through the gRPC API, and SIPp's own verdict (its exit
//! code and call counts), so that a call whose messages did not match the scenario fails.

mod support;

use std::{path::Path, time::Duration};

use calldesk::{
    proto::{CallProgress as P, EndReason, Interaction, InteractionState as S},
    server::config::{Config, SipTransportKind, TelephonyKind},
};
use support::{
    baresip::{AnswerMode, Baresip},
    in_process::TestServer,
    process::{run_to_exit, send_signal, serve_args, ServerProcess},
    sipp::{Sipp, SippBuilder, Transport},
    *,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The customer's number: any valid E.164 number reaches the trunk.
const CUSTOMER: &str = "+12025550100";
const AGENT: &str = "agent-7";
/// How long a SIPp peer may take to finish its scenario after the call ended.
const SIPP_WAIT: Duration = Duration::from_secs(15);

/// Points calldesk's SIP backend at `agent` (the agent's phone, for every agent) and at the
/// trunk `trunk` ("127.0.0.1:PORT"); no keepalive unless a test asks for it.
fn use_sip(c: &mut Config, agent_uri_template: &str, trunk: &str) {
    c.telephony = TelephonyKind::Sip;
    c.sip.sip_listen = "127.0.0.1:0".parse().expect("address");
    c.sip.sip_agent_uri = Some(agent_uri_template.to_owned());
    c.sip.sip_trunk = Some(format!("sip:{trunk}"));
    c.sip.sip_keepalive_interval = Duration::ZERO;
    c.originate_timeout = Duration::from_secs(5);
}

/// The agent's phone and the customer as SIPp peers, a server pointed at them, and the agent's
/// client.
struct Scene {
    agent: Sipp,
    customer: Sipp,
    server: TestServer,
    client: Client,
}

impl Scene {
    async fn set_up(agent: SippBuilder, customer: SippBuilder) -> Scene {
        Scene::set_up_with(agent, customer, |_| {}).await
    }

    async fn set_up_with(
        agent: SippBuilder,
        customer: SippBuilder,
        change: impl FnOnce(&mut Config),
    ) -> Scene {
        let (agent, customer) = (agent.start(), customer.start());
        let template = agent.uri("{agent}");
        let trunk = match customer.transport() {
            Transport::Udp => customer.uri_host(),
            Transport::Tcp => format!("{};transport=tcp", customer.uri_host()),
        };
        let server = TestServer::start_with(|c| {
            use_sip(c, &template, &trunk);
            change(c);
        })
        .await;
        let client = server.client(AGENT);
        Scene {
            agent,
            customer,
            server,
            client,
        }
    }

    /// Both phones played their scenario through (one call each), and the server stops.
    async fn both_passed(self) {
        passed(self.agent).await;
        passed(self.customer).await;
        self.server.shutdown().await;
    }
}

/// A loopback trunk address where nothing answers (the test holds the port, drops what comes).
fn silent_peer() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a silent UDP peer")
}

/// Calls the customer and follows the call until `state`: the id and the events so far.
async fn call(client: &mut Client, state: S) -> (String, Vec<calldesk::proto::InteractionEvent>) {
    let (id, _, events) = call_until(client, CUSTOMER, state).await;
    (id, events)
}

fn progress_path(events: &[calldesk::proto::InteractionEvent]) -> Vec<P> {
    events.iter().map(|e| progress_of(e.progress)).collect()
}

async fn ended(client: &mut Client, id: &str) -> Interaction {
    let mut stream = watch(client, id, 0).await;
    let events = wait_for_state(&mut stream, S::WrapUp).await;
    events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction")
}

async fn passed(peer: Sipp) {
    peer.finish_async(SIPP_WAIT).await.assert_passed(1);
}

// ---------------------------------------------------------------------------------------------
// Answered calls

#[tokio::test]
async fn answered_call_rings_connects_and_the_agent_hangs_up_both_legs() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_answer.xml").pause(Duration::from_millis(200)),
    )
    .await;

    let (id, events) = call(&mut scene.client, S::Delivered).await;
    assert_eq!(
        progress_path(&events),
        vec![P::Dialing, P::Ringing, P::Connected],
        "{events:#?}"
    );
    let interaction = end(&mut scene.client, &id).await.expect("EndCall");
    assert_eq!(state_of(interaction.state), S::WrapUp);
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);
    assert_eq!(interaction.end_detail, "");

    scene.both_passed().await;
}

#[tokio::test]
async fn a_183_without_180_is_ringing() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_183_answer.xml").pause(Duration::from_millis(200)),
    )
    .await;

    let (id, events) = call(&mut scene.client, S::Delivered).await;
    assert_eq!(
        progress_path(&events),
        vec![P::Dialing, P::Ringing, P::Connected]
    );
    end(&mut scene.client, &id).await.expect("EndCall");

    scene.both_passed().await;
}

#[tokio::test]
async fn calls_go_over_tcp_too() {
    let mut scene = Scene::set_up_with(
        Sipp::uas("agent_answer.xml").transport(Transport::Tcp),
        Sipp::uas("customer_answer.xml").transport(Transport::Tcp),
        |c| c.sip.sip_transport = SipTransportKind::Tcp,
    )
    .await;

    let (id, _) = call(&mut scene.client, S::Delivered).await;
    end(&mut scene.client, &id).await.expect("EndCall");

    scene.both_passed().await;
}

/// The customer's 200 OK again after calldesk's ACK (that ACK lost): calldesk ACKs it again,
/// with the same SDP answer, from the ACK it keeps for 64*T1 (sip/finished.rs). The scenario
/// fails without that second ACK.
#[tokio::test]
async fn a_customer_200_sent_again_after_the_ack_is_acked_again() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_200_again.xml"),
    )
    .await;

    let (id, _) = call(&mut scene.client, S::Delivered).await;
    // The scenario goes on after the call is connected: hang up once it has its second ACK.
    let what = "the customer's 200 sent again was never ACKed";
    let acks = |received: &[String]| received.iter().filter(|m| m.starts_with("ACK ")).count();
    scene
        .customer
        .until_received(SIPP_WAIT, what, |received| {
            (acks(received) >= 2).then_some(())
        })
        .await;
    end(&mut scene.client, &id).await.expect("EndCall");

    scene.both_passed().await;
}

#[tokio::test]
async fn a_digest_challenge_from_the_trunk_is_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("sip-password");
    std::fs::write(&password_file, "trunkpass\n").expect("write the password file");
    let mut scene = Scene::set_up_with(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_auth.xml"),
        |c| {
            c.sip.sip_auth_user = Some("trunkuser".into());
            c.sip.sip_auth_password_file = Some(password_file.clone());
        },
    )
    .await;

    let (id, _) = call(&mut scene.client, S::Delivered).await;
    end(&mut scene.client, &id).await.expect("EndCall");

    scene.both_passed().await;
}

// ---------------------------------------------------------------------------------------------
// Calls the customer's side refuses or does not answer

/// The customer's side answers `scenario`; the call ends in WRAP_UP with `reason` and an
/// `end_detail` containing `detail`, and the agent's leg is hung up.
async fn customer_refuses(
    scenario: &str,
    reason: EndReason,
    detail: &str,
    change: fn(&mut Config),
) {
    let mut scene =
        Scene::set_up_with(Sipp::uas("agent_answer.xml"), Sipp::uas(scenario), change).await;

    let id = start_call(&mut scene.client, CUSTOMER).await;
    let interaction = ended(&mut scene.client, &id).await;
    assert_eq!(
        reason_of(interaction.end_reason),
        reason,
        "{scenario}: {interaction:?}"
    );
    assert!(
        interaction.end_detail.contains(detail),
        "{scenario}: end_detail {:?} should contain {detail:?}",
        interaction.end_detail
    );

    scene.both_passed().await;
}

#[tokio::test]
async fn busy_486_and_decline_603_are_busy() {
    customer_refuses("customer_busy.xml", EndReason::Busy, "486", |_| {}).await;
    customer_refuses("customer_decline.xml", EndReason::Busy, "603", |_| {}).await;
}

#[tokio::test]
async fn unavailable_480_is_no_answer_and_503_is_failed() {
    customer_refuses(
        "customer_temporarily_unavailable.xml",
        EndReason::NoAnswer,
        "480",
        |_| {},
    )
    .await;
    customer_refuses("customer_unavailable.xml", EndReason::Failed, "503", |_| {}).await;
}

#[tokio::test]
async fn a_customer_ringing_too_long_is_cancelled_as_no_answer() {
    customer_refuses(
        "customer_ring_forever.xml",
        EndReason::NoAnswer,
        "did not answer",
        |c| {
            c.sip.sip_no_answer_timeout = Duration::from_millis(700);
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Hang-ups

#[tokio::test]
async fn the_customer_hanging_up_is_remote_hangup_and_the_agent_is_hung_up() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_hangup.xml").pause(Duration::from_millis(300)),
    )
    .await;

    let id = start_call(&mut scene.client, CUSTOMER).await;
    let interaction = ended(&mut scene.client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::RemoteHangup);
    assert!(interaction.connect_time.is_some());

    scene.both_passed().await;
}

#[tokio::test]
async fn the_agent_phone_hanging_up_is_agent_hangup_and_the_customer_is_hung_up() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_hangup.xml").pause(Duration::from_millis(300)),
        Sipp::uas("customer_answer.xml"),
    )
    .await;

    let id = start_call(&mut scene.client, CUSTOMER).await;
    let interaction = ended(&mut scene.client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);
    assert!(interaction.connect_time.is_some());

    scene.both_passed().await;
}

#[tokio::test]
async fn end_call_while_the_customer_rings_cancels_it() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_ring_forever.xml"),
    )
    .await;

    let (id, _) = call(&mut scene.client, S::DeliveryPending).await;
    let mut stream = watch(&mut scene.client, &id, 0).await;
    wait_for(&mut stream, WAIT, |e| e.progress == P::Ringing as i32).await;
    let interaction = end(&mut scene.client, &id).await.expect("EndCall");
    assert_eq!(reason_of(interaction.end_reason), EndReason::Canceled);

    scene.both_passed().await;
}

// ---------------------------------------------------------------------------------------------
// The agent's phone

#[tokio::test]
async fn the_agent_phone_refusing_fails_the_call_and_the_customer_is_never_called() {
    let agent = Sipp::uas("agent_refuse.xml").start();
    let trunk = silent_peer();
    let trunk_host = format!("127.0.0.1:{}", trunk.local_addr().expect("addr").port());
    let template = agent.uri("{agent}");
    let server = TestServer::start_with(|c| use_sip(c, &template, &trunk_host)).await;
    let mut client = server.client(AGENT);

    let id = start_call(&mut client, CUSTOMER).await;
    let interaction = ended(&mut client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::Failed);
    assert!(
        interaction.end_detail.contains("agent") && interaction.end_detail.contains("486"),
        "{:?}",
        interaction.end_detail
    );
    trunk.set_nonblocking(true).expect("nonblocking");
    assert!(
        trunk.recv(&mut [0u8; 2048]).is_err(),
        "the customer must not be called when the agent's phone refused"
    );

    passed(agent).await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_agent_phone_not_answering_in_time_fails_the_call() {
    let agent = Sipp::uas("agent_ring_forever.xml").start();
    let customer = silent_peer();
    let trunk_host = format!("127.0.0.1:{}", customer.local_addr().expect("addr").port());
    let template = agent.uri("{agent}");
    let server = TestServer::start_with(|c| {
        use_sip(c, &template, &trunk_host);
        c.sip.sip_agent_answer_timeout = Duration::from_millis(700);
    })
    .await;
    let mut client = server.client(AGENT);

    let id = start_call(&mut client, CUSTOMER).await;
    let interaction = ended(&mut client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::Failed);
    assert!(
        interaction.end_detail.contains("did not answer"),
        "{:?}",
        interaction.end_detail
    );

    passed(agent).await;
    server.shutdown().await;
}

#[tokio::test]
async fn no_response_at_all_is_the_contract_timeout_error() {
    let nobody = silent_peer();
    let template = format!(
        "sip:{{agent}}@127.0.0.1:{}",
        nobody.local_addr().expect("addr").port()
    );
    let server = TestServer::start_with(|c| {
        use_sip(c, &template, "127.0.0.1:9");
        c.originate_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = server.client(AGENT);

    let status = start_err(&mut client, start_req(CUSTOMER)).await;
    assert_code(&status, Code::DeadlineExceeded);
    assert_eq!(status.message(), "Timeout error");
    let mut invite = [0u8; 4096];
    let n = nobody
        .recv(&mut invite)
        .expect("the agent's phone was sent an INVITE");
    assert!(
        invite[..n].starts_with(b"INVITE "),
        "{:?}",
        String::from_utf8_lossy(&invite[..n])
    );
    assert!(list_all(&mut client, S::Unspecified).await.is_empty());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Hold and resume

#[tokio::test]
async fn hold_and_resume_re_invite_both_legs() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_answer.xml"),
    )
    .await;

    let (id, _) = call(&mut scene.client, S::Delivered).await;
    let held = hold(&mut scene.client, &id).await.expect("HoldCall");
    assert_eq!(
        (state_of(held.state), progress_of(held.progress)),
        (S::Hold, P::Held)
    );
    let resumed = resume(&mut scene.client, &id).await.expect("ResumeCall");
    assert_eq!(state_of(resumed.state), S::Delivered);
    end(&mut scene.client, &id).await.expect("EndCall");

    scene.both_passed().await;
}

#[tokio::test]
async fn a_refused_hold_names_the_sip_status_and_changes_nothing() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_hold_refused.xml"),
    )
    .await;

    let (id, _) = call(&mut scene.client, S::Delivered).await;
    let status = hold(&mut scene.client, &id)
        .await
        .expect_err("the hold is refused");
    assert_code(&status, Code::FailedPrecondition);
    assert_error_info(&status, "SWITCH_REFUSED");
    assert!(status.message().contains("488"), "{}", status.message());
    let interaction = get(&mut scene.client, &id).await.expect("GetInteraction");
    assert_eq!(state_of(interaction.state), S::Delivered);
    assert_eq!(
        interaction.sequence, 3,
        "no event was recorded for the refused hold"
    );
    end(&mut scene.client, &id).await.expect("EndCall");

    scene.both_passed().await;
}

// ---------------------------------------------------------------------------------------------
// calldesk is never a phone

#[tokio::test]
async fn an_invite_to_calldesk_is_refused_and_garbage_is_dropped() {
    let mut scene = Scene::set_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_answer.xml"),
    )
    .await;
    let port = scene
        .server
        .sip_addr()
        .expect("a SIP server has a SIP address")
        .port();

    // Malformed datagrams first: they are dropped, never a crash.
    let garbage = silent_peer();
    for datagram in [
        &b"\x00\xff\xfe"[..],
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200\r\nVia: x\r\n\r\n",
    ] {
        garbage
            .send_to(datagram, ("127.0.0.1", port))
            .expect("send garbage");
    }
    let stranger = Sipp::uac("uac_unsolicited.xml", &format!("127.0.0.1:{port}")).start();
    passed(stranger).await;

    // And calldesk still places calls.
    let (id, _) = call(&mut scene.client, S::Delivered).await;
    end(&mut scene.client, &id).await.expect("EndCall");
    scene.both_passed().await;
}

// ---------------------------------------------------------------------------------------------
// Health follows the trunk

#[tokio::test]
async fn health_is_not_serving_while_the_trunk_leaves_options_unanswered() {
    let trunk = Sipp::uas("customer_options.xml").calls(0).start();
    let template = "sip:{agent}@127.0.0.1:9".to_owned();
    let trunk_host = trunk.uri_host();
    let server = TestServer::start_with(|c| {
        use_sip(c, &template, &trunk_host);
        c.sip.sip_keepalive_interval = Duration::from_millis(200);
    })
    .await;
    let service = "calldesk.v1.InteractionService";
    wait_for_health(server.addr(), service, ServingStatus::Serving, WAIT).await;
    trunk.quit();
    let verdict = trunk.finish_async(SIPP_WAIT).await;
    verdict.assert_passed_at_least(1);
    wait_for_health(server.addr(), service, ServingStatus::NotServing, WAIT).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A real softphone

#[tokio::test]
async fn baresip_as_the_agent_phone_answers_talks_and_hangs_up() {
    let phone = Baresip::start(AGENT, AnswerMode::Auto);
    let customer = Sipp::uas("customer_answer.xml").start();
    let template = phone.uri().replace(AGENT, "{agent}");
    let trunk = customer.uri_host();
    let server = TestServer::start_with(|c| use_sip(c, &template, &trunk)).await;
    let mut client = server.client(AGENT);

    let (id, _) = call(&mut client, S::Delivered).await;
    let established = phone.wait_event("CALL_ESTABLISHED", WAIT);
    assert!(established.is_ok(), "{established:?}\n{}", phone.log());
    phone.hangup();
    let interaction = ended(&mut client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);

    passed(customer).await;
    server.shutdown().await;
}

/// A softphone that answers by itself only when the INVITE asks it to (baresip's
/// `answermode=manual;sip_autoanswer=yes`: no auto-answer setting of its own) picks up the
/// agent leg because of `--sip-agent-auto-answer`'s headers, and the call connects.
///
/// Ignored: Debian 12's baresip 1.0.0 predates `sip_autoanswer` (baresip 1.1.0, 2021) and
/// honours none of the headers: it rings until the originate timeout. With a newer baresip:
/// `BARESIP=/path/to/baresip cargo test --test sip_calls -- --ignored auto_answer`.
#[tokio::test]
#[ignore = "needs baresip >= 1.1.0 (sip_autoanswer); Debian 12's 1.0.0 ignores auto-answer headers"]
async fn auto_answer_headers_make_a_softphone_pick_up_by_itself() {
    let phone = Baresip::start(AGENT, AnswerMode::OnRequest);
    let customer = Sipp::uas("customer_answer.xml").start();
    let template = phone.uri().replace(AGENT, "{agent}");
    let trunk = customer.uri_host();
    let server = TestServer::start_with(|c| {
        use_sip(c, &template, &trunk);
        c.sip.sip_agent_auto_answer = true;
    })
    .await;
    let mut client = server.client(AGENT);

    // DELIVERED only once the agent's phone answered: nobody pressed anything.
    let (id, _) = call(&mut client, S::Delivered).await;
    let established = phone.wait_event("CALL_ESTABLISHED", WAIT);
    assert!(established.is_ok(), "{established:?}\n{}", phone.log());
    end(&mut client, &id).await.expect("EndCall");
    passed(customer).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The binary: no orphan calls on SIGTERM, SERVER_RESTART after a crash, no secrets in the logs,
// the agents' phones re-read on SIGHUP, flags that belong to the other backend refused

fn sip_flags(agent_uri_template: &str, customer: &Sipp) -> Vec<String> {
    vec![
        "--telephony".into(),
        "sip".into(),
        "--sip-listen".into(),
        "127.0.0.1:0".into(),
        "--sip-agent-uri".into(),
        agent_uri_template.to_owned(),
        "--sip-trunk".into(),
        format!("sip:{}", customer.uri_host()),
        "--sip-keepalive-interval".into(),
        "off".into(),
    ]
}

async fn process_with(data_dir: &Path, flags: &[String]) -> ServerProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ServerProcess::start(data_dir, &flags).await
}

#[tokio::test]
async fn sigterm_hangs_up_both_legs_of_a_live_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let mut server = process_with(dir.path(), &sip_flags(&agent.uri("{agent}"), &customer)).await;
    let mut client = server.client(AGENT);

    call(&mut client, S::Delivered).await;
    let status = server.sigterm().await;
    assert!(status.success(), "{status:?}\n{}", server.stderr_text());

    passed(agent).await;
    passed(customer).await;
}

/// A deploy's SIGTERM lets the call go on for --drain-calls-for (docs/api.md §9.2), then hangs
/// up both legs as above. On SQLite, the single node's store: with PostgreSQL the drain hands
/// the call to a survivor instead (tests/replicas.rs, a_drain_that_runs_out_hands_*).
#[tokio::test]
async fn sigterm_hangs_up_a_live_call_only_after_drain_calls_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let mut flags = sip_flags(&agent.uri("{agent}"), &customer);
    flags.extend(["--drain-calls-for".into(), "1s".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start_sqlite(dir.path(), &flags).await;
    let mut client = server.client(AGENT);

    call(&mut client, S::Delivered).await;
    let signalled = std::time::Instant::now();
    let status = server.sigterm().await;
    assert!(status.success(), "{status:?}\n{}", server.stderr_text());
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "the live call was kept for --drain-calls-for 1s"
    );
    assert!(
        server
            .stderr_text()
            .contains("calls still live after --drain-calls-for; hanging them up"),
        "{}",
        server.stderr_text()
    );
    // Both phones got their BYE (the scenarios end with it).
    passed(agent).await;
    passed(customer).await;
}

/// `sip_flags`, listening on `port` (a restart must take the port the phones know).
fn sip_flags_on(port: u16, agent_uri_template: &str, customer: &Sipp) -> Vec<String> {
    let mut flags = sip_flags(agent_uri_template, customer);
    let listen = flags
        .iter()
        .position(|f| f == "--sip-listen")
        .expect("--sip-listen");
    flags[listen + 1] = format!("127.0.0.1:{port}");
    flags
}

/// kill -9 during a connected call, and a restart on the same store and SIP port: the call
/// is live again (an event marked `recovered`, state unchanged); the phones accept a hold's
/// re-INVITEs from the restored dialogs, and EndCall's BYE on both legs (SIPp passes only if
/// each got its re-INVITE and its BYE in its dialog).
#[tokio::test]
async fn after_a_crash_the_restart_adopts_the_connected_call_holds_and_ends_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_sip_port();
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let flags = sip_flags_on(port, &agent.uri("{agent}"), &customer);
    let mut server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let (id, before) = call(&mut client, S::Delivered).await;
    server.kill9();

    let server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let mut stream = watch(&mut client, &id, 0).await;
    let events = wait_for(&mut stream, WAIT, |e| e.recovered).await;
    let recovered = events.last().expect("the recovered event");
    assert_eq!(recovered.sequence, before.len() as u64 + 1, "{events:#?}");
    assert_eq!(
        (state_of(recovered.state), progress_of(recovered.progress)),
        (S::Delivered, P::Connected)
    );
    assert_eq!(state_of(recovered.previous_state), S::Delivered);

    let held = hold(&mut client, &id)
        .await
        .expect("HoldCall after the restart");
    assert_eq!(state_of(held.state), S::Hold);
    let interaction = end(&mut client, &id)
        .await
        .expect("EndCall after the restart");
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);
    passed(agent).await;
    passed(customer).await;
}

/// A server on `dir` with `--metrics-listen`, and a call through `agent_uri` and `customer`
/// connected, its two dialogs parked (`calldesk_sip_parked_dialogs` at 2).
struct ParkedCall {
    /// Kept: the server lives as long as the test's call.
    _server: ServerProcess,
    client: Client,
    id: String,
    metrics: std::net::SocketAddr,
}

impl ParkedCall {
    async fn place(dir: &Path, agent_uri: &str, customer: &Sipp) -> ParkedCall {
        let metrics = free_addr();
        let mut flags = sip_flags(agent_uri, customer);
        flags.extend(["--metrics-listen".to_owned(), metrics.to_string()]);
        let server = process_with(dir, &flags).await;
        let mut client = server.client(AGENT);
        let (id, _) = call(&mut client, S::Delivered).await;
        wait_for_metric(metrics, "calldesk_sip_parked_dialogs 2", WAIT).await;
        ParkedCall {
            _server: server,
            client,
            id,
            metrics,
        }
    }
}

/// A connected call's dialogs are parked while it waits (kept outside the SIP stack:
/// `calldesk_sip_parked_dialogs`), and taken back for what the call does: a hold's re-INVITEs,
/// then EndCall's BYEs (SIPp passes only if each leg got them in its dialog). Nothing stays
/// parked once the call has ended.
#[tokio::test]
async fn a_waiting_call_parks_its_dialogs_and_takes_them_back_to_act() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let parked = ParkedCall::place(dir.path(), &agent.uri("{agent}"), &customer).await;
    let (mut client, id, metrics) = (parked.client, parked.id, parked.metrics);

    let held = hold(&mut client, &id)
        .await
        .expect("HoldCall on parked dialogs");
    assert_eq!(state_of(held.state), S::Hold);
    wait_for_metric(metrics, "calldesk_sip_parked_dialogs 2", WAIT).await;
    end(&mut client, &id).await.expect("EndCall");
    wait_for_metric(metrics, "calldesk_sip_parked_dialogs 0", WAIT).await;
    passed(agent).await;
    passed(customer).await;
}

/// The far end's BYE reaches a parked dialog: the agent's phone (baresip) hangs up once the
/// call's dialogs are parked; the interaction ends AGENT_HANGUP, the customer gets its BYE,
/// and nothing stays parked.
#[tokio::test]
async fn a_phone_hanging_up_reaches_its_parked_dialog() {
    let dir = tempfile::tempdir().expect("temp dir");
    let phone = Baresip::start(AGENT, AnswerMode::Auto);
    let customer = Sipp::uas("customer_answer.xml").start();
    let agent_uri = phone.uri().replace(AGENT, "{agent}");
    let parked = ParkedCall::place(dir.path(), &agent_uri, &customer).await;
    let (mut client, id, metrics) = (parked.client, parked.id, parked.metrics);

    phone.hangup();
    let interaction = ended(&mut client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);
    wait_for_metric(metrics, "calldesk_sip_parked_dialogs 0", WAIT).await;
    passed(customer).await;
}

/// A request that changes nothing the call hears of (an in-dialog OPTIONS with an old CSeq,
/// which rsipstack answers 500 itself) takes the customer's dialog out of the park like any
/// request; the call is told all the same and parks it again, rather than keep it out for the
/// rest of the call.
#[tokio::test]
async fn a_request_the_call_does_not_hear_of_leaves_its_dialog_parked_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_old_cseq.xml").start();
    let parked = ParkedCall::place(dir.path(), &agent.uri("{agent}"), &customer).await;
    let (mut client, id, metrics) = (parked.client, parked.id, parked.metrics);
    customer
        .until_received(WAIT, "the 500 to the old CSeq", |received| {
            received
                .iter()
                .any(|m| m.starts_with("SIP/2.0 500"))
                .then_some(())
        })
        .await;
    wait_for_metric(metrics, "calldesk_sip_parked_dialogs 2", WAIT).await;
    end(&mut client, &id).await.expect("EndCall");
    passed(agent).await;
    passed(customer).await;
}

/// A restored dialog's requests carry a CSeq above every request sent before the crash (RFC 3261
/// §12.2.1.1), even one no stored report knows of: a hold the customer refused (488) sent a
/// re-INVITE after the last report. The customer's SIPp answers the restart's hold and BYE only
/// if their CSeq is above the refused re-INVITE's (`customer_cseq_grows.xml`).
#[tokio::test]
async fn after_a_crash_the_restored_dialogs_cseq_is_above_every_request_sent_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_sip_port();
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_cseq_grows.xml").start();
    let flags = sip_flags_on(port, &agent.uri("{agent}"), &customer);
    let mut server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let (id, _) = call(&mut client, S::Delivered).await;
    let refused = hold(&mut client, &id)
        .await
        .expect_err("the customer refuses the first hold");
    assert!(refused.message().contains("488"), "{}", refused.message());
    server.kill9();

    let server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let mut stream = watch(&mut client, &id, 0).await;
    wait_for(&mut stream, WAIT, |e| e.recovered).await;
    let held = hold(&mut client, &id)
        .await
        .expect("HoldCall after the restart: the customer took its CSeq");
    assert_eq!(state_of(held.state), S::Hold);
    end(&mut client, &id)
        .await
        .expect("EndCall after the restart");
    passed(agent).await;
    passed(customer).await;
}

/// After the restart, the agent's phone (baresip) hanging up reaches the adopted call: the
/// interaction ends AGENT_HANGUP and the customer gets its BYE.
#[tokio::test]
async fn after_a_crash_a_phone_hanging_up_ends_the_adopted_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_sip_port();
    let phone = Baresip::start(AGENT, AnswerMode::Auto);
    let customer = Sipp::uas("customer_answer.xml").start();
    let flags = sip_flags_on(port, &phone.uri().replace(AGENT, "{agent}"), &customer);
    let mut server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let (id, _) = call(&mut client, S::Delivered).await;
    let established = phone.wait_event("CALL_ESTABLISHED", WAIT);
    assert!(established.is_ok(), "{established:?}\n{}", phone.log());
    server.kill9();

    let server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let mut stream = watch(&mut client, &id, 0).await;
    wait_for(&mut stream, WAIT, |e| e.recovered).await;
    phone.hangup();
    let events = wait_for_state(&mut stream, S::WrapUp).await;
    let interaction = events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction");
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);
    passed(customer).await;
}

#[tokio::test]
async fn neither_sdp_nor_credentials_reach_the_logs_even_at_trace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("sip-password");
    std::fs::write(&password_file, "trunkpass\n").expect("write the password file");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_auth.xml").start();
    let mut flags = sip_flags(&agent.uri("{agent}"), &customer);
    flags.extend([
        "--sip-auth-user".into(),
        "trunkuser".into(),
        "--sip-auth-password-file".into(),
        password_file.display().to_string(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start_logging(&dir.path().join("data"), &flags, "trace").await;
    let mut client = server.client(AGENT);
    let (id, _) = call(&mut client, S::Delivered).await;
    end(&mut client, &id).await.expect("EndCall");
    passed(agent).await;
    passed(customer).await;

    let (_, stderr) = server.stop_collecting_stderr().await;
    assert!(
        stderr.contains("calling the customer"),
        "the call is logged:\n{stderr}"
    );
    for secret in [
        "trunkpass",
        "m=audio",
        "Authorization",
        "response=",
        "c=IN IP4",
    ] {
        assert!(
            !stderr.contains(secret),
            "{secret:?} reached the logs:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn sighup_re_reads_the_agents_phones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agents = dir.path().join("agents.txt");
    let first = Sipp::uas("agent_answer.xml").start();
    let second = Sipp::uas("agent_answer.xml").start();
    std::fs::write(&agents, format!("{AGENT} {}\n", first.uri("7001"))).expect("write agents");
    let customer = Sipp::uas("customer_answer.xml").calls(2).start();
    let mut flags = sip_flags("sip:{agent}@127.0.0.1:9", &customer);
    flags.extend(["--sip-agents".into(), agents.display().to_string()]);
    let server = process_with(&dir.path().join("data"), &flags).await;
    let mut client = server.client(AGENT);

    let (id, _) = call(&mut client, S::Delivered).await;
    end(&mut client, &id).await.expect("EndCall");
    passed(first).await;

    std::fs::write(&agents, format!("{AGENT} {}\n", second.uri("7002"))).expect("rewrite agents");
    send_signal(server.pid(), "-HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server
        .stderr_text()
        .contains("SIP agent phones reloaded on SIGHUP")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload:\n{}",
            server.stderr_text()
        );
        // A pause between polls of the log, not a synchronisation: the loop ends on the line.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (id, _) = call(&mut client, S::Delivered).await;
    end(&mut client, &id).await.expect("EndCall");
    passed(second).await;
    customer.finish_async(SIPP_WAIT).await.assert_passed(2);
}

#[test]
fn flags_of_the_other_backend_and_a_missing_trunk_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = |extra: &[&str], expected: &str| {
        let args = serve_args(dir.path(), extra);
        let finished = run_to_exit(args, WAIT);
        assert_eq!(
            finished.status.code(),
            Some(1),
            "{extra:?}: {}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains(expected),
            "{extra:?}: {}",
            finished.stderr
        );
    };
    let sip = [
        "--telephony",
        "sip",
        "--sip-listen",
        "127.0.0.1:0",
        "--sip-agent-uri",
        "sip:{agent}@127.0.0.1:9",
    ];
    refused(
        &[
            &sip[..],
            &["--sip-trunk", "sip:127.0.0.1:9", "--sim-ring", "1s"],
        ]
        .concat(),
        "--sim-ring",
    );
    refused(&sip, "--sip-trunk");
    refused(
        &[
            "--telephony",
            "sip",
            "--sip-trunk",
            "sip:127.0.0.1:9",
            "--sip-listen",
            "127.0.0.1:0",
        ],
        "--sip-agent-uri",
    );
    refused(
        &[
            &sip[..],
            &["--sip-trunk", "sip:127.0.0.1:9", "--sip-auth-user", "u"],
        ]
        .concat(),
        "CALLDESK_SIP_PASSWORD",
    );
}

/// Issue 22: a call that has ended holds no leg, even while a far end has not answered its BYE
/// (the agent's phone here is gone), so SIGTERM neither waits for it nor warns of it. A
/// shutdown that waited for it (up to 4 s) would overrun the 2 s grace and exit 1.
#[tokio::test]
async fn sigterm_neither_waits_for_nor_warns_of_calls_that_ended() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let mut flags = sip_flags(&agent.uri("{agent}"), &customer);
    flags.extend(["--shutdown-grace".into(), "2s".into()]);
    let mut server = process_with(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let (id, _) = call(&mut client, S::Delivered).await;
    // The agent's phone goes away: calldesk's BYE to it will get no answer.
    drop(agent);
    end(&mut client, &id).await.expect("EndCall");
    passed(customer).await;

    let (status, stderr) = server.stop_collecting_stderr().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        !stderr.contains("did not end"),
        "warned of a call that had ended:\n{stderr}"
    );
}

#[tokio::test]
async fn both_legs_say_who_is_calling_and_hostile_names_stay_in_their_quotes() {
    // The SIPp peers fail the call unless each INVITE carries the headers their scenarios
    // check (tests/sip/agent_identity.xml, customer_identity.xml).
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("caller-ids.txt");
    std::fs::write(&file, "* +12125550100 +13105550100\n").expect("write caller IDs");
    let mut scene = Scene::set_up_with(
        Sipp::uas("agent_identity.xml"),
        Sipp::uas("customer_identity.xml"),
        |c| {
            c.caller_ids = Some(file.clone());
            c.sip.sip_caller_name = Some("Acme Support".into());
            c.sip.sip_agent_auto_answer = true;
            c.sip.sip_send_uui = true;
        },
    )
    .await;
    let contact = calldesk::proto::AssociatedObject {
        id: "003XX".into(),
        r#type: "contact".into(),
        display_name: "Zoë \"The <Boss>\" \\ Lee\r\nX-Evil: 1".into(),
        ..Default::default()
    };
    let started = start_ok(&mut scene.client, start_req_object("+13105559999", contact)).await;
    let interaction = started.interaction.expect("an interaction");
    assert_eq!(interaction.caller_id, "+13105550100", "local presence");
    let mut stream = watch(&mut scene.client, &interaction.id, 0).await;
    wait_for_state(&mut stream, S::Delivered).await;
    end(&mut scene.client, &interaction.id)
        .await
        .expect("EndCall");
    scene.both_passed().await;
}
