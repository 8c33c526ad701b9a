//! The heartbeat against real databases (fresh PostgreSQL per test, SQLite
//! where noted) with an injected clock: phases and ticks are driven by
//! calling them with an explicit `now`.

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, DurationRound, Utc};
use opsloop_core::domain::input::{
    EventKind, NewEvent, NewProposal, ProposalSource, StepKind, StepSpec,
};
use opsloop_core::domain::rule_spec::{EventFilter, parse_json};
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_core::workflow::{self, ClaimOutcome, PolicyChange};
use opsloop_heartbeat_worker::insight_rules::Candidate;
use opsloop_heartbeat_worker::insights::Summarizer;
use opsloop_heartbeat_worker::rules::Firing;
use opsloop_heartbeat_worker::triggers::{self, FireOutcome};
use opsloop_heartbeat_worker::{
    Fault, Heartbeat, HeartbeatSettings, Phase, PhaseStatus, TickOutcome, reactions,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

// ---- helpers -------------------------------------------------------------

/// A fixed past instant, ten minutes past an hour (so one-hour buckets and
/// Tokyo days do not roll over inside a test).
fn base() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(Duration::hours(1))
        .expect("trunc")
        - Duration::hours(2)
        + Duration::minutes(10)
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn settings(id: &str) -> HeartbeatSettings {
    HeartbeatSettings {
        instance_id: Some(id.to_owned()),
        http_addr: "127.0.0.1:0".into(),
        // The schedule tests below were written for this zone (the default
        // is UTC); pinned so they keep testing a zone away from UTC.
        summary_timezone: "Asia/Tokyo".into(),
        ..Default::default()
    }
}

fn heartbeat(db: &TestDb, id: &str) -> Heartbeat {
    Heartbeat::new(db.db.clone(), None, settings(id)).expect("heartbeat")
}

async fn emit(
    db: &DatabaseConnection,
    kind: &str,
    tags: &[&str],
    payload: Value,
    cost: Option<f64>,
    at: DateTime<Utc>,
) -> Uuid {
    let event = NewEvent {
        kind: EventKind::parse("kind", kind).expect("kind"),
        source: "agent-1".into(),
        payload,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        cost_usd: cost,
        proposal_id: None,
        mission_id: None,
        step_id: None,
    };
    workflow::append_event(db, event, at)
        .await
        .expect("append")
        .id
}

async fn rule(db: &DatabaseConnection, name: &str, condition: Value, cooldown: u64) -> Uuid {
    workflow::triggers::create_trigger(
        db,
        workflow::triggers::NewTrigger {
            name: name.into(),
            enabled: true,
            condition,
            action: json!({"title": "React to {{rule.name}} {{event.kind}}",
                           "steps": [{"kind": "analyze", "payload": {"window": "{{window}}"}}]}),
            cooldown_seconds: cooldown,
        },
        "test",
        None,
        base(),
    )
    .await
    .expect("create trigger")
    .id
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n")
}

async fn proposals(db: &DatabaseConnection, source: &str) -> i64 {
    scalar(
        db,
        &format!("SELECT COUNT(*) AS n FROM proposals WHERE source = '{source}'"),
    )
    .await
}

async fn alerts(db: &DatabaseConnection, alertname: &str) -> Vec<Value> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT routing_key, payload FROM outbox WHERE routing_key LIKE 'alert.%' ORDER BY id",
        ))
        .await
        .expect("outbox");
    rows.into_iter()
        .map(|r| {
            let key: String = r.try_get("", "routing_key").expect("key");
            let mut payload: Value = r.try_get("", "payload").expect("payload");
            payload["routing_key"] = json!(key);
            payload
        })
        .filter(|p| p["labels"]["alertname"] == alertname)
        .collect()
}

async fn submit(
    db: &DatabaseConnection,
    kind: &str,
    max_attempts: Option<u32>,
    at: DateTime<Utc>,
) -> workflow::ProposalView {
    let proposal = NewProposal {
        title: "work".into(),
        source: ProposalSource::Api,
        agent: "tester".into(),
        dedupe_key: None,
        steps: vec![StepSpec {
            kind: StepKind::parse("kind", kind).expect("kind"),
            payload: json!({}),
            max_attempts,
        }],
        parallel: false,
        metadata: json!({}),
        trace_id: None,
    };
    workflow::submit_proposal(db, proposal, at)
        .await
        .expect("submit")
        .proposal
}

async fn claim(
    db: &DatabaseConnection,
    worker: &str,
    lease: u32,
    at: DateTime<Utc>,
) -> opsloop_core::store::entities::mission_steps::Model {
    match workflow::claim_step(
        db,
        worker,
        &[StepKind::parse("k", "analyze").expect("kind")],
        Some(lease),
        at,
    )
    .await
    .expect("claim")
    {
        ClaimOutcome::Claimed(step) => *step,
        other => panic!("nothing claimed: {other:?}"),
    }
}

async fn run(hb: &Heartbeat, phase: Phase, now: DateTime<Utc>) -> Value {
    hb.run_phase(phase, now, 0).await.expect("phase runs")
}

// ---- triggers --------------------------------------------------------------

#[tokio::test]
async fn event_count_fires_at_threshold_once_then_cools_down() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    rule(
        db,
        "burst",
        json!({"type": "event_count", "kind": "post.*", "window_seconds": 600, "min_count": 2}),
        3600,
    )
    .await;

    emit(db, "post.published", &[], json!({}), None, t0).await;
    emit(db, "step.failed", &[], json!({}), None, t0).await;
    run(&hb, Phase::Triggers, t0 + secs(1)).await;
    assert_eq!(
        proposals(db, "trigger").await,
        0,
        "one matching event is below the threshold"
    );

    emit(db, "post.published", &[], json!({}), None, t0 + secs(2)).await;
    let counts = run(&hb, Phase::Triggers, t0 + secs(3)).await;
    assert_eq!(counts["fired"], 1, "{counts}");
    assert_eq!(proposals(db, "trigger").await, 1);
    let title = scalar(db, "SELECT COUNT(*) AS n FROM proposals WHERE title = 'React to burst post.published' AND status = 'approved'").await;
    assert_eq!(title, 1, "template rendered, gates approved");
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'trigger.fired'"
        )
        .await,
        1
    );

    // Same facts: not again. New fact inside the cooldown: not again.
    let idle = run(&hb, Phase::Triggers, t0 + secs(4)).await;
    assert_eq!(
        idle["evaluated"], 0,
        "no new matching event, nothing to evaluate: {idle}"
    );
    emit(db, "post.published", &[], json!({}), None, t0 + secs(5)).await;
    let counts = run(&hb, Phase::Triggers, t0 + secs(6)).await;
    assert_eq!(counts["cooling_down"], 1, "{counts}");
    assert_eq!(proposals(db, "trigger").await, 1);

    // The window passed the first events; the boundary is inclusive.
    let later = t0 + secs(3 + 3600);
    emit(
        db,
        "post.published",
        &[],
        json!({}),
        None,
        later - secs(600),
    )
    .await;
    emit(db, "post.published", &[], json!({}), None, later).await;
    let counts = run(&hb, Phase::Triggers, later).await;
    assert_eq!(counts["fired"], 1, "{counts}");
    assert_eq!(proposals(db, "trigger").await, 2);
    assert_eq!(
        scalar(
            db,
            "SELECT fire_count AS n FROM trigger_rules WHERE name = 'burst'"
        )
        .await,
        2
    );
    t.cleanup().await;
}

