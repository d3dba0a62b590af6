//! Accepted connections: TCP options, and closing connections that never say anything.
//!
//! hyper waits for an HTTP/2 preface for as long as a peer cares to keep a socket open; a
//! client (or a scanner) that connects and sends nothing would hold a file descriptor for
//! ever. [`IdleGuard`] fails such a connection's reads once `timeout` passes without its first
//! byte; after the first byte, HTTP/2 keepalive looks after the connection.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// The accepted connections of `listener`, with TCP_NODELAY and keepalive set, each closed if
/// its first byte does not arrive within `first_byte_timeout`.
pub fn incoming(
    listener: TcpListener,
    tcp_keepalive: Duration,
    first_byte_timeout: Duration,
) -> impl Stream<Item = io::Result<IdleGuard>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(tcp_keepalive))
        .map(move |accepted| accepted.map(|stream| IdleGuard::new(stream, first_byte_timeout)))
}

/// A TCP stream whose reads fail if nothing at all was received within a deadline.
pub struct IdleGuard {
    inner: TcpStream,
    /// Running until the first byte arrives; None afterwards.
    first_byte: Option<Pin<Box<Sleep>>>,
}

impl IdleGuard {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            first_byte: Some(Box::pin(tokio::time::sleep(timeout))),
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
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
            Poll::Pending => {
                if let Some(deadline) = self.first_byte.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection sent nothing; closing it",
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

impl Connected for IdleGuard {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
