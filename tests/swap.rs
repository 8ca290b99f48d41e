//! Live swaps of a service plugin on a running node: connections stay open,
//! no message is lost or repeated, state moves to the new generation, a
//! plugin that cannot serve is rejected and the old generation keeps
//! answering.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, bail, ensure};
use common::{WAIT, eventually, node_with};
use fogconnect::{ConnectionEvent, NodeError, PluginBuild, PluginError, PluginManifest, StateHandoff, Transport};

const SERVICE: u8 = 3;
const CONNECTIONS: usize = 6;
/// Messages in flight per connection.
const WINDOW: u64 = 16;
const SWAPS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-echo-v1")]).await?;
    let app = node_with("app", &[]).await?;
    let replies = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for c in 0..CONNECTIONS {
        let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
        let (replies, stop) = (replies.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            // Numbered messages, WINDOW in flight, until told to stop; then
            // the outstanding replies.
            let mut next = 0u64;
            let mut received = 0u64;
            let mut prefixes = Vec::new();
            loop {
                while !stop.load(Ordering::Relaxed) && next < received + WINDOW {
                    conn.send(format!("c{c} #{next}").into_bytes())?;
                    next += 1;
                }
                if received == next {
                    break;
                }
                let reply = match tokio::time::timeout(WAIT, conn.recv()).await {
                    Ok(ConnectionEvent::Message(reply)) => String::from_utf8_lossy(&reply).into_owned(),
                    Ok(ConnectionEvent::Closed(reason)) => bail!("connection {c} closed: {reason}"),
                    Err(_) => bail!("connection {c}: no reply to #{received} within {WAIT:?}"),
                };
                let (prefix, text) = reply.split_once(':').with_context(|| format!("bad reply {reply:?}"))?;
                ensure!(text == format!("c{c} #{received}"), "connection {c}: expected #{received}, got {reply:?}");
                if prefixes.last().map(String::as_str) != Some(prefix) {
                    prefixes.push(prefix.to_string());
                }
                received += 1;
                replies.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((conn, received, prefixes))
        }));
    }
    for swap in 0..SWAPS {
        // Let some traffic through between swaps.
        let before = replies.load(Ordering::Relaxed);
        eventually("traffic between swaps", || replies.load(Ordering::Relaxed) >= before + 100).await?;
        let plugin = if swap % 2 == 0 { "test-echo-v2" } else { "test-echo-v1" };
        let report = device.swap_plugin(SERVICE, &common::plugin(plugin)).await?;
        assert_eq!(report.generation, swap as u64 + 2);
    }
    let before = replies.load(Ordering::Relaxed);
    eventually("traffic after the last swap", || replies.load(Ordering::Relaxed) >= before + 100).await?;
    stop.store(true, Ordering::Relaxed);
    let mut open = Vec::new();
    for sender in senders {
        let (conn, received, prefixes) = sender.await??;
        let stats = conn.stats();
        assert_eq!((stats.messages_sent, stats.messages_received), (received, received), "every reply once");
        // Replies switch prefix only at swaps, so alternately, at most once
        // per swap; this connection's traffic went on through the swaps.
        assert!((2..=SWAPS + 1).contains(&prefixes.len()), "{prefixes:?}");
        for pair in prefixes.windows(2) {
            assert_ne!(pair[0], pair[1]);
        }
        open.push(conn);
    }
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!(
        (info.generation, info.name.as_str(), info.connections),
        (SWAPS as u64 + 1, "test_echo_v1", CONNECTIONS as u64)
    );
    Ok(())
}

