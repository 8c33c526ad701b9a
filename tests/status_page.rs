//! The api's status page on PostgreSQL with seeded probes, history and
//! incidents, the other daemons stood in for by local `/readyz` servers
//! (one ready, one not): in a real headless Chromium (components and
//! states as seeded, 90 bars each, the open incident, no request leaving
//! the page's origin, no console errors, a screenshot), over plain HTTP
//! (`/status.json`, the Atom feed, badges) and with the viewer role
//! required; and the same reads on SQLite (`opsloop dev`'s database).

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Duration as Days, DurationRound, Utc};
use opsloop_core::store::stmt;
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_e2e::webdriver::Browser;
use sea_orm::ConnectionTrait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const VIEWER_SECRET: &str = "status-viewer-secret";
const AGENT_SECRET: &str = "status-agent-secret";

/// A local HTTP server whose `/readyz` answers `status`.
async fn readyz_server(status: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let code = axum::http::StatusCode::from_u16(status).expect("status");
    let router = axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || async move { (code, "{}") }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn ts(at: DateTime<Utc>) -> String {
    format!("'{}'::timestamptz", at.to_rfc3339())
}

/// Probes `web` (up; 90 % three days ago) and `payments-api` (down), an
/// open P1 incident with a note and a page (not public), a P2 resolved
/// yesterday and one resolved a month ago (not listed).
async fn seed(db: &TestDb, now: DateTime<Utc>) {
    let today = now.duration_trunc(Days::days(1)).expect("day");
    let mut sql = format!(
        "INSERT INTO probe_state (name, status, consecutive_failures, since, last_error, alerted, created_at, updated_at) VALUES \
         ('web', 'up', 0, {a}, NULL, false, {a}, {a}), \
         ('payments-api', 'down', 3, {b}, 'HTTP 500 from /health', true, {b}, {b});\n",
        a = ts(now - Days::days(3)),
        b = ts(now - Days::minutes(20)),
    );
    for back in 1..90 {
        let up = if back == 3 { 1296 } else { 1440 };
        sql.push_str(&format!(
            "INSERT INTO probe_daily (probe, day, checks, up_checks, avg_latency_ms, max_latency_ms, rolled_up_at) \
             VALUES ('web', {}, 1440, {up}, 40, 90, {});\n",
            ts(today - Days::days(back)),
            ts(now)
        ));
    }
    // Ten minutes of today (from midnight when the test runs just after).
    let first =
        (now.duration_trunc(Days::minutes(1)).expect("minute") - Days::minutes(9)).max(today);
    for k in 0..10 {
        let minute = first + Days::minutes(k);
        sql.push_str(&format!(
            "INSERT INTO probe_history (probe, minute, ok, latency_ms) VALUES ('web', {m}, true, 35), ('payments-api', {m}, false, 120);\n",
            m = ts(minute)
        ));
    }
    let open = uuid::Uuid::new_v4();
    let resolved = uuid::Uuid::new_v4();
    let old = uuid::Uuid::new_v4();
    sql.push_str(&format!(
        "INSERT INTO incidents (id, title, level, state, group_key, labels, opened_by, opened_at, updated_at, resolved_at) VALUES \
         ('{open}', 'Checkout errors', 'P1', 'acknowledged', 'g1', '{{}}', 'alerter', {o}, {n}, NULL), \
         ('{resolved}', 'Slow search', 'P2', 'resolved', 'g2', '{{}}', 'alerter', {y}, {y}, {y}), \
         ('{old}', 'Old outage', 'P1', 'resolved', 'g3', '{{}}', 'alerter', {m}, {m}, {m});\n\
         INSERT INTO incident_log (incident_id, at, kind, actor, detail) VALUES \
         ('{open}', {o}, 'opened', 'alerter', '{{}}'), \
         ('{open}', {o}, 'paged', 'alerter', '{{\"people\": [\"ana\"]}}'), \
         ('{open}', {n}, 'note', 'ana', '{{\"text\": \"Rolling back the release\"}}'), \
         ('{resolved}', {y}, 'resolved', 'ana', '{{\"reason\": \"index rebuilt\"}}');\n",
        o = ts(now - Days::minutes(30)),
        n = ts(now - Days::minutes(5)),
        y = ts(now - Days::days(1)),
        m = ts(now - Days::days(30)),
    ));
    db.db.execute_unprepared(&sql).await.expect("seed");
}

struct Running {
    http: SocketAddr,
    db: TestDb,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        self.db.cleanup().await;
    }
}

/// The api in-process on a seeded database; `extra` config on top.
async fn start(extra: &[(&str, String)], with_tokens: bool) -> Running {
    let db = fresh_postgres().await;
    seed(&db, Utc::now()).await;
    start_on(db, extra, with_tokens).await
}

