//! SIPp test peers for the SIP backend: runs one `sipp` (3.6.x) process as a UAS playing a
//! scenario from `tests/sip/` (the agent's phone or the customer behind the trunk), on a free
//! loopback port, with its logs in a throw-away directory, and turns its exit into a verdict.
//!
//! ```ignore
//! let customer = Sipp::uas("customer_answer.xml").start();
//! let agent = Sipp::uas("agent_answer.xml").start();
//! // ... point calldesk at agent.uri("agent-1") and customer.uri_host(), run the call ...
//! let verdict = tokio::task::spawn_blocking(move || customer.finish(WAIT)).await.unwrap();
//! verdict.assert_passed(1);
//! ```
//!
//! * Blocking API: [`Sipp::finish`] blocks (polls the child every 10 ms up to its timeout); from
//!   async tests call it through `spawn_blocking`, or use [`Sipp::finish_async`].
//! * Each `sipp` exits by itself once it has handled `calls` calls (`-m`), so [`Sipp::finish`]
//!   returns as soon as the scenario is over. With `calls(0)` it never does: call [`Sipp::quit`]
//!   first (SIPp stops taking new calls and exits when its open calls have ended).
//! * SIPp's verdict: exit 0 = every call passed the scenario, 1 = at least one failed,
//!   97 = `-timeout` reached without a successful call (e.g. calldesk never called). A
//!   process still running at the `finish` deadline is killed (SIGKILL) and reported as
//!   `exit_code: None`.
//! * A `Sipp` that is dropped without `finish` is killed: no SIPp outlives its test. Dropped
//!   by a failing test, it prints its logs first.
//! * Pauses: the scenarios' `<pause/>` (ring time of the `*_answer` scenarios, talk time before
//!   the `*_hangup` scenarios send BYE) take [`SippBuilder::pause`] (`-d`, default 0 ms).
//! * Media: SIPp binds RTP on the first free even port from 6000 (audio, and +2 for video) and
//!   puts it in its SDP; [`SippBuilder::rtp_echo`] makes it echo RTP back.
//! * Linux/Unix only (`sipp` must be on PATH, or set `SIPP=/path/to/sipp`).
#![allow(dead_code)]

