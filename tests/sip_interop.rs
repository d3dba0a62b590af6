//! The SIP backend against strict peers and other stacks.
//!
//! * Conformance: SIPp plays the agent's phone and the customer with `tests/sip/strict_*.xml`,
//!   which fail the call when a request calldesk sends lacks what RFC 3261 and RFC 3264
//!   require (see the scenarios' headers), in every message of set-up, hold, resume, either
//!   end hanging up and CANCEL. Beside SIPp's verdict, each test checks from SIPp's message
//!   trace what a regular expression cannot: that every Content-Length is the body's length,
//!   and the direction of each offer (hold per RFC 3264 §8.4).
//! * Interop: real calls that connect, hold, resume and end with other SIP stacks as the
//!   agent's phone (baresip, linphone) and the customer (SIPp, baresip), through Kamailio as a
//!   record-routing proxy with digest authentication.

mod support;

use std::time::Duration;

use calldesk::{
    proto::{CallProgress as P, EndReason, Interaction, InteractionState as S},
    server::config::{Config, SipTransportKind, TelephonyKind},
};
use support::{
    baresip::{AnswerMode, Baresip},
    in_process::TestServer,
    kamailio::{self, Kamailio, Registrar},
    linphone::Linphone,
    sipp::{Sipp, SippBuilder, SippVerdict, Transport},
    *,
};

/// The customer's number: any valid E.164 number reaches the trunk.
const CUSTOMER: &str = "+12025550100";
const AGENT: &str = "agent-7";
/// How long a SIPp peer may take to finish its scenario after the call ended.
const SIPP_WAIT: Duration = Duration::from_secs(15);

/// Points calldesk's SIP backend at the agent's phone `agent_uri_template` and the trunk `trunk`
/// (a SIP URI); no keepalive (a one-call SIPp would take the OPTIONS for its call).
fn use_sip(c: &mut Config, agent_uri_template: &str, trunk: &str) {
    c.telephony = TelephonyKind::Sip;
    c.sip.sip_listen = "127.0.0.1:0".parse().expect("address");
    c.sip.sip_agent_uri = Some(agent_uri_template.to_owned());
    c.sip.sip_trunk = Some(trunk.to_owned());
    c.sip.sip_keepalive_interval = Duration::ZERO;
    c.originate_timeout = Duration::from_secs(5);
}

async fn ended(client: &mut Client, id: &str) -> Interaction {
    let mut stream = watch(client, id, 0).await;
    let events = wait_for_state(&mut stream, S::WrapUp).await;
    events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction")
}

// ---------------------------------------------------------------------------------------------
// Conformance: strict SIPp peers

/// A strict SIPp peer: `strict_agent.xml` or `strict_customer.xml` in `mode`.
fn strict(scenario: &str, mode: &str) -> SippBuilder {
    Sipp::uas(scenario)
        .set("mode", mode)
        .pause(Duration::from_millis(100))
}

/// The two strict phones and a server pointed at them.
struct Strict {
    agent: Sipp,
    customer: Sipp,
    server: TestServer,
    client: Client,
}

impl Strict {
    async fn start(
        agent: SippBuilder,
        customer: SippBuilder,
        change: impl FnOnce(&mut Config),
    ) -> Strict {
        let (agent, customer) = (agent.start(), customer.start());
        let template = agent.uri("{agent}");
        let trunk = match customer.transport() {
            Transport::Udp => format!("sip:{}", customer.uri_host()),
            Transport::Tcp => format!("sip:{};transport=tcp", customer.uri_host()),
        };
        let server = TestServer::start_with(|c| {
            use_sip(c, &template, &trunk);
            change(c);
        })
        .await;
        let client = server.client(AGENT);
        Strict {
            agent,
            customer,
            server,
            client,
        }
    }

    /// Both phones passed every check of their scenario; what they received, agent's first.
    async fn verdicts(self) -> (SippVerdict, SippVerdict) {
        let agent = conforming(self.agent).await;
        let customer = conforming(self.customer).await;
        self.server.shutdown().await;
        (agent, customer)
    }
}

