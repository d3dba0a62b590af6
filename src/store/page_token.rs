//! ListInteractions' page tokens: where the next page starts, sealed.
//!
//! A page starts before a store-wide row (the position of the last interaction on the page
//! before). That row is every agent's count: in the clear, two of an agent's tokens would tell
//! how many interactions every other agent created between them, and a client could make up
//! any row. So a token is that row encrypted and authenticated (AES-256-GCM, ring) under a key
//! kept in the store (created once, by whichever process opens the store first), with the
//! agent and the state filter as associated data: every replica, and every restart, opens every
//! token the deployment issued; nobody else can make one; and a token is worthless to another
//! agent or with another filter. Each token has a fresh random nonce, so tokens for the same
//! page differ and tell nothing about each other.
//!
//! The token is `hex(version || nonce || sealed row || tag)`: 37 bytes, 74 hex digits.

use std::sync::Arc;

use ring::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};

use super::StoreError;

/// The bytes of a page token key.
pub const KEY_LEN: usize = 32;

/// The format of the tokens made here (the first format, `hex("v1.<state>.<row>")`, was
/// neither opaque nor authenticated: such tokens are refused).
const VERSION: u8 = 2;
/// The sealed row: an i64, big-endian.
const ROW_LEN: usize = 8;
/// AES-GCM's tag.
const TAG_LEN: usize = 16;
const TOKEN_LEN: usize = 1 + NONCE_LEN + ROW_LEN + TAG_LEN;
/// Kept apart from any other use of the key.
const DOMAIN: &[u8] = b"calldesk page token";

/// Seals and opens page tokens under the store's key. Cheap to clone.
#[derive(Clone)]
pub struct PageTokens {
    key: Arc<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(…)")
    }
}

/// A token could not be sealed (the system's random source failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealError;

impl PageTokens {
    /// A new random key, for a store that has none yet.
    pub fn new_key() -> Result<[u8; KEY_LEN], StoreError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| StoreError::new("cannot make a page token key: no random source"))?;
        Ok(key)
    }

    /// The tokens of the store whose key is `key` (as stored: [`KEY_LEN`] bytes).
    pub fn with_key(key: &[u8]) -> Result<Self, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| StoreError {
            message: format!(
                "the store's page token key is {} bytes, not {KEY_LEN}",
                key.len()
            ),
            corrupt: true,
        })?;
        Ok(Self {
            key: Arc::new(LessSafeKey::new(unbound)),
            random: SystemRandom::new(),
        })
    }

    /// A token for the page of `agent_id`'s interactions (in `state`, 0 for any) that starts
    /// before `row`.
    pub fn seal(&self, agent_id: &str, state: i32, row: i64) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| SealError)?;
        let mut sealed = row.to_be_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(agent_id, state)),
                &mut sealed,
            )
            .map_err(|_| SealError)?;
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(VERSION);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        Ok(token.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The row a token sealed for `agent_id` and `state` names; None for anything else (not a
    /// token, another format, another agent's or filter's, altered, made under another key).
    pub fn open(&self, token: &str, agent_id: &str, state: i32) -> Option<i64> {
        let bytes = decode_hex(token)?;
        if bytes.len() != TOKEN_LEN || bytes[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[1..1 + NONCE_LEN]).ok()?;
        let mut sealed = bytes[1 + NONCE_LEN..].to_vec();
        let row = self
            .key
            .open_in_place(nonce, Aad::from(associated(agent_id, state)), &mut sealed)
            .ok()?;
        Some(i64::from_be_bytes(row.try_into().ok()?))
    }
}

/// What a token is bound to besides its row: the format, the filter and the agent.
fn associated(agent_id: &str, state: i32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOMAIN.len() + 5 + agent_id.len());
    aad.extend_from_slice(DOMAIN);
    aad.push(VERSION);
    aad.extend_from_slice(&state.to_be_bytes());
    aad.extend_from_slice(agent_id.as_bytes());
    aad
}

/// Pairs of hex digits as bytes; None for anything else (an odd digit out included).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::with_key(&PageTokens::new_key().unwrap()).unwrap()
    }

    #[test]
    fn a_token_opens_for_its_agent_and_filter_only() {
        let tokens = tokens();
        let token = tokens.seal("alice", 2, 42).unwrap();
        assert_eq!(token.len(), 2 * TOKEN_LEN);
        assert_eq!(tokens.open(&token, "alice", 2), Some(42));
        assert_eq!(tokens.open(&token, "alice", 0), None, "another filter");
        assert_eq!(tokens.open(&token, "bob", 2), None, "another agent");
        assert_eq!(tokens.open(&token, "alice2", 2), None);
        // Under another key (another deployment), nothing opens.
        assert_eq!(self::tokens().open(&token, "alice", 2), None);
        // The same key, as another replica or a restart loads it, opens it.
        let key = PageTokens::new_key().unwrap();
        let (a, b) = (
            PageTokens::with_key(&key).unwrap(),
            PageTokens::with_key(&key).unwrap(),
        );
        assert_eq!(b.open(&a.seal("alice", 0, 7).unwrap(), "alice", 0), Some(7));
    }

    #[test]
    fn tokens_are_opaque_and_anything_else_is_refused() {
        let tokens = tokens();
        let (one, two) = (
            tokens.seal("alice", 0, 42).unwrap(),
            tokens.seal("alice", 0, 42).unwrap(),
        );
        assert_ne!(one, two, "a fresh nonce each time");
        for bad in [
            "",
            "zz",
            "abc",
            "76312e302e3939393939", // hex("v1.0.99999"), the first format
            &one[..one.len() - 2],
            &format!("{one}00"),
        ] {
            assert_eq!(tokens.open(bad, "alice", 0), None, "{bad:?}");
        }
        // Any one digit changed, the tag fails.
        for i in 0..one.len() {
            let mut altered = one.clone().into_bytes();
            altered[i] = if altered[i] == b'0' { b'1' } else { b'0' };
            let altered = String::from_utf8(altered).unwrap();
            assert_eq!(tokens.open(&altered, "alice", 0), None, "digit {i}");
        }
    }

    #[test]
    fn a_key_of_the_wrong_length_is_a_damaged_store() {
        let error = PageTokens::with_key(&[0; 16]).unwrap_err();
        assert!(error.corrupt, "{error:?}");
    }
}
