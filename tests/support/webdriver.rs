//! A small W3C WebDriver client over reqwest for browser tests (the status
//! page; the operator console can use it too): starts Debian's
//! `chromedriver` on a free port, opens a headless Chromium session that
//! records the browser console and the network (performance log), and
//! offers the few commands page tests need — navigate, find elements, read
//! attributes and text, click, resize, screenshot, read the logs.
//!
//! Tests that need a browser call [`Browser::start`]; it fails with the
//! install command when `chromium`/`chromedriver` are missing
//! (`scripts/test.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What went wrong talking to the browser.
#[derive(Debug)]
pub struct WebDriverError(pub String);

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WebDriverError {}

type Result<T> = std::result::Result<T, WebDriverError>;

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// A headless Chromium driven through `chromedriver`; both are stopped when
/// dropped (call [`Browser::quit`] to end the session cleanly first).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: tempfile::TempDir,
}

/// One element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts `chromedriver --port=<free port>` and a new headless session.
    pub async fn start() -> Result<Self> {
        let driver_path = which("chromedriver").ok_or_else(|| {
            WebDriverError(
                "chromedriver not found: apt-get install -y --no-install-recommends chromium chromium-driver (scripts/test.sh does)".into(),
            )
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| WebDriverError(format!("no free port: {e}")))?;
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| WebDriverError(format!("cannot start chromedriver: {e}")))?;
        let profile = tempfile::tempdir()
            .map_err(|e| WebDriverError(format!("no temporary profile directory: {e}")))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| WebDriverError(e.to_string()))?;
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
            profile,
        };
        browser.wait_for_driver().await?;
        let mut options = json!({
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", browser.profile.path().display()),
            ],
        });
        if let Some(chromium) = which("chromium") {
            options["binary"] = json!(chromium.display().to_string());
        }
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": options,
                    "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
                }}})),
            )
            .await?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError(format!("no session id in {created}")))?
            .to_owned();
        Ok(browser)
    }

    /// Waits (up to 10 s; panics after, naming the last answer) for
    /// chromedriver's `/status` to say ready.
    async fn wait_for_driver(&self) -> Result<()> {
        let url = format!("{}/status", self.base);
        opsloop_core::testing::eventually("chromedriver ready", Duration::from_secs(10), || {
            let request = self.http.get(&url).send();
            async move {
                let body: Value = request
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if body["value"]["ready"] == json!(true) {
                    Ok(())
                } else {
                    Err(body.to_string())
                }
            }
        })
        .await;
        Ok(())
    }

    /// One command; the response's `value`, or its error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| WebDriverError(format!("{method} {path}: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| WebDriverError(format!("{method} {path}: unreadable answer: {e}")))?;
        if !status.is_success() {
            return Err(WebDriverError(format!(
                "{method} {path}: {status}: {}",
                body["value"]
            )));
        }
        Ok(body["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.session_path("/url"),
            Some(json!({"url": url})),
        )
        .await
        .map(|_| ())
    }

    pub async fn title(&self) -> Result<String> {
        let value = self
            .call(reqwest::Method::GET, &self.session_path("/title"), None)
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Every element matching the CSS `selector` (under `within` when given).
    pub async fn find_all(&self, selector: &str, within: Option<&Element>) -> Result<Vec<Element>> {
        let path = match within {
            Some(Element(id)) => self.session_path(&format!("/element/{id}/elements")),
            None => self.session_path("/elements"),
        };
        let value = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await?;
        Ok(value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// An attribute of `element` (`None` when absent).
    pub async fn attribute(&self, element: &Element, name: &str) -> Result<Option<String>> {
        let value = self
            .call(
                reqwest::Method::GET,
                &self.session_path(&format!("/element/{}/attribute/{name}", element.0)),
                None,
            )
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// The rendered text of `element`.
    pub async fn text(&self, element: &Element) -> Result<String> {
        let value = self
            .call(
                reqwest::Method::GET,
                &self.session_path(&format!("/element/{}/text", element.0)),
                None,
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks `element` (which also focuses it).
    pub async fn click(&self, element: &Element) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{}/click", element.0)),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    /// Types `text` into `element` (an input).
    pub async fn send_keys(&self, element: &Element, text: &str) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{}/value", element.0)),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    /// The URL of the page shown.
    pub async fn current_url(&self) -> Result<String> {
        let value = self
            .call(reqwest::Method::GET, &self.session_path("/url"), None)
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// The value of the cookie `name` of the page's origin (HttpOnly ones
    /// too), `None` when unset.
    pub async fn cookie(&self, name: &str) -> Result<Option<String>> {
        let value = self
            .call(reqwest::Method::GET, &self.session_path("/cookie"), None)
            .await?;
        Ok(value.as_array().and_then(|cookies| {
            cookies
                .iter()
                .find(|c| c["name"] == json!(name))
                .and_then(|c| c["value"].as_str().map(str::to_owned))
        }))
    }

    /// Whether `element` is rendered visibly.
    pub async fn displayed(&self, element: &Element) -> Result<bool> {
        let value = self
            .call(
                reqwest::Method::GET,
                &self.session_path(&format!("/element/{}/displayed", element.0)),
                None,
            )
            .await?;
        Ok(value.as_bool().unwrap_or(false))
    }

    /// Resizes the window (e.g. to a phone's 390 × 844).
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &self.session_path("/window/rect"),
            Some(json!({"width": width, "height": height})),
        )
        .await
        .map(|_| ())
    }

    /// Writes a PNG of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let value = self
            .call(
                reqwest::Method::GET,
                &self.session_path("/screenshot"),
                None,
            )
            .await?;
        let png = decode_base64(value.as_str().unwrap_or_default())
            .ok_or_else(|| WebDriverError("the screenshot is not base64".into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| WebDriverError(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(path, png)
            .map_err(|e| WebDriverError(format!("cannot write {}: {e}", path.display())))
    }

    /// The entries of a log (`browser`: the console; `performance`: the
    /// DevTools network events) since the last read.
    pub async fn log(&self, kind: &str) -> Result<Vec<Value>> {
        let value = self
            .call(
                reqwest::Method::POST,
                &self.session_path("/se/log"),
                Some(json!({"type": kind})),
            )
            .await?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// The URLs requested since the last read of the performance log
    /// (`Network.requestWillBeSent`), each with the URL of the document
    /// that asked for it. Read once before [`Browser::goto`] to drop the
    /// browser's own start page.
    pub async fn requested_urls(&self) -> Result<Vec<(String, String)>> {
        let mut urls = Vec::new();
        for entry in self.log("performance").await? {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let Ok(parsed) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            let params = &parsed["message"]["params"];
            if parsed["message"]["method"] == "Network.requestWillBeSent"
                && let Some(url) = params["request"]["url"].as_str()
            {
                let document = params["documentURL"].as_str().unwrap_or_default();
                urls.push((url.to_owned(), document.to_owned()));
            }
        }
        Ok(urls)
    }

    /// Ends the session and stops chromedriver.
    pub async fn quit(mut self) {
        let path = self.session_path("");
        let _ = self.call(reqwest::Method::DELETE, &path, None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding) to bytes.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(
            super::decode_base64("aGVsbG8=").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(super::decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(super::decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(super::decode_base64("a$=="), None);
    }
}
