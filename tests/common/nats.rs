//! A real NATS cluster for the tests: `nats-server` processes on loopback,
//! routed to each other, each with a JetStream store of its own in a
//! temporary directory; killed (and their stores removed) when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Running;
use super::turn::free_port;

/// A NATS cluster of `size` servers.
pub struct NatsCluster {
    servers: Vec<Option<Running>>,
    /// Client port of each server.
    pub ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    monitor_ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers and waits until JetStream is ready on each.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let mut cluster = Self {
            servers: (0..size).map(|_| None).collect(),
            ports: (0..size).map(|_| free_port()).collect::<anyhow::Result<_>>()?,
            cluster_ports: (0..size).map(|_| free_port()).collect::<anyhow::Result<_>>()?,
            monitor_ports: (0..size).map(|_| free_port()).collect::<anyhow::Result<_>>()?,
            dir: tempfile::tempdir()?,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.ready(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let routes: Vec<String> = self
            .cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, port)| format!("nats://127.0.0.1:{port}"))
            .collect();
        let store: PathBuf = self.dir.path().join(format!("n{i}"));
        let log = std::env::var_os("FOGCONNECT_NATS_LOG").is_some();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.ports[i].to_string()])
            .args(["-n", &format!("n{i}"), "--cluster_name", "fogtest"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", self.cluster_ports[i])])
            .args(["--routes", &routes.join(",")])
            .args(["-m", &self.monitor_ports[i].to_string()])
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .context("start nats-server (make test installs it)")?;
        self.servers[i] = Some(Running(child));
        Ok(())
    }

    /// Waits until server `i` reports itself healthy (JetStream included).
    async fn ready(&self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let monitor = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor_ports[i]));
        loop {
            if matches!(super::http_get(monitor, "/healthz"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server n{i} not healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `nats://127.0.0.1:PORT` of every server, comma-separated.
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The process ids of the running servers.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().flatten().map(|s| s.0.id()).collect()
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.servers[i] = None;
    }

    /// Starts every stopped server again (same ports and stores) and
    /// waits for all (JetStream needs a quorum to be healthy).
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<usize> = (0..self.servers.len()).filter(|i| self.servers[*i].is_none()).collect();
        for &i in &stopped {
            self.spawn(i)?;
        }
        for i in stopped {
            self.ready(i).await?;
        }
        Ok(())
    }
}
