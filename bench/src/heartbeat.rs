//! Heartbeat scaling: the trigger phase (`triggers::run`, the heartbeat's
//! phase 1, called in-process on a fresh database) with 200 rules and a batch
//! of new events, over an event table of two sizes: the time must not grow
//! with the table, and must stay within the phase's 4 s budget.

use std::time::{Duration, Instant};

use anyhow::Context;
use opsloop_core::store::testing::TestDb;
use opsloop_core::workflow::triggers::{NewTrigger, create_trigger};
use opsloop_heartbeat_worker::config::HeartbeatSettings;
use opsloop_heartbeat_worker::heartbeat::Heartbeat;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::env::Env;
use crate::report::Row;

const RULES: usize = 200;

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct HeartbeatArgs {
    /// New events the measured phase examines.
    #[arg(long)]
    pub new_events: Option<u64>,
    /// The smaller event table (the larger is ten times it).
    #[arg(long)]
    pub table_events: Option<u64>,
}

async fn exec(db: &TestDb, sql: &str, n: u64) -> anyhow::Result<()> {
    db.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            vec![i64::try_from(n)?.into()],
        ))
        .await
        .with_context(|| format!("fixture: {}", &sql[..sql.len().min(60)]))?;
    Ok(())
}

/// One measurement: `backlog` old events (spread over the last 30 days, all
/// already examined), then `new` events in the last 5 minutes, then one phase.
async fn measure(env: &Env, backlog: u64, new: u64) -> anyhow::Result<Value> {
    // Half the rules see enough of this batch to fire (creating proposals).
    let firing_count = (new / RULES as u64 / 2).max(1);
    let db = env.database().await;
    let result = async {
        let now = chrono::Utc::now();
        for i in 0..RULES {
            let min_count = if i % 2 == 0 { firing_count } else { 1_000_000 };
            create_trigger(
                &db.db,
                NewTrigger {
                    name: format!("bench-rule-{i}"),
                    enabled: true,
                    condition: json!({"type": "event_count", "kind": format!("bench.r{i}"),
                                      "window_seconds": 600, "min_count": min_count}),
                    action: json!({"title": "React to {{rule.name}}",
                                   "steps": [{"kind": "analyze", "payload": {"window": "{{window}}"}}]}),
                    cooldown_seconds: 3600,
                },
                "opsloop-bench",
                None,
                now,
            )
            .await
            .context("creating a trigger rule")?;
        }
        let filled = Instant::now();
        exec(
            &db,
            "INSERT INTO events (id, kind, source, payload, tags, created_at) \
             SELECT gen_random_uuid(), 'bench.r' || (g % 200), 'bench', '{\"n\": 1}', '[]', \
             now() - interval '30 days' + g * (interval '29 days' / $1) \
             FROM generate_series(1, $1::bigint) g",
            backlog,
        )
        .await?;
        exec(
            &db,
            "INSERT INTO event_cursors (consumer, last_seq, updated_at) \
             SELECT 'triggers', COALESCE(MAX(seq), 0), now() FROM events WHERE $1::bigint > 0",
            1,
        )
        .await?;
        exec(
            &db,
            "INSERT INTO events (id, kind, source, payload, tags, created_at) \
             SELECT gen_random_uuid(), 'bench.r' || (g % 200), 'bench', '{\"n\": 1}', '[]', \
             now() - interval '300 seconds' + g * (interval '299 seconds' / $1) \
             FROM generate_series(1, $1::bigint) g",
            new,
        )
        .await?;
        db.db
            .execute_unprepared("ANALYZE events")
            .await
            .context("analyze")?;
        let fill_seconds = filled.elapsed().as_secs_f64();
        let settings = HeartbeatSettings {
            event_batch: new.max(1),
            ..HeartbeatSettings::default()
        };
        let hb = Heartbeat::new(db.db.clone(), None, settings)
            .map_err(|e| anyhow::anyhow!("heartbeat settings: {e}"))?;
        let started = Instant::now();
        let report = opsloop_heartbeat_worker::triggers::run(&hb, chrono::Utc::now(), 1)
            .await
            .map_err(|e| anyhow::anyhow!("trigger phase: {e}"))?;
        let phase = started.elapsed();
        anyhow::Ok(json!({
            "table_events": backlog + new,
            "new_events": new,
            "rules": RULES,
            "phase_ms": phase.as_secs_f64() * 1000.0,
            "fill_seconds": fill_seconds,
            "report": report,
        }))
    }
    .await;
    db.cleanup().await;
    result
}

pub(crate) async fn heartbeat_scaling(
    env: &Env,
    args: HeartbeatArgs,
) -> anyhow::Result<(Vec<Row>, Value)> {
    let new = args
        .new_events
        .unwrap_or(if env.smoke { 500 } else { 10_000 });
    let small = args
        .table_events
        .unwrap_or(if env.smoke { 2_000 } else { 100_000 });
    let large = small * 10;
    eprintln!("heartbeat-scaling: {RULES} rules, {new} new events, tables of {small} and {large}");
    let at_small = measure(env, small.saturating_sub(new), new).await?;
    let at_large = measure(env, large.saturating_sub(new), new).await?;
    let ms = |v: &Value| v["phase_ms"].as_f64().unwrap_or(f64::INFINITY);
    let (a, b) = (ms(&at_small), ms(&at_large));
    let budget = Duration::from_secs(4).as_secs_f64() * 1000.0;
    let scaling = Row::new(
        "heartbeat-scaling",
        &format!("trigger phase at {large} events"),
        "ms",
    )
    .target("<= 1.5x the small table")
    .opsloop(b)
    .baseline(Some(a))
    .note(format!(
        "baseline column = the same phase at {small} events; {RULES} rules, {new} new events"
    ));
    let met = scaling.ratio.map(|r| r <= 1.5);
    let rows = vec![
        scaling.met(met),
        Row::new("heartbeat-scaling", "trigger phase within budget", "ms")
            .target("< 4000 ms")
            .opsloop(a.max(b))
            .met(Some(a.max(b) < budget))
            .note(format!("fired {} rules", at_large["report"]["fired"])),
    ];
    Ok((rows, json!({"small": at_small, "large": at_large})))
}
