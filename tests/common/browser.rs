//! A real headless Chromium driven over the DevTools protocol (CDP): the
//! browser tests open pages, run JavaScript in them and read the results.
//!
//! Chromium is started with a fresh profile and `--remote-debugging-pipe`:
//! it reads commands from its descriptor 3 and writes answers and events to
//! its descriptor 4, one JSON text each, ended by a NUL byte. Pipes work
//! across network namespaces (the NAT lab runs browsers behind its
//! routers). Pages are targets attached in flat mode: every command names
//! the page's session.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::Running;

/// Where Debian's package puts it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest wait for one DevTools command (a page's script may run long:
/// the scripts bound their own waits below this).
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// A running headless Chromium (killed when dropped, its profile
/// removed).
pub struct Browser {
    commands: pipe::Sender,
    answers: pipe::Receiver,
    /// Bytes read from the answers pipe and not yet split into messages.
    pending: Vec<u8>,
    next_id: u64,
    _process: Running,
    _profile: tempfile::TempDir,
}

/// Makes `fd` descriptor `target` of the child (`fd` is first moved above
/// the low descriptors so that it cannot be one of the targets).
///
/// # Safety
/// Only between fork and exec: it calls async-signal-safe functions only.
unsafe fn place_fd(fd: i32, target: i32) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on descriptors this process owns; both are
    // async-signal-safe.
    unsafe {
        let high = libc::fcntl(fd, libc::F_DUPFD, 10);
        if high < 0 || libc::dup2(high, target) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An open page of the browser.
#[derive(Debug, Clone)]
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts Chromium. `wrapper` runs it through another command first
    /// (e.g. `ip netns exec NS`). Its host candidates are plain addresses
    /// (see [`Browser::launch_hiding_addresses`]).
    pub async fn launch(wrapper: &[&str]) -> anyhow::Result<Browser> {
        Self::start(wrapper, false).await
    }

    /// Starts Chromium as users run it: its host candidates are mDNS
    /// names (`….local`) instead of its addresses.
    pub async fn launch_hiding_addresses() -> anyhow::Result<Browser> {
        Self::start(&[], true).await
    }

    async fn start(wrapper: &[&str], hide_addresses: bool) -> anyhow::Result<Browser> {
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
                "--remote-debugging-pipe",
            ]
            .map(String::from),
        );
        if !hide_addresses {
            args.push("--disable-features=WebRtcHideLocalIpsWithMdns".into());
        }
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("about:blank".into());
        let (their_commands, our_commands) = std::io::pipe()?;
        let (our_answers, their_answers) = std::io::pipe()?;
        let (read_fd, write_fd) = (their_commands.as_raw_fd(), their_answers.as_raw_fd());
        let mut command = Command::new(&args[0]);
        command.args(&args[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: the closure runs between fork and exec and only moves
        // descriptors (see place_fd).
        unsafe {
            command.pre_exec(move || {
                place_fd(read_fd, 3)?;
                place_fd(write_fd, 4)
            });
        }
        let child = command.spawn().with_context(|| format!("start {CHROMIUM} (apt-get install chromium)"))?;
        drop((their_commands, their_answers));
        let process = Running(child);
        let commands = pipe::Sender::from_owned_fd(OwnedFd::from(our_commands))?;
        let answers = pipe::Receiver::from_owned_fd(OwnedFd::from(our_answers))?;
        let mut browser =
            Browser { commands, answers, pending: Vec::new(), next_id: 1, _process: process, _profile: profile };
        // The first answer tells the browser is up.
        browser.call(None, "Browser.getVersion", json!({})).await.context("Chromium does not answer")?;
        Ok(browser)
    }

    /// The next message from the browser.
    async fn next_message(&mut self) -> anyhow::Result<Value> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == 0) {
                let message: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(serde_json::from_slice(&message[..end])?);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.answers.read(&mut chunk).await?;
            if n == 0 {
                bail!("Chromium closed its DevTools pipe");
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
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
        let mut bytes = command.to_string().into_bytes();
        bytes.push(0);
        self.commands.write_all(&bytes).await?;
        tokio::time::timeout(COMMAND_LIMIT, async {
            loop {
                let value = self.next_message().await?;
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
                let value = self.next_message().await?;
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
