//! Authentication with `--auth-tokens`: bearer tokens name the agent, health and reflection
//! stay open, the file is re-read on SIGHUP, tokens never reach the logs, and the server
//! refuses to start on a bad file or on a non-loopback address without authentication.
//!
//! Tokens are minted with `calldesk token AGENT_ID`, as an operator would.

mod support;

use std::{
    ffi::OsString,
    path::Path,
    time::{Duration, Instant},
};

use calldesk::proto::{
    interaction_service_client::InteractionServiceClient, EndCallRequest, GetInteractionRequest,
    InteractionEvent, ListInteractionsRequest, WatchInteractionRequest, WatchInteractionsRequest,
};
use support::{
    endpoint,
    in_process::TestServer,
    process::{run_to_exit, send_signal, serve_args, serve_args_on, ServerProcess, BIN},
    start_req, NUM_OK,
};
use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Code, Request, Status,
};

/// How long a SIGHUP reload may take to show.
const RELOAD_WAIT: Duration = Duration::from_secs(5);
/// How long any one call may take.
const CALL_WAIT: Duration = Duration::from_secs(10);

/// A token minted by `calldesk token`, and the line it prints for the token file.
#[derive(Clone)]
struct Minted {
    token: String,
    line: String,
}

/// Runs `calldesk token agent` and reads its token and file line.
async fn mint(agent: &str) -> Minted {
    let args: Vec<OsString> = vec!["token".into(), agent.into()];
    let finished = tokio::task::spawn_blocking(move || run_to_exit(args, CALL_WAIT))
        .await
        .expect("calldesk token");
    assert!(
        finished.status.success(),
        "calldesk token {agent} failed: {}",
        finished.stderr
    );
    let token = finished
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no `token:` line in {:?}", finished.stdout))
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "the token is 64 hex digits");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let line = finished
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{agent} ")))
        .unwrap_or_else(|| panic!("no `{agent} HASH` line in {:?}", finished.stdout))
        .trim()
        .to_string();
    Minted { token, line }
}

impl Minted {
    /// The hash half of the file line.
    fn hash(&self) -> &str {
        self.line.split_whitespace().nth(1).expect("hash field")
    }
}

/// Adds `authorization` and `x-agent-id` (each when given) to every request.
#[derive(Clone)]
struct Credentials {
    authorization: Option<String>,
    agent: Option<String>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            let value: MetadataValue<_> = value.parse().expect("ascii authorization");
            req.metadata_mut().insert("authorization", value);
        }
        if let Some(agent) = &self.agent {
            req.metadata_mut()
                .insert("x-agent-id", agent.parse().expect("ascii agent"));
        }
        Ok(req)
    }
}

type AuthClient = InteractionServiceClient<InterceptedService<Channel, Credentials>>;

fn channel(addr: &str) -> Channel {
    endpoint(addr).connect_lazy()
}

/// A client sending `authorization` as given (e.g. `Bearer TOKEN`) and optionally `x-agent-id`.
fn client_with(addr: &str, authorization: Option<&str>, agent: Option<&str>) -> AuthClient {
    InteractionServiceClient::with_interceptor(
        channel(addr),
        Credentials {
            authorization: authorization.map(str::to_owned),
            agent: agent.map(str::to_owned),
        },
    )
}

/// A client presenting `token`.
fn bearer(addr: &str, token: &str) -> AuthClient {
    client_with(addr, Some(&format!("Bearer {token}")), None)
}

/// A client presenting `token` under the scheme `Basic`.
fn basic(addr: &str, token: &str) -> AuthClient {
    client_with(addr, Some(&format!("Basic {token}")), None)
}

/// A cheap authenticated call: the first page of the caller's interactions.
async fn list(client: &mut AuthClient) -> Result<(), Status> {
    tokio::time::timeout(
        CALL_WAIT,
        client.list_interactions(ListInteractionsRequest {
            page_size: 1,
            ..Default::default()
        }),
    )
    .await
    .expect("ListInteractions answers")
    .map(|_| ())
}

fn assert_unauthenticated(result: Result<(), Status>, what: &str) {
    match result {
        Ok(()) => panic!("{what}: should be UNAUTHENTICATED, succeeded"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
            assert!(!status.message().is_empty(), "{what}: a message says why");
        }
    }
}

/// Writes a token file of `lines` in `dir`; returns its path.
fn write_tokens(path: &Path, lines: &[&str]) {
    let mut text = String::from("# calldesk tokens\n\n");
    for line in lines {
        text.push_str(line);
        text.push_str("   # minted by the test\n");
    }
    std::fs::write(path, text).expect("write the token file");
}

