//! OPTIONS to the trunk: `trunk_up` is false while it does not answer.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::sip::headers::CallId;
use rsipstack::sip::{typed, Method, Param, SipMessage, StatusCodeKind};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::{make_tag, Transaction};
use rsipstack::transport::SipAddr;

use super::engine::Engine;
use super::outcome::is_local;

pub(super) async fn run(engine: Arc<Engine>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u32 = 0;
    loop {
        ticker.tick().await;
        seq = seq.wrapping_add(1);
        // Wait at most one interval (and less than Timer F, whose 408 is made up locally).
        let wait = interval.min(Duration::from_secs(30));
        let answered = matches!(
            tokio::time::timeout(wait, ping(&engine, seq)).await,
            Ok(true)
        );
        let changed = engine.trunk_up.send_if_modified(|up| {
            let before = *up;
            *up = answered;
            before != answered
        });
        if changed {
            if answered {
                tracing::info!("the trunk answers OPTIONS again");
            } else {
                tracing::warn!("the trunk does not answer OPTIONS");
            }
        }
    }
}

/// Sends one OPTIONS; true once the trunk answers it, whatever the status.
async fn ping(engine: &Engine, seq: u32) -> bool {
    let Ok(from_uri) = engine.local_uri("calldesk") else {
        return false;
    };
    let mut from_uri = from_uri;
    from_uri.params.clear();
    let from = typed::From {
        display_name: None,
        uri: from_uri,
        params: vec![Param::Tag(make_tag())],
    };
    let to = typed::To {
        display_name: None,
        uri: engine.trunk.clone(),
        params: vec![],
    };
    // The Via names where calldesk listens for this transport (all share one port).
    let listen = SipAddr {
        r#type: Some(engine.transport_for(&engine.trunk)),
        addr: engine.local.into(),
    };
    let Ok(via) = engine.endpoint.get_via(Some(listen), None) else {
        return false;
    };
    let call_id = CallId::from(format!("{}@calldesk", uuid::Uuid::now_v7()));
    let request = engine.endpoint.make_request(
        Method::Options,
        engine.with_transport(engine.trunk.clone()),
        via,
        from,
        to,
        seq,
        Some(call_id),
    );
    let Ok(key) = TransactionKey::from_request(&request, TransactionRole::Client) else {
        return false;
    };
    let mut tx = Transaction::new_client(key, request, engine.endpoint.clone(), None);
    tx.destination = Some(engine.destination(&engine.trunk));
    if tx.send().await.is_err() {
        return false;
    }
    while let Some(message) = tx.receive().await {
        if let SipMessage::Response(response) = message {
            if response.status_code.kind() != StatusCodeKind::Provisional {
                return !is_local(&response);
            }
        }
    }
    false
}
