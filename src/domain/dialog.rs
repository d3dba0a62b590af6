//! What a call's SIP dialogs need to go on after a restart: the switch reports it
//! (telephony/sip/dialog_store.rs), the store keeps it with the interaction (`call_dialogs`),
//! and a restarted server (or a surviving replica) hands it back to the switch, which rebuilds
//! each leg's dialog from it (telephony/sip/adopt.rs). A call still being set up (a leg
//! ringing) is reported too, with what a CANCEL of each ringing INVITE needs: a restart cannot
//! take such a call up, but it ends it cleanly (telephony/sip/abandon.rs).
//!
//! Plain text fields, as the headers are written on the wire, so that the stored form does
//! not depend on the SIP stack's types. Stored as JSON. It holds the session descriptions
//! each leg last sent: never log it (its `Debug` leaves them out).

use serde::{Deserialize, Serialize};

/// The roles of the legs a restart can take up again: the agent's phone and the customer.
/// Any other answered leg (`transfer target`: a consultation's target) means a call a restart
/// ends instead.
pub const ADOPTABLE_ROLES: [&str; 2] = ["agent", "customer"];

/// A call's dialogs: one per answered leg, the INVITEs still ringing, and whether the call is
/// on hold. Only a call whose every leg answered, none rings and no third party is in it can
/// be taken up again.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallDialogs {
    /// Each answered leg calldesk placed (the agent's phone, the customer, a consultation's
    /// target): one dialog each.
    pub legs: Vec<LegDialog>,
    /// The media is held: a resume is what comes next, and a hold is already done.
    pub held: bool,
    /// The INVITEs still ringing (no final response yet): what a restart CANCELs. Absent from
    /// rows written before it existed, which were all connected calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingInvite>,
}

/// An INVITE still ringing, as sent: what its CANCEL (RFC 3261 §9.1: the same Request-URI,
/// Call-ID, From, To, CSeq number and top Via, and its Route headers) and the ACK of the 487
/// that follows (§17.1.1.3) are built from. No body and no credentials: a CANCEL carries
/// neither.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PendingInvite {
    /// Whom the leg reaches: `agent`, `customer` or `transfer target`.
    pub role: String,
    /// The INVITE's Request-URI.
    pub uri: String,
    /// Its Call-ID.
    pub call_id: String,
    /// Its From header's value (calldesk's tag included).
    pub from: String,
    /// Its To header's value (no tag: nobody answered).
    pub to: String,
    /// Its top Via header's value: the branch names the INVITE's transaction.
    pub via: String,
    /// Its CSeq number (a 401/407 retry sends a new INVITE with a higher one).
    pub cseq: u32,
    /// Its Route header values, in order (empty without a route set).
    pub route: Vec<String>,
    /// Its Max-Forwards.
    pub max_forwards: u32,
    /// What it went over: `UDP`, `TCP` or `TLS`.
    pub transport: String,
    /// Where it went (`host:port`): the CANCEL goes there too (§9.1).
    pub destination: String,
}

/// One leg's dialog (RFC 3261 §12: what in-dialog requests are built from), and the session
/// description calldesk last sent on it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LegDialog {
    /// Whom the leg reaches: `agent`, `customer` or `transfer target` (a consultation's
    /// target, which a restart hangs up: [`CallDialogs::connected`] is false then).
    pub role: String,
    /// The dialog's Call-ID.
    pub call_id: String,
    /// calldesk's tag (its From tag: calldesk sent the INVITE).
    pub local_tag: String,
    /// The far end's tag (the To tag of its 2xx).
    pub remote_tag: String,
    /// The From header's value as calldesk sends it (display name, URI, tag).
    pub from: String,
    /// The To header's value as calldesk sends it (the far end's tag included).
    pub to: String,
    /// The CSeq number of calldesk's last request in the dialog: the next one is higher.
    pub local_cseq: u32,
    /// The CSeq number of the far end's last request.
    pub remote_cseq: u32,
    /// calldesk's Contact in the dialog.
    pub local_contact: Option<String>,
    /// The dialog's remote URI (the INVITE's Request-URI).
    pub remote_uri: String,
    /// The remote target: the far end's Contact header value.
    pub remote_contact: Option<String>,
    /// The route set (Record-Route of the 2xx, reversed), each a Route header value.
    pub route_set: Vec<String>,
    /// What the leg's requests go over: `UDP`, `TCP` or `TLS`.
    pub transport: String,
    /// The o= line's session id of the descriptions calldesk sends on this leg.
    pub sdp_session_id: u64,
    /// The o= line's version of the last one sent: the next goes up (RFC 3264 §5).
    pub sdp_version: u64,
    /// The session description calldesk last sent on this leg (the answer or offer the far
    /// end accepted): a hold or resume re-INVITE is this with another direction.
    pub last_sdp: Option<String>,
}

