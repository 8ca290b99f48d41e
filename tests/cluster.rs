//! Signaling as several servers over a real NATS cluster: three
//! `nats-server` processes routed on loopback (JetStream on each) and
//! three `fogconnect signal --nats` processes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::nats::NatsCluster;
use common::server::ServerProcess;
use common::signal::Raw;
use common::turn::free_port;
use common::{WAIT, ask, config, http_get, sample};
use fogconnect::signal::protocol::{ClientMessage, ErrorCode, ServerMessage};
use fogconnect::signal::token;
use fogconnect::{Node, NodeEvent, Transport};

const SECRET: &str = "cluster test secret 0123456789";

fn token_for(id: &str) -> String {
    token::issue(SECRET.as_bytes(), id, u64::MAX / 2)
}

/// A signaling server of the cluster, as its own process, with its
/// metrics endpoint.
struct Signal {
    process: ServerProcess,
    metrics: SocketAddr,
}

impl Signal {
    fn start(nats: &NatsCluster) -> anyhow::Result<Self> {
        let urls = nats.urls();
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics_arg = metrics.to_string();
        let args =
            ["signal", "--listen", "127.0.0.1:0", "--nats", &urls, "--nats-replicas", "3", "--metrics", &metrics_arg];
        let process = ServerProcess::start(&args, None, "signaling on ws://", &[("FOGCONNECT_SIGNAL_SECRET", SECRET)])?;
        Ok(Self { process, metrics })
    }

    fn url(&self) -> String {
        self.process.url()
    }

    /// The value of a metric sample, as written with its labels.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (code, text) = http_get(self.metrics, "/metrics")?;
        ensure!(code == 200, "metrics answered {code}");
        sample(&text, name).with_context(|| format!("{name} missing from\n{text}"))
    }
}

