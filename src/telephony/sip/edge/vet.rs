//! What calldesk does with one SIP message from an allowed source, before the SIP stack sees
//! it: pass it on, answer it here without keeping anything, or drop it.
//!
//! calldesk is a user agent that only ever *places* calls, so the stack needs to see just two
//! kinds of message: responses to its own requests (a transaction it runs) and requests inside
//! its own dialogs (a far end's BYE, re-INVITE, ACK…). Everything else is answered statelessly
//! (RFC 3261 §8.2.7: no transaction, no retransmission, the To tag derived from the request so
//! that a retransmission gets the same one) or, when no answer is due (an ACK or a response
//! that belongs to nothing), dropped. Nothing an outsider sends is kept once its datagram or
//! stream frame is handled.
//!
//! A request handed on has its top Via stamped with where it really came from (RFC 3261
//! §18.2.1, RFC 3581 §4): any `received` or `rport` value the sender wrote is discarded first,
//! so that no response is ever sent to an address only the sender claimed.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

use rsipstack::dialog::DialogId;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{
    Header, Headers, Host, Method, Param, Request, Response, SipMessage, StatusCode, Version,
};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};

/// The methods calldesk takes, for `Allow` in a 405 and in the 200 to OPTIONS.
pub(super) const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";

/// What the SIP stack holds that a message may belong to.
pub(super) trait Known {
    /// One of calldesk's dialogs.
    fn dialog(&self, id: &DialogId) -> bool;
    /// A transaction, running or finished and still absorbing retransmissions.
    fn transaction(&self, key: &TransactionKey) -> bool;
}

/// The fate of one message.
#[derive(Debug)]
pub(super) enum Verdict {
    /// For the SIP stack: a response to one of calldesk's transactions, or a request in one
    /// of its dialogs or transactions, its top Via stamped.
    Pass {
        message: SipMessage,
        /// The dialog a request belongs to (a connection carrying one is not idle).
        dialog: Option<DialogId>,
    },
    /// Answered here and forgotten: a request outside anything calldesk holds.
    Answer(Response),
    /// Dropped unanswered.
    Drop(DropReason),
}

/// Why a message was dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DropReason {
    /// Not a SIP message calldesk can answer: a header RFC 3261 §8.1.1 requires is missing
    /// or unreadable, or the CSeq method is not the request's.
    Malformed,
    /// An ACK or a response that belongs to no dialog or transaction of calldesk's.
    Stray,
}

/// Decides what becomes of `message`, which came from `source`.
pub(super) fn vet(
    message: SipMessage,
    source: SocketAddr,
    known: &impl Known,
    tags: &ToTags,
) -> Verdict {
    match message {
        SipMessage::Response(response) => {
            match TransactionKey::from_response(&response, TransactionRole::Client) {
                Ok(key) if known.transaction(&key) => Verdict::Pass {
                    message: SipMessage::Response(response),
                    dialog: None,
                },
                Ok(_) => Verdict::Drop(DropReason::Stray),
                Err(_) => Verdict::Drop(DropReason::Malformed),
            }
        }
        SipMessage::Request(mut request) => {
            if !well_formed(&request) || stamp_via(&mut request, source).is_err() {
                return Verdict::Drop(DropReason::Malformed);
            }
            let Ok(key) = TransactionKey::from_request(&request, TransactionRole::Server) else {
                return Verdict::Drop(DropReason::Malformed);
            };
            let dialog = to_tag(&request)
                .and_then(|_| DialogId::try_from((&request, TransactionRole::Server)).ok())
                .filter(|id| known.dialog(id));
            if dialog.is_some() || known.transaction(&key) {
                return Verdict::Pass {
                    message: SipMessage::Request(request),
                    dialog,
                };
            }
            match out_of_dialog_status(&request) {
                Some(status) => Verdict::Answer(stateless_response(&request, status, tags)),
                None => Verdict::Drop(DropReason::Stray),
            }
        }
    }
}

