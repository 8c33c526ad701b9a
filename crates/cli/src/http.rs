//! A minimal HTTP/1.1 client over a tokio `TcpStream`, enough for the
//! plain-HTTP calls the CLI makes (`POST /run` and the `/probes` routes on
//! the heartbeat-worker, `GET /healthz` and `/readyz` for `opsloop
//! status`), with an optional JSON body: one
//! request with `Connection: close`, the response read to its end, chunked
//! bodies decoded.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Why a request failed before any response arrived.
#[derive(Debug)]
pub enum RequestError {
    /// The server could not be reached.
    Connect(std::io::Error),
    /// Anything after connecting (timeouts, malformed responses).
    Other(anyhow::Error),
}

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url:?}: only http:// URLs are supported here"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url:?} has no host");
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// Sends `POST url` with an empty body (and `Authorization: Bearer` when a
/// token is given), waiting at most `timeout` for the whole exchange.
pub async fn post(
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, RequestError> {
    send("POST", url, token, None, timeout).await
}

/// Sends `DELETE url` (and `Authorization: Bearer` when a token is given),
/// waiting at most `timeout` for the whole exchange.
pub async fn delete(
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, RequestError> {
    send("DELETE", url, token, None, timeout).await
}

/// Sends `method url` with a JSON `body` (and `Authorization: Bearer` when
/// a token is given), waiting at most `timeout` for the whole exchange.
pub async fn send_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Response, RequestError> {
    send(method, url, token, Some(body), timeout).await
}

/// Sends `GET url` (and `Authorization: Bearer` when a token is given),
/// waiting at most `timeout` for the whole exchange.
pub async fn get(
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, RequestError> {
    send("GET", url, token, None, timeout).await
}

async fn send(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Response, RequestError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (authority, path) = split_url(url).map_err(RequestError::Other)?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&authority))
        .await
        .map_err(|_| {
            RequestError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(RequestError::Connect)?;
    let exchange = async {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: opsloop-cli\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream
            .write_all(request.as_bytes())
            .await
            .context("sending the request")?;
        // Until the server closes, or the body is complete (a server that
        // keeps the connection open despite `Connection: close`).
        let mut raw = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            let n = stream
                .read(&mut buffer)
                .await
                .context("reading the response")?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buffer[..n]);
            if is_complete(&raw) {
                break;
            }
        }
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            RequestError::Other(anyhow!("no complete answer within {}s", timeout.as_secs()))
        })?
        .map_err(RequestError::Other)
}

/// True when `raw` holds a whole response by its own framing
/// (`Content-Length`, or a chunked body's last chunk).
fn is_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim() {
                "content-length" => {
                    return value
                        .trim()
                        .parse::<usize>()
                        .is_ok_and(|length| body.len() >= length);
                }
                "transfer-encoding" if value.contains("chunked") => return dechunk(body).is_ok(),
                _ => {}
            }
        }
    }
    false
}

/// Parses a whole HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response: no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).context("malformed HTTP response headers")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("malformed chunked body"))?;
        let size_text = std::str::from_utf8(&data[..line_end]).context("malformed chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("malformed chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data
            .get(..size)
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
        out.extend_from_slice(chunk);
        data = data
            .get(size + 2..)
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            plain,
            Response {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        let chunked =
            parse_response(b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n3;x=1\r\n!!!\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            chunked,
            Response {
                status: 409,
                body: b"busy!!!".to_vec()
            }
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody"
        ));
        assert_eq!(
            split_url("http://h/x").unwrap(),
            ("h:80".to_owned(), "/x".to_owned())
        );
        assert!(split_url("https://h/x").is_err());
    }

    #[tokio::test]
    async fn posts_with_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0; 4096];
            let n = socket.read(&mut buffer).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
                .await
                .unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        });
        let response = post(
            &format!("http://{addr}/run"),
            Some("t0k"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"ok\":true}");
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /run HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("Authorization: Bearer t0k\r\n"),
            "{request}"
        );
    }
}