/// `peer` passed its scenario (one call), and every message it received has the
/// Content-Length of its body (RFC 3261 §7.4.2, §18.3).
async fn conforming(peer: Sipp) -> SippVerdict {
    let verdict = peer.finish_async(SIPP_WAIT).await;
    verdict.assert_passed(1);
    assert!(!verdict.received.is_empty(), "{}", verdict.log);
    for message in &verdict.received {
        let (head, body) = message
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {message:?}"));
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l"))
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no Content-Length in {message:?}"));
        assert_eq!(length, body.len(), "Content-Length of {message:?}");
    }
    verdict
}

/// The direction attribute of each re-INVITE (an INVITE with a To tag) `verdict` received.
fn reinvite_directions(verdict: &SippVerdict) -> Vec<&str> {
    verdict
        .received
        .iter()
        .filter(|m| m.starts_with("INVITE ") && to_has_tag(m))
        .filter_map(|m| {
            ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| m.contains(&format!("\r\na={d}\r\n")))
        })
        .collect()
}

fn to_has_tag(message: &str) -> bool {
    message
        .lines()
        .any(|l| (l.starts_with("To:") || l.starts_with("t:")) && l.contains(";tag="))
}

#[tokio::test]
async fn every_message_of_a_call_held_resumed_and_ended_follows_the_rfcs() {
    // The trunk challenges the first INVITE: the CSeq goes on across the retry.
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("sip-password");
    std::fs::write(&password_file, "trunkpass\n").expect("write the password file");
    let mut call = Strict::start(
        strict("strict_agent.xml", "answer"),
        strict("strict_customer.xml", "auth"),
        |c| {
            c.sip.sip_auth_user = Some("trunkuser".into());
            c.sip.sip_auth_password_file = Some(password_file.clone());
        },
    )
    .await;

    let (id, _, _) = call_until(&mut call.client, CUSTOMER, S::Delivered).await;
    let held = hold(&mut call.client, &id).await.expect("HoldCall");
    assert_eq!(progress_of(held.progress), P::Held);
    let resumed = resume(&mut call.client, &id).await.expect("ResumeCall");
    assert_eq!(progress_of(resumed.progress), P::Connected);
    end(&mut call.client, &id).await.expect("EndCall");

    let (agent, customer) = call.verdicts().await;
    // RFC 3264 §8.4: hold is sendonly toward the customer, inactive toward the agent's phone,
    // and resuming is sendrecv again; the agent's first re-INVITE connects the customer.
    assert_eq!(
        reinvite_directions(&agent),
        ["sendrecv", "inactive", "sendrecv"]
    );
    assert_eq!(reinvite_directions(&customer), ["sendonly", "sendrecv"]);
}

#[tokio::test]
async fn the_customer_hanging_up_over_tcp_follows_the_rfcs() {
    let mut call = Strict::start(
        strict("strict_agent.xml", "answer").transport(Transport::Tcp),
        strict("strict_customer.xml", "hangup").transport(Transport::Tcp),
        |c| c.sip.sip_transport = SipTransportKind::Tcp,
    )
    .await;

    let id = start_call(&mut call.client, CUSTOMER).await;
    let interaction = ended(&mut call.client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::RemoteHangup);
    call.verdicts().await;
}

#[tokio::test]
async fn the_agent_phone_hanging_up_follows_the_rfcs() {
    let mut call = Strict::start(
        strict("strict_agent.xml", "hangup"),
        strict("strict_customer.xml", "answer"),
        |_| {},
    )
    .await;

    let id = start_call(&mut call.client, CUSTOMER).await;
    let interaction = ended(&mut call.client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::AgentHangup);
    call.verdicts().await;
}

#[tokio::test]
async fn cancelling_the_ringing_customer_follows_the_rfcs() {
    let mut call = Strict::start(
        strict("strict_agent.xml", "answer"),
        strict("strict_customer.xml", "ring"),
        |_| {},
    )
    .await;

    let (id, mut stream, _) = call_until(&mut call.client, CUSTOMER, S::DeliveryPending).await;
    wait_for(&mut stream, WAIT, |e| e.progress == P::Ringing as i32).await;
    let interaction = end(&mut call.client, &id).await.expect("EndCall");
    assert_eq!(reason_of(interaction.end_reason), EndReason::Canceled);
    call.verdicts().await;
}

