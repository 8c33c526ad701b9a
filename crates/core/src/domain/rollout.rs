//! Staged rollouts, pure: a rollout is ordered phases, each setting toggles
//! and daily caps, lasting at least a minimum time, with success criteria
//! judged over the phase so far. [`judge`] turns the phase's evidence into
//! a go/no-go report (each criterion with its measured value and state);
//! the workflow gathers the evidence from opsloop's own records and acts on
//! the verdict. [`default_template`] is the plan's four phases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::input::{StepKind, ValidationError};
use super::policy::PolicyKey;

/// A rollout as created: its phases, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub name: String,
    pub phases: Vec<PhaseSpec>,
    /// Advance by itself when a phase's verdict is `go` (default: a human
    /// advances with `opsloop rollout advance`).
    #[serde(default)]
    pub auto_advance: bool,
}

/// One phase: what it sets, how long at least, and what must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Toggle policy keys (`*_autopost`) and their value in this phase.
    #[serde(default)]
    pub toggles: BTreeMap<String, bool>,
    /// Daily caps per step kind in this phase (`step_gates.kinds.K.daily_cap`).
    #[serde(default)]
    pub caps: BTreeMap<StepKind, u32>,
    /// The phase lasts at least this long before it can advance.
    pub min_duration_secs: u64,
    pub criteria: Vec<Criterion>,
}

/// A success criterion, judged over the phase so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Criterion {
    /// Missions (with a step of one of `kinds`; empty = all) that finished
    /// succeeded at least `min` of the time, once `min_missions` finished.
    MissionSuccessRate {
        #[serde(default)]
        kinds: Vec<StepKind>,
        min: f64,
        #[serde(default = "one")]
        min_missions: u32,
    },
    /// At most `max` incidents opened at `level` or more severe (P0 is the
    /// most severe).
    Incidents {
        #[serde(default = "p1")]
        level: String,
        #[serde(default)]
        max: u32,
    },
    /// At least `min_count` events of `kind` recorded.
    EventSeen {
        kind: String,
        #[serde(default = "one")]
        min_count: u32,
    },
    /// A trigger or reaction fired and the mission of its proposal
    /// succeeded, at least `min_count` times.
    TriggerChain {
        #[serde(default = "one")]
        min_count: u32,
    },
    /// Today's cost within the daily budget of `cost_budget`.
    CostWithinBudget,
}

fn one() -> u32 {
    1
}

fn p1() -> String {
    "P1".into()
}

/// What opsloop's records say about the phase so far, per criterion (the
/// same order as the phase's criteria).
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    Missions {
        succeeded: u64,
        failed: u64,
    },
    Incidents {
        opened: u64,
    },
    Events {
        seen: u64,
    },
    Chains {
        completed: u64,
    },
    Cost {
        spent_today_usd: f64,
        daily_budget_usd: f64,
    },
}

/// A criterion's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriterionState {
    Met,
    /// Not enough evidence yet (too few missions, the event not seen yet).
    Pending,
    /// Broken during the phase: the phase rolls back.
    Failed,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionReport {
    /// The criterion in words, e.g. `mission success rate ≥ 90 % (all kinds)`.
    pub criterion: String,
    /// The measured value in words, e.g. `95.0 % of 20 missions`.
    pub measured: String,
    pub state: CriterionState,
}

/// The verdict on a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every criterion met and the minimum duration over: may advance.
    Go,
    /// Nothing failed, but a criterion waits for evidence or the minimum
    /// duration is not over.
    Wait,
    /// A criterion failed: roll back.
    NoGo,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Go => "go",
            Verdict::Wait => "wait",
            Verdict::NoGo => "no_go",
        }
    }
}

/// The go/no-go report of a phase: every criterion with its measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoNoGoReport {
    pub phase: String,
    pub phase_index: usize,
    pub elapsed_secs: u64,
    pub min_duration_secs: u64,
    pub criteria: Vec<CriterionReport>,
    pub verdict: Verdict,
}

