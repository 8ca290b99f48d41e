//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod attack;
pub mod browser;
pub mod c;
pub mod media;
pub mod nats;
pub mod server;
pub mod signal;
pub mod turn;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use fogconnect::{CloseReason, Connection, ConnectionEvent, Node, NodeConfig};

/// Cargo's target directory (`CARGO_TARGET_DIR`, else the workspace's).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The `p` quantile (0..=1) of sorted durations (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// A child process, killed when dropped (also when a test fails).
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` from the HTTP server at `addr` (HTTP/1.0, blocking, at most
/// [`WAIT`]): the status line's code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let code = answer.split_whitespace().nth(1).context("no status line")?.parse()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The value of the Prometheus sample `name` (with its labels, as
/// written) in `text`.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// The median of `values` (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Path of a plugin built by `make plugins`.
pub fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("FOGCONNECT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin"));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} missing: build the plugins first (make plugins)", path.display());
    path
}

/// The number of the word `key=N` in `line` (lines the CLI and the test
/// plugins print).
pub fn key_value(line: &str, key: &str) -> anyhow::Result<u64> {
    let prefix = format!("{key}=");
    let word = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .with_context(|| format!("no {key} in {line:?}"))?;
    Ok(word.parse()?)
}

/// A configuration for test nodes: loopback, no artifact cache.
pub fn config() -> NodeConfig {
    NodeConfig {
        #[cfg(feature = "plugins")]
        cache_dir: None,
        ..NodeConfig::default()
    }
}

/// A node with the given plugins.
pub async fn node_with(id: &str, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    node_with_config(id, plugins, config()).await
}

/// A node with the given plugins and configuration.
pub async fn node_with_config(id: &str, plugins: &[(u8, &str)], config: NodeConfig) -> anyhow::Result<Node> {
    #[cfg(feature = "plugins")]
    let builder = plugins.iter().fold(Node::builder().config(config).node_id(id), |builder, (service, name)| {
        builder.plugin(*service, plugin(name))
    });
    #[cfg(not(feature = "plugins"))]
    let builder = {
        anyhow::ensure!(plugins.is_empty(), "node {id}: this build has no plugin runtime (feature plugins)");
        Node::builder().config(config).node_id(id)
    };
    builder.start().await.with_context(|| format!("start node {id}"))
}

/// A node with the test configuration registered as `id` with the
/// signaling server at `url`, with a token under `secret`.
pub async fn registered_node(url: &str, secret: &[u8], id: &str) -> anyhow::Result<Node> {
    let node = Node::builder()
        .config(config())
        .node_id(id)
        .signal(url, fogconnect::signal::token::issue(secret, id, u64::MAX / 2))
        .start()
        .await
        .with_context(|| format!("start node {id}"))?;
    node.registered(WAIT).await?;
    Ok(node)
}

/// The next message, failing on close or after [`WAIT`].
pub async fn message(conn: &mut Connection) -> anyhow::Result<Bytes> {
    match tokio::time::timeout(WAIT, conn.recv()).await {
        Ok(ConnectionEvent::Message(data)) => Ok(data),
        Ok(ConnectionEvent::Closed(reason)) => bail!("closed instead of a message: {reason}"),
        Err(_) => bail!("no message within {WAIT:?}"),
    }
}

/// The next message as text.
pub async fn text(conn: &mut Connection) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&message(conn).await?).into_owned())
}

/// Sends `request` and returns the reply as text.
pub async fn ask(conn: &mut Connection, request: &str) -> anyhow::Result<String> {
    conn.send(request.as_bytes().to_vec())?;
    text(conn).await
}

/// Asks `request` until the reply satisfies `done` (for plugin state that
/// changes after events this side cannot observe), at most [`WAIT`].
pub async fn ask_until(conn: &mut Connection, request: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = ask(conn, request).await?;
        if done(&reply) {
            return Ok(reply);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{request:?}: last reply {reply:?} after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the end of the connection, failing on a message or after `limit`.
pub async fn closed_within(conn: &mut Connection, limit: Duration) -> anyhow::Result<CloseReason> {
    match tokio::time::timeout(limit, conn.recv()).await {
        Ok(ConnectionEvent::Closed(reason)) => Ok(reason),
        Ok(ConnectionEvent::Message(data)) => bail!("message {data:?} instead of the close"),
        Err(_) => bail!("not closed within {limit:?}"),
    }
}

/// Polls `check` (cheaply, with short naps) until it is true or [`WAIT`]
/// passes; for state that has no event to wait on.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not reached within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// An application that vanishes: `setup` runs on a runtime of its own in a
/// thread of its own; once it is done, that runtime is dropped without a
/// goodbye (what `setup` returned is never closed), so its peers see only
/// silence, as from a device that lost power. Fails if `setup` does.
pub async fn vanish<T, F, Fut>(setup: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: 'static,
{
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let kept = runtime.block_on(setup());
        let _ = ready_tx.send(kept.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
        // Tasks stop where they are; what setup made is never closed.
        std::mem::forget(kept);
        drop(runtime);
        Ok(())
    });
    ready_rx.await?.map_err(anyhow::Error::msg)?;
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the vanishing application's thread panicked"))??;
    Ok(())
}
