//! Browsers reach devices: a real headless Chromium loads the web app and
//! the browser module from `fogconnect signal`, signs in, sees devices
//! online, and talks to their service plugins over WebRTC DataChannels
//! (transport RTC) on the nodes' own sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use common::browser::{Browser, Page};
use common::{WAIT, config, plugin};
use fogconnect::Node;
use fogconnect::signal::protocol::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &[u8] = b"browser test secret";

fn token_for(id: &str) -> String {
    token::issue(SECRET, id, u64::MAX / 2)
}

/// A signaling server on loopback (it serves the web app and the module
/// too).
async fn signaling() -> anyhow::Result<SignalServer> {
    Ok(SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?)
}

/// A device registered with the server, on every interface (the browser
/// reaches it on the host's own address).
async fn device(url: &str, id: &str, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    device_with(url, id, plugins, config()).await
}

/// Like [`device`], with the configuration `node_config`.
async fn device_with(
    url: &str,
    id: &str,
    plugins: &[(u8, &str)],
    node_config: fogconnect::NodeConfig,
) -> anyhow::Result<Node> {
    let listen: SocketAddr = "0.0.0.0:0".parse()?;
    let mut builder = Node::builder().config(node_config).listen(listen).node_id(id).signal(url, token_for(id));
    for (service, name) in plugins {
        builder = builder.plugin(*service, plugin(name));
    }
    let node = builder.start().await?;
    node.registered(WAIT).await?;
    Ok(node)
}

/// The app's page for `id`, signed in with a token issued for it.
async fn app_page(browser: &mut Browser, server: &SignalServer, id: &str, peer: &str) -> anyhow::Result<Page> {
    let url = format!("http://{}/?id={id}&token={}&peer={peer}", server.local_addr(), token_for(id));
    browser.open(&url).await
}

/// The log lines of the app, in order.
async fn log_lines(browser: &mut Browser, page: &Page) -> anyhow::Result<Vec<String>> {
    let lines = browser.eval(page, "[...document.querySelectorAll('#log li')].map((li) => li.textContent)").await?;
    Ok(serde_json::from_value(lines)?)
}

/// Clicks the button `id`, then waits until the app logs a line starting
/// with `start` (after the lines it had before the click).
async fn step(browser: &mut Browser, page: &Page, id: &str, start: &str) -> anyhow::Result<()> {
    let before = log_lines(browser, page).await?.len();
    click(browser, page, id).await?;
    logged(browser, page, before, start).await
}

/// Waits until the app logged a line starting with `start` after its
/// first `skip` lines.
async fn logged(browser: &mut Browser, page: &Page, skip: usize, start: &str) -> anyhow::Result<()> {
    let condition = format!(
        "[...document.querySelectorAll('#log li')].slice({skip}).some((li) => li.textContent.startsWith({}))",
        serde_json::to_string(start)?
    );
    if let Err(e) = browser.wait_for(page, &condition, Duration::from_secs(20)).await {
        anyhow::bail!("{e}; the log: {:?}", log_lines(browser, page).await?);
    }
    Ok(())
}

async fn click(browser: &mut Browser, page: &Page, id: &str) -> anyhow::Result<()> {
    browser.eval(page, &format!("document.getElementById('{id}').click()")).await?;
    Ok(())
}

async fn set_value(browser: &mut Browser, page: &Page, id: &str, value: &str) -> anyhow::Result<()> {
    let value = serde_json::to_string(value)?;
    browser.eval(page, &format!("document.getElementById('{id}').value = {value}")).await?;
    Ok(())
}

