//! The operational phases: stale recovery (expired step leases, proposals
//! pending too long — both through the workflow), ops health (a failure
//! spike alert, once per persisted cooldown), the cost budget (a warning
//! once per day/month, the emergency stop above the hard limit or after
//! consecutive failures, with a critical alert) and the daily summary
//! (once per cron occurrence). Every alert is an outbox row written in the
//! same transaction as the cooldown or mark that makes it once-only.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use opsloop_core::domain::policy::{CostBudget, PolicyKey, PolicyValue};
use opsloop_core::workflow::{self, SummaryPeriod, WorkflowError, db_now};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};

use crate::alerts::{self, Alert, Severity, enqueue_alert};
use crate::db::{self, begin_write, stmt};
use crate::guards::{BudgetAction, Spend, evaluate_budget, failure_spike_due, periods};
use crate::heartbeat::{Heartbeat, HeartbeatError};

/// The persisted cooldown of the failure-spike alert.
pub const FAILURE_SPIKE_COOLDOWN: &str = "ops_health.failure_spike";
/// The mark of the last daily summary sent.
pub const DAILY_SUMMARY_MARK: &str = "summary.daily";
/// The actor recorded when the heartbeat engages the emergency stop.
pub const ACTOR: &str = "heartbeat";

pub async fn recover(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let steps = workflow::recover_stale_steps(db, now).await?;
    let max_age = Duration::days(i64::from(hb.settings().stale_proposal_days));
    let expired = workflow::expire_stale_proposals(db, max_age, now).await?;
    Ok(
        json!({"requeued_steps": steps.requeued.len(), "failed_steps": steps.failed.len(),
              "expired_proposals": expired.len()}),
    )
}

pub async fn ops_health(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let figures = workflow::health(db, now).await?;
    let policy = workflow::load_policy(db).await?;
    let until = db::cooldown_until(db, FAILURE_SPIKE_COOLDOWN).await?;
    let mut alerted = false;
    if failure_spike_due(
        figures.step_failures_last_window,
        figures.failure_threshold,
        until,
        now,
    ) {
        let cooldown = Duration::seconds(i64::from(policy.ops_health.cooldown_seconds));
        let tx = begin_write(db).await?;
        if db::claim_cooldown(&tx, FAILURE_SPIKE_COOLDOWN, now + cooldown, now).await? {
            let alert = alerts::alert(
                "OpsFailureSpike",
                Severity::Warning,
                format!(
                    "{} step failures in the last {} s (threshold {})",
                    figures.step_failures_last_window,
                    policy.ops_health.window_seconds,
                    figures.failure_threshold
                ),
                format!(
                    "{} step failures, {} pending proposals, {} queued and {} running steps, {} expired leases",
                    figures.step_failures_last_window,
                    figures.pending_proposals,
                    figures.queued_steps,
                    figures.running_steps,
                    figures.expired_leases
                ),
            )
            .annotation("failures", figures.step_failures_last_window)
            .annotation("pending_proposals", figures.pending_proposals)
            .annotation("threshold", figures.failure_threshold);
            enqueue_alert(&tx, &alert, now).await?;
            alerted = true;
        }
        tx.commit().await?;
    }
    let noticed = pending_notices(hb, now).await?;
    Ok(
        json!({"failures": figures.step_failures_last_window, "threshold": figures.failure_threshold,
              "pending_proposals": figures.pending_proposals, "alerted": alerted,
              "pending_noticed": noticed}),
    )
}

/// The mark of the pending-approval notices: the creation time of the
/// newest proposal announced.
pub const PENDING_NOTICE_MARK: &str = "proposals.pending_noticed";
/// Most pending-approval notices sent per tick (the rest follow next tick).
const PENDING_NOTICES_PER_TICK: u64 = 50;

