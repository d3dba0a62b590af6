//! Resource exhaustion: what one client (in development mode, anyone who can connect) can make
//! the server hold, and that it gives it back. Each test runs the real binary as a child process
//! and reads its RSS from /proc; figures are printed, and only generous bounds are asserted.

mod support_process;

use std::time::Duration;

use calldesk::proto::{
    interaction_service_client::InteractionServiceClient, WatchInteractionsRequest,
};
use support_process::ServerProcess;
use tonic::{transport::Endpoint, Request};

/// The server's resident set in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Opens and closes one WatchInteractions stream for each of `count` distinct agents, `parallel`
/// at a time over 4 connections.
async fn churn_agent_watchers(addr: &str, first: usize, count: usize, parallel: usize) {
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect"),
        );
    }
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(first));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..parallel {
        let mut client = InteractionServiceClient::new(channels[w % channels.len()].clone());
        let next = next.clone();
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= first + count {
                    return;
                }
                let mut request = Request::new(WatchInteractionsRequest {});
                request
                    .metadata_mut()
                    .insert("x-agent-id", format!("churn-{n}").parse().unwrap());
                let stream = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.watch_interactions(request),
                )
                .await
                .expect("WatchInteractions answers")
                .expect("WatchInteractions opens");
                // Dropping it resets the stream: the watcher leaves.
                drop(stream);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("worker");
    }
}

/// Waits (bounded) for the server's RSS to settle: the streams' ends are processed after the
/// client has let go.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) < 256 {
            return now;
        }
        last = now;
    }
    last
}

/// Issue: every agent id that ever watched kept ~32 KiB (its WatchInteractions feed) for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_stop_watching_leave_nothing_behind() {
    const AGENTS: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    // Warm up: the first streams grow pools and tables that are not per agent.
    churn_agent_watchers(server.addr(), 0, 200, 32).await;
    let start = settled_rss(server.pid()).await;
    churn_agent_watchers(server.addr(), 1_000_000, AGENTS, 32).await;
    let after = settled_rss(server.pid()).await;
    churn_agent_watchers(server.addr(), 2_000_000, AGENTS, 32).await;
    let again = settled_rss(server.pid()).await;
    println!(
        "RSS after opening and closing a WatchInteractions stream for {AGENTS} distinct agents: \
         {:.1} MiB -> {:.1} MiB; {AGENTS} more: {:.1} MiB",
        mib(start),
        mib(after),
        mib(again)
    );
    // Before the fix: ~32 KiB per agent, 156 MiB per round. Bound generously.
    assert!(
        again.saturating_sub(start) < 24 * 1024,
        "RSS grew from {:.1} MiB to {:.1} MiB over {} agents that all stopped watching",
        mib(start),
        mib(again),
        2 * AGENTS
    );
}
