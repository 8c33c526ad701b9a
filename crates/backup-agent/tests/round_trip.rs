//! Backup → verify → restore on real PostgreSQL (and SQLite): identical row
//! counts and per-table content checksums before and after; a corrupted
//! object fails verification and raises an alert.

mod common;

use common::*;
use opsloop_backup_agent::agent::{AgentError, status};
use opsloop_backup_agent::service::BackupGrpc;
use opsloop_backup_agent::store::BackupStore as _;
use opsloop_core::proto::v1::backup_service_server::BackupService;
use opsloop_core::proto::v1::{ListBackupsRequest, PreviewRetentionRequest, VerificationState};
use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};
use sea_orm::{ConnectionTrait, EntityTrait};

const SEED: &str = "
CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), tags jsonb,
                      created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO widgets (name, price, tags)
  SELECT 'widget ' || g, g * 1.25, jsonb_build_object('g', g, 'even', g % 2 = 0) FROM generate_series(1, 2000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, widget_id int NOT NULL REFERENCES widgets(id), qty int, note text);
INSERT INTO orders (widget_id, qty, note)
  SELECT (g % 2000) + 1, g % 7, repeat('x', g % 50) FROM generate_series(1, 5000) g;
CREATE SCHEMA archive;
CREATE TABLE archive.blobs (id int PRIMARY KEY, data bytea);
INSERT INTO archive.blobs SELECT g, decode(md5(g::text), 'hex') FROM generate_series(1, 300) g;
INSERT INTO leases (name, holder, expires_at, fencing_token, updated_at)
  VALUES ('heartbeat:leader', 'worker-1', now(), 7, now());
INSERT INTO audit_events (actor, action, subject, created_at)
  VALUES ('admin', 'policy.set', 'auto_approve', now()), ('admin', 'emergency_stop.engage', 'ops', now());
";

/// A row in every opsloop table the migrations create (policy and
/// policy_history are seeded by them), so the round trip covers the schema.
const SEED_EVERY_OPSLOOP_TABLE: &str = "
INSERT INTO proposals (id, source, agent, title, status, steps, parallel, metadata, policy_version, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000001', 'api', 'agent-1', 'digest', 'approved',
          '[{\"kind\":\"analyze\"}]', false, '{}', 10, now(), now());
