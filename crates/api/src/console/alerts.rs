//! The console's alerts and silences, read from and written to the
//! alerter through its Alertmanager v2 HTTP API (`/api/v2/alerts`,
//! `/api/v2/silences`, `/api/v2/silence/{id}`) — the api keeps no copy. The
//! alerter's address is `[api.console] alerter_url` (else the status page's
//! alerter URL); its bearer token the `console_alerter_token` secret (the
//! `admin` role, to create and expire silences).

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use opsloop_core::domain::ValidationError;
use serde::Deserialize;
use serde_json::json;

/// How long one call to the alerter may take.
const TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// Longest silence the console creates, in hours (30 days).
pub const MAX_HOURS: i64 = 720;

/// One alert as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    /// `active`, `suppressed` or `unprocessed`.
    pub state: String,
    pub starts_at: String,
    pub silenced_by: Vec<String>,
}

/// One silence as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceRow {
    pub id: String,
    /// `name=value`, `name=~regex`, `name!=value`, `name!~regex`.
    pub matchers: Vec<String>,
    pub starts_at: String,
    pub ends_at: String,
    pub created_by: String,
    pub comment: String,
    /// `active`, `pending` or `expired`.
    pub state: String,
}

/// Why a call to the alerter failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlerterError {
    #[error("the alerter is not configured for the console: set [api.console] alerter_url")]
    NotConfigured,
    #[error("the alerter at {0} is not reachable: {1}")]
    Unreachable(String, String),
    #[error("silence {0} not found at the alerter")]
    NotFound(String),
    #[error("the alerter refused: {0}")]
    Refused(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiAlert {
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    status: ApiAlertStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiAlertStatus {
    #[serde(default)]
    state: String,
    #[serde(default)]
    silenced_by: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiSilence {
    #[serde(default)]
    id: String,
    #[serde(default)]
    matchers: Vec<ApiMatcher>,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    status: ApiSilenceStatus,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiMatcher {
    name: String,
    value: String,
    #[serde(default)]
    is_regex: bool,
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
struct ApiSilenceStatus {
    #[serde(default)]
    state: String,
}

/// Parses `GET /api/v2/alerts`.
pub fn parse_alerts(body: &str) -> Result<Vec<AlertRow>, String> {
    let alerts: Vec<ApiAlert> = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(alerts
        .into_iter()
        .map(|a| AlertRow {
            fingerprint: a.fingerprint,
            summary: a
                .annotations
                .get("summary")
                .or_else(|| a.annotations.get("description"))
                .cloned()
                .unwrap_or_default(),
            labels: a.labels,
            state: a.status.state,
            starts_at: a.starts_at,
            silenced_by: a.status.silenced_by,
        })
        .collect())
}

/// Parses `GET /api/v2/silences`: active first, then pending, then the
/// expired, each newest end first.
pub fn parse_silences(body: &str) -> Result<Vec<SilenceRow>, String> {
    let silences: Vec<ApiSilence> = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let mut rows: Vec<SilenceRow> = silences
        .into_iter()
        .map(|s| SilenceRow {
            id: s.id,
            matchers: s
                .matchers
                .iter()
                .map(|m| {
                    let op = match (m.is_equal, m.is_regex) {
                        (true, false) => "=",
                        (true, true) => "=~",
                        (false, false) => "!=",
                        (false, true) => "!~",
                    };
                    format!("{}{op}{}", m.name, m.value)
                })
                .collect(),
            starts_at: s.starts_at,
            ends_at: s.ends_at,
            created_by: s.created_by,
            comment: s.comment,
            state: s.status.state,
        })
        .collect();
    let rank = |state: &str| match state {
        "active" => 0,
        "pending" => 1,
        _ => 2,
    };
    rows.sort_by(|a, b| {
        rank(&a.state)
            .cmp(&rank(&b.state))
            .then_with(|| b.ends_at.cmp(&a.ends_at))
    });
    Ok(rows)
}

/// What a silence form asks for, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SilenceRequest {
    /// Equality matchers: the alert's labels.
    pub matchers: Vec<(String, String)>,
    pub hours: i64,
    pub comment: String,
}

/// A silence form's fields: one `label:<name>` per label of the alert,
/// `hours`, `comment` (and `csrf`, checked by the caller).
pub fn silence_request(fields: &[(String, String)]) -> Result<SilenceRequest, ValidationError> {
    let mut matchers = Vec::new();
    let mut hours = None;
    let mut comment = String::new();
    for (key, value) in fields {
        if let Some(name) = key.strip_prefix("label:") {
            if name.is_empty() || name.len() > 128 || value.len() > 1024 {
                return Err(ValidationError::new(
                    "labels",
                    "a label is empty or too long",
                ));
            }
            matchers.push((name.to_owned(), value.clone()));
        } else if key == "hours" {
            hours = Some(
                value
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|h| (1..=MAX_HOURS).contains(h))
                    .ok_or_else(|| {
                        ValidationError::new("hours", format!("give 1 to {MAX_HOURS} hours"))
                    })?,
            );
        } else if key == "comment" {
            comment = value.trim().to_owned();
        }
    }
    if matchers.is_empty() {
        return Err(ValidationError::new(
            "labels",
            "a silence needs at least one label of the alert",
        ));
    }
    if comment.is_empty() || comment.chars().count() > 1000 {
        return Err(ValidationError::new(
            "comment",
            "say why (1 to 1000 characters)",
        ));
    }
    Ok(SilenceRequest {
        matchers,
        hours: hours.unwrap_or(2),
        comment,
    })
}

/// The `POST /api/v2/silences` body of a request by `created_by` at `now`.
pub fn silence_body(
    request: &SilenceRequest,
    created_by: &str,
    now: DateTime<Utc>,
) -> serde_json::Value {
    json!({
        "matchers": request.matchers.iter().map(|(name, value)| json!({
            "name": name, "value": value, "isRegex": false, "isEqual": true,
        })).collect::<Vec<_>>(),
        "startsAt": now,
        "endsAt": now + Duration::hours(request.hours),
        "createdBy": created_by,
        "comment": request.comment,
    })
}

/// The alerter's Alertmanager API as the console calls it.
#[derive(Debug, Clone)]
pub struct AlerterClient {
    http: reqwest::Client,
    base: Option<String>,
    token: Option<String>,
}

impl AlerterClient {
    /// `base`: `http(s)://host:port` of the alerter (`None`: the console
    /// has no alerts page); `token`: bearer token for it.
    pub fn new(http: reqwest::Client, base: Option<String>, token: Option<String>) -> Self {
        Self {
            http,
            base: base.map(|b| b.trim_end_matches('/').to_owned()),
            token: token.filter(|t| !t.trim().is_empty()),
        }
    }

    /// Whether an alerter is configured.
    pub fn configured(&self) -> bool {
        self.base.is_some()
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<(String, reqwest::RequestBuilder), AlerterError> {
        let base = self.base.as_ref().ok_or(AlerterError::NotConfigured)?;
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .timeout(TIMEOUT);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Ok((base.clone(), request))
    }

    async fn send(
        &self,
        base: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), AlerterError> {
        let response = request
            .send()
            .await
            .map_err(|e| AlerterError::Unreachable(base.to_owned(), e.to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| AlerterError::Unreachable(base.to_owned(), e.to_string()))?;
        Ok((status, body))
    }

    async fn get(&self, path: &str) -> Result<String, AlerterError> {
        let (base, request) = self.request(reqwest::Method::GET, path)?;
        match self.send(&base, request).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(AlerterError::Refused(format!("{status}: {body}"))),
        }
    }

    /// The alerts, newest first.
    pub async fn alerts(&self) -> Result<Vec<AlertRow>, AlerterError> {
        let body = self.get("/api/v2/alerts").await?;
        parse_alerts(&body).map_err(AlerterError::Refused)
    }

    /// The silences.
    pub async fn silences(&self) -> Result<Vec<SilenceRow>, AlerterError> {
        let body = self.get("/api/v2/silences").await?;
        parse_silences(&body).map_err(AlerterError::Refused)
    }

    /// Creates a silence; returns its id.
    pub async fn create_silence(&self, body: &serde_json::Value) -> Result<String, AlerterError> {
        let (base, request) = self.request(reqwest::Method::POST, "/api/v2/silences")?;
        let (status, text) = self.send(&base, request.json(body)).await?;
        if !status.is_success() {
            return Err(AlerterError::Refused(format!("{status}: {text}")));
        }
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| AlerterError::Refused(e.to_string()))?;
        Ok(value["silenceID"].as_str().unwrap_or_default().to_owned())
    }

    /// Expires the silence `id`.
    pub async fn expire_silence(&self, id: &str) -> Result<(), AlerterError> {
        let (base, request) =
            self.request(reqwest::Method::DELETE, &format!("/api/v2/silence/{id}"))?;
        match self.send(&base, request).await? {
            (status, _) if status.is_success() => Ok(()),
            (reqwest::StatusCode::NOT_FOUND, _) => Err(AlerterError::NotFound(id.to_owned())),
            (status, body) => Err(AlerterError::Refused(format!("{status}: {body}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn alerts_and_silences_parse() {
        let alerts = parse_alerts(
            r#"[{"fingerprint":"f1","labels":{"alertname":"Down","job":"web"},
                "annotations":{"summary":"web is down"},"startsAt":"2026-12-07T10:00:00Z",
                "status":{"state":"suppressed","silencedBy":["s1"],"inhibitedBy":[]}}]"#,
        )
        .expect("alerts");
        assert_eq!(alerts[0].labels["alertname"], "Down");
        assert_eq!(alerts[0].summary, "web is down");
        assert_eq!(alerts[0].silenced_by, vec!["s1".to_owned()]);
        assert!(parse_alerts("{").is_err());
        let silences = parse_silences(
            r#"[{"id":"old","matchers":[{"name":"job","value":"web","isRegex":false,"isEqual":true}],
                 "endsAt":"2026-12-01T00:00:00Z","createdBy":"a","comment":"c","status":{"state":"expired"}},
                {"id":"now","matchers":[{"name":"job","value":"w.*","isRegex":true,"isEqual":false}],
                 "endsAt":"2026-12-08T00:00:00Z","createdBy":"b","comment":"d","status":{"state":"active"}}]"#,
        )
        .expect("silences");
        assert_eq!(silences[0].id, "now", "active first");
        assert_eq!(silences[0].matchers, vec!["job!~w.*".to_owned()]);
        assert_eq!(silences[1].matchers, vec!["job=web".to_owned()]);
    }

    #[test]
    fn silence_forms() {
        let request = silence_request(&pairs(&[
            ("csrf", "x"),
            ("label:alertname", "Down"),
            ("label:job", "web"),
            ("hours", "4"),
            ("comment", " deploy "),
        ]))
        .expect("valid");
        assert_eq!(request.hours, 4);
        assert_eq!(request.comment, "deploy");
        assert_eq!(request.matchers.len(), 2);
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let body = silence_body(&request, "alice", now);
        assert_eq!(body["createdBy"], "alice");
        assert_eq!(body["matchers"][0]["name"], "alertname");
        assert_eq!(body["matchers"][0]["isEqual"], true);
        assert_eq!(
            body["endsAt"],
            serde_json::to_value(now + Duration::hours(4)).expect("json")
        );
        let field = |items: &[(&str, &str)]| silence_request(&pairs(items)).expect_err("bad").field;
        assert_eq!(field(&[("comment", "c")]), "labels");
        assert_eq!(field(&[("label:a", "b")]), "comment");
        assert_eq!(
            field(&[("label:a", "b"), ("comment", "c"), ("hours", "0")]),
            "hours"
        );
        assert_eq!(
            field(&[("label:a", "b"), ("comment", "c"), ("hours", "x")]),
            "hours"
        );
        assert_eq!(field(&[("label:", "b"), ("comment", "c")]), "labels");
        assert_eq!(
            silence_request(&pairs(&[("label:a", "b"), ("comment", "c")]))
                .expect("default hours")
                .hours,
            2
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(
            AlerterError::NotConfigured
                .to_string()
                .contains("alerter_url")
        );
        let client = AlerterClient::new(reqwest::Client::new(), None, Some(" ".into()));
        assert!(!client.configured());
        assert!(client.token.is_none());
        let client = AlerterClient::new(reqwest::Client::new(), Some("http://a:1/".into()), None);
        assert_eq!(client.base.as_deref(), Some("http://a:1"));
    }
}
