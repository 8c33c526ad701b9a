//! `opsloop dev --demo` as a process in a scratch directory: a demo proposal
//! flows to a finished mission (one printed line), the status page shows
//! every role of its own green, and SIGINT stops every role cleanly.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// `GET http://{addr}{path}` over a plain TCP stream: status code and body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

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
        ("OPSLOOP__API__STATUS__REFRESH_SECS", "1"),
    ] {
        command.env(variable, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut status_page = None;
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("status page") {
                status_page = Some(url.trim().to_owned());
            }
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

    // The status page: every role of its own, the database and the bus green.
    let status_page = status_page.expect("the start lines name the status page");
    let addr = status_page
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/status"))
        .expect("http://ADDR/status")
        .to_owned();
    let (code, page) = http_get(&addr, "/status").await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<h1>opsloop status</h1>"), "{page}");
    let own = [
        "api",
        "heartbeat-worker",
        "alerter",
        "backup-agent",
        "database",
        "bus",
    ];
    opsloop_core::testing::eventually(
        "every own component operational",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move {
                let (_, body) = http_get(&addr, "/status.json").await;
                let json: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let states: Vec<(String, String)> = json["components"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        (
                            c["id"].as_str().unwrap_or("").to_owned(),
                            c["state"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect();
                let green = own
                    .iter()
                    .all(|id| states.iter().any(|(i, s)| i == id && s == "operational"));
                if green {
                    Ok(())
                } else {
                    Err(format!("{states:?}"))
                }
            }
        },
    )
    .await;

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
