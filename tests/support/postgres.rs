//! A throw-away PostgreSQL cluster for the tests: Debian's `postgresql` package (the newest
//! version under /usr/lib/postgresql), a copy of a template cluster (`initdb` once per machine,
//! in the temp dir) into a temp dir, and the postmaster as a child
//! process listening on a free port of 127.0.0.1 only, with trust authentication (loopback and
//! its own socket directory: nothing else can reach it), fsync on (durability is under test)
//! and 200 connections.
//!
//! PostgreSQL refuses to run as root: when the tests do (they do in CI), `initdb` and the
//! postmaster run as the `postgres` user, in a temp dir given to that user.
//!
//! The postmaster never outlives the test process: it is started by a thread of its own that
//! waits for it, with PR_SET_PDEATHSIG = SIGKILL (which fires when that thread ends, i.e. when
//! the process dies however it dies). `Drop` stops it (immediate shutdown) and removes the
//! directory; the binary's shared cluster ([`PgCluster::shared`]) does the same at exit, and
//! directories left by test processes that were killed are removed by the next start.
//!
//! Readiness is a successful `SELECT 1` over TCP, polled until a deadline; an early exit of the
//! postmaster fails at once with the end of its log.
//!
//! A TLS-only variant ([`PgCluster::start_tls`], and the shared cluster when
//! `CALLDESK_TEST_PG_TLS=1`): `ssl=on` with a certificate for localhost and 127.0.0.1 from a CA
//! made at start (rcgen, `support::pki`), and a pg_hba.conf of `hostssl` lines only, so that a
//! plaintext TCP connection is refused; its URLs carry `sslmode=verify-full` and
//! `sslrootcert` (the CA's file). The role `certified`, if a test creates it, must present a
//! client certificate (`cert` authentication; its common name is the role's).
//! The harness's own connections go through calldesk's connector
//! (`calldesk::store::postgres::Connector`), which reads those parameters.

