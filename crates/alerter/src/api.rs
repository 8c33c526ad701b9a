//! The Alertmanager v2 HTTP API, so a stock Prometheus (and `amtool`,
//! Grafana's Alertmanager data source, karma) can talk to the alerter:
//! `POST/GET /api/v2/alerts`, `GET /api/v2/alerts/groups`, `GET/POST
//! /api/v2/silences`, `GET/DELETE /api/v2/silence/{id}`, `GET
//! /api/v2/receivers` and `GET /api/v2/status`, with Alertmanager's JSON
//! shapes and status codes; and Alertmanager's probes `/-/healthy` and
//! `/-/ready` (GET and HEAD).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opsloop_core::http::Readiness;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::dispatch::{AlertFilter, AlertView};
use crate::matchers::Matcher;
use crate::model::{LabelSet, PostableAlert};
use crate::service::{Alerter, AlerterError};
use crate::silence::{ApiSilence, NewSilence};

/// Largest request body (a batch of alerts from Prometheus).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The API's routes; `readiness` is what `/readyz` checks, answered on
/// `/-/ready` too.
pub fn router(alerter: Arc<Alerter>, readiness: Readiness) -> Router {
    let started = alerter.now();
    Router::new()
        // Alertmanager's probes; `get` answers HEAD as well.
        .route("/-/healthy", get(|| async { "OK" }))
        .route("/-/ready", get(ready).with_state(readiness))
        .route("/api/v2/receivers", get(get_receivers))
        .route(
            "/api/v2/status",
            get(move || async move {
                axum::Json(json!({
                    "cluster": {"name": "", "status": "disabled", "peers": []},
                    "versionInfo": {"version": env!("CARGO_PKG_VERSION"), "branch": "", "revision": "",
                        "buildUser": "", "buildDate": "", "goVersion": ""},
                    "config": {"original": ""},
                    "uptime": started,
                }))
            }),
        )
        .route("/api/v2/alerts", post(post_alerts).get(get_alerts))
        .route("/api/v2/alerts/groups", get(get_alert_groups))
        .route("/api/v2/silences", get(get_silences).post(post_silence))
        .route(
            "/api/v2/silence/{id}",
            get(get_silence).delete(delete_silence),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(alerter)
}

/// Alertmanager answers errors as a JSON string.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(Value::String(message.into()))).into_response()
}

/// A refused query parameter.
struct BadParam(String);

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

impl IntoResponse for AlerterError {
    fn into_response(self) -> Response {
        let status = match &self {
            AlerterError::InvalidAlert { .. } | AlerterError::InvalidSilence(_) => {
                StatusCode::BAD_REQUEST
            }
            AlerterError::SilenceNotFound(_) | AlerterError::UnknownReceiver(_) => {
                StatusCode::NOT_FOUND
            }
            AlerterError::SilenceExpired(_) => StatusCode::BAD_REQUEST,
            AlerterError::Store(e) => {
                tracing::error!(error = %e, "request failed on the store");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AlerterError::Busy {
                reason,
                retry_after_secs,
            } => {
                let status = if *reason == crate::service::BUSY_QUEUE_FULL {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let mut response = error(status, self.to_string());
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*retry_after_secs),
                );
                return response;
            }
        };
        error(status, self.to_string())
    }
}

async fn post_alerts(State(alerter): State<Arc<Alerter>>, body: axum::body::Bytes) -> Response {
    let posted: Vec<PostableAlert> = match serde_json::from_slice(&body) {
        Ok(posted) => posted,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match alerter.post_alerts(posted, "http").await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, BadParam> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(BadParam(format!("{key}: expected true or false"))),
    }
}

fn alert_filter(params: &[(String, String)]) -> Result<AlertFilter, BadParam> {
    let mut filter = AlertFilter::default();
    for (key, value) in params {
        match key.as_str() {
            "active" => filter.active = parse_bool(key, value)?,
            "silenced" => filter.silenced = parse_bool(key, value)?,
            "inhibited" => filter.inhibited = parse_bool(key, value)?,
            "unprocessed" => {
                parse_bool(key, value)?;
            }
            "filter" => filter.matchers.push(
                Matcher::parse(value.trim_matches(|c| c == '{' || c == '}'))
                    .map_err(|e| BadParam(format!("filter: {e}")))?,
            ),
            "receiver" => {
                filter.receiver = Some(
                    regex::Regex::new(&format!("^(?:{value})$"))
                        .map_err(|e| BadParam(format!("receiver: {e}")))?,
                )
            }
            _ => {}
        }
    }
    Ok(filter)
}

