//! What a final response to the customer's INVITE means for the call manager.

use std::time::Duration;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Response};

use super::super::SwitchSignal;
use super::leg::status_detail;

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
