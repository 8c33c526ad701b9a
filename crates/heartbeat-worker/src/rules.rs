//! Trigger conditions as data: `event_count`, `failure_rate`, `absence`
//! (dead man's switch), `stalled_missions`, composed with `all`/`any`, and
//! the pure evaluation of a condition over the facts of one tick. Event
//! windows are asked as [`WindowQuery`]s (count and newest match, or mere
//! existence), answered by the database in the trigger phase or by events in
//! memory ([`EventsInMemory`]). A firing carries its fact window key, so the
//! same facts never fire twice; the cooldown is a separate pure check. No I/O.

use chrono::{DateTime, Duration, Utc};
use opsloop_core::domain::rule_spec::ConditionSpec;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::matching::{EventMatcher, EventView, SpecError};

/// A trigger condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// At least `min_count` matching events within `window`.
    EventCount {
        matcher: EventMatcher,
        window: Duration,
        min_count: u64,
    },
    /// failures / (failures + successes) within `window` ≥ `threshold`,
    /// once at least `min_events` outcomes were seen.
    FailureRate {
        failures: EventMatcher,
        successes: EventMatcher,
        window: Duration,
        threshold: f64,
        min_events: u64,
    },
    /// No matching event within `window`.
    Absence {
        matcher: EventMatcher,
        window: Duration,
    },
    /// At least `min_count` running missions without activity for `older_than`.
    StalledMissions {
        older_than: Duration,
        min_count: u64,
    },
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

fn seconds(n: u64) -> Duration {
    // Validated to at most a year by `ConditionSpec::parse`.
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1_000))
}

impl From<ConditionSpec> for Condition {
    fn from(spec: ConditionSpec) -> Self {
        match spec {
            ConditionSpec::EventCount {
                events,
                window_seconds,
                min_count,
            } => Self::EventCount {
                matcher: events.into(),
                window: seconds(window_seconds),
                min_count,
            },
            ConditionSpec::FailureRate {
                failure_kind,
                success_kind,
                window_seconds,
                threshold,
                min_events,
            } => Self::FailureRate {
                failures: EventMatcher::kind(&failure_kind),
                successes: EventMatcher::kind(&success_kind),
                window: seconds(window_seconds),
                threshold,
                min_events,
            },
            ConditionSpec::Absence {
                events,
                window_seconds,
            } => Self::Absence {
                matcher: events.into(),
                window: seconds(window_seconds),
            },
            ConditionSpec::StalledMissions {
                older_than_seconds,
                min_count,
            } => Self::StalledMissions {
                older_than: seconds(older_than_seconds),
                min_count,
            },
            ConditionSpec::All { conditions } => {
                Self::All(conditions.into_iter().map(Self::from).collect())
            }
            ConditionSpec::Any { conditions } => {
                Self::Any(conditions.into_iter().map(Self::from).collect())
            }
        }
    }
}

impl Condition {
    /// Parses a stored condition ([`ConditionSpec`], the same parse the api
    /// runs before storing it), naming the offending path.
    pub fn parse(field: &str, spec: &Value) -> Result<Self, SpecError> {
        Ok(ConditionSpec::parse(field, spec)?.into())
    }

    /// The longest event window this condition looks back over.
    pub fn max_window(&self) -> Duration {
        match self {
            Self::EventCount { window, .. }
            | Self::FailureRate { window, .. }
            | Self::Absence { window, .. } => *window,
            Self::StalledMissions { .. } => Duration::zero(),
            Self::All(items) | Self::Any(items) => items
                .iter()
                .map(Self::max_window)
                .max()
                .unwrap_or_else(Duration::zero),
        }
    }

