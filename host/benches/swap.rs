//! Live swap of a service plugin: the swap pause (how long the service's
//! events wait) as median and p99, with the new plugin taken from the
//! precompiled cache and from a cold compile, against the echo round trip
//! on the same node measured in the same run (the wait a message has
//! anyway); with a state handoff (the counter plugin's `snapshot` and
//! `restore` in the pause); and the node's resident memory after 1,000
//! swaps.
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

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn node(cache: Option<std::path::PathBuf>, plugin: &str) -> anyhow::Result<Node> {
    let config = NodeConfig { cache_dir: cache, ..common::config() };
    common::node_with_config("device", &[(SERVICE, plugin)], config).await
}

/// Swaps alternately to v2 and v1 of the echo `count` times; returns the
/// pauses and the whole swap times (compile or cache load included).
async fn swaps(device: &Node, count: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    swaps_between(device, ["test-echo-v2", "test-echo-v1"], count).await
}

/// Swaps alternately to the two builds `count` times.
async fn swaps_between(
    device: &Node,
    builds: [&str; 2],
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let builds = [
        (builds[0], std::fs::read(common::plugin(builds[0]))?),
        (builds[1], std::fs::read(common::plugin(builds[1]))?),
    ];
    let mut pauses = Vec::with_capacity(count);
    let mut totals = Vec::with_capacity(count);
    for i in 0..count {
        let (name, wasm) = &builds[i % 2];
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
        let device = node(Some(cache.clone()), "test-echo-v1").await?;
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
        let rtt = common::percentile(&round_trips, 0.5);

        // Precompiled: both builds are in the cache after the first two swaps.
        swaps(&device, 2).await?;
        let (cached_pauses, cached_totals) = swaps(&device, count).await?;
        let cold_device = node(None, "test-echo-v1").await?;
        let (cold_pauses, cold_totals) = swaps(&cold_device, count.min(50)).await?;
        drop(cold_device);

        // State handoff: the counter keeps its count through every swap.
        let counting = node(Some(cache.clone()), "test-counter").await?;
        let mut counted = app.connect(counting.local_addr(), Transport::Quic, SERVICE).await?;
        for _ in 0..6 {
            app.connect(counting.local_addr(), Transport::Quic, SERVICE).await.map(|c| conns.push(c))?;
        }
        counted.send(b"add".to_vec())?;
        let _ = tokio::time::timeout(common::WAIT, counted.recv()).await?;
        swaps_between(&counting, ["test-counter", "test-counter"], 2).await?;
        let (handoff_pauses, handoff_totals) =
            swaps_between(&counting, ["test-counter", "test-counter"], count).await?;
        counted.send(b"add".to_vec())?;
        match tokio::time::timeout(common::WAIT, counted.recv()).await {
            Ok(ConnectionEvent::Message(reply)) if reply.as_ref() == b"2" => {}
            other => anyhow::bail!("the count did not survive the swaps: {other:?}"),
        }
        conns.truncate(6);
        drop(counting);

        // Memory: three times 1,000 more swaps from the cache; growth would
        // show in every round, the allocator settling only in the first.
        let before = resident_kib();
        let rounds = if smoke { 10 } else { 1_000 };
        let mut after = Vec::new();
        for _ in 0..3 {
            swaps(&device, rounds).await?;
            after.push(resident_kib());
        }
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
        for (mode, pauses, totals) in [
            ("precompiled", &cached_pauses, &cached_totals),
            ("cold compile", &cold_pauses, &cold_totals),
            ("with handoff", &handoff_pauses, &handoff_totals),
        ] {
            let (p50, p99) = (common::percentile(pauses, 0.5), common::percentile(pauses, 0.99));
            println!(
                "{mode:12} ({} swaps): pause median {:.3} ms ({:.1}× the round trip), p99 {:.3} ms; whole swap median {:.2} ms, p99 {:.2} ms",
                pauses.len(),
                ms(p50),
                p50.as_secs_f64() / rtt.as_secs_f64(),
                ms(p99),
                ms(common::percentile(totals, 0.5)),
                ms(common::percentile(totals, 0.99))
            );
        }
        let after: Vec<String> = after.iter().map(|kib| format!("{kib} KiB ({:+})", *kib as i64 - before as i64)).collect();
        println!("resident memory: {before} KiB, after each of three rounds of {rounds} more swaps: {}", after.join(", "));
        Ok(())
    })
}