#[tokio::test]
async fn absence_fires_only_after_the_window_and_once_per_silence() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    rule(
        db,
        "backups",
        json!({"type": "absence", "kind": "backup.succeeded", "window_seconds": 3600}),
        0,
    )
    .await;
    emit(db, "backup.succeeded", &[], json!({}), None, t0).await;

    run(&hb, Phase::Triggers, t0 + secs(3600)).await;
    assert_eq!(
        proposals(db, "trigger").await,
        0,
        "an event exactly one window ago still counts"
    );
    run(&hb, Phase::Triggers, t0 + secs(3601)).await;
    assert_eq!(proposals(db, "trigger").await, 1);
    run(&hb, Phase::Triggers, t0 + secs(3602)).await;
    assert_eq!(
        proposals(db, "trigger").await,
        1,
        "same silent period: once"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn failure_rate_fires_at_the_threshold() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    rule(
        db,
        "rate",
        json!({"type": "failure_rate", "window_seconds": 600, "threshold": 0.5, "min_events": 3}),
        0,
    )
    .await;
    emit(db, "step.failed", &[], json!({}), None, t0).await;
    emit(db, "step.succeeded", &[], json!({}), None, t0).await;
    run(&hb, Phase::Triggers, t0 + secs(1)).await;
    assert_eq!(proposals(db, "trigger").await, 0, "below min_events");
    emit(db, "step.succeeded", &[], json!({}), None, t0 + secs(2)).await;
    run(&hb, Phase::Triggers, t0 + secs(3)).await;
    assert_eq!(proposals(db, "trigger").await, 0, "1/3 is below 0.5");
    emit(db, "step.failed", &[], json!({}), None, t0 + secs(4)).await;
    run(&hb, Phase::Triggers, t0 + secs(5)).await;
    assert_eq!(proposals(db, "trigger").await, 1, "2/4 reaches 0.5");
    t.cleanup().await;
}

#[tokio::test]
async fn stalled_missions_fire_after_the_quiet_period() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    submit(db, "analyze", None, t0).await;
    rule(
        db,
        "stalled",
        json!({"type": "all", "conditions": [
        {"type": "stalled_missions", "older_than_seconds": 600}]}),
        0,
    )
    .await;
    run(&hb, Phase::Triggers, t0 + secs(599)).await;
    assert_eq!(proposals(db, "trigger").await, 0);
    run(&hb, Phase::Triggers, t0 + secs(600)).await;
    assert_eq!(proposals(db, "trigger").await, 1);
    run(&hb, Phase::Triggers, t0 + secs(700)).await;
    assert_eq!(proposals(db, "trigger").await, 1, "same stalled set: once");
    t.cleanup().await;
}

#[tokio::test]
async fn two_heartbeats_racing_fire_once() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let a = heartbeat(&t, "a");
    let b = heartbeat(&t, "b");
    let t0 = base();
    rule(
        db,
        "cooled",
        json!({"type": "event_count", "kind": "post.*", "window_seconds": 600, "min_count": 1}),
        3600,
    )
    .await;
    rule(
        db,
        "uncooled",
        json!({"type": "event_count", "kind": "post.*", "window_seconds": 600, "min_count": 1}),
        0,
    )
    .await;
    emit(db, "post.published", &[], json!({}), None, t0).await;
    for round in 0..3 {
        let now = t0 + secs(1 + round);
        let (x, y) = tokio::join!(
            a.run_phase(Phase::Triggers, now, 0),
            b.run_phase(Phase::Triggers, now, 1)
        );
        x.expect("a");
        y.expect("b");
    }
    assert_eq!(proposals(db, "trigger").await, 2, "each rule once");
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM trigger_fires WHERE outcome = 'fired'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            db,
            "SELECT CAST(SUM(fire_count) AS BIGINT) AS n FROM trigger_rules"
        )
        .await,
        2
    );
    t.cleanup().await;
}

/// Many `fire` calls for one rule and one fact window at once (as from
/// several heartbeats): exactly one proposal, one ledger row, one
/// `trigger.fired` event, one cooldown start.
async fn racing_fires_fire_once(t: TestDb) {
    let db = &t.db;
    let t0 = base();
    let condition =
        json!({"type": "event_count", "kind": "post.*", "window_seconds": 600, "min_count": 1});
    rule(db, "cooled", condition.clone(), 3600).await;
    rule(db, "uncooled", condition, 0).await;
    let rules = workflow::triggers::list_triggers(db, Some(true), None, 10)
        .await
        .expect("rules");
    let firing = Firing {
        window_key: "count:1".into(),
        event: None,
        detail: json!({"type": "event_count"}),
    };
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (db, rule, firing) = (db.clone(), rules[i % 2].clone(), firing.clone());
        racers.spawn(async move { triggers::fire(&db, &rule, &firing, t0 + secs(1)).await });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = racers.join_next().await {
        outcomes.push(joined.expect("task").expect("fire"));
    }
    let count = |o: FireOutcome| outcomes.iter().filter(|x| **x == o).count();
    assert_eq!(count(FireOutcome::Fired), 2, "{outcomes:?}");
    assert_eq!(count(FireOutcome::Rejected), 0, "{outcomes:?}");
    assert_eq!(
        count(FireOutcome::AlreadyFired) + count(FireOutcome::CoolingDown),
        22
    );
    assert_eq!(
        count(FireOutcome::CoolingDown),
        11,
        "the cooled rule's losers"
    );
    assert_eq!(proposals(db, "trigger").await, 2);
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM trigger_fires").await,
        2
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'trigger.fired'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM trigger_rules WHERE fire_count = 1 AND last_fired_at IS NOT NULL"
        )
        .await,
        2
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_fires_of_one_window_fire_once_on_postgres() {
    racing_fires_fire_once(fresh_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_fires_of_one_window_fire_once_on_sqlite() {
    racing_fires_fire_once(fresh_sqlite().await).await;
}

#[tokio::test]
async fn a_gate_rejection_is_recorded_and_does_not_start_the_cooldown() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    rule(
        db,
        "r",
        json!({"type": "event_count", "kind": "post.*", "window_seconds": 600, "min_count": 1}),
        3600,
    )
    .await;
    workflow::engage_emergency_stop(db, "tester", "drill", None, t0)
        .await
        .expect("engage");
    emit(db, "post.published", &[], json!({}), None, t0).await;
    let counts = run(&hb, Phase::Triggers, t0 + secs(1)).await;
    assert_eq!(counts["rejected"], 1, "{counts}");
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM trigger_fires WHERE outcome = 'rejected'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM trigger_rules WHERE name = 'r' AND last_fired_at IS NULL AND fire_count = 0"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM cooldowns WHERE name LIKE 'trigger.pending:%'"
        )
        .await,
        1,
        "the rule stays pending"
    );
    workflow::release_emergency_stop(db, "tester", "drill over", None, t0 + secs(2))
        .await
        .expect("release");
    let counts = run(&hb, Phase::Triggers, t0 + secs(3)).await;
    assert_eq!(counts["fired"], 1, "{counts}");
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM proposals WHERE source = 'trigger' AND status = 'approved'"
        )
        .await,
        1
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_malformed_event_is_retried_then_quarantined_and_the_cursor_moves_on() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    assert_eq!(hb.settings().quarantine_after_failures, 3, "the default");
    let t0 = base();
    emit(db, "post.published", &[], json!({}), None, t0).await;
    db.execute_unprepared("UPDATE events SET tags = '{\"not\": \"a list\"}'")
        .await
        .expect("corrupt");
    emit(db, "post.published", &[], json!({}), None, t0).await;
    let quarantine = "SELECT COUNT(*) AS n FROM event_quarantine WHERE consumer = 'triggers' \
                      AND failures >= 3 AND last_error LIKE '%tags%'";
    // Attempt 1: both new events examined; the bad one goes to the retry set.
    let counts = run(&hb, Phase::Triggers, t0 + secs(1)).await;
    assert_eq!(counts["new_events"], 2, "{counts}");
    assert_eq!(counts["failed"], 1, "{counts}");
    assert_eq!(counts["quarantined"], 0, "{counts}");
    // Attempts 2 and 3 retry only that event; the third quarantines it.
    let counts = run(&hb, Phase::Triggers, t0 + secs(2)).await;
    assert_eq!(
        (counts["new_events"].as_i64(), counts["failed"].as_i64()),
        (Some(0), Some(1)),
        "{counts}"
    );
    let counts = run(&hb, Phase::Triggers, t0 + secs(3)).await;
    assert_eq!(counts["quarantined"], 1, "{counts}");
    assert_eq!(
        scalar(db, quarantine).await,
        1,
        "the record: reason and attempts"
    );
    // Never looked at again; new events still flow.
    emit(db, "post.published", &[], json!({}), None, t0 + secs(4)).await;
    for i in 5..8 {
        let counts = run(&hb, Phase::Triggers, t0 + secs(i)).await;
        assert_eq!(counts["failed"], 0, "{counts}");
        assert_eq!(counts["quarantined"], 0, "{counts}");
        assert_eq!(counts["retried"], 0, "{counts}");
        assert_eq!(counts["new_events"], i64::from(i == 5), "{counts}");
    }
    assert_eq!(
        scalar(
            db,
            "SELECT CAST(MAX(seq) AS BIGINT) AS n FROM events WHERE kind = 'post.published'"
        )
        .await,
        scalar(
            db,
            "SELECT last_seq AS n FROM event_cursors WHERE consumer = 'triggers'"
        )
        .await
    );
    assert_eq!(scalar(db, quarantine).await, 1);
    t.cleanup().await;
}

