//! Metrics of gRPC-Web calls: the status a gRPC-Web response carries in its body's trailers
//! frame is counted as gRPC's is. A binary of its own: the metrics recorder is global to the
//! process, and this test asserts exact counts.

mod support;

use calldesk::proto::{Dialpad, GetDialpadRequest, GetInteractionRequest, WatchInteractionRequest};
use support::{grpc_web::*, in_process::TestServer, *};
use tonic::Code;

const UNKNOWN_ID: &str = "01970000-0000-7000-8000-000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_record_the_status_grpc_web_carries_in_the_body() {
    let metrics = free_addr();
    let server = TestServer::start_with(|c| c.metrics_listen = Some(metrics)).await;
    // Exact counts: this binary has no other test to move them (the recorder is the process's).
    let reply = call(
        server.addr(),
        "GetDialpad",
        &GetDialpadRequest::default(),
        &[],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::Ok));
    assert!(reply.trailers.is_some(), "OK travels in the trailers frame");
    let _: Dialpad = reply.decode(0);
    let reply = call(
        server.addr(),
        "GetInteraction",
        &GetInteractionRequest {
            interaction_id: UNKNOWN_ID.into(),
        },
        &[],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::NotFound));
    // A stream that ends with an error after it began: WatchInteraction of an unknown id.
    let reply = call(
        server.addr(),
        "WatchInteraction",
        &WatchInteractionRequest {
            interaction_id: UNKNOWN_ID.into(),
            after_sequence: 0,
        },
        &[],
    )
    .await;
    assert_eq!(reply.code(), Some(Code::NotFound));

    let expected = [
        ("GetDialpad", "OK"),
        ("GetInteraction", "NOT_FOUND"),
        ("WatchInteraction", "NOT_FOUND"),
    ];
    // Each method's samples (every code is there from the start, at zero).
    let samples_of = |text: &str, method: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| {
                l.starts_with("calldesk_rpc_requests_total{")
                    && l.contains(&format!("method=\"{SERVICE}{method}\""))
            })
            .map(|l| {
                let code = l.split("code=\"").nth(1).and_then(|c| c.split('"').next());
                let value = l.rsplit(' ').next().and_then(|v| v.parse().ok());
                (
                    code.expect("a code label").to_string(),
                    value.expect("a value"),
                )
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = String::from_utf8_lossy(&get_metrics(metrics, WAIT).await).into_owned();
        let found = expected.iter().all(|(method, code)| {
            samples_of(&text, method)
                .iter()
                .any(|(c, v)| c == code && *v > 0.0)
        });
        if found || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for (method, code) in expected {
        let counted: Vec<(String, f64)> = samples_of(&text, method)
            .into_iter()
            .filter(|(_, v)| *v != 0.0)
            .collect();
        assert_eq!(
            counted,
            [(code.to_string(), 1.0)],
            "{method} counted once, as {code}:\n{text}"
        );
    }
    server.shutdown().await;
}
