//! A crash (`kill -9`) of calldesk with a SIP call still being set up, and a restart on the
//! same store and SIP port (or, with replicas, a survivor's takeover): the call cannot be taken
//! up, so the interaction ends SERVER_RESTART and both phones are told (docs/api.md §8.3): the
//! ringing INVITE gets a CANCEL (and the 487 that ends it an ACK), the answered agent's phone a
//! BYE. SIPp plays both phones and passes only if it got exactly that.

mod support;

use std::{path::Path, time::Duration};

use calldesk::proto::{CallProgress as P, EndReason, InteractionState as S};
use support::{
    postgres::{self, PgCluster},
    process::{self, ServerProcess, BIN},
    sipp::{Sipp, SippBuilder},
    *,
};

const CUSTOMER: &str = "+12025550100";
const AGENT: &str = "agent-7";
/// How long a SIPp peer may take to finish its scenario after the call ended.
const SIPP_WAIT: Duration = Duration::from_secs(15);

/// calldesk's SIP flags: listening on `port` (a restart must take the port the phones know),
/// the agents' phones at `agent`, the trunk at the customer's SIPp, no keepalive (a one-call
/// SIPp would take the ping for its call).
fn sip_flags(port: u16, agent: &Sipp, customer: &Sipp) -> Vec<String> {
    vec![
        "--telephony".into(),
        "sip".into(),
        "--sip-listen".into(),
        format!("127.0.0.1:{port}"),
        "--sip-agent-uri".into(),
        agent.uri("{agent}"),
        "--sip-trunk".into(),
        format!("sip:{}", customer.uri_host()),
        "--sip-keepalive-interval".into(),
        "off".into(),
    ]
}

/// The server on the SQLite store in `data_dir` (a restart reads the same file).
async fn server(data_dir: &Path, flags: &[String]) -> ServerProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ServerProcess::start_sqlite(data_dir, &flags).await
}

/// Starts both phones, the server, and a call; returns them once `until` says the call got
/// as far as the crash should find it.
async fn crash_while_setting_up(
    agent: SippBuilder,
    customer: SippBuilder,
    data_dir: &Path,
    extra_flags: &[String],
    until: impl AsyncFnOnce(&mut Client, &str),
) -> (Sipp, Sipp, String, Vec<String>) {
    let (agent, customer) = (agent.start(), customer.start());
    let mut flags = sip_flags(free_sip_port(), &agent, &customer);
    flags.extend_from_slice(extra_flags);
    let mut server = server(data_dir, &flags).await;
    let mut client = server.client(AGENT);
    let id = start_call(&mut client, CUSTOMER).await;
    until(&mut client, &id).await;
    server.kill9();
    (agent, customer, id, flags)
}

/// After the restart: the interaction ends WRAP_UP SERVER_RESTART, and each phone got what
/// its scenario waits for.
async fn restart_tells_both_phones(
    data_dir: &Path,
    flags: &[String],
    id: &str,
    agent: Sipp,
    customer: Sipp,
) {
    restart_tells_the_phones(data_dir, flags, id, agent, customer, 1).await
}

/// As [`restart_tells_both_phones`], the trunk's SIPp taking `trunk_calls` calls (the customer's
/// and a target's through the trunk).
async fn restart_tells_the_phones(
    data_dir: &Path,
    flags: &[String],
    id: &str,
    agent: Sipp,
    customer: Sipp,
    trunk_calls: u64,
) {
    let server = server(data_dir, flags).await;
    let mut client = server.client(AGENT);
    let mut stream = watch(&mut client, id, 0).await;
    let events = wait_for_state(&mut stream, S::WrapUp).await;
    let interaction = events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction");
    assert_eq!(reason_of(interaction.end_reason), EndReason::ServerRestart);
    let (agent, customer) = tokio::join!(
        agent.finish_async(SIPP_WAIT),
        customer.finish_async(SIPP_WAIT)
    );
    agent.assert_passed(1);
    customer.assert_passed(trunk_calls);
}

/// Waits for the customer's RINGING: by then the customer's INVITE is stored (its report
/// goes to the store before the 180's event).
async fn customer_rings(client: &mut Client, id: &str) {
    let mut stream = watch(client, id, 0).await;
    wait_for(&mut stream, WAIT, |e| progress_of(e.progress) == P::Ringing).await;
}