/// Announces, once each, the proposals that have waited for a decision
/// longer than `heartbeat.pending_notice_secs`: an info alert
/// (`OpsProposalPendingApproval`, routed like every info alert to the
/// summary receiver) with a link to the proposal in the console. The
/// alerts and the advanced mark commit together, so a crash between them
/// neither loses nor repeats a notice.
async fn pending_notices(hb: &Heartbeat, now: DateTime<Utc>) -> Result<usize, HeartbeatError> {
    let db = hb.db();
    let settings = hb.settings();
    let threshold =
        Duration::seconds(i64::try_from(settings.pending_notice_secs).unwrap_or(i64::MAX / 1000));
    let after = db::cooldown_until(db, PENDING_NOTICE_MARK).await?;
    let overdue =
        workflow::pending_proposals_between(db, after, now - threshold, PENDING_NOTICES_PER_TICK)
            .await?;
    let Some(newest) = overdue.last().map(|p| p.created_at) else {
        return Ok(0);
    };
    let console = settings.console_url.trim_end_matches('/');
    let tx = begin_write(db).await?;
    // A concurrent leader (after a failover) that got here first wins; the
    // loser sends nothing.
    if !db::advance_mark(&tx, PENDING_NOTICE_MARK, newest, now).await? {
        return Ok(0);
    }
    for proposal in &overdue {
        let waited = (now - proposal.created_at).num_minutes();
        let link = format!("{console}/proposals/{}", proposal.id);
        let alert = alerts::alert(
            "OpsProposalPendingApproval",
            Severity::Info,
            format!(
                "proposal \"{}\" from {} has waited {waited} min for approval",
                proposal.title, proposal.source
            ),
            format!(
                "Approve or reject it: {link} (or `opsloop proposal approve {}`); it expires after {} days pending",
                proposal.id, settings.stale_proposal_days
            ),
        )
        .label("proposal_id", proposal.id)
        .label("source", &proposal.source)
        .annotation("console_url", &link)
        .annotation("waited_minutes", waited);
        enqueue_alert(&tx, &alert, now).await?;
    }
    tx.commit().await?;
    Ok(overdue.len())
}

async fn cost_policy(db: &impl ConnectionTrait) -> Result<CostBudget, HeartbeatError> {
    let row = workflow::get_policy(db, "cost_budget").await?;
    match PolicyValue::parse(&PolicyKey::CostBudget, &row.value) {
        Ok(PolicyValue::CostBudget(p)) => Ok(p),
        Ok(_) => Err(WorkflowError::Corrupt("cost_budget".into()).into()),
        Err(e) => Err(WorkflowError::from(e).into()),
    }
}

async fn cost_between(
    db: &impl ConnectionTrait,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<f64, HeartbeatError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT SUM(cost_usd) AS total FROM events \
             WHERE created_at >= $1 AND created_at <= $2 AND cost_usd IS NOT NULL",
            vec![db_now(from).into(), db_now(to).into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<f64>>("", "total")?.unwrap_or(0.0),
        None => 0.0,
    })
}

/// Terminal step outcomes since `since`, newest first, counted while failed.
async fn consecutive_failures(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
    limit: u32,
) -> Result<u32, HeartbeatError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT status FROM mission_steps WHERE status IN ('succeeded', 'failed') \
                 AND finished_at > $1 ORDER BY finished_at DESC LIMIT {}",
                limit.max(1)
            ),
            vec![since.into()],
        ))
        .await?;
    let mut n = 0;
    for row in rows {
        if row.try_get::<String>("", "status")? != "failed" {
            break;
        }
        n += 1;
    }
    Ok(n)
}

