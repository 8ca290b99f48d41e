//! `fogconnect send`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use fogconnect::{ConnectionEvent, Fingerprint, Node, Transport};

/// Arguments of `fogconnect send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Address of the node to connect to.
    #[arg(long, required_unless_present = "peer", conflicts_with = "peer")]
    addr: Option<SocketAddr>,
    /// Id of the node to connect to, through the signaling server.
    #[arg(long, requires_all = ["signal", "id", "token"])]
    peer: Option<String>,
    /// Signaling server URL, e.g. ws://host:7600/ws (with --peer).
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
    signal_ca: Option<std::path::PathBuf>,
    /// Service number (selects the plugin on the remote node).
    #[arg(long, default_value_t = 0)]
    service: u8,
    /// Send this raw convention number instead of QUIC + --service.
    #[arg(long, value_parser = parse_u32)]
    convention: Option<u32>,
    /// Pin the remote node's certificate fingerprint (hex).
    #[arg(long)]
    fingerprint: Option<String>,
    /// How long to wait for each reply, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    reply_timeout_ms: u64,
    /// Print how the connection was made (path, plan, probes, times)
    /// before the replies.
    #[arg(long)]
    info: bool,
    /// Send each message this many times, numbered ("<message> #<i>"),
    /// each after the previous reply.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: u32,
    /// Pause between sends, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    interval_ms: u64,
    #[command(flatten)]
    keep_alive: super::KeepAliveArgs,
    #[command(flatten)]
    traversal: super::TraversalArgs,
    /// The messages; each is sent and its reply printed on its own line.
    #[arg(required = true)]
    messages: Vec<String>,
}

fn parse_u32(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("not a u32: {text:?}"))
}

/// Connects, sends every message, prints every reply.
pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let expected = match &args.fingerprint {
        Some(text) => Some(Fingerprint::parse(text).ok_or_else(|| anyhow!("fingerprint must be 64 hex digits"))?),
        None => None,
    };
    // Bind the wildcard of the target's family so any route to it works.
    let local = match args.addr {
        Some(SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let mut config = fogconnect::NodeConfig { listen: local, cache_dir: None, ..Default::default() };
    args.keep_alive.apply(&mut config);
    args.traversal.apply(&mut config)?;
    let mut builder = Node::builder().config(config);
    if let (Some(url), Some(id), Some(token)) = (&args.signal, &args.id, &args.token) {
        builder = builder.node_id(id).signal(url, token);
        if let Some(ca) = &args.signal_ca {
            builder = builder.signal_ca(ca);
        }
    }
    let node = builder.start().await.context("cannot start the local node")?;
    if args.traversal.stun.is_some() && node.nat_classified(Duration::from_secs(10)).await.is_none() {
        tracing::warn!("NAT not classified; connecting without the classification");
    }
    let result = exchange(&node, &args, expected).await;
    node.shutdown().await;
    result
}

async fn exchange(node: &Node, args: &SendArgs, expected: Option<Fingerprint>) -> anyhow::Result<()> {
    let convention =
        args.convention.unwrap_or_else(|| fogconnect::Convention::new(Transport::Quic, args.service).raw());
    let started = std::time::Instant::now();
    let mut conn = match (&args.addr, &args.peer) {
        (Some(addr), _) => node
            .connect_raw(*addr, convention, expected)
            .await
            .with_context(|| format!("cannot connect to {addr} (convention {convention:#x})"))?,
        (None, Some(peer)) => {
            node.registered(Duration::from_secs(10)).await.context("cannot register with signaling")?;
            let transport = fogconnect::Convention::from_raw(convention)?.transport();
            node.connect_peer(peer, transport, ((convention >> 4) & 0xFF) as u8)
                .await
                .with_context(|| format!("cannot connect to {peer} (convention {convention:#x})"))?
        }
        (None, None) => bail!("give --addr or --peer"),
    };
    if args.info {
        let connect_ms = started.elapsed().as_secs_f64() * 1e3;
        let stats = conn.stats();
        let mut line = format!(
            "connected to {} at {}: path {}, connect {connect_ms:.1} ms, rtt {:.2} ms",
            conn.peer_id(),
            conn.remote_addr(),
            stats.path,
            stats.rtt.as_secs_f64() * 1e3
        );
        if let Some(t) = conn.traversal() {
            line.push_str(&format!(
                ", plan {}, checks {}, probes {}, checks took {:.1} ms",
                t.plan,
                t.stats.checks_sent,
                t.stats.probes_sent,
                t.elapsed.as_secs_f64() * 1e3
            ));
        }
        println!("{line}");
    }
    let timeout = Duration::from_millis(args.reply_timeout_ms);
    let numbered = args.repeat > 1;
    for message in &args.messages {
        for i in 0..args.repeat {
            if args.interval_ms > 0 && (i > 0 || numbered) {
                tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
            }
            let text = if numbered { format!("{message} #{i}") } else { message.clone() };
            conn.send(text.into_bytes()).context("send failed")?;
            match tokio::time::timeout(timeout, conn.recv()).await {
                Ok(ConnectionEvent::Message(reply)) => println!("{}", String::from_utf8_lossy(&reply)),
                Ok(ConnectionEvent::Closed(reason)) => bail!("connection closed before a reply: {reason}"),
                Err(_) => bail!("no reply within {} ms", args.reply_timeout_ms),
            }
        }
    }
    if args.info && numbered {
        let stats = conn.stats();
        println!(
            "finished: path {}, rtt {:.2} ms, {} messages sent, {} received",
            stats.path,
            stats.rtt.as_secs_f64() * 1e3,
            stats.messages_sent,
            stats.messages_received
        );
    }
    conn.close();
    Ok(())
}
