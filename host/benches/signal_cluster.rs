//! Signaling as three servers over a real 3-node NATS cluster, each figure
//! against a baseline measured in the same run:
//! - registered clients held across the three servers and memory per
//!   client (signaling processes, and the NATS servers' share), against
//!   one server alone holding as many;
//! - connect-by-id signaling round trip (`connect` → `incoming` →
//!   `answer` → `answered`, raw protocol clients) across servers, against
//!   both ends on one server;
//! - messages per second from a client on one server to a client on
//!   another, against both on one server;
//! - a re-registration storm: every client of a server killed with
//!   SIGKILL reconnects to the other two (each after a random delay
//!   within the node's first backoff, 200 ms); time until all are
//!   registered again and until the other servers see the dead one's
//!   ids offline.
//!
//! `make bench` (or `cargo bench -p fogconnect --bench signal_cluster`;
//! needs `nats-server`). `FOGCONNECT_BENCH_CLIENTS` sets the client count
//! (default 10,000), `FOGCONNECT_BENCH_MEMORY_ONLY` stops after the
//! memory figures.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::nats::NatsCluster;
use common::server::ServerProcess;
use fogconnect::signal::protocol::{ClientMessage, Offer, PROTOCOL_VERSION, ServerMessage};
use fogconnect::signal::token;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "signaling cluster bench secret 0123456789";
/// Clients registering at once.
const BATCH: usize = 250;
/// Connect round trips timed per series.
const ROUND_TRIPS: usize = 1_000;
/// Messages pumped per series.
const FORWARDED: usize = 20_000;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn token_for(id: &str) -> String {
    token::issue(SECRET.as_bytes(), id, u64::MAX / 2)
}

/// `fogconnect signal` with the per-address caps lifted (every client
/// comes from 127.0.0.1), alone or in `nats`.
fn signal_server(nats: Option<&NatsCluster>) -> anyhow::Result<ServerProcess> {
    let urls = nats.map(NatsCluster::urls);
    let mut args = vec!["signal", "--listen", "127.0.0.1:0", "--rate-per-second", "1000000", "--rate-burst", "1000000"];
    args.extend(["--max-clients-per-ip", "1000000", "--connect-rate-per-ip", "1000000"]);
    if let Some(urls) = &urls {
        args.extend(["--nats", urls, "--nats-replicas", "3"]);
    }
    ServerProcess::start(&args, None, "signaling on ws://", &[("FOGCONNECT_SIGNAL_SECRET", SECRET)])
}

async fn register(url: &str, id: &str) -> anyhow::Result<Ws> {
    // Small client buffers: thousands of clients live in this process.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let register = ClientMessage::Register { version: PROTOCOL_VERSION, id: id.into(), token: token_for(id) };
    ws.send(Message::text(register.encode())).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t))))
            if matches!(ServerMessage::decode(t.as_str()), Ok(ServerMessage::Registered { .. })) =>
        {
            Ok(ws)
        }
        other => bail!("registration of {id} failed: {other:?}"),
    }
}

/// Registers `count` clients, client `i` on `urls[i % urls.len()]`.
async fn register_all(urls: &[String], count: usize, prefix: &str) -> anyhow::Result<Vec<Ws>> {
    let mut clients = Vec::with_capacity(count);
    for chunk in 0..count.div_ceil(BATCH) {
        let mut batch = tokio::task::JoinSet::new();
        for i in chunk * BATCH..((chunk + 1) * BATCH).min(count) {
            let url = urls[i % urls.len()].clone();
            let id = format!("{prefix}-{i}");
            batch.spawn(async move { register(&url, &id).await });
        }
        while let Some(ws) = batch.join_next().await {
            clients.push(ws??);
        }
    }
    Ok(clients)
}

fn nats_resident_kib(nats: &NatsCluster) -> anyhow::Result<u64> {
    nats.pids().iter().map(|pid| common::server::resident_kib(*pid)).sum()
}

