//! Black-box tests of the `calldesk` binary: the client subcommands against a real
//! `calldesk serve` child process.

mod support;

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_calldesk");

/// How long any one client command or the server's start-up may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The binary with no client settings inherited from the environment.
fn calldesk() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("CALLDESK_SERVER")
        .env_remove("CALLDESK_AGENT")
        .env_remove("CALLDESK_TOKEN")
        .stdin(Stdio::null());
    command
}

/// Runs the binary to completion (killing it after `TIMEOUT`) and returns its output.
fn run(args: &[&str]) -> Output {
    let mut child = calldesk()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    if done_rx.recv_timeout(TIMEOUT).is_err() {
        panic!("calldesk {args:?} did not finish within {TIMEOUT:?}");
    }
    let status = waiter
        .join()
        .unwrap_or_else(|_| panic!("waiter panicked"))
        .unwrap_or_else(|e| panic!("cannot wait for calldesk {args:?}: {e}"));
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary and insists on exit code 0.
fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "calldesk {args:?} failed with {}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line: {e}: {line:?}"))
        })
        .collect()
}

/// A `calldesk serve` child; dropping it kills the server (also when a test fails).
struct Server {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let log = data.path().join("server.log");
        let log_file = File::create(&log).unwrap_or_else(|e| panic!("server log: {e}"));
        let store = data.path().join("store");
        let mut child = calldesk()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&store)
            .args(support::process::store_flags(
                support::Store::from_env(),
                &store,
            ))
            .args(["--sim-ring", "20ms", "--sim-answer", "20ms"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start calldesk serve: {e}"));
        let stdout = child.stdout.take();
        // From here on, a panic kills the child through Drop.
        let mut server = Server {
            child,
            addr: String::new(),
            log,
            _data: data,
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            // Keep reading after the banner so that the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("calldesk listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(addr) => server.addr = addr,
            // Drop prints the server's log.
            Err(_) => panic!(
                "calldesk serve printed no `calldesk listening on ADDR` within {TIMEOUT:?} \
                 (exit status: {:?})",
                server.child.try_wait()
            ),
        }
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- calldesk serve log ---\n{}", self.log_text());
        }
    }
}

#[test]
fn malformed_object_is_rejected_before_anything_is_sent() {
    // A listener that is never accepted from: any connection attempt would sit in its backlog.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
    );
    let output = run(&[
        "call",
        "+12025550100",
        "--server",
        &url,
        "--object",
        r#"{"id": "1", "type": }"#,
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("line 1"), "stderr: {stderr}");
    assert!(stderr.contains("column"), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", text(&output.stdout));

    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("set_nonblocking: {e}"));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the client connected ({peer}) despite the bad --object"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn invalid_state_is_rejected_before_anything_is_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
    );
    let output = run(&["list", "--state", "RINGING", "--server", &url]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("set_nonblocking: {e}"));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the client connected despite the bad --state"
    );
}

#[test]
fn unreachable_server_exits_1() {
    // Bind and drop: the port is free and, for the moment, nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let output = run(&["get", "x", "--server", &format!("http://{addr}")]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
}

