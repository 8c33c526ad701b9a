//! The `opsloop` binary as a process: every subcommand's `--help` lists its
//! flags, and an unreachable daemon or bad input gives one clear line on
//! stderr and a non-zero exit.

use std::process::{Command, Output};

fn opsloop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args(args)
        .env_remove("OPSLOOP_ENDPOINT")
        .env_remove("OPSLOOP_ALERTER_ENDPOINT")
        .env_remove("OPSLOOP_BACKUP_ENDPOINT")
        .env_remove("OPSLOOP_HEARTBEAT_ENDPOINT")
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE")
        .output()
        .expect("running the opsloop binary")
}

fn help(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let out = opsloop(&all);
    assert!(
        out.status.success(),
        "opsloop {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Subcommand names under `Commands:` in a help text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command and the flags (or positional names) its help must list.
const HELP: &[(&[&str], &[&str])] = &[
    (
        &[],
        &[
            "--endpoint",
            "--token",
            "--token-file",
            "--output",
            "--actor",
            "--config",
        ],
    ),
    (&["dev"], &["--database", "--demo", "--demo-proposals"]),
    (&["migrate"], &["--database-url"]),
    (
        &["proposal", "submit"],
        &[
            "--title",
            "--kind",
            "--payload",
            "--dedupe-key",
            "--parallel",
            "--agent",
            "--metadata",
            "--source",
            "--file",
        ],
    ),
    (
        &["proposal", "list"],
        &[
            "--status",
            "--source",
            "--agent",
            "--since",
            "--until",
            "--limit",
            "--page-token",
        ],
    ),
    (&["proposal", "show"], &["<ID>"]),
    (&["proposal", "approve"], &["<ID>", "--comment"]),
    (&["proposal", "reject"], &["<ID>", "--reason"]),
    (
        &["mission", "list"],
        &[
            "--status",
            "--proposal",
            "--since",
            "--until",
            "--limit",
            "--page-token",
        ],
    ),
    (&["mission", "show"], &["<ID>"]),
    (&["mission", "cancel"], &["<ID>", "--reason"]),
    (
        &["event", "emit"],
        &[
            "--kind",
            "--source",
            "--payload",
            "--tag",
            "--cost-usd",
            "--mission",
            "--step",
            "--proposal",
        ],
    ),
    (
        &["event", "list"],
        &[
            "--kind",
            "--since-seq",
            "--since",
            "--source",
            "--mission",
            "--limit",
            "--page-token",
        ],
    ),
    (&["event", "tail"], &["--from-seq", "--kind"]),
    (&["policy", "get"], &["<KEY>"]),
    (
        &["policy", "set"],
        &[
            "<KEY>",
            "[JSON]",
            "--file",
            "--reason",
            "--expected-version",
        ],
    ),
    (
        &["policy", "list"],
        &["--prefix", "--limit", "--page-token"],
    ),
    (
        &["trigger", "add"],
        &[
            "--name",
            "--description",
            "--condition",
            "--action",
            "--cooldown",
            "--disabled",
            "--file",
        ],
    ),
    (
        &["trigger", "list"],
        &["--enabled", "--disabled", "--limit", "--page-token"],
    ),
    (&["trigger", "rm"], &["<TRIGGER>"]),
    (&["summary"], &["--period"]),
    (&["health"], &["--endpoint"]),
    (&["emergency-stop", "engage"], &["--reason"]),
    (&["emergency-stop", "release"], &["--reason"]),
    (&["emergency-stop", "status"], &["--endpoint"]),
    (&["heartbeat", "run-once"], &["--timeout"]),
    (&["probe", "list"], &["--endpoint"]),
    (&["probe", "run"], &["<NAME>", "--timeout"]),
    (
        &["probe", "add"],
        &[
            "<NAME>",
            "--kind",
            "--target",
            "--interval-secs",
            "--header-secret",
            "--json-path",
            "--json-equals",
            "--depends-kind",
            "--on-down",
        ],
    ),
    (&["probe", "rm"], &["<NAME>"]),
    (&["report", "weekly"], &["--week-of"]),
    (
        &["worker"],
        &[
            "--kinds",
            "--exec",
            "--worker-id",
            "--lease-seconds",
            "--once",
            "--max-idle",
        ],
    ),
    (
        &["alerts", "list"],
        &[
            "--filter",
            "--receiver",
            "--no-silenced",
            "--no-inhibited",
            "--no-active",
            "--include-resolved",
            "--limit",
            "--page-token",
        ],
    ),
    (
        &["alerts", "test"],
        &["<RECEIVER>", "--severity", "--message"],
    ),
    (
        &["silence", "add"],
        &[
            "<MATCHER>",
            "--comment",
            "--duration",
            "--starts-at",
            "--ends-at",
            "--id",
        ],
    ),
    (
        &["silence", "list"],
        &["--state", "--filter", "--limit", "--page-token"],
    ),
    (&["silence", "expire"], &["<ID>"]),
    (&["incident", "list"], &["--all", "--level", "--limit"]),
    (&["incident", "show"], &["<ID>"]),
    (&["incident", "open"], &["--level", "--title", "--label"]),
    (&["incident", "ack"], &["<ID>", "--reason"]),
    (&["incident", "resolve"], &["<ID>", "--reason"]),
    (&["incident", "note"], &["<ID>", "<TEXT>"]),
    (&["incident", "escalate"], &["<ID>"]),
    (&["incident", "postmortem"], &["<ID>", "--file"]),
    (&["incident", "stats"], &["--since", "--until"]),
    (&["oncall", "now"], &["--at"]),
    (&["oncall", "show"], &["--week", "--from"]),
    (&["backup", "now"], &["--target", "--no-wait"]),
    (
        &["backup", "list"],
        &["--target", "--kind", "--status", "--limit", "--page-token"],
    ),
    (&["backup", "verify"], &["<ID>"]),
    (
        &["backup", "restore"],
        &["<ID>", "--target-url", "--confirm", "--force"],
    ),
    (&["backup", "prune"], &["--dry-run", "--target"]),
    (&["token", "create"], &["--name", "--role", "--expires"]),
    (&["token", "list"], &[]),
    (&["deadletter", "list"], &["--kind", "--all", "--limit"]),
    (&["deadletter", "show"], &["<ID>"]),
    (&["deadletter", "retry"], &["<ID>"]),
    (&["quarantine", "list"], &["--consumer", "--limit"]),
    (&["quarantine", "retry"], &["<CONSUMER>", "<SEQ>"]),
    (&["policy", "history"], &["<KEY>", "--limit"]),
    (
        &["rollout", "create"],
        &["--name", "--file", "--auto-advance"],
    ),
    (&["rollout", "status"], &[]),
    (&["rollout", "advance"], &["--force", "--reason"]),
    (&["rollout", "rollback"], &["--reason"]),
    (&["token", "revoke"], &["<NAME>"]),
    (&["config", "check"], &["--daemon", "--config"]),
    (&["completions"], &["<SHELL>"]),
    (&["man"], &["--out"]),
    (
        &["status"],
        &["--api-http", "--alerter-http", "--backup-http"],
    ),
    (
        &["trigger", "update"],
        &[
            "<TRIGGER>",
            "--name",
            "--description",
            "--condition",
            "--action",
            "--cooldown",
            "--enable",
            "--disable",
            "--expected-version",
        ],
    ),
];

#[test]
fn every_subcommand_help_lists_its_flags() {
    for (command, flags) in HELP {
        let text = help(command);
        for flag in *flags {
            assert!(
                text.contains(flag),
                "`opsloop {} --help` does not mention {flag}:\n{text}",
                command.join(" ")
            );
        }
        // The global connection flags are available everywhere.
        for global in ["--endpoint", "--token", "--output"] {
            assert!(
                text.contains(global),
                "`opsloop {} --help` lacks {global}",
                command.join(" ")
            );
        }
    }
}

#[test]
fn the_help_table_covers_every_subcommand() {
    let covered: Vec<String> = HELP.iter().map(|(command, _)| command.join(" ")).collect();
    for top in subcommands(&help(&[])) {
        let nested = subcommands(&help(&[&top]));
        if nested.is_empty() {
            assert!(
                covered.contains(&top),
                "no --help check for `opsloop {top}`"
            );
        }
        for sub in nested {
            let name = format!("{top} {sub}");
            assert!(
                covered.contains(&name),
                "no --help check for `opsloop {name}`"
            );
        }
    }
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    let port = listener.local_addr().expect("probe address").port();
    drop(listener);
    port
}

/// Asserts a failed run with exactly one line on stderr starting with `prefix`.
fn assert_one_line_error(out: &Output, prefix: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got success; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr, got: {stderr:?}"
    );
    assert!(
        stderr.starts_with(prefix),
        "expected {prefix:?}, got: {stderr:?}"
    );
}

#[test]
fn unreachable_daemons_give_one_clear_line() {
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let api = format!("UNAVAILABLE: cannot reach api at {endpoint} — is it running? (opsloop dev");
    for args in [
        vec!["proposal", "list"],
        vec!["mission", "show", "0193a6f2-7c1e-7a11-9f00-0123456789ab"],
        vec!["event", "tail"],
        vec!["policy", "list"],
        vec!["summary"],
        vec!["health"],
        vec!["worker", "--kinds", "analyze", "--exec", "cat", "--once"],
        vec!["proposal", "submit", "--title", "t", "--kind", "analyze"],
    ] {
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend(args.iter().copied());
        assert_one_line_error(&opsloop(&all), &api);
    }
    // Each daemon's own default variable is honoured and named in the message.
    for (variable, args, daemon) in [
        (
            "OPSLOOP_ALERTER_ENDPOINT",
            vec!["alerts", "list"],
            "alerter",
        ),
        (
            "OPSLOOP_ALERTER_ENDPOINT",
            vec!["silence", "list"],
            "alerter",
        ),
        (
            "OPSLOOP_ALERTER_ENDPOINT",
            vec!["incident", "list"],
            "alerter",
        ),
        ("OPSLOOP_ALERTER_ENDPOINT", vec!["oncall", "now"], "alerter"),
        (
            "OPSLOOP_BACKUP_ENDPOINT",
            vec!["backup", "list"],
            "backup-agent",
        ),
        (
            "OPSLOOP_HEARTBEAT_ENDPOINT",
            vec!["heartbeat", "run-once"],
            "heartbeat-worker",
        ),
        (
            "OPSLOOP_HEARTBEAT_ENDPOINT",
            vec!["probe", "list"],
            "heartbeat-worker",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_opsloop"))
            .args(&args)
            .env(variable, &endpoint)
            .env_remove("OPSLOOP_TOKEN")
            .output()
            .expect("running the opsloop binary");
        assert_one_line_error(
            &out,
            &format!("UNAVAILABLE: cannot reach {daemon} at {endpoint} — is it running?"),
        );
    }
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    for (args, prefix) in [
        (vec!["proposal", "submit", "--title", "t"], "no steps"),
        (
            vec![
                "proposal",
                "submit",
                "--title",
                "t",
                "--payload",
                "{}",
                "--kind",
                "a",
            ],
            "--payload {} comes before any --kind",
        ),
        (
            vec![
                "proposal",
                "submit",
                "--title",
                "t",
                "--kind",
                "a",
                "--payload",
                "{nope",
            ],
            "--payload of --kind a: not valid JSON",
        ),
        (
            vec!["proposal", "submit", "--kind", "a"],
            "--title is required",
        ),
        (
            vec!["event", "emit", "--kind", "k", "--payload", "[1,"],
            "--payload: not valid JSON",
        ),
        (
            vec!["silence", "add", "nomatcher", "--comment", "c"],
            "\"nomatcher\" is not a matcher",
        ),
        (
            vec![
                "incident", "open", "--level", "P1", "--title", "t", "--label", "service",
            ],
            "--label \"service\": expected name=value",
        ),
        (
            vec!["oncall", "now", "--at", "yesterday"],
            "--at: \"yesterday\" is not a time",
        ),
        (
            vec!["backup", "restore", "x", "--target-url", "postgres://h/db"],
            "restore overwrites the target database",
        ),
    ] {
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend(args.iter().copied());
        assert_one_line_error(&opsloop(&all), prefix);
    }
}

#[test]
fn unsupported_endpoints_and_empty_tokens_are_refused() {
    assert_one_line_error(
        &opsloop(&["--endpoint", "ftp://api.example:50051", "summary"]),
        "INVALID_ARGUMENT: endpoint \"ftp://api.example:50051\": use http:// or https://",
    );
    assert_one_line_error(&opsloop(&["--token", " ", "summary"]), "--token is empty");
    let missing = opsloop(&["--token-file", "/nonexistent/opsloop-token", "summary"]);
    assert_one_line_error(
        &missing,
        "--token-file /nonexistent/opsloop-token: cannot read it",
    );
}

#[test]
fn prune_only_previews() {
    let out = opsloop(&["backup", "prune"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run"));
}

/// Serves one canned HTTP response on a local port; returns the URL and a
/// handle yielding the request that arrived.
fn one_shot_http(response: &'static str) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fake heartbeat");
    let url = format!("http://{}", listener.local_addr().expect("fake address"));
    let handle = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("a request");
        let mut buffer = [0u8; 4096];
        let n = socket.read(&mut buffer).expect("reading the request");
        socket.write_all(response.as_bytes()).expect("answering");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    });
    (url, handle)
}

#[test]
fn heartbeat_run_once_posts_and_reports() {
    let (url, request) = one_shot_http(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 34\r\n\r\n{\"status\":\"ok\",\"phases\":[\"a\",\"b\"]}",
    );
    let out = opsloop(&[
        "--endpoint",
        &url,
        "--token",
        "adm",
        "-o",
        "json",
        "heartbeat",
        "run-once",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(printed["status"], "ok");
    let request = request.join().expect("the fake heartbeat ran");
    assert!(request.starts_with("POST /run HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains("Authorization: Bearer adm\r\n"),
        "{request}"
    );

    let (url, _request) =
        one_shot_http("HTTP/1.1 409 Conflict\r\ncontent-length: 19\r\n\r\na tick is running\r\n");
    assert_one_line_error(
        &opsloop(&["--endpoint", &url, "heartbeat", "run-once"]),
        &format!("HTTP 409 from POST {url}/run: a tick is running — "),
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let body = format!("{{\"padding\": \"{}\"}}", "x".repeat(256 * 1024));
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let (url, _request) = one_shot_http(response);
    let mut child = Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args(["--endpoint", &url, "heartbeat", "run-once"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the opsloop binary");
    // The reader goes away before anything is printed, as with `| head -0`.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waiting for opsloop");
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
