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
    #[arg(long)]
    addr: SocketAddr,
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
    let node =
        Node::builder().configure(|c| c.cache_dir = None).start().await.context("cannot start the local node")?;
    let result = exchange(&node, &args, expected).await;
    node.shutdown().await;
    result
}

async fn exchange(node: &Node, args: &SendArgs, expected: Option<Fingerprint>) -> anyhow::Result<()> {
    let convention =
        args.convention.unwrap_or_else(|| fogconnect::Convention::new(Transport::Quic, args.service).raw());
    let mut conn = node
        .connect_raw(args.addr, convention, expected)
        .await
        .with_context(|| format!("cannot connect to {} (convention {convention:#x})", args.addr))?;
    let timeout = Duration::from_millis(args.reply_timeout_ms);
    for message in &args.messages {
        conn.send(message.clone().into_bytes()).context("send failed")?;
        match tokio::time::timeout(timeout, conn.recv()).await {
            Ok(ConnectionEvent::Message(reply)) => println!("{}", String::from_utf8_lossy(&reply)),
            Ok(ConnectionEvent::Closed(reason)) => bail!("connection closed before a reply: {reason}"),
            Err(_) => bail!("no reply within {} ms", args.reply_timeout_ms),
        }
    }
    conn.close();
    Ok(())
}
