//! Uptime probes against real local servers (HTTP, TCP, TLS with
//! certificates generated here) on a fresh PostgreSQL per test, with an
//! injected clock: each round of checks is run with an explicit `now`.
//! Also the config path refusing bad probes by name and field.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Datelike, Duration, Utc};
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_core::testing::eventually;
use opsloop_heartbeat_worker::HeartbeatSettings;
use opsloop_heartbeat_worker::probe_config::ProbeSpec;
use opsloop_heartbeat_worker::probes::{self, ProbeRunner};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::Value;
use tokio::net::TcpListener;

// ---- helpers -------------------------------------------------------------

fn settings(probes: Vec<ProbeSpec>) -> HeartbeatSettings {
    HeartbeatSettings {
        probes,
        ..Default::default()
    }
}

fn probe(name: &str, kind: &str, target: &str) -> ProbeSpec {
    ProbeSpec {
        name: name.into(),
        kind: kind.into(),
        target: target.into(),
        interval_secs: 10,
        timeout_ms: 5_000,
        ..Default::default()
    }
}

fn t0() -> DateTime<Utc> {
    Utc::now() - Duration::hours(1)
}

/// An HTTP server answering `GET /health` with the status in `status`.
async fn http_server(status: Arc<AtomicU16>) -> std::net::SocketAddr {
    let app = Router::new().route(
        "/health",
        get(move || {
            let status = status.clone();
            async move {
                (
                    StatusCode::from_u16(status.load(Ordering::SeqCst)).expect("status"),
                    "service ok",
                )
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn events(db: &DatabaseConnection, kind: &str) -> Vec<Value> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT payload FROM events WHERE kind = $1 ORDER BY seq",
            vec![kind.into()],
        ))
        .await
        .expect("events");
    rows.into_iter()
        .map(|r| r.try_get::<Value>("", "payload").expect("payload"))
        .collect()
}

async fn alerts(db: &DatabaseConnection, alertname: &str) -> Vec<Value> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT payload FROM outbox WHERE routing_key LIKE 'alert.%' ORDER BY id",
        ))
        .await
        .expect("outbox");
    rows.into_iter()
        .map(|r| r.try_get::<Value>("", "payload").expect("payload"))
        .filter(|p| p["labels"]["alertname"] == alertname)
        .collect()
}

async fn history_rows(db: &DatabaseConnection, probe: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM probe_history WHERE probe = $1",
            vec![probe.into()],
        ))
        .await
        .expect("count")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n")
}

// ---- tests ---------------------------------------------------------------

#[tokio::test]
async fn http_probe_goes_down_after_retries_alerts_once_and_recovers() {
    http_down_and_up(fresh_postgres().await).await;
}

/// The same on SQLite (`opsloop dev`).
#[tokio::test]
async fn http_probe_goes_down_and_recovers_on_sqlite() {
    http_down_and_up(fresh_sqlite().await).await;
}

async fn http_down_and_up(test_db: TestDb) {
    let db = &test_db.db;
    let status = Arc::new(AtomicU16::new(500));
    let addr = http_server(status.clone()).await;
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 2,
            severity: "critical".into(),
            body_contains: Some("ok".into()),
            ..probe("web", "http", &format!("http://{addr}/health"))
        }]),
    )
    .expect("runner");
    let start = t0();
    let at = |s: i64| start + Duration::seconds(s);

    let first = runner.run_due(at(0)).await;
    assert_eq!(first.len(), 1);
    assert!(!first[0].ok);
    assert!(
        first[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("status 500")),
        "{first:?}"
    );
    assert_eq!(first[0].transition, None, "one failure is not down yet");
    assert!(
        runner.run_due(at(5)).await.is_empty(),
        "not due before its interval"
    );
    let second = runner.run_due(at(10)).await;
    assert_eq!(second[0].transition, Some("down"));
    assert_eq!(second[0].status, "down");
    for s in [20, 30, 40] {
        let more = runner.run_due(at(s)).await;
        assert_eq!((more[0].status, more[0].transition), ("down", None));
    }
    let down = events(db, "probe.down").await;
    assert_eq!(down.len(), 1, "one probe.down for one outage");
    assert_eq!(down[0]["probe"], "web");
    assert_eq!(down[0]["failures"], 2);
    let fired = alerts(db, "ProbeDown").await;
    assert_eq!(fired.len(), 1, "one alert, not one per failed check");
    assert_eq!(fired[0]["labels"]["probe"], "web");
    assert_eq!(fired[0]["labels"]["severity"], "critical");
    assert_eq!(fired[0]["status"], "firing");
    let ends: DateTime<Utc> = fired[0]["endsAt"]
        .as_str()
        .expect("endsAt")
        .parse()
        .expect("time");
    assert!(
        ends > at(0) + Duration::days(365),
        "firing until resolved by the probe"
    );

    status.store(200, Ordering::SeqCst);
    let up = runner.run_due(at(50)).await;
    assert_eq!((up[0].ok, up[0].transition), (true, Some("up")));
    assert_eq!(runner.run_due(at(60)).await[0].transition, None);
    let ups = events(db, "probe.up").await;
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0]["down_seconds"], 40);
    let all = alerts(db, "ProbeDown").await;
    assert_eq!(all.len(), 2, "the firing alert and its resolution");
    assert_eq!(all[1]["status"], "resolved");
    assert_eq!(
        all[1]["labels"], all[0]["labels"],
        "resolves the same alert"
    );
    assert_eq!(all[1]["startsAt"], all[0]["startsAt"]);
    assert_eq!(events(db, "probe.down").await.len(), 1);

    let state = probes::stored_state(db, "web")
        .await
        .expect("state")
        .expect("row");
    assert_eq!(state.status, "up");
    assert_eq!(state.consecutive_failures, 0);
    // Seven checks in two minutes: compact per-minute history.
    assert_eq!(history_rows(db, "web").await, 2);
    // Retention: everything is older than 90 days a year later.
    assert_eq!(
        runner
            .purge_history(at(60) + Duration::days(89))
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        runner
            .purge_history(at(60) + Duration::days(91))
            .await
            .expect("purge"),
        2
    );
    test_db.cleanup().await;
}

