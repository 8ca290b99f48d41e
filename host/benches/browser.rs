//! Browser connections against QUIC node-to-node, measured in the same run
//! on loopback: the time from a connect call to the open connection
//! (signaling included, a new peer connection or link each time), the
//! mean round trip of a 64-byte message, and the
//! throughput device → browser and browser → device (32 MiB in 16 KiB
//! messages, flow-controlled on both ends).
//!
//! The device serves a native service that echoes, sources and sinks;
//! the browser is a real headless Chromium running the browser module,
//! the QUIC baseline a Rust node connecting by id through the same
//! signaling server. Rounds alternate between the two; the figures are
//! the medians over the rounds.
//!
//! `cargo bench -p fogconnect --bench browser` (needs Debian's chromium).

#![allow(missing_docs)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use common::browser::{Browser, Page};
use common::median;
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{Connection, ConnectionEvent, Node, Transport};

const SECRET: &[u8] = b"browser bench secret 0123456789";
/// The native bench service's number.
const SERVICE: u8 = 7;
/// The message size of the throughput runs.
const BULK_MESSAGE: usize = 16 * 1024;

/// How much a run measures.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Connects per round.
    connects: usize,
    /// Round trips per round.
    round_trips: usize,
    /// Bytes moved each way per round.
    bulk: usize,
    /// Rounds (alternating browser and QUIC).
    rounds: usize,
}

/// `cargo bench`: the figures of the README.
const FULL: Plan = Plan { connects: 10, round_trips: 500, bulk: 32 * 1024 * 1024, rounds: 3 };
/// `cargo test --benches`: one small round, to keep the bench working.
const SMOKE: Plan = Plan { connects: 2, round_trips: 20, bulk: 1024 * 1024, rounds: 1 };

fn token_for(id: &str) -> String {
    token::issue(SECRET, id, u64::MAX / 2)
}

/// The device's side of one bench connection: `e…` is echoed; `source N`
/// sends N bytes in 16 KiB messages, then `done`; `sink N` answers `sunk`
/// once N bytes of messages arrived after it.
async fn serve_bench(mut conn: Connection) {
    let mut sinking: Option<(usize, usize)> = None;
    while let ConnectionEvent::Message(data) = conn.recv().await {
        if let Some((want, got)) = sinking.as_mut() {
            *got += data.len();
            if *got >= *want {
                sinking = None;
                if conn.send(&b"sunk"[..]).is_err() {
                    return;
                }
            }
            continue;
        }
        let text = String::from_utf8_lossy(&data);
        if let Some(n) = text.strip_prefix("source ").and_then(|n| n.parse::<usize>().ok()) {
            let chunk = Bytes::from(vec![b'd'; BULK_MESSAGE]);
            for _ in 0..n.div_ceil(BULK_MESSAGE) {
                if conn.send_when_ready(chunk.clone()).await.is_err() {
                    return;
                }
            }
            if conn.send_when_ready(&b"done"[..]).await.is_err() {
                return;
            }
        } else if let Some(n) = text.strip_prefix("sink ").and_then(|n| n.parse::<usize>().ok()) {
            sinking = Some((n, 0));
        } else if conn.send(data).is_err() {
            return;
        }
    }
}

/// A row of the table: name, the figure, its unit.
type Row = (&'static str, fn(&Figures) -> f64, &'static str);

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    connect_ms: f64,
    rtt_us: f64,
    down_mbps: f64,
    up_mbps: f64,
}

async fn next_message(conn: &mut Connection) -> anyhow::Result<Bytes> {
    match tokio::time::timeout(Duration::from_secs(60), conn.recv()).await {
        Ok(ConnectionEvent::Message(data)) => Ok(data),
        Ok(ConnectionEvent::Closed(reason)) => bail!("closed: {reason}"),
        Err(_) => bail!("no message within 60 s"),
    }
}

/// A node registered at `url` as `id`.
async fn app_node(url: &str, id: &str) -> anyhow::Result<Node> {
    let node = Node::builder().config(common::config()).node_id(id).signal(url, token_for(id)).start().await?;
    node.registered(common::WAIT).await?;
    Ok(node)
}

/// The QUIC baseline: a Rust node connecting by id. Each measured connect
/// is a fresh node's first (a new link: signaling, checks, QUIC
/// handshake), as each browser connect is a new peer connection.
async fn quic_round(url: &str, plan: Plan) -> anyhow::Result<Figures> {
    let Plan { connects: connect_count, round_trips, bulk, .. } = plan;
    let mut connects = Vec::new();
    for i in 0..connect_count {
        let app = app_node(url, &format!("bench-app-{i}")).await?;
        let started = Instant::now();
        let mut conn = app.connect_peer("device", Transport::Quic, SERVICE).await?;
        connects.push(started.elapsed().as_secs_f64() * 1e3);
        conn.close();
        app.shutdown().await;
    }
    let app = app_node(url, "bench-app").await?;
    let mut conn = app.connect_peer("device", Transport::Quic, SERVICE).await?;
    let ping = Bytes::from(vec![b'e'; 64]);
    let started = Instant::now();
    for _ in 0..round_trips {
        conn.send(ping.clone())?;
        next_message(&mut conn).await?;
    }
    let rtt_us = started.elapsed().as_secs_f64() * 1e6 / round_trips as f64;
    let started = Instant::now();
    conn.send(format!("source {bulk}"))?;
    let mut received = 0;
    loop {
        let data = next_message(&mut conn).await?;
        if &data[..] == b"done" {
            break;
        }
        received += data.len();
    }
    let down = received as f64 / started.elapsed().as_secs_f64() / 1e6;
    let started = Instant::now();
    conn.send(format!("sink {bulk}"))?;
    let chunk = Bytes::from(vec![b'd'; BULK_MESSAGE]);
    for _ in 0..bulk / BULK_MESSAGE {
        conn.send_when_ready(chunk.clone()).await?;
    }
    let sunk = next_message(&mut conn).await?;
    if &sunk[..] != b"sunk" {
        bail!("expected sunk, got {sunk:?}");
    }
    let up = bulk as f64 / started.elapsed().as_secs_f64() / 1e6;
    conn.close();
    app.shutdown().await;
    Ok(Figures { connect_ms: median(connects), rtt_us, down_mbps: down, up_mbps: up })
}