    /// True when this tick must evaluate the condition: time-driven ones
    /// (`absence`, `stalled_missions`) always, event-driven ones only when a
    /// new event could have changed their count. This keeps a tick's cost
    /// proportional to the events new since the last one.
    pub fn wakes_on(&self, new_events: &[EventView]) -> bool {
        match self {
            Self::EventCount { matcher, .. } => new_events.iter().any(|e| matcher.matches(e)),
            Self::FailureRate {
                failures,
                successes,
                ..
            } => new_events
                .iter()
                .any(|e| failures.matches(e) || successes.matches(e)),
            Self::Absence { .. } | Self::StalledMissions { .. } => true,
            Self::All(items) | Self::Any(items) => items.iter().any(|c| c.wakes_on(new_events)),
        }
    }

    /// True when the condition needs the running missions' activity.
    pub fn needs_missions(&self) -> bool {
        match self {
            Self::StalledMissions { .. } => true,
            Self::All(items) | Self::Any(items) => items.iter().any(Self::needs_missions),
            _ => false,
        }
    }

    /// The window questions [`Condition::evaluate`] will ask.
    pub fn window_queries(&self) -> Vec<WindowQuery> {
        let q = |matcher: &EventMatcher, window: &Duration, exists_only| WindowQuery {
            matcher: matcher.clone(),
            window: *window,
            exists_only,
        };
        match self {
            Self::EventCount {
                matcher, window, ..
            } => vec![q(matcher, window, false)],
            Self::FailureRate {
                failures,
                successes,
                window,
                ..
            } => vec![q(failures, window, false), q(successes, window, false)],
            Self::Absence { matcher, window } => vec![q(matcher, window, true)],
            Self::StalledMissions { .. } => Vec::new(),
            Self::All(items) | Self::Any(items) => {
                items.iter().flat_map(Self::window_queries).collect()
            }
        }
    }

    /// Evaluates against the facts of one tick.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Option<Firing> {
        let now = facts.now;
        match self {
            Self::EventCount {
                matcher,
                window,
                min_count,
            } => {
                let matched = facts.window(matcher, *window, false);
                let last = matched.last?;
                (matched.count >= *min_count).then(|| Firing {
                    window_key: format!("count:{}", last.seq),
                    event: Some(last),
                    detail: json!({"type": "event_count", "count": matched.count,
                                   "min_count": min_count, "window_seconds": window.num_seconds()}),
                })
            }
            Self::FailureRate {
                failures,
                successes,
                window,
                threshold,
                min_events,
            } => {
                let failed = facts.window(failures, *window, false);
                let succeeded = facts.window(successes, *window, false).count;
                let total = failed.count + succeeded;
                let last = failed.last?;
                let rate = failed.count as f64 / total as f64;
                (total >= *min_events && rate >= *threshold).then(|| Firing {
                    window_key: format!("rate:{}", last.seq),
                    event: Some(last),
                    detail: json!({"type": "failure_rate", "failures": failed.count,
                                   "total": total, "rate": rate, "threshold": threshold}),
                })
            }
            Self::Absence { matcher, window } => {
                if facts.window(matcher, *window, true).count > 0 {
                    return None;
                }
                // One firing per silent window-length period.
                let bucket = now.timestamp().div_euclid(window.num_seconds().max(1));
                Some(Firing {
                    window_key: format!("absence:{bucket}"),
                    event: None,
                    detail: json!({"type": "absence", "window_seconds": window.num_seconds()}),
                })
            }
            Self::StalledMissions {
                older_than,
                min_count,
            } => {
                let mut stalled: Vec<Uuid> = facts
                    .running_missions
                    .iter()
                    .filter(|(_, last_activity)| *last_activity <= now - *older_than)
                    .map(|(id, _)| *id)
                    .collect();
                if (stalled.len() as u64) < *min_count {
                    return None;
                }
                stalled.sort();
                let mut hash = Sha256::new();
                for id in &stalled {
                    hash.update(id.as_bytes());
                }
                Some(Firing {
                    window_key: format!("stalled:{}", &hex::encode(hash.finalize())[..16]),
                    event: None,
                    detail: json!({"type": "stalled_missions", "missions": stalled,
                                   "older_than_seconds": older_than.num_seconds()}),
                })
            }
            Self::All(items) => {
                let firings: Vec<Firing> = items
                    .iter()
                    .map(|c| c.evaluate(facts))
                    .collect::<Option<Vec<_>>>()?;
                Some(Firing {
                    window_key: firings
                        .iter()
                        .map(|f| f.window_key.as_str())
                        .collect::<Vec<_>>()
                        .join("+"),
                    event: firings.iter().find_map(|f| f.event.clone()),
                    detail: json!({"type": "all",
                                   "conditions": firings.iter().map(|f| f.detail.clone()).collect::<Vec<_>>()}),
                })
            }
            Self::Any(items) => items.iter().find_map(|c| c.evaluate(facts)),
        }
    }
}