#[test]
fn call_get_end_complete_watch_against_a_real_server() {
    let server = Server::start();
    let url = server.url();
    let common = ["--server", url.as_str(), "--agent", "a1"];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run_args = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&refs)
    };

    let object = r#"{"id":"c1","type":"contact","displayName":"Ann","displayType":"Contact","customFields":{"k":"v"}}"#;
    let stdout = run_args(with(&[
        "call",
        "+12025550100",
        "--json",
        "--object",
        object,
    ]));
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "call --json printed {stdout:?}");
    let id = lines[0]["interactionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no interactionId in {stdout}"))
        .to_string();
    assert!(!id.is_empty());
    assert_eq!(
        lines[0]["outcome"], "START_CALL_OUTCOME_STARTED",
        "{stdout}"
    );

    let stdout = run_args(with(&["get", &id, "--json"]));
    let got = json_lines(&stdout);
    assert_eq!(got.len(), 1, "{stdout}");
    assert_eq!(got[0]["id"], id.as_str(), "{stdout}");
    assert_eq!(got[0]["associatedObject"]["displayName"], "Ann", "{stdout}");
    assert_eq!(got[0]["associatedObject"]["id"], "c1", "{stdout}");
    assert_eq!(
        got[0]["associatedObject"]["customFields"]["k"], "v",
        "{stdout}"
    );

    // Human-readable output: one line naming the interaction.
    let stdout = run_args(with(&["end", &id]));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(&id), "{stdout}");
    assert!(stdout.contains("WRAP_UP"), "{stdout}");

    let stdout = run_args(with(&["complete", &id, "--disposition", "sale"]));
    assert!(stdout.contains("COMPLETED"), "{stdout}");

    // Another agent does not see it.
    let output = run(&["get", &id, "--server", &url, "--agent", "someone-else"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("error: NOT_FOUND"), "stderr: {stderr}");

    // The whole history, in order, ending with COMPLETED; the stream then ends by itself.
    let stdout = run_args(with(&["watch", &id, "--json"]));
    let events = json_lines(&stdout);
    assert!(!events.is_empty(), "watch printed nothing");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["interactionId"], id.as_str(), "{stdout}");
        // uint64 is a JSON string in proto3 JSON.
        let sequence = event["sequence"].as_str().unwrap_or_default();
        assert_eq!(sequence, (i + 1).to_string(), "{stdout}");
    }
    let last = &events[events.len() - 1];
    assert_eq!(last["state"], "INTERACTION_STATE_COMPLETED", "{stdout}");
    assert_eq!(last["interaction"]["disposition"], "sale", "{stdout}");

    // Resuming after the last event: nothing more, and the stream still ends.
    let after = events.len().to_string();
    let stdout = run_args(with(&["watch", &id, "--json", "--after", &after]));
    assert!(stdout.is_empty(), "{stdout}");

    let stdout = run_args(with(&["list", "--state", "completed", "--json"]));
    let listed = json_lines(&stdout);
    assert!(
        listed.iter().any(|i| i["id"] == id.as_str()),
        "list --state completed: {stdout}"
    );

    // A bad number: INVALID_ARGUMENT with the BadRequest detail decoded, exit code 1.
    let output = run(&with(&["call", "+1 999"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: INVALID_ARGUMENT: "),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("field phone_number"), "stderr: {stderr}");
    drop(server);
}

#[test]
fn transfer_consult_and_conference_commands() {
    let server = Server::start();
    let url = server.url();
    let as_agent = |agent: &'static str| {
        let url = url.clone();
        move |args: &[&str]| -> String {
            let mut all: Vec<&str> = args.to_vec();
            all.extend(["--server", url.as_str(), "--agent", agent]);
            run_ok(&all)
        }
    };
    let (alice, bob) = (as_agent("a1"), as_agent("b1"));

    // Consult Bob, then hand him the customer: his new interaction names where it came from.
    let id = alice(&["call", "+12025550100"]).trim().to_owned();
    alice(&["watch", &id, "--until", "CONNECTED"]);
    let stdout = alice(&["consult", &id, "agent:b1", "--request-id", "k1"]);
    assert!(stdout.contains("HOLD TRANSFERRING"), "{stdout}");
    assert!(stdout.contains("to agent:b1"), "{stdout}");
    alice(&["watch", &id, "--until", "CONSULTING"]);
    let stdout = alice(&["complete-transfer", &id]);
    assert!(stdout.contains("WRAP_UP ENDED"), "{stdout}");
    assert!(stdout.contains("TRANSFERRED"), "{stdout}");
    let stdout = bob(&["list"]);
    assert!(
        stdout.contains(&format!("transferred from {id}")),
        "{stdout}"
    );

    // Blind transfer to a busy number: the customer comes back.
    let id = alice(&["call", "+12025550100"]).trim().to_owned();
    alice(&["watch", &id, "--until", "CONNECTED"]);
    let stdout = alice(&["transfer", &id, "+12025550101"]);
    assert!(stdout.contains("DELIVERED TRANSFERRING"), "{stdout}");
    let stdout = alice(&["watch", &id, "--after", "4", "--until", "CONNECTED"]);
    assert!(stdout.contains("TRANSFER_FAILED"), "{stdout}");
    assert!(stdout.contains("(the target is busy)"), "{stdout}");

    // Consult a number and cancel; no conference without its flag.
    alice(&["consult", &id, "+12025550110"]);
    let stdout = alice(&["cancel-consult", &id]);
    assert!(stdout.contains("DELIVERED CONNECTED"), "{stdout}");
    let output = run(&[
        "conference",
        &id,
        "+12025550110",
        "--server",
        &url,
        "--agent",
        "a1",
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("CONFERENCE_NOT_CONFIGURED"),
        "stderr: {stderr}"
    );
}

#[test]
fn deferred_dial_stages_the_number_in_the_dialpad() {
    let server = Server::start_with(&["--deferred-dial"]);
    let url = server.url();
    let stdout = run_ok(&[
        "call",
        "+1 202 555 0100",
        "--server",
        &url,
        "--agent",
        "a2",
        "--object",
        r#"{"id":"c2","type":"contact","displayName":"Bob"}"#,
    ]);
    assert_eq!(stdout.trim(), "deferred: staged in dialpad");

    let stdout = run_ok(&["dialpad", "--server", &url, "--agent", "a2", "--json"]);
    let dialpad = json_lines(&stdout);
    assert_eq!(dialpad.len(), 1, "{stdout}");
    assert_eq!(dialpad[0]["phoneNumber"], "+12025550100", "{stdout}");
    assert_eq!(
        dialpad[0]["initialObject"]["displayName"], "Bob",
        "{stdout}"
    );

    let stdout = run_ok(&["list", "--server", &url, "--agent", "a2", "--json"]);
    assert!(
        stdout.is_empty(),
        "deferred dial created an interaction: {stdout}"
    );

    // The agent presses Dial.
    let id = run_ok(&[
        "dial",
        "--server",
        &url,
        "--agent",
        "a2",
        "--request-id",
        "k1",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 36, "an interaction id: {id:?}");
    let shown = run_ok(&["get", id, "--server", &url, "--agent", "a2"]);
    assert!(shown.contains("+12025550100"), "{shown}");
    let stdout = run_ok(&["dialpad", "--server", &url, "--agent", "a2"]);
    assert_eq!(stdout.trim(), "dialpad empty");
    drop(server);
}

#[test]
fn an_empty_list_says_so_and_json_prints_nothing() {
    let server = Server::start();
    let url = server.url();
    let text = run_ok(&["list", "--server", &url, "--agent", "nobody-yet"]);
    assert_eq!(text, "no interactions\n");
    let json = run_ok(&["list", "--server", &url, "--agent", "nobody-yet", "--json"]);
    assert_eq!(json, "");
}

/// `watch --until CONNECTED` is what lets a script hang up an answered call (the SIP demo in
/// docs/guide/sip.md): it stops at the first CONNECTED event with the call still live, so that
/// `end` hangs it up (AGENT_HANGUP) rather than cancelling it; a busy call goes past CONNECTED
/// without it, and the watch fails at once instead of waiting for a COMPLETED that a call in
/// WRAP_UP may never reach.
#[test]
fn watch_until_stops_at_the_value_and_fails_once_it_is_passed() {
    let server = Server::start();
    let url = server.url();
    let common = ["--server", url.as_str(), "--agent", "a-until"];
    let client = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run_with = |args: Vec<String>| run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ok = |args: Vec<String>| {
        let output = run_with(args.clone());
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{args:?}: {stdout}{stderr}");
        stdout
    };

    let id = ok(client(&["call", "+12025550100"])).trim().to_string();
    let stdout = ok(client(&["watch", &id, "--until", "connected"]));
    let lines: Vec<&str> = stdout.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.contains(" CONNECTED "),
        "the last line is CONNECTED:\n{stdout}"
    );
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| !l.contains(" CONNECTED ")),
        "it stops at the first CONNECTED:\n{stdout}"
    );
    assert!(lines[0].contains(" DIALING "), "{stdout}");
    let ended = ok(client(&["end", &id]));
    assert!(
        ended.contains("AGENT_HANGUP"),
        "answered, then hung up: {ended}"
    );

    // Reached in the history already: the same answer at once, in JSON too.
    let stdout = ok(client(&[
        "watch",
        &id,
        "--until",
        "CALL_PROGRESS_CONNECTED",
        "--json",
    ]));
    let events = json_lines(&stdout);
    let last = &events[events.len() - 1];
    assert_eq!(last["progress"], "CALL_PROGRESS_CONNECTED", "{stdout}");
    // An interaction state works as well: this call is in WRAP_UP now.
    let stdout = ok(client(&["watch", &id, "--until", "wrap-up"]));
    assert!(
        stdout
            .lines()
            .last()
            .unwrap_or_default()
            .contains(" WRAP_UP "),
        "{stdout}"
    );

    // Busy: DIALING, then WRAP_UP ENDED BUSY; never CONNECTED, never COMPLETED by itself.
    let busy = ok(client(&["call", "+12025550101"])).trim().to_string();
    let output = run_with(client(&["watch", &busy, "--until", "CONNECTED"]));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "error: FAILED_PRECONDITION: interaction {busy} went past CONNECTED"
        )) && stderr.contains("WRAP_UP ENDED BUSY"),
        "stderr: {stderr}"
    );
    assert!(
        text(&output.stdout).contains(" WRAP_UP "),
        "the events are printed up to it"
    );

    // A value that is neither a state nor a progress: a usage error, nothing sent.
    let output = run_with(client(&["watch", &busy, "--until", "answered"]));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("unknown state or progress"),
        "stderr: {stderr}"
    );
}

