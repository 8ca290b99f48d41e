//! Relay throughput and added latency: `fogconnect relay` against coturn,
//! same machine, same client (our TURN client over a channel), same run.
//!
//! - latency: median round trip client → relay → peer → relay → client,
//!   against a direct UDP round trip between the same sockets;
//! - throughput: datagrams of 1,000 bytes sent as fast as the client
//!   socket takes them, counted at the peer: delivered per second, Mbit/s
//!   and loss.
//!
//! `cargo bench -p fogconnect --bench relay` (needs coturn: `make lab-deps`);
//! `cargo test --benches` runs a short smoke pass.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::median;
use common::turn::{drive, free_port, start_coturn, start_fogconnect_relay, test_client_config};
use fogconnect::relay::client::{TurnClient, TurnEvent};
use tokio::net::UdpSocket;

/// Quiet time between the allocation and the measured round trips. Round
/// trips measured right after the setup, or after half a second of
/// continuous round trips, take about 155 µs through either server
/// instead of 15–20 µs; after a quiet pause they take the latter. The
/// cause is not found; both servers are measured the same way.
const WARM_UP: Duration = Duration::from_millis(300);

struct Figures {
    rtt_us: f64,
    packets_per_s: f64,
    mbit_per_s: f64,
    loss: f64,
}

async fn direct_rtt(pings: usize) -> anyhow::Result<f64> {
    let a = UdpSocket::bind("127.0.0.1:0").await?;
    let b = UdpSocket::bind("127.0.0.1:0").await?;
    let mut buf = vec![0u8; 2048];
    let mut rtts = Vec::new();
    for _ in 0..pings {
        let t = Instant::now();
        a.send_to(&[1; 100], b.local_addr()?).await?;
        let (_, from) = b.recv_from(&mut buf).await?;
        b.send_to(&[2; 100], from).await?;
        a.recv_from(&mut buf).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(rtts))
}

async fn measure(name: &str, pings: usize, packets: usize) -> anyhow::Result<Figures> {
    let port = free_port()?;
    let _server = match name {
        "coturn" => start_coturn(port)?,
        _ => start_fogconnect_relay(port, &[])?,
    };
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;
    let mut client = TurnClient::new(test_client_config(server), Instant::now());
    let mut events = Vec::new();
    let limit = Duration::from_secs(10);
    drive(&mut client, &socket, server, &mut events, limit, |c, _| c.relayed().is_some()).await?;
    let relayed = client.relayed().context("relayed")?;
    client.bind_channel(peer_addr, Instant::now())?;
    drive(&mut client, &socket, server, &mut events, limit, |c, _| c.is_bound(peer_addr)).await?;

    // Latency: one datagram each way per round trip, after a quiet
    // settling period (see WARM_UP).
    tokio::time::sleep(WARM_UP).await;
    let mut buf = vec![0u8; 65_536];
    let mut rtts = Vec::new();
    for _ in 0..pings {
        let t = Instant::now();
        client.send_to(peer_addr, &[1; 100])?;
        while let Some(bytes) = client.poll_transmit() {
            socket.send_to(&bytes, server).await?;
        }
        tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf)).await.context("ping lost")??;
        peer.send_to(&[2; 100], relayed).await?;
        drive(&mut client, &socket, server, &mut events, limit, |_, e| {
            let got = e.iter().any(|e| matches!(e, TurnEvent::Data { .. }));
            e.clear();
            got
        })
        .await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }

    // Throughput: the peer counts what arrives until 200 ms of silence.
    let counter = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut count = 0usize;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await {
            count += 1;
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
        }
        (count, first.map_or(Duration::ZERO, |f| last - f))
    });
    let payload = vec![7u8; 1000];
    for _ in 0..packets {
        client.send_to(peer_addr, &payload)?;
        while let Some(bytes) = client.poll_transmit() {
            socket.send_to(&bytes, server).await?;
        }
    }
    let (delivered, took) = counter.await?;
    let seconds = took.as_secs_f64().max(1e-6);
    Ok(Figures {
        rtt_us: median(rtts),
        packets_per_s: delivered as f64 / seconds,
        mbit_per_s: delivered as f64 * 1000.0 * 8.0 / seconds / 1e6,
        loss: 1.0 - delivered as f64 / packets as f64,
    })
}

fn main() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (pings, packets) = if smoke { (20, 2_000) } else { (1_000, 200_000) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let direct = direct_rtt(pings).await?;
        let ours = measure("fogconnect", pings, packets).await?;
        let coturn = measure("coturn", pings, packets).await?;
        println!("relay round trip, 100 B, median of {pings} (direct UDP on loopback {direct:.0} µs):");
        for (name, f) in [("fogconnect relay", &ours), ("coturn", &coturn)] {
            println!("  {name:<17} {:>7.0} µs  (+{:.0} µs over direct)", f.rtt_us, f.rtt_us - direct);
        }
        println!("relay throughput, {packets} datagrams of 1,000 B through a channel:");
        for (name, f) in [("fogconnect relay", &ours), ("coturn", &coturn)] {
            println!(
                "  {name:<17} {:>9.0} datagrams/s  {:>7.1} Mbit/s  loss {:.1}%",
                f.packets_per_s,
                f.mbit_per_s,
                f.loss * 100.0
            );
        }
        println!(
            "ratio fogconnect / coturn: throughput {:.2}×, added latency {:.2}×",
            ours.packets_per_s / coturn.packets_per_s,
            (ours.rtt_us - direct) / (coturn.rtt_us - direct)
        );
        anyhow::Ok(())
    })
}
