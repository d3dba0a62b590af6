//! Transfer, consultation and conference on the real server with the simulated switch: blind
//! transfer to an agent (a new interaction) and to a number, a target that is busy or does not
//! answer, consult → complete / cancel, conference with and without --sip-conference-uri,
//! idempotent retries (also after a restart), the target agent's --max-active-calls, wrong
//! states and bad targets.

mod support;

use calldesk::proto::{CallProgress as P, EndReason, InteractionState as S, Origination};
use support::{
    in_process::TestServer,
    process::{fast_flags, ServerProcess},
    *,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_transfer_to_an_agent_gives_it_a_new_interaction() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));
    let started = start_ok(&mut alice, start_req_object(NUM_OK, object("crm-7"))).await;
    let id = started.interaction_id.unwrap();
    let (mut w, _) = watch_until(&mut alice, &id, S::Delivered).await;
    let mut bobs = watch_all(&mut bob).await;

    let reply = transfer(&mut alice, &id, "agent:bob", "t-1").await.unwrap();
    assert_eq!(
        (state_of(reply.state), progress_of(reply.progress)),
        (S::Delivered, P::Transferring)
    );
    assert_eq!(reply.transfer_target, "agent:bob");

    let events = wait_for_state(&mut w, S::WrapUp).await;
    assert_eq!(
        steps(&events),
        vec![(S::Delivered, P::Transferring), (S::WrapUp, P::Ended)]
    );
    let ended = events[1].interaction.clone().unwrap();
    assert_eq!(reason_of(ended.end_reason), EndReason::Transferred);
    assert_eq!(ended.transfer_target, "agent:bob");

    // Bob's new interaction: connected, origination TRANSFER, the same number and object.
    let first = next_event(&mut bobs, WAIT).await;
    let new = first.interaction.clone().unwrap();
    assert_ne!(new.id, id);
    assert_eq!((first.sequence, new.agent_id.as_str()), (1, "bob"));
    assert_eq!(
        (state_of(new.state), progress_of(new.progress)),
        (S::Delivered, P::Connected)
    );
    assert_eq!(new.origination, Origination::Transfer as i32);
    assert_eq!(new.transferred_from, id);
    assert_eq!(new.phone_number, NUM_OK);
    assert_eq!(new.associated_object, Some(object("crm-7")));
    assert!(new.connect_time.is_some());
    // Watchable and changeable like any other call of Bob's, and only Bob's.
    assert_not_found(
        get(&mut alice, &new.id).await,
        "Alice reading Bob's interaction",
    );
    let mut bw = watch(&mut bob, &new.id, 0).await;
    assert_eq!(next_event(&mut bw, WAIT).await.sequence, 1);
    let hung_up = end(&mut bob, &new.id).await.unwrap();
    assert_eq!(reason_of(hung_up.end_reason), EndReason::AgentHangup);

    // A retry after the fact answers the interaction as it is and does nothing more; the same
    // key for another target is a different request.
    let again = transfer(&mut alice, &id, "agent:bob", "t-1").await.unwrap();
    assert_eq!((again.sequence, state_of(again.state)), (5, S::WrapUp));
    let reused = transfer(&mut alice, &id, "agent:carol", "t-1")
        .await
        .unwrap_err();
    assert_bad_field(&reused, "request_id");
    assert_invalid_state(
        transfer(&mut alice, &id, "agent:bob", "t-2").await,
        "a second transfer",
    );
}