#[test]
fn settings_from_the_environment_do_not_show_as_required_in_usage() {
    let output = calldesk()
        .args(["call"])
        .env("CALLDESK_SERVER", "http://127.0.0.1:1")
        .env("CALLDESK_AGENT", "agent-7")
        .output()
        .unwrap_or_else(|e| panic!("cannot run calldesk call: {e}"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("Usage: calldesk call <NUMBER>"),
        "usage names only what is required:\n{stderr}"
    );
    assert!(!stderr.contains("--server"), "{stderr}");
}

/// `calldesk watch` outlives a server crash and restart: it reconnects with backoff, resumes
/// after the last sequence it printed, and shows every event exactly once.
#[tokio::test]
async fn watch_resumes_across_a_server_restart() {
    use support::{
        call_until, complete, free_addr,
        process::{fast_flags, serve_args_on, ServerProcess, BIN as SERVER_BIN},
        NUM_OK,
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let listen = free_addr().to_string();
    let start = |listen: String| {
        let args = serve_args_on(&listen, dir.path(), &fast_flags(&[]));
        ServerProcess::start_command(SERVER_BIN.into(), args)
    };
    let mut server = start(listen.clone()).await;
    let mut client = server.client("agent-w");
    let (id, _, _) = call_until(
        &mut client,
        NUM_OK,
        calldesk::proto::InteractionState::Delivered,
    )
    .await;

    let mut watcher = calldesk()
        .args(["watch", &id, "--agent", "agent-w", "--reconnect-for", "30s"])
        .args(["--server", &format!("http://{listen}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start calldesk watch: {e}"));
    let (lines_tx, lines) = mpsc::channel();
    let stdout = watcher.stdout.take();
    thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = lines_tx.send(line);
        }
    });
    let stderr = drain(watcher.stderr.take());
    let next_line = |what: &str| {
        lines
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("no line from calldesk watch: {what}"))
    };
    let mut seen: Vec<String> = (1..=3).map(|n| next_line(&format!("event {n}"))).collect();

    server.kill9();
    let server = start(listen.clone()).await;
    seen.push(next_line("the restart's SERVER_RESTART event"));
    let mut client = server.client("agent-w");
    complete(&mut client, &id, "sale", "")
        .await
        .unwrap_or_else(|s| panic!("CompleteInteraction: {s:?}"));
    seen.push(next_line("the COMPLETED event"));

    let status = watcher
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for calldesk watch: {e}"));
    let stderr = text(&stderr.join().unwrap_or_default());
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("resuming after sequence 3"), "{stderr}");
    let sequences: Vec<&str> = seen
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(sequences, ["#1", "#2", "#3", "#4", "#5"], "{seen:#?}");
    assert!(seen[3].contains("SERVER_RESTART"), "{seen:#?}");
    assert!(seen[4].contains("COMPLETED"), "{seen:#?}");
    assert!(lines.try_recv().is_err(), "no event shown twice");
}

