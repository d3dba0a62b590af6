//! The lifecycle of an interaction: every special number of the simulated switch, EndCall,
//! HoldCall, ResumeCall, CompleteInteraction, operations in the wrong state and the wrap-up
//! timeout.

mod support;

use std::time::Duration;

use calldesk::proto::{CallProgress as P, EndReason, InteractionState as S};
use support::{in_process::TestServer, *};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_answer_hold_resume_end_complete() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let id = start_call(&mut c, NUM_OK).await;
    let mut w = watch(&mut c, &id, 0).await;

    let mut events = wait_for_state(&mut w, S::Delivered).await;
    assert_eq!(
        summary(&events),
        vec![
            (1, S::DeliveryPending, P::Dialing),
            (2, S::DeliveryPending, P::Ringing),
            (3, S::Delivered, P::Connected),
        ]
    );
    let connected = events[2].interaction.clone().unwrap();
    assert!(
        connected.connect_time.is_some(),
        "connect_time set on answer"
    );
    assert!(connected.end_time.is_none());
    assert_eq!(reason_of(connected.end_reason), EndReason::Unspecified);

    let held = hold(&mut c, &id).await.expect("HoldCall");
    assert_eq!(state_of(held.state), S::Hold);
    assert_eq!(progress_of(held.progress), P::Held);
    assert_eq!(held.sequence, 4);
    assert_eq!(held.id, id);
    events.push(next_event(&mut w, WAIT).await);

    let resumed = resume(&mut c, &id).await.expect("ResumeCall");
    assert_eq!(state_of(resumed.state), S::Delivered);
    assert_eq!(progress_of(resumed.progress), P::Connected);
    assert_eq!(resumed.sequence, 5);
    events.push(next_event(&mut w, WAIT).await);

    let ended = end(&mut c, &id).await.expect("EndCall");
    assert_eq!(state_of(ended.state), S::WrapUp);
    assert_eq!(progress_of(ended.progress), P::Ended);
    assert_eq!(reason_of(ended.end_reason), EndReason::AgentHangup);
    assert_eq!(ended.sequence, 6);
    assert!(ended.end_time.is_some());
    let talk = duration_of(&ended.talk_duration).expect("talk_duration set");
    let span = ts_nanos(&ended.end_time).unwrap() - ts_nanos(&ended.connect_time).unwrap();
    assert!(span >= 0, "end_time before connect_time");
    assert!(
        (talk.as_nanos() as i128 - span).abs() <= 2_000_000,
        "talk_duration {talk:?} is not end_time - connect_time ({span} ns)"
    );
    events.push(next_event(&mut w, WAIT).await);

    let done = complete(&mut c, &id, "sale", "customer wants the gold plan")
        .await
        .expect("CompleteInteraction");
    assert_eq!(state_of(done.state), S::Completed);
    assert_eq!(done.disposition, "sale");
    assert_eq!(done.notes, "customer wants the gold plan");
    assert!(done.complete_time.is_some());
    assert_eq!(done.sequence, 7);
    events.push(next_event(&mut w, WAIT).await);
    assert_ends_ok(&mut w).await;

    assert_eq!(
        summary(&events),
        vec![
            (1, S::DeliveryPending, P::Dialing),
            (2, S::DeliveryPending, P::Ringing),
            (3, S::Delivered, P::Connected),
            (4, S::Hold, P::Held),
            (5, S::Delivered, P::Connected),
            (6, S::WrapUp, P::Ended),
            (7, S::Completed, P::Ended),
        ]
    );
    assert_well_formed(&events);

    // The stored interaction is the one of the last event.
    let stored = get(&mut c, &id).await.expect("GetInteraction");
    assert_eq!(stored, events[6].interaction.clone().unwrap());
    assert_eq!(stored, done);
    assert_eq!(reason_of(stored.end_reason), EndReason::AgentHangup);
    let t = |x: &Option<pbjson_types::Timestamp>| ts_nanos(x).unwrap();
    assert!(t(&stored.create_time) <= t(&stored.connect_time));
    assert!(t(&stored.connect_time) <= t(&stored.end_time));
    assert!(t(&stored.end_time) <= t(&stored.complete_time));
    // Event times do not go backwards.
    for pair in events.windows(2) {
        assert!(ts_nanos(&pair[0].time) <= ts_nanos(&pair[1].time));
    }
    server.shutdown().await;
}

