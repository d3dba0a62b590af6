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
use rsipstack::sip::param::Received;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{
    typed, Header, Headers, Host, Method, Param, Request, Response, SipMessage, StatusCode, Version,
};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};

use super::super::conformance::conform_response;

/// The `Server` header of the answers the edge sends.
const SERVER: &str = concat!("calldesk/", env!("CARGO_PKG_VERSION"));

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
    Answer {
        response: Response,
        /// Where the answer goes over UDP (RFC 3261 §18.2.2, RFC 3581 §4); a stream's answer
        /// goes back on it.
        reply_to: SocketAddr,
    },
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
    let mut request = match message {
        SipMessage::Response(response) => {
            return match TransactionKey::from_response(&response, TransactionRole::Client) {
                Ok(key) if known.transaction(&key) => Verdict::Pass {
                    message: SipMessage::Response(response),
                    dialog: None,
                },
                Ok(_) => Verdict::Drop(DropReason::Stray),
                Err(_) => Verdict::Drop(DropReason::Malformed),
            }
        }
        SipMessage::Request(request) => request,
    };
    let Some(mut facts) = Facts::of(&request) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let reply_to = stamp(&mut facts.via, source);
    if request
        .via_header_mut()
        .and_then(|via| via.update_first_value(|_| Ok(facts.via.clone().into())))
        .is_err()
    {
        return Verdict::Drop(DropReason::Malformed);
    }
    // Only a request with a To tag can belong to one of calldesk's dialogs or transactions:
    // calldesk never lets a request without one reach the stack, so none holds a transaction
    // for such a request (nor for its CANCEL).
    if facts.to_tag.is_some() {
        let Ok(key) = TransactionKey::from_request(&request, TransactionRole::Server) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let dialog = DialogId::try_from((&request, TransactionRole::Server))
            .ok()
            .filter(|id| known.dialog(id));
        if dialog.is_some() || known.transaction(&key) {
            return Verdict::Pass {
                message: SipMessage::Request(request),
                dialog,
            };
        }
    }
    match out_of_dialog_status(&request.method, facts.to_tag.is_some()) {
        Some(status) => Verdict::Answer {
            response: stateless_response(&request, &facts, status, tags),
            reply_to,
        },
        None => Verdict::Drop(DropReason::Stray),
    }
}

/// What `vet` reads of a request, each header parsed once: the ones every request needs
/// before anything can answer it (RFC 3261 §8.1.1), with a CSeq naming the request's own
/// method and a top Via with a branch.
struct Facts {
    via: typed::Via,
    call_id: String,
    from_tag: String,
    /// The To tag, if the request has a non-empty one.
    to_tag: Option<String>,
}

impl Facts {
    fn of(request: &Request) -> Option<Facts> {
        let call_id = request.call_id_header().ok()?.value().to_owned();
        let cseq = request.cseq_header().ok()?;
        cseq.seq().ok()?;
        if cseq.method().ok()? != request.method {
            return None;
        }
        let from_tag = request.from_header().ok()?.tag().ok()??.value().to_owned();
        let to_tag = request
            .to_header()
            .ok()?
            .tag()
            .ok()?
            .map(|tag| tag.value().to_owned())
            .filter(|tag| !tag.is_empty());
        let via = request.top_via_header().ok()?.typed().ok()?;
        via.branch()?;
        Some(Facts {
            via,
            call_id,
            from_tag,
            to_tag,
        })
    }
}

/// The answer to a request that matches nothing calldesk holds; None for an ACK, which gets
/// none.
fn out_of_dialog_status(method: &Method, to_tag: bool) -> Option<StatusCode> {
    if *method == Method::Ack {
        return None;
    }
    if to_tag {
        // It names a dialog calldesk does not have (RFC 3261 §12.2.2).
        return Some(StatusCode::CallTransactionDoesNotExist);
    }
    Some(match method {
        // calldesk places calls; it never takes one.
        Method::Invite => StatusCode::Forbidden,
        Method::Options => StatusCode::OK,
        Method::Cancel | Method::Bye | Method::Update | Method::Info | Method::PRack => {
            StatusCode::CallTransactionDoesNotExist
        }
        _ => StatusCode::MethodNotAllowed,
    })
}

