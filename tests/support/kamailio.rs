//! Kamailio (5.6) as the PBX/proxy in front of the phones, for SIP interop tests: a stateful
//! proxy on a free loopback port (UDP and TCP) with a throw-away config, in the foreground.
//!
//! What the config does, like a small PBX:
//! * REGISTER: digest authentication (401, realm [`REALM`], any user with [`AGENT_PASSWORD`]),
//!   then the binding in memory (`usrloc`, no database). No GRUU: Kamailio's names its host
//!   without the port, which on a free loopback port reaches nothing, and linphone would make it
//!   its Contact;
//! * a Request-URI whose user is a number (`+`, digits): the trunk. The caller must answer a
//!   407 as [`TRUNK_USER`] / [`TRUNK_PASSWORD`]; the INVITE then goes to the customer's address
//!   given at start;
//! * any other user: the location of a registered phone, or 404;
//! * every INVITE is record-routed, so every in-dialog request and ACK goes through the proxy
//!   (`loose_route`).
//!
//! ```ignore
//! let proxy = Kamailio::start(&customer.uri_host());
//! // phones register with proxy.host(); calldesk uses sip:{agent}@HOST and trunk sip:HOST
//! ```
//!
//! * Its processes run in a process group of their own, ended (SIGTERM, then SIGKILL) on drop.
//! * Linux only; `kamailio` must be on PATH or in /usr/sbin (Debian: `apt-get install
//!   kamailio`), or set `KAMAILIO=/path`.
#![allow(dead_code)]

use std::{
    fs,
    net::{TcpListener, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

const HOST: &str = "127.0.0.1";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const START_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(20);

/// The digest realm of both challenges.
pub const REALM: &str = "calldesk-proxy.test";
/// The password of every phone that registers.
pub const AGENT_PASSWORD: &str = "agentpass";
/// Who may call numbers through the proxy, and the password.
pub const TRUNK_USER: &str = "trunkuser";
pub const TRUNK_PASSWORD: &str = "trunkpass";

/// Where a phone registers, and as whom.
#[derive(Clone, Debug)]
pub struct Registrar {
    /// `"127.0.0.1:PORT"` of the registrar, over UDP.
    pub host: String,
    pub user: String,
    pub password: String,
}

/// A running Kamailio. Stopped on drop.
#[derive(Debug)]
pub struct Kamailio {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
    dir: TempDir,
}

impl Kamailio {
    /// Starts Kamailio relaying numbers to `customer` (`"127.0.0.1:PORT"`, UDP), and returns
    /// once it listens. Panics with its output if it cannot start.
    pub fn start(customer: &str) -> Kamailio {
        let dir = tempfile::Builder::new()
            .prefix("calldesk-kamailio-")
            .tempdir()
            .expect("tempdir for kamailio");
        let mut last_failure = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("kamailio.cfg");
            fs::write(&config, config_text(port, customer)).expect("write kamailio.cfg");
            let log_path = dir.path().join(format!("kamailio-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("kamailio log file");
            let binary = std::env::var_os("KAMAILIO").unwrap_or_else(|| {
                if Path::new("/usr/sbin/kamailio").exists() {
                    "/usr/sbin/kamailio".into()
                } else {
                    "kamailio".into()
                }
            });
            let mut child = Command::new(binary)
                .arg("-f")
                .arg(&config)
                .args(["-DD", "-E", "-Y"])
                .arg(dir.path())
                .arg("-P")
                .arg(dir.path().join("kamailio.pid"))
                .args(["-m", "32", "-M", "8"])
                .current_dir(dir.path())
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run kamailio ({e}): install kamailio, or set KAMAILIO=/path")
                });
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Kamailio {
                        child: Some(child),
                        port,
                        log_path,
                        dir,
                    }
                }
                Err(why) => {
                    stop(&mut child);
                    last_failure = format!(
                        "{why}\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        }
        panic!("kamailio did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// `"127.0.0.1:PORT"`: where phones register and calldesk sends both legs.
    pub fn host(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// Registration of the phone of `user` with this proxy.
    pub fn registrar(&self, user: &str) -> Registrar {
        Registrar {
            host: self.host(),
            user: user.to_owned(),
            password: AGENT_PASSWORD.to_owned(),
        }
    }

    /// Kamailio's log so far (its errors, and what `xlog` says of each request it routes).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }
}

/// Ends Kamailio's process group: SIGTERM (the main process stops its children), then SIGKILL
/// if it is still there after a while.
fn stop(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(POLL);
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

fn config_text(port: u16, customer: &str) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
listen=udp:{HOST}:{port}
listen=tcp:{HOST}:{port}
alias="{HOST}:{port}"
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "auth.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "gruu_enabled", 0)

request_route {{
    xlog("L_INFO", "$rm $ru from $si:$sp ($ci)\n");
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check()) {{
        xlog("L_WARN", "insane $rm from $si:$sp\n");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            route(RELAY);
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                route(RELAY);
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}
    t_check_trans();
    remove_hf("Route");
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("{REALM}", "{AGENT_PASSWORD}", "0")) {{
            www_challenge("{REALM}", "0");
            exit;
        }}
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
    }}
    if ($rU =~ "^\+?[0-9]+$") {{
        if (!pv_proxy_authenticate("{REALM}", "{TRUNK_PASSWORD}", "0") || $au != "{TRUNK_USER}") {{
            proxy_challenge("{REALM}", "0");
            exit;
        }}
        consume_credentials();
        $du = "sip:{customer}";
        route(RELAY);
    }}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Found");
        exit;
    }}
    route(RELAY);
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"#
    )
}

/// A port free for UDP and TCP on 127.0.0.1 (below the ephemeral range: `chosen_port`).
fn free_port() -> u16 {
    super::free_sip_port()
}

/// Polls (bounded) until Kamailio listens on UDP and TCP, or has exited.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("kamailio exited during start-up ({status})"));
        }
        if UdpSocket::bind((HOST, port)).is_err() && TcpListener::bind((HOST, port)).is_err() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("kamailio did not listen on {HOST}:{port}"));
        }
        thread::sleep(POLL);
    }
}
