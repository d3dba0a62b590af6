//! An event encoded once: the bytes the store writes and every watcher sends.
//!
//! A committed event goes to the store and to every watcher of its interaction and agent:
//! 10,000 watchers of one call would otherwise each clone the event and encode it again. The
//! call manager encodes it once; the store writes those bytes as the event's row, and the watch
//! streams send them as they are, both live and from history (read back from the store without
//! decoding).
//!
//! To send them, `EncodedEvent` is a prost message that encodes to exactly its bytes. build.rs
//! generates the server stubs with it in place of `InteractionEvent` (clients, and the rest of
//! the server, keep the generated `InteractionEvent`).

use bytes::{Buf, BufMut, Bytes};
use prost::{
    encoding::{DecodeContext, WireType},
    DecodeError, Message,
};

use crate::proto;

/// One `InteractionEvent`, encoded, with what a watcher needs to know of it without decoding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedEvent {
    /// The event's sequence: watchers drop what they have seen and notice gaps.
    pub sequence: u64,
    /// COMPLETED is an interaction's last event: its watchers end after it.
    pub completed: bool,
    /// The encoded `InteractionEvent`.
    pub bytes: Bytes,
}

/// The two fields of an encoded `InteractionEvent` that `EncodedEvent` keeps; prost skips the
/// others when decoding it.
#[derive(Clone, PartialEq, Message)]
struct EventHead {
    #[prost(uint64, tag = "2")]
    sequence: u64,
    #[prost(enumeration = "proto::InteractionState", tag = "3")]
    state: i32,
}

impl EncodedEvent {
    /// Encodes an event.
    pub fn encode(event: &proto::InteractionEvent) -> Self {
        Self {
            sequence: event.sequence,
            completed: event.state == proto::InteractionState::Completed as i32,
            bytes: Bytes::from(event.encode_to_vec()),
        }
    }

    /// An event as stored: reads its sequence and state, and keeps the bytes as they are.
    pub fn from_stored(bytes: Bytes) -> Result<Self, DecodeError> {
        let head = EventHead::decode(bytes.clone())?;
        Ok(Self {
            sequence: head.sequence,
            completed: head.state == proto::InteractionState::Completed as i32,
            bytes,
        })
    }
}

/// Encodes to its bytes, unchanged. Only the server's watch stubs encode it, and nothing
/// decodes it as a message: `merge_field` skips what it is given.
impl Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, state: proto::InteractionState) -> proto::InteractionEvent {
        proto::InteractionEvent {
            interaction_id: "i-1".into(),
            sequence,
            state: state as i32,
            previous_state: proto::InteractionState::WrapUp as i32,
            interaction: Some(proto::Interaction {
                id: "i-1".into(),
                phone_number: "+12025550100".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn encodes_to_exactly_the_events_bytes() {
        let original = event(7, proto::InteractionState::Completed);
        let encoded = EncodedEvent::encode(&original);
        assert_eq!(encoded.sequence, 7);
        assert!(encoded.completed);
        // As a message, it is the event's own encoding: what a client decodes.
        assert_eq!(encoded.encode_to_vec(), original.encode_to_vec());
        assert_eq!(encoded.encoded_len(), original.encoded_len());
        assert_eq!(
            proto::InteractionEvent::decode(encoded.bytes.clone()).unwrap(),
            original
        );
    }

    #[test]
    fn reads_sequence_and_state_from_stored_bytes() {
        let stored = Bytes::from(event(3, proto::InteractionState::WrapUp).encode_to_vec());
        let encoded = EncodedEvent::from_stored(stored.clone()).unwrap();
        assert_eq!((encoded.sequence, encoded.completed), (3, false));
        assert_eq!(encoded.bytes, stored);
        assert!(EncodedEvent::from_stored(Bytes::from_static(&[0x12, 0xff])).is_err());
    }
}