/// A cluster of three NATS servers and three signaling servers.
async fn cluster() -> anyhow::Result<(NatsCluster, Vec<Signal>)> {
    let nats = NatsCluster::start(3).await?;
    let servers = (0..3).map(|_| Signal::start(&nats)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok((nats, servers))
}

async fn node(urls: &str, id: &str, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    let mut builder = Node::builder().config(config()).node_id(id).signal(urls, token_for(id));
    for (service, name) in plugins {
        builder = builder.plugin(*service, common::plugin(name));
    }
    let node = builder.start().await?;
    node.registered(WAIT).await?;
    Ok(node)
}

async fn registered(url: &str, id: &str) -> anyhow::Result<Raw> {
    let (raw, reply) = Raw::register(url, id, &token_for(id)).await?;
    ensure!(matches!(reply, ServerMessage::Registered { .. }), "{id}: {reply:?}");
    Ok(raw)
}

/// The next presence event, skipping pongs.
async fn presence(raw: &mut Raw) -> anyhow::Result<(String, bool)> {
    presence_within(raw, WAIT).await
}

/// The next presence event within `limit`, skipping pongs.
async fn presence_within(raw: &mut Raw, limit: Duration) -> anyhow::Result<(String, bool)> {
    let deadline = Instant::now() + limit;
    loop {
        match raw.recv_within(deadline.saturating_duration_since(Instant::now())).await? {
            ServerMessage::Presence { id, online } => return Ok((id, online)),
            ServerMessage::Pong { .. } => continue,
            other => bail!("expected presence, got {other:?}"),
        }
    }
}

/// The peer list as one client sees it.
async fn peer_list(raw: &mut Raw) -> anyhow::Result<Vec<String>> {
    raw.send(&ClientMessage::List).await?;
    loop {
        match raw.recv().await? {
            ServerMessage::Peers { peers } => return Ok(peers),
            ServerMessage::Presence { .. } | ServerMessage::Pong { .. } => continue,
            other => bail!("expected peers, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ids_are_reached_across_servers_with_presence_and_one_peer_list() -> anyhow::Result<()> {
    let (_nats, servers) = cluster().await?;
    let mut watcher = registered(&servers[1].url(), "watcher").await?;
    watcher.send(&ClientMessage::Subscribe).await?;
    watcher.ping(1).await?;
    let device = node(&servers[0].url(), "dev-1", &[(1, "echo")]).await?;
    assert_eq!(presence(&mut watcher).await?, ("dev-1".into(), true));
    let app = node(&servers[2].url(), "app-3", &[]).await?;
    assert_eq!(presence(&mut watcher).await?, ("app-3".into(), true));
    // By id from server 3 to server 1, then over the P2P link.
    let mut conn = app.connect_peer("dev-1", Transport::Quic, 1).await?;
    for i in 0..20 {
        assert_eq!(ask(&mut conn, &format!("hello {i}")).await?, format!("hello {i}"));
    }
    assert_eq!(peer_list(&mut watcher).await?, vec!["app-3", "dev-1", "watcher"]);
    assert_eq!(app.peers().await?, vec!["app-3", "dev-1", "watcher"]);
    // Refusals travel back across servers too.
    match app.connect_peer("dev-1", Transport::Quic, 9).await {
        Err(e) => ensure!(e.to_string().contains("no such service"), "{e}"),
        Ok(_) => bail!("service 9 accepted"),
    }
    match app.connect_peer("nobody", Transport::Quic, 1).await {
        Err(e) => ensure!(e.to_string().contains("not online"), "{e}"),
        Ok(_) => bail!("connected to nobody"),
    }
    device.shutdown().await;
    assert_eq!(presence(&mut watcher).await?, ("dev-1".into(), false));
    assert_eq!(peer_list(&mut watcher).await?, vec!["app-3", "watcher"]);
    // Each server's metrics: NATS up, two other servers heard, the app's
    // server delivered across and refused the unknown peer, the device's
    // server received from across.
    for server in &servers {
        ensure!(server.metric("fogconnect_signal_nats_connected")? == 1.0);
        ensure!(server.metric("fogconnect_signal_cluster_servers")? == 2.0);
    }
    ensure!(servers[2].metric("fogconnect_signal_cluster_messages_total{outcome=\"delivered\"}")? >= 1.0);
    ensure!(servers[0].metric("fogconnect_signal_cluster_messages_total{outcome=\"delivered\"}")? >= 1.0);
    ensure!(servers[2].metric("fogconnect_signal_refusals_total{code=\"unknown-peer\"}")? == 1.0);
    ensure!(servers[0].metric("fogconnect_signal_cluster_messages_total{outcome=\"received\"}")? >= 1.0);
    ensure!(servers[2].metric("fogconnect_signal_sessions")? == 1.0);
    Ok(())
}

#[tokio::test]
async fn a_duplicate_login_elsewhere_replaces_the_older_and_bad_tokens_fail_everywhere() -> anyhow::Result<()> {
    let (_nats, servers) = cluster().await?;
    let mut first = registered(&servers[0].url(), "dev-dup").await?;
    let mut second = registered(&servers[2].url(), "dev-dup").await?;
    match first.recv().await? {
        ServerMessage::Replaced { message } => ensure!(message.contains("another signaling server"), "{message}"),
        other => bail!("expected replaced, got {other:?}"),
    }
    // Messages for the id now reach the newer session.
    let mut caller = registered(&servers[1].url(), "caller").await?;
    caller
        .send(&ClientMessage::Reject { request_id: 7, to: "dev-dup".into(), code: 1, message: "ping".into() })
        .await?;
    match second.recv().await? {
        ServerMessage::Rejected { request_id: 7, from, .. } => ensure!(from == "caller"),
        other => bail!("expected the forwarded message, got {other:?}"),
    }
    for server in &servers {
        let (mut raw, reply) = Raw::register(&server.url(), "dev-x", &token_for("dev-y")).await?;
        match reply {
            ServerMessage::Error { code, .. } => ensure!(code == ErrorCode::Unauthorized.code()),
            other => bail!("bad token accepted: {other:?}"),
        }
        raw.send(&ClientMessage::List).await?;
        raw.expect_error(ErrorCode::NotRegistered).await?;
    }
    Ok(())
}

#[tokio::test]
async fn signaling_survives_a_nats_server_and_degrades_without_all_of_them() -> anyhow::Result<()> {
    let (mut nats, servers) = cluster().await?;
    let mut device = registered(&servers[0].url(), "dev-n").await?;
    let mut app = registered(&servers[2].url(), "app-n").await?;
    let mut n = 0;
    reach_within(&mut app, &mut device, &mut n, WAIT).await?;
    // One NATS server down: the others carry on (after the client moves
    // to another, within a few seconds).
    nats.kill(0);
    reach_within(&mut app, &mut device, &mut n, WAIT).await?;
    // All of NATS down: local sessions stay up; across servers fails at
    // once with the reason.
    nats.kill(1);
    nats.kill(2);
    let mut local = registered(&servers[2].url(), "local-n").await?;
    let deadline = Instant::now() + WAIT;
    loop {
        n += 1;
        let asked = Instant::now();
        match reach(&mut app, &mut device, n).await? {
            Reached::Refused(code, message)
                if code == ErrorCode::Unreachable.code() && message.contains("unavailable") =>
            {
                ensure!(asked.elapsed() < Duration::from_secs(3), "took {:?}", asked.elapsed());
                break;
            }
            // Until the servers notice NATS is gone: delivered, or a
            // request sent as the last NATS server died that timed out
            // ("its signaling server did not answer").
            other if Instant::now() < deadline => tracing_skip(0, format!("{other:?}")),
            other => bail!("expected unreachable, got {other:?}"),
        }
    }
    // Refused at once from now on.
    n += 1;
    let asked = Instant::now();
    let refused = reach(&mut app, &mut device, n).await?;
    ensure!(matches!(refused, Reached::Refused(11, _)), "{refused:?}");
    ensure!(asked.elapsed() < Duration::from_millis(500), "refusal took {:?}", asked.elapsed());
    app.ping(1).await?;
    device.ping(2).await?;
    // The same server still delivers.
    local.send(&ClientMessage::Reject { request_id: 99, to: "app-n".into(), code: 1, message: "local".into() }).await?;
    match app.recv().await? {
        ServerMessage::Rejected { request_id: 99, .. } => {}
        other => bail!("local delivery failed without NATS: {other:?}"),
    }
    // NATS back: across servers again, and the id registered meanwhile is
    // in the directory.
    nats.restart_all().await?;
    reach_within(&mut app, &mut device, &mut n, Duration::from_secs(30)).await?;
    let mut watcher = registered(&servers[1].url(), "watcher-n").await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let peers = peer_list(&mut watcher).await?;
        if peers.contains(&"local-n".to_string()) {
            break;
        }
        ensure!(Instant::now() < deadline, "local-n not in the directory after NATS came back: {peers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// What became of a message sent across servers.
#[derive(Debug)]
enum Reached {
    Delivered,
    Refused(u16, String),
}

/// Sends `dev-n` (registered as `device`) a message numbered `n` from
/// `app` (a `reject`, which the server forwards as it is) and waits for it
/// to arrive or be refused; answers to earlier numbers are skipped.
async fn reach(app: &mut Raw, device: &mut Raw, n: u64) -> anyhow::Result<Reached> {
    app.send(&ClientMessage::Reject { request_id: n, to: "dev-n".into(), code: 1, message: format!("{n}") }).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::select! {
            got = device.recv() => match got? {
                ServerMessage::Rejected { request_id, .. } if request_id == n => return Ok(Reached::Delivered),
                _ => {}
            },
            got = app.recv() => match got? {
                ServerMessage::Error { code, message, request_id: Some(id) } if id == n => return Ok(Reached::Refused(code, message)),
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => bail!("message {n}: neither delivered nor refused within {WAIT:?}"),
        }
    }
}

/// Sends numbered messages until one is delivered, at most `limit`.
async fn reach_within(app: &mut Raw, device: &mut Raw, n: &mut u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        *n += 1;
        match reach(app, device, *n).await? {
            Reached::Delivered => return Ok(()),
            Reached::Refused(code, message) if Instant::now() < deadline => {
                tracing_skip(code, message);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => bail!("not delivered within {limit:?}: {other:?}"),
        }
    }
}

fn tracing_skip(_code: u16, _message: String) {}

#[tokio::test]
async fn the_peers_of_a_killed_server_move_to_another_and_their_links_carry_on() -> anyhow::Result<()> {
    let (_nats, mut servers) = cluster().await?;
    let urls = |first: usize| (0..3).map(|i| servers[(first + i) % 3].url()).collect::<Vec<_>>().join(",");
    let (device_urls, app_urls) = (urls(0), urls(1));
    let device = node(&device_urls, "dev-k", &[(1, "echo")]).await?;
    let app = node(&app_urls, "app-k", &[]).await?;
    let mut conn = app.connect_peer("dev-k", Transport::Quic, 1).await?;
    let mut watcher = registered(&servers[2].url(), "watcher-k").await?;
    watcher.send(&ClientMessage::Subscribe).await?;
    watcher.ping(1).await?;
    // A client on the doomed server that does not come back.
    let _stranded = registered(&servers[0].url(), "stranded-k").await?;
    ensure!(presence(&mut watcher).await? == ("stranded-k".into(), true));
    let mut events = device.events();
    let doomed = servers.remove(0);
    let killed = Instant::now();
    doomed.process.kill();
    // The link carries numbered messages throughout, none lost.
    let mut sent = 0u32;
    let mut lost = false;
    let mut moved = None;
    while moved.is_none() || sent < 200 {
        let message = format!("n{sent}");
        ensure!(ask(&mut conn, &message).await? == message, "message {sent} lost");
        sent += 1;
        while let Ok(event) = events.try_recv() {
            match event {
                NodeEvent::SignalLost { .. } => lost = true,
                NodeEvent::SignalUp if lost && moved.is_none() => moved = Some(killed.elapsed()),
                _ => {}
            }
        }
        let status = device.signal_status();
        tokio::time::sleep(Duration::from_millis(10)).await;
        ensure!(
            killed.elapsed() < Duration::from_secs(20),
            "device not registered again within 20 s (lost: {lost}, now {status:?})"
        );
    }
    let moved = moved.context("never moved")?;
    // The device is reached by id again through its new server.
    let mut again = app.connect_peer("dev-k", Transport::Quic, 1).await?;
    assert_eq!(ask(&mut again, "again").await?, "again");
    // The stranded client is declared offline within the bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, online) = presence_within(&mut watcher, left).await.context("stranded-k never went offline")?;
        if id == "stranded-k" && !online {
            break;
        }
    }
    let offline_after = killed.elapsed();
    ensure!(offline_after < Duration::from_secs(25), "offline only after {offline_after:?}");
    // ...and comes back through another server.
    let _back = registered(&servers[0].url(), "stranded-k").await?;
    loop {
        let (id, online) = presence(&mut watcher).await?;
        if id == "stranded-k" && online {
            break;
        }
    }
    println!("re-registered after {moved:?}; stranded declared offline after {offline_after:?}");
    Ok(())
}

/// A web page signed in with two servers of the cluster (the one that
/// served it first) reaches a device on the other; when its server is
/// killed, the session registers again with the other, the open
/// DataChannel connection carries on, and a new connect by id works.
#[tokio::test]
async fn a_browser_moves_to_another_server_and_keeps_its_connection() -> anyhow::Result<()> {
    let (_nats, mut servers) = cluster().await?;
    let device = node(&servers[1].url(), "dev-web", &[(0, "echo")]).await?;
    let mut browser = common::browser::Browser::launch(&[]).await?;
    let origin = servers[0].process.addr;
    let page = browser.open(&format!("http://{origin}/")).await?;
    let urls = serde_json::to_string(&[servers[0].url(), servers[1].url()])?;
    let token = serde_json::to_string(&token_for("web-c"))?;
    let setup = format!(
        r#"(async () => {{
            window.ask = (conn, text) => new Promise((resolve, reject) => {{
                const timer = setTimeout(() => reject(new Error(`no reply to ${{text}}`)), 10000);
                conn.addEventListener("message", (e) => {{ clearTimeout(timer); resolve(e.detail.text()); }}, {{ once: true }});
                conn.send(text);
            }});
            const fog = await import("/fogconnect.js");
            window.session = await fog.signIn({{ id: "web-c", token: {token}, url: {urls} }});
            window.signaling = [];
            window.session.addEventListener("signaling", (e) => window.signaling.push(e.detail));
            window.conn = await window.session.connect("dev-web", 0);
            return await window.ask(window.conn, "before");
        }})()"#
    );
    ensure!(browser.eval(&page, &setup).await? == "before");
    servers.remove(0).process.kill();
    let after = r#"(async () => {
        const deadline = Date.now() + 10000;
        while (!window.signaling.some((s) => s.state === "up")) {
            if (Date.now() > deadline) throw new Error(`not registered again: ${JSON.stringify(window.signaling)}`);
            await new Promise((r) => setTimeout(r, 50));
        }
        const same = await window.ask(window.conn, "during");
        const fresh = await window.session.connect("dev-web", 0);
        const again = await window.ask(fresh, "after");
        return [window.signaling.map((s) => s.state), same, again];
    })()"#;
    let result = browser.eval(&page, after).await?;
    ensure!(result == serde_json::json!([["lost", "up"], "during", "after"]), "{result}");
    device.shutdown().await;
    Ok(())
}
