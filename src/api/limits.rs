//! Limits the handlers apply: caps on open watch streams, and each unary call's deadline
//! counted from the request's arrival (stamped by the server's transport layer).

/// Caps on open watch streams, in all and per agent, so that one client cannot hold all of
/// the server's memory in streams. A stream holds a [`WatchPermit`] for as long as it is open.
pub struct WatchLimiter {
    max_total: usize,
    max_per_agent: usize,
    /// Open streams by agent. The lock is held only to count, never across an await.
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

/// One open watch stream's place; dropping it (when the stream ends) frees the place.
pub struct WatchPermit {
    limiter: std::sync::Arc<WatchLimiter>,
    agent_id: String,
    kind: &'static str,
}

impl WatchLimiter {
    pub fn new(max_total: usize, max_per_agent: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            max_total,
            max_per_agent,
            open: Default::default(),
            total: Default::default(),
        })
    }

    /// A place for one more stream of `agent_id`, or RESOURCE_EXHAUSTED.
    pub fn acquire(
        self: &std::sync::Arc<Self>,
        agent_id: &str,
        kind: &'static str,
    ) -> Result<WatchPermit, tonic::Status> {
        use std::sync::atomic::Ordering;
        let mut open = self
            .open
            .lock()
            .map_err(|_| tonic::Status::internal("watch limiter poisoned"))?;
        let mine = open.get(agent_id).copied().unwrap_or(0);
        if mine >= self.max_per_agent {
            return Err(tonic::Status::resource_exhausted(format!(
                "this agent already has {mine} open watch streams (the limit is {}); close one",
                self.max_per_agent
            )));
        }
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(tonic::Status::resource_exhausted(format!(
                "the server has {} open watch streams, its limit; try again later",
                self.max_total
            )));
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        open.insert(agent_id.to_owned(), mine + 1);
        metrics::gauge!("calldesk_watch_streams", "kind" => kind).increment(1.0);
        Ok(WatchPermit {
            limiter: self.clone(),
            agent_id: agent_id.to_owned(),
            kind,
        })
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        metrics::gauge!("calldesk_watch_streams", "kind" => self.kind).decrement(1.0);
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut open) = self.limiter.open.lock() {
            if let Some(n) = open.get_mut(&self.agent_id) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.agent_id);
                }
            }
        }
    }
}

/// When a request reached calldesk's own layers (`server::deadline` stamps it), so that its
/// deadline counts from there.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub tokio::time::Instant);

/// How much earlier than the client's deadline calldesk answers DEADLINE_EXCEEDED: early
/// enough that the answer can reach the client, and that tonic's transport (which also
/// watches `grpc-timeout`, from just before calldesk's layers, and would answer CANCELLED)
/// never fires first.
pub const CLIENT_DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(5);

/// What a call past its deadline is answered (DEADLINE_EXCEEDED).
pub const DEADLINE_PASSED: &str = "the call did not finish within its deadline";

/// The instant a unary call must be answered by: the server's `--request-timeout`, or the
/// client's `grpc-timeout` less [`CLIENT_DEADLINE_MARGIN`] if that is sooner, counted from
/// the request's [`Arrival`].
pub fn deadline(
    metadata: &tonic::metadata::MetadataMap,
    extensions: &tonic::Extensions,
    server_default: std::time::Duration,
) -> tokio::time::Instant {
    let arrival = extensions
        .get::<Arrival>()
        .map_or_else(tokio::time::Instant::now, |a| a.0);
    let client = metadata.get("grpc-timeout").and_then(|v| v.to_str().ok());
    arrival + budget(client, server_default)
}

/// How long a call may take: `server_default` (`--request-timeout`), or the client's
/// `grpc-timeout` (its header's value) less [`CLIENT_DEADLINE_MARGIN`] if that is sooner.
pub fn budget(
    grpc_timeout: Option<&str>,
    server_default: std::time::Duration,
) -> std::time::Duration {
    let client = grpc_timeout
        .and_then(parse_grpc_timeout)
        .map(|c| c.saturating_sub(CLIENT_DEADLINE_MARGIN));
    client.map_or(server_default, |c| c.min(server_default))
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_the_shorter_deadline_wins() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(
            budget(None, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        md.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            budget(Some("250m"), Duration::from_secs(30)),
            Duration::from_millis(245)
        );
        assert_eq!(
            budget(Some("250m"), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        let arrival = tokio::time::Instant::now();
        let mut extensions = tonic::Extensions::new();
        extensions.insert(Arrival(arrival));
        assert_eq!(
            deadline(&md, &extensions, Duration::from_secs(30)),
            arrival + Duration::from_millis(245)
        );
    }

    #[test]
    fn watch_permits_count_per_agent_and_in_all() {
        let limiter = WatchLimiter::new(3, 2);
        let a1 = limiter.acquire("a", "agent").unwrap();
        let _a2 = limiter.acquire("a", "agent").unwrap();
        let refused = limiter.acquire("a", "agent").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let _b1 = limiter.acquire("b", "agent").unwrap();
        let refused = limiter.acquire("c", "agent").err().unwrap();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "total reached"
        );
        drop(a1);
        assert!(limiter.acquire("c", "agent").is_ok(), "a place came free");
    }
}
