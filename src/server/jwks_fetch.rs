//! `--jwt-jwks https://…`: the identity provider's JWKS, fetched at start and kept current.
//!
//! The first fetch must succeed (else the server does not start: it could admit no JWT). After
//! it, the set is fetched again every [`REFRESH`], on SIGHUP, and soon after a token names a
//! `kid` the set does not hold (a provider that rotated its keys), at most once per
//! [`MIN_REFETCH`] however many such tokens arrive. A fetch that fails, or a set that does not
//! parse, keeps the previous keys and is logged; a set that parses replaces them at once, and
//! tokens whose key left it stop working.
//!
//! Plain `http://` only to a loopback host (a sidecar on the pod): over a network, whoever sits
//! on the path could hand out keys and sign in as any agent. HTTPS trusts the system's roots
//! (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured). The response is read up to
//! [`super::jwt::MAX_JWKS_BYTES`], within [`FETCH_TIMEOUT`].

use std::{sync::Arc, time::Duration};

use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::{watch, Notify},
};
use tokio_rustls::rustls;

use super::jwt::{KeySet, MAX_JWKS_BYTES};

/// How often the JWKS is fetched again.
pub const REFRESH: Duration = Duration::from_secs(10 * 60);
/// The least time between two fetches that unknown `kid`s ask for.
const MIN_REFETCH: Duration = Duration::from_secs(60);
/// The most one fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the JWKS is, and how to reach it.
struct Source {
    uri: Uri,
    /// As given, for log lines (it holds no secret: a JWKS is public).
    shown: String,
    /// HTTPS: the TLS client (None for plain http to loopback).
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Fetches the JWKS at `url` once (failing if it cannot), then keeps it current in the
/// background for as long as a receiver lives. The `Notify` is for unknown `kid`s.
pub async fn watch_url(url: &str) -> Result<(watch::Receiver<Arc<KeySet>>, Arc<Notify>), String> {
    let source = Source::new(url)?;
    let keys = source.fetch().await?;
    log_keys(&source.shown, &keys, "fetched");
    let (sender, current) = watch::channel(Arc::new(keys));
    let unknown_kid = Arc::new(Notify::new());
    tokio::spawn(refresh(source, sender, unknown_kid.clone()));
    Ok((current, unknown_kid))
}

fn log_keys(url: &str, keys: &KeySet, how: &str) {
    if keys.is_empty() {
        tracing::warn!(
            url,
            skipped = keys.skipped(),
            "JWT keys {how}: the JWKS holds no RS256, ES256 or EdDSA signing key: every JWT \
             will be refused"
        );
    } else {
        tracing::info!(
            url,
            entries = keys.len(),
            skipped = keys.skipped(),
            "JWT keys {how}"
        );
    }
}

/// Fetches the set again on a timer, on SIGHUP and after unknown `kid`s, until every receiver
/// is gone.
async fn refresh(source: Source, sender: watch::Sender<Arc<KeySet>>, unknown_kid: Arc<Notify>) {
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = tokio::time::Instant::now();
    // When a token named an unknown kid: the fetch it asked for, MIN_REFETCH after the last.
    let mut refetch: Option<tokio::time::Instant> = None;
    loop {
        let hangup = async {
            #[cfg(unix)]
            if let Some(hangups) = hangups.as_mut() {
                hangups.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        let why = tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep_until(last + REFRESH) => "fetched again (every 10 minutes)",
            () = hangup => "fetched again on SIGHUP",
            () = tokio::time::sleep_until(refetch.unwrap_or(last + REFRESH)), if refetch.is_some() => {
                "fetched again for an unknown kid"
            }
            () = unknown_kid.notified(), if refetch.is_none() => {
                // However many tokens name unknown keys, one fetch per MIN_REFETCH.
                refetch = Some(last + MIN_REFETCH);
                continue;
            }
        };
        refetch = None;
        last = tokio::time::Instant::now();
        match source.fetch().await {
            Ok(keys) => {
                log_keys(&source.shown, &keys, why);
                sender.send_replace(Arc::new(keys));
            }
            Err(reason) => {
                tracing::warn!(%reason, "JWT keys not {why}; keeping the previous ones");
            }
        }
    }
}

impl Source {
    fn new(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--jwt-jwks {url}: {why}");
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let tls =
            match uri.scheme_str() {
                Some("https") => Some(tls_connector().map_err(|e| bad(&e))?),
                Some("http") if is_loopback(host) => None,
                Some("http") => return Err(bad(
                    "plain http only to a loopback host: use https, or anyone on the path could \
                     sign in as any agent",
                )),
                _ => return Err(bad("the scheme must be https")),
            };
        Ok(Self {
            uri,
            shown: url.to_owned(),
            tls,
        })
    }

    /// One GET of the JWKS, parsed.
    async fn fetch(&self) -> Result<KeySet, String> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("JWKS {}: no answer within {FETCH_TIMEOUT:?}", self.shown))??;
        KeySet::parse(&self.shown, &body)
    }

    async fn get(&self) -> Result<Vec<u8>, String> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| format!("JWKS {}: {what}: {e}", self.shown);
        let host = self.uri.host().unwrap_or_default();
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        // An IPv6 literal comes bracketed in the URL.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| fail("cannot connect", &e))?;
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("calldesk/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| fail("bad request", &e))?;
        let response = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                    .map_err(|e| fail("bad host name", &e))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| fail("TLS", &e))?;
                send(TokioIo::new(stream), request).await
            }
            None => send(TokioIo::new(tcp), request).await,
        }
        .map_err(|e| fail("HTTP", &e))?;
        if !response.status().is_success() {
            return Err(format!(
                "JWKS {}: the server answered {}",
                self.shown,
                response.status()
            ));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| fail("reading the body", &e))?;
        Ok(body.to_bytes().to_vec())
    }
}

/// One HTTP/1.1 request on `io`.
async fn send<I>(
    io: I,
    request: Request<Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await
}

/// A TLS client that trusts the system's roots.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted root certificates found on this system".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `localhost`, or a loopback IP address.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(Source::new("http://127.0.0.1:8080/jwks.json").is_ok());
        assert!(Source::new("http://[::1]:8080/jwks.json").is_ok());
        assert!(Source::new("http://localhost/jwks.json").is_ok());
        let err = Source::new("http://idp.example.com/jwks.json")
            .err()
            .unwrap();
        assert!(err.contains("plain http only to a loopback host"), "{err}");
        assert!(Source::new("ftp://idp.example.com/jwks.json").is_err());
        assert!(Source::new("https:///jwks.json").is_err());
    }
}
