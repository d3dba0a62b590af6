//! What calldesk adds to, or takes out of, the SIP messages rsipstack builds, so that every
//! message it sends follows RFC 3261's header tables (§20, Tables 2 and 3) and §7.4.
//!
//! Where calldesk builds a request itself (the INVITEs and re-INVITEs of [`super::leg`] and
//! [`super::call`]) it passes [`invite_headers`]. What rsipstack builds on its own (BYE, CANCEL,
//! the ACK of a non-2xx, every response) passes through [`Conformance`] on its way out:
//!
//! | message | change | why |
//! |---|---|---|
//! | INVITE without a body (the customer's, Flow IV) | no Content-Type (rsipstack always adds one) | §7.4.1: it describes a body |
//! | BYE, CANCEL and their responses | no Contact (rsipstack puts one on every in-dialog message) | Tables 2 and 3: "not applicable", so MUST NOT be present |
//! | CANCEL | no Allow (rsipstack copies the INVITE's headers) | Table 2: not applicable |
//! | ACK of a non-2xx (rsipstack copies the response's Via) | the Via as sent: no `received`, a bare `rport` | §17.1.1.3: equal to the INVITE's top Via |
//! | OPTIONS (the trunk keepalive) | Accept | Table 2: SHOULD |
//! | 405 | Allow | Table 2: mandatory |
//! | 2xx to OPTIONS | Allow, Accept, Supported | §11.2, Table 2: SHOULD |

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{
    Header, Headers, Method, Param, Request, Response, SipMessage, StatusCode, StatusCodeKind,
};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;

/// Every method calldesk understands (§20.5: all of them, ACK and CANCEL included). An INVITE
/// outside a dialog is understood, and refused.
pub(super) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";

/// The option tags of the extensions calldesk supports: none. An empty Supported says so
/// (§20.37); calldesk does not do 100rel, timer, replaces or any other.
pub(super) const SUPPORTED: &str = "";

/// The only body calldesk sends or reads.
pub(super) const SDP: &str = "application/sdp";

/// The headers calldesk adds to an INVITE or re-INVITE beyond rsipstack's: Allow and Supported
/// (§13.2.1: SHOULD), and Content-Type when it carries SDP (§7.4.1: MUST; rsipstack's
/// `reinvite` adds none).
pub(super) fn invite_headers(with_sdp: bool) -> Vec<Header> {
    let mut headers = vec![
        Header::Allow(ALLOW.into()),
        Header::Supported(SUPPORTED.into()),
    ];
    if with_sdp {
        headers.push(Header::ContentType(SDP.into()));
    }
    headers
}

/// The endpoint's inspector: see the table at the top.
pub(super) struct Conformance;

impl MessageInspector for Conformance {
    fn before_send(&self, mut msg: SipMessage, _dest: Option<&SipAddr>) -> SipMessage {
        match &mut msg {
            SipMessage::Request(request) => conform_request(request),
            SipMessage::Response(response) => conform_response(response),
        }
        msg
    }

    fn after_received(&self, msg: SipMessage, _from: Option<&SipAddr>) -> SipMessage {
        msg
    }
}

fn conform_request(request: &mut Request) {
    match request.method {
        Method::Invite if request.body.is_empty() => {
            request
                .headers
                .retain(|h| !matches!(h, Header::ContentType(_)));
        }
        Method::Bye => {
            request.headers.retain(|h| !matches!(h, Header::Contact(_)));
        }
        Method::Cancel => {
            request
                .headers
                .retain(|h| !matches!(h, Header::Contact(_) | Header::Allow(_)));
        }
        Method::Ack => as_sent(request),
        Method::Options => add_missing(&mut request.headers, Header::Accept(SDP.into())),
        _ => {}
    }
}

/// A response as the table above wants it; also for the edge's stateless answers, which
/// do not pass through rsipstack.
pub(super) fn conform_response(response: &mut Response) {
    let method = response
        .cseq_header()
        .ok()
        .and_then(|cseq| cseq.method().ok());
    if matches!(method, Some(Method::Bye | Method::Cancel)) {
        response
            .headers
            .retain(|h| !matches!(h, Header::Contact(_)));
    }
    let options_ok = method == Some(Method::Options)
        && response.status_code.kind() == StatusCodeKind::Successful;
    let headers = &mut response.headers;
    if response.status_code == StatusCode::MethodNotAllowed || options_ok {
        add_missing(headers, Header::Allow(ALLOW.into()));
    }
    if options_ok {
        add_missing(headers, Header::Accept(SDP.into()));
        add_missing(headers, Header::Supported(SUPPORTED.into()));
    }
}

/// Adds `header` unless `headers` has one of its kind.
fn add_missing(headers: &mut Headers, header: Header) {
    let name = header.name();
    if !headers.iter().any(|h| h.name() == name) {
        headers.push(header);
    }
}

