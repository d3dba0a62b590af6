//! Ending what a previous process (a crash, a dead replica) left of a call that cannot be taken
//! up: its legs still ringing, or a transfer under way. Both phones are told: each ringing
//! INVITE gets a CANCEL, each answered leg a BYE, from the dialogs the call reported
//! (dialog_store.rs); the call manager ends the interaction SERVER_RESTART meanwhile.
//!
//! The INVITE's transaction died with the process that sent it, so the CANCEL is rebuilt from
//! its record (RFC 3261 §9.1: the INVITE's Request-URI, Call-ID, From, To, CSeq number, top Via
//! and Route headers; a CANCEL is hop-by-hop, sent where the INVITE went) and sent as a
//! transaction of its own. The far end then ends the INVITE with a 487, which wants an ACK
//! (§17.1.1.3: the INVITE's top Via, the response's To tag). The ACK is left, for 64*T1, where
//! rsipstack keeps the last message of a finished transaction: the edge lets a response to a
//! transaction it knows reach the stack, and the stack answers such a response with that ACK
//! (its To tag taken from the response). Nothing else is kept: each abandoned INVITE costs one
//! entry there, for 32 s, and a task while its CANCEL and BYEs are under way.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::sip::headers::{CSeq, CallId, From, MaxForwards, Route, To, Via};
use rsipstack::sip::{Header, Method, Request, SipMessage, StatusCodeKind, Uri, Version};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::SipAddr;
use tracing::Instrument;

use super::dialog_store::{restore_leg, transport_named};
use super::engine::Engine;
use super::SipSwitch;
use crate::domain::dialog::{CallDialogs, LegDialog, PendingInvite};

impl SipSwitch {
    /// Tells the phones of `dialogs` that their call is over, in the background.
    pub(super) fn abandon_call(&self, call_id: &str, dialogs: CallDialogs) {
        tracing::info!(
            %call_id,
            ringing = dialogs.pending.len(),
            answered = dialogs.legs.len(),
            "ending a call a previous process left: CANCEL what rings, BYE what answered"
        );
        let span = tracing::info_span!(parent: None, "sip.abandon", %call_id);
        for pending in dialogs.pending {
            let engine = self.engine.clone();
            self.runtime
                .spawn(async move { cancel(&engine, &pending).await }.instrument(span.clone()));
        }
        for stored in dialogs.legs {
            let engine = self.engine.clone();
            self.runtime
                .spawn(async move { bye(&engine, &stored).await }.instrument(span.clone()));
        }
    }
}

/// Hangs up the answered leg `stored`, its dialog restored for the BYE.
async fn bye(engine: &Engine, stored: &LegDialog) {
    match restore_leg(engine, stored) {
        Ok(mut leg) => {
            match leg.dialog(engine) {
                Ok(dialog) => {
                    if let Err(e) = dialog.bye().await {
                        tracing::debug!(leg = %stored.role, error = %e, "BYE failed");
                    }
                }
                Err(why) => tracing::warn!(leg = %stored.role, why, "could not hang up a leg"),
            }
            engine.dialogs.remove_dialog(&leg.id());
        }
        Err(why) => tracing::warn!(leg = %stored.role, why, "could not hang up a leg"),
    }
}

/// CANCELs `pending` and waits for the CANCEL's final response (its transaction bounds the
/// wait: 64*T1 at most); leaves the ACK of the INVITE's 487 for the stack.
async fn cancel(engine: &Arc<Engine>, pending: &PendingInvite) {
    let built = (
        request_of(pending, Method::Invite),
        request_of(pending, Method::Cancel),
        request_of(pending, Method::Ack),
    );
    let (Ok(invite), Ok(cancel), Ok(ack)) = built else {
        tracing::warn!(leg = %pending.role, "could not rebuild a ringing INVITE's CANCEL");
        return;
    };
    let keys = (
        TransactionKey::from_request(&invite, TransactionRole::Client),
        TransactionKey::from_request(&cancel, TransactionRole::Client),
    );
    let (Ok(invite_key), Ok(cancel_key)) = keys else {
        tracing::warn!(leg = %pending.role, "a ringing INVITE's record names no transaction");
        return;
    };
    // For 487s (or any final response) to the INVITE.
    engine.finished.leave(invite_key, SipMessage::Request(ack));
    let keep = engine.endpoint.option.t1x64;

    let destination = SipAddr {
        r#type: Some(transport_named(&pending.transport)),
        addr: match pending.destination.as_str().try_into() {
            Ok(addr) => addr,
            Err(_) => {
                tracing::warn!(leg = %pending.role, "a ringing INVITE's destination does not read");
                return;
            }
        },
    };
    let mut tx = Transaction::new_client(cancel_key, cancel, engine.endpoint.clone(), None);
    tx.destination = Some(destination);
    if let Err(e) = tx.send().await {
        tracing::debug!(leg = %pending.role, error = %e, "CANCEL not sent");
        return;
    }
    let answered = tokio::time::timeout(keep + Duration::from_secs(1), async {
        while let Some(message) = tx.receive().await {
            if let SipMessage::Response(response) = message {
                if response.status_code.kind() != StatusCodeKind::Provisional {
                    return Some(response.status_code.code());
                }
            }
        }
        None
    })
    .await;
    match answered {
        Ok(Some(status)) => tracing::info!(leg = %pending.role, status, "ringing INVITE cancelled"),
        _ => tracing::info!(leg = %pending.role, "no answer to the CANCEL"),
    }
}

