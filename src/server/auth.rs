//! Authentication: `--auth-tokens FILE` names agents by bearer token; so does `--jwt-jwks`
//! (`jwt.rs`), by the JWTs an identity provider signs. With both, either may admit a request.
//!
//! The file holds one `AGENT_ID SHA256_HEX` line per token (the SHA-256 of the token's UTF-8
//! text, as `calldesk token AGENT_ID` prints it); blank lines and `#` comments are ignored. An
//! agent may have several tokens (for rotation); one token names one agent.
//!
//! Tokens are never kept, compared or logged in the clear: a request's token is hashed and the
//! hash is compared with every known hash in constant time. The file is re-read on SIGHUP; a
//! file that does not parse keeps the previous tokens.

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::sync::watch;
use tower::{Layer, Service};

use super::jwt::{looks_like_jwt, JwtRefusal, JwtVerifier};
use super::reload::{watch_file, Reloadable};
use crate::api::agent::{Agent, Forwarded, Revocation};

/// The longest agent id a token file may name (as `x-agent-id` allows in development mode).
const MAX_AGENT_ID: usize = 128;

/// Request paths that stay open without a token: health probes and reflection tooling.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// One line of the token file.
struct Entry {
    agent_id: String,
    hash: [u8; 32],
}

/// The tokens of one reading of the file.
struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    /// The agent `token` names, comparing its hash with every entry in constant time (no
    /// early exit: the time does not depend on which entry, if any, matches).
    fn agent_for(&self, token: &str) -> Option<&str> {
        self.agent_for_digest(&Sha256::digest(token.as_bytes()))
    }

    /// The agent of the token whose SHA-256 is `digest`, compared in constant time.
    fn agent_for_digest(&self, digest: &[u8]) -> Option<&str> {
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let equal = entry.hash[..].ct_eq(digest);
            index = u64::conditional_select(&index, &(i as u64), equal & !found);
            found |= equal;
        }
        if bool::from(found) {
            self.entries
                .get(usize::try_from(index).ok()?)
                .map(|e| e.agent_id.as_str())
        } else {
            None
        }
    }
}

/// Parses the text of a token file; errors name `path` and the line, never its content.
fn parse(path: &Path, text: &str) -> Result<Tokens, String> {
    let mut entries: Vec<(usize, Entry)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let number = n + 1;
        let bad = |why: &str| format!("auth token file {} line {number}: {why}", path.display());
        let content = line.split_once('#').map_or(line, |(before, _)| before);
        let fields: Vec<&str> = content.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [agent_id, hash] = fields[..] else {
            return Err(bad(&format!(
                "expected `AGENT_ID SHA256_HEX`, found {} field(s)",
                fields.len()
            )));
        };
        if agent_id.len() > MAX_AGENT_ID || !agent_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(&format!(
                "the agent id must be 1 to {MAX_AGENT_ID} printable ASCII characters"
            )));
        }
        let hash = decode_hash(hash).ok_or_else(|| {
            bad("the hash must be 64 hex digits (the SHA-256 of the token, as `calldesk token` prints it)")
        })?;
        if let Some((first, _)) = entries.iter().find(|(_, e)| e.hash == hash) {
            return Err(bad(&format!("the same token hash as line {first}")));
        }
        entries.push((
            number,
            Entry {
                agent_id: agent_id.to_owned(),
                hash,
            },
        ));
    }
    Ok(Tokens {
        entries: entries.into_iter().map(|(_, e)| e).collect(),
    })
}

/// 64 hex digits (either case) as 32 bytes.
fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

impl Reloadable for Tokens {
    const WHAT: &'static str = "auth tokens";

    fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth token file {}: {e}", path.display()))?;
        parse(path, &text)
    }

    fn entries(&self) -> usize {
        self.entries.len()
    }

    fn warning(&self) -> Option<&'static str> {
        self.entries
            .is_empty()
            .then_some("the file holds no tokens, every calldesk.v1 request will be refused")
    }
}

/// The tokens the server accepts, re-read from their file on SIGHUP.
#[derive(Clone)]
pub struct TokenSource {
    /// The latest good reading of the file; borrowed only to clone the `Arc`.
    current: watch::Receiver<Arc<Tokens>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("tokens", &self.len())
            .finish()
    }
}

