//! The sandbox: runaway, memory-hungry, panicking and escaping plugins are
//! contained, and the node keeps serving.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use common::{WAIT, ask, closed_within, config, node_with, node_with_config};
use fogconnect::{CloseKind, CrashPolicy, NodeConfig, PluginEvent, PluginLimits, PluginRunState, Transport};
use tokio::sync::broadcast;

fn limits(deadline_ms: u64, memory_mb: usize) -> NodeConfig {
    NodeConfig {
        plugin_limits: PluginLimits {
            call_deadline: Duration::from_millis(deadline_ms),
            memory_bytes: memory_mb << 20,
            ..PluginLimits::default()
        },
        ..config()
    }
}

async fn next_event(events: &mut broadcast::Receiver<PluginEvent>) -> anyhow::Result<PluginEvent> {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Ok(event)) => Ok(event),
        Ok(Err(e)) => bail!("event stream: {e}"),
        Err(_) => bail!("no plugin event within {WAIT:?}"),
    }
}

#[tokio::test]
async fn an_infinite_loop_is_interrupted_at_its_deadline_while_others_serve() -> anyhow::Result<()> {
    let deadline = Duration::from_millis(1500);
    let server = node_with_config("server", &[(0, "echo"), (2, "test-spin")], limits(1500, 64)).await?;
    let client = node_with("client", &[]).await?;
    let mut events = server.plugin_events();
    let mut spin = client.connect(server.local_addr(), Transport::Quic, 2).await?;
    assert_eq!(ask(&mut spin, "warm-up").await?, "warm-up");
    let started = Instant::now();
    spin.send(b"spin".to_vec())?;
    // While service 2 spins, service 0 answers, and does so before the spin
    // connection ends.
    let mut echo = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    for i in 0..20 {
        let text = format!("meanwhile {i}");
        assert_eq!(ask(&mut echo, &text).await?, text);
    }
    ensure!(started.elapsed() < deadline, "echo exchange took the whole deadline; cannot show concurrency");
    let reason = closed_within(&mut spin, WAIT).await?;
    let elapsed = started.elapsed();
    assert_eq!(reason.kind, CloseKind::Error, "{reason}");
    ensure!(reason.message.contains("deadline of 1500 ms"), "{reason}");
    ensure!(elapsed >= deadline - Duration::from_millis(20), "interrupted too early: {elapsed:?}");
    ensure!(elapsed < deadline + Duration::from_secs(1), "interrupted too late: {elapsed:?}");
    match next_event(&mut events).await? {
        PluginEvent::Crashed { service: 2, message, .. } => ensure!(message.contains("deadline")),
        other => bail!("unexpected {other:?}"),
    }
    assert_eq!(next_event(&mut events).await?, PluginEvent::Restarted { service: 2 });
    // Restarted: the service answers again.
    let mut again = client.connect(server.local_addr(), Transport::Quic, 2).await?;
    assert_eq!(ask(&mut again, "back").await?, "back");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unbounded_memory_growth_hits_the_cap() -> anyhow::Result<()> {
    let server = node_with_config("server", &[(0, "echo"), (4, "test-memhog")], limits(5000, 16)).await?;
    let client = node_with("client", &[]).await?;
    let mut hog = client.connect(server.local_addr(), Transport::Quic, 4).await?;
    hog.send(b"grow".to_vec())?;
    let reason = closed_within(&mut hog, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Error, "{reason}");
    ensure!(reason.message.contains("memory cap of 16777216 bytes exceeded"), "{reason}");
    let mut echo = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    assert_eq!(ask(&mut echo, "unaffected").await?, "unaffected");
    let mut again = client.connect(server.local_addr(), Transport::Quic, 4).await?;
    assert_eq!(ask(&mut again, "back").await?, "back");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_panicking_plugin_is_isolated_and_restarted() -> anyhow::Result<()> {
    let server = node_with("server", &[(0, "echo"), (8, "test-panic")]).await?;
    let client = node_with("client", &[]).await?;
    let mut events = server.plugin_events();
    // Two connections on the panicking service: both end when it crashes.
    let mut bystander = client.connect(server.local_addr(), Transport::Quic, 8).await?;
    assert_eq!(ask(&mut bystander, "hello").await?, "hello");
    let mut victim = client.connect(server.local_addr(), Transport::Quic, 8).await?;
    let mut echo = client.connect(server.local_addr(), Transport::Quic, 0).await?;
    victim.send(b"panic".to_vec())?;
    let reason = closed_within(&mut victim, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Error);
    ensure!(reason.message.contains("plugin of service 8 failed: trap"), "{reason}");
    // The guest's panic message is quoted from its standard error.
    ensure!(reason.message.contains("test plugin asked to panic"), "{reason}");
    let reason = closed_within(&mut bystander, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Error, "{reason}");
    ensure!(matches!(next_event(&mut events).await?, PluginEvent::Crashed { service: 8, crashes: 1, .. }));
    assert_eq!(next_event(&mut events).await?, PluginEvent::Restarted { service: 8 });
    assert_eq!(ask(&mut echo, "other services unaffected").await?, "other services unaffected");
    let mut fresh = client.connect(server.local_addr(), Transport::Quic, 8).await?;
    assert_eq!(ask(&mut fresh, "restarted").await?, "restarted");
    let info = server.services().into_iter().find(|s| s.service == 8);
    ensure!(
        matches!(info, Some(ref s) if s.crashes == 1 && s.restarts == 1 && s.state == PluginRunState::Running),
        "{info:?}"
    );
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn exhausting_the_crash_budget_disables_the_service() -> anyhow::Result<()> {
    let policy = CrashPolicy { max_crashes: 2, initial_backoff: Duration::from_millis(1), ..CrashPolicy::default() };
    let server =
        node_with_config("server", &[(8, "test-panic")], NodeConfig { crash_policy: policy, ..config() }).await?;
    let client = node_with("client", &[]).await?;
    let mut events = server.plugin_events();
    for _ in 0..3 {
        let mut conn = client.connect(server.local_addr(), Transport::Quic, 8).await?;
        conn.send(b"panic".to_vec())?;
        closed_within(&mut conn, WAIT).await?;
    }
    loop {
        if let PluginEvent::Disabled { service: 8, .. } = next_event(&mut events).await? {
            break;
        }
    }
    match client.connect(server.local_addr(), Transport::Quic, 8).await {
        Err(fogconnect::ConnectError::Refused { code, message }) => {
            assert_eq!(code, fogconnect::RefuseCode::ServiceUnavailable);
            ensure!(message.contains("disabled"), "{message}");
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn file_socket_and_environment_access_is_denied() -> anyhow::Result<()> {
    let server = node_with("server", &[(9, "test-escape")]).await?;
    let client = node_with("client", &[]).await?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let udp_target = std::net::UdpSocket::bind("127.0.0.1:0")?;
    udp_target.set_nonblocking(true)?;
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 9).await?;
    let secret = std::env::temp_dir().join(format!("fogconnect-secret-{}", std::process::id()));
    std::fs::write(&secret, b"secret")?;
    let requests = [
        format!("file:{}", secret.display()),
        "file:/etc/passwd".to_string(),
        format!("tcp:{}", listener.local_addr()?),
        format!("udp:{}", udp_target.local_addr()?),
        "env".to_string(),
    ];
    for request in &requests {
        let reply = ask(&mut conn, request).await?;
        ensure!(reply.starts_with("denied: "), "{request} -> {reply}");
    }
    std::fs::remove_file(&secret)?;
    // Nothing reached the listeners.
    assert_eq!(listener.accept().map_err(|e| e.kind()).err(), Some(ErrorKind::WouldBlock));
    let mut buf = [0u8; 16];
    assert_eq!(udp_target.recv_from(&mut buf).map_err(|e| e.kind()).err(), Some(ErrorKind::WouldBlock));
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// Copies a built plugin into `dir` as `<name>.wasm` with `manifest` beside
/// it as `<name>.toml`, and returns the wasm's path.
fn with_manifest(
    dir: &std::path::Path,
    plugin: &str,
    name: &str,
    manifest: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let wasm = dir.join(format!("{name}.wasm"));
    std::fs::copy(common::plugin(plugin), &wasm)?;
    std::fs::write(dir.join(format!("{name}.toml")), manifest)?;
    Ok(wasm)
}

#[tokio::test]
async fn a_manifest_beside_the_plugin_sets_its_own_limits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spin = with_manifest(dir.path(), "test-spin", "spin", "call-deadline-ms = 50\n")?;
    let probe = with_manifest(dir.path(), "test-probe", "probe", "connect-peer = false\nmemory-mib = 16\n")?;
    let broken = with_manifest(dir.path(), "echo", "broken", "memory-mb = 16\n")?;
    // The node's own limits are generous: the manifests tighten them.
    let server = node_with_config("server", &[(0, "echo")], limits(5_000, 64)).await?;
    server.load_plugin(2, &spin).await?;
    server.load_plugin(3, &probe).await?;
    match server.load_plugin(4, &broken).await {
        Err(fogconnect::NodeError::Plugin {
            service: 4,
            source: fogconnect::PluginError::Manifest { path, message },
        }) => {
            ensure!(path.ends_with("broken.toml") && message.contains("memory-mb"), "{path}: {message}")
        }
        other => bail!("expected the manifest to be refused, got {other:?}"),
    }
    let services = server.services();
    let limits_of = |service: u8| services.iter().find(|s| s.service == service).map(|s| s.limits);
    let default = PluginLimits { call_deadline: Duration::from_millis(5_000), ..PluginLimits::default() };
    assert_eq!(limits_of(0), Some(default), "no manifest: the node's limits");
    assert_eq!(limits_of(2), Some(PluginLimits { call_deadline: Duration::from_millis(50), ..default }));
    assert_eq!(
        limits_of(3),
        Some(PluginLimits { memory_bytes: 16 << 20, allow_connect: false, ..default }),
        "the keys not given keep the node's values"
    );
    assert_eq!(limits_of(4), None, "a refused manifest loads nothing");

    let client = node_with("client", &[]).await?;
    let mut spinning = client.connect(server.local_addr(), Transport::Quic, 2).await?;
    assert_eq!(ask(&mut spinning, "warm-up").await?, "warm-up");
    spinning.send(b"spin".to_vec())?;
    let reason = closed_within(&mut spinning, WAIT).await?;
    ensure!(reason.message.contains("deadline of 50 ms"), "{reason}");

    let mut probing = client.connect(server.local_addr(), Transport::Quic, 3).await?;
    let reply = ask(&mut probing, &format!("dial {} 0 hello", server.local_addr())).await?;
    assert_eq!(reply, "dial error: ConnectError::NotAllowed");
    Ok(())
}
