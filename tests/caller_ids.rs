//! Caller IDs (docs/api.md, "Caller IDs"): ListCallerIds, StartCallRequest.caller_id checked
//! against the agent's numbers (`--caller-ids`, else `--sip-caller-id`), local presence when
//! it is empty, Interaction.caller_id on every event and in the store, idempotency, Deferred
//! Dial, and the file re-read on SIGHUP. The simulated switch: no SIP here (sip_calls.rs has
//! the headers).

mod support;

use std::time::Duration;

use calldesk::proto::{
    DialStagedRequest, GetDialpadRequest, Interaction, ListCallerIdsRequest, ListCallerIdsResponse,
    StartCallRequest,
};
use support::in_process::TestServer;
use support::process::{fast_flags, send_signal, ServerProcess};
use support::*;
use tonic::Code;

/// Ann's numbers: New York (the default), Los Angeles, Toronto, London. Everyone else's: a
/// toll-free one.
const FILE: &str = "# tests/caller_ids.rs\n\
                    ann +12125550100 +13105550100 +14165550100 +442079460000 # four offices\n\
                    * +18005550100\n";
const NEW_YORK: &str = "+12125550100";
const LOS_ANGELES: &str = "+13105550100";
const TORONTO: &str = "+14165550100";
const LONDON: &str = "+442079460000";
const TOLL_FREE: &str = "+18005550100";

fn with_caller_id(phone: &str, caller_id: &str) -> StartCallRequest {
    StartCallRequest {
        phone_number: phone.into(),
        caller_id: caller_id.into(),
        ..Default::default()
    }
}

async fn caller_ids(client: &mut Client) -> ListCallerIdsResponse {
    unary(
        "ListCallerIds",
        client.list_caller_ids(ListCallerIdsRequest {}),
    )
    .await
    .expect("ListCallerIds")
}

/// The interaction StartCall created, as the response carries it.
async fn started(client: &mut Client, request: StartCallRequest) -> Interaction {
    start_ok(client, request)
        .await
        .interaction
        .expect("an interaction")
}

#[tokio::test]
async fn caller_ids_are_listed_chosen_near_the_customer_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("caller-ids.txt");
    std::fs::write(&file, FILE).unwrap();
    let server = TestServer::start_with(|c| {
        c.caller_ids = Some(file.clone());
        c.max_active_calls = 16;
    })
    .await;
    let mut ann = server.client("ann");
    let mut bob = server.client("bob");

    let listed = caller_ids(&mut ann).await;
    assert_eq!(listed.caller_ids, [NEW_YORK, LOS_ANGELES, TORONTO, LONDON]);
    assert_eq!(listed.default_caller_id, NEW_YORK);
    let listed = caller_ids(&mut bob).await;
    assert_eq!(listed.caller_ids, [TOLL_FREE]);
    assert_eq!(listed.default_caller_id, TOLL_FREE);

    // Local presence: the same area code, the same province, the same country, else the
    // default.
    for (customer, expected) in [
        ("+13105559999", LOS_ANGELES),
        ("+16475550123", TORONTO),
        ("+441614960000", LONDON),
        ("+33142685300", NEW_YORK),
    ] {
        let interaction = started(&mut ann, start_req(customer)).await;
        assert_eq!(interaction.caller_id, expected, "calling {customer}");
        // On every event, and in the store.
        let events = collect_until(&mut ann, &interaction.id, 3).await;
        assert!(events
            .iter()
            .all(|e| e.interaction.as_ref().unwrap().caller_id == expected));
        let stored = get(&mut ann, &interaction.id).await.unwrap();
        assert_eq!(stored.caller_id, expected);
    }

    // Asked for, in any spelling: presented as asked, even far from the customer.
    let interaction = started(&mut ann, with_caller_id("+13105559999", "+44 20 7946 0000")).await;
    assert_eq!(interaction.caller_id, LONDON);

    // Another agent's number, or none of the agent's: PERMISSION_DENIED, nothing created.
    let before = list_all(&mut ann, Default::default()).await.len();
    let status = start_err(&mut ann, with_caller_id("+13105559999", TOLL_FREE)).await;
    assert_code(&status, Code::PermissionDenied);
    assert_error_info(&status, "CALLER_ID_NOT_ALLOWED");
    assert!(status.message().contains("0100"), "{}", status.message());
    assert!(
        !status.message().contains(TOLL_FREE),
        "a whole number: {}",
        status.message()
    );
    assert_eq!(list_all(&mut ann, Default::default()).await.len(), before);
    let status = start_err(&mut bob, with_caller_id("+13105559999", NEW_YORK)).await;
    assert_error_info(&status, "CALLER_ID_NOT_ALLOWED");
    assert_eq!(
        started(&mut bob, with_caller_id("+13105559999", TOLL_FREE))
            .await
            .caller_id,
        TOLL_FREE
    );

    // Malformed: INVALID_ARGUMENT on caller_id.
    for bad in ["2125550100", "+1212", "ann", "+1 212 555 01OO"] {
        let status = start_err(&mut ann, with_caller_id("+13105559999", bad)).await;
        assert_bad_field(&status, "caller_id");
    }

    // Idempotency: the caller ID is part of the request.
    let first = StartCallRequest {
        request_id: "ann-1".into(),
        ..with_caller_id("+13105559999", TORONTO)
    };
    let response = start_ok(&mut ann, first.clone()).await;
    assert_eq!(start_ok(&mut ann, first.clone()).await, response);
    let other = StartCallRequest {
        caller_id: LONDON.into(),
        ..first.clone()
    };
    assert_bad_field(&start_err(&mut ann, other).await, "request_id");
    let none = StartCallRequest {
        caller_id: String::new(),
        ..first
    };
    assert_bad_field(&start_err(&mut ann, none).await, "request_id");
}

