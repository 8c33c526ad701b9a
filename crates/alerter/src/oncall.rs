//! Who is on call: people, a weekly rotation of primary and secondary with a
//! hand-over day and time in a time zone, and overrides (holidays, swaps)
//! from the config. [`Schedule::on_call`] is a pure function of the instant.
//!
//! ```toml
//! [[alerter.incidents.people]]
//! name = "aiko"
//! slack = "U01AIKO"
//! discord = "4242"
//! pagerduty = "PAIKO01"
//! email = "aiko@example.com"
//!
//! [alerter.incidents.rotation]
//! time_zone = "Asia/Tokyo"
//! handover_day = "mon"
//! handover_time = "10:00"
//! start = "2026-11-30"          # a hand-over day: members[0] is primary that week
//! members = ["aiko", "ben", "chen"]
//!
//! [[alerter.incidents.overrides]]
//! person = "chen"
//! role = "primary"
//! start = "2026-12-07T00:00:00Z"
//! end = "2026-12-08T00:00:00Z"
//! ```

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Someone who can be paged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub name: String,
    /// Slack user id (mentioned as `<@id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<String>,
    /// Discord user id (mentioned as `<@id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<String>,
    /// PagerDuty user or escalation target (sent in the event's details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The weekly rotation as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// IANA name (`UTC`, `Asia/Tokyo`).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// `mon` … `sun`.
    #[serde(default = "monday")]
    pub handover_day: String,
    /// `HH:MM`, local time.
    #[serde(default = "nine")]
    pub handover_time: String,
    /// A hand-over date (local) from which `members[0]` is primary.
    pub start: NaiveDate,
    /// In order; each week's secondary is the next week's primary.
    pub members: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}
fn monday() -> String {
    "mon".into()
}
fn nine() -> String {
    "09:00".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// Someone else takes a role from `start` to `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    pub person: String,
    pub role: Role,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("incidents.{at}: unknown person {name:?} (not in incidents.people)")]
    UnknownPerson { at: String, name: String },
    #[error("incidents.people: {0:?} is listed twice")]
    DuplicatePerson(String),
    #[error("incidents.rotation.{key}: {reason}")]
    Rotation { key: &'static str, reason: String },
    #[error(
        "incidents.overrides: the {role} overrides {a_start} – {a_end} and {b_start} – {b_end} overlap"
    )]
    Overlap {
        role: &'static str,
        a_start: DateTime<Utc>,
        a_end: DateTime<Utc>,
        b_start: DateTime<Utc>,
        b_end: DateTime<Utc>,
    },
    #[error("incidents.overrides[{0}]: end must be after start")]
    EmptyOverride(usize),
}

#[derive(Debug, Clone, PartialEq)]
struct Rotation {
    tz: Tz,
    day: Weekday,
    time: NaiveTime,
    start: NaiveDate,
    members: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
struct Override {
    person: usize,
    role: Role,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

/// People, rotation and overrides, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    people: Vec<Person>,
    rotation: Option<Rotation>,
    overrides: Vec<Override>,
}

/// Who holds each role at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCall<'a> {
    pub primary: Option<&'a Person>,
    pub secondary: Option<&'a Person>,
}

/// A stretch of time with the same people on call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub primary: Option<String>,
    pub secondary: Option<String>,
}

fn weekday(value: &str) -> Option<Weekday> {
    let v = value.to_ascii_lowercase();
    let day = match v.get(..3)? {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    };
    // `mon`, `monday`, not `monkey`.
    let full = format!("{}day", &v[..3])
        .replace("tueday", "tuesday")
        .replace("wedday", "wednesday")
        .replace("thuday", "thursday")
        .replace("satday", "saturday");
    (v.len() == 3 || v == full).then_some(day)
}

/// A local wall-clock time as an instant (the earlier one when the clock
/// goes back; an hour later when it jumps over the time).
fn local_instant(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| naive.and_utc())
}

