//! What attacks cost legitimate users (issue 14): the connect-by-id
//! latency of a fresh app node (signaling, checks and QUIC on loopback)
//! and the resident memory of the `fogconnect signal` process while each
//! attack runs, against the same measured without an attack in the same
//! run:
//! - ping flood: clients that send WebSocket pings as fast as they can and
//!   never read, reconnecting whenever the server cuts them;
//! - idle connections: 2 × 400 TCP connections from two other loopback
//!   addresses that never send a byte, reopened as they are closed;
//! - forged connects: a registered client sending the device connects
//!   whose offers aim its checks at a third address, at the rate limit;
//! - presence flapping: one id registering and dropping in a loop while
//!   the app node subscribes to presence.
//!
//! `cargo bench -p fogconnect --bench hardening` after `make plugins`
//! (part of `make bench`); `cargo test --benches` runs a short smoke pass
//! (3 connects per row).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use fogconnect::signal::protocol::{ClientMessage, PROTOCOL_VERSION};
use fogconnect::signal::token;
use fogconnect::{Node, NodeConfig, Transport};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[path = "../../tests/common/mod.rs"]
mod common;

use common::server::ServerProcess;

const SECRET: &str = "hardening bench secret 0123456789";
/// Connects measured per scenario (a smoke pass: 3).
const CONNECTS: usize = 30;
const SMOKE_CONNECTS: usize = 3;

/// `fogconnect signal` with its defaults, as an operator runs it.
fn start_server() -> anyhow::Result<ServerProcess> {
    let args = ["signal", "--listen", "127.0.0.1:0"];
    ServerProcess::start(&args, None, "signaling on ws://", &[("FOGCONNECT_SIGNAL_SECRET", SECRET)])
}

fn token_for(id: &str) -> String {
    token::issue(SECRET.as_bytes(), id, u64::MAX / 2)
}

fn config() -> NodeConfig {
    NodeConfig { cache_dir: None, ..NodeConfig::default() }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A registration sent from `source` (attackers use loopback addresses of
/// their own, as they would come from other hosts).
async fn register_from(source: IpAddr, url: &str, id: &str) -> anyhow::Result<Ws> {
    let addr: SocketAddr = url.trim_start_matches("ws://").trim_end_matches("/ws").parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await?;
    let register = ClientMessage::Register { version: PROTOCOL_VERSION, id: id.into(), token: token_for(id) };
    ws.send(Message::text(register.encode())).await?;
    Ok(ws)
}

/// The attacks, each run until `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    None,
    PingFlood,
    IdleConnections,
    ForgedConnects,
    PresenceFlapping,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::None => "no attack (baseline)",
            Attack::PingFlood => "ping flood, never reading",
            Attack::IdleConnections => "idle TCP connections",
            Attack::ForgedConnects => "forged connect offers",
            Attack::PresenceFlapping => "presence flapping",
        }
    }
}

async fn ping_flood(url: String, source: IpAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(ws) = register_from(source, &url, "flooder").await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let (mut sink, _never_read) = ws.split();
        let payload = vec![0x55u8; 125];
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), sink.send(Message::Ping(payload.clone().into())))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    }
}

async fn idle_connections(to: SocketAddr, source: IpAddr, stop: Arc<AtomicBool>) {
    let mut held = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        held.retain(|stream: &tokio::net::TcpStream| stream.peer_addr().is_ok());
        while held.len() < 400 && !stop.load(Ordering::Relaxed) {
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else { break };
            if socket.bind(SocketAddr::new(source, 0)).is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), socket.connect(to)).await {
                Ok(Ok(stream)) => held.push(stream),
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn forged_connects(url: String, stop: Arc<AtomicBool>) {
    let mut request_id = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(ws) = register_from("127.0.0.4".parse().expect("ip"), &url, "mallory").await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            request_id += 1;
            let forged = common::attack::forged_connect("device", "127.0.0.99:40000".parse().expect("a"), request_id);
            if sink.send(Message::text(forged)).await.is_err() {
                break;
            }
        }
        drain.abort();
    }
}

async fn presence_flapping(url: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match register_from("127.0.0.5".parse().expect("ip"), &url, "flapper").await {
            Ok(mut ws) => {
                let _ = ws.next().await;
                let _ = ws.close(None).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Connect-by-id latencies (ms) of fresh app nodes and the server's
/// largest resident memory (KiB) while `attack` runs.
async fn measure(server: &ServerProcess, attack: Attack, connects: usize) -> anyhow::Result<(Vec<f64>, u64)> {
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr;
    let mut tasks = Vec::new();
    match attack {
        Attack::None => {}
        Attack::PingFlood => {
            for source in ["127.0.0.2", "127.0.0.3"] {
                tasks.push(tokio::spawn(ping_flood(url.clone(), source.parse()?, stop.clone())));
            }
        }
        Attack::IdleConnections => {
            for source in ["127.0.0.2", "127.0.0.3"] {
                tasks.push(tokio::spawn(idle_connections(addr, source.parse()?, stop.clone())));
            }
        }
        Attack::ForgedConnects => tasks.push(tokio::spawn(forged_connects(url.clone(), stop.clone()))),
        Attack::PresenceFlapping => tasks.push(tokio::spawn(presence_flapping(url.clone(), stop.clone()))),
    }
    // Let the attack get going before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut peak = server.rss_kib()?;
    let mut latencies = Vec::with_capacity(connects);
    for n in 0..connects {
        let id = format!("app-{n}");
        let app = Node::builder().config(config()).node_id(&id).signal(&url, token_for(&id)).start().await?;
        app.registered(Duration::from_secs(10)).await?;
        if attack == Attack::PresenceFlapping {
            let _presence = app.presence().await;
        }
        let started = Instant::now();
        let mut conn = app.connect_peer("device", Transport::Quic, 1).await?;
        conn.send(b"I am fog data!".to_vec())?;
        match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await {
            Ok(fogconnect::ConnectionEvent::Message(_)) => {}
            other => bail!("no answer under {}: {other:?}", attack.name()),
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        app.shutdown().await;
        peak = peak.max(server.rss_kib()?);
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, peak))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    fogconnect::limits::raise_descriptor_limit();
    let connects = if std::env::args().any(|a| a == "--bench") { CONNECTS } else { SMOKE_CONNECTS };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("connect by id of a fresh app node ({connects} per row) and the signaling server's peak memory");
        println!("(each row: a fresh server process and device node; ratios to the first row)");
        println!(
            "{:<28} {:>10} {:>10} {:>8} {:>12} {:>8}",
            "while", "median ms", "p90 ms", "ratio", "server KiB", "ratio"
        );
        let mut baseline: Option<(f64, u64)> = None;
        for attack in
            [Attack::None, Attack::PingFlood, Attack::IdleConnections, Attack::ForgedConnects, Attack::PresenceFlapping]
        {
            let server = start_server()?;
            let device = Node::builder()
                .config(config())
                .node_id("device")
                .signal(server.url(), token_for("device"))
                .plugin(1, common::plugin("demo"))
                .start()
                .await?;
            device.registered(Duration::from_secs(10)).await?;
            let (latencies, peak) = measure(&server, attack, connects).await?;
            device.shutdown().await;
            let median = percentile(&latencies, 0.5);
            let (base_median, base_peak) = *baseline.get_or_insert((median, peak));
            println!(
                "{:<28} {:>10.2} {:>10.2} {:>7.2}x {:>12} {:>7.2}x",
                attack.name(),
                median,
                percentile(&latencies, 0.9),
                median / base_median,
                peak,
                peak as f64 / base_peak as f64
            );
        }
        anyhow::Ok(())
    })
}