/// The browser: the same in the page, with the browser module.
async fn browser_round(browser: &mut Browser, page: &Page, plan: Plan) -> anyhow::Result<Figures> {
    let Plan { connects: connect_count, round_trips, bulk, .. } = plan;
    let script = format!(
        r#"(async () => {{
            const fog = await import("/fogconnect.js");
            const session = await fog.signIn({{ id: "bench-page", token: {token} }});
            const next = (conn) => new Promise((resolve, reject) => {{
                const timer = setTimeout(() => reject(new Error("no message within 60 s")), 60000);
                conn.addEventListener("message", (e) => {{ clearTimeout(timer); resolve(e.detail.bytes); }}, {{ once: true }});
            }});
            const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
            const connects = [];
            for (let i = 0; i < {connect_count}; i++) {{
                const started = performance.now();
                const conn = await session.connect("device", {SERVICE});
                connects.push(performance.now() - started);
                conn.close();
            }}
            const conn = await session.connect("device", {SERVICE});
            const ping = new Uint8Array(64).fill(101);
            let started = performance.now();
            for (let i = 0; i < {round_trips}; i++) {{
                const reply = next(conn);
                conn.send(ping);
                await reply;
            }}
            const rtt_us = (performance.now() - started) * 1000 / {round_trips};
            started = performance.now();
            let received = 0;
            const done = new Promise((resolve) => {{
                const on = (e) => {{
                    if (e.detail.bytes.byteLength === 4 && e.detail.text() === "done") {{
                        conn.removeEventListener("message", on);
                        resolve();
                    }} else received += e.detail.bytes.byteLength;
                }};
                conn.addEventListener("message", on);
            }});
            conn.send("source {bulk}");
            await done;
            const down = received / ((performance.now() - started) / 1000) / 1e6;
            started = performance.now();
            const sunk = next(conn);
            conn.send("sink {bulk}");
            const chunk = new Uint8Array({BULK_MESSAGE}).fill(100);
            for (let i = 0; i < {bulk} / {BULK_MESSAGE}; i++) {{
                if (conn.bufferedAmount > 1024 * 1024) {{
                    await new Promise((resolve) => conn.addEventListener("bufferedamountlow", resolve, {{ once: true }}));
                }}
                conn.send(chunk);
            }}
            await sunk;
            const up = {bulk} / ((performance.now() - started) / 1000) / 1e6;
            conn.close("bench done");
            session.close();
            return {{ connect_ms: median(connects), rtt_us, down_mbps: down, up_mbps: up }};
        }})()"#,
        token = serde_json::to_string(&token_for("bench-page"))?
    );
    let value = browser.eval(page, &script).await?;
    let number = |key: &str| value[key].as_f64().with_context(|| format!("{key} missing in {value}"));
    Ok(Figures {
        connect_ms: number("connect_ms")?,
        rtt_us: number("rtt_us")?,
        down_mbps: number("down_mbps")?,
        up_mbps: number("up_mbps")?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("browser: bench");
        return Ok(());
    }
    let plan = if std::env::args().any(|a| a == "--bench") { FULL } else { SMOKE };
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let listen: SocketAddr = "0.0.0.0:0".parse()?;
    let builder = Node::builder()
        .config(common::config())
        .listen(listen)
        .node_id("device")
        .signal(server.url(), token_for("device"));
    let mut incoming = builder.incoming(SERVICE)?;
    let device = builder.start().await?;
    device.registered(common::WAIT).await?;
    tokio::spawn(async move {
        while let Some(conn) = incoming.accept().await {
            tokio::spawn(serve_bench(conn));
        }
    });
    let mut browser = Browser::launch(&[]).await?;
    let page = browser.open(&format!("http://{}/", server.local_addr())).await?;

    let (mut web, mut quic) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        let w = browser_round(&mut browser, &page, plan).await?;
        let q = quic_round(&server.url(), plan).await?;
        let counters = device.socket_counters();
        let side = counters.side.load(std::sync::atomic::Ordering::Relaxed);
        let dropped = counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "round {round}: browser {w:?}\n         QUIC    {q:?}\n         device socket: side {side} dropped {dropped}"
        );
        web.push(w);
        quic.push(q);
    }
    let pick = |all: &[Figures], f: fn(&Figures) -> f64| median(all.iter().map(f).collect());
    println!("\n| measure | browser (RTC) | node (QUIC) | browser / QUIC |");
    println!("| --- | --- | --- | --- |");
    let rows: [Row; 4] = [
        ("connect by id, call → open", |f| f.connect_ms, "ms"),
        ("round trip, 64 B (mean of sequential)", |f| f.rtt_us, "µs"),
        ("device → browser/app, 16 KiB messages", |f| f.down_mbps, "MB/s"),
        ("browser/app → device, 16 KiB messages", |f| f.up_mbps, "MB/s"),
    ];
    for (name, f, unit) in rows {
        let (w, q) = (pick(&web, f), pick(&quic, f));
        println!("| {name} | {w:.1} {unit} | {q:.1} {unit} | {:.2}× |", w / q);
    }
    device.shutdown().await;
    drop(server);
    Ok(())
}
