//! Signaling: registration, presence, connect by id, refusals of bad input,
//! many clients, server restart, and identity pinning.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::signal::Raw;
use common::{WAIT, ask, closed_within, config};
use fogconnect::signal::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{
    CloseKind, ConnectError, ConnectionActivity, NetworkEvent, Node, NodeConfig, NodeEvent, RefuseCode, Transport,
};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"signaling test secret";

fn token_for(id: &str) -> String {
    token::issue(SECRET, id, u64::MAX / 2)
}

async fn server() -> anyhow::Result<SignalServer> {
    Ok(SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?)
}

async fn node(server_url: &str, id: &str, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    node_with(server_url, id, plugins, config()).await
}

async fn node_with(server_url: &str, id: &str, plugins: &[(u8, &str)], config: NodeConfig) -> anyhow::Result<Node> {
    let mut builder = Node::builder().config(config).node_id(id).signal(server_url, token_for(id));
    for (service, name) in plugins {
        builder = builder.plugin(*service, common::plugin(name));
    }
    let node = builder.start().await?;
    node.registered(WAIT).await?;
    Ok(node)
}

#[tokio::test]
async fn register_list_and_presence() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let (mut watcher, reply) = Raw::register(&url, "watcher", &token_for("watcher")).await?;
    assert_eq!(
        reply,
        ServerMessage::Registered {
            id: "watcher".into(),
            version: PROTOCOL_VERSION,
            relays: Vec::new(),
            stun: Vec::new()
        }
    );
    watcher.send(&ClientMessage::Subscribe).await?;
    watcher.ping(1).await?;
    let a = node(&url, "node-a", &[]).await?;
    assert_eq!(watcher.recv().await?, ServerMessage::Presence { id: "node-a".into(), online: true });
    let b = node(&url, "node-b", &[]).await?;
    assert_eq!(watcher.recv().await?, ServerMessage::Presence { id: "node-b".into(), online: true });
    assert_eq!(a.peers().await?, vec!["node-a", "node-b", "watcher"]);
    b.shutdown().await;
    assert_eq!(watcher.recv().await?, ServerMessage::Presence { id: "node-b".into(), online: false });
    assert_eq!(a.peers().await?, vec!["node-a", "watcher"]);
    a.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn connect_by_id_both_ways() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let device = node(&url, "ee:34:a1:44:2c:1c", &[(1, "demo"), (3, "test-probe")]).await?;
    let app = node(&url, "app", &[(0, "echo")]).await?;
    let mut conn = app.connect_peer("ee:34:a1:44:2c:1c", Transport::Quic, 1).await?;
    assert_eq!(conn.peer_id(), "ee:34:a1:44:2c:1c");
    let checks = conn.traversal().context("the first connect runs connectivity checks")?;
    assert_eq!(checks.selected.remote, conn.remote_addr());
    assert_eq!(ask(&mut conn, "I am fog data!").await?, "I know!");
    // The other way, from a plugin on the device: connect-peer by id.
    let mut probe = app.connect_peer("ee:34:a1:44:2c:1c", Transport::Quic, 3).await?;
    // A second connect rides the live link: no signaling, no checks.
    assert!(probe.traversal().is_none());
    assert_eq!(probe.remote_addr(), conn.remote_addr());
    assert_eq!(ask(&mut probe, "dial app 0 back-by-id").await?, "dialling");
    let log = common::ask_until(&mut probe, "dialed", |l| l.contains("reply:back-by-id")).await?;
    ensure!(log.contains("connected:app:0x1"), "{log}");
    // Refusals come back with their codes (here over the live link).
    match app.connect_peer("ee:34:a1:44:2c:1c", Transport::Quic, 9).await {
        Err(ConnectError::Refused { code: RefuseCode::NoSuchService, message }) => {
            assert_eq!(message, "no such service: 9")
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    // Without a link, the refusal travels back through signaling.
    let fresh = node(&url, "app-2", &[]).await?;
    match fresh.connect_peer("ee:34:a1:44:2c:1c", Transport::Quic, 9).await {
        Err(ConnectError::Refused { code: RefuseCode::NoSuchService, message }) => {
            assert_eq!(message, "no such service: 9")
        }
        other => bail!("expected a refusal through signaling, got {other:?}"),
    }
    fresh.shutdown().await;
    match app.connect_peer("nobody", Transport::Quic, 1).await {
        Err(ConnectError::Signal(message)) => ensure!(message.contains("not online"), "{message}"),
        other => bail!("expected a signaling error, got {other:?}"),
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_credentials_and_hijacks_are_refused() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let victim = node(&url, "victim", &[(1, "demo")]).await?;
    // Someone else's token, a forged one, an expired one, garbage.
    let expired = token::issue(SECRET, "victim", 1);
    let foreign = token::issue(b"another secret entirely", "victim", u64::MAX / 2);
    for bad in [token_for("attacker"), foreign, expired, "garbage".to_string()] {
        let (mut raw, reply) = Raw::register(&url, "victim", &bad).await?;
        match reply {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::Unauthorized.code()),
            other => bail!("hijack with {bad:?} got {other:?}"),
        }
        // Not registered: nothing can be done with the session.
        raw.send(&ClientMessage::List).await?;
        raw.expect_error(ErrorCode::NotRegistered).await?;
    }
    // The victim is still registered and reachable.
    let app = node(&url, "app", &[]).await?;
    let mut conn = app.connect_peer("victim", Transport::Quic, 1).await?;
    assert_eq!(ask(&mut conn, "still me?").await?, "I know!");
    // A node with a bad token is told so at once.
    let impostor =
        Node::builder().config(config()).node_id("victim").signal(&url, token_for("attacker")).start().await?;
    match impostor.registered(WAIT).await {
        Err(ConnectError::Signal(message)) => ensure!(message.contains("not valid for this id"), "{message}"),
        other => bail!("impostor registered: {other:?}"),
    }
    impostor.shutdown().await;
    app.shutdown().await;
    victim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_second_login_replaces_the_first() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let (mut first, _) = Raw::register(&url, "dup", &token_for("dup")).await?;
    let (mut second, reply) = Raw::register(&url, "dup", &token_for("dup")).await?;
    assert_eq!(
        reply,
        ServerMessage::Registered { id: "dup".into(), version: PROTOCOL_VERSION, relays: Vec::new(), stun: Vec::new() }
    );
    ensure!(matches!(first.recv().await?, ServerMessage::Replaced { .. }));
    second.ping(7).await?;
    assert_eq!(server.registered(), 1);
    Ok(())
}

#[tokio::test]
async fn oversize_and_malformed_input_get_their_codes_and_others_keep_working() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let (mut bystander, _) = Raw::register(&url, "bystander", &token_for("bystander")).await?;
    let (mut sender, _) = Raw::register(&url, "sender", &token_for("sender")).await?;
    sender.send_text(format!(r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#, "x".repeat(20_000))).await?;
    sender.expect_error(ErrorCode::TooLarge).await?;
    for garbage in ["{", "[1,2]", r#"{"type":"launch-missiles"}"#, r#"{"type":"connect","to":"x"}"#] {
        sender.send_text(garbage.to_string()).await?;
        sender.expect_error(ErrorCode::BadRequest).await?;
    }
    sender.0.send(Message::binary(vec![1u8, 2, 3])).await?;
    sender.expect_error(ErrorCode::BadRequest).await?;
    // The same session still works, and so does everyone else's.
    sender.ping(2).await?;
    bystander.ping(3).await?;
    // A message over the hard limit closes only that session.
    sender.send_text("y".repeat(100_000)).await?;
    sender.expect_error(ErrorCode::TooLarge).await?;
    bystander.ping(4).await?;
    // Other versions are refused with their code.
    let mut old = Raw::connect(&url).await?;
    old.send(&ClientMessage::Register { version: 99, id: "old".into(), token: token_for("old") }).await?;
    old.expect_error(ErrorCode::VersionMismatch).await?;
    // Unknown paths are not served.
    let wrong = tokio_tungstenite::connect_async(format!("ws://{}/other", server.local_addr())).await;
    ensure!(wrong.is_err(), "path /other was served");
    Ok(())
}

#[tokio::test]
async fn rate_limit_and_idle_timeout_are_enforced() -> anyhow::Result<()> {
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec());
    config.rate_per_second = 1;
    config.rate_burst = 5;
    config.idle_timeout = Duration::from_millis(500);
    let server = SignalServer::start(config).await?;
    let (mut raw, _) = Raw::register(&server.url(), "chatty", &token_for("chatty")).await?;
    for nonce in 0..10 {
        raw.send(&ClientMessage::Ping { nonce }).await?;
    }
    let mut limited = 0;
    for _ in 0..10 {
        if let ServerMessage::Error { code, .. } = raw.recv().await?
            && code == ErrorCode::RateLimited.code()
        {
            limited += 1;
        }
    }
    ensure!(limited >= 5, "only {limited} of 10 rate-limited");
    // Silence ends the session with its code.
    raw.expect_error(ErrorCode::IdleTimeout).await?;
    Ok(())
}

#[tokio::test]
async fn a_thousand_clients_register_concurrently() -> anyhow::Result<()> {
    // All from 127.0.0.1: capacity is tested here, not the per-address
    // connection rate.
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec());
    config.connect_rate_per_ip = 1_000_000;
    let server = SignalServer::start(config).await?;
    let url = server.url();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let url = url.clone();
        tasks.spawn(async move {
            let id = format!("client-{i:04}");
            let (raw, reply) = Raw::register(&url, &id, &token_for(&id)).await?;
            ensure!(
                reply
                    == ServerMessage::Registered {
                        id: id.clone(),
                        version: PROTOCOL_VERSION,
                        relays: Vec::new(),
                        stun: Vec::new()
                    },
                "{reply:?}"
            );
            anyhow::Ok(raw)
        });
    }
    let mut clients = Vec::new();
    while let Some(result) = tasks.join_next().await {
        clients.push(result??);
    }
    assert_eq!(server.registered(), 1000);
    let mut last = clients.pop().context("no clients")?;
    last.send(&ClientMessage::List).await?;
    match last.recv().await? {
        ServerMessage::Peers { peers } => assert_eq!(peers.len(), 1000),
        other => bail!("expected peers, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn nodes_re_register_after_a_server_restart_and_connections_keep_flowing() -> anyhow::Result<()> {
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let start = || SignalServer::start(SignalServerConfig::new(addr, SECRET.to_vec()));
    let server = start().await?;
    let url = server.url();
    let fast = NodeConfig { keep_alive_interval: Duration::from_millis(200), keep_alive_attempts: 5, ..config() };
    let device = node_with(&url, "device", &[(0, "echo")], fast.clone()).await?;
    let app = node_with(&url, "app", &[], fast).await?;
    let mut conn = app.connect_peer("device", Transport::Quic, 0).await?;
    assert_eq!(ask(&mut conn, "before").await?, "before");
    let mut presence = app.presence().await?;
    let mut events = app.events();
    server.shutdown();
    drop(server);
    // Signaling is down: the P2P connection does not care.
    let mut i = 0;
    while app.signal_status() == Some(fogconnect::signal::client::SignalStatus::Registered) {
        assert_eq!(ask(&mut conn, &format!("during {i}")).await?, format!("during {i}"));
        i += 1;
        ensure!(i < 10_000, "the node never noticed the server was gone");
    }
    assert_eq!(ask(&mut conn, "while down").await?, "while down");
    let server = start().await?;
    device.registered(WAIT).await?;
    app.registered(WAIT).await?;
    assert_eq!(ask(&mut conn, "after").await?, "after");
    // The node's events said so: the session was lost, then up again.
    let mut signal_events = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            NodeEvent::SignalLost { reason } => signal_events.push(format!("lost: {reason}")),
            NodeEvent::SignalUp => signal_events.push("up".to_string()),
            _ => {}
        }
    }
    ensure!(
        signal_events.len() == 2 && signal_events[0].starts_with("lost: ") && signal_events[1] == "up",
        "{signal_events:?}"
    );
    assert_eq!(app.peers().await?, vec!["app", "device"]);
    let mut again = app.connect_peer("device", Transport::Quic, 0).await?;
    assert_eq!(ask(&mut again, "new connection").await?, "new connection");
    // The presence subscription was renewed with the new session.
    let late = node(&url, "late", &[]).await?;
    loop {
        let event = tokio::time::timeout(WAIT, presence.recv()).await??;
        if event.id == "late" {
            assert!(event.online);
            break;
        }
    }
    late.shutdown().await;
    app.shutdown().await;
    device.shutdown().await;
    drop(server);
    Ok(())
}

