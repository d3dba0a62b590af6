//! The transport and its limits: TLS and mutual TLS, caps on open watch streams, oversized
//! requests, garbage and idle connections on the gRPC port, unary deadlines, graceful shutdown
//! of the binary (watchers end with UNAVAILABLE, exit 0; a second signal exits at once), and
//! the refusal of a non-loopback address without authentication.
//!
//! Certificates are made here with rcgen: a CA, a server certificate for `localhost` and
//! 127.0.0.1, and a client certificate, all signed by the CA.

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use calldesk::proto::{
    interaction_service_client::InteractionServiceClient, GetInteractionRequest, InteractionEvent,
    InteractionState, WatchInteractionRequest, WatchInteractionsRequest,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::{
    call_id_until, call_until, client, collect_to_end, end, free_addr, get, get_metrics,
    in_process::TestServer,
    next_event,
    process::{fast_flags, run_to_exit, send_signal, serve_args_on, ServerProcess, BIN, FAST_SIM},
    start_call, start_req, start_req_id, wait_for, wait_for_state, Client, NUM_NO_ACK, NUM_OK,
    NUM_OK2,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request, Status, Streaming,
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// A bound for anything that should happen at once (an error, an answer).
const PROMPT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Certificates

/// PEMs of a CA, a server certificate for localhost / 127.0.0.1 and a client certificate.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn generate() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "calldesk test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["agent-client".into()],
            "agent-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca: ca_cert.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Writes the server's files (and the CA) into `dir`: (cert, key, ca) paths.
    fn write_server_files(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        let ca = dir.join("ca.pem");
        std::fs::write(&cert, &self.server_cert).expect("write server.pem");
        std::fs::write(&key, &self.server_key).expect("write server.key");
        std::fs::write(&ca, &self.ca).expect("write ca.pem");
        (cert, key, ca)
    }
}

/// An in-process server on TLS with `pki`'s server certificate (its files written to `dir`),
/// which also requires a client certificate signed by `pki`'s CA when `mutual`; on the store
/// CALLDESK_TEST_STORE names (a replica with `--tls-cert` is allowed since issue 33).
async fn tls_server(pki: &Pki, dir: &Path, mutual: bool) -> TestServer {
    let (cert, key, ca) = pki.write_server_files(dir);
    TestServer::start_with(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        if mutual {
            c.tls_client_ca = Some(ca);
        }
    })
    .await
}

/// A channel to `addr` over TLS that trusts `ca` and checks the name `localhost`, optionally
/// presenting a client certificate.
fn tls_channel(addr: SocketAddr, ca: &str, identity: Option<(&str, &str)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("endpoint")
        .connect_timeout(PROMPT)
        .tls_config(tls)
        .expect("client TLS config")
        .connect_lazy()
}

/// A plaintext (h2c) channel to `addr`.
fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(PROMPT)
        .connect_lazy()
}

