//! Sign-in with an identity provider (`--jwt-jwks`): JWTs signed with keys the tests generate
//! (RSA by `openssl`, P-256 and Ed25519 by rcgen), in a JWKS file or served over HTTP. A valid
//! JWT names its agent by its claim; every way a JWT can be wrong is UNAUTHENTICATED with its
//! reason; static tokens still work beside JWTs; SIGHUP re-reads the key set, and a token whose
//! key left it stops working, its open watch streams too.

mod support;

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use calldesk::proto::{
    interaction_service_client::InteractionServiceClient, ListInteractionsRequest,
    WatchInteractionsRequest,
};
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    in_process::TestServer,
    process::{run_to_exit, send_signal, serve_args, serve_args_on, ServerProcess, BIN},
    *,
};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, service::Interceptor,
    transport::Channel, Code, Request, Status,
};

const ISSUER: &str = "https://idp.example.com/realms/contact-center";
const AUDIENCE: &str = "calldesk";
/// How long a SIGHUP reload may take to show.
const RELOAD_WAIT: Duration = Duration::from_secs(5);
const CALL_WAIT: Duration = Duration::from_secs(10);

/// A signing key the test made, and its public half as a JWK.
struct Key {
    algorithm: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    /// A P-256 key (ES256).
    fn es256(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
        Key::new(
            Algorithm::ES256,
            kid,
            EncodingKey::from_ec_der(&pair.serialize_der()),
        )
    }

    /// An Ed25519 key (EdDSA), made by `openssl` (ring's PKCS#8 v2 is not what the RustCrypto
    /// signer reads).
    fn eddsa(kid: &str) -> Key {
        let der = openssl(&[&["genpkey", "-algorithm", "ed25519", "-outform", "DER"]]);
        Key::new(Algorithm::EdDSA, kid, EncodingKey::from_ed_der(&der))
    }

    /// A 2048-bit RSA key (RS256), made by `openssl` (ring cannot make RSA keys), as PKCS#1.
    fn rs256(kid: &str) -> Key {
        let der = openssl(&[
            &["genrsa", "2048"],
            &["rsa", "-outform", "DER", "-traditional"],
        ]);
        Key::new(Algorithm::RS256, kid, EncodingKey::from_rsa_der(&der))
    }

    fn new(algorithm: Algorithm, kid: &str, encoding: EncodingKey) -> Key {
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).expect("the public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Key {
            algorithm,
            kid: kid.to_owned(),
            encoding,
            jwk: serde_json::to_value(jwk).expect("JWK as JSON"),
        }
    }

    /// A JWT with `claims`, signed by this key, its `kid` in the header.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// A valid JWT for `agent` (`sub`), valid for an hour.
    fn token(&self, agent: &str) -> String {
        self.sign(&claims(agent))
    }
}

