//! What the final response to a leg's INVITE means: for the call (answered, refused, no
//! response), for the call manager (which signal, with which detail), and in words.

use std::time::Duration;

use rsipstack::dialog::invitation::InviteAsyncResult;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Response, StatusCodeKind};
use tokio::task::JoinError;

use super::super::SwitchSignal;

/// How the INVITE that created a leg ended.
pub(super) enum InviteOutcome {
    Answered(Response),
    Refused(Response),
    /// The transaction ended without any final response.
    NoResponse,
    /// It could not be sent, or rsipstack failed (the text names no peer data).
    Error(String),
}

impl InviteOutcome {
    /// The outcome of the task rsipstack ran the INVITE transaction in.
    pub fn of(result: Result<InviteAsyncResult, JoinError>) -> InviteOutcome {
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
}

/// True for a response rsipstack made up itself (Timer B's 408 for a destination that never
/// answered, the 503 for a TCP connection that failed): it has no To tag, which every final
/// response from a far end to an INVITE outside a dialog carries (RFC 3261 §8.2.6.2).
pub(super) fn is_local(response: &Response) -> bool {
    let tag = response
        .to_header()
        .ok()
        .and_then(|to| to.tag().ok().flatten());
    tag.is_none()
}

/// The detail for a final non-2xx response to the agent's phone's INVITE: the call fails.
pub(super) fn agent_refused(response: &Response) -> String {
    if is_local(response) {
        "agent's phone: no response".to_owned()
    } else {
        format!("agent's phone: {}", status_detail(response))
    }
}

/// The signal and detail for a final non-2xx response to the customer's INVITE.
pub(super) fn customer_refused(response: &Response) -> (SwitchSignal, String) {
    if is_local(response) {
        let detail = match response.status_code.code() {
            408 => "customer: no response from the trunk".to_owned(),
            code => format!("customer: transport failure ({code})"),
        };
        return (SwitchSignal::Failed, detail);
    }
    let signal = match response.status_code.code() {
        486 | 600 | 603 => SwitchSignal::Busy,
        408 | 480 => SwitchSignal::NoAnswer,
        _ => SwitchSignal::Failed,
    };
    (signal, status_detail(response))
}

/// The trunk pushing back: a 503 from the far end (not one rsipstack made up for a transport
/// failure), with its Retry-After in seconds if it gave one. 486 and 480 are the customer's
/// answer, not the trunk's load: never pushback.
pub(super) fn pushback(response: &Response) -> Option<Option<Duration>> {
    if response.status_code.code() != 503 || is_local(response) {
        return None;
    }
    let retry_after = response.headers.iter().find_map(|header| match header {
        // `Retry-After: 120;duration=3600 (comment)`: the leading delta-seconds.
        Header::RetryAfter(value) => {
            let digits: String = value
                .value()
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .take(9)
                .collect();
            digits.parse().ok().map(Duration::from_secs)
        }
        _ => None,
    });
    Some(retry_after)
}

/// "486 Busy Here": the status code and reason phrase of a response, the phrase cut to 80
/// printable characters (it comes from the far end).
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
