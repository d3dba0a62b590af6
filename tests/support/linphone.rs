//! linphone (Debian's `linphonec` 5.x: liblinphone on belle-sip, the stack of Linphone and of
//! many commercial softphones) as the agent's phone: a headless console phone on a free loopback
//! port that answers every call by itself (`-a`), with a throw-away HOME and config, wav files
//! instead of a sound card, no video.
//!
//! ```ignore
//! let phone = Linphone::start("agent-7", None);
//! // ... calldesk calls phone.uri() ...
//! phone.wait_line("connected", WAIT).unwrap();
//! ```
//!
//! * linphonec needs `$HOME/.local/share/linphone` (its databases) and a standard input that
//!   stays open, or it exits at once: stdin is a pipe held until the phone is dropped, and
//!   commands go through it ([`Linphone::command`]).
//! * What it prints on stdout (`Call 1 with sip:… connected.`, `… has been paused by …`, `…
//!   ended (…)`) is recorded line by line; [`Linphone::wait_line`] waits for the next one that
//!   contains a text. Its own log (belle-sip's messages, every SIP message) goes to a file
//!   shown by [`Linphone::log`].
//! * With a [`Registrar`] (Kamailio), it registers there with digest authentication, and
//!   is called through it.
//! * Killed on drop (SIGKILL by pid). Linux only; `linphonec` must be on PATH (Debian:
//!   `apt-get install linphone-cli`), or set `LINPHONEC=/path`.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
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
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(20);

/// A running linphonec. Killed on drop.
pub struct Linphone {
    child: Option<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    user: String,
    port: u16,
    lines: Mutex<Lines>,
    log_path: PathBuf,
    /// HOME, the config and the log; removed on drop.
    dir: TempDir,
}

/// stdout, line by line, as a reader thread delivers it.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    /// Index in `seen` of the first line `wait_line` has not returned.
    next: usize,
}

impl std::fmt::Debug for Linphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linphone")
            .field("uri", &self.uri())
            .finish()
    }
}