pub async fn budget(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let policy = cost_policy(db).await?;
    let tz: Tz = policy.timezone.parse().unwrap_or(chrono_tz::UTC);
    let p = periods(now, tz);
    let (stop, stop_changed_at) = workflow::emergency_stop_state(db).await?;
    let spend = Spend {
        today_usd: cost_between(db, p.day_start, now).await?,
        month_usd: cost_between(db, p.month_start, now).await?,
        consecutive_failures: consecutive_failures(
            db,
            stop_changed_at,
            policy.max_consecutive_failures,
        )
        .await?,
    };
    let mut sent = Vec::new();
    for action in evaluate_budget(&policy, &spend) {
        match action {
            BudgetAction::DailyWarning {
                spent,
                limit,
                ratio,
            } => {
                let alert = alerts::alert(
                    "OpsBudgetDailyWarning",
                    Severity::Warning,
                    format!(
                        "cost today ${spent:.2} reached {:.0} % of the daily budget ${limit:.2}",
                        ratio * 100.0
                    ),
                    format!(
                        "day {} ({}): ${spent:.2} of ${limit:.2}",
                        p.day_key, policy.timezone
                    ),
                )
                .label("period", &p.day_key)
                .annotation("spent_usd", format!("{spent:.2}"))
                .annotation("budget_usd", format!("{limit:.2}"));
                if once_per_period(
                    db,
                    &format!("budget.daily_warning:{}", p.day_key),
                    p.day_end,
                    &alert,
                    now,
                )
                .await?
                {
                    sent.push("daily_warning");
                }
            }
            BudgetAction::MonthlyWarning {
                spent,
                limit,
                ratio,
            } => {
                let alert = alerts::alert(
                    "OpsBudgetMonthlyWarning",
                    Severity::Warning,
                    format!("cost this month ${spent:.2} reached {:.0} % of the monthly budget ${limit:.2}", ratio * 100.0),
                    format!("month {} ({}): ${spent:.2} of ${limit:.2}", p.month_key, policy.timezone),
                )
                .label("period", &p.month_key)
                .annotation("spent_usd", format!("{spent:.2}"))
                .annotation("budget_usd", format!("{limit:.2}"));
                if once_per_period(
                    db,
                    &format!("budget.monthly_warning:{}", p.month_key),
                    p.month_end,
                    &alert,
                    now,
                )
                .await?
                {
                    sent.push("monthly_warning");
                }
            }
            BudgetAction::HardStop { reason } => {
                let mark = format!("budget.emergency_stop:{}", p.day_key);
                // Once per day: a human release the same day stands.
                let already = db::cooldown_until(db, &mark)
                    .await?
                    .is_some_and(|until| until > now);
                if stop.engaged || already {
                    continue;
                }
                let change = workflow::engage_emergency_stop(
                    db,
                    ACTOR,
                    &reason,
                    hb.inner.audit.as_deref(),
                    now,
                )
                .await?;
                let alert = alerts::alert(
                    "OpsEmergencyStop",
                    Severity::Critical,
                    "emergency stop engaged by the heartbeat".into(),
                    format!("{reason}; nothing is approved or handed to workers until a human releases it"),
                )
                .annotation("reason", &reason)
                .annotation("spent_today_usd", format!("{:.2}", spend.today_usd));
                if once_per_period(db, &mark, p.day_end, &alert, now).await? && change.changed {
                    sent.push("emergency_stop");
                }
            }
        }
    }
    Ok(
        json!({"today_usd": spend.today_usd, "month_usd": spend.month_usd,
              "consecutive_failures": spend.consecutive_failures, "sent": sent}),
    )
}

