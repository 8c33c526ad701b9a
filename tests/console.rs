//! The operator console in a real headless Chromium against the api
//! in-process on PostgreSQL: sign in with the admin token, approve a
//! pending proposal and follow it to its mission, the live tail showing an
//! event emitted by the test within 2 s, silence an alert (posted to an
//! in-process alerter) from its row, acknowledge an incident from its
//! page (the alerter's `IncidentService`), then a viewer who sees no action
//! button and whose forged action POST is refused. Screenshots of the
//! overview and the mission page go to `target/screenshots/` (paths
//! printed); the README's `docs/images/console-overview.png` is a copy of
//! the overview's.

use std::time::{Duration, Instant};

use opsloop_core::proto::v1 as pb;
use opsloop_core::store::testing::fresh_postgres;
use opsloop_core::testing::eventually;
use opsloop_e2e::webdriver::{Browser, Element};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "console-e2e-admin";
const AGENT: &str = "console-e2e-agent";
const VIEWER: &str = "console-e2e-viewer";

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {AGENT}").parse().expect("ascii"),
    );
    request
}

async fn submit_pending(channel: &tonic::transport::Channel, title: &str) -> pb::Proposal {
    let proposal = pb::proposal_service_client::ProposalServiceClient::new(channel.clone())
        .submit_proposal(authed(pb::SubmitProposalRequest {
            title: title.into(),
            source: pb::ProposalSource::Api as i32,
            agent: "e2e-agent".into(),
            steps: vec![
                pb::StepSpec {
                    kind: "publish".into(),
                    payload_json: r#"{"post": "weekly digest"}"#.into(),
                    max_attempts: None,
                },
                pb::StepSpec {
                    kind: "notify".into(),
                    payload_json: r#"{"channel": "ops"}"#.into(),
                    max_attempts: Some(2),
                },
            ],
            ..Default::default()
        }))
        .await
        .expect("submit")
        .into_inner()
        .proposal
        .expect("proposal");
    assert_eq!(proposal.status, pb::ProposalStatus::Pending as i32);
    proposal
}

