//! Throughput near the wire: bulk messages between two nodes over a plain
//! veth link between two network namespaces (MTU 1500, no rate limit),
//! against iperf3 on the same link in the same run: TCP (the goal is at
//! least 0.6x its rate) and 1,200-byte UDP datagrams, which carry no
//! encryption (the goal is at least 1.0x). Each with the CPU it costs per
//! gigabit (both ends: iperf3's own account of its two processes; for the
//! nodes, this process's CPU time, where both run).
//!
//! The nodes: one in each namespace (each a tokio runtime whose threads
//! live there), the device side sending 16 KiB messages as fast as the
//! connection takes them (`send_when_ready`) for the duration, the
//! application side's native service counting them; once with the sockets
//! batching datagrams (GSO, GRO: the default) and once without.
//!
//! Needs root, `ip` and `iperf3` (`make bench-nat` installs them).
//! `cargo bench -p fogconnect --bench throughput`; `cargo test --benches`
//! runs a short smoke pass. `FOGCONNECT_BENCH_SECONDS` sets each
//! transfer's length (default 5).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/natlab/mod.rs"]
mod natlab;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fogconnect::{ConnectionEvent, Node, Transport};
use natlab::inprocess::runtime_in;
use natlab::{LINK_APP, Lab};

/// Size of each bulk message.
const MESSAGE: usize = 16 * 1024;

/// This process's CPU time (user and system), in seconds.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th of those (14th and 15th overall).
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// A transfer's rate and the CPU it cost.
#[derive(Debug, Clone, Copy)]
struct Rate {
    gbit_per_s: f64,
    cpu_s_per_gbit: f64,
}

