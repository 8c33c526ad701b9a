//! The `healthcheck` subcommand every daemon binary has: one HTTP GET of the
//! daemon's own `/healthz` (or `/readyz`) on 127.0.0.1, exit 0 on `200`.
//! It is the container images' `HEALTHCHECK` (exec form, no shell, no curl
//! in the image), so it stays small: blocking std I/O, no runtime, no TLS
//! (the HTTP port serves plain HTTP inside a container; compose sets
//! `tls.http = false`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Subcommands shared by the daemon binaries (`opsloop-api healthcheck`).
#[derive(Debug, clap::Subcommand)]
pub enum DaemonCommand {
    /// GET the daemon's /healthz (or --path) on 127.0.0.1 and exit 0 on
    /// HTTP 200, 1 otherwise: the container image's HEALTHCHECK.
    Healthcheck(HealthcheckArgs),
}

impl DaemonCommand {
    /// Runs the subcommand; `default_port` is the daemon's default HTTP port.
    pub fn run(self, service: &str, default_port: u16) -> ExitCode {
        match self {
            Self::Healthcheck(args) => {
                let port = args.port.unwrap_or(default_port);
                match probe(
                    SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    &args.path,
                    Duration::from_millis(args.timeout_ms),
                ) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("{service} healthcheck: {error}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// `healthcheck` arguments.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// HTTP port of the daemon on 127.0.0.1 (default: the daemon's default
    /// HTTP port).
    #[arg(long, env = "OPSLOOP_HEALTH_PORT")]
    pub port: Option<u16>,
    /// Path to GET: /healthz (alive) or /readyz (dependencies up).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Connect, write and read timeout, each.
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
}

/// Why a probe failed, in the words of the container's health log.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}{path} answered {status:?}, not 200")]
    Status {
        addr: SocketAddr,
        path: String,
        status: String,
    },
}

/// One `GET path` over HTTP/1.0 to `addr`; `Ok` on status 200.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    // One write: a server may answer (and close) after the first segment.
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    // The status line is all that is read; 64 bytes hold it.
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        let n = stream.read(&mut head[filled..]).map_err(io)?;
        if n == 0 || head[..filled + n].contains(&b'\n') {
            filled += n;
            break;
        }
        filled += n;
    }
    let text = String::from_utf8_lossy(&head[..filled]);
    let status_line = text.lines().next().unwrap_or_default().trim();
    if is_ok(status_line) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            addr,
            path: path.to_owned(),
            status: status_line.to_owned(),
        })
    }
}

/// `HTTP/1.x 200 …`.
fn is_ok(status_line: &str) -> bool {
    let mut parts = status_line.split_whitespace();
    matches!(
        (parts.next(), parts.next()),
        (Some("HTTP/1.0" | "HTTP/1.1"), Some("200"))
    )
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A one-shot server answering `response` to the first request; returns
    /// its address and the request it read.
    fn serve_once(response: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            // The whole request (to its blank line), then the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response.as_bytes()).expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, handle)
    }

    #[test]
    fn status_200_is_healthy_and_the_path_is_sent() {
        let (addr, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        probe(addr, "/readyz", Duration::from_secs(2)).expect("healthy");
        let request = server.join().expect("server");
        assert!(request.starts_with("GET /readyz HTTP/1.0\r\n"), "{request}");
    }

    #[test]
    fn other_statuses_and_silence_are_unhealthy() {
        let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = probe(addr, "/readyz", Duration::from_secs(2)).expect_err("503");
        server.join().expect("server");
        assert!(err.to_string().contains("503"), "{err}");

        // Nothing listens on a port just released.
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let err = probe(closed, "/healthz", Duration::from_millis(500)).expect_err("closed");
        assert!(matches!(err, ProbeError::Io { .. }), "{err}");
    }

    #[test]
    fn only_http_200_counts() {
        assert!(is_ok("HTTP/1.1 200 OK"));
        assert!(is_ok("HTTP/1.0 200"));
        assert!(!is_ok("HTTP/1.1 2000 OK"));
        assert!(!is_ok("HTTP/1.1 204 No Content"));
        assert!(!is_ok(""));
    }
}
