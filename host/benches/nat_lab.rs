//! Time from connect to connection per NAT pair in the NAT lab, direct or
//! through the lab's relay (median and worst of several runs, as a ratio to
//! the open × open pair measured in the same run), and the probes birthday probing uses between a
//! port-restricted cone and a symmetric NAT.
//!
//! Needs root, `ip` and `nft` (`make bench-nat` installs them). Each run
//! builds its own namespaces, so runs are independent. `cargo test
//! --benches` runs one birthday connect as a smoke test.
//! `FOGCONNECT_BENCH_NAT_RUNS` sets the runs per pair (default 5) and
//! `FOGCONNECT_BENCH_BIRTHDAY_RUNS` the birthday runs (default 20).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/natlab/mod.rs"]
mod natlab;

use natlab::{NatKind, PairRun};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(sorted: &[f64]) -> f64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        let run = natlab::connect_pair(NatKind::PortRestricted, NatKind::Symmetric, &[])?;
        anyhow::ensure!(run.direct(), "smoke run not direct: {run:?}");
        return Ok(());
    }
    let runs = env_count("FOGCONNECT_BENCH_NAT_RUNS", 5).max(1);
    let mut rows: Vec<(NatKind, NatKind, String, Vec<f64>)> = Vec::new();
    for a in NatKind::ALL {
        for b in NatKind::ALL {
            let mut times = Vec::new();
            let mut outcome = String::new();
            for _ in 0..runs {
                let run: PairRun = natlab::connect_pair(a, b, &[])?;
                let path = if run.direct() {
                    "direct"
                } else if run.relayed() {
                    "relayed"
                } else {
                    outcome = format!("failed: {:?}", run.error);
                    continue;
                };
                times.extend(run.connect_ms);
                if outcome.is_empty() {
                    outcome = path.into();
                } else if outcome != path && !outcome.starts_with("failed") {
                    outcome = "direct/relayed".into();
                }
            }
            times.sort_by(f64::total_cmp);
            rows.push((a, b, outcome, times));
        }
    }
    let baseline = rows
        .iter()
        .find(|(a, b, ..)| *a == NatKind::Open && *b == NatKind::Open)
        .map(|(.., t)| median(t))
        .unwrap_or(f64::NAN);
    println!("time from connect to connection, {runs} run(s) per pair (baseline open × open: {baseline:.1} ms)");
    println!("{:<12} {:<12} {:<15} {:>10} {:>10} {:>8}", "A", "B", "outcome", "median ms", "worst ms", "× base");
    for (a, b, outcome, times) in &rows {
        if times.is_empty() {
            println!("{:<12} {:<12} {:<15}", a.name(), b.name(), outcome);
            continue;
        }
        let (med, worst) = (median(times), times[times.len() - 1]);
        println!("{:<12} {:<12} {:<15} {med:>10.1} {worst:>10.1} {:>8.2}", a.name(), b.name(), outcome, med / baseline);
    }

    let birthday_runs = env_count("FOGCONNECT_BENCH_BIRTHDAY_RUNS", 20).max(1);
    let mut probes = Vec::new();
    let mut times = Vec::new();
    let mut direct = 0;
    for _ in 0..birthday_runs {
        let run = natlab::connect_pair(NatKind::PortRestricted, NatKind::Symmetric, &[])?;
        if run.direct() {
            direct += 1;
            probes.extend(run.probes.map(f64::from));
            times.extend(run.connect_ms);
        }
    }
    probes.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    println!();
    println!("birthday probing, port-restricted (spraying) × symmetric (256 sockets), {birthday_runs} runs:");
    println!(
        "  direct {direct}/{birthday_runs}; probes median {:.0}, worst {:.0}; connect median {:.1} ms, worst {:.1} ms ({:.2} × base)",
        median(&probes),
        probes.last().copied().unwrap_or(f64::NAN),
        median(&times),
        times.last().copied().unwrap_or(f64::NAN),
        median(&times) / baseline
    );
    Ok(())
}
