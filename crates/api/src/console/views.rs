//! The console's pages as maud templates (compiled, every value escaped):
//! one layout with inline CSS (dark and light by `prefers-color-scheme`,
//! readable on a phone), no external request, and action forms only for a
//! role that may act, each with its CSRF token.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use opsloop_core::domain::policy::EmergencyStop;
use opsloop_core::proto::v1 as pb;
use opsloop_core::store::entities::{
    backups, events, mission_steps, policy, policy_history, step_dead_letters, trigger_rules,
};
use opsloop_core::workflow::{HealthFigures, MissionView, ProposalView};

use super::filters::{EventQuery, MissionQuery, ProposalQuery, SOURCES};
use super::incidents;
use crate::status_page::model::{ComponentState, Group, Snapshot};

/// Who is looking, and the CSRF token of this page's forms.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub name: String,
    pub role: String,
    /// Whether the role may act (admin): action forms are shown.
    pub can_act: bool,
    pub csrf: String,
    /// The confirmation of the action just done (`?done=`).
    pub done: Option<&'static str>,
}

/// The confirmations the pages show after an action's redirect.
pub fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "approved" => "Proposal approved.",
        "rejected" => "Proposal rejected.",
        "cancelled" => "Mission cancelled.",
        "retried" => "Dead letter retried as a new proposal.",
        "saved" => "Policy saved.",
        "stop-engaged" => "Emergency stop engaged.",
        "stop-released" => "Emergency stop released.",
        "enabled" => "Trigger enabled.",
        "disabled" => "Trigger disabled.",
        "silenced" => "Silence created.",
        "expired" => "Silence expired.",
        "acknowledged" => "Incident acknowledged.",
        "resolved" => "Incident resolved.",
        "noted" => "Note added to the incident.",
        _ => return None,
    })
}

const STYLE: &str = "\
:root{--fg:#1f2328;--muted:#57606a;--bg:#f6f8fa;--card:#fff;--line:#d0d7de;--link:#0969da;\
--good:#1a7f37;--bad:#b91c1c;--warn:#9a6700;--add:#dafbe1;--del:#ffebe9}\
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--bg:#0d1117;--card:#161b22;\
--line:#30363d;--link:#4493f8;--good:#3fb950;--bad:#f85149;--warn:#d29922;--add:#12361f;--del:#4b1113}}\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
a{color:var(--link)}main{max-width:72rem;margin:0 auto;padding:1rem}\
header{background:var(--card);border-bottom:1px solid var(--line)}\
header nav{max-width:72rem;margin:0 auto;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:center}\
header nav .who{margin-left:auto;color:var(--muted);font-size:.875rem}\
h1{font-size:1.4rem;margin:.5rem 0}h2{font-size:1.1rem;margin:1.25rem 0 .5rem}\
.card{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:.75rem 1rem;margin:.5rem 0}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr));gap:.5rem}\
.figure{font-size:1.5rem;font-weight:600}.muted{color:var(--muted);font-size:.875rem}\
.ok{color:var(--good)}.bad{color:var(--bad)}.warn{color:var(--warn)}\
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;background:var(--card)}\
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}\
th{font-size:.8rem;color:var(--muted);font-weight:600}\
form.inline{display:inline-flex;gap:.25rem;flex-wrap:wrap;align-items:center;margin:0}\
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin:.5rem 0}\
form.filters label{display:flex;flex-direction:column;font-size:.8rem;color:var(--muted)}\
input,select,textarea,button{font:inherit;color:inherit;background:var(--card);border:1px solid var(--line);border-radius:.3rem;padding:.25rem .5rem}\
textarea{width:100%;font-family:ui-monospace,monospace;font-size:.85rem}\
button{cursor:pointer;background:var(--link);color:#fff;border-color:var(--link)}\
button.danger{background:var(--bad);border-color:var(--bad)}button.plain{background:none;color:var(--link);border:none;padding:0}\
.flash{border-left:4px solid var(--good)}.error{border-left:4px solid var(--bad)}\
pre{white-space:pre-wrap;word-break:break-word;font-size:.85rem;margin:0}\
.diff .add{background:var(--add)}.diff .del{background:var(--del)}\
code{font-size:.85rem}\
@media (max-width:40rem){main{padding:.5rem}h1{font-size:1.2rem}td,th{padding:.25rem}}";

fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
            (at.format("%Y-%m-%d %H:%M:%S"))
        }
    }
}

/// An RFC 3339 text as the pages show times (unchanged when unreadable).
fn text_time(value: &str) -> Markup {
    match DateTime::parse_from_rfc3339(value) {
        Ok(at) => time(at.with_timezone(&Utc)),
        Err(_) => html! { (value) },
    }
}

fn opt_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

fn duration(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => {
            let ms = (b - a).num_milliseconds().max(0);
            if ms < 1000 {
                format!("{ms} ms")
            } else if ms < 120_000 {
                format!("{:.1} s", ms as f64 / 1000.0)
            } else {
                format!("{} min", ms / 60_000)
            }
        }
        _ => "—".into(),
    }
}

fn usd(value: f64) -> String {
    // An empty float sum is -0.0.
    format!("${:.2}", value + 0.0)
}

fn status_class(status: &str) -> &'static str {
    match status {
        "succeeded" | "approved" | "operational" | "ready" | "completed" | "verified" => "ok",
        "failed" | "rejected" | "dead" | "down" | "verify_failed" => "bad",
        "pending" | "running" | "queued" => "warn",
        _ => "muted",
    }
}

fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// The page around `body`.
pub fn layout(ctx: Option<&Ctx>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · opsloop console" }
                link rel="icon" href="data:,";
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    nav {
                        strong { a href="/console" { "opsloop" } }
                        @if let Some(ctx) = ctx {
                            a href="/console" { "Overview" }
                            a href="/console/proposals" { "Proposals" }
                            a href="/console/missions" { "Missions" }
                            a href="/console/dead-letters" { "Dead letters" }
                            a href="/console/events" { "Events" }
                            a href="/console/policy" { "Policy" }
                            a href="/console/triggers" { "Triggers" }
                            a href="/console/alerts" { "Alerts" }
                            a href="/console/incidents" { "Incidents" }
                            a href="/console/backups" { "Backups" }
                            span.who {
                                span data-who=(ctx.name) { (ctx.name) } " (" (ctx.role) ") "
                                form.inline method="post" action="/console/logout" {
                                    (csrf(ctx))
                                    button.plain type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main {
                    @if let Some(message) = ctx.and_then(|c| c.done) {
                        div.card.flash role="status" { (message) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The sign-in form.
pub fn login(error: Option<&str>, open: bool, next: &str) -> Markup {
    layout(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error {
                div.card.error role="alert" { (error) }
            }
            form.card method="post" action="/console/login" {
                input type="hidden" name="next" value=(next);
                @if open {
                    p.muted { "No token is configured (dev mode): signing in opens an admin session named dev." }
                    input type="hidden" name="token" value="";
                } @else {
                    p {
                        label for="token" { "Token " }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    }
                    p.muted { "An opsloop token (opsloop token create NAME --role viewer|admin). The session lasts 12 hours and ends when the token is revoked." }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// An error page (404, 400, 403, 409, 503).
pub fn error(ctx: Option<&Ctx>, title: &str, message: &str) -> Markup {
    layout(
        ctx,
        title,
        html! {
            h1 { (title) }
            div.card.error role="alert" { p { (message) } }
            p { a href="/console" { "Back to the overview" } }
        },
    )
}

/// Everything the overview shows.
#[derive(Debug)]
pub struct Overview {
    pub health: HealthFigures,
    pub budget: Option<(f64, f64)>,
    pub pending: Vec<ProposalView>,
    pub running: Vec<MissionView>,
    pub snapshot: Option<std::sync::Arc<Snapshot>>,
    /// The newest backup run, if any.
    pub newest_backup: Option<backups::Model>,
}

fn stop_form(ctx: &Ctx, stop: &EmergencyStop) -> Markup {
    html! {
        @if ctx.can_act {
            form.inline method="post" action="/console/emergency-stop" {
                (csrf(ctx))
                input type="hidden" name="engage" value=(if stop.engaged { "false" } else { "true" });
                input type="text" name="reason" placeholder="reason" required maxlength="1000";
                @if stop.engaged {
                    button type="submit" { "Release the stop" }
                } @else {
                    button.danger type="submit" { "Engage the stop" }
                }
            }
        }
    }
}

/// `/console`: the daily checklist.
pub fn overview(ctx: &Ctx, o: &Overview) -> Markup {
    let h = &o.health;
    let stop = &h.emergency_stop;
    let body = html! {
        h1 { "Overview" }
        div.grid {
            div.card #emergency-stop {
                div.muted { "Emergency stop" }
                @if stop.engaged {
                    div.figure.bad { "ENGAGED" }
                    div.muted { "by " (stop.actor.as_deref().unwrap_or("?")) ": " (stop.reason.as_deref().unwrap_or("")) }
                } @else {
                    div.figure.ok { "released" }
                }
                (stop_form(ctx, stop))
            }
            div.card #pending-approvals {
                div.muted { "Pending approvals" }
                div.figure.(if h.pending_proposals > 0 { "warn" } else { "ok" }) {
                    a href="/console/proposals?status=pending" { (h.pending_proposals) }
                }
            }
            div.card #running-missions {
                div.muted { "Running missions" }
                div.figure { a href="/console/missions?status=running" { (o.running.len()) } }
                div.muted { (h.running_steps) " steps running, " (h.queued_steps) " queued, " (h.expired_leases) " leases expired" }
            }
            div.card #failures {
                div.muted { "Step failures in the window" }
                div.figure.(if h.failure_spike { "bad" } else { "ok" }) {
                    (h.step_failures_last_window) " / " (h.failure_threshold)
                }
                div.muted { @if h.failure_spike { "spike: at or above the threshold" } @else { "below the spike threshold" } }
            }
            div.card #cost {
                div.muted { "Cost today / this month" }
                div.figure { (usd(h.cost_today_usd)) " / " (usd(h.cost_month_usd)) }
                @if let Some((daily, monthly)) = o.budget {
                    div.muted.(if h.cost_today_usd >= daily || h.cost_month_usd >= monthly { "bad" } else { "" }) {
                        "budget " (usd(daily)) " a day, " (usd(monthly)) " a month"
                    }
                }
            }
            div.card #newest-backup {
                div.muted { "Newest backup" }
                @match &o.newest_backup {
                    Some(b) => {
                        div.figure.(status_class(&b.status)) { a href="/console/backups" { (b.status) } }
                        div.muted {
                            (b.target) " " (b.kind) ", " (opt_time(b.finished_at.or(Some(b.started_at))))
                            br;
                            "verification: " span.(status_class(b.verify_status.as_deref().unwrap_or(""))) { (b.verify_status.as_deref().unwrap_or("not verified")) }
                        }
                    }
                    None => { div.figure.warn { "none" } }
                }
            }
            div.card #incidents {
                div.muted { "Open incidents" }
                @match &o.snapshot {
                    Some(s) => {
                        @let open = s.incidents.iter().filter(|i| i.resolved_at.is_none()).count();
                        div.figure.(if open > 0 { "bad" } else { "ok" }) { (open) }
                    }
                    None => { div.figure.muted { "?" } }
                }
                div.muted { a href="/console/incidents?open=1" { "incidents" } " · " a href="/status" { "status page" } }
            }
        }
        h2 { "Daemons" }
        @match &o.snapshot {
            Some(s) => {
                div.grid #daemons {
                    @for c in s.components.iter().filter(|c| c.group == Group::Opsloop) {
                        @let state = match c.state {
                            ComponentState::Operational => "operational",
                            ComponentState::Down => "down",
                            ComponentState::Maintenance => "maintenance",
                            ComponentState::Unknown => "unknown",
                        };
                        div.card data-component=(c.id) {
                            strong { (c.name) } " "
                            span.(status_class(state)) { (state) }
                            @if let Some(detail) = &c.detail { div.muted { (detail) } }
                        }
                    }
                }
            }
            None => { p.muted { "Readiness not known yet." } }
        }
        @if !h.paused_kinds.is_empty() {
            h2 { "Paused step kinds" }
            ul { @for p in &h.paused_kinds { li { code { (p.kind) } " — " (p.reason) } } }
        }
        h2 { "Pending approvals" }
        (proposal_table(ctx, &o.pending))
        h2 { "Running missions" }
        (mission_table(&o.running))
        p.muted { "Generated " (time(h.generated_at)) " UTC" }
    };
    layout(Some(ctx), "Overview", body)
}

fn kinds(view: &ProposalView) -> String {
    view.steps()
        .iter()
        .map(|s| s.kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn decide_forms(ctx: &Ctx, view: &ProposalView) -> Markup {
    let id = view.proposal.id;
    html! {
        @if ctx.can_act && view.proposal.status == "pending" {
            form.inline method="post" action={ "/console/proposals/" (id) "/approve" } {
                (csrf(ctx))
                input type="text" name="comment" placeholder="comment" maxlength="1000";
                button type="submit" data-action="approve" { "Approve" }
            }
            " "
            form.inline method="post" action={ "/console/proposals/" (id) "/reject" } {
                (csrf(ctx))
                input type="text" name="reason" placeholder="reason" required maxlength="1000";
                button.danger type="submit" data-action="reject" { "Reject" }
            }
        }
    }
}

fn proposal_table(ctx: &Ctx, rows: &[ProposalView]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            div.scroll { table.proposals {
                thead { tr { th { "Created" } th { "Title" } th { "Status" } th { "Source" } th { "Agent" } th { "Kinds" } th { "Mission" } th {} } }
                tbody {
                    @for v in rows {
                        tr data-proposal=(v.proposal.id) {
                            td { (time(v.proposal.created_at)) }
                            td { a href={ "/console/proposals/" (v.proposal.id) } { (v.proposal.title) } }
                            td.(status_class(&v.proposal.status)) { (v.proposal.status) }
                            td { (v.proposal.source) }
                            td { (v.proposal.agent.as_deref().unwrap_or("")) }
                            td { (kinds(v)) }
                            td { @if let Some(m) = v.mission_id { a href={ "/console/missions/" (m) } { "mission" } } }
                            td { (decide_forms(ctx, v)) }
                        }
                    }
                }
            } }
        }
    }
}

fn selected(current: &Option<String>, value: &str) -> bool {
    current.as_deref().map(str::trim) == Some(value)
}

/// `/console/proposals`: pending first, then the rest newest first.
pub fn proposals(ctx: &Ctx, q: &ProposalQuery, rows: &[ProposalView]) -> Markup {
    let body = html! {
        h1 { "Proposals" }
        form.filters method="get" action="/console/proposals" {
            label { "status" select name="status" {
                option value="" { "any" }
                @for s in ["pending", "approved", "rejected", "expired"] {
                    option value=(s) selected[selected(&q.status, s)] { (s) }
                }
            } }
            label { "source" select name="source" {
                option value="" { "any" }
                @for s in SOURCES { option value=(s) selected[selected(&q.source, s)] { (s) } }
            } }
            label { "agent" input type="text" name="agent" value=(q.agent.as_deref().unwrap_or("")); }
            label { "step kind" input type="text" name="kind" value=(q.kind.as_deref().unwrap_or("")); }
            label { "after (UTC)" input type="text" name="after" placeholder="2026-12-07T09:00" value=(q.after.as_deref().unwrap_or("")); }
            label { "before (UTC)" input type="text" name="before" value=(q.before.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        (proposal_table(ctx, rows))
    };
    layout(Some(ctx), "Proposals", body)
}

fn json(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// `/console/proposals/{id}`.
pub fn proposal(ctx: &Ctx, v: &ProposalView) -> Markup {
    let p = &v.proposal;
    let body = html! {
        h1 { "Proposal " (p.title) }
        div.card {
            p { "Status " strong.(status_class(&p.status)) #status { (p.status) }
                @if let Some(by) = &p.decided_by { " by " (by) " at " (opt_time(p.decided_at)) } }
            @if let Some(reason) = &p.rejection_reason { p { "Reason: " (reason) " " (p.rejection_detail.as_deref().unwrap_or("")) } }
            p.muted { "id " code { (p.id) } " · source " (p.source) " · agent " (p.agent.as_deref().unwrap_or("—")) " · created " (time(p.created_at)) }
            @if let Some(m) = v.mission_id { p { a #mission-link href={ "/console/missions/" (m) } { "Its mission" } } }
            (decide_forms(ctx, v))
        }
        h2 { "Steps" }
        pre.card { (json(&p.steps)) }
        h2 { "Metadata" }
        pre.card { (json(&p.metadata)) }
    };
    layout(Some(ctx), "Proposal", body)
}

fn mission_table(rows: &[MissionView]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            div.scroll { table.missions {
                thead { tr { th { "Created" } th { "Title" } th { "Status" } th { "Steps" } th { "Cost" } th { "Duration" } th { "Outcome" } } }
                tbody {
                    @for v in rows {
                        tr data-mission=(v.mission.id) {
                            td { (time(v.mission.created_at)) }
                            td { a href={ "/console/missions/" (v.mission.id) } { (v.mission.title) } }
                            td.(status_class(&v.mission.status)) { (v.mission.status) }
                            td { (v.step_count) }
                            td { (usd(v.cost_usd)) }
                            td { (duration(Some(v.mission.created_at), v.mission.finished_at)) }
                            td { (v.outcome_detail.as_deref().unwrap_or("")) }
                        }
                    }
                }
            } }
        }
    }
}

/// `/console/missions`.
pub fn missions(ctx: &Ctx, q: &MissionQuery, rows: &[MissionView]) -> Markup {
    let body = html! {
        h1 { "Missions" }
        form.filters method="get" action="/console/missions" {
            label { "status" select name="status" {
                option value="" { "any" }
                @for s in ["running", "succeeded", "failed", "cancelled"] {
                    option value=(s) selected[selected(&q.status, s)] { (s) }
                }
            } }
            label { "after (UTC)" input type="text" name="after" value=(q.after.as_deref().unwrap_or("")); }
            label { "before (UTC)" input type="text" name="before" value=(q.before.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        (mission_table(rows))
    };
    layout(Some(ctx), "Missions", body)
}

fn step_row(s: &mission_steps::Model) -> Markup {
    html! {
        tr data-step=(s.id) {
            td { (s.seq) }
            td { code { (s.kind) } }
            td.(status_class(&s.status)) { (s.status) }
            td { (s.attempt) " / " (s.max_attempts) }
            td { (s.lease_holder.as_deref().unwrap_or("")) @if let Some(at) = s.lease_expires_at { div.muted { "until " (time(at)) } } }
            td { (s.cost_usd.map(usd).unwrap_or_default()) }
            td { (duration(s.started_at, s.finished_at)) }
            td { @if let Some(e) = &s.error { span.bad { (e) } } }
        }
    }
}

/// `/console/missions/{id}`: the mission, its steps, its dead letters.
pub fn mission(ctx: &Ctx, v: &MissionView, dead: &[step_dead_letters::Model]) -> Markup {
    let m = &v.mission;
    let body = html! {
        h1 { "Mission " (m.title) }
        div.card {
            p { "Status " strong.(status_class(&m.status)) #status { (m.status) }
                @if let Some(d) = &v.outcome_detail { " — " (d) } }
            p.muted { "id " code { (m.id) } " · " a href={ "/console/proposals/" (m.proposal_id) } { "proposal" }
                " · created " (time(m.created_at)) " · finished " (opt_time(m.finished_at))
                " · cost " (usd(v.cost_usd)) " · " (duration(Some(m.created_at), m.finished_at)) }
            @if ctx.can_act && m.status == "running" {
                form.inline method="post" action={ "/console/missions/" (m.id) "/cancel" } {
                    (csrf(ctx))
                    input type="text" name="reason" placeholder="reason" required maxlength="1000";
                    button.danger type="submit" { "Cancel the mission" }
                }
            }
        }
        h2 { "Steps" }
        div.scroll { table.steps {
            thead { tr { th { "#" } th { "Kind" } th { "Status" } th { "Attempt" } th { "Lease holder" } th { "Cost" } th { "Duration" } th { "Error" } } }
            tbody { @for s in &v.steps { (step_row(s)) } }
        } }
        @if !dead.is_empty() {
            h2 { "Dead letters" }
            (dead_table(ctx, dead))
        }
    };
    layout(Some(ctx), "Mission", body)
}

fn dead_table(ctx: &Ctx, rows: &[step_dead_letters::Model]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "None waiting." }
        } @else {
            div.scroll { table.dead-letters {
                thead { tr { th { "At" } th { "Kind" } th { "Attempt" } th { "Error" } th { "Mission" } th {} } }
                tbody {
                    @for d in rows {
                        tr data-dead-letter=(d.id) {
                            td { (time(d.created_at)) }
                            td { code { (d.kind) } }
                            td { (d.attempt) }
                            td.bad { (d.error) }
                            td { a href={ "/console/missions/" (d.mission_id) } { "mission" } }
                            td {
                                @if let Some(p) = d.retried_proposal_id {
                                    "retried by " (d.retried_by.as_deref().unwrap_or("?")) ": "
                                    a href={ "/console/proposals/" (p) } { "proposal" }
                                } @else if ctx.can_act {
                                    form.inline method="post" action={ "/console/dead-letters/" (d.id) "/retry" } {
                                        (csrf(ctx))
                                        button type="submit" { "Retry" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// `/console/dead-letters`.
pub fn dead_letters(ctx: &Ctx, rows: &[step_dead_letters::Model]) -> Markup {
    layout(
        Some(ctx),
        "Dead letters",
        html! {
            h1 { "Dead letters" }
            p.muted { "Steps that failed their last attempt. Retry submits them (and the steps their failure cancelled) as a new manual proposal, through the gates." }
            (dead_table(ctx, rows))
        },
    )
}

/// One event row (the live tail's script builds the same cells).
fn event_row(e: &events::Model) -> Markup {
    html! {
        tr data-seq=(e.seq) {
            td { (e.seq) }
            td { (time(e.created_at)) }
            td { code { (e.kind) } }
            td { (e.source) }
            td { pre { (e.payload.to_string()) } }
        }
    }
}

/// `/console/events`: the newest events, then the live tail.
pub fn events(ctx: &Ctx, q: &EventQuery, rows: &[events::Model], last_seq: i64) -> Markup {
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action="/console/events" {
            label { "kind (glob)" input type="text" name="kind" placeholder="mission.*" value=(q.kind.as_deref().unwrap_or("")); }
            label { "source" input type="text" name="source" value=(q.source.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        p.muted #tail-state { "Live tail: connecting…" }
        div.scroll { table #events
            data-stream="/console/events/stream"
            data-after=(last_seq)
            data-kind=(q.kind.as_deref().unwrap_or(""))
            data-source=(q.source.as_deref().unwrap_or("")) {
            thead { tr { th { "Seq" } th { "At" } th { "Kind" } th { "Source" } th { "Payload" } } }
            tbody { @for e in rows.iter().rev() { (event_row(e)) } }
        } }
        script src="/console/console.js" defer {}
    };
    layout(Some(ctx), "Events", body)
}

/// `/console/policy`: every key with its value and version.
pub fn policies(ctx: &Ctx, rows: &[policy::Model]) -> Markup {
    let body = html! {
        h1 { "Policy" }
        div.scroll { table.policies {
            thead { tr { th { "Key" } th { "Value" } th { "Version" } th { "Updated" } } }
            tbody {
                @for p in rows {
                    tr data-key=(p.key) {
                        td { a href={ "/console/policy/" (p.key) } { code { (p.key) } } }
                        td { pre { (p.value.to_string()) } }
                        td { (p.version) }
                        td { (time(p.updated_at)) " by " (p.updated_by) }
                    }
                }
            }
        } }
    };
    layout(Some(ctx), "Policy", body)
}

/// What the policy page shows besides the stored row.
#[derive(Debug, Default)]
pub struct PolicyForm<'a> {
    /// The value in the editor (the stored one when `None`).
    pub value: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// Why the last submission was refused.
    pub error: Option<String>,
}

/// `/console/policy/{key}`: current value, editor, history.
pub fn policy(
    ctx: &Ctx,
    row: &policy::Model,
    history: &[policy_history::Model],
    form: &PolicyForm<'_>,
) -> Markup {
    let current = json(&row.value);
    let body = html! {
        h1 { "Policy " code { (row.key) } }
        @if let Some(error) = &form.error {
            div.card.error role="alert" #policy-error { (error) }
        }
        div.card {
            p.muted { "Version " span #version { (row.version) } " · updated " (time(row.updated_at)) " by " (row.updated_by) }
            h2 { "Current value" }
            pre #current { (current) }
        }
        @if ctx.can_act {
            form.card method="post" action={ "/console/policy/" (row.key) "/preview" } {
                h2 { "Edit" }
                (csrf(ctx))
                input type="hidden" name="version" value=(row.version);
                textarea name="value" rows="12" { (form.value.unwrap_or(&current)) }
                p { input type="text" name="reason" placeholder="why (recorded in the history)" maxlength="1000" value=(form.reason.unwrap_or("")); }
                button type="submit" { "Preview the change" }
            }
        }
        h2 { "History" }
        @if history.is_empty() {
            p.muted { "Never changed." }
        } @else {
            div.scroll { table.history {
                thead { tr { th { "Version" } th { "When" } th { "Who" } th { "Why" } th { "New value" } } }
                tbody { @for h in history {
                    tr {
                        td { (h.id) } td { (time(h.created_at)) } td { (h.actor) }
                        td { (h.reason.as_deref().unwrap_or("")) } td { pre { (h.new_value.to_string()) } }
                    }
                } }
            } }
        }
    };
    layout(Some(ctx), "Policy", body)
}

/// The diff before saving, with the form that saves it.
pub fn policy_preview(
    ctx: &Ctx,
    row: &policy::Model,
    new_value: &serde_json::Value,
    reason: &str,
) -> Markup {
    let old = json(&row.value);
    let new = json(new_value);
    let body = html! {
        h1 { "Change policy " code { (row.key) } "?" }
        div.card.diff #diff {
            @for line in diff_lines(&old, &new) {
                @match line {
                    Line::Same(t) => { pre { "  " (t) } }
                    Line::Added(t) => { pre.add { "+ " (t) } }
                    Line::Removed(t) => { pre.del { "- " (t) } }
                }
            }
        }
        @if old == new { p.muted { "No change." } }
        form.card method="post" action={ "/console/policy/" (row.key) } {
            (csrf(ctx))
            input type="hidden" name="version" value=(row.version);
            input type="hidden" name="value" value=(new);
            input type="hidden" name="reason" value=(reason);
            p.muted { "Saved only if the policy is still at version " (row.version) "." }
            button type="submit" { "Save" } " "
            a href={ "/console/policy/" (row.key) } { "Back" }
        }
    };
    layout(Some(ctx), "Policy preview", body)
}

fn size(bytes: Option<i64>) -> String {
    match bytes {
        None => "—".into(),
        Some(b) if b < 1024 => format!("{b} B"),
        Some(b) if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// `/console/backups`: the newest backup runs and their verification.
pub fn backups(ctx: &Ctx, rows: &[backups::Model]) -> Markup {
    let body = html! {
        h1 { "Backups" }
        p.muted { "Open a backup for its restore preview and to verify it. Take and restore backups with opsloop backup (the backup-agent's gRPC API)." }
        @if rows.is_empty() { p.muted { "No backup yet." } }
        @else {
            div.scroll { table.backups {
                thead { tr { th { "Started" } th { "Target" } th { "Kind" } th { "Status" } th { "Size" } th { "Duration" } th { "Verification" } th { "Error" } } }
                tbody { @for b in rows {
                    tr data-backup=(b.id) {
                        td { a href={ "/console/backups/" (b.id) } { (time(b.started_at)) } }
                        td { (b.target) }
                        td { (b.kind) }
                        td.(status_class(&b.status)) { (b.status) }
                        td { (size(b.size_bytes)) }
                        td { (duration(Some(b.started_at), b.finished_at)) }
                        td {
                            span.(status_class(b.verify_status.as_deref().unwrap_or(""))) { (b.verify_status.as_deref().unwrap_or("—")) }
                            @if let Some(at) = b.verified_at { div.muted { (time(at)) } }
                        }
                        td { @if let Some(e) = &b.error { span.bad { (e) } } }
                    }
                } }
            } }
        }
    };
    layout(Some(ctx), "Backups", body)
}

/// `/console/triggers`: rules, enable/disable.
pub fn triggers(ctx: &Ctx, rows: &[trigger_rules::Model]) -> Markup {
    let body = html! {
        h1 { "Trigger rules" }
        @if rows.is_empty() { p.muted { "No trigger rules." } }
        @else {
            div.scroll { table.triggers {
                thead { tr { th { "Name" } th { "Enabled" } th { "Condition" } th { "Action" } th { "Fired" } th {} } }
                tbody { @for t in rows {
                    tr data-trigger=(t.id) {
                        td { (t.name) }
                        td.(if t.enabled { "ok" } else { "muted" }) { (if t.enabled { "enabled" } else { "disabled" }) }
                        td { pre { (t.condition.to_string()) } }
                        td { pre { (t.action.to_string()) } }
                        td { (t.fire_count) " times" @if let Some(at) = t.last_fired_at { div.muted { "last " (time(at)) } } }
                        td { @if ctx.can_act {
                            form.inline method="post" action={ "/console/triggers/" (t.id) "/enabled" } {
                                (csrf(ctx))
                                input type="hidden" name="enabled" value=(if t.enabled { "false" } else { "true" });
                                input type="hidden" name="version" value=(opsloop_core::workflow::triggers::trigger_version(t));
                                button type="submit" { (if t.enabled { "Disable" } else { "Enable" }) }
                            }
                        } }
                    }
                } }
            } }
        }
    };
    layout(Some(ctx), "Triggers", body)
}

/// `/console/alerts`: the alerter's alerts (each with a silence form
/// matching its labels) and its silences (active ones with expire).
pub fn alerts(
    ctx: &Ctx,
    alerts: &[super::alerts::AlertRow],
    silences: &[super::alerts::SilenceRow],
) -> Markup {
    let body = html! {
        h1 { "Alerts" }
        @if alerts.is_empty() { p.muted { "No alert." } }
        @else {
            div.scroll { table.alerts {
                thead { tr { th { "Alert" } th { "Labels" } th { "State" } th { "Since" } th {} } }
                tbody { @for a in alerts {
                    tr data-fingerprint=(a.fingerprint) {
                        td { strong { (a.labels.get("alertname").map(String::as_str).unwrap_or("?")) } div.muted { (a.summary) } }
                        td { @for (k, v) in &a.labels { code { (k) "=" (v) } " " } }
                        td.(if a.state == "active" { "bad" } else { "muted" }) {
                            (a.state) @if !a.silenced_by.is_empty() { div.muted { "silenced" } }
                        }
                        td { (text_time(&a.starts_at)) }
                        td { @if ctx.can_act {
                            form.inline method="post" action="/console/alerts/silence" {
                                (csrf(ctx))
                                @for (k, v) in &a.labels { input type="hidden" name={ "label:" (k) } value=(v); }
                                select name="hours" {
                                    @for h in [1, 2, 4, 8, 24, 72] { option value=(h) selected[h == 2] { (h) " h" } }
                                }
                                input type="text" name="comment" placeholder="why" required maxlength="1000";
                                button type="submit" data-action="silence" { "Silence" }
                            }
                        } }
                    }
                } }
            } }
        }
        h2 { "Silences" }
        @if silences.is_empty() { p.muted { "No silence." } }
        @else {
            div.scroll { table.silences {
                thead { tr { th { "Matchers" } th { "State" } th { "Until" } th { "By" } th { "Why" } th {} } }
                tbody { @for s in silences {
                    tr data-silence=(s.id) {
                        td { @for m in &s.matchers { code { (m) } " " } }
                        td.(if s.state == "active" { "warn" } else { "muted" }) { (s.state) }
                        td { (text_time(&s.ends_at)) }
                        td { (s.created_by) }
                        td { (s.comment) }
                        td { @if ctx.can_act && s.state != "expired" {
                            form.inline method="post" action={ "/console/silences/" (s.id) "/expire" } {
                                (csrf(ctx))
                                button.danger type="submit" { "Expire" }
                            }
                        } }
                    }
                } }
            } }
        }
    };
    layout(Some(ctx), "Alerts", body)
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Added(&'a str),
    Removed(&'a str),
}

/// A line diff of two texts (longest common subsequence; policy values
/// are small).
pub fn diff_lines<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len() + b.len());
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(Line::Removed(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| Line::Removed(l)));
    out.extend(b[j..].iter().map(|l| Line::Added(l)));
    out
}

/// The live tail: an `EventSource` on the stream (which resumes from
/// `Last-Event-ID` by itself after a reconnect), each event a new row.
pub const SCRIPT: &str = r#"(function () {
  var table = document.getElementById('events');
  if (!table || !window.EventSource) return;
  var state = document.getElementById('tail-state');
  var body = table.tBodies[0];
  var q = new URLSearchParams();
  q.set('after', table.dataset.after);
  if (table.dataset.kind) q.set('kind', table.dataset.kind);
  if (table.dataset.source) q.set('source', table.dataset.source);
  var source = new EventSource(table.dataset.stream + '?' + q.toString());
  function cell(tr, text, tag) {
    var td = document.createElement('td');
    var inner = tag ? document.createElement(tag) : td;
    inner.textContent = text;
    if (tag) td.appendChild(inner);
    tr.appendChild(td);
  }
  source.onopen = function () { state.textContent = 'Live tail: connected'; };
  source.onerror = function () { state.textContent = 'Live tail: reconnecting…'; };
  source.addEventListener('event', function (msg) {
    var e = JSON.parse(msg.data);
    var tr = document.createElement('tr');
    tr.dataset.seq = e.seq;
    cell(tr, String(e.seq));
    cell(tr, e.created_at, 'time');
    cell(tr, e.kind, 'code');
    cell(tr, e.source);
    cell(tr, JSON.stringify(e.payload), 'pre');
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
})();
"#;

/// `/console/backups/{id}`: a backup, what a restore of it brings back
/// beside the rows now, its verification (with the outcome of one just
/// run), and the command that restores it.
pub fn backup(
    ctx: &Ctx,
    p: &super::backups::RestorePreview,
    verified: Option<&pb::VerifyBackupResponse>,
) -> Markup {
    let b = &p.backup;
    let body = html! {
        h1 { "Backup of " (b.target) }
        div.card {
            p { "Status " strong.(status_class(&b.status)) #backup-status { (b.status) }
                " · verification " span.(status_class(b.verify_status.as_deref().unwrap_or(""))) #verify-status { (b.verify_status.as_deref().unwrap_or("not verified")) }
                @if let Some(at) = b.verified_at { " at " (time(at)) }
                @if let Some(ms) = b.verify_duration_ms { " in " (duration(Some(b.started_at), Some(b.started_at + chrono::Duration::milliseconds(ms)))) } }
            p.muted {
                "id " code { (b.id) } " · " (b.kind) " · started " (time(b.started_at)) " · took " (duration(Some(b.started_at), b.finished_at))
                " · " (size(b.size_bytes)) " · " (b.compression)
                @if let Some(e) = &p.encryption { " · encrypted (" (e) ")" }
            }
            @if let Some(db) = &p.database { p.muted { "from " code { (db) } } }
            @if let Some(sha) = &b.sha256 { p.muted { "sha256 " code { (sha) } } }
            @if !p.tool_versions.is_empty() {
                p.muted { @for (tool, version) in &p.tool_versions { (tool) ": " (version) " " } }
            }
            @if let Some(e) = &b.error { p.bad { (e) } }
            @if ctx.can_act && b.status == "completed" {
                form.inline method="post" action={ "/console/backups/" (b.id) "/verify" } {
                    (csrf(ctx))
                    button type="submit" data-action="verify" { "Verify now" }
                    span.muted { "restores into a scratch database and compares row counts; takes as long as a restore" }
                }
            }
        }
        @if let Some(v) = verified {
            div.card.(if v.passed { "flash" } else { "error" }) #verify-outcome {
                p { strong.(if v.passed { "ok" } else { "bad" }) { (if v.passed { "Verified" } else { "Verification failed" }) }
                    " in " (v.duration_ms) " ms · checksum " (if v.checksum_ok { "matches" } else { "DOES NOT match" }) }
                @if let Some(e) = &v.error { p.bad { (e) } }
                @if !v.stages.is_empty() {
                    table.stages {
                        thead { tr { th { "Stage" } th { "ms" } } }
                        tbody { @for st in &v.stages { tr { td { (st.stage) } td { (st.duration_ms) } } } }
                    }
                }
                @if !v.mismatches.is_empty() {
                    h2 { "Row counts that differ" }
                    table.mismatches {
                        thead { tr { th { "Table" } th { "Manifest" } th { "Restored" } } }
                        tbody { @for m in &v.mismatches { tr { td { (m.table) } td { (m.expected) } td { (m.actual) } } } }
                    }
                }
            }
        }
        h2 { "Restore preview" }
        @if p.tables.is_empty() {
            p.muted { "The manifest lists no table (a directory set, or no manifest)." }
        } @else {
            p.muted { "A restore brings back these tables with the rows they held when the backup was taken."
                @if p.compared { " “Now” is PostgreSQL's live-row estimate of the loop's database." } }
            div.scroll { table.restore-preview {
                thead { tr { th { "Table" } th { "Rows in the backup" } @if p.compared { th { "Now" } th { "Change on restore" } } } }
                tbody { @for t in &p.tables {
                    tr data-table=(t.table) {
                        td { code { (t.table) } }
                        td { (t.in_backup) }
                        @if p.compared {
                            @match t.now {
                                Some(now) => {
                                    td { (now) }
                                    @let change = t.in_backup - now;
                                    td.(if change < 0 { "warn" } else { "muted" }) { (format!("{change:+}")) }
                                }
                                None => { td.muted { "no such table" } td.muted { "created" } }
                            }
                        }
                    }
                } }
            } }
        }
        h2 { "Restore" }
        p.muted { "Restores need a database URL with credentials, so they run from a terminal (admin token; audited). Restore into a scratch database first; see the runbook's restore section." }
        pre #restore-command { (p.command) }
    };
    layout(Some(ctx), "Backup", body)
}

fn incident_state_class(state: &str) -> &'static str {
    match state {
        "triggered" | "reopened" => "bad",
        "acknowledged" => "warn",
        "resolved" => "ok",
        _ => "muted",
    }
}

/// `/console/incidents`: open incidents first (as the alerter lists them,
/// newest opened first), then the resolved.
pub fn incidents(ctx: &Ctx, rows: &[pb::Incident], open_only: bool) -> Markup {
    let (open, closed): (Vec<&pb::Incident>, Vec<&pb::Incident>) =
        rows.iter().partition(|i| i.state != "resolved");
    let body = html! {
        h1 { "Incidents" }
        p.muted {
            @if open_only { "Open incidents only. " a href="/console/incidents" { "Show resolved too" } }
            @else { a href="/console/incidents?open=1" { "Open only" } }
        }
        @if rows.is_empty() { p.muted { "No incident." } }
        @else {
            div.scroll { table.incidents {
                thead { tr { th { "Incident" } th { "Level" } th { "State" } th { "Opened" } th { "Acknowledged" } th { "Firing" } } }
                tbody { @for i in open.iter().chain(closed.iter()) {
                    tr data-incident=(i.id) {
                        td { a href={ "/console/incidents/" (i.id) } { (i.title) } }
                        td { strong { (i.level) } }
                        td.(incident_state_class(&i.state)) { (i.state) }
                        td { (opt_time(incidents::at(i.opened_at.as_ref()))) }
                        td { @match &i.acknowledged_by { Some(by) => { (by) }, None => { span.muted { "—" } } } }
                        td { (i.alerts_firing) }
                    }
                } }
            } }
        }
    };
    layout(Some(ctx), "Incidents", body)
}

/// `/console/incidents/{id}`: the incident, its actions and its timeline.
pub fn incident(ctx: &Ctx, detail: &incidents::IncidentDetail) -> Markup {
    let i = &detail.incident;
    let open = i.state != "resolved";
    let body = html! {
        h1 { (i.level) " · " (i.title) }
        div.card {
            p { "State " strong.(incident_state_class(&i.state)) #incident-state { (i.state) }
                @if i.alerts_resolved { " — every alert has resolved" } }
            p.muted {
                "id " code { (i.id) } " · opened by " (i.opened_by) " at " (opt_time(incidents::at(i.opened_at.as_ref())))
                " · response due " (opt_time(incidents::at(i.response_due_at.as_ref())))
                @if let Some(by) = &i.acknowledged_by { " · acknowledged by " (by) " at " (opt_time(incidents::at(i.acknowledged_at.as_ref()))) }
                @if let Some(by) = &i.resolved_by { " · resolved by " (by) " at " (opt_time(incidents::at(i.resolved_at.as_ref()))) }
                @if let Some(next) = incidents::at(i.next_escalation_at.as_ref()) { " · next escalation " (time(next)) }
            }
            @if !i.labels.is_empty() {
                p { @for (k, v) in &i.labels { code { (k) "=" (v) } " " } }
            }
            @if ctx.can_act {
                @if i.state == "triggered" || i.state == "reopened" {
                    form.inline method="post" action={ "/console/incidents/" (i.id) "/acknowledge" } {
                        (csrf(ctx))
                        input type="text" name="reason" placeholder="what you are doing (optional)" maxlength="1000";
                        button type="submit" data-action="acknowledge" { "Acknowledge" }
                    }
                    " "
                }
                @if open {
                    form.inline method="post" action={ "/console/incidents/" (i.id) "/resolve" } {
                        (csrf(ctx))
                        input type="text" name="reason" placeholder="how it was fixed (optional)" maxlength="1000";
                        button.danger type="submit" data-action="resolve" { "Resolve" }
                    }
                }
                p { a #postmortem-link href={ "/console/incidents/" (i.id) "/postmortem" } { "Open the postmortem draft" } }
            }
        }
        @if ctx.can_act {
            h2 { "Add a note" }
            form method="post" action={ "/console/incidents/" (i.id) "/note" } {
                (csrf(ctx))
                textarea name="comment" rows="3" required maxlength="4000" placeholder="what you saw or did" {}
                p { button type="submit" data-action="note" { "Add the note" } }
            }
        }
        h2 { "Timeline" }
        @if detail.timeline.is_empty() { p.muted { "Nothing recorded yet." } }
        @else {
            div.scroll { table.timeline {
                thead { tr { th { "At" } th { "What" } th { "Who" } th { "Details" } } }
                tbody { @for e in &detail.timeline {
                    tr data-kind=(e.kind) {
                        td { (opt_time(incidents::at(e.at.as_ref()))) }
                        td { (e.kind) }
                        td { (e.actor) }
                        td { @if e.detail_json != "{}" && e.detail_json != "null" { code { (e.detail_json) } } }
                    }
                } }
            } }
        }
    };
    layout(Some(ctx), "Incident", body)
}

/// `/console/incidents/{id}/postmortem`: the alerter's Markdown draft, to
/// copy into the team's postmortem document.
pub fn postmortem(ctx: &Ctx, id: &str, markdown: &str) -> Markup {
    let body = html! {
        h1 { "Postmortem draft" }
        p.muted { a href={ "/console/incidents/" (id) } { "Back to the incident" }
            " · drafted from the incident's timeline and the loop's records; copy it into your postmortem document." }
        div.card { pre #postmortem { (markdown) } }
    };
    layout(Some(ctx), "Postmortem draft", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsloop_core::store::entities::proposals;

    fn ctx(can_act: bool) -> Ctx {
        Ctx {
            name: "alice<script>".into(),
            role: if can_act { "admin" } else { "viewer" }.into(),
            can_act,
            csrf: "tok.1.mac".into(),
            done: done_message("approved"),
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn proposal_view(status: &str) -> ProposalView {
        ProposalView {
            proposal: proposals::Model {
                id: uuid::Uuid::nil(),
                dedupe_key: None,
                source: "api".into(),
                agent: Some("bot".into()),
                title: "Restart <b>web</b>".into(),
                status: status.into(),
                rejection_reason: None,
                rejection_detail: None,
                steps: serde_json::json!([{"kind": "restart", "payload": {}, "max_attempts": 3}]),
                parallel: false,
                metadata: serde_json::json!({}),
                policy_version: 1,
                trace_id: None,
                decided_by: None,
                decided_at: None,
                created_at: at(),
                updated_at: at(),
            },
            mission_id: None,
        }
    }

    #[test]
    fn values_are_escaped_and_actions_follow_the_role() {
        let rows = [proposal_view("pending")];
        let admin = proposals(&ctx(true), &ProposalQuery::default(), &rows).into_string();
        assert!(
            admin.contains("Restart &lt;b&gt;web&lt;/b&gt;"),
            "escaped title"
        );
        assert!(admin.contains("alice&lt;script&gt;"), "escaped name");
        assert!(admin.contains("/approve") && admin.contains("/reject"));
        assert!(admin.contains("name=\"csrf\" value=\"tok.1.mac\""));
        assert!(admin.contains("Proposal approved."));
        let viewer = proposals(&ctx(false), &ProposalQuery::default(), &rows).into_string();
        assert!(!viewer.contains("/approve") && !viewer.contains("/reject"));
        let decided = proposal(&ctx(true), &proposal_view("approved")).into_string();
        assert!(
            !decided.contains("/approve"),
            "only pending proposals are decided"
        );
    }

    #[test]
    fn filters_keep_their_values() {
        let q = ProposalQuery {
            status: Some("rejected".into()),
            after: Some("2026-12-01".into()),
            ..Default::default()
        };
        let page = proposals(&ctx(false), &q, &[]).into_string();
        assert!(page.contains("<option value=\"rejected\" selected>"));
        assert!(page.contains("value=\"2026-12-01\""));
        assert!(page.contains("None."));
    }

    #[test]
    fn login_and_error_pages() {
        let page = login(Some("unknown token"), false, "/console/missions").into_string();
        assert!(page.contains("type=\"password\""));
        assert!(page.contains("unknown token"));
        assert!(page.contains("value=\"/console/missions\""));
        assert!(!page.contains("Sign out"), "no session, no nav");
        assert!(
            login(None, true, "/console")
                .into_string()
                .contains("dev mode")
        );
        let page = error(None, "Not found", "mission x not found").into_string();
        assert!(page.contains("mission x not found"));
        assert!(page.contains("prefers-color-scheme:dark"));
        assert!(page.contains("width=device-width"));
    }

    #[test]
    fn done_messages_are_a_fixed_set() {
        assert_eq!(done_message("saved"), Some("Policy saved."));
        assert_eq!(done_message("<script>"), None);
        for code in [
            "approved",
            "rejected",
            "cancelled",
            "retried",
            "saved",
            "stop-engaged",
            "stop-released",
            "enabled",
            "disabled",
        ] {
            assert!(done_message(code).is_some(), "{code}");
        }
    }

    #[test]
    fn alert_rows_carry_their_labels_into_the_silence_form() {
        use super::super::alerts::{AlertRow, SilenceRow};
        let alert = AlertRow {
            fingerprint: "f".into(),
            labels: [
                ("alertname".to_owned(), "Down".to_owned()),
                ("job".to_owned(), "web".to_owned()),
            ]
            .into_iter()
            .collect(),
            summary: "web is down".into(),
            state: "active".into(),
            starts_at: "2026-12-07T10:00:00Z".into(),
            silenced_by: Vec::new(),
        };
        let silence = SilenceRow {
            id: "s1".into(),
            matchers: vec!["job=web".into()],
            starts_at: String::new(),
            ends_at: "2026-12-08T00:00:00Z".into(),
            created_by: "alice".into(),
            comment: "deploy".into(),
            state: "active".into(),
        };
        let page = alerts(
            &ctx(true),
            std::slice::from_ref(&alert),
            std::slice::from_ref(&silence),
        )
        .into_string();
        assert!(page.contains("name=\"label:job\" value=\"web\""));
        assert!(page.contains("/console/silences/s1/expire"));
        assert!(
            page.contains("2026-12-08 00:00:00"),
            "times shown like the other pages"
        );
        assert_eq!(text_time("soon").into_string(), "soon");
        let viewer = alerts(&ctx(false), &[alert], &[silence]).into_string();
        assert!(!viewer.contains("/console/alerts/silence") && !viewer.contains("/expire"));
        assert!(
            alerts(&ctx(false), &[], &[])
                .into_string()
                .contains("No alert.")
        );
    }

    #[test]
    fn diffs() {
        let d = diff_lines(
            "{\n  \"a\": 1,\n  \"b\": 2\n}",
            "{\n  \"a\": 1,\n  \"b\": 3\n}",
        );
        assert_eq!(
            d,
            vec![
                Line::Same("{"),
                Line::Same("  \"a\": 1,"),
                Line::Removed("  \"b\": 2"),
                Line::Added("  \"b\": 3"),
                Line::Same("}"),
            ]
        );
        assert_eq!(diff_lines("", "x"), vec![Line::Added("x")]);
        assert_eq!(diff_lines("x", ""), vec![Line::Removed("x")]);
    }

    #[test]
    fn durations_and_money() {
        let t = at();
        assert_eq!(
            duration(Some(t), Some(t + chrono::Duration::milliseconds(250))),
            "250 ms"
        );
        assert_eq!(
            duration(Some(t), Some(t + chrono::Duration::seconds(3))),
            "3.0 s"
        );
        assert_eq!(
            duration(Some(t), Some(t + chrono::Duration::minutes(5))),
            "5 min"
        );
        assert_eq!(duration(None, Some(t)), "—");
        assert_eq!(usd(1.5), "$1.50");
        assert_eq!(size(None), "—");
        assert_eq!(size(Some(512)), "512 B");
        assert_eq!(size(Some(2048)), "2.0 KiB");
        assert_eq!(size(Some(3 * 1024 * 1024)), "3.0 MiB");
        assert_eq!(usd(-0.0), "$0.00");
        assert_eq!(status_class("failed"), "bad");
        assert_eq!(status_class("other"), "muted");
    }

    #[test]
    fn policy_pages() {
        let row = policy::Model {
            key: "ops_health".into(),
            value: serde_json::json!({"failure_threshold": 5}),
            version: 3,
            updated_at: at(),
            updated_by: "admin".into(),
        };
        let page = policy(
            &ctx(true),
            &row,
            &[],
            &PolicyForm {
                error: Some("policy ops_health is at version 4, not 3".into()),
                ..Default::default()
            },
        )
        .into_string();
        assert!(page.contains("at version 4, not 3"));
        assert!(page.contains("name=\"version\" value=\"3\""));
        assert!(page.contains("Never changed."));
        let viewer = policy(&ctx(false), &row, &[], &PolicyForm::default()).into_string();
        assert!(!viewer.contains("/preview"));
        let preview = policy_preview(
            &ctx(true),
            &row,
            &serde_json::json!({"failure_threshold": 9}),
            "why",
        )
        .into_string();
        assert!(preview.contains("class=\"add\""));
        assert!(preview.contains("class=\"del\""));
        assert!(preview.contains("name=\"reason\" value=\"why\""));
    }
}
