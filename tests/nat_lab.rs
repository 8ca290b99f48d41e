//! NAT traversal in the network-namespace NAT lab (needs root; CI runs as
//! root): classification of every NAT kind, the 36-pair matrix, and
//! birthday probing between a port-restricted cone and a symmetric NAT.

mod common;
mod natlab;

use anyhow::{Context, ensure};
use natlab::{Lab, NatKind, STUN, STUN6};

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

/// With 10% of the packets dropped at random on both routers, every pair
/// of NAT kinds a direct path exists for still connects directly within
/// the punch budget, and 1,000 numbered messages come back intact, once
/// each and in order.
#[test]
fn punchable_pairs_connect_directly_and_lose_nothing_under_10_percent_loss() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let kinds =
        [NatKind::Open, NatKind::FullCone, NatKind::AddressRestricted, NatKind::PortRestricted, NatKind::Symmetric];
    let pairs: Vec<(NatKind, NatKind)> = kinds
        .iter()
        .enumerate()
        .flat_map(|(i, &a)| kinds[i..].iter().map(move |&b| (a, b)))
        .filter(|(a, b)| a.punchable_with(*b))
        .collect();
    let count = 1000;
    let run = |a: NatKind, b: NatKind| -> anyhow::Result<String> {
        let mut lab = Lab::new(a, b)?;
        lab.drop_randomly(10)?;
        let url = lab.start_servers()?;
        lab.start_echo_node("host-b", &url, &[])?;
        let repeat = count.to_string();
        let args = lab.send_args(&url, &["--repeat", &repeat, "--reply-timeout-ms", "20000"], &["lossy"])?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab.output("host-a", &args, &[])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr).trim());
        let info = stdout.lines().next().unwrap_or_default().to_string();
        ensure!(info.contains("path direct WAN"), "not direct: {info}");
        let replies: Vec<&str> = stdout.lines().filter(|l| l.starts_with("lossy #")).collect();
        let expected: Vec<String> = (0..count).map(|i| format!("lossy #{i}")).collect();
        ensure!(
            replies.len() == count && replies.iter().zip(&expected).all(|(r, e)| r == e),
            "replies lost, repeated or out of order"
        );
        Ok(info)
    };
    let queue = std::sync::Mutex::new(pairs);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let Some((a, b)) = queue.lock().map(|mut q| q.pop()).ok().flatten() else { return };
                    match run(a, b) {
                        Ok(info) => println!("{} × {}: {info}", a.name(), b.name()),
                        Err(e) => {
                            failures.lock().map(|mut f| f.push(format!("{} × {}: {e:#}", a.name(), b.name()))).ok();
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(failures.is_empty(), "{} pair(s) failed under loss:\n{}", failures.len(), failures.join("\n"));
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

/// Sends 300 numbered messages from A to B's echo plugin over a
/// connection that starts on path `start` ("relayed", "direct WAN"), runs
/// `event` after the tenth reply, and checks every reply came back once and
/// in order on the one connection; returns the client's `finished:` line
/// (the path at the end) and its `event:` lines.
fn numbered_messages_across(
    lab: &mut Lab,
    url: &str,
    start: &str,
    options: &[&str],
    event: impl FnOnce(&mut Lab) -> anyhow::Result<()>,
) -> anyhow::Result<(String, Vec<String>)> {
    let count = 300;
    let repeat = count.to_string();
    let mut extra = vec!["--repeat", &repeat, "--interval-ms", "20"];
    extra.extend(options);
    let args = lab.send_args(url, &extra, &["numbered"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = lab.spawn("host-a", &args, &[])?;
    let connected = client.wait_line("connected to", std::time::Duration::from_secs(20))?;
    println!("{connected}");
    ensure!(connected.contains(&format!("path {start}")), "expected a start on path {start}: {connected}");
    client.wait_line("numbered #10", std::time::Duration::from_secs(10))?;
    event(lab)?;
    let lines = client.rest(std::time::Duration::from_secs(60))?;
    let status = lab.exit_status(client.pid)?;
    ensure!(status.success(), "the connection did not go on: {:?}", client.error_lines());
    let replies: Vec<&String> = lines.iter().filter(|l| l.starts_with("numbered #")).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("numbered #{i}")).collect();
    ensure!(replies.iter().copied().eq(expected.iter()), "replies lost, duplicated or out of order: {replies:?}");
    let finished = lines.iter().find(|l| l.starts_with("finished:")).cloned().unwrap_or_default();
    println!("{finished}");
    let events: Vec<String> = lines.iter().filter(|l| l.starts_with("event: ")).cloned().collect();
    println!("{events:#?}");
    Ok((finished, events))
}

/// A pair that starts relayed (a firewall on A's router drops UDP between
/// the two NATs) moves to a direct path when the rule is removed, while
/// numbered messages keep flowing on the one connection: none lost, none
/// duplicated, order kept, no close. Both ends are told once, with the new
/// path: the caller's application, and the callee's plugin (on the
/// `fogconnect:plugin@0.2.0` contract, which echoes the messages).
#[test]
fn relayed_connection_moves_to_direct_when_a_path_opens() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    lab.block_direct_path()?;
    let url = lab.start_servers()?;
    let fast = ["--punch-budget-ms", "1000", "--recheck-ms", "300"];
    let events_plugin = format!("2={}", common::plugin("test-events").display());
    lab.start_echo_node("host-b", &url, &[&fast[..], &["--plugin", &events_plugin]].concat())?;
    let client = [&fast[..], &["--service", "2"]].concat();
    let (finished, events) =
        numbered_messages_across(&mut lab, &url, "relayed", &client, |lab| lab.unblock_direct_path())?;
    ensure!(finished.contains("path direct WAN"), "the connection did not move to the direct path: {finished}");
    // The connection was told once, with the new path.
    let moves: Vec<&String> = events.iter().filter(|e| e.contains("path changed")).collect();
    ensure!(
        moves.len() == 1 && moves[0].contains("from relayed") && moves[0].contains("to direct WAN 203.0.113.22:"),
        "{events:?}"
    );
    // So was the plugin serving the other end: one path event, relayed to
    // direct, to A's public address.
    let report = lab.send_once(&url, &["--service", "2"], "report")?;
    println!("{report}");
    let plugin_moves: Vec<&str> = report.lines().filter(|l| l.starts_with("net ") && l.contains(" path ")).collect();
    ensure!(
        plugin_moves.len() == 1
            && plugin_moves[0].contains(" path relayed ")
            && plugin_moves[0].contains(" -> direct 203.0.113.21:"),
        "{report}"
    );
    Ok(())
}

/// The UDP transport across the lab, on the one link the nodes share: a
/// pair that starts relayed moves to the direct path while datagrams flow
/// (the caller is told once), and they flow there, the last hundred each
/// echoed; a few lost during the move are reported, never a hang.
#[test]
fn datagrams_move_from_relayed_to_direct_with_the_link() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    lab.block_direct_path()?;
    let url = lab.start_servers()?;
    let fast = ["--punch-budget-ms", "1000", "--recheck-ms", "300"];
    lab.start_echo_node("host-b", &url, &fast)?;
    let count = 300;
    let repeat = count.to_string();
    let extra = [&fast[..], &["--transport", "udp", "--repeat", &repeat, "--interval-ms", "20"]].concat();
    let args = lab.send_args(&url, &[&extra[..], &["--reply-timeout-ms", "1000"]].concat(), &["datagram"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = lab.spawn("host-a", &args, &[])?;
    let connected = client.wait_line("connected to", std::time::Duration::from_secs(20))?;
    println!("{connected}");
    ensure!(connected.contains("path relayed") && connected.contains("datagrams up to"), "{connected}");
    client.wait_line("datagram #10", std::time::Duration::from_secs(10))?;
    lab.unblock_direct_path()?;
    let lines = client.rest(std::time::Duration::from_secs(60))?;
    let status = lab.exit_status(client.pid)?;
    let finished = lines.iter().find(|l| l.starts_with("finished:")).cloned().unwrap_or_default();
    println!("{finished} (exit {status})");
    ensure!(finished.contains("path direct WAN"), "the connection did not move to the direct path: {finished}");
    let moves = lines.iter().filter(|l| l.starts_with("event: ") && l.contains("path changed")).count();
    ensure!(moves == 1, "{lines:?}");
    let replies: Vec<&String> = lines.iter().filter(|l| l.starts_with("datagram #")).collect();
    let tail: Vec<String> = (count - 100..count).map(|i| format!("datagram #{i}")).collect();
    ensure!(
        replies.len() >= 100 && replies[replies.len() - 100..].iter().copied().eq(tail.iter()),
        "the datagrams did not flow on the direct path: {replies:?}"
    );
    Ok(())
}

/// With 10% of the packets dropped at random on both routers, a UDP
/// connection loses datagrams and says so: the replies that did not come
/// are reported (exit status 1), and the datagrams lost are counted.
#[test]
fn datagrams_lost_on_a_lossy_path_are_reported_and_counted() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::FullCone, NatKind::FullCone)?;
    lab.drop_randomly(10)?;
    let url = lab.start_servers()?;
    lab.start_echo_node("host-b", &url, &[])?;
    let extra = ["--transport", "udp", "--repeat", "200", "--interval-ms", "5", "--reply-timeout-ms", "300"];
    let args = lab.send_args(&url, &extra, &["lossy"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.output("host-a", &args, &[])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let finished = stdout.lines().find(|l| l.starts_with("finished:")).unwrap_or_default();
    println!("{finished}");
    ensure!(!out.status.success() && stderr.contains("messages got no reply"), "{stderr}");
    let replies = stdout.lines().filter(|l| l.starts_with("lossy #")).count();
    let lost: u64 = finished
        .split(", ")
        .find_map(|part| part.strip_suffix(" datagrams lost"))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no loss count: {finished}"))?;
    // A round trip crosses both routers twice: about a third fail. The
    // echoes lost on the way back are the ones this side can count (a gap
    // before a later echo).
    ensure!((100..200).contains(&replies) && lost > 0, "{replies} replies, {lost} lost: {finished}");
    Ok(())
}

/// Sends 10,000 numbered messages over KCP from host-a to the echo node,
/// 64 in flight; checks every reply came, once, in order; returns the
/// connect line.
fn kcp_ten_thousand(lab: &mut Lab, url: &str) -> anyhow::Result<String> {
    let count = 10_000;
    let repeat = count.to_string();
    let extra = ["--transport", "kcp", "--repeat", &repeat, "--pipeline", "64", "--reply-timeout-ms", "20000"];
    let args = lab.send_args(url, &extra, &["kcp"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.output("host-a", &args, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr).trim());
    let info = stdout.lines().next().unwrap_or_default().to_string();
    ensure!(info.contains("KCP session"), "{info}");
    let replies: Vec<&str> = stdout.lines().filter(|l| l.starts_with("kcp #")).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("kcp #{i}")).collect();
    ensure!(
        replies.len() == count && replies.iter().zip(&expected).all(|(r, e)| r == e),
        "{} replies, lost, repeated or out of order",
        replies.len()
    );
    Ok(info)
}

/// KCP through the relay (a pair no direct path joins): its datagrams go
/// the link's way, 10,000 messages arrive once each, in order.
#[test]
fn kcp_carries_ten_thousand_messages_in_order_through_the_relay() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::Symmetric, NatKind::Symmetric)?;
    let url = lab.start_servers()?;
    lab.start_echo_node("host-b", &url, &[])?;
    let info = kcp_ten_thousand(&mut lab, &url)?;
    println!("{info}");
    ensure!(info.contains("path relayed"), "{info}");
    Ok(())
}

/// KCP with 10% of the packets dropped at random on both routers: 10,000
/// messages arrive once each, in order.
#[test]
fn kcp_carries_ten_thousand_messages_in_order_at_10_percent_loss() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::FullCone, NatKind::FullCone)?;
    lab.drop_randomly(10)?;
    let url = lab.start_servers()?;
    lab.start_echo_node("host-b", &url, &[])?;
    let info = kcp_ten_thousand(&mut lab, &url)?;
    println!("{info}");
    ensure!(info.contains("path direct WAN"), "{info}");
    Ok(())
}

