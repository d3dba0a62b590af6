//! What requests outside calldesk's calls may cost.
//!
//! Such a request is answered statelessly, which leaves nothing behind, but reading and
//! answering it still takes the edge's reader ~15 µs (a SIP parse, a response). A source the
//! allow list lets through (a peer's address, or one spoofed as it over UDP) sending tens of
//! thousands a second would keep the reader busy with them, and the kernel would drop the
//! datagrams of real calls behind them. So at most [`ANSWERS_PER_SECOND`] are answered; past
//! that, a request is dropped unanswered before it is parsed, as cheaply as a datagram from
//! outside the allow list.
//!
//! What tells such a request from the others, before any parse: it has no To tag. Every
//! request inside a dialog has one (RFC 3261 §12.2.1.1), and the edge never lets a request
//! without one reach the stack, so none can belong to a transaction either. Responses and
//! tagged requests are always read whole: a real call's never wait behind the budget.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::wire::find;

/// Stateless answers per second, sustained; as many again in a burst. A peer's own requests
/// outside a call are OPTIONS pings, a few a minute.
pub(super) const ANSWERS_PER_SECOND: f64 = 1000.0;

/// Whether `bytes` is a request without a To tag (or without a To at all): one that can only
/// be answered statelessly, or dropped. False for responses and for anything whose To cannot
/// be read plainly (a folded header line, two To headers): those are read whole.
pub(super) fn outside_any_dialog(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"SIP/") {
        return false;
    }
    let head = match find(bytes, b"\r\n\r\n") {
        Some(end) => &bytes[..end],
        None => bytes,
    };
    let mut to_lines = 0;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return false;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"to") || name.eq_ignore_ascii_case(b"t")) {
            continue;
        }
        to_lines += 1;
        // `;tag=`, with the white space RFC 3261's SEMI and EQUAL allow around it.
        let value: Vec<u8> = line[colon + 1..]
            .iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(u8::to_ascii_lowercase)
            .collect();
        if find(&value, b";tag=").is_some() {
            return false;
        }
    }
    to_lines <= 1
}

/// A token bucket of [`ANSWERS_PER_SECOND`].
pub(super) struct AnswerBudget {
    /// Tokens left, and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl Default for AnswerBudget {
    fn default() -> Self {
        Self {
            bucket: Mutex::new((ANSWERS_PER_SECOND, Instant::now())),
        }
    }
}

impl AnswerBudget {
    /// Takes one answer's worth; false when the budget is spent.
    pub fn take(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, counted) = &mut *bucket;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*counted).as_secs_f64() * ANSWERS_PER_SECOND)
            .min(ANSWERS_PER_SECOND);
        *counted = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_without_a_to_tag_are_told_apart_before_any_parse() {
        let request = |to: &str| {
            format!("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{to}\r\nCall-ID: c\r\n\r\nv=0\r\nTo: x;tag=body")
        };
        // A body's lines are not headers.
        for outside in ["To: <sip:a@b>", "t: sip:a@b", "TO : <sip:a@b>", ""] {
            assert!(
                outside_any_dialog(request(outside).as_bytes()),
                "{outside:?}"
            );
        }
        // Anything that may be a To tag is read whole, even a URI parameter named tag.
        for tagged in [
            "To: <sip:a@b>;tag=1",
            "t: sip:a@b;tag=1",
            "To: <sip:a@b> ; TAG = 1",
            "To: <sip:a@b>\r\n ;tag=1",
            "To: <sip:a@b>\r\nTo: <sip:c@d>",
            "To: <sip:a@b;tag=1>",
        ] {
            assert!(!outside_any_dialog(request(tagged).as_bytes()), "{tagged}");
        }
        assert!(!outside_any_dialog(
            b"SIP/2.0 200 OK\r\nTo: <sip:a@b>\r\n\r\n"
        ));
    }

    #[test]
    fn the_budget_allows_a_burst_then_its_rate() {
        let budget = AnswerBudget::default();
        let burst = (0..5000).filter(|_| budget.take()).count();
        assert!(
            (ANSWERS_PER_SECOND as usize..ANSWERS_PER_SECOND as usize + 50).contains(&burst),
            "{burst}"
        );
    }
}