/// Events of `id` until `count` of them.
async fn collect_until(
    client: &mut Client,
    id: &str,
    count: usize,
) -> Vec<calldesk::proto::InteractionEvent> {
    let mut stream = watch(client, id, 0).await;
    let mut events = Vec::new();
    while events.len() < count {
        events.push(next_event(&mut stream, WAIT).await);
    }
    events
}

#[tokio::test]
async fn without_the_file_everyone_presents_the_sip_caller_id_or_nothing() {
    let server = TestServer::start_with(|c| c.sip.sip_caller_id = Some(NEW_YORK.into())).await;
    let mut ann = server.client("ann");
    let listed = caller_ids(&mut ann).await;
    assert_eq!(listed.caller_ids, [NEW_YORK]);
    assert_eq!(listed.default_caller_id, NEW_YORK);
    assert_eq!(
        started(&mut ann, start_req("+442079460001"))
            .await
            .caller_id,
        NEW_YORK
    );
    assert_eq!(
        started(&mut ann, with_caller_id("+442079460001", NEW_YORK))
            .await
            .caller_id,
        NEW_YORK
    );
    let status = start_err(&mut ann, with_caller_id("+442079460001", LONDON)).await;
    assert_error_info(&status, "CALLER_ID_NOT_ALLOWED");

    let bare = TestServer::start().await;
    let mut ann = bare.client("ann");
    assert_eq!(caller_ids(&mut ann).await, ListCallerIdsResponse::default());
    assert_eq!(
        started(&mut ann, start_req("+442079460001"))
            .await
            .caller_id,
        ""
    );
    let status = start_err(&mut ann, with_caller_id("+442079460001", NEW_YORK)).await;
    assert_code(&status, Code::PermissionDenied);
}

#[tokio::test]
async fn deferred_dial_stages_the_caller_id_and_dial_staged_presents_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("caller-ids.txt");
    std::fs::write(&file, FILE).unwrap();
    let server = TestServer::start_with(|c| {
        c.caller_ids = Some(file.clone());
        c.deferred_dial = true;
    })
    .await;
    let mut ann = server.client("ann");
    // Staging is refused a caller ID the agent may not present.
    let status = start_err(&mut ann, with_caller_id("+13105559999", TOLL_FREE)).await;
    assert_error_info(&status, "CALLER_ID_NOT_ALLOWED");

    let response = start_ok(&mut ann, with_caller_id("+13105559999", TORONTO)).await;
    assert!(response.interaction.is_none());
    let dialpad = unary("GetDialpad", ann.get_dialpad(GetDialpadRequest {}))
        .await
        .unwrap();
    assert_eq!(dialpad.caller_id, TORONTO);
    let dialed = unary("DialStaged", ann.dial_staged(DialStagedRequest::default()))
        .await
        .unwrap();
    assert_eq!(dialed.interaction.unwrap().caller_id, TORONTO);

    // Staged without one: local presence when it is dialed.
    start_ok(&mut ann, start_req("+13105559999")).await;
    let dialpad = unary("GetDialpad", ann.get_dialpad(GetDialpadRequest {}))
        .await
        .unwrap();
    assert_eq!(dialpad.caller_id, "");
    let dialed = unary("DialStaged", ann.dial_staged(DialStagedRequest::default()))
        .await
        .unwrap();
    assert_eq!(dialed.interaction.unwrap().caller_id, LOS_ANGELES);
}

#[tokio::test]
async fn the_file_is_reread_on_sighup_and_a_retry_keeps_the_first_caller_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("caller-ids.txt");
    std::fs::write(&file, FILE).unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &fast_flags(&["--caller-ids", file.to_str().unwrap()]),
    )
    .await;
    let mut ann = server.client("ann");
    let first = start_ok(&mut ann, start_req_id("+13105559999", "ann-1")).await;
    assert_eq!(first.interaction.as_ref().unwrap().caller_id, LOS_ANGELES);

    // Los Angeles is gone: a new call gets the default, the retry its first caller ID.
    std::fs::write(&file, "ann +12125550100 +14165550100\n").unwrap();
    send_signal(server.pid(), "-HUP");
    wait_for_caller_ids(&mut ann, &[NEW_YORK, TORONTO]).await;
    assert_eq!(
        start_ok(&mut ann, start_req_id("+13105559999", "ann-1")).await,
        first
    );
    let status = start_err(&mut ann, with_caller_id("+13105559999", LOS_ANGELES)).await;
    assert_error_info(&status, "CALLER_ID_NOT_ALLOWED");
    assert_eq!(
        started(&mut ann, start_req("+13105559999")).await.caller_id,
        NEW_YORK
    );

    // A bad file keeps the last good one, and the log says why.
    std::fs::write(&file, "ann +12125550100\nbob 555\n").unwrap();
    send_signal(server.pid(), "-HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server
        .stderr_text()
        .contains("caller IDs not reloaded on SIGHUP")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log of the failed reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.stderr_text().contains(":2:"), "the line at fault");
    assert_eq!(caller_ids(&mut ann).await.caller_ids, [NEW_YORK, TORONTO]);
}

/// ListCallerIds until it answers `expected` (the reload is asynchronous).
async fn wait_for_caller_ids(client: &mut Client, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while caller_ids(client).await.caller_ids != expected {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
