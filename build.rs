//! Compiles `proto/calldesk/v1/calldesk.proto` without a system `protoc`: protox parses it into
//! a file descriptor set, which feeds three generators: prost (messages), tonic (client and
//! server stubs, the server's in `server/` because its watch streams send pre-encoded events)
//! and pbjson (proto3 JSON for the CLI). The descriptor set is also written to
//! OUT_DIR for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTO_FILE: &str = "proto/calldesk/v1/calldesk.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build prints no rerun-if-changed of its own when given descriptors.
    println!("cargo:rerun-if-changed={PROTO_FILE}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile([PROTO_FILE], [PROTO_ROOT])?;
    let descriptor_path = out_dir.join("calldesk_descriptor.bin");
    fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    // Messages and the client stub.
    tonic_prost_build::configure()
        // Well-known types come from pbjson-types, which gives them proto3 JSON as well.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .emit_rerun_if_changed(false)
        .build_server(false)
        // Smaller per-stream buffers than tonic's default (src/api/codec.rs).
        .codec_path("crate::api::codec::CompactCodec")
        .compile_fds(descriptors.clone())?;

    // The server stub, over the messages above, except that the watch streams send
    // `EncodedEvent`s: each event encoded once for every watcher (src/domain/encoded.rs).
    let server_dir = out_dir.join("server");
    fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".calldesk.v1", "crate::proto")
        .extern_path(
            ".calldesk.v1.InteractionEvent",
            "crate::domain::EncodedEvent",
        )
        .emit_rerun_if_changed(false)
        .build_client(false)
        .codec_path("crate::api::codec::CompactCodec")
        .out_dir(&server_dir)
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&fs::read(&descriptor_path)?)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".calldesk.v1"])?;
    Ok(())
}
