//! The PostgreSQL harness itself (tests/support/postgres.rs): a cluster gives each test a
//! database of its own, a committed row survives an immediate and a fast restart of PostgreSQL
//! on the same port, the postmaster never runs as root and never outlives the test process
//! (killed: its directory goes at the next start; ending normally: the shared cluster is
//! stopped and removed at exit); and the servers the harness starts on PostgreSQL
//! (`CALLDESK_TEST_STORE=postgres`) keep their store in a database of their own, which a
//! `calldesk serve` restarted on the same data dir finds again.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    assert_not_found, get,
    in_process::TestServer,
    postgres::{connect, PgCluster},
    process::{fast_flags, serve_args_for, store_flags, ServerProcess, BIN},
    start_call, Store, NUM_BUSY, NUM_OK,
};

/// Whether `table` exists in the database at `url`.
async fn has_table(url: &str, table: &str) -> bool {
    let client = connect(url).await;
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass");
    row.get(0)
}

/// The real user id of process `pid` (the first `Uid:` field of /proc/PID/status).
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("Uid: in /proc/PID/status")
}

#[tokio::test]
async fn each_database_is_a_fresh_one_of_the_shared_cluster() {
    let cluster = PgCluster::shared();
    assert_eq!(
        PgCluster::shared().port(),
        cluster.port(),
        "one cluster per test binary"
    );
    let started = Instant::now();
    let (a, b) = (cluster.database(), cluster.database());
    eprintln!(
        "PostgreSQL: CREATE DATABASE in {:?} (mean of 2)",
        started.elapsed() / 2
    );
    assert_ne!(a, b);
    for url in [&a, &b] {
        assert!(
            url.starts_with(&format!(
                "postgres://postgres@127.0.0.1:{}/",
                cluster.port()
            )),
            "{url}"
        );
    }

    let client = connect(&a).await;
    client
        .batch_execute("CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (1)")
        .await
        .expect("a table in a");
    assert!(has_table(&a, "only_in_a").await);
    assert!(!has_table(&b, "only_in_a").await, "b sees a's table");

    let row = client
        .query_one(
            "SELECT current_setting('fsync'), current_setting('listen_addresses'), \
             current_setting('max_connections')::int",
            &[],
        )
        .await
        .expect("settings");
    let (fsync, listen, max): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(fsync, "on", "durability is under test");
    assert_eq!(listen, "127.0.0.1");
    assert!(max >= 200, "max_connections {max}");

    let pid = cluster.pid().expect("the shared postmaster runs");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(uid_of(pid), 0, "the postmaster runs as root");
    }
}

/// The `n` of every row of the table `rows`, in order.
async fn rows_in(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query("SELECT n FROM rows ORDER BY n", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_committed_row_survives_an_immediate_and_a_fast_restart() {
    let cluster = PgCluster::start();
    let port = cluster.port();
    let url = cluster.database();
    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE rows (n int PRIMARY KEY); INSERT INTO rows VALUES (1)")
        .await
        .expect("insert 1");

    let started = Instant::now();
    cluster.stop_immediate().await;
    assert!(cluster.pid().is_none());
    let error = client
        .simple_query("SELECT 1")
        .await
        .expect_err("a session of the stopped cluster");
    assert!(
        error.is_closed() || error.as_db_error().is_some(),
        "{error}"
    );
    let refused = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
    assert!(refused.is_err(), "a connection while PostgreSQL is down");
    cluster.start_again().await;
    eprintln!(
        "PostgreSQL: immediate stop and crash-recovering start in {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.port(), port);

    let client = connect(&url).await;
    let rows = rows_in(&client).await;
    assert_eq!(rows, [1], "after the immediate stop");
    client
        .execute("INSERT INTO rows VALUES (2)", &[])
        .await
        .expect("insert 2");

    let started = Instant::now();
    cluster.stop_fast().await;
    cluster.start_again().await;
    eprintln!("PostgreSQL: fast stop and start in {:?}", started.elapsed());
    let client = connect(&url).await;
    let rows = rows_in(&client).await;
    assert_eq!(rows, [1, 2], "after the fast stop");
}

#[test]
fn dropping_a_cluster_stops_it_and_removes_its_directory() {
    let started = Instant::now();
    let cluster = PgCluster::start();
    eprintln!(
        "PostgreSQL: a cluster of its own (initdb, start, ready) in {:?}",
        started.elapsed()
    );
    let pid = cluster.pid().expect("running");
    let dir = cluster.log().parent().expect("the log's dir").to_path_buf();
    assert!(dir.join("data").is_dir());
    drop(cluster);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(!is_running(pid), "postmaster {pid} outlived its cluster");
}

/// Whether `pid` still runs (it exists and is not a zombie waiting for its reaper).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // "PID (COMM) STATE ...": the state follows the last ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
    }
}

/// Set in the child test process: `kill` (start a cluster of its own, then wait to be killed)
/// or `exit` (start the shared cluster, then end normally).
const CHILD_ENV: &str = "CALLDESK_PG_HARNESS_CHILD";

/// The child's part (see CHILD_ENV): prints `postmaster PID DIR`. Does nothing unless run by
/// the tests below.
#[test]
#[ignore = "run by the_postmaster_dies_with_the_test_process and its sibling"]
fn child_that_starts_a_cluster() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let report = |cluster: &PgCluster| {
        let dir = cluster
            .log()
            .parent()
            .expect("the log's dir")
            .display()
            .to_string();
        println!("postmaster {} {dir}", cluster.pid().expect("running"));
    };
    if mode == "exit" {
        report(PgCluster::shared());
        return;
    }
    let cluster = PgCluster::start();
    report(&cluster);
    // Blocks until the parent kills this process (or closes stdin).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Runs `child_that_starts_a_cluster` in `mode` in a process of its own: the child, and the
/// pid and directory of its postmaster.
fn spawn_child(mode: &str) -> (Child, u32, PathBuf) {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "child_that_starts_a_cluster",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the child test");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some((pid, dir)) = line
                .strip_prefix("postmaster ")
                .and_then(|rest| rest.split_once(' '))
            {
                let pid = pid.parse::<u32>().expect("a pid");
                let _ = tx.send((pid, PathBuf::from(dir)));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((pid, dir)) => (child, pid, dir),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child printed no postmaster pid within 60 s");
        }
    }
}

