//! `opsloop dev --demo` as a process in a scratch directory: a demo proposal
//! flows to a finished mission (one printed line), and SIGINT stops every
//! role cleanly.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_proposals_become_finished_missions() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"));
    command
        .args(["dev", "--demo", "--demo-proposals", "1"])
        .current_dir(dir.path())
        .env_remove("OPSLOOP_CONFIG")
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // Free ports, so the test runs beside a real `opsloop dev`.
    for (variable, value) in [
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__HEARTBEAT__HTTP_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__ALERTER__GRPC_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__ALERTER__HTTP_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__BACKUP__GRPC_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__BACKUP__HTTP_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__TELEMETRY__LOG_FORMAT", "json"),
    ] {
        command.env(variable, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("mission ") {
                return line;
            }
        }
        panic!("opsloop dev ended before a mission finished");
    })
    .await
    .expect("a demo mission finishes within a minute");
    assert!(finished.contains(" succeeded: \"demo #1: "), "{finished}");
    assert!(finished.contains("(3 steps, $0.0060"), "{finished}");

    let pid = child.id().unwrap().to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("opsloop dev stops on SIGINT")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