impl TokenSource {
    /// Loads the token file (failing start-up with a message naming the path if it is
    /// unreadable or malformed) and re-reads it on every SIGHUP: a bad file then keeps the
    /// previous tokens and logs why ([`super::reload`]).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        Ok(Self {
            current: watch_file(path)?,
        })
    }

    /// How many tokens are accepted now.
    pub fn len(&self) -> usize {
        self.current.borrow().entries.len()
    }

    /// Whether no token is accepted now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The agent `token` names, if it is a known token (compared by hash in constant time).
    pub fn agent_for(&self, token: &str) -> Option<String> {
        let tokens = Arc::clone(&self.current.borrow());
        tokens.agent_for(token).map(str::to_owned)
    }

    /// Resolves once `token` no longer names `agent_id` (it was removed from the file, or given
    /// to another agent, and the file reloaded). Only the token's hash is kept.
    pub fn revocation(&self, token: &str, agent_id: &str) -> Revocation {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let agent_id: Arc<str> = agent_id.into();
        let current = self.current.clone();
        Revocation::new(move || {
            let mut current = current.clone();
            let agent_id = agent_id.clone();
            Box::pin(async move {
                let revoked = current
                    .wait_for(|tokens| tokens.agent_for_digest(&digest) != Some(&*agent_id))
                    .await
                    .is_ok();
                if !revoked {
                    // The file is not watched any more (shutdown): nothing revokes it now.
                    std::future::pending::<()>().await;
                }
                "the bearer token of this stream was revoked; watch again with a valid token"
            })
        })
    }
}

/// A tower layer: with a token source or a JWT verifier (or both), requests to calldesk.v1 must
/// carry `authorization: Bearer <token>` of a known token or a valid JWT (else
/// UNAUTHENTICATED), and the agent it names is put in the request's extensions as
/// [`crate::api::agent::Agent`]. Health and reflection pass untouched. With neither,
/// everything passes (development mode).
///
/// Every path other than health and reflection needs a token (not only `/calldesk.v1.`), so
/// that a service added later, or a path spelt in a way the router still accepts, is never
/// open by accident.
#[derive(Clone, Default, Debug)]
pub struct AuthLayer {
    /// `--auth-tokens`: static tokens by hash.
    tokens: Option<TokenSource>,
    /// `--jwt-jwks`: JWTs of an identity provider.
    jwt: Option<JwtVerifier>,
    /// PostgreSQL: the secret replicas forward requests with (`--peer-token-file`).
    peers: Option<PeerSecret>,
}

impl AuthLayer {
    pub fn new(
        tokens: Option<TokenSource>,
        jwt: Option<JwtVerifier>,
        peers: Option<PeerSecret>,
    ) -> Self {
        Self { tokens, jwt, peers }
    }
}

/// The metadata a forwarded request carries the peer secret in.
pub const PEER_HEADER: &str = "x-calldesk-peer";

/// The secret replicas share (`--peer-token-file`): a request that carries it in
/// [`PEER_HEADER`] comes from another replica, acting for the agent its `x-agent-id` names.
/// Kept as its SHA-256 only, compared in constant time, never logged.
#[derive(Clone)]
pub struct PeerSecret {
    /// The secret as sent (for this replica's own hops).
    value: Arc<http::HeaderValue>,
    digest: [u8; 32],
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(…)")
    }
}

/// Fewer characters than this are too easy to guess for a secret that acts as any agent.
const MIN_PEER_SECRET: usize = 16;

impl PeerSecret {
    /// Reads the first line of `path`; errors name the file, never its content.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --peer-token-file {}: {e}", path.display()))?;
        let secret = text.lines().next().unwrap_or("").trim();
        if secret.len() < MIN_PEER_SECRET || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "--peer-token-file {}: its first line must be a secret of at least \
                 {MIN_PEER_SECRET} printable characters without spaces (e.g. `openssl rand -hex \
                 32`)",
                path.display()
            ));
        }
        let value = http::HeaderValue::from_str(secret)
            .map_err(|_| format!("--peer-token-file {}: not a header value", path.display()))?;
        Ok(Self {
            value: Arc::new(value),
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// The value this replica sends on its own hops.
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::clone(&self.value)
    }

    fn accepts(&self, sent: &[u8]) -> bool {
        bool::from(self.digest[..].ct_eq(&Sha256::digest(sent)))
    }
}

