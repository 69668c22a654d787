//! Code generated from `proto/` at build time (see `build.rs`).
#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

/// DTM's gRPC API: service `dtmgimp.Dtm`.
pub mod dtmgimp {
    tonic::include_proto!("dtmgimp");
}

/// The encoded `FileDescriptorSet` of `dtmgimp.proto` and its imports, served by gRPC reflection.
pub const DTMGIMP_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dtmgimp_descriptor.bin"));

/// DTM's workflow resume service: `workflow.Workflow/Execute`.
pub mod workflow {
    tonic::include_proto!("workflow");
}

/// The test business service of DTM's test suite (`busi.Busi`), for braid's gRPC tests.
pub mod busi {
    tonic::include_proto!("busi");
}

/// The protobuf codec of the generated services: prost's, except that a message that does not decode is
/// the caller's fault (`InvalidArgument`), not a server fault (`Internal`, prost's code).
pub mod codec {
    use tonic::Status;
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// [`ProstCodec`] with decode errors as `InvalidArgument`.
    #[derive(Debug, Clone, Default)]
    pub struct StrictCodec<T, U>(ProstCodec<T, U>);

    /// The decoder half of [`StrictCodec`].
    #[derive(Debug, Clone)]
    pub struct StrictDecoder<U>(ProstDecoder<U>);

    impl<T, U> Codec for StrictCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = StrictDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            self.0.encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            StrictDecoder(self.0.decoder())
        }
    }

    impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|s| {
                if s.code() == tonic::Code::Internal {
                    Status::invalid_argument(format!(
                        "the request message does not decode: {}",
                        s.message()
                    ))
                } else {
                    s
                }
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
