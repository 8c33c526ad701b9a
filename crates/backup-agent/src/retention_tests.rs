//! Table-driven tests of [`plan`]: restic's documented bucket behaviour
//! (daily/weekly/monthly, gaps, the oldest-backup rule, `keep_within`
//! relative to the newest backup), time zone boundaries, and the never-delete
//! guarantees.

use super::*;

const TOKYO: Tz = chrono_tz::Asia::Tokyo;
const UTC: Tz = chrono_tz::UTC;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad instant {text}: {e}"))
        .with_timezone(&Utc)
}

/// A test id derived from a short label, so expectations read as labels.
fn id(label: &str) -> Uuid {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(label.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

fn ok(label: &'static str, started: &'static str) -> (&'static str, &'static str, BackupState) {
    (label, started, BackupState::Completed { verified: false })
}

fn verified(
    label: &'static str,
    started: &'static str,
) -> (&'static str, &'static str, BackupState) {
    (label, started, BackupState::Completed { verified: true })
}

fn failed(label: &'static str, started: &'static str) -> (&'static str, &'static str, BackupState) {
    (label, started, BackupState::Failed)
}

fn running(
    label: &'static str,
    started: &'static str,
) -> (&'static str, &'static str, BackupState) {
    (label, started, BackupState::Running)
}

fn policy(
    last: u32,
    daily: u32,
    weekly: u32,
    monthly: u32,
    within: Option<&str>,
) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: last,
        keep_daily: daily,
        keep_weekly: weekly,
        keep_monthly: monthly,
        keep_within: within.map(|w| w.parse().expect("valid within")),
    }
}