#[tokio::test]
async fn an_event_repaired_before_its_last_attempt_is_evaluated_and_fires() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let mut s = settings("a");
    s.quarantine_after_failures = 2;
    let hb = Heartbeat::new(db.clone(), None, s).expect("heartbeat");
    let t0 = base();
    rule(
        db,
        "r",
        json!({"type": "event_count", "kind": "deploy.done", "window_seconds": 600, "min_count": 1}),
        0,
    )
    .await;
    emit(db, "deploy.done", &[], json!({}), None, t0).await;
    db.execute_unprepared("UPDATE events SET tags = '[1]' WHERE kind = 'deploy.done'")
        .await
        .expect("corrupt");
    let counts = run(&hb, Phase::Triggers, t0 + secs(1)).await;
    assert_eq!(
        (counts["failed"].as_i64(), counts["fired"].as_i64()),
        (Some(1), Some(0)),
        "{counts}"
    );
    db.execute_unprepared("UPDATE events SET tags = '[]' WHERE kind = 'deploy.done'")
        .await
        .expect("repair");
    let counts = run(&hb, Phase::Triggers, t0 + secs(2)).await;
    assert_eq!(counts["retried"], 1, "{counts}");
    assert_eq!(
        counts["fired"], 1,
        "the retried event wakes its rule: {counts}"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM event_quarantine").await,
        0,
        "a passing retry leaves no record"
    );
    t.cleanup().await;
}

/// A poison event: the database refuses every reaction row for it (a real
/// PostgreSQL trigger, no mock). It is attempted three times on three ticks,
/// then quarantined with the reason; the events around it flow on.
#[tokio::test]
async fn a_reaction_that_keeps_failing_for_one_event_quarantines_only_that_event() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    matrix(db).await;
    let t0 = base();
    let tags = &["engagement:high"];
    emit(
        db,
        "post.published",
        tags,
        json!({"topic": "ok-1"}),
        None,
        t0,
    )
    .await;
    let poison = emit(db, "post.published", tags, json!({"topic": "x"}), None, t0).await;
    db.execute_unprepared(&format!(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.event_id = '{poison}' THEN RAISE EXCEPTION 'poison event'; END IF; \
           RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON reactions \
           FOR EACH ROW EXECUTE FUNCTION refuse_poison();"
    ))
    .await
    .expect("trigger");
    emit(
        db,
        "post.published",
        tags,
        json!({"topic": "ok-2"}),
        None,
        t0,
    )
    .await;
    let mut seen = Vec::new();
    for i in 1..=5 {
        let counts = run(&hb, Phase::Reactions, t0 + secs(i)).await;
        seen.push((
            counts["retried"].as_i64().unwrap_or(-1),
            counts["failed"].as_i64().unwrap_or(-1),
            counts["quarantined"].as_i64().unwrap_or(-1),
        ));
    }
    // (retried, failed, quarantined) per tick.
    assert_eq!(
        seen,
        vec![(0, 1, 0), (1, 1, 0), (1, 0, 1), (0, 0, 0), (0, 0, 0)]
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM event_quarantine WHERE consumer = 'reactions' \
             AND failures = 3 AND last_error LIKE '%poison event%'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM reactions WHERE pattern_id = 'always'"
        )
        .await,
        2,
        "the other two events reacted"
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM event_cursors WHERE consumer = 'reactions' \
             AND last_seq >= (SELECT MAX(seq) FROM events WHERE kind = 'post.published')"
        )
        .await,
        1,
        "the cursor is past every event"
    );
    t.cleanup().await;
}

