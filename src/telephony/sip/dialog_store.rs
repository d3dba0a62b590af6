//! A connected call's legs as the store keeps them ([`CallDialogs`]), and back: each leg's
//! dialog as rsipstack snapshots it (its `DialogSnapshot`: Call-ID, tags, CSeqs, route set,
//! remote target), plus what calldesk keeps beside it (transport, o= line, last SDP).
//!
//! The call reports its dialogs (`SwitchSignal::Dialogs`) when it sends an INVITE (the agent's
//! phone's, the customer's, a 401/407 retry, a transfer's or consultation's target: each
//! ringing INVITE as a [`PendingInvite`], which a restart CANCELs, abandon.rs), when the bridge
//! is confirmed, after every hold or resume, and when a consultation's target answers or
//! leaves (its answered leg is kept too, for a restart's BYE: such a call is never adopted,
//! [`CallDialogs::connected`]); the call manager stores them. A restart rebuilds each leg with
//! rsipstack's `DialogLayer::restore_from_snapshot`, so that the dialog layer (and the edge,
//! which lets in only requests of known dialogs) knows it again: a far end's BYE or re-INVITE
//! reaches it as before, and calldesk's own requests go out on it.

use rsipstack::dialog::dialog::{Dialog, DialogSnapshot, DialogSnapshotState};
use rsipstack::dialog::DialogId;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{headers::untyped, Header, Request, Route, Transport, Uri};
use rsipstack::transaction::key::TransactionRole;

use super::engine::Engine;
use super::leg::{Leg, Role};
use super::legs::Legs;
use super::sdp::Origin;
use crate::domain::dialog::{CallDialogs, LegDialog, PendingInvite, ADOPTABLE_ROLES};

/// How far a restored dialog's CSeq jumps: calldesk may have sent requests after the last
/// report (a refused re-INVITE, a 491 retry), and each must stay below the next one (RFC 3261
/// §12.2.1.1). A few re-INVITEs per hold at most; a thousand is far above that, and far below
/// 2^31.
const CSEQ_STEP: u32 = 1000;

/// The legs an adopted call needs, in this order.
const KEPT: [Role; 2] = [Role::Agent, Role::Customer];

/// The stored name of a role (the first two are [`ADOPTABLE_ROLES`]).
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Agent => ADOPTABLE_ROLES[0],
        Role::Customer => ADOPTABLE_ROLES[1],
        // A transfer's target once answered is the Agent; a consultation's stays the Target.
        Role::Target => "transfer target",
    }
}

fn role_named(name: &str) -> Option<Role> {
    [Role::Agent, Role::Customer, Role::Target]
        .into_iter()
        .find(|role| role_name(*role) == name)
}

/// Whether [`call_dialogs`] keeps an answered [`Role::Target`] leg: a consultation's yes (a
/// restart hangs it up); a conference's not (the call is adopted with its two parties' legs
/// only, docs/api.md §8.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AnsweredTarget {
    Kept,
    Left,
}

/// What the store keeps of `legs`: the legs that answered (a target's as `target` says), and
/// every INVITE still ringing; None while there is neither.
pub(super) fn call_dialogs(
    legs: &mut Legs,
    held: bool,
    target: AnsweredTarget,
) -> Option<CallDialogs> {
    let mut kept = Vec::with_capacity(KEPT.len() + 1);
    let mut pending = Vec::new();
    for role in [Role::Agent, Role::Customer, Role::Target] {
        let Ok(leg) = legs.get_mut(role) else {
            continue;
        };
        if leg.ended {
            continue;
        }
        if leg.confirmed {
            if role != Role::Target || target == AnsweredTarget::Kept {
                if let Some(snapshot) = leg.snapshot() {
                    kept.push(leg_dialog(leg, snapshot));
                }
            }
        } else if leg.invite.is_some() {
            // A leg is parked only once confirmed: one still ringing is live.
            if let Some(dialog) = leg.live_dialog() {
                pending.extend(pending_invite(
                    role,
                    &dialog.initial_request(),
                    leg.transport,
                ));
            }
        }
    }
    if kept.is_empty() && pending.is_empty() {
        return None;
    }
    Some(CallDialogs {
        legs: kept,
        held,
        pending,
    })
}

