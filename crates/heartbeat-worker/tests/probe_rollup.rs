//! The daily roll-up of probe history on PostgreSQL and SQLite: finished
//! days become one `probe_daily` row per probe (checks, passed checks,
//! average and maximum latency), today stays raw, a second run changes
//! nothing, and raw rows older than the retention go only once rolled up.
//! Also the weekly report's availability per component.

use chrono::{DateTime, Duration, Utc};
use opsloop_core::store::stmt;
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_heartbeat_worker::probe_rollup::{availability_slis, roll_up};
use sea_orm::ConnectionTrait;

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("time")
}

async fn insert(db: &TestDb, probe: &str, minute: &str, ok: bool, latency_ms: i64) {
    db.db
        .execute_raw(stmt(
            db.db.get_database_backend(),
            "INSERT INTO probe_history (probe, minute, ok, latency_ms) VALUES ($1, $2, $3, $4)",
            vec![
                probe.into(),
                at(minute).into(),
                ok.into(),
                latency_ms.into(),
            ],
        ))
        .await
        .expect("insert history");
}

async fn daily(db: &TestDb) -> Vec<(String, String, i64, i64, f64, i64)> {
    db.db
        .query_all_raw(stmt(
            db.db.get_database_backend(),
            "SELECT probe, day, checks, up_checks, avg_latency_ms, max_latency_ms FROM probe_daily \
             ORDER BY day, probe",
            vec![],
        ))
        .await
        .expect("read probe_daily")
        .into_iter()
        .map(|row| {
            let day: DateTime<Utc> = row.try_get("", "day").expect("day");
            (
                row.try_get("", "probe").expect("probe"),
                day.date_naive().to_string(),
                row.try_get("", "checks").expect("checks"),
                row.try_get("", "up_checks").expect("up"),
                row.try_get("", "avg_latency_ms").expect("avg"),
                row.try_get("", "max_latency_ms").expect("max"),
            )
        })
        .collect()
}

async fn raw_count(db: &TestDb) -> i64 {
    db.db
        .query_one_raw(stmt(
            db.db.get_database_backend(),
            "SELECT COUNT(*) FROM probe_history",
            vec![],
        ))
        .await
        .expect("count")
        .expect("row")
        .try_get_by_index(0)
        .expect("n")
}

async fn rolls_up_finished_days(db: TestDb) {
    let now = at("2026-12-07T10:30:00Z");
    insert(&db, "web", "2026-08-29T12:00:00Z", true, 9).await; // 100 days ago
    insert(&db, "web", "2026-12-05T00:00:00Z", true, 10).await;
    insert(&db, "web", "2026-12-05T12:00:00Z", false, 20).await;
    insert(&db, "web", "2026-12-05T23:59:00Z", true, 60).await;
    insert(&db, "opsloop:api", "2026-12-06T08:00:00Z", true, 5).await;
    insert(&db, "web", "2026-12-06T08:00:00Z", true, 7).await;
    insert(&db, "web", "2026-12-07T10:00:00Z", false, 1).await; // today: stays raw

    let first = roll_up(&db.db, now, 90).await.expect("roll up");
    assert_eq!(first.rows, 4, "{first:?}");
    assert_eq!(
        first.raw_purged, 1,
        "the row of 100 days ago, rolled up first"
    );
    let expected = vec![
        ("web".to_owned(), "2026-08-29".to_owned(), 1, 1, 9.0, 9),
        ("web".to_owned(), "2026-12-05".to_owned(), 3, 2, 30.0, 60),
        (
            "opsloop:api".to_owned(),
            "2026-12-06".to_owned(),
            1,
            1,
            5.0,
            5,
        ),
        ("web".to_owned(), "2026-12-06".to_owned(), 1, 1, 7.0, 7),
    ];
    assert_eq!(daily(&db).await, expected);
    assert_eq!(raw_count(&db).await, 6);

    // Again: the last rolled day is redone (late rows count), nothing else.
    let second = roll_up(&db.db, now + Duration::hours(1), 90)
        .await
        .expect("again");
    assert_eq!(second.days, 1, "{second:?}");
    assert_eq!(daily(&db).await, expected);

    // A day later, yesterday's minutes are rolled up too.
    let third = roll_up(&db.db, now + Duration::days(1), 90)
        .await
        .expect("next day");
    assert_eq!(third.days, 2, "{third:?}");
    assert_eq!(
        daily(&db).await.last().map(|r| (r.1.clone(), r.2, r.3)),
        Some(("2026-12-07".to_owned(), 1, 0))
    );
    db.cleanup().await;
}

#[tokio::test]
async fn rolls_up_finished_days_on_postgres() {
    rolls_up_finished_days(fresh_postgres().await).await;
}

#[tokio::test]
async fn rolls_up_finished_days_on_sqlite() {
    rolls_up_finished_days(fresh_sqlite().await).await;
}

#[tokio::test]
async fn weekly_availability_per_component() {
    let db = fresh_sqlite().await;
    insert(&db, "web", "2026-11-30T10:00:00Z", true, 5).await;
    insert(&db, "web", "2026-12-01T10:00:00Z", false, 5).await;
    insert(&db, "opsloop:api", "2026-12-02T10:00:00Z", true, 1).await;
    insert(&db, "web", "2026-12-07T09:00:00Z", false, 5).await; // after the period
    let slis = availability_slis(
        &db.db,
        at("2026-11-30T09:00:00Z"),
        at("2026-12-07T09:00:00Z"),
    )
    .await
    .expect("slis");
    let figures: Vec<(&str, i64, i64)> = slis
        .iter()
        .map(|s| (s.name.as_str(), s.good, s.total))
        .collect();
    assert_eq!(
        figures,
        [
            ("availability opsloop:api", 1, 1),
            ("availability web", 1, 2)
        ]
    );
    assert!(slis.iter().all(|s| s.latencies_ms.is_none()));
    db.cleanup().await;
}
