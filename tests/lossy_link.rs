//! The lab's impairment stage (delay, jitter and loss between two
//! namespaces, the kernel here having no `netem`) and the three transports
//! between nodes over a link it impairs (needs root; CI runs as root).

mod common;
mod natlab;

use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fogconnect::Transport;
use natlab::impair::Impairment;
use natlab::inprocess::{ECHO, LinkNodes, join, quantile, request_response, thread_in};
use natlab::{LINK_APP, LINK_DEVICE, Lab};

/// Datagrams sent through the stage in the fidelity test.
const PROBES: u32 = 2_000;

/// One probe's times: sent from `dev`, arrived in `app` (echoed at once),
/// echo back in `dev`.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    sent: Option<Instant>,
    arrived: Option<Instant>,
    returned: Option<Instant>,
}

/// Sends `count` numbered datagrams from `dev` to an echo in `app`, one a
/// millisecond, numbered from `first`; returns each one's times once no
/// datagram came for 300 ms after the last was sent (more than ten times
/// the stage's delay and jitter).
fn probe(lab: &Lab, first: u32, count: u32) -> anyhow::Result<Vec<Probe>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let echo = thread_in(&lab.ns("app"), move || {
        let socket = UdpSocket::bind((LINK_APP, 9000))?;
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        let _ = ready_tx.send(());
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match socket.recv_from(&mut buf) {
                Ok((4, from)) => {
                    arrivals.push((u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]), Instant::now()));
                    socket.send_to(&buf[..4], from)?;
                }
                Ok(_) => {}
                // Quiet for 300 ms: done once the sender is.
                Err(_) if done_rx.try_recv().is_ok() => return anyhow::Ok(arrivals),
                Err(_) => {}
            }
        }
    })?;
    ready_rx.recv_timeout(Duration::from_secs(5)).context("the echo did not start")?;
    let sender = thread_in(&lab.ns("dev"), move || {
        let socket = UdpSocket::bind((LINK_DEVICE, 0))?;
        socket.connect((LINK_APP, 9000))?;
        let reader = socket.try_clone()?;
        reader.set_read_timeout(Some(Duration::from_millis(300)))?;
        let returns = std::thread::spawn(move || {
            let mut returns = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(4) = reader.recv(&mut buf) {
                returns.push((u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]), Instant::now()));
            }
            returns
        });
        let mut sent = Vec::new();
        for number in first..first + count {
            sent.push((number, Instant::now()));
            socket.send(&number.to_be_bytes())?;
            // The pace of the probes, not a wait for anything.
            std::thread::sleep(Duration::from_millis(1));
        }
        let returns = returns.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        anyhow::Ok((sent, returns))
    })?;
    let (sent, returns) = join(sender)?;
    let _ = done_tx.send(());
    let arrivals = join(echo)?;
    let mut probes = vec![Probe::default(); count as usize];
    let slot = |n: u32| n.checked_sub(first).map(|i| i as usize).filter(|i| *i < count as usize);
    for (n, at) in sent {
        probes[slot(n).context("sent number")?].sent = Some(at);
    }
    let ordered = |times: &[(u32, Instant)]| times.windows(2).all(|w| w[0].0 < w[1].0);
    ensure!(ordered(&arrivals), "datagrams arrived out of order or twice");
    ensure!(ordered(&returns), "echoes came back out of order or twice");
    for (n, at) in arrivals {
        probes[slot(n).context("arrived number")?].arrived = Some(at);
    }
    for (n, at) in returns {
        probes[slot(n).context("returned number")?].returned = Some(at);
    }
    Ok(probes)
}

/// How long each probe that arrived took from `dev` to `app`.
fn forward_times(probes: &[Probe]) -> Vec<Duration> {
    probes.iter().filter_map(|p| Some(p.arrived?.duration_since(p.sent?))).collect()
}

