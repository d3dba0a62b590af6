//! A SIP message's raw bytes: the most calldesk reads of one, parsing it (folded header lines
//! joined first), and a byte search for reading headers before any parse.

use std::borrow::Cow;

use rsipstack::sip::SipMessage;

/// The largest SIP message calldesk reads (a datagram, or a message on a stream). Its peers'
/// messages are a few KiB at most.
pub(super) const MAX_MESSAGE: usize = 16 * 1024;

/// Parses one message, its folded header lines (RFC 3261 §7.3.1) joined first. None for
/// anything that is not a SIP message.
pub(super) fn parse(bytes: &[u8]) -> Option<SipMessage> {
    SipMessage::try_from(unfold(bytes).as_ref()).ok()
}

/// `bytes` with every header line continuation (CRLF then a space or a tab) turned into a
/// space, as the RFC reads it; the body untouched. rsipstack would join them too, but warns
/// for each long one: a peer could fill the log.
fn unfold(bytes: &[u8]) -> Cow<'_, [u8]> {
    let head_end = find(bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let head = &bytes[..head_end];
    let folded = |i: usize| {
        head[i] == b'\r'
            && head.get(i + 1) == Some(&b'\n')
            && matches!(head.get(i + 2), Some(b' ' | b'\t'))
    };
    if !(0..head.len()).any(folded) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < head.len() {
        if folded(i) {
            out.push(b' ');
            i += 2;
        } else {
            out.push(head[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[head_end..]);
    Cow::Owned(out)
}

/// Where `needle` first occurs in `haystack`.
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_header_lines_are_joined_and_bodies_left_alone() {
        let message = b"OPTIONS sip:x@y SIP/2.0\r\nSubject: a\r\n  b\r\n\tc\r\n\r\nbody\r\n d";
        assert_eq!(
            unfold(message).as_ref(),
            b"OPTIONS sip:x@y SIP/2.0\r\nSubject: a   b \tc\r\n\r\nbody\r\n d"
        );
        assert!(matches!(unfold(b"X\r\n\r\n"), Cow::Borrowed(_)));
        assert!(parse(b"\x00\xff\xfe").is_none());
    }
}
