//! `fogconnect demo`: the embedded default in one process: a signaling
//! server, a STUN server (RFC 5780, on 127.0.0.1 and 127.0.0.2), a device
//! node serving the demo plugins, an app node that finds the device by id
//! through connectivity checks, the original demo exchange, and a short
//! playback from the device's stream plugin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use fogconnect::nat::server::{StunResponder, StunServer, StunServerLimits};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{ConnectionEvent, MediaEvent, Node, StreamSession, Transport};

/// Arguments of `fogconnect demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory holding echo.wasm, demo.wasm and adaptive_source.wasm
    /// (built by `make plugins`).
    #[arg(long, default_value = "target/wasm32-wasip2/plugin")]
    plugins_dir: PathBuf,
}

/// Runs the demo and prints what happens.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let echo_plugin = args.plugins_dir.join("echo.wasm");
    let demo = args.plugins_dir.join("demo.wasm");
    let source = args.plugins_dir.join("adaptive_source.wasm");
    for path in [&echo_plugin, &demo, &source] {
        if !path.exists() {
            bail!("{} not found: build the plugins first (make plugins)", path.display());
        }
    }
    // A fresh secret per run: the demo's tokens are good for this run only.
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let signal = SignalServer::start(SignalServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), secret.to_vec()))
        .await
        .context("cannot start the signaling server")?;
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    println!("signaling server on {}", signal.url());
    let responder =
        StunResponder::new(SocketAddr::from(([127, 0, 0, 1], 0)), Some(SocketAddr::from(([127, 0, 0, 2], 0))))?;
    let stun =
        StunServer::start(responder, StunServerLimits::default()).await.context("cannot start the STUN server")?;
    let stun_addr = stun.addrs()[0].to_string();
    println!("stun server on {} (RFC 5780 alternate {})", stun_addr, stun.addrs()[3]);
    let device_id = "ee:34:a1:44:2c:1c";
    let device = Node::builder()
        .node_id(device_id)
        .plugin(0, &echo_plugin)
        .plugin(1, &demo)
        .plugin(STREAM_SERVICE, &source)
        .signal(signal.url(), token::issue(&secret, device_id, expiry))
        .stun(&stun_addr)
        .start()
        .await
        .context("cannot start the device node")?;
    let app = Node::builder()
        .node_id("app")
        .signal(signal.url(), token::issue(&secret, "app", expiry))
        .stun(&stun_addr)
        .start()
        .await
        .context("cannot start the app node")?;
    device.registered(Duration::from_secs(10)).await?;
    app.registered(Duration::from_secs(10)).await?;
    for node in [&device, &app] {
        match node.nat_classified(Duration::from_secs(10)).await {
            Some(report) => println!(
                "{}: nat {} (mapping {}, filtering {}), public address {}",
                node.id(),
                report.kind_name(),
                fogconnect::nat::classify::behaviour_name(report.mapping),
                fogconnect::nat::classify::behaviour_name(report.filtering),
                node.public_addr().await.map_or_else(|| "unknown".into(), |p| p.to_string())
            ),
            None => println!("{}: nat not classified", node.id()),
        }
    }
    println!("device node {} on {} registered, serving:", device.id(), device.local_addr());
    for s in device.services() {
        let hash = s.hash.get(..16).unwrap_or(&s.hash);
        println!("  service {} -> {} ({} plugin, sha256 {hash})", s.service, s.name, s.world.name());
    }
    println!("app node registered; peers online: {}", app.peers().await?.join(", "));
    let result = exchange(&device, &app, &echo_plugin).await;
    app.shutdown().await;
    device.shutdown().await;
    signal.shutdown();
    stun.stop().await;
    result
}

/// The service of the demo's stream plugin.
const STREAM_SERVICE: u8 = 5;

async fn exchange(device: &Node, app: &Node, echo_plugin: &std::path::Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut conn = app.connect_peer(device.id(), Transport::Quic, 1).await.context("connect to service 1")?;
    let connect_time = started.elapsed();
    println!(
        "app -> device: connected by id to {} at {} (convention {}) in {:.1} ms, signaling included",
        conn.peer_id(),
        conn.remote_addr(),
        conn.convention(),
        ms(connect_time)
    );
    if let Some(t) = conn.traversal() {
        println!(
            "app -> device: connectivity checks chose {} ({}) in {:.1} ms, {} check(s)",
            t.selected.remote,
            t.plan,
            ms(t.elapsed),
            t.stats.checks_sent
        );
    }
    let message = "I am fog data!";
    conn.send(message.as_bytes().to_vec())?;
    println!("app -> device: {message:?}");
    let sent = Instant::now();
    let reply = next_message(&mut conn).await?;
    println!("device -> app: {:?} ({:.2} ms round trip)", String::from_utf8_lossy(&reply), ms(sent.elapsed()));

    let mut echo = app.connect_peer(device.id(), Transport::Quic, 0).await.context("connect to service 0")?;
    echo.send(b"hello fog".to_vec())?;
    let reply = next_message(&mut echo).await?;
    println!("echo service 0 answered {:?}", String::from_utf8_lossy(&reply));
    // A live swap: a new generation of the echo plugin takes over the open
    // connection.
    let report = device.swap_plugin(0, echo_plugin).await.context("swap the echo plugin")?;
    echo.send(b"hello again".to_vec())?;
    let reply = next_message(&mut echo).await?;
    println!(
        "swapped service 0 live to generation {} ({:.3} ms pause); the same connection answered {:?}",
        report.generation,
        ms(report.pause),
        String::from_utf8_lossy(&reply)
    );

    match app.connect_peer(device.id(), Transport::Quic, 7).await {
        Ok(_) => bail!("service 7 should not exist"),
        Err(e) => println!("service 7: {e}"),
    }

    stream(device, app).await?;

    let stats = conn.stats();
    println!();
    println!(
        "summary: connect {:.1} ms, path {}, rtt {} us, {} message(s) sent, {} received",
        ms(connect_time),
        stats.path,
        stats.rtt.as_micros(),
        stats.messages_sent,
        stats.messages_received
    );
    conn.close();
    echo.close();
    Ok(())
}

/// A one-second playback from the device's stream plugin.
async fn stream(device: &Node, app: &Node) -> anyhow::Result<()> {
    let conn = app
        .connect_peer(device.id(), Transport::Quic, STREAM_SERVICE)
        .await
        .context("connect to the stream service")?;
    let session = StreamSession::new(conn);
    let params = "action=playback&seconds=1&bitrate=2000000";
    let started = Instant::now();
    let mut playback = session.open(params).await.context("open a stream")?;
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), playback.recv()).await {
            Ok(MediaEvent::Data(data)) => {
                chunks += 1;
                bytes += data.len() as u64;
            }
            Ok(MediaEvent::Ended(reason)) => break reason,
            Err(_) => bail!("the stream stalled"),
        }
    };
    let elapsed = started.elapsed();
    println!(
        "stream service {STREAM_SERVICE} ({params}): {chunks} chunks, {bytes} bytes in {:.2} s ({:.2} Mbit/s), ended: {ended}",
        elapsed.as_secs_f64(),
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}

async fn next_message(conn: &mut fogconnect::Connection) -> anyhow::Result<bytes::Bytes> {
    match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await {
        Ok(ConnectionEvent::Message(data)) => Ok(data),
        Ok(ConnectionEvent::Closed(reason)) => bail!("connection closed: {reason}"),
        Err(_) => bail!("no reply within 10 s"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
