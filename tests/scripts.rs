//! The operator scripts in `scripts/` run with bash against a live process
//! stack (`opsloop_e2e::stack`): smoke (pass, repeat, simulated failure, a
//! stopped daemon), backup_now, restore, the daily checklists (posted to a
//! recording receiver), release_check (its smoke stage passing and
//! failing, the coverage floor on a fixture), and go_no_go (GO, and each
//! NO-GO reason: a missing secret, a stale backup, a failing smoke, the
//! broker reconnecting behind a proxy the test cuts). Every script run here
//! traces itself (`set -x` through `BASH_ENV`) and no secret may appear in anything
//! it prints. Without a tool, the CLI or the token each script stops at once
//! with one line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use opsloop_core::bus::testing::{amqp_url, isolated_settings, require_rabbitmq};
use opsloop_core::store::testing::fresh_postgres;
use opsloop_e2e::stack::{ADMIN_TOKEN, AGENT_TOKEN, DAEMONS, Stack};
use sea_orm::{ConnectionTrait, Database, Statement};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const SCRIPTS: [&str; 7] = [
    "smoke.sh",
    "go_no_go.sh",
    "daily_health_check.sh",
    "backup_now.sh",
    "restore.sh",
    "release_check.sh",
    "rotate_secrets_check.sh",
];

/// Secret values no script may print (with tracing on).
const DB_PASSWORD: &str = "pw-5e1f0c2d9a";
const SECRET_FILES: [(&str, &str); 6] = [
    ("admin_token", ADMIN_TOKEN),
    ("agent_token", AGENT_TOKEN),
    (
        "database_url",
        "postgres://opsloop:pw-5e1f0c2d9a@db/opsloop",
    ),
    ("amqp_url", "amqp://opsloop:mq-71c4b0e3aa@mq:5672/%2f"),
    ("postgres_password", DB_PASSWORD),
    ("rabbitmq_password", "mq-71c4b0e3aa"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What a script run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }

    fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l == line)
    }

    fn has_line_starting(&self, prefix: &str) -> bool {
        self.stdout.lines().any(|l| l.starts_with(prefix))
    }
}

/// `tool` on the test's PATH.
fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.exists())
        })
        .unwrap_or_else(|| panic!("{tool} on PATH"))
}

/// Runs `bash scripts/<script> args` with `env` on top of a clean
/// environment (PATH, HOME, and `set -x` for every bash through
/// BASH_ENV), and checks that no secret value appears in its output.
async fn script(script: &str, args: &[&str], env: &[(String, String)]) -> Run {
    let trace = std::env::temp_dir().join("opsloop-scripts-xtrace.sh");
    std::fs::write(&trace, "set -x\n").expect("BASH_ENV file");
    let mut command = tokio::process::Command::new(which("bash"));
    command
        .arg(repo().join("scripts").join(script))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        // Every bash started below traces itself (nested scripts too).
        .env("BASH_ENV", &trace)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.expect("run bash");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for (name, value) in SECRET_FILES {
        assert!(
            !run.stdout.contains(value) && !run.stderr.contains(value),
            "{script} {args:?} printed the value of {name}:\n{}",
            run.all()
        );
    }
    assert!(
        run.stderr.contains("+ "),
        "{script} ran without tracing, so the secret check proves nothing:\n{}",
        run.all()
    );
    run
}

/// A TCP proxy in front of RabbitMQ that the test can cut (every
/// connection closed, new ones refused) and restore.
#[derive(Clone)]
struct CuttableProxy {
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let proxy = Self {
            cut: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if p.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                p.open.lock().expect("proxy").push(task);
            }
        });
        (proxy, addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.open.lock().expect("proxy").drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Bodies POSTed to the recording receiver.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<String>>>);

async fn start_receiver() -> (String, Inbox) {
    async fn record(State(inbox): State<Inbox>, body: String) -> &'static str {
        inbox.0.lock().expect("inbox").push(body);
        "ok"
    }
    let inbox = Inbox::default();
    let app = Router::new()
        .route("/summary", post(record))
        .with_state(inbox.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/summary"), inbox)
}