/// One question a condition asks of the event log: how many events
/// matching `matcher` were created in `[now - window, now]`, and the newest
/// of them (or only whether there is any, for `exists_only`).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowQuery {
    pub matcher: EventMatcher,
    pub window: Duration,
    pub exists_only: bool,
}

impl WindowQuery {
    /// Identifies the question (equal queries share one answer).
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{:?}",
            self.exists_only,
            self.window.num_seconds(),
            self.matcher
        )
    }
}

/// The answer to a [`WindowQuery`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowFact {
    /// Matching events (for `exists_only`: 0 or 1).
    pub count: u64,
    /// The matching event with the highest seq (not for `exists_only`).
    pub last: Option<EventView>,
}

/// Where a condition's window facts come from: answered by the database
/// (the trigger phase asks [`Condition::window_queries`] up front) or by a
/// slice of events ([`EventsInMemory`]).
pub trait WindowFacts: Sync {
    fn fact(&self, query: &WindowQuery, now: DateTime<Utc>) -> WindowFact;
}

/// Window facts computed over events held in memory (ascending seq).
#[derive(Debug, Clone, Copy)]
pub struct EventsInMemory<'a>(pub &'a [EventView]);

impl WindowFacts for EventsInMemory<'_> {
    fn fact(&self, query: &WindowQuery, now: DateTime<Utc>) -> WindowFact {
        let from = now - query.window;
        let mut matched = self
            .0
            .iter()
            .filter(|e| e.created_at >= from && e.created_at <= now)
            .filter(|e| query.matcher.matches(e));
        if query.exists_only {
            return WindowFact {
                count: u64::from(matched.next().is_some()),
                last: None,
            };
        }
        matched.fold(WindowFact::default(), |acc, e| WindowFact {
            count: acc.count + 1,
            last: Some(e.clone()),
        })
    }
}

/// Window facts answered ahead of evaluation, by [`WindowQuery::key`]. An
/// unanswered query reads as "no events".
#[derive(Debug, Clone, Default)]
pub struct KnownFacts(pub std::collections::HashMap<String, WindowFact>);

impl WindowFacts for KnownFacts {
    fn fact(&self, query: &WindowQuery, _now: DateTime<Utc>) -> WindowFact {
        self.0.get(&query.key()).cloned().unwrap_or_default()
    }
}

/// What one tick knows: the event windows (see [`WindowFacts`]) and the
/// running missions with their last activity.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub now: DateTime<Utc>,
    pub windows: &'a dyn WindowFacts,
    pub running_missions: &'a [(Uuid, DateTime<Utc>)],
}

impl Facts<'_> {
    fn window(&self, matcher: &EventMatcher, window: Duration, exists_only: bool) -> WindowFact {
        self.windows.fact(
            &WindowQuery {
                matcher: matcher.clone(),
                window,
                exists_only,
            },
            self.now,
        )
    }
}

/// A condition that holds: its fact window and the event to render from.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub window_key: String,
    pub event: Option<EventView>,
    pub detail: Value,
}

/// True when a rule last fired at `last_fired` may fire again at `now`.
pub fn cooldown_passed(
    last_fired: Option<DateTime<Utc>>,
    cooldown: Duration,
    now: DateTime<Utc>,
) -> bool {
    last_fired.is_none_or(|last| last + cooldown <= now)
}