#[tokio::test]
async fn tcp_probe_goes_down_when_the_port_closes() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepting = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 1,
            ..probe("db-port", "tcp", &addr.to_string())
        }]),
    )
    .expect("runner");
    let start = t0();
    let open = runner.check_now("db-port", start).await.expect("checked");
    assert!(open.ok, "{open:?}");
    assert_eq!(open.status, "up");
    accepting.abort();
    let _ = accepting.await;
    let closed = runner
        .check_now("db-port", start + Duration::seconds(10))
        .await
        .expect("checked");
    assert!(!closed.ok);
    assert!(
        closed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot connect")),
        "{closed:?}"
    );
    assert_eq!(closed.transition, Some("down"));
    assert_eq!(events(db, "probe.down").await.len(), 1);
    assert_eq!(alerts(db, "ProbeDown").await.len(), 1);
    test_db.cleanup().await;
}

/// A listener that accepts and never answers.
async fn black_hole() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_hanging_target_times_out_without_blocking_another_probe() {
    let test_db = fresh_postgres().await;
    let db = test_db.db.clone();
    let hole = black_hole().await;
    let healthy = http_server(Arc::new(AtomicU16::new(200))).await;
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![
            ProbeSpec {
                retries: 1,
                timeout_ms: 3_000,
                ..probe("hang", "http", &format!("http://{hole}/health"))
            },
            probe("fast", "http", &format!("http://{healthy}/health")),
        ]),
    )
    .expect("runner");
    let now = t0();
    let round = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_due(now).await }
    });
    // The fast probe is recorded while the hanging one is still in flight.
    eventually(
        "the fast probe recorded",
        StdDuration::from_secs(10),
        || {
            let db = db.clone();
            let runner = runner.clone();
            async move {
                let state = probes::stored_state(&db, "fast")
                    .await
                    .map_err(|e| e.to_string())?;
                match state {
                    Some(s) if s.status == "up" => {
                        let in_flight = runner.in_flight();
                        if in_flight == ["hang"] {
                            Ok(())
                        } else {
                            Err(format!(
                                "fast is up but in flight: {in_flight:?} (hang finished first?)"
                            ))
                        }
                    }
                    other => Err(format!("fast: {other:?}")),
                }
            }
        },
    )
    .await;
    // A second round meanwhile does not start the hanging probe again.
    let second = runner.run_due(now + Duration::seconds(10)).await;
    assert_eq!(
        second.iter().map(|r| r.probe.as_str()).collect::<Vec<_>>(),
        ["fast"]
    );
    let reports = round.await.expect("round");
    let hang = reports.iter().find(|r| r.probe == "hang").expect("hang");
    assert!(!hang.ok);
    assert!(
        hang.error
            .as_deref()
            .is_some_and(|e| e.contains("timed out after 3000 ms")),
        "{hang:?}"
    );
    assert_eq!(hang.transition, Some("down"));
    assert!(runner.in_flight().is_empty());
    test_db.cleanup().await;
}

// ---- TLS -------------------------------------------------------------------

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };
    use rustls::ServerConfig;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Mutex;

    pub(crate) struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        pub(crate) fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("probe test CA {name}"));
            let key = KeyPair::generate().expect("CA key");
            Self {
                issuer: CertifiedIssuer::self_signed(params, key).expect("CA cert"),
            }
        }

        pub(crate) fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// A `localhost` leaf expiring at midnight UTC `days` from today.
        pub(crate) fn leaf(&self, days: i64) -> Arc<ServerConfig> {
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, "localhost");
            params.not_before = date_time_ymd(2020, 1, 1);
            let end = (Utc::now() + Duration::days(days)).date_naive();
            params.not_after = date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("sign");
            let chain = vec![CertificateDer::from(cert.der().to_vec())];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            Arc::new(
                ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config"),
            )
        }
    }

    /// A TLS server presenting whichever certificate `current` holds at
    /// each handshake (a CDN rolling a certificate out node by node).
    pub(crate) async fn server(current: Arc<Mutex<Arc<ServerConfig>>>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let config = current.lock().expect("lock").clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) =
                        tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                    {
                        use tokio::io::AsyncReadExt;
                        let mut buf = [0u8; 16];
                        let _ = tls.read(&mut buf).await;
                    }
                });
            }
        });
        port
    }
}