/// Claims the cooldown `name` until `until` and enqueues `alert`, in one
/// transaction. True when this call sent it.
async fn once_per_period(
    db: &DatabaseConnection,
    name: &str,
    until: DateTime<Utc>,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<bool, HeartbeatError> {
    let tx = begin_write(db).await?;
    let claimed = db::claim_cooldown(&tx, name, until, now).await?;
    if claimed {
        enqueue_alert(&tx, alert, now).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

pub async fn daily_summary(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let last = db::cooldown_until(db, DAILY_SUMMARY_MARK).await?;
    let schedule = &hb.inner.summary_schedule;
    let Some(occurrence) = schedule.due(last, now, Duration::hours(25)) else {
        return Ok(json!({"due": false}));
    };
    let figures = workflow::summary(db, SummaryPeriod::Daily, now).await?;
    // The proposals waiting for a decision, oldest first, with their links.
    let (pending_total, oldest) = workflow::pending_proposals_oldest(db, 10).await?;
    let waiting: Vec<crate::report::Waiting> = oldest
        .iter()
        .map(|p| crate::report::Waiting {
            id: p.id,
            title: p.title.clone(),
            source: p.source.clone(),
            agent: p.agent.clone(),
            created_at: p.created_at,
        })
        .collect();
    let figures_json = crate::report::daily_body(
        &figures,
        pending_total,
        &waiting,
        &hb.settings().console_url,
        now,
    );
    // Cost per upstream resource and kind over the same 24 h.
    let per_resource: Vec<Value> =
        workflow::governance::cost_by_resource(db, now - Duration::hours(24), now)
            .await?
            .into_iter()
            .map(|(resource, kind, calls, cost)| {
                json!({"resource": resource, "kind": kind, "calls": calls, "cost_usd": cost})
            })
            .collect();
    let count = |map: &std::collections::BTreeMap<String, i64>, key: &str| {
        map.get(key).copied().unwrap_or(0)
    };
    let alert = alerts::alert(
        "OpsDailySummary",
        Severity::Info,
        format!(
            "last 24 h: {} proposals, {} missions succeeded, {} failed, {} events",
            figures.proposals.values().sum::<i64>(),
            count(&figures.missions, "succeeded"),
            count(&figures.missions, "failed"),
            figures.total_events
        ),
        format!(
            "Daily summary of the 24 h to {}",
            occurrence.format("%Y-%m-%d %H:%M UTC")
        ),
    )
    .label(
        "period",
        occurrence
            .with_timezone(&chrono_tz::UTC)
            .format("%Y-%m-%dT%H:%MZ"),
    )
    .annotation("figures", figures_json.to_string())
    .annotation("cost_by_resource", Value::Array(per_resource).to_string())
    .annotation("command", "opsloop summary --period daily");
    let tx = begin_write(db).await?;
    let sent = db::advance_mark(&tx, DAILY_SUMMARY_MARK, occurrence, now).await?;
    if sent {
        enqueue_alert(&tx, &alert, now).await?;
    }
    tx.commit().await?;
    Ok(json!({"due": true, "occurrence": occurrence, "sent": sent}))
}

/// The mark of the last weekly report sent.
pub const WEEKLY_REPORT_MARK: &str = "report.weekly";

/// Once per weekly occurrence: the report of the 7 days before it, stored in
/// `reports` (kind `weekly`) and sent as `OpsWeeklyReport`, with the mark,
/// in one transaction.
pub async fn weekly_report(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let last = db::cooldown_until(db, WEEKLY_REPORT_MARK).await?;
    let Some(end) = hb.inner.weekly_schedule.due(last, now, Duration::days(8)) else {
        return Ok(json!({"due": false}));
    };
    let start = end - Duration::days(7);
    let backend = db.get_database_backend();
    let period = || vec![start.into(), end.into()];
    let mut missions = std::collections::BTreeMap::new();
    for row in db
        .query_all_raw(stmt(
            backend,
            "SELECT status, COUNT(*) AS n FROM missions WHERE finished_at >= $1 AND finished_at < $2 GROUP BY status",
            period(),
        ))
        .await?
    {
        missions.insert(row.try_get::<String>("", "status")?, row.try_get::<i64>("", "n")?);
    }
    let mut steps = Vec::new();
    for row in db
        .query_all_raw(stmt(
            backend,
            "SELECT kind, status, error, started_at, finished_at FROM mission_steps \
             WHERE status IN ('succeeded', 'failed') AND finished_at >= $1 AND finished_at < $2 \
             ORDER BY finished_at LIMIT 100000",
            period(),
        ))
        .await?
    {
        let started: Option<DateTime<Utc>> = row.try_get("", "started_at")?;
        let finished: Option<DateTime<Utc>> = row.try_get("", "finished_at")?;
        steps.push(crate::report::FinishedStep {
            kind: row.try_get("", "kind")?,
            status: row.try_get("", "status")?,
            error: row.try_get("", "error")?,
            duration_ms: started
                .zip(finished)
                .map(|(s, f)| (f - s).num_milliseconds()),
        });
    }
    let mut alerts = Vec::new();
    for row in db
        .query_all_raw(stmt(
            backend,
            "SELECT payload FROM outbox WHERE routing_key LIKE 'alert.%' \
             AND created_at >= $1 AND created_at < $2 LIMIT 100000",
            period(),
        ))
        .await?
    {
        let payload: Value = row.try_get("", "payload")?;
        if let Some(name) = payload["labels"]["alertname"].as_str() {
            alerts.push(name.to_owned());
        }
    }
    let last_backup = db
        .query_one_raw(stmt(
            backend,
            "SELECT finished_at FROM backups WHERE status = 'completed' AND finished_at < $1 \
             ORDER BY finished_at DESC LIMIT 1",
            vec![end.into()],
        ))
        .await?
        .map(|row| row.try_get::<Option<DateTime<Utc>>>("", "finished_at"))
        .transpose()?
        .flatten();
    let budget = cost_policy(db).await?;
    let tz: Tz = budget.timezone.parse().unwrap_or(chrono_tz::UTC);
    let prorated = crate::report::prorated_budget(budget.monthly_usd, start, end, tz);
    let steps_sli = crate::report::SliInput {
        name: "steps".into(),
        description: "mission steps finished without failure; latency from claim to finish".into(),
        good: steps.iter().filter(|s| s.status == "succeeded").count() as i64,
        total: steps.len() as i64,
        latencies_ms: Some(steps.iter().filter_map(|s| s.duration_ms).collect()),
    };
    let mut slis = vec![
        steps_sli,
        heartbeat_sli(db, start, end).await?,
        delivery_sli(db, start, end).await?,
    ];
    slis.extend(crate::probe_rollup::availability_slis(db, start, end).await?);
    let input = crate::report::WeeklyInput {
        period_start: start,
        period_end: end,
        missions,
        steps,
        alerts,
        cost_usd: cost_between(db, start, end).await?,
        cost_by_kind: cost_by_kind(db, start, end).await?,
        cost_by_resource: workflow::governance::cost_by_resource(db, start, end)
            .await?
            .into_iter()
            .map(
                |(resource, kind, calls, cost_usd)| crate::report::ResourceCost {
                    resource,
                    kind,
                    calls,
                    cost_usd,
                },
            )
            .collect(),
        budget_usd: prorated.usd,
        budget_basis: format!("{} in {}", prorated.basis, budget.timezone),
        last_backup_at: last_backup,
        slis,
        incidents: incidents_opened(db, start, end).await?,
    };
    let body = crate::report::weekly_body(&input);
    let rate = |v: &Value| {
        v.as_f64()
            .map(|r| format!("{:.0} %", r * 100.0))
            .unwrap_or_else(|| "n/a".into())
    };
    let verdicts: Vec<bool> = body["slis"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|sli| {
            [&sli["availability"]["met"], &sli["latencyP95Ms"]["met"]]
                .into_iter()
                .filter_map(Value::as_bool)
        })
        .collect();
    let met = verdicts.iter().filter(|m| **m).count();
    let alert = alerts::alert(
        "OpsWeeklyReport",
        Severity::Info,
        format!(
            "week to {}: mission success {}, objectives {met} met / {} missed, cost ${:.2} of ${:.2}",
            end.format("%Y-%m-%d"),
            rate(&body["missions"]["successRate"]),
            verdicts.len() - met,
            input.cost_usd,
            input.budget_usd
        ),
        format!(
            "Weekly operations report {} to {}",
            start.format("%Y-%m-%d"),
            end.format("%Y-%m-%d")
        ),
    )
    .label("period", end.format("%Y-%m-%d"))
    .annotation("report", body.to_string())
    .annotation(
        "command",
        format!("opsloop report weekly --week-of {}", start.format("%Y-%m-%d")),
    );
    let tx = begin_write(db).await?;
    let sent = db::advance_mark(&tx, WEEKLY_REPORT_MARK, end, now).await?;
    let report_id = uuid::Uuid::now_v7();
    if sent {
        tx.execute_raw(stmt(
            backend,
            "INSERT INTO reports (id, kind, period_start, period_end, body, created_at) \
             VALUES ($1, 'weekly', $2, $3, $4, $5)",
            vec![
                report_id.into(),
                start.into(),
                end.into(),
                body.clone().into(),
                now.into(),
            ],
        ))
        .await?;
        enqueue_alert(&tx, &alert, now).await?;
    }
    tx.commit().await?;
    Ok(
        json!({"due": true, "period_end": end, "sent": sent, "report_id": sent.then_some(report_id)}),
    )
}

/// The heartbeat's own SLI: ticks recorded `ok` (not `partial`), and tick
/// durations, from `heartbeat_runs`.
async fn heartbeat_sli(
    db: &impl ConnectionTrait,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<crate::report::SliInput, HeartbeatError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT status, started_at, finished_at FROM heartbeat_runs \
             WHERE tick_at >= $1 AND tick_at < $2 LIMIT 100000",
            vec![start.into(), end.into()],
        ))
        .await?;
    let mut sli = crate::report::SliInput {
        name: "heartbeat".into(),
        description: "heartbeat ticks with every phase ok; latency of the tick".into(),
        latencies_ms: Some(Vec::new()),
        ..Default::default()
    };
    for row in rows {
        sli.total += 1;
        if row.try_get::<String>("", "status")? == "ok" {
            sli.good += 1;
        }
        let started: DateTime<Utc> = row.try_get("", "started_at")?;
        let finished: Option<DateTime<Utc>> = row.try_get("", "finished_at")?;
        if let (Some(finished), Some(samples)) = (finished, sli.latencies_ms.as_mut()) {
            samples.push((finished - started).num_milliseconds());
        }
    }
    Ok(sli)
}

/// The alerter's delivery SLI: notifications sent against those
/// dead-lettered, from its `notification_log`. The log keeps no delivery
/// duration, so this SLI has no latency.
async fn delivery_sli(
    db: &impl ConnectionTrait,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<crate::report::SliInput, HeartbeatError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT status, COUNT(*) AS n FROM notification_log \
             WHERE created_at >= $1 AND created_at < $2 AND status IN ('sent', 'dead_letter') \
             GROUP BY status",
            vec![start.into(), end.into()],
        ))
        .await?;
    let mut sli = crate::report::SliInput {
        name: "alert_delivery".into(),
        description: "notifications delivered, not dead-lettered".into(),
        ..Default::default()
    };
    for row in rows {
        let n: i64 = row.try_get("", "n")?;
        sli.total += n;
        if row.try_get::<String>("", "status")? == "sent" {
            sli.good += n;
        }
    }
    Ok(sli)
}

