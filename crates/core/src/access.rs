//! The one access table: every gRPC method and every HTTP route of every
//! daemon, and the roles that may call it. The gRPC layer
//! ([`crate::grpc::secure`]) and the HTTP middleware ([`crate::http::secure`])
//! look calls up here before any handler runs; a call missing from the table
//! is denied. `admin` may do everything; `public` needs no credentials (only
//! the liveness/readiness probes — `/healthz`, `/readyz` and the alerter's
//! Alertmanager-style `/-/healthy`, `/-/ready` — and `grpc.health.v1`, which load balancers
//! call without a token, the alerter's signed incident links, whose
//! signature is the credential, and the api's status page unless configured
//! to need the viewer role). The README's roles section is rendered from this
//! table ([`render_markdown`]) and a test keeps the two equal.

use std::fmt;

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, including policy, approvals, silences, backups, tokens.
    Admin,
    /// The worker/agent protocol (submit, claim, renew, complete, fail, emit)
    /// and the reads.
    Agent,
    /// Prometheus sending alerts (`POST /api/v2/alerts`) and nothing else.
    AlertSender,
    /// Read-only: dashboards, the console, Prometheus scraping `/metrics`.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Agent, Role::AlertSender, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::AlertSender => "alert_sender",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role name (`admin`, `agent`, `alert_sender`, `viewer`).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may make a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials.
    Public,
    /// A token with one of these roles (or `admin`, which may do everything).
    Roles(&'static [Role]),
}

impl Access {
    /// Whether `role` may make the call.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public => true,
            Access::Roles(roles) => role == Role::Admin || roles.contains(&role),
        }
    }

    /// The roles that may make the call, `admin` first (`public` alone for
    /// public calls).
    pub fn role_names(self) -> Vec<&'static str> {
        match self {
            Access::Public => vec!["public"],
            Access::Roles(roles) => {
                let mut names = vec![Role::Admin.as_str()];
                names.extend(
                    roles
                        .iter()
                        .filter(|r| **r != Role::Admin)
                        .map(|r| r.as_str()),
                );
                names
            }
        }
    }
}

/// Which daemons serve an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemons {
    /// Every daemon (the standard routes).
    Every,
    /// The daemons named (their `SERVICE` names: `api`, `alerter`,
    /// `backup-agent`, `heartbeat-worker`).
    Only(&'static [&'static str]),
}

impl Daemons {
    pub fn includes(self, daemon: &str) -> bool {
        match self {
            Daemons::Every => true,
            Daemons::Only(names) => names.contains(&daemon),
        }
    }

    fn label(self) -> String {
        match self {
            Daemons::Every => "every daemon".into(),
            Daemons::Only(names) => names.join(", "),
        }
    }
}

/// What an entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A gRPC method by its full path, `/opsloop.v1.ProposalService/SubmitProposal`.
    Grpc(&'static str),
    /// An HTTP route: method (`GET` also covers `HEAD`) and axum path pattern.
    Http(&'static str, &'static str),
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub daemons: Daemons,
    pub target: Target,
    pub access: Access,
}

const EVERY: Daemons = Daemons::Every;
const API: Daemons = Daemons::Only(&["api"]);
const ALERTER: Daemons = Daemons::Only(&["alerter"]);
const BACKUP: Daemons = Daemons::Only(&["backup-agent"]);
const HEARTBEAT: Daemons = Daemons::Only(&["heartbeat-worker"]);
const GRPC_DAEMONS: Daemons = Daemons::Only(&["api", "alerter", "backup-agent"]);

const ADMIN: Access = Access::Roles(&[Role::Admin]);
const AGENT: Access = Access::Roles(&[Role::Agent]);
const READ: Access = Access::Roles(&[Role::Agent, Role::Viewer]);
const VIEWER: Access = Access::Roles(&[Role::Viewer]);
const ALERTS_IN: Access = Access::Roles(&[Role::AlertSender]);

const fn grpc(daemons: Daemons, path: &'static str, access: Access) -> Entry {
    Entry {
        daemons,
        target: Target::Grpc(path),
        access,
    }
}

const fn http(daemons: Daemons, method: &'static str, path: &'static str, access: Access) -> Entry {
    Entry {
        daemons,
        target: Target::Http(method, path),
        access,
    }
}