/// The bus consumer does not circle a poison event forever: one requeue,
/// then the event is left to the tick's catch-up (which quarantines it).
#[tokio::test]
async fn the_bus_consumer_leaves_a_poison_event_to_the_catch_up() {
    let t = fresh_postgres().await;
    let db = &t.db;
    matrix(db).await;
    let t0 = base();
    let poison = emit(
        db,
        "post.published",
        &["engagement:high"],
        json!({"topic": "x"}),
        None,
        t0,
    )
    .await;
    db.execute_unprepared(
        "CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'poison event'; END $$; \
         CREATE TRIGGER refuse_all BEFORE INSERT ON reactions \
           FOR EACH ROW EXECUTE FUNCTION refuse_all();",
    )
    .await
    .expect("trigger");
    let row = workflow::list_events(
        db,
        &workflow::EventFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .expect("events")
    .into_iter()
    .find(|e| e.id == poison)
    .expect("event");
    let bus = Arc::new(opsloop_core::bus::memory::MemoryBus::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(reactions::consume(
        db.clone(),
        bus.clone(),
        "hb.poison".into(),
        stop.clone(),
    ));
    // Let the consumer declare its queue before publishing (I/O wait).
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    opsloop_core::bus::Bus::publish(
        bus.as_ref(),
        opsloop_core::bus::BusMessage::json(
            poison.to_string(),
            "event.post.published",
            &workflow::events::event_json(&row),
        ),
    )
    .await
    .expect("publish");
    let mut settled = false;
    for _ in 0..100 {
        if bus.depth("hb.poison") == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert!(settled, "the poison message left the queue");
    assert!(
        bus.dead_letters("hb.poison").is_empty(),
        "acked, not dead-lettered"
    );
    stop.cancel();
    consumer
        .await
        .expect("joins")
        .expect("consumer stops cleanly");
    let hb = heartbeat(&t, "a");
    for i in 1..=4 {
        run(&hb, Phase::Reactions, t0 + secs(i)).await;
    }
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM event_quarantine WHERE consumer = 'reactions' AND failures = 3"
        )
        .await,
        1,
        "the catch-up quarantined it"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn reactions_retry_then_quarantine_a_malformed_event_on_sqlite() {
    let t = fresh_sqlite().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    emit(db, "post.published", &[], json!({}), None, t0).await;
    db.execute_unprepared("UPDATE events SET tags = '{\"not\": \"a list\"}'")
        .await
        .expect("corrupt");
    let mut seen = Vec::new();
    for i in 1..=5 {
        let counts = run(&hb, Phase::Reactions, t0 + secs(i)).await;
        seen.push((
            counts["failed"].as_i64().unwrap_or(-1),
            counts["quarantined"].as_i64().unwrap_or(-1),
        ));
    }
    assert_eq!(seen, vec![(1, 0), (1, 0), (0, 1), (0, 0), (0, 0)]);
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM event_quarantine WHERE consumer = 'reactions' AND failures = 3"
        )
        .await,
        1
    );
    t.cleanup().await;
}

// ---- reactions -------------------------------------------------------------

async fn matrix(db: &DatabaseConnection) {
    let pattern = |id: &str, p: f64| {
        json!({"id": id, "kind": "post.*", "tags": ["engagement:high"], "target": "writer",
               "probability": p, "cooldown_seconds": 600,
               "template": {"title": "Follow up {{event.payload.topic}}",
                            "steps": [{"kind": "draft", "payload": {"event": "{{event.id}}"}}]}})
    };
    workflow::set_policy(
        db,
        PolicyChange {
            key: "reaction_matrix",
            value: json!({"patterns": [pattern("always", 1.0), pattern("never", 0.0)]}),
            actor: "test",
            reason: None,
            expected_version: None,
        },
        None,
        base(),
    )
    .await
    .expect("set matrix");
}

#[tokio::test]
async fn reactions_honour_probability_cooldown_and_redelivery() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    matrix(db).await;
    let first = emit(
        db,
        "post.published",
        &["engagement:high"],
        json!({"topic": "cats"}),
        None,
        t0,
    )
    .await;
    emit(db, "post.published", &[], json!({}), None, t0).await;
    let counts = run(&hb, Phase::Reactions, t0 + secs(1)).await;
    assert_eq!(
        (
            counts["queued"].as_u64(),
            counts["skipped"].as_u64(),
            counts["proposed"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{counts}"
    );
    assert_eq!(scalar(db, "SELECT COUNT(*) AS n FROM proposals WHERE source = 'reaction' AND agent = 'writer' AND title = 'Follow up cats'").await, 1);
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM reactions WHERE pattern_id = 'never' AND status = 'skipped'"
        )
        .await,
        1
    );

    // Within the cooldown of (always, writer).
    emit(
        db,
        "post.published",
        &["engagement:high"],
        json!({}),
        None,
        t0 + secs(10),
    )
    .await;
    let counts = run(&hb, Phase::Reactions, t0 + secs(11)).await;
    assert_eq!(counts["cooling_down"], 1, "{counts}");
    assert_eq!(proposals(db, "reaction").await, 1);

    // A redelivered event changes nothing.
    let patterns = reactions::load_patterns(db).await.expect("patterns");
    let row = workflow::list_events(
        db,
        &workflow::EventFilter {
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .expect("events")
    .into_iter()
    .find(|e| e.id == first)
    .expect("first event");
    let view = opsloop_heartbeat_worker::db::to_view(&row).expect("view");
    let again = reactions::enqueue(db, &patterns, &view, t0 + secs(700))
        .await
        .expect("enqueue");
    assert_eq!(again.duplicates, 2);
    run(&hb, Phase::Reactions, t0 + secs(701)).await;
    assert_eq!(proposals(db, "reaction").await, 1);

    // After the cooldown, the next matching event reacts.
    emit(
        db,
        "post.published",
        &["engagement:high"],
        json!({}),
        None,
        t0 + secs(702),
    )
    .await;
    run(&hb, Phase::Reactions, t0 + secs(703)).await;
    assert_eq!(proposals(db, "reaction").await, 2);
    t.cleanup().await;
}

#[tokio::test]
async fn the_bus_consumer_is_idempotent_on_the_event_id() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let t0 = base();
    matrix(db).await;
    let id = emit(
        db,
        "post.published",
        &["engagement:high"],
        json!({}),
        None,
        t0,
    )
    .await;
    let row = workflow::list_events(
        db,
        &workflow::EventFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .expect("events")
    .into_iter()
    .find(|e| e.id == id)
    .expect("event");
    let body = workflow::events::event_json(&row);
    let bus: Arc<dyn opsloop_core::bus::Bus> =
        Arc::new(opsloop_core::bus::memory::MemoryBus::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(reactions::consume(
        db.clone(),
        bus.clone(),
        "hb.reactions".into(),
        stop.clone(),
    ));
    // Let the consumer declare its queue before publishing.
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    for _ in 0..2 {
        bus.publish(opsloop_core::bus::BusMessage::json(
            id.to_string(),
            "event.post.published",
            &body,
        ))
        .await
        .expect("publish");
    }
    let mut rows = 0;
    for _ in 0..50 {
        rows = scalar(db, "SELECT COUNT(*) AS n FROM reactions").await;
        if rows == 2 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM reactions").await,
        2,
        "one per pattern, seen {rows}"
    );
    stop.cancel();
    consumer
        .await
        .expect("joins")
        .expect("consumer stops cleanly");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reactions_from_rabbitmq_survive_a_redelivered_event() {
    use opsloop_core::bus::testing::{amqp_url, isolated_settings, queue_name, require_rabbitmq};
    require_rabbitmq().await;
    let t = fresh_postgres().await;
    let db = &t.db;
    matrix(db).await;
    let id = emit(
        db,
        "post.published",
        &["engagement:high"],
        json!({}),
        None,
        base(),
    )
    .await;
    let row = workflow::list_events(
        db,
        &workflow::EventFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .expect("events")
    .into_iter()
    .find(|e| e.id == id)
    .expect("event");
    let body = workflow::events::event_json(&row);
    let bus = opsloop_core::bus::connect(&isolated_settings(&amqp_url()), None)
        .await
        .expect("bus");
    let stop = tokio_util::sync::CancellationToken::new();
    let queue = queue_name("heartbeat.reactions");
    // Declare the queue before publishing: a first consumer that stops at once.
    drop(
        bus.subscribe(opsloop_core::bus::QueueSpec::new(
            queue.clone(),
            &["event.#"],
        ))
        .await
        .expect("declare"),
    );
    let consumer = tokio::spawn(reactions::consume(
        db.clone(),
        bus.clone(),
        queue,
        stop.clone(),
    ));
    for _ in 0..2 {
        bus.publish(opsloop_core::bus::BusMessage::json(
            id.to_string(),
            "event.post.published",
            &body,
        ))
        .await
        .expect("publish");
    }
    let mut rows = 0;
    for _ in 0..100 {
        rows = scalar(db, "SELECT COUNT(*) AS n FROM reactions").await;
        if rows == 2 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM reactions").await,
        2,
        "one per pattern, seen {rows}"
    );
    stop.cancel();
    consumer
        .await
        .expect("joins")
        .expect("consumer stops cleanly");
    t.cleanup().await;
}

// ---- insights ---------------------------------------------------------------

struct Failing;

#[async_trait]
impl Summarizer for Failing {
    async fn summarize(&self, _: &Candidate) -> Result<String, String> {
        Err("endpoint down".into())
    }
}

#[tokio::test]
async fn insights_promote_at_the_threshold_once_and_survive_a_failing_summarizer() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let failing =
        Heartbeat::with_summarizer(db.clone(), None, settings("f"), Arc::new(Failing)).expect("hb");
    let t0 = base();
    let hi = ["engagement:high"];
    emit(
        db,
        "post.metrics",
        &hi,
        json!({"pattern": "Short videos"}),
        None,
        t0 - Duration::days(2),
    )
    .await;
    emit(
        db,
        "post.metrics",
        &hi,
        json!({"pattern": "Short videos"}),
        None,
        t0 - Duration::days(1),
    )
    .await;
    emit(
        db,
        "post.metrics",
        &hi,
        json!({"pattern": "Short videos"}),
        None,
        t0 - Duration::days(8),
    )
    .await;
    let counts = run(&hb, Phase::Insights, t0).await;
    assert_eq!(counts["stored"], 0, "two citations within 7 days: {counts}");

    emit(
        db,
        "post.metrics",
        &hi,
        json!({"pattern": "short videos"}),
        None,
        t0,
    )
    .await;
    let err = failing
        .run_phase(Phase::Insights, t0 + secs(1), 0)
        .await
        .expect_err("summarizer fails");
    assert!(err.to_string().contains("endpoint down"), "{err}");
    assert_eq!(scalar(db, "SELECT COUNT(*) AS n FROM insights").await, 0);

    let counts = run(&hb, Phase::Insights, t0 + secs(2)).await;
    assert_eq!(counts["stored"], 1, "{counts}");
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM insight_sources").await,
        3
    );
    let counts = run(&hb, Phase::Insights, t0 + secs(3)).await;
    assert_eq!(
        counts["stored"], 0,
        "never twice from the same events: {counts}"
    );

    // Three new citations of a near-duplicate pattern: linked, not stored again.
    for i in 0..3 {
        emit(
            db,
            "post.metrics",
            &hi,
            json!({"pattern": "SHORT-videos!"}),
            None,
            t0 + secs(4 + i),
        )
        .await;
    }
    let counts = run(&hb, Phase::Insights, t0 + secs(10)).await;
    assert_eq!(counts["merged_into_existing"], 1, "{counts}");
    assert_eq!(scalar(db, "SELECT COUNT(*) AS n FROM insights").await, 1);
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM insight_sources").await,
        6
    );
    t.cleanup().await;
}

/// Requests the chat endpoint received: (authorization header, body).
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>;

async fn chat_endpoint(status: u16) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let state = state.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    state.lock().expect("lock").push((auth, body));
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        axum::Json(json!({"choices": [{"message": {"role": "assistant",
                            "content": " Short videos keep winning. "}}]})),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test]
async fn insight_summaries_come_from_an_openai_compatible_endpoint_when_configured() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let t0 = base();
    for i in 0..3 {
        emit(
            db,
            "post.metrics",
            &["engagement:high"],
            json!({"pattern": "Short videos"}),
            None,
            t0 + secs(i),
        )
        .await;
    }
    let (broken, _) = chat_endpoint(500).await;
    let failing = opsloop_heartbeat_worker::insights::ChatSummarizer::new(
        &broken,
        "m",
        None,
        StdDuration::from_secs(2),
    )
    .expect("client");
    let hb =
        Heartbeat::with_summarizer(db.clone(), None, settings("f"), Arc::new(failing)).expect("hb");
    let err = hb
        .run_phase(Phase::Insights, t0 + secs(5), 0)
        .await
        .expect_err("500 fails the phase");
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(scalar(db, "SELECT COUNT(*) AS n FROM insights").await, 0);

    let (url, seen) = chat_endpoint(200).await;
    let chat = opsloop_heartbeat_worker::insights::ChatSummarizer::new(
        &url,
        "test-model",
        Some(opsloop_core::secrets::Secret::new("sk-test")),
        StdDuration::from_secs(2),
    )
    .expect("client");
    let hb =
        Heartbeat::with_summarizer(db.clone(), None, settings("c"), Arc::new(chat)).expect("hb");
    let counts = run(&hb, Phase::Insights, t0 + secs(6)).await;
    assert_eq!(counts["stored"], 1, "{counts}");
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT summary FROM insights",
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        row.try_get::<String>("", "summary").expect("summary"),
        "Short videos keep winning."
    );
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0.as_deref(), Some("Bearer sk-test"));
    assert_eq!(requests[0].1["model"], "test-model");
    t.cleanup().await;
}

