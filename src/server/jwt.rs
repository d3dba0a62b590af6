//! Sign-in with an identity provider: `--jwt-jwks` names agents by the JWTs that provider signs.
//!
//! A request's `authorization: Bearer <JWT>` is admitted when the JWT (a JWS in compact form)
//! is signed with RS256, ES256 or EdDSA (Ed25519) by a key of the provider's JWKS, its `iss` is
//! `--jwt-issuer`, its `aud` holds `--jwt-audience`, it has an `exp` that has not passed and no
//! `nbf` still to come (both with [`LEEWAY`] for clocks that disagree), and its
//! `--jwt-agent-claim` (default `sub`) is an agent id. Nothing else is accepted: `alg: none`,
//! HMAC (whose "secret" would be the provider's public key), other algorithms, keys the header
//! carries itself (`jwk`, `jku`, `x5u`: never read), and a key whose JWKS entry names another
//! algorithm than the token's header.
//!
//! The key set is read from a file (re-read on SIGHUP, as the token file is) or fetched from an
//! `https://` URL (`jwks_fetch.rs`: refreshed periodically and on SIGHUP). A token stops
//! working when the key that signed it leaves the set; the watch streams it opened then end
//! with UNAUTHENTICATED, as they do at its `exp`.
//!
//! Neither tokens nor claims are logged; a refusal's reason names what failed, never a value.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash},
    Algorithm, DecodingKey, Validation,
};
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};

use super::reload::Reloadable;
use crate::api::agent::Revocation;

/// How far `exp` and `nbf` may be off: clocks of the provider and of calldesk disagree a little.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The algorithms calldesk verifies. Asymmetric only: the JWKS is public.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// RSA keys below this many bits are not used (NIST: 2048 at least).
const MIN_RSA_BITS: usize = 2048;
/// Keys a JWKS may hold: a provider publishes a handful (current, next, previous).
const MAX_KEYS: usize = 64;
/// The largest JWKS file or response read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The longest agent id a claim may carry (as the token file allows).
const MAX_AGENT_ID: usize = 128;
/// The longest `kid` looked up; a longer one names no key.
const MAX_KID: usize = 256;

/// What a JWT must say, from the `--jwt-*` flags.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// `--jwt-issuer`: the only `iss` accepted.
    pub issuer: String,
    /// `--jwt-audience`: a value `aud` must hold.
    pub audience: String,
    /// `--jwt-agent-claim`: the claim whose string value is the agent id.
    pub agent_claim: String,
}

/// One key of the JWKS that calldesk verifies with.
struct VerifyingKey {
    /// Its `kid`, which a token's header names.
    kid: Option<String>,
    /// The one algorithm it verifies (from its type and curve, and its `alg` if it has one).
    algorithm: Algorithm,
    decoding: DecodingKey,
    /// Its RFC 7638 thumbprint: what a verified token remembers, to notice that its key left
    /// the set (a `kid` could be reused for another key).
    thumbprint: Arc<str>,
}

/// The keys of one reading of the JWKS.
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    /// Entries not used (another algorithm, an encryption key, a short RSA key…), for the log.
    skipped: usize,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS (`{"keys": [...]}`); `source` names the file or URL in errors. Entries
    /// calldesk cannot use are skipped (and counted), so that a provider's set that also holds
    /// encryption keys or other algorithms still works; two usable keys with one `kid` are an
    /// error.
    pub fn parse(source: &str, text: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        if text.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "JWKS {source}: larger than {} KiB",
                MAX_JWKS_BYTES / 1024
            ));
        }
        let set: Set = serde_json::from_slice(text).map_err(|e| {
            format!("JWKS {source}: not a JSON Web Key Set (`{{\"keys\": [...]}}`): {e}")
        })?;
        if set.keys.len() > MAX_KEYS {
            return Err(format!(
                "JWKS {source}: {} keys, more than {MAX_KEYS}",
                set.keys.len()
            ));
        }
        let mut keys: Vec<VerifyingKey> = Vec::new();
        let mut skipped = 0;
        for (n, entry) in set.keys.into_iter().enumerate() {
            let Some(key) = serde_json::from_value::<Jwk>(entry)
                .ok()
                .and_then(|jwk| verifying_key(&jwk))
            else {
                skipped += 1;
                continue;
            };
            if let Some(kid) = &key.kid {
                if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                    return Err(format!(
                        "JWKS {source}: key {} has the same kid as an earlier key",
                        n + 1
                    ));
                }
            }
            keys.push(key);
        }
        Ok(KeySet { keys, skipped })
    }

    /// The key a token's header asks for: the one with its `kid`, or, without a `kid`, the
    /// set's only key. Its algorithm must be the header's.
    fn key_for(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<&VerifyingKey, JwtRefusal> {
        let key = match kid {
            Some(kid) if kid.len() <= MAX_KID => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(JwtRefusal::UnknownKey)?,
            Some(_) => return Err(JwtRefusal::UnknownKey),
            None => match &self.keys[..] {
                [only] => only,
                [] => return Err(JwtRefusal::UnknownKey),
                _ => return Err(JwtRefusal::NoKeyId),
            },
        };
        if key.algorithm != algorithm {
            return Err(JwtRefusal::Algorithm);
        }
        Ok(key)
    }

    /// Whether the key with this thumbprint is in the set.
    fn contains(&self, thumbprint: &str) -> bool {
        self.keys.iter().any(|k| &*k.thumbprint == thumbprint)
    }

    /// How many keys calldesk verifies with.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it verifies nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Entries of the JWKS it does not use.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

/// The key of a JWKS entry, if calldesk verifies with it: RSA (2048 bits or more) for RS256,
/// P-256 for ES256, Ed25519 for EdDSA; not for encryption; an `alg`, if given, that matches.
fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = base64_len(&rsa.n)?;
            (modulus * 8 >= MIN_RSA_BITS).then_some(Algorithm::RS256)?
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // HMAC secrets (`oct`) never: a JWKS is public.
        _ => return None,
    };
    let declared = jwk.common.key_algorithm.map(|alg| match alg {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    if matches!(declared, Some(d) if d != Some(algorithm)) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    let thumbprint = jwk.thumbprint(ThumbprintHash::SHA256).ok()?;
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        decoding,
        thumbprint: thumbprint.into(),
    })
}

