//! One node holding 10,000 connections from 100 peers: a `fogconnect node`
//! process with the echo plugin on service 0, and 100 peer nodes in this
//! process, each with its own socket and link to it, opening 100
//! connections each. Every connection sends a 64-byte message once a
//! second (the connections spread over the second) and waits for its
//! echo, for a minute.
//!
//! Reports: messages sent and echoed (nothing may be lost), the round
//! trip's median and p99 under that load against one connection's alone
//! on the idle node (measured first, same run), and the node's resident
//! memory per connection (its growth from idle to all connections open,
//! over the connections; the goal is at most 32 KiB).
//!
//! `cargo bench -p fogconnect --bench node_scale` (after `make plugins`
//! and `cargo build --release`); `cargo test --benches` runs a short smoke
//! pass (1,000 connections, 3 s).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::c::Running;
use fogconnect::{Connection, ConnectionEvent, Node, Transport};

/// Longest an echo may take before its message counts as lost.
const ECHO_LIMIT: Duration = Duration::from_secs(5);

/// What one connection saw: round trips, and messages it sent that never
/// came back.
#[derive(Default)]
struct Tally {
    round_trips: Vec<Duration>,
    lost: u64,
}

/// Sends a numbered 64-byte message on `conn` once per `period`, starting
/// at `start`, until `end`, and waits for each echo.
async fn exchange(mut conn: Connection, start: tokio::time::Instant, period: Duration, end: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        ticks.tick().await;
        if Instant::now() >= end {
            return tally;
        }
        sequence += 1;
        let mut payload = vec![0u8; 64];
        payload[..8].copy_from_slice(&sequence.to_be_bytes());
        let sent = Instant::now();
        if conn.send(payload).is_err() {
            tally.lost += 1;
            continue;
        }
        match tokio::time::timeout(ECHO_LIMIT, conn.recv()).await {
            Ok(ConnectionEvent::Message(reply)) if reply[..8] == sequence.to_be_bytes() => {
                tally.round_trips.push(sent.elapsed());
            }
            _ => tally.lost += 1,
        }
    }
}

/// A UDP port free now on loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (peers, per_peer, hold) =
        if smoke { (10, 100, Duration::from_secs(3)) } else { (100, 100, Duration::from_secs(60)) };
    let fogconnect = common::target_dir().join("release/fogconnect");
    ensure!(fogconnect.exists(), "{} missing: cargo build --release", fogconnect.display());
    let dir = tempfile::tempdir()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut node = Command::new(&fogconnect);
    node.args(["node", "--listen", &addr.to_string(), "--id", "scale"])
        .args(["--plugin", &format!("0={}", common::plugin("echo").display())])
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env("RUST_LOG", "warn");
    let mut server = Running::start(node)?;
    loop {
        let line = server.next_line().await.context("the node did not start")?;
        if line.starts_with("listening on") {
            break;
        }
    }
    let pid = server.child.0.id();

    // One connection alone on the idle node: the baseline round trip.
    let alone = Node::builder().config(common::config()).node_id("alone").start().await?;
    let mut conn = alone.connect(addr, Transport::Quic, 0).await?;
    // Warm up (the first calls, caches), then measure.
    for _ in 0..100 {
        conn.send(vec![0u8; 64])?;
        common::message(&mut conn).await?;
    }
    let quiet =
        exchange(conn, tokio::time::Instant::now(), Duration::from_millis(10), Instant::now() + Duration::from_secs(2))
            .await;
    alone.shutdown().await;
    ensure!(quiet.lost == 0, "{} lost alone", quiet.lost);
    let mut quiet_trips = quiet.round_trips;
    quiet_trips.sort();
    let idle_kib = common::server::resident_kib(pid)?;

    let mut nodes = Vec::with_capacity(peers);
    let mut conns = Vec::with_capacity(peers * per_peer);
    let opening = Instant::now();
    for i in 0..peers {
        let peer = Node::builder().config(common::config()).node_id(format!("peer-{i}")).start().await?;
        let connects = (0..per_peer).map(|_| peer.connect(addr, Transport::Quic, 0));
        for result in futures_util::future::join_all(connects).await {
            conns.push(result.with_context(|| format!("connection {} of peer {i}", conns.len()))?);
        }
        nodes.push(peer);
    }
    let opened_in = opening.elapsed();
    let total = conns.len();

    // Spread the connections over the second.
    let period = Duration::from_secs(1);
    let first = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = Instant::now() + Duration::from_millis(100) + hold;
    let running = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let start = first + period.mul_f64(i as f64 / total as f64);
        let running = running.clone();
        tasks.spawn(async move {
            running.fetch_add(1, Ordering::Relaxed);
            exchange(conn, start, period, end).await
        });
    }
    tokio::time::sleep(hold / 2 + Duration::from_millis(100)).await;
    let loaded_kib = common::server::resident_kib(pid)?;
    let (mut trips, mut lost) = (Vec::with_capacity(total * hold.as_secs() as usize), 0);
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        trips.extend(tally.round_trips);
        lost += tally.lost;
    }
    for peer in nodes {
        peer.shutdown().await;
    }
    drop(server);
    trips.sort();
    if trips.is_empty() {
        bail!("no round trip completed");
    }

    let per_connection = loaded_kib.saturating_sub(idle_kib) as f64 / total as f64;
    let (quiet_p50, quiet_p99) = (common::percentile(&quiet_trips, 0.5), common::percentile(&quiet_trips, 0.99));
    let (p50, p99) = (common::percentile(&trips, 0.5), common::percentile(&trips, 0.99));
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{total} connections from {peers} peers to one node (echo plugin), one 64 B message per second each, {hold:?}"
    );
    println!("opened in {:.1} s; messages echoed {}, lost {lost}", opened_in.as_secs_f64(), trips.len());
    println!(
        "round trip: median {:.0} µs ({:.2}x alone: {:.0} µs), p99 {:.0} µs ({:.2}x alone: {:.0} µs)",
        micros(p50),
        micros(p50) / micros(quiet_p50),
        micros(quiet_p50),
        micros(p99),
        micros(p99) / micros(quiet_p99),
        micros(quiet_p99)
    );
    println!(
        "node resident memory: idle {idle_kib} KiB, with the connections {loaded_kib} KiB: {per_connection:.1} KiB per connection ({:.2}x the goal of 32 KiB)",
        per_connection / 32.0
    );
    ensure!(lost == 0, "{lost} messages lost");
    Ok(())
}
