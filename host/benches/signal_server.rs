//! Signaling server capacity and speed, each against a baseline measured in
//! the same run:
//! - registered clients held and memory per client of a `fogconnect signal`
//!   process (baseline: the same process with no client),
//! - messages forwarded per second between two clients (baseline: a bare
//!   WebSocket relay that forwards frames without parsing them),
//! - connect-by-id latency of a fresh app node on loopback, signaling and
//!   checks included (baseline: connect by address of a fresh app node).
//!
//! `make bench` (or `cargo bench -p fogconnect --bench signal_server` after
//! `make plugins`). `FOGCONNECT_BENCH_CLIENTS` sets the client count.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fogconnect::signal::protocol::{ClientMessage, Offer, PROTOCOL_VERSION, ServerMessage};
use fogconnect::signal::token;
use fogconnect::{Node, Transport};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "signaling bench secret 0123456789";
const FORWARDED: usize = 20_000;
/// Connects by id and by address, each from a fresh app node.
const CONNECTS: usize = 100;
/// Clients registering at once.
const BATCH: usize = 500;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> anyhow::Result<Server> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fogconnect"))
        .args(["signal", "--listen", "127.0.0.1:0", "--rate-per-second", "1000000", "--rate-burst", "1000000"])
        // Every client comes from 127.0.0.1: capacity, not the per-address
        // caps, is measured here.
        .args(["--max-clients-per-ip", "1000000", "--connect-rate-per-ip", "1000000"])
        .env("FOGCONNECT_SIGNAL_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(if std::env::var_os("FOGCONNECT_BENCH_SERVER_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()?;
    let line = BufReader::new(child.stdout.take().context("stdout")?).lines().next().context("no output")??;
    let url = line.strip_prefix("signaling on ").context("unexpected output")?.to_string();
    Ok(Server(child, url))
}

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages * 4)
}

fn token_for(id: &str) -> String {
    token::issue(SECRET.as_bytes(), id, u64::MAX / 2)
}

async fn register(url: &str, id: &str) -> anyhow::Result<Ws> {
    // Small client buffers: thousands of clients live in this process.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let register = ClientMessage::Register { version: PROTOCOL_VERSION, id: id.into(), token: token_for(id) };
    ws.send(Message::text(register.encode())).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t)))
            if matches!(ServerMessage::decode(t.as_str()), Ok(ServerMessage::Registered { .. })) =>
        {
            Ok(ws)
        }
        other => bail!("registration of {id} failed: {other:?}"),
    }
}

async fn clients_held(count: usize) -> anyhow::Result<()> {
    let server = start_server()?;
    let idle = resident_kib(server.0.id())?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(count);
    for chunk in 0..count.div_ceil(BATCH) {
        let mut batch = tokio::task::JoinSet::new();
        for i in chunk * BATCH..((chunk + 1) * BATCH).min(count) {
            let url = server.1.clone();
            batch.spawn(async move { register(&url, &format!("client-{i}")).await });
        }
        while let Some(ws) = batch.join_next().await {
            clients.push(ws??);
        }
    }
    let elapsed = started.elapsed();
    let loaded = resident_kib(server.0.id())?;
    println!(
        "clients held: {count} registered in {:.2} s; server resident {} KiB idle, {} KiB with clients: {:.1} KiB per client",
        elapsed.as_secs_f64(),
        idle,
        loaded,
        (loaded.saturating_sub(idle)) as f64 / count as f64
    );
    Ok(())
}

/// A bare relay: every text frame from the first client goes to the second,
/// without parsing. Runs on its own thread and runtime, like a separate
/// server process would.
fn bare_relay() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            // Handshake each client as it comes: the second connects only
            // after the first's handshake completed.
            let Ok((a, _)) = listener.accept().await else { return };
            let Ok(mut a) = tokio_tungstenite::accept_async(a).await else { return };
            let Ok((b, _)) = listener.accept().await else { return };
            let Ok(b) = tokio_tungstenite::accept_async(b).await else { return };
            let (mut b_tx, _b_rx) = b.split();
            while let Some(Ok(message)) = a.next().await {
                if b_tx.send(message).await.is_err() {
                    return;
                }
            }
        });
    });
    Ok(format!("ws://{addr}/ws"))
}