/// The Via of an ACK as calldesk sent it in the INVITE: rsipstack builds the ACK of a non-2xx
/// from the response, whose Via carries what the far end added (`received`, `rport=PORT`). An
/// ACK of a 2xx (built by [`super::ack`]) has neither, and is left as it is.
fn as_sent(request: &mut Request) {
    for header in request.headers.iter_mut() {
        let Header::Via(via) = header else { continue };
        let Ok(mut typed) = via.typed() else { continue };
        let before = typed.params.len();
        typed.params.retain(|p| !matches!(p, Param::Received(_)));
        let mut changed = typed.params.len() != before;
        for param in typed.params.iter_mut() {
            if matches!(param, Param::Rport(Some(_))) {
                *param = Param::Rport(None);
                changed = true;
            }
        }
        if changed {
            *via = typed.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SipMessage {
        SipMessage::try_from(text.replace('\n', "\r\n").as_str()).expect("a SIP message")
    }

    fn sent(text: &str) -> String {
        Conformance.before_send(parse(text), None).to_string()
    }

    const HEAD: &str =
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport=5060;received=10.0.0.9\n\
                        From: <sip:a@127.0.0.1>;tag=1\n\
                        To: <sip:b@127.0.0.2>;tag=2\n\
                        Call-ID: x@calldesk\n";

    #[test]
    fn bye_and_cancel_and_their_responses_lose_contact() {
        for method in ["BYE", "CANCEL"] {
            let request = format!(
                "{method} sip:b@127.0.0.2 SIP/2.0\n{HEAD}CSeq: 2 {method}\n\
                 Contact: <sip:calldesk@127.0.0.1>\nMax-Forwards: 70\nAllow: {ALLOW}\n\
                 Content-Length: 0\n\n"
            );
            let out = sent(&request);
            assert!(!out.contains("Contact:"), "{out}");
            assert!(out.contains("Max-Forwards: 70"), "{out}");
            // Allow is not applicable to CANCEL only.
            assert_eq!(out.contains("Allow:"), method == "BYE", "{out}");
            let response = format!(
                "SIP/2.0 200 OK\n{HEAD}CSeq: 2 {method}\n\
                 Contact: <sip:calldesk@127.0.0.1>\nContent-Length: 0\n\n"
            );
            assert!(!sent(&response).contains("Contact:"));
        }
        let invite_ok = format!(
            "SIP/2.0 200 OK\n{HEAD}CSeq: 2 INVITE\nContact: <sip:b@127.0.0.2>\nContent-Length: 0\n\n"
        );
        assert!(sent(&invite_ok).contains("Contact:"));
    }

    #[test]
    fn an_invite_without_a_body_has_no_content_type() {
        let invite = format!(
            "INVITE sip:b@127.0.0.2 SIP/2.0\n{HEAD}CSeq: 1 INVITE\n\
             Content-Type: application/sdp\nContent-Length: 0\n\n"
        );
        assert!(!sent(&invite).contains("Content-Type"));
    }

    #[test]
    fn a_non_2xx_ack_has_the_via_of_the_invite() {
        let ack = format!(
            "ACK sip:b@127.0.0.2 SIP/2.0\n{HEAD}CSeq: 1 ACK\nMax-Forwards: 70\nContent-Length: 0\n\n"
        );
        let out = sent(&ack);
        assert!(
            out.contains("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport\r\n"),
            "{out}"
        );
    }

    #[test]
    fn an_options_says_what_calldesk_accepts() {
        let options = format!(
            "OPTIONS sip:trunk.example SIP/2.0\n{HEAD}CSeq: 1 OPTIONS\nMax-Forwards: 70\n\
             Content-Length: 0\n\n"
        );
        assert!(sent(&options).contains("Accept: application/sdp\r\n"));
    }

    #[test]
    fn a_405_and_a_2xx_to_options_say_what_calldesk_allows() {
        let refused =
            format!("SIP/2.0 405 Method Not Allowed\n{HEAD}CSeq: 1 REFER\nContent-Length: 0\n\n");
        assert!(sent(&refused).contains(&format!("Allow: {ALLOW}\r\n")));
        let options = format!("SIP/2.0 200 OK\n{HEAD}CSeq: 1 OPTIONS\nContent-Length: 0\n\n");
        let out = sent(&options);
        for header in [
            format!("Allow: {ALLOW}\r\n"),
            "Accept: application/sdp\r\n".to_owned(),
            "Supported: \r\n".to_owned(),
        ] {
            assert!(out.contains(&header), "{header:?} in {out}");
        }
        let busy = format!("SIP/2.0 486 Busy Here\n{HEAD}CSeq: 1 INVITE\nContent-Length: 0\n\n");
        assert!(!sent(&busy).contains("Allow:"));
    }

    #[test]
    fn invites_say_what_calldesk_allows_and_supports_and_type_their_sdp() {
        let names = |with_sdp| -> Vec<String> {
            invite_headers(with_sdp)
                .iter()
                .map(|h| h.to_string())
                .collect()
        };
        assert_eq!(
            names(true),
            [
                format!("Allow: {ALLOW}"),
                "Supported: ".to_owned(),
                "Content-Type: application/sdp".to_owned()
            ]
        );
        assert_eq!(names(false).len(), 2);
    }
}