#[tokio::test]
async fn a_plugin_that_cannot_serve_is_rejected_and_the_old_one_keeps_answering() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-echo-v1")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "one").await?, "v1:one");

    match device.swap_plugin_bytes(SERVICE, "garbage", b"\0asm not a component").await {
        Err(NodeError::Plugin { source: PluginError::Compile(_), .. }) => {}
        other => bail!("expected a compile error, got {other:?}"),
    }
    let stream_plugin = std::fs::read(common::plugin("adaptive-source"))?;
    match device.swap_plugin_bytes(SERVICE, "adaptive_source", &stream_plugin).await {
        Err(NodeError::Plugin { source: PluginError::Link(message), .. }) => {
            assert!(message.contains("another service plugin"), "{message}")
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    match device.swap_plugin(9, &common::plugin("test-echo-v2")).await {
        Err(NodeError::NoSuchService(9)) => {}
        other => bail!("expected no such service, got {other:?}"),
    }
    assert_eq!(common::ask(&mut conn, "two").await?, "v1:two", "the same connection, the old generation");
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!((info.generation, info.name.as_str()), (1, "test_echo_v1"));

    device.swap_plugin(SERVICE, &common::plugin("test-echo-v2")).await?;
    assert_eq!(common::ask(&mut conn, "three").await?, "v2:three");
    Ok(())
}

/// Size of the counter plugin's state: its format tag and a u64.
const COUNTER_STATE_BYTES: usize = "counter/1:".len() + 8;

#[tokio::test]
async fn a_counter_keeps_its_count_across_swaps() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-counter")]).await?;
    let app = node_with("app", &[]).await?;
    let mut a = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    let mut b = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    for n in 1..=5 {
        assert_eq!(common::ask(&mut a, "add").await?, n.to_string());
    }
    for n in 6..=8 {
        assert_eq!(common::ask(&mut b, "add").await?, n.to_string());
    }
    let counter = common::plugin("test-counter");
    let report = device.swap_plugin(SERVICE, &counter).await?;
    assert_eq!((report.generation, &report.state), (2, &StateHandoff::Handed { bytes: COUNTER_STATE_BYTES }));
    assert_eq!(common::ask(&mut a, "add").await?, "9", "the count went on, on the same connection");
    assert_eq!(common::ask(&mut b, "add").await?, "10");
    let report = device.swap_plugin(SERVICE, &counter).await?;
    assert_eq!((report.generation, &report.state), (3, &StateHandoff::Handed { bytes: COUNTER_STATE_BYTES }));
    assert_eq!(common::ask(&mut b, "add").await?, "11");

    // A build without the handoff exports starts afresh, and so does the
    // counter after it (nothing to take over).
    let report = device.swap_plugin(SERVICE, &common::plugin("test-echo-v1")).await?;
    assert_eq!(report.state, StateHandoff::Fresh);
    assert_eq!(common::ask(&mut a, "add").await?, "v1:add");
    let report = device.swap_plugin(SERVICE, &counter).await?;
    assert_eq!(report.state, StateHandoff::Fresh);
    assert_eq!(common::ask(&mut a, "add").await?, "1");
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!((info.generation, info.connections, info.crashes), (5, 2, 0));
    Ok(())
}

#[tokio::test]
async fn a_state_the_new_generation_refuses_rejects_the_swap() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-counter")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "add").await?, "1");
    assert_eq!(common::ask(&mut conn, "add").await?, "2");
    assert_eq!(common::ask(&mut conn, "spoil-snapshot").await?, "spoiled");
    let counter = common::plugin("test-counter");
    match device.swap_plugin(SERVICE, &counter).await {
        Err(NodeError::Plugin { source: PluginError::Handoff(reason), .. }) => {
            assert_eq!(reason, "not a counter/1 state (19 bytes)")
        }
        other => bail!("expected the state to be refused, got {other:?}"),
    }
    assert_eq!(common::ask(&mut conn, "add").await?, "3", "the old generation serves, with its count");
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!((info.generation, info.crashes), (1, 0));
    let report = device.swap_plugin(SERVICE, &counter).await?;
    assert_eq!(report.state, StateHandoff::Handed { bytes: COUNTER_STATE_BYTES });
    assert_eq!(common::ask(&mut conn, "add").await?, "4");
    Ok(())
}