impl std::fmt::Debug for CallDialogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallDialogs")
            .field("legs", &self.legs)
            .field("held", &self.held)
            .field("pending", &self.pending)
            .finish()
    }
}

impl std::fmt::Debug for LegDialog {
    // Never the SDP: it names the parties' media addresses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegDialog")
            .field("role", &self.role)
            .field("call_id", &self.call_id)
            .field("local_cseq", &self.local_cseq)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PendingInvite {
    // Neither the numbers nor the display names of From and To.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingInvite")
            .field("role", &self.role)
            .field("call_id", &self.call_id)
            .field("cseq", &self.cseq)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl CallDialogs {
    /// Whether every leg answered, none rings and each is the agent's phone or the customer
    /// (no consultation under way): a call a restart may take up again.
    pub fn connected(&self) -> bool {
        self.pending.is_empty()
            && !self.legs.is_empty()
            && self
                .legs
                .iter()
                .all(|leg| ADOPTABLE_ROLES.contains(&leg.role.as_str()))
    }

    /// The stored form (JSON).
    pub fn encode(&self) -> String {
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Back from the stored form; None when it does not read (written by another version).
    pub fn decode(text: &str) -> Option<CallDialogs> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(role: &str) -> LegDialog {
        LegDialog {
            role: role.into(),
            call_id: "c@calldesk".into(),
            local_tag: "l".into(),
            remote_tag: "r".into(),
            from: "<sip:a@127.0.0.1>;tag=l".into(),
            to: "<sip:b@127.0.0.1>;tag=r".into(),
            local_cseq: 3,
            remote_cseq: 0,
            local_contact: Some("sip:calldesk@127.0.0.1:5060".into()),
            remote_uri: "sip:b@127.0.0.1".into(),
            remote_contact: Some("<sip:b@127.0.0.1:5070>".into()),
            route_set: vec![],
            transport: "UDP".into(),
            sdp_session_id: 7,
            sdp_version: 2,
            last_sdp: Some("v=0\r\nc=IN IP4 10.0.0.1\r\n".into()),
        }
    }

    #[test]
    fn the_stored_form_reads_back_and_debug_leaves_the_sdp_out() {
        let dialogs = CallDialogs {
            legs: vec![leg("agent"), leg("customer")],
            held: true,
            pending: vec![],
        };
        assert_eq!(
            CallDialogs::decode(&dialogs.encode()),
            Some(dialogs.clone())
        );
        assert_eq!(CallDialogs::decode("{"), None);
        let printed = format!("{dialogs:?}");
        assert!(!printed.contains("10.0.0.1"), "{printed}");
        assert!(printed.contains("c@calldesk"));
    }

    #[test]
    fn a_row_written_before_pending_existed_reads_as_a_connected_call() {
        let old = CallDialogs {
            legs: vec![leg("agent"), leg("customer")],
            held: false,
            pending: vec![],
        };
        let text = old.encode();
        assert!(!text.contains("pending"), "{text}");
        let read = CallDialogs::decode(&text).expect("reads");
        assert!(read.connected());
        let ringing = CallDialogs {
            legs: vec![leg("agent")],
            held: false,
            pending: vec![PendingInvite {
                role: "customer".into(),
                uri: "sip:+12025550100@127.0.0.1:5070".into(),
                call_id: "p@calldesk".into(),
                from: "<sip:calldesk@127.0.0.1>;tag=f".into(),
                to: "<sip:+12025550100@127.0.0.1:5070>".into(),
                via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx;rport".into(),
                cseq: 2,
                route: vec![],
                max_forwards: 70,
                transport: "UDP".into(),
                destination: "127.0.0.1:5070".into(),
            }],
        };
        let read = CallDialogs::decode(&ringing.encode()).expect("reads");
        assert_eq!(read, ringing);
        assert!(!read.connected());
        let printed = format!("{read:?}");
        assert!(!printed.contains("2025550100"), "{printed}");
    }

    #[test]
    fn a_call_with_a_consultations_target_answered_is_not_connected() {
        let consulting = CallDialogs {
            legs: vec![leg("agent"), leg("customer"), leg("transfer target")],
            held: true,
            pending: vec![],
        };
        let read = CallDialogs::decode(&consulting.encode()).expect("reads");
        assert_eq!(read, consulting);
        assert!(!read.connected());
    }
}