/// The agent's phone answered, the customer rings (Flow IV's second phase) when calldesk
/// dies: the restart CANCELs the customer's INVITE and ACKs its 487 (the strict customer, mode
/// `ring`, passes only if both are as RFC 3261 §9.1 and §17.1.1.3 want them: the INVITE's
/// branch and CSeq, no Contact…), and BYEs the agent's phone (`agent_answer.xml` passes only
/// then).
#[tokio::test]
async fn after_a_crash_the_customer_ringing_is_cancelled_and_the_agent_hung_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (agent, customer, id, flags) = crash_while_setting_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("strict_customer.xml").set("mode", "ring"),
        dir.path(),
        &[],
        customer_rings,
    )
    .await;
    restart_tells_both_phones(dir.path(), &flags, &id, agent, customer).await;
}

/// The trunk challenged the customer's INVITE (401) and it was sent again, with a new branch
/// and CSeq: the restart CANCELs that one (the strict customer, mode `auth-ring`, compares
/// the CANCEL's branch and CSeq with the INVITE after the challenge).
#[tokio::test]
async fn after_a_crash_the_cancel_names_the_invite_sent_after_a_challenge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = trunk_auth(dir.path());
    let data_dir = dir.path().join("data");
    let (agent, customer, id, flags) = crash_while_setting_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("strict_customer.xml").set("mode", "auth-ring"),
        &data_dir,
        &auth,
        customer_rings,
    )
    .await;
    restart_tells_both_phones(&data_dir, &flags, &id, agent, customer).await;
}

/// `--sip-agents` naming one more agent, `name`, whose phone is `phone`'s SIPp (the file in
/// `dir`).
fn one_more_agent(dir: &Path, name: &str, phone: &Sipp) -> [String; 2] {
    let agents = dir.join("agents.txt");
    std::fs::write(&agents, format!("{name} {}\n", phone.uri(name))).expect("agents file");
    ["--sip-agents".to_owned(), agents.display().to_string()]
}

/// The flags of the trunk's credentials (trunkuser / trunkpass, the password in a file in `dir`).
fn trunk_auth(dir: &Path) -> [String; 4] {
    let password_file = dir.join("sip-password");
    std::fs::write(&password_file, "trunkpass\n").expect("write the password file");
    [
        "--sip-auth-user".to_owned(),
        "trunkuser".to_owned(),
        "--sip-auth-password-file".to_owned(),
        password_file.display().to_string(),
    ]
}

/// The agent's phone still rings (Flow IV's first phase; the customer is not called yet) when
/// calldesk dies: the restart CANCELs it (`agent_ring_forever.xml` passes only then). The
/// customer's SIPp is never called (`customer_answer.xml` with no call; only its SIPp is
/// checked).
#[tokio::test]
async fn after_a_crash_the_agent_phone_ringing_is_cancelled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join(calldesk::store::sqlite::DB_FILE);
    let (agent, customer, id, flags) = crash_while_setting_up(
        Sipp::uas("agent_ring_forever.xml"),
        Sipp::uas("customer_answer.xml"),
        dir.path(),
        &[],
        // StartCall answered: the interaction is stored; its dialogs follow it in the next
        // write, which nothing shows through the API: read the store.
        async |_, id| wait_for_stored_pending(&db, id).await,
    )
    .await;
    let server = server(dir.path(), &flags).await;
    let mut client = server.client(AGENT);
    let mut stream = watch(&mut client, &id, 0).await;
    let events = wait_for_state(&mut stream, S::WrapUp).await;
    let interaction = events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction");
    assert_eq!(reason_of(interaction.end_reason), EndReason::ServerRestart);
    agent.finish_async(SIPP_WAIT).await.assert_passed(1);
    drop(customer);
}

/// Waits until the SQLite store at `db` holds a ringing INVITE among `id`'s dialogs.
async fn wait_for_stored_pending(db: &Path, id: &str) {
    wait_for_stored(db, id, "\"pending\"").await
}

/// Waits until `id`'s dialogs in the SQLite store at `db` contain `text`.
async fn wait_for_stored(db: &Path, id: &str, text: &str) {
    wait_for_stored_where(db, id, text, |stored| stored.contains(text)).await
}

