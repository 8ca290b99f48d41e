//! The C API against the Rust API and a plugin: the same echo served three
//! ways, each a device process of its own registered with one signaling
//! server on loopback, measured in one run from the same app node:
//!
//! - Rust native service (`examples/native_echo.rs`, [`fogconnect::Node::incoming`]): the baseline;
//! - C service (`capi/benches/echo_device.c`, callbacks through `libfogconnect.so`);
//! - Wasm plugin (`fogconnect node --plugin 0=echo.wasm`).
//!
//! Figures: round trip of a 64-byte message (median, p99, sequential) and
//! echoed messages per second (1 KiB messages, 256 in flight), the devices
//! taking turns round by round; then the resident memory a C device and
//! the Rust device gain per connected app (each app a node of its own, so
//! each brings its own QUIC link), against the original's figure of at most
//! 150 KB per connected app.
//!
//! `make bench` (needs `make c-examples` and the release examples);
//! `cargo test --benches` runs a short smoke pass.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{Connection, ConnectionEvent, Node, Transport};

const SECRET: &[u8] = b"C API bench secret, loopback only";

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Compiles the C echo device against the staged install.
fn c_echo_device(dir: &Path) -> anyhow::Result<PathBuf> {
    let stage =
        std::env::var_os("FOGCONNECT_C_STAGE").map(PathBuf::from).unwrap_or(common::target_dir().join("c-install"));
    ensure!(
        stage.join("lib/libfogconnect.so").exists(),
        "no staged C install in {}: run make c-stage",
        stage.display()
    );
    let binary = dir.join("echo_device");
    let out = Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-O2", "-o"])
        .arg(&binary)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../capi/benches/echo_device.c"))
        .arg(format!("-I{}", stage.join("include").display()))
        .arg(format!("-L{}", stage.join("lib").display()))
        .args(["-lfogconnect", "-lpthread"])
        .arg(format!("-Wl,-rpath,{}", stage.join("lib").display()))
        .output()?;
    ensure!(out.status.success(), "echo_device.c: {}", String::from_utf8_lossy(&out.stderr));
    Ok(binary)
}

/// A device process, stopped when dropped.
struct Device {
    name: &'static str,
    id: String,
    process: common::Running,
}

impl Device {
    /// Starts `command` (which registers as `id`) and waits for "ready".
    fn start(name: &'static str, id: &str, mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .env("FOGCONNECT_TOKEN", token::issue(SECRET, id, u64::MAX / 2))
            .env("FOGCONNECT_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let process = common::Running(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("ready") || line.contains("registered with") => break,
                Ok(_) => continue,
                Err(_) => bail!("{name} did not get ready"),
            }
        }
        Ok(Self { name, id: id.to_string(), process })
    }

    fn resident_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }
}

async fn echoed(conn: &mut Connection) -> anyhow::Result<usize> {
    match tokio::time::timeout(common::WAIT, conn.recv()).await {
        Ok(ConnectionEvent::Message(data)) => Ok(data.len()),
        other => bail!("no echo: {other:?}"),
    }
}