#[tokio::test]
async fn a_generation_that_traps_in_snapshot_is_swapped_without_its_state() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-counter")]).await?;
    let mut events = device.plugin_events();
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "add").await?, "1");
    assert_eq!(common::ask(&mut conn, "trap-snapshot").await?, "armed");
    let report = device.swap_plugin(SERVICE, &common::plugin("test-counter")).await?;
    match &report.state {
        StateHandoff::Lost { reason } => assert!(reason.contains("snapshot asked to trap"), "{reason}"),
        other => bail!("expected the state to be lost, got {other:?}"),
    }
    assert_eq!(common::ask(&mut conn, "add").await?, "1", "the connection was kept; the count starts afresh");
    match tokio::time::timeout(WAIT, events.recv()).await?? {
        fogconnect::PluginEvent::Crashed { service: SERVICE, message, crashes: 1 } => {
            assert!(message.starts_with("snapshot failed: "), "{message}")
        }
        other => bail!("expected the crash of the old generation, got {other:?}"),
    }
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!((info.generation, info.crashes, info.connections), (2, 1, 1));
    Ok(())
}

#[tokio::test]
async fn a_plugin_that_fails_to_instantiate_is_rejected_until_its_manifest_allows_it() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-echo-v1")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "one").await?, "v1:one");
    // 80 MiB of initial memory against the node's default cap of 64 MiB.
    let oversized = std::fs::read(common::plugin("test-oversized"))?;
    match device.swap_plugin_bytes(SERVICE, "test_oversized", &oversized).await {
        Err(NodeError::Plugin { source: PluginError::Instantiate(message), .. }) => {
            assert!(message.contains("memory"), "{message}")
        }
        other => bail!("expected an instantiation failure, got {other:?}"),
    }
    assert_eq!(common::ask(&mut conn, "two").await?, "v1:two", "the old generation keeps answering");
    match device.load_plugin_bytes(4, "test_oversized", &oversized).await {
        Err(NodeError::Plugin { source: PluginError::Instantiate(_), .. }) => {}
        other => bail!("expected an instantiation failure, got {other:?}"),
    }
    assert!(device.services().iter().all(|s| s.service != 4), "a failed load leaves the number free");

    let roomy = PluginManifest { memory_mib: Some(96), ..PluginManifest::default() };
    let build = PluginBuild::new("test_oversized", oversized).with_manifest(roomy);
    device.swap_plugin_build(SERVICE, build).await?;
    assert_eq!(common::ask(&mut conn, "three").await?, "big:three");
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!((info.generation, info.limits.memory_bytes), (2, 96 << 20));
    Ok(())
}

#[tokio::test]
async fn a_disabled_service_serves_again_after_a_swap() -> anyhow::Result<()> {
    let config = fogconnect::NodeConfig {
        crash_policy: fogconnect::CrashPolicy { max_crashes: 0, ..Default::default() },
        ..common::config()
    };
    let device = common::node_with_config("device", &[(SERVICE, "test-panic")], config).await?;
    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    conn.send(&b"panic"[..])?;
    common::closed_within(&mut conn, WAIT).await?;
    eventually("disabled", || {
        device.services().iter().any(|s| s.service == SERVICE && s.state == fogconnect::PluginRunState::Disabled)
    })
    .await?;
    device.swap_plugin(SERVICE, &common::plugin("test-echo-v2")).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "back").await?, "v2:back");
    Ok(())
}

