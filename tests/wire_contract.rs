//! The whole loop driven by gRPC clients generated from `proto/` alone (see
//! build.rs): submit → auto-approved mission → a worker claims and completes
//! every step → the mission succeeded → its events are listed in order. No
//! opsloop crate's types are used on the client side.

use std::time::Duration;

use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use tokio_util::sync::CancellationToken;

#[allow(clippy::all, clippy::pedantic, unreachable_pub)]
mod wire {
    tonic::include_proto!("opsloop.v1");
}

use wire::event_service_client::EventServiceClient;
use wire::mission_service_client::MissionServiceClient;
use wire::proposal_service_client::ProposalServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_over_the_wire_contract_alone() {
    let db = fresh_postgres().await;
    let audit = std::env::temp_dir().join(format!(
        "opsloop-wire-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    let config = load(&ConfigSources::env_only([
        ("OPSLOOP__DATABASE__URL", db.url.clone()),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__AUDIT__LOG_PATH", audit.display().to_string()),
    ]))
    .expect("config");
    let shutdown = CancellationToken::new();
    let secrets = SecretStore::with_sources(None, std::path::Path::new("/nonexistent"), vec![]);
    let infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .expect("infra");
    let app = opsloop_api::ApiApp::build(infra).await.expect("build");
    let endpoint = format!("http://{}", app.grpc_addr().expect("addr"));
    let server = tokio::spawn(app.run_until_stopped());

    let mut proposals = ProposalServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    let mut missions = MissionServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    let mut events = EventServiceClient::connect(endpoint)
        .await
        .expect("connect");

    let submitted = proposals
        .submit_proposal(wire::SubmitProposalRequest {
            title: "wire contract".into(),
            source: wire::ProposalSource::Api as i32,
            agent: "outside-agent".into(),
            dedupe_key: Some("wire-contract-1".into()),
            steps: ["analyze", "draft", "notify"]
                .iter()
                .map(|kind| wire::StepSpec {
                    kind: (*kind).into(),
                    payload_json: format!("{{\"step\":\"{kind}\"}}"),
                    max_attempts: None,
                })
                .collect(),
            parallel: false,
            metadata_json: String::new(),
        })
        .await
        .expect("submit")
        .into_inner();
    let proposal = submitted.proposal.expect("proposal");
    assert!(!submitted.deduplicated);
    assert_eq!(
        proposal.status,
        wire::ProposalStatus::Approved as i32,
        "{proposal:?}"
    );
    let mission_id = proposal
        .mission_id
        .clone()
        .expect("auto-approved proposal has a mission");

    let mut completed = Vec::new();
    for _ in 0..3 {
        let claim = missions
            .claim_step(wire::ClaimStepRequest {
                worker_id: "wire-worker".into(),
                kinds: vec!["analyze".into(), "draft".into(), "notify".into()],
                lease_seconds: 60,
                ..Default::default()
            })
            .await
            .expect("claim")
            .into_inner();
        assert!(claim.found, "a step is claimable");
        let step = claim.step.expect("step");
        assert_eq!(step.mission_id, mission_id);
        let done = missions
            .complete_step(wire::CompleteStepRequest {
                step_id: step.id.clone(),
                worker_id: "wire-worker".into(),
                attempt: step.attempt,
                result_json: "{\"ok\":true}".into(),
                usage: Vec::new(),
                cost_usd: Some(0.25),
            })
            .await
            .expect("complete")
            .into_inner();
        completed.push((step.seq, step.kind, done.mission_status));
    }
    assert_eq!(
        completed
            .iter()
            .map(|(seq, kind, _)| (*seq, kind.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "analyze"), (1, "draft"), (2, "notify")],
        "steps run in seq order"
    );
    assert_eq!(completed[2].2, wire::MissionStatus::Succeeded as i32);

    let nothing = missions
        .claim_step(wire::ClaimStepRequest {
            worker_id: "wire-worker".into(),
            kinds: vec!["analyze".into()],
            lease_seconds: 60,
            ..Default::default()
        })
        .await
        .expect("claim")
        .into_inner();
    assert!(!nothing.found);

    let mission = missions
        .get_mission(wire::GetMissionRequest {
            id: mission_id.clone(),
        })
        .await
        .expect("get mission")
        .into_inner()
        .mission
        .expect("mission");
    assert_eq!(mission.status, wire::MissionStatus::Succeeded as i32);
    assert_eq!(mission.steps.len(), 3);
    assert!(
        (mission.cost_usd - 0.75).abs() < 1e-9,
        "cost {}",
        mission.cost_usd
    );

    let again = proposals
        .submit_proposal(wire::SubmitProposalRequest {
            title: "wire contract".into(),
            agent: "outside-agent".into(),
            dedupe_key: Some("wire-contract-1".into()),
            steps: vec![wire::StepSpec {
                kind: "analyze".into(),
                payload_json: "{}".into(),
                max_attempts: None,
            }],
            ..Default::default()
        })
        .await
        .expect("resubmit")
        .into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.proposal.expect("proposal").id, proposal.id);

    let listed = events
        .list_events(wire::ListEventsRequest {
            mission_id: Some(mission_id.clone()),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list events")
        .into_inner();
    let kinds: Vec<&str> = listed.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"mission.succeeded"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "step.succeeded").count(),
        3,
        "{kinds:?}"
    );
    let seqs: Vec<i64> = listed.events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events in sequence order: {seqs:?}"
    );

    let bad = proposals
        .submit_proposal(wire::SubmitProposalRequest {
            title: "bad".into(),
            agent: "outside-agent".into(),
            steps: vec![wire::StepSpec {
                kind: "no spaces allowed".into(),
                payload_json: "{}".into(),
                max_attempts: None,
            }],
            ..Default::default()
        })
        .await
        .expect_err("invalid kind");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("steps[0].kind"), "{}", bad.message());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean stop");
    let _ = std::fs::remove_file(audit);
    db.cleanup().await;
}
