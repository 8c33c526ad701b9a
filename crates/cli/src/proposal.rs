//! `opsloop proposal submit|list|show|approve|reject`: work entering the loop
//! through `ProposalService`, and the operator's decisions on pending work.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{ArgMatches, Args, Subcommand, ValueEnum};
use opsloop_core::proto::v1::{
    ApproveProposalRequest, GetProposalRequest, ListProposalsRequest, Proposal, ProposalSource,
    ProposalStatus, RejectProposalRequest, StepSpec, SubmitProposalRequest,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{
    self, OutputFormat, Table, enum_label, fields, json_doc, opt, opt_json, ts, ts_json,
};

/// `opsloop proposal …`
#[derive(Subcommand)]
pub enum ProposalCommand {
    /// Submit a proposal; the gates judge it at once (approved with a mission,
    /// pending, or rejected with the gate's reason).
    Submit(SubmitArgs),
    /// List proposals, newest first.
    List(ListArgs),
    /// Show one proposal: its steps and the decision taken on it.
    Show {
        /// Proposal id.
        id: String,
    },
    /// Approve a pending proposal and create its mission (admin token).
    Approve {
        /// Proposal id.
        id: String,
        /// Comment for the audit log.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a pending proposal (admin token).
    Reject {
        /// Proposal id.
        id: String,
        /// Why; stored as the rejection detail and audited.
        #[arg(long)]
        reason: String,
    },
}

/// `opsloop proposal submit`
#[derive(Args)]
pub struct SubmitArgs {
    /// Short title, 1 to 200 characters (required unless --file gives one).
    #[arg(long)]
    title: Option<String>,
    /// Kind of a step; repeat for several steps, in order.
    #[arg(long = "kind", value_name = "KIND", id = "kinds")]
    kinds: Vec<String>,
    /// JSON payload of the step whose --kind precedes it (default {}).
    #[arg(long = "payload", value_name = "JSON", id = "payloads")]
    payloads: Vec<String>,
    /// Idempotency key: a retry with the same key returns the first proposal.
    #[arg(long)]
    dedupe_key: Option<String>,
    /// Let the steps run concurrently instead of one after the other.
    #[arg(long)]
    parallel: bool,
    /// Name of the proposing agent (default: --actor).
    #[arg(long)]
    agent: Option<String>,
    /// Free-form metadata as a JSON object.
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Where the proposal comes from.
    #[arg(long, value_enum, default_value_t = SourceArg::Manual)]
    source: SourceArg,
    /// A YAML or JSON file (`-` for stdin) holding either a list of steps
    /// (`[{kind, payload, max_attempts}]`) or a whole proposal (`{title, agent,
    /// dedupe_key, parallel, metadata, steps}`); flags override its fields.
    #[arg(long, value_name = "PATH", conflicts_with = "kinds")]
    file: Option<PathBuf>,
}

/// `opsloop proposal list`
#[derive(Args)]
pub struct ListArgs {
    /// Only proposals with this status.
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// Only proposals from this source.
    #[arg(long, value_enum)]
    source: Option<SourceArg>,
    /// Only proposals of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only proposals created at or after this time (RFC 3339, a date, or `2h` ago).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only proposals created before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Most proposals to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Cursor printed by a previous page.
    #[arg(long)]
    page_token: Option<String>,
}

/// A proposal status on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl StatusArg {
    fn to_proto(self) -> ProposalStatus {
        match self {
            StatusArg::Pending => ProposalStatus::Pending,
            StatusArg::Approved => ProposalStatus::Approved,
            StatusArg::Rejected => ProposalStatus::Rejected,
            StatusArg::Expired => ProposalStatus::Expired,
        }
    }
}

/// A proposal source on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum SourceArg {
    Api,
    Trigger,
    Reaction,
    Manual,
}

impl SourceArg {
    fn to_proto(self) -> ProposalSource {
        match self {
            SourceArg::Api => ProposalSource::Api,
            SourceArg::Trigger => ProposalSource::Trigger,
            SourceArg::Reaction => ProposalSource::Reaction,
            SourceArg::Manual => ProposalSource::Manual,
        }
    }
}