#[tokio::test]
async fn unloading_closes_the_connections_with_the_reason_and_frees_the_service() -> anyhow::Result<()> {
    let device = node_with("device", &[(SERVICE, "test-echo-v1"), (5, "adaptive-source")]).await?;
    let app = node_with("app", &[]).await?;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
        assert_eq!(common::ask(&mut conn, "hi").await?, "v1:hi");
        conns.push(conn);
    }
    device.unload_plugin(SERVICE).await?;
    for conn in &mut conns {
        let reason = common::closed_within(conn, WAIT).await?;
        assert_eq!((reason.kind, reason.message.as_str()), (fogconnect::CloseKind::Eof, "service unloaded"));
    }
    match app.connect(device.local_addr(), Transport::Quic, SERVICE).await {
        Err(e) => assert!(e.to_string().contains("no such service: 3"), "{e}"),
        Ok(_) => bail!("connected to an unloaded service"),
    }
    match device.unload_plugin(SERVICE).await {
        Err(NodeError::NoSuchService(SERVICE)) => {}
        other => bail!("expected no such service, got {other:?}"),
    }
    // The number is free: load again; an occupied one is refused.
    device.load_plugin(SERVICE, &common::plugin("test-echo-v2")).await?;
    match device.load_plugin(SERVICE, &common::plugin("test-echo-v1")).await {
        Err(NodeError::Plugin { source: PluginError::ServiceTaken(SERVICE), .. }) => {}
        other => bail!("expected the service to be taken, got {other:?}"),
    }
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "again").await?, "v2:again");

    // A stream plugin unloads the same way: its streams end.
    let session = fogconnect::StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 5).await?);
    let mut live = session.open("action=live").await?;
    device.unload_plugin(5).await?;
    let ended = loop {
        match tokio::time::timeout(WAIT, live.recv()).await? {
            fogconnect::MediaEvent::Data(_) => continue,
            fogconnect::MediaEvent::Ended(reason) => break reason,
        }
    };
    assert!(ended.contains("service unloaded"), "{ended}");
    Ok(())
}

const ADMIN_TOKEN: &str = "swap-test-admin-token-0123456789";