/// The table. Keep it sorted by daemon, then service.
pub const TABLE: &[Entry] = &[
    // Standard routes of every daemon.
    http(EVERY, "GET", "/healthz", Access::Public),
    http(EVERY, "GET", "/readyz", Access::Public),
    http(EVERY, "GET", "/metrics", VIEWER),
    grpc(GRPC_DAEMONS, "/grpc.health.v1.Health/Check", Access::Public),
    grpc(GRPC_DAEMONS, "/grpc.health.v1.Health/Watch", Access::Public),
    grpc(
        GRPC_DAEMONS,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        READ,
    ),
    grpc(
        GRPC_DAEMONS,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        READ,
    ),
    // api
    grpc(API, "/opsloop.v1.ProposalService/SubmitProposal", AGENT),
    grpc(API, "/opsloop.v1.ProposalService/SubmitProposals", AGENT),
    grpc(API, "/opsloop.v1.ProposalService/GetProposal", READ),
    grpc(API, "/opsloop.v1.ProposalService/ListProposals", READ),
    grpc(API, "/opsloop.v1.ProposalService/ApproveProposal", ADMIN),
    grpc(API, "/opsloop.v1.ProposalService/RejectProposal", ADMIN),
    grpc(API, "/opsloop.v1.MissionService/GetMission", READ),
    grpc(API, "/opsloop.v1.MissionService/ListMissions", READ),
    grpc(API, "/opsloop.v1.MissionService/CancelMission", ADMIN),
    grpc(API, "/opsloop.v1.MissionService/ClaimStep", AGENT),
    grpc(API, "/opsloop.v1.MissionService/RenewLease", AGENT),
    grpc(API, "/opsloop.v1.MissionService/CompleteStep", AGENT),
    grpc(API, "/opsloop.v1.MissionService/FailStep", AGENT),
    grpc(API, "/opsloop.v1.MissionService/ListDeadLetters", READ),
    grpc(API, "/opsloop.v1.MissionService/GetDeadLetter", READ),
    grpc(API, "/opsloop.v1.MissionService/RetryDeadLetter", ADMIN),
    grpc(API, "/opsloop.v1.EventService/EmitEvent", AGENT),
    grpc(API, "/opsloop.v1.EventService/ListEvents", READ),
    grpc(API, "/opsloop.v1.EventService/TailEvents", READ),
    grpc(API, "/opsloop.v1.PolicyService/GetPolicy", READ),
    grpc(API, "/opsloop.v1.PolicyService/SetPolicy", ADMIN),
    grpc(API, "/opsloop.v1.PolicyService/ListPolicies", READ),
    grpc(API, "/opsloop.v1.PolicyService/GetPolicyHistory", READ),
    grpc(API, "/opsloop.v1.RolloutService/CreateRollout", ADMIN),
    grpc(API, "/opsloop.v1.RolloutService/GetRollout", READ),
    grpc(API, "/opsloop.v1.RolloutService/AdvanceRollout", ADMIN),
    grpc(API, "/opsloop.v1.RolloutService/RollbackRollout", ADMIN),
    grpc(API, "/opsloop.v1.TriggerService/CreateTrigger", ADMIN),
    grpc(API, "/opsloop.v1.TriggerService/ListTriggers", READ),
    grpc(API, "/opsloop.v1.TriggerService/UpdateTrigger", ADMIN),
    grpc(API, "/opsloop.v1.TriggerService/DeleteTrigger", ADMIN),
    grpc(API, "/opsloop.v1.OpsService/GetSummary", READ),
    grpc(API, "/opsloop.v1.OpsService/GetHealth", READ),
    grpc(API, "/opsloop.v1.OpsService/EngageEmergencyStop", ADMIN),
    grpc(API, "/opsloop.v1.OpsService/ReleaseEmergencyStop", ADMIN),
    grpc(API, "/opsloop.v1.OpsService/GetWeeklyReport", READ),
    grpc(API, "/opsloop.v1.OpsService/ListQuarantinedEvents", READ),
    grpc(API, "/opsloop.v1.OpsService/RetryQuarantinedEvent", ADMIN),
    grpc(API, "/opsloop.v1.TokenService/CreateToken", ADMIN),
    grpc(API, "/opsloop.v1.TokenService/ListTokens", ADMIN),
    grpc(API, "/opsloop.v1.TokenService/RevokeToken", ADMIN),
    http(API, "GET", "/api/ops/summary/daily", READ),
    // The status page: public, unless `[api.status] require_viewer`, which
    // the page's handlers then check against the viewer role themselves.
    http(API, "GET", "/status", Access::Public),
    http(API, "GET", "/status.json", Access::Public),
    http(API, "GET", "/status/feed.atom", Access::Public),
    http(API, "GET", "/status/badge/{component}", Access::Public),
    // The operator console (`opsloop_api::console`): signed in with a
    // token through its form (the two public routes), then a session
    // cookie, which the console checks against these roles itself (see
    // [`checked_by_session`]); every action also needs its CSRF token.
    http(API, "GET", "/console/login", Access::Public),
    http(API, "POST", "/console/login", Access::Public),
    http(API, "POST", "/console/logout", VIEWER),
    http(API, "GET", "/console", VIEWER),
    http(API, "GET", "/console/console.js", VIEWER),
    http(API, "GET", "/console/proposals", VIEWER),
    http(API, "GET", "/console/proposals/{id}", VIEWER),
    http(API, "POST", "/console/proposals/{id}/approve", ADMIN),
    http(API, "POST", "/console/proposals/{id}/reject", ADMIN),
    http(API, "GET", "/console/missions", VIEWER),
    http(API, "GET", "/console/missions/{id}", VIEWER),
    http(API, "POST", "/console/missions/{id}/cancel", ADMIN),
    http(API, "GET", "/console/dead-letters", VIEWER),
    http(API, "POST", "/console/dead-letters/{id}/retry", ADMIN),
    http(API, "GET", "/console/events", VIEWER),
    http(API, "GET", "/console/events/stream", VIEWER),
    http(API, "GET", "/console/policy", VIEWER),
    http(API, "GET", "/console/policy/{key}", VIEWER),
    http(API, "POST", "/console/policy/{key}/preview", ADMIN),
    http(API, "POST", "/console/policy/{key}", ADMIN),
    http(API, "POST", "/console/emergency-stop", ADMIN),
    http(API, "GET", "/console/triggers", VIEWER),
    http(API, "POST", "/console/triggers/{id}/enabled", ADMIN),
    http(API, "GET", "/console/alerts", VIEWER),
    http(API, "POST", "/console/alerts/silence", ADMIN),
    http(API, "POST", "/console/silences/{id}/expire", ADMIN),
    http(API, "GET", "/console/incidents", VIEWER),
    http(API, "GET", "/console/incidents/{id}", VIEWER),
    http(API, "GET", "/console/incidents/{id}/postmortem", ADMIN),
    http(API, "POST", "/console/incidents/{id}/acknowledge", ADMIN),
    http(API, "POST", "/console/incidents/{id}/resolve", ADMIN),
    http(API, "POST", "/console/incidents/{id}/note", ADMIN),
    http(API, "GET", "/console/backups", VIEWER),
    http(API, "GET", "/console/backups/{id}", VIEWER),
    http(API, "POST", "/console/backups/{id}/verify", ADMIN),
    // alerter
    // Alertmanager's own probes, public like /healthz and /readyz: the same
    // liveness and readiness for tools that expect Alertmanager's paths.
    http(ALERTER, "GET", "/-/healthy", Access::Public),
    http(ALERTER, "GET", "/-/ready", Access::Public),
    grpc(ALERTER, "/opsloop.v1.AlertService/ListAlerts", READ),
    grpc(ALERTER, "/opsloop.v1.AlertService/CreateSilence", ADMIN),
    grpc(ALERTER, "/opsloop.v1.AlertService/ListSilences", READ),
    grpc(ALERTER, "/opsloop.v1.AlertService/ExpireSilence", ADMIN),
    grpc(ALERTER, "/opsloop.v1.AlertService/TestReceiver", ADMIN),
    grpc(ALERTER, "/opsloop.v1.IncidentService/ListIncidents", READ),
    grpc(ALERTER, "/opsloop.v1.IncidentService/GetIncident", READ),
    grpc(ALERTER, "/opsloop.v1.IncidentService/OpenIncident", ADMIN),
    grpc(
        ALERTER,
        "/opsloop.v1.IncidentService/AcknowledgeIncident",
        ADMIN,
    ),
    grpc(
        ALERTER,
        "/opsloop.v1.IncidentService/ResolveIncident",
        ADMIN,
    ),
    grpc(
        ALERTER,
        "/opsloop.v1.IncidentService/AddIncidentNote",
        ADMIN,
    ),
    grpc(
        ALERTER,
        "/opsloop.v1.IncidentService/EscalateIncident",
        ADMIN,
    ),
    grpc(ALERTER, "/opsloop.v1.IncidentService/OnCallNow", READ),
    grpc(ALERTER, "/opsloop.v1.IncidentService/OnCallWeek", READ),
    grpc(
        ALERTER,
        "/opsloop.v1.IncidentService/DraftPostmortem",
        ADMIN,
    ),
    grpc(
        ALERTER,
        "/opsloop.v1.IncidentService/GetIncidentStats",
        READ,
    ),
    http(ALERTER, "POST", "/api/v2/alerts", ALERTS_IN),
    http(ALERTER, "GET", "/api/v2/alerts", READ),
    http(ALERTER, "GET", "/api/v2/alerts/groups", READ),
    http(ALERTER, "GET", "/api/v2/silences", READ),
    http(ALERTER, "POST", "/api/v2/silences", ADMIN),
    http(ALERTER, "GET", "/api/v2/silence/{id}", READ),
    http(ALERTER, "DELETE", "/api/v2/silence/{id}", ADMIN),
    http(ALERTER, "GET", "/api/v2/receivers", READ),
    http(ALERTER, "GET", "/api/v2/status", READ),
    // The signed acknowledge/resolve links of incident pages: the HMAC
    // signature (bound to incident, action, expiry, single use) is the
    // credential, so a person acknowledges from Slack without a token.
    http(
        ALERTER,
        "GET",
        "/api/v1/incidents/{id}/{action}",
        Access::Public,
    ),
    // backup-agent
    grpc(BACKUP, "/opsloop.v1.BackupService/RunBackup", ADMIN),
    grpc(BACKUP, "/opsloop.v1.BackupService/ListBackups", READ),
    grpc(BACKUP, "/opsloop.v1.BackupService/VerifyBackup", ADMIN),
    grpc(BACKUP, "/opsloop.v1.BackupService/Restore", ADMIN),
    grpc(BACKUP, "/opsloop.v1.BackupService/PreviewRetention", READ),
    grpc(BACKUP, "/opsloop.v1.BackupService/GetProgress", READ),
    // heartbeat-worker
    http(HEARTBEAT, "POST", "/run", ADMIN),
    // Push heartbeats of `heartbeat` probes: an external job pings.
    http(HEARTBEAT, "POST", "/probes/{name}/ping", AGENT),
    // Probes: their states (`opsloop probe list`), one check now (`run`).
    http(HEARTBEAT, "GET", "/probes", READ),
    http(HEARTBEAT, "POST", "/probes/{name}/run", ADMIN),
    // Probes added at run time (`opsloop probe add|rm`).
    http(HEARTBEAT, "POST", "/probes", ADMIN),
    http(HEARTBEAT, "DELETE", "/probes/{name}", ADMIN),
];