#[test]
fn a_start_on_a_busy_port_leaves_no_data_dir_behind() {
    // The data dir is under test: SQLite's (a PostgreSQL server makes none).
    use support::process::{run_to_exit, serve_args_sqlite_on};
    let busy = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = busy
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"))
        .to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let data = dir.path().join("calldesk-data");
    let finished = run_to_exit(serve_args_sqlite_on(&addr, &data, &[]), TIMEOUT);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("cannot listen on"),
        "{}",
        finished.stderr
    );
    assert!(!data.exists(), "a failed start created {}", data.display());
}

/// One flag of `calldesk serve --help`, or one row of docs/guide/serve.md's tables.
#[derive(Debug, PartialEq)]
struct FlagDoc {
    heading: String,
    flag: String,
    /// `[default: X]`, or in the guide the first code span of the default column; None when
    /// there is none (the guide then says "none" or "off").
    default: Option<String>,
    /// `[env: NAME]`, or in the guide the environment column.
    env: Option<String>,
}

/// The flags of `calldesk serve --help`, under their headings, in its order.
fn serve_help_flags(help: &str) -> Vec<FlagDoc> {
    let mut flags: Vec<FlagDoc> = Vec::new();
    let mut heading = String::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_string();
        } else if let Some(rest) = line.strip_prefix("      --") {
            // A flag's line (a description's lines are indented further).
            let name = rest.split([' ', '<']).next().unwrap_or_default();
            flags.push(FlagDoc {
                heading: heading.clone(),
                flag: format!("--{name}"),
                default: None,
                env: None,
            });
        } else if let Some(last) = flags.last_mut() {
            let bracketed = |key: &str| {
                let at = line.find(&format!("[{key}: "))?;
                let value = &line[at + key.len() + 3..];
                Some(value[..value.find(']')?].to_string())
            };
            last.default = last.default.take().or_else(|| bracketed("default"));
            last.env = last.env.take().or_else(|| bracketed("env"));
        }
    }
    flags.retain(|f| f.flag != "--help");
    flags
}