#[tokio::test]
async fn the_admin_api_lists_loads_swaps_and_unloads_with_its_token() -> anyhow::Result<()> {
    use fogconnect::admin::client::{AdminClient, AdminClientError};
    use fogconnect::admin::{AdminConfig, AdminError, AdminServer};

    let device = node_with("device", &[(SERVICE, "test-echo-v1")]).await?;
    let local = "127.0.0.1:0".parse()?;
    let weak = AdminConfig { listen: local, token: "short".into(), allow_remote: false };
    assert!(matches!(AdminServer::start(device.clone(), weak).await, Err(AdminError::WeakToken)));
    let remote = AdminConfig { listen: "0.0.0.0:0".parse()?, token: ADMIN_TOKEN.into(), allow_remote: false };
    assert!(matches!(AdminServer::start(device.clone(), remote).await, Err(AdminError::NotLoopback(_))));
    let admin = AdminServer::start(
        device.clone(),
        AdminConfig { listen: local, token: ADMIN_TOKEN.into(), allow_remote: false },
    )
    .await?;
    let client = AdminClient::new(admin.local_addr(), ADMIN_TOKEN);

    let intruder = AdminClient::new(admin.local_addr(), "not-the-admin-token-at-all");
    match intruder.list().await {
        Err(AdminClientError::Refused { status: 401, .. }) => {}
        other => bail!("expected 401, got {other:?}"),
    }
    match intruder.unload(SERVICE).await {
        Err(AdminClientError::Refused { status: 401, .. }) => {}
        other => bail!("expected 401, got {other:?}"),
    }

    let listed = client.list().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].service, listed[0].name.as_str(), listed[0].generation), (SERVICE, "test_echo_v1", 1));
    assert_eq!((listed[0].state.as_str(), listed[0].world.as_str()), ("running", "service"));

    let v1 = std::fs::read(common::plugin("test-echo-v1"))?;
    let v2 = std::fs::read(common::plugin("test-echo-v2"))?;
    match client.load(SERVICE, PluginBuild::new("test_echo_v1", v1.clone())).await {
        Err(AdminClientError::Refused { status: 409, message }) => assert!(message.contains("is already served")),
        other => bail!("expected 409, got {other:?}"),
    }
    let tight = PluginManifest {
        version: Some("2.0.1".into()),
        memory_mib: Some(8),
        call_deadline_ms: Some(250),
        connect_peer: Some(false),
    };
    let loaded = client.load(4, PluginBuild::new("test_echo_v2", v2.clone()).with_manifest(tight)).await?;
    assert_eq!((loaded.service, loaded.generation), (4, 1));
    assert_eq!(
        (loaded.limits.memory_bytes, loaded.limits.call_deadline_ms, loaded.limits.connect_peer),
        (8 << 20, 250, false),
        "the manifest's limits"
    );
    assert_eq!((loaded.version.as_deref(), loaded.swap), (Some("2.0.1"), None));
    let out_of_range = PluginManifest { call_deadline_ms: Some(0), ..PluginManifest::default() };
    match client.load(5, PluginBuild::new("test_echo_v2", v2.clone()).with_manifest(out_of_range)).await {
        Err(AdminClientError::Refused { status: 400, message }) => {
            assert!(message.contains("out of range"), "{message}")
        }
        other => bail!("expected 400, got {other:?}"),
    }

    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "a").await?, "v1:a");
    let swapped = client.swap(SERVICE, PluginBuild::new("test_echo_v2", v2)).await?;
    assert_eq!((swapped.name.as_str(), swapped.generation, swapped.connections), ("test_echo_v2", 2, 1));
    let swap = swapped.swap.context("the swap's report")?;
    assert_eq!((swap.generation, swap.state.as_str(), swap.state_bytes), (2, "fresh", None));
    assert!(swap.pause_ms > 0.0 && swap.compile_ms > 0.0, "{swap:?}");
    assert_eq!(common::ask(&mut conn, "b").await?, "v2:b");
    match client.swap(SERVICE, PluginBuild::new("broken", b"not wasm".to_vec())).await {
        Err(AdminClientError::Refused { status: 422, message }) => {
            assert!(message.contains("does not compile"), "{message}")
        }
        other => bail!("expected 422, got {other:?}"),
    }
    assert_eq!(common::ask(&mut conn, "c").await?, "v2:c");

    let series = |name: &str| format!("{name}{{service=\"{SERVICE}\",plugin=\"test_echo_v2\"}} ");
    let read = |metrics: &str, name: &str| -> anyhow::Result<f64> {
        let prefix = series(name);
        let line =
            metrics.lines().find(|l| l.starts_with(&prefix)).with_context(|| format!("no {prefix}: {metrics}"))?;
        Ok(line[prefix.len()..].parse()?)
    };
    // The plugin counts a reply once its send returned, which can be after
    // the reply reached this side: wait until the last one is counted.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = client.metrics().await?;
        if read(&metrics, "fogconnect_service_sent_bytes_total")? >= 12.0 || tokio::time::Instant::now() >= deadline {
            break metrics;
        }
        tokio::task::yield_now().await;
    };
    let value = |name: &str| read(&metrics, name);
    assert_eq!(value("fogconnect_plugin_swaps_total")?, 1.0);
    assert_eq!(value("fogconnect_plugin_generation")?, 2.0);
    assert_eq!(value("fogconnect_service_connections")?, 1.0);
    assert_eq!(value("fogconnect_service_messages_received_total")?, 3.0, "a, b and c");
    assert_eq!(value("fogconnect_service_sent_bytes_total")?, 12.0, "v1:a v2:b v2:c");
    assert_eq!(value("fogconnect_plugin_swap_pause_seconds_count")?, 1.0, "the refused build never reached the plugin");
    assert!(value("fogconnect_plugin_call_seconds_count")? >= 4.0);
    match intruder.metrics().await {
        Err(AdminClientError::Refused { status: 401, .. }) => {}
        other => bail!("expected 401, got {other:?}"),
    }

    client.unload(4).await?;
    match client.unload(4).await {
        Err(AdminClientError::Refused { status: 404, .. }) => {}
        other => bail!("expected 404, got {other:?}"),
    }
    assert_eq!(client.list().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_stream_plugin_swapped_live_ends_its_streams_and_keeps_the_connection() -> anyhow::Result<()> {
    use fogconnect::{MediaEvent, StreamError, StreamSession};

    let device = node_with("device", &[(5, "adaptive-source"), (SERVICE, "test-echo-v1")]).await?;
    let app = node_with("app", &[]).await?;
    let session = StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 5).await?);
    let mut live = session.open("action=live").await?;
    let talk = session.talk("action=talk").await?;
    talk.send(b"before the swap")?;
    for _ in 0..3 {
        match tokio::time::timeout(WAIT, live.recv()).await? {
            MediaEvent::Data(_) => {}
            MediaEvent::Ended(reason) => bail!("the stream ended before the swap: {reason}"),
        }
    }
    let report = device.swap_plugin(5, &common::plugin("adaptive-source")).await?;
    assert_eq!((report.generation, &report.state), (2, &StateHandoff::Fresh));
    // The data queued before the swap arrives, then the end with the reason.
    let ended = loop {
        match tokio::time::timeout(WAIT, live.recv()).await? {
            MediaEvent::Data(_) => continue,
            MediaEvent::Ended(reason) => break reason,
        }
    };
    assert_eq!(ended, "service plugin swapped");
    eventually("the talk-back ended", || talk.ended().is_some()).await?;
    match talk.send(b"after the swap") {
        Err(StreamError::Ended(reason)) => assert_eq!(reason, "service plugin swapped"),
        other => bail!("expected the talk-back to have ended, got {other:?}"),
    }
    // The same connection: the new generation serves a new stream.
    let mut again = session.open("action=live").await?;
    match tokio::time::timeout(WAIT, again.recv()).await? {
        MediaEvent::Data(_) => {}
        MediaEvent::Ended(reason) => bail!("the new stream ended: {reason}"),
    }
    assert!(session.ended().is_none());
    let info = device.services().into_iter().find(|s| s.service == 5).context("service 5")?;
    assert_eq!((info.generation, info.connections, info.crashes), (2, 1, 0));
    assert_eq!(info.world, fogconnect::PluginWorld::Stream);

    // Worlds are not mixed.
    match device.swap_plugin(5, &common::plugin("test-echo-v2")).await {
        Err(NodeError::Plugin { source: PluginError::Link(message), .. }) => {
            assert!(message.contains("another stream plugin"), "{message}")
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    match tokio::time::timeout(WAIT, again.recv()).await? {
        MediaEvent::Data(_) => {}
        MediaEvent::Ended(reason) => bail!("a refused swap ended the stream: {reason}"),
    }
    Ok(())
}

/// The next chunk of a ticker stream, as its number.
async fn tick(stream: &mut fogconnect::MediaStream) -> anyhow::Result<u64> {
    match tokio::time::timeout(WAIT, stream.recv()).await? {
        fogconnect::MediaEvent::Data(chunk) => Ok(std::str::from_utf8(&chunk)?.parse()?),
        fogconnect::MediaEvent::Ended(reason) => bail!("the stream ended: {reason}"),
    }
}

#[tokio::test]
async fn a_stream_plugin_with_handoff_keeps_its_streams_going_across_a_swap() -> anyhow::Result<()> {
    let device = node_with("device", &[(5, "test-ticker")]).await?;
    let app = node_with("app", &[]).await?;
    let session = fogconnect::StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 5).await?);
    let mut streams = [session.open("a").await?, session.open("b").await?];
    let mut expected = [0u64; 2];
    for (stream, next) in streams.iter_mut().zip(&mut expected) {
        for _ in 0..5 {
            assert_eq!(tick(stream).await?, *next);
            *next += 1;
        }
    }
    let ticker = common::plugin("test-ticker");
    for swap in 0..3 {
        let report = device.swap_plugin(5, &ticker).await?;
        // Tag, last handle, and two (handle, next number) pairs.
        let bytes = "ticker/1:".len() + 8 + 2 * 16;
        assert_eq!((report.generation, &report.state), (swap + 2, &StateHandoff::Handed { bytes }));
        // Every chunk once, in order, through the swap.
        for (stream, next) in streams.iter_mut().zip(&mut expected) {
            for _ in 0..5 {
                assert_eq!(tick(stream).await?, *next, "swap {swap}");
                *next += 1;
            }
        }
    }
    // The restored generation knows the handles it gave out.
    let mut third = session.open("c").await?;
    assert_eq!(tick(&mut third).await?, 0);
    assert_eq!(tick(&mut streams[0]).await?, expected[0]);
    Ok(())
}