use std::{
    fs,
    future::Future,
    io,
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use calldesk::store::postgres::Connector;
use tempfile::TempDir;

use super::{free_addr, pki};

/// How long a postmaster may take to accept connections (initdb not included).
pub const PG_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a postmaster may take to exit once told to.
pub const PG_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of the cluster directories in the temp dir; the test process's id follows, so
/// that a later start can tell the directories of dead processes.
const DIR_PREFIX: &str = "calldesk-pg-";

/// A PostgreSQL cluster of the tests (see the module's doc).
pub struct PgCluster {
    /// `data/` (the cluster), the Unix socket and `postmaster.log`; None once removed.
    dir: Mutex<Option<TempDir>>,
    /// The directory's path, kept for messages after it is removed.
    root: PathBuf,
    /// The PostgreSQL version's `bin/` (initdb, postgres).
    bin: PathBuf,
    /// The user and group that run PostgreSQL when the tests run as root.
    owner: Option<(u32, u32)>,
    /// The TCP port on 127.0.0.1; the same across `start_again`.
    port: u16,
    /// The running postmaster; None between a stop and `start_again`.
    postmaster: Mutex<Option<Postmaster>>,
    /// TLS-only clusters: the CA that signed the server's certificate.
    tls: Option<ClusterTls>,
}

/// What a TLS-only cluster was made with.
pub struct ClusterTls {
    /// The CA, to sign client certificates with.
    pub ca: pki::Ca,
    /// Its certificate's file (the URLs' `sslrootcert`).
    pub ca_file: PathBuf,
}

/// A running postmaster: its pid, and its exit once the thread that waits for it saw it.
struct Postmaster {
    pid: u32,
    exit: Arc<Exit>,
}

/// The exit status of a postmaster, set by the thread that started it and waits for it.
#[derive(Default)]
struct Exit {
    status: Mutex<Option<io::Result<ExitStatus>>>,
    changed: Condvar,
}

impl Exit {
    fn set(&self, status: io::Result<ExitStatus>) {
        *lock(&self.status) = Some(status);
        self.changed.notify_all();
    }

    fn has_exited(&self) -> bool {
        lock(&self.status).is_some()
    }

    /// Waits at most `timeout` for the exit: a description of it, or None if it is still
    /// running.
    fn wait(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.status);
        loop {
            if let Some(status) = status.as_ref() {
                return Some(match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("cannot wait: {e}"),
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            status = self
                .changed
                .wait_timeout(status, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A lock that a panicking test elsewhere does not poison for the others.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own: usable from
/// plain code and from inside any tokio runtime (which it blocks meanwhile).
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    thread::scope(|scope| {
        let handle = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for PostgreSQL")
                .block_on(future)
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The newest `/usr/lib/postgresql/VERSION/bin` that has `initdb` and `postgres`.
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(root).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                (bin.join("initdb").exists() && bin.join("postgres").exists())
                    .then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version)
    });
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server under {}: install it (Debian: apt-get install postgresql; \
             ./scripts/test does)",
            root.display()
        ),
    }
}

/// Who runs PostgreSQL: the `postgres` user when the tests run as root (initdb and the
/// postmaster refuse root), the tests' own user otherwise.
fn owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // SAFETY: the name is a NUL-terminated literal; the result is read at once, before any
    // other getpw* call of this thread.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        panic!(
            "the tests run as root and there is no `postgres` user to run PostgreSQL (Debian's \
             postgresql package creates it)"
        );
    }
    // SAFETY: pw is a valid passwd entry (checked above).
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Whether the process `pid` exists (in any state).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the cluster directories of test processes that no longer exist (killed before they
/// could clean up; their postmasters died with them).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !process_exists(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The initdb'd data directory every cluster of the tests starts as a copy of (`cp -a`): an
/// initdb costs about a second of CPU and several of waiting under the tests' load, and every
/// test binary ran one (twice per scripts/test, which runs many binaries at once); a copy costs a
/// tenth of that. Made once per machine and PostgreSQL version by the first binary that needs
/// it, in the temp dir: initdb into a directory of its own, then renamed into place, so that a
/// template is whole or absent, and a binary that loses the race uses the winner's.
fn template(bin: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    // The version's directory (`/usr/lib/postgresql/15/bin`: `15`); change TEMPLATE_FORMAT
    // when the initdb arguments below change.
    const TEMPLATE_FORMAT: u32 = 1;
    let version = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|v| v.to_str())
        .unwrap_or("unknown");
    // SAFETY: geteuid has no preconditions.
    let uid = owner.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
    let template = std::env::temp_dir().join(format!(
        "calldesk-pgtemplate-{TEMPLATE_FORMAT}-{version}-{uid}"
    ));
    if template.join("PG_VERSION").exists() {
        return template;
    }
    // Under DIR_PREFIX and this process's id: removed by a later start if this one dies.
    let staging = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .expect("a temp dir for the template cluster");
    if let Some((uid, gid)) = owner {
        chown(staging.path(), Some(uid), Some(gid)).unwrap_or_else(|e| {
            panic!("cannot give {} to postgres: {e}", staging.path().display())
        });
    }
    let data = staging.path().join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("--pgdata")
        .arg(&data)
        .args([
            "--username=postgres",
            // Trust: pg_hba.conf then lists only the socket (in the cluster's 0700 directory)
            // and 127.0.0.1/::1, and the postmaster listens on 127.0.0.1 only.
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            // The fresh cluster is not synced to disk (a crash of the machine is not under
            // test); the postmaster runs with fsync on.
            "--no-sync",
        ])
        .current_dir(staging.path());
    run(initdb, owner, "initdb");
    // Another binary's template may have been renamed into place meanwhile: then this one
    // fails to replace it (the directory is not empty), and that one serves.
    if fs::rename(&data, &template).is_err() && !template.join("PG_VERSION").exists() {
        panic!("cannot make {} the template cluster", template.display());
    }
    template
}