/// Incident levels, most severe first.
const LEVELS: [&str; 4] = ["P0", "P1", "P2", "P3"];

/// The levels at `level` or more severe (`P1` → `P0`, `P1`).
pub fn levels_at_or_above(level: &str) -> Vec<&'static str> {
    let upto = LEVELS.iter().position(|l| *l == level).unwrap_or(1);
    LEVELS[..=upto].to_vec()
}

/// Checks a spec, naming the field at fault: at least one phase, unique
/// phase names, toggle keys that are toggles, every phase with criteria,
/// rates in (0, 1], known incident levels.
pub fn validate(spec: &RolloutSpec) -> Result<(), ValidationError> {
    if spec.name.trim().is_empty() || spec.name.len() > 100 {
        return Err(ValidationError::new("name", "must be 1 to 100 characters"));
    }
    if spec.phases.is_empty() {
        return Err(ValidationError::new(
            "phases",
            "a rollout needs at least one phase",
        ));
    }
    for (i, phase) in spec.phases.iter().enumerate() {
        let field = |rest: &str| format!("phases[{i}].{rest}");
        if phase.name.trim().is_empty() {
            return Err(ValidationError::new(field("name"), "must not be empty"));
        }
        if spec.phases[..i].iter().any(|p| p.name == phase.name) {
            return Err(ValidationError::new(
                field("name"),
                format!("phase name {:?} is used twice", phase.name),
            ));
        }
        for key in phase.toggles.keys() {
            if !matches!(PolicyKey::parse(key), Ok(PolicyKey::Toggle(_))) {
                return Err(ValidationError::new(
                    field(&format!("toggles.{key}")),
                    "not a toggle key (toggles end in `_autopost`, e.g. `x_autopost`)",
                ));
            }
        }
        if phase.criteria.is_empty() {
            return Err(ValidationError::new(
                field("criteria"),
                "a phase needs at least one success criterion",
            ));
        }
        for (j, criterion) in phase.criteria.iter().enumerate() {
            let field = |rest: &str| format!("phases[{i}].criteria[{j}].{rest}");
            match criterion {
                Criterion::MissionSuccessRate {
                    min, min_missions, ..
                } => {
                    if !(*min > 0.0 && *min <= 1.0) {
                        return Err(ValidationError::new(
                            field("min"),
                            "must be a rate in (0, 1], e.g. 0.9",
                        ));
                    }
                    if *min_missions == 0 {
                        return Err(ValidationError::new(
                            field("min_missions"),
                            "must be at least 1",
                        ));
                    }
                }
                Criterion::Incidents { level, .. } => {
                    if !LEVELS.contains(&level.as_str()) {
                        return Err(ValidationError::new(
                            field("level"),
                            format!("unknown level {level:?} (P0, P1, P2 or P3)"),
                        ));
                    }
                }
                Criterion::EventSeen { kind, min_count } => {
                    if kind.trim().is_empty() {
                        return Err(ValidationError::new(field("kind"), "must not be empty"));
                    }
                    if *min_count == 0 {
                        return Err(ValidationError::new(
                            field("min_count"),
                            "must be at least 1",
                        ));
                    }
                }
                Criterion::TriggerChain { min_count } => {
                    if *min_count == 0 {
                        return Err(ValidationError::new(
                            field("min_count"),
                            "must be at least 1",
                        ));
                    }
                }
                Criterion::CostWithinBudget => {}
            }
        }
    }
    Ok(())
}

fn describe(criterion: &Criterion) -> String {
    match criterion {
        Criterion::MissionSuccessRate {
            kinds,
            min,
            min_missions,
        } => {
            let kinds = if kinds.is_empty() {
                "all kinds".to_owned()
            } else {
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "mission success rate ≥ {:.0} % ({kinds}; judged from {min_missions} finished)",
                min * 100.0
            )
        }
        Criterion::Incidents { level, max } => {
            format!("at most {max} incidents at {level} or above")
        }
        Criterion::EventSeen { kind, min_count } => format!("{min_count}× event {kind} seen"),
        Criterion::TriggerChain { min_count } => {
            format!("{min_count}× trigger → reaction mission succeeded")
        }
        Criterion::CostWithinBudget => "today's cost within the daily budget".to_owned(),
    }
}