async fn memory(nats: &NatsCluster, count: usize) -> anyhow::Result<()> {
    // Baseline: one server alone.
    let alone = signal_server(None)?;
    let idle = alone.rss_kib()?;
    let clients = register_all(&[alone.url()], count, "alone").await?;
    let per_alone = (alone.rss_kib()?.saturating_sub(idle)) as f64 / count as f64;
    drop(clients);
    drop(alone);
    let servers = (0..3).map(|_| signal_server(Some(nats))).collect::<anyhow::Result<Vec<_>>>()?;
    let idle: u64 = servers.iter().map(|s| s.rss_kib()).sum::<anyhow::Result<u64>>()?;
    let nats_idle = nats_resident_kib(nats)?;
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let started = Instant::now();
    let clients = register_all(&urls, count, "held").await?;
    let elapsed = started.elapsed();
    let loaded: u64 = servers.iter().map(|s| s.rss_kib()).sum::<anyhow::Result<u64>>()?;
    let per_cluster = (loaded.saturating_sub(idle)) as f64 / count as f64;
    let per_nats = (nats_resident_kib(nats)?.saturating_sub(nats_idle)) as f64 / count as f64;
    println!(
        "clients held: {count} across 3 servers, registered in {:.2} s ({:.0}/s); signaling memory per client {:.1} KiB (one server alone: {:.1} KiB, ratio {:.2}); NATS servers {:.2} KiB per client in all",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        per_cluster,
        per_alone,
        per_cluster / per_alone,
        per_nats,
    );
    drop(clients);
    Ok(())
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(ServerMessage::decode(t.as_str())?),
            Ok(Some(Ok(_))) => continue,
            other => bail!("connection ended: {other:?}"),
        }
    }
}

fn offer() -> Offer {
    Offer { fingerprint: "ab".repeat(32), candidates: vec![], nat: None, checks: None }
}

/// `ROUND_TRIPS` connect → incoming → answer → answered round trips
/// between `caller` and `device`; sorted durations.
async fn round_trips(caller: &mut Ws, device: &mut Ws, to: &str, from: &str) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS as u64 {
        let started = Instant::now();
        let connect = ClientMessage::Connect { request_id: i, to: to.into(), convention: 0x15, offer: offer() };
        caller.send(Message::text(connect.encode())).await?;
        match next_text(device).await? {
            ServerMessage::Incoming { request_id, .. } if request_id == i => {}
            other => bail!("expected incoming {i}, got {other:?}"),
        }
        let answer = ClientMessage::Answer { request_id: i, to: from.into(), offer: offer() };
        device.send(Message::text(answer.encode())).await?;
        match next_text(caller).await? {
            ServerMessage::Answered { request_id, .. } if request_id == i => {}
            other => bail!("expected answered {i}, got {other:?}"),
        }
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

/// Sender/receiver pairs pumping at once (a server forwards one client's
/// messages in order, one after the other).
const PAIRS: usize = 32;

/// `count` connects from `sender` to `to` (held by `receiver`), at most
/// 128 in flight.
async fn pump(mut sender: Ws, mut receiver: Ws, to: String, count: usize) -> anyhow::Result<()> {
    let (sender, receiver, to) = (&mut sender, &mut receiver, to.as_str());
    let window = tokio::sync::Semaphore::new(128);
    let send = async {
        for i in 0..count {
            window.acquire().await?.forget();
            let m = ClientMessage::Connect { request_id: i as u64, to: to.into(), convention: 0x15, offer: offer() };
            sender.send(Message::text(m.encode())).await?;
        }
        anyhow::Ok(())
    };
    let receive = async {
        for got in 0..count {
            match next_text(receiver).await {
                Ok(ServerMessage::Incoming { .. }) => window.add_permits(1),
                other => bail!("receiver ended after {got}: {other:?}"),
            }
        }
        Ok(())
    };
    tokio::try_join!(send, receive)?;
    Ok(())
}

/// [`FORWARDED`] messages from [`PAIRS`] senders on `from` to as many
/// receivers on `to`, all at once; messages per second.
async fn pump_pairs(from: &str, to: &str, tag: &str) -> anyhow::Result<f64> {
    let mut pairs = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let receiver_id = format!("{tag}-rx-{i}");
        let receiver = register(to, &receiver_id).await?;
        let sender = register(from, &format!("{tag}-tx-{i}")).await?;
        pairs.push((sender, receiver, receiver_id));
    }
    let started = Instant::now();
    let mut pumps = tokio::task::JoinSet::new();
    for (sender, receiver, to) in pairs {
        pumps.spawn(pump(sender, receiver, to, FORWARDED / PAIRS));
    }
    while let Some(done) = pumps.join_next().await {
        done??;
    }
    Ok((FORWARDED / PAIRS * PAIRS) as f64 / started.elapsed().as_secs_f64())
}