// ---- recovery ---------------------------------------------------------------

#[tokio::test]
async fn stale_steps_are_requeued_then_failed_and_old_proposals_expire() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = base();
    let view = submit(db, "analyze", Some(2), t0).await;
    let mission = view.mission_id.expect("auto-approved mission");
    claim(db, "w1", 60, t0).await;
    let counts = run(&hb, Phase::Recovery, t0 + secs(60)).await;
    assert_eq!(
        counts["requeued_steps"], 0,
        "lease not yet expired: {counts}"
    );
    let counts = run(&hb, Phase::Recovery, t0 + secs(61)).await;
    assert_eq!(counts["requeued_steps"], 1, "{counts}");
    claim(db, "w2", 60, t0 + secs(62)).await;
    let counts = run(&hb, Phase::Recovery, t0 + secs(200)).await;
    assert_eq!(counts["failed_steps"], 1, "last attempt: {counts}");
    let m = workflow::get_mission(db, mission).await.expect("mission");
    assert_eq!(m.mission.status, "failed");

    let pending = submit(db, "publish", None, t0).await;
    assert_eq!(pending.proposal.status, "pending");
    run(&hb, Phase::Recovery, t0 + Duration::days(7)).await;
    assert_eq!(
        workflow::get_proposal(db, pending.proposal.id)
            .await
            .expect("p")
            .proposal
            .status,
        "pending"
    );
    let counts = run(&hb, Phase::Recovery, t0 + Duration::days(7) + secs(1)).await;
    assert_eq!(counts["expired_proposals"], 1, "{counts}");
    assert_eq!(
        workflow::get_proposal(db, pending.proposal.id)
            .await
            .expect("p")
            .proposal
            .status,
        "expired"
    );
    t.cleanup().await;
}

// ---- ops health and budget --------------------------------------------------

#[tokio::test]
async fn a_failure_spike_alerts_once_per_cooldown_across_a_restart() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let t0 = base();
    for _ in 0..4 {
        emit(db, "step.failed", &[], json!({}), None, t0).await;
    }
    let hb = heartbeat(&t, "a");
    run(&hb, Phase::OpsHealth, t0 + secs(1)).await;
    assert!(
        alerts(db, "OpsFailureSpike").await.is_empty(),
        "4 is below the threshold"
    );
    emit(db, "step.failed", &[], json!({}), None, t0 + secs(2)).await;
    let counts = run(&hb, Phase::OpsHealth, t0 + secs(3)).await;
    assert_eq!(counts["alerted"], true, "{counts}");
    let sent = alerts(db, "OpsFailureSpike").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["routing_key"], "alert.warning");
    assert_eq!(sent[0]["labels"]["severity"], "warning");
    assert_eq!(sent[0]["labels"]["service"], "heartbeat-worker");
    assert_eq!(sent[0]["annotations"]["failures"], "5");
    assert!(sent[0]["annotations"]["pending_proposals"].is_string());
    assert_eq!(sent[0]["status"], "firing");

    run(&hb, Phase::OpsHealth, t0 + secs(4)).await;
    let restarted = heartbeat(&t, "a-restarted");
    run(&restarted, Phase::OpsHealth, t0 + secs(5)).await;
    assert_eq!(
        alerts(db, "OpsFailureSpike").await.len(),
        1,
        "cooldown survives a restart"
    );

    for _ in 0..5 {
        emit(db, "step.failed", &[], json!({}), None, t0 + secs(3500)).await;
    }
    run(&restarted, Phase::OpsHealth, t0 + secs(3602)).await;
    assert_eq!(
        alerts(db, "OpsFailureSpike").await.len(),
        1,
        "still cooling down"
    );
    run(&restarted, Phase::OpsHealth, t0 + secs(3603)).await;
    assert_eq!(
        alerts(db, "OpsFailureSpike").await.len(),
        2,
        "cooldown over"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn budget_warns_once_per_period_and_engages_the_emergency_stop() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = Arc::new(opsloop_core::audit::AuditLog::new(
        &opsloop_core::config::AuditSettings {
            log_path: dir.path().join("audit.jsonl"),
            ..Default::default()
        },
    ));
    let hb = Heartbeat::new(db.clone(), Some(audit), settings("a")).expect("hb");
    let t0 = Utc::now();
    emit(db, "step.succeeded", &[], json!({}), Some(23.0), t0).await;
    run(&hb, Phase::Budget, t0 + secs(1)).await;
    assert!(
        alerts(db, "OpsBudgetDailyWarning").await.is_empty(),
        "$23 < 80 % of $30"
    );
    emit(db, "step.succeeded", &[], json!({}), Some(1.0), t0).await;
    let counts = run(&hb, Phase::Budget, t0 + secs(2)).await;
    assert_eq!(counts["sent"], json!(["daily_warning"]), "{counts}");
    run(&hb, Phase::Budget, t0 + secs(3)).await;
    assert_eq!(
        alerts(db, "OpsBudgetDailyWarning").await.len(),
        1,
        "once per day"
    );

    emit(db, "step.succeeded", &[], json!({}), Some(80.0), t0).await;
    let counts = run(&hb, Phase::Budget, t0 + secs(4)).await;
    assert_eq!(counts["sent"], json!(["emergency_stop"]), "{counts}");
    let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
    assert!(stop.engaged);
    assert_eq!(stop.actor.as_deref(), Some("heartbeat"));
    let critical = alerts(db, "OpsEmergencyStop").await;
    assert_eq!(critical.len(), 1);
    assert_eq!(critical[0]["routing_key"], "alert.critical");
    assert!(
        std::fs::read_to_string(dir.path().join("audit.jsonl"))
            .expect("audit file")
            .contains("emergency_stop.engage")
    );
    // Honoured by Submit and ClaimStep.
    let rejected = submit(db, "analyze", None, t0 + secs(5)).await;
    assert_eq!(
        rejected.proposal.rejection_reason.as_deref(),
        Some("emergency_stop")
    );
    let outcome = workflow::claim_step(
        db,
        "w",
        &[StepKind::parse("k", "analyze").expect("k")],
        None,
        t0 + secs(5),
    )
    .await
    .expect("claim");
    assert_eq!(outcome, ClaimOutcome::EmergencyStop);
    run(&hb, Phase::Budget, t0 + secs(6)).await;
    assert_eq!(alerts(db, "OpsEmergencyStop").await.len(), 1);
    t.cleanup().await;
}