fn assess(criterion: &Criterion, evidence: &Evidence) -> (String, CriterionState) {
    use CriterionState::{Failed, Met, Pending};
    match (criterion, evidence) {
        (
            Criterion::MissionSuccessRate {
                min, min_missions, ..
            },
            Evidence::Missions { succeeded, failed },
        ) => {
            let finished = succeeded + failed;
            if finished == 0 {
                return ("no mission finished yet".to_owned(), Pending);
            }
            let rate = *succeeded as f64 / finished as f64;
            let measured = format!("{:.1} % of {finished} missions", rate * 100.0);
            let state = if finished < u64::from(*min_missions) {
                Pending
            } else if rate >= *min {
                Met
            } else {
                Failed
            };
            (measured, state)
        }
        (Criterion::Incidents { max, .. }, Evidence::Incidents { opened }) => (
            format!("{opened} opened"),
            if *opened > u64::from(*max) {
                Failed
            } else {
                Met
            },
        ),
        (Criterion::EventSeen { min_count, .. }, Evidence::Events { seen }) => (
            format!("{seen} seen"),
            if *seen >= u64::from(*min_count) {
                Met
            } else {
                Pending
            },
        ),
        (Criterion::TriggerChain { min_count }, Evidence::Chains { completed }) => (
            format!("{completed} completed"),
            if *completed >= u64::from(*min_count) {
                Met
            } else {
                Pending
            },
        ),
        (
            Criterion::CostWithinBudget,
            Evidence::Cost {
                spent_today_usd,
                daily_budget_usd,
            },
        ) => (
            format!("${spent_today_usd:.2} of ${daily_budget_usd:.2}"),
            if spent_today_usd <= daily_budget_usd {
                Met
            } else {
                Failed
            },
        ),
        // The workflow gathers evidence in the criteria's order and kind; a
        // mismatch is a bug, reported as pending rather than a rollback.
        (_, other) => (format!("evidence does not match: {other:?}"), Pending),
    }
}

/// The report on phase `phase_index` of `spec` after `elapsed_secs`, from
/// `evidence` (one per criterion, in order): `no_go` when any criterion
/// failed, `go` when all are met and the minimum duration is over, `wait`
/// otherwise.
pub fn judge(
    spec: &RolloutSpec,
    phase_index: usize,
    elapsed_secs: u64,
    evidence: &[Evidence],
) -> GoNoGoReport {
    let phase = &spec.phases[phase_index.min(spec.phases.len().saturating_sub(1))];
    let criteria: Vec<CriterionReport> = phase
        .criteria
        .iter()
        .enumerate()
        .map(|(i, criterion)| {
            let (measured, state) = match evidence.get(i) {
                Some(e) => assess(criterion, e),
                None => ("no evidence".to_owned(), CriterionState::Pending),
            };
            CriterionReport {
                criterion: describe(criterion),
                measured,
                state,
            }
        })
        .collect();
    let verdict = if criteria.iter().any(|c| c.state == CriterionState::Failed) {
        Verdict::NoGo
    } else if elapsed_secs >= phase.min_duration_secs
        && criteria.iter().all(|c| c.state == CriterionState::Met)
    {
        Verdict::Go
    } else {
        Verdict::Wait
    };
    GoNoGoReport {
        phase: phase.name.clone(),
        phase_index,
        elapsed_secs,
        min_duration_secs: phase.min_duration_secs,
        criteria,
        verdict,
    }
}

