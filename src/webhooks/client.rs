//! The HTTP client that POSTs callbacks: hyper-util's pooled client (HTTP/1.1, or HTTP/2 when
//! the receiver offers it over TLS) over rustls, verified against the system's roots.
//!
//! hyper follows no redirect: a 3xx is a failed attempt like any other answer that is not
//! 2xx. Each attempt has one deadline for connecting, sending and reading the answer; at most
//! [`MAX_ANSWER_BYTES`] of the answer's body are read (and dropped), so that a receiver cannot
//! make calldesk hold more. Connections go only where [`ssrf`] allows.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as Pooled},
    rt::TokioExecutor,
};

use super::ssrf;

/// Of a receiver's answer, the body bytes read at most before the connection is dropped.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Idle connections kept per receiver.
const MAX_IDLE_PER_HOST: usize = 32;
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Connector = hyper_rustls::HttpsConnector<ssrf::Guarded<HttpConnector<ssrf::Resolver>>>;

/// The client, shared by every subscription (its pool is per receiver).
#[derive(Clone)]
pub struct Client {
    http: Pooled<Connector, Full<Bytes>>,
    /// Each attempt's deadline: connect, send, answer.
    timeout: Duration,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Anything else, in words for the log (never the URL's path or query).
    Failed(String),
}

impl Client {
    /// A client whose connections go only where `allow_private` allows, with `timeout` per
    /// attempt. Without any system root certificate (no ca-certificates) https attempts fail,
    /// saying so; plain http still works.
    pub fn new(allow_private: bool, timeout: Duration) -> Result<Self, String> {
        let mut resolving = HttpConnector::new_with_resolver(ssrf::Resolver { allow_private });
        resolving.enforce_http(false);
        resolving.set_connect_timeout(Some(timeout));
        resolving.set_nodelay(true);
        let guarded = ssrf::Guarded {
            inner: resolving,
            allow_private,
        };
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder,
            Err(e) => {
                tracing::error!(
                    "webhooks: no system root certificates ({e}): https callbacks will fail \
                     until they are installed (Debian: apt-get install ca-certificates)"
                );
                let config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("webhooks: TLS: {e}"))?
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(guarded);
        let http = Pooled::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .build(connector);
        Ok(Self { http, timeout })
    }

    /// POSTs `body` (JSON) to `url` with `headers`, within the deadline.
    pub async fn post(
        &self,
        url: &http::Uri,
        headers: [(&'static str, String); 3],
        body: Bytes,
    ) -> Attempt {
        let mut request = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("calldesk/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(e) => return Attempt::Failed(format!("cannot make the request: {e}")),
        };
        let attempt = async {
            let response = self.http.request(request).await.map_err(describe)?;
            let status = response.status();
            // Read (and drop) a bounded part of the answer, so that a small one leaves the
            // connection reusable and a large one costs nothing more.
            let mut body = response.into_body();
            let mut read = 0;
            while read <= MAX_ANSWER_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    Some(Err(_)) | None => break,
                }
            }
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
            Ok(Ok(status)) => Attempt::Failed(format!("answered {status}")),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Failed(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// A client error in words, with its causes (hyper's own message is only "client error").
fn describe(e: hyper_util::client::legacy::Error) -> String {
    let mut words = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        words.push_str(": ");
        words.push_str(&cause.to_string());
        source = cause.source();
    }
    words
}