#[tokio::test]
async fn cancelling_the_agent_phone_follows_the_rfcs() {
    let agent = strict("strict_agent.xml", "ring").start();
    // Never called: the agent's phone does not answer.
    let trunk = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a silent trunk");
    let trunk = format!("sip:{}", trunk.local_addr().expect("address"));
    let template = agent.uri("{agent}");
    let server = TestServer::start_with(|c| {
        use_sip(c, &template, &trunk);
        c.sip.sip_agent_answer_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = server.client(AGENT);

    let id = start_call(&mut client, CUSTOMER).await;
    let interaction = ended(&mut client, &id).await;
    assert_eq!(reason_of(interaction.end_reason), EndReason::Failed);
    conforming(agent).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Interop: other stacks as the phones, through Kamailio

/// The agent's phone of an interop call.
#[derive(Clone, Copy, Debug)]
enum AgentKind {
    Baresip,
    Linphone,
}

/// The customer's side of an interop call.
#[derive(Clone, Copy, Debug)]
enum CustomerKind {
    /// `customer_answer.xml`, with `-rtp_echo`.
    Sipp,
    /// A softphone: it answers calldesk's INVITE without SDP with an offer of its own.
    Baresip,
}

enum AgentPhone {
    Baresip(Baresip),
    Linphone(Linphone),
}

impl AgentPhone {
    fn start(kind: AgentKind, registrar: Option<Registrar>) -> AgentPhone {
        match (kind, registrar) {
            (AgentKind::Baresip, None) => {
                AgentPhone::Baresip(Baresip::start(AGENT, AnswerMode::Auto))
            }
            (AgentKind::Baresip, Some(r)) => {
                AgentPhone::Baresip(Baresip::start_registered(AnswerMode::Auto, &r))
            }
            (AgentKind::Linphone, registrar) => {
                AgentPhone::Linphone(Linphone::start(AGENT, registrar))
            }
        }
    }

    /// Where calldesk reaches the phone when no proxy is in the way.
    fn uri_template(&self) -> String {
        let uri = match self {
            AgentPhone::Baresip(phone) => phone.uri(),
            AgentPhone::Linphone(phone) => phone.uri(),
        };
        uri.replace(AGENT, "{agent}")
    }

    /// Blocks until the phone says the call is up (linphone: `connected`; baresip:
    /// CALL_ESTABLISHED), then until it says the call was put on hold by the far end (linphone
    /// only: baresip's events do not tell).
    fn saw(&self, event: PhoneEvent) -> Result<String, String> {
        tokio::task::block_in_place(|| match (self, event) {
            (AgentPhone::Baresip(p), PhoneEvent::Connected) => {
                p.wait_event("CALL_ESTABLISHED", WAIT)
            }
            (AgentPhone::Baresip(p), PhoneEvent::Ended) => p.wait_event("CALL_CLOSED", WAIT),
            (AgentPhone::Baresip(_), PhoneEvent::Held) => Ok(String::new()),
            (AgentPhone::Linphone(p), PhoneEvent::Connected) => p.wait_line(" connected.", WAIT),
            (AgentPhone::Linphone(p), PhoneEvent::Held) => p.wait_line("has been paused by", WAIT),
            (AgentPhone::Linphone(p), PhoneEvent::Ended) => p.wait_line(" ended (", WAIT),
        })
    }

    fn log(&self) -> String {
        match self {
            AgentPhone::Baresip(p) => p.log(),
            AgentPhone::Linphone(p) => p.log(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum PhoneEvent {
    Connected,
    Held,
    Ended,
}

enum CustomerSide {
    Sipp(Sipp),
    Baresip(Baresip),
}

impl CustomerSide {
    fn start(kind: CustomerKind) -> CustomerSide {
        match kind {
            CustomerKind::Sipp => CustomerSide::Sipp(
                Sipp::uas("customer_answer.xml")
                    .pause(Duration::from_millis(100))
                    .rtp_echo()
                    .start(),
            ),
            // The Request-URI's user is the number: baresip's account must be it.
            CustomerKind::Baresip => {
                CustomerSide::Baresip(Baresip::start(CUSTOMER, AnswerMode::Auto))
            }
        }
    }

    /// `"127.0.0.1:PORT"`.
    fn host(&self) -> String {
        match self {
            CustomerSide::Sipp(sipp) => sipp.uri_host(),
            CustomerSide::Baresip(phone) => format!("127.0.0.1:{}", phone.port()),
        }
    }
}

/// One real call: StartCall until CONNECTED (both phones say so), HoldCall (linphone says it
/// is held), ResumeCall, EndCall (both phones say the call ended); through Kamailio, or
/// straight to the phones.
async fn interop_call(agent: AgentKind, customer: CustomerKind, through_kamailio: bool) {
    let customer = CustomerSide::start(customer);
    let proxy = through_kamailio.then(|| Kamailio::start(&customer.host()));
    let phone = AgentPhone::start(agent, proxy.as_ref().map(|p| p.registrar(AGENT)));
    let (template, trunk) = match &proxy {
        Some(proxy) => (
            format!("sip:{{agent}}@{}", proxy.host()),
            format!("sip:{}", proxy.host()),
        ),
        None => (phone.uri_template(), format!("sip:{}", customer.host())),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("sip-password");
    std::fs::write(&password_file, format!("{}\n", kamailio::TRUNK_PASSWORD))
        .expect("write the password file");
    let server = TestServer::start_with(|c| {
        use_sip(c, &template, &trunk);
        if through_kamailio {
            c.sip.sip_auth_user = Some(kamailio::TRUNK_USER.into());
            c.sip.sip_auth_password_file = Some(password_file.clone());
        }
    })
    .await;
    let mut client = server.client(AGENT);
    let context = |what: &str| -> String {
        format!(
            "{what}\n--- agent's phone:\n{}\n--- kamailio:\n{}",
            phone.log(),
            proxy.as_ref().map(Kamailio::log).unwrap_or_default()
        )
    };

    let id = start_call(&mut client, CUSTOMER).await;
    let mut stream = watch(&mut client, &id, 0).await;
    let mut events = Vec::new();
    let answered = tokio::time::timeout(WAIT, async {
        while let Ok(Some(event)) = stream.message().await {
            let state = state_of(event.state);
            events.push(event);
            if state != S::DeliveryPending {
                return state;
            }
        }
        S::Unspecified
    })
    .await;
    assert_eq!(
        answered,
        Ok(S::Delivered),
        "{}",
        context(&format!("{events:#?}"))
    );
    phone
        .saw(PhoneEvent::Connected)
        .unwrap_or_else(|e| panic!("{}", context(&e)));
    if let CustomerSide::Baresip(customer) = &customer {
        tokio::task::block_in_place(|| customer.wait_event("CALL_ESTABLISHED", WAIT))
            .unwrap_or_else(|e| panic!("{}", context(&format!("customer: {e}"))));
    }

    let held = hold(&mut client, &id)
        .await
        .unwrap_or_else(|s| panic!("{}", context(&format!("HoldCall: {s:?}"))));
    assert_eq!(progress_of(held.progress), P::Held);
    phone
        .saw(PhoneEvent::Held)
        .unwrap_or_else(|e| panic!("{}", context(&e)));
    let resumed = resume(&mut client, &id)
        .await
        .unwrap_or_else(|s| panic!("{}", context(&format!("ResumeCall: {s:?}"))));
    assert_eq!(progress_of(resumed.progress), P::Connected);

    let ended = end(&mut client, &id).await.expect("EndCall");
    assert_eq!(reason_of(ended.end_reason), EndReason::AgentHangup);
    phone
        .saw(PhoneEvent::Ended)
        .unwrap_or_else(|e| panic!("{}", context(&e)));
    match customer {
        CustomerSide::Sipp(sipp) => sipp.finish_async(SIPP_WAIT).await.assert_passed(1),
        CustomerSide::Baresip(customer) => {
            tokio::task::block_in_place(|| customer.wait_event("CALL_CLOSED", WAIT))
                .unwrap_or_else(|e| panic!("{}", context(&format!("customer: {e}"))));
        }
    }
    server.shutdown().await;
}

/// The call of issue 31: linphone drops a re-INVITE whose SDP has no Content-Type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linphone_as_the_agent_phone_connects_holds_and_resumes() {
    interop_call(AgentKind::Linphone, CustomerKind::Sipp, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kamailio_baresip_calls_sipp() {
    interop_call(AgentKind::Baresip, CustomerKind::Sipp, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kamailio_baresip_calls_baresip() {
    interop_call(AgentKind::Baresip, CustomerKind::Baresip, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kamailio_linphone_calls_sipp() {
    interop_call(AgentKind::Linphone, CustomerKind::Sipp, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kamailio_linphone_calls_baresip() {
    interop_call(AgentKind::Linphone, CustomerKind::Baresip, true).await;
}