#[tokio::test]
async fn certificate_notice_once_per_threshold_across_checks_and_a_flip_flop() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = tls::Ca::new("trusted");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let old = ca.leaf(10);
    let renewed = ca.leaf(90);
    let untrusted = tls::Ca::new("other").leaf(90);
    let current = Arc::new(std::sync::Mutex::new(old.clone()));
    let port = tls::server(current.clone()).await;
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            ca_file: Some(ca_path.display().to_string()),
            retries: 1,
            ..probe("site-cert", "tls", &format!("localhost:{port}"))
        }]),
    )
    .expect("runner");
    let start = Utc::now();
    let checks = AtomicUsize::new(0);
    let check = |config: &Arc<rustls::ServerConfig>| {
        *current.lock().expect("lock") = config.clone();
        let n = checks.fetch_add(1, Ordering::SeqCst) as i64;
        let runner = runner.clone();
        async move {
            runner
                .check_now("site-cert", start + Duration::seconds(10 * n))
                .await
                .expect("checked")
        }
    };

    let first = check(&old).await;
    assert!(first.ok, "{first:?}");
    assert_eq!(
        first.cert_notice_days,
        Some(14),
        "10 days left: the 14-day notice (not 21 as well)"
    );
    let fingerprint_old = probes::stored_state(db, "site-cert")
        .await
        .expect("state")
        .expect("row")
        .cert_fingerprint
        .expect("fingerprint");
    // Repeated checks and a flip-flop between the old and the renewed
    // certificate: no further notice.
    for config in [&old, &renewed, &old, &renewed, &old, &old] {
        let report = check(config).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.cert_notice_days, None, "{report:?}");
    }
    let state = probes::stored_state(db, "site-cert")
        .await
        .expect("state")
        .expect("row");
    assert_eq!(
        state.cert_fingerprint.as_deref(),
        Some(fingerprint_old.as_str())
    );
    let notices = events(db, "probe.certificate_expiring").await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["threshold_days"], 14);
    assert_eq!(notices[0]["fingerprint"], fingerprint_old.as_str());
    assert_eq!(alerts(db, "ProbeCertificateExpiring").await.len(), 1);
    assert!(events(db, "probe.down").await.is_empty());

    // A chain not valid for the host (unknown issuer) fails the check.
    let bad = check(&untrusted).await;
    assert!(!bad.ok);
    assert!(
        bad.error
            .as_deref()
            .is_some_and(|e| e.contains("TLS handshake")),
        "{bad:?}"
    );
    assert_eq!(bad.transition, Some("down"));
    test_db.cleanup().await;
}

#[tokio::test]
async fn heartbeat_probe_is_down_without_pings_and_up_with_one() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 1,
            absent_minutes: 5,
            ..probe("nightly-job", "heartbeat", "")
        }]),
    )
    .expect("runner");
    let start = t0();
    let at = |m: i64| start + Duration::minutes(m);
    assert!(runner.check_now("nightly-job", at(0)).await.expect("c").ok);
    assert!(runner.check_now("nightly-job", at(4)).await.expect("c").ok);
    let late = runner.check_now("nightly-job", at(5)).await.expect("c");
    assert_eq!((late.ok, late.transition), (false, Some("down")));
    probes::record_ping(db, "nightly-job", at(6))
        .await
        .expect("ping");
    let back = runner.check_now("nightly-job", at(7)).await.expect("c");
    assert_eq!((back.ok, back.transition), (true, Some("up")));
    let again = runner.check_now("nightly-job", at(11)).await.expect("c");
    assert_eq!((again.ok, again.status), (false, "down"));
    test_db.cleanup().await;
}

#[test]
fn bad_probes_in_the_config_file_name_the_probe_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "kind = \"smtp\"\ntarget = \"mail:25\"",
            "heartbeat.probes[p].kind",
            "smtp",
        ),
        (
            "kind = \"http\"\ntarget = \"not a url\"",
            "heartbeat.probes[p].target",
            "not a URL",
        ),
        (
            "kind = \"tcp\"\ntarget = \"db:5432\"\ninterval_secs = 5",
            "heartbeat.probes[p].interval_secs",
            "at least 10 s",
        ),
    ];
    for (body, key, reason) in cases {
        let path = dir.path().join("opsloop.toml");
        std::fs::write(
            &path,
            format!("[[heartbeat.probes]]\nname = \"p\"\n{body}\n"),
        )
        .expect("write");
        let config = opsloop_core::config::load(&opsloop_core::config::ConfigSources {
            file: Some(path),
            use_default_file: false,
            env: Some(Default::default()),
        })
        .expect("the file loads");
        let error = opsloop_heartbeat_worker::config::check_config(&config)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains(key) && error.contains(reason),
            "{key}: {error}"
        );
    }
    // And a good one passes, with its defaults.
    let path = dir.path().join("opsloop.toml");
    std::fs::write(
        &path,
        "[[heartbeat.probes]]\nname = \"api\"\nkind = \"http\"\ntarget = \"https://example.com/healthz\"\nexpected_status = [200, 204]\n",
    )
    .expect("write");
    let config = opsloop_core::config::load(&opsloop_core::config::ConfigSources {
        file: Some(path),
        use_default_file: false,
        env: Some(Default::default()),
    })
    .expect("loads");
    opsloop_heartbeat_worker::config::check_config(&config).expect("valid");
    let settings: HeartbeatSettings = config.section("heartbeat").expect("section");
    assert_eq!(settings.probes[0].interval_secs, 60);
    assert_eq!(settings.probes[0].expected_status, [200, 204]);
}