/// Sequential round trips of 64 bytes.
async fn round_trips(conn: &mut Connection, count: usize) -> anyhow::Result<Vec<Duration>> {
    let payload = vec![7u8; 64];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        conn.send(payload.clone())?;
        echoed(conn).await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

/// Echoed 1 KiB messages per second with `window` in flight.
async fn throughput(conn: &mut Connection, count: usize, window: usize) -> anyhow::Result<f64> {
    let payload = bytes::Bytes::from(vec![3u8; 1024]);
    let started = Instant::now();
    let (mut sent, mut received) = (0, 0);
    while received < count {
        while sent < count && sent - received < window {
            conn.send(payload.clone())?;
            sent += 1;
        }
        received += usize::from(echoed(conn).await? == 1024);
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Resident memory `device` gains per connected app: `apps` app nodes each
/// connect once by id and exchange a message, connections held open.
async fn memory_per_app(device: &Device, url: &str, apps: usize) -> anyhow::Result<(u64, f64)> {
    let before = device.resident_kib()?;
    let mut nodes = Vec::with_capacity(apps);
    let mut conns = Vec::with_capacity(apps);
    for i in 0..apps {
        let id = format!("{}-app-{i}", device.id);
        let node = Node::builder()
            .config(common::config())
            .node_id(&id)
            .signal(url, token::issue(SECRET, &id, u64::MAX / 2))
            .start()
            .await?;
        node.registered(common::WAIT).await?;
        let mut conn = node.connect_peer(&device.id, Transport::Quic, 0).await?;
        conn.send(&b"hello"[..])?;
        echoed(&mut conn).await?;
        conns.push(conn);
        nodes.push(node);
    }
    // Let the device settle (allocations after the last message).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = device.resident_kib()?;
    drop(conns);
    for node in nodes {
        node.shutdown().await;
    }
    Ok((before, after.saturating_sub(before) as f64 / apps as f64))
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rounds, trips, messages, apps) = if smoke { (1, 50, 500, 3) } else { (5, 2_000, 20_000, 100) };
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let url = server.url();
    let port = server.local_addr().port().to_string();
    let dir = tempfile::tempdir()?;
    let release = common::target_dir().join("release");

    let mut native = Command::new(release.join("examples/native_echo"));
    native.args([url.as_str(), "rust-echo"]);
    let mut c = Command::new(c_echo_device(dir.path())?);
    c.args(["c-echo", &port]);
    let mut wasm = Command::new(release.join("fogconnect"));
    let echo = format!("0={}", common::plugin("echo").display());
    let wasm_token = token::issue(SECRET, "wasm-echo", u64::MAX / 2);
    wasm.args(["node", "--listen", "127.0.0.1:0", "--id", "wasm-echo", "--signal", &url, "--token", &wasm_token]);
    wasm.args(["--plugin", &echo]);
    let devices = [
        Device::start("Rust native service", "rust-echo", native)?,
        Device::start("C service (libfogconnect)", "c-echo", c)?,
        Device::start("Wasm plugin", "wasm-echo", wasm)?,
    ];

    let app = Node::builder()
        .config(common::config())
        .node_id("bench-app")
        .signal(&url, token::issue(SECRET, "bench-app", u64::MAX / 2))
        .start()
        .await?;
    app.registered(common::WAIT).await?;
    let mut conns = Vec::new();
    for device in &devices {
        let mut conn = app.connect_peer(&device.id, Transport::Quic, 0).await?;
        round_trips(&mut conn, 100).await?; // warm-up
        conns.push(conn);
    }
    let mut medians = vec![Vec::new(); devices.len()];
    let mut tails = vec![Vec::new(); devices.len()];
    let mut rates = vec![Vec::new(); devices.len()];
    for _ in 0..rounds {
        for (i, conn) in conns.iter_mut().enumerate() {
            let times = round_trips(conn, trips).await?;
            medians[i].push(common::percentile(&times, 0.5).as_secs_f64() * 1e6);
            tails[i].push(common::percentile(&times, 0.99).as_secs_f64() * 1e6);
            rates[i].push(throughput(conn, messages, 256).await?);
        }
    }
    let base_rtt = median(&mut medians[0].clone());
    let base_rate = median(&mut rates[0].clone());
    println!("echo by id on loopback, {rounds} rounds (medians of the rounds); baseline: the Rust native service");
    println!("{:<28} {:>10} {:>10} {:>8} {:>12} {:>8}", "service", "rtt µs", "p99 µs", "× rtt", "msgs/s", "× rate");
    for (i, device) in devices.iter().enumerate() {
        let rtt = median(&mut medians[i]);
        let p99 = median(&mut tails[i]);
        let rate = median(&mut rates[i]);
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>8.2} {:>12.0} {:>8.2}",
            device.name,
            rtt,
            p99,
            rtt / base_rtt,
            rate,
            rate / base_rate
        );
    }
    drop(conns);
    app.shutdown().await;

    println!(
        "\nresident memory per connected app ({apps} app nodes, one connection each); the original: at most 150 KB"
    );
    for device in devices.iter().take(2) {
        let (before, per_app) = memory_per_app(device, &url, apps).await?;
        println!("{:<28} idle {:>7} KiB   per connected app {:>7.1} KiB", device.name, before, per_app);
    }
    server.shutdown();
    Ok(())
}
