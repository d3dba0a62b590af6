//! Accepted connections: TCP options, a cap on how many are open, a deadline on the HTTP/2
//! handshake, and an accept loop that survives running out of file descriptors.
//!
//! hyper waits for an HTTP/2 preface for as long as a peer cares to keep a socket open, and
//! HTTP/2 keepalive only starts once the handshake is done: a client (or a scanner) that
//! connects and sends nothing, or one byte, would hold a file descriptor for ever.
//! [`IdleGuard`] fails such a connection's reads once `timeout` passes before the client has
//! sent the whole preface and its first SETTINGS frame (under TLS, which hides those bytes: its
//! first byte, with the TLS handshake bounded by the same timeout). After that, HTTP/2
//! keepalive looks after the connection. An HTTP/1.1 connection (gRPC-Web and the console: its
//! first bytes are not the preface) has until the end of its first request's head (`\r\n\r\n`)
//! instead; a long gRPC-Web stream on it must not be cut when the deadline passes.
//!
//! [`incoming`] holds one permit of `max_connections` per open connection and closes new ones
//! at once while none is free. When accept fails for want of file descriptors (EMFILE,
//! ENFILE), the pending connection stays in the backlog and the next accept would fail at once:
//! it backs off (10 ms doubling to 1 s) instead of spinning, and warns at most every 5 s.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_stream::{Stream, StreamExt};

use crate::domain::accept::{
    is_out_of_descriptors, RateLimitedWarning, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN,
};
use tonic::transport::server::TcpIncoming;

/// What a client sends first: the HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length (its first 3 bytes are the payload's length).
const FRAME_HEADER: usize = 9;

/// How [`incoming`] treats new connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// TCP keepalive of accepted connections.
    pub tcp_keepalive: Duration,
    /// How long a new connection has to send the HTTP/2 preface and its first SETTINGS (with
    /// TLS: its first byte).
    pub handshake_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Whether TLS wraps the connection (the guard then cannot see the HTTP/2 bytes).
    pub tls: bool,
}

/// The accepted connections of `listener`, with TCP_NODELAY and keepalive set, each closed if
/// it has not finished its handshake within `limits.handshake_timeout`, and no more than
/// `limits.max_connections` at once.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<IdleGuard>> {
    let mut accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits.tcp_keepalive));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    async_stream::stream! {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut refused = RateLimitedWarning::default();
        let mut exhausted = RateLimitedWarning::default();
        while let Some(result) = accepted.next().await {
            match result {
                Ok(stream) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            yield Ok(IdleGuard::new(stream, limits.handshake_timeout, limits.tls, permit));
                        }
                        Err(_) => {
                            refused.warn(|n| tracing::warn!(
                                max_connections = limits.max_connections,
                                refused = n,
                                "--max-connections reached: closing new connections"
                            ));
                            drop(stream);
                        }
                    }
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    exhausted.warn(|n| tracing::warn!(
                        error = %e,
                        failed = n,
                        open = limits.max_connections - permits.available_permits(),
                        "cannot accept connections: out of file descriptors (raise `ulimit -n` \
                         or lower --max-connections); backing off"
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
                // ECONNABORTED and the like concern one connection only.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
}

/// A TCP stream whose reads fail if the client's handshake did not arrive within a deadline,
/// holding its place among `--max-connections` while open.
pub struct IdleGuard {
    inner: TcpStream,
    /// Running until the handshake has arrived; None afterwards.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes received so far, counted until the handshake is complete.
    received: usize,
    /// The first SETTINGS frame's header, as it arrives (plaintext only).
    settings_header: [u8; FRAME_HEADER],
    /// Under TLS the HTTP/2 bytes are not visible here: the first byte ends the deadline.
    tls: bool,
    /// Set once the first bytes are not the HTTP/2 preface (HTTP/1.x): how many bytes of
    /// `\r\n\r\n`, the end of the first request's head, were just seen.
    http1_head_end: Option<usize>,
    /// This connection's place; freed when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl IdleGuard {
    fn new(inner: TcpStream, timeout: Duration, tls: bool, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            received: 0,
            settings_header: [0; FRAME_HEADER],
            tls,
            http1_head_end: None,
            _permit: permit,
        }
    }

    /// Counts `bytes` towards the handshake; ends the deadline once it is complete.
    fn saw(&mut self, bytes: &[u8]) {
        if self.tls {
            self.deadline = None;
            return;
        }
        if self.http1_head_end.is_none() {
            let seen = self.received.min(PREFACE.len());
            let compare = bytes.len().min(PREFACE.len() - seen);
            if bytes[..compare] != PREFACE[seen..seen + compare] {
                self.http1_head_end = Some(0);
            }
        }
        if let Some(matched) = self.http1_head_end.as_mut() {
            const HEAD_END: &[u8] = b"\r\n\r\n";
            for &byte in bytes {
                *matched = if byte == HEAD_END[*matched] {
                    *matched + 1
                } else if byte == HEAD_END[0] {
                    1
                } else {
                    0
                };
                if *matched == HEAD_END.len() {
                    self.deadline = None;
                    return;
                }
            }
            return;
        }
        let header_end = PREFACE.len() + FRAME_HEADER;
        let in_header = bytes.len().min(header_end.saturating_sub(self.received));
        for &byte in &bytes[..in_header] {
            if let Some(i) = self.received.checked_sub(PREFACE.len()) {
                self.settings_header[i] = byte;
            }
            self.received += 1;
        }
        self.received += bytes.len() - in_header;
        if self.received >= header_end {
            let [a, b, c, ..] = self.settings_header;
            let payload = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            if self.received >= header_end + payload {
                self.deadline = None;
            }
        }
    }
}

impl AsyncRead for IdleGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if self.deadline.is_some() => {
                let this = &mut *self;
                this.saw(&buf.filled()[before..]);
            }
            Poll::Pending => {
                if let Some(deadline) = self.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection did not finish its HTTP/2 handshake in time; closing it",
                        )));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for IdleGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