/// The relay restarts under a relayed connection while numbered messages
/// flow: the node behind the relay allocates again, the caller notices its
/// silent link, asks for the new relayed address and moves the link there;
/// the connection goes on with none lost, none repeated, order kept.
#[test]
fn a_relayed_connection_survives_a_relay_restart() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::Symmetric, NatKind::Symmetric)?;
    let url = lab.start_servers()?;
    // Peers silent for 8 × 500 ms are gone: the move must be quicker.
    let keep_alive = ["--keep-alive-ms", "500", "--keep-alive-attempts", "8"];
    let mut node = lab.start_echo_node("host-b", &url, &keep_alive)?;
    let (finished, _) =
        numbered_messages_across(&mut lab, &url, "relayed", &keep_alive, |lab| lab.restart_relay().map(drop))?;
    ensure!(finished.contains("path relayed"), "{finished}");
    // The node behind the relay allocated again, over UDP first.
    let again = node.wait_error_line("relay allocated", 2, std::time::Duration::from_secs(10))?;
    println!("node: {again}");
    ensure!(!again.contains("transport=tcp"), "the node should allocate over UDP again first: {again}");
    Ok(())
}

/// A fleet of two relays, the farther (80 ms more round trip) handed out
/// first: the node behind the symmetric NAT allocates on the nearer; when
/// that relay dies under a relayed connection carrying numbered messages,
/// the node allocates on the other, the caller follows it, and the
/// connection goes on with none lost, none repeated, order kept.
#[test]
fn a_node_allocates_on_the_nearest_relay_and_moves_to_another_when_it_dies() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::Symmetric, NatKind::Symmetric)?;
    let url = lab.start_fleet()?;
    // A dead relay answers nothing (a restarted one refuses at once): the
    // node notices when its refresh goes unanswered, so both ends wait
    // longer for each other than across a restart.
    let keep_alive = ["--keep-alive-ms", "500", "--keep-alive-attempts", "30", "--reply-timeout-ms", "20000"];
    let mut node = lab.start_echo_node("host-b", &url, &keep_alive[..4])?;
    let first = node.wait_line("relay: allocated", std::time::Duration::from_secs(1))?;
    println!("node: {first}");
    ensure!(first.ends_with(&format!("on turn:{}", natlab::RELAY)), "the nearer relay should be chosen: {first}");
    let (finished, _) = numbered_messages_across(&mut lab, &url, "relayed", &keep_alive, |lab| lab.kill_relay())?;
    ensure!(finished.contains("path relayed"), "{finished}");
    let moved = node.wait_line("event: relay: allocated", std::time::Duration::from_secs(10))?;
    println!("node: {moved}");
    ensure!(moved.ends_with(&format!("on turn:{}", natlab::FAR_RELAY)), "{moved}");
    Ok(())
}