/// The web app: sign in, see a device online, talk to its demo service,
/// be refused by a service nobody serves, and see devices come and go.
#[tokio::test]
async fn the_web_app_signs_in_sees_devices_and_talks_to_their_services() -> anyhow::Result<()> {
    let server = signaling().await?;
    let device_a = device(&server.url(), "dev-a", &[(0, "echo"), (1, "demo"), (5, "adaptive-source")]).await?;
    let mut browser = Browser::launch(&[]).await?;
    let page = app_page(&mut browser, &server, "web-1", "dev-a").await?;

    click(&mut browser, &page, "signin-button").await?;
    browser.wait_for(&page, "document.querySelector('#peers li[data-id=\"dev-a\"]')", WAIT).await?;
    ensure!(browser.eval(&page, "document.getElementById('status').textContent").await? == "signed in as web-1");

    // Service 1 is the demo plugin: "I am fog data!" gets "I know!".
    step(&mut browser, &page, "connect", "connected in").await?;
    step(&mut browser, &page, "send", "I know!").await?;

    // A service nobody serves is refused with the node's reason.
    step(&mut browser, &page, "close", "closed: local").await?;
    set_value(&mut browser, &page, "service", "9").await?;
    step(&mut browser, &page, "connect", "refused: no such service: 9").await?;

    // A stream service: the app opens a stream, charts its rate, and
    // sends a command.
    set_value(&mut browser, &page, "service", "5").await?;
    step(&mut browser, &page, "connect", "connected in").await?;
    step(&mut browser, &page, "open-stream", "stream 1 open").await?;
    let flowing = "/^[1-9][0-9]* kbit\\/s/.test(document.getElementById('rate').textContent)";
    browser.wait_for(&page, flowing, WAIT).await?;
    set_value(&mut browser, &page, "command", "ping").await?;
    step(&mut browser, &page, "send-command", "pong").await?;
    step(&mut browser, &page, "stop-stream", "stream ended: stopped by the application").await?;
    click(&mut browser, &page, "close").await?;

    // Devices coming online and going offline show up live.
    let device_b = device(&server.url(), "dev-b", &[]).await?;
    browser.wait_for(&page, "document.querySelector('#peers li[data-id=\"dev-b\"]')", WAIT).await?;
    device_b.shutdown().await;
    browser.wait_for(&page, "!document.querySelector('#peers li[data-id=\"dev-b\"]')", WAIT).await?;
    logged(&mut browser, &page, 0, "dev-b offline").await?;

    device_a.shutdown().await;
    Ok(())
}

/// The browser module alone, as a page would use it: 1,000 numbered
/// messages through the echo service come back in order.
#[tokio::test]
async fn a_thousand_messages_are_echoed_in_order() -> anyhow::Result<()> {
    let server = signaling().await?;
    let device_a = device(&server.url(), "dev-a", &[(0, "echo")]).await?;
    let mut browser = Browser::launch(&[]).await?;
    let page = browser.open(&format!("http://{}/", server.local_addr())).await?;
    let script = format!(
        r#"(async () => {{
            const fog = await import("/fogconnect.js");
            const session = await fog.signIn({{ id: "web-2", token: {token} }});
            const conn = await session.connect("dev-a", 0);
            const got = [];
            const all = new Promise((resolve, reject) => {{
                conn.addEventListener("message", (e) => {{ got.push(e.detail.text()); if (got.length === 1000) resolve(); }});
                conn.addEventListener("close", (e) => reject(new Error(`closed: ${{e.detail.reason}}`)));
            }});
            for (let i = 1; i <= 1000; i++) conn.send(`message ${{i}}`);
            await all;
            conn.close("done");
            return got;
        }})()"#,
        token = serde_json::to_string(&token_for("web-2"))?
    );
    let got: Vec<String> = serde_json::from_value(browser.eval(&page, &script).await?)?;
    let expected: Vec<String> = (1..=1000).map(|i| format!("message {i}")).collect();
    ensure!(got == expected, "echoed out of order or incomplete: {} messages", got.len());
    device_a.shutdown().await;
    Ok(())
}

