//! The operator console in a real headless Chromium against the api
//! in-process on PostgreSQL: sign in with the admin token, approve a
//! pending proposal and follow it to its mission, the live tail showing an
//! event emitted by the test within 2 s, silence an alert (posted to an
//! in-process alerter) from its row, then a viewer who sees no action
//! button and whose forged action POST is refused. Screenshots of the
//! overview and the mission page go to `target/screenshots/` (paths
//! printed); the README's `docs/images/console-overview.png` is a copy of
//! the overview's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsloop_core::audit::AuditLog;
use opsloop_core::bus::memory::MemoryBus;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::proto::v1 as pb;
use opsloop_core::secrets::SecretStore;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_headless_browser() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The alerter, whose Alertmanager API the console's alerts page uses.
    let alerter_shutdown = CancellationToken::new();
    let alerter_infra = {
        let config = load(&ConfigSources::env_only([
            ("OPSLOOP__ALERTER__GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("OPSLOOP__ALERTER__HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("OPSLOOP__DATABASE__URL", db.url.clone()),
            (
                "OPSLOOP__AUDIT__LOG_PATH",
                dir.path().join("alerter-audit.jsonl").display().to_string(),
            ),
        ]))
        .expect("alerter config");
        let secrets = SecretStore::with_sources(
            None,
            dir.path(),
            vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned())],
        );
        let mut infra = Infra::connect(config, secrets, alerter_shutdown.clone())
            .await
            .expect("alerter infra");
        infra.bus = Arc::new(MemoryBus::new());
        infra
    };
    let alerter = opsloop_alerter::AlerterApp::build(alerter_infra)
        .await
        .expect("alerter");
    let alerter_http = alerter.http_addr().expect("alerter http");
    let alerter_task = tokio::spawn(alerter.run_until_stopped());
    opsloop_e2e::wait_for_status(
        &format!("http://{alerter_http}/healthz"),
        200,
        Duration::from_secs(20),
    )
    .await;

    let config = load(&ConfigSources::env_only([
        (
            "OPSLOOP__API__CONSOLE__ALERTER_URL",
            format!("http://{alerter_http}"),
        ),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__DATABASE__URL", db.url.clone()),
        (
            "OPSLOOP__AUDIT__LOG_PATH",
            dir.path().join("audit.jsonl").display().to_string(),
        ),
        ("OPSLOOP__API__STATUS__HEARTBEAT_URL", String::new()),
        ("OPSLOOP__API__STATUS__ALERTER_URL", String::new()),
        ("OPSLOOP__API__STATUS__BACKUP_URL", String::new()),
    ]))
    .expect("config");
    let secrets = SecretStore::with_sources(
        None,
        dir.path(),
        vec![
            ("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
            ("OPSLOOP_AGENT_TOKEN".to_owned(), AGENT.to_owned()),
            ("OPSLOOP_VIEWER_TOKEN".to_owned(), VIEWER.to_owned()),
            ("OPSLOOP_CONSOLE_ALERTER_TOKEN".to_owned(), ADMIN.to_owned()),
        ],
    );
    let auth = opsloop_core::auth::Auth::from_secrets(&secrets, Some(db.db.clone())).expect("auth");
    let shutdown = CancellationToken::new();
    let infra = Infra {
        audit: Arc::new(AuditLog::new(&config.settings.audit)),
        config,
        db: db.db.clone(),
        bus: Arc::new(MemoryBus::new()),
        secrets,
        auth,
        shutdown: shutdown.clone(),
    };
    let app = opsloop_api::ApiApp::build(infra).await.expect("build");
    let http = app.http_addr().expect("http");
    let grpc = app.grpc_addr().expect("grpc");
    let task = tokio::spawn(app.run_until_stopped());
    let base = format!("http://{http}");
    opsloop_e2e::wait_for_status(&format!("{base}/healthz"), 200, Duration::from_secs(20)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
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
    shutdown.cancel();
    alerter_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), alerter_task).await;
    db.cleanup().await;
}
