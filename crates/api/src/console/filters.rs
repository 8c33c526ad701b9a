//! The console's list filters: query strings as the forms send them, parsed
//! into the workflow's filters. A bad value names its field (the page says
//! which one) rather than being ignored.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use opsloop_core::domain::status::{MissionStatus, ProposalStatus};
use opsloop_core::workflow::{EventFilter, MissionFilter, ProposalFilter};
use serde::Deserialize;

/// Rows a list page shows.
pub const PAGE_ROWS: u64 = 100;

/// A filter value the page cannot use: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "filter {}: {}", self.field, self.message)
    }
}

fn some(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time as a form gives it: RFC 3339, `YYYY-MM-DDTHH:MM[:SS]` (a
/// `datetime-local` input, read as UTC) or a date `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, FilterError> {
    let value = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(FilterError {
        field,
        message: format!(
            "{value:?} is not a time; give 2026-12-07, 2026-12-07T09:30 (UTC) or RFC 3339"
        ),
    })
}

fn time(field: &'static str, value: &Option<String>) -> Result<Option<DateTime<Utc>>, FilterError> {
    some(value).map(|v| parse_time(field, v)).transpose()
}

fn order(after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>) -> Result<(), FilterError> {
    match (after, before) {
        (Some(a), Some(b)) if a >= b => Err(FilterError {
            field: "before",
            message: "must be later than `after`".into(),
        }),
        _ => Ok(()),
    }
}

/// `/console/proposals?status=&source=&agent=&kind=&after=&before=`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ProposalQuery {
    pub status: Option<String>,
    pub source: Option<String>,
    pub agent: Option<String>,
    pub kind: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
}

/// The sources a proposal may have.
pub const SOURCES: [&str; 4] = ["api", "trigger", "reaction", "manual"];

impl ProposalQuery {
    /// The workflow filter, and the step kind to keep (proposals hold their
    /// steps as JSON, so the page filters by kind itself).
    pub fn parse(&self) -> Result<(ProposalFilter, Option<String>), FilterError> {
        let status = some(&self.status)
            .map(|s| {
                s.parse::<ProposalStatus>().map_err(|_| FilterError {
                    field: "status",
                    message: format!(
                        "{s:?} is not a status; give pending, approved, rejected or expired"
                    ),
                })
            })
            .transpose()?;
        let source = some(&self.source)
            .map(|s| {
                if SOURCES.contains(&s) {
                    Ok(s.to_owned())
                } else {
                    Err(FilterError {
                        field: "source",
                        message: format!("{s:?} is not a source; give {}", SOURCES.join(", ")),
                    })
                }
            })
            .transpose()?;
        let created_after = time("after", &self.after)?;
        let created_before = time("before", &self.before)?;
        order(created_after, created_before)?;
        Ok((
            ProposalFilter {
                status,
                source,
                agent: some(&self.agent).map(str::to_owned),
                created_after,
                created_before,
                after: None,
                limit: PAGE_ROWS,
            },
            some(&self.kind).map(str::to_owned),
        ))
    }
}

/// `/console/missions?status=&after=&before=`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct MissionQuery {
    pub status: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
}

impl MissionQuery {
    pub fn parse(&self) -> Result<MissionFilter, FilterError> {
        let status = some(&self.status)
            .map(|s| {
                s.parse::<MissionStatus>().map_err(|_| FilterError {
                    field: "status",
                    message: format!(
                        "{s:?} is not a status; give running, succeeded, failed or cancelled"
                    ),
                })
            })
            .transpose()?;
        let created_after = time("after", &self.after)?;
        let created_before = time("before", &self.before)?;
        order(created_after, created_before)?;
        Ok(MissionFilter {
            status,
            proposal_id: None,
            created_after,
            created_before,
            after: None,
            limit: PAGE_ROWS,
        })
    }
}

/// `/console/events?kind=&source=` and its stream (`after`: the seq to
/// continue after; a `Last-Event-ID` header wins over it).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct EventQuery {
    pub kind: Option<String>,
    pub source: Option<String>,
    pub after: Option<String>,
}