impl Schedule {
    pub fn compile(
        people: &[Person],
        rotation: Option<&RotationConfig>,
        overrides: &[OverrideConfig],
    ) -> Result<Schedule, ScheduleError> {
        let mut names = std::collections::BTreeSet::new();
        for p in people {
            if !names.insert(p.name.as_str()) {
                return Err(ScheduleError::DuplicatePerson(p.name.clone()));
            }
        }
        let find = |at: String, name: &str| {
            people
                .iter()
                .position(|p| p.name == name)
                .ok_or(ScheduleError::UnknownPerson {
                    at,
                    name: name.to_owned(),
                })
        };
        let rotation = match rotation {
            None => None,
            Some(r) => {
                let tz: Tz = r.time_zone.parse().map_err(|_| ScheduleError::Rotation {
                    key: "time_zone",
                    reason: format!("unknown time zone {:?}", r.time_zone),
                })?;
                let day = weekday(&r.handover_day).ok_or_else(|| ScheduleError::Rotation {
                    key: "handover_day",
                    reason: format!("{:?} is not a day (mon … sun)", r.handover_day),
                })?;
                let time = NaiveTime::parse_from_str(&r.handover_time, "%H:%M").map_err(|_| {
                    ScheduleError::Rotation {
                        key: "handover_time",
                        reason: format!("{:?} is not HH:MM", r.handover_time),
                    }
                })?;
                if r.start.weekday() != day {
                    return Err(ScheduleError::Rotation {
                        key: "start",
                        reason: format!(
                            "{} is a {}, not the hand-over day",
                            r.start,
                            r.start.weekday()
                        ),
                    });
                }
                if r.members.is_empty() {
                    return Err(ScheduleError::Rotation {
                        key: "members",
                        reason: "must name at least one person".into(),
                    });
                }
                let members = r
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| find(format!("rotation.members[{i}]"), m))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Rotation {
                    tz,
                    day,
                    time,
                    start: r.start,
                    members,
                })
            }
        };
        let mut compiled = Vec::new();
        for (i, o) in overrides.iter().enumerate() {
            if o.end <= o.start {
                return Err(ScheduleError::EmptyOverride(i));
            }
            compiled.push(Override {
                person: find(format!("overrides[{i}].person"), &o.person)?,
                role: o.role,
                start: o.start,
                end: o.end,
            });
        }
        for (i, a) in compiled.iter().enumerate() {
            for b in &compiled[i + 1..] {
                if a.role == b.role && a.start < b.end && b.start < a.end {
                    return Err(ScheduleError::Overlap {
                        role: a.role.as_str(),
                        a_start: a.start,
                        a_end: a.end,
                        b_start: b.start,
                        b_end: b.end,
                    });
                }
            }
        }
        Ok(Schedule {
            people: people.to_vec(),
            rotation,
            overrides: compiled,
        })
    }

    pub fn people(&self) -> &[Person] {
        &self.people
    }

    pub fn person(&self, name: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.name == name)
    }

    /// The rotation's hand-over at or before `t`, and the week's number
    /// since the start (negative before it).
    fn week_of(r: &Rotation, t: DateTime<Utc>) -> (i64, DateTime<Utc>) {
        let local = t.with_timezone(&r.tz).date_naive();
        let back = (7 + local.weekday().num_days_from_monday() as i64
            - r.day.num_days_from_monday() as i64)
            % 7;
        let mut date = local - Duration::days(back);
        let mut at = local_instant(r.tz, date, r.time);
        if at > t {
            date -= Duration::days(7);
            at = local_instant(r.tz, date, r.time);
        }
        ((date - r.start).num_days().div_euclid(7), at)
    }

    /// Who is primary and secondary at `t`: the rotation's week, then the
    /// overrides covering `t`.
    pub fn on_call(&self, t: DateTime<Utc>) -> OnCall<'_> {
        let (mut primary, mut secondary) = match &self.rotation {
            None => (None, None),
            Some(r) => {
                let (week, _) = Self::week_of(r, t);
                let n = r.members.len() as i64;
                let p = r.members[week.rem_euclid(n) as usize];
                let s = (n > 1).then(|| r.members[(week + 1).rem_euclid(n) as usize]);
                (Some(p), s)
            }
        };
        for o in &self.overrides {
            if o.start <= t && t < o.end {
                match o.role {
                    Role::Primary => primary = Some(o.person),
                    Role::Secondary => secondary = Some(o.person),
                }
            }
        }
        OnCall {
            primary: primary.map(|i| &self.people[i]),
            secondary: secondary.map(|i| &self.people[i]),
        }
    }

    /// Everyone on the chain: the rotation's members, else every person.
    pub fn everyone(&self) -> Vec<&Person> {
        match &self.rotation {
            Some(r) => r.members.iter().map(|i| &self.people[*i]).collect(),
            None => self.people.iter().collect(),
        }
    }

    /// The shifts between `from` and `to`: a new one at every hand-over and
    /// override boundary where who is on call changes.
    pub fn shifts(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Shift> {
        let mut cuts = vec![from];
        if let Some(r) = &self.rotation {
            let (_, mut at) = Self::week_of(r, from);
            let mut date = at.with_timezone(&r.tz).date_naive();
            while at < to {
                if at > from {
                    cuts.push(at);
                }
                date += Duration::days(7);
                at = local_instant(r.tz, date, r.time);
            }
        }
        for o in &self.overrides {
            for at in [o.start, o.end] {
                if from < at && at < to {
                    cuts.push(at);
                }
            }
        }
        cuts.sort();
        cuts.dedup();
        let name = |p: Option<&Person>| p.map(|p| p.name.clone());
        let mut shifts: Vec<Shift> = Vec::new();
        for (i, start) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).copied().unwrap_or(to);
            let who = self.on_call(*start);
            let (primary, secondary) = (name(who.primary), name(who.secondary));
            match shifts.last_mut() {
                Some(last) if last.primary == primary && last.secondary == secondary => {
                    last.end = end;
                }
                _ => shifts.push(Shift {
                    start: *start,
                    end,
                    primary,
                    secondary,
                }),
            }
        }
        shifts
    }

    /// The rotation's time zone (UTC without a rotation): the one dates of
    /// [`Schedule::days`] are in.
    pub fn time_zone(&self) -> Tz {
        self.rotation.as_ref().map_or(Tz::UTC, |r| r.tz)
    }

    /// The shifts of `days` local days from `from` (in
    /// [`Schedule::time_zone`]), and who is on call during each day.
    pub fn days(&self, from: NaiveDate, days: u32) -> (Vec<Shift>, Vec<Day>) {
        let tz = self.time_zone();
        let midnight = NaiveTime::MIN;
        let start = local_instant(tz, from, midnight);
        let end = local_instant(tz, from + Duration::days(i64::from(days)), midnight);
        let shifts = self.shifts(start, end);
        let days = (0..i64::from(days))
            .map(|i| {
                let date = from + Duration::days(i);
                let (day_start, day_end) = (
                    local_instant(tz, date, midnight),
                    local_instant(tz, date + Duration::days(1), midnight),
                );
                let mut day = Day {
                    date,
                    primary: Vec::new(),
                    secondary: Vec::new(),
                };
                for shift in &shifts {
                    if shift.start < day_end && day_start < shift.end {
                        push_new(&mut day.primary, &shift.primary);
                        push_new(&mut day.secondary, &shift.secondary);
                    }
                }
                day
            })
            .collect();
        (shifts, days)
    }
}

