//! `opsloop config check`, `completions`, `man` and `--version` as a
//! process: the annotated example configuration is accepted by every daemon
//! without a warning, a secret in clear is warned about, an invalid file
//! exits 2, and an unknown shell is a usage error.

use std::path::Path;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/opsloop.example.toml"
);

fn opsloop(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opsloop"));
    command.args(args);
    // Only the file under test and the defaults: no OPSLOOP__* from the
    // environment running the tests, no secrets from it either.
    for (key, _) in std::env::vars() {
        if key.starts_with("OPSLOOP") || key == "CREDENTIALS_DIRECTORY" {
            command.env_remove(key);
        }
    }
    command.output().expect("running the opsloop binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_configuration_is_accepted_by_every_daemon() {
    for daemon in ["api", "alerter", "heartbeat", "backup-agent"] {
        let out = opsloop(&[
            "config", "check", "--config", EXAMPLE, "--daemon", daemon, "-o", "json",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{daemon}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{daemon} warned");
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(reports[0]["ok"], true);
        assert_eq!(reports[0]["effective"]["environment"], "production");
    }
}

#[test]
fn a_secret_in_clear_warns_and_is_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("opsloop.toml");
    std::fs::write(
        &path,
        r#"
[database]
url = "postgres://opsloop:hunter2@db:5432/opsloop"

[[alerter.receivers]]
name = "slack"
kind = "slack"
secret = "https://hooks.slack.com/services/T000/B000/XXXX"

[alerter.route]
receiver = "slack"
routes = []
"#,
    )
    .expect("write");
    let config = path.to_str().expect("utf-8 path");
    let out = opsloop(&["config", "check", "--config", config, "--daemon", "alerter"]);
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(
        stderr.contains(
            "warning: alerter: alerter.receivers[0].secret: looks like a secret written in clear"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: alerter: database.url: the URL carries a password in clear"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("XXXX"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"database.url = "postgres://opsloop:***@db:5432/opsloop""#),
        "{stdout}"
    );
}

#[test]
fn an_invalid_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("opsloop.toml");
    std::fs::write(&path, "[backup]\ntimezone = \"Mars/Olympus\"\n").expect("write");
    let config = path.to_str().expect("utf-8 path");
    let out = opsloop(&[
        "config",
        "check",
        "--config",
        config,
        "--daemon",
        "backup-agent",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("backup.timezone"),
        "{}",
        text(&out.stderr)
    );
    // The other daemons do not read [backup]'s values: only the one checked fails.
    let api = opsloop(&["config", "check", "--config", config, "--daemon", "api"]);
    assert_eq!(api.status.code(), Some(0), "{}", text(&api.stderr));
    let missing = opsloop(&["config", "check", "--config", "/nonexistent/opsloop.toml"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn completions_man_pages_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let out = opsloop(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("opsloop"), "{shell}");
    }
    let unknown = opsloop(&["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));

    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("man1");
    let out = opsloop(&["man", "--out", out_dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for page in [
        "opsloop.1",
        "opsloop-config-check.1",
        "opsloop-proposal-submit.1",
    ] {
        assert!(Path::new(&out_dir).join(page).is_file(), "{page} missing");
    }
    let main_page = std::fs::read_to_string(out_dir.join("opsloop.1")).expect("page");
    assert!(
        main_page.contains("Exit status"),
        "the exit-code table is in the man page"
    );

    let version = text(&opsloop(&["--version"]).stdout);
    assert!(
        version.starts_with(&format!("opsloop {} (rev ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains(", built 20"), "{version}");

    let help = text(&opsloop(&["--help"]).stdout);
    for row in [
        "  2  usage",
        "  4  not found",
        "  5  permission denied",
        "  6  unavailable",
        "  7  failed precondition",
        "  8  timeout",
    ] {
        assert!(help.contains(row), "--help lacks {row:?}");
    }
}