/// The plan's staged rollout, one week per phase: A analysis only (no
/// automatic posting), B automatic posting on one channel (`x_autopost`),
/// C a second channel (`tiktok_autopost`), D full operation. Each phase
/// needs a mission success rate above 90 %, no incident at P1 or above,
/// the trigger → reaction chain seen working and the cost within budget.
pub fn default_template(name: &str) -> RolloutSpec {
    const WEEK: u64 = 7 * 24 * 3600;
    let criteria = || {
        vec![
            Criterion::MissionSuccessRate {
                kinds: Vec::new(),
                min: 0.9,
                min_missions: 10,
            },
            Criterion::Incidents {
                level: "P1".into(),
                max: 0,
            },
            Criterion::TriggerChain { min_count: 1 },
            Criterion::CostWithinBudget,
        ]
    };
    let phase = |name: &str, description: &str, x: bool, tiktok: bool| PhaseSpec {
        name: name.into(),
        description: description.into(),
        toggles: BTreeMap::from([
            ("x_autopost".to_owned(), x),
            ("tiktok_autopost".to_owned(), tiktok),
        ]),
        caps: BTreeMap::new(),
        min_duration_secs: WEEK,
        criteria: criteria(),
    };
    RolloutSpec {
        name: name.into(),
        phases: vec![
            phase("A", "analysis only: no automatic posting", false, false),
            phase(
                "B",
                "automatic posting on one channel (x_autopost)",
                true,
                false,
            ),
            phase("C", "a second channel (tiktok_autopost)", true, true),
            phase("D", "full operation", true, true),
        ],
        auto_advance: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(criteria: Vec<Criterion>, min_duration_secs: u64) -> RolloutSpec {
        RolloutSpec {
            name: "r".into(),
            phases: vec![PhaseSpec {
                name: "A".into(),
                description: String::new(),
                toggles: BTreeMap::new(),
                caps: BTreeMap::new(),
                min_duration_secs,
                criteria,
            }],
            auto_advance: false,
        }
    }

    #[test]
    fn the_default_template_is_valid_and_has_the_plans_four_phases() {
        let spec = default_template("launch");
        validate(&spec).expect("valid");
        let names: Vec<&str> = spec.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["A", "B", "C", "D"]);
        assert!(!spec.phases[0].toggles["x_autopost"]);
        assert!(spec.phases[1].toggles["x_autopost"]);
        assert!(!spec.phases[1].toggles["tiktok_autopost"]);
        assert!(spec.phases[2].toggles["tiktok_autopost"]);
        assert!(
            spec.phases
                .iter()
                .all(|p| p.min_duration_secs == 7 * 24 * 3600)
        );
        // It round-trips as JSON (the stored form).
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            serde_json::from_value::<RolloutSpec>(json).expect("back"),
            spec
        );
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"name": "r", "phases": []}), "phases"),
            (
                serde_json::json!({"name": "r", "phases": [{"name": "A", "min_duration_secs": 0, "criteria": []}]}),
                "phases[0].criteria",
            ),
            (
                serde_json::json!({"name": "r", "phases": [{"name": "A", "min_duration_secs": 0,
                    "toggles": {"auto_approve": true}, "criteria": [{"type": "cost_within_budget"}]}]}),
                "phases[0].toggles.auto_approve",
            ),
            (
                serde_json::json!({"name": "r", "phases": [{"name": "A", "min_duration_secs": 0,
                    "criteria": [{"type": "mission_success_rate", "min": 90}]}]}),
                "phases[0].criteria[0].min",
            ),
            (
                serde_json::json!({"name": "r", "phases": [{"name": "A", "min_duration_secs": 0,
                    "criteria": [{"type": "incidents", "level": "sev1"}]}]}),
                "phases[0].criteria[0].level",
            ),
            (
                serde_json::json!({"name": "r", "phases": [
                    {"name": "A", "min_duration_secs": 0, "criteria": [{"type": "cost_within_budget"}]},
                    {"name": "A", "min_duration_secs": 0, "criteria": [{"type": "cost_within_budget"}]}]}),
                "phases[1].name",
            ),
            (serde_json::json!({"name": " ", "phases": []}), "name"),
        ];
        for (json, field) in cases {
            let spec: RolloutSpec = serde_json::from_value(json.clone()).expect("parses");
            let err = validate(&spec).expect_err("refused");
            assert_eq!(err.field, field, "{json}: {}", err.reason);
        }
        // An unknown criterion type is refused by the parser.
        assert!(serde_json::from_value::<Criterion>(serde_json::json!({"type": "vibes"})).is_err());
    }

    #[test]
    fn the_verdict_follows_the_criteria_and_the_minimum_duration() {
        let spec = spec_with(
            vec![
                Criterion::MissionSuccessRate {
                    kinds: Vec::new(),
                    min: 0.9,
                    min_missions: 10,
                },
                Criterion::Incidents {
                    level: "P1".into(),
                    max: 0,
                },
                Criterion::EventSeen {
                    kind: "post.published".into(),
                    min_count: 1,
                },
                Criterion::TriggerChain { min_count: 1 },
                Criterion::CostWithinBudget,
            ],
            3600,
        );
        let good = |succeeded, failed, incidents, seen, chains, spent| {
            vec![
                Evidence::Missions { succeeded, failed },
                Evidence::Incidents { opened: incidents },
                Evidence::Events { seen },
                Evidence::Chains { completed: chains },
                Evidence::Cost {
                    spent_today_usd: spent,
                    daily_budget_usd: 30.0,
                },
            ]
        };
        let all_met = good(19, 1, 0, 2, 1, 12.0);
        let r = judge(&spec, 0, 3600, &all_met);
        assert_eq!(r.verdict, Verdict::Go, "{r:?}");
        assert_eq!(r.criteria[0].measured, "95.0 % of 20 missions");
        assert_eq!(r.criteria[4].measured, "$12.00 of $30.00");
        // Too early.
        assert_eq!(judge(&spec, 0, 3599, &all_met).verdict, Verdict::Wait);
        // Too few missions, or the event not seen yet: wait, not roll back.
        assert_eq!(
            judge(&spec, 0, 9999, &good(5, 0, 0, 1, 1, 0.0)).verdict,
            Verdict::Wait
        );
        assert_eq!(
            judge(&spec, 0, 9999, &good(1, 4, 0, 1, 1, 0.0)).verdict,
            Verdict::Wait
        );
        assert_eq!(
            judge(&spec, 0, 9999, &good(20, 0, 0, 0, 1, 0.0)).verdict,
            Verdict::Wait
        );
        // Failures: success rate under 90 % of enough missions, an
        // incident, the budget.
        let r = judge(&spec, 0, 10, &good(9, 1, 0, 1, 1, 0.0));
        assert_eq!(
            r.criteria[0].state,
            CriterionState::Met,
            "90 % of 10 is enough: {r:?}"
        );
        let r = judge(&spec, 0, 10, &good(17, 3, 0, 1, 1, 0.0));
        assert_eq!(r.verdict, Verdict::NoGo);
        assert_eq!(r.criteria[0].state, CriterionState::Failed);
        assert_eq!(
            judge(&spec, 0, 10, &good(20, 0, 1, 1, 1, 0.0)).verdict,
            Verdict::NoGo
        );
        assert_eq!(
            judge(&spec, 0, 10, &good(20, 0, 0, 1, 1, 30.01)).verdict,
            Verdict::NoGo
        );
        // Mismatched or missing evidence never rolls back.
        let r = judge(&spec, 0, 9999, &[Evidence::Events { seen: 1 }]);
        assert_eq!(r.verdict, Verdict::Wait);
    }

    #[test]
    fn incident_levels_count_from_the_most_severe() {
        assert_eq!(levels_at_or_above("P0"), ["P0"]);
        assert_eq!(levels_at_or_above("P1"), ["P0", "P1"]);
        assert_eq!(levels_at_or_above("P3"), ["P0", "P1", "P2", "P3"]);
    }
}