/// Helpers every page script has: `ask(conn, text)` (the next reply) and
/// `ended(conn)` (the close event's detail).
const HELPERS: &str = r#"
    window.ask = (conn, text) => new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply to ${text}`)), 10000);
        conn.addEventListener("message", (e) => { clearTimeout(timer); resolve(e.detail.text()); }, { once: true });
        conn.send(text);
    });
    window.ended = (conn) => conn.closed
        ? Promise.resolve(conn.closeDetail)
        : new Promise((resolve) => conn.addEventListener("close", (e) => resolve(e.detail), { once: true }));
"#;

/// A page's script with the browser module as `fog`, a session signed in
/// as `id` as `session`, and the [`HELPERS`].
fn script(id: &str, body: &str) -> anyhow::Result<String> {
    Ok(format!(
        r#"(async () => {{
            {HELPERS}
            const fog = await import("/fogconnect.js");
            const session = await fog.signIn({{ id: {id}, token: {token} }});
            {body}
        }})()"#,
        id = serde_json::to_string(id)?,
        token = serde_json::to_string(&token_for(id))?,
    ))
}

/// What the service plugin sees of a browser: its registered id,
/// transport RTC (code 0), its address, its close reason; a live swap
/// keeps the connection; a message over the node's limit ends it with
/// the reason, visible in the page.
#[tokio::test]
async fn plugins_see_browsers_as_ordinary_connections() -> anyhow::Result<()> {
    let server = signaling().await?;
    let limited = fogconnect::NodeConfig { max_message_size: 64 * 1024, ..config() };
    let plugins = [(2, "test-probe"), (3, "test-events"), (4, "test-echo-v1")];
    let device_a = device_with(&server.url(), "dev-a", &plugins, limited).await?;
    let mut browser = Browser::launch(&[]).await?;
    let page = browser.open(&format!("http://{}/", server.local_addr())).await?;
    let body = r#"
        const probe = await session.connect("dev-a", 2);
        const info = await ask(probe, "info");
        const other = await session.connect("dev-a", 2);
        other.close("seen enough");
        let closes = "";
        for (let i = 0; i < 100 && !closes.includes("seen enough"); i++) closes = await ask(probe, "closes");
        const events = await session.connect("dev-a", 3);
        const convention = await ask(events, "convention");
        const path = await ask(events, "path");
        window.echo = await session.connect("dev-a", 4);
        const before = await ask(window.echo, "before");
        window.big = await session.connect("dev-a", 2);
        return { info, closes, convention, path, before };
    "#;
    let seen = browser.eval(&page, &script("web-3", body)?).await?;
    let info = seen["info"].as_str().unwrap_or_default();
    ensure!(info.starts_with("passive=true convention=0x20 peer=web-3 remote="), "{info}");
    ensure!(info.ends_with("imports-agree=true user-data=0xf06"), "{info}");
    ensure!(seen["closes"].as_str().unwrap_or_default().ends_with(":eof:seen enough"), "{seen}");
    // The 0.2.0 contract: transport RTC is code 0 (service 3: 0x30 = 48).
    ensure!(seen["convention"] == "48", "{seen}");
    // Straight from the browser's host (each of its connections has a
    // port of its own), not through a relay.
    let path = seen["path"].as_str().unwrap_or_default();
    let remote: SocketAddr = info.split(" remote=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("").parse()?;
    let path_addr: SocketAddr = path.split(' ').nth(1).unwrap_or("").parse()?;
    ensure!(!path.starts_with("relayed") && path_addr.ip() == remote.ip(), "path {path}, probe's remote {remote}");
    ensure!(seen["before"] == "v1:before", "{seen}");

    // A live swap under the browser's connection keeps it.
    device_a.swap_plugin(4, &plugin("test-echo-v2")).await?;
    let after = browser.eval(&page, "ask(window.echo, 'after')").await?;
    ensure!(after == "v2:after", "{after}");

    // A message over the node's 64 KiB limit ends that connection, with
    // the reason in the page; the others go on.
    let ended = browser.eval(&page, "window.big.send(new Uint8Array(100 * 1024)); ended(window.big)").await?;
    ensure!(ended["error"] == true, "{ended}");
    let reason = ended["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("exceeds the maximum message size of 65536 bytes"), "{reason}");
    let still = browser.eval(&page, "ask(window.echo, 'still')").await?;
    ensure!(still == "v2:still", "{still}");

    // A node shutting down tells the browser why.
    device_a.shutdown().await;
    let ended = browser.eval(&page, "ended(window.echo)").await?;
    ensure!(ended["reason"] == "node shut down", "{ended}");
    Ok(())
}

/// A raw signaling session: what a hostile or broken browser can send.
struct RawSession(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>);

impl RawSession {
    async fn register(url: &str, id: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut raw = RawSession(ws);
        let register = ClientMessage::Register { version: PROTOCOL_VERSION, id: id.into(), token: token_for(id) };
        raw.send(&register).await?;
        ensure!(matches!(raw.recv().await?, ServerMessage::Registered { .. }));
        Ok(raw)
    }

    async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        Ok(self.0.send(WsMessage::text(message.encode())).await?)
    }

    async fn recv(&mut self) -> anyhow::Result<ServerMessage> {
        loop {
            match tokio::time::timeout(WAIT, self.0.next()).await {
                Ok(Some(Ok(WsMessage::Text(text)))) => return Ok(ServerMessage::decode(text.as_str())?),
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(other) => anyhow::bail!("unexpected {other:?}"),
                Err(_) => anyhow::bail!("no message within {WAIT:?}"),
            }
        }
    }

    /// Sends an `rtc-connect` and returns the node's refusal (code,
    /// message).
    async fn refused(&mut self, to: &str, convention: u32, sdp: &str) -> anyhow::Result<(u16, String)> {
        let request = ClientMessage::RtcConnect { request_id: 7, to: to.into(), convention, sdp: sdp.into() };
        self.send(&request).await?;
        match self.recv().await? {
            ServerMessage::Rejected { request_id: 7, code, message, .. } => Ok((code, message)),
            other => anyhow::bail!("expected a refusal, got {other:?}"),
        }
    }
}

/// Bad input from a browser peer is refused with a clear error and the
/// node keeps serving: malformed SDP, an offer asking for media, a
/// convention of another transport, datagrams that belong to no answered
/// request (a DataChannel opened without signaling). The web endpoints
/// refuse what they do not serve.
#[tokio::test]
async fn bad_input_from_browsers_is_refused_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let server = signaling().await?;
    let device_a = device(&server.url(), "dev-a", &[(0, "echo")]).await?;
    let mut mallory = RawSession::register(&server.url(), "mallory").await?;

    let (code, message) = mallory.refused("dev-a", 0x00, "this is not SDP").await?;
    ensure!(code == 6 && message.starts_with("unsupported offer: no data channel section"), "{code} {message}");
    let broken = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nthis is not SDP\r\n";
    let (code, message) = mallory.refused("dev-a", 0x00, broken).await?;
    ensure!(code == 6 && message.starts_with("malformed SDP offer"), "{code} {message}");
    let media =
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n";
    let (code, message) = mallory.refused("dev-a", 0x00, media).await?;
    ensure!(code == 6 && message.contains("media section \"audio\""), "{code} {message}");
    let (code, message) = mallory.refused("dev-a", 0x05, media).await?;
    ensure!(code == 3 && message.contains("QUIC (code 5) is not offered by this node over RTC"), "{code} {message}");
    let (code, message) = mallory.refused("dev-a", 0x70, media).await?;
    ensure!(code == 1 && message == "no such service: 7", "{code} {message}");
    // One browser id sets up at most 8 connections at once.
    let offer = include_str!("../host/src/transport/rtc/chromium_offer.sdp");
    for request_id in 100..108 {
        mallory
            .send(&ClientMessage::RtcConnect { request_id, to: "dev-a".into(), convention: 0, sdp: offer.into() })
            .await?;
        let answer = mallory.recv().await?;
        ensure!(matches!(answer, ServerMessage::RtcAnswered { request_id: r, .. } if r == request_id), "{answer:?}");
    }
    let (code, message) = mallory.refused("dev-a", 0x00, offer).await?;
    ensure!(code == 5 && message == "mallory sets up 8 connections already", "{code} {message}");

    // Candidates for requests never answered are dropped.
    let stray = ClientMessage::RtcCandidate {
        request_id: 99,
        to: "dev-a".into(),
        candidate: "candidate:1 1 udp 2122260223 192.0.2.99 5000 typ host".into(),
    };
    mallory.send(&stray).await?;

    // STUN checks for ICE credentials the node never handed out, and DTLS
    // records from nowhere: no answer, no connection.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let node_port = device_a.local_addr().port();
    let target: SocketAddr = format!("127.0.0.1:{node_port}").parse()?;
    let mut check = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
    check.extend_from_slice(&[7u8; 12]);
    check.extend_from_slice(&[0x00, 0x06, 0x00, 0x09]);
    check.extend_from_slice(b"nobody:me\0\0\0");
    let client_hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4];
    for _ in 0..50 {
        udp.send_to(&check, target).await?;
        udp.send_to(&client_hello, target).await?;
    }
    let mut buf = [0u8; 1500];
    let answered = tokio::time::timeout(Duration::from_millis(500), udp.recv_from(&mut buf)).await;
    ensure!(answered.is_err(), "the node answered a stray datagram: {answered:?}");

    // The node still serves a real browser.
    let mut browser = Browser::launch(&[]).await?;
    let page = browser.open(&format!("http://{}/", server.local_addr())).await?;
    let body = r#"const conn = await session.connect("dev-a", 0); return await ask(conn, "still here");"#;
    ensure!(browser.eval(&page, &script("web-4", body)?).await? == "still here");

    // The web endpoints: the app and the module, nothing else.
    for (request, status) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"),
        ("GET /fogconnect.js HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"),
        ("GET /secret HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404 Not Found"),
        ("DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        ("\x16\x03\x01\x02\x00\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.local_addr()).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tokio::time::timeout(WAIT, tcp.read_to_string(&mut response)).await??;
        ensure!(response.starts_with(status), "{request:?}: {response:.80}");
        if request.contains("fogconnect.js") {
            ensure!(response.contains("Content-Type: text/javascript"), "{response:.200}");
        }
    }
    device_a.shutdown().await;
    Ok(())
}

/// A stream service serves a browser as it serves nodes: `adaptive-source`
/// streams at the asked bitrate to the page, answers its command, and
/// ends the stream when the page stops it.
#[tokio::test]
async fn a_stream_plugin_streams_to_a_browser_at_its_bitrate() -> anyhow::Result<()> {
    let server = signaling().await?;
    let device_a = device(&server.url(), "camera", &[(5, "adaptive-source")]).await?;
    let mut browser = Browser::launch(&[]).await?;
    let page = browser.open(&format!("http://{}/", server.local_addr())).await?;
    let body = r#"
        const conn = await session.connect("camera", 5);
        const streams = new fog.StreamSession(conn);
        const pong = (await streams.command("ping")).text();
        let refused = "";
        try { await streams.open("action=rewind"); } catch (e) { refused = e.message; }
        const live = await streams.open("action=live&bitrate=800000");
        // Measure 3 s from the first chunk on.
        const first = await new Promise((resolve) => live.addEventListener("data", () => resolve(performance.now()), { once: true }));
        const startBytes = live.bytes;
        await new Promise((resolve) => setTimeout(resolve, 3000));
        const bps = (live.bytes - startBytes) * 8 / ((performance.now() - first) / 1000);
        const ended = new Promise((resolve) => live.addEventListener("end", (e) => resolve(e.detail.reason), { once: true }));
        live.stop();
        const reason = await ended;
        conn.close("done");
        return { pong, refused, bps, reason, chunks: live.chunks };
    "#;
    let seen = browser.eval(&page, &script("viewer", body)?).await?;
    ensure!(seen["pong"] == "pong", "{seen}");
    ensure!(seen["refused"].as_str().unwrap_or_default().contains("unknown action \"rewind\""), "{seen}");
    let bps = seen["bps"].as_f64().unwrap_or(0.0);
    ensure!((600_000.0..=1_000_000.0).contains(&bps), "received at {bps:.0} bit/s, asked 800000: {seen}");
    ensure!(seen["reason"] == "stopped by the application", "{seen}");
    device_a.shutdown().await;
    Ok(())
}

/// Chromium as users run it hides its host addresses behind mDNS names;
/// the node skips those candidates and learns the browser's address from
/// its checks (peer-reflexive), and the connection opens all the same.
#[tokio::test]
async fn a_browser_hiding_its_addresses_behind_mdns_names_connects() -> anyhow::Result<()> {
    let server = signaling().await?;
    let device_a = device(&server.url(), "dev-a", &[(0, "echo")]).await?;
    let mut browser = Browser::launch_hiding_addresses().await?;
    let page = browser.open(&format!("http://{}/", server.local_addr())).await?;
    let body = r#"
        const conn = await session.connect("dev-a", 0);
        const echo = await ask(conn, "behind a name");
        const path = await conn.path();
        conn.close("done");
        return { echo, path };
    "#;
    let seen = browser.eval(&page, &script("web-5", body)?).await?;
    ensure!(seen["echo"] == "behind a name", "{seen}");
    ensure!(seen["path"]["relayed"] == false, "{seen}");
    device_a.shutdown().await;
    Ok(())
}