async fn post(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn the_daemon_runs_its_probes_as_leader_and_takes_pings() {
    let t = fresh_postgres().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let daemon = common::RunningHeartbeat::start(
        &t.url,
        "probes",
        &format!(
            "[[heartbeat.probes]]\nname = \"port\"\nkind = \"tcp\"\ntarget = \"{target}\"\n\
             [[heartbeat.probes]]\nname = \"job\"\nkind = \"heartbeat\"\n"
        ),
    )
    .await;
    let addr = daemon.addr;

    let db = t.db.clone();
    eventually(
        "the leader checked the tcp probe",
        StdDuration::from_secs(20),
        || {
            let db = db.clone();
            async move {
                match probes::stored_state(&db, "port")
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(s) if s.status == "up" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let denied = post(addr, "/probes/job/ping", None).await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let pinged = post(addr, "/probes/job/ping", Some(common::ADMIN_TOKEN)).await;
    assert!(pinged.starts_with("HTTP/1.1 204"), "{pinged}");
    let unknown = post(addr, "/probes/port/ping", Some(common::ADMIN_TOKEN)).await;
    assert!(
        unknown.starts_with("HTTP/1.1 404"),
        "only heartbeat probes take pings: {unknown}"
    );
    let row =
        t.db.query_one_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM probe_state WHERE name = 'job' AND last_ping_at IS NOT NULL",
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.try_get::<i64>("", "n").expect("n"), 1);
    daemon.stop().await;
    t.cleanup().await;
}

#[tokio::test]
async fn maintenance_holds_back_down_alerts_until_the_window_ends() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let web_status = Arc::new(AtomicU16::new(500));
    let blip_status = Arc::new(AtomicU16::new(500));
    let web = http_server(web_status.clone()).await;
    let blip = http_server(blip_status.clone()).await;
    let start = t0();
    let at = |s: i64| start + Duration::seconds(s);
    let runner = ProbeRunner::new(
        db.clone(),
        &HeartbeatSettings {
            maintenance: vec![opsloop_heartbeat_worker::probe_config::MaintenanceSpec {
                start: at(0).to_rfc3339(),
                end: at(60).to_rfc3339(),
                probes: Vec::new(),
                reason: "database upgrade".into(),
            }],
            ..settings(vec![
                ProbeSpec {
                    retries: 1,
                    ..probe("web", "http", &format!("http://{web}/health"))
                },
                ProbeSpec {
                    retries: 1,
                    ..probe("blip", "http", &format!("http://{blip}/health"))
                },
            ])
        },
    )
    .expect("runner");
    let down_alerts = |name: &'static str| async move {
        alerts(db, "ProbeDown")
            .await
            .into_iter()
            .filter(|a| a["labels"]["probe"] == name)
            .count()
    };

    // Both go down inside the window: events, no alerts.
    let first = runner.run_due(at(0)).await;
    for report in &first {
        assert_eq!(
            (report.transition, report.alert, report.maintenance),
            (Some("down"), None, true),
            "{report:?}"
        );
    }
    let down = events(db, "probe.down").await;
    assert_eq!(down.len(), 2);
    assert!(down.iter().all(|e| e["maintenance"] == true), "{down:?}");
    // blip recovers inside the window: nothing to resolve.
    blip_status.store(200, Ordering::SeqCst);
    let second = runner.run_due(at(30)).await;
    let blip_report = second.iter().find(|r| r.probe == "blip").expect("blip");
    assert_eq!(
        (blip_report.transition, blip_report.alert),
        (Some("up"), None)
    );
    assert_eq!(down_alerts("web").await + down_alerts("blip").await, 0);

    // The window ends with web still down: its alert now, once.
    let late = runner.run_due(at(60)).await;
    let web_late = late.iter().find(|r| r.probe == "web").expect("web");
    assert_eq!(
        (web_late.transition, web_late.alert, web_late.maintenance),
        (None, Some("firing"), false)
    );
    runner.run_due(at(70)).await;
    assert_eq!(down_alerts("web").await, 1);
    web_status.store(200, Ordering::SeqCst);
    let recovered = runner.run_due(at(80)).await;
    let web_up = recovered.iter().find(|r| r.probe == "web").expect("web");
    assert_eq!(
        (web_up.transition, web_up.alert),
        (Some("up"), Some("resolved"))
    );
    let web_alerts: Vec<Value> = alerts(db, "ProbeDown")
        .await
        .into_iter()
        .filter(|a| a["labels"]["probe"] == "web")
        .collect();
    assert_eq!(web_alerts.len(), 2);
    assert_eq!(web_alerts[1]["status"], "resolved");
    assert_eq!(down_alerts("blip").await, 0);

    // After the window an outage alerts at once again.
    blip_status.store(500, Ordering::SeqCst);
    let after = runner.run_due(at(90)).await;
    let blip_after = after.iter().find(|r| r.probe == "blip").expect("blip");
    assert_eq!(
        (blip_after.transition, blip_after.alert),
        (Some("down"), Some("firing"))
    );
    test_db.cleanup().await;
}

#[tokio::test]
async fn grpc_health_probe_is_down_while_not_serving_and_up_when_serving() {
    use tonic_health::ServingStatus;
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("opsloop.Test", ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 1,
            grpc_service: "opsloop.Test".into(),
            ..probe("grpc", "grpc_health", &format!("http://{addr}"))
        }]),
    )
    .expect("runner");
    let start = t0();
    let down = runner.check_now("grpc", start).await.expect("checked");
    assert_eq!(
        (down.ok, down.transition),
        (false, Some("down")),
        "{down:?}"
    );
    assert!(
        down.error
            .as_deref()
            .is_some_and(|e| e.contains("NOT_SERVING")),
        "{down:?}"
    );
    reporter
        .set_service_status("opsloop.Test", ServingStatus::Serving)
        .await;
    let up = runner
        .check_now("grpc", start + Duration::seconds(10))
        .await
        .expect("checked");
    assert_eq!((up.ok, up.transition), (true, Some("up")), "{up:?}");
    test_db.cleanup().await;
}