#[tokio::test]
async fn a_liar_presenting_another_certificate_is_refused() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let device = node(&url, "device", &[(1, "demo")]).await?;
    let app = node(&url, "app", &[(1, "demo")]).await?;
    // device learns app's fingerprint through a connect by id.
    let mut conn = app.connect_peer("device", Transport::Quic, 1).await?;
    assert_eq!(ask(&mut conn, "hello").await?, "I know!");
    // A liar without app's key claims to be app, by address.
    let liar = Node::builder().config(config()).node_id("app").start().await?;
    match liar.connect(device.local_addr(), Transport::Quic, 1).await {
        Err(ConnectError::Refused { message, .. }) => ensure!(message.contains("another certificate"), "{message}"),
        other => bail!("the liar got {other:?}"),
    }
    // The real app still gets through.
    assert_eq!(ask(&mut conn, "still here").await?, "I know!");
    liar.shutdown().await;
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_closed_with_timeout() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fogconnect"))
        .args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--keep-alive-ms", "100", "--keep-alive-attempts", "5"])
        .arg("--plugin")
        .arg(format!("0={}", common::plugin("echo").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().context("stdout")?;
    let guard = Kill(child);
    let first = BufReader::new(stdout).lines().next().context("no output")??;
    let addr: SocketAddr = first.trim_start_matches("listening on ").parse()?;
    let client = Node::builder()
        .config(NodeConfig { keep_alive_interval: Duration::from_millis(100), keep_alive_attempts: 5, ..config() })
        .start()
        .await?;
    let mut conn = client.connect(addr, Transport::Quic, 0).await?;
    assert_eq!(ask(&mut conn, "alive").await?, "alive");
    // Freeze the peer: it stops answering without closing anything.
    let status = std::process::Command::new("kill").args(["-STOP", &guard.0.id().to_string()]).status()?;
    ensure!(status.success());
    let started = std::time::Instant::now();
    let reason = closed_within(&mut conn, WAIT).await?;
    assert_eq!(reason.kind, CloseKind::Timeout, "{reason}");
    ensure!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    client.shutdown().await;
    drop(guard);
    Ok(())
}

/// A peer killed with SIGKILL: the connection first reports its link
/// silent, then ends with reason timeout within keep-alive interval ×
/// attempts (3 s here); the node's event stream says the same with the
/// peer's id.
#[tokio::test]
async fn a_killed_peer_is_reported_silent_then_timed_out() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let server = server().await?;
    let url = server.url();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fogconnect"))
        .args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--id", "doomed", "--signal", &url])
        .args(["--token", &token_for("doomed"), "--keep-alive-ms", "500", "--keep-alive-attempts", "6"])
        .arg("--plugin")
        .arg(format!("0={}", common::plugin("echo").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut guard = common::Running(child);
    // Read apart from the runtime, which serves the signaling server.
    let (registered, _lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        (lines.any(|l| l.is_ok_and(|l| l.starts_with("registered with"))), lines)
    })
    .await?;
    ensure!(registered, "the node did not register");
    let config = NodeConfig { keep_alive_interval: Duration::from_millis(500), keep_alive_attempts: 6, ..config() };
    let app = node_with(&url, "survivor", &[], config).await?;
    let mut conn = app.connect_peer("doomed", Transport::Quic, 0).await?;
    assert_eq!(ask(&mut conn, "alive").await?, "alive");
    let mut events = app.events();
    guard.0.kill()?;
    let killed = std::time::Instant::now();
    // Keep a question open, as an application would.
    let _ = conn.send(&b"anyone?"[..]);
    let mut seen = Vec::new();
    let reason = loop {
        match tokio::time::timeout(WAIT, conn.next_activity()).await? {
            ConnectionActivity::Network(event) => seen.push(event),
            ConnectionActivity::Message(m) => bail!("unexpected message {m:?}"),
            ConnectionActivity::Closed(reason) => break reason,
        }
    };
    let took = killed.elapsed();
    assert_eq!(reason.kind, CloseKind::Timeout, "{reason}");
    ensure!(took <= Duration::from_millis(3_000 + 1_000), "timeout after {took:?}, keep-alive 500 ms × 6");
    ensure!(matches!(seen.as_slice(), [NetworkEvent::LinkSilent { .. }]), "events before the end: {seen:?}");
    let mut link_events = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let NodeEvent::Link { peer, event } = event {
            link_events.push((peer, event));
        }
    }
    ensure!(
        matches!(link_events.as_slice(), [(peer, NetworkEvent::LinkSilent { .. })] if peer == "doomed"),
        "{link_events:?}"
    );
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn signaling_over_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec());
    config.tls = Some((cert.clone(), key));
    let server = SignalServer::start(config).await?;
    let url = format!("wss://localhost:{}/ws", server.local_addr().port());
    let device = Node::builder()
        .config(common::config())
        .node_id("device")
        .plugin(1, common::plugin("demo"))
        .signal(&url, token_for("device"))
        .signal_ca(&cert)
        .start()
        .await?;
    device.registered(WAIT).await?;
    let app = Node::builder()
        .config(common::config())
        .node_id("app")
        .signal(&url, token_for("app"))
        .signal_ca(&cert)
        .start()
        .await?;
    app.registered(WAIT).await?;
    let mut conn = app.connect_peer("device", Transport::Quic, 1).await?;
    assert_eq!(ask(&mut conn, "over tls").await?, "I know!");
    // Without trusting the certificate, no registration.
    let untrusting = Node::builder().config(common::config()).node_id("x").signal(&url, token_for("x")).start().await?;
    ensure!(untrusting.registered(Duration::from_millis(500)).await.is_err());
    untrusting.shutdown().await;
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_connect_in_flight_when_signaling_is_lost_fails_with_timeout_at_once() -> anyhow::Result<()> {
    let server = server().await?;
    let url = server.url();
    let (mut silent, _) = Raw::register(&url, "silent", &token_for("silent")).await?;
    let app = node(&url, "app", &[]).await?;
    let pending = tokio::spawn({
        let app = app.clone();
        async move { app.connect_peer("silent", Transport::Quic, 0).await.map(|_| ()) }
    });
    // The request reached the silent peer, which never answers.
    ensure!(matches!(silent.recv().await?, ServerMessage::Incoming { .. }));
    let started = std::time::Instant::now();
    server.shutdown();
    match tokio::time::timeout(WAIT, pending).await?? {
        Err(e @ ConnectError::SignalTimeout(_)) => {
            ensure!(e.close_reason().kind == CloseKind::Timeout, "{e}");
            ensure!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        }
        other => bail!("expected a signaling timeout, got {other:?}"),
    }
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_full_server_refuses_more_clients() -> anyhow::Result<()> {
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec());
    config.max_clients = 2;
    let server = SignalServer::start(config).await?;
    let (mut first, _) = Raw::register(&server.url(), "one", &token_for("one")).await?;
    let (_second, _) = Raw::register(&server.url(), "two", &token_for("two")).await?;
    let mut third = Raw::connect(&server.url()).await?;
    third.expect_error(ErrorCode::ServerFull).await?;
    first.ping(1).await?;
    Ok(())
}

