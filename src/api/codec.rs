//! The protobuf codec of InteractionService (client and server stubs): prost, with a smaller
//! first buffer than tonic's default.
//!
//! tonic gives every call, and every open stream, an encode buffer of 8 KiB that lives as long
//! as the stream. calldesk's messages are a few hundred bytes, and a server holds thousands of
//! WatchInteraction streams open, so 1 KiB is plenty; a bigger message (a page of
//! ListInteractions) grows the buffer as it needs. BENCHMARKS.md has the RSS per stream.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first size of each call's encode and decode buffers.
const BUFFER_SIZE: usize = 1024;
/// tonic's own: how much encoded data a stream buffers before it yields to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with `BUFFER_SIZE` (1 KiB) buffers.
#[derive(Debug)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