/// The output of `openssl` commands, each reading the one before's output.
fn openssl(commands: &[&[&str]]) -> Vec<u8> {
    use std::io::Write;
    let mut input = Vec::new();
    for args in commands {
        let mut child = std::process::Command::new("openssl")
            .args(*args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl (apt-get install openssl)");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        input = out.stdout;
    }
    input
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The claims of a valid JWT for `agent`.
fn claims(agent: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": agent, "iat": now(), "exp": now() + 3600 })
}

/// `claims(agent)` with `changes` merged in (a `null` removes a claim).
fn claims_with(agent: &str, changes: Value) -> Value {
    let mut claims = claims(agent);
    for (name, value) in changes.as_object().expect("an object") {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS of `keys`.
fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    std::fs::write(path, jwks(keys)).expect("write the JWKS");
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type JwtClient = InteractionServiceClient<InterceptedService<Channel, Bearer>>;

fn bearer(addr: impl std::fmt::Display, token: &str) -> JwtClient {
    let value = format!("Bearer {token}").parse().expect("ascii token");
    InteractionServiceClient::with_interceptor(endpoint(addr).connect_lazy(), Bearer(value))
}

/// ListInteractions with `token`: the agents of the interactions it sees, or the refusal.
async fn list_as(addr: impl std::fmt::Display, token: &str) -> Result<Vec<String>, Status> {
    let mut client = bearer(addr, token);
    tokio::time::timeout(
        CALL_WAIT,
        client.list_interactions(ListInteractionsRequest {
            page_size: 100,
            ..Default::default()
        }),
    )
    .await
    .expect("ListInteractions answers")
    .map(|r| {
        r.into_inner()
            .interactions
            .into_iter()
            .map(|i| i.agent_id)
            .collect()
    })
}

/// The refusal of `token`: UNAUTHENTICATED, with its message.
async fn refused(addr: impl std::fmt::Display, token: &str, what: &str) -> String {
    match list_as(addr, token).await {
        Ok(_) => panic!("{what}: admitted"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
            status.message().to_owned()
        }
    }
}

/// A server reading the JWKS at `jwks` (a file or URL), with `change` on top.
async fn jwt_server(
    jwks: &str,
    change: impl FnOnce(&mut calldesk::server::config::Config),
) -> TestServer {
    let jwks = jwks.to_owned();
    TestServer::start_with(|c| {
        c.jwt_jwks = Some(jwks);
        c.jwt_issuer = Some(ISSUER.to_owned());
        c.jwt_audience = Some(AUDIENCE.to_owned());
        change(c);
    })
    .await
}

#[tokio::test]
async fn a_jwt_of_each_algorithm_names_its_agent_and_calls_as_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rsa, ec, ed) = (Key::rs256("rsa-1"), Key::es256("ec-1"), Key::eddsa("ed-1"));
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&rsa, &ec, &ed]);
    let server = jwt_server(path.to_str().unwrap(), |_| {}).await;
    let addr = server.addr();

    for (key, agent) in [(&rsa, "agent-rsa"), (&ec, "agent-ec"), (&ed, "agent-ed")] {
        let token = key.token(agent);
        let mut client = bearer(addr, &token);
        client
            .start_call(start_req(NUM_OK))
            .await
            .unwrap_or_else(|s| panic!("StartCall with {:?}: {s:?}", key.algorithm));
        assert_eq!(
            list_as(addr, &token).await.expect("ListInteractions"),
            [agent],
            "{:?}: the call is the token's agent's, and only it is seen",
            key.algorithm
        );
    }
    // Within the leeway (30 s), a token just past `exp`, or just before `nbf`, still works.
    let late = ec.sign(&claims_with("agent-ec", json!({ "exp": now() - 10 })));
    assert!(list_as(addr, &late).await.is_ok());
    let early = ec.sign(&claims_with("agent-ec", json!({ "nbf": now() + 10 })));
    assert!(list_as(addr, &early).await.is_ok());
    // `aud` may be a list that holds calldesk.
    let listed = ed.sign(&claims_with(
        "agent-ed",
        json!({ "aud": ["crm", AUDIENCE] }),
    ));
    assert!(list_as(addr, &listed).await.is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn every_wrong_jwt_is_unauthenticated_with_its_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (rsa, ec) = (Key::rs256("rsa-1"), Key::es256("ec-1"));
    let stranger = Key::es256("ec-1"); // the same kid, another key: not the provider's
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&rsa, &ec]);
    let server = jwt_server(path.to_str().unwrap(), |_| {}).await;
    let addr = server.addr();
    let agent = "agent-7";

    let header = |value: Value| b64(value.to_string().as_bytes());
    let body = b64(claims(agent).to_string().as_bytes());
    let valid = ec.token(agent);
    let signature = valid.rsplit('.').next().unwrap();
    // The RSA key's public modulus as an HMAC secret: the classic algorithm confusion.
    let modulus = rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec();
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &hs256,
        &claims(agent),
        &EncodingKey::from_secret(&modulus).unwrap(),
    )
    .unwrap();
    let mut wrong_alg = Header::new(Algorithm::RS256);
    wrong_alg.kid = Some("ec-1".into());

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!("{}.{body}.", header(json!({"alg": "none", "typ": "JWT"}))),
            "malformed JWT",
        ),
        (
            "HS256 with the public key as its secret",
            confused,
            "JWT algorithm refused",
        ),
        (
            "unknown kid",
            Key::es256("other").token(agent),
            "unknown kid",
        ),
        (
            "a key of the same kid that is not the provider's",
            stranger.token(agent),
            "signature does not verify",
        ),
        (
            "the payload changed under the signature",
            format!(
                "{}.{}.{signature}",
                valid.split('.').next().unwrap(),
                b64(claims("agent-8").to_string().as_bytes())
            ),
            "signature does not verify",
        ),
        (
            "expired past the leeway",
            ec.sign(&claims_with(agent, json!({ "exp": now() - 120 }))),
            "JWT expired",
        ),
        (
            "not valid for another two minutes",
            ec.sign(&claims_with(agent, json!({ "nbf": now() + 120 }))),
            "not valid yet",
        ),
        (
            "another issuer",
            ec.sign(&claims_with(
                agent,
                json!({ "iss": "https://evil.example.com" }),
            )),
            "issuer",
        ),
        (
            "another audience",
            ec.sign(&claims_with(agent, json!({ "aud": "crm" }))),
            "audience",
        ),
        (
            "no exp",
            ec.sign(&claims_with(agent, json!({ "exp": null }))),
            "claims incomplete",
        ),
        (
            "exp as a string",
            ec.sign(&claims_with(agent, json!({ "exp": "99999999999" }))),
            "claims incomplete",
        ),
        (
            "nbf as a string",
            ec.sign(&claims_with(agent, json!({ "nbf": "99999999999" }))),
            "claims incomplete",
        ),
        (
            "no iss",
            ec.sign(&claims_with(agent, json!({ "iss": null }))),
            "claims incomplete",
        ),
        (
            "no sub",
            ec.sign(&claims_with(agent, json!({ "sub": null }))),
            "agent claim",
        ),
        (
            "sub not a string",
            ec.sign(&claims_with(agent, json!({ "sub": 7 }))),
            "agent claim",
        ),
        (
            "sub with a space",
            ec.sign(&claims_with(agent, json!({ "sub": "agent 7" }))),
            "agent claim",
        ),
        (
            "sub of 129 characters",
            ec.sign(&claims_with(agent, json!({ "sub": "a".repeat(129) }))),
            "agent claim",
        ),
        (
            "an EC key's kid with RS256",
            jsonwebtoken::encode(&wrong_alg, &claims(agent), &rsa.encoding).unwrap(),
            "JWT algorithm refused",
        ),
        (
            "a key in the header itself",
            {
                let own = Key::es256("mine");
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some("mine".into());
                h.jwk = serde_json::from_value(own.jwk.clone()).ok();
                jsonwebtoken::encode(&h, &claims(agent), &own.encoding).unwrap()
            },
            "unknown kid",
        ),
        ("not a JWT at all", "a.b.c".to_owned(), "malformed JWT"),
    ];
    for (what, token, reason) in cases {
        let message = refused(addr, &token, what).await;
        assert!(
            message.contains(reason),
            "{what}: {message:?} should say {reason:?}"
        );
    }
    assert_eq!(
        refused(addr, "opaque-token", "a token that is not a JWT").await,
        "unknown bearer token"
    );
    // And nothing was created by any of them.
    assert_eq!(
        list_as(addr, &valid).await.expect("the valid one"),
        Vec::<String>::new()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn static_tokens_and_jwts_admit_side_by_side_and_the_agent_claim_is_configurable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = Key::eddsa("ed-1");
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&key]);
    let static_token = "a-static-token-of-agent-9";
    let tokens = dir.path().join("tokens");
    let digest: String = sha256_hex(static_token);
    std::fs::write(&tokens, format!("agent-9 {digest}\n")).unwrap();
    let server = jwt_server(path.to_str().unwrap(), |c| {
        c.auth_tokens = Some(tokens);
        c.jwt_agent_claim = "preferred_username".into();
    })
    .await;
    let addr = server.addr();

    let mut by_static = bearer(addr, static_token);
    by_static
        .start_call(start_req(NUM_OK))
        .await
        .expect("a static token admits");
    let jwt = key.sign(&claims_with(
        "ignored-sub",
        json!({ "preferred_username": "jane.doe" }),
    ));
    let mut by_jwt = bearer(addr, &jwt);
    by_jwt
        .start_call(start_req(NUM_OK))
        .await
        .expect("a JWT admits");
    assert_eq!(list_as(addr, static_token).await.unwrap(), ["agent-9"]);
    assert_eq!(list_as(addr, &jwt).await.unwrap(), ["jane.doe"]);
    let no_claim = key.token("agent-7");
    assert!(refused(addr, &no_claim, "no preferred_username")
        .await
        .contains("agent claim"));
    assert_eq!(
        refused(addr, "another-static-token", "unknown").await,
        "unknown bearer token"
    );
    server.shutdown().await;
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads `stream` until it ends with an error, at most `limit`.
async fn ends_with_error<T>(stream: &mut tonic::Streaming<T>, limit: Duration) -> Status {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("still open {limit:?} later"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("ended with OK"),
            Ok(Err(status)) => return status,
        }
    }
}