/// Two port-restricted NATs, a direct connection carrying numbered
/// messages every 20 ms; the NAT of `side` rebinds (its UDP mappings
/// dropped, the next packet leaves from a new public port). The connection
/// goes on with none lost, none repeated, order kept: the caller notices
/// its silent link and both sides run the checks again through signaling.
fn direct_connection_survives_rebinding(side: natlab::Side) -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    let url = lab.start_servers()?;
    lab.start_echo_node("host-b", &url, &[])?;
    let patient = ["--reply-timeout-ms", "20000"];
    let (finished, events) =
        numbered_messages_across(&mut lab, &url, "direct WAN", &patient, |lab| lab.rebind(side, 40_001))?;
    ensure!(finished.contains("path direct WAN"), "{finished}");
    // The caller's connection saw its link go silent and come back; when
    // the callee's address changed, it also saw the path move there.
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| ["link silent", "link recovered", "path changed"].into_iter().find(|k| e.contains(k)))
        .collect();
    let expected: &[&str] = match side {
        natlab::Side::A => &["link silent", "link recovered"],
        natlab::Side::B => &["link silent", "path changed", "link recovered"],
    };
    ensure!(kinds == expected, "{events:?}");
    if side == natlab::Side::B {
        ensure!(events.iter().any(|e| e.contains("to direct WAN 203.0.113.22:40001")), "{events:?}");
    }
    Ok(())
}

