//! How quickly a node event reaches a plugin on the
//! `fogconnect:plugin@0.2.0` contract, against a Rust subscriber of
//! `Node::events()` on the same node in the same run.
//!
//! A node with the `test-events` plugin watches a peer; the peer then
//! registers with the signaling server (all on loopback), and the server
//! tells the node. From the moment the peer starts (on the node's clock,
//! `Node::uptime`, which plugins read with `monotonic-now`) to the Rust
//! subscriber receiving the presence event, and to the plugin's
//! `on-node-event` running. Median and 90th percentile of
//! `FOGCONNECT_BENCH_EVENT_RUNS` peers (default 200); the plugin's figure
//! as a ratio of the Rust subscriber's, and the difference.
//!
//! `cargo test --benches` runs five as a smoke test.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{Connection, Node, NodeEvent, Transport};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"plugin event bench secret";
const EVENTS: u8 = 2;

/// Reads the plugin's event lines until one starts with `wanted`; returns
/// its `@` stamp (nanoseconds on the node's clock).
async fn stamp_of(reporter: &mut Connection, wanted: &str) -> anyhow::Result<Duration> {
    loop {
        let line = common::text(reporter).await.with_context(|| format!("waiting for {wanted:?}"))?;
        if line.starts_with(wanted) {
            let ns = line.rsplit_once(" @").and_then(|(_, ns)| ns.parse().ok()).context("no stamp")?;
            return Ok(Duration::from_nanos(ns));
        }
    }
}

async fn measure(runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let url = server.url();
    let token_for = |id: &str| token::issue(SECRET, id, u64::MAX / 2);
    let device = Node::builder()
        .config(common::config())
        .node_id("device")
        .signal(&url, token_for("device"))
        .plugin(EVENTS, common::plugin("test-events"))
        .start()
        .await?;
    device.registered(common::WAIT).await?;
    let app = Node::builder().config(common::config()).node_id("app").start().await?;
    let mut reporter = app.connect(device.local_addr(), Transport::Quic, EVENTS).await?;
    let mut control = app.connect(device.local_addr(), Transport::Quic, EVENTS).await?;
    ensure!(common::ask(&mut reporter, "report").await?.starts_with("reporting"));

    // The Rust subscriber notes the node's clock as soon as it is told.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut events = device.events();
    let clock = device.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let NodeEvent::Presence { peer, online: true } = event {
                let _ = seen_tx.send((peer, clock.uptime()));
            }
        }
    });

    let (mut rust, mut plugin) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let peer = format!("peer-{i}");
        ensure!(common::ask(&mut control, &format!("watch {peer}")).await? == format!("watching {peer}"));
        stamp_of(&mut reporter, &format!("node presence {peer} offline")).await?;
        let started = device.uptime();
        let node =
            Node::builder().config(common::config()).node_id(&peer).signal(&url, token_for(&peer)).start().await?;
        let plugin_at = stamp_of(&mut reporter, &format!("node presence {peer} online")).await?;
        let rust_at = loop {
            let (who, at) = tokio::time::timeout(common::WAIT, seen.recv()).await?.context("subscriber gone")?;
            if who == peer {
                break at;
            }
        };
        rust.push((rust_at - started).as_secs_f64() * 1e3);
        plugin.push((plugin_at - started).as_secs_f64() * 1e3);
        tokio::spawn(async move { node.shutdown().await });
    }
    app.shutdown().await;
    device.shutdown().await;
    drop(server);
    Ok((rust, plugin))
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let runs = if bench {
        std::env::var("FOGCONNECT_BENCH_EVENT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200).max(2)
    } else {
        5
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (mut rust, mut plugin) = runtime.block_on(measure(runs))?;
    if !bench {
        return Ok(());
    }
    let mut difference: Vec<f64> = plugin.iter().zip(&rust).map(|(p, r)| (p - r) * 1e3).collect();
    for v in [&mut rust, &mut plugin, &mut difference] {
        v.sort_by(f64::total_cmp);
    }
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!("{:<34} {:>12} {:>12}", "peer online event, from its start", "median", "p90");
    println!("{:<34} {:>9.3} ms {:>9.3} ms", "Rust subscriber (baseline)", at(&rust, 0.5), at(&rust, 0.9));
    println!("{:<34} {:>9.3} ms {:>9.3} ms", "plugin on-node-event", at(&plugin, 0.5), at(&plugin, 0.9));
    println!(
        "{:<34} {:>9.0} µs {:>9.0} µs   (plugin ×{:.3} of the baseline)",
        "plugin after the subscriber",
        at(&difference, 0.5),
        at(&difference, 0.9),
        at(&plugin, 0.5) / at(&rust, 0.5)
    );
    println!("({runs} peers, loopback)");
    Ok(())
}