/// The scripts' environment for `stack`.
fn stack_env(stack: &Stack, secrets: &Path) -> Vec<(String, String)> {
    let s = |k: &str, v: String| (k.to_owned(), v);
    vec![
        s("API_HTTP", stack.http_url("opsloop-api")),
        s("HEARTBEAT_HTTP", stack.http_url("opsloop-heartbeat-worker")),
        s("ALERTER_HTTP", stack.http_url("opsloop-alerter")),
        s("BACKUP_HTTP", stack.http_url("opsloop-backup-agent")),
        s("OPSLOOP_ENDPOINT", stack.grpc_url("opsloop-api")),
        s(
            "OPSLOOP_ALERTER_ENDPOINT",
            stack.grpc_url("opsloop-alerter"),
        ),
        s(
            "OPSLOOP_BACKUP_ENDPOINT",
            stack.grpc_url("opsloop-backup-agent"),
        ),
        s(
            "OPSLOOP_HEARTBEAT_ENDPOINT",
            stack.http_url("opsloop-heartbeat-worker"),
        ),
        s(
            "OPSLOOP_TOKEN_FILE",
            secrets.join("admin_token").display().to_string(),
        ),
        s(
            "OPSLOOP_BIN",
            opsloop_e2e::binary("opsloop").display().to_string(),
        ),
        s("OPSLOOP_CONFIG", stack.config.display().to_string()),
        s("GO_NO_GO_SECRETS_DIR", secrets.display().to_string()),
        s("SMOKE_ALERT_RECEIVER", "summary".to_owned()),
        s("SMOKE_TIMEOUT", "20".to_owned()),
        // promtool's lint is stack_e2e's business; here the scripts are.
        s("SMOKE_STRICT_METRICS", "0".to_owned()),
        // A failed smoke keeps its artefacts here (removed with the stack).
        s(
            "SMOKE_ARTIFACTS_DIR",
            stack.dir.join("smoke-failures").display().to_string(),
        ),
    ]
}

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_scripts_against_a_live_stack() {
    let started = Instant::now();
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    let mut bus = isolated_settings(&amqp_url());
    let upstream = bus
        .url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_owned();
    let (proxy, proxy_addr) = CuttableProxy::start(upstream.clone()).await;
    bus.url = bus.url.replace(&upstream, &proxy_addr);
    let (receiver, inbox) = start_receiver().await;
    let mut stack = Stack::new(
        &db.url,
        &bus,
        "",
        &[("OPSLOOP_SLACK_SUMMARY_WEBHOOK_URL", receiver)],
    );
    stack.start_all();
    stack.wait_ready(Duration::from_secs(30)).await;
    let secrets = stack.dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    for (name, value) in SECRET_FILES {
        std::fs::write(secrets.join(name), format!("{value}\n")).expect("secret");
    }
    let env = stack_env(&stack, &secrets);
    let stack_up = started.elapsed();

    // smoke: two passing iterations.
    let run = script("smoke.sh", &[], &with(&env, &[("SMOKE_REPEAT_COUNT", "2")])).await;
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.has_line("smoke: iteration 2/2 passed"), "{}", run.all());
    assert!(
        run.last_line()
            .starts_with("smoke: passed (2 iteration(s), "),
        "{}",
        run.all()
    );

    // backup_now: taken and verified (go_no_go needs a verified backup).
    let run = script("backup_now.sh", &[], &env).await;
    assert_eq!(run.code, 0, "{}", run.all());
    let verified = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("backup_now: verified "))
        .unwrap_or_else(|| panic!("no verified line:\n{}", run.all()));
    let backup_id = verified.split(' ').next().expect("id").to_owned();
    assert!(
        run.has_line_starting(&format!("backup_now: backup {backup_id}: completed (")),
        "{}",
        run.all()
    );

    // The morning checklist on a healthy stack: all good.
    let run = script("daily_health_check.sh", &["--morning"], &env).await;
    assert_eq!(run.code, 0, "{}", run.all());
    for line in [
        "ok     api ready",
        "ok     backup-agent ready",
        "ok     errors: 0 failed missions, 0 failed steps in the last 24 h",
        "ok     0 firing alert(s) above info",
        "       API usage per resource: not available: resource usage and pricing come with the governance issue, which has not landed",
        "ok     cost: $0.00 today of $30.00, $0.00 this month of $800.00 (per resource: not available until the governance issue lands)",
    ] {
        assert!(run.has_line(line), "missing {line:?}:\n{}", run.all());
    }
    assert!(
        run.has_line_starting(&format!("ok     newest backup {backup_id} is 0.")),
        "{}",
        run.all()
    );
    assert_eq!(run.last_line(), "daily_health_check: morning: all good");

    // release_check: the smoke stage against this stack, passing.
    let release_log = stack.dir.join("release_check.log");
    let run = script(
        "release_check.sh",
        &[],
        &with(&env, &[("RELEASE_CHECK_STAGES", "smoke")]),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.has_line("== smoke"), "{}", run.all());
    assert!(
        run.last_line()
            .starts_with("release_check: GO (stages: smoke; "),
        "{}",
        run.all()
    );
    std::fs::write(&release_log, &run.stdout).expect("release log");
    let log = release_log.display().to_string();

    // go_no_go: GO, with smoke three times.
    let run = script("go_no_go.sh", &["--release-check-log", &log], &env).await;
    assert_eq!(run.code, 0, "{}", run.all());
    for prefix in [
        "  release check  ok    release_check: GO (stages: smoke; ",
        "  smoke x3       ok    3/3 passed in a row",
        "  secrets        ok    6 required present in ",
        "  daemons        ok    /healthz and /metrics answer on api, heartbeat-worker, alerter, backup-agent",
        "  broker         ok    connection active on api heartbeat-worker alerter backup-agent",
        &format!("  backup         ok    newest verified backup {backup_id} is 0."),
    ] {
        assert!(
            run.has_line_starting(prefix),
            "missing {prefix:?}:\n{}",
            run.all()
        );
    }
    assert_eq!(run.last_line(), "go_no_go: GO");
    let quick = with(&env, &[("GO_NO_GO_SMOKE_COUNT", "1")]);

    // NO-GO: a missing secret (named; its value never read).
    let moved = stack.dir.join("agent_token.moved");
    std::fs::rename(secrets.join("agent_token"), &moved).expect("move secret");
    let run = script("go_no_go.sh", &["--release-check-log", &log], &quick).await;
    std::fs::rename(&moved, secrets.join("agent_token")).expect("put back");
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(
        run.last_line(),
        format!(
            "go_no_go: NO-GO: secrets (missing or empty in {}: agent_token)",
            secrets.display()
        ),
        "{}",
        run.all()
    );

    // NO-GO: the newest verified backup is two days old.
    let shift = |sign: &str| {
        format!(
            "UPDATE backups SET finished_at = finished_at {sign} interval '2 days', \
             started_at = started_at {sign} interval '2 days'"
        )
    };
    db.db
        .execute_unprepared(&shift("-"))
        .await
        .expect("age backups");
    let run = script("go_no_go.sh", &["--release-check-log", &log], &quick).await;
    db.db
        .execute_unprepared(&shift("+"))
        .await
        .expect("restore backup times");
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.last_line().starts_with(&format!(
            "go_no_go: NO-GO: backup (newest verified backup {backup_id} is 48."
        )) && run
            .last_line()
            .ends_with(" h old (limit 24 h): run scripts/backup_now.sh)"),
        "{}",
        run.all()
    );

    // NO-GO: smoke fails (its test alert goes to a receiver that does not exist).
    let run = script(
        "go_no_go.sh",
        &["--release-check-log", &log],
        &with(&quick, &[("SMOKE_ALERT_RECEIVER", "no-such-receiver")]),
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(
        run.last_line(),
        "go_no_go: NO-GO: smoke x1 (failed_iteration=1/1, smoke: FAILED at stage: alert to receiver no-such-receiver)",
        "{}",
        run.all()
    );

    // NO-GO: a failed release check log.
    let failed_log = stack.dir.join("release_failed.log");
    std::fs::write(
        &failed_log,
        "== fmt\nrelease_check: FAILED stage: fmt (1s) -> NO-GO\n",
    )
    .expect("log");
    let run = script(
        "go_no_go.sh",
        &["--release-check-log", &failed_log.display().to_string()],
        &quick,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(
        run.last_line(),
        "go_no_go: NO-GO: release check (release_check: FAILED stage: fmt (1s) -> NO-GO)"
    );

    // NO-GO: the broker connection is down and the daemons reconnect.
    proxy.cut();
    let readyz = format!("{}/readyz", stack.http_url("opsloop-api"));
    opsloop_e2e::wait_for_status(&readyz, 503, Duration::from_secs(20)).await;
    let run = script("go_no_go.sh", &["--release-check-log", &log], &quick).await;
    proxy.restore();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.has_line_starting(
            "  broker         FAIL  api: rabbitmq bus disconnected; reconnecting"
        ),
        "{}",
        run.all()
    );
    assert!(
        run.last_line()
            .contains("broker (api: rabbitmq bus disconnected; reconnecting"),
        "{}",
        run.all()
    );
    assert!(
        run.has_line_starting("  daemons        ok "),
        "{}",
        run.all()
    );
    stack.wait_ready(Duration::from_secs(30)).await;

    // smoke --simulate-failure: exit 1, diagnostics, artefacts, the
    // iteration last.
    let artefacts = stack.dir.join("smoke-artefacts");
    let run = script(
        "smoke.sh",
        &["--simulate-failure"],
        &with(
            &env,
            &[
                ("SMOKE_REPEAT_COUNT", "3"),
                ("SMOKE_ARTIFACTS_DIR", &artefacts.display().to_string()),
            ],
        ),
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(run.last_line(), "failed_iteration=1/3", "{}", run.all());
    assert!(
        run.has_line_starting("smoke: FAILED at stage: worker and mission "),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains(&format!(
            "{}/readyz: {{\"checks\"",
            stack.http_url("opsloop-api")
        )),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains(&format!(
            "artefacts: {} (attach them to the escalation",
            artefacts.display()
        )),
        "{}",
        run.all()
    );
    let mission =
        std::fs::read_to_string(artefacts.join("mission.json")).expect("mission.json kept");
    assert!(mission.contains("\"failed\""), "{mission}");

    // smoke with a stopped daemon: names it.
    stack.kill9("opsloop-alerter");
    let run = script("smoke.sh", &[], &env).await;
    stack.start("opsloop-alerter");
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("failing services: alerter"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains(&format!(
            "smoke: alerter {}/healthz answered 000",
            stack.http_url("opsloop-alerter")
        )),
        "{}",
        run.all()
    );
    assert!(
        run.has_line("smoke: FAILED at stage: alerter /healthz"),
        "{}",
        run.all()
    );

    // release_check: a failing smoke stage is named last.
    let run = script(
        "release_check.sh",
        &[],
        &with(
            &env,
            &[
                ("RELEASE_CHECK_STAGES", "smoke"),
                ("SMOKE_ALERT_RECEIVER", "no-such-receiver"),
            ],
        ),
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.last_line()
            .starts_with("release_check: FAILED stage: smoke (")
            && run.last_line().ends_with("s) -> NO-GO"),
        "{}",
        run.all()
    );
    stack.wait_ready(Duration::from_secs(30)).await;

    // The morning after the simulated failure: the error needs attention.
    let run = script("daily_health_check.sh", &["--morning"], &env).await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.has_line(
            "CHECK  errors: 1 failed missions, 1 failed steps in the last 24 h (opsloop mission list --status failed)"
        ),
        "{}",
        run.all()
    );
    assert_eq!(
        run.last_line(),
        "daily_health_check: morning: needs attention (1): docs/runbook.md#daily-checklist"
    );

    // The evening checklist, posted to the summary receiver.
    let run = script("daily_health_check.sh", &["--evening", "--post"], &env).await;
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.has_line_starting("ok     performance (since start): gRPC "),
        "{}",
        run.all()
    );
    assert!(
        run.has_line_starting("ok     data growth since "),
        "{}",
        run.all()
    );
    assert!(
        run.has_line(
            "ok     tomorrow: backup at cron '0 2 * * *' (UTC), daily summary at '0 6 * * *', \
             weekly report at '0 9 * * 1' (UTC); 0 trigger rule(s) enabled, 4 disabled"
        ),
        "{}",
        run.all()
    );
    assert!(
        run.has_line("daily_health_check: evening: all good"),
        "{}",
        run.all()
    );
    assert_eq!(
        run.last_line(),
        "daily_health_check: posted to receiver summary"
    );
    let posted = inbox.0.lock().expect("inbox").clone();
    assert!(
        posted
            .iter()
            .any(|b| b.contains("evening checklist") && b.contains("all good")),
        "the summary receiver got: {posted:?}"
    );

    // restore: lists without an id; refuses without a target; restores
    // into a scratch database (URL with a password, from a file) when
    // confirmed.
    let run = script("restore.sh", &[], &env).await;
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains(&backup_id), "{}", run.all());
    let run = script("restore.sh", &[&backup_id], &env).await;
    assert_eq!(run.code, 2, "{}", run.all());
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| !l.starts_with('+'))
            .collect::<Vec<_>>(),
        [
            "restore: no target database: set RESTORE_TARGET_URL_FILE (a file holding the URL) or OPSLOOP_RESTORE_TARGET_URL"
        ]
    );
    let scratch = format!("opsloop_restore_{}", uuid::Uuid::new_v4().simple());
    db.db
        .execute_unprepared(&format!("CREATE DATABASE \"{scratch}\""))
        .await
        .expect("scratch database");
    // Trust authentication accepts any password: the value must still
    // never be printed.
    let base = db.url.rsplit_once('/').expect("url").0;
    let target_url = format!(
        "{}/{scratch}",
        base.replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1)
    );
    let url_file = stack.dir.join("restore_url");
    std::fs::write(&url_file, format!("{target_url}\n")).expect("url file");
    let restore_env = with(
        &env,
        &[("RESTORE_TARGET_URL_FILE", &url_file.display().to_string())],
    );
    let run = script("restore.sh", &[&backup_id], &restore_env).await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(
            "restore: not confirmed: type 'restore' at the prompt or set RESTORE_CONFIRM=restore"
        ),
        "{}",
        run.all()
    );
    let run = script(
        "restore.sh",
        &[&backup_id],
        &with(&restore_env, &[("RESTORE_CONFIRM", "restore")]),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.last_line().starts_with("restore: done in ")
            && run
                .last_line()
                .ends_with("s; run scripts/smoke.sh before reopening traffic"),
        "{}",
        run.all()
    );
    let restored = Database::connect(&target_url).await.expect("scratch db");
    let proposals = restored
        .query_one_raw(Statement::from_string(
            restored.get_database_backend(),
            "SELECT count(*) FROM proposals",
        ))
        .await
        .expect("count")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("n");
    assert!(
        proposals >= 2,
        "the restored database has {proposals} proposals"
    );
    let _ = restored.close().await;
    let _ = db
        .db
        .execute_unprepared(&format!("DROP DATABASE \"{scratch}\" WITH (FORCE)"))
        .await;

    println!(
        "scripts e2e: stack up in {stack_up:?}, all scripts in {:?}",
        started.elapsed()
    );
    for (binary, _, _) in DAEMONS {
        assert!(
            stack.daemons.contains_key(binary),
            "{binary} running at the end"
        );
    }
    drop(stack);
    db.cleanup().await;
}