#[tokio::test]
async fn consecutive_step_failures_engage_the_emergency_stop() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let t0 = Utc::now();
    for i in 0..5 {
        let at = t0 + secs(i);
        submit(db, "analyze", Some(1), at).await;
        let step = claim(db, "w", 60, at).await;
        workflow::fail_step(
            db,
            step.id,
            "w",
            step.attempt as u32,
            "boom",
            false,
            None,
            at,
        )
        .await
        .expect("fail");
        if i == 3 {
            let counts = run(&hb, Phase::Budget, at + secs(1)).await;
            assert_eq!(counts["consecutive_failures"], 4, "{counts}");
        }
    }
    let counts = run(&hb, Phase::Budget, t0 + secs(10)).await;
    assert_eq!(counts["sent"], json!(["emergency_stop"]), "{counts}");
    assert!(
        workflow::emergency_stop_state(db)
            .await
            .expect("stop")
            .0
            .engaged
    );
    t.cleanup().await;
}

#[tokio::test]
async fn the_daily_summary_goes_out_once_per_occurrence() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    // 06:00 Asia/Tokyo is 21:00 UTC the day before.
    let six_jst = Utc::now().duration_trunc(Duration::days(1)).expect("trunc") - Duration::hours(3);
    let counts = run(&hb, Phase::DailySummary, six_jst - secs(1)).await;
    assert_eq!(
        counts["sent"], true,
        "catch-up of the latest occurrence: {counts}"
    );
    let counts = run(&hb, Phase::DailySummary, six_jst + secs(30)).await;
    assert_eq!(counts["sent"], true, "{counts}");
    let counts = run(&hb, Phase::DailySummary, six_jst + secs(300)).await;
    assert_eq!(counts["due"], false, "{counts}");
    let sent = alerts(db, "OpsDailySummary").await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["routing_key"], "alert.info");
    let figures: Value =
        serde_json::from_str(sent[1]["annotations"]["figures"].as_str().expect("figures"))
            .expect("json");
    assert_eq!(figures["period"], "daily");
    assert!(figures["proposals"].is_object());
    t.cleanup().await;
}