/// A forwarded request's agent: Ok(agent) when it carries the peer secret and a valid
/// `x-agent-id`, Err(why) when it carries something else in [`PEER_HEADER`].
fn authenticate_peer(
    peers: Option<&PeerSecret>,
    headers: &HeaderMap,
) -> Option<Result<String, &'static str>> {
    let sent = headers.get(PEER_HEADER)?;
    let Some(peers) = peers else {
        return Some(Err(
            "this server takes no forwarded requests (it has no --peer-token-file)",
        ));
    };
    if !peers.accepts(sent.as_bytes()) {
        return Some(Err("x-calldesk-peer is not this deployment's peer secret"));
    }
    let agent = headers
        .get("x-agent-id")
        .and_then(|v| v.to_str().ok())
        .filter(|a| {
            !a.is_empty() && a.len() <= MAX_AGENT_ID && a.bytes().all(|b| b.is_ascii_graphic())
        });
    Some(
        agent
            .map(str::to_owned)
            .ok_or("a forwarded request must name its agent in x-agent-id"),
    )
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
            jwt: self.jwt.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    tokens: Option<TokenSource>,
    jwt: Option<JwtVerifier>,
    peers: Option<PeerSecret>,
}

/// Why a request was refused: the reason for the log, and the message for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <token>`.
    Malformed,
    /// A well-formed token that the file does not list (and that is not a JWT, or there is no
    /// `--jwt-jwks`).
    Unknown,
    /// A JWT that `--jwt-jwks` refused.
    Jwt(JwtRefusal),
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "no authorization metadata",
            Refusal::Malformed => "authorization metadata is not `Bearer <token>`",
            Refusal::Unknown => "unknown bearer token",
            Refusal::Jwt(refusal) => refusal.message(),
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "missing bearer token: send `authorization: Bearer <token>`",
            Refusal::Malformed => "malformed authorization metadata: expected `Bearer <token>`",
            Refusal::Unknown => "unknown bearer token",
            Refusal::Jwt(refusal) => refusal.message(),
        }
    }
}

/// The token of `authorization: Bearer <token>` (scheme in any case).
fn bearer_token(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?;
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.bytes().any(|b| b.is_ascii_whitespace())
    {
        return Err(Refusal::Malformed);
    }
    Ok(token)
}

/// The agent the request's token names and what tells when that token is revoked: a token of
/// the file, else a JWT the identity provider signed. A token shaped as a JWT that the file does
/// not list is refused with the JWT's reason.
fn authenticate_revocable(
    tokens: Option<&TokenSource>,
    jwt: Option<&JwtVerifier>,
    headers: &HeaderMap,
) -> Result<(String, Revocation), Refusal> {
    let token = bearer_token(headers)?;
    if let Some(tokens) = tokens {
        if let Some(agent_id) = tokens.agent_for(token) {
            let revocation = tokens.revocation(token, &agent_id);
            return Ok((agent_id, revocation));
        }
    }
    match jwt {
        Some(jwt) if looks_like_jwt(token) => {
            let verified = jwt.verify(token).map_err(Refusal::Jwt)?;
            let revocation = jwt.revocation(&verified);
            Ok((verified.agent_id, revocation))
        }
        _ => Err(Refusal::Unknown),
    }
}

