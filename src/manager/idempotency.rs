//! Idempotency keys (AIP-155) as the actor keeps them: a pure table of what each
//! (agent, request_id) asked for and how it was answered. No I/O, no clocks (the caller passes
//! `now`), no channels: the waiters are whatever the caller hands in (the actor's reply
//! channels), so every rule is tested below on its own.
//!
//! - The first request with a key puts it *in flight*; retries with the same request wait for
//!   its outcome, a different request under the key is refused.
//! - A success makes the key *answered*: retries get the first response until the key expires.
//! - A failure forgets the key, so that a retry may try again.
//!
//! The store holds every answered key (written with the request's outcome, in the same
//! transaction); this table holds the keys in flight (as many as requests under way) and a
//! cache of the most recently used answered ones, at most `cache_capacity`. A key in neither is
//! looked up in the store by the caller ([`Keys::knows`] says when), before [`Keys::begin`]:
//! the answer goes in with [`Keys::found`]. An answered key leaves the cache only after its
//! row committed, so a look-up started after it left finds the row.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hashlink::LruCache;
use sha2::{Digest, Sha256};

use super::StartCall;
use crate::domain::AssociatedObject;
use crate::proto;
use crate::store::IdempotencyRecord;

/// A key: (agent, request_id). The same request_id of two agents are two keys.
pub(super) type Key = (String, String);

/// A key whose first request is under way; retries wait for its outcome.
struct InFlight<W> {
    fingerprint: Vec<u8>,
    waiters: Vec<W>,
}

/// A key whose first request succeeded: retries get its response until the key expires.
struct Answered {
    fingerprint: Vec<u8>,
    response: Box<proto::StartCallResponse>,
    expire_time: SystemTime,
}

/// What a request with a key is, given what came before it.
#[derive(Debug)]
pub(super) enum Begin<W> {
    /// The first with this key (or its predecessor failed or expired): go on. The key is in
    /// flight from now on. The waiter comes back to be answered when the request is done.
    First(W),
    /// A retry of an answered request: answer the waiter with this response.
    Replay(W, Box<proto::StartCallResponse>),
    /// A different request under a key in use: answer the waiter with RequestIdReused.
    Reused(W),
    /// A retry while the first is under way: the waiter is kept and answered with its outcome.
    Joined,
}

/// What a request without a body of its own (a DialStaged with nothing staged) gets.
#[derive(Debug)]
pub(super) enum Follow<W> {
    /// The key was answered: this response.
    Replay(W, Box<proto::StartCallResponse>),
    /// The key is in flight: the waiter is kept and answered with its outcome.
    Joined,
    /// Nothing is known of the key (or it expired).
    Unknown(W),
}

/// The keys in flight and the recently answered ones, with the time an answered key is
/// remembered.
pub(super) struct Keys<W> {
    /// By (agent, request_id): as many as StartCalls under way.
    in_flight: HashMap<Key, InFlight<W>>,
    /// By (agent, request_id): the most recently used answered keys, at most the cache's
    /// capacity; the rest are in the store only.
    answered: LruCache<Key, Answered>,
    /// How long an answered key replays its response (`--idempotency-ttl`, 24 h).
    ttl: Duration,
}

impl<W> Keys<W> {
    /// A table that caches at most `cache_capacity` answered keys (at least one).
    pub fn new(ttl: Duration, cache_capacity: usize) -> Self {
        Self {
            in_flight: HashMap::new(),
            answered: LruCache::new(cache_capacity.max(1)),
            ttl,
        }
    }

    /// Whether the table can decide for `key` alone: it is in flight or cached. Otherwise the
    /// store may hold it: look it up and hand the answer to [`Keys::found`] before `begin`.
    pub fn knows(&self, key: &Key) -> bool {
        self.in_flight.contains_key(key) || self.answered.contains_key(key)
    }