/// What tells one report of a call's dialogs from the next without keeping it: a hash of
/// every field. Keeping the last report to compare with held its session descriptions for the
/// call's whole life (~1.4 KiB of every live call). Two different reports hashing alike
/// (2⁻⁶⁴) would skip one report; the next change sends it.
pub(super) fn fingerprint(dialogs: &CallDialogs) -> u64 {
    use std::hash::{Hash, Hasher};
    // Only this process compares them: any good 64-bit hash will do.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dialogs.hash(&mut hasher);
    hasher.finish()
}

/// What a CANCEL of `invite` (as it was sent, over `transport`) needs; None when it lacks a
/// header every INVITE rsipstack builds has.
pub(super) fn pending_invite(
    role: Role,
    invite: &Request,
    transport: Transport,
) -> Option<PendingInvite> {
    let route = invite
        .headers
        .iter()
        .filter_map(|h| match h {
            Header::Route(route) => Some(route.value().to_owned()),
            _ => None,
        })
        .collect();
    Some(PendingInvite {
        role: role_name(role).to_owned(),
        uri: invite.uri.to_string(),
        call_id: invite.call_id_header().ok()?.value().to_owned(),
        from: invite.from_header().ok()?.value().to_owned(),
        to: invite.to_header().ok()?.value().to_owned(),
        via: invite.via_header().ok()?.value().to_owned(),
        cseq: invite.cseq_header().ok()?.seq().ok()?,
        route,
        max_forwards: invite
            .max_forwards_header()
            .ok()
            .and_then(|m| m.value().trim().parse().ok())
            .unwrap_or(70),
        transport: transport_name(transport).to_owned(),
        destination: invite.uri.host_with_port.to_string(),
    })
}

/// A confirmed dialog's snapshot with its headers and URIs as text, as rsipstack prints and
/// parses them: what the store keeps of a leg's dialog (in a [`LegDialog`]), and what a parked
/// dialog is (parked.rs: parsed, as a `DialogSnapshot` holds them, ~1.7 KiB a leg; as text ~0.5).
pub(super) struct DialogText {
    pub from: String,
    pub to: String,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub local_contact: Option<String>,
    pub remote_uri: String,
    pub remote_contact: Option<String>,
    pub route_set: Vec<String>,
}

impl DialogText {
    /// `snapshot`'s id, and the rest of what makes its dialog as text.
    pub fn of(snapshot: DialogSnapshot) -> (DialogId, DialogText) {
        let text = DialogText {
            from: snapshot.from.to_string(),
            to: snapshot.to.to_string(),
            local_cseq: snapshot.local_cseq,
            remote_cseq: snapshot.remote_cseq,
            local_contact: snapshot.local_contact.map(|uri| uri.to_string()),
            remote_uri: snapshot.remote_uri.to_string(),
            remote_contact: snapshot.remote_contact.map(|c| c.value().to_owned()),
            route_set: snapshot
                .route_set
                .iter()
                .map(|route| route.value().to_owned())
                .collect(),
        };
        (snapshot.id, text)
    }

    /// The confirmed UAC dialog `id` again, parsed back (no 100rel, no Session-ID: the
    /// caller sets them if it kept them).
    pub fn snapshot(&self, id: DialogId) -> Result<DialogSnapshot, String> {
        let uri = |text: &str| Uri::try_from(text).map_err(|_| "bad URI".to_owned());
        Ok(DialogSnapshot {
            state: DialogSnapshotState::Confirmed,
            role: TransactionRole::Client,
            id,
            from: untyped::From::new(self.from.clone())
                .typed()
                .map_err(|_| "bad From")?,
            to: untyped::To::new(self.to.clone())
                .typed()
                .map_err(|_| "bad To")?,
            local_cseq: self.local_cseq,
            remote_cseq: self.remote_cseq,
            local_contact: self.local_contact.as_deref().map(uri).transpose()?,
            remote_uri: uri(&self.remote_uri)?,
            remote_contact: self.remote_contact.clone().map(untyped::Contact::new),
            route_set: self.route_set.iter().cloned().map(Route::new).collect(),
            supports_100rel: false,
            session_id: None,
        })
    }
}

