//! Store faults, each on the real binary with a real SQLite file: a full disk (a 1 MiB tmpfs)
//! and its recovery, a damaged file (one page overwritten), the file deleted while running,
//! the WAL left by a clean shutdown, a stalled disk (ext4 on a loop device, frozen with
//! fsfreeze) under SIGTERM, a truncated (0-byte) or headerless file, and two servers starting
//! at once on a fresh data dir.
//!
//! Mounting needs root (CI runs the tests as root); without it those tests print SKIPPED, or
//! fail under `CI` unless `CALLDESK_TEST_ALLOW_SKIP` is set (`support::skip`).
//! Every server here is on SQLite whatever CALLDESK_TEST_STORE says: the file is under test.

mod support;

use std::{
    collections::HashMap,
    ffi::OsString,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use calldesk::proto::{
    AssociatedObject, CompleteInteractionRequest, InteractionState as S, StartCallRequest,
};
use support::{process::*, *};
use tonic::{transport::Endpoint, Code, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// The fast simulated switch, and room for every call the tests make.
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = fast_flags(&["--max-active-calls", "1000"]);
    flags.extend(extra);
    flags
}

// ---------------------------------------------------------------------------------------------
// Health

fn health_client(addr: &str) -> HealthClient<tonic::transport::Channel> {
    HealthClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
    )
}

async fn health_of(addr: &str, service: &str) -> ServingStatus {
    let status = tokio::time::timeout(
        WAIT,
        health_client(addr).check(HealthCheckRequest {
            service: service.to_string(),
        }),
    )
    .await
    .expect("Health/Check answers")
    .expect("Health/Check")
    .into_inner()
    .status;
    ServingStatus::try_from(status).expect("a serving status")
}