/// Waits until `id`'s dialogs in the SQLite store at `db` are as `wanted` says (`what` names it).
async fn wait_for_stored_where(db: &Path, id: &str, what: &str, wanted: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored: Option<String> =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()
                .and_then(|conn| {
                    conn.query_row(
                        "SELECT dialogs FROM call_dialogs WHERE interaction_id = ?1",
                        [id],
                        |row| row.get(0),
                    )
                    .ok()
                });
        if stored.is_some_and(|stored| wanted(&stored)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With replicas (PostgreSQL), the one that placed the call is killed while the customer rings:
/// the survivor takes the interaction over, ends it SERVER_RESTART, BYEs the agent's phone and
/// CANCELs the customer's INVITE from its own SIP port. The customer's responses (the 200 to
/// the CANCEL, the 487) go where its INVITE came from, the dead replica's address, which does
/// not move here (docs/guide/replicas.md): the phone stops ringing, but its SIPp, which then
/// sees the CANCEL retransmitted and no ACK, does not pass; that it got the CANCEL is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_cancels_the_ringing_customer_of_a_killed_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = PgCluster::shared().database();
    let token = postgres::write_peer_token(dir.path());
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_ring_forever.xml").start();
    let replica = |n: usize| {
        let mut flags = vec![
            "--database-url".to_owned(),
            url.clone(),
            "--peer-token-file".to_owned(),
            token.display().to_string(),
            "--lease-duration".to_owned(),
            "2s".to_owned(),
        ];
        flags.extend(sip_flags(0, &agent, &customer));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let data_dir = dir.path().join(format!("replica-{n}"));
        let args = process::serve_args_for(Store::Sqlite, "127.0.0.1:0", &data_dir, &flags);
        ServerProcess::start_command(BIN.into(), args)
    };
    let mut a = replica(1).await;
    let b = replica(2).await;
    let id = start_call(&mut a.client(AGENT), CUSTOMER).await;
    customer_rings(&mut a.client(AGENT), &id).await;
    a.kill9();

    let mut on_b = watch(&mut b.client(AGENT), &id, 0).await;
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        wait_for_state(&mut on_b, S::WrapUp),
    )
    .await
    .expect("the survivor takes the call over");
    let interaction = events
        .last()
        .and_then(|e| e.interaction.clone())
        .expect("the WRAP_UP event carries its interaction");
    assert_eq!(reason_of(interaction.end_reason), EndReason::ServerRestart);
    assert!(
        interaction.end_detail.contains("another took it over"),
        "{interaction:?}"
    );
    agent.finish_async(SIPP_WAIT).await.assert_passed(1);
    let invited_from = format!("Via: SIP/2.0/UDP 127.0.0.1:{}", sip_port(&a));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !customer.log().contains("CANCEL sip:") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CANCEL reached the customer:\n{}",
            customer.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let verdict = customer.finish_async(Duration::ZERO).await;
    let cancel = verdict
        .received
        .iter()
        .find(|m| m.starts_with("CANCEL "))
        .expect("the CANCEL");
    // The INVITE's own Via (RFC 3261 §9.1), so the replica that sent the INVITE.
    assert!(cancel.contains(&invited_from), "{cancel}");
}

/// The SIP port a server's log says it listens on.
fn sip_port(server: &ServerProcess) -> String {
    let log = server.stderr_text();
    let marker = "SIP switch listening local=127.0.0.1:";
    let at = log.find(marker).expect("the SIP listen line") + marker.len();
    log[at..].chars().take_while(char::is_ascii_digit).collect()
}

/// A blind transfer under way at the crash (TRANSFERRING, the target ringing): the restart ends
/// the interaction SERVER_RESTART, CANCELs the target's INVITE (`agent_ring_forever.xml`, as
/// another agent's phone, passes only then), and BYEs the agent's phone and the customer, who
/// were connected (each scenario passes only with its BYE).
#[tokio::test]
async fn after_a_crash_mid_transfer_the_target_is_cancelled_and_both_legs_hung_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = Sipp::uas("agent_ring_forever.xml").start();
    let agents = one_more_agent(dir.path(), "agent-ring", &target);
    let data_dir = dir.path().join("data");
    let db = data_dir.join(calldesk::store::sqlite::DB_FILE);
    let (agent, customer, id, flags) = crash_while_setting_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_answer.xml"),
        &data_dir,
        &agents,
        async |client, id| {
            let mut stream = watch(client, id, 0).await;
            until_progress(&mut stream, P::Connected).await;
            let reply = transfer(client, id, "agent:agent-ring", "")
                .await
                .expect("TransferCall");
            assert_eq!(progress_of(reply.progress), P::Transferring);
            wait_for_stored(&db, id, "transfer target").await;
        },
    )
    .await;
    restart_tells_both_phones(&data_dir, &flags, &id, agent, customer).await;
    target.finish_async(SIPP_WAIT).await.assert_passed(1);
}