/// A signaling server configured with a relay hands every node that
/// registers time-limited credentials for it (coturn's use-auth-secret
/// scheme), and the node allocates on the relay with them.
#[tokio::test]
async fn signaling_hands_out_relay_credentials_and_nodes_allocate_with_them() -> anyhow::Result<()> {
    const RELAY_SECRET: &str = "signaling relay secret 0123456789";
    let port = common::turn::free_port()?;
    let _relay = common::turn::start_bare_fogconnect_relay(port, &["--auth-secret", RELAY_SECRET])?;
    let url = format!("turn:127.0.0.1:{port}");
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec());
    config.relays = Some(fogconnect::signal::server::RelayGrant {
        urls: vec![url.clone()],
        secret: RELAY_SECRET.as_bytes().to_vec(),
        ttl: Duration::from_secs(3600),
    });
    let server = SignalServer::start(config).await?;
    let signal_url = format!("ws://{}/ws", server.local_addr());
    let node = node(&signal_url, "relayed-node", &[]).await?;

    let granted = node.signal_relays();
    ensure!(granted.len() == 1 && granted[0].url == url, "{granted:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let (expiry, id) = granted[0].username.split_once(':').context("user name <expiry>:<id>")?;
    let expiry: u64 = expiry.parse()?;
    ensure!(id == "relayed-node" && (now + 3500..=now + 3700).contains(&expiry), "{granted:?}");
    ensure!(granted[0].expires == expiry, "{granted:?}");
    let password = fogconnect::relay::server::shared_secret_password(RELAY_SECRET.as_bytes(), &granted[0].username);
    ensure!(granted[0].password == password, "password not the HMAC of the user name");

    let mut status = node.relay_status().context("a node with signaling has a relay agent")?;
    let allocated =
        tokio::time::timeout(WAIT, status.wait_for(|s| matches!(s, fogconnect::RelayStatus::Allocated { .. })))
            .await
            .context("no allocation in time")??
            .clone();
    let fogconnect::RelayStatus::Allocated { relayed, .. } = allocated else { bail!("not allocated") };
    ensure!(relayed.ip().is_loopback(), "{relayed}");
    node.shutdown().await;
    server.shutdown();
    Ok(())
}