#[tokio::test]
async fn the_weekly_report_is_stored_and_sent_once_per_week() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = heartbeat(&t, "a");
    let monday = opsloop_heartbeat_worker::schedule::CronSchedule::parse("0 9 * * 1", "Asia/Tokyo")
        .expect("cron")
        .latest_at_or_before(Utc::now())
        .expect("a Monday");
    let during = monday - Duration::days(1);
    submit(db, "analyze", Some(1), during).await;
    let step = claim(db, "w", 60, during).await;
    workflow::complete_step(
        db,
        step.id,
        "w",
        step.attempt as u32,
        json!({}),
        Some(2.5),
        during + secs(4),
    )
    .await
    .expect("complete");
    submit(db, "analyze", Some(1), during).await;
    let step = claim(db, "w", 60, during + secs(5)).await;
    workflow::fail_step(
        db,
        step.id,
        "w",
        step.attempt as u32,
        "quota exceeded",
        false,
        None,
        during + secs(7),
    )
    .await
    .expect("fail");

    // Upstream usage in the week (priced by the seeded `pricing`: $0.00015
    // per twitterapi call) and after it (not counted).
    let policy = workflow::load_policy(db).await.expect("policy");
    for (calls, when) in [
        (1000, during),
        (2000, during + secs(60)),
        (7, monday + secs(1)),
    ] {
        let usage = [opsloop_core::domain::governance::ResourceUsage {
            resource: "twitterapi".into(),
            calls,
            status_2xx: calls,
            ..Default::default()
        }];
        let costs = workflow::governance::attribute_cost(&usage, &policy.pricing, None);
        workflow::governance::record_usage(db, "post_x", &usage, &costs, &policy.resources, when)
            .await
            .expect("usage");
    }

    // What the SLIs and MTTA/MTTR are computed from: heartbeat ticks (two
    // ok, one partial), the alerter's notification log (three sent, one
    // dead-lettered) and incidents (acknowledged after 2 and 4 min, one
    // resolved after 30 min), all within the week; a tick after it.
    let at = |t: DateTime<Utc>| t.to_rfc3339();
    for (status, ms, tick) in [
        ("ok", 100, during),
        ("ok", 200, during + secs(300)),
        ("partial", 900, during + secs(600)),
        ("partial", 900, monday + secs(1)),
    ] {
        db.execute_unprepared(&format!(
            "INSERT INTO heartbeat_runs (id, tick_at, started_at, finished_at, status, leader, phases, created_at) \
             VALUES ('{}', '{}', '{}', '{}', '{status}', 'a', '[]', '{}')",
            Uuid::now_v7(),
            at(tick),
            at(tick),
            at(tick + Duration::milliseconds(ms)),
            at(tick),
        ))
        .await
        .expect("heartbeat run");
    }
    for status in ["sent", "sent", "sent", "dead_letter"] {
        db.execute_unprepared(&format!(
            "INSERT INTO notification_log (receiver, group_key, state_hash, firing, resolved, status, attempts, created_at) \
             VALUES ('slack', 'g', 'h', '[]', '[]', '{status}', 1, '{}')",
            at(during)
        ))
        .await
        .expect("notification log");
    }
    for (ack, resolved) in [(2, Some(30)), (4, None)] {
        let resolved_at = resolved
            .map(|m| format!("'{}'", at(during + Duration::minutes(m))))
            .unwrap_or_else(|| "NULL".into());
        db.execute_unprepared(&format!(
            "INSERT INTO incidents (id, title, level, state, labels, opened_by, opened_at, acknowledged_at, resolved_at, updated_at) \
             VALUES ('{}', 'Down', 'P0', 'acknowledged', '{{}}', 'alerter', '{}', '{}', {resolved_at}, '{}')",
            Uuid::now_v7(),
            at(during),
            at(during + Duration::minutes(ack)),
            at(during),
        ))
        .await
        .expect("incident");
    }

    let counts = run(&hb, Phase::WeeklyReport, monday + secs(60)).await;
    assert_eq!(counts["sent"], true, "{counts}");
    let counts = run(&hb, Phase::WeeklyReport, monday + secs(120)).await;
    assert_eq!(counts["due"], false, "{counts}");
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM reports WHERE kind = 'weekly'"
        )
        .await,
        1
    );
    let sent = alerts(db, "OpsWeeklyReport").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["routing_key"], "alert.info");
    let body: Value =
        serde_json::from_str(sent[0]["annotations"]["report"].as_str().expect("report"))
            .expect("json");
    assert_eq!(body["missions"]["successRate"], 0.5, "{body}");
    assert_eq!(body["stepsByKind"]["analyze"]["finished"], 2);
    assert_eq!(body["failuresByReason"]["quota exceeded"], 1);
    assert_eq!(body["stepDurationMs"]["samples"], 2);
    assert_eq!(body["cost"]["usd"], 2.5);
    assert_eq!(body["cost"]["byKind"]["analyze"], 2.5);
    let by_resource = &body["cost"]["byResource"];
    assert_eq!(by_resource.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(
        (
            &by_resource[0]["resource"],
            &by_resource[0]["kind"],
            &by_resource[0]["calls"]
        ),
        (&json!("twitterapi"), &json!("post_x"), &json!(3000))
    );
    let usd = by_resource[0]["usd"].as_f64().expect("usd");
    assert!((usd - 0.45).abs() < 1e-9, "{usd}");
    assert!(body["backup"]["lastCompletedAt"].is_null());
    // The month's budget ($800 in Asia/Tokyo) pro-rated over the 7 days,
    // not the daily budget × 7 ($210).
    let start = monday - Duration::days(7);
    let budget = opsloop_heartbeat_worker::report::prorated_budget(
        800.0,
        start,
        monday,
        chrono_tz::Asia::Tokyo,
    );
    let budget_usd = body["cost"]["budgetUsd"].as_f64().expect("budget");
    assert!((budget_usd - budget.usd).abs() < 1e-9, "{body}");
    assert!(
        (800.0 * 7.0 / 31.0..=800.0 * 7.0 / 28.0).contains(&budget_usd),
        "{budget_usd}"
    );
    assert!(
        body["cost"]["budgetBasis"]
            .as_str()
            .expect("basis")
            .starts_with("monthly budget $800.00 pro-rated over 7 days"),
        "{body}"
    );
    // The SLIs from the records, each against its objective.
    let sli = |name: &str| {
        body["slis"]
            .as_array()
            .expect("slis")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no SLI {name}: {body}"))
    };
    let steps = sli("steps");
    assert_eq!(
        (steps["good"].as_i64(), steps["total"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(steps["availability"]["met"], false);
    assert_eq!(
        steps["latencyP95Ms"]["value"], 4000,
        "the slower of 4 s and 2 s"
    );
    assert_eq!(steps["latencyP95Ms"]["met"], false);
    let ticks = sli("heartbeat");
    assert_eq!(
        (ticks["good"].as_i64(), ticks["total"].as_i64()),
        (Some(2), Some(3)),
        "the tick after the week is not counted"
    );
    assert_eq!(ticks["latencyP95Ms"]["value"], 900);
    assert_eq!(ticks["latencyP95Ms"]["objective"], 500);
    assert_eq!(ticks["latencyP95Ms"]["met"], false);
    let delivery = sli("alert_delivery");
    assert_eq!(delivery["availability"]["value"], 0.75);
    assert_eq!(delivery["availability"]["objective"], 0.999);
    assert_eq!(delivery["availability"]["met"], false);
    assert!(
        delivery["latencyP95Ms"].is_null(),
        "no delivery duration is recorded"
    );
    assert_eq!(body["incidents"]["opened"], 2);
    assert_eq!(body["incidents"]["mttaSeconds"], 180.0);
    assert_eq!(body["incidents"]["mttrSeconds"], 1800.0);
    // A readable alert: a summary line and description, not the JSON.
    let annotations = &sent[0]["annotations"];
    assert!(
        annotations["summary"]
            .as_str()
            .expect("summary")
            .contains("objectives 0 met / 5 missed"),
        "{annotations}"
    );
    assert!(
        !annotations["description"]
            .as_str()
            .expect("d")
            .contains('{')
    );
    assert_eq!(
        annotations["command"],
        format!(
            "opsloop report weekly --week-of {}",
            start.format("%Y-%m-%d")
        )
    );

    run(
        &hb,
        Phase::WeeklyReport,
        monday + Duration::days(7) + secs(60),
    )
    .await;
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM reports WHERE kind = 'weekly'"
        )
        .await,
        2
    );
    t.cleanup().await;
}

// ---- the tick --------------------------------------------------------------

#[tokio::test]
async fn only_the_lease_holder_ticks_and_a_standby_takes_over_after_expiry() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let a = heartbeat(&t, "a");
    let b = heartbeat(&t, "b");
    let t0 = base();
    let TickOutcome::Ran(first) = a.tick(t0).await.expect("tick") else {
        panic!("a leads")
    };
    assert_eq!(first.status, "ok", "{first:?}");
    match b.tick(t0 + secs(1)).await.expect("tick") {
        TickOutcome::Skipped { holder, .. } => assert_eq!(holder.as_deref(), Some("a")),
        other => panic!("b must stand by: {other:?}"),
    }
    let TickOutcome::Ran(taken) = b.tick(t0 + secs(31)).await.expect("tick") else {
        panic!("b takes over within one lease period")
    };
    assert!(taken.fencing_token > first.fencing_token);
    assert!(matches!(
        a.tick(t0 + secs(32)).await.expect("tick"),
        TickOutcome::Skipped { .. }
    ));
    assert_eq!(
        scalar(db, "SELECT COUNT(*) AS n FROM heartbeat_runs").await,
        2
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'heartbeat.tick'"
        )
        .await,
        2
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_phase_that_panics_fails_or_times_out_does_not_stop_the_others() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let hb = Heartbeat::new(
        db.clone(),
        None,
        HeartbeatSettings {
            phase_budget_ms: 300,
            ..settings("a")
        },
    )
    .expect("hb");
    hb.inject_fault(Phase::Insights, Fault::Panic);
    hb.inject_fault(Phase::OpsHealth, Fault::Delay(StdDuration::from_secs(5)));
    hb.inject_fault(Phase::Budget, Fault::Fail);
    let TickOutcome::Ran(report) = hb.tick(base()).await.expect("tick") else {
        panic!("leader")
    };
    assert_eq!(report.status, "partial");
    let status = |p| report.phase(p).expect("phase").status;
    assert_eq!(status(Phase::Triggers), PhaseStatus::Ok);
    assert_eq!(status(Phase::Reactions), PhaseStatus::Ok);
    assert_eq!(status(Phase::Insights), PhaseStatus::Panicked);
    assert_eq!(status(Phase::Recovery), PhaseStatus::Ok);
    assert_eq!(status(Phase::OpsHealth), PhaseStatus::Timeout);
    assert_eq!(status(Phase::Budget), PhaseStatus::Error);
    assert_eq!(status(Phase::DailySummary), PhaseStatus::Ok);
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM heartbeat_runs WHERE status = 'partial'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'heartbeat.phase_error'"
        )
        .await,
        1
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_tick_due_while_one_runs_is_skipped() {
    let t = fresh_postgres().await;
    let hb = heartbeat(&t, "a");
    hb.inject_fault(Phase::Triggers, Fault::Delay(StdDuration::from_millis(800)));
    let running = {
        let hb = hb.clone();
        tokio::spawn(async move { hb.tick(base()).await })
    };
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let second = hb.tick(base() + secs(1)).await.expect("tick");
    assert!(
        matches!(
            second,
            TickOutcome::Skipped {
                reason: opsloop_heartbeat_worker::heartbeat::SkipReason::Overlap,
                ..
            }
        ),
        "{second:?}"
    );
    assert!(matches!(
        running.await.expect("joins").expect("tick"),
        TickOutcome::Ran(_)
    ));
    t.cleanup().await;
}

#[tokio::test]
async fn sqlite_ticks_fire_triggers_and_hold_the_lease() {
    let t = fresh_sqlite().await;
    let db = &t.db;
    let a = heartbeat(&t, "a");
    let b = heartbeat(&t, "b");
    let t0 = base();
    rule(
        db,
        "burst",
        json!({"type": "event_count", "kind": "post.*", "window_seconds": 600, "min_count": 1}),
        3600,
    )
    .await;
    emit(db, "post.published", &[], json!({}), None, t0).await;
    let TickOutcome::Ran(report) = a.tick(t0 + secs(1)).await.expect("tick") else {
        panic!("a leads")
    };
    assert_eq!(report.status, "ok", "{report:?}");
    assert_eq!(
        report.phase(Phase::Triggers).expect("phase").counts["fired"],
        1
    );
    assert!(matches!(
        b.tick(t0 + secs(2)).await.expect("tick"),
        TickOutcome::Skipped { .. }
    ));
    let (x, y) = tokio::join!(
        a.run_phase(Phase::Triggers, t0 + secs(3), 1),
        b.run_phase(Phase::Triggers, t0 + secs(3), 2)
    );
    x.expect("a");
    y.expect("b");
    assert_eq!(proposals(db, "trigger").await, 1);
    assert!(matches!(
        b.tick(t0 + secs(40)).await.expect("tick"),
        TickOutcome::Ran(_)
    ));
    t.cleanup().await;
}

