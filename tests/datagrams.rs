//! The UDP transport: messages as QUIC DATAGRAM frames on the link between
//! two nodes. Each send is one datagram, refused above the path's datagram
//! size; plugins and native services get them through the same callbacks
//! as QUIC messages; datagrams the application never got are counted.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::{WAIT, node_with};
use fogconnect::{Connection, ConnectionEvent, Incoming, SendError, Transport};

/// Sends `request` until its reply comes (a datagram may be lost), at
/// most three times; returns the reply.
async fn ask_datagram(conn: &mut Connection, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    for _ in 0..3 {
        conn.send(request.to_vec())?;
        match tokio::time::timeout(Duration::from_secs(1), conn.recv()).await {
            Ok(ConnectionEvent::Message(reply)) => return Ok(reply.to_vec()),
            Ok(ConnectionEvent::Closed(reason)) => bail!("closed: {reason}"),
            Err(_) => continue,
        }
    }
    bail!("no reply to {} bytes after three tries", request.len())
}

/// Echoes every message of every connection; a message "burst N" is
/// answered with N numbered datagrams of 100 bytes instead.
fn echo(mut incoming: Incoming) {
    tokio::spawn(async move {
        while let Some(mut conn) = incoming.accept().await {
            tokio::spawn(async move {
                while let ConnectionEvent::Message(data) = conn.recv().await {
                    if let Some(count) = std::str::from_utf8(&data).ok().and_then(|t| t.strip_prefix("burst ")) {
                        for i in 0..count.parse::<u32>().unwrap_or(0) {
                            let mut datagram = format!("{i:08}").into_bytes();
                            datagram.resize(100, b'.');
                            let _ = conn.send(datagram);
                        }
                    } else if conn.send(data).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[tokio::test]
async fn datagrams_echo_and_a_message_above_the_datagram_size_is_refused() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    echo(device.incoming(1)?);
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Udp, 1).await?;
    ensure!(conn.convention().raw() == 0x11, "{:#x}", conn.convention().raw());
    for i in 0..100 {
        let request = format!("datagram #{i}");
        let reply = ask_datagram(&mut conn, request.as_bytes()).await?;
        ensure!(reply == request.as_bytes(), "{i}: {:?}", String::from_utf8_lossy(&reply));
    }
    // A QUIC path carries at least 1,200-byte packets; less the
    // datagram's own framing, and never more than the path's MTU.
    let max = conn.stats().max_datagram.context("a UDP connection reports its datagram size")?;
    ensure!((1_100..1_500).contains(&max), "{max}");
    let full = vec![7u8; max];
    ensure!(ask_datagram(&mut conn, &full).await? == full, "a message of the largest size comes back whole");
    match conn.send(vec![0u8; max + 1]) {
        Err(SendError::TooLarge { len, max: limit }) => ensure!(len == max + 1 && limit == max, "{len} {limit}"),
        other => bail!("a message above the datagram size: {other:?}"),
    }
    let stats = conn.stats();
    ensure!(stats.messages_sent >= 101 && stats.messages_received >= 101, "{stats:?}");
    // A QUIC connection reports no datagram size and counts none lost.
    let quic = app.connect(device.local_addr(), Transport::Quic, 1).await?;
    ensure!(quic.stats().max_datagram.is_none() && quic.stats().datagrams_lost == 0);
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn datagrams_the_application_did_not_take_are_counted_lost() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    echo(device.incoming(1)?);
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Udp, 1).await?;
    ensure!(ask_datagram(&mut conn, b"ready?").await? == b"ready?");
    // Far more than the connection's queue holds, while this side reads
    // nothing: the rest is dropped, and counted.
    let burst = 5_000u64;
    conn.send(format!("burst {burst}").into_bytes())?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let stats = loop {
        let stats = conn.stats();
        if stats.messages_received - 1 + stats.datagrams_lost == burst {
            break stats;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the burst did not settle: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(stats.datagrams_lost > 0 && stats.messages_received > 1, "{stats:?}");
    // What was taken arrives whole, each once.
    let mut seen = HashSet::new();
    for _ in 1..stats.messages_received {
        match tokio::time::timeout(WAIT, conn.recv()).await {
            Ok(ConnectionEvent::Message(data)) => {
                ensure!(data.len() == 100, "{} bytes", data.len());
                let number: u64 = std::str::from_utf8(&data[..8])?.parse()?;
                ensure!(number < burst && seen.insert(number), "datagram {number} repeated or unknown");
            }
            other => bail!("expected a datagram, got {other:?}"),
        }
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_plugin_serves_the_udp_transport_through_its_usual_callbacks() -> anyhow::Result<()> {
    let device = node_with("device", &[(2, "echo")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Udp, 2).await?;
    for i in 0..20 {
        let request = format!("to the plugin #{i}");
        let reply = ask_datagram(&mut conn, request.as_bytes()).await?;
        ensure!(reply.ends_with(request.as_bytes()), "{:?}", String::from_utf8_lossy(&reply));
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}
