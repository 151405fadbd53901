//! Generates the Rust code for `proto/vigil/v1/*.proto` at build time.
//!
//! The .proto files are parsed by protox, a pure-Rust protobuf compiler, so no
//! `protoc` has to be installed. The encoded descriptor set is also written to
//! `OUT_DIR` so the gRPC server can offer reflection.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &["vigil/v1/events.proto", "vigil/v1/ops.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    // Source info is kept so the proto comments become rustdoc.
    let fds = protox::compile(PROTOS, [&root])?;
    fs::write(
        out_dir.join("vigil_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