/// Runs `command` (as the cluster's owner) to its end; panics with its output if it fails.
fn run(mut command: Command, owner: Option<(u32, u32)>, what: &str) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last `max` bytes of `path`, as text (for failure messages).
fn tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]).into(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `--lease-duration` of the servers the harness starts on PostgreSQL: a restarted server is a
/// new replica, which takes over what the old one held once the old lease has expired.
pub const TEST_LEASE: &str = "1s";

/// Connects to `url` (with the TLS its parameters ask for) and spawns the connection on the
/// current tokio runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let connector = Connector::from_url(url).unwrap_or_else(|e| panic!("{url}: {}", e.message));
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connector.connect())
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} took more than 10 s"))
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Connects to `url` and `LISTEN`s on `channel`: the client (keep it) and the payloads of the
/// notifications, as PostgreSQL delivers them.
pub async fn listen(
    url: &str,
    channel: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let connector = Connector::from_url(url).unwrap_or_else(|e| panic!("{url}: {}", e.message));
    let (client, mut connection) = connector
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let (tx, payloads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap_or_else(|e| panic!("LISTEN {channel}: {e}"));
    (client, payloads)
}

/// Tries once to connect to `url` and run `SELECT 1`, within `limit`.
async fn answers(url: &str, limit: Duration) -> bool {
    let attempt = async {
        let (client, connection) = Connector::from_url(url).ok()?.connect().await.ok()?;
        let connection = tokio::spawn(connection);
        let ok = client.simple_query("SELECT 1").await.is_ok();
        drop(client);
        let _ = connection.await;
        Some(ok)
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(true)))
}

/// Writes a fresh random secret (64 hex digits from /dev/urandom) to `dir/peer-token`: a
/// `--peer-token-file` for a server of the tests. Returns the file's path.
pub fn write_peer_token(dir: &Path) -> PathBuf {
    use std::io::Read;
    let mut secret = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("peer-token");
    fs::write(&path, format!("{hex}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The binary's shared cluster (started by the first [`PgCluster::shared`]).
static SHARED: OnceLock<PgCluster> = OnceLock::new();
/// The binary's shared TLS-only cluster (started by the first [`PgCluster::shared_tls`]).
static SHARED_TLS: OnceLock<PgCluster> = OnceLock::new();

/// At exit: stops the shared clusters and removes their directories.
extern "C" fn shut_down_shared() {
    for cluster in [SHARED.get(), SHARED_TLS.get()].into_iter().flatten() {
        cluster.shut_down();
    }
}

/// Registers [`shut_down_shared`] once.
fn shut_down_shared_at_exit() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: registers a plain function; it only signals, waits and removes files.
        let registered = unsafe { libc::atexit(shut_down_shared) };
        assert_eq!(registered, 0, "atexit for the shared PostgreSQL clusters");
    });
}

/// Whether `CALLDESK_TEST_PG_TLS=1`: the shared cluster is then TLS-only.
fn tls_by_default() -> bool {
    match std::env::var("CALLDESK_TEST_PG_TLS").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "0") => false,
        Ok("1") => true,
        other => panic!("CALLDESK_TEST_PG_TLS={other:?}: expected 0 or 1"),
    }
}

impl PgCluster {
    /// A cluster of its own (initdb, then the postmaster on a free port), ready for
    /// connections. Blocks for the second or two this takes. For tests that stop and restart
    /// PostgreSQL; the others use [`PgCluster::shared`].
    pub fn start() -> PgCluster {
        PgCluster::start_with(false)
    }

    /// Like [`PgCluster::start`], TLS-only (see the module's doc).
    pub fn start_tls() -> PgCluster {
        PgCluster::start_with(true)
    }