/// Bytes of base64url text, without decoding it (leading zero bytes are not discounted: RSA
/// moduli are encoded without them).
fn base64_len(text: &str) -> Option<usize> {
    let text = text.trim_end_matches('=');
    Some(text.len() * 3 / 4)
}

impl Reloadable for KeySet {
    const WHAT: &'static str = "JWT keys";

    fn load(path: &Path) -> Result<Self, String> {
        let text = read_capped(path)?;
        KeySet::parse(&path.display().to_string(), &text)
    }

    fn entries(&self) -> usize {
        self.keys.len()
    }

    fn warning(&self) -> Option<&'static str> {
        self.keys.is_empty().then_some(
            "the JWKS holds no RS256, ES256 or EdDSA signing key: every JWT will be refused",
        )
    }
}

/// The file's bytes, refusing one over [`MAX_JWKS_BYTES`] without reading it all.
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "JWKS file {}: larger than {} KiB",
            path.display(),
            MAX_JWKS_BYTES / 1024
        ));
    }
    Ok(text)
}

/// Why a JWT was refused: the log's reason and the client's message, never a value it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Not a JWS in compact form with a readable header and claims.
    Malformed,
    /// `alg` is not RS256, ES256 or EdDSA, or not the algorithm of the key it names.
    Algorithm,
    /// No key of the JWKS has its `kid`.
    UnknownKey,
    /// No `kid`, and the JWKS holds several keys.
    NoKeyId,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// `exp`, `iss` or `aud` is missing, or a time claim is not a number.
    Claims,
    /// The agent claim is missing or not an agent id.
    AgentClaim,
}

impl JwtRefusal {
    /// The message the client gets (UNAUTHENTICATED), also the log's reason.
    pub fn message(self) -> &'static str {
        match self {
            JwtRefusal::Malformed => {
                "malformed JWT (or an algorithm calldesk never accepts, such as none)"
            }
            JwtRefusal::Algorithm => {
                "JWT algorithm refused: RS256, ES256 or EdDSA, as the JWKS key says"
            }
            JwtRefusal::UnknownKey => "JWT signed by a key the JWKS does not hold (unknown kid)",
            JwtRefusal::NoKeyId => "JWT without kid, and the JWKS holds several keys",
            JwtRefusal::Signature => "JWT signature does not verify",
            JwtRefusal::Expired => "JWT expired",
            JwtRefusal::NotYetValid => "JWT not valid yet (nbf)",
            JwtRefusal::Issuer => "JWT issuer (iss) is not the one calldesk trusts",
            JwtRefusal::Audience => "JWT audience (aud) does not name calldesk",
            JwtRefusal::Claims => {
                "JWT claims incomplete: exp, iss and aud are required, as numbers and strings"
            }
            JwtRefusal::AgentClaim => {
                "JWT agent claim missing or not an agent id (1 to 128 printable ASCII characters)"
            }
        }
    }
}

/// A JWT that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What its agent claim names.
    pub agent_id: String,
    /// The key that signed it, to notice that it left the JWKS.
    thumbprint: Arc<str>,
    /// Its `exp`.
    expires: SystemTime,
}