/// The caller's NAT rebinds under a live direct connection.
#[test]
fn a_direct_connection_survives_the_callers_nat_rebinding() -> anyhow::Result<()> {
    direct_connection_survives_rebinding(natlab::Side::A)
}

/// The callee's NAT rebinds under a live direct connection (QUIC's client
/// cannot follow a server's new address by itself).
#[test]
fn a_direct_connection_survives_the_callees_nat_rebinding() -> anyhow::Result<()> {
    direct_connection_survives_rebinding(natlab::Side::B)
}

/// The callee's host gets a new address on its LAN (the old one removed)
/// under a live direct connection: its node notices, classifies again and
/// registers again; its QUIC server, whose source address is gone, sends
/// from the new one; the caller finds the callee's new public port; the
/// connection goes on with nothing lost.
#[test]
fn a_direct_connection_survives_the_callees_new_address() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    let url = lab.start_servers()?;
    let mut node = lab.start_echo_node("host-b", &url, &[])?;
    let patient = ["--reply-timeout-ms", "20000"];
    let (finished, events) = numbered_messages_across(&mut lab, &url, "direct WAN", &patient, |lab| {
        lab.move_host(natlab::Side::B, "10.0.2.2/24", "10.0.2.7/24", "10.0.2.1")
    })?;
    ensure!(finished.contains("path direct WAN"), "{finished}");
    ensure!(events.iter().any(|e| e.contains("link recovered")), "{events:?}");
    let moved = node.wait_line("event: network: addresses changed", std::time::Duration::from_secs(10))?;
    ensure!(moved.contains("added [10.0.2.7]") && moved.contains("removed [10.0.2.2]"), "{moved}");
    node.wait_line("event: nat: port-restricted cone", std::time::Duration::from_secs(30))?;
    Ok(())
}

