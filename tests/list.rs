//! ListInteractions: newest first, pagination, the default page size and the state filter.

mod support;

use calldesk::proto::{InteractionState as S, ListInteractionsRequest, ListInteractionsResponse};
use support::{in_process::TestServer, *};

async fn page(c: &mut Client, size: i32, token: &str, state: S) -> ListInteractionsResponse {
    c.list_interactions(ListInteractionsRequest {
        page_size: size,
        page_token: token.to_string(),
        state: state as i32,
    })
    .await
    .unwrap_or_else(|s| panic!("ListInteractions({size}, {token:?}): {s:?}"))
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_newest_first() {
    let server = TestServer::start_with(|c| c.max_active_calls = 100).await;
    let mut c = server.client("alice");
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(start_call(&mut c, NUM_OK).await);
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let p1 = page(&mut c, 2, "", S::Unspecified).await;
    assert_eq!(p1.interactions.len(), 2);
    assert_ne!(p1.next_page_token, "");
    let p2 = page(&mut c, 2, &p1.next_page_token, S::Unspecified).await;
    assert_eq!(p2.interactions.len(), 2);
    assert_ne!(p2.next_page_token, "");
    let p3 = page(&mut c, 2, &p2.next_page_token, S::Unspecified).await;
    assert_eq!(p3.interactions.len(), 1);
    assert_eq!(
        p3.next_page_token, "",
        "the last page has no next_page_token"
    );

    let got: Vec<String> = [p1, p2, p3]
        .into_iter()
        .flat_map(|p| p.interactions)
        .map(|i| i.id)
        .collect();
    assert_eq!(got, newest_first);

    // Exactly divisible: the last full page may carry a token, but following it ends cleanly.
    let mut all = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let p = page(&mut c, 5, &token, S::Unspecified).await;
        all.extend(p.interactions.into_iter().map(|i| i.id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(all, newest_first);

    // New interactions appear at the front.
    let newer = start_call(&mut c, NUM_OK2).await;
    let p = page(&mut c, 1, "", S::Unspecified).await;
    assert_eq!(p.interactions[0].id, newer);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_zero_means_fifty() {
    let server = TestServer::start_with(|c| c.max_active_calls = 100).await;
    let mut c = server.client("alice");
    let mut created = Vec::new();
    for _ in 0..53 {
        created.push(start_call(&mut c, NUM_OK).await);
    }
    let p1 = page(&mut c, 0, "", S::Unspecified).await;
    assert_eq!(p1.interactions.len(), 50, "page_size 0 means 50");
    assert_ne!(p1.next_page_token, "");
    let p2 = page(&mut c, 0, &p1.next_page_token, S::Unspecified).await;
    assert_eq!(p2.interactions.len(), 3);
    assert_eq!(p2.next_page_token, "");
    let got: Vec<String> = p1
        .interactions
        .into_iter()
        .chain(p2.interactions)
        .map(|i| i.id)
        .collect();
    created.reverse();
    assert_eq!(got, created);
    let big = page(&mut c, 1000, "", S::Unspecified).await;
    assert_eq!(big.interactions.len(), 53);
    assert_eq!(big.next_page_token, "");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_filter() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let busy1 = start_call(&mut c, NUM_BUSY).await;
    let live = start_call(&mut c, NUM_OK).await;
    let busy2 = start_call(&mut c, NUM_BUSY).await;
    for id in [&busy1, &busy2] {
        let (_w, _) = watch_until(&mut c, id, S::WrapUp).await;
    }
    let (_w, _) = watch_until(&mut c, &live, S::Delivered).await;

    let ids = |v: Vec<calldesk::proto::Interaction>| -> Vec<String> {
        v.into_iter().map(|i| i.id).collect()
    };
    assert_eq!(
        ids(list_all(&mut c, S::WrapUp).await),
        vec![busy2.clone(), busy1.clone()]
    );
    assert_eq!(
        ids(list_all(&mut c, S::Delivered).await),
        vec![live.clone()]
    );
    assert!(list_all(&mut c, S::Completed).await.is_empty());
    assert!(list_all(&mut c, S::Hold).await.is_empty());
    assert_eq!(list_all(&mut c, S::Unspecified).await.len(), 3);

    // The filter follows changes, and pagination works with it.
    complete(&mut c, &busy1, "", "").await.expect("Complete");
    assert_eq!(
        ids(list_all(&mut c, S::Completed).await),
        vec![busy1.clone()]
    );
    let p1 = page(&mut c, 1, "", S::WrapUp).await;
    assert_eq!(ids(p1.interactions), vec![busy2.clone()]);
    if !p1.next_page_token.is_empty() {
        let p2 = page(&mut c, 1, &p1.next_page_token, S::WrapUp).await;
        assert!(p2.interactions.is_empty());
        assert_eq!(p2.next_page_token, "");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_interactions_are_complete_snapshots() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let (id, _w, events) = call_until(&mut c, NUM_BUSY, S::WrapUp).await;
    let listed = list_all(&mut c, S::Unspecified).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], get(&mut c, &id).await.unwrap());
    assert_eq!(
        Some(&listed[0]),
        events.last().unwrap().interaction.as_ref()
    );
    server.shutdown().await;
}

/// ListInteractions with a token, as `agent` on `addr`: the page, or the refusal.
async fn try_page(
    c: &mut Client,
    size: i32,
    token: &str,
    state: S,
) -> Result<ListInteractionsResponse, tonic::Status> {
    c.list_interactions(ListInteractionsRequest {
        page_size: size,
        page_token: token.to_string(),
        state: state as i32,
    })
    .await
    .map(tonic::Response::into_inner)
}

fn assert_bad_token(result: Result<ListInteractionsResponse, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{what}: {status:?}"
    );
    assert_bad_field(&status, "page_token");
}

/// The store-wide row a token of the first format (`hex("v1.<state>.<row>")`) named, if it is
/// one.
fn row_in_first_format(token: &str) -> Option<i64> {
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    String::from_utf8(bytes)
        .ok()?
        .rsplit('.')
        .next()?
        .parse()
        .ok()
}

/// Issue 22: page tokens are opaque and authenticated, bound to the agent and the filter, and
/// valid across a restart: a forged token, another agent's, another filter's, or one changed
/// by a character is INVALID_ARGUMENT, and no token tells how many interactions other agents
/// created between two of an agent's pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_are_opaque_authenticated_and_survive_a_restart() {
    use support::process::{fast_flags, ServerProcess};
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = fast_flags(&["--max-active-calls", "100"]);
    let mut server = ServerProcess::start(dir.path(), &flags).await;
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));
    let mut created = vec![start_call(&mut alice, NUM_OK).await];
    for _ in 0..20 {
        start_call(&mut bob, NUM_OK).await;
    }
    for _ in 0..2 {
        created.push(start_call(&mut alice, NUM_OK).await);
    }
    created.reverse();

    let first = page(&mut alice, 1, "", S::Unspecified).await;
    let again = page(&mut alice, 1, "", S::Unspecified).await;
    let token = first.next_page_token.clone();
    assert_ne!(token, "");
    assert_ne!(
        token, again.next_page_token,
        "a token is sealed afresh each time"
    );
    let second = page(&mut alice, 1, &token, S::Unspecified).await;
    assert_eq!(second.interactions[0].id, created[1]);
    for t in [&token, &second.next_page_token] {
        assert_eq!(row_in_first_format(t), None, "the token shows a row: {t}");
    }

    let forged: String = "v1.0.999999".bytes().map(|b| format!("{b:02x}")).collect();
    assert_bad_token(
        try_page(&mut alice, 1, &forged, S::Unspecified).await,
        "forged",
    );
    let mut altered = token.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    let altered = String::from_utf8(altered).expect("ascii");
    assert_bad_token(
        try_page(&mut alice, 1, &altered, S::Unspecified).await,
        "altered",
    );
    assert_bad_token(
        try_page(&mut bob, 1, &token, S::Unspecified).await,
        "bob's use",
    );
    assert_bad_token(
        try_page(&mut alice, 1, &token, S::DeliveryPending).await,
        "filter",
    );

    // A restart keeps the key in the store: the token still reads the same page.
    let (status, _) = server.stop_collecting_stderr().await;
    assert!(status.success(), "{status}");
    let server = ServerProcess::start(dir.path(), &flags).await;
    let mut alice = server.client("alice");
    let after = page(&mut alice, 1, &token, S::Unspecified).await;
    assert_eq!(after.interactions[0].id, created[1], "after the restart");
}

/// docs/api.md §5: pages never repeat an interaction, and interactions created after the first
/// page never appear on later ones (with or without a state filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_created_between_pages_do_not_appear_and_nothing_repeats() {
    let server = TestServer::start_with(|c| c.max_active_calls = 100).await;
    let mut c = server.client("paula");
    let mut before = Vec::new();
    for _ in 0..5 {
        let (id, _watch, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
        before.push(id);
    }
    // Without a filter, then DELIVERED only: every call here is DELIVERED before a page is
    // read, those made between pages included, so only their creation can keep them out.
    for state in [S::Unspecified, S::Delivered] {
        let mut seen = Vec::new();
        let mut later = Vec::new();
        let mut token = String::new();
        for _ in 0..10 {
            let p = page(&mut c, 2, &token, state).await;
            seen.extend(p.interactions.into_iter().map(|i| i.id));
            let (id, _watch, _) = call_until(&mut c, NUM_OK, S::Delivered).await;
            later.push(id);
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        let newest_first: Vec<String> = before.iter().rev().cloned().collect();
        assert_eq!(
            seen, newest_first,
            "{state:?}: every call made before the first page once, newest first, and none \
             made after it ({later:?})"
        );
        before.extend(later);
    }
    server.shutdown().await;
}
