//! The access table (`opsloop_core::access::TABLE`) against what the daemons
//! serve: every gRPC method of the compiled contract and every HTTP route in
//! the daemons' source is in the table (a missing one fails here), and a walk
//! of the table over the four daemons running in-process on real PostgreSQL
//! — without credentials → 401/UNAUTHENTICATED, with a wrong role →
//! 403/PERMISSION_DENIED, with each right role → neither. Also named tokens:
//! create → use → revoke → refused after one refresh; expired tokens; HTTP
//! basic auth on the alerter's Alertmanager API.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opsloop_core::access::{self, Access, Role, TABLE, Target};
use opsloop_core::auth::{self, Auth};
use opsloop_core::bus::memory::MemoryBus;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::{TestDb, fresh_postgres};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

const ADMIN_SECRET: &str = "access-table-admin-secret";

/// Every `(path)` of the gRPC services the daemons serve: the `opsloop.v1`
/// contract, health and reflection.
fn compiled_grpc_methods() -> BTreeSet<String> {
    let mut methods = BTreeSet::new();
    {
        let set = prost_types::FileDescriptorSet::decode(opsloop_core::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    // Health and reflection come from tonic-health and tonic-reflection.
    methods.insert("/grpc.health.v1.Health/Check".into());
    methods.insert("/grpc.health.v1.Health/Watch".into());
    methods.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
    methods.insert("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".into());
    methods
}

#[test]
fn every_grpc_method_is_in_the_table_and_every_entry_is_served() {
    let compiled = compiled_grpc_methods();
    let missing: Vec<_> = compiled
        .iter()
        .filter(|path| access::grpc_access(path).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "gRPC methods missing from opsloop_core::access::TABLE: {missing:?}"
    );
    for entry in TABLE {
        if let Target::Grpc(path) = entry.target {
            assert!(
                compiled.contains(path),
                "{path} is in the access table but no daemon serves it"
            );
        }
    }
}

/// `(daemon, METHOD, pattern)` of every `.route("…", get(…).post(…))` in a
/// daemon crate's sources; `*` for core's routes, which every daemon serves.
fn source_routes() -> BTreeSet<(String, String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut routes = BTreeSet::new();
    for (dir, daemon) in [
        ("crates/core/src", "*"),
        ("crates/api/src", "api"),
        ("crates/alerter/src", "alerter"),
        ("crates/backup-agent/src", "backup-agent"),
        ("crates/heartbeat-worker/src", "heartbeat-worker"),
    ] {
        let mut stack = vec![root.join(dir)];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("read dir") {
                    stack.push(entry.expect("dir entry").path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            for (i, _) in text.match_indices(".route(") {
                let rest = &text[i + ".route(".len()..];
                let Some(start) = rest.find('"') else {
                    continue;
                };
                let after = &rest[start + 1..];
                let Some(end) = after.find('"') else { continue };
                let pattern = &after[..end];
                // The method router: up to the `)` closing `.route(`.
                let mut depth = 1;
                let mut stop = after.len();
                for (j, c) in after[end + 1..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                stop = end + 1 + j;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let methods = &after[end + 1..stop];
                for (name, method) in [
                    ("get", "GET"),
                    ("post", "POST"),
                    ("put", "PUT"),
                    ("delete", "DELETE"),
                    ("patch", "PATCH"),
                ] {
                    let called = methods.match_indices(&format!("{name}(")).any(|(k, _)| {
                        k == 0 || {
                            let before = methods.as_bytes()[k - 1];
                            !(before.is_ascii_alphanumeric() || before == b'_')
                        }
                    });
                    if called {
                        routes.insert((daemon.to_owned(), method.to_owned(), pattern.to_owned()));
                    }
                }
            }
        }
    }
    routes
}

#[test]
fn every_http_route_is_in_the_table_and_every_entry_is_served() {
    let routes = source_routes();
    assert!(
        routes.contains(&(
            "alerter".into(),
            "DELETE".into(),
            "/api/v2/silence/{id}".into()
        )),
        "the route scan finds the alerter's routes: {routes:?}"
    );
    // Alertmanager's alert groups and probes, as Grafana and karma call them.
    for (method, pattern, access) in [
        ("GET", "/api/v2/alerts/groups", "admin, agent, viewer"),
        ("GET", "/-/healthy", "public"),
        ("GET", "/-/ready", "public"),
    ] {
        assert!(
            routes.contains(&("alerter".into(), method.into(), pattern.into())),
            "the alerter routes {method} {pattern}: {routes:?}"
        );
        let listed =
            access::http_access("alerter", method, pattern).map(|a| a.role_names().join(", "));
        assert_eq!(listed.as_deref(), Some(access), "{method} {pattern}");
        assert_eq!(
            access::http_access("alerter", "HEAD", pattern),
            access::http_access("alerter", method, pattern),
            "HEAD {pattern} is GET"
        );
    }
    let daemons = ["api", "alerter", "backup-agent", "heartbeat-worker"];
    for (daemon, method, pattern) in &routes {
        let serving: Vec<&str> = if daemon == "*" {
            daemons.to_vec()
        } else {
            vec![daemon.as_str()]
        };
        for d in serving {
            assert!(
                access::http_access(d, method, pattern).is_some(),
                "{d}: {method} {pattern} is missing from opsloop_core::access::TABLE"
            );
        }
    }
    for entry in TABLE {
        if let Target::Http(method, pattern) = entry.target {
            assert!(
                routes.iter().any(|(d, m, p)| m == method
                    && p == pattern
                    && (d == "*" || entry.daemons.includes(d))),
                "{method} {pattern} is in the access table but no daemon routes it"
            );
        }
    }
}

#[test]
fn readme_roles_section_is_rendered_from_the_table() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README.md");
    let begin = "<!-- access-table:begin -->\n";
    let end = "<!-- access-table:end -->";
    let start = readme
        .find(begin)
        .expect("README has the access-table markers")
        + begin.len();
    let stop = readme[start..].find(end).expect("end marker") + start;
    if std::env::var_os("OPSLOOP_BLESS_README").is_some() {
        let updated = format!(
            "{}{}{}",
            &readme[..start],
            access::render_markdown(),
            &readme[stop..]
        );
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
            updated,
        )
        .expect("write README.md");
        return;
    }
    assert_eq!(
        &readme[start..stop],
        access::render_markdown(),
        "README's roles section differs from the access table; run this test with OPSLOOP_BLESS_README=1 to rewrite it"
    );
}

/// The four daemons in-process on one fresh database, with the bootstrap
/// admin token and one stored token per other role.
struct Fleet {
    db: TestDb,
    shutdown: CancellationToken,
    grpc: Vec<(&'static str, SocketAddr)>,
    http: Vec<(&'static str, SocketAddr)>,
    secrets: Vec<(Role, String)>,
    auths: Vec<Auth>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: std::path::PathBuf,
}

async fn infra(db: &TestDb, dir: &std::path::Path, shutdown: &CancellationToken) -> Infra {
    let config = load(&ConfigSources::env_only([
        ("OPSLOOP__DATABASE__URL", db.url.clone()),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__ALERTER__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__ALERTER__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__BACKUP__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__BACKUP__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        (
            "OPSLOOP__BACKUP__STORE_DIR",
            dir.join("backups").display().to_string(),
        ),
        ("OPSLOOP__HEARTBEAT__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        (
            "OPSLOOP__AUDIT__LOG_PATH",
            dir.join("audit.jsonl").display().to_string(),
        ),
    ]))
    .expect("config");
    let secrets = SecretStore::with_sources(
        None,
        dir,
        vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN_SECRET.to_owned())],
    );
    let mut infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .expect("infra");
    infra.bus = Arc::new(MemoryBus::new());
    infra
}

impl Fleet {
    async fn start() -> Self {
        let db = fresh_postgres().await;
        let dir =
            std::env::temp_dir().join(format!("opsloop-access-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let shutdown = CancellationToken::new();
        let mut secrets = vec![(Role::Admin, ADMIN_SECRET.to_owned())];
        for role in [Role::Agent, Role::AlertSender, Role::Viewer] {
            let (_, secret) = auth::create_token(
                &db.db,
                &format!("test-{}", role.as_str().replace('_', "-")),
                role,
                None,
                "test",
                None,
                chrono::Utc::now(),
            )
            .await
            .expect("create token");
            secrets.push((role, secret));
        }
        let mut fleet = Fleet {
            db,
            shutdown,
            grpc: Vec::new(),
            http: Vec::new(),
            secrets,
            auths: Vec::new(),
            tasks: Vec::new(),
            dir,
        };
        let d = fleet.dir.clone();

        let i = infra(&fleet.db, &d, &fleet.shutdown).await;
        fleet.auths.push(i.auth.clone());
        let app = opsloop_api::ApiApp::build(i).await.expect("api");
        fleet.grpc.push(("api", app.grpc_addr().expect("addr")));
        fleet.http.push(("api", app.http_addr().expect("addr")));
        fleet.tasks.push(tokio::spawn(app.run_until_stopped()));

        let i = infra(&fleet.db, &d, &fleet.shutdown).await;
        fleet.auths.push(i.auth.clone());
        let app = opsloop_alerter::AlerterApp::build(i)
            .await
            .expect("alerter");
        fleet.grpc.push(("alerter", app.grpc_addr().expect("addr")));
        fleet.http.push(("alerter", app.http_addr().expect("addr")));
        fleet.tasks.push(tokio::spawn(app.run_until_stopped()));

        let i = infra(&fleet.db, &d, &fleet.shutdown).await;
        fleet.auths.push(i.auth.clone());
        let app = opsloop_backup_agent::BackupApp::build(i)
            .await
            .expect("backup-agent");
        fleet
            .grpc
            .push(("backup-agent", app.grpc_addr().expect("addr")));
        fleet
            .http
            .push(("backup-agent", app.http_addr().expect("addr")));
        fleet.tasks.push(tokio::spawn(app.run_until_stopped()));

        let i = infra(&fleet.db, &d, &fleet.shutdown).await;
        fleet.auths.push(i.auth.clone());
        let app = opsloop_heartbeat_worker::HeartbeatApp::build(i)
            .await
            .expect("heartbeat-worker");
        fleet
            .http
            .push(("heartbeat-worker", app.http_addr().expect("addr")));
        fleet.tasks.push(tokio::spawn(app.run_until_stopped()));
        fleet
    }

    fn secret(&self, role: Role) -> &str {
        &self
            .secrets
            .iter()
            .find(|(r, _)| *r == role)
            .expect("a token per role")
            .1
    }

    async fn refresh_all(&self) {
        for auth in &self.auths {
            auth.refresh().await.expect("refresh");
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        self.db.cleanup().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls `path` with an empty message and `authorization` (if any); the
/// call's status code (`Ok` once the response headers arrive).
async fn grpc_call(
    addr: SocketAddr,
    path: &'static str,
    authorization: Option<&str>,
) -> tonic::Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let call = grpc.server_streaming(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    );
    match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(Ok(_)) => tonic::Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => panic!("{path}: no answer within 30 s"),
    }
}

async fn http_call(
    client: &reqwest::Client,
    addr: SocketAddr,
    method: &str,
    pattern: &str,
    authorization: Option<&str>,
) -> u16 {
    let path = pattern.replace("{id}", &uuid::Uuid::new_v4().to_string());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, format!("http://{addr}{path}"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if pattern == "/api/v2/alerts" || pattern == "/api/v2/silences" {
        request = request.json(&serde_json::json!([]));
    }
    request.send().await.expect("http call").status().as_u16()
}

fn wrong_role(access: Access) -> Option<Role> {
    Role::ALL.into_iter().find(|r| !access.allows(*r))
}

fn right_roles(access: Access) -> Vec<Option<Role>> {
    match access {
        Access::Public => vec![None],
        Access::Roles(_) => Role::ALL
            .into_iter()
            .filter(|r| access.allows(*r))
            .map(Some)
            .collect(),
    }
}

#[tokio::test]
async fn the_table_is_enforced_on_every_method_and_route_of_every_daemon() {
    let fleet = Fleet::start().await;
    fleet.refresh_all().await;
    let bearer = |role: Role| format!("Bearer {}", fleet.secret(role));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut checked = 0;
    for entry in TABLE {
        match entry.target {
            Target::Grpc(path) => {
                for (daemon, addr) in &fleet.grpc {
                    if !entry.daemons.includes(daemon) {
                        continue;
                    }
                    let anonymous = grpc_call(*addr, path, None).await;
                    if entry.access == Access::Public {
                        assert!(
                            !matches!(
                                anonymous,
                                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                            ),
                            "{daemon} {path}: public, got {anonymous:?}"
                        );
                    } else {
                        assert_eq!(
                            anonymous,
                            tonic::Code::Unauthenticated,
                            "{daemon} {path} without credentials"
                        );
                    }
                    if let Some(role) =
                        wrong_role(entry.access).filter(|_| entry.access != Access::Public)
                    {
                        let got = grpc_call(*addr, path, Some(&bearer(role))).await;
                        assert_eq!(
                            got,
                            tonic::Code::PermissionDenied,
                            "{daemon} {path} as {role}"
                        );
                    }
                    for role in right_roles(entry.access) {
                        let header = role.map(bearer);
                        let got = grpc_call(*addr, path, header.as_deref()).await;
                        assert!(
                            !matches!(
                                got,
                                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                            ),
                            "{daemon} {path} as {role:?}: {got:?}"
                        );
                    }
                    checked += 1;
                }
            }
            Target::Http(method, pattern) => {
                for (daemon, addr) in &fleet.http {
                    if !entry.daemons.includes(daemon) {
                        continue;
                    }
                    if access::checked_by_session(daemon, pattern) && entry.access != Access::Public
                    {
                        let client = reqwest::Client::builder()
                            .redirect(reqwest::redirect::Policy::none())
                            .build()
                            .expect("client");
                        let anonymous = http_call(&client, *addr, method, pattern, None).await;
                        // The console: a session cookie, not a bearer token
                        // (its roles, CSRF and sessions are walked in
                        // crates/api/tests/console.rs). Without one, a page
                        // sends to the sign-in form and an action is refused.
                        let bearer_admin =
                            http_call(&client, *addr, method, pattern, Some(&bearer(Role::Admin)))
                                .await;
                        for got in [anonymous, bearer_admin] {
                            assert!(
                                got == 303 || got == 401,
                                "{daemon} {method} {pattern} without a session: {got}"
                            );
                        }
                        checked += 1;
                        continue;
                    }
                    let anonymous = http_call(&client, *addr, method, pattern, None).await;
                    if entry.access == Access::Public {
                        assert!(
                            anonymous != 401 && anonymous != 403,
                            "{daemon} {method} {pattern}: public, got {anonymous}"
                        );
                    } else {
                        assert_eq!(
                            anonymous, 401,
                            "{daemon} {method} {pattern} without credentials"
                        );
                    }
                    if let Some(role) =
                        wrong_role(entry.access).filter(|_| entry.access != Access::Public)
                    {
                        let got =
                            http_call(&client, *addr, method, pattern, Some(&bearer(role))).await;
                        assert_eq!(got, 403, "{daemon} {method} {pattern} as {role}");
                    }
                    for role in right_roles(entry.access) {
                        let header = role.map(bearer);
                        let got =
                            http_call(&client, *addr, method, pattern, header.as_deref()).await;
                        assert!(
                            got != 401 && got != 403,
                            "{daemon} {method} {pattern} as {role:?}: {got}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > TABLE.len(), "walked {checked} calls");
    // A call that is not in the table is refused, whatever the role.
    let (_, api) = fleet.grpc[0];
    assert_eq!(
        grpc_call(
            api,
            "/opsloop.v1.ProposalService/NoSuchMethod",
            Some(&bearer(Role::Admin))
        )
        .await,
        tonic::Code::PermissionDenied
    );
    // The one middleware recorded every gRPC server's calls and every
    // refusal (the daemons share this process's registry).
    let (_, api_http) = fleet.http[0];
    let metrics = client
        .get(format!("http://{api_http}/metrics"))
        .bearer_auth(fleet.secret(Role::Viewer))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    for expected in [
        r#"opsloop_grpc_requests_total{service="opsloop.v1.AlertService",method="ListAlerts",code="Unauthenticated"}"#,
        r#"opsloop_grpc_requests_total{service="opsloop.v1.BackupService",method="RunBackup",code="PermissionDenied"}"#,
        r#"opsloop_grpc_requests_total{service="opsloop.v1.ProposalService",method="GetProposal",code="InvalidArgument"}"#,
        r#"opsloop_grpc_requests_total{service="unknown",method="unknown",code="PermissionDenied"}"#,
        r#"opsloop_grpc_request_duration_seconds_count{service="grpc.health.v1.Health",method="Check"}"#,
        r#"opsloop_auth_failures_total{daemon="heartbeat-worker",reason="missing"}"#,
        r#"opsloop_auth_failures_total{daemon="alerter",reason="wrong_role"}"#,
        r#"opsloop_auth_failures_total{daemon="api",reason="not_listed"}"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from /metrics"
        );
    }
    fleet.stop().await;
}

fn with<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

fn basic(name: &str, secret: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{name}:{secret}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[tokio::test]
async fn named_tokens_are_created_used_revoked_and_expire() {
    use opsloop_core::proto::v1 as pb;
    let fleet = Fleet::start().await;
    let (_, api) = fleet.grpc[0];
    let (_, alerter_http) = fleet.http[1];
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{api}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut tokens = pb::token_service_client::TokenServiceClient::new(channel.clone());
    let created = tokens
        .create_token(with(
            ADMIN_SECRET,
            pb::CreateTokenRequest {
                name: "ci-worker".into(),
                role: "agent".into(),
                expires_at: None,
            },
        ))
        .await
        .expect("create")
        .into_inner();
    let secret = created.secret;
    assert!(secret.starts_with("olp_"), "{secret}");
    assert_eq!(
        created.token.as_ref().map(|t| t.created_by.as_str()),
        Some(auth::BOOTSTRAP_ADMIN)
    );

    // Used at once on the api (which reloads after a change)…
    let mut proposals = pb::proposal_service_client::ProposalServiceClient::new(channel.clone());
    proposals
        .list_proposals(with(&secret, pb::ListProposalsRequest::default()))
        .await
        .expect("the new token works");
    // …and on another daemon after its refresh.
    let client = reqwest::Client::new();
    let alerts = format!("http://{alerter_http}/api/v2/alerts");
    let get = |auth: String| client.get(&alerts).header("authorization", auth).send();
    assert_eq!(
        get(format!("Bearer {secret}")).await.expect("get").status(),
        401
    );
    fleet.refresh_all().await;
    assert_eq!(
        get(format!("Bearer {secret}")).await.expect("get").status(),
        200
    );

    // Basic auth with the token's name and secret on the Alertmanager API;
    // the secret given as the user name is refused.
    assert_eq!(
        get(basic("ci-worker", &secret))
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(get(basic(&secret, "")).await.expect("get").status(), 401);
    assert_eq!(
        get(basic(&secret, &secret)).await.expect("get").status(),
        401
    );
    assert_eq!(
        get(basic("test-viewer", &secret))
            .await
            .expect("get")
            .status(),
        401
    );

    // Listed without its secret.
    let listed = tokens
        .list_tokens(with(ADMIN_SECRET, pb::ListTokensRequest {}))
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"ci-worker") && names.contains(&auth::BOOTSTRAP_ADMIN),
        "{names:?}"
    );
    assert!(!format!("{listed:?}").contains(&secret));

    // An agent token may not manage tokens: one sentence naming the call and role.
    let denied = tokens
        .list_tokens(with(&secret, pb::ListTokensRequest {}))
        .await
        .expect_err("agent may not list tokens");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "/opsloop.v1.TokenService/ListTokens needs the admin role, and token ci-worker has the agent role"
    );

    // Revoked: refused on the api at once, on the alerter after its refresh.
    tokens
        .revoke_token(with(
            ADMIN_SECRET,
            pb::RevokeTokenRequest {
                name: "ci-worker".into(),
            },
        ))
        .await
        .expect("revoke");
    let refused = proposals
        .list_proposals(with(&secret, pb::ListProposalsRequest::default()))
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(refused.message(), "token ci-worker was revoked");
    assert_eq!(
        get(format!("Bearer {secret}")).await.expect("get").status(),
        200,
        "not yet refreshed"
    );
    fleet.refresh_all().await;
    assert_eq!(
        get(format!("Bearer {secret}")).await.expect("get").status(),
        401
    );

    // Expired: a token whose expiry has passed is refused.
    let (_, old) = auth::create_token(
        &fleet.db.db,
        "old-dashboard",
        Role::Viewer,
        Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1)),
        "test",
        None,
        chrono::Utc::now() - chrono::TimeDelta::days(30),
    )
    .await
    .expect("create expired");
    fleet.refresh_all().await;
    let expired = proposals
        .list_proposals(with(&old, pb::ListProposalsRequest::default()))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), tonic::Code::Unauthenticated);
    assert_eq!(expired.message(), "token old-dashboard has expired");

    // The audit trail names the token, never its secret.
    let audit = std::fs::read_to_string(fleet.dir.join("audit.jsonl")).expect("audit file");
    assert!(audit.contains("\"actor\":\"bootstrap-admin\""), "{audit}");
    assert!(
        audit.contains("token.revoke") && !audit.contains(&secret) && !audit.contains(ADMIN_SECRET)
    );

    // Bootstrap tokens are rotated through their secret, not revoked.
    let bootstrap = tokens
        .revoke_token(with(
            ADMIN_SECRET,
            pb::RevokeTokenRequest {
                name: auth::BOOTSTRAP_ADMIN.into(),
            },
        ))
        .await
        .expect_err("bootstrap");
    assert_eq!(bootstrap.code(), tonic::Code::FailedPrecondition);
    fleet.stop().await;
}