/// The device behind B moves under a live connection: it gets a new
/// address on its LAN (the old one removed) while its router turns from a
/// port-restricted cone into a symmetric NAT. The node notices within
/// seconds, registers and classifies again, the connection goes on with
/// nothing lost, and new connects plan for the symmetric NAT.
#[test]
fn a_node_that_moves_to_another_network_adapts() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    let url = lab.start_servers()?;
    let mut node = lab.start_echo_node("host-b", &url, &[])?;
    let before = lab.send_once(&url, &[], "before the move")?;
    ensure!(before.contains("plan simultaneous open"), "{before}");
    let patient = ["--reply-timeout-ms", "20000"];
    let (finished, events) = numbered_messages_across(&mut lab, &url, "direct WAN", &patient, |lab| {
        lab.set_nat(natlab::Side::B, NatKind::Symmetric)?;
        lab.move_host(natlab::Side::B, "10.0.2.2/24", "10.0.2.7/24", "10.0.2.1")
    })?;
    println!("{finished}");
    ensure!(events.iter().any(|e| e.contains("link silent")), "{events:?}");
    let moved = node.wait_line("event: network: addresses changed", std::time::Duration::from_secs(10))?;
    ensure!(moved.contains("10.0.2.7") && moved.contains("10.0.2.2"), "{moved}");
    let nat = node.wait_line("event: nat: symmetric", std::time::Duration::from_secs(30))?;
    println!("node: {moved}\nnode: {nat}");
    node.wait_line("event: signaling: registered", std::time::Duration::from_secs(10))?;
    let after = lab.send_once(&url, &[], "after the move")?;
    println!("{after}");
    ensure!(after.contains("plan birthday probing"), "new connects should plan for the symmetric NAT: {after}");
    Ok(())
}