impl Linphone {
    /// Starts linphonec as `sip:<user>@127.0.0.1:<free port>`, answering every call, and
    /// returns once its SIP port is bound (and, with `registrar`, once it has registered).
    /// Panics with its output if it cannot start.
    pub fn start(user: &str, registrar: Option<Registrar>) -> Linphone {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match Linphone::try_start(user, registrar.as_ref()) {
                Ok(phone) => return phone,
                Err(why) => last_failure = why,
            }
        }
        panic!("linphonec did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    fn try_start(user: &str, registrar: Option<&Registrar>) -> Result<Linphone, String> {
        let dir = tempfile::Builder::new()
            .prefix("calldesk-linphone-")
            .tempdir()
            .expect("tempdir for linphone");
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".local/share/linphone")).expect("linphone's HOME");
        let port = free_port();
        let rc = dir.path().join("linphonerc");
        fs::write(&rc, config(user, port, registrar)).expect("write linphonerc");
        let log_path = dir.path().join("linphone.log");
        let mut child =
            Command::new(std::env::var_os("LINPHONEC").unwrap_or_else(|| "linphonec".into()))
                .arg("-c")
                .arg(&rc)
                .arg("-a")
                .args(["-d", "6", "-l"])
                .arg(&log_path)
                .env("HOME", &home)
                .current_dir(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run linphonec ({e}): install linphone-cli, or set LINPHONEC")
                });
        let stdin = child.stdin.take().expect("linphonec's stdin");
        let stdout = child.stdout.take().expect("linphonec's stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let phone = Linphone {
            child: Some(child),
            stdin: Mutex::new(Some(stdin)),
            user: user.to_owned(),
            port,
            lines: Mutex::new(Lines {
                rx,
                seen: Vec::new(),
                next: 0,
            }),
            log_path,
            dir,
        };
        // No sound card here: play and record wav files instead.
        phone.command("soundcard use files");
        phone
            .wait_ready(registrar.is_some())
            .map_err(|why| format!("{why}\n{}", phone.log()))?;
        Ok(phone)
    }

    /// `"sip:<user>@127.0.0.1:PORT"`: the phone itself (UDP).
    pub fn uri(&self) -> String {
        format!("sip:{}@{HOST}:{}", self.user, self.port)
    }

    /// Sends one command line (`terminate`, `pause`, …) to linphonec's prompt.
    pub fn command(&self, line: &str) {
        let mut stdin = self.stdin.lock().unwrap();
        if let Some(stdin) = stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Hangs up the current call (linphone sends BYE).
    pub fn hangup(&self) {
        self.command("terminate");
    }

    /// Waits for the next line of linphonec's output, not returned before, that contains
    /// `text` (e.g. `"connected"`, `"has been paused by"`, `"ended"`), and returns it.
    pub fn wait_line(&self, text: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            let start = lines.next;
            if let Some(i) = lines.seen[start..].iter().position(|l| l.contains(text)) {
                lines.next = start + i + 1;
                return Ok(lines.seen[start + i].clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.rx.recv_timeout(left) {
                Ok(line) => lines.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                    "linphonec printed no line with {text:?} within {timeout:?}; its output:\n{}",
                    lines.seen.join("\n")
                ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "linphonec exited before printing {text:?}; its output:\n{}",
                        lines.seen.join("\n")
                    ))
                }
            }
        }
    }

    /// The end of linphone's own log (every SIP message it sent and received), for assertion
    /// messages.
    pub fn log(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(20_000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Polls (bounded) until the SIP port is bound, and with a registrar until linphonec says
    /// it is registered.
    fn wait_ready(&self, registers: bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if UdpSocket::bind((HOST, self.port)).is_err() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("linphonec did not bind {HOST}:{}", self.port));
            }
            thread::sleep(POLL);
        }
        if !registers {
            return Ok(());
        }
        // linphonec prints nothing when it registers: ask until it says so.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("linphonec did not register".to_owned());
            }
            self.command("status register");
            if self
                .wait_line("registered", left)?
                .starts_with("registered,")
            {
                return Ok(());
            }
            // A pause between two questions, not a synchronisation: the loop ends on the answer.
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        self.stdin.lock().unwrap().take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// linphonerc: SIP on `port` of 127.0.0.1 over UDP and TCP, no TLS, no IPv6, no STUN/ICE, no
/// video, PCMU and PCMA, RTP on a free port of a range, and optionally one account.
fn config(user: &str, port: u16, registrar: Option<&Registrar>) -> String {
    // The account below, when there is one: `status register` answers for it.
    let default_proxy = if registrar.is_some() { 0 } else { -1 };
    let mut rc = format!(
        "[sip]\n\
         sip_port={port}\n\
         sip_tcp_port={port}\n\
         sip_tls_port=0\n\
         bind_address={HOST}\n\
         use_ipv6=0\n\
         guess_hostname=0\n\
         contact=\"{user}\" <sip:{user}@{HOST}:{port}>\n\
         register_only_when_network_is_up=0\n\
         auto_net_state_mon=0\n\
         ping_with_options=0\n\
         default_proxy={default_proxy}\n\
         inc_timeout=30\n\
         [rtp]\n\
         audio_rtp_port=40000-49999\n\
         nortp_timeout=600\n\
         [net]\n\
         firewall_policy=0\n\
         [sound]\n\
         echocancellation=0\n\
         [video]\n\
         enabled=0\n\
         capture=0\n\
         display=0\n\
         automatically_initiate=0\n\
         automatically_accept=0\n"
    );
    if let Some(r) = registrar {
        rc.push_str(&format!(
            "[proxy_0]\n\
             reg_proxy=<sip:{host};transport=udp>\n\
             reg_identity=\"{user}\" <sip:{user}@{host}>\n\
             reg_expires=600\n\
             reg_sendregister=1\n\
             publish=0\n\
             [auth_info_0]\n\
             username={user}\n\
             passwd={password}\n",
            host = r.host,
            user = r.user,
            password = r.password,
        ));
    }
    rc
}

/// A port free for UDP and TCP on 127.0.0.1 (linphonec listens on both; below the ephemeral
/// range: `chosen_port`).
fn free_port() -> u16 {
    super::free_sip_port()
}
