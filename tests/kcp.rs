//! The KCP transport between two nodes on loopback: reliable, ordered
//! messages in a KCP session on the nodes' UDP sockets, sealed with keys of
//! the link between them. A UDP forwarder of the test's own sits between
//! the two, to replay, corrupt, forge or stop their datagrams.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::{WAIT, ask, ask_until, closed_within, config, message, node_with, node_with_config};
use fogconnect::{CloseKind, ConnectionEvent, Incoming, KcpDrops, NodeConfig, Transport};
use tokio::net::UdpSocket;

/// A UDP forwarder between a caller and `target`: what the caller sends to
/// it goes to `target` from its socket, and back. It keeps the KCP
/// datagrams (first byte 128..=191) it forwarded towards the target, and
/// forwards nothing once stopped.
struct Forwarder {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    forwarding: Arc<AtomicBool>,
    kcp_to_target: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let forwarding = Arc::new(AtomicBool::new(true));
        let kcp_to_target = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (io, on, kept) = (socket.clone(), forwarding.clone(), kcp_to_target.clone());
        let task = tokio::spawn(async move {
            let mut caller = None;
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = io.recv_from(&mut buf).await {
                if !on.load(Ordering::Acquire) {
                    continue;
                }
                let datagram = &buf[..len];
                let to = if from == target {
                    match caller {
                        Some(caller) => caller,
                        None => continue,
                    }
                } else {
                    caller = Some(from);
                    if (128..=191).contains(&datagram[0]) {
                        kept.lock().unwrap_or_else(|p| p.into_inner()).push(datagram.to_vec());
                    }
                    target
                };
                let _ = io.send_to(datagram, to).await;
            }
        });
        Ok(Self { socket, target, forwarding, kcp_to_target, task })
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Sends `datagram` to the target as if the caller had.
    async fn inject(&self, datagram: &[u8]) -> anyhow::Result<()> {
        self.socket.send_to(datagram, self.target).await?;
        Ok(())
    }