/// Follows Health/Watch for `""` until it reports `want`, at most `timeout`; also checks that
/// `calldesk.v1.InteractionService` says the same.
async fn wait_health(addr: &str, want: ServingStatus, timeout: Duration) {
    wait_for_health(addr, "", want, timeout).await;
    // The service's status changes with the server's (it may have moved on since: look again
    // a few times).
    let mut service = ServingStatus::Unknown;
    for _ in 0..50 {
        service = health_of(addr, "calldesk.v1.InteractionService").await;
        if service == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server is {want:?} but calldesk.v1.InteractionService is {service:?}");
}

// ---------------------------------------------------------------------------------------------
// Small file systems

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A mounted file system, unmounted (lazily) on drop.
struct Mount {
    dir: tempfile::TempDir,
    /// The image of a loop-mounted file system.
    image: Option<PathBuf>,
}

impl Mount {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A tmpfs of `size` (e.g. `1m`), or None (with the reason printed) where mounting is not
    /// possible.
    fn tmpfs(test: &str, size: &str) -> Option<Mount> {
        if !is_root() {
            skip(test, "mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().to_str().expect("utf-8 path").to_owned();
        if let Err(e) = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &target,
            ],
        ) {
            skip(test, &e);
            return None;
        }
        Some(Mount { dir, image: None })
    }

    /// A fresh ext4 of `mib` MiB on a loop device (a file system that can be frozen).
    fn ext4_loop(test: &str, mib: u64) -> Option<Mount> {
        if !is_root() {
            skip(test, "a loop mount needs root");
            return None;
        }
        let image = tempfile::NamedTempFile::new()
            .expect("image file")
            .into_temp_path()
            .keep()
            .expect("keep the image");
        fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_len(mib * 1024 * 1024))
            .expect("size the image");
        let image_s = image.to_str().expect("utf-8").to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().to_str().expect("utf-8 path").to_owned();
        let made = run("mkfs.ext4", &["-q", "-F", &image_s])
            .and_then(|()| run("mount", &["-o", "loop", &image_s, &target]));
        if let Err(e) = made {
            let _ = fs::remove_file(&image);
            skip(test, &e);
            return None;
        }
        Some(Mount {
            dir,
            image: Some(image),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = self.dir.path().to_str().unwrap_or_default().to_owned();
        let _ = run("fsfreeze", &["-u", &target]);
        let _ = run("umount", &["-l", &target]);
        if let Some(image) = &self.image {
            let _ = fs::remove_file(image);
        }
    }
}

/// Thaws a frozen file system when dropped: declared after the server, so that it runs first
/// (a process with a thread stuck on a frozen file system cannot be killed).
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = run("fsfreeze", &["-u", self.0.to_str().unwrap_or_default()]);
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A StartCall whose interaction carries ~6 KB of custom fields (in every event's snapshot).
fn big_request(request_id: &str) -> StartCallRequest {
    StartCallRequest {
        phone_number: NUM_OK.to_string(),
        request_id: request_id.to_string(),
        caller_id: String::new(),
        initial_object: Some(AssociatedObject {
            id: format!("obj-{request_id}"),
            r#type: "contact".into(),
            display_name: "Ada".into(),
            display_type: "Contact".into(),
            custom_fields: (0..6)
                .map(|i| {
                    (
                        format!("field-{i}"),
                        format!("{request_id}-{i}-").repeat(200)[..1000].to_string(),
                    )
                })
                .collect::<HashMap<_, _>>(),
        }),
    }
}

async fn start_big(client: &mut Client, request_id: &str) -> Result<String, Status> {
    let resp = tokio::time::timeout(WAIT, client.start_call(big_request(request_id)))
        .await
        .unwrap_or_else(|_| panic!("StartCall({request_id}) did not answer within {WAIT:?}"))?
        .into_inner();
    Ok(resp.interaction_id.expect("interaction_id"))
}

/// Counts lines of `text` containing `needle`.
fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

// ---------------------------------------------------------------------------------------------
// 1. Disk full, and back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_not_serving_and_recovers_without_a_restart() {
    let Some(mnt) = Mount::tmpfs("a_full_disk_is_not_serving_and_recovers", "1m") else {
        return;
    };
    let data = mnt.path().join("data");
    // Ballast, freed later to give the store room again.
    let ballast = mnt.path().join("ballast");
    fs::write(&ballast, vec![7u8; 600 * 1024]).expect("ballast");
    let server = ServerProcess::start_sqlite(&data, &flags(&[])).await;
    wait_health(server.addr(), ServingStatus::Serving, WAIT).await;
    let mut c = server.client("full");

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..100 {
        match start_big(&mut c, &format!("full-{n}")).await {
            Ok(id) => acknowledged.push(id),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("100 StartCalls of 6 KB fitted in 400 KB");
    eprintln!(
        "{} StartCalls acknowledged before the disk was full; then {refused:?}",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "not one StartCall fitted");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_error_info(&refused, "STORE_DISK_FULL");

    // NOT_SERVING, and new work refused with words that say why.
    wait_health(server.addr(), ServingStatus::NotServing, WAIT).await;
    let status = start_big(&mut c, "full-more")
        .await
        .expect_err("StartCall on a full disk");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_error_info(&status, "STORE_DISK_FULL");
    assert!(
        status.message().contains("disk is full"),
        "the message should say the disk is full: {status:?}"
    );
    // Watching an acknowledged call answers (its history), it does not hang.
    let mut w = watch(&mut c, &acknowledged[0], 0).await;
    let first = tokio::time::timeout(WAIT, w.message())
        .await
        .expect("a watch on a full disk answers")
        .expect("the watch")
        .expect("its first event");
    assert_eq!(first.sequence, 1);
    drop(w);

    // Space comes back: calldesk recovers by itself, and every acknowledged call goes on.
    fs::remove_file(&ballast).expect("free the ballast");
    wait_health(server.addr(), ServingStatus::Serving, WAIT).await;
    let after = start_big(&mut c, "full-after")
        .await
        .expect("StartCall once space is back");
    acknowledged.push(after);
    for id in &acknowledged {
        let mut w = watch(&mut c, id, 0).await;
        let events = wait_for(&mut w, WAIT, |e| e.state == S::Delivered as i32).await;
        assert_eq!(
            events.last().map(|e| e.sequence),
            Some(events.len() as u64),
            "{id}: events without gap"
        );
    }
    let stderr = server.stderr_text();
    eprintln!(
        "log lines that mention the full disk: {}",
        lines_with(&stderr, "disk is full")
    );
    assert!(
        lines_with(&stderr, "database or disk is full") <= 6,
        "the full disk flooded the log:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A damaged database file

/// Runs a server on `data`, makes `calls` calls that end COMPLETED (no open interaction, no
/// idempotency key: start-up reads none of their pages), and stops it.
async fn store_with_completed_calls(data: &Path, calls: usize) {
    let mut server = ServerProcess::start_sqlite(data, &flags(&[])).await;
    let mut c = server.client("damaged");
    for _ in 0..calls {
        let id = start_call(&mut c, NUM_BUSY).await;
        let mut w = watch(&mut c, &id, 0).await;
        wait_for_state(&mut w, S::WrapUp).await;
        c.complete_interaction(CompleteInteractionRequest {
            interaction_id: id.clone(),
            disposition: "done".into(),
            notes: "x".repeat(3000),
        })
        .await
        .expect("CompleteInteraction");
    }
    drop(c);
    let status = server.sigterm().await;
    assert!(status.success(), "SIGTERM: {status}");
}

/// Overwrites one leaf page of the `events` table with pseudo-random bytes; returns its number.
fn damage_an_events_page(db: &Path) -> u64 {
    let (page, page_size) = {
        let conn = rusqlite::Connection::open(db).expect("open the store");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page_size");
        let pages: Vec<u64> = conn
            .prepare("SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, i64>(0).map(|p| p as u64))?
                    .collect::<Result<_, _>>()
            })
            .expect("dbstat");
        assert!(pages.len() >= 2, "too few events pages: {pages:?}");
        (pages[pages.len() / 2], page_size)
    };
    let mut bytes = fs::read(db).expect("read the store");
    let start = ((page - 1) * page_size) as usize;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut bytes[start..start + page_size as usize] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(db, bytes).expect("write the damaged store");
    page
}

fn assert_names_damage_and_recovery(text: &str, db: &Path) {
    let path = db.display().to_string();
    for needle in [path.as_str(), "damage", "backup", ".recover"] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}

#[test]
fn a_small_damaged_store_is_refused_at_start_with_how_to_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(store_with_completed_calls(&data, 6));
    let db = data.join("calldesk.db");
    let page = damage_an_events_page(&db);
    let out = run_to_exit(serve_args_sqlite(&data, &[]), Duration::from_secs(20));
    assert!(
        !out.status.success() && !out.stdout.contains("listening"),
        "calldesk served a store whose page {page} is random bytes; stderr:\n{}",
        out.stderr
    );
    assert_names_damage_and_recovery(&out.stderr, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_damaged_store_is_not_serving_after_the_background_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    store_with_completed_calls(&data, 3).await;
    let db = data.join("calldesk.db");
    // Past the size checked before listening: ~24 MiB of events of old interactions.
    {
        let mut conn = rusqlite::Connection::open(&db).expect("open the store");
        let tx = conn.transaction().expect("transaction");
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO events (interaction_id, sequence, payload) VALUES (?1, ?2, ?3)",
                )
                .expect("prepare");
            for n in 0..6000i64 {
                insert
                    .execute(rusqlite::params![
                        format!("old-{:05}", n / 10),
                        n % 10 + 1,
                        vec![(n % 251) as u8; 4000]
                    ])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let page = damage_an_events_page(&db);
    let started = Instant::now();
    let server = ServerProcess::start_sqlite(&data, &flags(&[])).await;
    eprintln!(
        "a {} MiB store (page {page} damaged): listening after {:?}",
        fs::metadata(&db).map(|m| m.len() >> 20).unwrap_or(0),
        started.elapsed()
    );
    // The check runs in the background; it finds the damage, and health stays NOT_SERVING.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr_text().contains("the integrity check of") {
        assert!(
            Instant::now() < deadline,
            "no integrity check result:\n{}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_health(server.addr(), ServingStatus::NotServing, WAIT).await;
    let mut c = server.client("damaged");
    let status = start_call_id(&mut c, NUM_OK, "after-damage")
        .await
        .expect_err("StartCall on a damaged store");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_error_info(&status, "STORE_CORRUPT");
    assert!(status.message().contains("corrupt"), "{status:?}");
    assert_eq!(
        health_of(server.addr(), "").await,
        ServingStatus::NotServing
    );
    assert_names_damage_and_recovery(&server.stderr_text(), &db);
}

// ---------------------------------------------------------------------------------------------
// 3. The database file deleted while running

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_file_stops_every_acknowledgement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = ServerProcess::start_sqlite(&data, &flags(&[])).await;
    let mut c = server.client("deleted");
    for n in 0..5 {
        start_call_id(&mut c, NUM_BUSY, &format!("before-{n}"))
            .await
            .expect("StartCall before the deletion");
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(data.join(format!("calldesk.db{suffix}")));
    }
    let mut acknowledged = Vec::new();
    for n in 0..10 {
        match start_call_id(&mut c, NUM_BUSY, &format!("after-{n}")).await {
            Ok(id) => acknowledged.push(id),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_error_info(&status, "STORE_REPLACED");
                assert!(
                    status.message().contains("deleted or replaced"),
                    "{status:?}"
                );
            }
        }
    }
    assert!(
        acknowledged.is_empty(),
        "{} StartCalls were acknowledged into a deleted file: {acknowledged:?}",
        acknowledged.len()
    );
    wait_health(server.addr(), ServingStatus::NotServing, WAIT).await;
    let stderr = server.stderr_text();
    assert!(stderr.contains("was deleted"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("/proc/"),
        "the log should say how to save the data:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A clean shutdown leaves one file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_leaves_the_store_in_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start_sqlite(&data, &flags(&[])).await;
    let mut c = server.client("one-file");
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = start_call_id(&mut c, NUM_BUSY, &format!("one-file-{n}"))
            .await
            .expect("StartCall");
        ids.push(id);
    }
    // Reads keep connections of their own open.
    assert_eq!(list_all(&mut c, S::Unspecified).await.len(), ids.len());
    drop(c);
    // Ctrl-C, as a user stops it in a terminal.
    send_signal(server.pid(), "-INT");
    let status = server.wait_exit(START_TIMEOUT).await;
    assert!(status.success(), "SIGINT: {status}");
    for leftover in ["calldesk.db-wal", "calldesk.db-shm"] {
        assert!(
            !data.join(leftover).exists(),
            "a clean shutdown left {leftover} beside the store"
        );
    }

    // The database file alone is the whole store.
    let copy = dir.path().join("copy");
    fs::create_dir_all(&copy).expect("mkdir");
    fs::copy(data.join("calldesk.db"), copy.join("calldesk.db")).expect("copy");
    let conn = rusqlite::Connection::open(copy.join("calldesk.db")).expect("open the copy");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM interactions", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n as usize, ids.len(), "the copied file lacks interactions");
}

// ---------------------------------------------------------------------------------------------
// 5. A stalled disk under SIGTERM

/// The states (from /proc/PID/task/*/stat) of the process's threads.
fn thread_states(pid: u32) -> Vec<(String, char)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let stat = fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            Some((name.to_owned(), rest.chars().next()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_after_the_grace_period_when_the_disk_stalls() {
    let Some(mnt) = Mount::ext4_loop("sigterm_exits_when_the_disk_stalls", 32) else {
        return;
    };
    let data = mnt.path().join("data");
    let mut server = ServerProcess::start_sqlite(
        &data,
        &flags(&["--shutdown-grace", "1s", "--request-timeout", "2s"]),
    )
    .await;
    let pid = server.pid();
    let mut c = server.client("stall");
    start_call_id(&mut c, NUM_BUSY, "stall-before")
        .await
        .expect("StartCall before the stall");
    wait_health(server.addr(), ServingStatus::Serving, WAIT).await;

    run("fsfreeze", &["-f", mnt.path().to_str().expect("utf-8")]).expect("fsfreeze -f");
    let _thaw = Thaw(mnt.path().to_owned());
    let frozen = Instant::now();
    let status = start_call_id(&mut c, NUM_BUSY, "stall-during")
        .await
        .expect_err("StartCall on a frozen disk");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    wait_health(
        server.addr(),
        ServingStatus::NotServing,
        Duration::from_secs(15),
    )
    .await;
    eprintln!("NOT_SERVING {:?} after the freeze", frozen.elapsed());
    // New work is refused at once, saying why.
    let status = start_call_id(&mut c, NUM_BUSY, "stall-refused")
        .await
        .expect_err("StartCall on a stalled disk");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_error_info(&status, "STORE_STALLED");

    send_signal(pid, "-TERM");
    let termed = Instant::now();
    // Every thread ends, but for those stuck in the kernel on the frozen disk (state D),
    // which no signal can end before the disk thaws.
    let deadline = termed + Duration::from_secs(15);
    loop {
        let states = thread_states(pid);
        let running: Vec<_> = states
            .iter()
            .filter(|(_, s)| !matches!(s, 'D' | 'Z' | 'X'))
            .collect();
        if running.is_empty() {
            eprintln!(
                "{:?} after SIGTERM only these threads are left: {states:?}",
                termed.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads still running 15 s after SIGTERM with a 1 s grace: {running:?}\n{}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(_thaw);
    let exit = server.wait_exit(WAIT).await;
    assert!(
        !exit.success(),
        "a shutdown that left writes behind exits non-zero: {exit}"
    );
    let stderr = server.stderr_text();
    assert!(
        stderr.contains("did not finish its writes"),
        "stderr:\n{stderr}"
    );

    // A restart serves, and the StartCall that saw DEADLINE_EXCEEDED may or may not exist.
    let server = ServerProcess::start_sqlite(&data, &flags(&[])).await;
    let mut c = server.client("stall");
    let listed = list_all(&mut c, S::Unspecified).await;
    eprintln!(
        "after the restart: {} interactions; the one that timed out {}",
        listed.len(),
        if listed.iter().any(|i| i.request_id == "stall-during") {
            "exists"
        } else {
            "does not exist"
        }
    );
    start_call_id(&mut c, NUM_BUSY, "stall-after")
        .await
        .expect("StartCall after the restart");
}

// ---------------------------------------------------------------------------------------------
// 6. A truncated or headerless file

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_refused_untouched(data: &Path, needle: &str) {
    let db = data.join("calldesk.db");
    let before = fs::read(&db).expect("read");
    let listing = dir_listing(data);
    let out = run_to_exit(serve_args_sqlite(data, &[]), Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "accepted {}; stderr:\n{}",
        db.display(),
        out.stderr
    );
    assert!(
        out.stderr.contains(&db.display().to_string()),
        "stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "no {needle:?} in stderr:\n{}",
        out.stderr
    );
    assert_eq!(
        fs::read(&db).expect("read"),
        before,
        "the refused file changed"
    );
    assert_eq!(dir_listing(data), listing, "files appeared or vanished");
}

#[test]
fn an_empty_database_file_is_refused_not_made_a_new_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fs::create_dir_all(&data).expect("mkdir");
    fs::write(data.join("calldesk.db"), b"").expect("0 bytes");
    assert_refused_untouched(&data, "empty (0 bytes)");

    // SQLite, but without calldesk's header and without tables.
    let data = dir.path().join("headerless");
    fs::create_dir_all(&data).expect("mkdir");
    {
        let conn = rusqlite::Connection::open(data.join("calldesk.db")).expect("sqlite");
        conn.execute_batch("PRAGMA page_size = 4096; VACUUM;")
            .expect("write a header");
    }
    assert!(fs::metadata(data.join("calldesk.db")).expect("file").len() > 0);
    assert_refused_untouched(&data, "without calldesk's header");
}

// ---------------------------------------------------------------------------------------------
// 7. The data dir's lock comes first

#[test]
fn nothing_touches_the_store_before_the_lock_is_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fs::create_dir_all(&data).expect("mkdir");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.join("calldesk.lock"))
        .expect("lock file");
    lock.try_lock().expect("take the lock");
    let out = run_to_exit(serve_args_sqlite(&data, &[]), Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "started beside a held lock:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("another calldesk"),
        "stderr:\n{}",
        out.stderr
    );
    assert_eq!(
        dir_listing(&data),
        ["calldesk.lock"],
        "a calldesk that did not get the lock made files"
    );
}

/// What one of two racing servers did.
enum Outcome {
    Listening,
    Exited(String),
}

#[test]
fn two_servers_starting_at_once_on_a_fresh_data_dir() {
    for round in 0..4 {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut children = Vec::new();
        for _ in 0..2 {
            let mut child = Command::new(BIN)
                .args(
                    serve_args_sqlite(&data, &[])
                        .iter()
                        .map(OsString::as_os_str),
                )
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start calldesk");
            let stdout = child.stdout.take().expect("stdout");
            let stderr = child.stderr.take().expect("stderr");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("calldesk listening on") {
                        let _ = tx.send(Outcome::Listening);
                        return;
                    }
                }
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
                let _ = tx.send(Outcome::Exited(text));
            });
            children.push(child);
        }
        let mut listening = 0;
        let mut refusals = Vec::new();
        for _ in 0..2 {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Outcome::Listening) => listening += 1,
                Ok(Outcome::Exited(stderr)) => refusals.push(stderr),
                Err(_) => panic!("round {round}: a server neither listened nor exited"),
            }
        }
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(
            listening, 1,
            "round {round}: {listening} servers listen; {refusals:?}"
        );
        assert!(
            refusals[0].contains("another calldesk"),
            "round {round}: the second server failed otherwise:\n{}",
            refusals[0]
        );
    }
}
