//! One leg of a call: an INVITE dialog calldesk started, toward the agent's phone or the
//! customer, and the session description calldesk last sent on it.

use std::sync::Arc;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Response, StatusCode, StatusCodeKind, Uri};
use tokio::task::JoinHandle;

use super::ack::ack_2xx;
use super::conformance::invite_headers;
use super::engine::Engine;
use super::sdp::Origin;

/// How the INVITE that created a leg ended.
pub(super) enum InviteOutcome {
    Answered(Response),
    Refused(Response),
    /// The transaction ended without any final response.
    NoResponse,
    /// It could not be sent, or rsipstack failed (the text names no peer data).
    Error(String),
}

pub(super) struct Leg {
    /// "agent's phone" or "customer": the start of failure details.
    pub name: &'static str,
    pub dialog: InviteDialog,
    pub states: DialogStateReceiver,
    /// The INVITE transaction, until its outcome has been taken.
    pub invite: Option<JoinHandle<InviteAsyncResult>>,
    pub origin: Origin,
    /// The description calldesk last sent on this leg (after its answer was accepted).
    pub last_sdp: Option<String>,
    pub confirmed: bool,
    pub ended: bool,
}

impl Leg {
    /// Sends the INVITE (`offer` as its body, or none) and returns at once.
    pub fn start(
        engine: &Engine,
        name: &'static str,
        callee: Uri,
        caller: Uri,
        offer: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Leg, String> {
        let call_id = format!("{}@calldesk", uuid::Uuid::now_v7());
        let contact = engine.local_uri("calldesk")?;
        let destination = engine.destination(&callee);
        let option = InviteOption {
            caller,
            callee,
            destination: Some(destination),
            headers: Some(invite_headers(offer.is_some())),
            offer: offer.map(String::into_bytes),
            contact,
            credential,
            call_id: Some(call_id.clone()),
            ..Default::default()
        };
        let (sender, states) = engine.dialogs.new_dialog_state_channel();
        let (dialog, invite) = engine
            .dialogs
            .do_invite_async(option, sender)
            .map_err(|_| "could not build the INVITE".to_owned())?;
        tracing::debug!(sip_call_id = %call_id, leg = name, "INVITE sent");
        Ok(Leg {
            name,
            dialog,
            states,
            invite: Some(invite),
            origin: Origin::new(engine.local.ip()),
            last_sdp: None,
            confirmed: false,
            ended: false,
        })
    }

    pub fn sip_call_id(&self) -> String {
        self.dialog.id().call_id
    }

    /// Ends the leg: BYE once answered, CANCEL before. Waits for the far end's response
    /// (callers bound the wait). Idempotent.
    pub async fn end(&mut self, engine: &Arc<Engine>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if self.confirmed {
            if let Err(e) = self.dialog.bye().await {
                tracing::debug!(sip_call_id = %self.sip_call_id(), error = %e, "BYE failed");
            }
        } else {
            if self.dialog.cancel().await.is_err() {
                tracing::debug!(sip_call_id = %self.sip_call_id(), "CANCEL failed");
            }
            // The INVITE ends with 487, or with a 2xx that crossed the CANCEL: rsipstack
            // ends that session with a BYE, and its ACK is ours.
            if let Some(invite) = self.invite.take() {
                let wait = engine.endpoint.option.t1x64 + std::time::Duration::from_secs(1);
                if let Ok(Ok(Ok((_, Some(response))))) = tokio::time::timeout(wait, invite).await {
                    if response.status_code.kind() == StatusCodeKind::Successful {
                        let _ = ack_2xx(
                            &engine.endpoint,
                            engine.transport(),
                            &self.dialog,
                            &response,
                            None,
                        )
                        .await;
                    }
                }
            }
        }
        engine.dialogs.remove_dialog(&self.dialog.id());
    }

    /// Acknowledges a 2xx on this leg, with `sdp` when the 2xx carried an offer.
    pub async fn ack(&self, engine: &Engine, response: &Response, sdp: Option<String>) {
        if let Err(e) = ack_2xx(
            &engine.endpoint,
            engine.transport(),
            &self.dialog,
            response,
            sdp,
        )
        .await
        {
            tracing::warn!(sip_call_id = %self.sip_call_id(), error = %e, "could not send ACK");
        }
    }
}

/// Resolves when the INVITE in `invite` ends; never, once its outcome was taken. A free
/// function so that `select!` can borrow a leg's fields apart.
pub(super) async fn outcome(invite: &mut Option<JoinHandle<InviteAsyncResult>>) -> InviteOutcome {
    let Some(handle) = invite.as_mut() else {
        return std::future::pending().await;
    };
    let result = handle.await;
    *invite = None;
    match result {
        Ok(Ok((_, Some(response)))) => match response.status_code.kind() {
            StatusCodeKind::Successful => InviteOutcome::Answered(response),
            StatusCodeKind::Provisional => InviteOutcome::NoResponse,
            _ => InviteOutcome::Refused(response),
        },
        Ok(Ok((_, None))) => InviteOutcome::NoResponse,
        Ok(Err(_)) => InviteOutcome::Error("transport failure".to_owned()),
        Err(_) => InviteOutcome::Error("internal error".to_owned()),
    }
}

/// True when the far end of a leg hung up (a BYE it sent ended the dialog).
pub(super) fn far_end_hung_up(state: &DialogState) -> bool {
    matches!(state, DialogState::Terminated(_, TerminatedReason::UasBye))
}

/// "486 Busy Here": the status code and reason phrase of a response.
pub(super) fn status_detail(response: &Response) -> String {
    let code = response.status_code.code();
    let reason = response
        .reason_phrase()
        .map(str::to_owned)
        .unwrap_or_else(|| response.status_code.text().to_owned());
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    if reason.is_empty() {
        code.to_string()
    } else {
        format!("{code} {reason}")
    }
}

/// Answers a request the far end sent inside a leg's dialog, which calldesk does not relay.
pub(super) async fn answer_in_dialog(state: DialogState) {
    let (handle, status) = match state {
        DialogState::Options(_, _, handle) => (handle, StatusCode::OK),
        DialogState::Info(_, _, handle) => (handle, StatusCode::OK),
        // A re-INVITE or UPDATE from the far end would change the media on one side only.
        DialogState::Updated(_, _, handle) => (handle, StatusCode::NotAcceptableHere),
        DialogState::Refer(_, _, handle)
        | DialogState::Message(_, _, handle)
        | DialogState::Notify(_, _, handle)
        | DialogState::Publish(_, _, handle) => (handle, StatusCode::MethodNotAllowed),
        _ => return,
    };
    let _ = handle.reply(status).await;
}
