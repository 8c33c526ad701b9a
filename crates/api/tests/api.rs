//! The api daemon through its real gRPC and HTTP interfaces, on PostgreSQL
//! and SQLite: the loop end to end, gates, transitions, leases, races, auth
//! and limits.

mod helpers;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use helpers::{Backend, Options, claim, complete, spawn, spawn_with, submit, with_token};
use opsloop_core::proto::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn the_loop_end_to_end_on_postgres() {
    end_to_end(Backend::Postgres).await;
}

#[tokio::test]
async fn the_loop_end_to_end_on_sqlite() {
    end_to_end(Backend::Sqlite).await;
}

async fn end_to_end(backend: Backend) {
    let app = spawn(backend).await;
    let submitted = app
        .proposals()
        .submit_proposal(submit(&["echo", "summarize"], Some("e2e")))
        .await
        .expect("submit")
        .into_inner();
    let proposal = submitted.proposal.expect("proposal");
    assert_eq!(proposal.status, pb::ProposalStatus::Approved as i32);
    assert!(proposal.policy_version > 0);
    let mission_id = proposal.mission_id.clone().expect("mission");

    for kind in ["echo", "summarize"] {
        let claimed = app
            .missions()
            .claim_step(claim("worker-1", &["echo", "summarize"]))
            .await
            .expect("claim")
            .into_inner();
        assert!(claimed.found);
        let step = claimed.step.expect("step");
        assert_eq!(step.kind, kind);
        assert_eq!(step.status, pb::StepStatus::Running as i32);
        app.missions()
            .renew_lease(pb::RenewLeaseRequest {
                step_id: step.id.clone(),
                worker_id: "worker-1".into(),
                attempt: step.attempt,
                lease_seconds: 60,
            })
            .await
            .expect("renew");
        app.missions()
            .complete_step(complete(&step, "worker-1"))
            .await
            .expect("complete");
    }
    let mission = app
        .missions()
        .get_mission(pb::GetMissionRequest {
            id: mission_id.clone(),
        })
        .await
        .expect("get mission")
        .into_inner()
        .mission
        .expect("mission");
    assert_eq!(mission.status, pb::MissionStatus::Succeeded as i32);
    assert_eq!(mission.steps.len(), 2);
    assert!((mission.cost_usd - 0.5).abs() < 1e-9);

    let events = app
        .events()
        .list_events(pb::ListEventsRequest {
            mission_id: Some(mission_id.clone()),
            ..Default::default()
        })
        .await
        .expect("list events")
        .into_inner()
        .events;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "mission.started",
            "step.started",
            "step.succeeded",
            "step.started",
            "step.succeeded",
            "mission.succeeded"
        ]
    );

    // Tail from the start, then resume from the middle: no gaps, no dups.
    let mut tail = app
        .events()
        .tail_events(pb::TailEventsRequest {
            from_seq: Some(0),
            kind_pattern: None,
        })
        .await
        .expect("tail")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let next = tokio::time::timeout(Duration::from_secs(10), tail.message())
            .await
            .expect("tail message in time")
            .expect("stream ok")
            .expect("event");
        seen.push(next.event.expect("event").seq);
    }
    drop(tail);
    let resume_from = seen[4];
    let mut resumed = app
        .events()
        .tail_events(pb::TailEventsRequest {
            from_seq: Some(resume_from),
            kind_pattern: None,
        })
        .await
        .expect("tail")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), resumed.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("event")
        .event
        .expect("event");
    assert_eq!(
        first.seq,
        resume_from + 1,
        "resume continues right after the cursor"
    );
    let emitted = app
        .events()
        .emit_event(pb::EmitEventRequest {
            kind: "engagement:high".into(),
            source: "agent".into(),
            payload_json: r#"{"likes": 10}"#.into(),
            tags: vec!["env:test".into()],
            cost_usd: Some(1.0),
            mission_id: Some(mission_id.clone()),
            ..Default::default()
        })
        .await
        .expect("emit")
        .into_inner()
        .event
        .expect("event");
    let mut last = first.seq;
    while last < emitted.seq {
        let e = tokio::time::timeout(Duration::from_secs(10), resumed.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("event")
            .event
            .expect("event");
        assert_eq!(e.seq, last + 1);
        last = e.seq;
    }

    // The HTTP summary and gRPC GetSummary agree.
    let summary = app
        .ops()
        .get_summary(pb::GetSummaryRequest { period: 0 })
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("summary");
    assert_eq!(summary.proposals["approved"], 1);
    assert_eq!(summary.missions["succeeded"], 1);
    assert_eq!(summary.steps["succeeded"], 2);
    let http = http_get(app.http, "/api/ops/summary/daily").await;
    let body: serde_json::Value = serde_json::from_str(&http).expect("json body");
    assert_eq!(body["period"], "daily");
    assert_eq!(body["proposals"]["approved"], 1);
    assert_eq!(body["missions"]["succeeded"], 1);
    assert_eq!(body["steps"]["succeeded"], 2);
    assert_eq!(body["totalEvents"], summary.total_events);
    assert!(body["generatedAt"].is_string());

    let health = app
        .ops()
        .get_health(pb::GetHealthRequest {})
        .await
        .expect("health")
        .into_inner()
        .health
        .expect("health");
    assert_eq!(health.pending_proposals, 0);
    assert!((health.cost_today_usd - 1.5).abs() < 1e-9);
    assert!(health.paused_kinds.is_empty());
    // A kind paused by a probe shows with its source, reason and since.
    let paused_at = chrono::Utc::now();
    opsloop_core::workflow::sync_source_pauses(
        &app.db.db,
        "probe:payments",
        &["notify".to_owned()],
        "probe payments is down since …: status 500 not expected",
        paused_at,
    )
    .await
    .expect("pause");
    let health = app
        .ops()
        .get_health(pb::GetHealthRequest {})
        .await
        .expect("health")
        .into_inner()
        .health
        .expect("health");
    assert_eq!(health.paused_kinds.len(), 1);
    let paused = &health.paused_kinds[0];
    assert_eq!(
        (paused.kind.as_str(), paused.source.as_str()),
        ("notify", "probe:payments")
    );
    assert!(paused.reason.contains("status 500"));
    assert_eq!(
        paused.since.as_ref().map(|t| t.seconds),
        Some(paused_at.timestamp())
    );
    app.stop().await;
}

