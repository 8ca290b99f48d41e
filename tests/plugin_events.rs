//! Plugins on the `fogconnect:plugin@0.2.0` contract receive node events
//! they subscribed to and the presence of peers they watch, beside a 0.1.0
//! plugin on the same node that keeps serving unchanged. (Connection
//! events, a path moving from relayed to direct, are tested in the NAT lab.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::{WAIT, ask, config, eventually, text};
use fogconnect::signal::client::SignalStatus;
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{Connection, MediaEvent, MediaStream, Node, NodeConfig, StreamSession, Transport};

const SECRET: &[u8] = b"plugin events test secret";

/// The service of the 0.2.0 test plugin (`test-events`); the 0.1.0 echo
/// serves service 1.
const EVENTS: u8 = 2;

/// A loopback address free right now, for a signaling server restarted on
/// the same address.
fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn signaling(addr: SocketAddr) -> anyhow::Result<SignalServer> {
    Ok(SignalServer::start(SignalServerConfig::new(addr, SECRET.to_vec())).await?)
}

async fn registered_node(url: &str, id: &str, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    let mut builder = Node::builder().config(config()).node_id(id).signal(url, token::issue(SECRET, id, u64::MAX / 2));
    for (service, name) in plugins {
        builder = builder.plugin(*service, common::plugin(name));
    }
    let node = builder.start().await?;
    node.registered(WAIT).await?;
    Ok(node)
}

/// The plugin's event lines pushed on `reporter` until one starts with
/// `wanted` (returned last), at most [`WAIT`] per line.
async fn lines_until(reporter: &mut Connection, wanted: &str) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let line = text(reporter).await.with_context(|| format!("waiting for {wanted:?} after {lines:?}"))?;
        let done = line.starts_with(wanted);
        lines.push(line);
        if done {
            return Ok(lines);
        }
    }
}

fn signal_lines(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("node "))
        .filter_map(|l| ["signal-up", "signal-lost"].into_iter().find(|k| l.starts_with(k)))
        .collect()
}

#[tokio::test]
async fn a_0_2_plugin_hears_signaling_and_watched_peers_beside_a_0_1_plugin() -> anyhow::Result<()> {
    let addr = free_loopback_addr()?;
    let server = signaling(addr).await?;
    let url = server.url();
    let device = registered_node(&url, "device", &[(1, "echo"), (EVENTS, "test-events")]).await?;
    let app = Node::builder().config(config()).node_id("app").start().await?;
    let mut reporter = app.connect(device.local_addr(), Transport::Quic, EVENTS).await?;
    let mut control = app.connect(device.local_addr(), Transport::Quic, EVENTS).await?;
    let backlog = ask(&mut reporter, "report").await?;
    ensure!(backlog.starts_with("reporting"), "{backlog}");
    // Subscribed at init, it was told the node's state: registered.
    let backlog: Vec<String> = backlog.lines().map(String::from).collect();
    ensure!(signal_lines(&backlog).first() == Some(&"signal-up"), "{backlog:?}");

    // The 0.2.0 contract numbers QUIC 5 (service 2: 0x25), and tells the
    // path at connect.
    assert_eq!(ask(&mut control, "convention").await?, (5 + (u32::from(EVENTS) << 4)).to_string());
    let path = ask(&mut control, "connect-path").await?;
    ensure!(path.starts_with("lan 127.0.0.1:"), "{path}");

    // Watching a peer tells its presence now, then its changes.
    assert_eq!(ask(&mut control, "watch late").await?, "watching late");
    let lines = lines_until(&mut reporter, "node presence late").await?;
    ensure!(lines.last().is_some_and(|l| l.starts_with("node presence late offline @")), "{lines:?}");
    let watch_error = ask(&mut control, "watch ").await?;
    assert_eq!(watch_error, "watch error: WatchError::InvalidPeer");

    // The 0.1.0 plugin serves beside it, unchanged.
    let mut echo = app.connect(device.local_addr(), Transport::Quic, 1).await?;
    assert_eq!(ask(&mut echo, "0.1.0 still serves").await?, "0.1.0 still serves");

    // A signaling restart: the session is lost, then up again, in order.
    server.shutdown();
    drop(server);
    let lost = lines_until(&mut reporter, "node signal-lost").await?;
    let server = signaling(addr).await?;
    let up = lines_until(&mut reporter, "node signal-up").await?;
    let all: Vec<String> = lost.into_iter().chain(up).collect();
    ensure!(signal_lines(&all) == ["signal-lost", "signal-up"], "{all:?}");

    // The watched peer comes online and goes offline.
    let late = registered_node(&url, "late", &[]).await?;
    let lines = lines_until(&mut reporter, "node presence late").await?;
    ensure!(lines.last().is_some_and(|l| l.starts_with("node presence late online @")), "{lines:?}");
    late.shutdown().await;
    let lines = lines_until(&mut reporter, "node presence late").await?;
    ensure!(lines.last().is_some_and(|l| l.starts_with("node presence late offline @")), "{lines:?}");

    // Unsubscribed, the plugin hears no more of the session; a watch (its
    // presence line) marks the end of what it heard.
    assert_eq!(ask(&mut control, "subscribe none").await?, "subscribed none");
    server.shutdown();
    drop(server);
    eventually("the device noticed the server is gone", || device.signal_status() != Some(SignalStatus::Registered))
        .await?;
    let server = signaling(addr).await?;
    device.registered(WAIT).await?;
    assert_eq!(ask(&mut control, "watch marker").await?, "watching marker");
    let lines = lines_until(&mut reporter, "node presence marker").await?;
    ensure!(signal_lines(&lines).is_empty(), "unsubscribed, yet: {lines:?}");
    assert_eq!(ask(&mut echo, "still").await?, "still");

    app.shutdown().await;
    device.shutdown().await;
    drop(server);
    Ok(())
}