/// Sends [`FORWARDED`] messages from `sender` to `receiver`, at most
/// `WINDOW` in flight so the server never has to drop one as `peer-busy`.
async fn pump(sender: &mut Ws, receiver: &mut Ws, to: &str) -> anyhow::Result<Duration> {
    const WINDOW: usize = 128;
    let window = tokio::sync::Semaphore::new(WINDOW);
    let offer = Offer { fingerprint: "ab".repeat(32), candidates: vec![], nat: None, checks: None };
    let started = Instant::now();
    let send = async {
        for i in 0..FORWARDED {
            window.acquire().await?.forget();
            let m =
                ClientMessage::Connect { request_id: i as u64, to: to.into(), convention: 0x15, offer: offer.clone() };
            sender.send(Message::text(m.encode())).await?;
        }
        anyhow::Ok(())
    };
    let receive = async {
        let mut got = 0;
        while got < FORWARDED {
            match tokio::time::timeout(Duration::from_secs(10), receiver.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => {
                    got += 1;
                    window.add_permits(1);
                }
                Ok(Some(Ok(_))) => {}
                other => bail!("receiver ended after {got}: {other:?}"),
            }
        }
        Ok(())
    };
    tokio::try_join!(send, receive)?;
    Ok(started.elapsed())
}

async fn forwarding() -> anyhow::Result<()> {
    let server = start_server()?;
    let mut a = register(&server.1, "fwd-a").await?;
    let mut b = register(&server.1, "fwd-b").await?;
    let ours = pump(&mut a, &mut b, "fwd-b").await.context("through the signaling server")?;
    let relay = bare_relay()?;
    let (mut ra, _) = tokio_tungstenite::connect_async(&relay).await?;
    let (mut rb, _) = tokio_tungstenite::connect_async(&relay).await?;
    let bare = pump(&mut ra, &mut rb, "fwd-b").await.context("through the bare relay")?;
    let rate = |d: Duration| FORWARDED as f64 / d.as_secs_f64();
    println!(
        "forwarding: {:.0} messages/s through the signaling server, {:.0}/s through a bare relay: ratio {:.2}",
        rate(ours),
        rate(bare),
        rate(ours) / rate(bare)
    );
    Ok(())
}

fn plugin_dir() -> PathBuf {
    std::env::var_os("FOGCONNECT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A fresh app node registered with `url`: a first connect from it opens
/// a new link (a node reuses a live link for later connects to a peer).
async fn fresh_app(url: &str, n: usize) -> anyhow::Result<Node> {
    let id = format!("app-{n}");
    let app =
        Node::builder().node_id(&id).configure(|c| c.cache_dir = None).signal(url, token_for(&id)).start().await?;
    app.registered(Duration::from_secs(10)).await?;
    Ok(app)
}

async fn connect_latency(connects: usize) -> anyhow::Result<()> {
    let server = start_server()?;
    let echo = plugin_dir().join("echo.wasm");
    let device = Node::builder()
        .node_id("device")
        .configure(|c| c.cache_dir = None)
        .plugin(0, echo)
        .signal(&server.1, token_for("device"))
        .start()
        .await?;
    device.registered(Duration::from_secs(10)).await?;
    let addr: SocketAddr = device.local_addr();
    let mut by_id = Vec::with_capacity(connects);
    let mut by_addr = Vec::with_capacity(connects);
    for n in 0..connects {
        // Each connect from a fresh node: signaling, checks and the QUIC
        // handshake by id; the QUIC handshake alone by address.
        let app = fresh_app(&server.1, 2 * n).await?;
        let started = Instant::now();
        let conn = app.connect_peer("device", Transport::Quic, 0).await?;
        by_id.push(started.elapsed());
        drop(conn);
        app.shutdown().await;
        let app = fresh_app(&server.1, 2 * n + 1).await?;
        let started = Instant::now();
        let conn = app.connect(addr, Transport::Quic, 0).await?;
        by_addr.push(started.elapsed());
        drop(conn);
        app.shutdown().await;
    }
    by_id.sort();
    by_addr.sort();
    let (id_med, addr_med) = (percentile(&by_id, 0.5), percentile(&by_addr, 0.5));
    println!(
        "connect by id of a fresh node (signaling, checks, QUIC): median {:.0} us, p99 {:.0} us; by address (QUIC): median {:.0} us, p99 {:.0} us; ratio {:.2}",
        id_med.as_secs_f64() * 1e6,
        percentile(&by_id, 0.99).as_secs_f64() * 1e6,
        addr_med.as_secs_f64() * 1e6,
        percentile(&by_addr, 0.99).as_secs_f64() * 1e6,
        id_med.as_secs_f64() / addr_med.as_secs_f64()
    );
    device.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this with no `--bench`: a quick smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let clients = if smoke {
        50
    } else {
        std::env::var("FOGCONNECT_BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if std::env::var_os("FOGCONNECT_BENCH_SKIP_CLIENTS").is_none() {
            clients_held(clients).await?;
        }
        if !smoke {
            forwarding().await?;
            connect_latency(CONNECTS).await?;
        }
        anyhow::Ok(())
    })
}