/// Nodes can be given any TURN server instead of the ones signaling hands
/// out: symmetric × symmetric through coturn (long-term credentials), and
/// UDP blocked on both sides over TLS (`turns:`) to `fogconnect relay`
/// with a certificate the nodes trust through `--relay-ca`.
#[test]
fn nodes_relay_through_coturn_and_over_tls() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let wait = std::time::Duration::from_secs(20);

    let mut lab = Lab::new(NatKind::Symmetric, NatKind::Symmetric)?;
    let url = lab.start_servers()?;
    let coturn = [
        "-n",
        "--listening-ip",
        "203.0.113.10",
        "--relay-ip",
        "203.0.113.10",
        "--listening-port",
        "3481",
        "--lt-cred-mech",
        "--user",
        "dev:secret",
        "--realm",
        "fog.test",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file",
        "stdout",
        "--simple-log",
    ];
    let mut server = lab.spawn_program("srv", "turnserver", &coturn, &[])?;
    server.wait_line("", std::time::Duration::from_secs(5))?;
    let flags = ["--relay", "turn:203.0.113.10:3481", "--relay-user", "dev", "--relay-password", "secret"];
    // coturn may still have been starting: the node retries until it has
    // its allocation.
    connect_through(&mut lab, &url, &flags, "turn:203.0.113.10:3481", "through coturn")?;
    drop(lab);

    let mut lab = Lab::new(NatKind::UdpBlocked, NatKind::UdpBlocked)?;
    let url = lab.start_servers()?;
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["203.0.113.10".to_string()])?;
    let (cert, key) = (dir.path().join("relay.pem"), dir.path().join("relay.key"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let relay = ["relay", "--listen", "203.0.113.10:3482", "--user", "dev:secret", "--tls-listen", "203.0.113.10:5349"];
    let mut relay: Vec<&str> = relay.to_vec();
    relay.extend(["--cert", &cert, "--key", &key]);
    let mut tls_relay = lab.spawn("srv", &relay, &[])?;
    let ready = tls_relay.wait_line("relay listening", wait)?;
    ensure!(ready.contains("TLS on 203.0.113.10:5349"), "{ready}");
    let flags = ["--relay", "turns:203.0.113.10", "--relay-user", "dev", "--relay-password", "secret"];
    let mut flags = flags.to_vec();
    flags.extend(["--relay-ca", &cert]);
    connect_through(&mut lab, &url, &flags, "turns:203.0.113.10:5349", "over TLS")
}

/// Starts the echo node behind B with `flags`, waits for its allocation on
/// `relay`, and connects from A with the same flags: the reply must come
/// through the relay.
fn connect_through(lab: &mut Lab, url: &str, flags: &[&str], relay: &str, message: &str) -> anyhow::Result<()> {
    let mut node = lab.start_echo_node("host-b", url, flags)?;
    let allocated = node.wait_error_line("relay allocated", 1, std::time::Duration::from_secs(20))?;
    ensure!(allocated.contains(relay), "{allocated}");
    let stdout = lab.send_once(url, flags, message)?;
    println!("{relay}: {stdout}");
    ensure!(stdout.contains("path relayed") && stdout.contains(&format!("\n{message}")), "{stdout}");
    Ok(())
}

/// The C examples behind the lab's NATs (port-restricted on both sides):
/// the C app connects by id to a Rust node serving plugins, and a Rust
/// node connects by id to the C device, directly, as Rust nodes do.
#[test]
fn c_programs_connect_by_id_through_the_lab_nats() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let examples = std::env::var_os("FOGCONNECT_C_EXAMPLES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/c-examples"));
    let (app, device) = (examples.join("app"), examples.join("device"));
    ensure!(app.exists() && device.exists(), "no C examples in {}: run `make c-examples`", examples.display());
    let (app, device) = (app.display().to_string(), device.display().to_string());
    let wait = std::time::Duration::from_secs(20);

    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    let url = lab.start_servers()?;
    let token = lab.token("dev-b")?;
    let echo = format!("0={}", common::plugin("echo").display());
    let demo = format!("1={}", common::plugin("demo").display());
    let node = ["node", "--listen", "0.0.0.0:7700", "--no-cache", "--id", "dev-b", "--signal", &url, "--token"];
    let mut node: Vec<&str> = node.to_vec();
    node.extend([token.as_str(), "--stun", STUN, "--plugin", &echo, "--plugin", &demo]);
    let mut node = lab.spawn("host-b", &node, &[])?;
    node.wait_line("registered with", wait)?;
    node.wait_line("nat:", wait)?;

    // C app -> Rust node serving plugins.
    let token = lab.token("c-app")?;
    let env = [("FOGCONNECT_TOKEN", token.as_str()), ("FOGCONNECT_STUN", STUN), ("FOGCONNECT_LISTEN", "0.0.0.0:0")];
    let out = lab.output_program("host-a", &app, &["c-app", "dev-b", "203.0.113.10", "7600"], &env)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    ensure!(out.status.success(), "C app: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    ensure!(stdout.contains("service 1 answered (7 bytes): I know!"), "{stdout}");
    ensure!(stdout.contains("path direct WAN") && stdout.contains("app: done"), "{stdout}");

    // Rust node -> C device.
    let token = lab.token("c-device")?;
    let env = [("FOGCONNECT_TOKEN", token.as_str()), ("FOGCONNECT_STUN", STUN), ("FOGCONNECT_LISTEN", "0.0.0.0:0")];
    let mut c_device = lab.spawn_program("host-b", &device, &["c-device", "203.0.113.10", "7600"], &env)?;
    c_device.wait_line("device: registered", wait)?;
    let token = lab.token("dev-a")?;
    let send = ["send", "--peer", "c-device", "--signal", &url, "--id", "dev-a", "--token", &token, "--stun", STUN];
    let mut send: Vec<&str> = send.to_vec();
    send.extend(["--info", "--reply-timeout-ms", "5000", "--service", "1", "I am fog data!"]);
    let out = lab.output("host-a", &send, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    ensure!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(stdout.contains("path direct WAN") && stdout.contains("\nI know!"), "{stdout}");
    c_device.wait_line("device: connection closed: eof", wait)?;
    Ok(())
}

/// IPv6 beside IPv4: the routers forward IPv6 without NAT behind a stateful
/// firewall, the hosts are dual stack. Behind symmetric IPv4 NATs (which
/// need the relay) the pair connects directly over IPv6, found by STUN
/// over IPv6 and checks through both firewalls.
#[test]
fn dual_stack_hosts_connect_directly_over_ipv6_where_ipv4_needs_the_relay() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::Symmetric, NatKind::Symmetric)?;
    lab.add_ipv6(&[natlab::Side::A, natlab::Side::B])?;
    let (url, _) = lab.start_servers_dual()?;
    let stun = format!("{STUN},{STUN6}");
    lab.start_echo_node_on("host-b", "[::]:7700", &stun, &url, &[])?;
    let args = lab.send_args_with(&stun, &url, &["--listen", "[::]:0"], &["hello over IPv6"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.output("host-a", &args, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        stdout.contains(&format!("connected to dev-b at [{}]:7700: path direct WAN", natlab::Side::B.host_ip6())),
        "{stdout}"
    );
    ensure!(stdout.lines().any(|l| l == "hello over IPv6"), "{stdout}");
    // STUN over IPv6: behind the firewall the public address is the
    // host's own, and the filtering is the firewall's.
    let nat = lab.output("host-a", &["nat", "--stun", STUN6], &[])?;
    let report = String::from_utf8_lossy(&nat.stdout).into_owned();
    println!("{report}");
    ensure!(report.contains(&format!("[{}]:", natlab::Side::A.host_ip6())), "{report}");
    ensure!(report.contains("firewall, no NAT"), "{report}");
    Ok(())
}

/// An IPv6-only host (no IPv4 at all) reaches an IPv4-only host through
/// the dual-stack relay: its allocation, made over IPv6, has an IPv4
/// relayed address (RFC 6156), through which it reaches the peer's.
#[test]
fn an_ipv6_only_host_reaches_an_ipv4_only_host_through_a_dual_stack_relay() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    lab.add_ipv6(&[natlab::Side::A])?;
    lab.remove_ipv4(natlab::Side::A)?;
    let (url4, url6) = lab.start_servers_dual()?;
    lab.start_echo_node("host-b", &url4, &[])?;
    let args = lab.send_args_with(STUN6, &url6, &[], &["from IPv6 to IPv4"])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.output("host-a", &args, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ensure!(stdout.contains("connected to dev-b at 203.0.113.10:") && stdout.contains("path relayed"), "{stdout}");
    ensure!(stdout.lines().any(|l| l == "from IPv6 to IPv4"), "{stdout}");
    Ok(())
}

/// The default route moves to another gateway, then the ISP gives the
/// router a new public address, both behind unchanged local addresses: the
/// node notices each within seconds (the route from the kernel's table,
/// the address from its STUN server, asked every second here) and
/// classifies its NAT again, the second time with the new public address.
#[test]
fn a_node_notices_a_new_default_route_and_a_new_public_address() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    let url = lab.start_servers()?;
    let mut node = lab.start_echo_node("host-b", &url, &["--public-check-ms", "1000"])?;
    // Lines printed from now on only (the start printed a classification
    // already).
    let mut next = |prefix: &str| -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match node.next_line(left) {
                Some(line) if line.starts_with(prefix) => return Ok(line),
                Some(_) => {}
                None => anyhow::bail!("no new line starting with {prefix:?}"),
            }
        }
    };
    lab.change_gateway(natlab::Side::B, "10.0.2.254/24")?;
    println!("{}", next("event: network: changed (default route or public address)")?);
    println!("{}", next("event: nat: port-restricted cone, public address 203.0.113.22:")?);
    lab.renumber_wan(natlab::Side::B, "203.0.113.32")?;
    println!("{}", next("event: network: changed (default route or public address)")?);
    println!("{}", next("event: nat: port-restricted cone, public address 203.0.113.32:")?);
    Ok(())
}