/// The api in-process on `db` (seeded by the caller).
async fn start_on(db: TestDb, extra: &[(&str, String)], with_tokens: bool) -> Running {
    let ready = readyz_server(200).await;
    let not_ready = readyz_server(503).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = vec![
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__DATABASE__URL", db.url.clone()),
        (
            "OPSLOOP__API__STATUS__HEARTBEAT_URL",
            format!("http://{ready}"),
        ),
        (
            "OPSLOOP__API__STATUS__ALERTER_URL",
            format!("http://{not_ready}"),
        ),
        ("OPSLOOP__API__STATUS__BACKUP_URL", String::new()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let secrets = if with_tokens {
        vec![
            ("OPSLOOP_VIEWER_TOKEN".to_owned(), VIEWER_SECRET.to_owned()),
            ("OPSLOOP_AGENT_TOKEN".to_owned(), AGENT_SECRET.to_owned()),
        ]
    } else {
        Vec::new()
    };
    let shutdown = CancellationToken::new();
    let infra =
        opsloop_e2e::in_process_infra(env, secrets, dir.path(), "audit.jsonl", shutdown.clone())
            .await;
    let app = opsloop_api::ApiApp::build(infra).await.expect("build");
    let http = app.http_addr().expect("addr");
    let task = tokio::spawn(app.run_until_stopped());
    opsloop_e2e::wait_for_status(
        &format!("http://{http}/healthz"),
        200,
        Duration::from_secs(20),
    )
    .await;
    Running {
        http,
        db,
        shutdown,
        task,
        _dir: dir,
    }
}

const EXPECTED: [(&str, &str); 7] = [
    ("api", "operational"),
    ("heartbeat-worker", "operational"),
    ("alerter", "down"),
    ("database", "operational"),
    ("bus", "operational"),
    ("probe-payments-api", "down"),
    ("probe-web", "operational"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_headless_browser() {
    let app = start(&[], false).await;
    let browser = Browser::start()
        .await
        .expect("a headless Chromium (scripts/test.sh installs it)");
    let origin = app.url("/");
    // Drop what the browser's start page logged.
    browser.requested_urls().await.expect("performance log");
    browser.log("browser").await.expect("browser log");
    browser
        .goto(&app.url("/status"))
        .await
        .expect("open /status");
    assert_eq!(browser.title().await.expect("title"), "opsloop status");

    let mut seen = Vec::new();
    for component in browser
        .find_all("li.component", None)
        .await
        .expect("components")
    {
        let id = browser
            .attribute(&component, "data-component")
            .await
            .expect("id")
            .expect("id set");
        let state = browser
            .attribute(&component, "data-state")
            .await
            .expect("state")
            .expect("state set");
        let bars = browser
            .find_all("ol.bars > li", Some(&component))
            .await
            .expect("bars");
        assert_eq!(bars.len(), 90, "{id}: one bar per day for 90 days");
        if id == "probe-web" {
            let label = browser
                .attribute(&bars[86], "aria-label")
                .await
                .expect("label")
                .expect("aria-label");
            assert!(
                label.ends_with(": 90.00 % up (1296 of 1440 checks)"),
                "{label}"
            );
            let title = browser.attribute(&bars[86], "title").await.expect("title");
            assert_eq!(title.as_deref(), Some(label.as_str()));
            assert_eq!(
                browser
                    .attribute(&bars[0], "tabindex")
                    .await
                    .expect("tabindex")
                    .as_deref(),
                Some("0")
            );
            // The day's figure shows when its bar has focus.
            let tip = browser
                .find_all(".tip", Some(&bars[86]))
                .await
                .expect("tip");
            assert!(!browser.displayed(&tip[0]).await.expect("displayed"));
            browser.click(&bars[86]).await.expect("focus the bar");
            assert!(
                browser.displayed(&tip[0]).await.expect("displayed"),
                "shown on focus"
            );
        }
        seen.push((id, state));
    }
    seen.sort();
    let mut expected: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);

    let incidents = browser
        .find_all("li.incident", None)
        .await
        .expect("incidents");
    let mut texts = Vec::new();
    for incident in &incidents {
        texts.push(browser.text(incident).await.expect("text"));
    }
    let open = texts
        .iter()
        .find(|t| t.contains("Checkout errors"))
        .expect("the open incident is listed");
    assert!(
        open.contains("P1") && open.contains("acknowledged"),
        "{open}"
    );
    assert!(open.contains("Rolling back the release"), "{open}");
    assert!(
        !open.contains("ana"),
        "pages stay off the public page: {open}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Slow search") && t.contains("index rebuilt"))
    );
    assert!(!texts.iter().any(|t| t.contains("Old outage")));
    let overall = browser.find_all("p.overall", None).await.expect("overall");
    assert_eq!(
        browser.text(&overall[0]).await.expect("text"),
        "Some systems are down"
    );

    let screenshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/status.png");
    browser
        .set_window_size(1280, 2200)
        .await
        .expect("desktop size");
    browser.screenshot(&screenshot).await.expect("screenshot");
    println!("status page screenshot: {}", screenshot.display());
    browser.set_window_size(390, 844).await.expect("phone size");
    let phone = screenshot.with_file_name("status-phone.png");
    browser.screenshot(&phone).await.expect("screenshot");
    println!("status page screenshot (phone): {}", phone.display());

    let requested = browser.requested_urls().await.expect("performance log");
    assert!(
        requested.iter().any(|(u, _)| u.ends_with("/status")),
        "{requested:?}"
    );
    // Everything our page asked for (the browser's own start page, which
    // may still be loading, is not ours).
    let foreign: Vec<&(String, String)> = requested
        .iter()
        .filter(|(_, document)| document.starts_with(&origin))
        .filter(|(u, _)| !u.starts_with(&origin) && !u.starts_with("data:"))
        .collect();
    assert!(foreign.is_empty(), "requests outside {origin}: {foreign:?}");
    let console = browser.log("browser").await.expect("browser log");
    let errors: Vec<&Value> = console.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_feed_and_badges() {
    let app = start(&[], false).await;
    let client = reqwest::Client::new();
    let json: Value = client
        .get(app.url("/status.json"))
        .send()
        .await
        .expect("status.json")
        .json()
        .await
        .expect("json");
    let components = json["components"].as_array().expect("components");
    for (id, state) in EXPECTED {
        let c = components
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {json}"));
        assert_eq!(c["state"], state, "{id}");
        assert_eq!(c["days"].as_array().map(Vec::len), Some(90), "{id}");
    }
    assert!(
        !components.iter().any(|c| c["id"] == "backup-agent"),
        "an empty URL leaves it off"
    );
    let web = components
        .iter()
        .find(|c| c["id"] == "probe-web")
        .expect("web");
    // 89 rolled-up days (one at 90 %) and 10 good minutes today.
    let checks = 89.0 * 1440.0 + 10.0;
    let d90 = web["uptime"]["90d"].as_f64().expect("90d");
    assert!((d90 - (checks - 144.0) / checks).abs() < 1e-9, "{d90}");
    assert_eq!(
        web["uptime"]["1d"].as_f64(),
        Some(1.0),
        "only today's minutes within 24 h"
    );
    let payments = components
        .iter()
        .find(|c| c["id"] == "probe-payments-api")
        .expect("payments");
    assert_eq!(payments["uptime"]["7d"].as_f64(), Some(0.0));
    assert_eq!(payments["detail"], "HTTP 500 from /health");
    let alerter = components
        .iter()
        .find(|c| c["id"] == "alerter")
        .expect("alerter");
    assert_eq!(
        alerter["detail"],
        "/readyz answered 503 Service Unavailable"
    );
    assert_eq!(json["overall"], "outage");
    let titles: Vec<&str> = json["incidents"]
        .as_array()
        .expect("incidents")
        .iter()
        .filter_map(|i| i["title"].as_str())
        .collect();
    assert_eq!(titles, ["Checkout errors", "Slow search"]);

    let feed = client
        .get(app.url("/status/feed.atom"))
        .send()
        .await
        .expect("feed");
    assert_eq!(
        feed.headers()["content-type"],
        "application/atom+xml; charset=utf-8"
    );
    let feed = feed.text().await.expect("feed body");
    assert!(
        feed.contains("<feed xmlns=\"http://www.w3.org/2005/Atom\">"),
        "{feed}"
    );
    assert!(
        feed.contains("<title>[P1] Checkout errors (acknowledged)</title>"),
        "{feed}"
    );
    assert!(feed.contains("Rolling back the release"), "{feed}");
    assert!(!feed.contains("Old outage"), "{feed}");

    let badge = client
        .get(app.url("/status/badge/probe-payments-api.svg"))
        .send()
        .await
        .expect("badge");
    assert_eq!(badge.status(), 200);
    assert_eq!(badge.headers()["content-type"], "image/svg+xml");
    let svg = badge.text().await.expect("svg");
    assert!(svg.contains("aria-label=\"payments-api: down\""), "{svg}");
    let badge = client
        .get(app.url("/status/badge/api.svg"))
        .send()
        .await
        .expect("badge");
    assert!(
        badge
            .text()
            .await
            .expect("svg")
            .contains("aria-label=\"API: operational\"")
    );
    let missing = client
        .get(app.url("/status/badge/nope.svg"))
        .send()
        .await
        .expect("badge");
    assert_eq!(missing.status(), 404);

    // Each refresh samples the api's own components for the roll-up.
    let sampled: Vec<String> = app
        .db
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT DISTINCT probe FROM probe_history WHERE probe LIKE 'opsloop:%' ORDER BY probe",
        ))
        .await
        .expect("history")
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("probe"))
        .collect();
    assert_eq!(
        sampled,
        [
            "opsloop:alerter",
            "opsloop:api",
            "opsloop:bus",
            "opsloop:database",
            "opsloop:heartbeat-worker"
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_can_require_the_viewer_role() {
    let app = start(
        &[("OPSLOOP__API__STATUS__REQUIRE_VIEWER", "true".to_owned())],
        true,
    )
    .await;
    let client = reqwest::Client::new();
    for path in [
        "/status",
        "/status.json",
        "/status/feed.atom",
        "/status/badge/api.svg",
    ] {
        let anonymous = client.get(app.url(path)).send().await.expect("get");
        assert_eq!(anonymous.status(), 401, "{path}");
        assert!(
            anonymous.headers().contains_key("www-authenticate"),
            "{path}"
        );
        let agent = client
            .get(app.url(path))
            .bearer_auth(AGENT_SECRET)
            .send()
            .await
            .expect("get");
        assert_eq!(agent.status(), 403, "{path}: agent is not a viewer");
        let viewer = client
            .get(app.url(path))
            .bearer_auth(VIEWER_SECRET)
            .send()
            .await
            .expect("get");
        assert_eq!(viewer.status(), 200, "{path}");
    }
    let basic = client
        .get(app.url("/status"))
        .basic_auth("bootstrap-viewer", Some(VIEWER_SECRET))
        .send()
        .await
        .expect("get");
    assert_eq!(
        basic.status(),
        200,
        "a browser signs in with HTTP basic auth"
    );
    app.stop().await;
}

/// The page's reads on SQLite: probe state, a rolled-up day, raw minutes
/// and an incident with its log, written through the store's own binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_on_sqlite() {
    let db = fresh_sqlite().await;
    let now = Utc::now();
    let backend = db.db.get_database_backend();
    let minute = now.duration_trunc(Days::minutes(1)).expect("minute");
    let yesterday = now.duration_trunc(Days::days(1)).expect("day") - Days::days(1);
    let incident = uuid::Uuid::new_v4();
    for (sql, values) in [
        (
            "INSERT INTO probe_state (name, status, consecutive_failures, since, last_error, alerted, created_at, updated_at) \
             VALUES ('web', 'down', 3, $1, 'refused', true, $1, $1)",
            vec![now.into()],
        ),
        (
            "INSERT INTO probe_daily (probe, day, checks, up_checks, avg_latency_ms, max_latency_ms, rolled_up_at) \
             VALUES ('web', $1, 4, 3, 10.0, 20, $2)",
            vec![yesterday.into(), now.into()],
        ),
        (
            "INSERT INTO probe_history (probe, minute, ok, latency_ms) VALUES ('web', $1, false, 5)",
            vec![minute.into()],
        ),
        (
            "INSERT INTO incidents (id, title, level, state, group_key, labels, opened_by, opened_at, updated_at) \
             VALUES ($1, 'Web down', 'P1', 'triggered', 'g', $2, 'alerter', $3, $3)",
            vec![incident.into(), serde_json::json!({}).into(), now.into()],
        ),
        (
            "INSERT INTO incident_log (incident_id, at, kind, actor, detail) VALUES ($1, $2, 'note', 'ana', $3)",
            vec![
                incident.into(),
                now.into(),
                serde_json::json!({"text": "looking"}).into(),
            ],
        ),
    ] {
        db.db
            .execute_raw(stmt(backend, sql, values))
            .await
            .expect("seed");
    }
    let app = start_on(db, &[], false).await;
    let json: Value = reqwest::get(app.url("/status.json"))
        .await
        .expect("status.json")
        .json()
        .await
        .expect("json");
    let web = json["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "probe-web"))
        .unwrap_or_else(|| panic!("probe-web in {json}"));
    assert_eq!(web["state"], "down");
    let days = web["days"].as_array().expect("days");
    assert_eq!(days.len(), 90);
    assert_eq!(
        (days[88]["checks"].as_i64(), days[88]["up_checks"].as_i64()),
        (Some(4), Some(3))
    );
    assert_eq!(
        (days[89]["checks"].as_i64(), days[89]["up_checks"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(json["incidents"][0]["title"], "Web down");
    assert_eq!(json["incidents"][0]["updates"][0]["text"], "looking");
    app.stop().await;
}
