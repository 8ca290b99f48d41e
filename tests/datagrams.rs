//! The UDP transport: messages as QUIC DATAGRAM frames on the link between
//! two nodes. Each send is one datagram, refused above the path's datagram
//! size; plugins and native services get them through the same callbacks
//! as QUIC messages; datagrams the application never got are counted.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::{WAIT, key_value, node_with};
use fogconnect::{Connection, ConnectionEvent, Incoming, SendError, Transport};

/// Sends `request` until its echo comes back (a datagram may be lost; a
/// late echo of an earlier request is skipped), a second per try, at most
/// three tries.
async fn echoed(conn: &mut Connection, request: &[u8]) -> anyhow::Result<()> {
    for _ in 0..3 {
        conn.send(request.to_vec())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, conn.recv()).await {
                Ok(ConnectionEvent::Message(reply)) if reply == request => return Ok(()),
                Ok(ConnectionEvent::Message(_)) => continue,
                Ok(ConnectionEvent::Closed(reason)) => bail!("closed: {reason}"),
                Err(_) => break,
            }
        }
    }
    bail!("no echo of {} bytes after three tries", request.len())
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
        echoed(&mut conn, request.as_bytes()).await.with_context(|| format!("datagram #{i}"))?;
    }
    // A QUIC path carries at least 1,200-byte packets; less the
    // datagram's own framing, and never more than the path's MTU. The size
    // grows while path MTU discovery runs: a send one above the size just
    // read may have become allowed, so it is read again then.
    let mut refused = None;
    for _ in 0..5 {
        let max = conn.stats().max_datagram.context("a UDP connection reports its datagram size")?;
        ensure!((1_100..1_500).contains(&max), "{max}");
        match conn.send(vec![0u8; max + 1]) {
            Err(SendError::TooLarge { len, max: limit }) => {
                ensure!(len == max + 1 && limit <= max, "{len} {limit}");
                refused = Some(limit);
                break;
            }
            Ok(()) => continue,
            Err(e) => bail!("a message above the datagram size: {e}"),
        }
    }
    let max = refused.context("a message above the datagram size was sent")?;
    let full = vec![7u8; max];
    echoed(&mut conn, &full).await.context("a message of the largest size comes back whole")?;
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
    echoed(&mut conn, b"ready?").await?;
    let before = conn.stats().messages_received;
    // Far more than the connection's queue holds, while this side reads
    // nothing: the rest is dropped, and counted.
    let burst = 5_000u64;
    conn.send(format!("burst {burst}").into_bytes())?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let stats = loop {
        let stats = conn.stats();
        if stats.messages_received - before + stats.datagrams_lost == burst {
            break stats;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the burst did not settle: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(stats.datagrams_lost > 0 && stats.messages_received > before, "{stats:?}");
    // What was taken arrives whole, each once.
    let mut seen = HashSet::new();
    for _ in before..stats.messages_received {
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
        echoed(&mut conn, request.as_bytes()).await.with_context(|| format!("to the plugin #{i}"))?;
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

/// Asks the probe plugin for its transport counters ("transport N") until
/// an answer comes (the question or the answer may be lost), two seconds
/// per try, at most five tries; returns the question's number and the
/// answer.
async fn ask_transport(conn: &mut Connection) -> anyhow::Result<(u64, String)> {
    for number in 1..=5u64 {
        conn.send(format!("transport {number}").into_bytes())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(event) = tokio::time::timeout_at(deadline, conn.recv()).await {
            match event {
                ConnectionEvent::Message(answer) => {
                    let answer = String::from_utf8_lossy(&answer).into_owned();
                    if answer.starts_with("answer=") {
                        return Ok((number, answer));
                    }
                }
                ConnectionEvent::Closed(reason) => bail!("closed: {reason}"),
            }
        }
    }
    bail!("no answer to five questions")
}

/// A plugin reads its UDP connection's counters: what one datagram
/// carries, as the caller sees it, and the datagrams it did not get out of
/// a burst larger than its queue and the link's, which with the ones it
/// got make up every datagram sent before the question it answers.
#[tokio::test]
async fn a_plugin_reads_the_datagrams_lost_to_it() -> anyhow::Result<()> {
    let device = node_with("device", &[(3, "test-probe")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Udp, 3).await?;
    let burst = 5_000u64;
    for i in 0..burst {
        let mut datagram = format!("{i:08}").into_bytes();
        datagram.resize(100, b'.');
        conn.send(datagram)?;
    }
    let (question, answer) = ask_transport(&mut conn).await?;
    println!("{answer}");
    ensure!(answer.contains(" datagrams max="), "{answer}");
    let (received, lost) = (key_value(&answer, "received")?, key_value(&answer, "lost")?);
    ensure!(lost > 0, "nothing lost of {burst}: {answer}");
    ensure!(received + lost == burst + question, "{received} received + {lost} lost ≠ {burst} + {question} sent");
    let max = key_value(&answer, "max")?;
    ensure!((1_000..=1_500).contains(&max), "max datagram {max}");
    // On a QUIC connection there is nothing more to count.
    let mut stream = app.connect(device.local_addr(), Transport::Quic, 3).await?;
    let (_, answer) = ask_transport(&mut stream).await?;
    ensure!(answer.ends_with(" stream"), "{answer}");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}