/// A peer killed with SIGKILL under a live connection: the plugin serving
/// the other end hears that the link went silent, then the connection ends
/// with `timeout` within the keep-alive interval × attempts (100 ms × 5).
#[tokio::test]
async fn a_killed_peer_ends_the_plugins_connection_with_timeout_after_a_silent_link() -> anyhow::Result<()> {
    let fast = NodeConfig { keep_alive_interval: Duration::from_millis(100), keep_alive_attempts: 5, ..config() };
    let device =
        Node::builder().config(fast).node_id("device").plugin(EVENTS, common::plugin("test-events")).start().await?;
    let app = Node::builder().config(config()).node_id("app").start().await?;
    let mut reporter = app.connect(device.local_addr(), Transport::Quic, EVENTS).await?;
    ensure!(ask(&mut reporter, "report").await?.starts_with("reporting"));
    let address = device.local_addr().to_string();
    let service = EVENTS.to_string();
    let mut child = common::Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_fogconnect"))
            .args(["send", "--addr", &address, "--service", &service, "--info"])
            .args(["--repeat", "100000", "--interval-ms", "20", "hello"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().context("stdout")?;
    // The client is connected and its messages reach the plugin.
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l == "hello #3").map(drop)
    })
    .await?
    .context("the client never got its fourth echo")?;
    let status = std::process::Command::new("kill").args(["-KILL", &child.0.id().to_string()]).status()?;
    ensure!(status.success());
    let killed = std::time::Instant::now();
    let lines = lines_until(&mut reporter, "close ").await?;
    let took = killed.elapsed();
    let close = lines.last().context("no close")?;
    ensure!(close.contains("::Timeout "), "{lines:?}");
    let conn = close.split(' ').nth(1).context("no handle")?;
    ensure!(lines.iter().any(|l| l.starts_with(&format!("net {conn} silent "))), "no silent link before: {lines:?}");
    ensure!(took < Duration::from_secs(3), "the timeout took {took:?}");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

/// The next chunk of `stream` that is not empty (the plugin pulls empty
/// chunks while it has nothing to say), as text.
async fn next_line(stream: &mut MediaStream) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(WAIT, stream.recv()).await {
            Ok(MediaEvent::Data(data)) if data.is_empty() => continue,
            Ok(MediaEvent::Data(data)) => return Ok(String::from_utf8_lossy(&data).into_owned()),
            Ok(MediaEvent::Ended(reason)) => anyhow::bail!("stream ended: {reason}"),
            Err(_) => anyhow::bail!("no line within {WAIT:?}"),
        }
    }
}

/// A stream plugin on `fogconnect:streaming@0.2.0` (`test-stream-events`)
/// is told its connection's path, that the node is registered (at
/// subscription), a signaling restart (lost, then up) and the silent link
/// of an application killed with SIGKILL, while a 0.1.0 stream plugin
/// (`test-ticker`) on the same node streams unchanged.
#[tokio::test]
async fn a_0_2_stream_plugin_hears_signaling_beside_a_0_1_stream_plugin() -> anyhow::Result<()> {
    let addr = free_loopback_addr()?;
    let server = signaling(addr).await?;
    let url = server.url();
    let fast = NodeConfig { keep_alive_interval: Duration::from_millis(200), keep_alive_attempts: 25, ..config() };
    let device = Node::builder()
        .config(fast)
        .node_id("device")
        .signal(&url, token::issue(SECRET, "device", u64::MAX / 2))
        .plugin(3, common::plugin("test-ticker"))
        .plugin(4, common::plugin("test-stream-events"))
        .start()
        .await?;
    device.registered(WAIT).await?;
    let app = Node::builder().config(config()).node_id("app").start().await?;
    let events = StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 4).await?);
    let ticker = StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 3).await?);
    let mut stream = events.open("events").await?;
    let path = next_line(&mut stream).await?;
    ensure!(path.starts_with("path lan 127.0.0.1:"), "{path}");
    assert_eq!(next_line(&mut stream).await?, "node signal-up");
    let mut ticks = ticker.open("ticks").await?;
    assert_eq!(next_line(&mut ticks).await?, "0");
    assert_eq!(next_line(&mut ticks).await?, "1");

    server.shutdown();
    drop(server);
    let lost = next_line(&mut stream).await?;
    ensure!(lost.starts_with("node signal-lost "), "{lost}");
    let server = signaling(addr).await?;
    assert_eq!(next_line(&mut stream).await?, "node signal-up");
    assert_eq!(next_line(&mut ticks).await?, "2", "the 0.1.0 stream plugin streams on");

    // Another application streams from a process of its own, killed with
    // SIGKILL: the plugin hears that its connection's link went silent.
    let address = device.local_addr().to_string();
    let mut child = common::Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_fogconnect"))
            .args(["stream", "--addr", &address, "--service", "4", "--params", "doomed"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().context("stdout")?;
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.starts_with("stream ")).map(drop)
    })
    .await?
    .context("the other application's stream never opened")?;
    let status = std::process::Command::new("kill").args(["-KILL", &child.0.id().to_string()]).status()?;
    ensure!(status.success());
    let silent = next_line(&mut stream).await?;
    ensure!(silent.starts_with("net ") && silent.contains(" silent "), "{silent}");
    drop((stream, ticks));
    app.shutdown().await;
    device.shutdown().await;
    drop(server);
    Ok(())
}
