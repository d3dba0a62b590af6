//! The server's logs, from the real binary: with `--log-format json` every stderr line is one
//! JSON object; each RPC runs in an `rpc` span naming its method and agent; refusals are
//! logged at WARN with their code; and what the caller sent (the associated object, notes)
//! never reaches the logs, even at `RUST_LOG=debug`. With `--log-format text` the lines are
//! not JSON.

mod support;

use std::collections::HashMap;

use calldesk::proto::{AssociatedObject, StartCallRequest};
use serde_json::Value;
use support::{
    client, complete, end,
    process::{fast_flags, ServerProcess},
    start_err, start_ok, start_req_object,
};
use tonic::Code;

const AGENT: &str = "agent-logs";
const SECRET_NAME: &str = "SECRET-NAME-123";
const SECRET_VALUE: &str = "SECRET-VALUE-456";
const SECRET_NOTES: &str = "SECRET-NOTES-789";
const START_CALL: &str = "/calldesk.v1.InteractionService/StartCall";

fn secret_object() -> AssociatedObject {
    AssociatedObject {
        id: "003XX".to_string(),
        r#type: "contact".to_string(),
        display_name: SECRET_NAME.to_string(),
        display_type: "Contact".to_string(),
        custom_fields: HashMap::from([("k".to_string(), SECRET_VALUE.to_string())]),
    }
}

/// StartCall with the secret object, a bad-number StartCall, EndCall and CompleteInteraction
/// with secret notes.
async fn make_calls(addr: &str) {
    let mut client = client(addr, AGENT);
    let started = start_ok(
        &mut client,
        StartCallRequest {
            phone_number: "+12025550100".to_string(),
            initial_object: Some(secret_object()),
            request_id: "logs-1".to_string(),
            ..Default::default()
        },
    )
    .await;
    let id = started.interaction_id.expect("an interaction id");

    let refused = start_err(
        &mut client,
        start_req_object("not a number", secret_object()),
    )
    .await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    end(&mut client, &id).await.expect("EndCall");
    complete(&mut client, &id, "sale", SECRET_NOTES)
        .await
        .expect("CompleteInteraction");
}

fn assert_no_secrets(stderr: &str) {
    for secret in [SECRET_NAME, SECRET_VALUE, SECRET_NOTES] {
        assert!(
            !stderr.contains(secret),
            "{secret:?} reached the logs:\n{}",
            stderr
                .lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The `rpc` spans a JSON log line was written in (its `spans` list and its current `span`).
fn rpc_spans(line: &Value) -> Vec<&Value> {
    let mut spans: Vec<&Value> = line["spans"]
        .as_array()
        .map(|spans| spans.iter().collect())
        .unwrap_or_default();
    spans.extend(line.get("span"));
    spans.retain(|span| span["name"] == "rpc");
    spans
}

/// Runs a server logging at `RUST_LOG=debug` in `format`, makes the calls, stops it with
/// SIGTERM (it must exit 0), and returns its stderr.
async fn logs_of_calls(format: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--log-format", format]);
    let mut server = ServerProcess::start_logging(dir.path(), &flags, "debug").await;
    make_calls(server.addr()).await;
    let (status, stderr) = server.stop_collecting_stderr().await;
    assert!(status.success(), "the server exits 0 on SIGTERM: {status}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_name_the_rpc_and_keep_request_data_out() {
    let stderr = logs_of_calls("json").await;

    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line:?}"))
        })
        .collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    for line in &lines {
        assert!(
            line["level"].is_string(),
            "a log line without a level: {line}"
        );
        assert!(
            line["fields"].is_object(),
            "a log line without fields: {line}"
        );
    }

    // Handlers run inside the span, and the span names the method and the agent.
    let start_call_span = lines
        .iter()
        .flat_map(rpc_spans)
        .find(|span| span["method"] == START_CALL && span["agent"] == AGENT);
    assert!(
        start_call_span.is_some(),
        "no log line inside an rpc span with method {START_CALL} and agent {AGENT}:\n{stderr}"
    );

    // The bad number is refused at WARN, with the code, inside StartCall's span.
    let refused = lines.iter().find(|line| {
        line["level"] == "WARN"
            && line["fields"]["message"] == "refused"
            && line["fields"]["code"] == "INVALID_ARGUMENT"
    });
    let refused = refused
        .unwrap_or_else(|| panic!("no WARN `refused` line with code INVALID_ARGUMENT:\n{stderr}"));
    assert!(
        refused["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("phone_number")),
        "the refusal's reason is the decoded grpc-message: {refused}"
    );
    assert!(
        rpc_spans(refused)
            .iter()
            .any(|span| span["method"] == START_CALL && span["agent"] == AGENT),
        "the refusal is logged inside StartCall's span: {refused}"
    );

    assert_no_secrets(&stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_not_json() {
    let stderr = logs_of_calls("text").await;

    assert!(
        stderr.lines().any(|l| l.contains("serving")),
        "the server logged no `serving` line:\n{stderr}"
    );
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a text log line parses as JSON: {line:?}"
        );
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("refused") && l.contains("INVALID_ARGUMENT")),
        "no WARN `refused` line with INVALID_ARGUMENT in text form:\n{stderr}"
    );
    assert_no_secrets(&stderr);
}

/// Issue 22: a deliberate stop (Ctrl-C) is not a fault. From the signal on, nothing is logged
/// above INFO, and the last line says it stopped cleanly and how long that took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliberate_shutdown_logs_at_info_and_ends_saying_it_stopped_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--log-format", "json"]);
    let mut server = ServerProcess::start(dir.path(), &flags).await;
    make_calls(server.addr()).await;
    // A watch stream open at the stop: it is ended, and that is not a fault either.
    let mut watcher = client(server.addr(), AGENT);
    let _watch = support::watch_all(&mut watcher).await;

    support::process::send_signal(server.pid(), "-INT");
    let status = server.wait_exit(support::process::START_TIMEOUT).await;
    assert!(status.success(), "Ctrl-C exits 0: {status}");
    // The pipe's reader may still be behind the exit: wait (bounded) for the last line.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while !server.stderr_text().contains("stopped cleanly")
        && tokio::time::Instant::now() < deadline
    {
        // A pause between polls, not a synchronisation: the loop ends on the line.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stderr = server.stderr_text();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    let from = lines
        .iter()
        .position(|line| line["fields"]["message"] == "shutting down")
        .unwrap_or_else(|| panic!("no `shutting down` line:\n{stderr}"));
    for line in &lines[from..] {
        assert!(
            line["level"] == "INFO" || line["level"] == "DEBUG",
            "a deliberate shutdown logged above INFO: {line}\n{stderr}"
        );
    }
    let last = lines.last().expect("log lines");
    let message = last["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("stopped cleanly in ")
            && message
                .strip_prefix("stopped cleanly in ")
                .is_some_and(|took| humantime::parse_duration(took).is_ok()),
        "the last line should say it stopped cleanly and how long it took: {last}"
    );
}
