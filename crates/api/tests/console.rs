//! The operator console (`/console`) through the api's real HTTP port on
//! PostgreSQL: sign-in and sessions (revocation, logout), roles from the
//! access table, CSRF on every action, unknown ids, bad filters, stale
//! policy forms, and each action going through the workflow and the audit.

mod helpers;

use std::time::Duration;

use chrono::Utc;
use helpers::{Options, TestApp, spawn_with, submit, with_token};
use opsloop_core::access::Role;
use opsloop_core::proto::v1 as pb;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

const ADMIN: &str = "console-admin-secret";
const AGENT: &str = "console-agent-secret";

async fn app() -> TestApp {
    spawn_with(Options {
        admin_token: Some(ADMIN.into()),
        agent_token: Some(AGENT.into()),
        // No alerter: the alerts page says so.
        extra_config: vec![("OPSLOOP__API__CONSOLE__ALERTER_URL", String::new())],
        ..Default::default()
    })
    .await
}

/// What the stand-in alerter received.
#[derive(Default)]
struct FakeAlerter {
    silences: std::sync::Mutex<Vec<serde_json::Value>>,
    expired: std::sync::Mutex<Vec<String>>,
    authorization: std::sync::Mutex<Vec<String>>,
}

/// A stand-in for the alerter's Alertmanager v2 API: one firing alert, the
/// silences posted to it.
async fn fake_alerter() -> (std::net::SocketAddr, std::sync::Arc<FakeAlerter>) {
    use axum::routing::{delete, get};
    let state = std::sync::Arc::new(FakeAlerter::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = |s: &FakeAlerter, h: &axum::http::HeaderMap| {
        if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
            s.authorization.lock().expect("lock").push(v.to_owned());
        }
    };
    let router = axum::Router::new()
        .route(
            "/api/v2/alerts",
            get(|| async {
                axum::Json(serde_json::json!([{
                    "fingerprint": "f1",
                    "labels": {"alertname": "WebDown", "job": "web", "severity": "page"},
                    "annotations": {"summary": "web answers 500"},
                    "startsAt": "2026-12-07T10:00:00Z",
                    "status": {"state": "active", "silencedBy": [], "inhibitedBy": []}
                }]))
            }),
        )
        .route(
            "/api/v2/silences",
            get({
                let state = state.clone();
                move || async move {
                    let list: Vec<serde_json::Value> = state
                        .silences
                        .lock()
                        .expect("lock")
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let mut s = s.clone();
                            s["id"] = serde_json::json!(format!("00000000-0000-0000-0000-00000000000{i}"));
                            s["status"] = serde_json::json!({"state": "active"});
                            s
                        })
                        .collect();
                    axum::Json(list)
                }
            })
            .post({
                let state = state.clone();
                move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<serde_json::Value>| async move {
                    seen(&state, &headers);
                    let mut silences = state.silences.lock().expect("lock");
                    silences.push(body);
                    axum::Json(serde_json::json!({
                        "silenceID": format!("00000000-0000-0000-0000-00000000000{}", silences.len() - 1)
                    }))
                }
            }),
        )
        .route(
            "/api/v2/silence/{id}",
            delete({
                let state = state.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    if id.ends_with("0000") {
                        state.expired.lock().expect("lock").push(id);
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::NOT_FOUND
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, state)
}

/// A browser without JavaScript: one session cookie, no redirects followed.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Page {
    /// The first CSRF token in the page's forms.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a form with a CSRF token") + marker.len();
        let end = self.body[start..].find('"').expect("end of the token") + start;
        self.body[start..end].to_owned()
    }
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self {
            base: format!("http://{}", app.http),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    async fn read(&mut self, response: reqwest::Response) -> Page {
        if let Some(set) = response.headers().get(SET_COOKIE) {
            let set = set.to_str().expect("ascii").to_owned();
            let pair = set.split(';').next().expect("pair").to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        Page {
            status: response.status(),
            location: response
                .headers()
                .get(LOCATION)
                .map(|v| v.to_str().expect("ascii").to_owned()),
            body: response.text().await.expect("body"),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.expect("GET");
        self.read(response).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.expect("POST");
        self.read(response).await
    }

    async fn sign_in(app: &TestApp, token: &str) -> Self {
        let mut browser = Self::new(app);
        let page = browser
            .post("/console/login", &[("token", token), ("next", "/console")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(browser.cookie.is_some(), "a session cookie");
        browser
    }

    /// A fresh CSRF token from a page of this session.
    async fn csrf(&mut self) -> String {
        let page = self.get("/console/dead-letters").await;
        assert_eq!(page.status, StatusCode::OK);
        page.csrf()
    }
}

async fn viewer_token(app: &TestApp, name: &str) -> String {
    let (_, secret) = opsloop_core::auth::create_token(
        &app.db.db,
        name,
        Role::Viewer,
        None,
        "test",
        None,
        Utc::now(),
    )
    .await
    .expect("viewer token");
    app.auth.refresh().await.expect("refresh");
    secret
}

async fn pending_proposal(app: &TestApp) -> pb::Proposal {
    let proposal = app
        .proposals()
        .submit_proposal(with_token(submit(&["publish"], None), AGENT))
        .await
        .expect("submit")
        .into_inner()
        .proposal
        .expect("proposal");
    assert_eq!(proposal.status, pb::ProposalStatus::Pending as i32);
    proposal
}

async fn proposal_status(app: &TestApp, id: &str) -> pb::Proposal {
    app.proposals()
        .get_proposal(with_token(pb::GetProposalRequest { id: id.into() }, ADMIN))
        .await
        .expect("get")
        .into_inner()
        .proposal
        .expect("proposal")
}

#[tokio::test]
async fn sign_in_sessions_and_logout() {
    let app = app().await;
    let mut anon = Browser::new(&app);
    let page = anon.get("/console/missions?status=running").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.location.as_deref(),
        Some("/console/login?next=/console/missions%3Fstatus%3Drunning")
    );
    let page = anon.get("/console/login?next=/console/missions").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("type=\"password\""));
    assert!(
        page.body.contains("value=\"/console/missions\""),
        "keeps next"
    );
    // An action without a session is refused (no redirect for POST).
    let page = anon
        .post("/console/emergency-stop", &[("engage", "true")])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // Bad tokens.
    let page = anon.post("/console/login", &[("token", "nope")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("unknown token"), "{}", page.body);
    assert!(anon.cookie.is_none());
    let page = anon.post("/console/login", &[("token", "")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    let page = anon.post("/console/login", &[("token", AGENT)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("agent role"), "{}", page.body);
    // A bearer token alone does not open the console (it is cookie-based).
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("http://{}/console", app.http))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    // The cookie's attributes.
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("http://{}/console/login", app.http))
        .form(&[("token", ADMIN), ("next", "https://evil.example/")])
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/console", "no open redirect");
    let set = response.headers()[SET_COOKIE].to_str().expect("ascii");
    for part in [
        "opsloop_console=",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=",
        "Path=/console",
    ] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP listener: {set}");

    let mut admin = Browser::sign_in(&app, ADMIN).await;
    let page = admin.get("/console").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Overview") && page.body.contains("bootstrap-admin"));
    assert!(page.body.contains("Emergency stop"));
    // A tampered cookie is no session.
    let mut forged = Browser::new(&app);
    forged.cookie = admin
        .cookie
        .as_ref()
        .map(|c| c.replace(".admin.", ".viewer."));
    assert_eq!(forged.get("/console").await.status, StatusCode::SEE_OTHER);

    // Logout needs its CSRF token, then ends the session.
    let old_cookie = admin.cookie.clone();
    let page = admin.post("/console/logout", &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let csrf = admin.csrf().await;
    let page = admin.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(admin.cookie.is_none(), "cookie cleared");
    let mut replay = Browser::new(&app);
    replay.cookie = old_cookie;
    assert_eq!(replay.get("/console").await.status, StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_ends_its_session() {
    let app = app().await;
    let secret = viewer_token(&app, "night-viewer").await;
    let mut viewer = Browser::sign_in(&app, &secret).await;
    assert_eq!(viewer.get("/console").await.status, StatusCode::OK);
    opsloop_core::auth::revoke_token(&app.db.db, "night-viewer", "test", None, Utc::now())
        .await
        .expect("revoke");
    app.auth.refresh().await.expect("refresh");
    let page = viewer.get("/console").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "session ended");
    let page = Browser::new(&app)
        .post("/console/login", &[("token", secret.as_str())])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("revoked"), "{}", page.body);
    app.stop().await;
}

#[tokio::test]
async fn approving_needs_the_admin_role_and_a_fresh_csrf_token() {
    let app = app().await;
    let pending = pending_proposal(&app).await;
    let approve = format!("/console/proposals/{}/approve", pending.id);

    // A viewer sees no action and a forged POST is refused.
    let secret = viewer_token(&app, "viewer-1").await;
    let mut viewer = Browser::sign_in(&app, &secret).await;
    let page = viewer.get("/console/proposals").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&pending.id));
    assert!(!page.body.contains("/approve"), "no action for a viewer");
    let csrf = viewer.csrf().await;
    let page = viewer.post(&approve, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("admin role"), "{}", page.body);

    let mut admin = Browser::sign_in(&app, ADMIN).await;
    let page = admin.get("/console/proposals").await;
    assert!(page.body.contains(&approve), "admin sees the action");
    // No, tampered and foreign CSRF tokens: 403, nothing changed.
    assert_eq!(
        admin.post(&approve, &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let mut tampered = admin.csrf().await;
    tampered.replace_range(..4, "0000");
    assert_eq!(
        admin.post(&approve, &[("csrf", &tampered)]).await.status,
        StatusCode::FORBIDDEN
    );
    let mut other = Browser::sign_in(&app, ADMIN).await;
    let foreign = other.csrf().await;
    let page = admin.post(&approve, &[("csrf", &foreign)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("another session"), "{}", page.body);
    assert_eq!(
        proposal_status(&app, &pending.id).await.status,
        pb::ProposalStatus::Pending as i32,
        "nothing changed"
    );

    // A valid token approves, once.
    let csrf = admin.csrf().await;
    let page = admin
        .post(&approve, &[("csrf", &csrf), ("comment", "looks right")])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        page.location.as_deref(),
        Some(format!("/console/proposals/{}?done=approved", pending.id).as_str())
    );
    let page = admin.post(&approve, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "replayed");
    assert!(page.body.contains("already submitted"));
    let approved = proposal_status(&app, &pending.id).await;
    assert_eq!(approved.status, pb::ProposalStatus::Approved as i32);
    assert_eq!(
        approved.decided_by.as_deref(),
        Some("bootstrap-admin"),
        "the session token name"
    );
    let audit = std::fs::read_to_string(app.audit_dir.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("bootstrap-admin") && l.contains(&pending.id)),
        "audited under the token name: {audit}"
    );
    let page = admin
        .get(&format!("/console/proposals/{}?done=approved", pending.id))
        .await;
    assert!(page.body.contains("Proposal approved."));
    let mission = approved.mission_id.expect("mission");
    assert!(page.body.contains(&format!("/console/missions/{mission}")));
    let page = admin.get(&format!("/console/missions/{mission}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("publish") && page.body.contains("Cancel the mission"));
    let page = admin.get("/console/missions?status=running").await;
    assert!(page.body.contains(&mission));

    // Reject needs a reason; then cancel the mission.
    let other_pending = pending_proposal(&app).await;
    let reject = format!("/console/proposals/{}/reject", other_pending.id);
    let csrf = admin.csrf().await;
    let page = admin
        .post(&reject, &[("csrf", &csrf), ("reason", " ")])
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("reason"), "{}", page.body);
    let csrf = admin.csrf().await;
    let page = admin
        .post(&reject, &[("csrf", &csrf), ("reason", "not today")])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        proposal_status(&app, &other_pending.id).await.status,
        pb::ProposalStatus::Rejected as i32
    );
    let cancel = format!("/console/missions/{mission}/cancel");
    let csrf = admin.csrf().await;
    let page = admin
        .post(&cancel, &[("csrf", &csrf), ("reason", "wrong day")])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = admin.get(&format!("/console/missions/{mission}")).await;
    assert!(page.body.contains("cancelled") && page.body.contains("wrong day"));
    // Cancelling twice: the state forbids it.
    let csrf = admin.csrf().await;
    let page = admin
        .post(&cancel, &[("csrf", &csrf), ("reason", "again")])
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    app.stop().await;
}

#[tokio::test]
async fn unknown_ids_and_bad_filters() {
    let app = app().await;
    let mut admin = Browser::sign_in(&app, ADMIN).await;
    let nobody = uuid::Uuid::new_v4();
    for path in [
        format!("/console/proposals/{nobody}"),
        "/console/proposals/not-an-id".to_owned(),
        format!("/console/missions/{nobody}"),
        "/console/policy/no_such_key".to_owned(),
    ] {
        let page = admin.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(page.body.contains("not found"), "{path}: {}", page.body);
    }
    for (path, action) in [
        (format!("/console/proposals/{nobody}/approve"), "approve"),
        (format!("/console/missions/{nobody}/cancel"), "cancel"),
        (format!("/console/dead-letters/{nobody}/retry"), "retry"),
        (format!("/console/triggers/{nobody}/enabled"), "trigger"),
    ] {
        let csrf = admin.csrf().await;
        let page = admin
            .post(
                &path,
                &[("csrf", &csrf), ("reason", "r"), ("enabled", "true")],
            )
            .await;
        assert_eq!(
            page.status,
            StatusCode::NOT_FOUND,
            "{action}: {}",
            page.body
        );
    }
    for (path, field) in [
        ("/console/proposals?after=yesterday", "after"),
        ("/console/proposals?before=13%2F12", "before"),
        ("/console/proposals?status=done", "status"),
        ("/console/missions?after=soon", "after"),
        ("/console/events?kind=", ""),
    ] {
        let page = admin.get(path).await;
        if field.is_empty() {
            assert_eq!(page.status, StatusCode::OK, "{path}");
            continue;
        }
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            page.body.contains(&format!("filter {field}")),
            "{path}: {}",
            page.body
        );
    }
    // The backups page lists the backup-agent's runs.
    {
        use opsloop_core::store::entities::backups;
        use sea_orm::{ActiveModelTrait, Set};
        let now = Utc::now();
        backups::ActiveModel {
            id: Set(uuid::Uuid::new_v4()),
            target: Set("main".into()),
            kind: Set("postgres".into()),
            status: Set("completed".into()),
            object_key: Set(Some("main/2026.tar.zst".into())),
            size_bytes: Set(Some(4096)),
            sha256: Set(None),
            compression: Set("zstd".into()),
            manifest: Set(None),
            started_at: Set(now),
            finished_at: Set(Some(now)),
            verify_status: Set(Some("verified".into())),
            verified_at: Set(Some(now)),
            verify_duration_ms: Set(Some(120)),
            error: Set(None),
        }
        .insert(&app.db.db)
        .await
        .expect("a backup row");
        let page = admin.get("/console/backups").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("main") && page.body.contains("4.0 KiB"));
        assert!(page.body.contains("verified"));
        let page = admin.get("/console").await;
        assert!(page.body.contains("newest-backup") && page.body.contains("completed"));
    }
    // A valid filter and every list page.
    for path in [
        "/console/proposals?status=pending&source=api&agent=tester&kind=publish&after=2020-01-01",
        "/console/missions?status=failed&before=2100-01-01T00:00",
        "/console/dead-letters",
        "/console/events?kind=proposal.*&source=api",
        "/console/policy",
        "/console/triggers",
        "/console/console.js",
    ] {
        assert_eq!(admin.get(path).await.status, StatusCode::OK, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn policy_edits_show_a_diff_and_refuse_stale_forms() {
    let app = app().await;
    let mut admin = Browser::sign_in(&app, ADMIN).await;
    let page = admin.get("/console/policy/ops_health").await;
    assert_eq!(page.status, StatusCode::OK);
    let version = {
        let marker = "name=\"version\" value=\"";
        let start = page.body.find(marker).expect("version") + marker.len();
        let end = page.body[start..].find('"').expect("end") + start;
        page.body[start..end].to_owned()
    };
    let value = r#"{"failure_threshold": 9, "window_seconds": 3600, "cooldown_seconds": 3600}"#;
    // Invalid values are refused with the field named, as SetPolicy does.
    let csrf = page.csrf();
    let page = admin
        .post(
            "/console/policy/ops_health/preview",
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("value", r#"{"failure_threshold": "x"}"#),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(page.body.contains("policy-error"));
    // The preview shows the diff and a save form.
    let csrf = admin.csrf().await;
    let page = admin
        .post(
            "/console/policy/ops_health/preview",
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("value", value),
                ("reason", "noisy"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("class=\"add\"") && page.body.contains("9"));
    // A viewer may not preview.
    let secret = viewer_token(&app, "policy-viewer").await;
    let mut viewer = Browser::sign_in(&app, &secret).await;
    let page_v = viewer.get("/console/policy/ops_health").await;
    assert!(!page_v.body.contains("/preview"));
    let vcsrf = viewer.csrf().await;
    let denied = viewer
        .post(
            "/console/policy/ops_health",
            &[("csrf", &vcsrf), ("version", &version), ("value", value)],
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    // Save from the preview's form.
    let csrf = page.csrf();
    let saved = admin
        .post(
            "/console/policy/ops_health",
            &[
                ("csrf", &csrf),
                ("version", &version),
                ("value", value),
                ("reason", "noisy"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let page = admin.get("/console/policy/ops_health?done=saved").await;
    assert!(page.body.contains("Policy saved."));
    assert!(
        page.body.contains("bootstrap-admin") && page.body.contains("noisy"),
        "history"
    );
    // The same form again (version now stale): refused, current value shown.
    let csrf = admin.csrf().await;
    let stale = admin
        .post(
            "/console/policy/ops_health",
            &[("csrf", &csrf), ("version", &version), ("value", value)],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert!(stale.body.contains("changed since the page was loaded"));
    assert!(
        stale.body.contains("&quot;failure_threshold&quot;: 9")
            || stale.body.contains("\"failure_threshold\": 9")
    );
    let csrf = admin.csrf().await;
    let stale = admin
        .post(
            "/console/policy/ops_health/preview",
            &[("csrf", &csrf), ("version", &version), ("value", value)],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    app.stop().await;
}

#[tokio::test]
async fn emergency_stop_and_triggers() {
    let app = app().await;
    let mut admin = Browser::sign_in(&app, ADMIN).await;
    let csrf = admin.csrf().await;
    let page = admin
        .post(
            "/console/emergency-stop",
            &[("csrf", &csrf), ("engage", "maybe"), ("reason", "x")],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    let csrf = admin.csrf().await;
    let page = admin
        .post(
            "/console/emergency-stop",
            &[("csrf", &csrf), ("engage", "true"), ("reason", "drill")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let page = admin.get("/console?done=stop-engaged").await;
    assert!(page.body.contains("ENGAGED") && page.body.contains("drill"));
    assert!(page.body.contains("Release the stop"));
    let csrf = page.csrf();
    let page = admin
        .post(
            "/console/emergency-stop",
            &[("csrf", &csrf), ("engage", "false"), ("reason", "done")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(admin.get("/console").await.body.contains("released"));

    let created = app
        .triggers()
        .create_trigger(with_token(
            pb::CreateTriggerRequest {
                name: "quiet".into(),
                enabled: true,
                condition_json:
                    r#"{"type": "absence", "kind": "post.published", "window_seconds": 3600}"#
                        .into(),
                action_json: r#"{"title": "t", "steps": [{"kind": "echo"}]}"#.into(),
                cooldown_seconds: 600,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("create")
        .into_inner()
        .trigger
        .expect("trigger");
    let page = admin.get("/console/triggers").await;
    assert!(page.body.contains("quiet") && page.body.contains("Disable"));
    let csrf = page.csrf();
    let page = admin
        .post(
            &format!("/console/triggers/{}/enabled", created.id),
            &[("csrf", &csrf), ("enabled", "false")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = admin.get("/console/triggers").await;
    assert!(page.body.contains("Enable") && page.body.contains("disabled"));
    app.stop().await;
}

#[tokio::test]
async fn the_live_tail_streams_events_and_resumes_from_last_event_id() {
    let app = app().await;
    let admin = Browser::sign_in(&app, ADMIN).await;
    let cookie = admin.cookie.clone().expect("cookie");
    let page = {
        let mut b = Browser::sign_in(&app, ADMIN).await;
        b.get("/console/events").await
    };
    assert!(page.body.contains("/console/console.js"));
    let client = reqwest::Client::new();
    let mut stream = client
        .get(format!(
            "http://{}/console/events/stream?kind=proposal.*",
            app.http
        ))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let proposal = pending_proposal(&app).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains(&proposal.id) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("an event within 5 s")
            .expect("chunk")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.contains("event: event") && seen.contains("proposal.submitted")
            || seen.contains("proposal.")
    );
    let first_id: i64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .expect("an id")
        .trim()
        .parse()
        .expect("seq");
    drop(stream);
    // Reconnecting with Last-Event-ID resumes after it.
    let mut resumed = client
        .get(format!("http://{}/console/events/stream?after=0", app.http))
        .header(COOKIE, &cookie)
        .header("last-event-id", (first_id - 1).to_string())
        .send()
        .await
        .expect("stream");
    let chunk = tokio::time::timeout(Duration::from_secs(5), resumed.chunk())
        .await
        .expect("in time")
        .expect("chunk")
        .expect("open");
    let text = String::from_utf8_lossy(&chunk).to_string();
    assert!(
        text.contains(&format!("id: {first_id}")) || text.contains(&format!("id:{first_id}")),
        "{text}"
    );
    let bad = client
        .get(format!("http://{}/console/events/stream", app.http))
        .header(COOKIE, &cookie)
        .header("last-event-id", "x")
        .send()
        .await
        .expect("stream");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn alerts_and_silences_go_through_the_alerter() {
    let (alerter, fake) = fake_alerter().await;
    let served = spawn_with(Options {
        admin_token: Some(ADMIN.into()),
        agent_token: Some(AGENT.into()),
        extra_config: vec![(
            "OPSLOOP__API__CONSOLE__ALERTER_URL",
            format!("http://{alerter}"),
        )],
        extra_secrets: vec![(
            "OPSLOOP_CONSOLE_ALERTER_TOKEN".to_owned(),
            "alerter-admin-secret".to_owned(),
        )],
        ..Default::default()
    })
    .await;
    let secret = viewer_token(&served, "alerts-viewer").await;
    let mut viewer = Browser::sign_in(&served, &secret).await;
    let page = viewer.get("/console/alerts").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("WebDown") && page.body.contains("web answers 500"));
    assert!(
        !page.body.contains("/console/alerts/silence"),
        "no action for a viewer"
    );
    let csrf = page.csrf();
    let denied = viewer
        .post(
            "/console/alerts/silence",
            &[("csrf", &csrf), ("label:job", "web"), ("comment", "x")],
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    let mut admin = Browser::sign_in(&served, ADMIN).await;
    let page = admin.get("/console/alerts").await;
    assert!(
        page.body
            .contains("name=\"label:alertname\" value=\"WebDown\"")
    );
    let csrf = page.csrf();
    // Without a reason: refused naming the field, nothing sent.
    let page = admin
        .post(
            "/console/alerts/silence",
            &[
                ("csrf", &csrf),
                ("label:alertname", "WebDown"),
                ("hours", "2"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("comment"), "{}", page.body);
    let page = admin
        .post(
            "/console/alerts/silence",
            &[("label:alertname", "WebDown"), ("comment", "deploy")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "no CSRF token");
    assert!(
        fake.silences.lock().expect("lock").is_empty(),
        "nothing sent"
    );
    let csrf = admin.csrf().await;
    let page = admin
        .post(
            "/console/alerts/silence",
            &[
                ("csrf", &csrf),
                ("label:alertname", "WebDown"),
                ("label:job", "web"),
                ("hours", "4"),
                ("comment", "deploy window"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    {
        let silences = fake.silences.lock().expect("lock");
        assert_eq!(silences.len(), 1);
        assert_eq!(silences[0]["createdBy"], "bootstrap-admin");
        assert_eq!(silences[0]["comment"], "deploy window");
        assert_eq!(silences[0]["matchers"][1]["name"], "job");
        assert_eq!(silences[0]["matchers"][1]["value"], "web");
    }
    assert_eq!(
        fake.authorization.lock().expect("lock").as_slice(),
        ["Bearer alerter-admin-secret".to_owned()]
    );
    let page = admin.get("/console/alerts?done=silenced").await;
    assert!(page.body.contains("Silence created.") && page.body.contains("alertname=WebDown"));
    let silence_id = "00000000-0000-0000-0000-000000000000";
    let csrf = page.csrf();
    let page = admin
        .post(
            &format!("/console/silences/{silence_id}/expire"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        fake.expired.lock().expect("lock").as_slice(),
        [silence_id.to_owned()]
    );
    let csrf = admin.csrf().await;
    let page = admin
        .post(
            "/console/silences/00000000-0000-0000-0000-000000000009/expire",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let audit =
        std::fs::read_to_string(served.audit_dir.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("silence.create") && l.contains("bootstrap-admin")),
        "{audit}"
    );
    assert!(audit.lines().any(|l| l.contains("silence.expire")));
    served.stop().await;

    // Without an alerter, the page says what to set.
    let bare = app().await;
    let mut admin = Browser::sign_in(&bare, ADMIN).await;
    let page = admin.get("/console/alerts").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains("alerter_url"), "{}", page.body);
    bare.stop().await;
}
