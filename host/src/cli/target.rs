//! The remote node a one-shot command connects to (`send`, `stream`): by
//! address, or by id through a signaling server, from a node of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use fogconnect::{Connection, Convention, Fingerprint, Node};

/// Where to connect, and how this command's own node runs.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Address of the node to connect to.
    #[arg(long, required_unless_present = "peer", conflicts_with = "peer")]
    addr: Option<SocketAddr>,
    /// Id of the node to connect to, through the signaling server.
    #[arg(long, requires_all = ["signal", "id", "token"])]
    peer: Option<String>,
    /// Signaling server URL, e.g. ws://host:7600/ws (with --peer); servers
    /// of a cluster separated by commas.
    #[arg(long, value_name = "URL")]
    signal: Option<String>,
    /// This command's node id at the signaling server (with --peer).
    #[arg(long)]
    id: Option<String>,
    /// The token for --id (with --peer).
    #[arg(long, env = "FOGCONNECT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of a CA (or self-signed certificate) to trust for wss://.
    #[arg(long, value_name = "FILE")]
    signal_ca: Option<PathBuf>,
    /// Pin the remote node's certificate fingerprint (hex; with --addr).
    #[arg(long)]
    fingerprint: Option<String>,
    /// Address this command's node binds, e.g. `[::]:0` for both families
    /// (dual stack: IPv6 pairs are then preferred).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// File keeping this command's node identity (see `fogconnect node
    /// --identity`), for peers that pin it.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    #[command(flatten)]
    keep_alive: super::KeepAliveArgs,
    #[command(flatten)]
    pub(crate) traversal: super::TraversalArgs,
}

impl TargetArgs {
    /// Starts this command's node: on `--listen`, else on the wildcard
    /// address of the target's family (IPv4 for a peer by id, unless the
    /// host has no IPv4 address: then `[::]`), joined to the signaling
    /// server when given, with its NAT classified first when a STUN server
    /// is given.
    pub async fn start_node(&self) -> anyhow::Result<Node> {
        let any_v4 = SocketAddr::from(([0, 0, 0, 0], 0));
        let any_v6 = SocketAddr::from(([0u16; 8], 0));
        let ipv4_host = fogconnect::transport::socket::host_has_family_of(std::net::IpAddr::from([192, 0, 2, 1]));
        let local = match (self.listen, self.addr) {
            (Some(listen), _) => listen,
            (None, Some(SocketAddr::V6(_))) => any_v6,
            (None, Some(SocketAddr::V4(_))) => any_v4,
            (None, None) if ipv4_host => any_v4,
            (None, None) => any_v6,
        };
        let mut config = fogconnect::NodeConfig {
            listen: local,
            cache_dir: None,
            identity_file: self.identity.clone(),
            ..Default::default()
        };
        self.keep_alive.apply(&mut config);
        self.traversal.apply(&mut config)?;
        let mut builder = Node::builder().config(config);
        if let (Some(url), Some(id), Some(token)) = (&self.signal, &self.id, &self.token) {
            builder = builder.node_id(id).signal(url, token);
            if let Some(ca) = &self.signal_ca {
                builder = builder.signal_ca(ca);
            }
        }
        let node = builder.start().await.context("cannot start the local node")?;
        if self.traversal.stun.is_some() && node.nat_classified(Duration::from_secs(10)).await.is_none() {
            tracing::warn!("NAT not classified; connecting without the classification");
        }
        Ok(node)
    }

    /// Connects `node` to the target with `convention`.
    pub async fn connect(&self, node: &Node, convention: u32) -> anyhow::Result<Connection> {
        let expected = match &self.fingerprint {
            Some(text) => Some(Fingerprint::parse(text).ok_or_else(|| anyhow!("fingerprint must be 64 hex digits"))?),
            None => None,
        };
        match (&self.addr, &self.peer) {
            (Some(addr), _) => node
                .connect_raw(*addr, convention, expected)
                .await
                .with_context(|| format!("cannot connect to {addr} (convention {convention:#x})")),
            (None, Some(peer)) => {
                node.registered(Duration::from_secs(10)).await.context("cannot register with signaling")?;
                let convention_parsed = Convention::from_raw(convention)?;
                node.connect_peer(peer, convention_parsed.transport(), convention_parsed.service())
                    .await
                    .with_context(|| format!("cannot connect to {peer} (convention {convention:#x})"))
            }
            (None, None) => bail!("give --addr or --peer"),
        }
    }
}
