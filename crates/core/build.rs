//! Compiles the gRPC contract in `proto/opsloop/v1` with protox (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and generates the prost
//! messages and tonic clients and servers from the resulting descriptors.
//! Also writes the encoded `FileDescriptorSet` to `OUT_DIR` for server
//! reflection.

use std::path::{Path, PathBuf};

use protox::prost::Message as _;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let proto_root = manifest_dir.join("../../proto");
    let proto_dir = proto_root.join("opsloop/v1");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files = proto_files(&proto_dir);
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&proto_root])
        .unwrap_or_else(|e| panic!("compiling the protos in {}: {e:?}", proto_dir.display()));

    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    // The full set (well-known imports included) so reflection clients can
    // resolve every type a service mentions.
    std::fs::write(
        out_dir.join("opsloop_descriptor.bin"),
        descriptors.encode_to_vec(),
    )
    .expect("writing opsloop_descriptor.bin to OUT_DIR");

    // The imports stay in the set: prost-build inspects them (e.g. to decide
    // derives) but maps the well-known types to prost_types, not generating
    // them again.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)
        .expect("generating Rust code from the opsloop.v1 descriptors");
}

/// Every `*.proto` file directly in `dir`.
fn proto_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading proto directory {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect()
}