/// A transfer's request_id outlives the process: after kill -9 and a restart a retry is
/// answered with the interaction as it is (WRAP_UP TRANSFERRED) instead of INVALID_STATE, and
/// the same key for another target is still a different request. The keys are read back from
/// the store with the interaction (store::TransferKeyRecord).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_keys_replay_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start_sqlite(&data, &fast_flags(&[])).await;
    let mut c = server.client("alice");
    let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    transfer(&mut c, &id, NUM_OK2, "t-restart").await.unwrap();
    let ended = wait_for_state(&mut w, S::WrapUp).await;
    let ended = ended.last().unwrap().interaction.clone().unwrap();
    assert_eq!(reason_of(ended.end_reason), EndReason::Transferred);
    server.kill9();

    let server = ServerProcess::start_sqlite(&data, &fast_flags(&[])).await;
    let mut c = server.client("alice");
    let again = transfer(&mut c, &id, NUM_OK2, "t-restart")
        .await
        .expect("the retry after the restart");
    assert_eq!(again, ended, "the retry answers the interaction as it is");
    let reused = transfer(&mut c, &id, NUM_OK, "t-restart")
        .await
        .unwrap_err();
    assert_bad_field(&reused, "request_id");
    assert_invalid_state(
        transfer(&mut c, &id, NUM_OK2, "t-other").await,
        "a new transfer of an ended call",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_transfer_to_a_number_and_targets_that_do_not_answer() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");

    let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    transfer(&mut c, &id, NUM_OK2, "").await.unwrap();
    let events = wait_for_state(&mut w, S::WrapUp).await;
    let ended = events.last().unwrap().interaction.clone().unwrap();
    assert_eq!(reason_of(ended.end_reason), EndReason::Transferred);
    assert_eq!(ended.transfer_target, NUM_OK2);

    for (target, why) in [(NUM_BUSY, "busy"), (NUM_NO_ANSWER, "did not answer")] {
        let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
        let reply = transfer(&mut c, &id, target, "").await.unwrap();
        assert_eq!(progress_of(reply.progress), P::Transferring);
        let events = until_progress(&mut w, P::Connected).await;
        assert_eq!(
            steps(&events),
            vec![
                (S::Delivered, P::Transferring),
                (S::Delivered, P::TransferFailed),
                (S::Delivered, P::Connected),
            ],
            "{target}"
        );
        let failed = events[1].interaction.clone().unwrap();
        assert!(failed.transfer_detail.contains(why), "{failed:?}");
        assert_eq!(reason_of(failed.end_reason), EndReason::Unspecified);
        // The customer is the agent's again.
        let held = hold(&mut c, &id).await.unwrap();
        assert_eq!(progress_of(held.progress), P::Held);
    }
    // A transfer to a number makes no interaction: Alice has her three calls.
    assert_eq!(list_all(&mut c, S::Unspecified).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consult_then_complete_or_cancel() {
    let server = TestServer::start().await;
    let (mut c, mut bob) = (server.client("alice"), server.client("bob"));
    let mut bobs = watch_all(&mut bob).await;

    // Consult Bob, then hand him the customer.
    let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    let reply = consult(&mut c, &id, "agent:bob").await.unwrap();
    assert_eq!(
        (state_of(reply.state), progress_of(reply.progress)),
        (S::Hold, P::Transferring)
    );
    until_progress(&mut w, P::Consulting).await;
    assert_invalid_state(
        resume(&mut c, &id).await,
        "ResumeCall during a consultation",
    );
    assert_invalid_state(hold(&mut c, &id).await, "HoldCall during a consultation");
    let done = complete_transfer(&mut c, &id).await.unwrap();
    assert_eq!(state_of(done.state), S::WrapUp);
    assert_eq!(reason_of(done.end_reason), EndReason::Transferred);
    // Stored by the time CompleteTransfer answered.
    let listed = list_all(&mut bob, S::Delivered).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let new = next_event(&mut bobs, WAIT).await.interaction.unwrap();
    assert_eq!(new.id, listed[0].id);
    assert_eq!(new.transferred_from, id);
    assert_eq!(new.origination, Origination::Transfer as i32);

    // Consult a number, then take the customer back; and again while the target still rings.
    for wait_for_answer in [true, false] {
        let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
        let target = if wait_for_answer {
            NUM_OK2
        } else {
            NUM_NO_ANSWER
        };
        consult(&mut c, &id, target).await.unwrap();
        if wait_for_answer {
            until_progress(&mut w, P::Consulting).await;
        }
        let back = cancel_consult(&mut c, &id).await.unwrap();
        assert_eq!(
            (state_of(back.state), progress_of(back.progress)),
            (S::Delivered, P::Connected)
        );
        // A late word from the target changes nothing: the next event is the agent's.
        end(&mut c, &id).await.unwrap();
        let last = wait_for_state(&mut w, S::WrapUp).await;
        let last = last.last().unwrap().interaction.clone().unwrap();
        assert_eq!(reason_of(last.end_reason), EndReason::AgentHangup);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conference_needs_its_flag() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, _w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    let refused = conference(&mut c, &id, NUM_OK2).await.unwrap_err();
    assert_code(&refused, Code::FailedPrecondition);
    assert_error_info(&refused, "CONFERENCE_NOT_CONFIGURED");
    assert!(
        refused.message().contains("--sip-conference-uri"),
        "{refused:?}"
    );
    drop(server);

    let server = TestServer::start_with(|c| {
        c.sip.sip_conference_uri = Some("sip:conf-{interaction}@pbx.test".into())
    })
    .await;
    let mut c = server.client("alice");
    let (id, mut w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    conference(&mut c, &id, "agent:bob").await.unwrap();
    let events = until_progress(&mut w, P::Conferenced).await;
    assert_eq!(
        steps(&events),
        vec![
            (S::Delivered, P::Transferring),
            (S::Delivered, P::Conferenced)
        ]
    );
    assert_invalid_state(hold(&mut c, &id).await, "HoldCall in a conference");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_states_bad_targets_and_the_target_agents_limit() {
    let server = TestServer::start_with(|c| c.max_active_calls = 1).await;
    let (mut c, mut bob) = (server.client("alice"), server.client("bob"));

    // Before the answer, and with nothing to complete or cancel.
    let (id, mut w, _) = call_until(&mut c, NUM_NO_ANSWER, S::DeliveryPending).await;
    assert_invalid_state(
        transfer(&mut c, &id, NUM_OK2, "").await,
        "TransferCall while dialing",
    );
    wait_for_state(&mut w, S::WrapUp).await;
    let (id, _w, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
    assert_invalid_state(complete_transfer(&mut c, &id).await, "CompleteTransfer");
    assert_invalid_state(cancel_consult(&mut c, &id).await, "CancelConsult");
    hold(&mut c, &id).await.unwrap();
    assert_invalid_state(cancel_consult(&mut c, &id).await, "CancelConsult of a hold");
    resume(&mut c, &id).await.unwrap();

    for target in [
        "",
        "2025550100",
        "+1202",
        "agent:",
        "agent:with space",
        "agent:alice",
    ] {
        let refused = transfer(&mut c, &id, target, "").await.unwrap_err();
        assert_bad_field(&refused, "target");
    }

    // Bob is at his limit: no transfer to him, and the call stays with Alice.
    let (bobs_call, _bw, _) = call_until(&mut bob, NUM_OK, S::Delivered).await;
    let refused = transfer(&mut c, &id, "agent:bob", "").await.unwrap_err();
    assert_code(&refused, Code::ResourceExhausted);
    assert_error_info(&refused, "TOO_MANY_ACTIVE_CALLS");
    assert_eq!(
        progress_of(get(&mut c, &id).await.unwrap().progress),
        P::Connected
    );
    // Once free, the transferred call is his one call: he may not start another.
    let mut bobs = watch_all(&mut bob).await;
    end(&mut bob, &bobs_call).await.unwrap();
    transfer(&mut c, &id, "agent:bob", "").await.unwrap();
    wait_for(&mut bobs, WAIT, |e| e.interaction_id != bobs_call).await;
    let status = start_err(&mut bob, start_req(NUM_OK2)).await;
    assert_error_info(&status, "TOO_MANY_ACTIVE_CALLS");
}