/// The answer to a request that matches nothing calldesk holds; None for an ACK, which gets
/// none.
fn out_of_dialog_status(request: &Request) -> Option<StatusCode> {
    if request.method == Method::Ack {
        return None;
    }
    if to_tag(request).is_some() {
        // It names a dialog calldesk does not have (RFC 3261 §12.2.2).
        return Some(StatusCode::CallTransactionDoesNotExist);
    }
    Some(match request.method {
        // calldesk places calls; it never takes one.
        Method::Invite => StatusCode::Forbidden,
        Method::Options => StatusCode::OK,
        Method::Cancel | Method::Bye | Method::Update | Method::Info | Method::PRack => {
            StatusCode::CallTransactionDoesNotExist
        }
        _ => StatusCode::MethodNotAllowed,
    })
}

/// The headers every request needs before anything can answer it (RFC 3261 §8.1.1), and a
/// CSeq that names the request's own method.
fn well_formed(request: &Request) -> bool {
    request.call_id_header().is_ok()
        && request
            .cseq_header()
            .is_ok_and(|c| c.seq().is_ok() && c.method().is_ok_and(|m| m == request.method))
        && request
            .from_header()
            .is_ok_and(|f| f.tag().is_ok_and(|t| t.is_some()))
        && request.to_header().is_ok_and(|t| t.tag().is_ok())
        && request
            .top_via_header()
            .and_then(|v| v.typed())
            .is_ok_and(|v| v.branch().is_some())
}

/// The request's To tag, if it has a non-empty one.
fn to_tag(request: &Request) -> Option<String> {
    let tag = request.to_header().ok()?.tag().ok()??;
    let tag = tag.value().to_owned();
    (!tag.is_empty()).then_some(tag)
}

/// Stamps the top Via with where the request came from (RFC 3261 §18.2.1, RFC 3581 §4):
/// `received` when the sent-by host is not the source address (or `rport` asks for it),
/// `rport=<source port>` when the sender asked for it. Whatever `received` or `rport` value
/// the sender wrote itself is discarded first: only a server writes them.
fn stamp_via(request: &mut Request, source: SocketAddr) -> Result<(), rsipstack::sip::Error> {
    let source_ip = source.ip().to_canonical();
    request.via_header_mut()?.update_first_value(|via| {
        let mut via = via.typed()?;
        let rport_asked = via.params.iter().any(|p| matches!(p, Param::Rport(_)));
        via.params
            .retain(|p| !matches!(p, Param::Received(_) | Param::Rport(_)));
        let sent_by_ip = match &via.uri.host_with_port.host {
            Host::IpAddr(ip) => Some(ip.to_canonical()),
            Host::Domain(_) => None,
        };
        if rport_asked || sent_by_ip != Some(source_ip) {
            via.params
                .push(Param::Received(rsipstack::sip::param::Received::new(
                    received_value(source_ip),
                )));
        }
        if rport_asked {
            via.params.push(Param::Rport(Some(source.port())));
        }
        Ok(via.into())
    })
}

/// An address as a `received` value: IPv6 in brackets, as rsipstack writes and reads it.
fn received_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Where a response to a request that came over UDP goes, from the request's stamped top
/// Via (RFC 3261 §18.2.2 and RFC 3581 §4): the `received` address, else the sent-by address;
/// the `rport` port, else the sent-by port, else 5060. `maddr` is ignored: it is only the
/// sender's claim. None when no address can be read.
pub(super) fn response_destination(response: &Response) -> Option<SocketAddr> {
    let via = response.top_via_header().ok()?.typed().ok()?;
    let mut ip = match &via.uri.host_with_port.host {
        Host::IpAddr(ip) => Some(*ip),
        Host::Domain(_) => None,
    };
    let mut port = via.uri.host_with_port.port.map(|p| p.value());
    for param in &via.params {
        match param {
            Param::Received(received) => {
                ip = received
                    .value()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .ok()
            }
            Param::Rport(Some(rport)) => port = Some(*rport),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port.unwrap_or(5060)))
}

