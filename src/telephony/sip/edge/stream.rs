//! The SIP port's TCP listener, which speaks TLS too, and each connection a peer opens to it.
//!
//! The accept loop keeps the gRPC port's rules (`server/net.rs`): a connection from outside
//! the allow list is closed as soon as it is accepted; one past `--sip-max-connections` too;
//! when accept fails for want of file descriptors (EMFILE, ENFILE) the loop backs off (10 ms
//! doubling to 1 s) instead of spinning, and warns at most every 5 s.
//!
//! A connection then has `--sip-first-message-timeout` to send its first complete SIP message
//! (the TLS handshake included: a connection whose first byte opens a TLS handshake is TLS);
//! CRLF keepalives do not count. Afterwards it is closed once it has gone
//! `--sip-idle-connection-timeout` without a message while none of the dialogs it carried is
//! live. A message is at most [`MAX_MESSAGE`] bytes; past that, or at bytes that do not frame
//! as SIP, the connection is closed. Each connection is one task that reads, answers and
//! writes in turn: a peer that does not read what calldesk writes stops being read.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rsipstack::dialog::DialogId;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::Transport;
use rsipstack::transport::channel::ChannelConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_util::codec::{Decoder, FramedRead};

use super::gate::{dropped, transport_label, Edge, Handled, Reason};
use super::tls::HANDSHAKE_RECORD;
use super::wire::{find, parse, MAX_MESSAGE};
use crate::domain::accept::{
    is_out_of_descriptors, RateLimitedWarning, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN,
};

/// A write to a peer that does not read for this long closes its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many of a connection's dialogs it remembers, to tell whether it still carries one.
const DIALOGS_REMEMBERED: usize = 16;
/// The read buffer a connection starts with; it grows up to a message's size.
const READ_BUFFER: usize = 2048;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub(in super::super) struct StreamLimits {
    pub max_connections: usize,
    pub first_message_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Accepts connections on `listener` until `cancel`, and serves each in a task of its own.
pub(in super::super) async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: StreamLimits,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut refused = RateLimitedWarning::default();
    let mut exhausted = RateLimitedWarning::default();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                if !edge.allow.allows(peer.ip()) {
                    dropped(Transport::Tcp, Reason::NotAllowed);
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    dropped(Transport::Tcp, Reason::ConnectionLimit);
                    refused.warn(|n| {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            refused = n,
                            "--sip-max-connections reached: closing new SIP connections"
                        )
                    });
                    continue;
                };
                let edge = edge.clone();
                let tls = tls.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = connection(edge, stream, peer, tls, limits, permit) => {}
                    }
                });
            }
            Err(e) if is_out_of_descriptors(&e) => {
                exhausted.warn(|n| {
                    tracing::warn!(
                        error = %e,
                        failed = n,
                        open = limits.max_connections - permits.available_permits(),
                        "cannot accept SIP connections: out of file descriptors (raise \
                         `ulimit -n` or lower --sip-max-connections); backing off"
                    )
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
            // ECONNABORTED and the like concern one connection only.
            Err(e) => tracing::debug!(error = %e, "SIP accept failed"),
        }
    }
}

/// One accepted connection, from its first byte to its end; `_permit` holds its place
/// among `--sip-max-connections`.
async fn connection(
    edge: Arc<Edge>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: StreamLimits,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let first_deadline = Instant::now() + limits.first_message_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(first_deadline, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == HANDSHAKE_RECORD => {
            let Some(acceptor) = tls else {
                dropped(Transport::Tls, Reason::Malformed);
                return;
            };
            match tokio::time::timeout_at(first_deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(&edge, stream, peer, Transport::Tls, first_deadline, limits)
                        .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "SIP TLS handshake failed");
                    dropped(Transport::Tls, Reason::Malformed);
                }
                Err(_) => dropped(Transport::Tls, Reason::FirstMessageTimeout),
            }
        }
        Ok(Ok(1)) => {
            serve_connection(&edge, stream, peer, Transport::Tcp, first_deadline, limits).await
        }
        // Closed, or failed, before its first byte.
        Ok(_) => {}
        Err(_) => dropped(Transport::Tcp, Reason::FirstMessageTimeout),
    }
}

