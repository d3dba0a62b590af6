//! Commits per second of the store's writer, with and without group commit, durable
//! (`synchronous=FULL`). Writes arrive as they do under load: many in flight at once, one
//! new interaction each. The two modes alternate so that a noisy machine hurts both alike.
//!
//!     cargo bench --bench store_commits [-- WRITES IN_FLIGHT]

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use calldesk::{
    domain,
    manager::lifecycle::{self, NewCall},
    proto,
    store::{self, Durability, Write, WriteOp},
};
use prost::Message;
use tokio::sync::mpsc;

fn event(n: usize) -> Arc<proto::InteractionEvent> {
    let event = lifecycle::create(
        NewCall {
            id: format!("bench-{n:08}-{}", uuid::Uuid::now_v7()),
            agent_id: format!("agent-{}", n % 100),
            phone_number: "+12025550100".into(),
            associated_object: Some(domain::AssociatedObject {
                id: "003XX".into(),
                object_type: "contact".into(),
                display_name: "Ann Lee".into(),
                display_type: "Contact".into(),
                custom_fields: [("tier".to_owned(), "gold".to_owned())].into(),
            }),
            request_id: None,
            caller_id: String::new(),
        },
        SystemTime::now(),
    );
    Arc::new(proto::InteractionEvent::from(&event))
}

/// Writes `writes` interactions with at most `in_flight` outstanding; returns writes/s and
/// the number of transactions.
fn run(max_batch: usize, writes: usize, in_flight: usize) -> (f64, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_store, conn, _) = store::open(dir.path(), Durability::Full).expect("open store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (done_tx, mut done) = mpsc::channel(in_flight);
        let writer = store::start_writer(conn, in_flight, max_batch, done_tx);
        let events: Vec<_> = (0..writes).map(event).collect();
        let start = Instant::now();
        let mut sent = 0;
        let mut completed = 0;
        while completed < writes {
            while sent < writes && sent - completed < in_flight {
                let op = WriteOp::Create {
                    event: events[sent].clone(),
                    payload: events[sent].encode_to_vec().into(),
                    idempotency: None,
                    clear_dialpad: None,
                    reservation: None,
                };
                if writer
                    .submit(Write {
                        token: sent,
                        op,
                        span: tracing::Span::none(),
                    })
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            let c = done.recv().await.expect("writer alive");
            c.result.expect("commit");
            completed += c.tokens.len();
        }
        let elapsed = start.elapsed();
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .expect("close");
        (writes as f64 / elapsed.as_secs_f64(), elapsed)
    })
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let writes = args.first().copied().unwrap_or(2000);
    let in_flight = args.get(1).copied().unwrap_or(256);
    println!("store commits: {writes} new interactions, {in_flight} in flight, synchronous=FULL");
    let (mut single, mut group) = (vec![], vec![]);
    for round in 1..=3 {
        let (s, ds) = run(1, writes, in_flight);
        let (g, dg) = run(store::MAX_BATCH, writes, in_flight);
        println!(
            "round {round}: one commit per write {s:>9.0} writes/s ({ds:.2?}) | group commit {g:>9.0} writes/s ({dg:.2?})"
        );
        single.push(s);
        group.push(g);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, g) = (median(&mut single), median(&mut group));
    println!(
        "median: one commit per write {s:.0} writes/s, group commit {g:.0} writes/s, ratio {:.1}x",
        g / s
    );
}
