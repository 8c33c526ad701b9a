//! Each daemon binary as a process on PostgreSQL and RabbitMQ: healthy within
//! seconds, ready (database and broker checked), metrics served, and a clean
//! exit 0 on SIGTERM within the drain bound.

use std::time::Duration;

use opsloop_core::bus::testing::{amqp_url, isolated_settings, require_rabbitmq};
use opsloop_core::store::testing::fresh_postgres;
use opsloop_core::testing::{eventually, holds};
use opsloop_e2e::{DaemonProcess, get, wait_for_status};

const DRAIN_MS: u64 = 3_000;

/// A recognisable random secret value.
fn secret(label: &str) -> String {
    format!("{label}-{}-never-logged", uuid::Uuid::new_v4().simple())
}

/// A local webhook receiver that answers every request with 500; counts them.
async fn failing_receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "receiver down",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

/// A self-signed certificate and key (PEM) for `localhost`.
fn tls_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("cert params");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

/// Each daemon as a process with every secret set to a recognisable random
/// value, at debug level, driven through flows that log errors (a wrong
/// token, a malformed `Authorization`, a receiver answering 500, the broker
/// cut and back): healthy, ready, metrics served, a clean exit on SIGTERM,
/// and no secret value in stdout, stderr, the audit file, the events table
/// or `/metrics`.
async fn daemon_starts_serves_and_stops(binary: &str, section: &str, has_grpc: bool) {
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    let broker = opsloop_core::bus::testing::TcpProxy::start(&broker_authority())
        .await
        .expect("broker proxy");
    let bus = isolated_settings(&amqp_url());
    let section = section.to_ascii_uppercase();
    let (receiver, receiver_hits) = failing_receiver().await;

    let db_password = secret("dbpw");
    let admin_token = secret("admin");
    let agent_token = secret("agent");
    let viewer_token = secret("viewer");
    let sender_token = secret("sender");
    let wrong_token = secret("wrong");
    let slack_path = secret("slackhook");
    let discord_path = secret("discordhook");
    let (tls_cert, tls_key) = tls_pair();
    // The middle of the key's base64 body: a substring any leak would carry.
    let tls_key_marker: String = tls_key
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() >= 40)
        .expect("a base64 line")
        .to_owned();
    let database_url_with_password =
        db.url
            .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    assert_ne!(
        database_url_with_password, db.url,
        "test database URL shape"
    );
    // Secrets come in through the environment (the last of the three
    // sources); none of their values may appear anywhere the daemon writes.
    let mut env = vec![
        ("OPSLOOP_DATABASE_URL", database_url_with_password),
        (
            "OPSLOOP_AMQP_URL",
            opsloop_core::bus::testing::via(&amqp_url(), broker.addr),
        ),
        ("OPSLOOP_ADMIN_TOKEN", admin_token.clone()),
        ("OPSLOOP_AGENT_TOKEN", agent_token.clone()),
        ("OPSLOOP_VIEWER_TOKEN", viewer_token.clone()),
        ("OPSLOOP_ALERT_SENDER_TOKEN", sender_token.clone()),
        (
            "OPSLOOP_SLACK_WEBHOOK_URL",
            format!("http://{receiver}/services/{slack_path}"),
        ),
        (
            "OPSLOOP_DISCORD_WEBHOOK_URL",
            format!("http://{receiver}/api/webhooks/{discord_path}"),
        ),
        ("OPSLOOP_TLS_CERT", tls_cert),
        ("OPSLOOP_TLS_KEY", tls_key.clone()),
        // gRPC over TLS with that key; HTTP stays plain for the probes below.
        ("OPSLOOP__TLS__HTTP", "false".to_owned()),
        ("RUST_LOG", "debug,h2=info,hyper=info,tower=info".to_owned()),
        ("OPSLOOP__BUS__KIND", "rabbitmq".to_owned()),
        ("OPSLOOP__BUS__EXCHANGE", bus.exchange.clone()),
        (
            "OPSLOOP__BUS__DEAD_LETTER_EXCHANGE",
            bus.dead_letter_exchange.clone(),
        ),
        ("OPSLOOP__BUS__QUEUE_TYPE", "classic".to_owned()),
        ("OPSLOOP__BUS__QUEUE_EXPIRES_MS", "60000".to_owned()),
        ("OPSLOOP__BUS__RECONNECT_MAX_BACKOFF_MS", "300".to_owned()),
        // Queue names too: a queue left by another test (or run) with other
        // arguments would be refused by the broker.
        (
            "OPSLOOP__ALERTER__QUEUE",
            format!("{}.alerter", bus.exchange),
        ),
        // One route, straight to the failing slack receiver, no group wait.
        ("OPSLOOP__ALERTER__ROUTE__RECEIVER", "slack".to_owned()),
        ("OPSLOOP__ALERTER__ROUTE__GROUP_WAIT", "0s".to_owned()),
        (
            "OPSLOOP__HEARTBEAT__REACTIONS_QUEUE",
            format!("{}.reactions", bus.exchange),
        ),
        ("OPSLOOP__SHUTDOWN__DRAIN_TIMEOUT_MS", DRAIN_MS.to_string()),
    ];
    let http_key = format!("OPSLOOP__{section}__HTTP_ADDR");
    let grpc_key = format!("OPSLOOP__{section}__GRPC_ADDR");
    let audit_dir =
        std::env::temp_dir().join(format!("opsloop-audit-{}", uuid::Uuid::new_v4().simple()));
    let audit_path = audit_dir.join("audit.jsonl");
    env.push((http_key.as_str(), "127.0.0.1:0".to_owned()));
    if has_grpc {
        env.push((grpc_key.as_str(), "127.0.0.1:0".to_owned()));
    }
    env.push(("OPSLOOP__AUDIT__LOG_PATH", audit_path.display().to_string()));
    // Whatever a daemon writes to disk goes to the temporary directory, not
    // the repository (the backup-agent catches up its first backup at start).
    env.push((
        "OPSLOOP__BACKUP__STORE_DIR",
        audit_dir.join("backups").display().to_string(),
    ));

    let started = std::time::Instant::now();
    let mut daemon =
        tokio::task::block_in_place(|| DaemonProcess::start(binary, &env, Duration::from_secs(30)));
    let base = format!("http://{}", daemon.http_addr());
    assert_eq!(daemon.start_line["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(daemon.start_line["level"], "INFO");
    assert!(daemon.start_line["service"].is_string());
    if has_grpc {
        assert_eq!(daemon.start_line["grpc_tls"], true, "{}", daemon.start_line);
    }
    assert_eq!(daemon.start_line["http_tls"], false);

    let (status, body) = get(&format!("{base}/healthz"), Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let ready = wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(20)).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("readyz json");
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    assert_eq!(ready["checks"]["broker"]["status"], "ok");
    assert!(ready["checks"]["database"]["latency_ms"].is_number());
    let ready_after = started.elapsed();
    assert!(
        ready_after < Duration::from_secs(20),
        "ready after {ready_after:?}"
    );

    // Flows that log errors: a wrong bearer token, a bearer token sent as a
    // basic-auth password, a malformed header.
    let client = reqwest::Client::new();
    for authorization in [
        format!("Bearer {wrong_token}"),
        format!(
            "Basic {}",
            base64_encode(format!("prometheus:{wrong_token}").as_bytes())
        ),
        format!("Bearer{wrong_token}"),
    ] {
        let _ = client
            .get(format!("{base}/metrics"))
            .header("authorization", authorization)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("request");
    }
    if binary == "opsloop-alerter" {
        // An alert routed to a receiver that answers 500.
        let alert = serde_json::json!([{
            "labels": {"alertname": "SecretsNeverLogged", "severity": "critical", "service": "test"},
            "annotations": {"summary": "drives a failing delivery"}
        }]);
        let response = client
            .post(format!("{base}/api/v2/alerts"))
            .bearer_auth(&sender_token)
            .json(&alert)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("post alert");
        assert!(response.status().is_success(), "{}", response.status());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while receiver_hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the failing receiver was never called"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The failed attempt is logged (the log is checked for secrets).
        tokio::task::block_in_place(|| {
            daemon.wait_for_line("the failed delivery", Duration::from_secs(20), |line| {
                line.contains("delivery failed")
            })
        });
    }
    // The broker cut and back: the daemon notices (its reconnect warnings
    // are logged and checked for the broker's credentials), then recovers.
    broker.sever();
    let metrics_url = format!("{base}/metrics");
    eventually(
        "the bus connection state reconnecting",
        Duration::from_secs(20),
        || async {
            let (_, metrics) = get_with_token(&metrics_url, &viewer_token).await;
            let reconnecting = metrics.lines().any(|line| {
                line.starts_with(opsloop_core::bus::CONNECTION_STATE)
                    && line.contains("state=\"reconnecting\"")
                    && line.ends_with(" 1")
            });
            holds(reconnecting, || {
                metrics
                    .lines()
                    .filter(|l| l.starts_with(opsloop_core::bus::CONNECTION_STATE))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        },
    )
    .await;
    broker.restore();
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(20)).await;

    // SIGHUP reloads the certificate (unchanged here) and never stops a daemon.
    let hup = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(daemon.child.id().to_string())
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    tokio::task::block_in_place(|| {
        daemon.wait_for_line("SIGHUP handled", Duration::from_secs(10), |line| {
            line.contains("SIGHUP received")
        })
    });
    let (status, _) = get(&format!("{base}/healthz"), Duration::from_secs(5)).await;
    assert_eq!(status, 200, "alive after SIGHUP");

    let (status, metrics) = get_with_token(&format!("{base}/metrics"), &viewer_token).await;
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );

    let exit = daemon.terminate(Duration::from_millis(DRAIN_MS + 5_000));
    let output = format!(
        "{}\n{}\n{}",
        daemon.early_lines.join("\n"),
        daemon.start_line,
        daemon.drain_output()
    );
    assert_eq!(
        exit.code(),
        Some(0),
        "exit status {exit:?}; output:\n{output}"
    );
    assert!(
        output.lines().count() > 10,
        "debug output was captured: {output}"
    );

    let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
    let events = events_text(&db.db).await;
    let secrets = [
        ("database password", db_password.as_str()),
        ("admin token", admin_token.as_str()),
        ("agent token", agent_token.as_str()),
        ("viewer token", viewer_token.as_str()),
        ("alert sender token", sender_token.as_str()),
        ("the wrong token a caller sent", wrong_token.as_str()),
        ("slack webhook URL", slack_path.as_str()),
        ("discord webhook URL", discord_path.as_str()),
        ("TLS key", tls_key_marker.as_str()),
        ("broker credentials", "guest:guest"),
    ];
    for (what, value) in secrets {
        for (place, text) in [
            ("stdout/stderr", output.as_str()),
            ("the audit file", audit.as_str()),
            ("the events table", events.as_str()),
            ("/metrics", metrics.as_str()),
        ] {
            assert!(
                !text.contains(value),
                "{binary}: the {what} appears in {place}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(audit_dir);
    db.cleanup().await;
}

/// Every row of the events table as text.
async fn events_text(db: &sea_orm::DatabaseConnection) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT row_to_json(e)::text AS row FROM events e",
        ))
        .await
        .expect("read events");
    rows.iter()
        .map(|r| r.try_get::<String>("", "row").unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Standard base64 (for a basic-auth header).
fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// GET with `authorization: Bearer <token>`.
async fn get_with_token(url: &str, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_process() {
    daemon_starts_serves_and_stops("opsloop-api", "api", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_worker_process() {
    daemon_starts_serves_and_stops("opsloop-heartbeat-worker", "heartbeat", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerter_process() {
    daemon_starts_serves_and_stops("opsloop-alerter", "alerter", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_agent_process() {
    daemon_starts_serves_and_stops("opsloop-backup-agent", "backup", true).await;
}

#[test]
fn a_bad_config_value_fails_with_one_line_naming_the_key() {
    let output = std::process::Command::new(opsloop_e2e::binary("opsloop-api"))
        .env_clear()
        .env("OPSLOOP__DATABASE__MAX_CONNECTIONS", "plenty")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("database.max_connections"), "{stderr}");
}

/// Whether `READY=1` reaches `socket` within `within`.
fn ready_within(socket: &std::os::unix::net::UnixDatagram, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        socket.set_read_timeout(Some(left)).expect("timeout");
        match socket.recv(&mut buf) {
            Ok(n) => {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}

/// `READY=1` semantics with a fake `NOTIFY_SOCKET` and the broker behind a
/// severed proxy: the api is ready without the broker (its outbox keeps
/// events), the alerter and the heartbeat-worker only once the broker answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_broker_only_where_the_work_needs_it() {
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    let proxy = opsloop_core::bus::testing::TcpProxy::start(&broker_authority())
        .await
        .expect("proxy");
    proxy.sever();
    let bus_url = opsloop_core::bus::testing::via(&amqp_url(), proxy.addr);
    let bus = isolated_settings(&bus_url);
    let dir = tempfile_dir();
    let mut daemons = Vec::new();
    for (binary, section, needs_broker) in [
        ("opsloop-api", "API", false),
        ("opsloop-alerter", "ALERTER", true),
        ("opsloop-heartbeat-worker", "HEARTBEAT", true),
    ] {
        let socket_path = dir.join(format!("{binary}.notify"));
        let socket =
            std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
        let http_key = format!("OPSLOOP__{section}__HTTP_ADDR");
        let grpc_key = format!("OPSLOOP__{section}__GRPC_ADDR");
        let mut env = vec![
            (http_key.as_str(), "127.0.0.1:0".to_owned()),
            ("NOTIFY_SOCKET", socket_path.display().to_string()),
            ("OPSLOOP_DATABASE_URL", db.url.clone()),
            ("OPSLOOP__BUS__KIND", "rabbitmq".to_owned()),
            ("OPSLOOP__BUS__URL", bus_url.clone()),
            ("OPSLOOP__BUS__EXCHANGE", bus.exchange.clone()),
            (
                "OPSLOOP__BUS__DEAD_LETTER_EXCHANGE",
                bus.dead_letter_exchange.clone(),
            ),
            ("OPSLOOP__BUS__QUEUE_TYPE", "classic".to_owned()),
            ("OPSLOOP__BUS__QUEUE_EXPIRES_MS", "60000".to_owned()),
            ("OPSLOOP__BUS__RECONNECT_MAX_BACKOFF_MS", "300".to_owned()),
            (
                "OPSLOOP__ALERTER__QUEUE",
                format!("{}.alerter", bus.exchange),
            ),
            (
                "OPSLOOP__HEARTBEAT__REACTIONS_QUEUE",
                format!("{}.reactions", bus.exchange),
            ),
            (
                "OPSLOOP__AUDIT__LOG_PATH",
                dir.join(format!("{binary}.audit.jsonl"))
                    .display()
                    .to_string(),
            ),
            ("OPSLOOP__SHUTDOWN__DRAIN_TIMEOUT_MS", "2000".to_owned()),
        ];
        if section != "HEARTBEAT" {
            env.push((grpc_key.as_str(), "127.0.0.1:0".to_owned()));
        }
        let daemon = tokio::task::block_in_place(|| {
            DaemonProcess::start(binary, &env, Duration::from_secs(30))
        });
        daemons.push((binary, needs_broker, socket, daemon));
    }
    // Started (listening) with the broker away: the api is ready, the others not.
    for (binary, needs_broker, socket, _) in &daemons {
        let ready = tokio::task::block_in_place(|| ready_within(socket, Duration::from_secs(3)));
        assert_eq!(
            ready, !needs_broker,
            "{binary}: READY=1 with the broker unreachable must be {}",
            !needs_broker
        );
    }
    proxy.restore();
    for (binary, needs_broker, socket, _) in &daemons {
        if *needs_broker {
            let ready =
                tokio::task::block_in_place(|| ready_within(socket, Duration::from_secs(20)));
            assert!(ready, "{binary}: READY=1 once the broker answers");
        }
    }
    for (_, _, _, mut daemon) in daemons {
        daemon.terminate(Duration::from_secs(10));
    }
    let _ = std::fs::remove_dir_all(&dir);
    db.cleanup().await;
}

/// `host:port` of the test broker.
fn broker_authority() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

/// Runs `binary --config <file>` with `config` as the file's text, in an
/// empty working directory and a clean environment; returns the exit code,
/// stderr, and what the directory holds afterwards besides the config file.
fn run_with_config(
    binary: &str,
    config: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, Vec<String>) {
    let dir = tempfile_dir();
    let path = dir.join("opsloop.toml");
    std::fs::write(&path, config).expect("write config");
    let output = std::process::Command::new(opsloop_e2e::binary(binary))
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(&dir)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "opsloop.toml")
        .collect();
    left.sort();
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        left,
    )
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("opsloop-cfg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[test]
fn a_misspelled_section_fails_before_any_file_or_database_is_created() {
    for binary in [
        "opsloop-api",
        "opsloop-heartbeat-worker",
        "opsloop-alerter",
        "opsloop-backup-agent",
    ] {
        let (code, stderr, left) = run_with_config(
            binary,
            "[databse]\nurl = \"postgres://postgres@127.0.0.1:5432/opsloop\"\n",
            &[],
        );
        assert_eq!(code, Some(2), "{binary}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{binary}: {stderr}");
        assert!(stderr.contains("databse"), "{binary}: {stderr}");
        assert!(
            stderr.contains("database"),
            "names what is accepted: {stderr}"
        );
        assert!(
            left.is_empty(),
            "{binary} created {left:?} in its working directory"
        );
    }
}

#[test]
fn an_unknown_key_in_a_daemon_section_fails_before_migrations() {
    for (binary, section, key) in [
        ("opsloop-api", "api", "grpc_adress"),
        ("opsloop-heartbeat-worker", "heartbeat", "intervl_secs"),
        ("opsloop-alerter", "alerter", "resolve_timout"),
        ("opsloop-backup-agent", "backup", "schedul"),
    ] {
        // The default database is SQLite in the working directory: had the
        // daemon connected or migrated, `var/opsloop.db` would exist.
        let (code, stderr, left) =
            run_with_config(binary, &format!("[{section}]\n{key} = \"x\"\n"), &[]);
        assert_eq!(code, Some(2), "{binary}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{binary}: {stderr}");
        assert!(
            stderr.contains(&format!("{section}.{key}")),
            "{binary} names the key: {stderr}"
        );
        assert!(
            stderr.contains("expected one of"),
            "{binary} says what is accepted: {stderr}"
        );
        assert!(left.is_empty(), "{binary} created {left:?} before refusing");
    }
}

#[test]
fn production_refuses_the_embedded_defaults_unless_allowed() {
    let (code, stderr, left) =
        run_with_config("opsloop-api", "environment = \"production\"\n", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for named in [
        "SQLite",
        "in-process bus",
        "no tokens",
        "allow_insecure_defaults",
    ] {
        assert!(stderr.contains(named), "names {named}: {stderr}");
    }
    assert!(left.is_empty(), "{left:?}");

    // Tokens and real services configured: nothing insecure is left, so
    // the refusal is gone (the daemon then fails later, on the closed port).
    let (code, stderr, _) = run_with_config(
        "opsloop-api",
        "environment = \"production\"\n[database]\nurl = \"postgres://postgres@127.0.0.1:1/none\"\nconnect_timeout_ms = 200\nstart_wait_secs = 0\nmigrate_on_start = false\n[bus]\nkind = \"rabbitmq\"\n",
        &[("OPSLOOP_ADMIN_TOKEN", "a-token")],
    );
    assert!(!stderr.contains("refuses"), "{stderr}");
    assert_eq!(
        code,
        Some(1),
        "fails on the unreachable database instead: {stderr}"
    );

    // The explicit escape hatch starts, and warns.
    let dir = tempfile_dir();
    std::fs::write(
        dir.join("opsloop.toml"),
        "environment = \"production\"\nallow_insecure_defaults = true\n[api]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n[audit]\nlog_path = \"audit.jsonl\"\n",
    )
    .expect("write config");
    let mut command = std::process::Command::new(opsloop_e2e::binary("opsloop-api"));
    command
        .env_clear()
        .current_dir(&dir)
        .arg("--config")
        .arg(dir.join("opsloop.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut warned = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.expect("line");
        if line.contains("allow_insecure_defaults") && line.contains("WARN") {
            warned = true;
        }
        if line.contains("api started") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        warned,
        "a start with allow_insecure_defaults logs a warning"
    );
}

/// Production with no bootstrap token secret: a named token in the database
/// is enough, none at all is refused with one line and exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn production_counts_named_tokens_as_tokens() {
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    opsloop_core::store::migrate_up(&db.db)
        .await
        .expect("migrate");
    let config = format!(
        "environment = \"production\"\n[database]\nurl = \"{}\"\n[bus]\nkind = \"rabbitmq\"\nurl = \"{}\"\n[api]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n[audit]\nlog_path = \"audit.jsonl\"\n",
        db.url,
        amqp_url()
    );
    let (code, stderr, _) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run_with_config("opsloop-api", &config, &[])
    })
    .await
    .expect("join");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no tokens") && stderr.contains("opsloop token"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    opsloop_core::auth::create_token(
        &db.db,
        "fleet-a",
        opsloop_core::access::Role::Agent,
        None,
        "test",
        None,
        chrono::Utc::now(),
    )
    .await
    .expect("create token");
    let dir = tempfile_dir();
    std::fs::write(dir.join("opsloop.toml"), &config).expect("write config");
    let mut child = std::process::Command::new(opsloop_e2e::binary("opsloop-api"))
        .env_clear()
        .current_dir(&dir)
        .arg("--config")
        .arg(dir.join("opsloop.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let started = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .any(|line| line.contains("api started"))
    })
    .await
    .expect("join");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(started, "a named token lets production start");
}

/// A host where PostgreSQL comes up after the daemons: the api retries the
/// unreachable database (warning each time) instead of exiting, then starts
/// and becomes ready on its own once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_its_database_waits_for_it() {
    let db = fresh_postgres().await;
    let proxy = opsloop_core::bus::testing::TcpProxy::start("127.0.0.1:5432")
        .await
        .expect("proxy");
    proxy.sever();
    let env = [
        (
            "OPSLOOP__DATABASE__URL",
            opsloop_core::bus::testing::via(&db.url, proxy.addr),
        ),
        ("OPSLOOP__DATABASE__CONNECT_TIMEOUT_MS", "500".to_owned()),
        ("OPSLOOP__DATABASE__START_WAIT_SECS", "120".to_owned()),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        (
            "OPSLOOP__AUDIT__LOG_PATH",
            tempfile_dir().join("audit.jsonl").display().to_string(),
        ),
    ];
    let starting = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
        DaemonProcess::start("opsloop-api", &env, Duration::from_secs(90))
    });
    eventually(
        "a second attempt on the unreachable database",
        Duration::from_secs(30),
        || async {
            let refused = proxy.refused_connections();
            holds(refused >= 2 && !starting.is_finished(), || {
                format!(
                    "{refused} attempts; start returned: {}",
                    starting.is_finished()
                )
            })
        },
    )
    .await;
    proxy.restore();
    let daemon = starting
        .await
        .expect("the api started once the database answered");
    assert!(
        daemon
            .early_lines
            .iter()
            .any(|line| line.contains("database unreachable at start; retrying")),
        "{:?}",
        daemon.early_lines
    );
    let base = format!("http://{}", daemon.http_addr());
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(20)).await;
    drop(daemon);
    db.cleanup().await;
}

#[test]
fn help_and_version() {
    for binary in [
        "opsloop-api",
        "opsloop-heartbeat-worker",
        "opsloop-alerter",
        "opsloop-backup-agent",
        "opsloop",
    ] {
        let help = std::process::Command::new(opsloop_e2e::binary(binary))
            .arg("--help")
            .output()
            .expect("run");
        assert!(help.status.success(), "{binary} --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--config"),
            "{binary} --help names --config"
        );
        let version = std::process::Command::new(opsloop_e2e::binary(binary))
            .arg("--version")
            .output()
            .expect("run");
        assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}
