//! A Bloom filter of the idempotency keys the store may hold unexpired (SQLite): a StartCall
//! whose request_id is certainly not among them is new, and skips the store's look-up. Pure: no
//! I/O, no clocks (the caller passes `now`), so every rule is tested below.
//!
//! It must never say "absent" of a key whose row may be unexpired (that would dial a retry
//! twice); a false "maybe" only costs the look-up that every key cost without it.
//! - The call manager adds a key when it writes the key's row ([`KeyFilter::insert`], with the
//!   row's expiry), before the row can be read.
//! - At start-up the store's unexpired keys are scanned into a filter of the same shape
//!   ([`KeyFilter::blank`]), merged in by [`KeyFilter::merge`]; until then every key is "maybe".
//! - A Bloom filter cannot forget: keys go into the current generation; once it is older than
//!   the keys' lifetime it becomes the previous one and a fresh one starts, and the previous is
//!   dropped once every key it holds has expired (it knows their latest expiry). A generation
//!   that had to take more keys than it was sized for only answers "maybe" more often.
//!
//! With PostgreSQL another replica may write any key at any time: no filter can say "absent"
//! there, and admission reads every key anyway (the call manager looks none up).

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use super::idempotency::Key;

/// Bits set per key: with 10 bits per key, 7 give about 1% false "maybe"s at the designed load.
const HASHES: u64 = 7;
/// Bits per key a generation is designed for.
const BITS_PER_KEY: usize = 10;

/// One generation: a bit array and the latest expiry among its keys.
#[derive(Clone)]
struct Generation {
    bits: Vec<u64>,
    /// When it started taking keys.
    started: SystemTime,
    /// The latest expiry of a key in it: after that it holds nothing the store still has.
    expires_by: SystemTime,
}

impl Generation {
    fn new(words: usize, now: SystemTime) -> Self {
        Self {
            bits: vec![0; words],
            started: now,
            expires_by: now,
        }
    }

    fn insert(&mut self, hash: u64, expires: SystemTime) {
        for p in positions(self.bits.len(), hash) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.expires_by = self.expires_by.max(expires);
    }

    fn may_hold(&self, hash: u64) -> bool {
        positions(self.bits.len(), hash).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// The bits of a key's `hash` in an array of `words` words: k positions from the two halves of
/// one hash (double hashing, Kirsch and Mitzenmacher).
fn positions(words: usize, hash: u64) -> impl Iterator<Item = usize> {
    let len = words as u64 * 64;
    let (h1, h2) = (hash & 0xffff_ffff, (hash >> 32) | 1);
    (0..HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % len) as usize)
}

/// The filter: two generations, the hasher they share, and whether the start-up scan is in.
#[derive(Clone)]
pub(super) struct KeyFilter {
    current: Generation,
    previous: Option<Generation>,
    /// Random per process (a filter never outlives it): nobody can choose request_ids that
    /// collide on purpose, which would only cost look-ups anyway.
    hasher: RandomState,
    /// How long a key lives (`--idempotency-ttl`): a generation takes keys this long.
    ttl: Duration,
    /// False until the store's unexpired keys are merged in: until then every key is "maybe".
    ready: bool,
}

impl KeyFilter {
    /// A filter designed for `keys` keys per `ttl` (about 10 bits, 1.25 bytes, per key and
    /// generation), not ready until [`KeyFilter::merge`].
    pub fn new(keys: usize, ttl: Duration, now: SystemTime) -> Self {
        let words = (keys.max(64) * BITS_PER_KEY).div_ceil(64);
        Self {
            current: Generation::new(words, now),
            previous: None,
            hasher: RandomState::new(),
            ttl,
            ready: false,
        }
    }

