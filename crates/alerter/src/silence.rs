//! Silences: matchers plus a time window, an author and a comment. A silence
//! mutes the alerts whose labels satisfy all its matchers while it is active;
//! its state (pending, active, expired) follows from the clock alone, so
//! expiry needs no job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::matchers::{self, ApiMatcher, Matcher, MatcherError};
use crate::model::LabelSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SilenceError {
    #[error("matchers: at least one matcher is required")]
    NoMatchers,
    #[error("matchers: at least one matcher must not match the empty string")]
    MatchesEverything,
    #[error("matchers: {0}")]
    Matcher(#[from] MatcherError),
    #[error("endsAt: must be after startsAt")]
    EndsBeforeStarts,
    #[error("endsAt: must be in the future")]
    EndsInPast,
    #[error("createdBy: required")]
    NoAuthor,
    #[error("comment: required")]
    NoComment,
    #[error("{field}: longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub id: Uuid,
    pub matchers: Vec<Matcher>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: String,
    pub comment: String,
    pub updated_at: DateTime<Utc>,
}

impl Silence {
    pub fn state(&self, now: DateTime<Utc>) -> SilenceState {
        if now < self.starts_at {
            SilenceState::Pending
        } else if now < self.ends_at {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }

    pub fn mutes(&self, labels: &LabelSet, now: DateTime<Utc>) -> bool {
        self.state(now) == SilenceState::Active && matchers::matches_all(&self.matchers, labels)
    }

    /// Ends the silence now (a pending one ends before it starts).
    pub fn expire(&mut self, now: DateTime<Utc>) {
        if now < self.starts_at {
            self.starts_at = now;
        }
        self.ends_at = now;
        self.updated_at = now;
    }
}

/// A silence in Alertmanager v2 JSON (`PostableSilence`, and with `status`
/// and `updatedAt` the `GettableSilence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiSilence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub matchers: Vec<ApiMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: DateTime<Utc>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ApiSilenceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiSilenceStatus {
    pub state: SilenceState,
}

impl ApiSilence {
    pub fn from_silence(s: &Silence, now: DateTime<Utc>) -> Self {
        Self {
            id: Some(s.id.to_string()),
            matchers: s.matchers.iter().map(ApiMatcher::from).collect(),
            starts_at: Some(s.starts_at),
            ends_at: s.ends_at,
            created_by: s.created_by.clone(),
            comment: s.comment.clone(),
            status: Some(ApiSilenceStatus {
                state: s.state(now),
            }),
            updated_at: Some(s.updated_at),
        }
    }
}

/// A validated request to create (or replace) a silence.
#[derive(Debug, Clone)]
pub struct NewSilence {
    pub matchers: Vec<Matcher>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: DateTime<Utc>,
    pub created_by: String,
    pub comment: String,
}

const MAX_MATCHERS: usize = 32;
const MAX_TEXT: usize = 1024;

impl NewSilence {
    pub fn from_api(api: &ApiSilence) -> Result<Self, SilenceError> {
        let matchers = api
            .matchers
            .iter()
            .map(Matcher::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            matchers,
            starts_at: api.starts_at,
            ends_at: api.ends_at,
            created_by: api.created_by.clone(),
            comment: api.comment.clone(),
        })
    }

    /// Checks the request (as Alertmanager does) and builds the silence.
    pub fn into_silence(self, id: Uuid, now: DateTime<Utc>) -> Result<Silence, SilenceError> {
        if self.matchers.is_empty() {
            return Err(SilenceError::NoMatchers);
        }
        if self.matchers.len() > MAX_MATCHERS {
            return Err(SilenceError::TooLong {
                field: "matchers",
                max: MAX_MATCHERS,
            });
        }
        if self.matchers.iter().all(|m| m.matches_value("")) {
            return Err(SilenceError::MatchesEverything);
        }
        if self.created_by.trim().is_empty() {
            return Err(SilenceError::NoAuthor);
        }
        if self.comment.trim().is_empty() {
            return Err(SilenceError::NoComment);
        }
        if self.created_by.chars().count() > MAX_TEXT {
            return Err(SilenceError::TooLong {
                field: "createdBy",
                max: MAX_TEXT,
            });
        }
        if self.comment.chars().count() > MAX_TEXT {
            return Err(SilenceError::TooLong {
                field: "comment",
                max: MAX_TEXT,
            });
        }
        let starts_at = self.starts_at.unwrap_or(now).max(now);
        if self.ends_at <= now {
            return Err(SilenceError::EndsInPast);
        }
        if self.ends_at <= starts_at {
            return Err(SilenceError::EndsBeforeStarts);
        }
        Ok(Silence {
            id,
            matchers: self.matchers,
            starts_at,
            ends_at: self.ends_at,
            created_by: self.created_by,
            comment: self.comment,
            updated_at: now,
        })
    }
}

