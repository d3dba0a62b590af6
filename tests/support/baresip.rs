//! baresip (1.0.x) as the agent's softphone for SIP tests: a headless UA on a free loopback
//! port with a throw-away config directory, no registration, PCMU only, a 440 Hz sine as its
//! microphone and no speaker, driven over its `ctrl_tcp` JSON/netstring socket.
//!
//! ```ignore
//! let phone = Baresip::start("agent-1", AnswerMode::Auto);
//! // ... calldesk calls phone.uri() ...
//! phone.wait_event("CALL_ESTABLISHED", WAIT).unwrap();
//! phone.hangup();                       // baresip sends BYE
//! phone.wait_event("CALL_CLOSED", WAIT).unwrap();
//! ```
//!
//! * Blocking API (std only); from async tests wrap long waits in `spawn_blocking`.
//! * The Request-URI's user part must be the account's (`agent_user`), else baresip answers 404.
//! * `AnswerMode::Manual` rings (180) until [`Baresip::accept`] or a CANCEL: use it for
//!   no-answer / CANCEL tests.
//! * [`Baresip::start_registered`] registers with a [`Registrar`] (Kamailio, digest
//!   authentication) and returns once it has; calls then come through the registrar.
//! * baresip is killed on drop, and quits by itself after [`MAX_LIFETIME`] (`-t`) in any case.
//! * Its TLS transport listens on the SIP port + 1, so that port is kept free too.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use super::kamailio::Registrar;

const HOST: &str = "127.0.0.1";
/// baresip quits by itself after this long (`-t`), even if the test process is killed.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(20);
/// Bound for a ctrl_tcp command's response.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How the phone answers incoming calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerMode {
    /// 180 then 200 at once (`answermode=auto`).
    Auto,
    /// 180 and ring until [`Baresip::accept`] or CANCEL (`answermode=manual`).
    Manual,
    /// As `Manual`, but an INVITE that asks for auto-answer (RFC 5373 `Answer-Mode: Auto`,
    /// `Call-Info: …;answer-after=0`, `Alert-Info: …;info=alert-autoanswer`) is answered at
    /// once: `answermode=manual;sip_autoanswer=yes`. baresip 1.1.0 and later only: 1.0.0
    /// (Debian 12) ignores the setting and rings on.
    OnRequest,
}

/// baresip's TLS side: its certificate and key (one PEM file, as baresip wants them) and the
/// CA it verifies calldesk's certificate against.
#[derive(Clone, Debug)]
pub struct BaresipTls {
    pub bundle_pem: PathBuf,
    pub ca_pem: PathBuf,
}

/// A running baresip. Killed on drop.
pub struct Baresip {
    child: Option<Child>,
    user: String,
    sip_port: u16,
    ctrl_port: u16,
    ctrl: Ctrl,
    log_path: PathBuf,
    dir: TempDir,
}

impl std::fmt::Debug for Baresip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baresip")
            .field("uri", &self.uri())
            .field("ctrl_port", &self.ctrl_port)
            .finish()
    }
}

impl Baresip {
    /// Starts baresip with account `sip:<agent_user>@127.0.0.1:<free port>` and returns once
    /// its SIP port is bound and its control socket is connected. Panics (with baresip's
    /// output) if it cannot start.
    pub fn start(agent_user: &str, answer: AnswerMode) -> Baresip {
        Baresip::start_with(agent_user, answer, None, None)
    }

    /// Like [`Baresip::start`], registered with `registrar` (its account is then
    /// `sip:<user>@<registrar>`); returns once the registration succeeded.
    pub fn start_registered(answer: AnswerMode, registrar: &Registrar) -> Baresip {
        Baresip::start_with(&registrar.user, answer, Some(registrar), None)
    }

    /// Like [`Baresip::start`], with `tls` for its TLS listener (SIP port + 1) and for the
    /// connections it opens.
    pub fn start_tls(agent_user: &str, answer: AnswerMode, tls: &BaresipTls) -> Baresip {
        Baresip::start_with(agent_user, answer, None, Some(tls))
    }