#[tokio::test]
async fn a_swapped_in_stream_plugin_that_keeps_crashing_is_rolled_back() -> anyhow::Result<()> {
    let config = fogconnect::NodeConfig {
        crash_policy: fogconnect::CrashPolicy { max_crashes: 1, ..Default::default() },
        ..common::config()
    };
    let device = common::node_with_config("device", &[(5, "test-ticker")], config).await?;
    let mut events = device.plugin_events();
    let app = node_with("app", &[]).await?;
    device.swap_plugin(5, &common::plugin("test-ticker")).await?;
    for attempt in 0..2 {
        let session = fogconnect::StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 5).await?);
        match session.command(&b"panic"[..], WAIT).await {
            Err(fogconnect::StreamError::Closed(reason)) => assert!(reason.contains("failed"), "{reason}"),
            other => bail!("expected the crash to close the session (attempt {attempt}), got {other:?}"),
        }
        eventually("serving again", || {
            device.services().iter().any(|s| s.service == 5 && s.state == fogconnect::PluginRunState::Running)
        })
        .await?;
    }
    let rolled_back = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(fogconnect::PluginEvent::RolledBack { service, .. }) => break Ok(service),
                Ok(fogconnect::PluginEvent::Disabled { .. }) => break Err(anyhow::anyhow!("disabled instead")),
                Ok(_) => continue,
                Err(e) => break Err(anyhow::anyhow!("events: {e}")),
            }
        }
    })
    .await??;
    assert_eq!(rolled_back, 5);
    let info = device.services().into_iter().find(|s| s.service == 5).context("service 5")?;
    assert_eq!((info.generation, info.crashes, info.state), (3, 2, fogconnect::PluginRunState::Running));
    let session = fogconnect::StreamSession::new(app.connect(device.local_addr(), Transport::Quic, 5).await?);
    let mut stream = session.open("after").await?;
    assert_eq!(tick(&mut stream).await?, 0, "the rolled-back generation streams");
    Ok(())
}

