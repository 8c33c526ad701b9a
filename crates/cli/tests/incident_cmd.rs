//! `opsloop incident …` and `opsloop oncall …` as processes against the real
//! alerter (`AlerterApp`, in process on port 0) on a fresh PostgreSQL
//! database, with tokens configured, a rotation with an override in its
//! config and an injected clock: open → list → escalate → acknowledge
//! (recorded as the token's name, not `--actor`) → note → resolve → show
//! with the timeline in order; acknowledging the resolved incident is
//! FAILED_PRECONDITION naming the state, an unknown id NOT_FOUND, a bad
//! level INVALID_ARGUMENT, a viewer token may read but not act; `oncall now`
//! and `oncall show --week` answer the configured people.

mod common;
use common::{json_of, opsloop_command};

use std::process::Output;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use opsloop_alerter::AlerterApp;
use opsloop_alerter::delivery::Clock;
use opsloop_core::auth::{self, Role};
use opsloop_core::clock::ManualClock;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::{TestDb, fresh_postgres};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ADMIN_SECRET: &str = "incident-cmd-admin-secret";

/// Wednesday 2026-12-02 10:00 UTC: week 0 of the rotation (aiko primary,
/// ben secondary).
fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
        .expect("time")
        .to_utc()
}

/// The alerter with incidents on, a Monday 09:00 UTC rotation of aiko, ben
/// and chen from 2026-11-30, and dana as primary all of 2026-12-03.
struct RunningAlerter {
    endpoint: String,
    viewer: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    db: TestDb,
    _scratch: tempfile::TempDir,
}

impl RunningAlerter {
    async fn start() -> Self {
        let db = fresh_postgres().await;
        let (_, viewer) = auth::create_token(
            &db.db,
            "dashboard",
            Role::Viewer,
            None,
            "test",
            None,
            Utc::now(),
        )
        .await
        .expect("viewer token");
        let scratch = tempfile::tempdir().expect("tempdir");
        let config = scratch.path().join("opsloop.toml");
        std::fs::write(
            &config,
            format!(
                r#"
environment = "test"
[database]
url = "{db_url}"
[bus]
kind = "memory"
[audit]
log_path = "{audit}"
[alerter]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
tick_ms = 50
local_output = "never"
[[alerter.incidents.people]]
name = "aiko"
slack = "U_AIKO"
email = "aiko@example.com"
[[alerter.incidents.people]]
name = "ben"
slack = "U_BEN"
[[alerter.incidents.people]]
name = "chen"
[[alerter.incidents.people]]
name = "dana"
pagerduty = "P_DANA"
[alerter.incidents.rotation]
time_zone = "UTC"
handover_day = "mon"
handover_time = "09:00"
start = "2026-11-30"
members = ["aiko", "ben", "chen"]
[[alerter.incidents.overrides]]
person = "dana"
role = "primary"
start = "2026-12-03T00:00:00Z"
end = "2026-12-04T00:00:00Z"
reason = "swap"
"#,
                db_url = db.url,
                audit = scratch.path().join("audit.jsonl").display(),
            ),
        )
        .expect("config");
        let config = load(&ConfigSources {
            file: Some(config),
            use_default_file: false,
            env: Some(Default::default()),
        })
        .expect("config loads");
        let secrets = SecretStore::with_sources(
            None,
            &scratch.path().join("no-secrets"),
            vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN_SECRET.to_owned())],
        );
        let shutdown = CancellationToken::new();
        let infra = Infra::connect(config, secrets, shutdown.clone())
            .await
            .expect("infra");
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start_time()));
        let app = AlerterApp::build_with_clock(infra, clock)
            .await
            .expect("alerter builds");
        let endpoint = format!("http://{}", app.grpc_addr().expect("grpc addr"));
        let server = tokio::spawn(app.run_until_stopped());
        Self {
            endpoint,
            viewer,
            shutdown,
            server,
            db,
            _scratch: scratch,
        }
    }

    /// `opsloop --endpoint … --token <admin> --actor someone-else -o json ARGS`.
    async fn admin(&self, args: &[&str]) -> Output {
        self.run(ADMIN_SECRET, "json", args).await
    }

    async fn run(&self, token: &str, output: &str, args: &[&str]) -> Output {
        opsloop_command()
            .args(["--endpoint", &self.endpoint, "--token", token])
            .args(["--actor", "someone-else", "--output", output])
            .args(args)
            .output()
            .await
            .expect("running the opsloop binary")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server
            .await
            .expect("joins")
            .expect("the alerter stops cleanly");
        self.db.cleanup().await;
    }
}

