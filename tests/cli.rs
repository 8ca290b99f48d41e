//! The `fogconnect` binary: a node and a sender as two processes.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail, ensure};

const BIN: &str = env!("CARGO_BIN_EXE_fogconnect");

/// A node process, killed when dropped (also when the test fails).
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(plugins: &[(u8, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--id", "cli-node"]);
        for (service, name) in plugins {
            cmd.arg("--plugin").arg(format!("{service}={}", common::plugin(name).display()));
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("spawn node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut process = NodeProcess { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)) };
        // The first line says where it listens; a node that fails exits and
        // closes stdout, which ends this loop.
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("node printed nothing")??;
        let addr = first.strip_prefix("listening on ").with_context(|| format!("unexpected first line {first:?}"))?;
        process.addr = addr.parse()?;
        std::thread::spawn(move || for _ in lines {});
        Ok(process)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(addr: SocketAddr, service: &str, messages: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = Command::new(BIN)
        .args(["send", "--addr", &addr.to_string(), "--service", service])
        .args(messages)
        .output()
        .context("run send")?;
    Ok(output)
}

#[test]
fn send_through_the_cli_gets_the_demo_reply() -> anyhow::Result<()> {
    let node = NodeProcess::start(&[(0, "echo"), (1, "demo")])?;
    let output = send(node.addr, "1", &["I am fog data!"])?;
    ensure!(output.status.success(), "send failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "I know!\n");
    let output = send(node.addr, "0", &["one", "two"])?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "one\ntwo\n");
    Ok(())
}

#[test]
fn refusals_and_bad_input_exit_non_zero_with_one_line() -> anyhow::Result<()> {
    let node = NodeProcess::start(&[(1, "demo")])?;
    let output = send(node.addr, "9", &["hello"])?;
    ensure!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.lines().count() == 1 && stderr.contains("no such service: 9"), "{stderr}");

    let output = send(node.addr, "300", &["hello"])?;
    ensure!(!output.status.success());
    ensure!(String::from_utf8_lossy(&output.stderr).contains("300"));

    let missing =
        Command::new(BIN).args(["node", "--listen", "127.0.0.1:0", "--plugin", "1=/nonexistent.wasm"]).output()?;
    ensure!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    ensure!(last.starts_with("fogconnect: ") && last.contains("/nonexistent.wasm"), "{stderr}");

    let not_wasm = std::env::temp_dir().join(format!("fogconnect-not-wasm-{}.wasm", std::process::id()));
    std::fs::write(&not_wasm, b"definitely not wasm")?;
    let bad = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--plugin"])
        .arg(format!("0={}", not_wasm.display()))
        .output()?;
    std::fs::remove_file(&not_wasm)?;
    ensure!(!bad.status.success());
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("does not compile"));
    Ok(())
}

#[test]
fn help_is_available_everywhere() -> anyhow::Result<()> {
    for args in [&["--help"][..], &["node", "--help"], &["send", "--help"], &["demo", "--help"]] {
        let output = Command::new(BIN).args(args).output()?;
        if !output.status.success() || output.stdout.is_empty() {
            bail!("{args:?} --help failed");
        }
    }
    Ok(())
}
