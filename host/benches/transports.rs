//! QUIC, KCP and UDP datagrams between two nodes compared under loss, in
//! one run on one lab path: two namespaces joined through the lab's
//! impairment stage (`tests/natlab/impair.rs`), which adds 20 ms of delay
//! each way (40 ms to every round trip) and drops 0%, 5%, 10% and 20% of
//! the packets each way.
//!
//! Per loss and transport:
//! - request/response: 1 KiB requests to an echo service one at a time,
//!   the round trip's median and 99th percentile (on UDP, over the
//!   requests answered, and the share answered within 500 ms);
//! - throughput: 1 KiB messages sent as fast as the connection takes them
//!   (`send_when_ready`) for the duration, the megabits per second that
//!   arrived and the share of what was sent that arrived.
//!
//! Needs root and `ip` (`make bench-nat` installs them).
//! `cargo bench -p fogconnect --bench transports`; `cargo test --benches`
//! runs one short pass at 10% loss. `FOGCONNECT_BENCH_REQUESTS` sets the
//! requests per measurement (default 1,000), `FOGCONNECT_BENCH_SECONDS` each
//! transfer's length (default 5).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/natlab/mod.rs"]
mod natlab;

use std::time::Duration;

use anyhow::{Context, ensure};
use fogconnect::Transport;
use natlab::Lab;
use natlab::impair::{ImpairedWire, Impairment};
use natlab::inprocess::{COUNT, ECHO, LinkNodes, RoundTrips, Transfer, request_response, transfer};

/// The delay the stage adds each way.
const DELAY: Duration = Duration::from_millis(20);

/// Size of each request and each bulk message.
const MESSAGE: usize = 1024;

/// How long a UDP request waits for its answer.
const UDP_WAIT: Duration = Duration::from_millis(500);

/// One transport at one loss.
struct Row {
    loss: f64,
    transport: Transport,
    trips: RoundTrips,
    transfer: Transfer,
}

fn env_or(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value}")),
        Err(_) => Ok(default),
    }
}

/// Request/response and transfer over `transport`; also the frames
/// `stage` had no room for during the transfer.
fn measure(
    nodes: &LinkNodes,
    stage: &ImpairedWire,
    transport: Transport,
    requests: u32,
    seconds: u64,
) -> anyhow::Result<(RoundTrips, Transfer, u64)> {
    let mut echo = nodes.connect(transport, ECHO)?;
    let wait = if transport == Transport::Udp { UDP_WAIT } else { Duration::from_secs(60) };
    let trips = nodes
        .on_dev(move |_| async move { request_response(&mut echo, requests, MESSAGE, wait).await })
        .with_context(|| format!("{transport:?} requests"))?;
    let mut count = nodes.connect(transport, COUNT)?;
    let length = Duration::from_secs(seconds);
    let before = stage.counts();
    let moved = nodes
        .on_dev(move |_| async move { transfer(&mut count, MESSAGE, length).await })
        .with_context(|| format!("{transport:?} transfer"))?;
    if transport != Transport::Udp {
        ensure!(moved.arrived == moved.sent, "{transport:?}: {} of {} bytes arrived", moved.arrived, moved.sent);
    }
    // What the stage itself dropped for want of room during the transfer
    // (not the loss it was told to add), both ways.
    let after = stage.counts();
    let overflowed = (0..2).map(|way| after[way].overflowed - before[way].overflowed).sum();
    Ok((trips, moved, overflowed))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let smoke = !std::env::args().any(|a| a == "--bench");
    let requests = u32::try_from(env_or("FOGCONNECT_BENCH_REQUESTS", if smoke { 20 } else { 1_000 })?)?;
    let seconds = env_or("FOGCONNECT_BENCH_SECONDS", if smoke { 1 } else { 5 })?;
    let losses: &[f64] = if smoke { &[10.0] } else { &[0.0, 5.0, 10.0, 20.0] };
    let lab = Lab::impaired_link(Impairment { delay: DELAY, jitter: Duration::ZERO, loss_percent: 0.0 })?;
    let nodes = LinkNodes::start(&lab)?;
    let mut rows = Vec::new();
    for &loss in losses {
        lab.stage()?.set(Impairment { delay: DELAY, jitter: Duration::ZERO, loss_percent: loss });
        for transport in [Transport::Quic, Transport::Kcp, Transport::Udp] {
            let (trips, transfer, overflowed) = measure(&nodes, lab.stage()?, transport, requests, seconds)?;
            println!(
                "{loss:>3}% {transport:?}: p50 {} ms, p99 {} ms, {} of {requests} answered; {:.1} Mbit/s, {:.1}% arrived; \
                 {overflowed} frames the stage had no room for",
                ms(trips.quantile(0.5)),
                ms(trips.quantile(0.99)),
                trips.times.len(),
                transfer.mbit_per_s,
                transfer.arrived as f64 * 100.0 / transfer.sent.max(1) as f64
            );
            rows.push(Row { loss, transport, trips, transfer });
        }
    }
    nodes.shutdown();
    println!(
        "\n{} ms added each way, 1 KiB messages, {requests} requests and {seconds} s of transfer per row",
        DELAY.as_millis()
    );
    println!("| loss each way | transport | p50 ms | p99 ms | answered | Mbit/s | arrived |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        println!(
            "| {}% | {:?} | {} | {} | {:.1}% | {:.1} | {:.1}% |",
            row.loss,
            row.transport,
            ms(row.trips.quantile(0.5)),
            ms(row.trips.quantile(0.99)),
            row.trips.times.len() as f64 * 100.0 / requests.max(1) as f64,
            row.transfer.mbit_per_s,
            row.transfer.arrived as f64 * 100.0 / row.transfer.sent.max(1) as f64
        );
    }
    for &loss in losses {
        let of = |t: Transport| rows.iter().find(|r| r.loss == loss && r.transport == t);
        if let (Some(quic), Some(kcp)) = (of(Transport::Quic), of(Transport::Kcp)) {
            println!(
                "{loss}% loss: KCP / QUIC p99 {:.2}x, throughput {:.2}x",
                kcp.trips.quantile(0.99).as_secs_f64() / quic.trips.quantile(0.99).as_secs_f64(),
                kcp.transfer.mbit_per_s / quic.transfer.mbit_per_s
            );
        }
    }
    Ok(())
}
