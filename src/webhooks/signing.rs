//! Standard Webhooks (<https://www.standardwebhooks.com/>): the three headers of a callback
//! and its signature.
//!
//! - `webhook-id`: `INTERACTION_ID:SEQUENCE`, the same on every attempt of one event (and for
//!   every subscription), so that a receiver can drop a duplicate.
//! - `webhook-timestamp`: the attempt's time in whole seconds since the Unix epoch, so that a
//!   receiver can refuse an old (replayed) request.
//! - `webhook-signature`: `v1,` and the base64 of HMAC-SHA256 over `ID.TIMESTAMP.BODY`, keyed
//!   with the secret's bytes (`whsec_` + base64 in the file; the bytes are the decoded base64).

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What a secret in the webhooks file starts with (Standard Webhooks' convention).
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest and longest key a secret may hold, in bytes (Standard Webhooks: 24 to 64).
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

/// A signing key. Never printed: its `Debug` says only that it is there.
#[derive(Clone)]
pub struct Secret {
    /// The key's bytes: two readings of the file compare by them.
    key: Vec<u8>,
    /// HMAC-SHA256 keyed with them, cloned for each signature.
    mac: Hmac<Sha256>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// `whsec_` and the base64 of 24 to 64 bytes. The error never repeats the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let how = "make one with: echo \"whsec_$(openssl rand -base64 32)\"";
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "a secret is `{SECRET_PREFIX}` and base64 (Standard Webhooks); {how}"
            ));
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("the secret after `{SECRET_PREFIX}` is not base64; {how}"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "the secret holds {} bytes; it must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES}; {how}",
                key.len()
            ));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
            .map_err(|_| "the secret cannot key HMAC-SHA256".to_string())?;
        Ok(Secret { key, mac })
    }
}

/// The `webhook-id` of an event: stable across attempts and restarts.
pub fn webhook_id(interaction_id: &str, sequence: u64) -> String {
    format!("{interaction_id}:{sequence}")
}

/// The `webhook-signature` of one attempt.
pub fn sign(secret: &Secret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = secret.mac.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification, which docs/guide/webhooks.md's
    /// receivers verify too.
    #[test]
    fn signs_the_specifications_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(webhook_id("0190-ab", 7), "0190-ab:7");
    }

    #[test]
    fn secrets_are_refused_without_their_words_and_never_printed() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            let err = Secret::parse(bad).expect_err(bad);
            assert!(!err.contains(bad), "{err}");
        }
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(format!("{secret:?}"), "Secret(…)");
    }
}