struct Case {
    name: &'static str,
    policy: RetentionPolicy,
    tz: Tz,
    now: &'static str,
    backups: Vec<(&'static str, &'static str, BackupState)>,
    /// Kept labels, newest first.
    keep: Vec<&'static str>,
    /// Removed labels, newest first.
    remove: Vec<&'static str>,
    /// (label, a reason it must carry).
    reasons: Vec<(&'static str, &'static str)>,
    refused: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "daily keeps the newest backup of each day",
            policy: policy(0, 2, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("d3-late", "2026-11-22T20:00:00Z"),
                ok("d3-early", "2026-11-22T02:00:00Z"),
                ok("d2-late", "2026-11-21T20:00:00Z"),
                ok("d2-early", "2026-11-21T02:00:00Z"),
                ok("d1", "2026-11-20T02:00:00Z"),
            ],
            keep: vec!["d3-late", "d2-late"],
            remove: vec!["d3-early", "d2-early", "d1"],
            reasons: vec![
                ("d3-late", "daily 2026-11-22"),
                ("d2-late", "daily 2026-11-21"),
                ("d1", NOT_SELECTED),
            ],
            refused: false,
        },
        Case {
            name: "days without backups do not use up the daily count (gaps)",
            policy: policy(0, 3, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("nov22", "2026-11-22T02:00:00Z"),
                ok("nov18", "2026-11-18T02:00:00Z"),
                ok("nov10", "2026-11-10T02:00:00Z"),
                ok("nov01", "2026-11-01T02:00:00Z"),
            ],
            keep: vec!["nov22", "nov18", "nov10"],
            remove: vec!["nov01"],
            reasons: vec![("nov10", "daily 2026-11-10")],
            refused: false,
        },
        Case {
            name: "the oldest backup is kept while a rule has keeps left",
            policy: policy(0, 5, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("today-late", "2026-11-22T20:00:00Z"),
                ok("today-mid", "2026-11-22T10:00:00Z"),
                ok("today-early", "2026-11-22T02:00:00Z"),
            ],
            keep: vec!["today-late", "today-early"],
            remove: vec!["today-mid"],
            reasons: vec![("today-early", "oldest daily 2026-11-22")],
            refused: false,
        },
        Case {
            name: "weekly buckets are ISO weeks starting on Monday",
            policy: policy(0, 0, 2, 0, None),
            tz: UTC,
            now: "2026-11-24T12:00:00Z",
            backups: vec![
                // Mon 2026-11-23 opens W48; Sun 2026-11-22 closes W47.
                ok("mon-w48", "2026-11-23T02:00:00Z"),
                ok("sun-w47", "2026-11-22T02:00:00Z"),
                ok("mon-w47", "2026-11-16T02:00:00Z"),
                ok("sun-w46", "2026-11-15T02:00:00Z"),
            ],
            keep: vec!["mon-w48", "sun-w47"],
            remove: vec!["mon-w47", "sun-w46"],
            reasons: vec![
                ("mon-w48", "weekly 2026-W48"),
                ("sun-w47", "weekly 2026-W47"),
            ],
            refused: false,
        },
        Case {
            name: "ISO week of early January belongs to the previous year",
            policy: policy(0, 0, 1, 0, None),
            tz: UTC,
            now: "2027-01-03T12:00:00Z",
            backups: vec![
                ok("jan2", "2027-01-02T02:00:00Z"),
                ok("dec28", "2026-12-28T02:00:00Z"),
                ok("dec27", "2026-12-27T02:00:00Z"),
            ],
            keep: vec!["jan2"],
            remove: vec!["dec28", "dec27"],
            reasons: vec![("jan2", "weekly 2026-W53")],
            refused: false,
        },
        Case {
            name: "monthly keeps the newest backup of each month, skipping empty months",
            policy: policy(0, 0, 0, 3, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("nov-b", "2026-11-20T02:00:00Z"),
                ok("nov-a", "2026-11-01T02:00:00Z"),
                ok("sep", "2026-09-15T02:00:00Z"),
                ok("jun", "2026-06-15T02:00:00Z"),
                ok("may", "2026-05-15T02:00:00Z"),
            ],
            keep: vec!["nov-b", "sep", "jun"],
            remove: vec!["nov-a", "may"],
            reasons: vec![("jun", "monthly 2026-06")],
            refused: false,
        },
        Case {
            name: "GFS defaults: daily, weekly and monthly overlap on one backup",
            policy: RetentionPolicy::default(),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![ok("only", "2026-11-23T02:00:00Z")],
            keep: vec!["only"],
            remove: vec![],
            reasons: vec![
                ("only", "daily 2026-11-23"),
                ("only", "weekly 2026-W48"),
                ("only", "monthly 2026-11"),
            ],
            refused: false,
        },
        Case {
            name: "keep_last counts backups, not days",
            policy: policy(2, 0, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("c", "2026-11-22T20:00:00Z"),
                ok("b", "2026-11-22T10:00:00Z"),
                ok("a", "2026-11-22T02:00:00Z"),
            ],
            keep: vec!["c", "b"],
            remove: vec!["a"],
            reasons: vec![("c", "last 1/2"), ("b", "last 2/2")],
            refused: false,
        },
        Case {
            name: "daily buckets follow the configured time zone (UTC)",
            policy: policy(0, 2, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("c", "2026-11-20T16:00:00Z"),
                ok("b", "2026-11-20T14:00:00Z"),
                ok("a", "2026-11-19T10:00:00Z"),
            ],
            keep: vec!["c", "a"],
            remove: vec!["b"],
            reasons: vec![("c", "daily 2026-11-20")],
            refused: false,
        },
        Case {
            name: "daily buckets follow the configured time zone (Asia/Tokyo)",
            policy: policy(0, 2, 0, 0, None),
            tz: TOKYO,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                // 01:00 JST on the 21st vs 23:00 JST on the 20th.
                ok("c", "2026-11-20T16:00:00Z"),
                ok("b", "2026-11-20T14:00:00Z"),
                ok("a", "2026-11-19T10:00:00Z"),
            ],
            keep: vec!["c", "b"],
            remove: vec!["a"],
            reasons: vec![("c", "daily 2026-11-21"), ("b", "daily 2026-11-20")],
            refused: false,
        },
        Case {
            name: "monthly boundary in Tokyo: 31 Oct 20:00 UTC is already November",
            policy: policy(0, 0, 0, 1, None),
            tz: TOKYO,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("nov-jst", "2026-10-31T20:00:00Z"),
                ok("oct-jst", "2026-10-31T10:00:00Z"),
            ],
            keep: vec!["nov-jst"],
            remove: vec!["oct-jst"],
            reasons: vec![("nov-jst", "monthly 2026-11")],
            refused: false,
        },
        Case {
            name: "keep_within counts from the newest backup, not from now",
            policy: policy(0, 0, 0, 0, Some("7d")),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("newest", "2026-11-01T02:00:00Z"),
                ok("six-days", "2026-10-26T02:00:00Z"),
                ok("exactly-seven", "2026-10-25T02:00:00Z"),
                ok("ten-days", "2026-10-22T02:00:00Z"),
            ],
            keep: vec!["newest", "six-days"],
            remove: vec!["exactly-seven", "ten-days"],
            reasons: vec![("six-days", "within 7d")],
            refused: false,
        },
        Case {
            name: "keep_within ignores backups stamped in the future",
            policy: policy(0, 0, 0, 0, Some("1d")),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("future", "2026-12-30T02:00:00Z"),
                ok("today", "2026-11-23T02:00:00Z"),
                ok("yesterday-late", "2026-11-22T10:00:00Z"),
                ok("old", "2026-11-20T02:00:00Z"),
            ],
            keep: vec!["future", "today", "yesterday-late"],
            remove: vec!["old"],
            reasons: vec![("yesterday-late", "within 1d")],
            refused: false,
        },
        Case {
            name: "keep_within in months and hours",
            policy: policy(0, 0, 0, 0, Some("1m12h")),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("newest", "2026-11-23T00:00:00Z"),
                ok("inside", "2026-10-22T13:00:00Z"),
                ok("outside", "2026-10-22T11:00:00Z"),
            ],
            keep: vec!["newest", "inside"],
            remove: vec!["outside"],
            reasons: vec![("inside", "within 1m12h")],
            refused: false,
        },
        Case {
            name: "the newest verified backup is never removed",
            policy: policy(1, 0, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("newest", "2026-11-23T02:00:00Z"),
                verified("good", "2026-11-22T02:00:00Z"),
                verified("older-good", "2026-11-21T02:00:00Z"),
            ],
            keep: vec!["newest", "good"],
            remove: vec!["older-good"],
            reasons: vec![("good", "newest verified"), ("newest", "last 1/1")],
            refused: false,
        },
        Case {
            name: "an empty policy still keeps the last remaining backup",
            policy: policy(0, 0, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                ok("b", "2026-11-22T02:00:00Z"),
                ok("a", "2026-11-21T02:00:00Z"),
            ],
            keep: vec!["b"],
            remove: vec!["a"],
            reasons: vec![("b", "last remaining")],
            refused: false,
        },
        Case {
            name: "failed backups are swept and running ones left alone",
            policy: policy(1, 0, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                running("now", "2026-11-23T11:00:00Z"),
                ok("good", "2026-11-23T02:00:00Z"),
                failed("broken", "2026-11-22T02:00:00Z"),
                ok("older", "2026-11-21T02:00:00Z"),
            ],
            keep: vec!["now", "good"],
            remove: vec!["broken", "older"],
            reasons: vec![("now", "running"), ("broken", "failed")],
            refused: false,
        },
        Case {
            name: "pruning is refused while the newest backup failed",
            policy: policy(1, 0, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                failed("broken", "2026-11-23T02:00:00Z"),
                ok("good", "2026-11-22T02:00:00Z"),
                ok("older", "2026-11-21T02:00:00Z"),
            ],
            keep: vec!["broken", "good", "older"],
            remove: vec![],
            reasons: vec![("older", "pruning refused")],
            refused: true,
        },
        Case {
            name: "a running backup does not hide that the newest finished one failed",
            policy: policy(1, 0, 0, 0, None),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![
                running("retry", "2026-11-23T03:00:00Z"),
                failed("broken", "2026-11-23T02:00:00Z"),
                ok("good", "2026-11-22T02:00:00Z"),
            ],
            keep: vec!["retry", "broken", "good"],
            remove: vec![],
            reasons: vec![],
            refused: true,
        },
        Case {
            name: "no backups, nothing to do",
            policy: RetentionPolicy::default(),
            tz: UTC,
            now: "2026-11-23T12:00:00Z",
            backups: vec![],
            keep: vec![],
            remove: vec![],
            reasons: vec![],
            refused: false,
        },
    ]
}