/// The stage delays every datagram by at least the delay each way, adds
/// up to the jitter, drops about the share it is told each way, keeps the
/// order; told to stop impairing, it passes everything at once.
#[test]
fn the_impairment_stage_delays_jitters_and_drops_each_way() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let (delay, jitter) = (Duration::from_millis(20), Duration::from_millis(5));
    let lab = Lab::impaired_link(Impairment { delay, jitter, loss_percent: 20.0 })?;
    let probes = probe(&lab, 0, PROBES)?;
    let forward = forward_times(&probes);
    let back: Vec<Duration> = probes.iter().filter_map(|p| Some(p.returned?.duration_since(p.arrived?))).collect();
    let [to_app, to_dev] = lab.stage()?.counts();
    println!(
        "forward {} of {PROBES}, back {} of {}; stage {to_app:?} {to_dev:?}",
        forward.len(),
        back.len(),
        forward.len()
    );
    // 20% of 2,000 dropped: 400 ± 18 (one standard deviation); six of
    // them either way.
    ensure!((1_493..=1_707).contains(&forward.len()), "{} of {PROBES} arrived", forward.len());
    let back_share = back.len() as f64 / forward.len() as f64;
    ensure!((0.72..=0.88).contains(&back_share), "{} of {} echoes came back", back.len(), forward.len());
    ensure!(to_app.dropped >= 293 && to_dev.dropped >= 200, "the stage's counts: {to_app:?} {to_dev:?}");
    for (way, times) in [("forward", &forward), ("back", &back)] {
        let (least, typical) = (quantile(times, 0.0), quantile(times, 0.5));
        println!("{way}: least {least:?}, median {typical:?}");
        ensure!(least >= delay, "{way}: a datagram took {least:?}, under the delay");
        ensure!(typical <= delay + jitter + Duration::from_millis(15), "{way}: median {typical:?}");
    }
    let spread = quantile(&forward, 0.9) - quantile(&forward, 0.1);
    ensure!(spread >= Duration::from_millis(1), "no jitter: the middle 80% within {spread:?}");

    lab.stage()?.set(Impairment::NONE);
    let probes = probe(&lab, PROBES, 200)?;
    let forward = forward_times(&probes);
    let back = probes.iter().filter(|p| p.returned.is_some()).count();
    ensure!(forward.len() == 200 && back == 200, "unimpaired: {} arrived, {back} came back", forward.len());
    let typical = quantile(&forward, 0.5);
    ensure!(typical < Duration::from_millis(10), "unimpaired: median {typical:?}");
    Ok(())
}

/// Over a link with 20 ms of delay and up to 5 ms of jitter each way and
/// 10% loss each way: QUIC and KCP answer every 1 KiB request, in order;
/// UDP loses some requests or answers, about as many as the stage drops,
/// and counts the answers it saw go missing.
#[test]
fn the_transports_carry_requests_over_a_lossy_delayed_link() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let impairment =
        Impairment { delay: Duration::from_millis(20), jitter: Duration::from_millis(5), loss_percent: 10.0 };
    let lab = Lab::impaired_link(impairment)?;
    let nodes = LinkNodes::start(&lab)?;
    let requests = 200;
    for transport in [Transport::Quic, Transport::Kcp, Transport::Udp] {
        let mut conn = nodes.connect(transport, ECHO)?;
        let wait = if transport == Transport::Udp { Duration::from_millis(250) } else { Duration::from_secs(20) };
        let (trips, stats) = nodes.on_dev(move |_| async move {
            let trips = request_response(&mut conn, requests, 1024, wait).await?;
            anyhow::Ok((trips, conn.stats()))
        })?;
        println!(
            "{transport:?}: {} answered, {} not; p50 {:?}, p99 {:?}; {} datagrams lost",
            trips.times.len(),
            trips.unanswered,
            trips.quantile(0.5),
            trips.quantile(0.99),
            stats.datagrams_lost
        );
        ensure!(trips.quantile(0.0) >= Duration::from_millis(40), "{transport:?}: faster than the stage's delay");
        if transport == Transport::Udp {
            // A round trip survives with 0.9 × 0.9: 38 ± 5.5 of 200 lost.
            ensure!((10..=70).contains(&trips.unanswered), "UDP: {} unanswered", trips.unanswered);
            let lost = stats.datagrams_lost;
            ensure!(lost >= 1 && lost <= trips.unanswered as u64, "UDP: {lost} counted lost");
        } else {
            ensure!(trips.times.len() == requests as usize, "{transport:?}: {} answered", trips.times.len());
        }
    }
    let [to_app, to_dev] = lab.stage()?.counts();
    ensure!(to_app.dropped > 0 && to_dev.dropped > 0, "the stage dropped nothing: {to_app:?} {to_dev:?}");
    nodes.shutdown();
    Ok(())
}