/// Derives stateless To tags: the same request (Call-ID, From tag, top Via branch) gets the
/// same tag for the life of the process, and nobody can predict another's (a keyed SipHash
/// with random keys).
#[derive(Default)]
pub(super) struct ToTags {
    keys: std::collections::hash_map::RandomState,
}

impl ToTags {
    fn tag_for(&self, request: &Request) -> String {
        let call_id = request
            .call_id_header()
            .map(|c| c.value().to_owned())
            .unwrap_or_default();
        let from_tag = request
            .from_header()
            .ok()
            .and_then(|f| f.tag().ok().flatten())
            .map(|t| t.value().to_owned())
            .unwrap_or_default();
        let branch = request
            .top_via_header()
            .ok()
            .and_then(|v| v.typed().ok())
            .and_then(|v| v.branch().map(|b| b.to_string()))
            .unwrap_or_default();
        format!("{:016x}", self.keys.hash_one((call_id, from_tag, branch)))
    }
}

/// The response to `request` that a stateless UAS sends (RFC 3261 §8.2.6, §8.2.7): Via, From,
/// Call-ID and CSeq copied, To copied with a derived tag when it had none, `Allow` where a 405
/// or the answer to OPTIONS needs it.
fn stateless_response(request: &Request, status: StatusCode, tags: &ToTags) -> Response {
    let mut headers: Vec<Header> = request
        .headers
        .iter()
        .filter(|h| {
            matches!(
                h,
                Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_)
            )
        })
        .cloned()
        .collect();
    if let Ok(to) = request.to_header() {
        let to = if to_tag(request).is_some() {
            to.clone()
        } else {
            to.with_tag(tags.tag_for(request).into())
        };
        headers.push(Header::To(to));
    }
    if status == StatusCode::MethodNotAllowed || request.method == Method::Options {
        headers.push(Header::Allow(ALLOW.into()));
    }
    if request.method == Method::Options {
        headers.push(Header::Accept("application/sdp".into()));
    }
    headers.push(Header::Server(super::SERVER.into()));
    headers.push(Header::ContentLength(0u32.into()));
    Response {
        status_code: status,
        wire_reason: None,
        version: Version::V2,
        headers: Headers::from(headers),
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds the dialogs and transactions a test says exist.
    #[derive(Default)]
    struct Holds {
        dialogs: Vec<DialogId>,
        transactions: Vec<TransactionKey>,
    }

    impl Known for Holds {
        fn dialog(&self, id: &DialogId) -> bool {
            self.dialogs.contains(id)
        }
        fn transaction(&self, key: &TransactionKey) -> bool {
            self.transactions.contains(key)
        }
    }

    const SOURCE: &str = "127.0.0.1:5090";

    fn parse(text: &str) -> SipMessage {
        let text = text.replace('\n', "\r\n");
        match SipMessage::try_from(text.as_bytes()) {
            Ok(message) => message,
            Err(e) => panic!("{e}: {text}"),
        }
    }

    fn request(method: &str, via: &str, to: &str) -> SipMessage {
        parse(&format!(
            "{method} sip:calldesk@127.0.0.1:5060 SIP/2.0\n\
             Via: SIP/2.0/UDP {via}\n\
             From: <sip:a@127.0.0.1>;tag=from1\n\
             To: {to}\n\
             Call-ID: call-1@test\n\
             CSeq: 7 {method}\n\
             Max-Forwards: 70\n\
             Content-Length: 0\n\n"
        ))
    }

    fn verdict(message: SipMessage, known: &Holds) -> Verdict {
        let source: SocketAddr = SOURCE.parse().expect("addr");
        vet(message, source, known, &ToTags::default())
    }

    fn answer(verdict: Verdict) -> Response {
        match verdict {
            Verdict::Answer(response) => response,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn requests_outside_any_dialog_are_answered_statelessly() {
        let known = Holds::default();
        for (method, code) in [
            ("INVITE", 403),
            ("OPTIONS", 200),
            ("REGISTER", 405),
            ("SUBSCRIBE", 405),
            ("BYE", 481),
            ("CANCEL", 481),
        ] {
            let message = request(method, "127.0.0.1:5090;branch=z9hG4bK1", "<sip:c@x>");
            let response = answer(verdict(message, &known));
            assert_eq!(response.status_code.code(), code, "{method}");
            let text = response.to_string();
            assert!(text.contains("To: <sip:c@x>;tag="), "{method}: {text}");
            assert!(text.contains("Call-ID: call-1@test"), "{text}");
            assert!(text.contains(&format!("CSeq: 7 {method}")), "{text}");
            assert_eq!(
                text.contains("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS"),
                matches!(code, 405 | 200),
                "{method}: {text}"
            );
        }
        // A request naming a dialog calldesk does not have.
        let message = request(
            "INVITE",
            "127.0.0.1:5090;branch=z9hG4bK1",
            "<sip:c@x>;tag=t9",
        );
        let response = answer(verdict(message, &known));
        assert_eq!(response.status_code.code(), 481);
        assert!(response.to_string().contains("To: <sip:c@x>;tag=t9"));
    }

    #[test]
    fn a_retransmission_gets_the_same_to_tag_and_another_request_another() {
        let tags = ToTags::default();
        let source: SocketAddr = SOURCE.parse().expect("addr");
        let to_of = |branch: &str| {
            let message = request(
                "INVITE",
                &format!("127.0.0.1:5090;branch={branch}"),
                "<sip:c@x>",
            );
            let response = answer(vet(message, source, &Holds::default(), &tags));
            response
                .to_header()
                .expect("To")
                .tag()
                .expect("tag")
                .expect("a tag")
                .to_string()
        };
        assert_eq!(to_of("z9hG4bK1"), to_of("z9hG4bK1"));
        assert_ne!(to_of("z9hG4bK1"), to_of("z9hG4bK2"));
    }

    #[test]
    fn acks_and_responses_that_belong_to_nothing_are_dropped() {
        let known = Holds::default();
        let ack = request("ACK", "127.0.0.1:5090;branch=z9hG4bK1", "<sip:c@x>;tag=t1");
        assert!(matches!(
            verdict(ack, &known),
            Verdict::Drop(DropReason::Stray)
        ));
        let response = parse(
            "SIP/2.0 200 OK\n\
             Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnot-ours\n\
             From: <sip:calldesk@127.0.0.1>;tag=f\n\
             To: <sip:c@x>;tag=t\n\
             Call-ID: c@test\n\
             CSeq: 1 INVITE\n\
             Content-Length: 0\n\n",
        );
        assert!(matches!(
            verdict(response, &known),
            Verdict::Drop(DropReason::Stray)
        ));
    }

    #[test]
    fn requests_in_a_dialog_or_a_transaction_and_their_responses_pass() {
        let message = request(
            "BYE",
            "127.0.0.1:5090;branch=z9hG4bK1",
            "<sip:c@x>;tag=ours",
        );
        let SipMessage::Request(bye) = &message else {
            unreachable!()
        };
        let id = DialogId::try_from((bye, TransactionRole::Server)).expect("dialog id");
        let known = Holds {
            dialogs: vec![id.clone()],
            ..Holds::default()
        };
        match verdict(message, &known) {
            Verdict::Pass { dialog, .. } => assert_eq!(dialog, Some(id)),
            other => panic!("{other:?}"),
        }

        let response = parse(
            "SIP/2.0 180 Ringing\n\
             Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKours\n\
             From: <sip:calldesk@127.0.0.1>;tag=f\n\
             To: <sip:c@x>;tag=t\n\
             Call-ID: c@test\n\
             CSeq: 1 INVITE\n\
             Content-Length: 0\n\n",
        );
        let SipMessage::Response(r) = &response else {
            unreachable!()
        };
        let key = TransactionKey::from_response(r, TransactionRole::Client).expect("key");
        let known = Holds {
            transactions: vec![key],
            ..Holds::default()
        };
        assert!(matches!(
            verdict(response, &known),
            Verdict::Pass { dialog: None, .. }
        ));
    }

    #[test]
    fn requests_without_the_headers_an_answer_needs_are_dropped() {
        let known = Holds::default();
        for text in [
            // No From tag.
            "INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\nFrom: <sip:a@b>\nTo: <sip:x@y>\nCall-ID: c\nCSeq: 1 INVITE\n\n",
            // No Call-ID.
            "INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:x@y>\nCSeq: 1 INVITE\n\n",
            // A CSeq naming another method.
            "INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:x@y>\nCall-ID: c\nCSeq: 1 BYE\n\n",
            // No branch.
            "INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1\nFrom: <sip:a@b>;tag=1\nTo: <sip:x@y>\nCall-ID: c\nCSeq: 1 INVITE\n\n",
            // No Via.
            "INVITE sip:x@y SIP/2.0\nFrom: <sip:a@b>;tag=1\nTo: <sip:x@y>\nCall-ID: c\nCSeq: 1 INVITE\n\n",
        ] {
            assert!(
                matches!(
                    verdict(parse(text), &known),
                    Verdict::Drop(DropReason::Malformed)
                ),
                "{text}"
            );
        }
    }

    /// Where each response goes, by RFC 3261 §18.2.2 and RFC 3581 §4, from `SOURCE`
    /// (127.0.0.1:5090).
    #[test]
    fn responses_go_to_the_source_never_to_a_claimed_address() {
        let cases = [
            // sent-by is the source: no received; its port.
            ("127.0.0.1:5090;branch=z9hG4bK1", "127.0.0.1:5090"),
            // A received= the sender wrote is ignored.
            (
                "127.0.0.1:5090;branch=z9hG4bK1;received=127.0.0.2",
                "127.0.0.1:5090",
            ),
            (
                "127.0.0.1:5090;received=127.0.0.2;rport=9;branch=z9hG4bK1",
                "127.0.0.1:5090",
            ),
            // Another sent-by host: the source address, the sent-by port (no rport).
            ("192.0.2.1:5070;branch=z9hG4bK1", "127.0.0.1:5070"),
            ("pbx.example.com;branch=z9hG4bK1", "127.0.0.1:5060"),
            // rport asked: the source port too.
            ("192.0.2.1:5070;rport;branch=z9hG4bK1", "127.0.0.1:5090"),
            ("127.0.0.1:5070;rport;branch=z9hG4bK1", "127.0.0.1:5090"),
            // maddr is a claim as well.
            (
                "127.0.0.1:5090;maddr=127.0.0.3;branch=z9hG4bK1",
                "127.0.0.1:5090",
            ),
        ];
        for (via, expected) in cases {
            let response = answer(verdict(
                request("OPTIONS", via, "<sip:c@x>"),
                &Holds::default(),
            ));
            assert_eq!(
                response_destination(&response).map(|a| a.to_string()),
                Some(expected.to_owned()),
                "Via: {via}\n{response}"
            );
        }
    }

    #[test]
    fn a_passed_request_carries_the_stamped_via() {
        let message = request(
            "BYE",
            "127.0.0.1:5090;branch=z9hG4bK1;received=127.0.0.2",
            "<sip:c@x>;tag=ours",
        );
        let SipMessage::Request(bye) = &message else {
            unreachable!()
        };
        let known = Holds {
            dialogs: vec![DialogId::try_from((bye, TransactionRole::Server)).expect("id")],
            ..Holds::default()
        };
        let Verdict::Pass {
            message: SipMessage::Request(bye),
            ..
        } = verdict(message, &known)
        else {
            panic!("passes")
        };
        let via = bye.via_header().expect("Via").value().to_owned();
        assert!(!via.contains("received"), "{via}");
    }
}