#[test]
fn retention_table() {
    for case in cases() {
        let labels: Vec<(Uuid, &str)> = case.backups.iter().map(|(l, _, _)| (id(l), *l)).collect();
        let label_of = |id: Uuid| -> &str {
            labels
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, l)| *l)
                .unwrap_or("?")
        };
        // Feed the backups shuffled (reversed) to show order does not matter.
        let candidates: Vec<Candidate> = case
            .backups
            .iter()
            .rev()
            .map(|(label, started, state)| Candidate {
                id: id(label),
                started_at: at(started),
                state: *state,
            })
            .collect();
        let result = plan(&candidates, &case.policy, case.tz, at(case.now));
        let keep: Vec<&str> = result.keep.iter().map(|d| label_of(d.id)).collect();
        let remove: Vec<&str> = result.remove.iter().map(|d| label_of(d.id)).collect();
        assert_eq!(keep, case.keep, "{}: keep ({result:#?})", case.name);
        assert_eq!(remove, case.remove, "{}: remove ({result:#?})", case.name);
        assert_eq!(
            result.refused.is_some(),
            case.refused,
            "{}: refused",
            case.name
        );
        for (label, reason) in &case.reasons {
            let decision = result
                .keep
                .iter()
                .chain(&result.remove)
                .find(|d| d.id == id(label))
                .unwrap_or_else(|| panic!("{}: {label} judged", case.name));
            assert!(
                decision.reasons.iter().any(|r| r == reason),
                "{}: {label} should carry {reason:?}, has {:?}",
                case.name,
                decision.reasons
            );
        }
        // Every backup is judged exactly once.
        assert_eq!(
            result.keep.len() + result.remove.len(),
            case.backups.len(),
            "{}",
            case.name
        );
    }
}

