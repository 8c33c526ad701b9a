//! The loop through the CLI binary against the real api, started in process
//! on port 0 with a fresh SQLite database and the in-process bus:
//! `proposal submit` → `worker --once` → `mission show`.

mod common;
use common::{json_of, opsloop_command};

use std::collections::HashMap;
use std::process::Output;

use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::entities::reports;
use opsloop_core::store::testing::fresh_sqlite;
use sea_orm::{ActiveModelTrait, Set};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

async fn opsloop(endpoint: &str, args: &[&str]) -> Output {
    opsloop_command()
        .args(["--endpoint", endpoint, "--actor", "e2e", "--output", "json"])
        .args(args)
        .output()
        .await
        .expect("running the opsloop binary")
}

/// The api on a fresh SQLite database, serving on a free port.
struct RunningApi {
    endpoint: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    db: opsloop_core::store::testing::TestDb,
    _scratch: tempfile::TempDir,
}

impl RunningApi {
    async fn start() -> Self {
        let db = fresh_sqlite().await;
        let scratch = tempfile::tempdir().unwrap();
        let audit = scratch.path().join("audit.jsonl");
        let env: HashMap<String, String> = [
            ("OPSLOOP__DATABASE__URL", db.url.as_str()),
            ("OPSLOOP__BUS__KIND", "memory"),
            ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0"),
            ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0"),
            ("OPSLOOP__AUDIT__LOG_PATH", audit.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = load(&ConfigSources {
            file: None,
            use_default_file: false,
            env: Some(env),
        })
        .unwrap();
        let secrets = SecretStore::with_sources(None, scratch.path(), Vec::new());
        let shutdown = CancellationToken::new();
        let infra = Infra::connect(config, secrets, shutdown.clone())
            .await
            .unwrap();
        let api = opsloop_api::ApiApp::build(infra).await.unwrap();
        let endpoint = format!("http://{}", api.grpc_addr().unwrap());
        let server = tokio::spawn(api.run_until_stopped());
        Self {
            endpoint,
            shutdown,
            server,
            db,
            _scratch: scratch,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        self.db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_worker_then_mission_show() {
    let api = RunningApi::start().await;
    let endpoint = api.endpoint.clone();

    // Submit one step; a pending proposal (auto_approve not covering the
    // kind) is approved by hand, as an operator would.
    let submitted = json_of(
        &opsloop(
            &endpoint,
            &[
                "proposal",
                "submit",
                "--title",
                "e2e",
                "--kind",
                "analyze",
                "--payload",
                r#"{"text": "hello"}"#,
            ],
        )
        .await,
        "proposal submit",
    );
    let mut proposal = submitted["proposal"].clone();
    if proposal["status"] == "pending" {
        let id = proposal["id"].as_str().unwrap().to_owned();
        proposal = json_of(
            &opsloop(&endpoint, &["proposal", "approve", &id]).await,
            "proposal approve",
        );
    }
    assert_eq!(proposal["status"], "approved", "{proposal}");
    let mission_id = proposal["mission_id"]
        .as_str()
        .expect("an approved proposal names its mission")
        .to_owned();

    // The worker runs the step: payload on stdin, a JSON result with a cost.
    let exec = r#"payload=$(cat); printf '{"echo": %s, "cost_usd": 0.25}' "$payload""#;
    let worked = opsloop(
        &endpoint,
        &["worker", "--kinds", "analyze", "--exec", exec, "--once"],
    )
    .await;
    assert!(
        worked.status.success(),
        "worker failed: {}",
        String::from_utf8_lossy(&worked.stderr)
    );
    let line: Value =
        serde_json::from_slice(&worked.stdout).expect("the worker prints one JSON line per step");
    assert_eq!(line["outcome"], "succeeded", "{line}");
    assert_eq!(line["mission_status"], "succeeded", "{line}");

    let mission = json_of(
        &opsloop(&endpoint, &["mission", "show", &mission_id]).await,
        "mission show",
    );
    assert_eq!(mission["status"], "succeeded", "{mission}");
    assert_eq!(mission["steps"][0]["status"], "succeeded");
    assert_eq!(
        mission["steps"][0]["result"]["echo"],
        serde_json::json!({"text": "hello"})
    );
    assert_eq!(mission["steps"][0]["cost_usd"], 0.25);

    // Nothing is left to claim.
    let idle = opsloop(
        &endpoint,
        &["worker", "--kinds", "analyze", "--exec", "cat", "--once"],
    )
    .await;
    assert!(idle.status.success());
    assert!(
        idle.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&idle.stdout)
    );
    assert!(String::from_utf8_lossy(&idle.stderr).contains(r#""claimed":0"#));

    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_the_api() {
    let api = RunningApi::start().await;
    let endpoint = api.endpoint.as_str();
    let run = |args: &'static [&'static str]| opsloop(endpoint, args);

    // Emergency stop: submissions are rejected while engaged.
    let engaged = json_of(
        &run(&["emergency-stop", "engage", "--reason", "drill"]).await,
        "engage",
    );
    assert_eq!(
        (engaged["engaged"].clone(), engaged["changed"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );
    let status = json_of(&run(&["emergency-stop", "status"]).await, "status");
    assert_eq!(status["reason"], "drill");
    let rejected = json_of(
        &run(&["proposal", "submit", "--title", "x", "--kind", "analyze"]).await,
        "submit",
    );
    assert_eq!(rejected["proposal"]["status"], "rejected");
    assert_eq!(rejected["proposal"]["rejection_reason"], "emergency_stop");
    let health = json_of(&run(&["health"]).await, "health");
    assert_eq!(health["emergency_stop"]["engaged"], true);
    json_of(
        &run(&["emergency-stop", "release", "--reason", "drill over"]).await,
        "release",
    );

    // A kind auto_approve does not cover stays pending until approved; its
    // mission can be cancelled.
    let pending = json_of(
        &run(&[
            "proposal",
            "submit",
            "--title",
            "manual",
            "--kind",
            "ops_manual_review",
        ])
        .await,
        "submit",
    );
    assert_eq!(pending["proposal"]["status"], "pending", "{pending}");
    let id = pending["proposal"]["id"].as_str().unwrap().to_owned();
    let listed = json_of(
        &opsloop(endpoint, &["proposal", "list", "--status", "pending"]).await,
        "list",
    );
    assert_eq!(listed["proposals"][0]["id"], id.as_str());
    let approved = json_of(
        &opsloop(endpoint, &["proposal", "approve", &id]).await,
        "approve",
    );
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "e2e");
    let mission_id = approved["mission_id"].as_str().unwrap().to_owned();
    let cancelled = json_of(
        &opsloop(
            endpoint,
            &["mission", "cancel", &mission_id, "--reason", "not needed"],
        )
        .await,
        "cancel",
    );
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["steps"][0]["status"], "cancelled");
    let again = opsloop(
        endpoint,
        &["mission", "cancel", &mission_id, "--reason", "twice"],
    )
    .await;
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("FAILED_PRECONDITION: "));

    // Policy: set, then read back the new revision.
    let before = json_of(&run(&["policy", "get", "x_autopost"]).await, "policy get");
    let set = json_of(
        &run(&[
            "policy",
            "set",
            "x_autopost",
            r#"{"enabled": true}"#,
            "--reason",
            "rollout",
        ])
        .await,
        "policy set",
    );
    assert_eq!(set["policy"]["value"], serde_json::json!({"enabled": true}));
    assert_eq!(set["previous_value"], before["value"]);
    assert!(set["policy"]["version"].as_i64().unwrap() > before["version"].as_i64().unwrap());
    let bad = run(&[
        "policy",
        "set",
        "x_autopost",
        r#"{"enabled": "yes"}"#,
        "--reason",
        "typo",
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("INVALID_ARGUMENT: "),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Events: emit, then find it by kind.
    let emitted = json_of(
        &run(&[
            "event",
            "emit",
            "--kind",
            "engagement:high",
            "--tag",
            "env:test",
            "--payload",
            r#"{"post": 7}"#,
        ])
        .await,
        "emit",
    );
    let events = json_of(
        &run(&["event", "list", "--kind", "engagement:*"]).await,
        "event list",
    );
    assert_eq!(events["events"][0]["id"], emitted["id"]);
    assert_eq!(events["events"][0]["payload"]["post"], 7);
    assert_eq!(events["events"][0]["tags"], serde_json::json!(["env:test"]));

    // Triggers: add, list, remove by name.
    let trigger = json_of(
        &run(&[
            "trigger", "add", "--name", "quiet-6h", "--cooldown", "1h", "--condition",
            r#"{"type": "absence", "kind": "post.published", "window_seconds": 21600}"#, "--action",
            r#"{"title": "check posting", "agent": "ops", "steps": [{"kind": "analyze", "payload": {}}]}"#,
        ])
        .await,
        "trigger add",
    );
    assert_eq!(trigger["cooldown_seconds"], 3600);
    let triggers = json_of(&run(&["trigger", "list"]).await, "trigger list");
    assert_eq!(triggers["triggers"][0]["name"], "quiet-6h");
    json_of(&run(&["trigger", "rm", "quiet-6h"]).await, "trigger rm");
    let triggers = json_of(&run(&["trigger", "list"]).await, "trigger list");
    // What is left are the seeded starter rules, all disabled.
    let left = triggers["triggers"].as_array().expect("triggers");
    assert_eq!(left.len(), 4, "{triggers}");
    assert!(
        left.iter().all(|t| t["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("starter: "))
            && t["enabled"] == false),
        "{triggers}"
    );

    // The weekly report the heartbeat stores is read back through the api.
    let start = chrono::Utc::now() - chrono::Duration::days(7);
    reports::ActiveModel {
        id: Set(sea_orm::prelude::Uuid::new_v4()),
        kind: Set("weekly".into()),
        period_start: Set(start),
        period_end: Set(start + chrono::Duration::days(7)),
        // Exactly what the heartbeat-worker's report phase writes.
        body: Set(opsloop_heartbeat_worker::report::weekly_body(
            &opsloop_heartbeat_worker::report::WeeklyInput {
                period_start: start,
                period_end: start + chrono::Duration::days(7),
                missions: [("succeeded".to_owned(), 9), ("failed".to_owned(), 1)]
                    .into_iter()
                    .collect(),
                cost_usd: 4.5,
                budget_usd: 186.0,
                ..Default::default()
            },
        )),
        created_at: Set(chrono::Utc::now()),
    }
    .insert(&api.db.db)
    .await
    .unwrap();
    let report = json_of(&run(&["report", "weekly"]).await, "report weekly");
    assert_eq!(report["missions_total"], 10);
    assert_eq!(report["mission_success_rate"], 0.9);
    let table = run(&["--output", "table", "report", "weekly"]).await;
    assert!(table.status.success());
    assert!(
        String::from_utf8_lossy(&table.stdout)
            .contains("10 finished: 9 succeeded, 1 failed, 0 cancelled (90.0% success)")
    );
    let missing = run(&["report", "weekly", "--week-of", "2020-01-01"]).await;
    assert!(
        String::from_utf8_lossy(&missing.stderr).starts_with("NOT_FOUND: "),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // The summary counts what happened above.
    let summary = json_of(&run(&["summary"]).await, "summary");
    assert_eq!(summary["period"], "daily");
    assert_eq!(summary["proposals"]["rejected"], 1);
    assert_eq!(summary["missions"]["cancelled"], 1);

    api.stop().await;
}

/// Day-two repairs without SQL: a dead-lettered step listed, shown and
/// retried once as a new proposal; a quarantined event put back in the
/// retry set; a policy key's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadletter_quarantine_and_policy_history_commands() {
    use opsloop_core::domain::input::{NewProposal, ProposalSource, StepKind, StepSpec};
    use opsloop_core::workflow::{self, ClaimOutcome};
    use sea_orm::ConnectionTrait;

    let api = RunningApi::start().await;
    let endpoint = api.endpoint.as_str();
    let db = &api.db.db;
    let now = chrono::Utc::now();

    // A step that fails for good (one attempt allowed), written through the
    // same workflow functions the api runs.
    let kind = StepKind::parse("kind", "echo").unwrap();
    let submitted = workflow::submit_proposal(
        db,
        NewProposal {
            title: "nightly digest".into(),
            source: ProposalSource::Api,
            agent: "digest-bot".into(),
            dedupe_key: None,
            steps: vec![StepSpec {
                kind: kind.clone(),
                payload: serde_json::json!({"channel": "ops"}),
                max_attempts: Some(1),
            }],
            parallel: false,
            metadata: serde_json::json!({}),
            trace_id: None,
        },
        now,
    )
    .await
    .unwrap();
    assert!(
        submitted.proposal.mission_id.is_some(),
        "echo is auto-approved"
    );
    let ClaimOutcome::Claimed(step) = workflow::claim_step(db, "w1", &[kind], None, now)
        .await
        .unwrap()
    else {
        panic!("nothing to claim");
    };
    workflow::fail_step(
        db,
        step.id,
        "w1",
        1,
        "upstream 502\nretry later",
        true,
        None,
        now,
    )
    .await
    .unwrap();

    let listed = json_of(
        &opsloop(endpoint, &["deadletter", "list"]).await,
        "deadletter list",
    );
    let dead = &listed["dead_letters"][0];
    assert_eq!(dead["kind"], "echo", "{listed}");
    assert_eq!(dead["error"], "upstream 502\nretry later");
    let id = dead["id"].as_str().unwrap().to_owned();
    let shown = json_of(
        &opsloop(endpoint, &["deadletter", "show", &id]).await,
        "show",
    );
    assert_eq!(shown["payload"]["channel"], "ops");
    assert_eq!(shown["retried_proposal_id"], Value::Null);

    let retried = json_of(
        &opsloop(endpoint, &["deadletter", "retry", &id]).await,
        "retry",
    );
    assert_eq!(retried["proposal"]["status"], "approved", "{retried}");
    assert_eq!(retried["proposal"]["source"], "manual");
    assert_eq!(retried["dead_letter"]["retried_by"], "e2e");
    assert_eq!(
        retried["dead_letter"]["retried_proposal_id"],
        retried["proposal"]["id"]
    );
    let again = opsloop(endpoint, &["deadletter", "retry", &id]).await;
    assert_eq!(
        again.status.code(),
        Some(7),
        "a second retry is a failed precondition"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("was retried by e2e"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let waiting = json_of(&opsloop(endpoint, &["deadletter", "list"]).await, "list");
    assert_eq!(waiting["dead_letters"], serde_json::json!([]));
    let all = json_of(
        &opsloop(endpoint, &["deadletter", "list", "--all"]).await,
        "list --all",
    );
    assert_eq!(all["dead_letters"][0]["id"], id.as_str());
    let unknown = opsloop(endpoint, &["deadletter", "show", "not-a-uuid"]).await;
    assert_eq!(
        unknown.status.code(),
        Some(3),
        "a malformed id is an invalid argument"
    );

    // A quarantined event back in the retry set.
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        db.get_database_backend(),
        "INSERT INTO event_quarantine (id, consumer, event_seq, failures, last_error, \
         created_at, updated_at) VALUES ($1, 'reactions', 7, 3, 'template: unknown field', $2, $2)",
        vec![sea_orm::prelude::Uuid::now_v7().into(), now.into()],
    ))
    .await
    .unwrap();
    let quarantined = json_of(&opsloop(endpoint, &["quarantine", "list"]).await, "q list");
    assert_eq!(quarantined["events"][0]["failures"], 3, "{quarantined}");
    let back = json_of(
        &opsloop(endpoint, &["quarantine", "retry", "reactions", "7"]).await,
        "q retry",
    );
    assert_eq!(back["events"][0]["failures"], 0, "{back}");
    let missing = opsloop(endpoint, &["quarantine", "retry", "reactions", "8"]).await;
    assert_eq!(missing.status.code(), Some(4), "not found");

    // A policy change, then its history.
    json_of(
        &opsloop(
            endpoint,
            &[
                "policy",
                "set",
                "x_autopost",
                r#"{"enabled": true}"#,
                "--reason",
                "phase B",
            ],
        )
        .await,
        "policy set",
    );
    let history = json_of(
        &opsloop(endpoint, &["policy", "history", "x_autopost"]).await,
        "policy history",
    );
    let newest = &history["changes"][0];
    assert_eq!(newest["actor"], "e2e", "{history}");
    assert_eq!(newest["reason"], "phase B");
    assert_eq!(newest["new_value"]["enabled"], true);

    api.stop().await;
}

/// `opsloop rollout`: nothing yet (exit 4), the default template started
/// (phase A's toggles written), a second refused, advance refused on
/// `wait` (exit 7, naming what is open) and forced only with a reason,
/// status with the report, a file spec with a bad field refused naming it,
/// rollback back to A.
#[tokio::test]
async fn rollout_commands() {
    let api = RunningApi::start().await;
    let endpoint = api.endpoint.as_str();

    let none = opsloop(endpoint, &["rollout", "status"]).await;
    assert_eq!(none.status.code(), Some(4), "no rollout yet");

    let created = json_of(
        &opsloop(endpoint, &["rollout", "create", "--name", "launch"]).await,
        "rollout create",
    );
    assert_eq!(
        created["rollout"]["phases"],
        serde_json::json!(["A", "B", "C", "D"])
    );
    assert_eq!(created["rollout"]["created_by"], "e2e");
    let again = opsloop(endpoint, &["rollout", "create"]).await;
    assert_eq!(again.status.code(), Some(7), "one active rollout");

    let status = json_of(&opsloop(endpoint, &["rollout", "status"]).await, "status");
    assert_eq!(status["report"]["verdict"], "wait", "{status}");
    let criteria = status["report"]["criteria"].as_array().expect("criteria");
    assert_eq!(criteria.len(), 4, "{status}");
    assert_eq!(criteria[0]["measured"], "no mission finished yet");

    let refused = opsloop(endpoint, &["rollout", "advance"]).await;
    assert_eq!(refused.status.code(), Some(7), "wait is not go");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("phase A is wait"), "{stderr}");
    let no_reason = opsloop(endpoint, &["rollout", "advance", "--force"]).await;
    assert_eq!(
        no_reason.status.code(),
        Some(2),
        "clap: --force needs --reason"
    );
    let forced = json_of(
        &opsloop(
            endpoint,
            &["rollout", "advance", "--force", "--reason", "launch day"],
        )
        .await,
        "forced advance",
    );
    assert_eq!(forced["rollout"]["phase_index"], 1, "{forced}");
    let toggle = json_of(
        &opsloop(endpoint, &["policy", "get", "x_autopost"]).await,
        "x_autopost",
    );
    assert_eq!(toggle["value"]["enabled"], true, "phase B turns on x");
    assert_eq!(toggle["updated_by"], "e2e");

    let back = json_of(
        &opsloop(endpoint, &["rollout", "rollback", "--reason", "too noisy"]).await,
        "rollback",
    );
    assert_eq!(back["rollout"]["phase_index"], 0, "{back}");
    let toggle = json_of(
        &opsloop(endpoint, &["policy", "get", "x_autopost"]).await,
        "x_autopost",
    );
    assert_eq!(toggle["value"]["enabled"], false, "phase A again");
    json_of(
        &opsloop(endpoint, &["rollout", "rollback", "--reason", "done"]).await,
        "end",
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rollout.json");
    std::fs::write(
        &file,
        r#"{"name": "bad", "phases": [{"name": "A", "min_duration_secs": 60, "criteria": []}]}"#,
    )
    .unwrap();
    let bad = opsloop(
        endpoint,
        &["rollout", "create", "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(bad.status.code(), Some(3), "invalid argument");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("phases[0].criteria"), "{stderr}");
    api.stop().await;
}