    /// A key the store held (answered by this process before, or before a restart).
    pub fn found(&mut self, record: IdempotencyRecord) {
        let key = (record.agent_id, record.request_id);
        if self.in_flight.contains_key(&key) {
            // Begun again since (it had expired): the request under way decides.
            return;
        }
        self.answered.insert(
            key,
            Answered {
                fingerprint: record.fingerprint,
                response: Box::new(record.response),
                expire_time: record.expire_time,
            },
        );
    }

    /// A request with `key` and `fingerprint` arrives, with `waiter` to answer. A key the
    /// table does not know is taken as new: look it up first (see [`Keys::knows`]).
    pub fn begin(
        &mut self,
        key: &Key,
        fingerprint: Vec<u8>,
        waiter: W,
        now: SystemTime,
    ) -> Begin<W> {
        if let Some(first) = self.in_flight.get_mut(key) {
            if first.fingerprint == fingerprint {
                first.waiters.push(waiter);
                return Begin::Joined;
            }
            return Begin::Reused(waiter);
        }
        match self.answered.get(key) {
            Some(answered) if answered.expire_time > now => {
                return if answered.fingerprint == fingerprint {
                    Begin::Replay(waiter, answered.response.clone())
                } else {
                    Begin::Reused(waiter)
                };
            }
            Some(_) => {
                self.answered.remove(key);
            }
            None => {}
        }
        self.in_flight.insert(
            key.clone(),
            InFlight {
                fingerprint,
                waiters: Vec::new(),
            },
        );
        Begin::First(waiter)
    }

    /// A request that carries only its key (a DialStaged after its first cleared the
    /// dialpad): the first response, the first's outcome once known, or nothing.
    pub fn follow(&mut self, key: &Key, waiter: W, now: SystemTime) -> Follow<W> {
        if let Some(first) = self.in_flight.get_mut(key) {
            first.waiters.push(waiter);
            return Follow::Joined;
        }
        match self.answered.get(key) {
            Some(answered) if answered.expire_time > now => {
                Follow::Replay(waiter, answered.response.clone())
            }
            _ => Follow::Unknown(waiter),
        }
    }

    /// Whether a request with `key` would be answered from the table (answered, unexpired).
    pub fn replays(&self, key: &Key, now: SystemTime) -> bool {
        self.answered
            .peek(key)
            .is_some_and(|answered| answered.expire_time > now)
    }

    /// The row to store with a request's outcome, so that a restart (or another replica)
    /// replays it too: None unless the key is in flight.
    pub fn record(
        &self,
        key: &Key,
        response: proto::StartCallResponse,
        now: SystemTime,
    ) -> Option<Box<IdempotencyRecord>> {
        let first = self.in_flight.get(key)?;
        Some(Box::new(IdempotencyRecord {
            agent_id: key.0.clone(),
            request_id: key.1.clone(),
            fingerprint: first.fingerprint.clone(),
            response,
            expire_time: now + self.ttl,
        }))
    }

    /// The request in flight under `key` succeeded with `response` (its row committed): the
    /// key is answered, and the retries that waited are returned to be answered with it. The
    /// least recently used answered key leaves the cache if it is full (the store has it).
    pub fn succeed(
        &mut self,
        key: &Key,
        response: &proto::StartCallResponse,
        now: SystemTime,
    ) -> Vec<W> {
        let Some(InFlight {
            fingerprint,
            waiters,
        }) = self.in_flight.remove(key)
        else {
            return Vec::new();
        };
        self.answered.insert(
            key.clone(),
            Answered {
                fingerprint,
                response: Box::new(response.clone()),
                expire_time: now + self.ttl,
            },
        );
        waiters
    }

    /// The request in flight under `key` failed: the key is forgotten (a retry tries again),
    /// and the retries that waited are returned to be given the same error. An answered key
    /// stays answered: a failure cannot undo that.
    pub fn fail(&mut self, key: &Key) -> Vec<W> {
        self.in_flight
            .remove(key)
            .map_or_else(Vec::new, |first| first.waiters)
    }