#[test]
fn never_delete_guarantees_hold_for_any_policy() {
    // A month of daily backups, every other one verified, the newest failed
    // or not, under a sweep of policies: the newest verified backup and at
    // least one completed backup always survive, and a failed newest backup
    // always stops pruning.
    let start = at("2026-10-01T02:00:00Z");
    for newest_failed in [false, true] {
        let mut backups: Vec<Candidate> = (0..30)
            .map(|day| Candidate {
                id: Uuid::from_u128(day as u128 + 1),
                started_at: start + chrono::TimeDelta::days(day),
                state: BackupState::Completed {
                    verified: day % 7 == 3,
                },
            })
            .collect();
        if newest_failed {
            backups.push(Candidate {
                id: Uuid::from_u128(999),
                started_at: start + chrono::TimeDelta::days(31),
                state: BackupState::Failed,
            });
        }
        let newest_verified = Uuid::from_u128(25);
        for last in [0, 1, 3] {
            for daily in [0, 2, 7] {
                for within in [None, Some("2d")] {
                    let p = policy(last, daily, 0, 0, within);
                    let result = plan(&backups, &p, TOKYO, at("2026-12-01T00:00:00Z"));
                    assert!(
                        result.keep.iter().any(|d| d.id == newest_verified),
                        "{p:?}: newest verified kept"
                    );
                    assert!(!result.keep.is_empty(), "{p:?}: something kept");
                    if newest_failed {
                        assert!(result.refused.is_some(), "{p:?}: refused");
                        assert!(result.remove.is_empty(), "{p:?}: nothing removed");
                    }
                }
            }
        }
    }
}

#[test]
fn within_parses_restic_durations() {
    let table = [
        ("7d", Some((0, 0, 7, 0))),
        ("1y6m", Some((1, 6, 0, 0))),
        ("2d12h", Some((0, 0, 2, 12))),
        ("36h", Some((0, 0, 0, 36))),
        ("", None),
        ("0d", None),
        ("7", None),
        ("d", None),
        ("7w", None),
    ];
    for (text, expected) in table {
        let parsed = text.parse::<Within>().ok();
        let parsed = parsed.map(|w| (w.years, w.months, w.days, w.hours));
        assert_eq!(parsed, expected, "{text:?}");
        if let Ok(w) = text.parse::<Within>() {
            assert_eq!(w.to_string(), text, "round trip");
        }
    }
}
