//! The SIP port's edge: everything that reaches calldesk's SIP port passes here before the
//! SIP stack sees any of it.
//!
//! rsipstack would read the port itself, and it keeps a transaction (for 32 s) for every
//! request it is sent, reads TCP connections without a cap or a first-message deadline, and
//! spins when accept runs out of file descriptors. So calldesk reads the port itself:
//!
//! - [`udp`]: the UDP socket. rsipstack sends through it ([`udp::SendOnly`]) and never reads
//!   it.
//! - [`stream`]: the TCP listener, which also speaks TLS (a connection whose first byte opens
//!   a TLS handshake, [`tls`]): `--sip-max-connections`, a deadline for a connection's first
//!   message, an idle timeout while it carries no dialog, and back-off when out of file
//!   descriptors.
//!
//! On both, a source outside the [`allow`] list is dropped unread (a connection closed at
//! once); every message from an allowed one is [`vet`]ted: passed to the stack, answered here
//! statelessly (within a [`budget`] per second), or dropped. What passes enters the stack
//! through one in-memory connection ([`gate`]'s [`Edge`]), as if rsipstack had read it, with
//! the connection it came on for the stack's answers. [`wire`] parses the bytes.
//!
//! Connections calldesk opens itself (to the trunk, to a phone) are rsipstack's: only the peer
//! it dialled can send on them.

pub(super) mod allow;
mod budget;
mod gate;
pub(super) mod stream;
pub(super) mod tls;
pub(super) mod udp;
mod vet;
mod wire;

pub(super) use gate::{Edge, OtherDialogs};