/// Who may call the gRPC method at `path` (`/package.Service/Method`);
/// `None` when it is not in the table (the call is denied).
pub fn grpc_access(path: &str) -> Option<Access> {
    TABLE.iter().find_map(|entry| match entry.target {
        Target::Grpc(p) if p == path => Some(entry.access),
        _ => None,
    })
}

/// Who may call `method` on the route `pattern` (axum's matched path) of
/// `daemon`; `None` when it is not in the table (the call is denied).
pub fn http_access(daemon: &str, method: &str, pattern: &str) -> Option<Access> {
    let method = if method == "HEAD" { "GET" } else { method };
    TABLE.iter().find_map(|entry| match entry.target {
        Target::Http(m, p) if m == method && p == pattern && entry.daemons.includes(daemon) => {
            Some(entry.access)
        }
        _ => None,
    })
}

/// The table's route pattern of `daemon` that `path` matches for `method`
/// (a `{name}` segment matches any one segment), with who may call it;
/// `None` when no entry matches (the call is denied).
pub fn http_route(daemon: &str, method: &str, path: &str) -> Option<(&'static str, Access)> {
    let method = if method == "HEAD" { "GET" } else { method };
    TABLE.iter().find_map(|entry| match entry.target {
        Target::Http(m, pattern)
            if m == method && entry.daemons.includes(daemon) && matches_pattern(pattern, path) =>
        {
            Some((pattern, entry.access))
        }
        _ => None,
    })
}

