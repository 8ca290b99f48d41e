//! Native C streams against a Wasm stream plugin, in the same kind of
//! process: `capi/benches/stream_device.c` serves service 5 either through
//! `iv_avt_p2p_*` (the device's own callbacks) or from the
//! `adaptive-source` plugin loaded into the same C program. An app node
//! on loopback opens 1, 100 and 1,000 streams of one 160-byte frame per
//! 10 ms pull (100 streams per connection) and reads them; the device's
//! CPU time (every thread, from `/proc`) over a window is divided into
//! 10 ms ticks. The two devices take turns, round by round; the ratio is
//! C over Wasm. This is the whole device at work: the pull tick and
//! sending its frames over QUIC.
//!
//! Then the resident memory each device gains per connected app with one
//! live stream at 800 kbit/s (loopback carries far more), each app a node
//! of its own, against the original SDK's figure of at most 150 KB per
//! connected app.
//!
//! `cargo bench -p fogconnect --bench c_streams` after `make c-stage` and
//! `make plugins`; `cargo test --benches` runs a short smoke pass.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::c::{Running, compile, repo};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{MediaEvent, Node, StreamSession, Transport};

const SECRET: &[u8] = b"C streams bench secret, loopback only";
const SERVICE: u8 = 5;
/// Streams per app connection.
const PER_CONNECTION: usize = 100;

/// A device process and its id.
struct Device {
    name: &'static str,
    id: &'static str,
    process: Running,
}

impl Device {
    async fn start(
        name: &'static str,
        id: &'static str,
        binary: &Path,
        port: u16,
        mode: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .args([id, &port.to_string()])
            .args(mode)
            .env("FOGCONNECT_TOKEN", token::issue(SECRET, id, u64::MAX / 2))
            .env("FOGCONNECT_LISTEN", "127.0.0.1:0")
            .env("XDG_CACHE_HOME", binary.with_extension("cache"));
        let mut process = Running::start(command)?;
        let ready = process.next_line().await?;
        if ready != "ready" {
            bail!("{name}: {ready:?}");
        }
        Ok(Self { name, id, process })
    }

    fn pid(&self) -> u32 {
        self.process.child.0.id()
    }

    /// CPU time of every thread so far (the first field of each thread's
    /// `schedstat`, in nanoseconds).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else { continue };
            total += text.split_whitespace().next().context("schedstat")?.parse::<u64>()?;
        }
        Ok(Duration::from_nanos(total))
    }

    fn resident_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }
}

/// An app node registered with the bench's signaling server.
async fn app_node(url: &str, id: &str) -> anyhow::Result<Node> {
    let node = Node::builder()
        .config(common::config())
        .node_id(id)
        .signal(url, token::issue(SECRET, id, u64::MAX / 2))
        .start()
        .await?;
    node.registered(common::WAIT).await?;
    Ok(node)
}

/// Opens `streams` streams of `params` on `device` from `app` and reads
/// them on tasks of their own; dropping the result ends them.
async fn open_streams(
    app: &Node,
    device: &Device,
    streams: usize,
    params: &str,
) -> anyhow::Result<(Vec<StreamSession>, Vec<tokio::task::JoinHandle<()>>)> {
    let mut sessions = Vec::new();
    let mut readers = Vec::new();
    for i in 0..streams {
        if i % PER_CONNECTION == 0 {
            sessions.push(StreamSession::new(app.connect_peer(device.id, Transport::Quic, SERVICE).await?));
        }
        let session = sessions.last().context("a session")?;
        let mut stream = session.open(params).await?;
        readers.push(tokio::spawn(async move { while let MediaEvent::Data(_) = stream.recv().await {} }));
    }
    Ok((sessions, readers))
}

/// Device CPU per 10 ms tick with `streams` streams, over `window`.
async fn cpu_per_tick(app: &Node, device: &Device, streams: usize, window: Duration) -> anyhow::Result<Duration> {
    let (sessions, readers) = open_streams(app, device, streams, "action=live&frame=160").await?;
    tokio::time::sleep(window / 2).await;
    let (cpu0, t0) = (device.cpu()?, Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, t1) = (device.cpu()?, Instant::now());
    drop(sessions);
    for reader in readers {
        reader.abort();
    }
    let ticks = (t1 - t0).as_secs_f64() * 100.0;
    Ok((cpu1 - cpu0).div_f64(ticks))
}

/// Resident memory `device` gains per connected app, `apps` app nodes each
/// with one live stream; returns the idle figure and the gain per app.
async fn memory_per_app(device: &Device, url: &str, apps: usize) -> anyhow::Result<(u64, f64)> {
    let before = device.resident_kib()?;
    let mut held = Vec::new();
    for i in 0..apps {
        let node = app_node(url, &format!("{}-app-{i}", device.id)).await?;
        let (sessions, readers) = open_streams(&node, device, 1, "action=live&frame=1000").await?;
        held.push((node, sessions, readers));
    }
    // Let the device settle with every stream flowing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = device.resident_kib()?;
    for (node, sessions, readers) in held {
        drop(sessions);
        for reader in readers {
            reader.abort();
        }
        node.shutdown().await;
    }
    Ok((before, after.saturating_sub(before) as f64 / apps as f64))
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (sizes, rounds, window, apps): (&[usize], usize, Duration, usize) = if smoke {
        (&[1, 10], 1, Duration::from_millis(300), 2)
    } else {
        (&[1, 100, 1000], 3, Duration::from_secs(3), 50)
    };
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let url = server.url();
    let port = server.local_addr().port();
    let dir = tempfile::tempdir()?;
    let binary = compile(&repo().join("capi/benches/stream_device.c"), dir.path(), "stream_device", &["-O2"])?;
    let plugin = common::plugin("adaptive-source").to_string_lossy().into_owned();
    let devices = [
        Device::start("C streams (iv_avt_p2p)", "c-streams", &binary, port, &["iv"]).await?,
        Device::start("Wasm stream plugin", "wasm-streams", &binary, port, &["plugin", &plugin]).await?,
    ];
    let app = app_node(&url, "bench-app").await?;

    println!("device CPU per 10 ms tick, 160-byte frames, {rounds} rounds (medians); the ratio is C over Wasm");
    println!("{:>8} {:>16} {:>16} {:>8} {:>14}", "streams", "C µs/tick", "Wasm µs/tick", "C/Wasm", "C ns/stream");
    for &streams in sizes {
        let mut figures = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, device) in devices.iter().enumerate() {
                let cpu = cpu_per_tick(&app, device, streams, window).await?;
                figures[i].push(cpu.as_secs_f64() * 1e6);
            }
        }
        let [c, wasm] = figures.map(common::median);
        println!("{streams:>8} {c:>16.1} {wasm:>16.1} {:>8.2} {:>14.0}", c / wasm, c * 1e3 / streams as f64);
    }
    app.shutdown().await;

    println!(
        "\nresident memory per connected app with one live stream at 800 kbit/s ({apps} app nodes); the original: at most 150 KB"
    );
    for device in &devices {
        let (idle, per_app) = memory_per_app(device, &url, apps).await?;
        println!("{:<26} idle {:>7} KiB   per connected app {:>7.1} KiB", device.name, idle, per_app);
    }
    server.shutdown();
    Ok(())
}
