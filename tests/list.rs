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