    fn start_with(tls: bool) -> PgCluster {
        remove_stale_dirs();
        let bin = bin_dir();
        let owner = owner();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("a temp dir for PostgreSQL");
        let root = dir.path().to_path_buf();
        if let Some((uid, gid)) = owner {
            chown(&root, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot give {} to postgres: {e}", root.display()));
        }
        let mut copy = Command::new("cp");
        copy.arg("-a")
            .arg(template(&bin, owner))
            .arg(root.join("data"));
        run(copy, owner, "cp -a of the template cluster");
        let tls = tls.then(|| configure_tls(&root, owner));

        let mut cluster = PgCluster {
            dir: Mutex::new(Some(dir)),
            root,
            bin,
            owner,
            port: 0,
            postmaster: Mutex::new(None),
            tls,
        };
        // A free port can be taken by someone else before the postmaster binds it: then try
        // another.
        for attempt in 1..=5 {
            cluster.port = free_addr().port();
            let postmaster = cluster.spawn_postmaster();
            let exit = postmaster.exit.clone();
            *lock(&cluster.postmaster) = Some(postmaster);
            match block_on(cluster.wait_ready(&exit)) {
                Ok(()) => return cluster,
                Err(why) if attempt < 5 && tail(&cluster.log(), 4096).contains("in use") => {
                    eprintln!("PostgreSQL on port {}: {why}; another port", cluster.port);
                    lock(&cluster.postmaster).take();
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The cluster of this test binary: started by the first call, shared by every test of the
    /// binary (each takes databases of its own with [`PgCluster::database`]), stopped at exit.
    /// TLS-only when `CALLDESK_TEST_PG_TLS=1` (it is then [`PgCluster::shared_tls`]).
    pub fn shared() -> &'static PgCluster {
        if tls_by_default() {
            return PgCluster::shared_tls();
        }
        SHARED.get_or_init(|| {
            let cluster = PgCluster::start();
            shut_down_shared_at_exit();
            cluster
        })
    }

    /// The TLS-only cluster of this test binary, shared like [`PgCluster::shared`].
    pub fn shared_tls() -> &'static PgCluster {
        SHARED_TLS.get_or_init(|| {
            let cluster = PgCluster::start_tls();
            shut_down_shared_at_exit();
            cluster
        })
    }

    /// A TLS-only cluster's CA and its file; None for a plain one.
    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.postmaster).as_ref().map(|p| p.pid)
    }

    /// The URL of database `name` (as the superuser `postgres`, without password); for a
    /// TLS-only cluster with `sslmode=verify-full` and its CA as `sslrootcert`.
    pub fn url(&self, name: &str) -> String {
        let url = format!("postgres://postgres@127.0.0.1:{}/{name}", self.port);
        match &self.tls {
            None => url,
            Some(tls) => format!(
                "{url}?sslmode=verify-full&sslrootcert={}",
                tls.ca_file.display()
            ),
        }
    }

    /// The postmaster's log (its stderr).
    pub fn log(&self) -> PathBuf {
        self.root.join("postmaster.log")
    }

    /// Creates a database with a name of its own and returns its URL. Blocks for the few
    /// tens of milliseconds this takes (CREATE DATABASE copies template1).
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "calldesk_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.url("postgres");
        block_on(async {
            let client = connect(&admin).await;
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        });
        self.url(&name)
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start), as a
    /// crash of PostgreSQL looks to its clients; returns once the postmaster has exited.
    pub async fn stop_immediate(&self) {
        self.stop(libc::SIGQUIT, "immediate").await;
    }

    /// Fast shutdown (SIGINT: sessions are ended, then a checkpoint), as an administrator's
    /// restart does; returns once the postmaster has exited.
    pub async fn stop_fast(&self) {
        self.stop(libc::SIGINT, "fast").await;
    }

    /// Starts the postmaster again on the same data directory and port; returns once it
    /// accepts connections.
    pub async fn start_again(&self) {
        assert!(
            self.pid().is_none(),
            "start_again: the postmaster is still running"
        );
        let postmaster = self.spawn_postmaster();
        let exit = postmaster.exit.clone();
        *lock(&self.postmaster) = Some(postmaster);
        if let Err(why) = self.wait_ready(&exit).await {
            panic!("{why}");
        }
    }

    async fn stop(&self, signal: i32, mode: &str) {
        let postmaster = lock(&self.postmaster)
            .take()
            .unwrap_or_else(|| panic!("stop ({mode}): the postmaster is not running"));
        let pid = postmaster.pid;
        let exit = postmaster.exit.clone();
        if !exit.has_exited() {
            // SAFETY: kill has no memory preconditions; pid is our unreaped child (its waiting
            // thread has not seen it exit), so it names no other process.
            unsafe { libc::kill(pid as i32, signal) };
        }
        let waited = tokio::task::spawn_blocking(move || exit.wait(PG_STOP_TIMEOUT))
            .await
            .expect("the waiting task");
        if waited.is_none() {
            // Put it back so that Drop kills it.
            *lock(&self.postmaster) = Some(postmaster);
            panic!(
                "PostgreSQL (pid {pid}) did not stop ({mode}) within {PG_STOP_TIMEOUT:?}; log:\n{}",
                tail(&self.log(), 4096)
            );
        }
    }