/// An alert in Alertmanager's `GettableAlert` shape.
pub fn gettable_alert(view: &AlertView) -> Value {
    let a = &view.alert;
    let suppressed = !view.silenced_by.is_empty() || !view.inhibited_by.is_empty();
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": a.starts_at,
        "endsAt": a.ends_at,
        "generatorURL": a.generator_url.clone().unwrap_or_default(),
        "fingerprint": a.fingerprint().to_string(),
        "receivers": view.receivers.iter().map(|r| json!({"name": r})).collect::<Vec<_>>(),
        "status": {
            "state": if suppressed { "suppressed" } else { "active" },
            "silencedBy": view.silenced_by.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "inhibitedBy": view.inhibited_by.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "mutedBy": Vec::<String>::new(),
        },
        "updatedAt": a.updated_at,
    })
}

async fn get_alerts(
    State(alerter): State<Arc<Alerter>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let filter = match alert_filter(&params) {
        Ok(f) => f,
        Err(bad) => return bad.into_response(),
    };
    let now = alerter.now();
    let mut views: Vec<AlertView> = alerter
        .alerts()
        .await
        .into_iter()
        .filter(|v| filter.keep(v, now))
        .collect();
    views.sort_by_key(|v| std::cmp::Reverse(v.alert.starts_at));
    axum::Json(views.iter().map(gettable_alert).collect::<Vec<_>>()).into_response()
}

