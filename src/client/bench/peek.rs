//! A WatchInteraction client that does not decode the events: it reads only each message's
//! `sequence` and `state` (fields 2 and 3, the first after the id) and skips the rest, so that
//! the watch benchmark's figures hold the server's work and the transport, not the client's
//! protobuf decoding of thousands of events on the same cores.

use tonic::{
    codec::{Codec, DecodeBuf, Decoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
    Request, Status, Streaming,
};
use tonic_prost::ProstEncoder;

use crate::proto::WatchInteractionRequest;

/// The two fields the watchers look at.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Peeked {
    pub sequence: u64,
    pub state: i32,
}

/// Encodes the request with prost; "decodes" each response by [`peek`].
#[derive(Default)]
struct PeekCodec;

impl Codec for PeekCodec {
    type Encode = WatchInteractionRequest;
    type Decode = Peeked;
    type Encoder = ProstEncoder<WatchInteractionRequest>;
    type Decoder = PeekDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        PeekDecoder
    }
}

struct PeekDecoder;

impl Decoder for PeekDecoder {
    type Item = Peeked;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Peeked>, Status> {
        let peeked = peek(buf).map_err(|e| Status::internal(format!("peek: {e}")))?;
        // The rest of the message (the interaction) is skipped unread.
        let rest = bytes::Buf::remaining(buf);
        bytes::Buf::advance(buf, rest);
        Ok(Some(peeked))
    }
}

/// Reads fields up to `state` (3): protobuf encoders write fields in order, and calldesk's
/// server sends events prost encoded.
fn peek(buf: &mut impl bytes::Buf) -> Result<Peeked, String> {
    use prost::encoding::{decode_varint, WireType};
    let mut peeked = Peeked::default();
    while buf.has_remaining() {
        let key = decode_varint(buf).map_err(|e| e.to_string())?;
        let field = key >> 3;
        let wire = WireType::try_from(key & 7).map_err(|e| e.to_string())?;
        match wire {
            WireType::Varint => {
                let value = decode_varint(buf).map_err(|e| e.to_string())?;
                match field {
                    2 => peeked.sequence = value,
                    3 => {
                        peeked.state = value as i32;
                        break;
                    }
                    _ => {}
                }
            }
            WireType::LengthDelimited => {
                let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
                if len > buf.remaining() {
                    return Err("a field past the message's end".into());
                }
                buf.advance(len);
            }
            _ => return Err("an unexpected wire type".into()),
        }
        if field > 3 {
            break;
        }
    }
    Ok(peeked)
}

/// WatchInteraction through `channel`, its events peeked at.
pub(super) async fn watch_interaction(
    channel: Channel,
    request: Request<WatchInteractionRequest>,
) -> Result<Streaming<Peeked>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path = PathAndQuery::from_static("/calldesk.v1.InteractionService/WatchInteraction");
    Ok(grpc
        .server_streaming(request, path, PeekCodec)
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{InteractionEvent, InteractionState};
    use prost::Message;

    #[test]
    fn peek_reads_sequence_and_state_of_an_encoded_event() {
        let event = InteractionEvent {
            interaction_id: "0190e0b2-7b1c-7c00-8000-000000000001".into(),
            sequence: 300,
            state: InteractionState::WrapUp as i32,
            previous_state: InteractionState::Delivered as i32,
            ..Default::default()
        };
        let bytes = event.encode_to_vec();
        let peeked = peek(&mut bytes.as_slice()).unwrap();
        assert_eq!(peeked.sequence, 300);
        assert_eq!(peeked.state, InteractionState::WrapUp as i32);
    }
}