/// Runs a `proposal` command. `submit_matches` are the parsed arguments of
/// `proposal submit`, whose positions pair each `--payload` with its `--kind`.
pub async fn run(
    command: ProposalCommand,
    globals: &Globals,
    submit_matches: Option<&ArgMatches>,
) -> anyhow::Result<()> {
    match command {
        ProposalCommand::Submit(args) => {
            let request = submit_request(&args, globals, submit_matches)?;
            let conn = Connection::open(globals, Daemon::Api).await?;
            let response = conn
                .proposals()
                .submit_proposal(request)
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let proposal = response
                .proposal
                .ok_or_else(|| anyhow!("the api answered without a proposal"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "proposal": proposal_json(&proposal),
                    "deduplicated": response.deduplicated,
                })),
                OutputFormat::Table => {
                    if response.deduplicated {
                        outln!("deduplicated: the dedupe key is held by this earlier proposal");
                    }
                    out!("{}", proposal_fields(&proposal));
                    print_next_step(&proposal);
                    Ok(())
                }
            }
        }
        ProposalCommand::List(args) => list(args, globals).await,
        ProposalCommand::Show { id } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let proposal = conn
                .proposals()
                .get_proposal(GetProposalRequest { id })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .proposal
                .ok_or_else(|| anyhow!("the api answered without a proposal"))?;
            print_proposal(&proposal, globals.output)
        }
        ProposalCommand::Approve { id, comment } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let proposal = conn
                .proposals()
                .approve_proposal(ApproveProposalRequest {
                    id,
                    actor: globals.actor.clone(),
                    comment,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .proposal
                .ok_or_else(|| anyhow!("the api answered without a proposal"))?;
            print_proposal(&proposal, globals.output)
        }
        ProposalCommand::Reject { id, reason } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let proposal = conn
                .proposals()
                .reject_proposal(RejectProposalRequest {
                    id,
                    actor: globals.actor.clone(),
                    reason,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .proposal
                .ok_or_else(|| anyhow!("the api answered without a proposal"))?;
            print_proposal(&proposal, globals.output)
        }
    }
}

async fn list(args: ListArgs, globals: &Globals) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let created_after = args
        .since
        .as_deref()
        .map(|t| crate::parse::instant(t, now).context("--since"))
        .transpose()?
        .map(output::to_timestamp);
    let created_before = args
        .until
        .as_deref()
        .map(|t| crate::parse::instant(t, now).context("--until"))
        .transpose()?
        .map(output::to_timestamp);
    let request = ListProposalsRequest {
        status: args
            .status
            .map_or(ProposalStatus::Unspecified, StatusArg::to_proto) as i32,
        source: args
            .source
            .map_or(ProposalSource::Unspecified, SourceArg::to_proto) as i32,
        agent: args.agent,
        created_after,
        created_before,
        page_size: args.limit,
        page_token: args.page_token.unwrap_or_default(),
    };
    let conn = Connection::open(globals, Daemon::Api).await?;
    let response = conn
        .proposals()
        .list_proposals(request)
        .await
        .map_err(|s| conn.error(s))?
        .into_inner();
    match globals.output {
        OutputFormat::Json => output::print_json(&json!({
            "proposals": response.proposals.iter().map(proposal_json).collect::<Vec<_>>(),
            "next_page_token": response.next_page_token,
        })),
        OutputFormat::Table => {
            let mut table = Table::new(&[
                "ID", "STATUS", "SOURCE", "AGENT", "STEPS", "MISSION", "CREATED", "TITLE",
            ]);
            for p in &response.proposals {
                let status = match p.rejection_reason.as_deref() {
                    Some(reason) => format!("{} ({reason})", status_label(p)),
                    None => status_label(p),
                };
                table.row(vec![
                    p.id.clone(),
                    status,
                    source_label(p),
                    p.agent.clone(),
                    p.steps.len().to_string(),
                    p.mission_id
                        .as_deref()
                        .map(output::short_id)
                        .unwrap_or_else(|| "-".into()),
                    ts(p.created_at.as_ref()),
                    p.title.clone(),
                ]);
            }
            table.print_or("no proposals");
            print_more(&response.next_page_token);
            Ok(())
        }
    }
}

/// Prints the `--page-token` hint for the next page, if there is one.
pub fn print_more(next_page_token: &str) {
    if !next_page_token.is_empty() {
        outln!("more: --page-token {next_page_token}");
    }
}

fn print_proposal(proposal: &Proposal, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&proposal_json(proposal)),
        OutputFormat::Table => {
            out!("{}", proposal_fields(proposal));
            print_next_step(proposal);
            Ok(())
        }
    }
}

fn print_next_step(proposal: &Proposal) {
    match (proposal.status(), proposal.mission_id.as_deref()) {
        (ProposalStatus::Approved, Some(mission)) => {
            outln!("\nnext: opsloop mission show {mission}")
        }
        (ProposalStatus::Pending, _) => outln!(
            "\nnext: opsloop proposal approve {id}   (or: opsloop proposal reject {id} --reason …)",
            id = proposal.id
        ),
        _ => {}
    }
}

fn status_label(p: &Proposal) -> String {
    enum_label(p.status().as_str_name(), "PROPOSAL_STATUS_")
}

fn source_label(p: &Proposal) -> String {
    enum_label(p.source().as_str_name(), "PROPOSAL_SOURCE_")
}

