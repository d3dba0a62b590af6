//! StartCall: the response, phone numbers, the associated object, idempotency, Deferred Dial
//! and GetDialpad.

mod support;

use calldesk::proto::{
    CallDirection, DialStagedRequest, GetDialpadRequest, InteractionState, Origination,
    StartCallOutcome,
};
use support::{in_process::TestServer, *};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_call_returns_started_interaction() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;

    let resp = start_ok(
        &mut c,
        start_req_object("+1 (202) 555-0100", object("003-ada")),
    )
    .await;
    assert_eq!(resp.outcome, StartCallOutcome::Started as i32);
    let id = resp.interaction_id.clone().expect("interaction_id set");
    assert!(!id.is_empty());
    let i = resp.interaction.expect("interaction in the response");
    assert_eq!(i.id, id);
    assert_eq!(i.agent_id, "alice");
    assert_eq!(i.phone_number, "+12025550100");
    assert_eq!(i.direction, CallDirection::Outbound as i32);
    assert_eq!(i.origination, Origination::IntegrationApi as i32);
    assert_eq!(state_of(i.state), InteractionState::DeliveryPending);
    assert!(i.sequence >= 1);
    assert_eq!(i.associated_object, Some(object("003-ada")));
    let created = ts_nanos(&i.create_time).expect("create_time set");
    assert!(
        created >= before - 5_000_000_000,
        "create_time far in the past"
    );
    assert!(i.connect_time.is_none());
    assert!(i.end_time.is_none());
    assert!(i.complete_time.is_none());
    assert!(i.talk_duration.is_none());

    // GetInteraction gives the same interaction, with the object kept.
    let got = get(&mut c, &id).await.expect("GetInteraction");
    assert_eq!(got.id, id);
    assert_eq!(got.agent_id, "alice");
    assert_eq!(got.phone_number, "+12025550100");
    assert_eq!(got.associated_object, Some(object("003-ada")));
    assert_eq!(ts_nanos(&got.create_time), Some(created));

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_distinct() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let a = start_call(&mut c, NUM_OK).await;
    let b = start_call(&mut c, NUM_OK2).await;
    assert_ne!(a, b);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_header_means_default_agent() {
    let server = TestServer::start().await;
    let mut anon = server.anonymous_client();
    let id = start_call(&mut anon, NUM_OK).await;
    let i = get(&mut anon, &id).await.expect("GetInteraction");
    assert_eq!(i.agent_id, "default");

    // The same agent, named explicitly, sees it; another agent does not.
    let mut named = server.client("default");
    assert_eq!(get(&mut named, &id).await.expect("as default").id, id);
    let mut other = server.client("bob");
    assert_not_found(get(&mut other, &id).await, "bob's GetInteraction");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Phone numbers

async fn normalized(c: &mut Client, input: &str) -> String {
    let resp = start_ok(c, start_req(input)).await;
    let i = resp.interaction.expect("interaction in the response");
    // Keep the agent under its live-call limit.
    let _ = end(c, &i.id).await;
    i.phone_number
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_numbers_are_normalized() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    for (input, want) in [
        ("+12025550100", "+12025550100"),
        ("+1 (202) 555-0100", "+12025550100"),
        ("+1.202.555.0110", "+12025550110"),
        ("+1-202-555-0100", "+12025550100"),
        ("  +1 202 555 0100  ", "+12025550100"),
        ("+44 20 7946 0958", "+442079460958"),
        ("1234", "1234"),
        ("12", "12"),
        ("12345678", "12345678"),
    ] {
        assert_eq!(normalized(&mut c, input).await, want, "input {input:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_phone_numbers_are_rejected() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    for input in [
        "",
        "   ",
        "abc",
        "+1999",
        "+",
        "1",
        "123456789",
        "(202) 555-0100",
        "2025550100",
        "12#34",
    ] {
        let status = start_err(&mut c, start_req(input)).await;
        assert_bad_field(&status, "phone_number");
    }
    assert!(list_all(&mut c, InteractionState::Unspecified)
        .await
        .is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn national_numbers_need_a_default_region() {
    let server = TestServer::start_with(|c| c.default_region = Some("US".into())).await;
    let mut c = server.client("alice");
    assert_eq!(normalized(&mut c, "(202) 555-0100").await, "+12025550100");
    assert_eq!(normalized(&mut c, "202.555.0110").await, "+12025550110");
    // International numbers and extensions are unchanged by the region.
    assert_eq!(
        normalized(&mut c, "+44 20 7946 0958").await,
        "+442079460958"
    );
    assert_eq!(normalized(&mut c, "1234").await, "1234");
    let status = start_err(&mut c, start_req("abc")).await;
    assert_bad_field(&status, "phone_number");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_number_length_limit_is_32() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    // 32 characters, valid once separators are dropped.
    let at_limit = format!("{:<32}", "+1 (202) 555-0100");
    assert_eq!(at_limit.len(), 32);
    assert_eq!(normalized(&mut c, &at_limit).await, "+12025550100");
    // 33 characters: over the limit even though the digits are fine.
    let over = format!("{:<33}", "+1 (202) 555-0100");
    let status = start_err(&mut c, start_req(&over)).await;
    assert_bad_field(&status, "phone_number");
    let status = start_err(&mut c, start_req(&"1".repeat(40))).await;
    assert_bad_field(&status, "phone_number");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The associated object

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_limits_are_accepted_at_the_limit() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let mut obj = object("x");
    obj.id = "i".repeat(256);
    obj.r#type = "t".repeat(256);
    // 256 characters (512 bytes): limits count characters.
    obj.display_name = "é".repeat(256);
    obj.display_type = "d".repeat(256);
    obj.custom_fields = (0..64)
        .map(|n| (format!("{n:0>128}"), "v".repeat(100)))
        .collect();
    obj.custom_fields
        .insert(format!("{:0>128}", 0), "w".repeat(1024));
    let resp = start_ok(&mut c, start_req_object(NUM_OK, obj.clone())).await;
    let id = resp.interaction_id.expect("interaction_id");
    let got = get(&mut c, &id).await.expect("GetInteraction");
    assert_eq!(got.associated_object, Some(obj));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_fields_over_their_limits_are_rejected() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    type Change = Box<dyn Fn(&mut calldesk::proto::AssociatedObject)>;
    let cases: Vec<(&str, Change)> = vec![
        ("id", Box::new(|o| o.id = "i".repeat(257))),
        ("type", Box::new(|o| o.r#type = "t".repeat(257))),
        (
            "display_name",
            Box::new(|o| o.display_name = "n".repeat(257)),
        ),
        (
            "display_type",
            Box::new(|o| o.display_type = "d".repeat(257)),
        ),
        (
            "custom_fields",
            Box::new(|o| {
                o.custom_fields = (0..65).map(|n| (format!("k{n}"), "v".into())).collect()
            }),
        ),
        (
            "custom_fields",
            Box::new(|o| {
                o.custom_fields.insert("k".repeat(129), "v".into());
            }),
        ),
        (
            "custom_fields",
            Box::new(|o| {
                o.custom_fields.insert("k".into(), "v".repeat(1025));
            }),
        ),
    ];
    for (field, change) in cases {
        let mut obj = object("x");
        change(&mut obj);
        let status = start_err(&mut c, start_req_object(NUM_OK, obj)).await;
        assert_bad_field(&status, field);
    }
    assert!(list_all(&mut c, InteractionState::Unspecified)
        .await
        .is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_over_64_kib_is_resource_exhausted() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    // Every field within its own limit, but the message is about 73 KB.
    let mut obj = object("x");
    obj.custom_fields = (0..64)
        .map(|n| (format!("{n:0>128}"), "v".repeat(1024)))
        .collect();
    let status = start_err(&mut c, start_req_object(NUM_OK, obj)).await;
    assert_code(&status, Code::ResourceExhausted);

    // Same on another RPC.
    let status = complete(&mut c, "whatever", "", &"n".repeat(70 * 1024))
        .await
        .expect_err("oversized CompleteInteraction");
    assert_code(&status, Code::ResourceExhausted);

    assert!(list_all(&mut c, InteractionState::Unspecified)
        .await
        .is_empty());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_id_returns_the_same_interaction() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let first = start_ok(&mut c, start_req_id(NUM_OK, "req-1")).await;
    let id = first.interaction_id.clone().expect("interaction_id");
    assert_eq!(first.interaction.as_ref().unwrap().request_id, "req-1");

    let second = start_ok(&mut c, start_req_id(NUM_OK, "req-1")).await;
    assert_eq!(second.interaction_id.as_deref(), Some(id.as_str()));
    assert_eq!(second.outcome, StartCallOutcome::Started as i32);
    assert_eq!(
        second.interaction.as_ref().map(|i| i.id.as_str()),
        Some(id.as_str())
    );

    // One interaction exists.
    let all = list_all(&mut c, InteractionState::Unspecified).await;
    assert_eq!(all.len(), 1, "a retry must not create a second interaction");
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].request_id, "req-1");
    assert_eq!(get(&mut c, &id).await.unwrap().request_id, "req-1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_reused_with_a_different_request_is_rejected() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let first = start_ok(&mut c, start_req_id(NUM_OK, "req-2")).await;
    let status = start_err(&mut c, start_req_id(NUM_OK2, "req-2")).await;
    assert_code(&status, Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("request_id reused with a different request"),
        "message was {:?}",
        status.message()
    );
    // A different object is a different request too.
    let mut req = start_req_id(NUM_OK, "req-2");
    req.initial_object = Some(object("other"));
    let status = start_err(&mut c, req).await;
    assert_code(&status, Code::InvalidArgument);

    let all = list_all(&mut c, InteractionState::Unspecified).await;
    assert_eq!(all.len(), 1);
    assert_eq!(Some(all[0].id.clone()), first.interaction_id);
    server.shutdown().await;
}

/// Two identical StartCalls with one request_id at once, in one process (SQLite; across
/// replicas: tests/replicas.rs): the second waits for the first and gets its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identical_start_calls_at_once_get_one_outcome() {
    use prost::Message;
    const ORIGINATE: std::time::Duration = std::time::Duration::from_millis(300);
    let server = TestServer::start_sqlite_with(|c| c.originate_timeout = ORIGINATE).await;
    let (mut one, mut two) = (server.client("hana"), server.client("hana"));

    let (first, second) = tokio::join!(
        start_ok(&mut one, start_req_id(NUM_OK, "twin")),
        start_ok(&mut two, start_req_id(NUM_OK, "twin")),
    );
    assert_eq!(
        first.encode_to_vec(),
        second.encode_to_vec(),
        "byte-identical responses"
    );
    let all = list_all(&mut one, InteractionState::Unspecified).await;
    assert_eq!(all.len(), 1, "one interaction: {all:#?}");

    // A switch that never acknowledges: both get the first's ORIGINATE_TIMEOUT.
    let (first, second) = tokio::join!(
        start_err(&mut one, start_req_id(NUM_NO_ACK, "twin-timeout")),
        start_err(&mut two, start_req_id(NUM_NO_ACK, "twin-timeout")),
    );
    for status in [&first, &second] {
        assert_code(status, Code::DeadlineExceeded);
        assert_error_info(status, "ORIGINATE_TIMEOUT");
    }
    // The key was forgotten with the failure: a later retry dials again (and waits for the
    // switch again, rather than being answered from the key).
    let retried = std::time::Instant::now();
    let status = start_err(&mut one, start_req_id(NUM_NO_ACK, "twin-timeout")).await;
    assert_error_info(&status, "ORIGINATE_TIMEOUT");
    assert!(
        retried.elapsed() >= ORIGINATE,
        "answered in {:?}: not a new dial",
        retried.elapsed()
    );
    assert_eq!(
        list_all(&mut one, InteractionState::Unspecified)
            .await
            .len(),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_per_agent() {
    let server = TestServer::start().await;
    let mut a = server.client("alice");
    let mut b = server.client("bob");
    let ra = start_ok(&mut a, start_req_id(NUM_OK, "shared-key")).await;
    // Same key, other agent, even another number: independent.
    let rb = start_ok(&mut b, start_req_id(NUM_OK2, "shared-key")).await;
    assert_ne!(ra.interaction_id, rb.interaction_id);
    assert!(rb.interaction_id.is_some());
    assert_eq!(
        list_all(&mut a, InteractionState::Unspecified).await.len(),
        1
    );
    assert_eq!(
        list_all(&mut b, InteractionState::Unspecified).await.len(),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_is_not_refused_by_the_call_limit() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let first = start_ok(&mut c, start_req_id(NUM_OK, "k0")).await;
    for n in 1..4 {
        start_ok(&mut c, start_req_id(NUM_OK, &format!("k{n}"))).await;
    }
    // Four live calls: a retry of the first dials nothing, so it returns the first response.
    let retry = start_ok(&mut c, start_req_id(NUM_OK, "k0")).await;
    assert_eq!(retry.interaction_id, first.interaction_id);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_ids_are_rejected() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    for bad in [
        "r".repeat(129),
        "tab\there".into(),
        "newline\n".into(),
        "café".into(),
    ] {
        let status = start_err(&mut c, start_req_id(NUM_OK, &bad)).await;
        assert_bad_field(&status, "request_id");
    }
    assert!(list_all(&mut c, InteractionState::Unspecified)
        .await
        .is_empty());
    // 128 printable ASCII characters, spaces and punctuation included, are fine.
    let ok = format!("{:~<128}", "key with spaces & punctuation!");
    assert_eq!(ok.len(), 128);
    let resp = start_ok(&mut c, start_req_id(NUM_OK, &ok)).await;
    assert_eq!(resp.interaction.unwrap().request_id, ok);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Deferred Dial

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_dial_stages_the_number() {
    let server = TestServer::start_with(|c| c.deferred_dial = true).await;
    let mut c = server.client("alice");

    let empty = c
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad before staging")
        .into_inner();
    assert_eq!(empty.phone_number, "");

    let resp = start_ok(
        &mut c,
        start_req_object("+1 (202) 555-0100", object("003-ada")),
    )
    .await;
    assert_eq!(resp.outcome, StartCallOutcome::Deferred as i32);
    assert_eq!(
        resp.interaction_id, None,
        "no interaction_id under Deferred Dial"
    );
    assert!(
        resp.interaction.is_none(),
        "no interaction under Deferred Dial"
    );

    let pad = c
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad")
        .into_inner();
    assert_eq!(pad.phone_number, "+12025550100");
    assert_eq!(pad.initial_object, Some(object("003-ada")));
    assert!(pad.stage_time.is_some(), "stage_time set");

    // Nothing was dialed.
    assert!(list_all(&mut c, InteractionState::Unspecified)
        .await
        .is_empty());

    // The last staged number wins.
    start_ok(&mut c, start_req("+1 202 555 0110")).await;
    let pad2 = c
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad")
        .into_inner();
    assert_eq!(pad2.phone_number, "+12025550110");
    assert!(ts_nanos(&pad2.stage_time) >= ts_nanos(&pad.stage_time));

    // Each agent has a dialpad of its own.
    let mut b = server.client("bob");
    let pad_b = b
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad bob")
        .into_inner();
    assert_eq!(pad_b.phone_number, "");

    // Invalid numbers are still rejected.
    let status = start_err(&mut c, start_req("abc")).await;
    assert_bad_field(&status, "phone_number");
    server.shutdown().await;
}

#[tokio::test]
async fn dial_staged_dials_what_deferred_dial_staged_once_and_clears_it() {
    let server = TestServer::start_with(|c| c.deferred_dial = true).await;
    let mut c = server.client("dana");
    let dial = |request_id: &str| DialStagedRequest {
        request_id: request_id.to_owned(),
    };

    let status = c.dial_staged(dial("")).await.expect_err("nothing staged");
    assert_code(&status, Code::FailedPrecondition);
    assert_error_info(&status, "DIALPAD_EMPTY");

    start_ok(
        &mut c,
        start_req_object("+1 202 555 0100", object("003-dana")),
    )
    .await;
    let first = c
        .dial_staged(dial("click-1"))
        .await
        .expect("DialStaged")
        .into_inner();
    assert_eq!(first.outcome, StartCallOutcome::Started as i32);
    let id = first.interaction_id.clone().expect("an interaction");
    let interaction = first.interaction.clone().expect("its first snapshot");
    assert_eq!(interaction.phone_number, "+12025550100");
    assert_eq!(interaction.associated_object, Some(object("003-dana")));
    assert_eq!(interaction.request_id, "click-1");

    // The dialpad is empty now; a retry of the same click returns the same call.
    let pad = c
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad")
        .into_inner();
    assert_eq!(pad.phone_number, "", "the dialpad is cleared");
    let again = c
        .dial_staged(dial("click-1"))
        .await
        .expect("the retry")
        .into_inner();
    assert_eq!(again.interaction_id, Some(id.clone()));
    let status = c
        .dial_staged(dial("click-2"))
        .await
        .expect_err("a new click");
    assert_error_info(&status, "DIALPAD_EMPTY");
    assert_eq!(
        list_all(&mut c, InteractionState::Unspecified).await.len(),
        1
    );

    // The call lives as any other.
    let mut stream = watch(&mut c, &id, 0).await;
    wait_for_state(&mut stream, InteractionState::Delivered).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_dial_staged_retried_after_a_new_staging_gets_the_first_response() {
    let server = TestServer::start_with(|c| c.deferred_dial = true).await;
    let mut c = server.client("fay");
    let dial = |request_id: &str| DialStagedRequest {
        request_id: request_id.to_owned(),
    };
    start_ok(&mut c, start_req_object(NUM_OK, object("first"))).await;
    let first = c
        .dial_staged(dial("press-1"))
        .await
        .expect("DialStaged")
        .into_inner();
    assert_eq!(first.outcome, StartCallOutcome::Started as i32);
    // The response is lost; meanwhile the agent stages another number.
    start_ok(&mut c, start_req_object(NUM_OK2, object("second"))).await;
    let retry = c
        .dial_staged(dial("press-1"))
        .await
        .expect("the retry of press-1")
        .into_inner();
    assert_eq!(retry, first, "the first response, as for any answered key");
    let all = list_all(&mut c, InteractionState::Unspecified).await;
    assert_eq!(all.len(), 1, "the retry dialed nothing: {all:#?}");
    let pad = c
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad")
        .into_inner();
    assert_eq!(pad.phone_number, NUM_OK2, "the new staging stays staged");
    assert_eq!(pad.initial_object, Some(object("second")));
    // The key is DialStaged's: a StartCall under it is another request.
    let status = start_err(&mut c, start_req_id(NUM_OK, "press-1")).await;
    assert_bad_field(&status, "request_id");
    // A new press dials the new staging.
    let second = c
        .dial_staged(dial("press-2"))
        .await
        .expect("DialStaged of the new staging")
        .into_inner();
    let interaction = second.interaction.expect("an interaction");
    assert_eq!(interaction.phone_number, NUM_OK2);
    assert_ne!(second.interaction_id, first.interaction_id);
    server.shutdown().await;
}

#[tokio::test]
async fn dial_staged_keeps_the_active_call_limit() {
    let server = TestServer::start_with(|c| {
        c.deferred_dial = true;
        c.max_active_calls = 1;
    })
    .await;
    let mut c = server.client("erin");
    start_ok(&mut c, start_req(NUM_OK)).await;
    c.dial_staged(DialStagedRequest::default())
        .await
        .expect("the first dial");
    start_ok(&mut c, start_req(NUM_OK)).await;
    let status = c
        .dial_staged(DialStagedRequest::default())
        .await
        .expect_err("over the limit");
    assert_code(&status, Code::ResourceExhausted);
    assert_error_info(&status, "TOO_MANY_ACTIVE_CALLS");
    let pad = c
        .get_dialpad(GetDialpadRequest {})
        .await
        .expect("GetDialpad")
        .into_inner();
    assert_eq!(
        pad.phone_number, "+12025550100",
        "a refused dial keeps the staging"
    );
    server.shutdown().await;
}

/// Answered keys beyond `--idempotency-cache-keys` are read back from the store: the same
/// response, byte for byte, and REQUEST_ID_REUSED for a changed request, as for a cached one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_keys_beyond_the_cache_replay_from_the_store() {
    let server = TestServer::start_with(|c| c.idempotency_cache_keys = 1).await;
    let mut c = server.client("alice");
    let mut firsts = Vec::new();
    for n in 0..3 {
        firsts.push(start_ok(&mut c, start_req_id(NUM_BUSY, &format!("cache-{n}"))).await);
    }
    // Only cache-2 is held in memory now; cache-0 and cache-1 only in the store.
    for (n, first) in firsts.iter().enumerate() {
        let again = start_ok(&mut c, start_req_id(NUM_BUSY, &format!("cache-{n}"))).await;
        assert_eq!(
            &again, first,
            "the retry of cache-{n} is not the first response"
        );
    }
    let status = start_err(&mut c, start_req_id(NUM_OK, "cache-0")).await;
    assert_bad_field(&status, "request_id");
    let all = list_all(&mut c, InteractionState::Unspecified).await;
    assert_eq!(all.len(), 3, "a retry created an interaction");
    server.shutdown().await;
}