INSERT INTO missions (id, proposal_id, title, status, parallel, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 'digest', 'failed', false, now(), now());
INSERT INTO mission_steps (id, mission_id, seq, kind, payload, status, attempt, max_attempts, error, cost_usd, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000002', 0, 'analyze', '{\"topic\":\"ü\"}',
          'failed', 3, 3, 'boom', 0.25, now(), now());
INSERT INTO step_dead_letters (id, step_id, mission_id, kind, attempt, error, payload, created_at)
  VALUES (gen_random_uuid(), '00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000002', 'analyze', 3, 'boom', '{}', now());
INSERT INTO daily_step_counts (kind, day, count) VALUES ('post_x', '2026-11-23', 4);
INSERT INTO events (id, kind, source, mission_id, payload, tags, cost_usd, created_at)
  SELECT gen_random_uuid(), 'engagement:high', 'api', '00000000-0000-4000-8000-000000000002', jsonb_build_object('n', g), '[\"engagement:high\"]', 0.01, now()
  FROM generate_series(1, 50) g;
INSERT INTO outbox (event_id, routing_key, aggregate_id, payload, headers, created_at)
  VALUES (gen_random_uuid(), 'event.engagement.high', 'mission:2', '{}', '{}', now());
INSERT INTO trigger_rules (id, name, enabled, condition, action, cooldown_seconds, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000004', 'spike', true, '{\"type\":\"event_count\"}', '{}', 3600, now(), now());
INSERT INTO trigger_fires (id, rule_id, window_key, outcome, created_at)
  VALUES (gen_random_uuid(), '00000000-0000-4000-8000-000000000004', 'w1', 'fired', now());
INSERT INTO event_cursors (consumer, last_seq, updated_at) VALUES ('triggers', 50, now());
INSERT INTO event_quarantine (id, consumer, event_seq, failures, last_error, created_at, updated_at)
  VALUES (gen_random_uuid(), 'triggers', 7, 1, 'bad tags', now(), now());
INSERT INTO reactions (id, event_id, pattern_id, target, status, probability, roll, template, created_at)
  VALUES (gen_random_uuid(), gen_random_uuid(), 'p1', 'writer', 'queued', 0.5, 0.25, '{}', now());
INSERT INTO insights (id, pattern, summary, fingerprint, source_event_ids, created_at)
  VALUES ('00000000-0000-4000-8000-000000000005', 'engagement:high', 'threads do well', 'fp1', '[]', now());
INSERT INTO insight_sources (event_id, insight_id) VALUES (gen_random_uuid(), '00000000-0000-4000-8000-000000000005');
INSERT INTO heartbeat_runs (id, tick_at, started_at, finished_at, status, leader, phases, created_at)
  VALUES (gen_random_uuid(), now(), now(), now(), 'ok', 'hb-1', '[]', now());
INSERT INTO cooldowns (name, until, updated_at) VALUES ('ops_health', now(), now());
INSERT INTO reports (id, kind, period_start, period_end, body, created_at)
  VALUES (gen_random_uuid(), 'weekly', now(), now(), '{}', now());
INSERT INTO alerts (fingerprint, labels, annotations, status, starts_at, source, received_at, updated_at)
  VALUES ('abc', '{\"alertname\":\"X\"}', '{}', 'firing', now(), 'bus', now(), now());
INSERT INTO silences (id, matchers, starts_at, ends_at, created_by, comment, created_at, updated_at)
  VALUES (gen_random_uuid(), '[]', now(), now(), 'ops', 'maintenance', now(), now());
INSERT INTO notification_log (receiver, group_key, state_hash, firing, resolved, status, created_at)
  VALUES ('slack', 'g', 'h', '[]', '[]', 'sent', now());
INSERT INTO alert_messages_seen (message_id, created_at) VALUES ('m1', now());
INSERT INTO backups (id, target, kind, status, compression, started_at)
  VALUES (gen_random_uuid(), 'other', 'postgres', 'failed', 'zstd:3', now());
INSERT INTO api_tokens (id, name, role, secret_sha256, created_at, created_by)
  VALUES (gen_random_uuid(), 'ci', 'agent', repeat('ab', 32), now(), 'bootstrap-admin');
INSERT INTO incidents (id, title, level, state, group_key, labels, opened_by, opened_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000006', 'api down', 'P1', 'triggered', 'g', '{}', 'alerter', now(), now());
INSERT INTO incident_groups (group_key, incident_id) VALUES ('g', '00000000-0000-4000-8000-000000000006');
INSERT INTO incident_log (incident_id, at, kind, actor, detail)
  VALUES ('00000000-0000-4000-8000-000000000006', now(), 'opened', 'alerter', '{}');
INSERT INTO incident_link_uses (nonce, incident_id, action, used_at)
  VALUES ('n1', '00000000-0000-4000-8000-000000000006', 'acknowledge', now());
INSERT INTO probe_state (name, status, consecutive_failures, since, alerted, created_at, updated_at)
  VALUES ('api', 'up', 0, now(), false, now(), now());
INSERT INTO probe_cert_notices (probe, fingerprint, threshold_days, not_after, notified_at)
  VALUES ('api', 'ab12', 14, now(), now());
INSERT INTO probe_history (probe, minute, ok, latency_ms) VALUES ('api', date_trunc('minute', now()), true, 12);
INSERT INTO step_kind_pauses (kind, source, reason, since) VALUES ('charge', 'probe:payments', 'payments down', now());
INSERT INTO probe_definitions (name, spec, created_by, created_at) VALUES ('crm', '{\"kind\": \"http\", \"target\": \"https://crm.example/health\"}', 'admin', now());
INSERT INTO resource_rates (resource, rate, tokens, refilled_at, updated_at) VALUES ('twitterapi', 150, 150, now(), now());
INSERT INTO resource_usage (resource, window_start, kind, reports, calls, latency_weighted_ms, latency_max_ms, status_2xx, status_4xx, status_429, status_5xx, units, cost_usd, updated_at) VALUES ('twitterapi', now(), 'post_x', 1, 3, 360, 200, 3, 0, 0, 0, 0, 0.00045, now());
INSERT INTO console_nonces (key, expires_at) VALUES ('session:0123abcd', now() + interval '1 hour');
INSERT INTO rollouts (id, name, spec, status, phase_index, phase_started_at, active_slot, created_by, created_at, updated_at) VALUES ('0193b2a4-0000-7000-8000-0000000000aa', 'launch', '{\"name\": \"launch\", \"phases\": []}', 'active', 0, now(), 'active', 'admin', now(), now());
INSERT INTO probe_daily (probe, day, checks, up_checks, avg_latency_ms, max_latency_ms, rolled_up_at)
  VALUES ('api', date_trunc('day', now()), 1440, 1439, 12.5, 80, now());
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_verify_restore_round_trip() {
    let source = fresh_postgres().await;
    source.db.execute_unprepared(SEED).await.expect("seed");
    source
        .db
        .execute_unprepared(SEED_EVERY_OPSLOOP_TABLE)
        .await
        .expect("seed every opsloop table");
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("main", source.url.clone())], |_| {}).expect("agent");
    let mut events = subscribe(&h.bus, "backup.#").await;

    let row = h
        .agent
        .run_backup(Some("main"), true)
        .await
        .expect("backup runs");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
    let completed = next_message(&mut events).await;
    assert_eq!(completed.routing_key, "backup.completed");
    assert_eq!(body(&completed)["id"], row.id.to_string());

    // The manifest was written last, next to the object, with the counts
    // taken in the dump's snapshot and the tool versions.
    let manifest = h
        .store
        .manifest("main", row.id)
        .await
        .expect("read manifest")
        .expect("manifest exists");
    assert_eq!(manifest.row_counts["public.widgets"], 2000);
    assert_eq!(manifest.row_counts["public.orders"], 5000);
    assert_eq!(manifest.row_counts["archive.blobs"], 300);
    assert_eq!(manifest.row_counts["public.audit_events"], 2);
    for table in opsloop_core::store::TABLES {
        let count = manifest.row_counts[&format!("public.{table}")];
        assert!(count > 0, "opsloop table {table} has data in the backup");
    }
    assert!(manifest.tool_versions["pg_dump"].starts_with("pg_dump (PostgreSQL)"));
    assert_eq!(manifest.compression, "zstd:3");
    assert_eq!(Some(manifest.sha256.clone()), row.sha256);
    assert!(manifest.object_key.ends_with(".pgdump.zst"));

    let verified = h.agent.verify(row.id).await.expect("verification runs");
    assert!(verified.report.passed, "{:?}", verified.report.error);
    assert!(verified.report.checksum_ok);
    let stages: Vec<&str> = verified.report.stages.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        stages,
        ["fetch", "checksum", "restore", "compare", "cleanup"]
    );
    assert_eq!(
        verified.row.verify_status.as_deref(),
        Some(status::VERIFIED)
    );
    assert!(verified.row.verify_duration_ms.is_some());
    assert_eq!(
        next_message(&mut events).await.routing_key,
        "backup.verified"
    );
    // The scratch database is gone.
    let scratch = sea_orm::Database::connect(admin_url())
        .await
        .expect("admin");
    let left = scratch
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT datname FROM pg_database WHERE datname LIKE 'opsloop_verify_{}%'",
                &row.id.simple().to_string()[..8]
            ),
        ))
        .await
        .expect("query");
    assert!(left.is_empty(), "scratch database dropped");
    let _ = scratch.close().await;

    // Restore into an empty database: identical counts and contents.
    let before = table_fingerprints(&source.url).await;
    let target = EmptyDb::create().await;
    let restored = h
        .agent
        .restore(row.id, &target.url, true, false, "test-admin")
        .await
        .expect("restore");
    assert_eq!(restored.report.row_counts, manifest.row_counts);
    assert_eq!(
        table_fingerprints(&target.url).await,
        before,
        "contents identical"
    );

    // Restore is audited, in the file and in the database.
    let audit = std::fs::read_to_string(h.audit_path()).expect("audit log");
    assert!(
        audit.contains("\"backup.restore\"") && audit.contains("test-admin"),
        "{audit}"
    );
    let audited = opsloop_core::store::entities::audit_events::Entity::find()
        .all(&catalog.db)
        .await
        .expect("audit rows");
    assert!(
        audited
            .iter()
            .any(|a| a.action == "backup.restore" && a.actor == "test-admin")
    );

    // A non-empty target is refused without force, anything without confirm.
    let refused = h
        .agent
        .restore(row.id, &target.url, true, false, "test-admin")
        .await;
    assert!(
        matches!(refused, Err(AgentError::RestoreRefused(_))),
        "{:?}",
        refused.err()
    );
    let unconfirmed = h
        .agent
        .restore(row.id, &target.url, false, true, "test-admin")
        .await;
    assert!(
        matches!(
            unconfirmed,
            Err(AgentError::InvalidArgument {
                field: "confirm",
                ..
            })
        ),
        "{:?}",
        unconfirmed.err()
    );
    let forced = h
        .agent
        .restore(row.id, &target.url, true, true, "test-admin")
        .await
        .expect("forced restore");
    assert_eq!(forced.report.row_counts, manifest.row_counts);
    assert_eq!(
        table_fingerprints(&target.url).await,
        before,
        "contents identical after force"
    );

    // The gRPC face lists it as verified, and retention keeps it.
    let grpc = BackupGrpc::new(h.agent.clone());
    let listed = grpc
        .list_backups(tonic::Request::new(ListBackupsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
    assert_eq!(
        listed.backups[0].verification,
        VerificationState::Passed as i32
    );
    assert_eq!(listed.backups[0].size_bytes, Some(manifest.size_bytes));
    let preview = grpc
        .preview_retention(tonic::Request::new(PreviewRetentionRequest::default()))
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.keep.len(), 1);
    assert!(preview.remove.is_empty());
    assert!(
        preview.keep[0]
            .reasons
            .iter()
            .any(|r| r == "newest verified")
    );

    target.drop_now().await;
    catalog.cleanup().await;
    source.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_object_fails_verification_and_alerts() {
    let source = fresh_postgres().await;
    source.db.execute_unprepared(SEED).await.expect("seed");
    let h = harness(&source, vec![("main", source.url.clone())], |_| {}).expect("agent");
    let row = h
        .agent
        .run_backup(Some("main"), true)
        .await
        .expect("backup runs");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);

    // Flip one byte in the middle of the stored object.
    let object = h
        .store
        .path_of(row.object_key.as_deref().expect("object key"))
        .expect("path");
    let mut bytes = std::fs::read(&object).expect("read object");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&object, &bytes).expect("write object");

    let mut alerts = subscribe(&h.bus, "alert.#").await;
    let mut events = subscribe(&h.bus, "backup.#").await;
    let verified = h.agent.verify(row.id).await.expect("verification runs");
    assert!(!verified.report.passed);
    assert!(!verified.report.checksum_ok);
    let error = verified.report.error.clone().unwrap_or_default();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert_eq!(
        verified.row.verify_status.as_deref(),
        Some(status::VERIFY_FAILED)
    );
    assert_eq!(
        next_message(&mut events).await.routing_key,
        "backup.verify_failed"
    );

    let alert = h.next_alert(&mut alerts).await;
    assert_eq!(alert.routing_key, "alert.high");
    let alert = body(&alert);
    assert_eq!(alert["labels"]["alertname"], "BackupVerificationFailed");
    assert_eq!(alert["labels"]["severity"], "high");
    assert_eq!(alert["labels"]["service"], "backup-agent");
    assert_eq!(alert["status"], "firing");
    assert!(alert["startsAt"].as_str().is_some());
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("checksum mismatch")
    );

    source.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_verify_restore_round_trip() {
    let source = fresh_sqlite().await;
    source
        .db
        .execute_unprepared(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO notes (body) SELECT 'note ' || i FROM n;",
        )
        .await
        .expect("seed");
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |_| {}).expect("agent");
    let row = h.agent.run_backup(None, true).await.expect("backup runs");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
    assert_eq!(row.kind, "sqlite");
    let manifest = h
        .store
        .manifest("embedded", row.id)
        .await
        .expect("read")
        .expect("manifest");
    assert_eq!(manifest.row_counts["main.notes"], 500);
    assert!(manifest.tool_versions.contains_key("sqlite"));

    let verified = h.agent.verify(row.id).await.expect("verification runs");
    assert!(verified.report.passed, "{:?}", verified.report.error);

    let restored_path = h.dir.path().join("restored.db");
    let restored = h
        .agent
        .restore(
            row.id,
            &format!("sqlite://{}", restored_path.display()),
            true,
            false,
            "test-admin",
        )
        .await
        .expect("restore");
    assert_eq!(restored.report.row_counts, manifest.row_counts);
    let refused = h
        .agent
        .restore(
            row.id,
            &format!("sqlite://{}", restored_path.display()),
            true,
            false,
            "test-admin",
        )
        .await;
    assert!(
        matches!(refused, Err(AgentError::RestoreRefused(_))),
        "{:?}",
        refused.err()
    );

    catalog.cleanup().await;
    source.cleanup().await;
}
