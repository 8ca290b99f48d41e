//! The adaptive source's time to settle on a rate-limited link (4 Mbit/s,
//! `tc tbf` between two namespaces), starting at twice the link rate: the
//! time from the stream's start until its send buffer first falls below the
//! low mark after the overshoot, and the bitrate it then holds. Steering by
//! watermark events (the plugin's default) against steering from the send
//! statistics alone with the watermarks off (`control=status`), the
//! baseline measured in the same run.
//!
//! Needs root, `ip` and `tc` (`make bench-nat` installs them). `cargo test
//! --benches` runs one short stream as a smoke test.
//! `FOGCONNECT_BENCH_STREAM_RUNS` sets the runs per mode (default 5).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/natlab/mod.rs"]
mod natlab;

use natlab::link::{LINK, stream_over_link};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Settle time (ms) and the median bitrate after settling (share of the
/// link rate) of one 12 s run.
fn run(params: &str) -> anyhow::Result<(f64, f64)> {
    let (_, stats, _) = stream_over_link(params, 12)?;
    let settled = stats.iter().rev().find_map(|s| s.settled_ms).map_or(f64::NAN, |ms| ms as f64);
    let after: Vec<f64> =
        stats.iter().filter(|s| s.secs * 1e3 >= settled + 2_000.0).map(|s| s.bitrate as f64 / LINK.1).collect();
    Ok((settled, median(after)))
}

fn main() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        let (_, stats, summary) = stream_over_link("action=live&bitrate=8000000", 3)?;
        anyhow::ensure!(summary.starts_with("ended: stopped by the application"), "smoke run: {summary}");
        anyhow::ensure!(!stats.is_empty(), "smoke run: no stats");
        return Ok(());
    }
    let runs: usize = std::env::var("FOGCONNECT_BENCH_STREAM_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let modes = [("events", "action=live&bitrate=8000000"), ("status", "action=live&bitrate=8000000&control=status")];
    let mut results = Vec::new();
    for (name, params) in modes {
        let mut settle = Vec::new();
        let mut held = Vec::new();
        for _ in 0..runs.max(1) {
            let (ms, share) = run(params)?;
            println!("{name}: settled after {ms:.0} ms, then {:.0}% of the link rate", share * 100.0);
            settle.push(ms);
            held.push(share);
        }
        results.push((name, median(settle), median(held)));
    }
    println!("\nmode    settle (median)  bitrate held (median share of {})", LINK.0);
    for (name, settle, share) in &results {
        println!("{name:7} {settle:9.0} ms     {:5.0}%", share * 100.0);
    }
    if let [(_, events, _), (_, status, _)] = results[..] {
        println!("settle time, events / status: {:.2}", events / status);
    }
    Ok(())
}