// ---- upstream dependencies: paused step kinds ------------------------------

async fn submit_one(db: &DatabaseConnection, kind: &str, at: DateTime<Utc>) {
    use opsloop_core::domain::input::{NewProposal, ProposalSource, StepKind, StepSpec};
    let outcome = opsloop_core::workflow::submit_proposal(
        db,
        NewProposal {
            title: format!("{kind} work"),
            source: ProposalSource::Api,
            agent: "tester".into(),
            dedupe_key: None,
            steps: vec![StepSpec {
                kind: StepKind::parse("kind", kind).expect("kind"),
                payload: serde_json::json!({}),
                max_attempts: None,
            }],
            parallel: false,
            metadata: serde_json::json!({}),
            trace_id: None,
        },
        at,
    )
    .await
    .expect("submit");
    assert_eq!(
        outcome.proposal.proposal.status, "approved",
        "auto-approved"
    );
}

/// What a worker asking for `kinds` gets: the claimed step's kind,
/// `nothing` or `emergency_stop`.
async fn claim_kind(db: &DatabaseConnection, kinds: &[&str], at: DateTime<Utc>) -> String {
    use opsloop_core::domain::input::StepKind;
    use opsloop_core::workflow::ClaimOutcome;
    let kinds: Vec<StepKind> = kinds
        .iter()
        .map(|k| StepKind::parse("kind", k).expect("kind"))
        .collect();
    match opsloop_core::workflow::claim_step(db, "worker-1", &kinds, Some(60), at)
        .await
        .expect("claim")
    {
        ClaimOutcome::Claimed(step) => step.kind,
        ClaimOutcome::Nothing => "nothing".into(),
        ClaimOutcome::EmergencyStop => "emergency_stop".into(),
        ClaimOutcome::RateLimited(limit) => format!("rate_limited:{}", limit.resource),
    }
}

#[tokio::test]
async fn a_kind_is_paused_while_its_upstream_probe_is_down_on_postgres() {
    kind_paused_while_down(fresh_postgres().await).await;
}

/// The same on SQLite (its claim is a transaction, not one statement).
#[tokio::test]
async fn a_kind_is_paused_while_its_upstream_probe_is_down_on_sqlite() {
    kind_paused_while_down(fresh_sqlite().await).await;
}