/// Whether the route `pattern` of `daemon` belongs to the api's operator
/// console, whose handlers check the table's roles against the signed-in
/// session (a cookie, not an `authorization` header), so the bearer guard
/// ([`crate::http::secure`]) lets it through to them.
pub fn checked_by_session(daemon: &str, pattern: &str) -> bool {
    daemon == "api" && (pattern == "/console" || pattern.starts_with("/console/"))
}

fn matches_pattern(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The table as the README's roles section: one Markdown table per kind.
pub fn render_markdown() -> String {
    let mut out = String::from("| Daemon | gRPC method | Roles |\n|---|---|---|\n");
    for entry in TABLE {
        if let Target::Grpc(path) = entry.target {
            out.push_str(&format!(
                "| {} | `{}` | {} |\n",
                entry.daemons.label(),
                path.trim_start_matches('/'),
                entry.access.role_names().join(", ")
            ));
        }
    }
    out.push_str("\n| Daemon | HTTP route | Roles |\n|---|---|---|\n");
    for entry in TABLE {
        if let Target::Http(method, path) = entry.target {
            out.push_str(&format!(
                "| {} | `{method} {path}` | {} |\n",
                entry.daemons.label(),
                entry.access.role_names().join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                let clash = match (a.target, b.target) {
                    (Target::Grpc(x), Target::Grpc(y)) => x == y,
                    (Target::Http(m1, p1), Target::Http(m2, p2)) => {
                        m1 == m2
                            && p1 == p2
                            && match (a.daemons, b.daemons) {
                                (Daemons::Only(x), Daemons::Only(y)) => {
                                    x.iter().any(|d| y.contains(d))
                                }
                                _ => true,
                            }
                    }
                    _ => false,
                };
                assert!(!clash, "{a:?} and {b:?} cover the same call");
            }
        }
    }

    #[test]
    fn public_is_only_the_probes() {
        for entry in TABLE {
            if entry.access == Access::Public {
                let probe = match entry.target {
                    Target::Http(_, path) => {
                        path == "/healthz"
                            || path == "/readyz"
                            || path == "/-/healthy"
                            || path == "/-/ready"
                            || path == "/api/v1/incidents/{id}/{action}"
                            || path == "/status"
                            || path == "/console/login"
                            || path.starts_with("/status.")
                            || path.starts_with("/status/")
                    }
                    Target::Grpc(path) => path.starts_with("/grpc.health.v1.Health/"),
                };
                assert!(probe, "{entry:?} is public");
            }
        }
    }

    #[test]
    fn lookups() {
        let submit = grpc_access("/opsloop.v1.ProposalService/SubmitProposal").expect("listed");
        assert!(submit.allows(Role::Agent) && submit.allows(Role::Admin));
        assert!(!submit.allows(Role::Viewer) && !submit.allows(Role::AlertSender));
        assert_eq!(grpc_access("/opsloop.v1.Nope/Nope"), None);
        assert_eq!(
            http_access("alerter", "HEAD", "/metrics"),
            Some(VIEWER),
            "HEAD is GET"
        );
        assert_eq!(http_access("api", "POST", "/run"), None);
        assert_eq!(http_access("heartbeat-worker", "POST", "/run"), Some(ADMIN));
        assert_eq!(
            http_route("alerter", "DELETE", "/api/v2/silence/0b9f").map(|(p, _)| p),
            Some("/api/v2/silence/{id}")
        );
        assert_eq!(http_route("alerter", "DELETE", "/api/v2/silence/a/b"), None);
        assert_eq!(http_route("alerter", "DELETE", "/api/v2/silence/"), None);
        assert!(checked_by_session("api", "/console"));
        assert!(checked_by_session("api", "/console/missions/{id}"));
        assert!(!checked_by_session("api", "/consoles"));
        assert!(!checked_by_session("alerter", "/console"));
        assert_eq!(
            http_route("api", "POST", "/console/proposals/abc/approve"),
            Some(("/console/proposals/{id}/approve", ADMIN))
        );
        assert_eq!(Role::parse("alert_sender"), Some(Role::AlertSender));
        assert_eq!(Role::parse("root"), None);
    }
}