/// Retries `probe` until it returns true, at most `RELOAD_WAIT`.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        if probe().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RELOAD_WAIT:?}"
        );
        // A pause between polls, not a synchronisation: the loop ends on the condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// In-process server

/// A server started with `--auth-tokens` holding `lines`.
async fn auth_server(dir: &Path, lines: &[&str]) -> TestServer {
    let path = dir.join("tokens");
    write_tokens(&path, lines);
    TestServer::start_with(|c| c.auth_tokens = Some(path)).await
}

#[tokio::test]
async fn requests_without_a_known_bearer_token_are_unauthenticated() {
    let alice = mint("alice").await;
    let wrong = mint("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let server = auth_server(dir.path(), &[&alice.line]).await;
    let addr = server.addr().to_string();

    let mut none = client_with(&addr, None, Some("alice"));
    assert_unauthenticated(
        list(&mut none).await,
        "no token (x-agent-id is no credential)",
    );
    let status = none.start_call(start_req(NUM_OK)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    assert_unauthenticated(
        list(&mut bearer(&addr, &wrong.token)).await,
        "unknown token",
    );
    assert_unauthenticated(
        list(&mut bearer(&addr, alice.hash())).await,
        "the hash is not the token",
    );
    assert_unauthenticated(
        list(&mut basic(&addr, &alice.token)).await,
        "another scheme",
    );
    assert_unauthenticated(
        list(&mut client_with(&addr, Some(&alice.token), None)).await,
        "no scheme",
    );
    assert_unauthenticated(
        list(&mut client_with(&addr, Some("Bearer "), None)).await,
        "empty token",
    );

    // The right token works, whatever the scheme's case.
    list(&mut bearer(&addr, &alice.token))
        .await
        .expect("valid token");
    list(&mut client_with(
        &addr,
        Some(&format!("bearer {}", alice.token)),
        None,
    ))
    .await
    .expect("lower-case scheme");
    server.shutdown().await;
}

#[tokio::test]
async fn the_token_names_the_agent_and_x_agent_id_is_ignored() {
    let alice = mint("alice").await;
    let other = mint("other").await;
    let dir = tempfile::tempdir().unwrap();
    let server = auth_server(dir.path(), &[&alice.line, &other.line]).await;
    let addr = server.addr().to_string();

    // alice's token, claiming to be `other` through the development header.
    let mut alice_client = client_with(
        &addr,
        Some(&format!("Bearer {}", alice.token)),
        Some("other"),
    );
    let resp = alice_client
        .start_call(start_req(NUM_OK))
        .await
        .expect("StartCall with a valid token")
        .into_inner();
    let id = resp.interaction_id.expect("an interaction");
    let interaction = resp.interaction.expect("the interaction");
    assert_eq!(
        interaction.agent_id, "alice",
        "the token's agent, not x-agent-id's"
    );

    let got = alice_client
        .get_interaction(GetInteractionRequest {
            interaction_id: id.clone(),
        })
        .await
        .expect("alice sees her interaction")
        .into_inner();
    assert_eq!(got.agent_id, "alice");

    // `other`, with its own token, cannot see it.
    let status = bearer(&addr, &other.token)
        .get_interaction(GetInteractionRequest {
            interaction_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let page = bearer(&addr, &other.token)
        .list_interactions(ListInteractionsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("other lists")
        .into_inner();
    assert!(
        page.interactions.is_empty(),
        "other sees none of alice's interactions: {:?}",
        page.interactions
    );
    server.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let alice = mint("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let server = auth_server(dir.path(), &[&alice.line]).await;
    let addr = server.addr().to_string();

    let mut health = HealthClient::new(channel(&addr));
    for service in ["", "calldesk.v1.InteractionService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health Check({service:?}) without a token: {s:?}"))
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel(&addr));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let resp = tokio::time::timeout(CALL_WAIT, stream.message())
        .await
        .expect("reflection answers")
        .expect("reflection succeeds")
        .expect("a reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("not a service list: {:?}", resp.message_response);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"calldesk.v1.InteractionService"),
        "reflection lists the API: {names:?}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The binary

/// `calldesk serve` arguments with `--auth-tokens path`.
fn auth_args(data_dir: &Path, tokens: &Path) -> Vec<OsString> {
    serve_args(
        data_dir,
        &["--auth-tokens", tokens.to_str().expect("utf-8 path")],
    )
}

#[tokio::test]
async fn sighup_reloads_the_token_file_and_a_bad_file_keeps_the_old_tokens() {
    let a = mint("alice").await;
    let b = mint("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &[&a.line]);
    let mut server =
        ServerProcess::start_command(BIN.into(), auth_args(&dir.path().join("data"), &tokens))
            .await;
    let addr = server.addr().to_string();
    let mut client_a = bearer(&addr, &a.token);
    let mut client_b = bearer(&addr, &b.token);
    list(&mut client_a).await.expect("A works at start");
    assert_unauthenticated(list(&mut client_b).await, "B before the reload");

    // Rotate: the file now holds B only.
    write_tokens(&tokens, &[&b.line]);
    send_signal(server.pid(), "-HUP");
    eventually("B accepted after SIGHUP", || {
        let mut client = client_b.clone();
        async move { list(&mut client).await.is_ok() }
    })
    .await;
    assert_unauthenticated(list(&mut client_a).await, "A after the reload");
    let resp = client_b
        .start_call(start_req(NUM_OK))
        .await
        .expect("StartCall with B")
        .into_inner();
    assert_eq!(resp.interaction.expect("interaction").agent_id, "bob");

    // A malformed file is refused on reload: B keeps working, A stays out.
    std::fs::write(
        &tokens,
        format!("{}\n{} {}\n", b.line, "carol", &b.hash()[..10]),
    )
    .unwrap();
    send_signal(server.pid(), "-HUP");
    eventually("the bad file's warning is logged", || {
        let logged = server.stderr_text().contains("not reloaded");
        async move { logged }
    })
    .await;
    let stderr = server.stderr_text();
    let warning = stderr
        .lines()
        .find(|l| l.contains("not reloaded"))
        .expect("warning line");
    assert!(
        warning.contains(tokens.to_str().unwrap()) && warning.contains("line 2"),
        "the warning names the file and the line: {warning}"
    );
    list(&mut client_b)
        .await
        .expect("B still works after a bad reload");
    assert_unauthenticated(list(&mut client_a).await, "A after the bad reload");
    assert!(
        stderr.contains("auth tokens reloaded"),
        "the good reload is logged: {stderr}"
    );

    let status = server.sigterm().await;
    assert!(status.success(), "clean exit: {status}");
    let stderr = server.stderr_text();
    assert_log_is_whole(&stderr);
    for secret in [
        &a.token,
        &b.token,
        &a.hash().to_string(),
        &b.hash().to_string(),
    ] {
        assert!(
            !stderr.contains(secret.as_str()),
            "a token or hash was logged"
        );
    }
}

/// Reads `stream` until it ends with an error, at most `limit`; events before it are allowed
/// (they may have been on their way). Panics if it ends cleanly or not in time.
async fn ends_with_error(
    stream: &mut tonic::Streaming<InteractionEvent>,
    limit: Duration,
    what: &str,
) -> Status {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("{what}: still open {limit:?} later"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("{what}: ended with OK"),
            Ok(Err(status)) => return status,
        }
    }
}

/// Issue: removing a token and sending SIGHUP refused the token's new calls, but its open watch
/// streams went on delivering events.
#[tokio::test]
async fn a_revoked_token_loses_its_open_watch_streams() {
    let a = mint("alice").await;
    let b = mint("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &[&a.line, &b.line]);
    let mut server =
        ServerProcess::start_command(BIN.into(), auth_args(&dir.path().join("data"), &tokens))
            .await;
    let addr = server.addr().to_string();
    let mut client_a = bearer(&addr, &a.token);
    let mut client_b = bearer(&addr, &b.token);

    let mut streams = Vec::new();
    for (who, client) in [("A", &mut client_a), ("B", &mut client_b)] {
        let id = client
            .start_call(start_req(NUM_OK))
            .await
            .unwrap_or_else(|s| panic!("StartCall with {who}: {s:?}"))
            .into_inner()
            .interaction_id
            .expect("interaction id");
        let mut one = client
            .watch_interaction(WatchInteractionRequest {
                interaction_id: id.clone(),
                after_sequence: 0,
            })
            .await
            .expect("WatchInteraction")
            .into_inner();
        let first = tokio::time::timeout(CALL_WAIT, one.message())
            .await
            .expect("event 1 in time")
            .expect("event 1")
            .expect("event 1");
        assert_eq!(first.sequence, 1);
        let all = client
            .watch_interactions(WatchInteractionsRequest {})
            .await
            .expect("WatchInteractions")
            .into_inner();
        streams.push((id, one, all));
    }
    let (a_id, mut a_one, mut a_all) = streams.remove(0);
    let (_, mut b_one, mut b_all) = streams.remove(0);

    // Revoke B.
    write_tokens(&tokens, &[&a.line]);
    send_signal(server.pid(), "-HUP");
    for (stream, what) in [
        (&mut b_one, "B's WatchInteraction"),
        (&mut b_all, "B's WatchInteractions"),
    ] {
        let status = ends_with_error(stream, RELOAD_WAIT, what).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains("revoked"), "{what}: {status:?}");
    }
    assert_unauthenticated(list(&mut client_b).await, "B's unary calls");

    // A's streams are untouched: A's EndCall reaches both.
    client_a
        .end_call(EndCallRequest {
            interaction_id: a_id.clone(),
        })
        .await
        .expect("EndCall with A");
    for (stream, what) in [
        (&mut a_one, "A's WatchInteraction"),
        (&mut a_all, "A's WatchInteractions"),
    ] {
        let deadline = tokio::time::Instant::now() + CALL_WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, stream.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: no WRAP_UP in time"))
                .unwrap_or_else(|s| panic!("{what}: {s:?}"))
                .unwrap_or_else(|| panic!("{what}: ended"));
            if event.state == calldesk::proto::InteractionState::WrapUp as i32 {
                break;
            }
        }
    }
    let status = server.sigterm().await;
    assert!(status.success(), "clean exit: {status}");
}

/// A check that nothing is in a log holds only for the whole log: it must reach the
/// shutdown's health line (docs/api.md §9), written after every request was served.
fn assert_log_is_whole(stderr: &str) {
    assert!(
        stderr.contains("NOT_SERVING reason=shutting down"),
        "the log does not reach the shutdown:\n{stderr}"
    );
}

#[tokio::test]
async fn tokens_never_appear_in_the_logs() {
    let alice = mint("alice").await;
    let stranger = mint("stranger").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &[&alice.line]);
    let tokens_arg = tokens.to_str().expect("utf-8 path");
    let mut server = ServerProcess::start_logging(
        &dir.path().join("data"),
        &["--auth-tokens", tokens_arg],
        "debug",
    )
    .await;
    let addr = server.addr().to_string();

    let mut good = bearer(&addr, &alice.token);
    good.start_call(start_req(NUM_OK))
        .await
        .expect("StartCall with a valid token");
    list(&mut good).await.expect("list with a valid token");
    assert_unauthenticated(list(&mut bearer(&addr, &stranger.token)).await, "unknown");
    assert_unauthenticated(list(&mut basic(&addr, &alice.token)).await, "wrong scheme");
    assert_unauthenticated(
        list(&mut client_with(&addr, Some(&stranger.token), None)).await,
        "no scheme",
    );

    let status = server.sigterm().await;
    assert!(status.success(), "clean exit: {status}");
    let stderr = server.stderr_text();
    assert_log_is_whole(&stderr);
    assert!(stderr.contains("DEBUG"), "debug logging was on: {stderr}");
    assert!(
        stderr.contains("UNAUTHENTICATED") || stderr.contains("refused"),
        "refusals are logged: {stderr}"
    );
    for (what, secret) in [
        ("the valid token", alice.token.as_str()),
        ("the unknown token", stranger.token.as_str()),
        ("the valid token's hash", alice.hash()),
    ] {
        assert!(!stderr.contains(secret), "{what} appears in the logs");
    }
}

#[tokio::test]
async fn a_malformed_token_file_stops_the_start() {
    let alice = mint("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let bad_hash = format!("{}zz", &alice.hash()[..62]);
    std::fs::write(&tokens, format!("# ok\n{}\nbob {bad_hash}\n", alice.line)).unwrap();
    let args = auth_args(&dir.path().join("data"), &tokens);
    let finished = tokio::task::spawn_blocking(move || run_to_exit(args, CALL_WAIT))
        .await
        .unwrap();
    assert!(!finished.status.success(), "the server must not start");
    assert!(
        finished.stderr.contains(tokens.to_str().unwrap()) && finished.stderr.contains("line 3"),
        "the message names the file and the line: {}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains(&bad_hash[..20]),
        "the message does not echo the hash: {}",
        finished.stderr
    );

    let missing = dir.path().join("no-such-file");
    let args = auth_args(&dir.path().join("data"), &missing);
    let finished = tokio::task::spawn_blocking(move || run_to_exit(args, CALL_WAIT))
        .await
        .unwrap();
    assert!(!finished.status.success(), "the server must not start");
    assert!(
        finished.stderr.contains(missing.to_str().unwrap()),
        "the message names the file: {}",
        finished.stderr
    );
}

#[tokio::test]
async fn a_public_address_needs_auth_tokens_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = |extra: &[&str]| serve_args_on("0.0.0.0:0", &data, extra);

    let refused = args(&[]);
    let finished = tokio::task::spawn_blocking(move || run_to_exit(refused, CALL_WAIT))
        .await
        .unwrap();
    assert!(!finished.status.success(), "must refuse to start");
    assert!(
        finished.stderr.contains("0.0.0.0") && finished.stderr.contains("--auth-tokens"),
        "a clear message: {}",
        finished.stderr
    );

    let mut server = ServerProcess::start_command(BIN.into(), args(&["--insecure"])).await;
    // It serves (on the wildcard address, reached here through loopback).
    let port = server.addr().rsplit(':').next().expect("port").to_string();
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(&format!("127.0.0.1:{port}")));
    tokio::time::timeout(
        CALL_WAIT,
        health.check(tonic_health::pb::HealthCheckRequest::default()),
    )
    .await
    .expect("health answers")
    .expect("health Check");
    let status = server.sigterm().await;
    assert!(
        status.success(),
        "--insecure starts and stops cleanly: {status}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 22: metadata that names the caller is sent once

/// ListInteractions with each `(name, value)` of `metadata` appended in order (so a name may
/// come twice), over gRPC: the page, or the refusal.
async fn list_with_metadata(
    addr: &str,
    metadata: &[(&'static str, &str)],
) -> Result<calldesk::proto::ListInteractionsResponse, Status> {
    let mut client = InteractionServiceClient::new(channel(addr));
    let mut request = Request::new(ListInteractionsRequest::default());
    for (name, value) in metadata {
        request
            .metadata_mut()
            .append(*name, value.parse().expect("ascii metadata"));
    }
    tokio::time::timeout(CALL_WAIT, client.list_interactions(request))
        .await
        .expect("ListInteractions answers")
        .map(tonic::Response::into_inner)
}

/// The same over gRPC-Web (HTTP/1.1, as a browser): its gRPC status and message.
async fn web_list_with_metadata(addr: &str, metadata: &[(&str, &str)]) -> (Code, String) {
    let reply = support::grpc_web::call(
        addr.parse().expect("a socket address"),
        "ListInteractions",
        &ListInteractionsRequest::default(),
        metadata,
    )
    .await;
    (reply.code().expect("a gRPC status"), reply.message())
}

fn assert_sent_once(result: Result<impl std::fmt::Debug, Status>, name: &str) {
    let status = result.expect_err("a duplicated caller header must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    support::assert_bad_field(&status, name);
    assert!(
        status.message().starts_with(&format!("{name}: ")) && status.message().contains("once"),
        "{name}: the message names the rule: {status:?}"
    );
}

#[tokio::test]
async fn a_duplicated_agent_or_peer_header_is_invalid_argument_over_grpc_and_grpc_web() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let addr = server.addr().to_string();
    // The victim has an interaction that a forged first value would list.
    let mut victim = support::client(&addr, "victim");
    support::start_call(&mut victim, NUM_OK).await;

    for (name, values) in [
        ("x-agent-id", ["victim", "mallory"]),
        (
            "x-calldesk-peer",
            ["secret-one-0123456789", "secret-two-0123456789"],
        ),
    ] {
        let metadata = [
            (name, values[0]),
            (name, values[1]),
            ("x-agent-id", "other"),
        ];
        let metadata = if name == "x-agent-id" {
            &metadata[..2]
        } else {
            &metadata[..]
        };
        assert_sent_once(list_with_metadata(&addr, metadata).await, name);
        let (code, message) = web_list_with_metadata(&addr, metadata).await;
        assert_eq!(code, Code::InvalidArgument, "gRPC-Web, {name}: {message}");
        assert!(message.contains("once"), "gRPC-Web, {name}: {message}");
    }
    // Once is fine.
    let page = list_with_metadata(&addr, &[("x-agent-id", "victim")])
        .await
        .expect("one x-agent-id");
    assert_eq!(page.interactions.len(), 1);
}

#[tokio::test]
async fn a_duplicated_authorization_is_invalid_argument() {
    let alice = mint("alice").await;
    let bob = mint("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &[&alice.line, &bob.line]);
    let server =
        ServerProcess::start_command(BIN.into(), auth_args(&dir.path().join("data"), &tokens))
            .await;
    let addr = server.addr().to_string();
    let (a, b) = (
        format!("Bearer {}", alice.token),
        format!("Bearer {}", bob.token),
    );

    let twice = [("authorization", a.as_str()), ("authorization", b.as_str())];
    assert_sent_once(list_with_metadata(&addr, &twice).await, "authorization");
    let (code, message) = web_list_with_metadata(&addr, &twice).await;
    assert_eq!(code, Code::InvalidArgument, "gRPC-Web: {message}");
    list_with_metadata(&addr, &twice[..1])
        .await
        .expect("one bearer token");
}
