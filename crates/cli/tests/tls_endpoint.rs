//! `opsloop --endpoint https://… --ca-file …`: the CLI speaks TLS to a
//! daemon, checks its certificate against the CA file, and says clearly when
//! the certificate is not trusted.

use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

fn ca(
    dir: &std::path::Path,
    name: &str,
) -> (CertifiedIssuer<'static, KeyPair>, std::path::PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, issuer.pem()).expect("write CA");
    (issuer, path)
}

/// `opsloop proposal list` against `endpoint` trusting `ca`; its stderr.
fn proposal_list(endpoint: &str, ca: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .env_clear()
        .args(["--endpoint", endpoint, "--ca-file"])
        .arg(ca)
        .args(["proposal", "list"])
        .output()
        .expect("run opsloop");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_verified_against_the_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (issuer, ca_path) = ca(dir.path(), "ca");
    let (_other, other_path) = ca(dir.path(), "other");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let (cert_path, key_path) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let tls = opsloop_core::tls::ServerTls::from_files(&cert_path, &key_path, None).expect("tls");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (routes, _health) = opsloop_core::grpc::standard_routes().expect("routes");
    tokio::spawn(async move {
        opsloop_core::grpc::serve_tls(listener, routes, Some(&tls), std::future::pending()).await
    });
    let endpoint = format!("https://localhost:{port}");

    let trusted = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || proposal_list(&endpoint, &ca_path)
    })
    .await
    .expect("join");
    // The TLS session is up: this test server has no ProposalService, so the
    // call itself is UNIMPLEMENTED — not a connection or certificate error.
    assert!(trusted.contains("UNIMPLEMENTED"), "{trusted}");

    let untrusted = tokio::task::spawn_blocking(move || proposal_list(&endpoint, &other_path))
        .await
        .expect("join");
    assert!(untrusted.contains("UNAVAILABLE: TLS to api"), "{untrusted}");
    assert!(untrusted.contains("--ca-file"), "{untrusted}");
}