/// The ids of the silences in `silences` muting `labels` now.
pub fn silenced_by<'a>(
    silences: impl IntoIterator<Item = &'a Silence>,
    labels: &LabelSet,
    now: DateTime<Utc>,
) -> Vec<Uuid> {
    silences
        .into_iter()
        .filter(|s| s.mutes(labels, now))
        .map(|s| s.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{at, labels};

    fn new(matchers: &[&str], starts: Option<i64>, ends: i64) -> NewSilence {
        NewSilence {
            matchers: matchers
                .iter()
                .map(|m| Matcher::parse(m).expect("m"))
                .collect(),
            starts_at: starts.map(at),
            ends_at: at(ends),
            created_by: "ops".into(),
            comment: "maintenance".into(),
        }
    }

    #[test]
    fn a_silence_mutes_while_active_and_its_expiry_unmutes() {
        let silence = new(&["service=db"], Some(100), 200)
            .into_silence(Uuid::nil(), at(0))
            .expect("valid");
        let db = labels(&[("alertname", "Down"), ("service", "db")]);
        let api = labels(&[("alertname", "Down"), ("service", "api")]);
        let table = [
            (50, &db, SilenceState::Pending, false),
            (100, &db, SilenceState::Active, true),
            (150, &api, SilenceState::Active, false),
            (199, &db, SilenceState::Active, true),
            (200, &db, SilenceState::Expired, false),
        ];
        for (t, set, state, muted) in table {
            assert_eq!(silence.state(at(t)), state, "t={t}");
            assert_eq!(silence.mutes(set, at(t)), muted, "t={t}");
        }
        let mut expired = silence.clone();
        expired.expire(at(150));
        assert!(!expired.mutes(&db, at(150)));
        assert_eq!(
            silenced_by([&silence, &expired], &db, at(150)),
            vec![Uuid::nil()]
        );
    }

    #[test]
    fn invalid_silences_are_refused() {
        let now = at(0);
        let mut anonymous = new(&["a=b"], None, 10);
        anonymous.created_by = " ".into();
        let mut uncommented = new(&["a=b"], None, 10);
        uncommented.comment = String::new();
        let table = [
            (new(&[], None, 10), SilenceError::NoMatchers),
            (new(&["a=~.*"], None, 10), SilenceError::MatchesEverything),
            (new(&["a=b"], None, -1), SilenceError::EndsInPast),
            (new(&["a=b"], Some(20), 10), SilenceError::EndsBeforeStarts),
            (anonymous, SilenceError::NoAuthor),
            (uncommented, SilenceError::NoComment),
        ];
        for (input, expected) in table {
            assert_eq!(input.into_silence(Uuid::nil(), now), Err(expected));
        }
        let past_start = new(&["a=b"], Some(-50), 10)
            .into_silence(Uuid::nil(), now)
            .expect("valid");
        assert_eq!(past_start.starts_at, now, "a start in the past becomes now");
    }

    #[test]
    fn api_shape() {
        let body = r#"{"matchers":[{"name":"service","value":"db","isRegex":false,"isEqual":true}],
            "startsAt":"2026-11-23T10:00:00Z","endsAt":"2026-11-23T12:00:00Z",
            "createdBy":"ops","comment":"upgrade"}"#;
        let api: ApiSilence = serde_json::from_str(body).expect("json");
        let silence = NewSilence::from_api(&api)
            .expect("matchers")
            .into_silence(Uuid::nil(), api.starts_at.expect("start"))
            .expect("valid");
        let back = serde_json::to_value(ApiSilence::from_silence(&silence, silence.starts_at))
            .expect("json");
        assert_eq!(back["status"]["state"], "active");
        assert_eq!(back["createdBy"], "ops");
        assert_eq!(back["matchers"][0]["isEqual"], true);
        assert_eq!(back["id"], Uuid::nil().to_string());
    }
}