/// Cost of the period per step kind (the event's kind when it belongs to no
/// step), in USD.
async fn cost_by_kind(
    db: &impl ConnectionTrait,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<std::collections::BTreeMap<String, f64>, HeartbeatError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT COALESCE(s.kind, e.kind) AS kind, SUM(e.cost_usd) AS total FROM events e \
             LEFT JOIN mission_steps s ON s.id = e.step_id \
             WHERE e.created_at >= $1 AND e.created_at <= $2 AND e.cost_usd IS NOT NULL \
             GROUP BY COALESCE(s.kind, e.kind) LIMIT 1000",
            vec![db_now(from).into(), db_now(to).into()],
        ))
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for row in rows {
        let kind: String = row.try_get("", "kind")?;
        let total: Option<f64> = row.try_get("", "total")?;
        out.insert(kind, total.unwrap_or(0.0));
    }
    Ok(out)
}

/// Incidents opened in the period (the alerter's `incidents` table).
async fn incidents_opened(
    db: &impl ConnectionTrait,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<crate::report::IncidentTimes>, HeartbeatError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT opened_at, acknowledged_at, resolved_at FROM incidents \
             WHERE opened_at >= $1 AND opened_at < $2 LIMIT 100000",
            vec![start.into(), end.into()],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(crate::report::IncidentTimes {
            opened_at: row.try_get("", "opened_at")?,
            acknowledged_at: row.try_get("", "acknowledged_at")?,
            resolved_at: row.try_get("", "resolved_at")?,
        });
    }
    Ok(out)
}