async fn kind_paused_while_down(test_db: TestDb) {
    let db = &test_db.db;
    let status = Arc::new(AtomicU16::new(500));
    let upstream = http_server(status.clone()).await;
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 2,
            depends_kinds: vec!["notify".into()],
            ..probe("payments", "http", &format!("http://{upstream}/health"))
        }]),
    )
    .expect("runner");
    let start = t0();
    let at = |s: i64| start + Duration::seconds(s);
    for _ in 0..2 {
        submit_one(db, "notify", at(0)).await;
    }
    submit_one(db, "summarize", at(0)).await;

    // One failure is not down: nothing paused yet.
    let first = runner.check_now("payments", at(0)).await.expect("checked");
    assert!(first.paused_kinds.is_empty(), "{first:?}");
    assert_eq!(claim_kind(db, &["notify"], at(1)).await, "notify");

    let down = runner.check_now("payments", at(10)).await.expect("checked");
    assert_eq!(down.transition, Some("down"));
    assert_eq!(down.paused_kinds, ["notify"]);
    // Workers get nothing of the paused kind; other kinds still flow.
    assert_eq!(claim_kind(db, &["notify"], at(11)).await, "nothing");
    assert_eq!(
        claim_kind(db, &["notify", "summarize"], at(11)).await,
        "summarize"
    );
    assert_eq!(
        claim_kind(db, &["notify", "summarize"], at(11)).await,
        "nothing"
    );
    // Still down: nothing new to say.
    let again = runner.check_now("payments", at(20)).await.expect("checked");
    assert!(again.paused_kinds.is_empty() && again.resumed_kinds.is_empty());
    assert_eq!(claim_kind(db, &["notify"], at(21)).await, "nothing");

    // The reason shows in the ops health figures (opsloop health) and events.
    let health = opsloop_core::workflow::health(db, at(21))
        .await
        .expect("health");
    assert_eq!(health.paused_kinds.len(), 1, "{:?}", health.paused_kinds);
    let pause = &health.paused_kinds[0];
    assert_eq!(
        (pause.kind.as_str(), pause.source.as_str()),
        ("notify", "probe:payments")
    );
    assert_eq!(pause.since, opsloop_core::workflow::db_now(at(10)));
    assert!(
        pause.reason.contains("probe payments is down"),
        "{}",
        pause.reason
    );
    assert!(pause.reason.contains("status 500"), "{}", pause.reason);
    let paused = events(db, "probe.kinds_paused").await;
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert_eq!(paused[0]["probe"], "payments");
    assert_eq!(paused[0]["kinds"], serde_json::json!(["notify"]));
    let listing = runner.list(at(21)).await.expect("list");
    assert_eq!(listing[0].status, "down");
    assert_eq!(listing[0].paused_kinds, ["notify"]);

    // Recovery: claimable again, once.
    status.store(200, Ordering::SeqCst);
    let up = runner.check_now("payments", at(30)).await.expect("checked");
    assert_eq!(up.transition, Some("up"));
    assert_eq!(up.resumed_kinds, ["notify"]);
    assert_eq!(claim_kind(db, &["notify"], at(31)).await, "notify");
    let resumed = events(db, "probe.kinds_resumed").await;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["kinds"], serde_json::json!(["notify"]));
    assert!(
        opsloop_core::workflow::health(db, at(31))
            .await
            .expect("health")
            .paused_kinds
            .is_empty()
    );
    test_db.cleanup().await;
}

#[tokio::test]
async fn pauses_of_a_probe_no_longer_configured_are_lifted_by_the_new_leader() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let upstream = http_server(Arc::new(AtomicU16::new(503))).await;
    let spec = ProbeSpec {
        retries: 1,
        depends_kinds: vec!["notify".into(), "draft".into()],
        ..probe("crm", "http", &format!("http://{upstream}/health"))
    };
    let runner = ProbeRunner::new(db.clone(), &settings(vec![spec.clone()])).expect("runner");
    let start = t0();
    let down = runner.check_now("crm", start).await.expect("checked");
    assert_eq!(down.paused_kinds, ["draft", "notify"]);
    // Same probe, one kind dropped from depends_kinds: that one is lifted.
    let narrower = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            depends_kinds: vec!["notify".into()],
            ..spec
        }]),
    )
    .expect("runner");
    assert_eq!(
        narrower.reconcile_pauses(start).await.expect("reconcile"),
        ["crm"]
    );
    let standing: Vec<String> = opsloop_core::workflow::paused_kinds(db)
        .await
        .expect("pauses")
        .into_iter()
        .map(|p| p.kind)
        .collect();
    assert_eq!(standing, ["notify"]);
    // The probe removed altogether: everything lifted.
    let none = ProbeRunner::new(db.clone(), &settings(vec![])).expect("runner");
    assert_eq!(
        none.reconcile_pauses(start).await.expect("reconcile"),
        ["crm"]
    );
    assert!(
        opsloop_core::workflow::paused_kinds(db)
            .await
            .expect("pauses")
            .is_empty()
    );
    assert_eq!(events(db, "probe.kinds_resumed").await.len(), 2);
    assert!(
        none.reconcile_pauses(start)
            .await
            .expect("again")
            .is_empty()
    );
    test_db.cleanup().await;
}