    /// Starts the postmaster from a thread that then waits for it: PR_SET_PDEATHSIG fires when
    /// the thread that forked the child ends, and this one ends only with the postmaster (or
    /// with the process).
    fn spawn_postmaster(&self) -> Postmaster {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log().display()));
        let log_too = log.try_clone().expect("dup the log");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.root.display()))
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "full_page_writes=on", "-c", "max_connections=200"])
            // Tests hold little data: less shared memory for the clusters running at once.
            .args(["-c", "shared_buffers=32MB"])
            .args(self.tls.as_ref().map_or(Vec::new(), |_| {
                [
                    "ssl=on",
                    "ssl_cert_file=server.pem",
                    "ssl_key_file=server.key",
                ]
                .into_iter()
                .chain(["ssl_ca_file=ca.pem"])
                .flat_map(|setting| ["-c".to_string(), setting.to_string()])
                .collect()
            }))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec. They run
        // after std's setuid, which would otherwise clear the death signal.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the death signal was set.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the test process is gone"));
                }
                Ok(())
            });
        }
        let exit = Arc::new(Exit::default());
        let exit_of_thread = exit.clone();
        let (started, pid) = mpsc::channel();
        thread::Builder::new()
            .name(format!("postmaster-{}", self.port))
            .spawn(move || {
                let mut child = match command.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(child.id()));
                exit_of_thread.set(child.wait());
            })
            .expect("a thread for the postmaster");
        let pid = pid
            .recv()
            .expect("the postmaster's thread reports")
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e}", self.bin.join("postgres").display())
            });
        Postmaster { pid, exit }
    }

    /// Polls `SELECT 1` until it answers (Ok), the postmaster exits, or PG_START_TIMEOUT
    /// passes (Err: why, with the end of the log).
    async fn wait_ready(&self, exit: &Exit) -> Result<(), String> {
        let url = self.url("postgres");
        let deadline = Instant::now() + PG_START_TIMEOUT;
        loop {
            if exit.has_exited() {
                return Err(format!(
                    "PostgreSQL on port {} exited while starting ({}); log:\n{}",
                    self.port,
                    exit.wait(Duration::ZERO).unwrap_or_default(),
                    tail(&self.log(), 4096)
                ));
            }
            if answers(&url, Duration::from_secs(2)).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL on port {} did not accept connections within \
                     {PG_START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    tail(&self.log(), 4096)
                ));
            }
            // Bounded polling: nothing announces readiness but a connection that succeeds.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the postmaster (immediate shutdown, SIGKILL if that hangs) and removes the
    /// directory. Blocking; runs no tokio (it also runs at exit).
    fn shut_down(&self) {
        if let Some(postmaster) = lock(&self.postmaster).take() {
            for signal in [libc::SIGQUIT, libc::SIGKILL] {
                if postmaster.exit.has_exited() {
                    break;
                }
                // SAFETY: as in `stop`: our unreaped child.
                unsafe { libc::kill(postmaster.pid as i32, signal) };
                if postmaster.exit.wait(PG_STOP_TIMEOUT).is_some() {
                    break;
                }
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- PostgreSQL log ({}) ---\n{}",
                self.log().display(),
                tail(&self.log(), 8192)
            );
        }
        drop(lock(&self.dir).take());
    }
}

/// Makes `root/data` TLS-only: a CA, the server's certificate for localhost and 127.0.0.1
/// (in the data directory, where the postmaster's relative paths start; the key readable by
/// its owner only, as PostgreSQL demands), and a pg_hba.conf without a plaintext TCP line.
fn configure_tls(root: &Path, owner: Option<(u32, u32)>) -> ClusterTls {
    use std::os::unix::fs::PermissionsExt;
    let data = root.join("data");
    let ca = pki::Ca::new("calldesk test PostgreSQL CA");
    let (cert, key) = ca
        .leaf("localhost", &["localhost", "127.0.0.1"])
        .write(&data, "server");
    let ca_file = pki::write(&data, "ca.pem", ca.pem());
    let hba = pki::write(
        &data,
        "pg_hba.conf",
        "local all all trust\n\
         hostssl all certified 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 trust\n",
    );
    for file in [&cert, &key, &ca_file, &hba] {
        if let Some((uid, gid)) = owner {
            chown(file, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot give {} to postgres: {e}", file.display()));
        }
        fs::set_permissions(file, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", file.display()));
    }
    ClusterTls { ca, ca_file }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.shut_down();
    }
}