/// Nodes ask for fresh relay credentials before theirs expire, over the
/// same signaling session.
#[tokio::test]
async fn relay_credentials_are_renewed_before_they_expire() -> anyhow::Result<()> {
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec());
    config.relays = Some(fogconnect::signal::server::RelayGrant {
        urls: vec!["turn:127.0.0.1:3478".into()],
        secret: b"renewal secret 0123456789".to_vec(),
        ttl: Duration::from_secs(4),
    });
    let server = SignalServer::start(config).await?;
    let client = fogconnect::signal::client::SignalClient::start(
        fogconnect::signal::client::SignalClientConfig::new(
            format!("ws://{}/ws", server.local_addr()),
            "renewing",
            token_for("renewing"),
        ),
        tokio::sync::mpsc::channel(1).0,
    )?;
    client.registered(WAIT).await?;
    let mut relays = client.relays();
    let first = relays.borrow_and_update().first().map(|r| r.expires).context("credentials at registration")?;
    // Renewed at half of the 4 s: a later expiry, the session unchanged.
    tokio::time::timeout(WAIT, relays.wait_for(|r| r.first().is_some_and(|r| r.expires > first)))
        .await
        .context("credentials not renewed")??;
    ensure!(client.status() == fogconnect::signal::client::SignalStatus::Registered);
    client.shutdown();
    server.shutdown();
    Ok(())
}
