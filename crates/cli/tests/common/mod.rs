//! What the CLI's process tests share: the `opsloop` binary as a command
//! that ignores the caller's token environment, and reading its JSON output.

use std::process::Output;

use serde_json::Value;

/// The `opsloop` binary under test, with `OPSLOOP_TOKEN` and
/// `OPSLOOP_TOKEN_FILE` removed so only the test's flags give a token.
pub(crate) fn opsloop_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"));
    command
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE");
    command
}

/// The JSON a successful command printed; panics naming `what` with its
/// stderr when it failed, or with its stdout when that is not JSON.
pub(crate) fn json_of(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