use std::{
    fs,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// Loopback only.
const HOST: &str = "127.0.0.1";
/// How long `start` waits for SIPp to bind its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times `start` retries on a fresh port when SIPp could not bind (a port race).
const START_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(10);
/// Default for SIPp's own `-timeout` / `-recv_timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// SIP transport of the UAS. Over TCP SIPp answers (and sends its own BYE) on the connection
/// calldesk opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn sipp_flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

/// Options for one SIPp UAS; [`SippBuilder::start`] launches it.
#[derive(Clone, Debug)]
pub struct SippBuilder {
    scenario: String,
    transport: Transport,
    calls: u64,
    sets: Vec<(String, String)>,
    timeout: Duration,
    pause: Option<Duration>,
    rtp_echo: bool,
    args: Vec<String>,
}

impl SippBuilder {
    /// UDP (default) or TCP.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Number of calls (SIPp calls = distinct Call-IDs) to handle before exiting (`-m`,
    /// default 1). `0` = no limit: end it with [`Sipp::quit`].
    pub fn calls(mut self, calls: u64) -> Self {
        self.calls = calls;
        self
    }

    /// `-set var value`: sets a global variable the scenario declares with
    /// `<Global variables="..."/>` (SIPp refuses unknown names, and none of the shipped
    /// scenarios declares one yet: timings go through [`SippBuilder::pause`]).
    pub fn set(mut self, var: &str, value: &str) -> Self {
        self.sets.push((var.to_owned(), value.to_owned()));
        self
    }

    /// SIPp's own limits (default 30 s): `-timeout` (whole run; exit 97 if nothing passed) and
    /// `-recv_timeout` (a call waiting longer than this for its next message fails). Keep it
    /// longer than the longest expected gap between two messages of a call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Length of the scenarios' `<pause/>` elements (`-d`): ring time in `*_answer`, time
    /// before the scenario's own BYE in `*_hangup`. Default 0.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = Some(pause);
        self
    }

    /// Echo RTP received on the media port advertised in the SDP (`-rtp_echo`).
    pub fn rtp_echo(mut self) -> Self {
        self.rtp_echo = true;
        self
    }

    /// Any other SIPp argument, passed as is.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Starts SIPp and returns once its SIP port (and control port) are bound. Panics with
    /// SIPp's output if it cannot start.
    pub fn start(self) -> Sipp {
        let scenario_path = scenario_path(&self.scenario);
        assert!(
            scenario_path.is_file(),
            "no SIPp scenario {}",
            scenario_path.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("calldesk-sipp-")
            .tempdir()
            .expect("tempdir for SIPp logs");
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port(self.transport);
            let ctrl_port = free_port(Transport::Udp);
            let files = LogFiles::new(dir.path(), attempt);
            let mut child = self
                .command(&scenario_path, port, ctrl_port, &files)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run sipp ({e}): install sip-tester, or set SIPP=/path/to/sipp")
                });
            match wait_ready(&mut child, self.transport, port, ctrl_port) {
                Ok(()) => {
                    return Sipp {
                        child: Some(child),
                        port,
                        ctrl_port,
                        transport: self.transport,
                        scenario: self.scenario,
                        files,
                        dir,
                    }
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_failure = format!("{why}\n{}", files.collect_log());
                }
            }
        }
        panic!(
            "SIPp {} did not start after {START_ATTEMPTS} attempts: {last_failure}",
            self.scenario
        );
    }

    fn command(&self, scenario: &Path, port: u16, ctrl_port: u16, files: &LogFiles) -> Command {
        let sipp = std::env::var_os("SIPP").unwrap_or_else(|| "sipp".into());
        let mut cmd = Command::new(sipp);
        let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
        cmd.arg("-sf")
            .arg(scenario)
            .args(["-i", HOST, "-p", &port.to_string()])
            .args(["-t", self.transport.sipp_flag()])
            .args(["-cp", &ctrl_port.to_string(), "-ci", HOST])
            .arg("-nostdin")
            .args(["-timeout", &ms(self.timeout)])
            .args(["-recv_timeout", &ms(self.timeout)])
            .args(["-trace_err", "-error_file"])
            .arg(&files.errors)
            .args(["-trace_msg", "-message_file"])
            .arg(&files.messages)
            .args(["-trace_logs", "-log_file"])
            .arg(&files.actions)
            .args(["-trace_screen", "-screen_file"])
            .arg(&files.screen)
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(&files.stats);
        if self.calls > 0 {
            // No -m at all means no limit (-m 0 would stop at once).
            cmd.args(["-m", &self.calls.to_string()]);
        }
        if let Some(pause) = self.pause {
            cmd.args(["-d", &pause.as_millis().to_string()]);
        }
        if self.rtp_echo {
            cmd.args(["-mi", HOST, "-rtp_echo"]);
        }
        for (var, value) in &self.sets {
            cmd.args(["-set", var, value]);
        }
        cmd.args(&self.args);
        cmd.current_dir(files.stdout.parent().expect("log dir"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&files.stdout).expect("SIPp stdout file"))
            .stderr(fs::File::create(&files.stderr).expect("SIPp stderr file"));
        cmd
    }
}

/// A running SIPp UAS. Killed on drop.
#[derive(Debug)]
pub struct Sipp {
    child: Option<Child>,
    port: u16,
    ctrl_port: u16,
    transport: Transport,
    scenario: String,
    files: LogFiles,
    dir: TempDir,
}

impl Sipp {
    /// A UAS playing `tests/sip/<scenario>` (e.g. `"agent_answer.xml"`), 1 call over UDP.
    pub fn uas(scenario: &str) -> SippBuilder {
        SippBuilder {
            scenario: scenario.to_owned(),
            transport: Transport::Udp,
            calls: 1,
            sets: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            pause: None,
            rtp_echo: false,
            args: Vec::new(),
        }
    }

    /// A UAC playing `tests/sip/<scenario>` against `remote` (`"127.0.0.1:5060"`, e.g.
    /// calldesk's own SIP address): SIPp sends first, and exits once its `calls` are done.
    pub fn uac(scenario: &str, remote: &str) -> SippBuilder {
        Sipp::uas(scenario).arg(remote)
    }

