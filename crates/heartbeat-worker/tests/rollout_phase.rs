//! The heartbeat's rollout phase against real databases with an injected
//! clock: a criterion failing in phase B rolls back to A (A's toggles in
//! force again) with one `OpsRolloutRolledBack` alert carrying the report;
//! an automatic rollout advances on `go`. Also the starter trigger rules:
//! seeded disabled, each a valid rule, and one enabled fires.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use opsloop_core::domain::rollout::{Criterion, PhaseSpec, RolloutSpec};
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite, run_one_step_mission};
use opsloop_core::workflow::triggers::{TriggerUpdate, list_triggers, update_trigger};
use opsloop_core::workflow::{self, rollouts};
use opsloop_heartbeat_worker::rules::Condition;
use opsloop_heartbeat_worker::{Heartbeat, HeartbeatSettings, Phase};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};

fn base() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(Duration::hours(1))
        .expect("trunc")
        - Duration::hours(6)
}

fn heartbeat(db: &TestDb) -> Heartbeat {
    let settings = HeartbeatSettings {
        instance_id: Some("a".into()),
        http_addr: "127.0.0.1:0".into(),
        ..Default::default()
    };
    Heartbeat::new(db.db.clone(), None, settings).expect("heartbeat")
}

fn spec(auto_advance: bool) -> RolloutSpec {
    let phase = |name: &str, x: bool| PhaseSpec {
        name: name.into(),
        description: String::new(),
        toggles: BTreeMap::from([("x_autopost".to_owned(), x)]),
        caps: BTreeMap::new(),
        min_duration_secs: 600,
        criteria: vec![Criterion::MissionSuccessRate {
            kinds: Vec::new(),
            min: 0.9,
            min_missions: 2,
        }],
    };
    RolloutSpec {
        name: "launch".into(),
        phases: vec![phase("A", false), phase("B", true)],
        auto_advance,
    }
}

async fn run_mission(db: &DatabaseConnection, succeed: bool, at: DateTime<Utc>) {
    run_one_step_mission(db, "echo", succeed, at).await;
}

async fn alerts(db: &DatabaseConnection, alertname: &str) -> Vec<Value> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT payload FROM outbox WHERE routing_key LIKE 'alert.%' ORDER BY id",
    ))
    .await
    .expect("outbox")
    .into_iter()
    .map(|r| r.try_get::<Value>("", "payload").expect("payload"))
    .filter(|p| p["labels"]["alertname"] == alertname)
    .collect()
}

async fn x_autopost(db: &DatabaseConnection) -> Value {
    workflow::get_policy(db, "x_autopost")
        .await
        .expect("toggle")
        .value
}