/// Reads, vets and answers a connection's messages until it ends, fails, or times out.
async fn serve_connection<S>(
    edge: &Edge,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    first_deadline: Instant,
    limits: StreamLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gauge = ConnectionGauge::open(transport);
    let (reader, mut writer) = tokio::io::split(stream);
    let mut frames = FramedRead::with_capacity(reader, Framer, READ_BUFFER);
    // The stack's side of this connection: what it sends on it arrives on `outgoing`.
    let (outgoing_tx, mut outgoing) = tokio::sync::mpsc::unbounded_channel();
    let (_, unused) = tokio::sync::mpsc::unbounded_channel();
    let address = SipAddr {
        r#type: Some(transport),
        addr: peer.into(),
    };
    let Ok(channel) =
        ChannelConnection::create_connection(unused, outgoing_tx, address, None).await
    else {
        return;
    };
    let connection = SipConnection::Channel(channel);
    let mut dialogs: VecDeque<DialogId> = VecDeque::new();
    let mut deadline = first_deadline;
    let mut spoke = false;
    let closing = loop {
        tokio::select! {
            frame = frames.next() => match frame {
                None => break None,
                Some(Err(_)) => break Some(Reason::Malformed),
                Some(Ok(Frame::Ping)) => {
                    if write(&mut writer, b"\r\n").await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Frame::Pong)) => {}
                Some(Ok(Frame::Message(bytes))) => {
                    spoke = true;
                    deadline = Instant::now() + limits.idle_timeout;
                    if !edge.worth_reading(&bytes, transport) {
                        continue;
                    }
                    let Some(message) = parse(&bytes) else {
                        break Some(Reason::Malformed);
                    };
                    match edge.handle(message, peer, transport, &connection) {
                        Handled::Passed { dialog: Some(dialog) } => {
                            if !dialogs.contains(&dialog) {
                                if dialogs.len() == DIALOGS_REMEMBERED {
                                    dialogs.pop_front();
                                }
                                dialogs.push_back(dialog);
                            }
                        }
                        Handled::Answer { response, .. } => {
                            if write(&mut writer, &response.to_bytes()).await.is_err() {
                                break None;
                            }
                        }
                        Handled::Passed { dialog: None } | Handled::Dropped => {}
                    }
                }
            },
            event = outgoing.recv() => {
                if let Some(TransportEvent::Incoming(message, _, _)) = event {
                    if write(&mut writer, &message.to_bytes()).await.is_err() {
                        break None;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if !spoke {
                    break Some(Reason::FirstMessageTimeout);
                }
                dialogs.retain(|dialog| edge.has_dialog(dialog));
                if dialogs.is_empty() {
                    break Some(Reason::Idle);
                }
                deadline = Instant::now() + limits.idle_timeout;
            }
        }
    };
    if let Some(reason) = closing {
        dropped(transport, reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    }
    drop(gauge);
}

/// Writes `bytes` whole, or fails after [`WRITE_TIMEOUT`].
async fn write(writer: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// `calldesk_sip_connections{transport}`: one while a connection is served.
struct ConnectionGauge(Transport);

impl ConnectionGauge {
    fn open(transport: Transport) -> Self {
        metrics::gauge!("calldesk_sip_connections", "transport" => transport_label(transport))
            .increment(1.0);
        Self(transport)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("calldesk_sip_connections", "transport" => transport_label(self.0))
            .decrement(1.0);
    }
}

/// One unit read off a SIP stream (RFC 3261 §18.3, RFC 5626 §3.5.1).
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A whole message's bytes: headers, and the body `Content-Length` says.
    Message(BytesMut),
    /// A keepalive ping (CRLF CRLF), answered with a pong.
    Ping,
    /// A keepalive pong (CRLF).
    Pong,
}

/// Cuts a byte stream into [`Frame`]s of at most [`MAX_MESSAGE`] bytes.
struct Framer;

impl Decoder for Framer {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        if src.starts_with(b"\r\n\r\n") {
            src.advance(4);
            return Ok(Some(Frame::Ping));
        }
        if src.starts_with(b"\r\n") {
            src.advance(2);
            return Ok(Some(Frame::Pong));
        }
        let too_large = || io::Error::new(io::ErrorKind::InvalidData, "SIP message too large");
        let Some(head) = find(&src[..src.len().min(MAX_MESSAGE)], b"\r\n\r\n") else {
            return if src.len() >= MAX_MESSAGE {
                Err(too_large())
            } else {
                Ok(None)
            };
        };
        let head_end = head + 4;
        let length = content_length(&src[..head])?;
        let total = head_end
            .checked_add(length)
            .filter(|total| *total <= MAX_MESSAGE)
            .ok_or_else(too_large)?;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(Frame::Message(src.split_to(total))))
    }
}

/// The `Content-Length` (or `l`) of a message's head; 0 without one.
fn content_length(head: &[u8]) -> io::Result<usize> {
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            return std::str::from_utf8(&line[colon + 1..])
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> (Vec<Frame>, io::Result<()>, usize) {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match Framer.decode(&mut src) {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) => return (out, Ok(()), src.len()),
                Err(e) => return (out, Err(e), src.len()),
            }
        }
    }

    #[test]
    fn messages_and_keepalives_are_framed_and_a_partial_one_waits() {
        let bye = b"BYE sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabc";
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(bye);
        stream.extend_from_slice(b"\r\nOPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\nINV");
        let (out, result, left) = frames(&stream);
        assert!(result.is_ok());
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], Frame::Ping);
        assert_eq!(out[1], Frame::Message(BytesMut::from(&bye[..])));
        assert_eq!(out[2], Frame::Pong);
        assert_eq!(left, 3, "the partial message waits");
    }

    #[test]
    fn oversize_or_unframeable_streams_are_refused() {
        let huge = format!("INVITE sip:a@b SIP/2.0\r\nContent-Length: {MAX_MESSAGE}\r\n\r\n");
        assert!(frames(huge.as_bytes()).1.is_err());
        assert!(frames(&vec![b'A'; MAX_MESSAGE]).1.is_err());
        assert!(frames(b"X sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n")
            .1
            .is_err());
        // Below the limit without a head's end: wait for more.
        assert!(frames(&vec![b'A'; MAX_MESSAGE - 1]).1.is_ok());
    }
}
