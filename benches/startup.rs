//! Start-up time (to SERVING) and resident memory of `calldesk serve` on a store holding many
//! interactions, beside the same on an empty store. The store is generated once, through the
//! store's own writer, and kept under target/ for later runs.
//!
//!     cargo bench --bench startup [-- INTERACTIONS]      (default 1,000,000)

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use calldesk::{
    manager::lifecycle::{self, Input, NewCall},
    proto,
    store::{self, Durability, Write, WriteOp},
};
use prost::Message;
use tokio::sync::mpsc;

/// Fills `dir` with `count` COMPLETED interactions of three events each (dial, busy, complete).
fn generate(dir: &Path, count: usize) {
    let (_store, conn, _) = store::open(dir, Durability::Normal).expect("open store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        const IN_FLIGHT: usize = 4096;
        let (done_tx, mut done) = mpsc::channel(IN_FLIGHT);
        let writer = store::start_writer(conn, IN_FLIGHT, store::MAX_BATCH, done_tx);
        let now = SystemTime::now();
        let mut outstanding = 0;
        for n in 0..count {
            let created = lifecycle::create(
                NewCall {
                    id: uuid::Uuid::now_v7().to_string(),
                    agent_id: format!("agent-{}", n % 1000),
                    phone_number: "+12025550101".into(),
                    associated_object: None,
                    request_id: None,
                },
                now,
            );
            let busy = lifecycle::apply(&created.interaction, Input::Busy, now).expect("busy");
            let completed =
                lifecycle::apply(&busy.interaction, Input::WrapUpTimeout, now).expect("complete");
            let [created, busy, completed] =
                [&created, &busy, &completed].map(|e| Arc::new(proto::InteractionEvent::from(e)));
            let ops = [
                WriteOp::Create {
                    payload: created.encode_to_vec().into(),
                    event: created,
                    idempotency: None,
                    clear_dialpad: None,
                },
                WriteOp::Append {
                    payload: busy.encode_to_vec().into(),
                    event: busy,
                },
                WriteOp::Append {
                    payload: completed.encode_to_vec().into(),
                    event: completed,
                },
            ];
            for op in ops {
                while outstanding >= IN_FLIGHT {
                    let c = done.recv().await.expect("writer");
                    c.result.expect("commit");
                    outstanding -= c.tokens.len();
                }
                writer.submit(Write { token: (), op }).expect("submit");
                outstanding += 1;
            }
            if n % 100_000 == 0 && n > 0 {
                eprintln!("  generated {n}");
            }
        }
        while outstanding > 0 {
            let c = done.recv().await.expect("writer");
            c.result.expect("commit");
            outstanding -= c.tokens.len();
        }
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .expect("close");
    });
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts the server on `dir`; returns time to SERVING and RSS then.
fn start_once(dir: &Path) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_calldesk"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn calldesk");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let elapsed = start.elapsed();
    assert!(
        line.starts_with("calldesk listening on"),
        "unexpected: {line:?}"
    );
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, rss)
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let full = base.join(format!("store-{count}"));
    if !full.join(store::DB_FILE).exists() {
        eprintln!(
            "generating a store of {count} completed interactions in {} ...",
            full.display()
        );
        let t = Instant::now();
        let partial = base.join(format!("store-{count}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        generate(&partial, count);
        std::fs::rename(&partial, &full).expect("rename");
        eprintln!("  generated in {:.1?}", t.elapsed());
    }
    let size: u64 = std::fs::read_dir(&full)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let empty = tempfile::tempdir().expect("temp dir");
    println!(
        "start-up to SERVING; store of {count} interactions, {} MiB on disk",
        size >> 20
    );
    for round in 1..=3 {
        let (te, re) = start_once(empty.path());
        let (tf, rf) = start_once(&full);
        println!(
            "round {round}: empty store {te:>8.1?} {:>6.1} MiB RSS | {count} interactions {tf:>8.1?} {:>6.1} MiB RSS",
            re as f64 / 1024.0,
            rf as f64 / 1024.0
        );
    }
}
