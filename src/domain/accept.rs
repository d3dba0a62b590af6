//! What every accept loop shares (the gRPC port's, `server/net.rs`, and the SIP port's,
//! `telephony/sip/edge/stream.rs`): knowing that accept failed for want of file descriptors,
//! backing off then instead of spinning, and warning about it at a bounded rate.

use std::{io, time::Duration};

use tokio::time::Instant;

/// The first and the longest pause after accept failed for want of file descriptors.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this long about refused or failed accepts.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// EMFILE (this process) or ENFILE (the whole system): no descriptor for a new socket.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

/// A warning logged at most once per [`WARN_EVERY`], counting what it stood for.
#[derive(Default)]
pub struct RateLimitedWarning {
    last: Option<Instant>,
    /// Occurrences since the last warning (the one at hand included).
    count: u64,
}

impl RateLimitedWarning {
    pub fn warn(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            log(self.count);
            self.last = Some(now);
            self.count = 0;
        }
    }
}