#[tokio::test]
async fn post_run_ticks_now_over_http() {
    let t = fresh_postgres().await;
    let daemon = common::RunningHeartbeat::start(&t.url, "http", "").await;
    let addr = daemon.addr;
    let denied = post_run(addr, None).await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let mut answer = String::new();
    for _ in 0..50 {
        answer = post_run(addr, Some(common::ADMIN_TOKEN)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    assert_eq!(body["outcome"], "ran");
    assert_eq!(
        body["phases"].as_array().expect("phases").len(),
        Phase::ALL.len()
    );
    daemon.stop().await;
    let lease = opsloop_heartbeat_worker::db::lease_holder(&t.db, "heartbeat.leader")
        .await
        .expect("lease")
        .expect("row");
    assert!(lease.1 <= Utc::now(), "the lease is released on shutdown");
    t.cleanup().await;
}

async fn post_run(addr: std::net::SocketAddr, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /run HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

// ---- alerts through the outbox -------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn alerts_raised_while_the_broker_is_down_are_delivered_when_it_returns() {
    tokio::time::timeout(StdDuration::from_secs(120), alert_outage_roundtrip())
        .await
        .expect("the outage test finishes within 2 minutes");
}

async fn alert_outage_roundtrip() {
    use opsloop_core::bus::rabbit::RabbitBus;
    use opsloop_core::bus::testing::{
        TcpProxy, amqp_url, isolated_settings, queue_name, require_rabbitmq, via,
    };
    use opsloop_core::bus::{Bus, QueueSpec};
    require_rabbitmq().await;
    let t = fresh_postgres().await;
    let db = &t.db;
    let settings = isolated_settings(&amqp_url());
    let upstream = amqp_url()
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|a| a.rsplit('@').next().unwrap_or(a).to_owned())
        .expect("authority");
    let proxy = TcpProxy::start(&upstream).await.expect("proxy");
    let proxied_url = via(&amqp_url(), proxy.addr);
    let mut proxied = settings.clone();
    proxied.url = proxied_url.clone();
    proxied.publish_timeout_ms = 2_000;
    let relay_bus = RabbitBus::start(proxied, proxied_url);
    let consumer = RabbitBus::start(settings.clone(), amqp_url());
    let mut sub = consumer
        .subscribe(QueueSpec::new(queue_name("heartbeat.alerts"), &["alert.#"]))
        .await
        .expect("subscribe");

    proxy.sever();
    // The heartbeat needs no broker: the alert is an outbox row.
    let hb = heartbeat(&t, "a");
    let six_jst = Utc::now().duration_trunc(Duration::days(1)).expect("trunc") - Duration::hours(3);
    let counts = run(&hb, Phase::DailySummary, six_jst + secs(30)).await;
    assert_eq!(counts["sent"], true, "{counts}");
    let pass = workflow::outbox::relay_once(db, &relay_bus, 100)
        .await
        .expect("relay");
    assert!(pass.failed && pass.published == 0, "{pass:?}");
    let unsent = "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'alert.info' \
                  AND published_at IS NULL";
    assert_eq!(scalar(db, unsent).await, 1, "kept for the relay");

    proxy.restore();
    let mut published = 0;
    while scalar(db, unsent).await > 0 {
        let pass = workflow::outbox::relay_once(db, &relay_bus, 100)
            .await
            .expect("relay");
        published += pass.published;
        if pass.failed {
            // Waiting for the bus to reconnect (I/O, not time logic).
            tokio::time::sleep(StdDuration::from_millis(200)).await;
        }
    }
    assert!(published >= 1);
    let alert = loop {
        let delivery = tokio::time::timeout(StdDuration::from_secs(30), sub.next())
            .await
            .expect("the alert arrives")
            .expect("subscription open");
        let body: Value = serde_json::from_slice(&delivery.message.payload).expect("json");
        delivery.ack().await.expect("ack");
        if delivery_is_summary(&body) {
            break body;
        }
    };
    assert_eq!(alert["labels"]["severity"], "info");
    assert_eq!(alert["status"], "firing");
    let _ = tokio::time::timeout(StdDuration::from_secs(10), consumer.close()).await;
    let _ = tokio::time::timeout(StdDuration::from_secs(10), relay_bus.close()).await;
    t.cleanup().await;
}

fn delivery_is_summary(body: &Value) -> bool {
    body["labels"]["alertname"] == "OpsDailySummary"
}

// ---- window facts: the database answers as the pure evaluator does ---------

async fn window_facts_match_memory(t: TestDb) {
    use opsloop_heartbeat_worker::rules::{EventsInMemory, WindowFacts, WindowQuery};
    use opsloop_heartbeat_worker::{db as hbdb, matching::EventMatcher};
    let db = &t.db;
    let t0 = base();
    let specs: [(&str, &[&str], Value, i64); 9] = [
        ("post.published", &["a"], json!({"n": 1}), -700),
        (
            "post.published",
            &["a", "b"],
            json!({"n": 2, "x": {"y": "z"}}),
            -600,
        ),
        ("post.deleted", &["b"], json!({"n": 1}), -300),
        ("xpost.published", &[], json!({}), -200),
        ("post_x", &["a"], json!({"n": [1, 2]}), -100),
        ("step.failed", &["a[1]"], json!({"x": {"y": "z"}}), -50),
        ("step.succeeded", &[], json!({"n": 2}), -10),
        ("post.published", &["b"], json!({"n": 1}), 0),
        ("post.published", &["a"], json!({"n": 1}), 10),
    ];
    for (kind, tags, payload, offset) in specs {
        emit(db, kind, tags, payload, None, t0 + secs(offset)).await;
    }
    let views: Vec<_> = workflow::list_events(
        db,
        &workflow::EventFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .expect("events")
    .iter()
    .map(|row| hbdb::to_view(row).expect("view"))
    .collect();
    let matchers = [
        json!({}),
        json!({"kind": "post.*"}),
        json!({"kind": "post.published"}),
        json!({"kind": "post_?"}),
        json!({"kind": "*.published", "tags": ["a"]}),
        json!({"tags": ["a", "b"]}),
        json!({"tags": ["a[1]"]}),
        json!({"kind": "post.*", "payload": {"n": 1}}),
        json!({"payload": {"x.y": "z"}}),
        json!({"payload": {"n.1": 2}}),
        json!({"source": "agent-?"}),
        json!({"source": "api"}),
    ];
    let mut checked = 0;
    for spec in &matchers {
        let matcher = EventMatcher::from(parse_json::<EventFilter>("m", spec).expect("matcher"));
        for window in [5, 250, 650, 10_000] {
            for exists_only in [false, true] {
                let query = WindowQuery {
                    matcher: matcher.clone(),
                    window: secs(window),
                    exists_only,
                };
                let want = EventsInMemory(&views).fact(&query, t0);
                let got = hbdb::window_fact(db, &query, t0).await.expect("fact");
                assert_eq!(
                    got, want,
                    "{spec} within {window}s, exists_only={exists_only}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, matchers.len() * 8);
    t.cleanup().await;
}

#[tokio::test]
async fn window_facts_from_postgres_equal_the_in_memory_evaluation() {
    window_facts_match_memory(fresh_postgres().await).await;
}

#[tokio::test]
async fn window_facts_from_sqlite_equal_the_in_memory_evaluation() {
    window_facts_match_memory(fresh_sqlite().await).await;
}
