//! The error table: NOT_FOUND and agent isolation, the live-call limit, ListInteractions'
//! argument errors.

mod support;

use std::time::Duration;

use calldesk::proto::{InteractionState as S, ListInteractionsRequest};
use support::{in_process::TestServer, *};
use tonic::Code;

const UNKNOWN_ID: &str = "01970000-0000-7000-8000-000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_interaction_is_not_found_everywhere() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    // A real interaction exists, so the store is not empty.
    start_call(&mut c, NUM_OK).await;
    for id in [UNKNOWN_ID] {
        assert_not_found(get(&mut c, id).await, "GetInteraction");
        assert_not_found(end(&mut c, id).await, "EndCall");
        assert_not_found(hold(&mut c, id).await, "HoldCall");
        assert_not_found(resume(&mut c, id).await, "ResumeCall");
        assert_not_found(complete(&mut c, id, "", "").await, "CompleteInteraction");
        let status = watch_err(&mut c, id, 0).await;
        assert_code(&status, Code::NotFound);
    }
    // Any id of 1 to 128 characters is a lookup: unknown ones are NOT_FOUND.
    for id in ["no-such-interaction".to_string(), "x".repeat(128)] {
        assert_not_found(get(&mut c, &id).await, "GetInteraction");
        assert_not_found(end(&mut c, &id).await, "EndCall");
    }
    server.shutdown().await;
}

