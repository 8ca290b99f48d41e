//! `fogconnect send`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fogconnect::{ConnectionActivity, Node, Transport};

/// Arguments of `fogconnect send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    target: super::target::TargetArgs,
    /// Service number (selects the plugin on the remote node).
    #[arg(long, default_value_t = 0)]
    service: u8,
    /// Transport: QUIC (5: reliable, ordered), KCP (3: reliable, ordered,
    /// quicker to resend on lossy links), UDP (1: datagrams, which may be
    /// lost; a reply that does not come is reported and the next message
    /// sent), or RTC 0, UTP 2, SCTP 4 (refused with "unsupported
    /// transport" until offered).
    #[arg(long, default_value = "QUIC")]
    transport: Transport,
    /// Send this raw convention number instead of --transport + --service.
    #[arg(long, value_parser = parse_u32)]
    convention: Option<u32>,
    /// How long to wait for each reply, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    reply_timeout_ms: u64,
    /// Print how the connection was made (path, plan, probes, times)
    /// before the replies, and what happens to its path among them
    /// ("event: ..." lines).
    #[arg(long)]
    info: bool,
    /// Send each message this many times, numbered ("<message> #<i>"),
    /// each after the previous reply.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: u32,
    /// Pause between sends, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    interval_ms: u64,
    /// Keep up to this many messages sent and not yet answered (1: each
    /// waits for the previous reply); replies are printed as they come.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pipeline: u32,
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
    let node = args.target.start_node().await?;
    let result = exchange(&node, &args).await;
    node.shutdown().await;
    result
}

async fn exchange(node: &Node, args: &SendArgs) -> anyhow::Result<()> {
    let convention = args.convention.unwrap_or_else(|| fogconnect::Convention::new(args.transport, args.service).raw());
    let started = std::time::Instant::now();
    let mut conn = args.target.connect(node, convention).await?;
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
        if let Some(max) = stats.max_datagram {
            line.push_str(&format!(", datagrams up to {max} bytes"));
        }
        if let Some(kcp) = stats.kcp {
            line.push_str(&format!(", KCP session {:#010x}", kcp.conversation));
        }
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
    let datagrams = fogconnect::Convention::from_raw(convention).is_ok_and(|c| c.transport() == Transport::Udp);
    let mut unanswered = 0u64;
    let mut texts = args.messages.iter().flat_map(|message| {
        (0..args.repeat).map(move |i| if numbered { format!("{message} #{i}") } else { message.clone() })
    });
    // Sent and not answered yet, oldest first.
    let mut waiting: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut sent = 0u64;
    loop {
        while waiting.len() < args.pipeline as usize {
            let Some(text) = texts.next() else { break };
            if args.interval_ms > 0 && (sent > 0 || numbered) {
                tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
            }
            conn.send_when_ready(text.clone().into_bytes()).await.context("send failed")?;
            sent += 1;
            waiting.push_back(text);
        }
        let Some(oldest) = waiting.front().cloned() else { break };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, conn.next_activity()).await {
                Ok(ConnectionActivity::Message(reply)) => {
                    println!("{}", super::terminal_safe(&String::from_utf8_lossy(&reply)));
                    waiting.pop_front();
                    break;
                }
                Ok(ConnectionActivity::Network(event)) if args.info => println!("event: {event}"),
                Ok(ConnectionActivity::Network(_)) => {}
                Ok(ConnectionActivity::Closed(reason)) => bail!("connection closed before a reply: {reason}"),
                Err(_) if datagrams => {
                    eprintln!("no reply to {oldest:?} within {} ms", args.reply_timeout_ms);
                    unanswered += 1;
                    waiting.pop_front();
                    break;
                }
                Err(_) => bail!("no reply within {} ms", args.reply_timeout_ms),
            }
        }
    }
    if args.info && numbered {
        let stats = conn.stats();
        let lost = if datagrams { format!(", {} datagrams lost", stats.datagrams_lost) } else { String::new() };
        println!(
            "finished: path {}, rtt {:.2} ms, {} messages sent, {} received{lost}",
            stats.path,
            stats.rtt.as_secs_f64() * 1e3,
            stats.messages_sent,
            stats.messages_received
        );
    }
    conn.close();
    if unanswered > 0 {
        bail!("{unanswered} of {sent} messages got no reply (UDP datagrams may be lost)");
    }
    Ok(())
}