/// A failed run: its exit code and its one stderr line.
fn failure(out: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(!out.status.success(), "expected a failure");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn ids(list: &Value) -> Vec<String> {
    list["incidents"]
        .as_array()
        .expect("incidents")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_opened_acted_on_and_shown_through_the_cli() {
    let alerter = RunningAlerter::start().await;

    // Open by hand, with a label.
    let opened = json_of(
        &alerter
            .admin(&[
                "incident",
                "open",
                "--level",
                "P1",
                "--title",
                "checkout down",
                "--label",
                "service=checkout",
            ])
            .await,
        "incident open",
    );
    let id = opened["id"].as_str().expect("id").to_owned();
    assert_eq!(opened["level"], "P1");
    assert_eq!(opened["state"], "triggered");
    assert_eq!(opened["labels"]["service"], "checkout");
    assert_eq!(opened["opened_by"], "bootstrap-admin", "the token's name");
    assert_eq!(opened["opened_at"], "2026-12-02T10:00:00.000Z", "the clock");
    assert_eq!(
        opened["response_due_at"], "2026-12-02T11:00:00.000Z",
        "P1: 1 h"
    );

    // Listed while open, at its level only, and by a viewer token.
    let listed = json_of(&alerter.admin(&["incident", "list"]).await, "list");
    assert_eq!(ids(&listed), vec![id.clone()]);
    let p0 = json_of(
        &alerter.admin(&["incident", "list", "--level", "P0"]).await,
        "list --level P0",
    );
    assert!(ids(&p0).is_empty(), "{p0}");
    let viewed = json_of(
        &alerter
            .run(&alerter.viewer, "json", &["incident", "show", &id])
            .await,
        "show as viewer",
    );
    assert_eq!(viewed["title"], "checkout down");
    let (code, line) = failure(
        &alerter
            .run(&alerter.viewer, "json", &["incident", "ack", &id])
            .await,
    );
    assert_eq!(code, 5, "{line}");
    assert!(line.starts_with("PERMISSION_DENIED: "), "{line}");

    // Escalate by hand while triggered; acknowledge as the token.
    let escalated = json_of(
        &alerter.admin(&["incident", "escalate", &id]).await,
        "escalate",
    );
    assert_eq!(escalated["state"], "triggered");
    assert_eq!(escalated["next_escalation_at"], "2026-12-02T10:00:00.000Z");
    let acked = json_of(
        &alerter
            .admin(&["incident", "ack", &id, "--reason", "looking"])
            .await,
        "ack",
    );
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "bootstrap-admin");
    assert_eq!(acked["next_escalation_at"], Value::Null, "escalation stops");
    let (code, line) = failure(&alerter.admin(&["incident", "escalate", &id]).await);
    assert_eq!(code, 7, "{line}");
    assert!(
        line.starts_with("FAILED_PRECONDITION: the incident is acknowledged"),
        "{line}"
    );

    // Note, resolve.
    json_of(
        &alerter
            .admin(&["incident", "note", &id, "rolled back to v41"])
            .await,
        "note",
    );
    let resolved = json_of(
        &alerter.admin(&["incident", "resolve", &id]).await,
        "resolve",
    );
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["resolved_by"], "bootstrap-admin");

    // Acknowledging the resolved incident is refused, naming the state.
    let (code, line) = failure(&alerter.admin(&["incident", "ack", &id]).await);
    assert_eq!(code, 7, "{line}");
    assert!(
        line.starts_with("FAILED_PRECONDITION: the incident is resolved: cannot acknowledge it"),
        "{line}"
    );

    // Gone from the open list, still in --all.
    let open = json_of(&alerter.admin(&["incident", "list"]).await, "list");
    assert!(ids(&open).is_empty(), "{open}");
    let all = json_of(&alerter.admin(&["incident", "list", "--all"]).await, "all");
    assert_eq!(ids(&all), vec![id.clone()]);

    // The timeline, in order (the leader's escalation rows may be between).
    let shown = json_of(&alerter.admin(&["incident", "show", &id]).await, "show");
    let timeline = shown["timeline"].as_array().expect("timeline");
    let kinds: Vec<&str> = timeline
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .filter(|k| *k != "escalated")
        .collect();
    assert_eq!(
        kinds,
        vec![
            "opened",
            "escalate_requested",
            "acknowledged",
            "note",
            "resolved"
        ],
        "{shown}"
    );
    let note = timeline.iter().find(|e| e["kind"] == "note").expect("note");
    assert_eq!(note["detail"]["text"], "rolled back to v41");
    assert_eq!(note["actor"], "bootstrap-admin");
    let ack = timeline
        .iter()
        .find(|e| e["kind"] == "acknowledged")
        .expect("ack");
    assert_eq!(ack["detail"]["reason"], "looking");

    // The same as a table for people.
    let table = alerter
        .run(ADMIN_SECRET, "table", &["incident", "show", &id])
        .await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    for expected in [
        "checkout down",
        "resolved",
        "service=checkout",
        "AT",
        "KIND",
        "rolled back to v41",
    ] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }

    // The audit names the token.
    let audit = alerter
        .db
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            alerter.db.db.get_database_backend(),
            format!(
                "SELECT count(*) AS n FROM audit_events WHERE subject = 'incident:{id}' \
                 AND actor = 'bootstrap-admin' AND action IN \
                 ('incident.open', 'incident.acknowledge', 'incident.note', 'incident.resolve', 'incident.escalate')"
            ),
        ))
        .await
        .expect("audit query")
        .expect("row")
        .try_get::<i64>("", "n")
        .expect("n");
    assert_eq!(audit, 5);

    // The postmortem draft (admin only), written to a file, and the figures.
    let (code, line) = failure(
        &alerter
            .run(&alerter.viewer, "json", &["incident", "postmortem", &id])
            .await,
    );
    assert_eq!(code, 5, "{line}");
    let draft_dir = tempfile::tempdir().expect("tempdir");
    let draft_path = draft_dir.path().join("postmortem.md");
    let drafted = json_of(
        &alerter
            .admin(&[
                "incident",
                "postmortem",
                &id,
                "--file",
                draft_path.to_str().expect("utf-8 path"),
            ])
            .await,
        "postmortem",
    );
    let markdown = std::fs::read_to_string(&draft_path).expect("the draft file");
    assert_eq!(drafted["markdown"], markdown.as_str());
    for expected in [
        "# Postmortem: checkout down",
        "## Timeline (UTC)",
        "rolled back to v41",
        "## Root cause",
        "## Lessons",
    ] {
        assert!(markdown.contains(expected), "{expected} in:\n{markdown}");
    }
    let shown = json_of(&alerter.admin(&["incident", "show", &id]).await, "show");
    assert!(
        shown["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .any(|e| e["kind"] == "postmortem" && e["actor"] == "bootstrap-admin"),
        "the draft is recorded under the token's name: {shown}"
    );
    let stats = json_of(
        &alerter
            .run(
                &alerter.viewer,
                "json",
                &[
                    "incident",
                    "stats",
                    "--since",
                    "2026-12-01",
                    "--until",
                    "2026-12-03",
                ],
            )
            .await,
        "stats",
    );
    let p1 = stats["levels"]
        .as_array()
        .expect("levels")
        .iter()
        .find(|l| l["level"] == "P1")
        .expect("P1 row");
    assert_eq!(
        (
            &p1["opened"],
            &p1["acknowledged"],
            &p1["resolved"],
            &p1["breaches"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(0)),
        "{stats}"
    );
    assert_eq!(p1["mtta_seconds"], json!(0.0), "the clock stood still");
    let (code, line) = failure(
        &alerter
            .admin(&["incident", "stats", "--since", "soon"])
            .await,
    );
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("--since"), "{line}");

    // Unknown ids and bad levels.
    let unknown = "0193a6f2-7c1e-7a11-9f00-0123456789ab";
    for args in [
        vec!["incident", "show", unknown],
        vec!["incident", "ack", unknown],
        vec!["incident", "note", unknown, "x"],
    ] {
        let (code, line) = failure(&alerter.admin(&args).await);
        assert_eq!(code, 4, "{args:?}: {line}");
        assert!(line.starts_with("NOT_FOUND: incident "), "{line}");
    }
    let (code, line) = failure(
        &alerter
            .admin(&["incident", "open", "--level", "P7", "--title", "x"])
            .await,
    );
    assert_eq!(code, 3, "{line}");
    assert!(
        line.starts_with("INVALID_ARGUMENT: level: \"P7\""),
        "{line}"
    );

    alerter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oncall_answers_the_configured_rotation_and_overrides() {
    let alerter = RunningAlerter::start().await;

    // Now (the injected clock): week 0.
    let now = json_of(&alerter.admin(&["oncall", "now"]).await, "oncall now");
    assert_eq!(now["at"], "2026-12-02T10:00:00.000Z");
    assert_eq!(now["primary"]["name"], "aiko");
    assert_eq!(now["primary"]["slack"], "U_AIKO");
    assert_eq!(now["secondary"]["name"], "ben");
    assert_eq!(now["until"], "2026-12-03T00:00:00.000Z", "dana's override");
    assert_eq!(now["time_zone"], "UTC");
    let during = json_of(
        &alerter
            .admin(&["oncall", "now", "--at", "2026-12-03T12:00:00Z"])
            .await,
        "oncall now --at",
    );
    assert_eq!(during["primary"]["name"], "dana");
    assert_eq!(during["primary"]["pagerduty"], "P_DANA");
    assert_eq!(during["secondary"]["name"], "ben");

    // This week from today (the clock's date): the override's day.
    let week = json_of(
        &alerter.admin(&["oncall", "show", "--week"]).await,
        "oncall show --week",
    );
    assert_eq!(week["from"], "2026-12-02");
    let days = week["days"].as_array().expect("days");
    assert_eq!(days.len(), 7);
    let day = |d: &Value| {
        (
            d["date"].as_str().expect("date").to_owned(),
            d["primary"].clone(),
            d["secondary"].clone(),
        )
    };
    assert_eq!(
        day(&days[0]),
        (
            "2026-12-02".into(),
            json!(["aiko"]),
            serde_json::json!(["ben"])
        )
    );
    assert_eq!(
        day(&days[1]),
        (
            "2026-12-03".into(),
            serde_json::json!(["dana"]),
            serde_json::json!(["ben"])
        )
    );
    assert_eq!(
        day(&days[5]),
        (
            "2026-12-07".into(),
            serde_json::json!(["aiko", "ben"]),
            serde_json::json!(["ben", "chen"])
        ),
        "Monday's hand-over"
    );

    // A week from a given date: the hand-over at Monday 09:00.
    let next = json_of(
        &alerter
            .admin(&["oncall", "show", "--week", "--from", "2026-12-06"])
            .await,
        "oncall show --week --from",
    );
    let shifts: Vec<(String, String, String, String)> = next["shifts"]
        .as_array()
        .expect("shifts")
        .iter()
        .map(|s| {
            (
                s["start"].as_str().expect("start").to_owned(),
                s["end"].as_str().expect("end").to_owned(),
                s["primary"].as_str().expect("primary").to_owned(),
                s["secondary"].as_str().expect("secondary").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        shifts,
        vec![
            (
                "2026-12-06T00:00:00.000Z".into(),
                "2026-12-07T09:00:00.000Z".into(),
                "aiko".into(),
                "ben".into()
            ),
            (
                "2026-12-07T09:00:00.000Z".into(),
                "2026-12-13T00:00:00.000Z".into(),
                "ben".into(),
                "chen".into()
            ),
        ]
    );

    // One day by default; a table for people.
    let today = json_of(&alerter.admin(&["oncall", "show"]).await, "oncall show");
    assert_eq!(today["days"].as_array().map(Vec::len), Some(1), "{today}");
    let table = alerter
        .run(ADMIN_SECRET, "table", &["oncall", "show"])
        .await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    for expected in ["time zone: UTC", "DATE", "2026-12-02", "aiko", "ben"] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }

    alerter.stop().await;
}
