//! Vigil's wire contract, generated from `proto/vigil/v1/*.proto`.
//!
//! Layout:
//! - [`v1`]: the `vigil.v1` package: events, batches, receipts, post status
//!   and commands (carried over MQTT), and the `OpsCenter` gRPC service with
//!   its client and server.
//! - [`topics`]: the MQTT topic names of DESIGN.md, built and parsed in one place.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.
//! - [`json`]: messages as proto3 JSON, in the one shape every part writes.

pub mod json;
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

/// Seconds of 0001-01-01T00:00:00Z since the Unix epoch: the earliest time
/// a `google.protobuf.Timestamp` may hold...
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// ...and of 9999-12-31T23:59:59Z, the latest (with up to 999,999,999 ns).
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Whether `ts` is a valid protobuf timestamp: years 1 to 9999 (what
/// RFC 3339 and proto3 JSON can write), nanos in `0..1_000_000_000`.
pub fn time_in_range(ts: &Timestamp) -> bool {
    (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds)
        && (0..1_000_000_000).contains(&ts.nanos)
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn timestamps_are_in_range_for_years_1_to_9999() {
        let t = |seconds, nanos| time_in_range(&Timestamp { seconds, nanos });
        assert!(t(0, 0));
        assert!(t(MIN_TIMESTAMP_SECONDS, 0));
        assert!(t(MAX_TIMESTAMP_SECONDS, 999_999_999));
        assert!(!t(MIN_TIMESTAMP_SECONDS - 1, 0), "year 0");
        assert!(!t(MAX_TIMESTAMP_SECONDS + 1, 0), "year 10000");
        assert!(!t(0, -1));
        assert!(!t(0, 1_000_000_000));
        assert!(!t(i64::MIN, 0));
    }
}
