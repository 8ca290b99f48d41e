//! Server processes for tests and benchmarks: `fogconnect` subcommands run
//! as their own processes (killed when dropped), their address read from
//! their output, their memory read from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use anyhow::Context;

use super::Running;

/// A server process (killed when dropped) and the address its output
/// names.
pub struct ServerProcess {
    _child: Running,
    /// Its process id.
    pub pid: u32,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// `fogconnect ARGS` with `env`, and with the descriptor limit `nofile`
    /// (soft and hard, so the server cannot raise it); the first stdout
    /// line that contains `marker` gives the address after it (up to the
    /// next `/` or space).
    pub fn start(args: &[&str], nofile: Option<u64>, marker: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = env!("CARGO_BIN_EXE_fogconnect");
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the server")?;
        let pid = child.id();
        let stdout = child.stdout.take().context("stdout")?;
        let running = Running(child);
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().context("the server exited before saying where it listens")??;
            if let Some(rest) = line.split(marker).nth(1) {
                let addr = rest.split(['/', ' ']).next().unwrap_or_default();
                break addr.parse().with_context(|| format!("address in {line:?}"))?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { _child: running, pid, addr })
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(self) {
        drop(self._child);
    }

    /// `ws://ADDR/ws`, for a signaling server.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        resident_kib(self.pid)
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// `fogconnect ARGS` (a node) with `env`, once it has printed a line that
/// starts with `prefix`: the process (killed when dropped), the address of
/// its first line (`listening on ADDR`) and the rest of that line.
pub fn node_until(args: &[&str], env: &[(&str, &str)], prefix: &str) -> anyhow::Result<(Running, SocketAddr, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fogconnect"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn the node")?;
    let stdout = child.stdout.take().context("stdout")?;
    let node = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().context("the node printed nothing")??;
    let addr = first.strip_prefix("listening on ").with_context(|| format!("first line {first:?}"))?.parse()?;
    let rest = loop {
        let line = lines.next().with_context(|| format!("the node ended before printing {prefix:?}"))??;
        if let Some(rest) = line.strip_prefix(prefix) {
            break rest.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((node, addr, rest))
}