/// A directory with the basic tools a script needs to start and print its
/// one line, and none of curl, docker, cargo or opsloop.
fn bare_path(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("bare dir");
    for tool in [
        "bash", "dirname", "cat", "sed", "mktemp", "head", "tail", "grep", "date", "rm", "python3",
        "find", "od", "tr", "chmod",
    ] {
        let link = dir.join(tool);
        if !link.exists() {
            std::os::unix::fs::symlink(which(tool), link).expect("symlink");
        }
    }
    dir.display().to_string()
}

/// Each script, without what it needs, stops at once with one line naming
/// the missing piece and how to get it.
#[tokio::test]
async fn scripts_without_their_tools_stop_with_one_line() {
    let dir = std::env::temp_dir().join(format!("opsloop-bare-{}", uuid::Uuid::new_v4().simple()));
    let bare = bare_path(&dir.join("bin"));
    let token_file = dir.join("admin_token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("token");
    let token = (
        "OPSLOOP_TOKEN_FILE".to_owned(),
        token_file.display().to_string(),
    );
    let cli = (
        "OPSLOOP_BIN".to_owned(),
        opsloop_e2e::binary("opsloop").display().to_string(),
    );
    let no_cli = ("OPSLOOP_BIN".to_owned(), "/nonexistent/opsloop".to_owned());
    let path = |p: &str| ("PATH".to_owned(), p.to_owned());
    let full_path = std::env::var("PATH").unwrap_or_default();
    // (script, arguments, environment, the one line it must print)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(String, String)>, String);
    let cases: Vec<Case> = vec![
        ("smoke.sh", vec![], vec![path(&bare), token.clone(), cli.clone()],
         "smoke: curl not found: apt-get install curl".into()),
        ("smoke.sh", vec![], vec![path(&full_path), token.clone(), no_cli.clone()],
         "smoke: opsloop (/nonexistent/opsloop from OPSLOOP_BIN) not found: point OPSLOOP_BIN at the opsloop binary".into()),
        ("smoke.sh", vec![], vec![path(&full_path), cli.clone()],
         "smoke: admin token not found: set OPSLOOP_TOKEN_FILE=deploy/compose/secrets/admin_token (or OPSLOOP_TOKEN; OPSLOOP_TOKEN= for a stack without tokens)".into()),
        ("smoke.sh", vec![], vec![path(&full_path), cli.clone(), ("OPSLOOP_TOKEN_FILE".into(), "/nonexistent/token".into())],
         "smoke: token file /nonexistent/token not found: point OPSLOOP_TOKEN_FILE at the admin token (compose: deploy/compose/secrets/admin_token)".into()),
        ("go_no_go.sh", vec![], vec![path(&full_path), cli.clone()],
         "go_no_go: admin token not found: set OPSLOOP_TOKEN_FILE=deploy/compose/secrets/admin_token (or OPSLOOP_TOKEN; OPSLOOP_TOKEN= for a stack without tokens)".into()),
        ("go_no_go.sh", vec![], vec![path(&bare), token.clone(), cli.clone()],
         "go_no_go: curl not found: apt-get install curl".into()),
        ("daily_health_check.sh", vec!["--morning"], vec![path(&full_path), token.clone(), no_cli.clone()],
         "daily_health_check: opsloop (/nonexistent/opsloop from OPSLOOP_BIN) not found: point OPSLOOP_BIN at the opsloop binary".into()),
        ("daily_health_check.sh", vec!["--evening"], vec![path(&full_path), cli.clone()],
         "daily_health_check: admin token not found: set OPSLOOP_TOKEN_FILE=deploy/compose/secrets/admin_token (or OPSLOOP_TOKEN; OPSLOOP_TOKEN= for a stack without tokens)".into()),
        ("backup_now.sh", vec![], vec![path(&full_path), cli.clone()],
         "backup_now: admin token not found: set OPSLOOP_TOKEN_FILE=deploy/compose/secrets/admin_token (or OPSLOOP_TOKEN; OPSLOOP_TOKEN= for a stack without tokens)".into()),
        ("backup_now.sh", vec![], vec![path(&full_path), token.clone(), no_cli.clone()],
         "backup_now: opsloop (/nonexistent/opsloop from OPSLOOP_BIN) not found: point OPSLOOP_BIN at the opsloop binary".into()),
        ("restore.sh", vec![], vec![path(&full_path), cli.clone()],
         "restore: admin token not found: set OPSLOOP_TOKEN_FILE=deploy/compose/secrets/admin_token (or OPSLOOP_TOKEN; OPSLOOP_TOKEN= for a stack without tokens)".into()),
        ("rotate_secrets_check.sh", vec![], vec![path(&bare), token.clone(), cli.clone()],
         "rotate: docker not found: install Docker (apt-get install docker.io docker-compose)".into()),
        ("release_check.sh", vec![], vec![path(&bare)],
         "release_check: cargo not found: install Rust with rustup (https://rustup.rs)".into()),
        ("release_check.sh", vec![], vec![path(&full_path), ("RELEASE_CHECK_STAGES".into(), "fmt,lint".into())],
         "release_check: unknown stage lint in RELEASE_CHECK_STAGES (stages: fmt clippy tests deploy coverage smoke)".into()),
    ];
    for (name, args, env, want) in cases {
        let run = script(name, &args, &env).await;
        let said: Vec<&str> = run
            .stderr
            .lines()
            .chain(run.stdout.lines())
            .filter(|l| !l.starts_with('+') && !l.starts_with("rotate: tracing switched off"))
            .collect();
        assert_eq!(run.code, 2, "{name} {env:?}:\n{}", run.all());
        assert_eq!(said, [want.as_str()], "{name} {env:?}:\n{}", run.all());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The coverage stage judges llvm-cov's JSON summary: line coverage per
/// crate, the total against the floor, the failing stage named last.
#[tokio::test]
async fn release_check_coverage_stage_fails_under_the_floor() {
    let dir = std::env::temp_dir().join(format!("opsloop-cov-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let root = repo();
    let file = |path: &str, covered: u64, count: u64| {
        serde_json::json!({
            "filename": root.join(path).display().to_string(),
            "summary": {"lines": {"covered": covered, "count": count, "percent": 0.0}}
        })
    };
    let report = serde_json::json!({
        "data": [{"files": [
            file("crates/core/src/a.rs", 30, 40),
            file("crates/core/src/b.rs", 10, 10),
            file("crates/api/src/lib.rs", 10, 50),
            file("migrations/src/lib.rs", 0, 0),
        ]}]
    });
    let fixture = dir.join("coverage.json");
    std::fs::write(&fixture, report.to_string()).expect("fixture");
    let env = |floor: &str| {
        vec![
            ("RELEASE_CHECK_STAGES".to_owned(), "coverage".to_owned()),
            ("COVERAGE_JSON".to_owned(), fixture.display().to_string()),
            ("COVERAGE_FLOOR".to_owned(), floor.to_owned()),
        ]
    };
    let run = script("release_check.sh", &[], &env("55.5")).await;
    assert_eq!(run.code, 1, "{}", run.all());
    for line in [
        "coverage: crates/api                    20.0%  (10/50 lines)",
        "coverage: crates/core                   80.0%  (40/50 lines)",
        "coverage: migrations                     0.0%  (0/0 lines)",
        "coverage: total 50.0% of 100 lines (floor 55.5%): UNDER THE FLOOR",
    ] {
        assert!(run.has_line(line), "missing {line:?}:\n{}", run.all());
    }
    assert!(
        run.last_line()
            .starts_with("release_check: FAILED stage: coverage ("),
        "{}",
        run.all()
    );
    let run = script("release_check.sh", &[], &env("50")).await;
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.has_line("coverage: total 50.0% of 100 lines (floor 50.0%): ok"),
        "{}",
        run.all()
    );
    assert!(
        run.last_line()
            .starts_with("release_check: GO (stages: coverage; "),
        "{}",
        run.all()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every script in scripts/ is one this file runs (or compose_e2e.sh's own
/// stages run, for the container-only ones).
#[test]
fn every_operator_script_is_run_here() {
    let run_by_ci = [
        "check_deploy.sh",
        "compose_e2e.sh",
        "systemd_e2e.sh",
        "offline_images.sh",
        "test.sh",
    ];
    for entry in std::fs::read_dir(repo().join("scripts")).expect("scripts/") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".sh") {
            continue;
        }
        assert!(
            SCRIPTS.contains(&name.as_str()) || run_by_ci.contains(&name.as_str()),
            "scripts/{name} is run by no test: add it to tests/scripts.rs"
        );
    }
}