/// `/-/ready`: 200 `OK` when `/readyz` would answer 200, else 503 with the
/// same report of the failing checks.
async fn ready(State(readiness): State<Readiness>) -> Response {
    let (ok, body) = readiness.evaluate().await;
    if ok {
        "OK".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// An aggregation group holding an alert: its receiver, key and labels.
struct Place {
    receiver: String,
    key: String,
    labels: LabelSet,
}

/// One aggregation group as `GET /api/v2/alerts/groups` lists it.
struct GroupOut {
    receiver: String,
    labels: LabelSet,
    alerts: Vec<AlertView>,
}

/// `GET /api/v2/alerts/groups`, as Alertmanager answers it: every
/// aggregation group whose receiver matches `receiver`, with its alerts that
/// pass `active`/`silenced`/`inhibited`/`filter`; groups left without
/// alerts are omitted. An alert's `receivers` are the receivers of the
/// listed groups holding it. Groups are sorted by labels then receiver,
/// alerts by `job`, `instance`, then labels (Alertmanager's orders).
///
/// The groups are the dispatcher's: each alert is placed with the calls its
/// `ingest` makes (`routes_for`, `group_key`, `group_labels`) under the same
/// lock. A group drops only resolved alerts, which this API leaves out like
/// Alertmanager does, so the listing is the live group membership.
async fn get_alert_groups(
    State(alerter): State<Arc<Alerter>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut filter = match alert_filter(&params) {
        Ok(f) => f,
        Err(bad) => return bad.into_response(),
    };
    for (key, value) in &params {
        // Newer Alertmanagers filter groups muted by time intervals; the
        // alerter has none, so `muted` is checked and filters nothing.
        if key == "muted"
            && let Err(bad) = parse_bool(key, value)
        {
            return bad.into_response();
        }
    }
    // The receiver regex picks groups (routes), not alerts.
    let receiver_filter = filter.receiver.take();
    let placed = alerter
        .inspect(|dispatcher, now| {
            dispatcher
                .views(now)
                .into_iter()
                .filter(|view| filter.keep(view, now))
                .map(|view| {
                    let groups: Vec<Place> = dispatcher
                        .routes_for(&view.alert.labels)
                        .into_iter()
                        .filter(|opts| {
                            receiver_filter
                                .as_ref()
                                .is_none_or(|re| re.is_match(&opts.receiver))
                        })
                        .map(|opts| Place {
                            key: opts.group_key(&view.alert.labels),
                            labels: opts.group_by.group_labels(&view.alert.labels),
                            receiver: opts.receiver,
                        })
                        .collect();
                    (view, groups)
                })
                .collect::<Vec<_>>()
        })
        .await;
    let groups = assemble_groups(placed);
    axum::Json(
        groups
            .iter()
            .map(|g| {
                json!({
                    "labels": g.labels,
                    "receiver": {"name": g.receiver},
                    "alerts": g.alerts.iter().map(gettable_alert).collect::<Vec<_>>(),
                })
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Builds the groups from the places of each alert, and sorts them as
/// Alertmanager does.
fn assemble_groups(placed: Vec<(AlertView, Vec<Place>)>) -> Vec<GroupOut> {
    let mut groups: BTreeMap<(String, String), GroupOut> = BTreeMap::new();
    for (mut view, places) in placed {
        if places.is_empty() {
            continue;
        }
        let mut receivers: Vec<String> = places.iter().map(|p| p.receiver.clone()).collect();
        receivers.sort();
        view.receivers = receivers;
        for Place {
            receiver,
            key,
            labels,
        } in places
        {
            groups
                .entry((receiver.clone(), key))
                .or_insert_with(|| GroupOut {
                    receiver,
                    labels,
                    alerts: Vec::new(),
                })
                .alerts
                .push(view.clone());
        }
    }
    let mut groups: Vec<GroupOut> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        if a.labels == b.labels {
            a.receiver.cmp(&b.receiver)
        } else {
            labels_before(&a.labels, &b.labels)
        }
    });
    for group in &mut groups {
        group
            .alerts
            .sort_by(|a, b| alert_order(&a.alert.labels, &b.alert.labels));
    }
    groups
}

/// Prometheus' `LabelSet.Before`: fewer labels first, then the first
/// differing label (by name, a missing one first) decides.
fn labels_before(a: &LabelSet, b: &LabelSet) -> Ordering {
    match a.len().cmp(&b.len()) {
        Ordering::Equal => {}
        other => return other,
    }
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    for name in names {
        match (a.get(name), b.get(name)) {
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
    }
    Ordering::Equal
}

/// Alertmanager's alert order: by `job`, then `instance` (an alert with the
/// label before one without), then [`labels_before`].
fn alert_order(a: &LabelSet, b: &LabelSet) -> Ordering {
    for key in ["job", "instance"] {
        match (a.get(key), b.get(key)) {
            (None, None) => continue,
            (None, Some(_)) => return Ordering::Greater,
            (Some(_), None) => return Ordering::Less,
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
    }
    labels_before(a, b)
}

async fn get_receivers(State(alerter): State<Arc<Alerter>>) -> Response {
    let names: Vec<Value> = alerter
        .receivers()
        .names()
        .into_iter()
        .map(|name| json!({"name": name}))
        .collect();
    axum::Json(names).into_response()
}

async fn get_silences(
    State(alerter): State<Arc<Alerter>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut matchers = Vec::new();
    for (key, value) in &params {
        if key == "filter" {
            match Matcher::parse(value.trim_matches(|c| c == '{' || c == '}')) {
                Ok(m) => matchers.push(m),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("filter: {e}")),
            }
        }
    }
    let now = alerter.now();
    let silences: Vec<ApiSilence> = alerter
        .silences()
        .await
        .iter()
        .filter(|s| matchers.iter().all(|m| s.matchers.contains(m)))
        .map(|s| ApiSilence::from_silence(s, now))
        .collect();
    axum::Json(silences).into_response()
}

async fn post_silence(State(alerter): State<Arc<Alerter>>, body: axum::body::Bytes) -> Response {
    let api: ApiSilence = match serde_json::from_slice(&body) {
        Ok(api) => api,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let id = match api
        .id
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(Uuid::parse_str)
    {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "id: not a UUID"),
    };
    let request = match NewSilence::from_api(&api) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match alerter.create_silence(request, id).await {
        Ok(silence) => axum::Json(json!({"silenceID": silence.id.to_string()})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_silence(State(alerter): State<Arc<Alerter>>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(StatusCode::BAD_REQUEST, "id: not a UUID");
    };
    let now = alerter.now();
    match alerter.silences().await.iter().find(|s| s.id == id) {
        Some(s) => axum::Json(ApiSilence::from_silence(s, now)).into_response(),
        None => AlerterError::SilenceNotFound(id).into_response(),
    }
}

async fn delete_silence(State(alerter): State<Arc<Alerter>>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(StatusCode::BAD_REQUEST, "id: not a UUID");
    };
    match alerter.expire_silence(id, "http").await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(response: &Response) -> Option<&str> {
        response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
    }

    /// Back-pressure is an answer, never a hang: a full writer queue is 429,
    /// a commit that does not come in time 503, both with Retry-After.
    #[test]
    fn busy_is_429_or_503_with_retry_after() {
        let full = AlerterError::Busy {
            reason: crate::service::BUSY_QUEUE_FULL,
            retry_after_secs: 1,
        }
        .into_response();
        assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after(&full), Some("1"));
        let slow = AlerterError::Busy {
            reason: "the alerts were not saved in time",
            retry_after_secs: 2,
        }
        .into_response();
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&slow), Some("2"));
        let missing = AlerterError::SilenceNotFound(Uuid::nil()).into_response();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(retry_after(&missing), None);
        let stopped = AlerterError::Store(crate::store::StoreError::WriterStopped).into_response();
        assert_eq!(stopped.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn alert_filters_parse_alertmanager_parameters() {
        let params = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let filter = alert_filter(&params(&[
            ("active", "false"),
            ("silenced", "0"),
            ("inhibited", "true"),
            ("unprocessed", "1"),
            ("filter", "{alertname=\"A\"}"),
            ("receiver", "slack|pager"),
            ("other", "ignored"),
        ]))
        .unwrap_or_else(|bad| panic!("{}", bad.0));
        assert!(!filter.active && !filter.silenced && filter.inhibited);
        assert_eq!(filter.matchers.len(), 1);
        let receiver = filter.receiver.expect("receiver regex");
        assert!(receiver.is_match("pager") && !receiver.is_match("pagerduty"));
        for bad in [
            params(&[("active", "maybe")]),
            params(&[("filter", "{alertname}")]),
            params(&[("receiver", "(")]),
        ] {
            assert!(alert_filter(&bad).is_err(), "{bad:?}");
        }
    }
}
