//! The heartbeat's guard decisions: the cost budget (daily and monthly
//! spend against limits, one warning per period, the hard stop) and ops
//! health (a failure spike, once per cooldown). Periods are calendar days
//! and months in the budget's time zone. Pure, no I/O.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use opsloop_core::domain::policy::CostBudget;

/// The day and month `now` falls in, in `tz`: keys and UTC bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periods {
    pub day_key: String,
    pub day_start: DateTime<Utc>,
    pub day_end: DateTime<Utc>,
    pub month_key: String,
    pub month_start: DateTime<Utc>,
    pub month_end: DateTime<Utc>,
}

fn midnight(tz: Tz, y: i32, m: u32, d: u32, fallback: DateTime<Utc>) -> DateTime<Utc> {
    tz.with_ymd_and_hms(y, m, d, 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(fallback)
}

pub fn periods(now: DateTime<Utc>, tz: Tz) -> Periods {
    let local = now.with_timezone(&tz);
    let today = local.date_naive();
    let tomorrow = today.succ_opt().unwrap_or(today);
    let (ny, nm) = if local.month() == 12 {
        (local.year() + 1, 1)
    } else {
        (local.year(), local.month() + 1)
    };
    Periods {
        day_key: today.format("%Y-%m-%d").to_string(),
        day_start: midnight(
            tz,
            today.year(),
            today.month(),
            today.day(),
            now - Duration::hours(24),
        ),
        day_end: midnight(
            tz,
            tomorrow.year(),
            tomorrow.month(),
            tomorrow.day(),
            now + Duration::hours(24),
        ),
        month_key: format!("{:04}-{:02}", local.year(), local.month()),
        month_start: midnight(tz, local.year(), local.month(), 1, now - Duration::days(31)),
        month_end: midnight(tz, ny, nm, 1, now + Duration::days(31)),
    }
}

/// The figures the budget is judged on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spend {
    pub today_usd: f64,
    pub month_usd: f64,
    /// Terminal step outcomes since the stop last changed, newest first,
    /// counted while they are failures.
    pub consecutive_failures: u32,
}

/// What the budget asks for. Warnings are sent once per period by the
/// caller (the period key names the persisted cooldown).
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetAction {
    DailyWarning { spent: f64, limit: f64, ratio: f64 },
    MonthlyWarning { spent: f64, limit: f64, ratio: f64 },
    HardStop { reason: String },
}

pub fn evaluate_budget(policy: &CostBudget, spend: &Spend) -> Vec<BudgetAction> {
    let mut actions = Vec::new();
    if policy.daily_usd > 0.0 && spend.today_usd >= policy.daily_usd * policy.daily_warn_ratio {
        actions.push(BudgetAction::DailyWarning {
            spent: spend.today_usd,
            limit: policy.daily_usd,
            ratio: policy.daily_warn_ratio,
        });
    }
    if policy.monthly_usd > 0.0 && spend.month_usd >= policy.monthly_usd * policy.monthly_warn_ratio
    {
        actions.push(BudgetAction::MonthlyWarning {
            spent: spend.month_usd,
            limit: policy.monthly_usd,
            ratio: policy.monthly_warn_ratio,
        });
    }
    if policy.hard_daily_usd > 0.0 && spend.today_usd > policy.hard_daily_usd {
        actions.push(BudgetAction::HardStop {
            reason: format!(
                "cost today ${:.2} is above the hard daily limit ${:.2}",
                spend.today_usd, policy.hard_daily_usd
            ),
        });
    } else if policy.max_consecutive_failures > 0
        && spend.consecutive_failures >= policy.max_consecutive_failures
    {
        actions.push(BudgetAction::HardStop {
            reason: format!(
                "{} consecutive step failures (limit {})",
                spend.consecutive_failures, policy.max_consecutive_failures
            ),
        });
    }
    actions
}

/// Ops health: alert when failures in the window reach the threshold and
/// the persisted cooldown has passed.
pub fn failure_spike_due(
    failures: i64,
    threshold: i64,
    cooldown_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    failures >= threshold.max(1) && cooldown_until.is_none_or(|until| until <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CostBudget {
        CostBudget {
            timezone: "Asia/Tokyo".into(),
            daily_usd: 30.0,
            monthly_usd: 800.0,
            daily_warn_ratio: 0.8,
            monthly_warn_ratio: 0.9,
            hard_daily_usd: 100.0,
            max_consecutive_failures: 5,
        }
    }

    fn kinds(actions: &[BudgetAction]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                BudgetAction::DailyWarning { .. } => "daily",
                BudgetAction::MonthlyWarning { .. } => "monthly",
                BudgetAction::HardStop { .. } => "stop",
            })
            .collect()
    }

    #[test]
    fn budget_table() {
        let table: Vec<(f64, f64, u32, Vec<&str>)> = vec![
            (0.0, 0.0, 0, vec![]),
            (23.99, 100.0, 0, vec![]),
            (24.0, 100.0, 0, vec!["daily"]),
            (10.0, 719.99, 0, vec![]),
            (10.0, 720.0, 0, vec!["monthly"]),
            (100.0, 720.0, 0, vec!["daily", "monthly"]),
            (100.01, 100.01, 0, vec!["daily", "stop"]),
            (1.0, 1.0, 4, vec![]),
            (1.0, 1.0, 5, vec!["stop"]),
        ];
        for (today, month, failures, want) in table {
            let spend = Spend {
                today_usd: today,
                month_usd: month,
                consecutive_failures: failures,
            };
            assert_eq!(
                kinds(&evaluate_budget(&policy(), &spend)),
                want,
                "{spend:?}"
            );
        }
    }

    #[test]
    fn periods_follow_the_time_zone() {
        let tz: Tz = "Asia/Tokyo".parse().expect("tz");
        // 2026-11-30 15:30 UTC = 2026-12-01 00:30 JST.
        let now = Utc
            .with_ymd_and_hms(2026, 11, 30, 15, 30, 0)
            .single()
            .expect("valid");
        let p = periods(now, tz);
        assert_eq!(p.day_key, "2026-12-01");
        assert_eq!(p.month_key, "2026-12");
        assert_eq!(
            p.day_start,
            Utc.with_ymd_and_hms(2026, 11, 30, 15, 0, 0)
                .single()
                .expect("valid")
        );
        assert_eq!(
            p.day_end,
            Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0)
                .single()
                .expect("valid")
        );
        assert_eq!(
            p.month_end,
            Utc.with_ymd_and_hms(2026, 12, 31, 15, 0, 0)
                .single()
                .expect("valid")
        );
    }

    #[test]
    fn failure_spike_table() {
        let now = Utc::now();
        let table = [
            (4, 5, None, false),
            (5, 5, None, true),
            (9, 5, Some(now + Duration::seconds(1)), false),
            (9, 5, Some(now), true),
        ];
        for (failures, threshold, until, want) in table {
            assert_eq!(failure_spike_due(failures, threshold, until, now), want);
        }
    }
}
