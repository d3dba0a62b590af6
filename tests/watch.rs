//! WatchInteraction and WatchInteractions: order, resumption, the end after COMPLETED,
//! NOT_FOUND, live-only WatchInteractions, and UNAVAILABLE on shutdown.

mod support;

use std::time::Duration;

use calldesk::proto::{CallProgress as P, InteractionState as S};
use support::{in_process::TestServer, *};
use tonic::Code;

/// Drives a call on NUM_OK through answer, hold, resume, end and complete (7 events).
async fn drive_to_completion(c: &mut Client, id: &str) {
    let mut w = watch(c, id, 0).await;
    wait_for_state(&mut w, S::Delivered).await;
    hold(c, id).await.expect("HoldCall");
    resume(c, id).await.expect("ResumeCall");
    end(c, id).await.expect("EndCall");
    complete(c, id, "ok", "").await.expect("Complete");
    collect_until_completed(&mut w, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_zero_sees_every_event_in_order_then_ends() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let id = start_call(&mut c, NUM_OK).await;
    let mut w = watch(&mut c, &id, 0).await;
    let mut driver = c.clone();
    let drive_id = id.clone();
    let drive = tokio::spawn(async move { drive_to_completion(&mut driver, &drive_id).await });
    let (events, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("the stream ends with OK after COMPLETED");
    drive.await.unwrap();
    assert_eq!(seqs(&events), (1..=7).collect::<Vec<_>>());
    assert_well_formed(&events);
    assert_eq!(state_of(events.last().unwrap().state), S::Completed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_after_sequence() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let id = start_call(&mut c, NUM_OK).await;
    drive_to_completion(&mut c, &id).await;

    // The whole history from the store, then OK.
    let mut w = watch(&mut c, &id, 0).await;
    let (all, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("ends with OK");
    assert_eq!(seqs(&all), (1..=7).collect::<Vec<_>>());
    assert_well_formed(&all);

    // From 2: exactly 3..=7, identical to the full history's.
    let mut w = watch(&mut c, &id, 2).await;
    let (rest, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("ends with OK");
    assert_eq!(seqs(&rest), vec![3, 4, 5, 6, 7]);
    assert_eq!(
        rest,
        all[2..].to_vec(),
        "replayed events are the same events"
    );

    // From 6: only COMPLETED.
    let mut w = watch(&mut c, &id, 6).await;
    let (rest, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("ends with OK");
    assert_eq!(summary(&rest), vec![(7, S::Completed, P::Ended)]);

    // From 7 (the COMPLETED event): ends at once, with OK and nothing.
    let mut w = watch(&mut c, &id, 7).await;
    let (rest, end) = collect_to_end(&mut w, Duration::from_secs(2)).await;
    end.unwrap_or_else(|s| panic!("after_sequence 7: should end with OK, got {s:?}"));
    assert!(rest.is_empty(), "after_sequence 7: got {rest:#?}");
    // Beyond it: no such sequence.
    for after in [8, 1000] {
        let status = watch_err(&mut c, &id, after).await;
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "after_sequence {after}: {status:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_mid_call_gets_history_then_live() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, first, seen) = call_until(&mut c, NUM_OK, S::Delivered).await;
    assert_eq!(seqs(&seen), vec![1, 2, 3]);
    drop(first);

    // A client that lost its stream after sequence 1 resumes from there.
    let mut w = watch(&mut c, &id, 1).await;
    let history = wait_for(&mut w, WAIT, |e| e.sequence == 3).await;
    assert_eq!(seqs(&history), vec![2, 3]);
    assert_eq!(history[..], seen[1..]);

    // Then live events follow on the same stream.
    hold(&mut c, &id).await.expect("HoldCall");
    let e = next_event(&mut w, WAIT).await;
    assert_eq!((e.sequence, state_of(e.state)), (4, S::Hold));
    end(&mut c, &id).await.expect("EndCall");
    let e = next_event(&mut w, WAIT).await;
    assert_eq!((e.sequence, state_of(e.state)), (5, S::WrapUp));
    complete(&mut c, &id, "", "").await.expect("Complete");
    let e = next_event(&mut w, WAIT).await;
    assert_eq!((e.sequence, state_of(e.state)), (6, S::Completed));
    assert_ends_ok(&mut w).await;

    // Resuming from the last live sequence (3) while the call was live gives exactly the
    // events after it.
    let mut w = watch(&mut c, &id, 3).await;
    let (rest, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("ends with OK");
    assert_eq!(seqs(&rest), vec![4, 5, 6]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_unknown_is_not_found() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let status = watch_err(&mut c, "01970000-0000-7000-8000-000000000000", 0).await;
    assert_code(&status, Code::NotFound);
    let id = start_call(&mut c, NUM_OK).await;
    let mut bob = server.client("bob");
    let status = watch_err(&mut bob, &id, 0).await;
    assert_code(&status, Code::NotFound);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_interactions_is_live_only_and_covers_all_calls() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    // An interaction that is over before the watch starts.
    let (old, _w_old, _) = call_until(&mut c, NUM_BUSY, S::WrapUp).await;

    let mut all = watch_all(&mut c).await;

    // Two new calls; the old one only completes.
    let a = start_call(&mut c, NUM_BUSY).await;
    let b = start_call(&mut c, NUM_FAILED).await;
    complete(&mut c, &old, "", "").await.expect("Complete old");
    for id in [&a, &b] {
        let (_w, _) = watch_until(&mut c, id, S::WrapUp).await;
        complete(&mut c, id, "", "").await.expect("Complete");
    }

    // Until both new calls are COMPLETED.
    let mut done = 0;
    let events = wait_for(&mut all, WAIT, |e| {
        if (e.interaction_id == a || e.interaction_id == b) && e.state == S::Completed as i32 {
            done += 1;
        }
        done == 2
    })
    .await;
    let of = |id: &str| -> Vec<calldesk::proto::InteractionEvent> {
        events
            .iter()
            .filter(|e| e.interaction_id == id)
            .cloned()
            .collect()
    };
    // No history of the old interaction: only its live COMPLETED event (sequence 3).
    assert_eq!(
        seqs(&of(&old)),
        vec![3],
        "WatchInteractions carries no history"
    );
    // Every event of each new call, in order.
    assert_eq!(seqs(&of(&a)), vec![1, 2, 3]);
    assert_eq!(seqs(&of(&b)), vec![1, 2, 3]);
    assert_well_formed(&of(&a));
    assert_well_formed(&of(&b));
    assert_eq!(
        events.len(),
        7,
        "unexpected events: {:#?}",
        summary(&events)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_interactions_without_header_is_the_default_agent() {
    let server = TestServer::start().await;
    let mut anon = server.anonymous_client();
    let mut all = watch_all(&mut anon).await;
    let mut named = server.client("default");
    let id = start_call(&mut named, NUM_BUSY).await;
    let e = next_event(&mut all, WAIT).await;
    assert_eq!(e.interaction_id, id);
    assert_eq!(e.sequence, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut server = TestServer::start().await;
    let mut c = server.client("alice");
    let (_id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    let mut all = watch_all(&mut c).await;

    let running = server.take_running();
    let stopping = tokio::spawn(async move { running.shutdown().await });

    // Events may still come (e.g. the call ending with SERVER_RESTART), then UNAVAILABLE.
    for (name, stream) in [
        ("WatchInteraction", &mut w),
        ("WatchInteractions", &mut all),
    ] {
        let (events, end) = collect_to_end(stream, WAIT).await;
        match end {
            Ok(()) => panic!("{name} ended with OK on shutdown; events {events:#?}"),
            Err(status) => assert_eq!(
                status.code(),
                Code::Unavailable,
                "{name} ended with {status:?}"
            ),
        }
        for e in &events {
            assert_ne!(
                e.state,
                S::Completed as i32,
                "{name}: nothing completed the call"
            );
        }
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown finishes")
        .unwrap()
        .expect("clean shutdown");
    server.shutdown().await;
}
