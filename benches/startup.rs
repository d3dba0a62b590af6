//! Start-up time (to listening, and to health SERVING) and resident memory of `calldesk serve`
//! on a store holding many interactions, beside the same on an empty store. A store over 16 MiB
//! is checked in the background after listening, NOT_SERVING until the check passes: the two
//! times differ by that check. The store is generated once, through the store's own writer, and
//! kept under target/ for later runs.
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
                    caller_id: String::new(),
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
                    reservation: None,
                },
                WriteOp::Append {
                    payload: busy.encode_to_vec().into(),
                    event: busy,
                    transfer_key: None,
                },
                WriteOp::Append {
                    payload: completed.encode_to_vec().into(),
                    event: completed,
                    transfer_key: None,
                },
            ];
            for op in ops {
                while outstanding >= IN_FLIGHT {
                    let c = done.recv().await.expect("writer");
                    c.result.expect("commit");
                    outstanding -= c.tokens.len();
                }
                writer
                    .submit(Write {
                        token: (),
                        op,
                        span: tracing::Span::none(),
                    })
                    .expect("submit");
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

/// What one start took: to the listening line, to health SERVING (a store over 16 MiB is
/// checked in the background first), and the RSS then.
struct Started {
    listening: Duration,
    serving: Duration,
    rss_kib: u64,
}

/// Waits for health SERVING at `addr` (Health/Watch, which reports every change).
async fn serving(addr: &str) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("Health/Watch")
        .into_inner();
    while let Some(reply) = stream.message().await.expect("Health/Watch stream") {
        if reply.status == ServingStatus::Serving as i32 {
            return;
        }
    }
    panic!("Health/Watch ended before SERVING");
}

/// Starts the server on `dir`, waits for SERVING, and stops it.
fn start_once(dir: &Path) -> Started {
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
    let listening = start.elapsed();
    let addr = line
        .strip_prefix("calldesk listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .trim()
        .to_owned();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(serving(&addr));
    let serving = start.elapsed();
    let rss_kib = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Started {
        listening,
        serving,
        rss_kib,
    }
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
        "start-up to listening / to SERVING; store of {count} interactions, {} MiB on disk",
        size >> 20
    );
    for round in 1..=3 {
        let e = start_once(empty.path());
        let f = start_once(&full);
        println!(
            "round {round}: empty store {:>8.1?} / {:>8.1?} {:>5.1} MiB RSS | {count} interactions {:>8.1?} / {:>8.1?} {:>5.1} MiB RSS",
            e.listening,
            e.serving,
            e.rss_kib as f64 / 1024.0,
            f.listening,
            f.serving,
            f.rss_kib as f64 / 1024.0
        );
    }
}
