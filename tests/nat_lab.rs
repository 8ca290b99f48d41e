//! NAT traversal in the network-namespace NAT lab (needs root; CI runs as
//! root): classification of every NAT kind, the 36-pair matrix, and
//! birthday probing between a port-restricted cone and a symmetric NAT.

mod common;
mod natlab;

use anyhow::ensure;
use natlab::{Lab, NatKind, STUN};

/// `fogconnect nat` from behind each kind of router reports that kind.
#[test]
fn nat_command_classifies_every_lab_nat_kind() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let expected = [
        (NatKind::Open, "open internet", "endpoint-independent", "endpoint-independent"),
        (NatKind::FullCone, "full cone", "endpoint-independent", "endpoint-independent"),
        (NatKind::AddressRestricted, "address-restricted cone", "endpoint-independent", "address-dependent"),
        (NatKind::PortRestricted, "port-restricted cone", "endpoint-independent", "address-and-port-dependent"),
        (NatKind::Symmetric, "symmetric", "address-and-port-dependent", "address-and-port-dependent"),
        (NatKind::UdpBlocked, "UDP blocked", "unknown", "unknown"),
    ];
    for (kind, name, mapping, filtering) in expected {
        let mut lab = Lab::new(kind, NatKind::Open)?;
        lab.start_stun()?;
        let out = lab.output("host-a", &["nat", "--stun", STUN], &[])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{}: {}", kind.name(), String::from_utf8_lossy(&out.stderr));
        println!("--- {}\n{stdout}", kind.name());
        ensure!(stdout.contains(&format!("nat type:        {name}\n")), "{}: {stdout}", kind.name());
        ensure!(stdout.contains(&format!("mapping:         {mapping}\n")), "{}: {stdout}", kind.name());
        ensure!(stdout.contains(&format!("filtering:       {filtering}\n")), "{}: {stdout}", kind.name());
        if kind == NatKind::Symmetric {
            ensure!(stdout.contains("port allocation: random"), "{stdout}");
        }
        if kind != NatKind::UdpBlocked {
            let public = if kind == NatKind::Open { "198.51.100.2:" } else { "203.0.113.21:" };
            ensure!(stdout.contains(&format!("public address:  {public}")), "{stdout}");
        }
    }
    Ok(())
}

/// Every ordered pair of lab NAT kinds connects: direct wherever the pair
/// can be punched, through the lab's TURN relay otherwise (symmetric ×
/// symmetric, UDP blocked on either side: over TCP to the relay). Prints
/// the table.
#[test]
fn matrix_of_36_nat_pairs() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let pairs: Vec<(NatKind, NatKind)> =
        NatKind::ALL.iter().flat_map(|&a| NatKind::ALL.iter().map(move |&b| (a, b))).collect();
    // Labs are independent namespaces: run a few at once.
    let queue = std::sync::Mutex::new(pairs.clone());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let Some((a, b)) = queue.lock().map(|mut q| q.pop()).ok().flatten() else { return };
                    let run = natlab::connect_pair(a, b, &[]);
                    results.lock().map(|mut r| r.push(((a, b), run))).ok();
                }
            });
        }
    });
    let mut results = results.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    results.sort_by_key(|((a, b), _)| {
        (NatKind::ALL.iter().position(|k| k == a), NatKind::ALL.iter().position(|k| k == b))
    });
    println!("{:<12} {:<12} {:<16} {:>10}  detail", "A", "B", "outcome", "connect ms");
    let mut failures = Vec::new();
    for ((a, b), run) in &results {
        let run = run.as_ref().map_err(|e| anyhow::anyhow!("{} × {}: {e:#}", a.name(), b.name()))?;
        let outcome = if run.direct() {
            "direct"
        } else if run.relayed() {
            "relayed"
        } else {
            "FAILED"
        };
        let detail = run.info.clone().or(run.error.clone()).unwrap_or_default();
        let ms = run.connect_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.0}"));
        println!("{:<12} {:<12} {:<16} {:>10}  {detail}", a.name(), b.name(), outcome, ms);
        let expected = if a.punchable_with(*b) { "direct" } else { "relayed" };
        if outcome != expected {
            failures.push(format!("{} × {}: expected {expected}, got {outcome}: {detail}", a.name(), b.name()));
        }
        if outcome != "FAILED" {
            ensure!(
                run.reply.as_deref() == Some("hello through the NATs"),
                "{} × {}: reply {:?}",
                a.name(),
                b.name(),
                run.reply
            );
        }
    }
    ensure!(failures.is_empty(), "{} pair(s) wrong:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// Runs `count` connects of `a` × `b` (alternating which side connects),
/// `parallel` labs at a time.
fn runs(a: NatKind, b: NatKind, count: usize, parallel: usize) -> Vec<anyhow::Result<natlab::PairRun>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let (x, y) = if i.is_multiple_of(2) { (a, b) } else { (b, a) };
                    let run = natlab::connect_pair(x, y, &[]);
                    results.lock().map(|mut r| r.push(run)).ok();
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// Port-restricted cone × symmetric needs birthday probing: 256 sockets on
/// the symmetric side, random probes from the other; direct in at least 19
/// of 20 runs, with either side connecting.
#[test]
fn birthday_probing_connects_port_restricted_and_symmetric() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let results = runs(NatKind::PortRestricted, NatKind::Symmetric, 20, 4);
    let mut direct = 0;
    let mut probes = Vec::new();
    for run in &results {
        let run = run.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        if run.direct() {
            direct += 1;
        } else {
            println!("{} × {} not direct: {:?}", run.a.name(), run.b.name(), run.error);
        }
        probes.extend(run.probes.filter(|&p| p > 0));
    }
    probes.sort_unstable();
    println!("direct {direct}/20; probes of the spraying side (when it connected): {probes:?}");
    ensure!(results.len() == 20, "{} runs", results.len());
    ensure!(direct >= 19, "only {direct} of 20 runs direct");
    Ok(())
}

