//! `opsloop migrate down` drops nothing without `--confirm`, and says what it
//! would drop first.

use std::process::{Command, Output};

fn migrate(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .env_clear()
        .args(["migrate"])
        .args(args)
        .args(["--database-url", url])
        .output()
        .expect("running opsloop migrate")
}

#[test]
fn down_needs_confirm_and_names_what_it_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("opsloop.db").display()
    );
    let up = migrate(&url, &["up"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let refused = migrate(&url, &["down"]);
    let stdout = String::from_utf8_lossy(&refused.stdout);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("proposals"), "names the tables: {stdout}");
    assert!(stderr.contains("--confirm"), "{stderr}");
    let status = migrate(&url, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.lines().all(|l| l.starts_with("applied")),
        "nothing was rolled back: {status}"
    );

    let done = migrate(&url, &["down", "--confirm"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let status = migrate(&url, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.lines().all(|l| l.starts_with("pending")),
        "rolled back: {status}"
    );
}
