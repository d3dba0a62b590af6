//! The SIP port's UDP socket, read by the edge.
//!
//! Each datagram is handled as it is read, one at a time: a source outside the allow list
//! costs a `recv` and a lookup, and nothing is queued between the socket and the decision, so
//! whatever arrives faster than that waits in the kernel's receive buffer (or is dropped
//! there), never in calldesk's memory.

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::platform::CancellationToken;
use rsipstack::sip::Transport;
use rsipstack::transport::SipConnection;
use tokio::net::UdpSocket;

use super::gate::{dropped, Edge, Handled, Reason};
use super::wire::{parse, MAX_MESSAGE};

/// calldesk's UDP socket as rsipstack sees it: it sends through it and never reads it (its
/// read never finishes), since the edge does.
pub(in super::super) struct SendOnly(pub Arc<UdpSocket>);

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for SendOnly {
    async fn recv_from(&self, _buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        std::future::pending().await
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.0.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.0.local_addr()?)
    }
}

/// Reads `socket` until `cancel`: datagrams from allowed sources are vetted, the stack's share
/// handed to it as arriving on `connection` (the stack's view of the socket), stateless
/// answers sent back at once.
pub(in super::super) async fn serve(
    edge: Arc<Edge>,
    socket: Arc<UdpSocket>,
    connection: SipConnection,
    cancel: CancellationToken,
) {
    // One byte more than the largest message read, to tell an oversize datagram.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, source) = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "SIP UDP receive failed");
                continue;
            }
        };
        let source = SocketAddr::new(source.ip().to_canonical(), source.port());
        if !edge.allow.allows(source.ip()) {
            dropped(Transport::Udp, Reason::NotAllowed);
            continue;
        }
        let datagram = &buf[..len];
        if datagram.iter().all(u8::is_ascii_whitespace) {
            // A keepalive, or nothing.
            continue;
        }
        if len <= MAX_MESSAGE && !edge.worth_reading(datagram, Transport::Udp) {
            continue;
        }
        let message = match (len > MAX_MESSAGE, parse(datagram)) {
            (false, Some(message)) => message,
            _ => {
                dropped(Transport::Udp, Reason::Malformed);
                continue;
            }
        };
        if let Handled::Answer { response, reply_to } =
            edge.handle(message, source, Transport::Udp, &connection)
        {
            if let Err(e) = socket.send_to(&response.to_bytes(), reply_to).await {
                tracing::debug!(error = %e, "could not answer a SIP request");
            }
        }
    }
}
