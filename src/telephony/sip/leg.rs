//! One leg of a call: an INVITE dialog calldesk started, toward the agent's phone or the
//! customer, and the session description calldesk last sent on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Response, StatusCode, StatusCodeKind, Transport, Uri};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::ack::ack_2xx;
use super::conformance::invite_headers;
use super::engine::Engine;
use super::identity::Presentation;
use super::outcome::InviteOutcome;
use super::sdp::Origin;
use super::states::LegStates;

/// Whom a leg reaches. A call has at most one leg of each role; a new party (a transfer's
/// target) is a new role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The agent's own phone, rung first.
    Agent,
    /// The customer, through the trunk.
    Customer,
    /// A blind transfer's target while it rings (then it becomes the call's `Agent`).
    Target,
}

impl Role {
    /// The start of failure details and the `leg` field of log lines.
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent's phone",
            Role::Customer => "customer",
            Role::Target => "transfer target",
        }
    }
}

/// What happened on a leg: one of [`Leg::poll_event`]'s results.
pub(super) enum LegEvent {
    /// Its dialog changed state, or the far end sent a request inside it.
    State(DialogState),
    /// The INVITE that created it ended (reported once).
    Invite(InviteOutcome),
}

/// The INVITE transaction that creates a leg, and its span (`sip.invite`), which lasts until
/// the outcome is taken.
pub(super) struct Invite {
    handle: JoinHandle<InviteAsyncResult>,
    span: tracing::Span,
}

pub(super) struct Leg {
    /// Whom it reaches: the call finds its legs by role.
    pub role: Role,
    /// rsipstack's dialog: re-INVITEs, BYE, CANCEL, its id.
    pub dialog: InviteDialog,
    /// The dialog's state changes and the far end's in-dialog requests.
    pub states: LegStates,
    /// The INVITE transaction, until its outcome has been taken.
    pub invite: Option<Invite>,
    /// The o= line's session id and version for every description sent on this leg
    /// (RFC 3264 §5: the version goes up with each change).
    pub origin: Origin,
    /// What the leg's requests go over (its ACKs too, when the far end's Contact names none).
    pub transport: Transport,
    /// The description calldesk last sent on this leg (after its answer was accepted).
    pub last_sdp: Option<String>,
    /// A 2xx to its INVITE was taken: ending it is a BYE, not a CANCEL.
    pub confirmed: bool,
    /// Its BYE or CANCEL went out, or the far end hung up: ending it again does nothing.
    pub ended: bool,
}

impl Leg {
    /// Sends the INVITE (`offer` as its body, or none; `presentation`'s display name in From
    /// and its headers) and returns at once.
    pub fn start(
        engine: &Engine,
        role: Role,
        callee: Uri,
        caller: Uri,
        presentation: Presentation,
        offer: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Leg, String> {
        let call_id = format!("{}@calldesk", uuid::Uuid::now_v7());
        let contact = engine.contact_for(&callee)?;
        let transport = engine.transport_for(&callee);
        let destination = engine.destination(&callee);
        let mut headers = invite_headers(offer.is_some());
        headers.extend(presentation.headers);
        let option = InviteOption {
            caller,
            caller_display_name: presentation.display_name,
            callee,
            destination: Some(destination),
            headers: Some(headers),
            offer: offer.map(String::into_bytes),
            contact,
            credential,
            call_id: Some(call_id.clone()),
            ..Default::default()
        };
        let states = engine
            .states
            .register(&call_id)
            .ok_or_else(|| format!("Call-ID {call_id} is taken"))?;
        let sender = engine.states.sender();
        let span = tracing::debug_span!(
            "sip.invite",
            leg = role.name(),
            sip_call_id = %call_id,
            status = tracing::field::Empty,
        );
        let (dialog, handle) = span.in_scope(|| {
            engine
                .dialogs
                .do_invite_async(option, sender)
                .map_err(|_| "could not build the INVITE".to_owned())
        })?;
        tracing::debug!(sip_call_id = %call_id, leg = role.name(), "INVITE sent");
        Ok(Leg {
            role,
            dialog,
            states,
            invite: Some(Invite { handle, span }),
            origin: Origin::new(engine.local.ip()),
            transport,
            last_sdp: None,
            confirmed: false,
            ended: false,
        })
    }

    pub fn sip_call_id(&self) -> String {
        self.dialog.id().call_id
    }

    /// The next thing that happens on this leg: a state change first, then the INVITE's
    /// outcome (once). Pending forever once both are spent.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<LegEvent> {
        if let Poll::Ready(Some(state)) = self.states.poll_recv(cx) {
            return Poll::Ready(LegEvent::State(state));
        }
        if let Some(Invite { handle, span }) = self.invite.as_mut() {
            if let Poll::Ready(result) = Pin::new(handle).poll(cx) {
                // The INVITE's span ends here.
                if let Ok(Ok((_, Some(response)))) = &result {
                    span.record("status", response.status_code.code());
                }
                self.invite = None;
                return Poll::Ready(LegEvent::Invite(InviteOutcome::of(result)));
            }
        }
        Poll::Pending
    }

    /// Ends the leg: BYE once answered, CANCEL before. Waits for the far end's response
    /// (callers bound the wait). Idempotent.
    pub async fn end(&mut self, engine: &Arc<Engine>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if self.confirmed {
            let bye = tracing::debug_span!("sip.bye", leg = self.role.name());
            if let Err(e) = self.dialog.bye().instrument(bye).await {
                tracing::debug!(sip_call_id = %self.sip_call_id(), error = %e, "BYE failed");
            }
        } else {
            let cancel = tracing::debug_span!("sip.cancel", leg = self.role.name());
            if self.dialog.cancel().instrument(cancel).await.is_err() {
                tracing::debug!(sip_call_id = %self.sip_call_id(), "CANCEL failed");
            }
            // The INVITE ends with 487, or with a 2xx that crossed the CANCEL: rsipstack
            // ends that session with a BYE, and its ACK is ours.
            if let Some(Invite {
                handle,
                span: _invite,
            }) = self.invite.take()
            {
                let wait = engine.endpoint.option.t1x64 + std::time::Duration::from_secs(1);
                if let Ok(Ok(Ok((_, Some(response))))) = tokio::time::timeout(wait, handle).await {
                    if response.status_code.kind() == StatusCodeKind::Successful {
                        let _ =
                            ack_2xx(engine, self.transport, &self.dialog, &response, None).await;
                    }
                }
            }
        }
        engine.dialogs.remove_dialog(&self.dialog.id());
    }

    /// Acknowledges a 2xx on this leg, with `sdp` when the 2xx carried an offer.
    pub async fn ack(&self, engine: &Engine, response: &Response, sdp: Option<String>) {
        if let Err(e) = ack_2xx(engine, self.transport, &self.dialog, response, sdp)
            .instrument(tracing::debug_span!("sip.ack", leg = self.role.name()))
            .await
        {
            tracing::warn!(sip_call_id = %self.sip_call_id(), error = %e, "could not send ACK");
        }
    }
}

/// True when the far end of a leg hung up (a BYE it sent ended the dialog).
pub(super) fn far_end_hung_up(state: &DialogState) -> bool {
    matches!(state, DialogState::Terminated(_, TerminatedReason::UasBye))
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
