//! Compiles the gRPC contract in `proto/opsloop/v1` with protox (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and generates the prost
//! messages and tonic clients and servers from the resulting descriptors.
//! Also writes the encoded `FileDescriptorSet` to `OUT_DIR` for server
//! reflection, and sets `OPSLOOP_GIT_REVISION` for `opsloop_build_info`:
//! the variable of that name when the build has it (release and image
//! builds pass it), else `git rev-parse --short=12 HEAD` of the source tree,
//! else `unknown` (no git, or not a checkout).

use std::path::{Path, PathBuf};

use protox::prost::Message as _;

fn main() {
    git_revision();
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

/// Emits `OPSLOOP_GIT_REVISION` for the crate (see the module doc). Reruns
/// when the variable or the checkout's HEAD changes.
fn git_revision() {
    println!("cargo:rerun-if-env-changed=OPSLOOP_GIT_REVISION");
    let from_env = std::env::var("OPSLOOP_GIT_REVISION")
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let revision = from_env.unwrap_or_else(|| {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|text| !text.is_empty())
        };
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            println!("cargo:rerun-if-changed={dir}/HEAD");
        }
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
    });
    // Only characters a label value and a version string carry safely.
    let clean: String = revision
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+'))
        .take(64)
        .collect();
    let clean = if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    };
    println!("cargo:rustc-env=OPSLOOP_GIT_REVISION={clean}");
}
