//! Requests that reach the SIP stack: the edge only lets through those inside one of
//! calldesk's dialogs or transactions, which go to their dialog here (a BYE from the far end
//! is seen only this way). One whose dialog ended meanwhile is answered here.

use std::sync::Arc;

use rsipstack::dialog::dialog::{Dialog, DialogState};
use rsipstack::dialog::DialogId;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Method, StatusCode};
use rsipstack::transaction::{Transaction, TransactionReceiver};

use super::engine::Engine;

pub(super) async fn serve(engine: Arc<Engine>, mut incoming: TransactionReceiver) {
    while let Some(tx) = incoming.recv().await {
        if !well_formed(&tx) {
            // The edge vets every request first: this is a last resort.
            tracing::debug!("dropped a malformed SIP request");
            continue;
        }
        let engine = engine.clone();
        tokio::spawn(async move { dispatch(&engine, tx).await });
    }
}

/// The headers every request needs before anything can answer it.
fn well_formed(tx: &Transaction) -> bool {
    let req = &tx.original;
    req.call_id_header().is_ok()
        && req.cseq_header().is_ok_and(|c| c.seq().is_ok())
        && req.from_header().is_ok_and(|f| f.tag().is_ok())
        && req.to_header().is_ok_and(|t| t.tag().is_ok())
        && req.via_header().is_ok()
}

async fn dispatch(engine: &Engine, mut tx: Transaction) {
    let method = tx.original.method;
    let call_id = tx
        .original
        .call_id_header()
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if let Some((dialog, unparked)) = match_dialog(engine, &tx) {
        let Dialog::Invite(mut dialog) = dialog else {
            let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
            return;
        };
        tracing::debug!(sip_call_id = %call_id, %method, "in-dialog request");
        if let Err(e) = dialog.handle(&mut tx).await {
            tracing::debug!(sip_call_id = %call_id, %method, error = %e, "in-dialog request failed");
        }
        if unparked && matches!(dialog.state(), DialogState::Confirmed(..)) {
            // Some requests change nothing the call hears of (one with an old CSeq, a method
            // rsipstack refuses): it is told all the same, as rsipstack tells it after an
            // OPTIONS, so that it parks the dialog again rather than keep it out for good.
            let _ = engine.states.sender().send(DialogState::Confirmed(
                dialog.id(),
                tx.last_response.clone().unwrap_or_default(),
            ));
        }
        return;
    }
    let status = match method {
        Method::Ack => return,
        // calldesk places calls; it never takes one.
        Method::Invite => StatusCode::Forbidden,
        Method::Options => StatusCode::OK,
        Method::Bye | Method::Cancel | Method::Update | Method::Info | Method::PRack => {
            StatusCode::CallTransactionDoesNotExist
        }
        _ => StatusCode::MethodNotAllowed,
    };
    tracing::debug!(sip_call_id = %call_id, %method, status = status.code(), "out-of-dialog request");
    if let Err(e) = tx.reply(status).await {
        tracing::debug!(sip_call_id = %call_id, error = %e, "could not answer");
    }
}

/// The dialog `tx` belongs to, brought back into the dialog layer first if it is parked
/// (parked.rs; then true): its call parks it again once it has heard of the request.
fn match_dialog(engine: &Engine, tx: &Transaction) -> Option<(Dialog, bool)> {
    if let Some(dialog) = engine.dialogs.match_dialog(tx) {
        return Some((dialog, false));
    }
    let id = DialogId::try_from(tx).ok()?;
    if !engine.parked.contains(&id) {
        return None;
    }
    if let Err(e) = engine
        .parked
        .unpark(&engine.dialogs, engine.states.sender(), &id)
    {
        tracing::warn!(sip_call_id = %id.call_id, error = %e, "a parked dialog was lost");
        return None;
    }
    Some((engine.dialogs.match_dialog(tx)?, true))
}