/// iperf3 from `dev` to `app` for `seconds`, with `extra` client flags.
fn iperf3(lab: &mut Lab, seconds: u64, extra: &[&str]) -> anyhow::Result<Rate> {
    let mut server = lab.spawn_program("app", "iperf3", &["-s", "-1", "-B", LINK_APP, "--forceflush"], &[])?;
    server.wait_line("Server listening", Duration::from_secs(10)).context("iperf3 -s (apt-get install iperf3)")?;
    let time = seconds.to_string();
    let mut args = vec!["-c", LINK_APP, "-t", &time, "-J"];
    args.extend_from_slice(extra);
    let out = lab.output_program("dev", "iperf3", &args, &[])?;
    ensure!(out.status.success(), "iperf3 {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let end = &report["end"];
    let (bits, seconds) = if extra.contains(&"-u") {
        // UDP: what arrived is what was sent less what the server lost.
        let sum = &end["sum"];
        let lost = sum["lost_percent"].as_f64().unwrap_or(0.0);
        (sum["bits_per_second"].as_f64().context("bits_per_second")? * (1.0 - lost / 100.0), sum["seconds"].as_f64())
    } else {
        let sum = &end["sum_received"];
        (sum["bits_per_second"].as_f64().context("bits_per_second")?, sum["seconds"].as_f64())
    };
    let seconds = seconds.context("seconds")?;
    let cpu = &end["cpu_utilization_percent"];
    let cpu_percent = cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
    let gbit = bits * seconds / 1e9;
    Ok(Rate { gbit_per_s: bits / 1e9, cpu_s_per_gbit: cpu_percent / 100.0 * seconds / gbit })
}

/// Bulk messages from a node in `dev` to a native service of a node in
/// `app`, for `seconds`; `offload`: the nodes' sockets batch datagrams
/// (GSO, GRO).
fn nodes(lab: &Lab, seconds: u64, offload: bool) -> anyhow::Result<Rate> {
    let config = move || fogconnect::NodeConfig { segmentation_offload: offload, ..common::config() };
    let (app_rt, dev_rt) = (runtime_in(&lab.ns("app"))?, runtime_in(&lab.ns("dev"))?);
    let listen: SocketAddr = format!("{LINK_APP}:7700").parse()?;
    // Spawned, not run by `block_on`: the runtime's own threads are in the
    // namespace, the calling thread is not.
    let (app, counted) = app_rt.block_on(app_rt.spawn(async move {
        let builder = Node::builder().config(config()).node_id("app").listen(listen);
        let mut incoming = builder.incoming(1)?;
        let app = builder.start().await?;
        // Counts the bytes of one connection, from its first message to
        // the last before the empty one that ends the transfer.
        let counted = tokio::spawn(async move {
            let mut conn = incoming.accept().await.context("no connection")?;
            let (mut bytes, mut first, mut last) = (0u64, None, Instant::now());
            loop {
                match conn.recv().await {
                    ConnectionEvent::Message(data) if data.is_empty() => break,
                    ConnectionEvent::Message(data) => {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                        bytes += data.len() as u64;
                    }
                    ConnectionEvent::Closed(reason) => bail!("closed during the transfer: {reason}"),
                }
            }
            conn.send(bytes.to_be_bytes().to_vec())?;
            let first = first.context("nothing arrived")?;
            anyhow::Ok((bytes, last.duration_since(first)))
        });
        anyhow::Ok((app, counted))
    }))??;
    let (sent, cpu) = dev_rt.block_on(dev_rt.spawn(async move {
        let dev = Node::builder().config(config()).node_id("dev").listen("198.51.100.1:0".parse()?).start().await?;
        let mut conn = dev.connect(listen, Transport::Quic, 1).await?;
        let payload = bytes::Bytes::from(vec![0x5A; MESSAGE]);
        let cpu_before = cpu_seconds()?;
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut sent = 0u64;
        while Instant::now() < until {
            conn.send_when_ready(payload.clone()).await?;
            sent += MESSAGE as u64;
        }
        conn.send_when_ready(bytes::Bytes::new()).await?;
        let echoed = match tokio::time::timeout(Duration::from_secs(30), conn.recv()).await {
            Ok(ConnectionEvent::Message(count)) => u64::from_be_bytes(count[..].try_into()?),
            other => bail!("no count from the application side: {other:?}"),
        };
        let cpu = cpu_seconds()? - cpu_before;
        ensure!(echoed == sent, "sent {sent} bytes, {echoed} arrived");
        dev.shutdown().await;
        anyhow::Ok((sent, cpu))
    }))??;
    let (bytes, took) = app_rt.block_on(counted)??;
    app_rt.block_on(app.shutdown());
    ensure!(bytes == sent, "{bytes} of {sent} bytes counted");
    let gbit = bytes as f64 * 8.0 / 1e9;
    Ok(Rate { gbit_per_s: gbit / took.as_secs_f64(), cpu_s_per_gbit: cpu / gbit })
}

fn main() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let smoke = !std::env::args().any(|a| a == "--bench");
    let seconds = match std::env::var("FOGCONNECT_BENCH_SECONDS") {
        Ok(s) => s.parse().context("FOGCONNECT_BENCH_SECONDS")?,
        Err(_) if smoke => 1,
        Err(_) => 5,
    };
    let rounds = if smoke { 1 } else { 3 };
    let mut lab = Lab::plain_link()?;
    let (mut tcp, mut udp, mut ours, mut unbatched) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Taking turns, so drift on this shared machine hits all alike.
        tcp.push(iperf3(&mut lab, seconds, &[])?);
        udp.push(iperf3(&mut lab, seconds, &["-u", "-b", "0", "-l", "1200"])?);
        ours.push(nodes(&lab, seconds, true)?);
        unbatched.push(nodes(&lab, seconds, false)?);
    }
    let median = |rates: &mut Vec<Rate>| {
        rates.sort_by(|a, b| a.gbit_per_s.total_cmp(&b.gbit_per_s));
        rates[rates.len() / 2]
    };
    let (tcp, udp, ours, unbatched) = (median(&mut tcp), median(&mut udp), median(&mut ours), median(&mut unbatched));
    println!("veth between two namespaces, MTU 1500, {seconds} s per transfer, median of {rounds}");
    println!("{:<44} {:>8} {:>14}", "", "Gbit/s", "CPU s per Gbit");
    for (name, rate) in [
        ("iperf3 TCP", tcp),
        ("iperf3 UDP, 1,200-byte datagrams", udp),
        ("nodes, 16 KiB messages (QUIC)", ours),
        ("nodes, without segmentation offload", unbatched),
    ] {
        println!("{name:<44} {:>8.2} {:>14.3}", rate.gbit_per_s, rate.cpu_s_per_gbit);
    }
    println!(
        "nodes / iperf3 TCP: {:.2}x (goal 0.6x); nodes / iperf3 UDP: {:.2}x (goal 1.0x)",
        ours.gbit_per_s / tcp.gbit_per_s,
        ours.gbit_per_s / udp.gbit_per_s
    );
    println!("nodes with / without segmentation offload: {:.2}x", ours.gbit_per_s / unbatched.gbit_per_s);
    Ok(())
}