pub fn proposal_fields(p: &Proposal) -> String {
    let mut pairs = vec![
        ("id", p.id.clone()),
        ("title", p.title.clone()),
        ("status", status_label(p)),
    ];
    if p.rejection_reason.is_some() || p.rejection_detail.is_some() {
        pairs.push(("rejected by", opt(p.rejection_reason.as_deref())));
        pairs.push(("detail", opt(p.rejection_detail.as_deref())));
    }
    pairs.extend([
        ("mission", opt(p.mission_id.as_deref())),
        ("source", source_label(p)),
        ("agent", p.agent.clone()),
        ("dedupe key", opt(p.dedupe_key.as_deref())),
        ("decided by", opt(p.decided_by.as_deref())),
        ("policy version", p.policy_version.to_string()),
        ("created", ts(p.created_at.as_ref())),
        ("decided", ts(p.decided_at.as_ref())),
        ("parallel", p.parallel.to_string()),
    ]);
    let metadata = output::pretty_doc(&p.metadata_json);
    if !matches!(metadata.trim(), "" | "{}") {
        pairs.push(("metadata", metadata));
    }
    let mut out = fields(&pairs);
    out.push('\n');
    let mut table = Table::new(&["SEQ", "KIND", "MAX ATTEMPTS", "PAYLOAD"]);
    for (i, step) in p.steps.iter().enumerate() {
        table.row(vec![
            i.to_string(),
            step.kind.clone(),
            step.max_attempts
                .map_or_else(|| "default".into(), |n| n.to_string()),
            step.payload_json.clone(),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// A proposal as stable JSON for scripts.
pub fn proposal_json(p: &Proposal) -> Value {
    json!({
        "id": p.id,
        "title": p.title,
        "status": status_label(p),
        "source": source_label(p),
        "agent": p.agent,
        "dedupe_key": opt_json(p.dedupe_key.as_deref()),
        "steps": p.steps.iter().map(|s| json!({
            "kind": s.kind,
            "payload": json_doc(&s.payload_json),
            "max_attempts": s.max_attempts,
        })).collect::<Vec<_>>(),
        "parallel": p.parallel,
        "metadata": json_doc(&p.metadata_json),
        "rejection_reason": opt_json(p.rejection_reason.as_deref()),
        "rejection_detail": opt_json(p.rejection_detail.as_deref()),
        "policy_version": p.policy_version,
        "mission_id": opt_json(p.mission_id.as_deref()),
        "decided_by": opt_json(p.decided_by.as_deref()),
        "created_at": ts_json(p.created_at.as_ref()),
        "decided_at": ts_json(p.decided_at.as_ref()),
        "updated_at": ts_json(p.updated_at.as_ref()),
    })
}

/// A proposal file: a list of steps, or a whole proposal.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalFile {
    title: Option<String>,
    agent: Option<String>,
    dedupe_key: Option<String>,
    parallel: Option<bool>,
    metadata: Option<Value>,
    #[serde(default)]
    steps: Vec<StepFile>,
}

/// One step in a proposal file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    kind: String,
    payload: Option<Value>,
    max_attempts: Option<u32>,
}

fn read_file(path: &Path) -> anyhow::Result<ProposalFile> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("--file -: reading stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("--file {}: cannot read it", path.display()))?
    };
    parse_file(&text, path.extension().is_some_and(|e| e == "json"))
        .with_context(|| format!("--file {}", path.display()))
}

fn parse_file(text: &str, json: bool) -> anyhow::Result<ProposalFile> {
    let doc: Value = if json {
        serde_json::from_str(text).context("not valid JSON")?
    } else {
        serde_yaml_ng::from_str(text).context("not valid YAML")?
    };
    match doc {
        Value::Array(_) => Ok(ProposalFile {
            steps: serde_json::from_value(doc)
                .context("a list of steps needs {kind, payload, max_attempts} items")?,
            ..ProposalFile::default()
        }),
        Value::Object(_) => serde_json::from_value(doc).context(
            "expected {title, agent, dedupe_key, parallel, metadata, steps} (or a list of steps)",
        ),
        _ => bail!("expected a list of steps or a proposal object"),
    }
}

fn submit_request(
    args: &SubmitArgs,
    globals: &Globals,
    matches: Option<&ArgMatches>,
) -> anyhow::Result<SubmitProposalRequest> {
    let file = args
        .file
        .as_deref()
        .map(read_file)
        .transpose()?
        .unwrap_or_default();
    let mut steps = Vec::new();
    for (i, step) in file.steps.iter().enumerate() {
        steps.push(StepSpec {
            kind: step.kind.clone(),
            payload_json: step
                .payload
                .as_ref()
                .map_or_else(|| "{}".to_owned(), Value::to_string),
            max_attempts: step.max_attempts,
        });
        if step.kind.trim().is_empty() {
            bail!("--file: steps[{i}].kind is empty");
        }
    }
    if !args.kinds.is_empty() {
        let kind_positions = positions(matches, "kinds", args.kinds.len());
        let payload_positions = positions(matches, "payloads", args.payloads.len());
        steps = pair_steps(
            &args.kinds,
            &kind_positions,
            &args.payloads,
            &payload_positions,
        )?;
    } else if !args.payloads.is_empty() && args.file.is_none() {
        bail!("--payload needs a --kind before it");
    } else if !args.payloads.is_empty() {
        bail!("--payload goes with --kind; with --file put payloads in the file");
    }
    if steps.is_empty() {
        bail!("no steps: give --kind KIND [--payload JSON] (repeatable) or --file steps.yaml");
    }
    let title = args
        .title
        .clone()
        .or(file.title)
        .ok_or_else(|| anyhow!("--title is required (or a title in --file)"))?;
    let metadata_json = match (&args.metadata, file.metadata) {
        (Some(text), _) => crate::parse::json_arg("--metadata", text)?,
        (None, Some(value)) => value.to_string(),
        (None, None) => String::new(),
    };
    Ok(SubmitProposalRequest {
        title,
        source: args.source.to_proto() as i32,
        agent: args
            .agent
            .clone()
            .or(file.agent)
            .unwrap_or_else(|| globals.actor.clone()),
        dedupe_key: args.dedupe_key.clone().or(file.dedupe_key),
        steps,
        parallel: args.parallel || file.parallel.unwrap_or(false),
        metadata_json,
    })
}

/// Positions of an option's values on the command line; in their given order
/// when the matches are not at hand (then payloads pair with kinds by order).
fn positions(matches: Option<&ArgMatches>, id: &str, count: usize) -> Vec<usize> {
    matches
        .and_then(|m| m.indices_of(id))
        .map(|indices| indices.collect())
        .unwrap_or_else(|| (0..count).map(|i| i * 2).collect())
}

/// Steps from `--kind` and `--payload` options: each payload belongs to the
/// closest `--kind` before it; kinds without one get `{}`.
pub fn pair_steps(
    kinds: &[String],
    kind_positions: &[usize],
    payloads: &[String],
    payload_positions: &[usize],
) -> anyhow::Result<Vec<StepSpec>> {
    let mut steps: Vec<StepSpec> = kinds
        .iter()
        .map(|kind| StepSpec {
            kind: kind.clone(),
            payload_json: String::new(),
            max_attempts: None,
        })
        .collect();
    for (payload, position) in payloads.iter().zip(payload_positions) {
        let owner = kind_positions
            .iter()
            .rposition(|k| k < position)
            .ok_or_else(|| anyhow!("--payload {payload} comes before any --kind"))?;
        let step = steps
            .get_mut(owner)
            .ok_or_else(|| anyhow!("--payload {payload}: no matching --kind"))?;
        if !step.payload_json.is_empty() {
            bail!("--kind {} has two --payload options", step.kind);
        }
        step.payload_json =
            crate::parse::json_arg(&format!("--payload of --kind {}", step.kind), payload)?;
    }
    for step in &mut steps {
        if step.payload_json.is_empty() {
            step.payload_json = "{}".into();
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn payloads_pair_with_the_kind_before_them() {
        let steps = pair_steps(
            &strings(&["a", "b", "c"]),
            &[1, 5, 7],
            &strings(&["{\"x\": 1}", "[2]"]),
            &[3, 9],
        )
        .unwrap();
        let got: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s.kind.as_str(), s.payload_json.as_str()))
            .collect();
        assert_eq!(got, vec![("a", "{\"x\":1}"), ("b", "{}"), ("c", "[2]")]);
        assert!(pair_steps(&strings(&["a"]), &[3], &strings(&["{}"]), &[1]).is_err());
        assert!(pair_steps(&strings(&["a"]), &[1], &strings(&["{}", "{}"]), &[3, 5]).is_err());
        assert!(pair_steps(&strings(&["a"]), &[1], &strings(&["{nope"]), &[3]).is_err());
    }

    #[test]
    fn proposal_files_are_a_step_list_or_a_proposal() {
        let file = parse_file(
            "- kind: analyze\n  payload: {text: hi}\n- kind: notify\n  max_attempts: 2\n",
            false,
        )
        .unwrap();
        assert_eq!(file.steps.len(), 2);
        assert_eq!(file.steps[0].payload, Some(json!({"text": "hi"})));
        assert_eq!(file.steps[1].max_attempts, Some(2));
        let file = parse_file(
            r#"{"title": "t", "parallel": true, "steps": [{"kind": "draft"}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(file.title.as_deref(), Some("t"));
        assert_eq!(file.parallel, Some(true));
        assert!(parse_file("{\"steps\": [], \"bogus\": 1}", true).is_err());
        assert!(parse_file("42", false).is_err());
    }
}