    fn kept(&self) -> Vec<Vec<u8>> {
        self.kcp_to_target.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every message of every connection (a message "close" closes it
/// from this side); returns how each connection ended.
fn echo(mut incoming: Incoming) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut endings = Vec::new();
        while let Some(mut conn) = incoming.accept().await {
            let ended = loop {
                match conn.recv().await {
                    ConnectionEvent::Message(data) if &data[..] == b"close" => {
                        conn.close();
                        break "closed here".to_string();
                    }
                    ConnectionEvent::Message(data) => {
                        if conn.send(data).is_err() {
                            break "send failed".to_string();
                        }
                    }
                    ConnectionEvent::Closed(reason) => break reason.to_string(),
                }
            };
            endings.push(ended);
        }
        endings
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_in_order_through_a_plugin() -> anyhow::Result<()> {
    let device = node_with("device", &[(2, "echo")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Kcp, 2).await?;
    ensure!(conn.convention().raw() == 0x23, "{:#x}", conn.convention().raw());
    let count = 10_000;
    let sender = conn.sender();
    let sending = tokio::spawn(async move {
        for i in 0..count {
            sender.send_when_ready(format!("kcp #{i}").into_bytes()).await?;
        }
        anyhow::Ok(())
    });
    for i in 0..count {
        let reply = message(&mut conn).await.with_context(|| format!("reply {i}"))?;
        ensure!(reply == format!("kcp #{i}").as_bytes(), "reply {i}: {:?}", String::from_utf8_lossy(&reply));
    }
    sending.await??;
    let stats = conn.stats();
    let kcp = stats.kcp.context("a KCP connection reports its session")?;
    ensure!(kcp.drops == KcpDrops::default(), "{kcp:?}");
    ensure!(stats.messages_received == count, "{stats:?}");
    // Larger than one datagram: split by KCP, whole on the other side.
    let large = "k".repeat(100_000);
    ensure!(ask(&mut conn, &large).await? == large);
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn forged_replayed_and_corrupted_datagrams_are_dropped_and_counted() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    let mut incoming = device.incoming(1)?;
    let app = node_with("app", &[]).await?;
    let forwarder = Forwarder::start(device.local_addr()).await?;
    let conn = app.connect(forwarder.addr()?, Transport::Kcp, 1).await?;
    let mut served = tokio::time::timeout(WAIT, incoming.accept()).await?.context("accepted")?;
    conn.send(&b"hello"[..])?;
    ensure!(&message(&mut served).await?[..] == b"hello");
    let kept = forwarder.kept();
    let original = kept.last().context("a KCP datagram passed the forwarder")?.clone();
    // A replay of one that arrived; a copy with one bit flipped and a
    // forgery under a number not seen yet (the tag fails).
    forwarder.inject(&original).await?;
    let mut flipped = original.clone();
    flipped[13] ^= 0x01;
    flipped[5..13].copy_from_slice(&u64::MAX.to_be_bytes());
    forwarder.inject(&flipped).await?;
    let mut forged = original.clone();
    forged[5..13].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
    forged[13..].fill(0x5A);
    forwarder.inject(&forged).await?;
    let expected = KcpDrops { forged: 2, replayed: 1, malformed: 0 };
    common::eventually("the three datagrams counted", || served.stats().kcp.is_some_and(|kcp| kcp.drops == expected))
        .await?;
    // Nothing reached the service, and the connection carries on.
    conn.send(&b"still here"[..])?;
    ensure!(&message(&mut served).await?[..] == b"still here");
    let conversation = conn.stats().kcp.context("stats")?.conversation;
    ensure!(served.stats().kcp.map(|k| k.conversation) == Some(conversation), "both sides name one session");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn either_side_closes_in_order_after_its_messages() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    let served = echo(device.incoming(1)?);
    let app = node_with("app", &[]).await?;
    // The app closes after many messages: the device hears them all, then
    // end of file.
    let mut first = app.connect(device.local_addr(), Transport::Kcp, 1).await?;
    for i in 0..500 {
        first.send(format!("m{i}").into_bytes())?;
    }
    for i in 0..500 {
        ensure!(message(&mut first).await? == format!("m{i}").as_bytes(), "echo {i}");
    }
    first.close();
    // The device closes: the app sees end of file.
    let mut second = app.connect(device.local_addr(), Transport::Kcp, 1).await?;
    second.send(&b"close"[..])?;
    let reason = closed_within(&mut second, WAIT).await?;
    ensure!(reason.kind == CloseKind::Eof, "{reason}");
    device.shutdown().await;
    let endings = tokio::time::timeout(WAIT, served).await??;
    ensure!(endings.len() == 2, "{endings:?}");
    ensure!(endings[0].starts_with("eof") && endings[1] == "closed here", "{endings:?}");
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_peer_that_vanished_ends_the_session_with_a_timeout() -> anyhow::Result<()> {
    let quick = NodeConfig { keep_alive_interval: Duration::from_millis(200), keep_alive_attempts: 5, ..config() };
    let device = node_with_config("device", &[], quick.clone()).await?;
    let _served = echo(device.incoming(1)?);
    let app = node_with_config("app", &[], quick).await?;
    let forwarder = Forwarder::start(device.local_addr()).await?;
    let mut conn = app.connect(forwarder.addr()?, Transport::Kcp, 1).await?;
    ensure!(ask(&mut conn, "are you there?").await? == "are you there?");
    forwarder.forwarding.store(false, Ordering::Release);
    conn.send(&b"into the void"[..])?;
    match tokio::time::timeout(WAIT, conn.recv()).await {
        Ok(ConnectionEvent::Closed(reason)) => ensure!(reason.kind == CloseKind::Timeout, "{reason}"),
        Ok(ConnectionEvent::Message(m)) => bail!("a message from a vanished peer: {m:?}"),
        Err(_) => bail!("no close within {WAIT:?}"),
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

/// A plugin reads its KCP connection's counters: the session's
/// conversation id, the caller's, and a replayed datagram it was spared.
#[tokio::test]
async fn a_plugin_reads_its_kcp_sessions_counters() -> anyhow::Result<()> {
    let device = node_with("device", &[(3, "test-probe")]).await?;
    let app = node_with("app", &[]).await?;
    let forwarder = Forwarder::start(device.local_addr()).await?;
    let mut conn = app.connect(forwarder.addr()?, Transport::Kcp, 3).await?;
    let conversation = conn.stats().kcp.context("stats")?.conversation;
    let first = ask(&mut conn, "transport 1").await?;
    let expected = format!("answer=1 received=1 kcp conversation={conversation} forged=0 replayed=0 malformed=0");
    ensure!(first == expected, "{first}");
    let original = forwarder.kept().last().context("a KCP datagram passed the forwarder")?.clone();
    forwarder.inject(&original).await?;
    ask_until(&mut conn, "transport 2", |answer| answer.ends_with("forged=0 replayed=1 malformed=0")).await?;
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}
