//! The server's logs, from the real binary: with `--log-format json` every stderr line is one
//! JSON object; each RPC runs in an `rpc` span naming its method and agent; refusals are
//! logged at WARN with their code; and what the caller sent (the associated object, notes)
//! never reaches the logs, even at `RUST_LOG=debug`. With `--log-format text` the lines are
//! not JSON.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use calldesk::proto::{
    interaction_service_client::InteractionServiceClient, AssociatedObject,
    CompleteInteractionRequest, EndCallRequest, StartCallRequest,
};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
    Code, Request, Status,
};

const BIN: &str = env!("CARGO_BIN_EXE_calldesk");
/// How long the server may take to print its listen line, or to exit when told to.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A generous bound for one RPC.
const WAIT: Duration = Duration::from_secs(10);

const AGENT: &str = "agent-logs";
const SECRET_NAME: &str = "SECRET-NAME-123";
const SECRET_VALUE: &str = "SECRET-VALUE-456";
const SECRET_NOTES: &str = "SECRET-NOTES-789";
const START_CALL: &str = "/calldesk.v1.InteractionService/StartCall";

// ---------------------------------------------------------------------------------------------
// The server as a child process (after tests/support_process, with RUST_LOG=debug).

struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    addr: String,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ServerProcess {
    /// `calldesk serve` on a free loopback port with fast simulated timings and `extra`, under
    /// `RUST_LOG=debug`; returns once it printed its listen line.
    async fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--sim-ring", "20ms", "--sim-answer", "20ms"])
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match stderr_pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => stderr.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
        let pid = child.id();
        let mut server = ServerProcess {
            child: Some(child),
            pid,
            addr: String::new(),
            stderr,
        };
        let (tx, rx) = oneshot::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("calldesk listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => server.addr = addr,
            Ok(Err(_)) => panic!(
                "calldesk serve ended its stdout without its listen line; stderr:\n{}",
                server.stderr_text()
            ),
            Err(_) => panic!("calldesk serve printed no listen line within {START_TIMEOUT:?}"),
        }
        server
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGTERM, then waits for the exit; returns its status and everything it wrote on stderr.
    async fn stop(&mut self) -> (ExitStatus, String) {
        send_signal(self.pid, "-TERM");
        let mut child = self.child.take().expect("the child is still ours");
        let (tx, rx) = oneshot::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(Ok(status))) => status,
            Ok(Ok(Err(e))) => panic!("cannot wait for the server: {e}"),
            Ok(Err(_)) => panic!("the waiter thread died"),
            Err(_) => {
                send_signal(self.pid, "-KILL");
                panic!(
                    "the server did not exit within {START_TIMEOUT:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
        };
        // The pipe closes with the process; give the reader thread a moment to drain it.
        let mut last = usize::MAX;
        for _ in 0..50 {
            let len = self.stderr.lock().unwrap().len();
            if len == last {
                break;
            }
            last = len;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (status, self.stderr_text())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- calldesk serve (pid {}) stderr ---\n{}",
                self.pid,
                self.stderr_text()
            );
        }
    }
}

/// Sends a signal with kill(1) (no libc in the tests).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill {signal} {pid}: {e}"));
    assert!(status.success(), "kill {signal} {pid} failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// A client that names its agent with x-agent-id.

#[derive(Clone)]
struct AgentHeader(MetadataValue<Ascii>);

impl Interceptor for AgentHeader {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("x-agent-id", self.0.clone());
        Ok(req)
    }
}

type Client = InteractionServiceClient<InterceptedService<Channel, AgentHeader>>;

fn client(addr: &str, agent: &str) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    InteractionServiceClient::with_interceptor(
        channel,
        AgentHeader(agent.parse().expect("ascii agent id")),
    )
}

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
    let started = tokio::time::timeout(
        WAIT,
        client.start_call(StartCallRequest {
            phone_number: "+12025550100".to_string(),
            initial_object: Some(secret_object()),
            request_id: "logs-1".to_string(),
        }),
    )
    .await
    .expect("StartCall answers in time")
    .expect("StartCall")
    .into_inner();
    let id = started.interaction_id.expect("an interaction id");

    let refused = tokio::time::timeout(
        WAIT,
        client.start_call(StartCallRequest {
            phone_number: "not a number".to_string(),
            initial_object: Some(secret_object()),
            request_id: String::new(),
        }),
    )
    .await
    .expect("StartCall answers in time")
    .expect_err("a bad number is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    tokio::time::timeout(
        WAIT,
        client.end_call(EndCallRequest {
            interaction_id: id.clone(),
        }),
    )
    .await
    .expect("EndCall answers in time")
    .expect("EndCall");
    tokio::time::timeout(
        WAIT,
        client.complete_interaction(CompleteInteractionRequest {
            interaction_id: id,
            disposition: "sale".to_string(),
            notes: SECRET_NOTES.to_string(),
        }),
    )
    .await
    .expect("CompleteInteraction answers in time")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_name_the_rpc_and_keep_request_data_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), &["--log-format", "json"]).await;
    make_calls(&server.addr).await;
    let (status, stderr) = server.stop().await;
    assert!(status.success(), "the server exits 0 on SIGTERM: {status}");

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
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), &["--log-format", "text"]).await;
    make_calls(&server.addr).await;
    let (status, stderr) = server.stop().await;
    assert!(status.success(), "the server exits 0 on SIGTERM: {status}");

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
