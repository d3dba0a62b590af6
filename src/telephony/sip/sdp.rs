//! The few SDP edits third-party call control needs: an offer with no media flowing, the
//! session-level lines of every description sent on a leg (RFC 3264 §8: the same `o=` with
//! its version raised by one each time, the same `s=` and `t=`, whatever the other leg's
//! description said), and the direction attribute for hold and resume (§8.4). Bodies are
//! never logged.

use std::net::IpAddr;

/// The direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    SendRecv,
    SendOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "a=sendrecv",
            Direction::SendOnly => "a=sendonly",
            Direction::Inactive => "a=inactive",
        }
    }
}

/// Our session origin toward one leg: the `o=` line of every description calldesk sends it.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    session: u64,
    version: u64,
    address: IpAddr,
}

impl Origin {
    pub(super) fn new(address: IpAddr) -> Self {
        // Microseconds since the epoch: unique enough per leg (RFC 4566 suggests a timestamp).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self {
            session: now / 1000,
            version: 1,
            address,
        }
    }

    /// The session id and the next version: what a restart needs to go on (dialog_store.rs).
    pub(super) fn parts(&self) -> (u64, u64) {
        (self.session, self.version)
    }

    /// The origin of a leg another process placed, from its [`Origin::parts`].
    pub(super) fn resume(address: IpAddr, session: u64, version: u64) -> Self {
        Self {
            session,
            version,
            address,
        }
    }

    fn next_line(&mut self) -> String {
        let line = format!(
            "o=calldesk {} {} {} {}",
            self.session,
            self.version,
            addr_type(self.address),
            self.address
        );
        self.version += 1;
        line
    }
}

fn addr_type(address: IpAddr) -> &'static str {
    match address {
        IpAddr::V4(_) => "IN IP4",
        IpAddr::V6(_) => "IN IP6",
    }
}

/// The session name of every description calldesk sends.
const SESSION_NAME: &str = "s=calldesk";
/// The timing of every description calldesk sends: unbounded (RFC 4566 §5.9).
const TIMING: &str = "t=0 0";

/// RFC 3725 Flow IV's first offer: one audio stream, nothing flowing (`a=inactive`, port
/// 9 on our own address), G.711 offered so that the phone answers with its codecs.
pub(super) fn offer_without_media(origin: &mut Origin) -> String {
    let address = origin.address;
    let o = origin.next_line();
    format!(
        "v=0\r\n{o}\r\n{SESSION_NAME}\r\nc={} {address}\r\n{TIMING}\r\n\
         m=audio 9 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=inactive\r\n",
        addr_type(address)
    )
}

/// The description `sdp` (from the other leg) as calldesk sends it on this leg: its media
/// as they are, under this leg's session-level lines (`o=` with the next version, `s=` and
/// `t=` of every description calldesk sends), so that the far end sees one session whose
/// version goes up by one with each description (RFC 3264 §8).
pub(super) fn restamp(sdp: &str, origin: &mut Origin) -> String {
    let o = origin.next_line();
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut in_media = false;
    for line in lines(sdp) {
        in_media |= line.starts_with("m=");
        let line = if in_media {
            line
        } else if line.starts_with("o=") {
            &o
        } else if line.starts_with("s=") {
            SESSION_NAME
        } else if line.starts_with("t=") {
            TIMING
        } else {
            line
        };
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// `sdp` with every direction attribute replaced by `direction`, once per media section
/// (or at session level when there is no `m=` line).
pub(super) fn with_direction(sdp: &str, direction: Direction) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    let mut in_media = false;
    for line in lines(sdp) {
        if is_direction(line) {
            continue;
        }
        if line.starts_with("m=") {
            if in_media {
                out.push_str(direction.attribute());
                out.push_str("\r\n");
            }
            in_media = true;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if in_media || !out.is_empty() {
        out.push_str(direction.attribute());
        out.push_str("\r\n");
    }
    out
}

/// True when `body` looks like a session description with at least one media stream.
pub(super) fn has_media(body: &[u8]) -> bool {
    match std::str::from_utf8(body) {
        Ok(text) => text.starts_with("v=0") && lines(text).any(|l| l.starts_with("m=")),
        Err(_) => false,
    }
}

fn is_direction(line: &str) -> bool {
    matches!(
        line,
        "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
    )
}

fn lines(sdp: &str) -> impl Iterator<Item = &str> {
    sdp.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 5 7 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=3 4\r\n\
                         m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\nm=video 0 RTP/AVP 96\r\n";

    #[test]
    fn restamp_keeps_origin_and_bumps_version() {
        let mut origin = Origin::new("127.0.0.1".parse().unwrap());
        let first = restamp(OFFER, &mut origin);
        let second = restamp(OFFER, &mut origin);
        let o1 = first.lines().nth(1).unwrap();
        let o2 = second.lines().nth(1).unwrap();
        assert!(o1.starts_with("o=calldesk "));
        let v1: u64 = o1.split(' ').nth(2).unwrap().parse().unwrap();
        let v2: u64 = o2.split(' ').nth(2).unwrap().parse().unwrap();
        assert_eq!(v2, v1 + 1);
        assert_eq!(o1.split(' ').nth(1), o2.split(' ').nth(1));
        assert!(first.contains("m=audio 4000 RTP/AVP 0\r\n"));
    }

    #[test]
    fn every_description_of_a_leg_has_the_same_session_level_lines() {
        let mut origin = Origin::new("127.0.0.1".parse().unwrap());
        let first = offer_without_media(&mut origin);
        let second = restamp(OFFER, &mut origin);
        let session = |sdp: &str| -> Vec<String> {
            sdp.lines()
                .take_while(|l| !l.starts_with("m="))
                .filter(|l| !l.starts_with("c="))
                .map(|l| match l.strip_prefix("o=") {
                    // The version, third field of o=, is the one thing that changes.
                    Some(o) => {
                        let mut fields: Vec<&str> = o.split(' ').collect();
                        fields[2] = "V";
                        fields.join(" ")
                    }
                    None => l.to_owned(),
                })
                .collect()
        };
        assert_eq!(session(&first), session(&second), "{first}\n{second}");
        assert!(second.contains("s=calldesk\r\n") && second.contains("t=0 0\r\n"));
        // Media-level lines are the other leg's, untouched.
        assert!(second.contains("c=IN IP4 10.0.0.2\r\n"));
        assert!(second.ends_with("m=video 0 RTP/AVP 96\r\n"));
    }

    #[test]
    fn direction_is_set_once_per_media_section() {
        let held = with_direction(OFFER, Direction::SendOnly);
        assert_eq!(held.matches("a=sendonly").count(), 2);
        assert!(!held.contains("a=sendrecv"));
        let audio = held.find("m=audio").unwrap();
        let video = held.find("m=video").unwrap();
        let first = held.find("a=sendonly").unwrap();
        assert!(audio < first && first < video);
    }

    #[test]
    fn the_first_offer_is_inactive() {
        let mut origin = Origin::new("127.0.0.1".parse().unwrap());
        let sdp = offer_without_media(&mut origin);
        assert!(sdp.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(sdp.ends_with("a=inactive\r\n"));
        assert!(has_media(sdp.as_bytes()));
        assert!(!has_media(b""));
        assert!(!has_media(&[0xff, 0xfe]));
    }
}