/// A consultation under way at the crash, in both its steps, and a conference whose target
/// rings, all at once (three calls, each on its own server): the consulted target ringing
/// (`HOLD`/`TRANSFERRING`) or answered and talking with the agent (`HOLD`/`CONSULTING`), the
/// conference's target ringing (`DELIVERED`/`TRANSFERRING`). The restart ends each interaction
/// SERVER_RESTART, CANCELs a ringing target's INVITE and ACKs its 487
/// (`agent_ring_forever.xml` passes only then), BYEs the answered target (`consult_target.xml`
/// passes only with its BYE), and BYEs the agent's phone and the customer (each scenario
/// passes only with its BYE).
#[tokio::test]
async fn after_a_crash_mid_consultation_or_conference_the_target_is_told_too() {
    tokio::join!(
        crash_calling_a_target(
            Third::Consult,
            "agent_ring_forever.xml",
            P::Transferring,
            "\"pending\""
        ),
        // An answered leg's record starts with its role then its Call-ID (a ringing one's with
        // its Request-URI).
        crash_calling_a_target(
            Third::Consult,
            "consult_target.xml",
            P::Consulting,
            "\"role\":\"transfer target\",\"call_id\""
        ),
        crash_calling_a_target(
            Third::Conference,
            "agent_ring_forever.xml",
            P::Transferring,
            "\"pending\""
        ),
    );
}

/// How the third party is called.
#[derive(Clone, Copy)]
enum Third {
    Consult,
    /// A room that is never reached: the crash comes while the target rings.
    Conference,
}

/// ConsultCall or ConferenceCall to a SIPp agent phone playing `target`; `kill -9` once the
/// interaction is at `progress` and the target's leg is stored (its record contains
/// `stored`); then the restart and every phone's verdict.
async fn crash_calling_a_target(third: Third, target: &str, progress: P, stored: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = Sipp::uas(target).start();
    let agents = one_more_agent(dir.path(), "agent-9", &target);
    let data_dir = dir.path().join("data");
    let db = data_dir.join(calldesk::store::sqlite::DB_FILE);
    let mut flags = agents.to_vec();
    if let Third::Conference = third {
        flags.push("--sip-conference-uri".to_owned());
        flags.push("sip:conf-{interaction}@127.0.0.1:9".to_owned());
    }
    let (agent, customer, id, flags) = crash_while_setting_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("customer_answer.xml"),
        &data_dir,
        &flags,
        async |client, id| {
            let mut stream = watch(client, id, 0).await;
            until_progress(&mut stream, P::Connected).await;
            let reply = match third {
                Third::Consult => consult(client, id, "agent:agent-9").await,
                Third::Conference => conference(client, id, "agent:agent-9").await,
            }
            .expect("the call to the target");
            assert_eq!(progress_of(reply.progress), P::Transferring);
            wait_for(&mut stream, WAIT, |e| progress_of(e.progress) == progress).await;
            wait_for_stored(&db, id, stored).await;
        },
    )
    .await;
    restart_tells_both_phones(&data_dir, &flags, &id, agent, customer).await;
    target.finish_async(SIPP_WAIT).await.assert_passed(1);
}