/// Retries `probe` until it returns true, at most `RELOAD_WAIT`.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    loop {
        if probe().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {RELOAD_WAIT:?}"
        );
        // A pause between polls, not a synchronisation: the loop ends on the condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn jwt_flags(jwks: &str) -> Vec<String> {
    [
        "--jwt-jwks",
        jwks,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test]
async fn sighup_re_reads_the_jwks_and_a_removed_key_ends_its_open_streams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = (Key::es256("2024"), Key::es256("2025"));
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&old]);
    let flags = jwt_flags(path.to_str().unwrap());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // A public address with --jwt-jwks alone (no --auth-tokens, no --insecure) is allowed.
    let args = serve_args_on("0.0.0.0:0", &dir.path().join("data"), &flags);
    let mut server = ServerProcess::start_command(BIN.into(), args).await;
    let port = server.addr().rsplit(':').next().expect("a port").to_owned();
    let addr = format!("127.0.0.1:{port}");
    let (old_token, new_token) = (old.token("agent-7"), new.token("agent-7"));
    assert!(list_as(&addr, &old_token).await.is_ok());
    assert!(refused(&addr, &new_token, "a key not published yet")
        .await
        .contains("unknown kid"));
    let mut watching = bearer(&addr, &old_token)
        .watch_interactions(WatchInteractionsRequest {})
        .await
        .expect("WatchInteractions")
        .into_inner();

    // The provider rotates: the new key, and the old one is gone.
    write_jwks(&path, &[&new]);
    send_signal(server.pid(), "-HUP");
    let status = ends_with_error(&mut watching, RELOAD_WAIT).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("left the JWKS"), "{status:?}");
    assert!(refused(&addr, &old_token, "the old key")
        .await
        .contains("unknown kid"));
    assert!(list_as(&addr, &new_token).await.is_ok());

    // A JWKS that does not parse keeps the keys there are.
    std::fs::write(&path, "{ not json").unwrap();
    send_signal(server.pid(), "-HUP");
    let stderr = || server.stderr_text();
    eventually("the bad JWKS is logged", || {
        let seen = stderr().contains("JWT keys not reloaded on SIGHUP");
        async move { seen }
    })
    .await;
    assert!(list_as(&addr, &new_token).await.is_ok());
    let status = server.sigterm().await;
    assert!(status.success(), "{status:?}");
}