/// Stamps a request's top Via with where it came from (RFC 3261 §18.2.1, RFC 3581 §4):
/// `received` when the sent-by host is not the source address (or `rport` asks for it),
/// `rport=<source port>` when the sender asked for it. Whatever `received` or `rport` value
/// the sender wrote itself is discarded first: only a server writes them. Returns where a
/// response goes over UDP (RFC 3261 §18.2.2): the source address, and the source port if
/// `rport` asked for it, else the sent-by port (5060 when it names none). `maddr` is ignored:
/// it is only the sender's claim.
fn stamp(via: &mut typed::Via, source: SocketAddr) -> SocketAddr {
    let source_ip = source.ip().to_canonical();
    let rport_asked = via.params.iter().any(|p| matches!(p, Param::Rport(_)));
    via.params
        .retain(|p| !matches!(p, Param::Received(_) | Param::Rport(_)));
    let sent_by_ip = match &via.uri.host_with_port.host {
        Host::IpAddr(ip) => Some(ip.to_canonical()),
        Host::Domain(_) => None,
    };
    if rport_asked || sent_by_ip != Some(source_ip) {
        via.params
            .push(Param::Received(Received::new(received_value(source_ip))));
    }
    if rport_asked {
        via.params.push(Param::Rport(Some(source.port())));
        return SocketAddr::new(source_ip, source.port());
    }
    let port = via
        .uri
        .host_with_port
        .port
        .map(|p| p.value())
        .unwrap_or(5060);
    SocketAddr::new(source_ip, port)
}

/// An address as a `received` value: IPv6 in brackets, as rsipstack writes and reads it.
fn received_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Derives stateless To tags: the same request (Call-ID, From tag, top Via branch) gets the
/// same tag for the life of the process, and nobody can predict another's (a keyed SipHash
/// with random keys).
#[derive(Default)]
pub(super) struct ToTags {
    keys: std::collections::hash_map::RandomState,
}

impl ToTags {
    fn tag_for(&self, facts: &Facts) -> String {
        let branch = facts
            .via
            .branch()
            .map(|b| b.to_string())
            .unwrap_or_default();
        format!(
            "{:016x}",
            self.keys
                .hash_one((&facts.call_id, &facts.from_tag, branch))
        )
    }
}

/// The response to `request` that a stateless UAS sends (RFC 3261 §8.2.6, §8.2.7): Via, From,
/// Call-ID and CSeq copied, To copied with a derived tag when it had none; then what RFC 3261's
/// header tables want of it, as of every response calldesk sends ([`conform_response`]: Allow
/// in a 405, Allow, Accept and Supported in the 200 to OPTIONS).
fn stateless_response(
    request: &Request,
    facts: &Facts,
    status: StatusCode,
    tags: &ToTags,
) -> Response {
    let mut headers: Vec<Header> = Vec::with_capacity(10);
    for header in request.headers.iter() {
        match header {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(header.clone())
            }
            Header::To(to) if facts.to_tag.is_some() => headers.push(Header::To(to.clone())),
            Header::To(to) => headers.push(Header::To(to.with_tag(tags.tag_for(facts).into()))),
            _ => {}
        }
    }
    headers.push(Header::Server(SERVER.into()));
    headers.push(Header::ContentLength(0u32.into()));
    let mut response = Response {
        status_code: status,
        wire_reason: None,
        version: Version::V2,
        headers: Headers::from(headers),
        body: Vec::new(),
    };
    conform_response(&mut response);
    response
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
        answer_to(verdict).0
    }

    fn answer_to(verdict: Verdict) -> (Response, SocketAddr) {
        match verdict {
            Verdict::Answer { response, reply_to } => (response, reply_to),
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
                text.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS"),
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
            let (response, reply_to) = answer_to(verdict(
                request("OPTIONS", via, "<sip:c@x>"),
                &Holds::default(),
            ));
            assert_eq!(reply_to.to_string(), expected, "Via: {via}\n{response}");
            // The answer's Via says so too: never the sender's own received= or rport=.
            let text = response.to_string();
            assert!(!text.contains("received=127.0.0.2"), "{text}");
            assert!(!text.contains("rport=9"), "{text}");
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
