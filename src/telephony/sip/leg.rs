//! One leg of a call: an INVITE dialog calldesk started, toward the agent's phone or the
//! customer, and the session description calldesk last sent on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{Dialog, DialogSnapshot, DialogState, TerminatedReason};
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::{Response, StatusCode, StatusCodeKind, Transport, Uri};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::ack::ack_2xx;
use super::conformance::invite_headers;
use super::engine::Engine;
use super::identity::Presentation;
use super::outcome::InviteOutcome;
use super::parked::ParkedDialogs;
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

/// Where a leg's dialog is.
enum Held {
    /// In rsipstack's dialog layer: re-INVITEs, BYE, CANCEL go out on it.
    Live(InviteDialog),
    /// Parked (parked.rs) under this id while the call waits; back in the layer when needed.
    Parked(Arc<ParkedDialogs>, DialogId),
}

pub(super) struct Leg {
    /// Whom it reaches: the call finds its legs by role.
    pub role: Role,
    /// rsipstack's dialog, or where it is parked: [`Leg::dialog`] brings it back.
    held: Held,
    /// It may be parked: its dialog has no credentials (a restored dialog would have none
    /// to answer a challenge of its BYE or re-INVITE with).
    parkable: bool,
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
        let parkable = option.credential.is_none();
        let (dialog, handle) = span.in_scope(|| {
            engine
                .dialogs
                .do_invite_async(option, sender)
                .map_err(|_| "could not build the INVITE".to_owned())
        })?;
        tracing::debug!(sip_call_id = %call_id, leg = role.name(), "INVITE sent");
        Ok(Leg {
            role,
            held: Held::Live(dialog),
            parkable,
            states,
            invite: Some(Invite { handle, span }),
            origin: Origin::new(engine.local.ip()),
            transport,
            last_sdp: None,
            confirmed: false,
            ended: false,
        })
    }

    /// A leg whose dialog was restored (a restart's adoption, dialog_store.rs).
    pub fn restored(
        role: Role,
        dialog: InviteDialog,
        states: LegStates,
        origin: Origin,
        transport: Transport,
        last_sdp: Option<String>,
    ) -> Leg {
        Leg {
            role,
            held: Held::Live(dialog),
            // Restored, it has no credentials: parking loses none.
            parkable: true,
            states,
            invite: None,
            origin,
            transport,
            last_sdp,
            confirmed: true,
            ended: false,
        }
    }

    pub fn sip_call_id(&self) -> String {
        self.id().call_id
    }

    /// Its dialog's id (its remote tag comes with the far end's answer).
    pub fn id(&self) -> DialogId {
        match &self.held {
            Held::Live(dialog) => dialog.id(),
            Held::Parked(_, id) => id.clone(),
        }
    }

    /// The dialog if it is live (in the dialog layer), without bringing it back.
    pub fn live_dialog(&self) -> Option<&InviteDialog> {
        match &self.held {
            Held::Live(dialog) => Some(dialog),
            Held::Parked(..) => None,
        }
    }

    /// rsipstack's snapshot of the dialog: taken now if it is live, as it was parked if not.
    pub fn snapshot(&self) -> Option<DialogSnapshot> {
        match &self.held {
            Held::Live(dialog) => Some(dialog.snapshot()),
            Held::Parked(parked, id) => parked.snapshot(id),
        }
    }

    /// The leg's dialog, back in the dialog layer first if it was parked (or found there, if a
    /// request of it arrived meanwhile: incoming.rs). An error when it was lost.
    pub fn dialog(&mut self, engine: &Engine) -> Result<&InviteDialog, String> {
        if let Held::Parked(parked, id) = &self.held {
            parked.unpark(&engine.dialogs, engine.states.sender(), id)?;
            match engine.dialogs.get_dialog(id) {
                Some(Dialog::Invite(dialog)) => self.held = Held::Live(dialog),
                _ => return Err(format!("{}: dialog lost", self.role.name())),
            }
        }
        match &self.held {
            Held::Live(dialog) => Ok(dialog),
            Held::Parked(..) => Err(format!("{}: dialog lost", self.role.name())),
        }
    }

    /// Parks the dialog while the call waits (parked.rs): only a confirmed dialog with
    /// nothing under way (its INVITE's outcome taken). One that a request brought back
    /// (incoming.rs) is parked again.
    pub fn park(&mut self, engine: &Engine) {
        if !self.parkable || !self.confirmed || self.ended || self.invite.is_some() {
            return;
        }
        let dialog = match &self.held {
            Held::Live(dialog) => dialog.clone(),
            Held::Parked(parked, id) if parked.contains(id) => return,
            Held::Parked(_, id) => match engine.dialogs.get_dialog(id) {
                Some(Dialog::Invite(dialog)) => dialog,
                _ => return,
            },
        };
        if !matches!(dialog.state(), DialogState::Confirmed(..)) {
            return;
        }
        let snapshot = dialog.snapshot();
        let id = snapshot.id.clone();
        engine.parked.park(&engine.dialogs, snapshot);
        self.held = Held::Parked(engine.parked.clone(), id);
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
        let dialog = match self.dialog(engine) {
            Ok(dialog) => dialog.clone(),
            Err(e) => {
                tracing::warn!(sip_call_id = %self.sip_call_id(), error = %e, "cannot end the leg");
                return;
            }
        };
        if self.confirmed {
            let bye = tracing::debug_span!("sip.bye", leg = self.role.name());
            if let Err(e) = dialog.bye().instrument(bye).await {
                tracing::debug!(sip_call_id = %self.sip_call_id(), error = %e, "BYE failed");
            }
        } else {
            let cancel = tracing::debug_span!("sip.cancel", leg = self.role.name());
            if dialog.cancel().instrument(cancel).await.is_err() {
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
                        let _ = ack_2xx(engine, self.transport, &dialog, &response, None).await;
                    }
                }
            }
        }
        engine.dialogs.remove_dialog(&dialog.id());
    }

    /// Acknowledges a 2xx on this leg, with `sdp` when the 2xx carried an offer.
    pub async fn ack(&mut self, engine: &Engine, response: &Response, sdp: Option<String>) {
        let dialog = match self.dialog(engine) {
            Ok(dialog) => dialog.clone(),
            Err(e) => {
                tracing::warn!(sip_call_id = %self.sip_call_id(), error = %e, "could not send ACK");
                return;
            }
        };
        if let Err(e) = ack_2xx(engine, self.transport, &dialog, response, sdp)
            .instrument(tracing::debug_span!("sip.ack", leg = self.role.name()))
            .await
        {
            tracing::warn!(sip_call_id = %self.sip_call_id(), error = %e, "could not send ACK");
        }
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        // A leg dropped parked (its call handed over, or stopped quietly) leaves nothing.
        if let Held::Parked(parked, id) = &self.held {
            parked.forget(id);
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
