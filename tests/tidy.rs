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

/// The dependency names of one manifest section kind (`dependencies`,
/// `dev-dependencies`, `build-dependencies`), read line by line: every
/// manifest here writes one dependency per line (`name.workspace = true`
/// or `name = …`).
fn manifest_dependencies(manifest: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_owned();
            continue;
        }
        if !matches!(
            section.as_str(),
            "dependencies" | "dev-dependencies" | "build-dependencies"
        ) || line.is_empty()
            || line.starts_with('#')
        {
            continue;
        }
        let name = line
            .split(['=', '.', ' '])
            .next()
            .unwrap_or_default()
            .trim();
        if !name.is_empty() {
            found.push((section.clone(), name.to_owned()));
        }
    }
    found
}

/// No dependency that no source of its crate names (what `cargo machete`
/// finds, without installing it): each costs build time on a 2-core
/// machine. A dependency used only through generated code or a feature is
/// listed here with the reason.
#[test]
fn every_dependency_is_used() {
    const INDIRECT: [(&str, &str, &str); 1] = [(
        "crates/core",
        "tonic-prost",
        "named only by the generated gRPC code in OUT_DIR",
    )];
    let root = workspace_root();
    let mut unused = Vec::new();
    for member in [
        "crates/core",
        "crates/api",
        "crates/heartbeat-worker",
        "crates/alerter",
        "crates/backup-agent",
        "crates/cli",
        "migrations",
        "tests",
        "bench",
    ] {
        let dir = root.join(member);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let text: String = files
            .iter()
            .map(|path| std::fs::read_to_string(path).expect("readable source"))
            .collect::<Vec<_>>()
            .join("\n");
        for (section, name) in manifest_dependencies(&manifest) {
            if INDIRECT.iter().any(|(m, n, _)| *m == member && *n == name) {
                continue;
            }
            let ident = name.replace('-', "_");
            let named = [
                format!("{ident}::"),
                format!("use {ident}"),
                format!("{ident}!"),
                format!("extern crate {ident}"),
                format!("#[{ident}"),
            ]
            .iter()
            .any(|needle| text.contains(needle.as_str()));
            if !named {
                unused.push(format!("{member}: [{section}] {name}"));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "dependencies no source of their crate names (remove them, or list them in INDIRECT with the reason):\n{}",
        unused.join("\n")
    );
}

/// Sleeps in test code, counted so that they only ever go down: a test that
/// waits for something polls it with `opsloop_core::testing::eventually`, one
/// that asserts nothing happens says so with `stays`. The ones left are
/// receivers told to be slow and polling loops not yet folded into
/// `eventually`; lower the limit when you remove some.
const TEST_SLEEPS_LIMIT: usize = 42;

#[test]
fn test_sleeps_only_go_down() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["crates", "tests", "migrations"] {
        rust_files(&root.join(dir), &mut files);
    }
    let helper = root.join("crates/core/src/testing.rs");
    let this_file = root.join("tests/tidy.rs");
    let mut found = Vec::new();
    for path in files {
        let in_tests = path.components().any(|c| c.as_os_str() == "tests");
        if !in_tests || path == helper || path == this_file {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if line.contains("sleep(") && !line.trim_start().starts_with("//") {
                found.push(format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    assert!(
        found.len() <= TEST_SLEEPS_LIMIT,
        "{} sleeps in tests, more than the limit of {TEST_SLEEPS_LIMIT}: wait with \
         opsloop_core::testing::eventually (or assert quiet with stays) instead:\n{}",
        found.len(),
        found.join("\n")
    );
}