/// Verifies JWTs with the current JWKS. Clone it freely.
#[derive(Clone)]
pub struct JwtVerifier {
    /// The current key set (replaced on SIGHUP or a refresh).
    keys: watch::Receiver<Arc<KeySet>>,
    /// The validations, one per algorithm (the issuer, audience and leeway in each).
    validations: Arc<[(Algorithm, Validation); 3]>,
    /// The agent claim's name.
    agent_claim: Arc<str>,
    /// A JWKS fetched from a URL: told when a token names an unknown `kid` (the provider may
    /// have rotated its keys), so that the set is fetched again soon.
    unknown_kid: Option<Arc<Notify>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.borrow().len())
            .finish()
    }
}

impl JwtVerifier {
    /// Loads the JWKS of `--jwt-jwks` (a file, or an `https://` URL) and keeps it current.
    /// Call it inside a tokio runtime.
    pub async fn start(source: &str, settings: &JwtSettings) -> Result<Self, String> {
        let (keys, unknown_kid) = if source.starts_with("https://") || source.starts_with("http://")
        {
            let (keys, unknown_kid) = super::jwks_fetch::watch_url(source).await?;
            (keys, Some(unknown_kid))
        } else {
            (
                super::reload::watch_file::<KeySet>(Path::new(source))?,
                None,
            )
        };
        Ok(Self::new(keys, settings, unknown_kid))
    }