/// The proposal dedupe key of a firing: rule + window (hashed to stay short).
pub fn trigger_dedupe_key(rule_id: Uuid, window_key: &str) -> String {
    let digest = Sha256::digest(window_key.as_bytes());
    format!("trigger:{rule_id}:{}", &hex::encode(digest)[..24])
}

/// The order rules are evaluated in on tick `n`: rotated by one each tick,
/// so a tight budget never starves the same rules.
pub fn rotated<T: Clone>(items: &[T], n: u64) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    let start = (n % items.len() as u64) as usize;
    items[start..]
        .iter()
        .chain(&items[..start])
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::tests::event;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn secs(n: i64) -> Duration {
        Duration::seconds(n)
    }

    fn eval(
        spec: Value,
        events: &[EventView],
        missions: &[(Uuid, DateTime<Utc>)],
    ) -> Option<Firing> {
        let c = Condition::parse("condition", &spec).expect("parses");
        c.evaluate(&Facts {
            now: now(),
            windows: &EventsInMemory(events),
            running_missions: missions,
        })
    }

    #[test]
    fn event_count_boundaries() {
        let n = now();
        let spec =
            json!({"type": "event_count", "kind": "post.*", "window_seconds": 60, "min_count": 2});
        let table: Vec<(Vec<EventView>, Option<&str>)> = vec![
            (vec![], None),
            (vec![event(1, "post.x", &[], n - secs(10))], None),
            (
                vec![
                    event(1, "post.x", &[], n - secs(60)),
                    event(2, "post.y", &[], n),
                ],
                Some("count:2"),
            ),
            (
                vec![
                    event(1, "post.x", &[], n - secs(61)),
                    event(2, "post.y", &[], n),
                ],
                None,
            ),
            (
                vec![
                    event(1, "step.x", &[], n - secs(5)),
                    event(2, "post.y", &[], n),
                ],
                None,
            ),
            (
                vec![
                    event(1, "post.x", &[], n - secs(5)),
                    event(2, "post.y", &[], n - secs(1)),
                    event(3, "step.z", &[], n),
                ],
                Some("count:2"),
            ),
        ];
        for (events, want) in table {
            let got = eval(spec.clone(), &events, &[]).map(|f| f.window_key);
            assert_eq!(got.as_deref(), want, "{events:?}");
        }
        // Tags: every listed tag must be present.
        let tagged = json!({"type": "event_count", "tags": ["a", "b"], "window_seconds": 60, "min_count": 1});
        assert!(eval(tagged.clone(), &[event(1, "k", &["a"], n)], &[]).is_none());
        assert!(eval(tagged, &[event(1, "k", &["b", "a"], n)], &[]).is_some());
    }

    #[test]
    fn failure_rate_boundaries() {
        let n = now();
        let spec = json!({"type": "failure_rate", "window_seconds": 3600, "threshold": 0.5, "min_events": 4});
        let mk = |f: usize, s: usize| -> Vec<EventView> {
            let mut v = Vec::new();
            for i in 0..s {
                v.push(event(i as i64 + 1, "step.succeeded", &[], n - secs(100)));
            }
            for i in 0..f {
                v.push(event((s + i) as i64 + 1, "step.failed", &[], n - secs(50)));
            }
            v
        };
        let table = [
            ((2, 2), true),
            ((1, 3), false),
            ((3, 0), false),
            ((4, 0), true),
            ((0, 5), false),
        ];
        for ((f, s), want) in table {
            assert_eq!(
                eval(spec.clone(), &mk(f, s), &[]).is_some(),
                want,
                "{f} failed, {s} ok"
            );
        }
    }

    #[test]
    fn absence_is_a_dead_mans_switch() {
        let n = now();
        let spec = json!({"type": "absence", "kind": "backup.succeeded", "window_seconds": 3600});
        assert!(
            eval(
                spec.clone(),
                &[event(1, "backup.succeeded", &[], n - secs(3600))],
                &[]
            )
            .is_none()
        );
        assert!(
            eval(
                spec.clone(),
                &[event(1, "backup.succeeded", &[], n - secs(3601))],
                &[]
            )
            .is_some()
        );
        assert!(eval(spec.clone(), &[event(1, "other", &[], n)], &[]).is_some());
        let key = eval(spec, &[], &[]).expect("fires").window_key;
        assert_eq!(key, format!("absence:{}", n.timestamp() / 3600));
    }

    #[test]
    fn stalled_missions_boundaries() {
        let n = now();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let spec = json!({"type": "stalled_missions", "older_than_seconds": 600});
        assert!(eval(spec.clone(), &[], &[(a, n - secs(599))]).is_none());
        let one = eval(spec.clone(), &[], &[(a, n - secs(600))]).expect("fires");
        let two = eval(
            spec.clone(),
            &[],
            &[(a, n - secs(600)), (b, n - secs(9000))],
        )
        .expect("fires");
        assert_ne!(
            one.window_key, two.window_key,
            "a new stalled set is a new fact"
        );
        let two_again = eval(spec, &[], &[(b, n - secs(9000)), (a, n - secs(700))]).expect("fires");
        assert_eq!(two.window_key, two_again.window_key, "same set, same key");
    }

    #[test]
    fn all_and_any_compose() {
        let n = now();
        let events = vec![event(1, "post.x", &[], n)];
        let hit =
            json!({"type": "event_count", "kind": "post.*", "window_seconds": 60, "min_count": 1});
        let miss =
            json!({"type": "event_count", "kind": "nope", "window_seconds": 60, "min_count": 1});
        assert!(
            eval(
                json!({"type": "all", "conditions": [hit, miss]}),
                &events,
                &[]
            )
            .is_none()
        );
        assert!(
            eval(
                json!({"type": "any", "conditions": [miss, hit]}),
                &events,
                &[]
            )
            .is_some()
        );
        let both = eval(
            json!({"type": "all", "conditions": [hit, hit]}),
            &events,
            &[],
        )
        .expect("fires");
        assert_eq!(both.window_key, "count:1+count:1");
        assert!(Condition::parse("c", &json!({"type": "all", "conditions": []})).is_err());
        let err = Condition::parse(
            "c",
            &json!({"type": "any", "conditions": [{"type": "absence"}]}),
        )
        .expect_err("bad");
        assert_eq!(err.field, "c.conditions[0].window_seconds");
    }

    #[test]
    fn only_matching_new_events_wake_event_driven_rules() {
        let n = now();
        let parse = |v: Value| Condition::parse("c", &v).expect("parses");
        let count = parse(
            json!({"type": "event_count", "kind": "post.*", "window_seconds": 60, "min_count": 1}),
        );
        let rate = parse(json!({"type": "failure_rate", "window_seconds": 60, "threshold": 0.5}));
        let absence = parse(json!({"type": "absence", "kind": "x", "window_seconds": 60}));
        let post = [event(1, "post.x", &[], n)];
        let ok = [event(2, "step.succeeded", &[], n)];
        assert!(count.wakes_on(&post));
        assert!(!count.wakes_on(&ok));
        assert!(!count.wakes_on(&[]));
        assert!(rate.wakes_on(&ok));
        assert!(!rate.wakes_on(&post));
        assert!(absence.wakes_on(&[]));
        let all = Condition::All(vec![count.clone(), rate.clone()]);
        assert!(all.wakes_on(&ok));
        assert!(!all.wakes_on(&[]));
    }

    #[test]
    fn cooldown_and_keys() {
        let n = now();
        assert!(cooldown_passed(None, secs(60), n));
        assert!(!cooldown_passed(Some(n - secs(59)), secs(60), n));
        assert!(cooldown_passed(Some(n - secs(60)), secs(60), n));
        let rule = Uuid::from_u128(9);
        assert_eq!(
            trigger_dedupe_key(rule, "count:1"),
            trigger_dedupe_key(rule, "count:1")
        );
        assert_ne!(
            trigger_dedupe_key(rule, "count:1"),
            trigger_dedupe_key(rule, "count:2")
        );
        assert_eq!(rotated(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
        assert!(rotated::<u8>(&[], 3).is_empty());
    }
}