#[tokio::test]
async fn a_probe_with_on_down_emergency_stop_engages_the_stop() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let status = Arc::new(AtomicU16::new(500));
    let upstream = http_server(status.clone()).await;
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 1,
            on_down: "emergency_stop".into(),
            depends_kinds: vec!["notify".into()],
            ..probe("ledger", "http", &format!("http://{upstream}/health"))
        }]),
    )
    .expect("runner");
    let start = t0();
    let at = |s: i64| start + Duration::seconds(s);
    submit_one(db, "summarize", at(0)).await;

    let down = runner.check_now("ledger", at(0)).await.expect("checked");
    assert_eq!(down.transition, Some("down"));
    assert!(down.emergency_stop_engaged, "{down:?}");
    assert!(down.paused_kinds.is_empty(), "the stop, not a pause");
    assert_eq!(
        claim_kind(db, &["summarize"], at(1)).await,
        "emergency_stop"
    );
    let (stop, _) = opsloop_core::workflow::emergency_stop_state(db)
        .await
        .expect("stop");
    assert!(stop.engaged);
    assert_eq!(stop.actor.as_deref(), Some("heartbeat:probe:ledger"));
    assert!(
        stop.reason
            .as_deref()
            .is_some_and(|r| r.contains("probe ledger")),
        "{stop:?}"
    );
    assert_eq!(events(db, "emergency_stop.engaged").await.len(), 1);
    let fired = alerts(db, "ProbeDown").await;
    assert!(
        fired[0]["annotations"]["on_down"]
            .as_str()
            .is_some_and(|a| a.contains("emergency stop")),
        "{fired:?}"
    );

    // Recovery does not release it: that stays a human decision.
    status.store(200, Ordering::SeqCst);
    let up = runner.check_now("ledger", at(10)).await.expect("checked");
    assert_eq!(up.transition, Some("up"));
    assert!(!up.emergency_stop_engaged);
    assert_eq!(
        claim_kind(db, &["summarize"], at(11)).await,
        "emergency_stop"
    );
    opsloop_core::workflow::release_emergency_stop(db, "oncall", "ledger healthy", None, at(12))
        .await
        .expect("release");
    assert_eq!(claim_kind(db, &["summarize"], at(13)).await, "summarize");
    test_db.cleanup().await;
}

// ---- HTTP checks: secret headers, JSON path, body bound --------------------