/// `method` (CANCEL, or the ACK of a non-2xx, or the INVITE as a key) of the ringing INVITE
/// `pending`: its Request-URI, top Via, Call-ID, From, To, CSeq number and Route headers, and
/// Max-Forwards. No body, no Contact, no credentials.
pub(super) fn request_of(pending: &PendingInvite, method: Method) -> Result<Request, String> {
    let uri = Uri::try_from(pending.uri.as_str()).map_err(|_| "bad Request-URI".to_owned())?;
    let mut headers: Vec<Header> = vec![
        Via::new(pending.via.clone()).into(),
        MaxForwards::new(pending.max_forwards.to_string()).into(),
        From::new(pending.from.clone()).into(),
        To::new(pending.to.clone()).into(),
        CallId::new(pending.call_id.clone()).into(),
        CSeq::new(format!("{} {method}", pending.cseq)).into(),
    ];
    headers.extend(
        pending
            .route
            .iter()
            .map(|route| Header::Route(Route::new(route.clone()))),
    );
    headers.push(Header::ContentLength(0u32.into()));
    Ok(Request {
        method,
        uri,
        headers: headers.into(),
        version: Version::V2,
        body: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ringing() -> PendingInvite {
        PendingInvite {
            role: "customer".into(),
            uri: "sip:+12025550100@127.0.0.1:5070".into(),
            call_id: "01938@calldesk".into(),
            from: "\"Acme\" <sip:+15550001111@127.0.0.1:5070>;tag=ft1".into(),
            to: "<sip:+12025550100@127.0.0.1:5070>".into(),
            via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinvite1;rport".into(),
            cseq: 2,
            route: vec!["<sip:proxy.test;lr>".into()],
            max_forwards: 70,
            transport: "UDP".into(),
            destination: "127.0.0.1:5070".into(),
        }
    }

    /// RFC 3261 §9.1: the CANCEL names the INVITE's transaction (its key but the method), has
    /// exactly the INVITE's Request-URI, Call-ID, From, To, CSeq number, a single Via (the
    /// INVITE's top one) and its Route; no body, no Contact, no credentials.
    #[test]
    fn the_cancel_of_a_record_is_the_invites_as_rfc_3261_9_1_says() {
        let cancel = request_of(&ringing(), Method::Cancel).expect("builds");
        let text = cancel.to_string();
        let expected = [
            "CANCEL sip:+12025550100@127.0.0.1:5070 SIP/2.0\r\n",
            "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinvite1;rport\r\n",
            "Max-Forwards: 70\r\n",
            "From: \"Acme\" <sip:+15550001111@127.0.0.1:5070>;tag=ft1\r\n",
            "To: <sip:+12025550100@127.0.0.1:5070>\r\n",
            "Call-ID: 01938@calldesk\r\n",
            "CSeq: 2 CANCEL\r\n",
            "Route: <sip:proxy.test;lr>\r\n",
            "Content-Length: 0\r\n",
        ];
        for line in expected {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert_eq!(text.matches("Via:").count(), 1, "{text}");
        for absent in [
            "Contact",
            "Authorization",
            "Content-Type",
            "tag=ft1\r\nTo: <sip:+12025550100@127.0.0.1:5070>;tag",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert!(cancel.body.is_empty());

        let invite = request_of(&ringing(), Method::Invite).expect("builds");
        let server_side = |request: &Request| {
            TransactionKey::from_request(request, TransactionRole::Server).expect("a key")
        };
        // The far end matches the CANCEL to the INVITE it rings for (§9.2).
        assert_eq!(server_side(&cancel), server_side(&invite));
    }

    /// The ACK left for the 487 (§17.1.1.3) has the INVITE's top Via, CSeq number (method ACK)
    /// and To (the stack adds the response's tag).
    #[test]
    fn the_ack_of_the_487_has_the_invites_via_and_cseq() {
        let ack = request_of(&ringing(), Method::Ack)
            .expect("builds")
            .to_string();
        assert!(
            ack.starts_with("ACK sip:+12025550100@127.0.0.1:5070 SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(ack.contains("branch=z9hG4bKinvite1"), "{ack}");
        assert!(ack.contains("CSeq: 2 ACK\r\n"), "{ack}");
    }
}
