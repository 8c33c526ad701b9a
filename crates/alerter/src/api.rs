//! The Alertmanager v2 HTTP API, so a stock Prometheus (and `amtool`) can
//! talk to the alerter: `POST/GET /api/v2/alerts`, `GET/POST
//! /api/v2/silences`, `GET/DELETE /api/v2/silence/{id}`, `GET
//! /api/v2/receivers` and `GET /api/v2/status`, with Alertmanager's JSON
//! shapes and status codes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::dispatch::{AlertFilter, AlertView};
use crate::matchers::Matcher;
use crate::model::PostableAlert;
use crate::service::{Alerter, AlerterError};
use crate::silence::{ApiSilence, NewSilence};

/// Largest request body (a batch of alerts from Prometheus).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub fn router(alerter: Arc<Alerter>) -> Router {
    let started = alerter.now();
    Router::new()
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
