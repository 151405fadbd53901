//! Vigil's wire contract, generated from `proto/vigil/v1/*.proto`.
//!
//! Layout:
//! - [`v1`]: the `vigil.v1` package: events, batches, receipts, post status
//!   and commands (carried over MQTT), and the `OpsCenter` gRPC service with
//!   its client and server.
//! - [`topics`]: the MQTT topic names of DESIGN.md, built and parsed in one place.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.

pub mod topics;

/// The `vigil.v1` protobuf package.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::needless_pass_by_value,
    clippy::uninlined_format_args
)]
pub mod v1 {
    tonic::include_proto!("vigil.v1");
}

/// Encoded `FileDescriptorSet` of every Vigil .proto file (with the
/// well-known types they import), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vigil_descriptor.bin"));

pub use prost::{self, Message};
pub use prost_types::Timestamp;