impl EventQuery {
    pub fn parse(&self, last_event_id: Option<&str>) -> Result<EventFilter, FilterError> {
        let kind_pattern = some(&self.kind).map(str::to_owned);
        if let Some(pattern) = &kind_pattern {
            opsloop_core::workflow::events::glob_to_like(pattern).map_err(|e| FilterError {
                field: "kind",
                message: e.to_string(),
            })?;
        }
        let resume = last_event_id
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| ("Last-Event-ID", v))
            .or_else(|| some(&self.after).map(|v| ("after", v)));
        let after_seq = resume
            .map(|(field, v)| {
                v.parse::<i64>()
                    .ok()
                    .filter(|s| *s >= 0)
                    .ok_or_else(|| FilterError {
                        field: if field == "after" {
                            "after"
                        } else {
                            "Last-Event-ID"
                        },
                        message: format!("{v:?} is not an event seq (a whole number)"),
                    })
            })
            .transpose()?;
        Ok(EventFilter {
            kind_pattern,
            after_seq,
            since: None,
            source: some(&self.source).map(str::to_owned),
            mission_id: None,
            limit: PAGE_ROWS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn times() {
        let want = DateTime::parse_from_rfc3339("2026-12-07T09:30:00Z")
            .expect("time")
            .with_timezone(&Utc);
        for v in [
            "2026-12-07T09:30:00Z",
            "2026-12-07T10:30:00+01:00",
            "2026-12-07T09:30",
            "2026-12-07 09:30",
            " 2026-12-07T09:30:00 ",
        ] {
            assert_eq!(parse_time("after", v), Ok(want), "{v}");
        }
        assert_eq!(
            parse_time("after", "2026-12-07").map(|t| t.to_rfc3339()),
            Ok("2026-12-07T00:00:00+00:00".to_owned())
        );
        let err = parse_time("before", "yesterday").expect_err("bad");
        assert_eq!(err.field, "before");
        assert!(err.to_string().contains("filter before"));
    }

    #[test]
    fn proposal_filters() {
        let (filter, kind) = ProposalQuery {
            status: s("pending"),
            source: s("trigger"),
            agent: s(" bot "),
            kind: s("deploy"),
            after: s("2026-12-01"),
            before: s(""),
        }
        .parse()
        .expect("valid");
        assert_eq!(filter.status, Some(ProposalStatus::Pending));
        assert_eq!(filter.source.as_deref(), Some("trigger"));
        assert_eq!(filter.agent.as_deref(), Some("bot"));
        assert!(filter.created_after.is_some() && filter.created_before.is_none());
        assert_eq!(kind.as_deref(), Some("deploy"));
        assert_eq!(filter.limit, PAGE_ROWS);
        let field = |q: ProposalQuery| q.parse().expect_err("invalid").field;
        assert_eq!(
            field(ProposalQuery {
                status: s("done"),
                ..Default::default()
            }),
            "status"
        );
        assert_eq!(
            field(ProposalQuery {
                source: s("cron"),
                ..Default::default()
            }),
            "source"
        );
        assert_eq!(
            field(ProposalQuery {
                after: s("soon"),
                ..Default::default()
            }),
            "after"
        );
        assert_eq!(
            field(ProposalQuery {
                after: s("2026-12-02"),
                before: s("2026-12-01"),
                ..Default::default()
            }),
            "before"
        );
        assert_eq!(
            ProposalQuery::default().parse().expect("empty").0.status,
            None
        );
    }

    #[test]
    fn mission_filters() {
        let filter = MissionQuery {
            status: s("running"),
            after: None,
            before: s("2026-12-07T00:00"),
        }
        .parse()
        .expect("valid");
        assert_eq!(filter.status, Some(MissionStatus::Running));
        assert!(filter.created_before.is_some());
        let err = MissionQuery {
            status: s("lost"),
            ..Default::default()
        }
        .parse()
        .expect_err("bad");
        assert_eq!(err.field, "status");
        let err = MissionQuery {
            before: s("13/12"),
            ..Default::default()
        }
        .parse()
        .expect_err("bad");
        assert_eq!(err.field, "before");
    }

    #[test]
    fn event_filters_resume_from_the_last_event_id() {
        let q = EventQuery {
            kind: s("mission.*"),
            source: s("api"),
            after: s("10"),
        };
        assert_eq!(q.parse(None).expect("valid").after_seq, Some(10));
        let resumed = q.parse(Some("42")).expect("valid");
        assert_eq!(resumed.after_seq, Some(42), "Last-Event-ID wins");
        assert_eq!(resumed.kind_pattern.as_deref(), Some("mission.*"));
        assert_eq!(resumed.source.as_deref(), Some("api"));
        assert_eq!(q.parse(Some("x")).expect_err("bad").field, "Last-Event-ID");
        let bad_after = EventQuery {
            after: s("-1"),
            ..Default::default()
        };
        assert_eq!(bad_after.parse(None).expect_err("bad").field, "after");
        let bad_kind = EventQuery {
            kind: s(&"x".repeat(200)),
            ..Default::default()
        };
        assert_eq!(bad_kind.parse(None).expect_err("bad").field, "kind");
        assert_eq!(
            EventQuery::default().parse(None).expect("empty").after_seq,
            None
        );
    }
}
