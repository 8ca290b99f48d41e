//! Two nodes in one process: connect, exchange, close, refusals.

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::{WAIT, ask, ask_until, closed_within, message, node_with};
use fogconnect::{CloseKind, ConnectError, Node, RefuseCode, SendError, Transport};

#[tokio::test]
async fn demo_plugin_answers_i_know() -> anyhow::Result<()> {
    let device = node_with("ee:34:a1:44:2c:1c", &[(1, "demo")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, 1).await?;
    // By address, nobody vouches for the id the device claims: it is shown
    // as the device's certificate.
    assert_eq!(conn.peer_id(), format!("fp:{}", device.fingerprint()));
    assert!(!conn.peer_verified());
    assert_eq!(conn.convention().raw(), 0x15);
    assert!(!conn.is_passive());
    assert_eq!(ask(&mut conn, "I am fog data!").await?, "I know!");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn passive_plugin_sees_passive_and_the_convention() -> anyhow::Result<()> {
    let server = node_with("server", &[(42, "test-probe")]).await?;
    let client = node_with("client", &[]).await?;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 42).await?;
    let info = ask(&mut conn, "info").await?;
    // By address, the client's claimed id is not vouched for: the plugin
    // sees its certificate.
    let expected = format!(
        "passive=true convention={:#x} peer=fp:{} remote={}",
        (42 << 4) | 1, // the plugin contract 0.1.0 numbers QUIC 1
        client.fingerprint(),
        client.local_addr()
    );
    ensure!(info.starts_with(&expected), "{info}");
    ensure!(info.contains("imports-agree=true"), "{info}");
    // The user-data slot keeps what the plugin stored.
    ensure!(ask(&mut conn, "info").await?.ends_with("user-data=0xf06"));
    let stats = ask(&mut conn, "stats").await?;
    ensure!(stats.contains("Lan") && stats.contains("messages-received=3"), "{stats}");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_order_and_intact() -> anyhow::Result<()> {
    let server = node_with("server", &[(0, "echo")]).await?;
    let client = node_with("client", &[]).await?;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    const COUNT: u32 = 10_000;
    let payload = |i: u32| -> Vec<u8> {
        // Varying sizes (0..=300 bytes) with content derived from the index.
        let len = (i as usize * 7919) % 301;
        let mut v = i.to_be_bytes().to_vec();
        v.extend((0..len).map(|k| (i as usize + k) as u8));
        v
    };
    let mut received = 0u32;
    for i in 0..COUNT {
        loop {
            match conn.send(payload(i)) {
                Ok(()) => break,
                Err(SendError::BufferFull { .. }) => {
                    let reply = message(&mut conn).await?;
                    ensure!(reply[..] == payload(received)[..], "reply {received} differs");
                    received += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    while received < COUNT {
        let reply = message(&mut conn).await.with_context(|| format!("waiting for reply {received}"))?;
        ensure!(reply[..] == payload(received)[..], "reply {received} differs");
        received += 1;
    }
    let stats = conn.stats();
    assert_eq!(stats.messages_sent, u64::from(COUNT));
    assert_eq!(stats.messages_received, u64::from(COUNT));
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn close_from_the_app_reaches_the_plugin_as_eof() -> anyhow::Result<()> {
    let server = node_with("server", &[(5, "test-probe")]).await?;
    let client = node_with("client", &[]).await?;
    let mut first = client.connect(server.local_addr(), Transport::Quic, 5).await?;
    ask(&mut first, "info").await?;
    let first_id = first.id();
    first.close();
    ensure!(closed_within(&mut first, WAIT).await?.kind == CloseKind::Local);
    drop(first);
    let mut observer = client.connect(server.local_addr(), Transport::Quic, 5).await?;
    // The plugin's on-close may come after this connect: ask until it shows.
    let closes = ask_until(&mut observer, "closes", |c| !c.is_empty()).await?;
    ensure!(closes.contains(":eof:closed by the application"), "{closes} ({first_id:?})");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn close_from_the_plugin_reaches_the_app_as_eof() -> anyhow::Result<()> {
    let server = node_with("server", &[(5, "test-probe")]).await?;
    let client = node_with("client", &[]).await?;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 5).await?;
    conn.send(b"close-me".to_vec())?;
    let reason = closed_within(&mut conn, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Eof, "{reason}");
    // The plugin itself saw its own close as local.
    let mut observer = client.connect(server.local_addr(), Transport::Quic, 5).await?;
    let closes = ask(&mut observer, "closes").await?;
    ensure!(closes.contains(":local:closed by this plugin"), "{closes}");
    // Sending on the ended connection is refused.
    assert_eq!(conn.send(b"late".to_vec()), Err(SendError::Closed));
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn plugin_connects_to_another_node_and_sees_refusals() -> anyhow::Result<()> {
    let echo_node = node_with("echo-node", &[(0, "echo")]).await?;
    let prober = node_with("prober", &[(3, "test-probe")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(prober.local_addr(), Transport::Quic, 3).await?;
    assert_eq!(ask(&mut conn, &format!("dial {} 0 ping-through", echo_node.local_addr())).await?, "dialling");
    assert_eq!(ask(&mut conn, &format!("dial {} 9 nobody", echo_node.local_addr())).await?, "dialling");
    let reply = ask(&mut conn, "dial not-an-address 0 x").await?;
    ensure!(reply.contains("InvalidPeer") && reply.contains("not a socket address"), "{reply}");
    let log = ask_until(&mut conn, "dialed", |log| {
        log.contains("reply:ping-through") && log.contains("closed:refused:no such service: 9")
    })
    .await?;
    ensure!(log.contains(&format!("connected:fp:{}:0x1", echo_node.fingerprint())), "{log}");
    app.shutdown().await;
    prober.shutdown().await;
    echo_node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_plugin_cannot_touch_connections_of_another_plugin() -> anyhow::Result<()> {
    let server = node_with("server", &[(0, "echo"), (6, "test-probe")]).await?;
    let client = node_with("client", &[]).await?;
    let mut echo = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    assert_eq!(ask(&mut echo, "hi").await?, "hi");
    let mut probe = client.connect(server.local_addr(), Transport::Quic, 6).await?;
    assert_eq!(ask(&mut probe, "poke 0 64").await?, "isolated");
    // The echo connection was not disturbed.
    assert_eq!(ask(&mut echo, "still here").await?, "still here");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_service_is_refused_with_its_reason() -> anyhow::Result<()> {
    let server = node_with("server", &[(0, "echo")]).await?;
    let client = node_with("client", &[]).await?;
    match client.connect(server.local_addr(), Transport::Quic, 77).await {
        Err(ConnectError::Refused { code, message }) => {
            assert_eq!(code, RefuseCode::NoSuchService);
            assert_eq!(message, "no such service: 77");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reserved_bits_and_unknown_transports_are_refused() -> anyhow::Result<()> {
    let server = node_with("server", &[(1, "demo")]).await?;
    let client = node_with("client", &[]).await?;
    match client.connect_raw(server.local_addr(), 0x1015, None).await {
        Err(ConnectError::Refused { code, message }) => {
            assert_eq!(code, RefuseCode::ReservedBits);
            assert!(message.contains("reserved convention bits"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.connect_raw(server.local_addr(), 0x1F, None).await {
        Err(ConnectError::Refused { code, .. }) => assert_eq!(code, RefuseCode::UnsupportedTransport),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.connect(server.local_addr(), Transport::Utp, 1).await {
        Err(ConnectError::UnsupportedTransport(Transport::Utp)) => {}
        other => panic!("expected unsupported transport, got {other:?}"),
    }
    // The server keeps serving after the refusals.
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 1).await?;
    assert_eq!(ask(&mut conn, "I am fog data!").await?, "I know!");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn oversize_messages_are_refused_and_the_maximum_passes() -> anyhow::Result<()> {
    let server = node_with("server", &[(0, "echo")]).await?;
    let client = node_with("client", &[]).await?;
    let max = client.config().max_message_size;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    assert_eq!(conn.send(vec![0u8; max + 1]), Err(SendError::TooLarge { len: max + 1, max }));
    let big: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    conn.send(big.clone())?;
    let reply = message(&mut conn).await?;
    assert!(reply[..] == big[..], "1 MiB echo differs");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unreachable_peer_times_out_with_a_clear_error() -> anyhow::Result<()> {
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let client = Node::builder()
        .config(common::config())
        .configure(|c| c.connect_timeout = Duration::from_millis(300))
        .start()
        .await?;
    let started = std::time::Instant::now();
    match client.connect(silent.local_addr()?, Transport::Quic, 0).await {
        Err(ConnectError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    client.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn node_shutdown_closes_plugin_connections_as_eof_for_peers() -> anyhow::Result<()> {
    let server = node_with("server", &[(0, "echo")]).await?;
    let client = node_with("client", &[]).await?;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    assert_eq!(ask(&mut conn, "x").await?, "x");
    server.shutdown().await;
    let reason = closed_within(&mut conn, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Eof, "{reason}");
    assert!(reason.message.contains("shutting down"), "{reason}");
    client.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_pinned_fingerprint_is_enforced() -> anyhow::Result<()> {
    let server = node_with("server", &[(1, "demo")]).await?;
    let impostor = node_with("impostor", &[(1, "demo")]).await?;
    let client = node_with("client", &[]).await?;
    // The impostor's address with the real server's fingerprint: refused.
    match client.connect_raw(impostor.local_addr(), 0x15, Some(server.fingerprint())).await {
        Err(ConnectError::Identity(message)) => ensure!(message.contains("fingerprint"), "{message}"),
        other => anyhow::bail!("expected an identity error, got {other:?}"),
    }
    let mut conn = client.connect_raw(server.local_addr(), 0x15, Some(server.fingerprint())).await?;
    assert_eq!(ask(&mut conn, "I am fog data!").await?, "I know!");
    // An existing link is checked too.
    match client.connect_raw(server.local_addr(), 0x15, Some(impostor.fingerprint())).await {
        Err(ConnectError::Identity(_)) => {}
        other => anyhow::bail!("expected an identity error, got {other:?}"),
    }
    client.shutdown().await;
    impostor.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutting_down_the_callers_node_ends_its_connections_cleanly() -> anyhow::Result<()> {
    let server = node_with("server", &[(5, "test-probe")]).await?;
    let client = node_with("client", &[]).await?;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 5).await?;
    ask(&mut conn, "info").await?;
    client.shutdown().await;
    let reason = closed_within(&mut conn, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Local, "{reason}");
    // The server's plugin saw an orderly end.
    let other = node_with("other", &[]).await?;
    let mut observer = other.connect(server.local_addr(), Transport::Quic, 5).await?;
    ask_until(&mut observer, "closes", |c| c.contains(":eof:peer node shutting down")).await?;
    other.shutdown().await;
    server.shutdown().await;
    Ok(())
}