/// What the store keeps of `leg`, whose dialog `snapshot` is.
fn leg_dialog(leg: &Leg, snapshot: DialogSnapshot) -> LegDialog {
    let (sdp_session_id, sdp_version) = leg.origin.parts();
    let (id, text) = DialogText::of(snapshot);
    LegDialog {
        role: role_name(leg.role).to_owned(),
        call_id: id.call_id,
        local_tag: id.local_tag,
        remote_tag: id.remote_tag,
        from: text.from,
        to: text.to,
        local_cseq: text.local_cseq,
        remote_cseq: text.remote_cseq,
        local_contact: text.local_contact,
        remote_uri: text.remote_uri,
        remote_contact: text.remote_contact,
        route_set: text.route_set,
        transport: transport_name(leg.transport).to_owned(),
        sdp_session_id,
        sdp_version,
        last_sdp: leg.last_sdp.clone(),
    }
}

fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
        _ => "UDP",
    }
}

pub(super) fn transport_named(name: &str) -> Transport {
    match name {
        "TCP" => Transport::Tcp,
        "TLS" => Transport::Tls,
        _ => Transport::Udp,
    }
}

/// Rebuilds the call's legs in the dialog layer. On error, none is left there. A call with a
/// leg ringing or a consultation's target is not taken up (the call manager does not ask).
pub(super) fn restore(engine: &Engine, dialogs: &CallDialogs) -> Result<Legs, String> {
    if !dialogs.connected() {
        return Err("not a connected call of two legs".to_owned());
    }
    let mut legs = Legs::default();
    let mut restored: Vec<DialogId> = Vec::new();
    for stored in &dialogs.legs {
        match restore_leg(engine, stored) {
            Ok(leg) => {
                restored.push(leg.id());
                legs.add(leg);
            }
            Err(e) => {
                for id in &restored {
                    engine.dialogs.remove_dialog(id);
                }
                return Err(e);
            }
        }
    }
    if KEPT.iter().any(|role| legs.get_mut(*role).is_err()) {
        for id in &restored {
            engine.dialogs.remove_dialog(id);
        }
        return Err("a leg is missing".to_owned());
    }
    Ok(legs)
}

pub(super) fn restore_leg(engine: &Engine, stored: &LegDialog) -> Result<Leg, String> {
    let role = role_named(&stored.role).ok_or_else(|| "unknown leg".to_owned())?;
    let snapshot = snapshot(stored)?;
    let id = snapshot.id.clone();
    let states = engine
        .states
        .register(&id.call_id)
        .ok_or_else(|| format!("{}: dialog already live", stored.role))?;
    match engine
        .dialogs
        .restore_from_snapshot(snapshot, engine.states.sender())
    {
        Ok(true) => {}
        Ok(false) => return Err(format!("{}: dialog already live", stored.role)),
        Err(_) => return Err(format!("{}: dialog not restored", stored.role)),
    }
    let Some(Dialog::Invite(dialog)) = engine.dialogs.get_dialog(&id) else {
        engine.dialogs.remove_dialog(&id);
        return Err(format!("{}: dialog not restored", stored.role));
    };
    Ok(Leg::restored(
        role,
        dialog,
        states,
        Origin::resume(engine.local.ip(), stored.sdp_session_id, stored.sdp_version),
        transport_named(&stored.transport),
        stored.last_sdp.clone(),
    ))
}

/// rsipstack's snapshot of a stored dialog, its local CSeq [`CSEQ_STEP`] above the stored one.
fn snapshot(stored: &LegDialog) -> Result<DialogSnapshot, String> {
    let text = DialogText {
        from: stored.from.clone(),
        to: stored.to.clone(),
        local_cseq: stored.local_cseq.saturating_add(CSEQ_STEP),
        remote_cseq: stored.remote_cseq,
        local_contact: stored.local_contact.clone(),
        remote_uri: stored.remote_uri.clone(),
        remote_contact: stored.remote_contact.clone(),
        route_set: stored.route_set.clone(),
    };
    let id = DialogId {
        call_id: stored.call_id.clone(),
        local_tag: stored.local_tag.clone(),
        remote_tag: stored.remote_tag.clone(),
    };
    text.snapshot(id)
        .map_err(|e| format!("{}: {e}", stored.role))
}