#[tokio::test]
async fn a_swapped_in_plugin_that_keeps_crashing_is_rolled_back() -> anyhow::Result<()> {
    let config = fogconnect::NodeConfig {
        crash_policy: fogconnect::CrashPolicy { max_crashes: 1, ..Default::default() },
        ..common::config()
    };
    let device = common::node_with_config("device", &[(SERVICE, "test-echo-v1")], config).await?;
    let mut events = device.plugin_events();
    let app = node_with("app", &[]).await?;
    device.swap_plugin(SERVICE, &common::plugin("test-panic")).await?;
    for attempt in 0..2 {
        let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
        assert_eq!(common::ask(&mut conn, "echo").await?, "echo", "the panicking build serves (attempt {attempt})");
        conn.send(&b"panic"[..])?;
        let reason = common::closed_within(&mut conn, WAIT).await?;
        assert_eq!(reason.kind, fogconnect::CloseKind::Error);
        eventually("serving again", || {
            device.services().iter().any(|s| s.service == SERVICE && s.state == fogconnect::PluginRunState::Running)
        })
        .await?;
    }
    let rolled_back = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(fogconnect::PluginEvent::RolledBack { service, message }) => break Ok((service, message)),
                Ok(fogconnect::PluginEvent::Disabled { .. }) => break Err(anyhow::anyhow!("disabled instead")),
                Ok(_) => continue,
                Err(e) => break Err(anyhow::anyhow!("events: {e}")),
            }
        }
    })
    .await??;
    assert_eq!(rolled_back.0, SERVICE);
    assert!(rolled_back.1.contains("test plugin asked to panic"), "{}", rolled_back.1);
    let info = device.services().into_iter().find(|s| s.service == SERVICE).context("service")?;
    assert_eq!((info.name.as_str(), info.generation), ("test_echo_v1", 3));
    let mut conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    assert_eq!(common::ask(&mut conn, "back").await?, "v1:back");
    Ok(())
}
