//! The submit gates as pure functions over plain data, in DESIGN.md's order:
//! dedupe (the caller says whether the key is already held) → emergency stop →
//! toggles → daily caps (in the policy's time zone) → auto_approve. Split in
//! two around the one step that needs the database: [`plan`] decides what it
//! can without counting and names the caps to reserve; the workflow reserves
//! them atomically (a conditional upsert per cap) and [`finish`] decides.
//! [`evaluate`] runs the same two functions on counts in memory.

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

/// The emergency stop as the gates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopState {
    Released,
    /// Engaged, with the reason given when it was engaged (if any).
    Engaged {
        reason: Option<String>,
    },
}

impl StopState {
    /// The state of a stop that is `engaged` with `reason`.
    pub fn from_flag(engaged: bool, reason: Option<&str>) -> Self {
        if engaged {
            Self::Engaged {
                reason: reason.map(str::to_owned),
            }
        } else {
            Self::Released
        }
    }
}

/// Everything the gates look at before any daily cap is counted.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    pub dedupe_key_held: bool,
    pub emergency_stop: StopState,
    pub step_kinds: &'a [StepKind],
    pub gates: &'a StepGates,
    /// Toggle key → enabled. A toggle missing here counts as disabled.
    pub toggles: &'a BTreeMap<String, bool>,
    pub auto_approve: &'a AutoApprove,
    pub now: DateTime<Utc>,
}

/// What the gates decided before counting, or the caps to reserve first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatePlan {
    /// Decided without counting: a duplicate, a stop or toggle rejection,
    /// or (no capped kind among the steps) auto-approve's answer.
    Decided(Decision),
    /// Reserve each of `caps` on `day`'s counter, in this order (a stable lock
    /// order), then call [`finish`] with the first refusal, if any.
    Reserve { day: String, caps: Vec<KindGate> },
}

/// The gates up to the daily caps, in DESIGN.md's order. The workflow
/// (`workflow::proposals::judge`) calls this, reserves the caps atomically in
/// the database, and calls [`finish`]; [`evaluate`] does the same on counts
/// in memory.
pub fn plan(input: &GateInput<'_>) -> GatePlan {
    if input.dedupe_key_held {
        return GatePlan::Decided(Decision::Duplicate);
    }
    if let Err(rejection) = check_stop_and_toggles(input) {
        return GatePlan::Decided(Decision::Reject(rejection));
    }
    let caps = capped_kinds(input.gates, input.step_kinds);
    if caps.is_empty() {
        return GatePlan::Decided(auto_approve(input.auto_approve, input.step_kinds));
    }
    GatePlan::Reserve {
        day: day_key(input.now, input.gates),
        caps,
    }
}

/// The decision once the caps of a [`GatePlan::Reserve`] were reserved
/// (`refused` is `None`) or one was refused (the first refusal).
pub fn finish(input: &GateInput<'_>, refused: Option<GateRejection>) -> Decision {
    match refused {
        Some(rejection) => Decision::Reject(rejection),
        None => auto_approve(input.auto_approve, input.step_kinds),
    }
}

/// The rejection of a cap whose reservation was refused with `used` counted:
/// what [`check_cap`] says, or, when a concurrent release made room since
/// the refusal, the cap as it stood when it was refused.
pub fn cap_refusal(gate: &KindGate, used: i64, day: &str) -> GateRejection {
    check_cap(gate, used, day)
        .err()
        .unwrap_or_else(|| GateRejection::DailyCap {
            kind: gate.kind.clone(),
            cap: gate.cap,
            used,
            requested: gate.requested,
            day: day.to_owned(),
        })
}

/// All the gates at once, with today's counts in memory (`counts_today`:
/// steps of each capped kind already counted): [`plan`], each cap checked
/// against its count, [`finish`]. Used by the table test and previews.
pub fn evaluate(input: &GateInput<'_>, counts_today: &BTreeMap<StepKind, i64>) -> Decision {
    match plan(input) {
        GatePlan::Decided(decision) => decision,
        GatePlan::Reserve { day, caps } => {
            let refused = caps.iter().find_map(|gate| {
                let used = counts_today.get(&gate.kind).copied().unwrap_or(0);
                check_cap(gate, used, &day).err()
            });
            finish(input, refused)
        }
    }
}

/// Emergency stop, then every step kind's toggle.
pub fn check_stop_and_toggles(input: &GateInput<'_>) -> Result<(), GateRejection> {
    if let StopState::Engaged { reason } = &input.emergency_stop {
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
            stop: StopState,
            plan: &'a str,
            steps: &'a [StepKind],
            toggles: &'a BTreeMap<String, bool>,
            counts: &'a BTreeMap<StepKind, i64>,
            expected: &'a str,
        }
        let cases = [
            Case {
                name: "dedupe first",
                plan: "decided",
                held: true,
                stop: StopState::Engaged { reason: None },
                steps: &echo,
                toggles: &on,
                counts: &zero,
                expected: "duplicate",
            },
            Case {
                name: "stop before toggles",
                plan: "decided",
                held: false,
                stop: StopState::Engaged {
                    reason: Some("budget".into()),
                },
                steps: &post,
                toggles: &off,
                counts: &zero,
                expected: "emergency_stop",
            },
            Case {
                name: "toggle off",
                plan: "decided",
                held: false,
                stop: StopState::Released,
                steps: &post,
                toggles: &off,
                counts: &zero,
                expected: "toggle_disabled",
            },
            Case {
                name: "toggle missing = off",
                plan: "decided",
                held: false,
                stop: StopState::Released,
                steps: &post,
                toggles: &none,
                counts: &zero,
                expected: "toggle_disabled",
            },
            Case {
                name: "below cap",
                plan: "reserve",
                held: false,
                stop: StopState::Released,
                steps: &post,
                toggles: &on,
                counts: &one,
                expected: "approve",
            },
            Case {
                name: "at cap boundary",
                plan: "reserve",
                held: false,
                stop: StopState::Released,
                steps: &post,
                toggles: &on,
                counts: &two,
                expected: "daily_cap",
            },
            Case {
                name: "two steps count twice",
                plan: "reserve",
                held: false,
                stop: StopState::Released,
                steps: &post2,
                toggles: &on,
                counts: &one,
                expected: "daily_cap",
            },
            Case {
                name: "cap without toggle, then auto-approve not allowed",
                plan: "reserve",
                held: false,
                stop: StopState::Released,
                steps: &capped,
                toggles: &none,
                counts: &one,
                expected: "pending",
            },
            Case {
                name: "kind not allowed",
                plan: "decided",
                held: false,
                stop: StopState::Released,
                steps: &other,
                toggles: &none,
                counts: &zero,
                expected: "pending",
            },
            Case {
                name: "allowed",
                plan: "decided",
                held: false,
                stop: StopState::Released,
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
                auto_approve: &aa,
                now,
            };
            let planned = match plan(&input) {
                GatePlan::Decided(_) => "decided",
                GatePlan::Reserve { .. } => "reserve",
            };
            assert_eq!(planned, case.plan, "plan: {}", case.name);
            let got = match evaluate(&input, case.counts) {
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
        // A refused reservation is a daily_cap rejection even when the count
        // read after the refusal has room again (a concurrent release).
        let refusal = cap_refusal(&got[1], 0, "2026-11-23");
        assert_eq!(refusal.reason(), "daily_cap");
        let rejection = check_cap(&got[1], 1, "2026-11-23").expect_err("over");
        assert_eq!(rejection.reason(), "daily_cap");
        assert!(rejection.detail().contains("post_x"));
    }
}
