//! The generated gRPC contract (`proto/opsloop/v1`, package `opsloop.v1`):
//! prost messages, tonic clients and server traits, and the encoded descriptor
//! set that server reflection serves.

/// Package `opsloop.v1`: every message, enum, client (`*_client`) and server
/// (`*_server`) of the contract.
pub mod v1 {
    tonic::include_proto!("opsloop.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `opsloop.v1` and its
/// imports, written by `build.rs`; served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/opsloop_descriptor.bin"));