    fn start_with(
        agent_user: &str,
        answer: AnswerMode,
        registrar: Option<&Registrar>,
        tls: Option<&BaresipTls>,
    ) -> Baresip {
        let dir = tempfile::Builder::new()
            .prefix("calldesk-baresip-")
            .tempdir()
            .expect("tempdir for baresip");
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let sip_port = free_sip_port();
            let ctrl_port = free_tcp_port(&[sip_port, sip_port + 1]);
            write_config(
                dir.path(),
                agent_user,
                answer,
                sip_port,
                ctrl_port,
                registrar,
                tls,
            );
            let log_path = dir.path().join(format!("baresip-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("baresip log file");
            let mut child =
                Command::new(std::env::var_os("BARESIP").unwrap_or_else(|| "baresip".into()))
                    .arg("-f")
                    .arg(dir.path())
                    .args(["-n", HOST, "-t", &MAX_LIFETIME.as_secs().to_string()])
                    .current_dir(dir.path())
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log file"))
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot run baresip ({e}): install baresip-core, or set BARESIP=/path"
                        )
                    });
            match wait_ready(&mut child, sip_port, ctrl_port) {
                Ok(stream) => {
                    let phone = Baresip {
                        child: Some(child),
                        user: agent_user.to_owned(),
                        sip_port,
                        ctrl_port,
                        ctrl: Ctrl::new(stream),
                        log_path,
                        dir,
                    };
                    if registrar.is_some() {
                        phone.wait_registered();
                    }
                    return phone;
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_failure = format!(
                        "{why}\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        }
        panic!("baresip did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// `"sip:<agent_user>@127.0.0.1:PORT"` (UDP; TCP works on the same port with
    /// `;transport=tcp`).
    pub fn uri(&self) -> String {
        format!("sip:{}@{HOST}:{}", self.user, self.sip_port)
    }

    pub fn port(&self) -> u16 {
        self.sip_port
    }

    /// `"sip:<agent_user>@127.0.0.1:PORT+1;transport=tls"`: its TLS listener. (baresip 1.0.0
    /// sends no BYE to a `sips:` Contact, so hang-ups from it need this form.)
    pub fn tls_uri(&self) -> String {
        format!(
            "sip:{}@{HOST}:{};transport=tls",
            self.user,
            self.sip_port + 1
        )
    }

    /// `"sips:<agent_user>@127.0.0.1:PORT+1"`.
    pub fn sips_uri(&self) -> String {
        format!("sips:{}@{HOST}:{}", self.user, self.sip_port + 1)
    }

    /// Hangs up the current call: BYE when established, CANCEL/486-style reject while
    /// ringing. Returns ctrl_tcp's response JSON.
    pub fn hangup(&self) -> String {
        self.command("hangup", None)
    }

    /// Answers a ringing call (AnswerMode::Manual).
    pub fn accept(&self) -> String {
        self.command("accept", None)
    }

    /// Sends `{"command":command,"params":params}` as a netstring to ctrl_tcp and returns the
    /// response JSON (`{"response":true,"ok":...,"data":...}`). Panics after 5 s without one.
    pub fn command(&self, command: &str, params: Option<&str>) -> String {
        self.ctrl
            .command(command, params)
            .unwrap_or_else(|e| panic!("baresip command {command}: {e}\n{}", self.log()))
    }

    /// Waits for the next ctrl_tcp event of `event_type` (e.g. `CALL_INCOMING`,
    /// `CALL_ESTABLISHED`, `CALL_CLOSED`) not yet returned by an earlier `wait_event`, and
    /// returns its JSON. Events are recorded from start-up on, so none is missed.
    pub fn wait_event(&self, event_type: &str, timeout: Duration) -> Result<String, String> {
        self.ctrl.wait_event(event_type, timeout)
    }

    /// Every event JSON received so far.
    pub fn events(&self) -> Vec<String> {
        self.ctrl.drain();
        self.ctrl.state.lock().unwrap().events.clone()
    }

    /// baresip's console output so far (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls `reginfo` (bounded) until the account is registered: baresip may register before
    /// the control connection exists, so its REGISTER_OK event cannot be waited for.
    fn wait_registered(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // A registered account shows its binding's expiry.
            let info = self.command("reginfo", None);
            if info.contains("Expires") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baresip did not register within {READY_TIMEOUT:?}: {info}\n{}",
                self.log()
            );
            // A pause between two questions, not a synchronisation: the loop ends on the answer.
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.ctrl.close();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_config(
    dir: &Path,
    user: &str,
    answer: AnswerMode,
    sip_port: u16,
    ctrl_port: u16,
    registrar: Option<&Registrar>,
    tls: Option<&BaresipTls>,
) {
    let tls = tls
        .map(|tls| {
            format!(
                "sip_certificate\t\t{}\nsip_cafile\t\t{}\n",
                tls.bundle_pem.display(),
                tls.ca_pem.display()
            )
        })
        .unwrap_or_default();
    // Audio settings pinned: ausine at 48 kHz stereo in, aubridge "nil" out. Other rates made
    // baresip stall after 180 or answer 486 on this machine (Debian 12, baresip 1.0.0).
    let config = format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t{HOST}:{sip_port}\n\
         net_interface\t\t{HOST}\n\
         audio_player\t\taubridge,nil\n\
         audio_alert\t\taubridge,nil\n\
         audio_source\t\tausine,440\n\
         ausrc_srate\t\t48000\n\
         ausrc_channels\t\t2\n\
         auplay_srate\t\t48000\n\
         auplay_channels\t\t1\n\
         rtp_ports\t\t40000-49999\n\
         module_path\t\t/usr/lib/baresip/modules\n\
         module\t\t\tg711.so\n\
         module\t\t\tausine.so\n\
         module\t\t\taubridge.so\n\
         module_app\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         module_app\t\tctrl_tcp.so\n\
         ctrl_tcp_listen\t\t{HOST}:{ctrl_port}\n\
         {tls}"
    );
    let mode = match answer {
        AnswerMode::Auto => "auto",
        AnswerMode::Manual => "manual",
        AnswerMode::OnRequest => "manual;sip_autoanswer=yes",
    };
    let accounts = match registrar {
        None => {
            format!("<sip:{user}@{HOST}:{sip_port}>;regint=0;answermode={mode};audio_codecs=PCMU\n")
        }
        Some(r) => format!(
            "<sip:{user}@{host}>;auth_pass={password};regint=600;answermode={mode};\
             audio_codecs=PCMU\n",
            host = r.host,
            password = r.password
        ),
    };
    fs::write(dir.join("config"), config).expect("write baresip config");
    fs::write(dir.join("accounts"), accounts).expect("write baresip accounts");
    // An empty contacts file keeps baresip from writing its template.
    fs::write(dir.join("contacts"), "").expect("write baresip contacts");
}

/// A port free for UDP and TCP on 127.0.0.1 whose next port is free for TCP too (TLS); below
/// the ephemeral range (`chosen_port`).
fn free_sip_port() -> u16 {
    super::chosen_port(|port| {
        port < u16::MAX
            && UdpSocket::bind((HOST, port)).is_ok()
            && TcpListener::bind((HOST, port)).is_ok()
            && TcpListener::bind((HOST, port + 1)).is_ok()
    })
}

fn free_tcp_port(avoid: &[u16]) -> u16 {
    super::chosen_port(|port| !avoid.contains(&port) && TcpListener::bind((HOST, port)).is_ok())
}

/// Polls (bounded) until the SIP UDP port is bound and ctrl_tcp accepts a connection, which
/// becomes the control connection (ctrl_tcp serves one connection at a time).
fn wait_ready(child: &mut Child, sip_port: u16, ctrl_port: u16) -> Result<TcpStream, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("baresip exited during start-up ({status})"));
        }
        if UdpSocket::bind((HOST, sip_port)).is_err() {
            if let Ok(stream) = TcpStream::connect((HOST, ctrl_port)) {
                return Ok(stream);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "baresip did not listen on {HOST}:{sip_port} / ctrl {ctrl_port} within \
                 {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(POLL);
    }
}

/// The ctrl_tcp connection: a reader thread turns netstrings into messages on a channel.
struct Ctrl {
    writer: Mutex<TcpStream>,
    rx: Mutex<Receiver<String>>,
    state: Mutex<CtrlState>,
}

#[derive(Default)]
struct CtrlState {
    events: Vec<String>,
    /// Index in `events` of the first event `wait_event` has not returned.
    next_event: usize,
    responses: Vec<String>,
}

impl Ctrl {
    fn new(stream: TcpStream) -> Ctrl {
        let reader = stream.try_clone().expect("clone ctrl_tcp stream");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            while let Some(msg) = read_netstring(&mut reader) {
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        Ctrl {
            writer: Mutex::new(stream),
            rx: Mutex::new(rx),
            state: Mutex::new(CtrlState::default()),
        }
    }

    fn close(&self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }

    /// Sorts one received message into events or responses.
    fn file(&self, msg: String) {
        let mut state = self.state.lock().unwrap();
        if json_has(&msg, "response", "true") {
            state.responses.push(msg);
        } else {
            state.events.push(msg);
        }
    }

    /// Files what has already arrived, without waiting.
    fn drain(&self) {
        let rx = self.rx.lock().unwrap();
        while let Ok(msg) = rx.try_recv() {
            self.file(msg);
        }
    }

    /// Waits until `deadline` for one more message; false on timeout or closed connection.
    fn receive_until(&self, deadline: Instant) -> Result<(), String> {
        let rx = self.rx.lock().unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(msg) => {
                drop(rx);
                self.file(msg);
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err("timed out".into()),
            Err(RecvTimeoutError::Disconnected) => Err("ctrl_tcp connection closed".into()),
        }
    }

    fn command(&self, command: &str, params: Option<&str>) -> Result<String, String> {
        self.drain();
        self.state.lock().unwrap().responses.clear();
        let mut json = format!("{{\"command\":\"{}\"", json_escape(command));
        if let Some(params) = params {
            json.push_str(&format!(",\"params\":\"{}\"", json_escape(params)));
        }
        json.push('}');
        let frame = format!("{}:{},", json.len(), json);
        self.writer
            .lock()
            .unwrap()
            .write_all(frame.as_bytes())
            .map_err(|e| format!("write to ctrl_tcp: {e}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(resp) = self.state.lock().unwrap().responses.pop() {
                return Ok(resp);
            }
            self.receive_until(deadline)
                .map_err(|e| format!("no response to {json}: {e}"))?;
        }
    }

    fn wait_event(&self, event_type: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        self.drain();
        loop {
            {
                let mut state = self.state.lock().unwrap();
                let start = state.next_event;
                if let Some(i) = state.events[start..]
                    .iter()
                    .position(|e| json_has(e, "type", &format!("\"{event_type}\"")))
                {
                    state.next_event = start + i + 1;
                    return Ok(state.events[start + i].clone());
                }
            }
            if let Err(e) = self.receive_until(deadline) {
                let seen = self.state.lock().unwrap().events.join("\n");
                return Err(format!(
                    "no baresip event {event_type} within {timeout:?} ({e}); events so far:\n{seen}"
                ));
            }
        }
    }
}

/// One netstring (`LEN:DATA,`), or None at EOF / on a framing error.
fn read_netstring(reader: &mut impl BufRead) -> Option<String> {
    let mut len = Vec::new();
    reader.read_until(b':', &mut len).ok()?;
    if len.pop() != Some(b':') {
        return None;
    }
    let len: usize = std::str::from_utf8(&len).ok()?.trim().parse().ok()?;
    if len > 1 << 20 {
        return None;
    }
    let mut data = vec![0; len + 1];
    reader.read_exact(&mut data).ok()?;
    if data.pop() != Some(b',') {
        return None;
    }
    Some(String::from_utf8_lossy(&data).into_owned())
}

/// Whether flat JSON `json` has `"key":value` (value given as raw JSON), spaces allowed.
fn json_has(json: &str, key: &str, value: &str) -> bool {
    let pattern = format!("\"{key}\"");
    json.match_indices(&pattern).any(|(i, _)| {
        let rest = json[i + pattern.len()..].trim_start();
        rest.strip_prefix(':')
            .map(|r| r.trim_start().starts_with(value))
            .unwrap_or(false)
    })
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
