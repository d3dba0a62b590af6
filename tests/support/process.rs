//! `calldesk serve` as a child process: start it (directly or under a wrapper such as
//! `bash -c 'ulimit -n 128; exec ...'`), read its `calldesk listening on ADDR` line, kill it
//! with SIGKILL or stop it with SIGTERM, wait for its exit with a timeout, and keep its stderr
//! for messages and for failure reports. A guard kills the child on every path. Also
//! `run_to_exit` for commands that end by themselves (`calldesk token`, a refused `serve`).
//!
//! `serve_args` give the server the store `CALLDESK_TEST_STORE` names (`Store`). With
//! PostgreSQL, the database and the peer token are made for a data dir the first time and
//! remembered in it, so that a server restarted on the same data dir finds the same store, as
//! with SQLite.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use tokio::sync::oneshot;

use super::{client, postgres, Client, Store};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_calldesk");

/// How long the server may take to print its listen line, or to exit when told to.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Fast simulated-switch timings for `calldesk serve` (the binary's defaults are real-world).
pub const FAST_SIM: [&str; 4] = ["--sim-ring", "20ms", "--sim-answer", "20ms"];

/// `FAST_SIM` followed by `extra`.
pub fn fast_flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST_SIM.iter().chain(extra).copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Collects a pipe into a shared buffer on a thread of its own, so that the child never blocks
/// on a full pipe. The thread ends at the pipe's end of file: once it is joined, the buffer
/// holds everything the child wrote.
fn drain_into(
    mut pipe: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// A `calldesk serve` child process. Dropping it kills the child (and prints its stderr when
/// the test is failing).
pub struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    addr: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread draining stderr, joined once the child has exited: then `stderr` is whole,
    /// not what the thread happened to have read so far.
    stderr_reader: Option<thread::JoinHandle<()>>,
}

/// The arguments of `calldesk serve` on a free loopback port with `data_dir` and the store
/// `CALLDESK_TEST_STORE` names, plus `extra`.
pub fn serve_args(data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    serve_args_on("127.0.0.1:0", data_dir, extra)
}

/// The arguments of `calldesk serve --listen listen` with `data_dir` and the store
/// `CALLDESK_TEST_STORE` names, plus `extra`.
pub fn serve_args_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    serve_args_for(Store::from_env(), listen, data_dir, extra)
}

/// Like [`serve_args`], always on SQLite in `data_dir`: for tests of the SQLite store itself.
pub fn serve_args_sqlite(data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    serve_args_sqlite_on("127.0.0.1:0", data_dir, extra)
}

/// Like [`serve_args_on`], always on SQLite in `data_dir`.
pub fn serve_args_sqlite_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    serve_args_for(Store::Sqlite, listen, data_dir, extra)
}

/// The arguments of `calldesk serve --listen listen --data-dir data_dir` on `store`, plus
/// `extra`. `Store::Sqlite` adds no store flag: `extra` may name a `--database-url` itself.
///
/// On PostgreSQL a wildcard `listen` (`0.0.0.0:PORT`, `[::]:PORT`) needs `--advertise-address`
/// (docs/api.md §11): the server is given its loopback address, on a free port chosen here when
/// PORT is 0 (so that the address it advertises is the one it listens on).
pub fn serve_args_for(
    store: Store,
    listen: &str,
    data_dir: &Path,
    extra: &[&str],
) -> Vec<OsString> {
    let mut listen = listen.to_string();
    let mut advertise = None;
    if let (Store::Postgres, Ok(mut addr)) = (store, listen.parse::<SocketAddr>()) {
        if addr.ip().is_unspecified() {
            if addr.port() == 0 {
                addr.set_port(super::free_addr().port());
                listen = addr.to_string();
            }
            let loopback = match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            };
            advertise = Some(SocketAddr::new(loopback, addr.port()).to_string());
        }
    }
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        data_dir.as_os_str().to_owned(),
    ];
    args.extend(store_flags(store, data_dir));
    if let Some(advertise) = advertise {
        args.extend(["--advertise-address".into(), advertise.into()]);
    }
    // A test's SIGTERM stops its server as SIGINT does, hanging up the calls it leaves live,
    // rather than wait for them (the binary's default, `1h`): the drain's own tests give the
    // flag.
    if !extra
        .iter()
        .any(|flag| flag.starts_with("--drain-calls-for"))
    {
        args.extend(["--drain-calls-for".into(), "0".into()]);
    }
    args.extend(extra.iter().map(OsString::from));
    args
}

/// The flags that put a server with `data_dir` on `store`: none for SQLite (`--data-dir` is
/// the store); for PostgreSQL `--database-url` and `--peer-token-file`, of a database and a
/// token made for `data_dir` the first time and kept in it (`test-database-url`,
/// `peer-token`): a restart on the same data dir finds the same store.
pub fn store_flags(store: Store, data_dir: &Path) -> Vec<OsString> {
    if store == Store::Sqlite {
        return Vec::new();
    }
    std::fs::create_dir_all(data_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", data_dir.display()));
    let url_file = data_dir.join("test-database-url");
    let url = match std::fs::read_to_string(&url_file) {
        Ok(url) => url.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let url = postgres::PgCluster::shared().database();
            std::fs::write(&url_file, &url)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", url_file.display()));
            url
        }
        Err(e) => panic!("cannot read {}: {e}", url_file.display()),
    };
    let token = data_dir.join("peer-token");
    if !token.exists() {
        postgres::write_peer_token(data_dir);
    }
    vec![
        "--database-url".into(),
        url.into(),
        "--peer-token-file".into(),
        token.into(),
        // A server restarted on another port is a new replica: what the old one held is
        // taken over once its lease has expired. A short lease, as the simulated switch's
        // timings are short.
        "--lease-duration".into(),
        postgres::TEST_LEASE.into(),
    ]
}

