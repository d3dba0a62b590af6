//! gRPC-Web on calldesk's port, as browsers speak it (raw HTTP/1.1 and HTTP/2 requests from
//! tests/support/grpc_web.rs): calls work; only gRPC-Web, and gRPC over HTTP/2, reach the
//! service (a `text/plain` POST, which any web page may send cross-origin without a
//! preflight, gets 415 and places nothing); CORS only for `--cors-allow-origin` and never
//! for another origin; every layer is right for gRPC-Web (auth, metadata and message limits,
//! deadlines, the trace span; metrics' status codes in tests/grpc_web_metrics.rs, a process of
//! its own) and streams end at shutdown; `GET /` is the console.

mod support;

use bytes::Bytes;
use calldesk::proto::{
    GetInteractionRequest, InteractionEvent, ListInteractionsRequest, ListInteractionsResponse,
    StartCallRequest, StartCallResponse, WatchInteractionRequest, WatchInteractionsRequest,
};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;
use support::{grpc_web::*, in_process::TestServer, process::ServerProcess, *};
use tonic::Code;

const UNKNOWN_ID: &str = "01970000-0000-7000-8000-000000000000";
const ORIGIN: &str = "http://crm.example.test";
const OTHER_ORIGIN: &str = "http://evil.example.test";

fn start_request(phone: &str) -> StartCallRequest {
    start_req_object(phone, object("case-1"))
}