/// A JWKS served over plain HTTP on loopback (a sidecar's case), whose body the test swaps.
async fn serve_jwks(body: Arc<Mutex<String>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_jwks_url_is_fetched_at_start_and_again_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = (Key::eddsa("k1"), Key::eddsa("k2"));
    let body = Arc::new(Mutex::new(jwks(&[&old])));
    let jwks_addr = serve_jwks(body.clone()).await;
    let url = format!("http://{jwks_addr}/realms/contact-center/protocol/openid-connect/certs");
    let flags = jwt_flags(&url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start(&dir.path().join("data"), &flags).await;
    let addr = server.addr().to_owned();
    assert!(list_as(&addr, &old.token("agent-7")).await.is_ok());

    *body.lock().unwrap() = jwks(&[&new]);
    send_signal(server.pid(), "-HUP");
    let new_token = new.token("agent-7");
    eventually("the new key after SIGHUP", || {
        let addr = addr.clone();
        let token = new_token.clone();
        async move { list_as(&addr, &token).await.is_ok() }
    })
    .await;
    assert!(refused(&addr, &old.token("agent-7"), "the old key")
        .await
        .contains("unknown kid"));
    let status = server.sigterm().await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn jwt_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let run = |extra: &[&str]| run_to_exit(serve_args(&data, extra), CALL_WAIT);
    // Without an issuer and an audience: refused by the flags' parser.
    let finished = run(&["--jwt-jwks", "/nonexistent"]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--jwt-issuer"),
        "{}",
        finished.stderr
    );
    // A JWKS file that cannot be read stops the start, naming it.
    let jwks = dir.path().join("jwks.json");
    let flags = jwt_flags(jwks.to_str().unwrap());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let finished = run(&flags);
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains(jwks.to_str().unwrap()),
        "{}",
        finished.stderr
    );
    // A JWKS URL over plain http to another host: refused.
    let flags = jwt_flags("http://idp.example.com/certs");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let finished = run(&flags);
    assert!(!finished.status.success());
    assert!(
        finished
            .stderr
            .contains("plain http only to a loopback host"),
        "{}",
        finished.stderr
    );
}
