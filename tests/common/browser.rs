//! A real headless Chromium driven over the DevTools protocol (CDP): the
//! browser tests open pages, run JavaScript in them and read the results.
//!
//! Chromium is started with a fresh profile and `--remote-debugging-port=0`;
//! the address of its DevTools WebSocket comes from the line it prints on
//! stderr. Pages are targets attached in flat mode: every command names the
//! page's session.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::Running;

/// Where Debian's package puts it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest wait for one DevTools command (a page's script may run long:
/// the scripts bound their own waits below this).
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running headless Chromium (killed when dropped, its profile
/// removed).
pub struct Browser {
    socket: Socket,
    next_id: u64,
    _process: Running,
    _profile: tempfile::TempDir,
}

/// An open page of the browser.
#[derive(Debug, Clone)]
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts Chromium. `wrapper` runs it through another command first
    /// (e.g. `ip netns exec NS`).
    pub async fn launch(wrapper: &[&str]) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        args.push(CHROMIUM.into());
        args.extend(
            [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ]
            .map(String::from),
        );
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("about:blank".into());
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {CHROMIUM} (apt-get install chromium)"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let process = Running(child);
        // The DevTools address is the first thing that matters on stderr.
        let (found, url) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(url.trim().to_string());
                }
            }
        });
        let url = tokio::time::timeout(Duration::from_secs(30), url)
            .await
            .context("Chromium printed no DevTools address within 30 s")?
            .context("Chromium exited before printing its DevTools address")?;
        let (socket, _) = tokio_tungstenite::connect_async(&url).await.context("connect to DevTools")?;
        Ok(Browser { socket, next_id: 1, _process: process, _profile: profile })
    }

    /// Sends a command (to a page's session, or to the browser) and
    /// returns its result; events in between are printed when they are
    /// console messages or exceptions.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.socket.send(Message::text(command.to_string())).await?;
        tokio::time::timeout(COMMAND_LIMIT, async {
            loop {
                let message = self.socket.next().await.context("DevTools closed")??;
                let Message::Text(text) = message else { continue };
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["id"] == json!(id) {
                    if let Some(error) = value.get("error") {
                        bail!("{method}: {error}");
                    }
                    return Ok(value["result"].clone());
                }
                report_event(&value);
            }
        })
        .await
        .with_context(|| format!("{method}: no answer within {COMMAND_LIMIT:?}"))?
    }

    /// Waits for the event `method` of `session`.
    async fn event(&mut self, session: &str, method: &str, limit: Duration) -> anyhow::Result<Value> {
        tokio::time::timeout(limit, async {
            loop {
                let message = self.socket.next().await.context("DevTools closed")??;
                let Message::Text(text) = message else { continue };
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["method"] == json!(method) && value["sessionId"] == json!(session) {
                    return Ok(value["params"].clone());
                }
                report_event(&value);
            }
        })
        .await
        .with_context(|| format!("no {method} within {limit:?}"))?
    }

    /// Opens `url` in a new page and waits until it has loaded.
    pub async fn open(&mut self, url: &str) -> anyhow::Result<Page> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = target["targetId"].as_str().context("target id")?.to_string();
        let attached =
            self.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await?;
        let session = attached["sessionId"].as_str().context("session id")?.to_string();
        self.call(Some(&session), "Page.enable", json!({})).await?;
        self.call(Some(&session), "Runtime.enable", json!({})).await?;
        self.call(Some(&session), "Page.navigate", json!({ "url": url })).await?;
        self.event(&session, "Page.loadEventFired", Duration::from_secs(30)).await?;
        Ok(Page { session })
    }

    /// Runs `expression` in `page` (awaiting it when it is a promise) and
    /// returns its value as JSON; a thrown error is an error here.
    pub async fn eval(&mut self, page: &Page, expression: &str) -> anyhow::Result<Value> {
        let params = json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call(Some(&page.session), "Runtime.evaluate", params).await?;
        if let Some(exception) = result.get("exceptionDetails") {
            let text = exception["exception"]["description"].as_str().or(exception["text"].as_str()).unwrap_or("?");
            bail!("the page threw: {text}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `condition` in `page` until it is true, at most `limit`
    /// (the page itself waits, on its own event loop, between tries).
    pub async fn wait_for(&mut self, page: &Page, condition: &str, limit: Duration) -> anyhow::Result<()> {
        let script = format!(
            "new Promise((resolve) => {{ const end = performance.now() + {ms}; \
               const check = () => {{ let ok = false; try {{ ok = Boolean({condition}); }} catch {{}} \
                 if (ok) resolve(true); else if (performance.now() > end) resolve(false); \
                 else setTimeout(check, 10); }}; check(); }})",
            ms = limit.as_millis()
        );
        match self.eval(page, &script).await? {
            Value::Bool(true) => Ok(()),
            _ => bail!("not true within {limit:?}: {condition}"),
        }
    }
}

/// Prints what a page logs and throws, for the test's output.
fn report_event(value: &Value) {
    match value["method"].as_str() {
        Some("Runtime.consoleAPICalled") => {
            let args: Vec<String> = value["params"]["args"]
                .as_array()
                .map(|args| args.iter().map(|a| a["value"].to_string()).collect())
                .unwrap_or_default();
            eprintln!("[page console] {}", args.join(" "));
        }
        Some("Runtime.exceptionThrown") => {
            eprintln!("[page exception] {}", value["params"]["exceptionDetails"]);
        }
        _ => {}
    }
}