/// Interoperability with coturn, a standard RFC 5780 implementation:
/// `fogconnect nat` classifies against coturn's server, and coturn's
/// `turnutils_natdiscovery` client classifies against `fogconnect stun`.
#[test]
fn rfc_5780_interoperates_with_coturn_both_ways() -> anyhow::Result<()> {
    natlab::lab_available()?;
    for (kind, mapping, filtering) in [
        (NatKind::PortRestricted, "endpoint-independent", "address-and-port-dependent"),
        (NatKind::Symmetric, "address-and-port-dependent", "address-and-port-dependent"),
        (NatKind::AddressRestricted, "endpoint-independent", "address-dependent"),
    ] {
        // Our client against coturn.
        let mut lab = Lab::new(kind, NatKind::Open)?;
        let coturn = [
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip",
            "203.0.113.10",
            "--listening-ip",
            "203.0.113.11",
            "--listening-port",
            "3478",
            "--alt-listening-port",
            "3479",
            "--log-file",
            "stdout",
            "--simple-log",
        ];
        let mut server = lab.spawn_program("srv", "turnserver", &coturn, &[])?;
        server.wait_line("", std::time::Duration::from_secs(5))?;
        let report = eventually_output(&lab, &["nat", "--stun", STUN])?;
        println!("--- fogconnect nat against coturn, {}\n{report}", kind.name());
        ensure!(report.contains(&format!("mapping:         {mapping}\n")), "{}: {report}", kind.name());
        ensure!(report.contains(&format!("filtering:       {filtering}\n")), "{}: {report}", kind.name());
        drop(lab);

        // coturn's client against our server.
        let mut lab = Lab::new(kind, NatKind::Open)?;
        lab.start_stun()?;
        let out = lab.output_program("host-a", "turnutils_natdiscovery", &["-m", "-f", "203.0.113.10"], &[])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        println!("--- turnutils_natdiscovery against fogconnect stun, {}\n{text}", kind.name());
        let (want_mapping, want_filtering) = match kind {
            NatKind::PortRestricted => ("Endpoint Independent Mapping", "Address and Port Dependent Filtering"),
            NatKind::Symmetric => ("Address and Port Dependent Mapping", "Address and Port Dependent Filtering"),
            _ => ("Endpoint Independent Mapping", "Address Dependent Filtering"),
        };
        ensure!(text.contains(want_mapping), "{}: expected {want_mapping}: {text}", kind.name());
        ensure!(text.contains(want_filtering), "{}: expected {want_filtering}: {text}", kind.name());
    }
    Ok(())
}

/// Runs `fogconnect nat` until the server answers (it may still be
/// starting), at most five times.
fn eventually_output(lab: &Lab, args: &[&str]) -> anyhow::Result<String> {
    let mut last = String::new();
    for _ in 0..5 {
        let out = lab.output("host-a", args, &[])?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !last.contains("UDP blocked") {
            return Ok(last);
        }
    }
    anyhow::bail!("no answer from the server: {last}")
}

/// Two devices behind the same symmetric NAT: no WAN path exists between
/// them (symmetric × symmetric), but the LAN one does and is chosen.
#[test]
fn devices_behind_one_nat_connect_over_the_lan() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::Symmetric, NatKind::Symmetric)?;
    lab.join_lan(natlab::Side::A, "host-a2", "10.0.1.3/24", "10.0.1.1")?;
    let run = lab.connect("host-a", "host-a2", &[])?;
    let info = run.info.clone().unwrap_or_default();
    println!("{info}");
    ensure!(run.reply.as_deref() == Some("hello through the NATs"), "{run:?}");
    ensure!(info.contains("at 10.0.1.3:7700: path LAN"), "{info}");
    Ok(())
}
