//! Serving the accepted connections: HTTP/2 (gRPC, gRPC-Web) and HTTP/1.1 (gRPC-Web, the
//! console) on one port, optionally under TLS, until the server stops.
//!
//! calldesk drives hyper-util's auto builder itself instead of tonic's `Server`, because tonic
//! does not expose h2's per-stream send buffer (`max_send_buf_size`, 400 KiB in hyper). h2 lets
//! a stream queue as much as the peer's flow-control window allows, up to that size: with a
//! client that advertised a 2³¹−1 window and never read, every WatchInteraction stream held
//! what it had queued (its whole history, up to 400 KiB) plus its read-ahead, 0.6–1.3 MiB of
//! RSS each (issue 16). [`Settings::max_send_buffer`] (`--max-stream-send-buffer`) is that
//! bound, whatever the window; once a stream has it queued, hyper stops polling the response,
//! so a WatchInteraction stream stops reading the store and a WatchInteractions stream falls
//! behind its feed, which ends it as any slow watcher (docs/api.md §4).
//!
//! No stream is ended for not reading, and no connection for not accepting bytes: nothing
//! grows while they wait, and a connection that accepts no bytes cannot carry the keepalive
//! PING, so hyper closes it 30 s + 10 s after the peer's last request or ping answer. [`Trim`]
//! gives the memory of closed connections back to the system.
//!
//! Each connection's writes go through [`BatchedWrites`]: a write waits one scheduler turn, so
//! that what thousands of stream tasks queue for one event shares a system call.
//!
//! Everything else is what tonic's `Server` did with calldesk's settings: HTTP/1.1 accepted
//! beside HTTP/2 (the header read timeout needs hyper's timer), HTTP/2 keepalive, the stream
//! and header-list caps, the guard against reset floods; tonic's per-request layers
//! ([`tonic::service::RecoverError`], which turns a layer's error into a gRPC status, and
//! [`GrpcTimeout`], the `grpc-timeout` bound on a response's headers); TLS as tonic's
//! `ServerTlsConfig` set it up (rustls with ring, ALPN `h2`, client certificates verified
//! against `--tls-client-ca`, the handshake bounded by `--idle-connection-timeout`, handshakes
//! beside the accept loop). Nothing in calldesk reads tonic's `TcpConnectInfo` request
//! extension, so it is not inserted.
//!
//! Shutdown is tonic's: when `stop` turns true, the listener closes (the accepted-connections
//! stream is dropped), each connection shuts down gracefully (GOAWAY, in-flight streams
//! finish; watch streams end by themselves on the same signal), and [`serve`] returns once all
//! have closed. The connections are tasks of a `JoinSet` that [`serve`]'s future owns: when
//! `RunningServer::shutdown` aborts it after the grace period, they are dropped with it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::rustls;
use tokio_stream::{Stream, StreamExt};
use tower::{util::BoxCloneService, Layer, Service, ServiceExt};

use super::{batched_writes::BatchedWrites, error::ServeError, net::IdleGuard};

/// The service every request goes to: tonic's routes inside calldesk's layers, inside tonic's
/// per-request layers.
pub type HttpService = BoxCloneService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tower::BoxError,
>;

/// The HTTP settings of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// An HTTP/2 PING after this long without a frame from the peer...
    pub keepalive_interval: Duration,
    /// ...and the connection closes if no answer comes within this.
    pub keepalive_timeout: Duration,
    /// Streams the server may reset for the peer's errors before it closes the connection.
    pub max_local_error_resets: usize,
    /// The HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE the server announces.
    pub max_header_list_size: u32,
    /// The header fields an HTTP/1.1 request may have (HTTP 431 past it).
    pub max_http1_header_fields: usize,
    /// Bytes of response data one HTTP/2 stream may have queued, whatever window its peer
    /// advertises.
    pub max_send_buffer: usize,
}

/// TLS for every connection: rustls's acceptor and the handshake's deadline.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl Tls {
    /// The server's certificate chain and key (PEM), and the CA that client certificates must
    /// chain to (PEM), if clients must present one.
    pub fn new(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
        handshake_timeout: Duration,
    ) -> Result<Self, ServeError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = |pem: &[u8], what: &str| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ServeError(format!("TLS: {what}: {e}")))?;
            if certs.is_empty() {
                return Err(ServeError(format!("TLS: {what}: no PEM certificate")));
            }
            Ok(certs)
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError(format!("TLS: {e}")))?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(certs(pem, "--tls-client-ca")?);
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .map_err(|e| ServeError(format!("TLS: --tls-client-ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ServeError(format!("TLS: --tls-key: {e}")))?;
        let mut config = builder
            .with_single_cert(certs(cert_pem, "--tls-cert")?, key)
            .map_err(|e| ServeError(format!("TLS: {e}")))?;
        // As tonic: gRPC's clients ask for h2; a client that names no protocol is served too.
        config.alpn_protocols.push(b"h2".to_vec());
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshake_timeout,
        })
    }
}