/// Opens an incident at the alerter by hand, as an admin would.
async fn open_incident(alerter: &std::net::SocketAddr, title: &str) -> pb::Incident {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{alerter}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the alerter");
    let mut request = tonic::Request::new(pb::OpenIncidentRequest {
        level: "P1".into(),
        title: title.into(),
        labels: [("service".to_owned(), "checkout".to_owned())].into(),
        actor: String::new(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("ascii"),
    );
    pb::incident_service_client::IncidentServiceClient::new(channel)
        .open_incident(request)
        .await
        .expect("open an incident")
        .into_inner()
        .incident
        .expect("incident")
}

async fn one(browser: &Browser, selector: &str) -> Element {
    eventually(selector, Duration::from_secs(10), || async {
        browser
            .find_all(selector, None)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| "not on the page yet".to_owned())
    })
    .await
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser
        .goto(&format!("{base}/console"))
        .await
        .expect("open the console");
    let url = browser.current_url().await.expect("url");
    assert!(url.contains("/console/login"), "sent to sign in: {url}");
    let input = one(browser, "input#token").await;
    browser.send_keys(&input, token).await.expect("type");
    let button = one(browser, "form button[type=submit]").await;
    browser.click(&button).await.expect("sign in");
    one(browser, "#emergency-stop").await;
}

/// The alerter and the api in-process on one fresh PostgreSQL database;
/// the console calls the alerter with `console_token`.
struct Stack {
    db: opsloop_core::store::testing::TestDb,
    _dir: tempfile::TempDir,
    base: String,
    channel: tonic::transport::Channel,
    alerter_http: std::net::SocketAddr,
    alerter_grpc: std::net::SocketAddr,
    backup_grpc: std::net::SocketAddr,
    console_token: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    /// `before`: runs on the fresh database before the daemons read their
    /// tokens (to create named tokens).
    async fn start<F, Fut, T>(
        console_token: F,
        before: impl FnOnce(sea_orm::DatabaseConnection) -> Fut,
    ) -> (Self, T)
    where
        F: FnOnce(&T) -> String,
        Fut: std::future::Future<Output = T>,
    {
        let db = fresh_postgres().await;
        let prepared = before(db.db.clone()).await;
        let console_token = console_token(&prepared);
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        // The alerter, whose Alertmanager API the console's alerts page
        // uses and whose IncidentService its incidents pages call.
        let alerter_infra = opsloop_e2e::in_process_infra(
            vec![
                ("OPSLOOP__ALERTER__GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("OPSLOOP__ALERTER__HTTP_ADDR", "127.0.0.1:0".to_owned()),
                ("OPSLOOP__DATABASE__URL", db.url.clone()),
            ],
            vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned())],
            dir.path(),
            "alerter-audit.jsonl",
            shutdown.clone(),
        )
        .await;
        let alerter = opsloop_alerter::AlerterApp::build(alerter_infra)
            .await
            .expect("alerter");
        let alerter_http = alerter.http_addr().expect("alerter http");
        let alerter_grpc = alerter.grpc_addr().expect("alerter grpc");
        let alerter_task = tokio::spawn(alerter.run_until_stopped());
        opsloop_e2e::wait_for_status(
            &format!("http://{alerter_http}/healthz"),
            200,
            Duration::from_secs(20),
        )
        .await;

        // The backup-agent, which backs up this database and verifies a
        // backup from the console.
        let backup_infra = opsloop_e2e::in_process_infra(
            vec![
                ("OPSLOOP__BACKUP__GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("OPSLOOP__BACKUP__HTTP_ADDR", "127.0.0.1:0".to_owned()),
                (
                    "OPSLOOP__BACKUP__STORE_DIR",
                    dir.path().join("backups").display().to_string(),
                ),
                ("OPSLOOP__BACKUP__CATCH_UP_MISSED", "false".to_owned()),
                ("OPSLOOP__DATABASE__URL", db.url.clone()),
            ],
            vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned())],
            dir.path(),
            "backup-audit.jsonl",
            shutdown.clone(),
        )
        .await;
        let backup = opsloop_backup_agent::BackupApp::build(backup_infra)
            .await
            .expect("backup-agent");
        let backup_grpc = backup.grpc_addr().expect("backup grpc");
        let backup_task = tokio::spawn(backup.run_until_stopped());

        let mut stack = Self {
            db,
            _dir: dir,
            base: String::new(),
            channel: tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
            alerter_http,
            alerter_grpc,
            backup_grpc,
            console_token,
            shutdown,
            tasks: vec![alerter_task, backup_task],
        };
        let (base, channel) = stack.api_replica().await;
        stack.base = base;
        stack.channel = channel;
        (stack, prepared)
    }

    /// Starts an api on the stack's database (another replica after the
    /// first: the same console session key): its HTTP base and gRPC channel.
    async fn api_replica(&mut self) -> (String, tonic::transport::Channel) {
        let (db, dir) = (&self.db, self._dir.path());
        let (alerter_http, alerter_grpc, backup_grpc) =
            (self.alerter_http, self.alerter_grpc, self.backup_grpc);
        let infra = opsloop_e2e::in_process_infra(
            vec![
                (
                    "OPSLOOP__API__CONSOLE__BACKUP_GRPC_URL",
                    format!("http://{backup_grpc}"),
                ),
                (
                    "OPSLOOP__API__CONSOLE__ALERTER_URL",
                    format!("http://{alerter_http}"),
                ),
                (
                    "OPSLOOP__API__CONSOLE__ALERTER_GRPC_URL",
                    format!("http://{alerter_grpc}"),
                ),
                ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
                ("OPSLOOP__DATABASE__URL", db.url.clone()),
                ("OPSLOOP__API__STATUS__HEARTBEAT_URL", String::new()),
                ("OPSLOOP__API__STATUS__ALERTER_URL", String::new()),
                ("OPSLOOP__API__STATUS__BACKUP_URL", String::new()),
            ],
            vec![
                ("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
                ("OPSLOOP_AGENT_TOKEN".to_owned(), AGENT.to_owned()),
                ("OPSLOOP_VIEWER_TOKEN".to_owned(), VIEWER.to_owned()),
                (
                    "OPSLOOP_CONSOLE_ALERTER_TOKEN".to_owned(),
                    self.console_token.clone(),
                ),
                (
                    "OPSLOOP_CONSOLE_SESSION_KEY".to_owned(),
                    "one key for every replica".to_owned(),
                ),
            ],
            dir,
            "audit.jsonl",
            self.shutdown.clone(),
        )
        .await;
        let app = opsloop_api::ApiApp::build(infra).await.expect("build");
        let http = app.http_addr().expect("http");
        let grpc = app.grpc_addr().expect("grpc");
        self.tasks.push(tokio::spawn(app.run_until_stopped()));
        let base = format!("http://{http}");
        opsloop_e2e::wait_for_status(&format!("{base}/healthz"), 200, Duration::from_secs(20))
            .await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        (base, channel)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        self.db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_headless_browser() {
    let (stack, ()) = Stack::start(|_| ADMIN.to_owned(), |_| async {}).await;
    let (base, channel) = (stack.base.clone(), stack.channel.clone());
    let (alerter_http, alerter_grpc) = (stack.alerter_http, stack.alerter_grpc);
    let pending = submit_pending(&channel, "Publish the weekly digest").await;
    let second = submit_pending(&channel, "Publish the changelog").await;

    let browser = Browser::start()
        .await
        .expect("a headless Chromium (scripts/test.sh installs it)");
    browser.set_window_size(1280, 900).await.expect("size");
    sign_in(&browser, &base, ADMIN).await;
    let pending_figure = one(&browser, "#pending-approvals .figure").await;
    assert_eq!(browser.text(&pending_figure).await.expect("text"), "2");
    let screenshots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    let overview = screenshots.join("console-overview.png");
    browser.screenshot(&overview).await.expect("screenshot");
    println!("console overview screenshot: {}", overview.display());

    // Approve from the proposal's page; its mission appears.
    browser
        .goto(&format!("{base}/console/proposals/{}", pending.id))
        .await
        .expect("proposal page");
    let approve = one(&browser, "button[data-action=approve]").await;
    browser.click(&approve).await.expect("approve");
    let status = eventually("the proposal approved", Duration::from_secs(10), || async {
        let found = browser
            .find_all("#status", None)
            .await
            .map_err(|e| e.to_string())?;
        let Some(status) = found.first() else {
            return Err("no status yet".to_owned());
        };
        let text = browser.text(status).await.map_err(|e| e.to_string())?;
        if text == "approved" {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert_eq!(status, "approved");
    let link = one(&browser, "#mission-link").await;
    browser.click(&link).await.expect("open the mission");
    let steps = eventually("the mission's steps", Duration::from_secs(10), || async {
        let rows = browser
            .find_all("table.steps tbody tr", None)
            .await
            .map_err(|e| e.to_string())?;
        if rows.len() == 2 {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    })
    .await;
    let first = browser.text(&steps[0]).await.expect("text");
    assert!(
        first.contains("publish") && first.contains("queued"),
        "{first}"
    );
    assert!(
        browser
            .current_url()
            .await
            .expect("url")
            .contains("/console/missions/")
    );
    let mission = screenshots.join("console-mission.png");
    browser.screenshot(&mission).await.expect("screenshot");
    println!("console mission screenshot: {}", mission.display());

    // The live tail shows an event emitted now within 2 s.
    browser
        .goto(&format!("{base}/console/events"))
        .await
        .expect("events page");
    eventually(
        "the live tail connected",
        Duration::from_secs(10),
        || async {
            let state = one(&browser, "#tail-state").await;
            let text = browser.text(&state).await.map_err(|e| e.to_string())?;
            if text.ends_with("connected") {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    let emitted = Instant::now();
    pb::event_service_client::EventServiceClient::new(channel.clone())
        .emit_event(authed(pb::EmitEventRequest {
            kind: "console.e2e".into(),
            source: "e2e-test".into(),
            payload_json: r#"{"hello": "tail"}"#.into(),
            ..Default::default()
        }))
        .await
        .expect("emit");
    eventually(
        "the emitted event in the tail",
        Duration::from_secs(2),
        || async {
            for row in browser
                .find_all("#events tbody tr", None)
                .await
                .map_err(|e| e.to_string())?
            {
                if browser
                    .text(&row)
                    .await
                    .map_err(|e| e.to_string())?
                    .contains("console.e2e")
                {
                    return Ok(());
                }
            }
            Err("not in the table yet".to_owned())
        },
    )
    .await;
    println!(
        "live tail: the emitted event shown after {} ms",
        emitted.elapsed().as_millis()
    );
    let errors: Vec<_> = browser
        .log("browser")
        .await
        .expect("browser log")
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // Silence an alert from its row.
    let posted = reqwest::Client::new()
        .post(format!("http://{alerter_http}/api/v2/alerts"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!([{
            "labels": {"alertname": "ConsoleE2E", "job": "web", "severity": "page"},
            "annotations": {"summary": "web answers 500"},
        }]))
        .send()
        .await
        .expect("post an alert");
    assert!(posted.status().is_success(), "{}", posted.status());
    let row = eventually(
        "the alert on the alerts page",
        Duration::from_secs(10),
        || async {
            browser
                .goto(&format!("{base}/console/alerts"))
                .await
                .map_err(|e| e.to_string())?;
            for row in browser
                .find_all("table.alerts tbody tr", None)
                .await
                .map_err(|e| e.to_string())?
            {
                if browser
                    .text(&row)
                    .await
                    .map_err(|e| e.to_string())?
                    .contains("ConsoleE2E")
                {
                    return Ok(row);
                }
            }
            Err("not listed yet".to_owned())
        },
    )
    .await;
    let comment = browser
        .find_all("input[name=comment]", Some(&row))
        .await
        .expect("find")
        .into_iter()
        .next()
        .expect("the row's comment input");
    browser
        .send_keys(&comment, "deploy window")
        .await
        .expect("type");
    let silence = browser
        .find_all("button[data-action=silence]", Some(&row))
        .await
        .expect("find")
        .into_iter()
        .next()
        .expect("the row's silence button");
    browser.click(&silence).await.expect("silence");
    eventually("the silence listed", Duration::from_secs(10), || async {
        for row in browser
            .find_all("table.silences tbody tr", None)
            .await
            .map_err(|e| e.to_string())?
        {
            let text = browser.text(&row).await.map_err(|e| e.to_string())?;
            if text.contains("alertname=ConsoleE2E") && text.contains("bootstrap-admin") {
                return Ok(());
            }
        }
        Err("no silence row yet".to_owned())
    })
    .await;
    let alerts_shot = screenshots.join("console-alerts.png");
    browser.screenshot(&alerts_shot).await.expect("screenshot");
    println!("console alerts screenshot: {}", alerts_shot.display());

    // Acknowledge an incident (opened at the alerter) from its page.
    let incident = open_incident(&alerter_grpc, "Checkout answers 500").await;
    browser
        .goto(&format!("{base}/console/incidents"))
        .await
        .expect("incidents page");
    let link = one(&browser, &format!("tr[data-incident='{}'] a", incident.id)).await;
    browser.click(&link).await.expect("open the incident");
    let reason = one(&browser, "form[action$='/acknowledge'] input[name=reason]").await;
    browser
        .send_keys(&reason, "looking at the checkout pods")
        .await
        .expect("type");
    let acknowledge = one(&browser, "button[data-action=acknowledge]").await;
    browser.click(&acknowledge).await.expect("acknowledge");
    let state = eventually(
        "the incident acknowledged",
        Duration::from_secs(10),
        || async {
            let found = browser
                .find_all("#incident-state", None)
                .await
                .map_err(|e| e.to_string())?;
            let Some(state) = found.first() else {
                return Err("no state yet".to_owned());
            };
            let text = browser.text(state).await.map_err(|e| e.to_string())?;
            if text == "acknowledged" {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    assert_eq!(state, "acknowledged");
    let timeline = one(&browser, "table.timeline tr[data-kind=acknowledged]").await;
    let row = browser.text(&timeline).await.expect("text");
    assert!(row.contains("bootstrap-admin"), "{row}");
    let incident_shot = screenshots.join("console-incident.png");
    browser
        .screenshot(&incident_shot)
        .await
        .expect("screenshot");
    println!("console incident screenshot: {}", incident_shot.display());

    // Sign out; a viewer sees no action and a forged action is refused.
    let sign_out = one(&browser, "header form button").await;
    browser.click(&sign_out).await.expect("sign out");
    eventually("signed out", Duration::from_secs(10), || async {
        let url = browser.current_url().await.map_err(|e| e.to_string())?;
        if url.contains("/console/login") {
            Ok(())
        } else {
            Err(url)
        }
    })
    .await;
    sign_in(&browser, &base, VIEWER).await;
    browser
        .goto(&format!("{base}/console/proposals/{}", second.id))
        .await
        .expect("proposal page");
    one(&browser, "#status").await;
    for selector in [
        "button[data-action]",
        "form[action$='/approve']",
        "form[action$='/reject']",
    ] {
        assert!(
            browser
                .find_all(selector, None)
                .await
                .expect("find")
                .is_empty(),
            "a viewer sees no {selector}"
        );
    }
    browser
        .goto(&format!("{base}/console"))
        .await
        .expect("overview");
    assert!(
        browser
            .find_all("form[action='/console/emergency-stop']", None)
            .await
            .expect("find")
            .is_empty(),
        "no emergency stop form for a viewer"
    );
    let cookie = browser
        .cookie("opsloop_console")
        .await
        .expect("cookies")
        .expect("the viewer's session cookie");
    let csrf_input = one(&browser, "input[name=csrf]").await;
    let csrf = browser
        .attribute(&csrf_input, "value")
        .await
        .expect("attribute")
        .expect("a CSRF token");
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{base}/console/proposals/{}/approve", second.id))
        .header("cookie", format!("opsloop_console={cookie}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("forged POST");
    assert_eq!(forged.status().as_u16(), 403, "a viewer may not approve");
    let still = pb::proposal_service_client::ProposalServiceClient::new(channel.clone())
        .get_proposal(authed(pb::GetProposalRequest {
            id: second.id.clone(),
        }))
        .await
        .expect("get")
        .into_inner()
        .proposal
        .expect("proposal");
    assert_eq!(
        still.status,
        pb::ProposalStatus::Pending as i32,
        "nothing changed"
    );

    browser.quit().await;
    stack.stop().await;
}

/// A signed-in console session over plain HTTP (cookie and CSRF by hand).
struct Session {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

/// A page: its status and body.
struct Page {
    status: u16,
    body: String,
}

impl Page {
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a CSRF token on the page");
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of the value")].to_owned()
    }
}

impl Session {
    async fn sign_in(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let response = http
            .post(format!("{base}/console/login"))
            .form(&[("token", token), ("next", "/console")])
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status().as_u16(), 303, "signed in");
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("a session cookie")
            .to_owned();
        Self {
            http,
            base: base.to_owned(),
            cookie,
        }
    }

    async fn get(&self, path: &str) -> Page {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("GET");
        Page {
            status: response.status().as_u16(),
            body: response.text().await.expect("body"),
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .expect("POST");
        Page {
            status: response.status().as_u16(),
            body: response.text().await.expect("body"),
        }
    }
}

async fn get_incident(alerter: &std::net::SocketAddr, id: &str) -> pb::GetIncidentResponse {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{alerter}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the alerter");
    let mut request = tonic::Request::new(pb::GetIncidentRequest { id: id.into() });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("ascii"),
    );
    pb::incident_service_client::IncidentServiceClient::new(channel)
        .get_incident(request)
        .await
        .expect("get the incident")
        .into_inner()
}

/// The incidents pages over HTTP: a viewer reads and may not act; an admin
/// acknowledges, notes, drafts the postmortem and resolves, each recorded
/// at the alerter as `<person> via <console token>`; forged, empty and
/// impossible actions are refused with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_read_and_acted_on_through_the_alerter() {
    use opsloop_core::access::Role;
    let (stack, (_console, aiko, viktor)) = Stack::start(
        |tokens: &(String, String, String)| tokens.0.clone(),
        |db| async move {
            let mut secrets = Vec::new();
            for (name, role) in [
                ("console-svc", Role::Admin),
                ("aiko", Role::Admin),
                ("viktor", Role::Viewer),
            ] {
                let (_, secret) = opsloop_core::auth::create_token(
                    &db,
                    name,
                    role,
                    None,
                    "test",
                    None,
                    chrono::Utc::now(),
                )
                .await
                .expect("token");
                secrets.push(secret);
            }
            let mut secrets = secrets.into_iter();
            let mut next = || secrets.next().expect("secret");
            (next(), next(), next())
        },
    )
    .await;
    let incident = open_incident(&stack.alerter_grpc, "Payments time out").await;
    let path = format!("/console/incidents/{}", incident.id);

    let viewer = Session::sign_in(&stack.base, &viktor).await;
    let list = viewer.get("/console/incidents").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("Payments time out"));
    let page = viewer.get(&path).await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("data-action=\"acknowledge\""),
        "no action for a viewer"
    );
    let refused = viewer
        .post(&format!("{path}/acknowledge"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(refused.status, 403, "a viewer may not acknowledge");
    assert_eq!(viewer.get(&format!("{path}/postmortem")).await.status, 403);

    let admin = Session::sign_in(&stack.base, &aiko).await;
    let page = admin.get(&path).await;
    assert!(page.body.contains("data-action=\"acknowledge\""));
    let forged = admin
        .post(&format!("{path}/acknowledge"), &[("reason", "no token")])
        .await;
    assert_eq!(forged.status, 403, "no CSRF token");
    let state = get_incident(&stack.alerter_grpc, &incident.id).await;
    assert_eq!(
        state.incident.expect("incident").state,
        "triggered",
        "nothing changed"
    );

    let done = admin
        .post(
            &format!("{path}/acknowledge"),
            &[("csrf", &page.csrf()), ("reason", "paging payments")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let page = admin.get(&format!("{path}?done=acknowledged")).await;
    assert!(page.body.contains("Incident acknowledged."));
    let empty = admin
        .post(
            &format!("{path}/note"),
            &[("csrf", &page.csrf()), ("comment", "  ")],
        )
        .await;
    assert_eq!(empty.status, 400);
    assert!(empty.body.contains("comment"), "{}", empty.body);
    let page = admin.get(&path).await;
    let noted = admin
        .post(
            &format!("{path}/note"),
            &[("csrf", &page.csrf()), ("comment", "gateway p99 at 9 s")],
        )
        .await;
    assert_eq!(noted.status, 303, "{}", noted.body);
    let draft = admin.get(&format!("{path}/postmortem")).await;
    assert_eq!(draft.status, 200, "{}", draft.body);
    assert!(draft.body.contains("Payments time out"), "{}", draft.body);
    let page = admin.get(&path).await;
    let resolved = admin
        .post(
            &format!("{path}/resolve"),
            &[("csrf", &page.csrf()), ("reason", "gateway restarted")],
        )
        .await;
    assert_eq!(resolved.status, 303, "{}", resolved.body);
    let page = admin.get(&path).await;
    let again = admin
        .post(&format!("{path}/acknowledge"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(
        again.status, 409,
        "a resolved incident cannot be acknowledged: {}",
        again.body
    );

    let shown = get_incident(&stack.alerter_grpc, &incident.id).await;
    let found = shown.incident.expect("incident");
    assert_eq!(found.state, "resolved");
    assert_eq!(
        found.acknowledged_by.as_deref(),
        Some("aiko via console-svc")
    );
    assert_eq!(found.resolved_by.as_deref(), Some("aiko via console-svc"));
    let note = shown
        .timeline
        .iter()
        .find(|e| e.kind == "note")
        .expect("the note in the timeline");
    assert_eq!(note.actor, "aiko via console-svc");
    assert!(note.detail_json.contains("gateway p99 at 9 s"));

    let unknown = admin
        .get(&format!("/console/incidents/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(admin.get("/console/incidents/not-an-id").await.status, 404);
    stack.stop().await;
}

/// A backup's page: the restore preview beside the rows now; a viewer may
/// not verify; an admin verifies it at the backup-agent and sees the
/// outcome stage by stage; a forged verify is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_previewed_and_verified_from_the_console() {
    use opsloop_core::access::Role;
    let (stack, viewer_secret) = Stack::start(
        |_: &String| ADMIN.to_owned(),
        |db| async move {
            opsloop_core::auth::create_token(
                &db,
                "vera",
                Role::Viewer,
                None,
                "test",
                None,
                chrono::Utc::now(),
            )
            .await
            .expect("token")
            .1
        },
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.backup_grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the backup-agent");
    let mut request = tonic::Request::new(pb::RunBackupRequest {
        target: None,
        wait: true,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("ascii"),
    );
    let taken = pb::backup_service_client::BackupServiceClient::new(channel)
        .run_backup(request)
        .await
        .expect("a backup of the test database (pg_dump on PATH)")
        .into_inner()
        .backup
        .expect("backup");
    let path = format!("/console/backups/{}", taken.id);

    let viewer = Session::sign_in(&stack.base, &viewer_secret).await;
    let list = viewer.get("/console/backups").await;
    assert!(list.body.contains(&path), "the list links the backup");
    let page = viewer.get(&path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Restore preview"));
    assert!(
        page.body.contains("data-table=\"public.policy\""),
        "the manifest's tables: {}",
        page.body
    );
    assert!(
        page.body
            .contains(&format!("opsloop backup restore {}", taken.id))
    );
    assert!(
        !page.body.contains("data-action=\"verify\""),
        "no verify for a viewer"
    );
    let refused = viewer
        .post(&format!("{path}/verify"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(refused.status, 403);

    let admin = Session::sign_in(&stack.base, ADMIN).await;
    let forged = admin.post(&format!("{path}/verify"), &[]).await;
    assert_eq!(forged.status, 403, "no CSRF token");
    let page = admin.get(&path).await;
    let verified = admin
        .post(&format!("{path}/verify"), &[("csrf", &page.csrf())])
        .await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert!(
        verified.body.contains("id=\"verify-outcome\""),
        "{}",
        verified.body
    );
    assert!(verified.body.contains(">Verified<"), "{}", verified.body);
    assert!(verified.body.contains("<td>restore</td>"), "stages listed");
    let page = admin.get(&path).await;
    assert!(
        page.body.contains(">verified<"),
        "the state is stored: {}",
        page.body
    );
    let unknown = admin
        .get(&format!("/console/backups/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, 404);
    stack.stop().await;
}

/// Two api replicas with one session key: a form's token is spent on every
/// replica once submitted on one, and signing out on one ends the session
/// on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_and_spent_forms_hold_on_every_replica() {
    let (mut stack, ()) = Stack::start(|_| ADMIN.to_owned(), |_| async {}).await;
    let (other, _) = stack.api_replica().await;
    let proposal = submit_pending(&stack.channel, "Publish the roadmap").await;

    let first = Session::sign_in(&stack.base, ADMIN).await;
    let second = Session {
        base: other.clone(),
        ..Session::sign_in(&stack.base, ADMIN).await
    };
    // The same cookie works on the other replica (one session key).
    let mut same = Session::sign_in(&stack.base, ADMIN).await;
    same.base = other.clone();
    assert_eq!(same.get("/console").await.status, 200);

    let page = first
        .get(&format!("/console/proposals/{}", proposal.id))
        .await;
    let token = page.csrf();
    let replayed_elsewhere = Session {
        base: other.clone(),
        http: first.http.clone(),
        cookie: first.cookie.clone(),
    };
    let rejected = first
        .post(
            &format!("/console/proposals/{}/reject", proposal.id),
            &[("csrf", &token), ("reason", "not this week")],
        )
        .await;
    assert_eq!(rejected.status, 303, "{}", rejected.body);
    let replay = replayed_elsewhere
        .post(
            &format!("/console/proposals/{}/approve", proposal.id),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(
        replay.status, 403,
        "the spent token is refused on the other replica"
    );
    assert!(replay.body.contains("already submitted"), "{}", replay.body);

    // Sign out on the first replica: the cookie is refused on the second.
    assert_eq!(second.get("/console").await.status, 200);
    let page = first.get("/console").await;
    let out = first
        .post("/console/logout", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(out.status, 303);
    let after = replayed_elsewhere.get("/console").await;
    assert_eq!(after.status, 303, "sent to sign in again");
    assert_eq!(
        second.get("/console").await.status,
        200,
        "another session stays"
    );
    stack.stop().await;
}
