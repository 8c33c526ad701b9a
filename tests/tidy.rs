//! Invariants of the source tree that a compiler does not check, kept by a
//! test (rust-analyzer's `tidy` is the model): every Rust file opens with a
//! `//!` line saying what it owns, and the domain (`crates/core/src/domain`)
//! stays pure — no database, bus, network, file or async runtime in it — so
//! its rules remain table-testable without I/O.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// Every `.rs` file below `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn sources(subdirs: &[&str]) -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in subdirs {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    files
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let files = sources(&["crates", "migrations", "tests", "bench"]);
    assert!(files.len() > 100, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("readable source");
            !text.trim_start().starts_with("//!")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` line saying what they own:\n{}",
        missing.join("\n")
    );
}

/// What the domain must not use: its functions take plain data and return
/// decisions; I/O lives in `store`, `bus`, `workflow` and the daemons.
const FORBIDDEN_IN_DOMAIN: &[&str] = &[
    "sea_orm",
    "sqlx",
    "lapin",
    "tonic",
    "axum",
    "reqwest",
    "tokio",
    "std::fs",
    "std::net",
    "std::process",
    "crate::store",
    "crate::bus",
    "crate::workflow",
    "crate::daemon",
];

#[test]
fn the_domain_does_no_io() {
    let files = sources(&["crates/core/src/domain"]);
    assert!(!files.is_empty(), "crates/core/src/domain has no sources");
    let mut offences = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for forbidden in FORBIDDEN_IN_DOMAIN {
                if code.contains(forbidden) {
                    offences.push(format!(
                        "{}:{}: uses `{forbidden}`",
                        path.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the domain must stay free of I/O (move this to store/workflow):\n{}",
        offences.join("\n")
    );
}