/// The C camera (`iv_av_p2p.h`) behind a port-restricted NAT, its viewer
/// behind another, the direct path blocked: the stream starts relayed,
/// and when the path opens the camera hears PEER_ADDR_CHANGED while the
/// stream goes on.
#[test]
fn the_c_camera_hears_its_viewer_move_from_relayed_to_direct() -> anyhow::Result<()> {
    use std::time::Duration;
    natlab::lab_available()?;
    let dir = tempfile::tempdir()?;
    let camera = common::c::compile(&common::c::repo().join("capi/examples/c/camera.c"), dir.path(), "camera", &[])?;
    let mut lab = Lab::new(NatKind::PortRestricted, NatKind::PortRestricted)?;
    lab.block_direct_path()?;
    let url = lab.start_servers()?;
    let (host, port) = natlab::SIGNAL.split_once(':').ok_or_else(|| anyhow::anyhow!("signal address"))?;
    let token = lab.token("dev-b")?;
    let env = [
        ("FOGCONNECT_TOKEN", token.as_str()),
        ("FOGCONNECT_STUN", STUN),
        ("FOGCONNECT_LISTEN", "0.0.0.0:7700"),
        ("FOGCONNECT_LOG", "info"),
    ];
    let camera = camera.to_string_lossy().into_owned();
    let mut device = lab.spawn_program("host-b", &camera, &["dev-b", host, port, "2"], &env)?;
    device.wait_line("camera: registered", Duration::from_secs(20))?;
    device.wait_error_line("relay allocated", 1, Duration::from_secs(20))?;
    let token = lab.token("dev-a")?;
    let args = [
        "stream",
        "--peer",
        "dev-b",
        "--signal",
        &url,
        "--id",
        "dev-a",
        "--token",
        &token,
        "--stun",
        STUN,
        "--service",
        "2",
        "--params",
        "action=live&bitrate=400000",
        "--seconds",
        "12",
        "--punch-budget-ms",
        "1000",
        "--recheck-ms",
        "300",
    ];
    let mut app = lab.spawn("host-a", &args, &[])?;
    let first = app.wait_line("stream 1 from dev-b", Duration::from_secs(20))?;
    ensure!(first.contains("path relayed"), "the stream should start relayed: {first}");
    app.wait_line("   1.0 s", Duration::from_secs(10))?;
    lab.unblock_direct_path()?;
    device.wait_line("camera: event PEER_ADDR_CHANGED", Duration::from_secs(15))?;
    let lines = app.rest(Duration::from_secs(30))?;
    let summary = lines.iter().find(|l| l.starts_with("ended:")).cloned().unwrap_or_default();
    ensure!(summary.starts_with("ended: stopped by the application"), "{lines:#?}");
    Ok(())
}