/// Who is on call during one local day, in order of their shifts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub primary: Vec<String>,
    pub secondary: Vec<String>,
}

fn push_new(names: &mut Vec<String>, name: &Option<String>) {
    if let Some(name) = name
        && names.last() != Some(name)
    {
        names.push(name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> Person {
        Person {
            name: name.into(),
            slack: Some(format!("U_{}", name.to_uppercase())),
            discord: None,
            pagerduty: None,
            email: None,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("instant").to_utc()
    }

    fn rotation(tz: &str, day: &str, time: &str, start: &str) -> RotationConfig {
        RotationConfig {
            time_zone: tz.into(),
            handover_day: day.into(),
            handover_time: time.into(),
            start: start.parse().expect("date"),
            members: vec!["aiko".into(), "ben".into(), "chen".into()],
        }
    }

    fn people() -> Vec<Person> {
        vec![
            person("aiko"),
            person("ben"),
            person("chen"),
            person("dana"),
        ]
    }

    fn who(s: &Schedule, t: &str) -> (String, String) {
        let w = s.on_call(at(t));
        (
            w.primary.map(|p| p.name.clone()).unwrap_or_default(),
            w.secondary.map(|p| p.name.clone()).unwrap_or_default(),
        )
    }

    fn pair(p: &str, s: &str) -> (String, String) {
        (p.into(), s.into())
    }

    #[test]
    fn hand_over_in_tokyo_at_the_local_time() {
        // Monday 10:00 in Tokyo is Monday 01:00 UTC.
        let r = rotation("Asia/Tokyo", "mon", "10:00", "2026-11-30");
        let s = Schedule::compile(&people(), Some(&r), &[]).expect("compile");
        assert_eq!(who(&s, "2026-11-30T01:00:00Z"), pair("aiko", "ben"));
        assert_eq!(who(&s, "2026-12-07T00:59:59Z"), pair("aiko", "ben"));
        assert_eq!(who(&s, "2026-12-07T01:00:00Z"), pair("ben", "chen"));
        assert_eq!(who(&s, "2026-12-14T01:00:00Z"), pair("chen", "aiko"));
        assert_eq!(who(&s, "2026-12-21T01:00:00Z"), pair("aiko", "ben"));
        // Before the start, the rotation runs backwards.
        assert_eq!(who(&s, "2026-11-30T00:59:59Z"), pair("chen", "aiko"));
    }

    #[test]
    fn hand_over_in_utc_with_an_override_across_it() {
        let r = rotation("UTC", "monday", "09:00", "2026-11-30");
        let overrides = [OverrideConfig {
            person: "dana".into(),
            role: Role::Primary,
            start: at("2026-12-06T18:00:00Z"),
            end: at("2026-12-07T12:00:00Z"),
            reason: Some("swap".into()),
        }];
        let s = Schedule::compile(&people(), Some(&r), &overrides).expect("compile");
        assert_eq!(who(&s, "2026-12-06T17:59:59Z"), pair("aiko", "ben"));
        assert_eq!(who(&s, "2026-12-06T18:00:00Z"), pair("dana", "ben"));
        // The hand-over happens underneath: the secondary changes, the
        // override keeps the primary.
        assert_eq!(who(&s, "2026-12-07T09:00:00Z"), pair("dana", "chen"));
        assert_eq!(who(&s, "2026-12-07T12:00:00Z"), pair("ben", "chen"));
        let week = s.shifts(at("2026-12-06T00:00:00Z"), at("2026-12-13T00:00:00Z"));
        let summary: Vec<(String, String, String)> = week
            .iter()
            .map(|w| {
                (
                    w.start.to_rfc3339(),
                    w.primary.clone().unwrap_or_default(),
                    w.secondary.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "2026-12-06T00:00:00+00:00".into(),
                    "aiko".into(),
                    "ben".into()
                ),
                (
                    "2026-12-06T18:00:00+00:00".into(),
                    "dana".into(),
                    "ben".into()
                ),
                (
                    "2026-12-07T09:00:00+00:00".into(),
                    "dana".into(),
                    "chen".into()
                ),
                (
                    "2026-12-07T12:00:00+00:00".into(),
                    "ben".into(),
                    "chen".into()
                ),
            ]
        );
        assert_eq!(week.last().map(|w| w.end), Some(at("2026-12-13T00:00:00Z")));
    }

    #[test]
    fn days_list_who_is_on_call_each_local_day() {
        // Hand-over Monday 10:00 Tokyo (01:00 UTC); dana takes the primary
        // role across Wednesday's local midnight (21:00 to 03:00 Tokyo).
        let r = rotation("Asia/Tokyo", "mon", "10:00", "2026-11-30");
        let overrides = [OverrideConfig {
            person: "dana".into(),
            role: Role::Primary,
            start: at("2026-12-08T12:00:00Z"),
            end: at("2026-12-08T18:00:00Z"),
            reason: None,
        }];
        let s = Schedule::compile(&people(), Some(&r), &overrides).expect("compile");
        assert_eq!(s.time_zone(), chrono_tz::Asia::Tokyo);
        let (shifts, days) = s.days("2026-12-06".parse().expect("date"), 4);
        // From Sunday 00:00 Tokyo (Saturday 15:00 UTC) for four days.
        assert_eq!(
            shifts.first().map(|w| w.start),
            Some(at("2026-12-05T15:00:00Z"))
        );
        assert_eq!(
            shifts.last().map(|w| w.end),
            Some(at("2026-12-09T15:00:00Z"))
        );
        let summary: Vec<(String, Vec<String>, Vec<String>)> = days
            .iter()
            .map(|d| (d.date.to_string(), d.primary.clone(), d.secondary.clone()))
            .collect();
        let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                ("2026-12-06".into(), names(&["aiko"]), names(&["ben"])),
                (
                    "2026-12-07".into(),
                    names(&["aiko", "ben"]),
                    names(&["ben", "chen"])
                ),
                (
                    "2026-12-08".into(),
                    names(&["ben", "dana"]),
                    names(&["chen"])
                ),
                (
                    "2026-12-09".into(),
                    names(&["dana", "ben"]),
                    names(&["chen"])
                ),
            ]
        );
        // Without a rotation: UTC and nobody.
        let empty = Schedule::compile(&people(), None, &[]).expect("compile");
        assert_eq!(empty.time_zone(), Tz::UTC);
        let (_, days) = empty.days("2026-12-06".parse().expect("date"), 1);
        assert!(days[0].primary.is_empty() && days[0].secondary.is_empty());
    }

    #[test]
    fn bad_schedules_are_refused_naming_what_is_wrong() {
        let mut r = rotation("UTC", "mon", "09:00", "2026-11-30");
        r.members.push("erin".into());
        let err = Schedule::compile(&people(), Some(&r), &[]).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "incidents.rotation.members[3]: unknown person \"erin\" (not in incidents.people)"
        );
        let o = |start: &str, end: &str| OverrideConfig {
            person: "dana".into(),
            role: Role::Secondary,
            start: at(start),
            end: at(end),
            reason: None,
        };
        let err = Schedule::compile(
            &people(),
            None,
            &[
                o("2026-12-01T00:00:00Z", "2026-12-03T00:00:00Z"),
                o("2026-12-02T00:00:00Z", "2026-12-04T00:00:00Z"),
            ],
        )
        .expect_err("overlap");
        let text = err.to_string();
        assert!(
            text.contains("2026-12-01 00:00:00 UTC – 2026-12-03 00:00:00 UTC")
                && text.contains("2026-12-02 00:00:00 UTC – 2026-12-04 00:00:00 UTC"),
            "{text}"
        );
        // Back to back is not an overlap; different roles never clash.
        Schedule::compile(
            &people(),
            None,
            &[
                o("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"),
                o("2026-12-02T00:00:00Z", "2026-12-04T00:00:00Z"),
            ],
        )
        .expect("adjacent");
        let mut ghost = o("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z");
        ghost.person = "zed".into();
        assert!(
            Schedule::compile(&people(), None, &[ghost])
                .expect_err("ghost")
                .to_string()
                .contains("\"zed\"")
        );
        let wrong_day = rotation("UTC", "tue", "09:00", "2026-11-30");
        assert!(Schedule::compile(&people(), Some(&wrong_day), &[]).is_err());
        let bad_tz = rotation("Mars/Olympus", "mon", "09:00", "2026-11-30");
        assert!(
            Schedule::compile(&people(), Some(&bad_tz), &[])
                .expect_err("tz")
                .to_string()
                .contains("Mars/Olympus")
        );
    }
}
