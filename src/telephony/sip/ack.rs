//! ACKs for 2xx responses, sent by calldesk itself.
//!
//! RFC 3725 Flow IV sends the customer's answer in the ACK, after the agent's re-INVITE: the
//! ACK cannot go out when the 200 arrives. rsipstack ACKs every 2xx by itself unless
//! `EndpointOption::auto_ack_2xx` is off, and then leaves every 2xx ACK to the application,
//! so the switch acknowledges all of them here: the agent's 200, the customer's 200 (with
//! the answer) and the 200s to re-INVITEs.
//!
//! An ACK of a 2xx is a request of its own (RFC 3261 §13.2.2.4, §17.1.1.3): the CSeq number of
//! the INVITE it acknowledges, a new branch, the dialog's route set, the credentials of that
//! INVITE, Max-Forwards, and `rport` like every other request calldesk sends.

use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Header, Param, Request, Response, SipMessage};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transport::SipAddr;

use super::engine::Engine;

/// Acknowledges `response`, a 2xx to the INVITE or a re-INVITE of `dialog`, with `sdp` as
/// its body when the 2xx carried an offer. A retransmitted 2xx gets the same ACK again.
pub(super) async fn ack_2xx(
    engine: &Engine,
    transport: rsipstack::sip::Transport,
    dialog: &InviteDialog,
    response: &Response,
    sdp: Option<String>,
) -> Result<(), String> {
    let initial = dialog.initial_request();
    let initial_seq = initial.cseq_header().ok().and_then(|c| c.seq().ok());
    let answered_seq = response.cseq_header().ok().and_then(|c| c.seq().ok());
    let reinvite = initial_seq != answered_seq;

    // rsipstack's ACK builder takes the INVITE it answers. For a re-INVITE, an INVITE with
    // the dialog's To tag and route set stands for it, without the credentials of the first
    // INVITE: calldesk's re-INVITEs carry none unless challenged.
    let mut invite = initial;
    let snapshot = dialog.snapshot();
    if reinvite {
        let to = response.to_header().map_err(|e| e.to_string())?.clone();
        invite.headers.retain(|h| {
            !matches!(
                h,
                Header::To(_)
                    | Header::Route(_)
                    | Header::Authorization(_)
                    | Header::ProxyAuthorization(_)
            )
        });
        invite.headers.push(Header::To(to));
        for route in snapshot.route_set.iter() {
            invite.headers.push(Header::Route(route.clone()));
        }
    }
    let mut response = response.clone();
    if response.contact_header().is_err() {
        // A 2xx to a re-INVITE without a Contact keeps the remote target.
        response
            .headers
            .push(Header::Contact(format!("<{}>", snapshot.remote_uri).into()));
    }

    let endpoint = &engine.endpoint;
    let mut ack: Request = endpoint
        .make_ack(&invite, &response)
        .map_err(|e| e.to_string())?;
    with_rport(&mut ack);
    if let Some(sdp) = sdp {
        ack.headers
            .retain(|h| !matches!(h, Header::ContentLength(_) | Header::ContentType(_)));
        ack.headers
            .push(Header::ContentType(super::conformance::SDP.into()));
        ack.headers
            .push(Header::ContentLength((sdp.len() as u32).into()));
        ack.body = sdp.into_bytes();
    }

    let mut target = SipAddr::try_from(&ack.destination()).map_err(|e| e.to_string())?;
    if target.r#type.is_none() {
        target.r#type = Some(transport);
    }
    let (connection, resolved) = endpoint
        .transport_layer
        .lookup(&target, None)
        .await
        .map_err(|e| e.to_string())?;
    connection
        .send(SipMessage::Request(ack.clone()), Some(&resolved))
        .await
        .map_err(|e| e.to_string())?;

    // The endpoint answers a retransmitted 2xx of a finished INVITE transaction with the
    // message kept for it: our ACK.
    if let Ok(key) = TransactionKey::from_response(&response, TransactionRole::Client) {
        engine.finished.leave(key, SipMessage::Request(ack));
    }
    Ok(())
}

/// rsipstack's builder gives the ACK's Via a new branch and nothing else: add `rport` (RFC
/// 3581), which every other request calldesk sends carries.
fn with_rport(ack: &mut Request) {
    let top_via = ack.headers.iter_mut().find_map(|h| match h {
        Header::Via(via) => Some(via),
        _ => None,
    });
    let Some(via) = top_via else { return };
    if let Ok(mut typed) = via.typed() {
        if !typed.params.iter().any(|p| matches!(p, Param::Rport(_))) {
            typed.params.push(Param::Rport(None));
            *via = typed.into();
        }
    }
}
