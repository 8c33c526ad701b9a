//! Leader failover with real processes: two heartbeat-workers share one
//! PostgreSQL database; the leader is killed with SIGKILL; the standby takes
//! the lease once it lapses and ticks, and no tick is run by both.

use std::time::{Duration, Instant};

use opsloop_core::store::testing::fresh_postgres;
use opsloop_core::testing::eventually;
use opsloop_e2e::DaemonProcess;
use sea_orm::{ConnectionTrait, Statement};

const LEASE_SECS: u64 = 2;

fn env(db_url: &str, instance: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OPSLOOP__DATABASE__URL", db_url.to_owned()),
        ("OPSLOOP__BUS__KIND", "memory".to_owned()),
        ("OPSLOOP__HEARTBEAT__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__HEARTBEAT__INTERVAL_SECS", "1".to_owned()),
        ("OPSLOOP__HEARTBEAT__LEASE_SECS", LEASE_SECS.to_string()),
        ("OPSLOOP__HEARTBEAT__INSTANCE_ID", instance.to_owned()),
        ("OPSLOOP__HEARTBEAT__CONSUME_EVENTS", "false".to_owned()),
        (
            "OPSLOOP__AUDIT__LOG_PATH",
            std::env::temp_dir()
                .join(format!(
                    "opsloop-failover-{instance}-{}.jsonl",
                    uuid::Uuid::new_v4().simple()
                ))
                .display()
                .to_string(),
        ),
    ]
}

async fn leaders(db: &sea_orm::DatabaseConnection) -> Vec<(String, String)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT leader, CAST(tick_at AS TEXT) FROM heartbeat_runs WHERE status <> 'skipped' ORDER BY started_at",
    ))
    .await
    .expect("heartbeat_runs")
    .into_iter()
    .map(|row| {
        (
            row.try_get_by_index::<String>(0).expect("leader"),
            row.try_get_by_index::<String>(1).expect("tick_at"),
        )
    })
    .collect()
}

async fn wait_for(
    db: &sea_orm::DatabaseConnection,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    eventually(what, timeout, || async {
        let rows = leaders(db).await;
        if pred(&rows) {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_leader_is_killed() {
    let db = fresh_postgres().await;
    let mut first = DaemonProcess::start(
        "opsloop-heartbeat-worker",
        &env(&db.url, "hb-first"),
        Duration::from_secs(30),
    );
    wait_for(&db.db, "a first tick", Duration::from_secs(20), |rows| {
        !rows.is_empty()
    })
    .await;
    let mut second = DaemonProcess::start(
        "opsloop-heartbeat-worker",
        &env(&db.url, "hb-second"),
        Duration::from_secs(30),
    );
    // Let the standby try (and fail) to take the lease for a few intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = leaders(&db.db).await;
    let leader = rows.last().map(|(l, _)| l.clone()).expect("a leader");
    assert!(
        rows.iter().all(|(l, _)| *l == leader),
        "one leader while both run: {rows:?}"
    );
    let (victim, survivor_name) = if leader == "hb-first" {
        (&mut first, "hb-second")
    } else {
        (&mut second, "hb-first")
    };

    victim.child.kill().expect("SIGKILL the leader");
    let _ = victim.child.wait();
    let killed_at = Instant::now();
    let rows = wait_for(
        &db.db,
        "a tick by the standby",
        Duration::from_secs(30),
        |rows| rows.iter().any(|(l, _)| l == survivor_name),
    )
    .await;
    let took = killed_at.elapsed();
    println!("standby ticked {took:?} after the leader was killed (lease {LEASE_SECS}s)");

    let mut ticks: Vec<&String> = rows.iter().map(|(_, t)| t).collect();
    let total = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), total, "no tick was run twice: {rows:?}");
    drop(first);
    drop(second);
    db.cleanup().await;
}