/// Serves every connection of `incoming` with `service` until `stop` turns true, then shuts
/// them down gracefully and returns once all have closed.
pub async fn serve(
    incoming: impl Stream<Item = std::io::Result<IdleGuard>>,
    tls: Option<Tls>,
    service: HttpService,
    settings: Settings,
    stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&settings));
    let service = TowerToHyperService::new(service.map_request(to_tonic_body as ToTonicBody));
    let mut connections = JoinSet::new();
    let mut stopped = stop.clone();
    let mut trim = Trim::default();
    {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => break,
                accepted = incoming.next() => match accepted {
                    Some(Ok(io)) => spawn_connection(
                        &mut connections,
                        io,
                        tls.clone(),
                        service.clone(),
                        builder.clone(),
                        stop.clone(),
                    ),
                    // `net::incoming` deals with accept errors itself.
                    Some(Err(e)) => tracing::debug!(error = %e, "accept failed"),
                    None => break,
                },
                // Finished connections, so that the set holds only open ones.
                Some(_) = connections.join_next(), if !connections.is_empty() => {
                    trim.connection_closed();
                }
                _ = trim.due(), if trim.pending() => trim.run(),
            }
        }
        // `incoming` is dropped here: the listener closes before the drain, so that new
        // clients are refused at once rather than left waiting.
    }
    while connections.join_next().await.is_some() {}
}

/// hyper's builder with `settings`: HTTP/1.1 and HTTP/2, told apart by the HTTP/2 preface.
fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper enforces its HTTP/1 header read timeout (30 s) only with a timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_headers(settings.max_http1_header_fields);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_local_error_reset_streams(settings.max_local_error_resets)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buf_size(settings.max_send_buffer);
    builder
}

/// hyper's request body, boxed as tonic's routes take it.
type ToTonicBody = fn(http::Request<Incoming>) -> http::Request<tonic::body::Body>;

fn to_tonic_body(request: http::Request<Incoming>) -> http::Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

/// One connection: its TLS handshake (bounded, and abandoned if the server stops), then HTTP
/// until either side closes it or the server stops (gracefully).
///
/// Generic rather than on [`HttpService`], and spawned here rather than by the caller, so that
/// the compiler proves the task `Send` from these bounds (rust-lang/rust#102211, as tonic does).
fn spawn_connection<S, B>(
    connections: &mut JoinSet<()>,
    io: IdleGuard,
    tls: Option<Tls>,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
) where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<tower::BoxError>,
{
    connections.spawn(async move {
        let Some(tls) = tls else {
            return http(io, service, &builder, stop).await;
        };
        let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io));
        let io = tokio::select! {
            handshake = handshake => match handshake {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            },
            _ = stop.wait_for(|stop| *stop) => return,
        };
        http(io, service, &builder, stop).await
    });
}

/// HTTP on `io` until the connection closes; once `stop` turns true, a graceful shutdown.
async fn http<IO, S, B>(
    io: IO,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<tower::BoxError>,
{
    let connection = builder.serve_connection(TokioIo::new(BatchedWrites::new(io)), service);
    let mut connection = std::pin::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// tonic's server-side `grpc-timeout`: a response whose headers are not ready within the
/// client's deadline is CANCELLED "Timeout expired" (by [`tonic::service::RecoverError`]).
/// calldesk's unary handlers answer DEADLINE_EXCEEDED a little earlier
/// ([`crate::api::limits::CLIENT_DEADLINE_MARGIN`]), so this bounds the rest (health,
/// reflection, a watch that has not started streaming).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTimeoutLayer;

impl<S> Layer<S> for GrpcTimeoutLayer {
    type Service = GrpcTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTimeout { inner }
    }
}

/// See [`GrpcTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTimeout<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for GrpcTimeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = GrpcTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::limits::parse_grpc_timeout);
        GrpcTimeoutFuture {
            inner: self.inner.call(request),
            sleep: timeout.map(tokio::time::sleep),
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`GrpcTimeoutLayer`].
    pub struct GrpcTimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl<F, R, E> Future for GrpcTimeoutFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<tower::BoxError>,
{
    type Output = Result<R, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(Err(tonic::TimeoutExpired(()).into()));
            }
        }
        Poll::Pending
    }
}

/// Gives the memory of closed connections back to the system.
///
/// glibc's allocator returns freed memory to the system only from the top of its heaps: what
/// thousands of streams held stays in the process after they end (1,161 MiB in issue 16) unless
/// `malloc_trim` is called. One trim runs 1 s after a connection closes, at most one per 5 s,
/// on a blocking thread (it walks the allocator's free lists). Elsewhere (musl, other systems)
/// this does nothing.
#[derive(Default)]
struct Trim {
    /// When the next trim runs, if one is pending.
    at: Option<tokio::time::Instant>,
    /// When the last one ran.
    last: Option<tokio::time::Instant>,
}

/// How long after a connection closes the trim runs (a burst of closes gets one), and how
/// often at most.
const TRIM_DELAY: Duration = Duration::from_secs(1);
const TRIM_EVERY: Duration = Duration::from_secs(5);

impl Trim {
    fn connection_closed(&mut self) {
        if self.at.is_none() {
            let soon = tokio::time::Instant::now() + TRIM_DELAY;
            self.at = Some(self.last.map_or(soon, |last| soon.max(last + TRIM_EVERY)));
        }
    }

    fn pending(&self) -> bool {
        self.at.is_some()
    }

    async fn due(&self) {
        if let Some(at) = self.at {
            tokio::time::sleep_until(at).await;
        }
    }

    fn run(&mut self) {
        self.at = None;
        self.last = Some(tokio::time::Instant::now());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
            unsafe { libc::malloc_trim(0) };
        });
    }
}
