//! The codec of WatchSale's answers: messages encoded beforehand, written as they are.
//!
//! Every WatchSale stream of a sale sends the same snapshot, so the snapshot is encoded once
//! and each stream only copies those bytes into its gRPC frame (`grpc/feeds.rs` decides what
//! is encoded and when). prost's codec would take a `pb::SaleSnapshot` per stream and encode it
//! per stream. What goes on the wire is the same either way: the message's protobuf encoding in
//! a gRPC frame (framing, compression and size limits are tonic's, as with any codec), so every
//! client decodes a plain `SaleSnapshot`. Requests are decoded by prost as usual.
//!
//! `build.rs` generates the FeedsService server with this codec for WatchSale (tonic-build's
//! `manual` module: prost's generated server hard-codes prost's codec).
//!
//! Each stream encodes into a buffer of its own, [`SNAPSHOT_BUFFER`] bytes to start with
//! instead of tonic's 8 KiB: a snapshot is about 150 bytes, and with 10,000 watchers the
//! default is tens of MiB of buffers that hold a few hundred bytes each.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// The initial size of each stream's encoding buffer; it grows if a message needs more.
pub const SNAPSHOT_BUFFER: usize = 512;

/// Decodes requests of type `Req` with prost; sends answers that are already encoded.
#[derive(Debug)]
pub struct PreEncodedCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for PreEncodedCodec<Req> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req: prost::Message + Default + Send + 'static> Codec for PreEncodedCodec<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = PreEncoded;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Writes each message's bytes as they are: they must be one encoded protobuf message.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // 32 KiB: tonic's default yield threshold (how much a stream may batch into one frame).
        BufferSettings::new(SNAPSHOT_BUFFER, 32 * 1024)
    }
}