    /// The SIP port SIPp listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`, e.g. for a trunk address.
    pub fn uri_host(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// `"sip:USER@127.0.0.1:PORT"`, plus `;transport=tcp` over TCP. SIPp answers whatever user
    /// part the Request-URI has.
    pub fn uri(&self, user: &str) -> String {
        match self.transport {
            Transport::Udp => format!("sip:{user}@{HOST}:{}", self.port),
            Transport::Tcp => format!("sip:{user}@{HOST}:{};transport=tcp", self.port),
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Where SIPp writes its logs (kept until this `Sipp` is dropped).
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIPp's logs so far (errors, screen, the end of the message trace), e.g. for a test that
    /// fails before the scenario ends.
    pub fn log(&self) -> String {
        self.files.collect_log()
    }

    /// Every SIP message SIPp has received so far (as [`SippVerdict::received`]), while it
    /// runs: SIPp writes each to its trace as it arrives.
    pub fn received_so_far(&self) -> Vec<String> {
        self.files.received()
    }

    /// Waits up to `timeout` until `found` finds something in what SIPp has received so far,
    /// and returns it; fails with SIPp's log, naming `what`, after that.
    pub async fn until_received<T>(
        &self,
        timeout: Duration,
        what: &str,
        found: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = found(&self.received_so_far()) {
                return found;
            }
            assert!(Instant::now() < deadline, "{what}: {}", self.log());
            // A pause between reads of the trace, not a synchronisation: the loop ends on
            // the message.
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks SIPp (over its UDP control socket) to stop taking new calls and exit once its open
    /// calls end; then call [`Sipp::finish`]. Needed with `calls(0)`; harmless otherwise.
    pub fn quit(&self) {
        let sock = UdpSocket::bind((HOST, 0)).expect("bind a UDP socket for SIPp control");
        // 'q' = graceful quit, as if typed at SIPp's keyboard.
        let _ = sock.send_to(b"q", (HOST, self.ctrl_port));
    }

    /// Waits up to `timeout` for SIPp to exit (killing it by pid after that) and returns its
    /// verdict. Blocking.
    pub fn finish(mut self, timeout: Duration) -> SippVerdict {
        let mut child = self.child.take().expect("SIPp child");
        let deadline = Instant::now() + timeout;
        let mut killed = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                Ok(None) | Err(_) => {
                    killed = true;
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let (successful, failed) = self.files.counts();
        let mut log = String::new();
        if killed {
            log.push_str(&format!(
                "SIPp ({}) was still running after {timeout:?} and was killed.\n",
                self.scenario
            ));
        }
        log.push_str(&self.files.collect_log());
        SippVerdict {
            scenario: self.scenario.clone(),
            exit_code: status.and_then(|s| s.code()),
            successful,
            failed,
            log,
            received: self.files.received(),
        }
    }

    /// [`Sipp::finish`] on tokio's blocking pool.
    pub async fn finish_async(self, timeout: Duration) -> SippVerdict {
        tokio::task::spawn_blocking(move || self.finish(timeout))
            .await
            .expect("SIPp finish task")
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if thread::panicking() {
                // The test failed before this peer's verdict: show what it saw.
                eprintln!(
                    "SIPp {} was still running when the test failed:\n{}",
                    self.scenario,
                    self.files.collect_log()
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What SIPp said about its run.
#[derive(Clone, Debug)]
pub struct SippVerdict {
    pub scenario: String,
    /// `Some(0)` passed, `Some(1)` a call failed, `Some(97)` timed out with no call passed,
    /// `None` killed (still running at the `finish` deadline).
    pub exit_code: Option<i32>,
    /// Calls that reached the end of the scenario (SuccessfulCall, cumulative).
    pub successful: u64,
    /// Calls that failed (unexpected message, receive timeout, ...).
    pub failed: u64,
    /// Errors, final screen and the tail of the SIP message trace, for assertion messages.
    pub log: String,
    /// Every SIP message SIPp received, byte for byte as it arrived (from its `-trace_msg`
    /// file), in order: what the peer sent it.
    pub received: Vec<String>,
}

impl SippVerdict {
    /// Panics with SIPp's log unless it exited 0 with exactly `expected_calls` successful and
    /// no failed calls.
    pub fn assert_passed(&self, expected_calls: u64) {
        assert!(
            self.exit_code == Some(0) && self.successful == expected_calls && self.failed == 0,
            "SIPp {}: exit code {:?}, {} successful / {} failed calls (expected {expected_calls} \
             successful)\n{}",
            self.scenario,
            self.exit_code,
            self.successful,
            self.failed,
            self.log
        );
    }

    /// Like [`SippVerdict::assert_passed`] but at least `min_calls` successful (keepalives).
    pub fn assert_passed_at_least(&self, min_calls: u64) {
        assert!(
            self.exit_code == Some(0) && self.successful >= min_calls && self.failed == 0,
            "SIPp {}: exit code {:?}, {} successful / {} failed calls (expected at least \
             {min_calls} successful)\n{}",
            self.scenario,
            self.exit_code,
            self.successful,
            self.failed,
            self.log
        );
    }

    /// Panics unless SIPp failed (non-zero exit or failed calls): for tests where calldesk is
    /// expected to break the scenario.
    pub fn assert_failed(&self) {
        assert!(
            self.exit_code != Some(0) || self.failed > 0,
            "SIPp {} passed but was expected to fail\n{}",
            self.scenario,
            self.log
        );
    }
}

/// `tests/sip/<name>` in this crate.
pub fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sip")
        .join(name)
}

/// A port free on 127.0.0.1 for `transport` (and for UDP too, which SIPp may also use) at the
/// time of the call. `start` retries on a new port if another process takes it meanwhile.
fn free_port(transport: Transport) -> u16 {
    super::chosen_port(|port| {
        UdpSocket::bind((HOST, port)).is_ok()
            && (transport != Transport::Tcp || TcpListener::bind((HOST, port)).is_ok())
    })
}

/// Polls (bounded) until SIPp has bound its SIP port and its control port, or has exited.
fn wait_ready(
    child: &mut Child,
    transport: Transport,
    port: u16,
    ctrl_port: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("SIPp exited during start-up ({status})"));
        }
        let sip_bound = match transport {
            Transport::Udp => UdpSocket::bind((HOST, port)).is_err(),
            Transport::Tcp => TcpListener::bind((HOST, port)).is_err(),
        };
        if sip_bound && UdpSocket::bind((HOST, ctrl_port)).is_err() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "SIPp did not bind 127.0.0.1:{port} within {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(POLL);
    }
}

/// The files SIPp writes, named per start attempt.
#[derive(Debug)]
struct LogFiles {
    errors: PathBuf,
    /// `<log>` actions of the scenarios (e.g. why customer_auth.xml refused the credentials).
    actions: PathBuf,
    messages: PathBuf,
    screen: PathBuf,
    stats: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl LogFiles {
    fn new(dir: &Path, attempt: usize) -> Self {
        let f = |name: &str| dir.join(format!("{attempt}-{name}"));
        LogFiles {
            errors: f("errors.log"),
            actions: f("actions.log"),
            messages: f("messages.log"),
            screen: f("screen.log"),
            stats: f("stats.csv"),
            stdout: f("stdout.log"),
            stderr: f("stderr.log"),
        }
    }

    /// The messages of the `-trace_msg` file that SIPp received. Each entry is a line of dashes
    /// and a time, `UDP message received [N] bytes :` (or TCP), an empty line, then the N bytes
    /// of the message.
    fn received(&self) -> Vec<String> {
        let trace = fs::read(&self.messages).unwrap_or_default();
        let mut messages = Vec::new();
        let mut rest = &trace[..];
        let marker = b" message received [";
        while let Some(at) = find(rest, marker) {
            rest = &rest[at + marker.len()..];
            let Some(close) = find(rest, b"]") else { break };
            let Some(len) = std::str::from_utf8(&rest[..close])
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
            else {
                break;
            };
            let Some(start) = find(rest, b"\n\n").map(|i| i + 2) else {
                break;
            };
            let end = (start + len).min(rest.len());
            messages.push(String::from_utf8_lossy(&rest[start..end]).into_owned());
            rest = &rest[end..];
        }
        messages
    }

    /// (successful, failed) from the last row of the `-trace_stat` CSV, falling back on the
    /// final screen. (0, 0) if SIPp wrote neither.
    fn counts(&self) -> (u64, u64) {
        if let Some(counts) = fs::read_to_string(&self.stats)
            .ok()
            .and_then(|csv| counts_from_csv(&csv))
        {
            return counts;
        }
        let screen = fs::read_to_string(&self.screen)
            .or_else(|_| fs::read_to_string(&self.stdout))
            .unwrap_or_default();
        (
            counter_from_screen(&screen, "Successful call").unwrap_or(0),
            counter_from_screen(&screen, "Failed call").unwrap_or(0),
        )
    }

    /// Errors, stderr, the final screens and the end of the message trace.
    fn collect_log(&self) -> String {
        let mut log = String::new();
        for (title, path, max) in [
            ("errors", &self.errors, 8_000),
            ("scenario log", &self.actions, 4_000),
            ("stderr", &self.stderr, 4_000),
            ("screen", &self.screen, 6_000),
            ("messages (end)", &self.messages, 12_000),
        ] {
            let text = fs::read_to_string(path).unwrap_or_default();
            if text.trim().is_empty() {
                continue;
            }
            log.push_str(&format!("----- SIPp {title}: {}\n", path.display()));
            log.push_str(tail(&text, max));
            log.push('\n');
        }
        if log.is_empty() {
            log.push_str("(SIPp wrote no log)\n");
        }
        log
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `SuccessfulCall(C)` and `FailedCall(C)` of the last data row of SIPp's statistics CSV.
fn counts_from_csv(csv: &str) -> Option<(u64, u64)> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let field = |name: &str| -> Option<u64> {
        let i = header.iter().position(|h| h.trim() == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Some((field("SuccessfulCall(C)")?, field("FailedCall(C)")?))
}

/// The cumulative column of a counter line of SIPp's statistics screen, last occurrence:
/// `  Successful call        |        0                  |        1`.
fn counter_from_screen(screen: &str, name: &str) -> Option<u64> {
    screen
        .lines()
        .rfind(|l| l.trim_start().starts_with(name))?
        .rsplit('|')
        .next()?
        .trim()
        .parse()
        .ok()
}
