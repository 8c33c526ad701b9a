//! The submit gates as pure functions over plain data, in DESIGN.md's order:
//! dedupe (the caller says whether the key is already held) → emergency stop →
//! toggles → daily caps (in the policy's time zone) → auto_approve. The
//! workflow reads the policy and counters inside its transaction, asks these
//! functions, and enforces the cap atomically with a conditional upsert of the
//! same numbers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::input::StepKind;
use super::policy::{AutoApprove, StepGates};

/// Why a gate rejected a proposal; `reason()` is the stored machine-readable
/// `rejection_reason`, `detail()` the human-readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRejection {
    EmergencyStop {
        reason: Option<String>,
    },
    ToggleDisabled {
        kind: StepKind,
        toggle: String,
    },
    DailyCap {
        kind: StepKind,
        cap: u32,
        used: i64,
        requested: u32,
        day: String,
    },
}

impl GateRejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmergencyStop { .. } => "emergency_stop",
            Self::ToggleDisabled { .. } => "toggle_disabled",
            Self::DailyCap { .. } => "daily_cap",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Self::EmergencyStop { reason: Some(r) } => format!("emergency stop engaged: {r}"),
            Self::EmergencyStop { reason: None } => "emergency stop engaged".into(),
            Self::ToggleDisabled { kind, toggle } => {
                format!("step kind {kind} needs toggle {toggle}, which is disabled")
            }
            Self::DailyCap {
                kind,
                cap,
                used,
                requested,
                day,
            } => format!(
                "step kind {kind}: {used} of {cap} already used on {day}, {requested} more requested"
            ),
        }
    }
}

/// The outcome of the gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The dedupe key is held by an earlier proposal: return that one.
    Duplicate,
    Approve,
    Pending,
    Reject(GateRejection),
}

/// A capped kind as the gates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindGate {
    pub kind: StepKind,
    pub cap: u32,
    pub requested: u32,
}

/// Everything the gates look at.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    pub dedupe_key_held: bool,
    pub emergency_stop: Option<Option<String>>,
    pub step_kinds: &'a [StepKind],
    pub gates: &'a StepGates,
    /// Toggle key → enabled. A toggle missing here counts as disabled.
    pub toggles: &'a BTreeMap<String, bool>,
    /// Steps of each capped kind already counted today.
    pub counts_today: &'a BTreeMap<StepKind, i64>,
    pub auto_approve: &'a AutoApprove,
    pub now: DateTime<Utc>,
}

/// All the gates at once (used by tests and previews; the workflow calls the
/// stages itself so the cap is enforced atomically).
pub fn evaluate(input: &GateInput<'_>) -> Decision {
    if input.dedupe_key_held {
        return Decision::Duplicate;
    }
    if let Err(rejection) = check_stop_and_toggles(input) {
        return Decision::Reject(rejection);
    }
    let day = day_key(input.now, input.gates);
    for gate in capped_kinds(input.gates, input.step_kinds) {
        let used = input.counts_today.get(&gate.kind).copied().unwrap_or(0);
        if let Err(rejection) = check_cap(&gate, used, &day) {
            return Decision::Reject(rejection);
        }
    }
    auto_approve(input.auto_approve, input.step_kinds)
}