async fn latency_and_rate(nats: &NatsCluster) -> anyhow::Result<()> {
    let servers = (0..3).map(|_| signal_server(Some(nats))).collect::<anyhow::Result<Vec<_>>>()?;
    let (one, other) = (servers[0].url(), servers[2].url());
    let mut device = register(&one, "rt-device").await?;
    let mut near = register(&one, "rt-near").await?;
    let mut far = register(&other, "rt-far").await?;
    let same = round_trips(&mut near, &mut device, "rt-device", "rt-near").await?;
    let across = round_trips(&mut far, &mut device, "rt-device", "rt-far").await?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "connect-by-id signaling round trip: across servers median {:.0} us, p99 {:.0} us; one server median {:.0} us, p99 {:.0} us; ratio {:.2}",
        us(common::percentile(&across, 0.5)),
        us(common::percentile(&across, 0.99)),
        us(common::percentile(&same, 0.5)),
        us(common::percentile(&same, 0.99)),
        common::percentile(&across, 0.5).as_secs_f64() / common::percentile(&same, 0.5).as_secs_f64()
    );
    let same = pump_pairs(&one, &one, "same").await?;
    let across = pump_pairs(&other, &one, "across").await?;
    println!(
        "messages forwarded by {PAIRS} pairs at once: across servers {across:.0}/s, one server {same:.0}/s, ratio {:.2}",
        across / same
    );
    Ok(())
}

/// A client that reconnects to the next server when its session ends,
/// after a random delay within `jitter`, and registers again.
async fn resilient(urls: Arc<Vec<String>>, id: String, mut ws: Ws, back: Arc<AtomicUsize>, jitter: Duration) {
    let mut current = 0;
    loop {
        while let Some(Ok(_)) = ws.next().await {}
        tokio::time::sleep(jitter.mul_f64(rand::random::<f64>())).await;
        loop {
            current = (current + 1) % urls.len();
            if let Ok(again) = register(&urls[current], &id).await {
                ws = again;
                break;
            }
        }
        back.fetch_add(1, Ordering::Relaxed);
    }
}

async fn storm(nats: &NatsCluster, count: usize) -> anyhow::Result<()> {
    let mut servers = (0..3).map(|_| signal_server(Some(nats))).collect::<anyhow::Result<Vec<_>>>()?;
    let urls = Arc::new(servers.iter().map(ServerProcess::url).collect::<Vec<_>>());
    // Everyone on the first server; a watcher on the last sees them go.
    let clients = register_all(&urls[..1], count, "storm").await?;
    let mut watcher = register(&urls[2], "storm-watcher").await?;
    watcher.send(Message::text(ClientMessage::Subscribe.encode())).await?;
    let back = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ws) in clients.into_iter().enumerate() {
        let (urls, back) = (urls.clone(), back.clone());
        tasks.spawn(resilient(urls, format!("storm-{i}"), ws, back, Duration::from_millis(200)));
    }
    // One client that does not come back, to time the offline report.
    let stranded = register(&urls[0], "storm-stranded").await?;
    let doomed = servers.remove(0);
    let killed = Instant::now();
    doomed.kill();
    let deadline = killed + Duration::from_secs(120);
    while back.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            bail!("only {} of {count} registered again within 120 s", back.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_back = killed.elapsed();
    let offline = loop {
        let left = (killed + Duration::from_secs(60)).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watcher.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(ServerMessage::Presence { id, online: false }) = ServerMessage::decode(t.as_str())
                    && id == "storm-stranded"
                {
                    break killed.elapsed();
                }
            }
            Ok(Some(Ok(_))) => {}
            other => bail!("no offline report for the stranded client within 60 s: {other:?}"),
        }
    };
    println!(
        "re-registration storm: {count} clients of a killed server registered again on the other two in {:.2} s ({:.0}/s); its stranded ids reported offline after {:.1} s",
        all_back.as_secs_f64(),
        count as f64 / all_back.as_secs_f64(),
        offline.as_secs_f64()
    );
    tasks.abort_all();
    drop(stranded);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this with no `--bench`: a quick smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let clients = if smoke {
        60
    } else {
        std::env::var("FOGCONNECT_BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let nats = NatsCluster::start(3).await.context("NATS cluster")?;
        memory(&nats, clients).await?;
        if std::env::var_os("FOGCONNECT_BENCH_MEMORY_ONLY").is_some() {
            return Ok(());
        }
        if !smoke {
            latency_and_rate(&nats).await?;
        }
        storm(&nats, clients).await?;
        anyhow::Ok(())
    })
}
