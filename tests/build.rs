//! Generates gRPC clients from `proto/opsloop/v1` alone, with no opsloop
//! crate involved, so the end-to-end test proves the contract is complete
//! on its own: what an outside agent would compile.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("../proto");
    let dir = root.join("opsloop/v1");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("proto directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    // The well-known imports stay in the set: prost maps them to prost_types.
    let descriptors = protox::compile(&files, [&root]).expect("protos compile");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)
        .expect("client generation");
}