/// Emergency stop, then every step kind's toggle.
pub fn check_stop_and_toggles(input: &GateInput<'_>) -> Result<(), GateRejection> {
    if let Some(reason) = &input.emergency_stop {
        return Err(GateRejection::EmergencyStop {
            reason: reason.clone(),
        });
    }
    for kind in input.step_kinds {
        if let Some(toggle) = input.gates.kinds.get(kind).and_then(|g| g.toggle.as_ref()) {
            let enabled = input.toggles.get(toggle).copied().unwrap_or(false);
            if !enabled {
                return Err(GateRejection::ToggleDisabled {
                    kind: kind.clone(),
                    toggle: toggle.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The capped kinds among `steps`, with how many steps of each this proposal
/// asks for, in kind order (a stable lock order for the counter rows).
pub fn capped_kinds(gates: &StepGates, steps: &[StepKind]) -> Vec<KindGate> {
    let mut requested: BTreeMap<&StepKind, u32> = BTreeMap::new();
    for kind in steps {
        *requested.entry(kind).or_default() += 1;
    }
    requested
        .into_iter()
        .filter_map(|(kind, n)| {
            let cap = gates.kinds.get(kind)?.daily_cap?;
            Some(KindGate {
                kind: kind.clone(),
                cap,
                requested: n,
            })
        })
        .collect()
}

/// `used + requested ≤ cap`: the cap counts this proposal's steps too.
pub fn check_cap(gate: &KindGate, used: i64, day: &str) -> Result<(), GateRejection> {
    if used + i64::from(gate.requested) <= i64::from(gate.cap) {
        Ok(())
    } else {
        Err(GateRejection::DailyCap {
            kind: gate.kind.clone(),
            cap: gate.cap,
            used,
            requested: gate.requested,
            day: day.to_owned(),
        })
    }
}

/// Approve when auto_approve is enabled and allows every step kind.
pub fn auto_approve(policy: &AutoApprove, steps: &[StepKind]) -> Decision {
    if policy.enabled && steps.iter().all(|k| policy.allowed_kinds.contains(k)) {
        Decision::Approve
    } else {
        Decision::Pending
    }
}

/// The calendar day of `now` in the gates' time zone, `YYYY-MM-DD`: the key
/// of the daily counter.
pub fn day_key(now: DateTime<Utc>, gates: &StepGates) -> String {
    now.with_timezone(&gates.tz())
        .format("%Y-%m-%d")
        .to_string()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::super::policy::KindGateConfig;
    use super::*;

    fn kind(s: &str) -> StepKind {
        StepKind::parse("kind", s).expect("kind")
    }

    fn gates() -> StepGates {
        let mut kinds = BTreeMap::new();
        kinds.insert(
            kind("post_x"),
            KindGateConfig {
                toggle: Some("x_autopost".into()),
                daily_cap: Some(2),
            },
        );
        kinds.insert(
            kind("capped"),
            KindGateConfig {
                toggle: None,
                daily_cap: Some(3),
            },
        );
        StepGates {
            timezone: "Asia/Tokyo".into(),
            kinds,
        }
    }

    #[test]
    fn gates_in_order() {
        let gates = gates();
        let aa = AutoApprove {
            enabled: true,
            allowed_kinds: vec![kind("echo"), kind("post_x")],
        };
        let on: BTreeMap<String, bool> = [("x_autopost".to_owned(), true)].into();
        let off: BTreeMap<String, bool> = [("x_autopost".to_owned(), false)].into();
        let none: BTreeMap<String, bool> = BTreeMap::new();
        let zero: BTreeMap<StepKind, i64> = BTreeMap::new();
        let one: BTreeMap<StepKind, i64> = [(kind("post_x"), 1), (kind("capped"), 2)].into();
        let two: BTreeMap<StepKind, i64> = [(kind("post_x"), 2)].into();
        let now = Utc
            .with_ymd_and_hms(2026, 11, 23, 3, 0, 0)
            .single()
            .expect("time");
        let echo = [kind("echo")];
        let post = [kind("post_x")];
        let post2 = [kind("post_x"), kind("post_x")];
        let capped = [kind("capped"), kind("echo")];
        let other = [kind("analyze")];

        struct Case<'a> {
            name: &'a str,
            held: bool,
            stop: Option<Option<String>>,
            steps: &'a [StepKind],
            toggles: &'a BTreeMap<String, bool>,
            counts: &'a BTreeMap<StepKind, i64>,
            expected: &'a str,
        }
        let cases = [
            Case {
                name: "dedupe first",
                held: true,
                stop: Some(None),
                steps: &echo,
                toggles: &on,
                counts: &zero,
                expected: "duplicate",
            },
            Case {
                name: "stop before toggles",
                held: false,
                stop: Some(Some("budget".into())),
                steps: &post,
                toggles: &off,
                counts: &zero,
                expected: "emergency_stop",
            },
            Case {
                name: "toggle off",
                held: false,
                stop: None,
                steps: &post,
                toggles: &off,
                counts: &zero,
                expected: "toggle_disabled",
            },
            Case {
                name: "toggle missing = off",
                held: false,
                stop: None,
                steps: &post,
                toggles: &none,
                counts: &zero,
                expected: "toggle_disabled",
            },
            Case {
                name: "below cap",
                held: false,
                stop: None,
                steps: &post,
                toggles: &on,
                counts: &one,
                expected: "approve",
            },
            Case {
                name: "at cap boundary",
                held: false,
                stop: None,
                steps: &post,
                toggles: &on,
                counts: &two,
                expected: "daily_cap",
            },
            Case {
                name: "two steps count twice",
                held: false,
                stop: None,
                steps: &post2,
                toggles: &on,
                counts: &one,
                expected: "daily_cap",
            },
            Case {
                name: "cap without toggle, then auto-approve not allowed",
                held: false,
                stop: None,
                steps: &capped,
                toggles: &none,
                counts: &one,
                expected: "pending",
            },
            Case {
                name: "kind not allowed",
                held: false,
                stop: None,
                steps: &other,
                toggles: &none,
                counts: &zero,
                expected: "pending",
            },
            Case {
                name: "allowed",
                held: false,
                stop: None,
                steps: &echo,
                toggles: &none,
                counts: &zero,
                expected: "approve",
            },
        ];
        for case in cases {
            let input = GateInput {
                dedupe_key_held: case.held,
                emergency_stop: case.stop.clone(),
                step_kinds: case.steps,
                gates: &gates,
                toggles: case.toggles,
                counts_today: case.counts,
                auto_approve: &aa,
                now,
            };
            let got = match evaluate(&input) {
                Decision::Duplicate => "duplicate",
                Decision::Approve => "approve",
                Decision::Pending => "pending",
                Decision::Reject(r) => r.reason(),
            };
            assert_eq!(got, case.expected, "{}", case.name);
        }
        let disabled = AutoApprove {
            enabled: false,
            ..aa.clone()
        };
        assert_eq!(auto_approve(&disabled, &echo), Decision::Pending);
    }

    #[test]
    fn day_rolls_over_at_the_policy_midnight() {
        let gates = gates();
        // 14:59:59 UTC is 23:59:59 in Tokyo; a second later is the next day there.
        let before = Utc
            .with_ymd_and_hms(2026, 11, 23, 14, 59, 59)
            .single()
            .expect("t");
        let after = Utc
            .with_ymd_and_hms(2026, 11, 23, 15, 0, 0)
            .single()
            .expect("t");
        assert_eq!(day_key(before, &gates), "2026-11-23");
        assert_eq!(day_key(after, &gates), "2026-11-24");
        let utc = StepGates {
            timezone: "UTC".into(),
            ..gates
        };
        assert_eq!(day_key(after, &utc), "2026-11-23");
    }

    #[test]
    fn capped_kinds_group_and_sort() {
        let gates = gates();
        let got = capped_kinds(
            &gates,
            &[kind("post_x"), kind("echo"), kind("capped"), kind("post_x")],
        );
        assert_eq!(
            got,
            vec![
                KindGate {
                    kind: kind("capped"),
                    cap: 3,
                    requested: 1
                },
                KindGate {
                    kind: kind("post_x"),
                    cap: 2,
                    requested: 2
                },
            ]
        );
        let rejection = check_cap(&got[1], 1, "2026-11-23").expect_err("over");
        assert_eq!(rejection.reason(), "daily_cap");
        assert!(rejection.detail().contains("post_x"));
    }
}