/// A consultation's target is a number through the trunk, which challenges its INVITE (401):
/// the INVITE goes out again with a new branch and CSeq, and is stored again. A crash while it
/// rings: the restart CANCELs that second INVITE (`trunk_challenged_target.xml` compares the
/// CANCEL's branch and CSeq with it, and passes only then), and BYEs the customer and the
/// agent's phone.
#[tokio::test]
async fn after_a_crash_a_challenged_target_is_cancelled_by_its_invite_after_the_challenge() {
    const TARGET: &str = "+12025550177";
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let db = data_dir.join(calldesk::store::sqlite::DB_FILE);
    let agent = Sipp::uas("agent_answer.xml").start();
    let trunk = Sipp::uas("trunk_challenged_target.xml").calls(2).start();
    let mut flags = sip_flags(free_sip_port(), &agent, &trunk);
    flags.extend(trunk_auth(dir.path()));
    let mut server = server(&data_dir, &flags).await;
    let mut client = server.client(AGENT);
    let id = start_call(&mut client, CUSTOMER).await;
    let mut stream = watch(&mut client, &id, 0).await;
    until_progress(&mut stream, P::Connected).await;
    let reply = consult(&mut client, &id, TARGET)
        .await
        .expect("ConsultCall");
    assert_eq!(progress_of(reply.progress), P::Transferring);
    // The target's INVITE is stored as first sent, then again once it has gone out after the
    // challenge: wait for the trunk to get that one, then for its CSeq in the store.
    let retried = retried_invite_cseq(&trunk).await;
    wait_for_stored_where(&db, &id, "the target's INVITE after the 401", |stored| {
        target_invite_cseq(stored) == Some(retried)
    })
    .await;
    server.kill9();
    restart_tells_the_phones(&data_dir, &flags, &id, agent, trunk, 2).await;
}

/// The CSeq number of the INVITE with credentials that `trunk` has received (waited for).
async fn retried_invite_cseq(trunk: &Sipp) -> u64 {
    let what = "the trunk never got the INVITE with credentials";
    trunk
        .until_received(WAIT, what, |received| {
            received.iter().find_map(|m| {
                if !m.starts_with("INVITE ") || !m.contains("\nAuthorization:") {
                    return None;
                }
                let line = m.lines().find(|l| l.starts_with("CSeq:"))?;
                line["CSeq:".len()..]
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .await
}

/// The CSeq number of the stored ringing INVITE of `id`'s transfer target, if any.
fn target_invite_cseq(stored: &str) -> Option<u64> {
    let dialogs: serde_json::Value = serde_json::from_str(stored).ok()?;
    dialogs["pending"]
        .as_array()?
        .iter()
        .find(|p| p["role"] == "transfer target")?["cseq"]
        .as_u64()
}

/// ConsultCall, the target answers, CancelConsult, then `kill -9`: the call is connected again
/// and its dialogs were stored again without the target, so the restart recovers it (an event
/// marked `recovered`, `DELIVERED`/`CONNECTED`) and EndCall BYEs the agent's phone and the
/// customer (each scenario passes only with its BYE; the target had its BYE from
/// CancelConsult).
#[tokio::test]
async fn after_a_cancelled_consultation_a_crash_recovers_the_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = Sipp::uas("consult_target.xml").start();
    let agents = one_more_agent(dir.path(), "agent-9", &target);
    let data_dir = dir.path().join("data");
    let db = data_dir.join(calldesk::store::sqlite::DB_FILE);
    let (agent, customer, id, flags) = crash_while_setting_up(
        Sipp::uas("agent_answer.xml"),
        Sipp::uas("consult_customer.xml"),
        &data_dir,
        &agents,
        async |client, id| {
            let mut stream = watch(client, id, 0).await;
            until_progress(&mut stream, P::Connected).await;
            consult(client, id, "agent:agent-9")
                .await
                .expect("ConsultCall");
            wait_for(&mut stream, WAIT, |e| {
                progress_of(e.progress) == P::Consulting
            })
            .await;
            let reply = cancel_consult(client, id).await.expect("CancelConsult");
            assert_eq!(progress_of(reply.progress), P::Connected);
            wait_for_stored_where(&db, id, "the dialogs without the target", |stored| {
                !stored.contains("transfer target")
            })
            .await;
        },
    )
    .await;
    target.finish_async(SIPP_WAIT).await.assert_passed(1);
    let server = server(&data_dir, &flags).await;
    let mut client = server.client(AGENT);
    let mut stream = watch(&mut client, &id, 0).await;
    let events = wait_for(&mut stream, WAIT, |e| e.recovered).await;
    let recovered = events.last().expect("the recovered event");
    assert_eq!(
        (state_of(recovered.state), progress_of(recovered.progress)),
        (S::Delivered, P::Connected)
    );
    end(&mut client, &id).await.expect("EndCall");
    let (agent, customer) = tokio::join!(
        agent.finish_async(SIPP_WAIT),
        customer.finish_async(SIPP_WAIT)
    );
    agent.assert_passed(1);
    customer.assert_passed(1);
}