/// Whether `path` stays open without a token.
fn is_open(path: &str) -> bool {
    OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

/// The future of [`AuthService`]: the inner service's, or a refusal ready at once.
pub struct AuthFuture<F, R> {
    state: AuthFutureState<F, R>,
}

enum AuthFutureState<F, R> {
    Inner(Pin<Box<F>>),
    Refused(Option<Response<R>>),
}

// The inner future is pinned in its box and the refusal is moved out, never pinned.
impl<F, R> Unpin for AuthFuture<F, R> {}

impl<F, R, E> Future for AuthFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            AuthFutureState::Inner(inner) => inner.as_mut().poll(cx),
            AuthFutureState::Refused(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, B, R> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match authenticate_peer(self.peers.as_ref(), request.headers()) {
            Some(Ok(agent_id)) => {
                request.extensions_mut().insert(Agent(agent_id));
                request.extensions_mut().insert(Forwarded);
                return AuthFuture {
                    state: AuthFutureState::Inner(Box::pin(self.inner.call(request))),
                };
            }
            Some(Err(why)) => {
                tracing::warn!(
                    method = request.uri().path(),
                    reason = why,
                    "forwarded request refused: UNAUTHENTICATED"
                );
                let response = super::shape::status_response::<R>(
                    tonic::Status::unauthenticated(why),
                    request.headers(),
                );
                return AuthFuture {
                    state: AuthFutureState::Refused(Some(response)),
                };
            }
            None => {}
        }
        if self.tokens.is_some() || self.jwt.is_some() {
            let path = request.uri().path();
            if !is_open(path) {
                match authenticate_revocable(
                    self.tokens.as_ref(),
                    self.jwt.as_ref(),
                    request.headers(),
                ) {
                    Ok((agent_id, revocation)) => {
                        request.extensions_mut().insert(Agent(agent_id));
                        request.extensions_mut().insert(revocation);
                    }
                    Err(refusal) => {
                        tracing::warn!(
                            method = path,
                            reason = refusal.reason(),
                            "request refused: UNAUTHENTICATED"
                        );
                        let response = super::shape::status_response::<R>(
                            tonic::Status::unauthenticated(refusal.message()),
                            request.headers(),
                        );
                        return AuthFuture {
                            state: AuthFutureState::Refused(Some(response)),
                        };
                    }
                }
            }
        }
        AuthFuture {
            state: AuthFutureState::Inner(Box::pin(self.inner.call(request))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_hex(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn parses_lines_comments_and_blank_lines() {
        let text = format!(
            "# agents\n\nalice {}  # laptop\n  bob\t{}\n#carol {}\n",
            hash_hex("ta"),
            hash_hex("tb").to_uppercase(),
            hash_hex("tc"),
        );
        let tokens = parse(Path::new("/t"), &text).unwrap();
        assert_eq!(tokens.entries.len(), 2);
        assert_eq!(tokens.agent_for("ta"), Some("alice"));
        assert_eq!(tokens.agent_for("tb"), Some("bob"));
        assert_eq!(tokens.agent_for("tc"), None);
        assert_eq!(tokens.agent_for(""), None);
    }

    #[test]
    fn malformed_lines_name_the_path_and_line_but_not_the_hash() {
        let good = hash_hex("ta");
        let cases = [
            format!("alice {good}\nbob\n"),
            format!("alice {good}\nbob {good} extra\n"),
            format!("alice {good}\nbob {}\n", &good[..63]),
            format!("alice {good}\nbob {}g\n", &good[..63]),
            format!("alice {good}\nbob {good}\n"),
            format!("# c\n{} {good}\n", "x".repeat(129)),
        ];
        for text in cases {
            let err = parse(Path::new("/etc/calldesk/tokens"), &text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} should not parse"));
            assert!(err.contains("/etc/calldesk/tokens"), "{err}");
            assert!(err.contains("line 2"), "{err}");
            assert!(!err.contains(&good[..16]), "{err}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_malformed_values_are_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(Refusal::Missing));
        for (value, expected) in [
            ("Bearer abc", Ok("abc")),
            ("bearer abc", Ok("abc")),
            ("BEARER   abc ", Ok("abc")),
            ("Basic abc", Err(Refusal::Malformed)),
            ("Bearer", Err(Refusal::Malformed)),
            ("Bearer ", Err(Refusal::Malformed)),
            ("Bearer a b", Err(Refusal::Malformed)),
            ("abc", Err(Refusal::Malformed)),
        ] {
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&headers), expected, "{value:?}");
        }
    }

    #[test]
    fn only_health_and_reflection_are_open() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(is_open(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(is_open(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_open("/calldesk.v1.InteractionService/StartCall"));
        assert!(!is_open("/other.Service/Method"));
    }
}