/// A plain HTTP/1.1 GET (no client library needed for one request).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    body.to_owned()
}

#[tokio::test]
async fn gates_and_transitions_over_grpc() {
    let app = spawn(Backend::Postgres).await;
    // Toggle gate (post_x needs x_autopost, seeded off).
    let rejected = app
        .proposals()
        .submit_proposal(submit(&["post_x"], Some("post-1")))
        .await
        .expect("submit")
        .into_inner()
        .proposal
        .expect("p");
    assert_eq!(rejected.status, pb::ProposalStatus::Rejected as i32);
    assert_eq!(
        rejected.rejection_reason.as_deref(),
        Some("toggle_disabled")
    );
    // Illegal: approving a rejected proposal.
    let err = app
        .proposals()
        .approve_proposal(pb::ApproveProposalRequest {
            id: rejected.id.clone(),
            actor: "op".into(),
            comment: None,
        })
        .await
        .expect_err("approve rejected");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Pending (kind not auto-approved) → approve twice → one mission.
    let pending = app
        .proposals()
        .submit_proposal(submit(&["publish"], None))
        .await
        .expect("submit")
        .into_inner()
        .proposal
        .expect("p");
    assert_eq!(pending.status, pb::ProposalStatus::Pending as i32);
    let (mut first, mut second) = (app.proposals(), app.proposals());
    let (a, b) = tokio::join!(
        first.approve_proposal(pb::ApproveProposalRequest {
            id: pending.id.clone(),
            actor: "a".into(),
            comment: None
        }),
        second.approve_proposal(pb::ApproveProposalRequest {
            id: pending.id.clone(),
            actor: "b".into(),
            comment: None
        }),
    );
    let a = a.expect("a").into_inner().proposal.expect("p");
    let b = b.expect("b").into_inner().proposal.expect("p");
    assert_eq!(a.mission_id, b.mission_id);
    let missions = app
        .missions()
        .list_missions(pb::ListMissionsRequest {
            proposal_id: Some(pending.id.clone()),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .missions;
    assert_eq!(missions.len(), 1);
    // Reject of an approved one is illegal.
    let err = app
        .proposals()
        .reject_proposal(pb::RejectProposalRequest {
            id: pending.id.clone(),
            actor: "op".into(),
            reason: "late".into(),
        })
        .await
        .expect_err("reject approved");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Cancel, then cancel again (illegal), then nothing to claim.
    let mission_id = a.mission_id.expect("mission");
    let cancelled = app
        .missions()
        .cancel_mission(pb::CancelMissionRequest {
            id: mission_id.clone(),
            actor: "op".into(),
            reason: "no".into(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .mission
        .expect("m");
    assert_eq!(cancelled.status, pb::MissionStatus::Cancelled as i32);
    let err = app
        .missions()
        .cancel_mission(pb::CancelMissionRequest {
            id: mission_id,
            actor: "op".into(),
            reason: "again".into(),
        })
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        !app.missions()
            .claim_step(claim("w", &["publish"]))
            .await
            .expect("claim")
            .into_inner()
            .found
    );
    let err = app
        .proposals()
        .get_proposal(pb::GetProposalRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // Emergency stop: submit rejected, claims hand out nothing.
    app.proposals()
        .submit_proposal(submit(&["echo"], None))
        .await
        .expect("queued work");
    let engaged = app
        .ops()
        .engage_emergency_stop(pb::EngageEmergencyStopRequest {
            reason: "drill".into(),
            actor: "op".into(),
        })
        .await
        .expect("engage")
        .into_inner();
    assert!(engaged.changed);
    let stopped = app
        .proposals()
        .submit_proposal(submit(&["echo"], None))
        .await
        .expect("submit")
        .into_inner()
        .proposal
        .expect("p");
    assert_eq!(stopped.rejection_reason.as_deref(), Some("emergency_stop"));
    let claim_during_stop = app
        .missions()
        .claim_step(claim("w", &["echo"]))
        .await
        .expect("claim")
        .into_inner();
    assert!(!claim_during_stop.found);
    assert!(claim_during_stop.emergency_stop);
    app.ops()
        .release_emergency_stop(pb::ReleaseEmergencyStopRequest {
            reason: "over".into(),
            actor: "op".into(),
        })
        .await
        .expect("release");
    assert!(
        app.missions()
            .claim_step(claim("w", &["echo"]))
            .await
            .expect("claim")
            .into_inner()
            .found
    );

    // Policy: invalid value names the path; the audit file got the changes.
    let err = app
        .policy()
        .set_policy(pb::SetPolicyRequest {
            key: "worker_policy".into(),
            value_json: r#"{"lease_seconds": 0, "max_attempts": 3, "backoff_base_seconds": 1, "backoff_max_seconds": 2}"#.into(),
            actor: "op".into(),
            reason: "x".into(),
            expected_version: None,
        })
        .await
        .expect_err("invalid policy");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("value_json.lease_seconds"),
        "{}",
        err.message()
    );
    let set = app
        .policy()
        .set_policy(pb::SetPolicyRequest {
            key: "x_autopost".into(),
            value_json: r#"{"enabled": true}"#.into(),
            actor: "op".into(),
            reason: "rollout".into(),
            expected_version: None,
        })
        .await
        .expect("set")
        .into_inner();
    assert_eq!(set.previous_value_json, r#"{"enabled":false}"#);
    let audit =
        std::fs::read_to_string(app.audit_dir.path().join("audit.jsonl")).expect("audit file");
    for action in [
        "proposal.approve",
        "mission.cancel",
        "emergency_stop.engage",
        "emergency_stop.release",
        "policy.set",
    ] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit file"
        );
    }
    // Triggers: validated condition, CRUD.
    let err = app
        .triggers()
        .create_trigger(pb::CreateTriggerRequest {
            name: "bad".into(),
            condition_json: r#"{"type": "absence"}"#.into(),
            action_json: r#"{"title": "t", "steps": [{"kind": "echo"}]}"#.into(),
            ..Default::default()
        })
        .await
        .expect_err("invalid condition");
    assert!(
        err.message().contains("condition_json.window_seconds"),
        "{}",
        err.message()
    );
    let created = app
        .triggers()
        .create_trigger(pb::CreateTriggerRequest {
            name: "quiet".into(),
            description: "no posts".into(),
            enabled: true,
            condition_json:
                r#"{"type": "absence", "kind": "post.published", "window_seconds": 3600}"#.into(),
            action_json: r#"{"title": "t", "steps": [{"kind": "echo"}]}"#.into(),
            cooldown_seconds: 600,
            actor: "op".into(),
        })
        .await
        .expect("create")
        .into_inner()
        .trigger
        .expect("t");
    let updated = app
        .triggers()
        .update_trigger(pb::UpdateTriggerRequest {
            id: created.id.clone(),
            enabled: Some(false),
            expected_version: Some(created.version),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .trigger
        .expect("t");
    assert!(!updated.enabled);
    let err = app
        .triggers()
        .update_trigger(pb::UpdateTriggerRequest {
            id: created.id.clone(),
            expected_version: Some(created.version),
            ..Default::default()
        })
        .await
        .expect_err("stale version");
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.triggers()
        .delete_trigger(pb::DeleteTriggerRequest {
            id: created.id,
            actor: "op".into(),
        })
        .await
        .expect("delete");
    app.stop().await;
}

#[tokio::test]
async fn leases_expire_and_late_workers_are_fenced() {
    let app = spawn(Backend::Postgres).await;
    app.proposals()
        .submit_proposal(submit(&["echo"], None))
        .await
        .expect("submit");
    let slow = app
        .missions()
        .claim_step(claim("slow", &["echo"]))
        .await
        .expect("claim")
        .into_inner()
        .step
        .expect("step");
    // The heartbeat's recovery, an hour later (no sleeping).
    let report = opsloop_core::workflow::recover_stale_steps(
        &app.db.db,
        Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .expect("recover");
    assert_eq!(report.requeued.len(), 1);
    let fast = app
        .missions()
        .claim_step(claim("fast", &["echo"]))
        .await
        .expect("reclaim")
        .into_inner()
        .step
        .expect("step");
    assert_eq!(fast.id, slow.id);
    assert_eq!(fast.attempt, 2);
    let err = app
        .missions()
        .complete_step(complete(&slow, "slow"))
        .await
        .expect_err("late complete");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = app
        .missions()
        .fail_step(pb::FailStepRequest {
            step_id: slow.id.clone(),
            worker_id: "slow".into(),
            attempt: 1,
            error: "x".into(),
            retryable: true,
            cost_usd: None,
            usage: Vec::new(),
        })
        .await
        .expect_err("late fail");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let done = app
        .missions()
        .complete_step(complete(&fast, "fast"))
        .await
        .expect("complete")
        .into_inner();
    assert_eq!(done.mission_status, pb::MissionStatus::Succeeded as i32);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submits_and_claims() {
    let app = spawn(Backend::Postgres).await;
    let mut submits = Vec::new();
    for _ in 0..50 {
        let mut client = app.proposals();
        submits.push(tokio::spawn(async move {
            client
                .submit_proposal(submit(&["echo"], Some("one-key")))
                .await
        }));
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for s in submits {
        let out = s.await.expect("join").expect("submit").into_inner();
        ids.insert(out.proposal.expect("p").id);
        created += usize::from(!out.deduplicated);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);

    for _ in 0..40 {
        app.proposals()
            .submit_proposal(submit(&["analyze"], None))
            .await
            .expect("submit");
    }
    let mut claims = Vec::new();
    for w in 0..32 {
        let mut client = app.missions();
        claims.push(tokio::spawn(async move {
            client
                .claim_step(claim(&format!("w{w}"), &["analyze"]))
                .await
        }));
    }
    let mut steps = Vec::new();
    for c in claims {
        let out = c.await.expect("join").expect("claim").into_inner();
        if let Some(step) = out.step {
            steps.push(step.id);
        }
    }
    let unique: BTreeSet<_> = steps.iter().collect();
    assert_eq!(steps.len(), 32, "40 claimable steps, 32 claimers");
    assert_eq!(unique.len(), steps.len(), "no step handed out twice");
    app.stop().await;
}

#[tokio::test]
async fn auth_tokens_and_roles() {
    let app = spawn_with(Options {
        agent_token: Some("agent-secret".into()),
        admin_token: Some("admin-secret".into()),
        ..Default::default()
    })
    .await;
    let err = app
        .proposals()
        .submit_proposal(submit(&["echo"], None))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = app
        .proposals()
        .submit_proposal(with_token(submit(&["echo"], None), "wrong"))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);
    app.proposals()
        .submit_proposal(with_token(submit(&["echo"], None), "agent-secret"))
        .await
        .expect("agent may submit");
    let stop = pb::EngageEmergencyStopRequest {
        reason: "x".into(),
        actor: "a".into(),
    };
    let err = app
        .ops()
        .engage_emergency_stop(with_token(stop.clone(), "agent-secret"))
        .await
        .expect_err("agent may not stop");
    assert_eq!(err.code(), Code::PermissionDenied);
    app.ops()
        .engage_emergency_stop(with_token(stop, "admin-secret"))
        .await
        .expect("admin may");
    app.missions()
        .claim_step(with_token(claim("w", &["echo"]), "admin-secret"))
        .await
        .expect("admin may do everything");
    app.stop().await;
}

#[tokio::test]
async fn limits_are_invalid_argument_naming_the_field_and_write_nothing() {
    let app = spawn(Backend::Sqlite).await;
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let huge = format!("\"{}\"", "x".repeat(70 * 1024));
    let cases: Vec<(pb::SubmitProposalRequest, &str)> = vec![
        (submit(&vec!["echo"; 51], None), "steps"),
        (submit(&[], None), "steps"),
        (submit(&["Not A Kind"], None), "steps[0].kind"),
        (
            {
                let mut r = submit(&["echo"], None);
                r.steps[0].payload_json = deep;
                r
            },
            "steps[0].payload_json",
        ),
        (
            {
                let mut r = submit(&["echo"], None);
                r.steps[0].payload_json = huge;
                r
            },
            "steps[0].payload_json",
        ),
        (
            {
                let mut r = submit(&["echo"], None);
                r.source = 99;
                r
            },
            "source",
        ),
        (
            {
                let mut r = submit(&["echo"], None);
                r.title = "t".repeat(201);
                r
            },
            "title",
        ),
        (
            {
                let mut r = submit(&["echo"], None);
                r.dedupe_key = Some("k".repeat(201));
                r
            },
            "dedupe_key",
        ),
        (
            {
                let mut r = submit(&["echo"], None);
                r.metadata_json = "[1]".into();
                r
            },
            "metadata_json",
        ),
    ];
    for (request, field) in cases {
        let err = app
            .proposals()
            .submit_proposal(request)
            .await
            .expect_err(field);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            err.message()
        );
    }
    let err = app
        .missions()
        .claim_step(claim("w", &["BAD"]))
        .await
        .expect_err("kind");
    assert!(err.message().starts_with("kinds[0]:"), "{}", err.message());
    let err = app
        .events()
        .emit_event(pb::EmitEventRequest {
            kind: "x".into(),
            source: "a".into(),
            cost_usd: Some(f64::NAN),
            ..Default::default()
        })
        .await
        .expect_err("cost");
    assert!(err.message().starts_with("cost_usd:"), "{}", err.message());
    let listed = app
        .proposals()
        .list_proposals(pb::ListProposalsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.proposals.is_empty(), "nothing was written");
    // A message above the size limit is refused by the server.
    let big = submit(&["echo"], None);
    let mut big = big;
    big.metadata_json = format!(
        "{{\"x\": \"{}\"}}",
        "y".repeat(opsloop_core::grpc::MAX_DECODING_MESSAGE_SIZE)
    );
    let err = app
        .proposals()
        .submit_proposal(big)
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    app.stop().await;
}