/// Every RPC that names an interaction, with `id`: its refusal.
async fn refusals_for(c: &mut Client, id: &str) -> Vec<(&'static str, tonic::Status)> {
    let refused = |r: Result<calldesk::proto::Interaction, tonic::Status>| {
        r.expect_err("an invalid interaction_id")
    };
    vec![
        ("GetInteraction", refused(get(c, id).await)),
        ("EndCall", refused(end(c, id).await)),
        ("HoldCall", refused(hold(c, id).await)),
        ("ResumeCall", refused(resume(c, id).await)),
        (
            "CompleteInteraction",
            refused(complete(c, id, "", "").await),
        ),
        ("WatchInteraction", watch_err(c, id, 0).await),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_overlong_interaction_id_is_an_invalid_argument() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    start_call(&mut c, NUM_OK).await;
    let overlong = "x".repeat(129);
    for (id, message) in [
        ("", "interaction_id: is required"),
        (
            overlong.as_str(),
            "interaction_id: must be at most 128 characters",
        ),
    ] {
        for (rpc, status) in refusals_for(&mut c, id).await {
            assert_bad_field(&status, "interaction_id");
            assert!(
                status.message().starts_with(message),
                "{rpc} with a {}-character id: {status:?}",
                id.len()
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_interaction_is_not_found() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice");
    let mut bob = server.client("bob");
    let (id, _w, _) = call_until(&mut alice, NUM_OK, S::Delivered).await;

    assert_not_found(get(&mut bob, &id).await, "bob GetInteraction");
    assert_not_found(hold(&mut bob, &id).await, "bob HoldCall");
    assert_not_found(resume(&mut bob, &id).await, "bob ResumeCall");
    assert_not_found(end(&mut bob, &id).await, "bob EndCall");
    assert_not_found(complete(&mut bob, &id, "", "").await, "bob Complete");
    let status = watch_err(&mut bob, &id, 0).await;
    assert_code(&status, Code::NotFound);

    // Bob's attempts changed nothing: alice's call is still connected, no new event.
    let i = get(&mut alice, &id).await.expect("alice still sees it");
    assert_eq!(state_of(i.state), S::Delivered);
    assert_eq!(i.sequence, 3);
    // Bob lists nothing.
    assert!(list_all(&mut bob, S::Unspecified).await.is_empty());

    // Bob gets NOT_FOUND in WRAP_UP too (not FAILED_PRECONDITION, which would leak existence).
    end(&mut alice, &id).await.expect("alice ends");
    assert_not_found(end(&mut bob, &id).await, "bob EndCall in WRAP_UP");
    assert_not_found(
        complete(&mut bob, &id, "", "").await,
        "bob Complete in WRAP_UP",
    );
    assert_eq!(
        state_of(get(&mut alice, &id).await.unwrap().state),
        S::WrapUp
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_only_the_callers_interactions() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice");
    let mut bob = server.client("bob");
    let a1 = start_call(&mut alice, NUM_OK).await;
    let b1 = start_call(&mut bob, NUM_OK).await;
    let a2 = start_call(&mut alice, NUM_OK2).await;
    let la: Vec<String> = list_all(&mut alice, S::Unspecified)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    let lb: Vec<String> = list_all(&mut bob, S::Unspecified)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(la, vec![a2, a1]);
    assert_eq!(lb, vec![b1]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_interactions_never_shows_another_agent() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice");
    let mut bob = server.client("bob");
    let mut all_alice = watch_all(&mut alice).await;

    // Bob's call happens first, entirely.
    let (b, mut wb, _) = call_until(&mut bob, NUM_BUSY, S::WrapUp).await;
    complete(&mut bob, &b, "", "").await.expect("bob completes");
    collect_until_completed(&mut wb, WAIT).await;

    // Then alice's.
    let (a, _wa, _) = call_until(&mut alice, NUM_BUSY, S::WrapUp).await;
    complete(&mut alice, &a, "", "")
        .await
        .expect("alice completes");

    let events = collect_until_completed(&mut all_alice, WAIT).await;
    for e in &events {
        assert_eq!(e.interaction_id, a, "alice saw an event of bob's: {e:#?}");
        assert_eq!(e.interaction.as_ref().unwrap().agent_id, "alice");
    }
    assert_eq!(seqs(&events), vec![1, 2, 3]);
    server.shutdown().await;
}

/// A StartCall on `phone` that the live-call limit refuses.
async fn assert_refused_by_the_limit(c: &mut Client, phone: &str) {
    let status = start_err(c, start_req(phone)).await;
    assert_code(&status, Code::ResourceExhausted);
    assert_error_info(&status, "TOO_MANY_ACTIVE_CALLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifth_live_call_is_refused() {
    let server = TestServer::start_with(|c| c.sim_answer = Duration::from_secs(30)).await;
    let mut alice = server.client("alice");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(start_call(&mut alice, NUM_OK).await);
    }
    assert_refused_by_the_limit(&mut alice, NUM_OK2).await;
    assert_eq!(
        list_all(&mut alice, S::Unspecified).await.len(),
        4,
        "the refused call left nothing"
    );

    // Other agents are not affected.
    let mut bob = server.client("bob");
    for _ in 0..4 {
        start_call(&mut bob, NUM_OK).await;
    }

    // A call in WRAP_UP is not live: after EndCall a new one is allowed, and only one.
    end(&mut alice, &ids[0]).await.expect("EndCall");
    start_call(&mut alice, NUM_OK2).await;
    assert_refused_by_the_limit(&mut alice, NUM_OK2).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_end_by_themselves_free_their_slot() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice");
    // Connected and on hold both count as live.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(start_call(&mut alice, NUM_OK).await);
    }
    let (_w, _) = watch_until(&mut alice, &ids[0], S::Delivered).await;
    hold(&mut alice, &ids[0]).await.expect("HoldCall");
    let status = start_err(&mut alice, start_req(NUM_OK)).await;
    assert_code(&status, Code::ResourceExhausted);

    // A remote hang-up frees a slot.
    end(&mut alice, &ids[1]).await.expect("EndCall");
    let r = start_call(&mut alice, NUM_REMOTE_HANGUP).await;
    let status = start_err(&mut alice, start_req(NUM_OK)).await;
    assert_code(&status, Code::ResourceExhausted);
    let (_wr, _) = watch_until(&mut alice, &r, S::WrapUp).await;
    start_call(&mut alice, NUM_OK).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_calls_is_configurable() {
    let server = TestServer::start_with(|c| {
        c.max_active_calls = 1;
        c.sim_answer = Duration::from_secs(30);
    })
    .await;
    let mut alice = server.client("alice");
    start_call(&mut alice, NUM_OK).await;
    assert_refused_by_the_limit(&mut alice, NUM_OK).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_argument_errors() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    start_call(&mut c, NUM_OK).await;
    for page_size in [-1, -50, 1001, i32::MAX, i32::MIN] {
        let status = c
            .list_interactions(ListInteractionsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .expect_err("bad page_size");
        assert_code(&status, Code::InvalidArgument);
    }
    for page_size in [0, 1, 1000] {
        let page = c
            .list_interactions(ListInteractionsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("page_size {page_size}: {s:?}"))
            .into_inner();
        assert_eq!(page.interactions.len(), 1);
        assert_eq!(page.next_page_token, "");
    }
    for token in ["garbage", "!!!", "\u{1F4A9}"] {
        let status = c
            .list_interactions(ListInteractionsRequest {
                page_size: 10,
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .expect_err("bad page_token");
        assert_code(&status, Code::InvalidArgument);
    }
    server.shutdown().await;
}