/// The interactions `agent` has, read with a plain gRPC client.
async fn interactions_of(server: &TestServer, agent: &str) -> usize {
    let mut client = server.client(agent);
    client
        .list_interactions(ListInteractionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .interactions
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_places_and_follows_a_call_over_http1_and_http2() {
    let server = TestServer::start().await;
    let agent = [("x-agent-id", "web-agent")];
    let reply = call(server.addr(), "StartCall", &start_request(NUM_OK), &agent).await;
    assert_eq!(reply.http, StatusCode::OK);
    assert_eq!(reply.code(), Some(Code::Ok), "{reply:?}");
    assert_eq!(
        reply.headers["content-type"], "application/grpc-web+proto",
        "a gRPC-Web answer"
    );
    assert!(
        reply.trailers.is_some(),
        "the status travels in the body's trailers frame: {reply:?}"
    );
    let started: StartCallResponse = reply.decode(0);
    let id = started.interaction.expect("interaction").id;

    // A server stream over HTTP/1.1: the call's history up to CONNECTED, in order.
    let watch = post(
        &format!("{SERVICE}WatchInteraction"),
        GRPC_WEB,
        &agent,
        frame(&WatchInteractionRequest {
            interaction_id: id.clone(),
            after_sequence: 0,
        }),
    );
    let response = send(server.addr(), Version::HTTP_11, watch).await;
    let mut stream = WebStream::new(response.into_body());
    let mut events = Vec::new();
    while events.len() < 3 {
        let message = stream.next(WAIT).await.expect("an event");
        events.push(prost::Message::decode(message).expect("an InteractionEvent"));
    }
    let events: Vec<InteractionEvent> = events;
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_well_formed(&events);

    // gRPC-Web over HTTP/2 too.
    let list = post(
        &format!("{SERVICE}ListInteractions"),
        GRPC_WEB,
        &agent,
        frame(&ListInteractionsRequest::default()),
    );
    let reply = exchange(server.addr(), Version::HTTP_2, list).await;
    assert_eq!(reply.code(), Some(Code::Ok), "{reply:?}");
    let listed: ListInteractionsResponse = reply.decode(0);
    assert_eq!(listed.interactions.len(), 1);
    assert_eq!(listed.interactions[0].id, id);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_grpc_web_and_grpc_over_http2_reach_the_service() {
    let server = TestServer::start().await;
    let body = frame(&start_request(NUM_OK));
    let path = format!("{SERVICE}StartCall");
    // What a page on any site may POST without a preflight, and gRPC's own types over HTTP/1.1.
    for (content_type, version) in [
        ("text/plain", Version::HTTP_11),
        ("text/plain;charset=UTF-8", Version::HTTP_11),
        ("application/x-www-form-urlencoded", Version::HTTP_11),
        ("multipart/form-data; boundary=x", Version::HTTP_11),
        ("text/plain", Version::HTTP_2),
        ("application/grpc", Version::HTTP_11),
        ("application/grpc+proto", Version::HTTP_11),
        ("application/grpc-web-text", Version::HTTP_11),
        ("application/json", Version::HTTP_11),
    ] {
        let request = post(
            &path,
            content_type,
            &[("x-agent-id", "victim")],
            body.clone(),
        );
        let response = send(server.addr(), version, request).await;
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type} over {version:?}"
        );
    }
    assert_eq!(
        interactions_of(&server, "victim").await,
        0,
        "no refused request placed a call"
    );

    // No content-type at all, and a GET of something that is not the console.
    let bare = Request::builder()
        .method(Method::POST)
        .uri(&path)
        .body(Full::new(body.clone()))
        .unwrap();
    let response = send(server.addr(), Version::HTTP_11, bare).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let get = Request::builder()
        .uri("/secrets")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send(server.addr(), Version::HTTP_11, get).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_slash_is_the_console_over_http1_and_http2() {
    let server = TestServer::start().await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/index.html", "text/html; charset=utf-8"),
            ("/console.js", "text/javascript; charset=utf-8"),
            ("/console.css", "text/css; charset=utf-8"),
        ] {
            let get = Request::builder()
                .uri(path)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = send(server.addr(), version, get).await;
            assert_eq!(response.status(), StatusCode::OK, "GET {path} {version:?}");
            let headers = response.headers();
            assert_eq!(headers["content-type"], content_type, "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert!(headers.contains_key("etag"));
            if path == "/" {
                let csp = headers["content-security-policy"].to_str().unwrap();
                assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let page = String::from_utf8_lossy(&body);
                assert!(page.contains("/console.js"), "{page}");
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_only_for_the_configured_origins() {
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("{SERVICE}StartCall"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-agent-id",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // Without --cors-allow-origin: no CORS header at all, for the preflight or the call.
    let plain = TestServer::start().await;
    let response = send(plain.addr(), Version::HTTP_11, preflight(ORIGIN)).await;
    assert!(
        !response
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{:?}",
        response.headers()
    );
    let reply = call(
        plain.addr(),
        "ListInteractions",
        &ListInteractionsRequest::default(),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::Ok));
    assert!(
        !reply
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{:?}",
        reply.headers
    );
    plain.shutdown().await;

    let server = TestServer::start_with(|c| {
        c.cors_allow_origins = vec![http::HeaderValue::from_static(ORIGIN)];
    })
    .await;
    let response = send(server.addr(), Version::HTTP_11, preflight(ORIGIN)).await;
    assert!(response.status().is_success(), "{response:?}");
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert_eq!(methods, "POST");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
        "x-agent-id",
    ] {
        assert!(allowed.contains(header), "{header} in {allowed}");
    }

    // Another origin is never reflected.
    let response = send(server.addr(), Version::HTTP_11, preflight(OTHER_ORIGIN)).await;
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin"),
        "{:?}",
        response.headers()
    );

    // The call itself: the origin allowed, the status headers exposed, for errors too.
    let reply = call(
        server.addr(),
        "GetInteraction",
        &GetInteractionRequest {
            interaction_id: UNKNOWN_ID.into(),
        },
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::NotFound));
    assert_eq!(reply.headers["access-control-allow-origin"], ORIGIN);
    let exposed = reply.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} in {exposed}");
    }
    let reply = call(
        server.addr(),
        "ListInteractions",
        &ListInteractionsRequest::default(),
        &[("origin", OTHER_ORIGIN)],
    )
    .await;
    assert!(!reply.headers.contains_key("access-control-allow-origin"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_deadlines_apply_to_grpc_web() {
    let server = TestServer::start_with(|c| {
        c.originate_timeout = std::time::Duration::from_secs(5);
    })
    .await;
    // grpc-timeout, as connect-web sends it: the dial that is never acknowledged runs out.
    let started = std::time::Instant::now();
    let reply = call(
        server.addr(),
        "StartCall",
        &start_request(NUM_NO_ACK),
        &[("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::DeadlineExceeded), "{reply:?}");
    println!("grpc-timeout 300m: answered after {:?}", started.elapsed());

    // Metadata over 16 KiB: RESOURCE_EXHAUSTED, in a form a gRPC-Web client reads.
    let big = "x".repeat(17 * 1024);
    let reply = call(
        server.addr(),
        "ListInteractions",
        &ListInteractionsRequest::default(),
        &[("x-padding", &big)],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::ResourceExhausted), "{reply:?}");
    assert_eq!(reply.headers["content-type"], GRPC_WEB);

    // A message over 64 KiB: RESOURCE_EXHAUSTED too (tonic's OUT_OF_RANGE, reworded).
    let mut request = start_request(NUM_OK);
    request.phone_number = "1".repeat(70 * 1024);
    let reply = call(server.addr(), "StartCall", &request, &[]).await;
    assert_eq!(reply.code(), Some(Code::ResourceExhausted), "{reply:?}");

    // A bad number: INVALID_ARGUMENT with its words.
    let reply = call(
        server.addr(),
        "StartCall",
        &start_request("not a number"),
        &[],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::InvalidArgument));
    assert!(
        reply.message().contains("phone_number"),
        "{}",
        reply.message()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_applies_to_grpc_web() {
    let dir = tempfile::tempdir().unwrap();
    let token = "web-token-0123456789";
    let hash: String = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        token,
    ))
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect();
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("agent-web {hash}\n")).unwrap();
    let server = TestServer::start_with(|c| c.auth_tokens = Some(file.clone())).await;

    let reply = call(
        server.addr(),
        "StartCall",
        &start_request(NUM_OK),
        &[("x-agent-id", "agent-web")],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::Unauthenticated), "{reply:?}");
    assert_eq!(
        reply.headers["content-type"], GRPC_WEB,
        "a refusal a gRPC-Web client can read"
    );
    let reply = call(
        server.addr(),
        "StartCall",
        &start_request(NUM_OK),
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::Unauthenticated));

    let bearer = format!("Bearer {token}");
    let reply = call(
        server.addr(),
        "StartCall",
        &start_request(NUM_OK),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::Ok), "{reply:?}");
    let started: StartCallResponse = reply.decode(0);
    assert_eq!(started.interaction.unwrap().agent_id, "agent-web");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_streams_end_with_unavailable_at_shutdown() {
    let mut server = TestServer::start().await;
    let watch = post(
        &format!("{SERVICE}WatchInteractions"),
        GRPC_WEB,
        &[("x-agent-id", "web-agent")],
        frame(&WatchInteractionsRequest::default()),
    );
    let response = send(server.addr(), Version::HTTP_11, watch).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = WebStream::new(response.into_body());
    // The stream is open once a call's first event arrives on it.
    let mut client = server.client("web-agent");
    start_call(&mut client, NUM_OK).await;
    assert!(stream.next(WAIT).await.is_some(), "the call's event");

    let running = server.take_running();
    let stopping =
        tokio::spawn(async move { tokio::time::timeout(WAIT, running.shutdown()).await });
    while stream.next(WAIT).await.is_some() {}
    let trailers = stream
        .trailers
        .take()
        .expect("the stream ends with a trailers frame");
    assert_eq!(trailers["grpc-status"], "14", "UNAVAILABLE: {trailers:?}");
    stopping
        .await
        .unwrap()
        .expect("shutdown does not wait for the gRPC-Web stream")
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_requests_run_in_the_rpc_span() {
    let dir = tempfile::tempdir().unwrap();
    let flags = process::fast_flags(&["--log-format", "json"]);
    let mut server = ServerProcess::start(dir.path(), &flags).await;
    let addr = server.addr().parse().unwrap();
    let reply = call(
        addr,
        "StartCall",
        &start_request("not a number"),
        &[("x-agent-id", "web-agent")],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::InvalidArgument));
    let (status, stderr) = server.stop_collecting_stderr().await;
    assert!(status.success());
    let refused = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "refused" && l["fields"]["code"] == "INVALID_ARGUMENT")
        .unwrap_or_else(|| panic!("no `refused` line:\n{stderr}"));
    let spans = refused["spans"].as_array().expect("spans");
    assert!(
        spans.iter().any(|s| s["name"] == "rpc"
            && s["method"] == format!("{SERVICE}StartCall")
            && s["agent"] == "web-agent"),
        "the refusal is logged in StartCall's span, with the agent: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_stream_outlives_the_handshake_deadline() {
    let deadline = std::time::Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.idle_connection_timeout = deadline).await;
    let watch = post(
        &format!("{SERVICE}WatchInteractions"),
        GRPC_WEB,
        &[("x-agent-id", "long-watch")],
        frame(&WatchInteractionsRequest::default()),
    );
    let response = send(server.addr(), Version::HTTP_11, watch).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = WebStream::new(response.into_body());

    // A witness opened after the stream, silent: once the server has closed it, the stream's
    // connection is past its handshake deadline too.
    let mut witness = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut witness, &mut byte))
        .await
        .expect("the silent connection is closed at its deadline");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    let mut client = server.client("long-watch");
    start_call(&mut client, NUM_OK).await;
    assert!(
        stream.next(WAIT).await.is_some(),
        "the HTTP/1.1 stream is still open after the deadline"
    );
    server.shutdown().await;
}