    /// Forgets the cached answered keys that expired.
    pub fn prune(&mut self, now: SystemTime) {
        let expired: Vec<Key> = self
            .answered
            .iter()
            .filter(|(_, answered)| answered.expire_time <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.answered.remove(&key);
        }
    }

    /// How many keys are held (answered and in flight).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_flight.len() + self.answered.len()
    }
}

/// A hash of what a StartCall asks for, to tell a retry from a different request that reuses
/// its request_id. Each part is length-prefixed so that no two requests hash the same input.
/// The request is destructured whole: a field added to [`StartCall`] or [`AssociatedObject`]
/// does not compile here until it is hashed or said not to be part of the request.
///
/// A DialStaged asks for nothing but "dial what is staged": every DialStaged with one key is
/// the same request, whatever the dialpad holds when it arrives (a retry after the agent
/// staged another number gets the first response, docs/api.md §3), and never a StartCall's.
pub(super) fn fingerprint(request: &StartCall) -> Vec<u8> {
    let StartCall {
        // The key's own parts: the agent and the request_id are the key.
        agent_id: _,
        request_id: _,
        phone_number,
        associated_object,
        caller_id,
        staged,
        // What admission claimed for it: the server's, not the request's.
        claims: _,
        // What the caller ID rule chose for it: the server's, not the request's (a retry
        // after --caller-ids changed is still the same request, and replays the first's).
        presented_caller_id: _,
    } = request;
    let mut hash = Sha256::new();
    let mut part = |s: &str| {
        hash.update((s.len() as u64).to_le_bytes());
        hash.update(s.as_bytes());
    };
    // DialStaged and StartCall are different requests even for the same number.
    if staged.is_some() {
        part("DialStaged");
        return hash.finalize().to_vec();
    }
    part("StartCall");
    part(phone_number);
    // Only when given, so that the keys stored before caller IDs existed still match their
    // retries; the marker cannot be confused with the object's ("none", "object").
    if let Some(caller_id) = caller_id {
        part("caller_id");
        part(caller_id);
    }
    match associated_object {
        None => part("none"),
        Some(AssociatedObject {
            id,
            object_type,
            display_name,
            display_type,
            custom_fields,
        }) => {
            part("object");
            part(id);
            part(object_type);
            part(display_name);
            part(display_type);
            for (k, v) in custom_fields {
                part(k);
                part(v);
            }
        }
    }
    hash.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Claims;

    const TTL: Duration = Duration::from_secs(86_400);

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn key() -> Key {
        ("a1".into(), "r1".into())
    }

    fn response(id: &str) -> proto::StartCallResponse {
        proto::StartCallResponse {
            interaction_id: Some(id.into()),
            outcome: proto::StartCallOutcome::Started as i32,
            interaction: None,
        }
    }

    fn call(number: &str) -> StartCall {
        StartCall {
            agent_id: "a1".into(),
            phone_number: number.into(),
            associated_object: None,
            request_id: Some("r1".into()),
            caller_id: None,
            presented_caller_id: String::new(),
            staged: None,
            claims: Claims::default(),
        }
    }

    #[test]
    fn the_first_request_goes_on_and_retries_wait_for_its_outcome() {
        let mut keys = Keys::new(TTL, 16);
        let fp = fingerprint(&call("+1"));
        assert!(matches!(
            keys.begin(&key(), fp.clone(), 1, t(0)),
            Begin::First(1)
        ));
        assert!(matches!(
            keys.begin(&key(), fp.clone(), 2, t(1)),
            Begin::Joined
        ));
        assert!(matches!(keys.begin(&key(), fp, 3, t(1)), Begin::Joined));
        assert!(!keys.replays(&key(), t(1)), "in flight is not answered");
        assert_eq!(keys.succeed(&key(), &response("i1"), t(2)), vec![2, 3]);
    }

    #[test]
    fn an_answered_key_replays_until_it_expires() {
        let mut keys = Keys::new(TTL, 16);
        let fp = fingerprint(&call("+1"));
        keys.begin(&key(), fp.clone(), 1, t(0));
        keys.succeed(&key(), &response("i1"), t(0));
        assert!(keys.replays(&key(), t(10)));
        match keys.begin(&key(), fp.clone(), 2, t(10)) {
            Begin::Replay(2, r) => assert_eq!(*r, response("i1")),
            other => panic!("{other:?}"),
        }
        // Expired: the next request is a first again.
        let expired = t(TTL.as_secs());
        assert!(!keys.replays(&key(), expired));
        assert!(matches!(
            keys.begin(&key(), fp, 3, expired),
            Begin::First(3)
        ));
    }

    #[test]
    fn a_different_request_under_a_key_in_use_is_refused() {
        let mut keys = Keys::new(TTL, 16);
        keys.begin(&key(), fingerprint(&call("+1")), 1, t(0));
        let other = fingerprint(&call("+2"));
        assert!(matches!(
            keys.begin(&key(), other.clone(), 2, t(0)),
            Begin::Reused(2)
        ));
        keys.succeed(&key(), &response("i1"), t(0));
        assert!(matches!(
            keys.begin(&key(), other, 3, t(1)),
            Begin::Reused(3)
        ));
    }

    #[test]
    fn a_failure_forgets_the_key_and_hands_back_its_waiters() {
        let mut keys = Keys::new(TTL, 16);
        let fp = fingerprint(&call("+1"));
        keys.begin(&key(), fp.clone(), 1, t(0));
        keys.begin(&key(), fp.clone(), 2, t(0));
        assert_eq!(keys.fail(&key()), vec![2]);
        assert_eq!(keys.len(), 0);
        assert!(matches!(keys.begin(&key(), fp, 3, t(1)), Begin::First(3)));
    }

    #[test]
    fn a_failure_does_not_undo_an_answer() {
        let mut keys = Keys::new(TTL, 16);
        keys.begin(&key(), fingerprint(&call("+1")), 1, t(0));
        keys.succeed(&key(), &response("i1"), t(0));
        assert!(keys.fail(&key()).is_empty());
        assert!(keys.replays(&key(), t(1)));
    }

    #[test]
    fn the_record_to_store_exists_only_while_in_flight() {
        let mut keys: Keys<u8> = Keys::new(TTL, 16);
        assert!(keys.record(&key(), response("i1"), t(0)).is_none());
        keys.begin(&key(), vec![7], 1, t(0));
        let record = keys
            .record(&key(), response("i1"), t(5))
            .expect("in flight");
        assert_eq!(
            (record.agent_id.as_str(), record.request_id.as_str()),
            ("a1", "r1")
        );
        assert_eq!(record.fingerprint, vec![7]);
        assert_eq!(record.expire_time, t(5) + TTL);
    }

    #[test]
    fn follow_replays_joins_or_knows_nothing() {
        let mut keys = Keys::new(TTL, 16);
        assert!(matches!(keys.follow(&key(), 1, t(0)), Follow::Unknown(1)));
        keys.begin(&key(), vec![1], 1, t(0));
        assert!(matches!(keys.follow(&key(), 2, t(0)), Follow::Joined));
        assert_eq!(keys.succeed(&key(), &response("i1"), t(0)), vec![2]);
        assert!(matches!(keys.follow(&key(), 3, t(1)), Follow::Replay(3, _)));
        assert!(matches!(
            keys.follow(&key(), 4, t(TTL.as_secs())),
            Follow::Unknown(4)
        ));
    }

    fn record(request_id: &str, expire: SystemTime) -> IdempotencyRecord {
        IdempotencyRecord {
            agent_id: "a1".into(),
            request_id: request_id.into(),
            fingerprint: vec![1],
            response: response("i1"),
            expire_time: expire,
        }
    }

    #[test]
    fn found_keys_replay_and_prune_forgets_the_expired() {
        let mut keys: Keys<u8> = Keys::new(TTL, 16);
        assert!(!keys.knows(&key()), "not looked up yet");
        keys.found(record("old", t(10)));
        keys.found(record("r1", t(100)));
        assert!(keys.knows(&key()));
        assert!(keys.replays(&key(), t(50)));
        assert!(matches!(
            keys.begin(&key(), vec![1], 1, t(50)),
            Begin::Replay(1, _)
        ));
        assert!(matches!(
            keys.begin(&key(), vec![2], 2, t(50)),
            Begin::Reused(2)
        ));
        keys.begin(&("a1".into(), "inflight".into()), vec![2], 9, t(0));
        keys.prune(t(50));
        assert_eq!(
            keys.len(),
            2,
            "the expired one went; in flight and unexpired stay"
        );
        assert!(!keys.replays(&("a1".into(), "old".into()), t(50)));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_answered_keys_and_every_key_in_flight() {
        let mut keys: Keys<u8> = Keys::new(TTL, 2);
        let k = |r: &str| -> Key { ("a1".into(), r.into()) };
        for r in ["r1", "r2", "r3"] {
            keys.begin(&k(r), vec![1], 0, t(0));
        }
        assert_eq!(keys.len(), 3, "keys in flight are never dropped");
        keys.succeed(&k("r1"), &response("i1"), t(1));
        keys.succeed(&k("r2"), &response("i2"), t(1));
        // r1 used again: r2 is now the least recently used.
        assert!(matches!(
            keys.begin(&k("r1"), vec![1], 1, t(2)),
            Begin::Replay(1, _)
        ));
        keys.succeed(&k("r3"), &response("i3"), t(3));
        assert!(
            !keys.knows(&k("r2")),
            "the least recently used went (the store has it)"
        );
        assert!(keys.knows(&k("r1")) && keys.knows(&k("r3")));
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn a_found_key_does_not_override_one_begun_again() {
        let mut keys: Keys<u8> = Keys::new(TTL, 16);
        keys.begin(&key(), vec![9], 1, t(0));
        keys.found(record("r1", t(100)));
        assert!(matches!(
            keys.begin(&key(), vec![9], 2, t(1)),
            Begin::Joined
        ));
    }

    #[test]
    fn the_fingerprint_tells_every_part_of_the_request_apart() {
        let base = call("+12025550100");
        let mut object = AssociatedObject {
            id: "c1".into(),
            object_type: "contact".into(),
            display_name: "Ann".into(),
            display_type: "Contact".into(),
            custom_fields: [("k".to_owned(), "v".to_owned())].into(),
        };
        let with = |o: &AssociatedObject| StartCall {
            associated_object: Some(o.clone()),
            ..base.clone()
        };
        let mut seen = vec![
            fingerprint(&base),
            fingerprint(&call("+12025550101")),
            fingerprint(&with(&object)),
        ];
        object.custom_fields.insert("k".into(), "w".into());
        seen.push(fingerprint(&with(&object)));
        object.display_name = "Bob".into();
        seen.push(fingerprint(&with(&object)));
        let staged = StartCall {
            staged: Some(crate::store::StagedDialpad {
                agent_id: "a1".into(),
                payload: Vec::new(),
            }),
            ..base.clone()
        };
        seen.push(fingerprint(&staged));
        // The caller ID asked for is part of the request; none differs from any.
        let caller = |c: &str| StartCall {
            caller_id: Some(c.into()),
            ..base.clone()
        };
        seen.push(fingerprint(&caller("+12125550100")));
        seen.push(fingerprint(&caller("+13105550100")));
        // Every DialStaged with one key is one request, whatever it found staged.
        let staged_elsewhere = StartCall {
            phone_number: "+12025550101".into(),
            associated_object: Some(object.clone()),
            ..staged.clone()
        };
        assert_eq!(fingerprint(&staged_elsewhere), fingerprint(&staged));
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "every variation hashes apart");
        // The key's parts, the claims and the caller ID chosen for it are not the
        // request's.
        let other_key = StartCall {
            agent_id: "a2".into(),
            request_id: Some("r2".into()),
            presented_caller_id: "+13105550100".into(),
            ..base.clone()
        };
        assert_eq!(fingerprint(&other_key), fingerprint(&base));
    }
}