impl ServerProcess {
    /// Starts `calldesk serve` on a free port with `data_dir` (and the store
    /// `CALLDESK_TEST_STORE` names) and the extra flags; returns once it printed its listen
    /// line.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_command(BIN.into(), serve_args(data_dir, extra)).await
    }

    /// Like [`ServerProcess::start`], always on SQLite in `data_dir`: for tests of the SQLite
    /// store itself.
    pub async fn start_sqlite(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_command(BIN.into(), serve_args_sqlite(data_dir, extra)).await
    }

    /// Like [`ServerProcess::start`], logging at `rust_log` (e.g. `debug`) instead of `info`.
    pub async fn start_logging(data_dir: &Path, extra: &[&str], rust_log: &str) -> ServerProcess {
        let mut args: Vec<OsString> = vec![format!("RUST_LOG={rust_log}").into(), BIN.into()];
        args.extend(serve_args(data_dir, extra));
        ServerProcess::start_command("env".into(), args).await
    }

    /// Starts `program args` (which must end up exec'ing `calldesk serve`) and waits for the
    /// listen line.
    pub async fn start_command(program: OsString, args: Vec<OsString>) -> ServerProcess {
        let mut child = Command::new(&program)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?} {args:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout pipe");
        let stderr_pipe = child.stderr.take().expect("stderr pipe");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = drain_into(stderr_pipe, stderr.clone());
        let pid = child.id();
        // From here on, a panic kills the child through Drop.
        let mut server = ServerProcess {
            child: Some(child),
            pid,
            addr: String::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        let (tx, rx) = oneshot::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            // Keep reading after the banner so that the server never blocks on a full pipe.
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
                "calldesk serve ended its stdout without `calldesk listening on ADDR`; stderr:\n{}",
                server.stderr_text()
            ),
            Err(_) => panic!(
                "calldesk serve printed no `calldesk listening on ADDR` within {START_TIMEOUT:?}"
            ),
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// A client for `agent` on a connection of its own.
    pub fn client(&self, agent: &str) -> Client {
        client(&self.addr, agent)
    }

    /// SIGKILL (what `Child::kill` sends on unix), and reaps the child.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the server");
            child.wait().expect("reap the server");
        }
    }

    /// SIGTERM, then waits for the exit (at most `START_TIMEOUT`) and returns its status.
    pub async fn sigterm(&mut self) -> ExitStatus {
        send_signal(self.pid, "-TERM");
        self.wait_exit(START_TIMEOUT).await
    }

    /// SIGTERM, waits for the exit, and returns its status with everything the server wrote
    /// on stderr.
    pub async fn stop_collecting_stderr(&mut self) -> (ExitStatus, String) {
        let status = self.sigterm().await;
        (status, self.stderr_text())
    }

    /// Waits for the child to exit by itself, at most `timeout`; kills it and panics otherwise.
    /// Then waits for its stderr's end of file, so that [`ServerProcess::stderr_text`] is
    /// everything it wrote.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = self.wait_child(timeout).await;
        if let Some(reader) = self.stderr_reader.take() {
            // The pipe's last writer was the child: its end of file is due at once.
            let (tx, rx) = oneshot::channel();
            thread::spawn(move || {
                let _ = tx.send(reader.join());
            });
            tokio::time::timeout(START_TIMEOUT, rx)
                .await
                .expect("the server's stderr reaches its end once the server has exited")
                .expect("the joining thread")
                .expect("the stderr reader did not panic");
        }
        status
    }

    async fn wait_child(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the child is still ours");
        let (tx, rx) = oneshot::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(status))) => status,
            Ok(Ok(Err(e))) => panic!("cannot wait for the server: {e}"),
            Ok(Err(_)) => panic!("the waiter thread died"),
            Err(_) => {
                // The waiter thread has not reaped it, so the pid is still this child's.
                send_signal(self.pid, "-KILL");
                panic!(
                    "the server did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
        }
    }
}

/// Sends a signal with kill(1) (no libc in the tests).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill {signal} {pid}: {e}"));
    assert!(status.success(), "kill {signal} {pid} failed: {status}");
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let text = self.stderr_text();
            let tail: String = {
                let skip = text.chars().count().saturating_sub(20_000);
                text.chars().skip(skip).collect()
            };
            eprintln!("--- calldesk serve (pid {}) stderr ---\n{tail}", self.pid);
        }
    }
}

/// What a finished process printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `calldesk args` to its exit, killing it (and panicking) after `timeout`. Blocking: call
/// it from a plain `#[test]` or `spawn_blocking`.
pub fn run_to_exit(args: Vec<OsString>, timeout: Duration) -> Finished {
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN} {args:?}: {e}"));
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(timeout).is_err() {
        send_signal(pid, "-KILL");
        let _ = waiter.join();
        panic!(
            "calldesk {args:?} did not exit within {timeout:?}; stderr so far:\n{}",
            stderr.join().unwrap_or_default()
        );
    }
    let status = waiter
        .join()
        .expect("waiter thread")
        .expect("wait for calldesk");
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
