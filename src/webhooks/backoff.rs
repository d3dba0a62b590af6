//! When a failed callback is tried again: exponential backoff with jitter.
//!
//! The n-th failure of an event waits `BASE · 2ⁿ⁻¹`, at most [`CAP`], scaled by a random
//! factor between ½ and 1 so that the interactions that failed together (an endpoint that went
//! away) do not come back together. A delivery that succeeds cuts the waits of the
//! subscription's other interactions short (the endpoint is back: see delivery.rs), so the cap
//! bounds how long a recovered endpoint may wait for its first retry, not the drain.

use std::{
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// The wait after the first failure.
pub const BASE: Duration = Duration::from_millis(250);
/// The longest wait.
pub const CAP: Duration = Duration::from_secs(60);
/// The longest wait between two probes of a subscription whose endpoint is down (one request
/// at a time, see delivery.rs): a recovered endpoint waits at most this for its backlog.
pub const PROBE_CAP: Duration = Duration::from_secs(5);

/// The wait after `failures` failures (1 for the first), with `jitter` in [0, 1).
pub fn delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let full = BASE.saturating_mul(1 << doublings).min(CAP);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The wait before the next probe after `failures` failed in a row: [`delay`], at most
/// [`PROBE_CAP`].
pub fn probe_delay(failures: u32, jitter: f64) -> Duration {
    delay(failures, jitter).min(PROBE_CAP)
}

/// A number in [0, 1) that differs per call: SipHash with the process's random keys over a
/// counter and the clock (jitter needs no better, and no crate).
pub fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_within_their_jitter() {
        assert!(delay(1, 0.999) < BASE);
        assert_eq!(delay(1, 0.0), BASE / 2);
        assert_eq!(delay(2, 0.0), BASE);
        assert_eq!(delay(3, 0.0), BASE * 2);
        assert_eq!(delay(40, 0.0), CAP / 2);
        assert!(delay(u32::MAX, 0.999) <= CAP);
        assert_eq!(probe_delay(2, 0.0), BASE);
        assert_eq!(probe_delay(40, 0.0), PROBE_CAP);
        let draws: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
