//! `opsloop proposal …` as a process against an in-test `ProposalService`:
//! what the flags and files turn into on the wire, and the JSON printed back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opsloop_core::proto::v1::proposal_service_server::{ProposalService, ProposalServiceServer};
use opsloop_core::proto::v1::{
    ApproveProposalRequest, ApproveProposalResponse, GetProposalRequest, GetProposalResponse,
    ListProposalsRequest, ListProposalsResponse, Proposal, ProposalSource, ProposalStatus,
    RejectProposalRequest, RejectProposalResponse, SubmitProposalRequest, SubmitProposalResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Seen {
    submits: Vec<SubmitProposalRequest>,
    approvals: Vec<ApproveProposalRequest>,
    rejections: Vec<RejectProposalRequest>,
    lists: Vec<ListProposalsRequest>,
}

struct FakeProposals {
    seen: Arc<Mutex<Seen>>,
}

fn stored(request: &SubmitProposalRequest) -> Proposal {
    Proposal {
        id: "0193a6f2-7c1e-7a11-9f00-0123456789ab".into(),
        title: request.title.clone(),
        source: request.source,
        agent: request.agent.clone(),
        dedupe_key: request.dedupe_key.clone(),
        steps: request.steps.clone(),
        parallel: request.parallel,
        metadata_json: request.metadata_json.clone(),
        status: ProposalStatus::Approved as i32,
        policy_version: 7,
        mission_id: Some("0193a6f2-0000-7a11-9f00-0123456789ab".into()),
        decided_by: Some("auto_approve".into()),
        ..Proposal::default()
    }
}

#[tonic::async_trait]
impl ProposalService for FakeProposals {
    async fn submit_proposal(
        &self,
        request: Request<SubmitProposalRequest>,
    ) -> Result<Response<SubmitProposalResponse>, Status> {
        let request = request.into_inner();
        let proposal = stored(&request);
        self.seen.lock().unwrap().submits.push(request);
        Ok(Response::new(SubmitProposalResponse {
            proposal: Some(proposal),
            deduplicated: false,
        }))
    }
    async fn submit_proposals(
        &self,
        _: Request<opsloop_core::proto::v1::SubmitProposalsRequest>,
    ) -> Result<Response<opsloop_core::proto::v1::SubmitProposalsResponse>, Status> {
        Err(Status::unimplemented("the CLI does not batch"))
    }
    async fn get_proposal(
        &self,
        _: Request<GetProposalRequest>,
    ) -> Result<Response<GetProposalResponse>, Status> {
        Err(Status::not_found("proposal 42 does not exist"))
    }
    async fn list_proposals(
        &self,
        request: Request<ListProposalsRequest>,
    ) -> Result<Response<ListProposalsResponse>, Status> {
        self.seen.lock().unwrap().lists.push(request.into_inner());
        Ok(Response::new(ListProposalsResponse {
            proposals: vec![stored(&SubmitProposalRequest {
                title: "listed".into(),
                ..SubmitProposalRequest::default()
            })],
            next_page_token: "next-1".into(),
        }))
    }
    async fn approve_proposal(
        &self,
        request: Request<ApproveProposalRequest>,
    ) -> Result<Response<ApproveProposalResponse>, Status> {
        self.seen
            .lock()
            .unwrap()
            .approvals
            .push(request.into_inner());
        Err(Status::failed_precondition("proposal is rejected"))
    }
    async fn reject_proposal(
        &self,
        request: Request<RejectProposalRequest>,
    ) -> Result<Response<RejectProposalResponse>, Status> {
        let request = request.into_inner();
        let proposal = Proposal {
            id: request.id.clone(),
            status: ProposalStatus::Rejected as i32,
            rejection_reason: Some("manual".into()),
            rejection_detail: Some(request.reason.clone()),
            ..Proposal::default()
        };
        self.seen.lock().unwrap().rejections.push(request);
        Ok(Response::new(RejectProposalResponse {
            proposal: Some(proposal),
        }))
    }
}

async fn serve() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProposalServiceServer::new(FakeProposals {
                seen: seen.clone(),
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

async fn opsloop(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args(["--endpoint", &format!("http://{addr}"), "--actor", "alice"])
        .args(args)
        .env_remove("OPSLOOP_TOKEN")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_pairs_each_payload_with_the_kind_before_it() {
    let (addr, seen) = serve().await;
    let out = opsloop(
        addr,
        &[
            "-o",
            "json",
            "proposal",
            "submit",
            "--title",
            "weekly digest",
            "--kind",
            "analyze",
            "--payload",
            r#"{"x": 1}"#,
            "--kind",
            "draft",
            "--kind",
            "notify",
            "--payload",
            "[2]",
            "--dedupe-key",
            "digest-w47",
            "--parallel",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["proposal"]["status"], "approved");
    assert_eq!(
        printed["proposal"]["steps"][0]["payload"],
        serde_json::json!({"x": 1})
    );
    assert_eq!(printed["deduplicated"], false);
    let seen = seen.lock().unwrap();
    let request = &seen.submits[0];
    let steps: Vec<(&str, &str)> = request
        .steps
        .iter()
        .map(|s| (s.kind.as_str(), s.payload_json.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("analyze", r#"{"x":1}"#),
            ("draft", "{}"),
            ("notify", "[2]")
        ]
    );
    assert_eq!(request.title, "weekly digest");
    assert_eq!(request.dedupe_key.as_deref(), Some("digest-w47"));
    assert!(request.parallel);
    assert_eq!(request.agent, "alice");
    assert_eq!(request.source, ProposalSource::Manual as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_reads_a_yaml_file_and_flags_win() {
    let (addr, seen) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proposal.yaml");
    std::fs::write(
        &path,
        "title: from the file\nagent: bot-7\nmetadata: {ticket: OPS-1}\nsteps:\n  - kind: analyze\n    payload: {text: hi}\n    max_attempts: 2\n  - kind: notify\n",
    )
    .unwrap();
    let out = opsloop(
        addr,
        &[
            "proposal",
            "submit",
            "--file",
            path.to_str().unwrap(),
            "--title",
            "from the flag",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("approved"), "{stdout}");
    assert!(
        stdout.contains("next: opsloop mission show 0193a6f2-0000-7a11-9f00-0123456789ab"),
        "{stdout}"
    );
    let seen = seen.lock().unwrap();
    let request = &seen.submits[0];
    assert_eq!(request.title, "from the flag");
    assert_eq!(request.agent, "bot-7");
    assert_eq!(request.metadata_json, r#"{"ticket":"OPS-1"}"#);
    assert_eq!(request.steps.len(), 2);
    assert_eq!(request.steps[0].payload_json, r#"{"text":"hi"}"#);
    assert_eq!(request.steps[0].max_attempts, Some(2));
    assert_eq!(request.steps[1].payload_json, "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_carry_actor_and_reason_and_errors_are_one_line() {
    let (addr, seen) = serve().await;
    let out = opsloop(
        addr,
        &["proposal", "reject", "p-1", "--reason", "not this week"],
    )
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not this week"));

    let out = opsloop(addr, &["proposal", "approve", "p-2", "--comment", "ok"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("FAILED_PRECONDITION: proposal is rejected — "),
        "{stderr}"
    );

    let out = opsloop(addr, &["proposal", "show", "42"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("NOT_FOUND: proposal 42 does not exist — ")
    );

    let out = opsloop(
        addr,
        &[
            "proposal", "list", "--status", "pending", "--since", "2h", "--limit", "5",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("more: --page-token next-1"));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.rejections[0].actor, "alice");
    assert_eq!(seen.rejections[0].reason, "not this week");
    assert_eq!(seen.approvals[0].actor, "alice");
    assert_eq!(seen.approvals[0].comment.as_deref(), Some("ok"));
    let list = &seen.lists[0];
    assert_eq!(list.status, ProposalStatus::Pending as i32);
    assert_eq!(list.page_size, 5);
    assert!(list.created_after.is_some() && list.created_before.is_none());
}
