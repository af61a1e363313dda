//! The prost codec with small initial buffers.
//!
//! tonic allocates an encode and a decode buffer eagerly for every RPC (8 KiB
//! each by default). The server holds one long-lived `Connect` RPC per agent,
//! so with thousands of mostly idle agents those buffers are most of the
//! per-agent memory. They still grow to fit any message, so starting at 1 KiB
//! costs a reallocation only for the rare large snapshot.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of each per-RPC buffer.
pub const INITIAL_BUFFER_BYTES: usize = 1024;
/// tonic's default: yield to the runtime after this many bytes of a stream.
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD)
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
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