    /// A verifier over `keys`.
    pub fn new(
        keys: watch::Receiver<Arc<KeySet>>,
        settings: &JwtSettings,
        unknown_kid: Option<Arc<Notify>>,
    ) -> Self {
        let validation = |algorithm| {
            let mut v = Validation::new(algorithm);
            v.leeway = LEEWAY.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            v.set_issuer(&[&settings.issuer]);
            v.set_audience(&[&settings.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            (algorithm, v)
        };
        Self {
            keys,
            validations: Arc::new(ALGORITHMS.map(validation)),
            agent_claim: settings.agent_claim.as_str().into(),
            unknown_kid,
        }
    }

    /// Verifies `token`; the agent its claim names, or why not.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtRefusal> {
        // `alg: none` and names jsonwebtoken does not know fail here, as a malformed header.
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRefusal::Malformed)?;
        let validation = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .map(|(_, v)| v)
            .ok_or(JwtRefusal::Algorithm)?;
        let keys = Arc::clone(&self.keys.borrow());
        let key = keys
            .key_for(header.kid.as_deref(), header.alg)
            .inspect_err(|refusal| {
                if *refusal == JwtRefusal::UnknownKey {
                    if let Some(unknown_kid) = &self.unknown_kid {
                        unknown_kid.notify_one();
                    }
                }
            })?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| refusal_of(e.kind()))?
            .claims;
        let agent_id = claims
            .get(&*self.agent_claim)
            .and_then(Value::as_str)
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_AGENT_ID
                    && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or(JwtRefusal::AgentClaim)?
            .to_owned();
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(JwtRefusal::Claims)?;
        Ok(Verified {
            agent_id,
            thumbprint: key.thumbprint.clone(),
            expires: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }

    /// Resolves once `verified` is no longer accepted: its key left the JWKS, or its `exp`
    /// (plus [`LEEWAY`]) passed.
    pub fn revocation(&self, verified: &Verified) -> Revocation {
        let keys = self.keys.clone();
        let thumbprint = verified.thumbprint.clone();
        let expires = verified.expires + LEEWAY;
        Revocation::new(move || {
            let mut keys = keys.clone();
            let thumbprint = thumbprint.clone();
            Box::pin(async move {
                let left = expires
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let removed = async {
                    if keys
                        .wait_for(|set| !set.contains(&thumbprint))
                        .await
                        .is_err()
                    {
                        // The JWKS is not watched any more (shutdown): only `exp` remains.
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = removed => {
                        "the key that signed the JWT of this stream left the JWKS; watch again \
                         with a valid token"
                    }
                    () = tokio::time::sleep(left) => {
                        "the JWT of this stream expired; watch again with a fresh token"
                    }
                }
            })
        })
    }

    /// How many keys the JWKS holds now.
    pub fn keys(&self) -> usize {
        self.keys.borrow().len()
    }
}

/// What a failed `decode` means for the client.
fn refusal_of(kind: &jsonwebtoken::errors::ErrorKind) -> JwtRefusal {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => JwtRefusal::Signature,
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => JwtRefusal::Issuer,
        ErrorKind::InvalidAudience => JwtRefusal::Audience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => JwtRefusal::Claims,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtRefusal::Algorithm,
        _ => JwtRefusal::Malformed,
    }
}

/// Whether a bearer token has a JWS's compact form (three base64url parts): a static token of
/// `--auth-tokens` never does.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// A P-256 key: its encoding key and its public JWK with `kid`.
    fn key(kid: &str) -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        (encoding, serde_json::to_value(jwk).unwrap())
    }

    fn set(keys: &[&Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            issuer: "https://idp".into(),
            audience: "calldesk".into(),
            agent_claim: "sub".into(),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(encoding: &EncodingKey, kid: &str, exp: u64) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims =
            json!({ "iss": "https://idp", "aud": "calldesk", "sub": "agent-7", "exp": exp });
        jsonwebtoken::encode(&header, &claims, encoding).unwrap()
    }

    #[test]
    fn unusable_entries_are_skipped_and_a_kid_twice_is_an_error() {
        let (_, ec) = key("ec");
        let hmac = json!({ "kty": "oct", "kid": "h", "k": "c2VjcmV0" });
        let mut encryption = ec.clone();
        encryption["use"] = json!("enc");
        encryption["kid"] = json!("enc");
        let mut other_alg = ec.clone();
        other_alg["alg"] = json!("ES384");
        other_alg["kid"] = json!("es384");
        let short_rsa = json!({ "kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB" });
        let unknown = json!({ "kty": "XYZ", "kid": "x" });
        let keys = KeySet::parse(
            "t",
            &set(&[&ec, &hmac, &encryption, &other_alg, &short_rsa, &unknown]),
        )
        .unwrap();
        assert_eq!((keys.len(), keys.skipped()), (1, 5));

        let err = KeySet::parse("jwks.json", &set(&[&ec, &ec])).unwrap_err();
        assert!(
            err.contains("jwks.json") && err.contains("same kid"),
            "{err}"
        );
        assert!(KeySet::parse("t", b"{\"keys\": 1}").is_err());
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(KeySet::parse("t", &huge)
            .unwrap_err()
            .contains("larger than"));
    }

    #[test]
    fn a_token_without_kid_needs_a_single_key() {
        let (encoding, jwk) = key("only");
        let (_, other) = key("other");
        let claims =
            json!({ "iss": "https://idp", "aud": "calldesk", "sub": "a", "exp": now() + 60 });
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &encoding).unwrap();
        let one = watch::channel(Arc::new(KeySet::parse("t", &set(&[&jwk])).unwrap())).1;
        assert!(JwtVerifier::new(one, &settings(), None)
            .verify(&token)
            .is_ok());
        let two = watch::channel(Arc::new(KeySet::parse("t", &set(&[&jwk, &other])).unwrap())).1;
        assert_eq!(
            JwtVerifier::new(two, &settings(), None)
                .verify(&token)
                .unwrap_err(),
            JwtRefusal::NoKeyId
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_verified_token_is_revoked_when_its_key_leaves_or_at_its_exp() {
        let (encoding, jwk) = key("k1");
        let (_, next) = key("k2");
        let (keys, current) = watch::channel(Arc::new(KeySet::parse("t", &set(&[&jwk])).unwrap()));
        let verifier = JwtVerifier::new(current, &settings(), None);

        // Its key leaves the set: revoked at once, whatever its exp.
        let verified = verifier
            .verify(&sign(&encoding, "k1", now() + 3600))
            .unwrap();
        let revoked = verifier.revocation(&verified).revoked();
        tokio::pin!(revoked);
        assert!(futures_poll(&mut revoked).is_none(), "not before");
        keys.send_replace(Arc::new(KeySet::parse("t", &set(&[&jwk, &next])).unwrap()));
        assert!(
            futures_poll(&mut revoked).is_none(),
            "a key added revokes nothing"
        );
        keys.send_replace(Arc::new(KeySet::parse("t", &set(&[&next])).unwrap()));
        assert!(revoked.await.contains("left the JWKS"));

        // Its exp passes (plus the leeway): revoked then, not before.
        keys.send_replace(Arc::new(KeySet::parse("t", &set(&[&jwk])).unwrap()));
        let verified = verifier.verify(&sign(&encoding, "k1", now() + 5)).unwrap();
        let started = tokio::time::Instant::now();
        let why = verifier.revocation(&verified).revoked().await;
        assert!(why.contains("expired"), "{why}");
        let waited = started.elapsed();
        // exp is in whole seconds of the wall clock, which goes on while the test runs: 5 s
        // from a second already begun leaves between 4 s (less the ms spent since) and 5 s.
        assert!(waited >= Duration::from_secs(3) + LEEWAY, "{waited:?}");
        assert!(waited <= Duration::from_secs(6) + LEEWAY, "{waited:?}");
    }

    /// Polls `future` once.
    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(future).poll(&mut cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn only_the_compact_form_looks_like_a_jwt() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("a-b_c.d.")); // alg none's empty signature: refused later
        assert!(!looks_like_jwt("3f9c0e5d"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b+/.c"));
    }
}