/// Runs a call on a special number to WRAP_UP, completes it, and checks its events against
/// `expected` and its end reason against `reason`; returns the interaction as of WRAP_UP.
async fn run_special(
    number: &str,
    expected: &[(u64, S, P)],
    reason: EndReason,
) -> calldesk::proto::Interaction {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, mut w, mut events) = call_until(&mut c, number, S::WrapUp).await;
    let wrap = events.last().unwrap().interaction.clone().unwrap();
    assert!(wrap.end_time.is_some(), "end_time set in WRAP_UP");
    assert_eq!(get(&mut c, &id).await.unwrap(), wrap);

    let done = complete(&mut c, &id, "", "").await.expect("Complete");
    assert_eq!(state_of(done.state), S::Completed);
    assert_eq!(reason_of(done.end_reason), reason_of(wrap.end_reason));
    events.push(next_event(&mut w, WAIT).await);
    assert_ends_ok(&mut w).await;
    assert_well_formed(&events);
    server.shutdown().await;

    assert_eq!(summary(&events), expected);
    assert_eq!(end_reason(&events), reason);
    wrap
}

fn end_reason(events: &[calldesk::proto::InteractionEvent]) -> EndReason {
    let wrap = events
        .iter()
        .find(|e| e.state == S::WrapUp as i32)
        .expect("a WRAP_UP event");
    reason_of(wrap.interaction.as_ref().unwrap().end_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_number_goes_to_wrap_up_busy_without_ringing() {
    let expected = [
        (1, S::DeliveryPending, P::Dialing),
        (2, S::WrapUp, P::Ended),
        (3, S::Completed, P::Ended),
    ];
    let wrap = run_special(NUM_BUSY, &expected, EndReason::Busy).await;
    assert!(wrap.connect_time.is_none());
    assert!(
        wrap.talk_duration.is_none(),
        "never connected: no talk_duration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_number_rings_then_no_answer() {
    let expected = [
        (1, S::DeliveryPending, P::Dialing),
        (2, S::DeliveryPending, P::Ringing),
        (3, S::WrapUp, P::Ended),
        (4, S::Completed, P::Ended),
    ];
    let wrap = run_special(NUM_NO_ANSWER, &expected, EndReason::NoAnswer).await;
    assert!(wrap.connect_time.is_none());
    assert!(wrap.talk_duration.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_number_goes_to_wrap_up_failed() {
    let expected = [
        (1, S::DeliveryPending, P::Dialing),
        (2, S::WrapUp, P::Ended),
        (3, S::Completed, P::Ended),
    ];
    let wrap = run_special(NUM_FAILED, &expected, EndReason::Failed).await;
    assert!(wrap.talk_duration.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hangup_number_answers_then_hangs_up() {
    let expected = [
        (1, S::DeliveryPending, P::Dialing),
        (2, S::DeliveryPending, P::Ringing),
        (3, S::Delivered, P::Connected),
        (4, S::WrapUp, P::Ended),
        (5, S::Completed, P::Ended),
    ];
    let wrap = run_special(NUM_REMOTE_HANGUP, &expected, EndReason::RemoteHangup).await;
    assert!(wrap.connect_time.is_some());
    let talk = duration_of(&wrap.talk_duration).expect("talk_duration set");
    // sim_talk is 150ms.
    assert!(
        talk >= Duration::from_millis(100) && talk < Duration::from_secs(5),
        "talk_duration {talk:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_number_times_out_and_leaves_nothing() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let started = std::time::Instant::now();
    let status = start_err(&mut c, start_req(NUM_NO_ACK)).await;
    assert_code(&status, Code::DeadlineExceeded);
    assert_eq!(status.message(), "Timeout error");
    assert_error_info(&status, "ORIGINATE_TIMEOUT");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "failed after {:?}, before the 300ms originate timeout",
        started.elapsed()
    );
    assert!(
        list_all(&mut c, S::Unspecified).await.is_empty(),
        "no interaction may be left behind"
    );
    // The agent is not left with a phantom live call: four more fit the default limit.
    for _ in 0..4 {
        start_call(&mut c, NUM_OK).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_before_answer_cancels() {
    // The call rings for a long time, so EndCall always comes before the answer.
    let server = TestServer::start_with(|c| c.sim_answer = Duration::from_secs(30)).await;
    let mut c = server.client("alice");
    let id = start_call(&mut c, NUM_OK).await;
    let mut w = watch(&mut c, &id, 0).await;
    wait_for(&mut w, WAIT, |e| e.progress == P::Ringing as i32).await;

    let ended = end(&mut c, &id).await.expect("EndCall");
    assert_eq!(state_of(ended.state), S::WrapUp);
    assert_eq!(progress_of(ended.progress), P::Ended);
    assert_eq!(reason_of(ended.end_reason), EndReason::Canceled);
    assert!(ended.connect_time.is_none());
    assert!(ended.talk_duration.is_none());
    assert!(ended.end_time.is_some());
    let e = next_event(&mut w, WAIT).await;
    assert_eq!((e.sequence, state_of(e.state)), (3, S::WrapUp));
    assert_eq!(state_of(e.previous_state), S::DeliveryPending);

    // Canceled while still dialing, too.
    let id2 = start_call(&mut c, NUM_OK2).await;
    let ended2 = end(&mut c, &id2).await.expect("EndCall while dialing");
    assert_eq!(reason_of(ended2.end_reason), EndReason::Canceled);
    assert_eq!(state_of(ended2.state), S::WrapUp);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_while_on_hold_is_agent_hangup() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    hold(&mut c, &id).await.expect("HoldCall");
    let ended = end(&mut c, &id).await.expect("EndCall on hold");
    assert_eq!(state_of(ended.state), S::WrapUp);
    assert_eq!(reason_of(ended.end_reason), EndReason::AgentHangup);
    assert!(ended.talk_duration.is_some());
    let events = wait_for_state(&mut w, S::WrapUp).await;
    let last = events.last().unwrap();
    assert_eq!(state_of(last.previous_state), S::Hold);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_in_the_wrong_state_fail_with_invalid_state() {
    let server = TestServer::start_with(|c| c.sim_answer = Duration::from_secs(30)).await;
    let mut c = server.client("alice");

    // DELIVERY_PENDING: no hold, resume or complete.
    let pending = start_call(&mut c, NUM_OK).await;
    assert_invalid_state(hold(&mut c, &pending).await, "HoldCall while pending");
    assert_invalid_state(resume(&mut c, &pending).await, "ResumeCall while pending");
    assert_invalid_state(
        complete(&mut c, &pending, "x", "").await,
        "Complete while pending",
    );
    let i = get(&mut c, &pending).await.unwrap();
    assert_eq!(
        state_of(i.state),
        S::DeliveryPending,
        "failed calls change nothing"
    );

    // WRAP_UP: no end, hold or resume.
    end(&mut c, &pending).await.expect("EndCall");
    assert_invalid_state(end(&mut c, &pending).await, "EndCall in WRAP_UP");
    assert_invalid_state(hold(&mut c, &pending).await, "HoldCall in WRAP_UP");
    assert_invalid_state(resume(&mut c, &pending).await, "ResumeCall in WRAP_UP");

    // COMPLETED: nothing.
    complete(&mut c, &pending, "done", "")
        .await
        .expect("Complete");
    assert_invalid_state(end(&mut c, &pending).await, "EndCall when COMPLETED");
    assert_invalid_state(hold(&mut c, &pending).await, "HoldCall when COMPLETED");
    assert_invalid_state(resume(&mut c, &pending).await, "ResumeCall when COMPLETED");
    assert_invalid_state(
        complete(&mut c, &pending, "again", "").await,
        "Complete when COMPLETED",
    );
    let i = get(&mut c, &pending).await.unwrap();
    assert_eq!(state_of(i.state), S::Completed);
    assert_eq!(i.disposition, "done", "a refused Complete changes nothing");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_and_held_calls_refuse_the_wrong_operations() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;

    // DELIVERED: no resume, no complete.
    assert_invalid_state(resume(&mut c, &id).await, "ResumeCall while connected");
    assert_invalid_state(
        complete(&mut c, &id, "", "").await,
        "Complete while connected",
    );

    // HOLD: no second hold, no complete.
    hold(&mut c, &id).await.expect("HoldCall");
    assert_invalid_state(hold(&mut c, &id).await, "HoldCall while on hold");
    assert_invalid_state(
        complete(&mut c, &id, "", "").await,
        "Complete while on hold",
    );

    // The refused operations produced no events: the next is RESUME's.
    resume(&mut c, &id).await.expect("ResumeCall");
    let events = wait_for(&mut w, WAIT, |e| e.sequence == 5).await;
    assert_eq!(
        summary(&events),
        vec![(4, S::Hold, P::Held), (5, S::Delivered, P::Connected)]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_up_timeout_completes_by_itself() {
    let server =
        TestServer::start_with(|c| c.wrap_up_timeout = Some(Duration::from_millis(50))).await;
    let mut c = server.client("alice");
    let id = start_call(&mut c, NUM_BUSY).await;
    let mut w = watch(&mut c, &id, 0).await;
    let (events, ending) = collect_to_end(&mut w, WAIT).await;
    ending.expect("stream ends with OK after COMPLETED");
    assert_eq!(
        summary(&events),
        vec![
            (1, S::DeliveryPending, P::Dialing),
            (2, S::WrapUp, P::Ended),
            (3, S::Completed, P::Ended),
        ]
    );
    assert_well_formed(&events);
    let done = get(&mut c, &id).await.unwrap();
    assert_eq!(state_of(done.state), S::Completed);
    assert!(done.complete_time.is_some());
    assert_eq!(reason_of(done.end_reason), EndReason::Busy);
    let wrap_ns = ts_nanos(&done.end_time).unwrap();
    let done_ns = ts_nanos(&done.complete_time).unwrap();
    assert!(
        done_ns - wrap_ns >= 40_000_000,
        "completed {} ms after the end, before the 50ms wrap-up timeout",
        (done_ns - wrap_ns) / 1_000_000
    );

    // An agent-ended call is completed the same way.
    let (id2, mut w2, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    end(&mut c, &id2).await.expect("EndCall");
    let rest = collect_until_completed(&mut w2, WAIT).await;
    assert_eq!(state_of(rest.last().unwrap().state), S::Completed);
    assert_ends_ok(&mut w2).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_limits() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, _w, _) = call_until(&mut c, NUM_BUSY, S::WrapUp).await;

    let status = complete(&mut c, &id, &"d".repeat(257), "")
        .await
        .expect_err("disposition of 257");
    assert_bad_field(&status, "disposition");
    let status = complete(&mut c, &id, "", &"n".repeat(4097))
        .await
        .expect_err("notes of 4097");
    assert_bad_field(&status, "notes");
    assert_eq!(
        state_of(get(&mut c, &id).await.unwrap().state),
        S::WrapUp,
        "a rejected Complete changes nothing"
    );

    let disposition = "d".repeat(256);
    let notes = "ñ".repeat(4096);
    let done = complete(&mut c, &id, &disposition, &notes)
        .await
        .expect("Complete at the limits");
    assert_eq!(done.disposition, disposition);
    assert_eq!(done.notes, notes);
    let stored = get(&mut c, &id).await.unwrap();
    assert_eq!(stored.disposition, disposition);
    assert_eq!(stored.notes, notes);
    server.shutdown().await;
}

/// Retention (docs/api.md §2): with a short `--retention`, a COMPLETED interaction and its
/// events go once they are older than it; a WRAP_UP one and a live one stay, whatever their
/// age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_completed_interactions_and_nothing_else() {
    const RETENTION: Duration = Duration::from_secs(1);
    let server = TestServer::start_with(|c| c.retention = RETENTION).await;
    let mut c = server.client("rita");
    let (live, _live_watch, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    let (wrap_up, _wrap_up_watch, wrap_up_events) = call_until(&mut c, NUM_BUSY, S::WrapUp).await;
    let (done, _done_watch, _) = call_until(&mut c, NUM_BUSY, S::WrapUp).await;
    complete(&mut c, &done, "sold", "")
        .await
        .expect("CompleteInteraction");
    let completed = std::time::Instant::now();

    // Gone within the retention and a check of retention's (bounded: 15 s), not before.
    let gone_after = loop {
        match get(&mut c, &done).await {
            Ok(_) => {
                assert!(
                    completed.elapsed() < Duration::from_secs(15),
                    "a COMPLETED interaction outlived --retention 1s by 15 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                assert_code(&status, Code::NotFound);
                break completed.elapsed();
            }
        }
    };
    assert!(
        gone_after >= RETENTION - Duration::from_millis(100),
        "deleted {gone_after:?} after it completed, before --retention 1s"
    );
    assert_code(&watch_err(&mut c, &done, 0).await, Code::NotFound);

    // Retention ran after the other two were older than it: they stay, with their history.
    let listed: Vec<String> = list_all(&mut c, S::Unspecified)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, [wrap_up.clone(), live.clone()]);
    assert_eq!(
        state_of(get(&mut c, &live).await.expect("live").state),
        S::Delivered
    );
    let (_w, history) = watch_until(&mut c, &wrap_up, S::WrapUp).await;
    assert_eq!(seqs(&history), seqs(&wrap_up_events));
    server.shutdown().await;
}

/// Events of `id` on an agent's WatchInteractions (which holds no interaction in the server's
/// memory, unlike WatchInteraction) until it reaches `state`.
async fn wait_on_agent_feed(
    feed: &mut tonic::Streaming<calldesk::proto::InteractionEvent>,
    id: &str,
    state: S,
) {
    wait_for(feed, WAIT, |e| {
        e.interaction_id == id && e.state == state as i32
    })
    .await;
}

/// A WRAP_UP interaction nobody watches waits in the store (not in the server's memory):
/// CompleteInteraction, a second one, another agent's, GetInteraction and WatchInteraction find
/// it there as they would in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwatched_wrap_up_is_completed_and_watched_from_the_store() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let mut feed = watch_all(&mut c).await;
    let id = start_call(&mut c, NUM_BUSY).await;
    wait_on_agent_feed(&mut feed, &id, S::WrapUp).await;

    let waiting = get(&mut c, &id).await.expect("GetInteraction");
    assert_eq!(state_of(waiting.state), S::WrapUp);
    let mut bob = server.client("bob");
    assert_not_found(
        complete(&mut bob, &id, "x", "").await,
        "bob completing alice's",
    );
    let done = complete(&mut c, &id, "busy", "called back later")
        .await
        .expect("CompleteInteraction of an unwatched WRAP_UP");
    assert_eq!(state_of(done.state), S::Completed);
    assert_eq!(done.sequence, waiting.sequence + 1);
    assert_eq!(done.disposition, "busy");
    assert_invalid_state(
        complete(&mut c, &id, "again", "").await,
        "a second CompleteInteraction",
    );
    let mut w = watch(&mut c, &id, 0).await;
    let (events, ending) = collect_to_end(&mut w, WAIT).await;
    ending.expect("the watch ends with OK after COMPLETED");
    assert_eq!(
        summary(&events),
        vec![
            (1, S::DeliveryPending, P::Dialing),
            (2, S::WrapUp, P::Ended),
            (3, S::Completed, P::Ended),
        ]
    );

    // Watched once it waits: the watcher sees the completion live.
    let id = start_call(&mut c, NUM_BUSY).await;
    wait_on_agent_feed(&mut feed, &id, S::WrapUp).await;
    let mut w = watch(&mut c, &id, 2).await;
    let done = complete(&mut c, &id, "busy", "")
        .await
        .expect("CompleteInteraction of a watched WRAP_UP");
    let (events, ending) = collect_to_end(&mut w, WAIT).await;
    ending.expect("the watch ends with OK after COMPLETED");
    assert_eq!(seqs(&events), vec![3]);
    assert_eq!(events[0].interaction.as_ref(), Some(&done));
    server.shutdown().await;
}

/// The wrap-up timeout completes a WRAP_UP interaction nobody watches (read back from the
/// store when its timer fires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrap_up_timeout_completes_an_unwatched_wrap_up() {
    let server =
        TestServer::start_with(|c| c.wrap_up_timeout = Some(Duration::from_millis(50))).await;
    let mut c = server.client("alice");
    let mut feed = watch_all(&mut c).await;
    let id = start_call(&mut c, NUM_BUSY).await;
    wait_on_agent_feed(&mut feed, &id, S::Completed).await;
    let done = get(&mut c, &id).await.expect("GetInteraction");
    assert_eq!(state_of(done.state), S::Completed);
    assert_eq!(reason_of(done.end_reason), EndReason::Busy);
    server.shutdown().await;
}