/// An HTTP server answering `GET /status` with `body` as JSON, but only
/// when `X-Api-Key` carries `key` (else 401).
async fn keyed_json_server(
    key: &'static str,
    body: Arc<std::sync::Mutex<String>>,
) -> std::net::SocketAddr {
    let app = Router::new().route(
        "/status",
        get(move |headers: axum::http::HeaderMap| {
            let body = body.clone();
            async move {
                if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(key) {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                (StatusCode::OK, body.lock().expect("lock").clone())
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn http_probe_sends_secret_headers_and_checks_a_json_path() {
    let test_db = fresh_sqlite().await;
    let db = &test_db.db;
    let body = Arc::new(std::sync::Mutex::new(
        r#"{"checks": [{"name": "db", "state": "up"}, {"name": "queue", "state": "up"}]}"#
            .to_owned(),
    ));
    let addr = keyed_json_server("k-123", body.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("vendor_api_key"), "k-123\n").expect("secret file");
    let secrets = opsloop_core::secrets::SecretStore::with_sources(None, dir.path(), Vec::new());
    let spec = ProbeSpec {
        retries: 1,
        header_secrets: [("X-Api-Key".to_owned(), "vendor_api_key".to_owned())].into(),
        headers: [("Accept".to_owned(), "application/json".to_owned())].into(),
        json_path: Some("$.checks[1].state".into()),
        json_equals: Some(serde_json::json!("up")),
        ..probe("vendor", "http", &format!("http://{addr}/status"))
    };
    let runner = ProbeRunner::with_secrets(db.clone(), &settings(vec![spec.clone()]), &secrets)
        .expect("runner");
    let start = t0();
    let ok = runner.check_now("vendor", start).await.expect("checked");
    assert!(
        ok.ok,
        "the secret header was sent and the path matched: {ok:?}"
    );

    *body.lock().expect("lock") =
        r#"{"checks": [{"name": "db", "state": "up"}, {"name": "queue", "state": "degraded"}]}"#
            .into();
    let wrong = runner
        .check_now("vendor", start + Duration::seconds(10))
        .await
        .expect("checked");
    assert!(!wrong.ok);
    assert_eq!(
        wrong.error.as_deref(),
        Some(r#"json_path $.checks[1].state is "degraded", expected "up""#)
    );
    *body.lock().expect("lock") = r#"{"checks": []}"#.into();
    let missing = runner
        .check_now("vendor", start + Duration::seconds(20))
        .await
        .expect("checked");
    assert!(
        missing
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no value at json_path")),
        "{missing:?}"
    );
    *body.lock().expect("lock") = "<html>oops</html>".into();
    let not_json = runner
        .check_now("vendor", start + Duration::seconds(30))
        .await
        .expect("checked");
    assert!(
        not_json
            .error
            .as_deref()
            .is_some_and(|e| e.contains("body is not JSON")),
        "{not_json:?}"
    );

    // Without the secret the probe is refused at start, naming the field.
    let empty = tempfile::tempdir().expect("tempdir");
    let no_secrets =
        opsloop_core::secrets::SecretStore::with_sources(None, empty.path(), Vec::new());
    let refused = ProbeRunner::with_secrets(db.clone(), &settings(vec![spec]), &no_secrets)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.starts_with(
            "heartbeat.probes[vendor].header_secrets.x-api-key: secret vendor_api_key is not set"
        ),
        "{refused}"
    );
    assert!(!refused.contains("k-123"));
    test_db.cleanup().await;
}

#[tokio::test]
async fn a_body_over_the_bound_fails_without_being_read_whole() {
    let test_db = fresh_sqlite().await;
    let db = &test_db.db;
    // Announces 8 MiB and streams it: the probe must stop after its bound.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8388608\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..128 {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let runner = ProbeRunner::new(
        db.clone(),
        &settings(vec![ProbeSpec {
            retries: 1,
            max_body_bytes: 1024,
            ..probe("big", "http", &format!("http://{addr}/big"))
        }]),
    )
    .expect("runner");
    let report = runner.check_now("big", t0()).await.expect("checked");
    assert!(!report.ok);
    assert_eq!(
        report.error.as_deref(),
        Some("body larger than 1024 bytes (max_body_bytes)")
    );
    test_db.cleanup().await;
}

#[test]
fn bad_probe_fields_of_item_one_name_the_probe_and_field() {
    let base = || probe("p", "http", "http://example.com/health");
    let cases: Vec<(ProbeSpec, &str, &str)> = vec![
        (
            ProbeSpec {
                json_path: Some("checks[x].state".into()),
                json_equals: Some(serde_json::json!("up")),
                ..base()
            },
            "heartbeat.probes[p].json_path",
            "expected an index such as [0] at position 6",
        ),
        (
            ProbeSpec {
                json_path: Some("status".into()),
                ..base()
            },
            "heartbeat.probes[p].json_equals",
            "required with json_path",
        ),
        (
            ProbeSpec {
                on_down: "panic".into(),
                ..base()
            },
            "heartbeat.probes[p].on_down",
            "pause_kinds or emergency_stop",
        ),
        (
            ProbeSpec {
                depends_kinds: vec!["bad kind!".into()],
                ..base()
            },
            "heartbeat.probes[p].depends_kinds",
            "bad kind!",
        ),
        (
            ProbeSpec {
                header_secrets: [("X-Key".to_owned(), "Not A Name".to_owned())].into(),
                ..base()
            },
            "heartbeat.probes[p].header_secrets.X-Key",
            "not a secret name",
        ),
        (
            ProbeSpec {
                headers: [("Bad Header".to_owned(), "v".to_owned())].into(),
                ..base()
            },
            "heartbeat.probes[p].headers.Bad Header",
            "not an HTTP header name",
        ),
        (
            ProbeSpec {
                json_path: Some("status".into()),
                json_equals: Some(serde_json::json!("ok")),
                ..probe("p", "tcp", "db:5432")
            },
            "heartbeat.probes[p].json_path",
            "only http probes",
        ),
        (
            ProbeSpec {
                interval_secs: 9,
                ..base()
            },
            "heartbeat.probes[p].interval_secs",
            "at least 10 s",
        ),
        (
            probe("p", "ping", "example.com"),
            "heartbeat.probes[p].kind",
            "unknown probe kind \"ping\"",
        ),
        (
            probe("p", "http", "http//missing-colon"),
            "heartbeat.probes[p].target",
            "is not a URL",
        ),
    ];
    for (spec, key, reason) in cases {
        let line = spec.parse().expect_err(key).to_string();
        assert!(line.contains(&format!("{key}: ")), "{key}: {line}");
        assert!(line.contains(reason), "{key}: {line}");
    }
}

#[tokio::test]
async fn added_probes_run_beside_configured_ones_and_the_file_wins() {
    let test_db = fresh_postgres().await;
    let db = &test_db.db;
    let upstream = http_server(Arc::new(AtomicU16::new(200))).await;
    let configured = probe("web", "http", &format!("http://{upstream}/health"));
    let one = ProbeRunner::new(db.clone(), &settings(vec![configured.clone()])).expect("runner");
    let start = t0();
    let added = one
        .add(
            &probe("api", "http", &format!("http://{upstream}/health")),
            "ops",
            start,
        )
        .await
        .expect("added");
    assert_eq!(added.name, "api");
    let ran: Vec<String> = one
        .run_due(start)
        .await
        .into_iter()
        .map(|r| r.probe)
        .collect();
    assert_eq!(ran, ["api", "web"]);
    // Another instance sees it after its refresh.
    let two = ProbeRunner::new(db.clone(), &settings(vec![configured.clone()])).expect("runner");
    assert!(two.probe("api").is_none());
    two.refresh_added().await.expect("refresh");
    assert!(two.probe("api").is_some());
    // A configured name cannot be added; a stored one the file later
    // defines is ignored and reported.
    let clash = one.add(&configured, "ops", start).await.expect_err("clash");
    assert!(clash.to_string().contains("the file wins"), "{clash}");
    let three = ProbeRunner::new(
        db.clone(),
        &settings(vec![configured, probe("api", "tcp", &upstream.to_string())]),
    )
    .expect("runner");
    three.refresh_added().await.expect("refresh");
    assert_eq!(three.shadowed(), ["api"]);
    assert!(matches!(
        three.probe("api").map(|p| p.kind),
        Some(opsloop_heartbeat_worker::probe_config::ProbeKind::Tcp { .. })
    ));
    // Removed: gone from the next refresh everywhere.
    one.remove("api", start).await.expect("removed");
    assert!(one.probe("api").is_none());
    two.refresh_added().await.expect("refresh");
    assert!(two.probe("api").is_none());
    assert!(
        one.remove("web", start).await.is_err(),
        "configured: edit the file"
    );
    test_db.cleanup().await;
}
