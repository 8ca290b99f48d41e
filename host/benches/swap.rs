//! Live swap of a service plugin: the swap pause (how long the service's
//! events wait) as median and p99, with the new plugin taken from the
//! precompiled cache and from a cold compile, against the echo round trip
//! on the same node measured in the same run (the wait a message has
//! anyway); and the node's resident memory after 1,000 swaps.
//!
//! Six connections stay open through every swap (each announced to the new
//! generation). `cargo bench -p fogconnect --bench swap` after `make
//! plugins`; `cargo test --benches` runs a few swaps as a smoke test.
//! `FOGCONNECT_BENCH_SWAPS` sets the swaps per mode (default 200).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use fogconnect::{ConnectionEvent, Node, NodeConfig, Transport};

const SERVICE: u8 = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn node(cache: Option<std::path::PathBuf>) -> anyhow::Result<Node> {
    let config = NodeConfig { cache_dir: cache, ..common::config() };
    common::node_with_config("device", &[(SERVICE, "test-echo-v1")], config).await
}

/// Swaps alternately to v2 and v1 `count` times; returns the pauses and
/// the whole swap times (compile or cache load included).
async fn swaps(device: &Node, count: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let v1 = std::fs::read(common::plugin("test-echo-v1"))?;
    let v2 = std::fs::read(common::plugin("test-echo-v2"))?;
    let mut pauses = Vec::with_capacity(count);
    let mut totals = Vec::with_capacity(count);
    for i in 0..count {
        let (name, wasm) = if i % 2 == 0 { ("test_echo_v2", &v2) } else { ("test_echo_v1", &v1) };
        let started = Instant::now();
        let report = device.swap_plugin_bytes(SERVICE, name, wasm).await?;
        totals.push(started.elapsed());
        pauses.push(report.pause);
    }
    pauses.sort();
    totals.sort();
    Ok((pauses, totals))
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let count = if smoke {
            4
        } else {
            std::env::var("FOGCONNECT_BENCH_SWAPS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
        };
        let cache = std::env::temp_dir().join(format!("fogconnect-swap-bench-{}", std::process::id()));
        let device = node(Some(cache.clone())).await?;
        let app = common::node_with("app", &[]).await?;
        let mut conns = Vec::new();
        for _ in 0..6 {
            conns.push(app.connect(device.local_addr(), Transport::Quic, SERVICE).await?);
        }
        // Baseline: echo round trips on the same node.
        let mut round_trips = Vec::new();
        for i in 0..200 {
            let started = Instant::now();
            conns[i % 6].send(b"ping".to_vec())?;
            match tokio::time::timeout(common::WAIT, conns[i % 6].recv()).await {
                Ok(ConnectionEvent::Message(_)) => round_trips.push(started.elapsed()),
                other => anyhow::bail!("no echo: {other:?}"),
            }
        }
        round_trips.sort();
        let rtt = percentile(&round_trips, 0.5);

        // Precompiled: both builds are in the cache after the first two swaps.
        swaps(&device, 2).await?;
        let (cached_pauses, cached_totals) = swaps(&device, count).await?;
        let cold_device = node(None).await?;
        let (cold_pauses, cold_totals) = swaps(&cold_device, count.min(50)).await?;

        // Memory: 1,000 more swaps from the cache.
        let before = resident_kib();
        let rounds = if smoke { 10 } else { 1_000 };
        swaps(&device, rounds).await?;
        let after = resident_kib();
        for conn in &mut conns {
            conn.send(b"still here".to_vec())?;
            match tokio::time::timeout(common::WAIT, conn.recv()).await {
                Ok(ConnectionEvent::Message(_)) => {}
                other => anyhow::bail!("a connection did not survive the swaps: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&cache);
        if smoke {
            return Ok(());
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("echo round trip on the node (baseline): median {:.3} ms", ms(rtt));
        for (mode, pauses, totals) in
            [("precompiled", &cached_pauses, &cached_totals), ("cold compile", &cold_pauses, &cold_totals)]
        {
            let (p50, p99) = (percentile(pauses, 0.5), percentile(pauses, 0.99));
            println!(
                "{mode:12} ({} swaps): pause median {:.3} ms ({:.1}× the round trip), p99 {:.3} ms; whole swap median {:.2} ms, p99 {:.2} ms",
                pauses.len(),
                ms(p50),
                p50.as_secs_f64() / rtt.as_secs_f64(),
                ms(p99),
                ms(percentile(totals, 0.5)),
                ms(percentile(totals, 0.99))
            );
        }
        println!(
            "resident memory: {before} KiB before {rounds} more swaps, {after} KiB after ({:+} KiB)",
            after as i64 - before as i64
        );
        Ok(())
    })
}
