//! How quickly a live connection recovers from a network change, in the
//! NAT lab: a direct connection between two port-restricted cones carries
//! a numbered message every 20 ms (each after the previous reply) when
//! - the caller's NAT rebinds (UDP mappings dropped, new public port),
//! - the callee's NAT rebinds,
//! - the callee's host gets a new LAN address (the old one removed).
//!
//! For each: the time from the change to the first reply delivered after
//! the link's silence was reported (the first message on the new path),
//! and to the silence report itself; median and worst of
//! `FOGCONNECT_BENCH_RECOVERY_RUNS` runs (default 10). The baseline in the
//! same run is the idle timeout the connection would otherwise have ended
//! with (keep-alive 5 s × 6).
//!
//! Needs root, `ip`, `nft` and `conntrack` (`make bench-nat` installs
//! them). `cargo test --benches` runs one caller rebinding as a smoke test.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/natlab/mod.rs"]
mod natlab;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use natlab::{Lab, NatKind, Side};

/// What changes under the connection.
#[derive(Clone, Copy)]
enum Change {
    Rebind(Side),
    MoveCallee,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Rebind(Side::A) => "caller's NAT rebinds",
            Change::Rebind(Side::B) => "callee's NAT rebinds",
            Change::MoveCallee => "callee gets a new address",
        }
    }

    fn apply(self, lab: &Lab) -> anyhow::Result<()> {
        match self {
            Change::Rebind(side) => lab.rebind(side, 40_001),
            Change::MoveCallee => lab.move_host(Side::B, "10.0.2.2/24", "10.0.2.7/24", "10.0.2.1"),
        }
    }
}

/// One run: (time to the silence report, time to the first message on the
/// new path).
fn run(change: Change) -> anyhow::Result<(Duration, Duration)> {
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    let url = lab.start_servers()?;
    lab.start_echo_node("host-b", &url, &[])?;
    let extra = ["--repeat", "100000", "--interval-ms", "20", "--reply-timeout-ms", "30000"];
    let args = lab.send_args(&url, &extra, &["numbered"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = lab.spawn("host-a", &args, &[])?;
    let connected = client.wait_line("connected to", Duration::from_secs(20))?;
    if !connected.contains("path direct WAN") {
        bail!("not direct: {connected}");
    }
    client.wait_line("numbered #10", Duration::from_secs(10))?;
    change.apply(&lab)?;
    let changed = Instant::now();
    let mut silent = None;
    while let Some(line) = client.next_line(Duration::from_secs(40)) {
        if line.starts_with("event: link silent") {
            silent = Some(changed.elapsed());
        } else if line.starts_with("numbered #")
            && let Some(silent) = silent
        {
            return Ok((silent, changed.elapsed()));
        }
    }
    bail!("no message after the change: {:?}", client.error_lines())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    natlab::lab_available()?;
    if !std::env::args().any(|a| a == "--bench") {
        run(Change::Rebind(Side::A)).context("smoke run")?;
        return Ok(());
    }
    let runs: usize =
        std::env::var("FOGCONNECT_BENCH_RECOVERY_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10).max(1);
    let baseline = Duration::from_secs(5) * 6;
    println!("{:<28} {:>22} {:>26} {:>12}", "change", "silence noticed (ms)", "first message after (ms)", "vs timeout");
    for change in [Change::Rebind(Side::A), Change::Rebind(Side::B), Change::MoveCallee] {
        let mut noticed = Vec::new();
        let mut recovered = Vec::new();
        for _ in 0..runs {
            let (silent, first) = run(change).with_context(|| change.name())?;
            noticed.push(ms(silent));
            recovered.push(ms(first));
        }
        noticed.sort_by(f64::total_cmp);
        recovered.sort_by(f64::total_cmp);
        let median = |v: &[f64]| v[v.len() / 2];
        let worst = |v: &[f64]| v[v.len() - 1];
        println!(
            "{:<28} {:>10.0} / {:<10.0} {:>12.0} / {:<12.0} {:>11.3}x",
            change.name(),
            median(&noticed),
            worst(&noticed),
            median(&recovered),
            worst(&recovered),
            median(&recovered) / ms(baseline)
        );
    }
    println!(
        "(median / worst of {runs} runs; baseline: the idle timeout, keep-alive 5 s × 6, the connection's end without recovery)"
    );
    Ok(())
}