/// StartCall + GetInteraction on `channel` (as the agent `default`); panics on any failure.
async fn start_and_get(channel: Channel, what: &str) {
    let mut client = InteractionServiceClient::new(channel);
    let started = tokio::time::timeout(PROMPT, client.start_call(start_req(NUM_OK)))
        .await
        .unwrap_or_else(|_| panic!("{what}: StartCall did not answer within {PROMPT:?}"))
        .unwrap_or_else(|s| panic!("{what}: StartCall failed: {s:?}"))
        .into_inner();
    let id = started.interaction_id.expect("an interaction id");
    let got = tokio::time::timeout(
        PROMPT,
        client.get_interaction(GetInteractionRequest {
            interaction_id: id.clone(),
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: GetInteraction did not answer within {PROMPT:?}"))
    .unwrap_or_else(|s| panic!("{what}: GetInteraction failed: {s:?}"))
    .into_inner();
    assert_eq!(got.id, id, "{what}: GetInteraction returns the interaction");
}

/// A GetInteraction on `channel` that must fail (not hang); returns the status.
async fn call_fails(channel: Channel, what: &str) -> Status {
    let mut client = InteractionServiceClient::new(channel);
    let answer = tokio::time::timeout(
        PROMPT,
        client.get_interaction(GetInteractionRequest {
            interaction_id: "01970000-0000-7000-8000-000000000000".into(),
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: no answer within {PROMPT:?} (hangs instead of failing)"));
    match answer {
        Ok(r) => panic!("{what}: the call should fail, got {:?}", r.into_inner()),
        Err(status) => status,
    }
}

// ---------------------------------------------------------------------------------------------
// 1, 2: TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plaintext_cleanly() {
    let pki = Pki::generate();
    let certs = tempfile::tempdir().expect("temp dir");
    let server = tls_server(&pki, certs.path(), false).await;
    let addr = server.addr();

    start_and_get(tls_channel(addr, &pki.ca, None), "TLS client").await;

    // A plaintext HTTP/2 client on the TLS port: an error, promptly. Which one depends on when
    // the client notices the server closing the connection (CANCELLED when its request was
    // already written).
    let status = call_fails(plain_channel(addr), "h2c client on the TLS port").await;
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "h2c client on the TLS port: unexpected status {status:?}"
    );

    // The server keeps serving TLS clients, on new connections too.
    start_and_get(tls_channel(addr, &pki.ca, None), "TLS client after h2c").await;

    // A TLS client that does not trust the server's CA fails too (sanity of the setup).
    let other = Pki::generate();
    call_fails(
        tls_channel(addr, &other.ca, None),
        "TLS client with the wrong CA",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let pki = Pki::generate();
    let certs = tempfile::tempdir().expect("temp dir");
    let server = tls_server(&pki, certs.path(), true).await;
    let addr = server.addr();

    call_fails(
        tls_channel(addr, &pki.ca, None),
        "TLS client without a client certificate",
    )
    .await;

    // A client certificate from another CA is refused as well.
    let other = Pki::generate();
    call_fails(
        tls_channel(addr, &pki.ca, Some((&other.client_cert, &other.client_key))),
        "TLS client with a certificate of another CA",
    )
    .await;

    start_and_get(
        tls_channel(addr, &pki.ca, Some((&pki.client_cert, &pki.client_key))),
        "TLS client with a client certificate",
    )
    .await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3: caps on watch streams

/// Opens WatchInteractions for `client`; the stream or the status.
async fn open_agent_watch(client: &mut Client) -> Result<Streaming<InteractionEvent>, Status> {
    tokio::time::timeout(
        PROMPT,
        client.watch_interactions(WatchInteractionsRequest {}),
    )
    .await
    .expect("WatchInteractions answers promptly")
    .map(|r| r.into_inner())
}

/// Opens WatchInteraction on `id`; the stream or the status.
async fn open_watch(client: &mut Client, id: &str) -> Result<Streaming<InteractionEvent>, Status> {
    tokio::time::timeout(
        PROMPT,
        client.watch_interaction(WatchInteractionRequest {
            interaction_id: id.to_string(),
            after_sequence: 0,
        }),
    )
    .await
    .expect("WatchInteraction answers promptly")
    .map(|r| r.into_inner())
}

fn assert_refused(result: Result<Streaming<InteractionEvent>, Status>, what: &str) -> Status {
    match result {
        Ok(_) => panic!("{what}: should be refused with RESOURCE_EXHAUSTED, it was opened"),
        Err(status) => {
            assert_eq!(
                status.code(),
                Code::ResourceExhausted,
                "{what}: wrong code: {status:?}"
            );
            assert!(!status.message().is_empty(), "{what}: no message");
            status
        }
    }
}

/// Retries `open` (short pauses, bounded) until it succeeds: the permit of a dropped stream is
/// freed when the server notices the stream's end.
async fn open_eventually<F, Fut>(what: &str, mut open: F) -> Streaming<InteractionEvent>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Streaming<InteractionEvent>, Status>>,
{
    let deadline = Instant::now() + PROMPT;
    loop {
        match open().await {
            Ok(stream) => return stream,
            Err(status) if status.code() == Code::ResourceExhausted => {
                if Instant::now() > deadline {
                    panic!("{what}: still refused after {PROMPT:?}: {status:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{what}: failed: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_may_hold_only_its_share_of_watch_streams() {
    let server = TestServer::start_with(|c| c.max_watch_streams_per_agent = 3).await;
    let mut a = server.client("agent-a");
    let mut b = server.client("agent-b");
    let id = start_call(&mut a, NUM_OK).await;

    // Both kinds count: two WatchInteractions and one WatchInteraction.
    let w1 = open_agent_watch(&mut a).await.expect("watch 1 opens");
    let w2 = open_agent_watch(&mut a).await.expect("watch 2 opens");
    let mut w3 = open_watch(&mut a, &id).await.expect("watch 3 opens");
    next_event(&mut w3, PROMPT).await;

    let refused = assert_refused(open_agent_watch(&mut a).await, "4th WatchInteractions");
    assert!(
        refused.message().contains('3'),
        "the message names the limit: {refused:?}"
    );
    assert_refused(open_watch(&mut a, &id).await, "4th (WatchInteraction)");

    // Another agent is not affected.
    let _b1 = open_agent_watch(&mut b)
        .await
        .expect("another agent can still watch");

    // Dropping one frees its place (once the server notices the stream's end).
    drop(w1);
    let w4 = open_eventually("a new watch after dropping one", || {
        let mut a = a.clone();
        async move { open_agent_watch(&mut a).await }
    })
    .await;
    assert_refused(open_agent_watch(&mut a).await, "4th again");
    drop((w2, w3, w4));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_holds_only_max_watch_streams_in_all() {
    let server = TestServer::start_with(|c| c.max_watch_streams = 4).await;
    let mut clients: Vec<Client> = (0..5)
        .map(|i| server.client(&format!("agent-{i}")))
        .collect();
    let mut open = Vec::new();
    for (i, client) in clients.iter_mut().take(4).enumerate() {
        open.push(
            open_agent_watch(client)
                .await
                .unwrap_or_else(|s| panic!("watch of agent-{i} opens: {s:?}")),
        );
    }
    let refused = assert_refused(
        open_agent_watch(&mut clients[4]).await,
        "a 5th stream in all (another agent)",
    );
    assert!(
        refused.message().contains('4'),
        "the message names the limit: {refused:?}"
    );
    // WatchInteraction counts against the same cap (refused before the id is even looked up).
    assert_refused(
        open_watch(&mut clients[4], "01970000-0000-7000-8000-000000000000").await,
        "a 5th stream in all (WatchInteraction)",
    );

    open.remove(0);
    let last = clients[4].clone();
    let _fifth = open_eventually("a stream after one closed", || {
        let mut last = last.clone();
        async move { open_agent_watch(&mut last).await }
    })
    .await;
    assert_refused(
        open_agent_watch(&mut clients[0]).await,
        "the cap holds again",
    );
    drop(open);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4: oversized WatchInteraction request

#[tokio::test]
async fn an_oversized_watch_request_is_resource_exhausted() {
    let server = TestServer::start().await;
    let mut client = server.client("agent-big");
    let id = "x".repeat(70 * 1024);
    let status = match open_watch(&mut client, &id).await {
        Ok(mut stream) => match tokio::time::timeout(PROMPT, stream.message()).await {
            Ok(Err(status)) => status,
            other => panic!("a 70 KiB WatchInteraction request should fail, got {other:?}"),
        },
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "70 KiB interaction_id: {status:?}"
    );
    // The connection is still good.
    start_call(&mut client, NUM_OK).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5, 6: garbage and idle connections

/// Pseudo-random bytes (xorshift; no rand crate in the tests).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `bytes` on a new connection and reads until EOF, an error or `limit`; whether the
/// server closed the connection, and what it sent.
async fn send_raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (bool, Vec<u8>) {
    let mut stream = tokio::time::timeout(PROMPT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    if !bytes.is_empty() {
        // The server may close while we write; that is fine.
        let _ = stream.write_all(bytes).await;
    }
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, received),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_does_not_stop_the_server() {
    let server = TestServer::start().await;
    let addr = server.addr();
    let (closed, _) = send_raw(addr, &noise(4096), Duration::from_secs(2)).await;
    assert!(
        closed,
        "the server should close a connection that sent random bytes"
    );
    // HTTP/1.1 is served since gRPC-Web: `GET /` is the console, with `Connection: close` the
    // server then closes.
    let (closed, reply) = send_raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        closed && reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("calldesk console"),
        "the console over HTTP/1.1, then the connection closed ({closed}): {reply:?}"
    );
    let mut client = server.client("agent-after-garbage");
    let id = start_call(&mut client, NUM_OK).await;
    get(&mut client, &id)
        .await
        .expect("GetInteraction after garbage");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_grpc_connections_are_not() {
    let server =
        TestServer::start_with(|c| c.idle_connection_timeout = Duration::from_millis(300)).await;
    let addr = server.addr();

    let started = Instant::now();
    let (closed, _) = send_raw(addr, b"", Duration::from_secs(3)).await;
    assert!(
        closed,
        "a connection that sends nothing is closed within 3 s (idle timeout 300ms)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );

    // A gRPC client idles 600 ms between calls on the same connection.
    let mut client = server.client("agent-idle");
    let (id, mut events, _) = call_until(&mut client, NUM_OK, InteractionState::Delivered).await;
    let idle = tokio::time::sleep(Duration::from_millis(600));
    // Waiting out an interval is the point here, not synchronisation.
    idle.await;
    get(&mut client, &id)
        .await
        .expect("a call after 600 ms of idling");
    end(&mut client, &id).await.expect("EndCall after idling");
    wait_for_state(&mut events, InteractionState::WrapUp).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7: unary deadlines

/// StartCall on the number the switch never acknowledges, which must fail within `PROMPT`.
async fn start_no_ack(client: &mut Client) -> Status {
    tokio::time::timeout(PROMPT, client.start_call(start_req(NUM_NO_ACK)))
        .await
        .expect("StartCall answers")
        .expect_err("StartCall on a number never acknowledged must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_request_timeout_answers_deadline_exceeded() {
    let server = TestServer::start_with(|c| {
        c.originate_timeout = Duration::from_secs(5);
        c.request_timeout = Duration::from_millis(200);
    })
    .await;
    let mut client = server.client("agent-deadline");
    let started = Instant::now();
    let status = start_no_ack(&mut client).await;
    let took = started.elapsed();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "server-side request timeout: {status:?}"
    );
    // The request timeout's answer, not the originate timeout's ("Timeout error", 5 s).
    assert_eq!(
        status.message(),
        "the call did not finish within its deadline"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}: not before the 5 s originate timeout"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originate_timeout_still_answers_timeout_error() {
    let server = TestServer::start().await;
    let mut client = server.client("agent-originate");
    let status = start_no_ack(&mut client).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "Timeout error", "{status:?}");
    server.shutdown().await;
}

/// A request over HTTP/2 whose body never ends (`body` is sent without END_STREAM): the
/// response's gRPC status, and whether the server then reset the stream (freed it) rather than
/// wait for the rest.
async fn h2_body_never_ends(addr: SocketAddr, path: &str, body: Vec<u8>) -> (Option<String>, bool) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-agent-id", "slow-body")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send headers");
    send.send_data(body.into(), false).expect("send data");
    let response = tokio::time::timeout(PROMPT, response)
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer to a body that never ends"))
        .expect("response headers");
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let reset = tokio::time::timeout(PROMPT, std::future::poll_fn(|cx| send.poll_reset(cx)))
        .await
        .is_ok();
    (status, reset)
}

/// Issue 22: a call whose request body never ends is answered at its deadline
/// (`--request-timeout`), DEADLINE_EXCEEDED, and its stream freed: over HTTP/2 a whole message
/// without END_STREAM and a watch's unfinished frame header; over HTTP/1.1 (gRPC-Web) a chunked
/// body that stops inside its frame header, whose connection is then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_never_ends_is_answered_at_its_deadline() {
    use prost::Message;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), &["--request-timeout", "1s"]).await;
    let addr: SocketAddr = server.addr().parse().expect("server addr");
    let message = start_req(NUM_OK).encode_to_vec();
    let mut whole_frame = vec![0];
    whole_frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    whole_frame.extend_from_slice(&message);
    let http1 = "POST /calldesk.v1.InteractionService/StartCall HTTP/1.1\r\nhost: calldesk\r\n\
                 content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
                 x-agent-id: slow-body\r\ntransfer-encoding: chunked\r\n\r\n3\r\n\0\0\0\r\n";

    let (start_call, watch, (closed, http1_reply)) = tokio::join!(
        h2_body_never_ends(
            addr,
            "/calldesk.v1.InteractionService/StartCall",
            whole_frame
        ),
        h2_body_never_ends(
            addr,
            "/calldesk.v1.InteractionService/WatchInteractions",
            vec![0; 3]
        ),
        send_raw(addr, http1.as_bytes(), PROMPT),
    );
    for (what, (status, reset)) in [("StartCall", start_call), ("WatchInteractions", watch)] {
        assert_eq!(
            status.as_deref(),
            Some("4"),
            "HTTP/2 {what}: DEADLINE_EXCEEDED"
        );
        assert!(
            reset,
            "HTTP/2 {what}: the stream was not reset after the answer"
        );
    }
    let http1_reply = String::from_utf8_lossy(&http1_reply).to_lowercase();
    assert!(
        http1_reply.starts_with("http/1.1 200") && http1_reply.contains("grpc-status: 4"),
        "gRPC-Web over HTTP/1.1: {http1_reply}"
    );
    assert!(
        closed,
        "HTTP/1.1: the connection stayed open after the answer"
    );
    // Nothing was placed for the agent.
    let mut client = server.client("slow-body");
    assert!(
        support::list_all(&mut client, InteractionState::Unspecified)
            .await
            .is_empty()
    );
}

/// GET /metrics; the body.
async fn scrape(addr: SocketAddr) -> String {
    let response = get_metrics(addr, PROMPT).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// `calldesk_rpc_requests_total` of StartCall with `code`, 0 if absent.
fn start_call_count(scrape: &str, code: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| {
            l.starts_with("calldesk_rpc_requests_total{")
                && l.contains("InteractionService/StartCall\"")
                && l.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A TCP proxy to `upstream` that forwards HTTP/2 both ways, except the client's RST_STREAM
/// frames: a client that gives up on a call cannot cancel it at the server, so the server's
/// own answer to an expired deadline can be observed. Returns the proxy's address.
async fn proxy_without_client_resets(upstream: SocketAddr) -> SocketAddr {
    const PREFACE: usize = 24;
    const RST_STREAM: u8 = 0x3;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut preface = [0u8; PREFACE];
                if from_client.read_exact(&mut preface).await.is_err()
                    || to_server.write_all(&preface).await.is_err()
                {
                    return;
                }
                loop {
                    let mut header = [0u8; 9];
                    if from_client.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    if from_client.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if header[3] == RST_STREAM {
                        continue;
                    }
                    if to_server.write_all(&header).await.is_err()
                        || to_server.write_all(&payload).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A client deadline (`grpc-timeout`) shorter than the server's `--request-timeout`: the
/// server must answer DEADLINE_EXCEEDED too ("a shorter client deadline wins").
///
/// tonic's client enforces the same deadline with a timer of its own, reports CANCELLED
/// "Timeout expired" when it fires (always first: it started first) and resets the stream. So
/// the calls go through a proxy that withholds those resets, and what the *server* answered is
/// read from its metrics (`calldesk_rpc_requests_total{code}` records the status it sent) and
/// its `refused` log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_answers_deadline_exceeded() {
    const CALLS: usize = 12;
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--originate-timeout",
            "5s",
            "--request-timeout",
            "30s",
            "--metrics-listen",
            &metrics_arg,
        ],
    )
    .await;
    let upstream: SocketAddr = server.addr().parse().expect("server addr");
    let proxy = proxy_without_client_resets(upstream).await.to_string();
    // Kept until the end: a closed connection would cancel the calls at the server.
    let clients: Vec<Client> = (0..CALLS)
        .map(|i| client(&proxy, &format!("agent-{i}")))
        .collect();
    let mut calls = Vec::new();
    for client in &clients {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let mut request = Request::new(start_req(NUM_NO_ACK));
            request.set_timeout(Duration::from_millis(150));
            let started = Instant::now();
            let answer = tokio::time::timeout(PROMPT, client.start_call(request))
                .await
                .expect("StartCall answers");
            (answer.map(|r| r.into_inner()), started.elapsed())
        }));
    }
    let mut client_saw = Vec::new();
    for call in calls {
        let (answer, took) = call.await.expect("call task");
        let status = answer.expect_err("StartCall with a 150ms deadline must fail");
        // The deadline's answer, not the originate timeout's (5 s, "Timeout error").
        assert_ne!(
            status.message(),
            "Timeout error",
            "after {took:?}: {status:?}"
        );
        // The client's own timer: tonic reports it as CANCELLED "Timeout expired".
        assert!(
            status.code() == Code::DeadlineExceeded
                || (status.code() == Code::Cancelled && status.message() == "Timeout expired"),
            "client deadline: {status:?}"
        );
        client_saw.push(status.code());
    }
    // What the server sent, once it has answered all of them.
    let deadline = Instant::now() + PROMPT;
    let text = loop {
        let text = scrape(metrics).await;
        let done =
            start_call_count(&text, "DEADLINE_EXCEEDED") + start_call_count(&text, "CANCELLED");
        if done >= CALLS as u64 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exceeded = start_call_count(&text, "DEADLINE_EXCEEDED");
    let cancelled = start_call_count(&text, "CANCELLED");
    let logged = server
        .stderr_text()
        .lines()
        .filter(|l| l.contains("refused") && l.contains("DEADLINE_EXCEEDED"))
        .count();
    assert_eq!(
        (exceeded, cancelled),
        (CALLS as u64, 0),
        "the server's answers to {CALLS} StartCalls with a 150ms grpc-timeout, as \
         (DEADLINE_EXCEEDED, CANCELLED); {logged} `refused DEADLINE_EXCEEDED` log lines; \
         the client saw {client_saw:?}"
    );
    drop(clients);
}

// ---------------------------------------------------------------------------------------------
// 8: graceful shutdown of the binary

async fn health_status(addr: &str) -> i32 {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(PROMPT)
        .connect_lazy();
    tokio::time::timeout(
        PROMPT,
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health answers")
    .expect("Health/Check")
    .into_inner()
    .status
}

/// Waits (bounded, short pauses) for `needle` in the server's stderr.
async fn wait_for_log(server: &ServerProcess, needle: &str) {
    let deadline = Instant::now() + PROMPT;
    while !server.stderr_text().contains(needle) {
        if Instant::now() > deadline {
            panic!(
                "no {needle:?} in the server's log within {PROMPT:?}:\n{}",
                server.stderr_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_watches_with_unavailable_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--max-active-calls", "8", "--shutdown-grace", "10s"]);
    let mut server = ServerProcess::start(dir.path(), &flags).await;
    let addr = server.addr().to_string();
    let mut client = server.client("agent-shutdown");
    let mut streams = Vec::new();
    // One WatchInteractions first, so that it sees the calls start.
    let mut all = tokio::time::timeout(
        PROMPT,
        client.watch_interactions(WatchInteractionsRequest {}),
    )
    .await
    .expect("WatchInteractions answers")
    .expect("WatchInteractions opens")
    .into_inner();
    for i in 0..4 {
        let (_, stream, _) = call_id_until(
            &mut client,
            NUM_OK,
            &format!("shutdown-{i}"),
            InteractionState::Delivered,
        )
        .await;
        streams.push(stream);
    }
    // The agent watcher has seen events: it is open and live.
    wait_for(&mut all, PROMPT, |_| true).await;
    streams.push(all);

    assert_eq!(
        health_status(&addr).await,
        ServingStatus::Serving as i32,
        "health before SIGTERM"
    );

    let signalled = Instant::now();
    send_signal(server.pid(), "-TERM");
    let ends = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { collect_to_end(&mut s, PROMPT).await.1 }));
    let mut outcomes = Vec::new();
    for end in ends {
        outcomes.push(end.await.expect("stream task"));
    }
    // The contract: the process exits by the end of --shutdown-grace (10 s), plus a margin
    // for a machine whose cores other tests share.
    let grace = Duration::from_secs(10) + Duration::from_millis(1500);
    let status = server.wait_exit(grace).await;
    let took = signalled.elapsed();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Err(s) if s.code() == Code::Unavailable => {}
            other => panic!("stream {i} should end with UNAVAILABLE, ended with {other:?}"),
        }
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(took < grace, "exited {took:?} after SIGTERM (grace 10s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_long_shutdown_exits_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(
        dir.path(),
        &[
            "--originate-timeout",
            "20s",
            "--request-timeout",
            "30s",
            "--shutdown-grace",
            "30s",
        ],
    )
    .await;
    // Two StartCalls on the never-acknowledged number with one request_id but different
    // requests: whichever reaches the server first stays in flight (20 s), the other is refused
    // at once with "request_id reused" — proof that the first is in flight.
    let with_object = |object: &str| {
        let mut req = start_req_id(NUM_NO_ACK, "long-shutdown");
        req.initial_object = Some(calldesk::proto::AssociatedObject {
            id: object.to_string(),
            ..Default::default()
        });
        req
    };
    let mut first = server.client("agent-long");
    let mut second = server.client("agent-long");
    let (req_a, req_b) = (with_object("a"), with_object("b"));
    let mut one = tokio::spawn(async move { first.start_call(req_a).await });
    let mut two = tokio::spawn(async move { second.start_call(req_b).await });
    let (refused, one_answered) = tokio::time::timeout(PROMPT, async {
        tokio::select! {
            r = &mut one => (r, true),
            r = &mut two => (r, false),
        }
    })
    .await
    .expect("one of the two StartCalls is refused at once");
    let in_flight = if one_answered { two } else { one };
    let refused = refused
        .expect("call task")
        .expect_err("the second of two requests with one request_id is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    let signalled = Instant::now();
    send_signal(server.pid(), "-TERM");
    wait_for_log(&server, "shutting down").await;
    // The in-flight StartCall holds the shutdown (grace 30s, originate timeout 20s).
    assert!(
        !in_flight.is_finished(),
        "the in-flight StartCall ended early"
    );
    send_signal(server.pid(), "-TERM");
    let status = server.wait_exit(PROMPT).await;
    let took = signalled.elapsed();
    assert!(
        !status.success(),
        "a second signal exits at once with a non-zero status, got {status}"
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after the first SIGTERM; the second should end it at once"
    );
    in_flight.abort();
}

// ---------------------------------------------------------------------------------------------
// A deploy drains (docs/api.md §9.2): SIGTERM refuses new calls, keeps the live ones

/// Health's status, new calls refused `UNAVAILABLE` with the shutdown's words.
fn assert_refused_for_shutdown(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert_eq!(status.message(), "the server is shutting down", "{what}");
}

/// Stages `phone` for `client`'s agent (the server runs --deferred-dial) and dials it.
async fn stage_and_dial(client: &mut Client, phone: &str) -> String {
    let staged = support::start_ok(client, start_req(phone)).await;
    assert!(staged.interaction_id.is_none(), "staged, not dialed");
    let dialed = support::unary(
        "DialStaged",
        client.dial_staged(calldesk::proto::DialStagedRequest::default()),
    )
    .await
    .expect("DialStaged before SIGTERM");
    dialed.interaction_id.expect("DialStaged's interaction")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_live_call_until_the_agent_ends_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--deferred-dial", "--drain-calls-for", "1h"]);
    let mut server = ServerProcess::start(dir.path(), &flags).await;
    let addr = server.addr().to_string();
    // Before the signal: a connected call (a), a call in WRAP_UP (b, busy), a staged number (c).
    let mut a = server.client("drain-a");
    let live = stage_and_dial(&mut a, NUM_OK).await;
    let mut watching = support::watch(&mut a, &live, 0).await;
    wait_for_state(&mut watching, InteractionState::Delivered).await;
    let mut b = server.client("drain-b");
    let wrapping = stage_and_dial(&mut b, support::NUM_BUSY).await;
    let mut wrap_watch = support::watch(&mut b, &wrapping, 0).await;
    wait_for_state(&mut wrap_watch, InteractionState::WrapUp).await;
    let mut c = server.client("drain-c");
    support::start_ok(&mut c, start_req(NUM_OK2)).await;

    send_signal(server.pid(), "-TERM");
    wait_for_log(&server, "draining: new calls are refused").await;
    assert_eq!(
        health_status(&addr).await,
        ServingStatus::NotServing as i32,
        "health while draining"
    );
    // New calls are refused, staged ones included, so that clients place them elsewhere.
    let mut d = server.client("drain-d");
    let refused = support::start_err(&mut d, start_req(NUM_OK)).await;
    assert_refused_for_shutdown(&refused, "StartCall while draining");
    let refused = support::unary(
        "DialStaged",
        c.dial_staged(calldesk::proto::DialStagedRequest::default()),
    )
    .await
    .expect_err("DialStaged while draining");
    assert_refused_for_shutdown(&refused, "DialStaged while draining");

    // The live call goes on, and agents work on their interactions as ever.
    assert_eq!(
        get(&mut a, &live).await.expect("GetInteraction").state,
        InteractionState::Delivered as i32,
        "the live call is still connected"
    );
    support::complete(&mut b, &wrapping, "busy", "")
        .await
        .expect("CompleteInteraction while draining");
    support::hold(&mut a, &live)
        .await
        .expect("HoldCall while draining");
    wait_for_state(&mut watching, InteractionState::Hold).await;
    support::resume(&mut a, &live)
        .await
        .expect("ResumeCall while draining");
    wait_for_state(&mut watching, InteractionState::Delivered).await;
    // A watch opened during the drain follows the call too.
    let mut late_watch = support::watch(&mut a, &live, 0).await;
    wait_for_state(&mut late_watch, InteractionState::Delivered).await;
    assert!(
        !server.stderr_text().contains("stopped cleanly"),
        "the server must not stop while a call is live"
    );

    // The last call ends: the server stops cleanly at once. (The stop may end the watch before
    // it has sent the WRAP_UP event: a watcher reads it with after_sequence, §4.)
    let after_end = end(&mut a, &live).await.expect("EndCall while draining");
    assert_eq!(after_end.state, InteractionState::WrapUp as i32);
    let (events, ended) = collect_to_end(&mut watching, PROMPT).await;
    assert!(
        events
            .iter()
            .all(|e| e.state == InteractionState::WrapUp as i32),
        "only the end of the call: {events:#?}"
    );
    match ended {
        Err(s) if s.code() == Code::Unavailable => {}
        other => panic!("the watch ends with UNAVAILABLE once the server stops: {other:?}"),
    }
    let status = server.wait_exit(PROMPT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after the drain: {status}"
    );
    let log = server.stderr_text();
    assert!(log.contains("drained: every live call has ended"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_calls_for_bounds_the_wait_for_a_live_call() {
    // On SQLite, the single node's store: with PostgreSQL the drain hands the calls to a
    // survivor instead (tests/replicas.rs, a_drain_that_runs_out_hands_*).
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--drain-calls-for", "1s"]);
    let mut server = ServerProcess::start_sqlite(dir.path(), &flags).await;
    let mut client = server.client("drain-bounded");
    let (id, mut watching, _) = call_until(&mut client, NUM_OK, InteractionState::Delivered).await;

    let signalled = Instant::now();
    send_signal(server.pid(), "-TERM");
    wait_for_log(&server, "draining: new calls are refused").await;
    let refused = support::start_err(&mut client, start_req(NUM_OK)).await;
    assert_refused_for_shutdown(&refused, "StartCall while draining");
    // Nobody ends the call: the watch sees no further event, and ends with the server, after
    // the drain's second.
    let (events, ended) = collect_to_end(&mut watching, PROMPT).await;
    assert!(events.is_empty(), "no event while draining: {events:#?}");
    match ended {
        Err(s) if s.code() == Code::Unavailable => {}
        other => panic!("the watch ends with UNAVAILABLE once the server stops: {other:?}"),
    }
    let status = server.wait_exit(PROMPT).await;
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "the live call was waited for, for --drain-calls-for 1s"
    );
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    let log = server.stderr_text();
    assert!(
        log.contains("calls still live after --drain-calls-for; hanging them up"),
        "{log}"
    );

    // The call was hung up, not finished: the restart ends it, as after any stop.
    let mut server = ServerProcess::start_sqlite(dir.path(), &FAST_SIM).await;
    let mut client = server.client("drain-bounded");
    let mut watching = support::watch(&mut client, &id, 0).await;
    let events = wait_for_state(&mut watching, InteractionState::WrapUp).await;
    let last = events.last().expect("the WRAP_UP event");
    let interaction = last.interaction.as_ref().expect("the event's interaction");
    assert_eq!(
        support::reason_name(interaction.end_reason),
        "END_REASON_SERVER_RESTART",
        "{last:#?}"
    );
    drop(watching);
    server.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_and_stops_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--drain-calls-for", "1h"]);
    let mut server = ServerProcess::start(dir.path(), &flags).await;
    let mut client = server.client("drain-twice");
    let (_, mut watching, _) = call_until(&mut client, NUM_OK, InteractionState::Delivered).await;

    send_signal(server.pid(), "-TERM");
    wait_for_log(&server, "draining: new calls are refused").await;
    send_signal(server.pid(), "-TERM");
    let (events, ended) = collect_to_end(&mut watching, PROMPT).await;
    assert!(
        events.is_empty(),
        "no event: the call was not ended: {events:#?}"
    );
    match ended {
        Err(s) if s.code() == Code::Unavailable => {}
        other => panic!("the watch ends with UNAVAILABLE once the server stops: {other:?}"),
    }
    // As a first SIGTERM did before the drain: a clean stop that hangs up.
    let status = server.wait_exit(PROMPT).await;
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    let log = server.stderr_text();
    assert!(
        log.contains("signal while draining: hanging up the live calls and stopping now"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9: a non-loopback address needs auth or --insecure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listen_needs_auth_tokens_or_insecure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = serve_args_on("0.0.0.0:0", &dir.path().join("data"), &[]);
    let finished = tokio::task::spawn_blocking(move || run_to_exit(args, PROMPT))
        .await
        .expect("run calldesk serve");
    assert!(
        !finished.status.success(),
        "0.0.0.0 without --auth-tokens must not start: {}",
        finished.status
    );
    assert!(
        finished.stderr.contains("--auth-tokens"),
        "the message names --auth-tokens: {:?}",
        finished.stderr
    );

    let mut server = ServerProcess::start_command(
        BIN.into(),
        serve_args_on("0.0.0.0:0", &dir.path().join("data"), &["--insecure"]),
    )
    .await;
    assert!(
        server.addr().starts_with("0.0.0.0:"),
        "listening on {}",
        server.addr()
    );
    server.kill9();
}

/// `calldesk` (the CLI) reaches a TLS server with --ca-cert, and one that requires client
/// certificates with --client-cert/--client-key; the settings also come from the environment.
#[tokio::test]
async fn the_cli_speaks_tls_and_mutual_tls() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = tls_server(&pki, dir.path(), true).await;
    let client_cert = dir.path().join("client.pem");
    let client_key = dir.path().join("client.key");
    std::fs::write(&client_cert, &pki.client_cert).expect("write client.pem");
    std::fs::write(&client_key, &pki.client_key).expect("write client.key");
    let ca = dir.path().join("ca.pem");
    let url = format!("https://localhost:{}", server.addr().port());
    let path = |p: &Path| p.display().to_string();
    let cli = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let mut command = vec!["list".to_owned(), "--agent".into(), "tls-agent".into()];
        command.extend(args);
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(BIN);
            child.args(&command).env_remove("CALLDESK_SERVER");
            for (name, value) in env {
                child.env(name, value);
            }
            child.output().expect("run calldesk list")
        })
    };

    let with_flags = vec![
        "--server".into(),
        url.clone(),
        "--ca-cert".into(),
        path(&ca),
        "--client-cert".into(),
        path(&client_cert),
        "--client-key".into(),
        path(&client_key),
    ];
    let out = cli(with_flags, vec![]).await.expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no interactions\n");

    let from_env = vec![
        ("CALLDESK_SERVER", url.replace("https://", "http://")),
        ("CALLDESK_TLS", "1".to_owned()),
        ("CALLDESK_CA_CERT", path(&ca)),
        ("CALLDESK_CLIENT_CERT", path(&client_cert)),
        ("CALLDESK_CLIENT_KEY", path(&client_key)),
    ];
    let out = cli(vec![], from_env).await.expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a client certificate the mutual-TLS server refuses the connection.
    let out = cli(
        vec!["--server".into(), url, "--ca-cert".into(), path(&ca)],
        vec![],
    )
    .await
    .expect("join");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.shutdown().await;
}