/// Waits (at most 10 s) for `pid` to stop running.
fn wait_until_gone(pid: u32, what: &str) {
    // Bounded polling: the death signal is asynchronous and nothing reports it to us.
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "postmaster {pid} outlived {what} by 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_postmaster_dies_with_the_test_process() {
    let (mut child, pid, dir) = spawn_child("kill");
    assert!(is_running(pid), "postmaster {pid} before the kill");
    child.kill().expect("SIGKILL the child test process");
    child.wait().expect("reap it");
    wait_until_gone(pid, "its test process");

    // The killed process could not remove its cluster's directory: the next start does.
    assert!(dir.is_dir(), "{}", dir.display());
    drop(PgCluster::start());
    assert!(!dir.exists(), "{} outlived the next start", dir.display());
}

#[test]
fn the_shared_cluster_is_stopped_and_removed_at_exit() {
    let (mut child, pid, dir) = spawn_child("exit");
    let status = child.wait().expect("wait for the child test process");
    assert!(status.success(), "the child test: {status}");
    // atexit ran before the process ended: nothing to wait for.
    assert!(
        !is_running(pid),
        "postmaster {pid} outlived the test's exit"
    );
    assert!(!dir.exists(), "{} outlived the test's exit", dir.display());
}

#[test]
fn a_servers_postgres_flags_follow_its_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    assert!(store_flags(Store::Sqlite, &one).is_empty());
    assert!(!one.exists(), "SQLite: the server makes its data dir");

    let first = store_flags(Store::Postgres, &one);
    let again = store_flags(Store::Postgres, &one);
    let other = store_flags(Store::Postgres, &two);
    assert_eq!(
        first, again,
        "a restart on the same data dir finds the same store"
    );
    assert_eq!(first[0], "--database-url");
    assert_eq!(first[2], "--peer-token-file");
    assert_ne!(first[1], other[1], "another data dir, another database");
    let token = std::fs::read_to_string(&first[3]).expect("the peer token file");
    let secret = token.lines().next().expect("a first line");
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    let other_token = std::fs::read_to_string(&other[3]).expect("the other token");
    assert_ne!(token, other_token, "each server's secret is random");
}

/// The number of tables in the public schema of the database at `url`.
async fn tables_in(url: &str) -> i64 {
    let client = connect(url).await;
    client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("count the tables")
        .get(0)
}

#[tokio::test]
async fn a_test_server_on_postgres_keeps_its_store_in_its_own_database() {
    let server = TestServer::start_on(Store::Postgres, |_| {}).await;
    let url = server.config.database_url.clone().expect("a database URL");
    let mut c = server.client("pg-harness");
    let id = start_call(&mut c, NUM_OK).await;
    assert!(tables_in(&url).await > 0, "no schema in {url}");
    assert!(
        !server.config.data_dir.exists(),
        "a server on PostgreSQL made {}",
        server.config.data_dir.display()
    );
    let other = TestServer::start_on(Store::Postgres, |_| {}).await;
    assert_ne!(other.config.database_url.as_deref(), Some(url.as_str()));
    assert_not_found(
        get(&mut other.client("pg-harness"), &id).await,
        "another server's call",
    );
    server.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn a_server_process_on_postgres_finds_its_store_again_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let start = || {
        let args = serve_args_for(Store::Postgres, "127.0.0.1:0", &data, &fast_flags(&[]));
        ServerProcess::start_command(BIN.into(), args)
    };
    let mut server = start().await;
    let mut c = server.client("pg-harness");
    let id = start_call(&mut c, NUM_BUSY).await;
    let status = server.sigterm().await;
    assert!(status.success(), "SIGTERM: {status}");
    assert!(
        !data.join("calldesk.db").exists(),
        "a server on PostgreSQL made an SQLite store"
    );

    let server = start().await;
    let got = get(&mut server.client("pg-harness"), &id)
        .await
        .expect("the call after the restart");
    assert_eq!(got.phone_number, NUM_BUSY);
}