/// The rows of the tables under docs/guide/serve.md's "## Flags", in its order; a row may name
/// two flags (`--tls-cert FILE` / `--tls-key FILE`).
fn serve_guide_flags(guide: &str) -> Vec<FlagDoc> {
    let code = |cell: &str| {
        let start = cell.find('`')? + 1;
        Some(cell[start..start + cell[start..].find('`')?].to_string())
    };
    let mut flags = Vec::new();
    let mut heading = String::new();
    let section = guide.split("\n## Flags\n").nth(1).unwrap_or_default();
    for line in section.split("\n## ").next().unwrap_or_default().lines() {
        if let Some(h) = line.strip_prefix("### ") {
            heading = h.trim().to_string();
        } else if line.starts_with("| `--") {
            // `\|` is a `|` inside a cell (`sim\|sip`).
            let unescaped = line.replace("\\|", "/");
            let cells: Vec<&str> = unescaped.split('|').map(str::trim).skip(1).collect();
            assert!(cells.len() >= 4, "a row of four columns: {line}");
            let (default_cell, env_cell) = (cells[2], cells[1]);
            let default = code(default_cell);
            assert!(
                default.is_some() || default_cell.starts_with("none") || default_cell == "off",
                "the default is a `value`, or none/off: {line}"
            );
            let default = default.filter(|_| !default_cell.starts_with("none"));
            for flag in cells[0].split(" / ") {
                let name = code(flag).unwrap_or_default();
                flags.push(FlagDoc {
                    heading: heading.clone(),
                    flag: name.split(' ').next().unwrap_or_default().to_string(),
                    default: default.clone(),
                    env: code(env_cell),
                });
            }
        }
    }
    flags
}

/// docs/guide/serve.md's flag tables cannot drift from the binary: every flag of
/// `calldesk serve --help`, under the same heading, in the same order, with the same default and
/// environment variable. And the help itself: at most 100 columns, and environment variables
/// named without a value (`[env: NAME]`, not `[env: NAME=]`, which reads as "set to empty"),
/// even when they are set.
#[test]
fn serve_flags_in_the_guide_match_serve_help() {
    let output = calldesk()
        .args(["serve", "--help"])
        .env_remove("COLUMNS")
        .env("CALLDESK_PEER_TOKEN_FILE", "/run/secrets/peer-token")
        .env_remove("CALLDESK_DATABASE_URL")
        .env_remove("CALLDESK_ADVERTISE_ADDRESS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run calldesk serve --help: {e}"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let help = text(&output.stdout);
    for line in help.lines() {
        assert!(line.chars().count() <= 100, "over 100 columns: {line:?}");
    }
    assert!(
        !help.contains("=]"),
        "an env shown as set to empty:\n{help}"
    );
    assert!(
        !help.contains("/run/secrets"),
        "an env's value shown:\n{help}"
    );

    let from_help = serve_help_flags(&help);
    assert!(from_help.len() > 40, "parsed too few flags from:\n{help}");
    for flag in &from_help {
        assert!(
            !flag.heading.is_empty() && flag.heading != "Options",
            "no heading: {flag:?}"
        );
    }
    let guide_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guide/serve.md");
    let guide = std::fs::read_to_string(guide_path)
        .unwrap_or_else(|e| panic!("cannot read {guide_path}: {e}"));
    let from_guide = serve_guide_flags(&guide);
    for (i, (h, g)) in from_help.iter().zip(&from_guide).enumerate() {
        assert_eq!(
            h,
            g,
            "flag {} of `serve --help` (left) differs from docs/guide/serve.md (right)",
            i + 1
        );
    }
    assert_eq!(
        from_help.len(),
        from_guide.len(),
        "`serve --help` has {} flags, docs/guide/serve.md {}: add or remove rows at the end",
        from_help.len(),
        from_guide.len()
    );
}
