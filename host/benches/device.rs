//! The device build against the full build: the C library's size and the
//! resident memory of an idle device, in one run.
//!
//! - Library: `libfogconnect.so` as `make c-stage` (full build) and `make
//!   device-stage` (device build: no WebAssembly runtime, no browsers,
//!   size-optimised) install it, with its size once stripped of symbols.
//! - Idle device: the same C echo device (`capi/benches/echo_device.c`)
//!   linked against each library, registered with a signaling server on
//!   loopback and idle; its resident memory (VmRSS) after it settles.
//! - Idle full node: `fogconnect node` with the echo plugin loaded,
//!   registered and idle.
//!
//! `make bench` (needs `make c-stage device-stage` and the release
//! binary); `cargo test --benches` runs a short smoke pass.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::c::{Running, compile_against, device_stage, repo, stage};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;

const SECRET: &[u8] = b"device bench secret, loopback only";

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Size of `library` and of its copy `stripped` without symbols, in KiB.
fn library_kib(library: &Path, stripped: &Path) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("strip").arg("-o").arg(stripped).arg(library).output().context("strip (binutils)")?;
    ensure!(out.status.success(), "strip: {}", String::from_utf8_lossy(&out.stderr));
    Ok((std::fs::metadata(library)?.len() / 1024, std::fs::metadata(stripped)?.len() / 1024))
}

/// Starts `command` as `id`, waits until it says it is ready, lets it
/// settle, and returns its resident memory in KiB (the process ends when
/// this returns).
async fn idle_kib(id: &str, mut command: Command) -> anyhow::Result<u64> {
    command
        .env("FOGCONNECT_TOKEN", token::issue(SECRET, id, u64::MAX / 2))
        .env("FOGCONNECT_LISTEN", "127.0.0.1:0")
        .env("FOGCONNECT_LOG", "warn")
        .env("RUST_LOG", "warn");
    let mut process = Running::start(command)?;
    loop {
        let line = process.next_line().await.with_context(|| format!("{id} did not get ready"))?;
        if line.contains("ready") || line.contains("registered with") {
            break;
        }
    }
    // Idle: no traffic but the keep-alives; what it holds after start-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::server::resident_kib(process.child.0.id())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rounds = if smoke { 1 } else { 5 };
    let (full, device) = (stage()?, device_stage()?);
    let dir = tempfile::tempdir()?;
    let source = repo().join("capi/benches/echo_device.c");
    let full_device = compile_against(&full, &source, dir.path(), "echo-full", &["-O2"])?;
    let small_device = compile_against(&device, &source, dir.path(), "echo-device", &["-O2"])?;
    let fogconnect = common::target_dir().join("release/fogconnect");
    ensure!(fogconnect.exists(), "{} missing: cargo build --release", fogconnect.display());

    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let (url, port) = (server.url(), server.local_addr().port().to_string());
    let (mut full_kib, mut device_kib, mut node_kib) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Taking turns, so drift on this shared machine hits all alike.
        let id = format!("full-{round}");
        let mut c = Command::new(&full_device);
        c.args([id.as_str(), &port]);
        full_kib.push(idle_kib(&id, c).await?);
        let id = format!("device-{round}");
        let mut c = Command::new(&small_device);
        c.args([id.as_str(), &port]);
        device_kib.push(idle_kib(&id, c).await?);
        let id = format!("node-{round}");
        let token = token::issue(SECRET, &id, u64::MAX / 2);
        let echo = format!("0={}", common::plugin("echo").display());
        let mut node = Command::new(&fogconnect);
        node.args(["node", "--listen", "127.0.0.1:0", "--id", &id, "--signal", &url, "--token", &token]);
        node.args(["--plugin", &echo]).env("XDG_CACHE_HOME", dir.path().join("cache"));
        node_kib.push(idle_kib(&id, node).await?);
    }
    server.shutdown();

    let (full_lib, full_stripped) = library_kib(&full.join("lib/libfogconnect.so"), &dir.path().join("full.so"))?;
    let (device_lib, device_stripped) =
        library_kib(&device.join("lib/libfogconnect.so"), &dir.path().join("device.so"))?;
    println!("libfogconnect.so (KiB)        installed   stripped");
    println!("full build                    {full_lib:>9} {full_stripped:>10}");
    println!(
        "device build                  {device_lib:>9} {device_stripped:>10}   {:.2}x the full build, stripped",
        device_stripped as f64 / full_stripped as f64
    );
    let (full, device, node) = (median(&mut full_kib), median(&mut device_kib), median(&mut node_kib));
    if full == 0 || node == 0 {
        bail!("no resident memory measured");
    }
    println!("\nidle resident memory, registered, median of {rounds} (KiB)");
    println!("C device, full build          {full:>9}");
    println!("C device, device build        {device:>9}   {:.2}x the full build", device as f64 / full as f64);
    println!("full node, echo plugin loaded {node:>9}");
    Ok(())
}