    /// An empty filter of the same shape and hasher, for the start-up scan to fill.
    pub fn blank(&self) -> Self {
        Self {
            current: Generation::new(self.current.bits.len(), self.current.started),
            previous: None,
            hasher: self.hasher.clone(),
            ttl: self.ttl,
            ready: false,
        }
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Adds a key whose row expires at `expires`.
    pub fn insert(&mut self, key: &Key, expires: SystemTime, now: SystemTime) {
        self.rotate(now);
        let hash = self.hash(key);
        self.current.insert(hash, expires);
    }

    /// Whether the store may hold `key` unexpired: false only when it certainly does not.
    pub fn may_hold(&self, key: &Key) -> bool {
        if !self.ready {
            return true;
        }
        let hash = self.hash(key);
        self.current.may_hold(hash) || self.previous.as_ref().is_some_and(|p| p.may_hold(hash))
    }

    /// Takes in the start-up scan (a [`KeyFilter::blank`] filled with the store's unexpired
    /// keys): from now on a key in neither is certainly absent.
    pub fn merge(&mut self, scanned: KeyFilter) {
        for (mine, theirs) in self.current.bits.iter_mut().zip(&scanned.current.bits) {
            *mine |= theirs;
        }
        self.current.expires_by = self.current.expires_by.max(scanned.current.expires_by);
        self.ready = true;
    }

    /// Starts a new generation once the current one is `ttl` old and the previous one holds
    /// only expired keys; otherwise the current one goes on taking keys.
    fn rotate(&mut self, now: SystemTime) {
        let old = now
            .duration_since(self.current.started)
            .is_ok_and(|age| age >= self.ttl);
        let previous_expired = self.previous.as_ref().is_none_or(|p| p.expires_by <= now);
        if old && previous_expired {
            let fresh = Generation::new(self.current.bits.len(), now);
            self.previous = Some(std::mem::replace(&mut self.current, fresh));
        }
    }

    /// Drops the previous generation once all its keys have expired (called now and then).
    pub fn prune(&mut self, now: SystemTime) {
        if self.previous.as_ref().is_some_and(|p| p.expires_by <= now) {
            self.previous = None;
        }
        self.rotate(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(86_400);

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn key(n: usize) -> Key {
        ("agent".into(), format!("r{n}"))
    }

    fn ready(keys: usize, now: SystemTime) -> KeyFilter {
        let mut filter = KeyFilter::new(keys, TTL, now);
        let scanned = filter.blank();
        filter.merge(scanned);
        filter
    }

    #[test]
    fn every_key_may_be_held_until_the_scan_is_merged() {
        let mut filter = KeyFilter::new(1000, TTL, t(0));
        assert!(filter.may_hold(&key(1)), "not ready: maybe");
        let mut scanned = filter.blank();
        scanned.insert(&key(1), t(100), t(0));
        filter.insert(&key(2), t(100), t(0));
        filter.merge(scanned);
        assert!(filter.may_hold(&key(1)), "the scan's key");
        assert!(filter.may_hold(&key(2)), "a key written while it ran");
        let absent = (3..1003).filter(|n| !filter.may_hold(&key(*n))).count();
        assert!(
            absent > 990,
            "only {absent} of 1000 new keys certainly absent"
        );
    }

    #[test]
    fn no_inserted_key_is_ever_said_absent_and_few_new_ones_are_maybe() {
        let mut filter = ready(10_000, t(0));
        for n in 0..10_000 {
            filter.insert(&key(n), t(100) + TTL, t(100));
        }
        assert!((0..10_000).all(|n| filter.may_hold(&key(n))));
        let maybe = (10_000..110_000)
            .filter(|n| filter.may_hold(&key(*n)))
            .count();
        assert!(
            maybe < 2_000,
            "{maybe} false maybes in 100,000 (designed for ~1%)"
        );
        // Beyond its design it answers maybe more often, never absent for a key it holds.
        for n in 10_000..50_000 {
            filter.insert(&key(n), t(100) + TTL, t(100));
        }
        assert!((0..50_000).all(|n| filter.may_hold(&key(n))));
    }

    #[test]
    fn a_generation_is_dropped_only_once_its_keys_expired() {
        let mut filter = ready(1000, t(0));
        filter.insert(&key(1), t(10) + TTL, t(10));
        // A ttl later the next key starts a new generation; key 1 is still unexpired.
        let later = t(0) + TTL;
        filter.insert(&key(2), later + TTL, later);
        assert!(filter.previous.is_some());
        filter.prune(later);
        assert!(filter.may_hold(&key(1)) && filter.may_hold(&key(2)));
        // Key 1 expired: its generation goes; key 2 stays.
        filter.prune(t(10) + TTL);
        assert!(filter.previous.is_none());
        assert!(!filter.may_hold(&key(1)), "its generation went");
        assert!(filter.may_hold(&key(2)));
    }

    #[test]
    fn a_key_living_longer_than_the_ttl_keeps_its_generation() {
        // A key stored by a process with a longer --idempotency-ttl, scanned at start-up.
        let mut filter = KeyFilter::new(1000, TTL, t(0));
        let mut scanned = filter.blank();
        scanned.insert(&key(1), t(0) + TTL * 5, t(0));
        filter.merge(scanned);
        for day in 1..5 {
            let now = t(0) + TTL * day;
            filter.insert(&key(100 + day as usize), now + TTL, now);
            filter.prune(now);
            assert!(filter.may_hold(&key(1)), "day {day}");
        }
    }
}