async fn rolls_back_and_advances(t: TestDb) {
    let db = &t.db;
    let hb = heartbeat(&t);
    let t0 = base();
    rollouts::create_rollout(db, spec(false), "alice", None, t0)
        .await
        .expect("create");
    run_mission(db, true, t0 + Duration::minutes(1)).await;
    run_mission(db, true, t0 + Duration::minutes(2)).await;
    let counts = hb
        .run_phase(Phase::Rollout, t0 + Duration::minutes(11), 0)
        .await
        .expect("phase");
    assert_eq!(
        counts["verdict"], "go",
        "manual: waits for a human: {counts}"
    );
    assert!(counts.get("advanced_to").is_none(), "{counts}");
    rollouts::advance_rollout(db, "alice", None, None, t0 + Duration::minutes(12))
        .await
        .expect("advance");
    assert_eq!(x_autopost(db).await, json!({"enabled": true}));

    run_mission(db, false, t0 + Duration::minutes(13)).await;
    run_mission(db, false, t0 + Duration::minutes(14)).await;
    let counts = hb
        .run_phase(Phase::Rollout, t0 + Duration::minutes(15), 0)
        .await
        .expect("phase");
    assert_eq!(counts["rolled_back_to"], "A", "{counts}");
    assert_eq!(x_autopost(db).await, json!({"enabled": false}));
    let sent = alerts(db, "OpsRolloutRolledBack").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let report: Value =
        serde_json::from_str(sent[0]["annotations"]["report"].as_str().expect("report"))
            .expect("json");
    assert_eq!(report["verdict"], "no_go");
    assert_eq!(report["criteria"][0]["measured"], "0.0 % of 2 missions");
    assert_eq!(report["criteria"][0]["state"], "failed");
    // Back in A, judged afresh: nothing failed there since the rollback.
    let counts = hb
        .run_phase(Phase::Rollout, t0 + Duration::minutes(16), 0)
        .await
        .expect("phase");
    assert_eq!(counts["verdict"], "wait", "{counts}");
    assert_eq!(alerts(db, "OpsRolloutRolledBack").await.len(), 1);

    // An automatic rollout advances by itself on go.
    rollouts::rollback_rollout(db, "alice", "start over", None, t0 + Duration::minutes(17))
        .await
        .expect("end");
    let t1 = t0 + Duration::minutes(30);
    rollouts::create_rollout(db, spec(true), "alice", None, t1)
        .await
        .expect("create auto");
    run_mission(db, true, t1 + Duration::minutes(1)).await;
    run_mission(db, true, t1 + Duration::minutes(2)).await;
    let counts = hb
        .run_phase(Phase::Rollout, t1 + Duration::minutes(11), 0)
        .await
        .expect("phase");
    assert_eq!(counts["advanced_to"], "B", "{counts}");
    assert_eq!(x_autopost(db).await, json!({"enabled": true}));
    t.cleanup().await;
}

#[tokio::test]
async fn the_rollout_phase_rolls_back_on_failure_and_advances_automatic_rollouts_on_postgres() {
    rolls_back_and_advances(fresh_postgres().await).await;
}

#[tokio::test]
async fn the_rollout_phase_rolls_back_on_failure_and_advances_automatic_rollouts_on_sqlite() {
    rolls_back_and_advances(fresh_sqlite().await).await;
}

async fn starter_rules_work(t: TestDb) {
    let db = &t.db;
    let rules = list_triggers(db, None, None, 100).await.expect("rules");
    let starters: Vec<_> = rules
        .iter()
        .filter(|r| r.name.starts_with("starter: "))
        .collect();
    assert_eq!(starters.len(), 4, "{rules:?}");
    for rule in &starters {
        assert!(!rule.enabled, "{} is seeded disabled", rule.name);
        Condition::parse("condition", &rule.condition)
            .unwrap_or_else(|e| panic!("{}: {e:?}", rule.name));
        workflow::triggers::validate_action("action", &rule.action)
            .unwrap_or_else(|e| panic!("{}: {e:?}", rule.name));
    }
    // Enabled, the dead man's switch fires on a database with no success.
    let absence = starters
        .iter()
        .find(|r| r.name == "starter: no mission succeeded for a day")
        .expect("absence rule");
    update_trigger(
        db,
        absence.id,
        TriggerUpdate {
            enabled: Some(true),
            ..Default::default()
        },
        "test",
        None,
        base(),
    )
    .await
    .expect("enable");
    let hb = heartbeat(&t);
    hb.run_phase(
        Phase::Triggers,
        base() + Duration::days(1) + Duration::minutes(1),
        0,
    )
    .await
    .expect("triggers");
    let fired = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM proposals WHERE source = 'trigger'",
        ))
        .await
        .expect("count")
        .expect("row")
        .try_get::<i64>("", "n")
        .expect("n");
    assert_eq!(fired, 1);
    t.cleanup().await;
}

#[tokio::test]
async fn starter_trigger_rules_are_seeded_disabled_and_work_on_postgres() {
    starter_rules_work(fresh_postgres().await).await;
}

#[tokio::test]
async fn starter_trigger_rules_are_seeded_disabled_and_work_on_sqlite() {
    starter_rules_work(fresh_sqlite().await).await;
}
