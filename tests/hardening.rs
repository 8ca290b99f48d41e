//! Regression tests for what a hostile client tried against every server
//! (issue 14): amplification through forged offers, memory and connection
//! exhaustion, unauthenticated reads, forged peer ids, TURN nonce replay
//! and quotas, reflection limits. Servers run as real processes on
//! loopback where the test reads their memory or limits their descriptors;
//! a test that needs a third-party address runs in a network namespace of
//! its own.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::WAIT;
use common::server::ServerProcess;
use fogconnect::signal::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{Convention, Node, Transport};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "hardening test secret 0123456789";

fn token_for(id: &str) -> String {
    token::issue(SECRET.as_bytes(), id, u64::MAX / 2)
}

fn signal_process(extra: &[&str], nofile: Option<u64>) -> anyhow::Result<ServerProcess> {
    let mut args = vec!["signal", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args, nofile, "signaling on ws://", &[("FOGCONNECT_SIGNAL_SECRET", SECRET)])
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(url: &str) -> anyhow::Result<Ws> {
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

async fn recv(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(ServerMessage::decode(text.as_str())?),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => bail!("unexpected {other:?}"),
            Err(_) => bail!("no message within {WAIT:?}"),
        }
    }
}

async fn register(url: &str, id: &str) -> anyhow::Result<Ws> {
    let mut ws = ws(url).await?;
    let register = ClientMessage::Register { version: PROTOCOL_VERSION, id: id.into(), token: token_for(id) };
    ws.send(Message::text(register.encode())).await?;
    match recv(&mut ws).await? {
        ServerMessage::Registered { .. } => Ok(ws),
        other => bail!("registration of {id}: {other:?}"),
    }
}

/// Waits until the server ends the session: the next read sees the close
/// (after an optional error message) or the connection drops.
async fn ended_within(ws: &mut Ws, limit: Duration) -> anyhow::Result<Option<ServerMessage>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => bail!("session still open after {limit:?}"),
            Ok(None | Some(Ok(Message::Close(_))) | Some(Err(_))) => return Ok(last_error),
            Ok(Some(Ok(Message::Text(text)))) => last_error = ServerMessage::decode(text.as_str()).ok(),
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Finding 2: memory of the signaling server under a ping flood.

/// Sends ping frames (125-byte payloads) as fast as the socket takes them
/// and never reads, for at most `limit`; returns how many went out before
/// the server closed the connection (or the time ran out).
async fn ping_flood(ws: Ws, limit: Duration) -> (u64, bool) {
    let (mut sink, _never_read) = ws.split();
    let payload = vec![0x55u8; 125];
    let deadline = tokio::time::Instant::now() + limit;
    let mut sent = 0u64;
    loop {
        let ping = sink.send(Message::Ping(payload.clone().into()));
        match tokio::time::timeout_at(deadline, ping).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => return (sent, true),
            Err(_) => return (sent, false),
        }
    }
}

/// With the rate limit out of the way (so only the write buffer bounds
/// it), a client that floods pings and never reads costs the server a
/// bounded amount of memory, and its session ends at the idle timeout:
/// pings are not useful traffic. With the default rate, the flood is cut
/// after the burst.
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_bounded_in_memory_and_closed() -> anyhow::Result<()> {
    let server = signal_process(
        &[
            "--rate-per-second",
            "10000000",
            "--rate-burst",
            "10000000",
            "--idle-timeout-s",
            "3",
            "--register-timeout-s",
            "3",
        ],
        None,
    )?;
    let registered = register(&server.url(), "flooder").await?;
    let unregistered = ws(&server.url()).await?;
    let before = server.rss_kib()?;
    let started = Instant::now();
    let ((sent_a, closed_a), (sent_b, closed_b)) =
        tokio::join!(ping_flood(registered, Duration::from_secs(8)), ping_flood(unregistered, Duration::from_secs(8)));
    let after = server.rss_kib()?;
    println!(
        "ping flood: {sent_a} + {sent_b} pings in {:?}, server RSS {before} KiB -> {after} KiB",
        started.elapsed()
    );
    ensure!(sent_a + sent_b > 10_000, "the flood did not get going: {sent_a} + {sent_b}");
    ensure!(closed_a, "the registered flooder was not disconnected within the idle timeout");
    ensure!(closed_b, "the unregistered flooder was not disconnected within the registration deadline");
    ensure!(after < before + 16 * 1024, "server memory grew from {before} KiB to {after} KiB");

    // At the default rate, control frames count like messages.
    let server = signal_process(&[], None)?;
    let (sent, closed) = ping_flood(register(&server.url(), "flooder").await?, Duration::from_secs(8)).await;
    ensure!(closed, "a ping flood over the rate limit was not cut");
    ensure!(sent < 10_000, "{sent} pings accepted at 50/s with bursts of 200");
    Ok(())
}

/// A session that never registers ends at the registration deadline even
/// while it sends pings within the rate; a registered one that only pings
/// ends at the idle timeout.
#[tokio::test]
async fn pings_keep_neither_an_unregistered_nor_an_idle_session_open() -> anyhow::Result<()> {
    let server = signal_process(&["--register-timeout-s", "1", "--idle-timeout-s", "2"], None)?;
    for registered in [false, true] {
        let mut ws = if registered { register(&server.url(), "idler").await? } else { ws(&server.url()).await? };
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let ended = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if ws.send(Message::Ping(vec![1].into())).await.is_err() {
                        break None;
                    }
                }
                frame = ws.next() => match frame {
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break None,
                    Some(Ok(Message::Text(text))) => break ServerMessage::decode(text.as_str()).ok(),
                    Some(Ok(_)) => {}
                }
            }
            ensure!(started.elapsed() < WAIT, "still open after {WAIT:?} (registered: {registered})");
        };
        let expected = if registered { ErrorCode::IdleTimeout } else { ErrorCode::NotRegistered };
        match ended {
            Some(ServerMessage::Error { code, .. }) if code == expected.code() => {}
            other => bail!("registered {registered}: expected {expected:?}, got {other:?}"),
        }
        let limit = if registered { Duration::from_secs(2) } else { Duration::from_secs(1) };
        ensure!(started.elapsed() >= limit, "closed too early: {:?}", started.elapsed());
    }
    Ok(())
}

/// A client that sends requests and never reads the answers is
/// disconnected once the server cannot write to it within the send
/// deadline, instead of holding its session forever.
#[tokio::test]
async fn a_client_that_never_reads_is_disconnected() -> anyhow::Result<()> {
    let mut config = SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.as_bytes().to_vec());
    config.send_timeout = Duration::from_secs(1);
    config.rate_per_second = 100_000;
    config.rate_burst = 100_000;
    let server = SignalServer::start(config).await?;
    let deaf = register(&server.url(), "deaf").await?;
    // Requests whose answers pile up unread: lists of everyone online (50
    // long ids) are the largest answers.
    let mut others = Vec::new();
    for n in 0..50 {
        others.push(register(&server.url(), &format!("peer-{n:03}-{}", "x".repeat(200))).await?);
    }
    let (mut sink, _never_read) = deaf.split();
    let started = Instant::now();
    let list = ClientMessage::List.encode();
    let cut = loop {
        match tokio::time::timeout(Duration::from_secs(1), sink.send(Message::text(list.clone()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break true,
            // Our own socket is full because the server stopped reading
            // us: it has given up on this session or is about to.
            Err(_) => {}
        }
        if server.registered() == 50 {
            break true;
        }
        if started.elapsed() > WAIT * 2 {
            break false;
        }
    };
    ensure!(cut, "the session of a client that never reads was kept for {:?}", started.elapsed());
    common::eventually("the deaf session is gone", || server.registered() == 50).await?;
    Ok(())
}

/// One id registering and dropping in a loop cannot flood subscribers
/// with presence events: registrations per id are rate-limited.
#[tokio::test]
async fn re_registration_is_rate_limited_so_presence_cannot_be_flooded() -> anyhow::Result<()> {
    let server =
        SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.as_bytes().to_vec())).await?;
    let mut watcher = register(&server.url(), "watcher").await?;
    watcher.send(Message::text(ClientMessage::Subscribe.encode())).await?;
    // The subscription is in place once a request after it is answered.
    watcher.send(Message::text(ClientMessage::Ping { nonce: 1 }.encode())).await?;
    ensure!(matches!(recv(&mut watcher).await?, ServerMessage::Pong { nonce: 1 }));
    let mut refused = 0;
    for _ in 0..100 {
        let mut ws = ws(&server.url()).await?;
        let register =
            ClientMessage::Register { version: PROTOCOL_VERSION, id: "flapper".into(), token: token_for("flapper") };
        ws.send(Message::text(register.encode())).await?;
        match recv(&mut ws).await? {
            ServerMessage::Registered { .. } => {}
            ServerMessage::Error { code, .. } if code == ErrorCode::RateLimited.code() => refused += 1,
            other => bail!("unexpected {other:?}"),
        }
        ws.close(None).await?;
        let _ = ended_within(&mut ws, WAIT).await;
    }
    ensure!(refused >= 80, "only {refused} of 100 quick re-registrations were refused");
    // Count what the watcher got: at most two events per admitted
    // registration, and the stream ends with a pong we ask for.
    watcher.send(Message::text(ClientMessage::Ping { nonce: 2 }.encode())).await?;
    let mut events = 0;
    loop {
        match recv(&mut watcher).await? {
            ServerMessage::Presence { .. } => events += 1,
            ServerMessage::Pong { nonce: 2 } => break,
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(events <= 2 * (100 - refused), "{events} presence events for {} registrations", 100 - refused);

    // Coalesced: an id that leaves and comes back within the grace was
    // never reported gone; one that stays away is, once.
    let server =
        SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.as_bytes().to_vec())).await?;
    let mut watcher = register(&server.url(), "watcher").await?;
    watcher.send(Message::text(ClientMessage::Subscribe.encode())).await?;
    let mut flapper = register(&server.url(), "flapper").await?;
    ensure!(matches!(recv(&mut watcher).await?, ServerMessage::Presence { online: true, .. }));
    flapper.close(None).await?;
    let _ = ended_within(&mut flapper, WAIT).await;
    let mut flapper = register(&server.url(), "flapper").await?;
    flapper.close(None).await?;
    let _ = ended_within(&mut flapper, WAIT).await;
    let started = Instant::now();
    match recv(&mut watcher).await? {
        ServerMessage::Presence { id, online: false } if id == "flapper" => {}
        other => bail!("expected one offline event, got {other:?}"),
    }
    let waited = started.elapsed();
    ensure!(waited >= fogconnect::signal::server::PRESENCE_GRACE - Duration::from_millis(100), "{waited:?}");
    watcher.send(Message::text(ClientMessage::Ping { nonce: 3 }.encode())).await?;
    ensure!(matches!(recv(&mut watcher).await?, ServerMessage::Pong { nonce: 3 }), "more presence events than one");
    Ok(())
}

// ---------------------------------------------------------------------------
// Finding 4: connection exhaustion of the signaling server.

/// Opens up to `count` TCP connections from `source` to `to`; keeps the
/// ones the server accepted and did not close at once.
async fn idle_connections(source: IpAddr, to: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut kept = Vec::new();
    for _ in 0..count {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else { break };
        if socket.bind(SocketAddr::new(source, 0)).is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), socket.connect(to)).await {
            Ok(Ok(stream)) => kept.push(stream),
            _ => continue,
        }
    }
    kept
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(limit, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// Two addresses open hundreds of idle connections to a server limited to
/// 256 descriptors: each address gets its share, the rest are closed at
/// once, the share is closed at the handshake deadline, and a legitimate
/// client registers and is served throughout.
#[tokio::test]
async fn idle_connections_from_a_few_addresses_cannot_exhaust_the_signaling_server() -> anyhow::Result<()> {
    fogconnect::limits::raise_descriptor_limit();
    let server = signal_process(&["--max-clients-per-ip", "40", "--handshake-timeout-s", "2"], Some(256))?;
    let mut attackers = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        attackers.push(idle_connections(source.parse()?, server.addr, 400).await);
    }
    // Of each address's connections only its share stays open.
    let mut open = 0;
    for connections in &mut attackers {
        for stream in connections.iter_mut() {
            if !closed_by_server(stream, Duration::from_millis(20)).await {
                open += 1;
            }
        }
    }
    ensure!(open <= 80, "{open} idle connections held from two addresses with a cap of 40 each");
    let mut legit = register(&server.url(), "legit").await?;
    legit.send(Message::text(ClientMessage::List.encode())).await?;
    ensure!(matches!(recv(&mut legit).await?, ServerMessage::Peers { .. }));
    // The idle ones end at the handshake deadline.
    let started = Instant::now();
    for connections in &mut attackers {
        for stream in connections.iter_mut() {
            ensure!(closed_by_server(stream, WAIT).await, "an idle connection outlived the handshake deadline");
        }
    }
    ensure!(started.elapsed() < Duration::from_secs(5), "idle connections closed after {:?}", started.elapsed());
    legit.send(Message::text(ClientMessage::List.encode())).await?;
    ensure!(matches!(recv(&mut legit).await?, ServerMessage::Peers { .. }));
    Ok(())
}

// ---------------------------------------------------------------------------
// Finding 1: amplification through a forged connect offer.

/// Runs `test` on a multi-threaded runtime inside a network namespace of
/// its own (this thread and the threads it starts; gone when they end),
/// with loopback up and an nftables counter of UDP sent to `victim`.
fn in_own_namespace<F, Fut>(victim: IpAddr, test: F) -> anyhow::Result<()>
where
    F: FnOnce(Box<dyn Fn() -> anyhow::Result<(u64, u64)> + Send + Sync>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread of its own: the namespace is that thread's, never the test
    // harness's.
    let worker = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET only moves this thread into
        // a new network namespace; it touches no memory of ours.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let _ = tx.send(Err(anyhow::anyhow!(
                "cannot make a network namespace (root needed): {}",
                std::io::Error::last_os_error()
            )));
            return;
        }
        let result = (|| {
            run("ip", &["link", "set", "lo", "up"], None)?;
            let rules = format!(
                "table ip victim {{\n counter sent {{ }}\n chain out {{ type filter hook output priority 0; \
                 policy accept; ip daddr {victim} meta l4proto udp counter name \"sent\"; }}\n}}\n"
            );
            run("nft", &["-f", "-"], Some(&rules))?;
            let counter = Box::new(|| -> anyhow::Result<(u64, u64)> {
                let listing = run("nft", &["list", "counter", "ip", "victim", "sent"], None)?;
                let number = |key: &str| -> anyhow::Result<u64> {
                    let at = listing.find(key).with_context(|| format!("{key} in {listing}"))? + key.len();
                    Ok(listing[at..].split_whitespace().next().context("value")?.parse()?)
                };
                Ok((number("packets ")?, number("bytes ")?))
            });
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(test(counter))
        })();
        let _ = tx.send(result);
    });
    let result = rx.recv().context("the namespace thread ended without a result")?;
    let _ = worker.join();
    result
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{program} (make test installs it)"))?;
    if let Some(text) = stdin {
        child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The bound the node states: bytes to addresses the peer has not proven
/// are at most 3x the bytes the peer sent.
const AMPLIFICATION: u64 = fogconnect::nat::consent::AMPLIFICATION;

/// A registered client sends connects whose offers name a victim as their
/// public address and claim a NAT that calls for birthday probing. The
/// callee sends the victim at most 3x the bytes of the forged messages
/// (UDP payload, counted on the wire), never sprays its ports, and while
/// the attacker repeats the forged connects as fast as signaling lets it,
/// a legitimate connect by id is served.
#[test]
fn a_forged_offer_cannot_aim_the_callee_at_a_third_party() -> anyhow::Result<()> {
    let victim: SocketAddr = "127.0.0.99:40000".parse()?;
    in_own_namespace(victim.ip(), move |sent_to_victim| async move {
        let server =
            SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.as_bytes().to_vec())).await?;
        let url = server.url();
        let mut config = common::config();
        config.checks.budget = Duration::from_secs(2);
        let device = Node::builder()
            .config(config.clone())
            .node_id("device")
            .signal(&url, token_for("device"))
            .plugin(1, common::plugin("demo"))
            .start()
            .await?;
        device.registered(WAIT).await?;
        let app = Node::builder().config(config).node_id("app").signal(&url, token_for("app")).start().await?;
        app.registered(WAIT).await?;
        let mut attacker = register(&url, "mallory").await?;

        // One forged connect: watch the victim for the whole check budget.
        let message = common::attack::forged_connect("device", victim, 1);
        let message_bytes = message.len() as u64;
        attacker.send(Message::text(message)).await?;
        ensure!(matches!(recv(&mut attacker).await?, ServerMessage::Answered { .. }), "the device answers");
        let watch_until = Instant::now() + Duration::from_secs(3);
        let (mut packets, mut bytes) = (0, 0);
        while Instant::now() < watch_until {
            (packets, bytes) = sent_to_victim()?;
            let payload = bytes.saturating_sub(28 * packets);
            ensure!(
                payload <= AMPLIFICATION * message_bytes,
                "{payload} bytes to the victim for one {message_bytes}-byte message"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let payload = bytes.saturating_sub(28 * packets);
        println!(
            "one forged connect ({message_bytes} B): {packets} datagrams, {payload} B of payload to the victim \
             (factor {:.2})",
            payload as f64 / message_bytes as f64
        );
        ensure!(packets > 0, "the counter saw nothing: the victim address was never checked");
        ensure!(packets < 20, "{packets} datagrams to the victim: that is probing, not a few checks");

        // Two callers repeat forged connects as fast as signaling lets
        // them (a burst of 190 of their 200, then just under 50 a second
        // each); the legitimate connect starts once both bursts reached the
        // device and it refused the first of each.
        let (before_packets, before_bytes) = sent_to_victim()?;
        let trudy = register(&url, "trudy").await?;
        let done = std::sync::atomic::AtomicBool::new(false);
        let forged_bytes = std::sync::atomic::AtomicU64::new(0);
        let refusals = [std::sync::atomic::AtomicU32::new(0), std::sync::atomic::AtomicU32::new(0)];
        let attack = |ws: Ws, burst_sent: tokio::sync::oneshot::Sender<()>, refused: &'static str| {
            let (done, forged_bytes) = (&done, &forged_bytes);
            let refused = &refusals[usize::from(refused == "trudy")];
            async move {
                let (mut tx, mut rx) = ws.split();
                let flood = async {
                    let forged = |request_id: u64| {
                        let message = common::attack::forged_connect("device", victim, request_id);
                        forged_bytes.fetch_add(message.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        Message::text(message)
                    };
                    for request_id in 1_000..1_190 {
                        tx.send(forged(request_id)).await?;
                    }
                    // Every request before it is forwarded once this is
                    // answered.
                    tx.send(Message::text(ClientMessage::Ping { nonce: 7 }.encode())).await?;
                    let mut pace = tokio::time::interval(Duration::from_millis(22));
                    let mut request_id = 1_190;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        pace.tick().await;
                        request_id += 1;
                        tx.send(forged(request_id)).await?;
                    }
                    anyhow::Ok(())
                };
                let drain = async {
                    // Told once the burst was forwarded (the pong) and the
                    // device refused the first of it.
                    let mut burst_sent = Some(burst_sent);
                    let mut ponged = false;
                    while let Some(Ok(frame)) = rx.next().await {
                        let Message::Text(text) = frame else { continue };
                        match ServerMessage::decode(text.as_str()) {
                            Ok(ServerMessage::Pong { nonce: 7 }) => ponged = true,
                            Ok(ServerMessage::Rejected { message, .. }) if message.contains("your connects") => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        if ponged
                            && refused.load(std::sync::atomic::Ordering::Relaxed) > 0
                            && let Some(burst_sent) = burst_sent.take()
                        {
                            let _ = burst_sent.send(());
                        }
                    }
                };
                tokio::select! {
                    flooded = flood => flooded,
                    () = drain => Ok(()),
                }
            }
        };
        let (mallory_burst, mallory_sent) = tokio::sync::oneshot::channel();
        let (trudy_burst, trudy_sent) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let legit = async {
            let _ = tokio::join!(mallory_sent, trudy_sent);
            let served = async {
                let mut conn = app.connect_peer("device", Transport::Quic, 1).await?;
                common::ask(&mut conn, "I am fog data!").await
            }
            .await;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            served
        };
        let attacks = async {
            let (mallory, trudy) =
                tokio::join!(attack(attacker, mallory_burst, "mallory"), attack(trudy, trudy_burst, "trudy"));
            (mallory, trudy)
        };
        let reply = tokio::select! {
            reply = legit => reply,
            (mallory, trudy) = attacks => bail!("the attacks ended first: {mallory:?} {trudy:?}"),
            _ = tokio::time::sleep(WAIT * 3) => bail!("no legitimate connect within {:?} of the attack", WAIT * 3),
        };
        ensure!(reply? == "I know!", "the legitimate connect was not served");
        let elapsed = started.elapsed();
        println!("legitimate connect served {elapsed:?} after the attack began");
        // Each attacker is told it is over the per-caller limit, at most 10
        // times at once and 5 a second after that: refusals cannot spend
        // the device's own signaling rate.
        for (name, refused) in ["mallory", "trudy"].iter().zip(&refusals) {
            let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
            let most = 10 + (5.0 * elapsed.as_secs_f64()).ceil() as u32 + 1;
            ensure!((1..=most).contains(&refused), "{name} got {refused} refusals (1 to {most} expected)");
        }
        let forged_bytes = forged_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let watch_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < watch_until {
            let (packets, bytes) = sent_to_victim()?;
            let payload = (bytes - before_bytes).saturating_sub(28 * (packets - before_packets));
            ensure!(
                payload <= AMPLIFICATION * forged_bytes,
                "{payload} bytes to the victim for {forged_bytes} bytes of forged connects"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        app.shutdown().await;
        device.shutdown().await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Finding 5: the admin API authenticates before it reads.

const ADMIN_TOKEN: &str = "hardening-admin-token-0123456789";

/// Reads from `stream` until the server closes it or `limit` passes;
/// returns what arrived and whether it was closed.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
        }
    }
}

/// Uploads without the token are refused from their headers, before any
/// body is read, and their connections closed; half-sent headers are
/// closed at the header deadline; connections over the cap are closed at
/// once; the node's memory stays flat and the token holder is served after.
#[tokio::test]
async fn the_admin_api_refuses_before_reading_and_bounds_what_clients_hold() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let node = ServerProcess::start(
        &["node", "--listen", "127.0.0.1:0", "--no-cache", "--id", "admin-node", "--admin", "127.0.0.1:0"],
        None,
        "admin API on ",
        &[("FOGCONNECT_ADMIN_TOKEN", ADMIN_TOKEN)],
    )?;
    let before = node.rss_kib()?;
    // Eight stalled 60 MB uploads without the token, each after 64 KiB.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(node.addr).await?;
        let head = format!("POST /v1/services/9 HTTP/1.1\r\nHost: {}\r\nContent-Length: 60000000\r\n\r\n", node.addr);
        stream.write_all(head.as_bytes()).await?;
        let _ = stream.write_all(&vec![0u8; 64 * 1024]).await;
        stalled.push(stream);
    }
    for stream in &mut stalled {
        let (answer, closed) = read_until_closed(stream, Duration::from_secs(3)).await;
        ensure!(answer.starts_with("HTTP/1.1 401"), "an upload without the token got {answer:?}");
        ensure!(closed, "the refused upload's connection stayed open");
    }
    let after = node.rss_kib()?;
    ensure!(after < before + 16 * 1024, "node memory grew from {before} KiB to {after} KiB");

    // Connections with half-sent headers, more than the cap.
    let mut partial = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(node.addr).await?;
        let _ = stream.write_all(b"GET /v1/services HTTP/1.1\r\nHost: x\r\n").await;
        partial.push(stream);
    }
    let started = Instant::now();
    let mut closed_at_once = 0;
    for stream in &mut partial {
        if read_until_closed(stream, Duration::from_millis(200)).await.1 {
            closed_at_once += 1;
        }
    }
    ensure!(closed_at_once >= 40 - 16, "only {closed_at_once} of 40 connections over a cap of 16 were closed");
    for stream in &mut partial {
        let (_, closed) = read_until_closed(stream, WAIT).await;
        ensure!(closed, "half-sent headers kept a connection open");
    }
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(8), "half-sent headers held connections for {took:?}");

    // The token holder is served.
    let mut stream = tokio::net::TcpStream::connect(node.addr).await?;
    let request = format!(
        "GET /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (answer, _) = read_until_closed(&mut stream, WAIT).await;
    ensure!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"services\""), "{answer}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Finding 3: ids shown to plugins and the Rust API are vouched for or
// marked as certificates.

/// A QUIC client with a certificate of its own that opens one fogconnect
/// connection claiming `claimed`, asks "info" and returns the answer (or
/// the refusal).
async fn raw_open(to: SocketAddr, claimed: &str, service: u8) -> anyhow::Result<Result<String, String>> {
    use fogconnect::transport::identity::Identity;
    use fogconnect::transport::wire::{Decoder, Frame, WIRE_VERSION};
    let identity = Identity::generate()?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(identity.client_config(None, std::sync::Arc::default())?);
    let quic = endpoint.connect(to, "fogconnect")?.await?;
    let (mut send, mut recv) = quic.open_bi().await?;
    let convention = Convention::new(Transport::Quic, service).raw();
    send.write_all(&Frame::Open { version: WIRE_VERSION, convention, peer_id: claimed.into() }.encode()).await?;
    let mut decoder = Decoder::new(64 * 1024);
    let mut next = async || -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = decoder.next_frame()? {
                return Ok(frame);
            }
            let chunk = tokio::time::timeout(WAIT, recv.read_chunk(4096, true)).await??.context("stream ended")?;
            decoder.push(&chunk.bytes);
        }
    };
    match next().await? {
        Frame::Accept { .. } => {}
        Frame::Refuse { message, .. } => return Ok(Err(message)),
        other => bail!("unexpected {other:?}"),
    }
    send.write_all(&Frame::Data("info".into()).encode()).await?;
    let answer = match next().await? {
        Frame::Data(data) => String::from_utf8_lossy(&data).into_owned(),
        other => bail!("unexpected {other:?}"),
    };
    quic.close(0u32.into(), b"done");
    Ok(Ok(answer))
}

/// A client that claims another node's id over a connect by address is
/// refused when signaling vouched for that id with another certificate,
/// and shown as its certificate (`fp:…`, not verified) when nobody vouched
/// for the id; empty ids, ids with control characters and `fp:` ids are
/// refused; ids signaling vouched for reach the plugin as they are.
#[tokio::test]
async fn a_claimed_peer_id_reaches_a_plugin_only_when_signaling_vouched_for_it() -> anyhow::Result<()> {
    let server =
        SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.as_bytes().to_vec())).await?;
    let url = server.url();
    let device = Node::builder()
        .config(common::config())
        .node_id("device")
        .signal(&url, token_for("device"))
        .plugin(42, common::plugin("test-probe"))
        .start()
        .await?;
    device.registered(WAIT).await?;
    let app = Node::builder().config(common::config()).node_id("app").signal(&url, token_for("app")).start().await?;
    app.registered(WAIT).await?;

    // By id: vouched for on both sides.
    let mut conn = app.connect_peer("device", Transport::Quic, 42).await?;
    ensure!(conn.peer_id() == "device" && conn.peer_verified());
    let info = common::ask(&mut conn, "info").await?;
    ensure!(info.contains("peer=app "), "{info}");

    // By address, claiming the id signaling vouched for with another key.
    let refused = raw_open(device.local_addr(), "app", 42).await?;
    ensure!(matches!(&refused, Err(m) if m.contains("another certificate")), "{refused:?}");
    // Claiming an id nobody vouched for: shown as the certificate.
    let answer = raw_open(device.local_addr(), "ee:34:a1:44:2c:1c", 42).await?.map_err(anyhow::Error::msg)?;
    let peer = answer.split("peer=").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or_default();
    ensure!(peer.starts_with("fp:") && peer.len() == 3 + 64, "a claimed id reached the plugin: {answer}");
    // Ids that are not ids.
    for bad in ["", "evil\u{1b}[2J\nid", "fp:0123456789abcdef"] {
        let refused = raw_open(device.local_addr(), bad, 42).await?;
        ensure!(matches!(&refused, Err(m) if m.contains("invalid peer id")), "{bad:?}: {refused:?}");
    }
    // A node connecting by address sees the device as its certificate.
    let stranger = common::node_with("stranger", &[]).await?;
    let conn = stranger.connect(device.local_addr(), Transport::Quic, 42).await?;
    ensure!(conn.peer_id() == format!("fp:{}", device.fingerprint()) && !conn.peer_verified(), "{}", conn.peer_id());
    // Signaling refuses ids that are not ids.
    for bad in ["fp:abc", "tab\there"] {
        let mut ws = ws(&url).await?;
        let register = ClientMessage::Register { version: PROTOCOL_VERSION, id: bad.into(), token: token_for(bad) };
        ws.send(Message::text(register.encode())).await?;
        ensure!(
            matches!(recv(&mut ws).await?, ServerMessage::Error { code, .. } if code == ErrorCode::BadRequest.code())
        );
    }
    stranger.shutdown().await;
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Findings 4, 6, 7, 8: the relay (and the STUN server).

const TURN_SECRET: &str = "hardening relay secret 0123456789";

/// Time-limited credentials for `id` that expire at `expiry` (the scheme
/// signaling hands out).
fn time_limited(id: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{id}");
    let password = fogconnect::relay::server::shared_secret_password(TURN_SECRET.as_bytes(), &username);
    (username, password)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A raw TURN client on its own UDP socket: sends requests, reads answers.
struct RawTurn {
    socket: tokio::net::UdpSocket,
    server: SocketAddr,
    auth: Option<fogconnect_proto::turn::LongTermAuth>,
}

impl RawTurn {
    async fn new(server: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self { socket: tokio::net::UdpSocket::bind("127.0.0.1:0").await?, server, auth: None })
    }

    /// Sends `bytes` and returns the answer, `None` when none comes within
    /// `limit`.
    async fn exchange(&self, bytes: &[u8], limit: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        self.socket.send_to(bytes, self.server).await?;
        let mut buf = vec![0u8; 2048];
        match tokio::time::timeout(limit, self.socket.recv_from(&mut buf)).await {
            Ok(received) => Ok(Some(buf[..received?.0].to_vec())),
            Err(_) => Ok(None),
        }
    }

    /// Sends `request` (authenticated once the server told realm and
    /// nonce) and returns the decoded answer and the bytes sent.
    async fn request(
        &self,
        request: &fogconnect_proto::turn::TurnRequest,
    ) -> anyhow::Result<(fogconnect_proto::turn::TurnResponse, Vec<u8>)> {
        let txid: [u8; 12] = rand_txid();
        let bytes = fogconnect_proto::turn::encode_request(txid, request, self.auth.as_ref())?;
        let answer = self.exchange(&bytes, WAIT).await?.context("no answer from the relay")?;
        Ok((fogconnect_proto::turn::decode_response(&answer)?, bytes))
    }

    /// Allocates with `username`/`password`: the 401 first, then the
    /// authenticated Allocate, whose bytes are returned with the answer.
    async fn allocate(
        &mut self,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(fogconnect_proto::turn::TurnResponse, Vec<u8>)> {
        use fogconnect_proto::turn::{LongTermAuth, TurnRequest, TurnResponse};
        let (challenge, _) = self
            .request(&TurnRequest::Allocate { lifetime: Some(600), family: None, even_port: None, reservation: None })
            .await?;
        let TurnResponse::Error { code: 401, realm: Some(realm), nonce: Some(nonce), .. } = challenge else {
            bail!("expected a 401 challenge, got {challenge:?}");
        };
        self.auth = Some(LongTermAuth { username: username.into(), password: password.into(), realm, nonce });
        self.request(&TurnRequest::Allocate { lifetime: Some(600), family: None, even_port: None, reservation: None })
            .await
    }
}

fn rand_txid() -> [u8; 12] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut txid = [0u8; 12];
    txid[..8].copy_from_slice(&n.to_be_bytes());
    txid[8..].copy_from_slice(&std::process::id().to_be_bytes());
    txid
}

fn error_code(response: &fogconnect_proto::turn::TurnResponse) -> Option<u16> {
    match response {
        fogconnect_proto::turn::TurnResponse::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn start_relay(extra: &[&str], nofile: Option<u64>) -> anyhow::Result<ServerProcess> {
    let mut args = vec!["relay", "--listen", "127.0.0.1:0", "--relay-ip", "127.0.0.1"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args, nofile, "relay listening on ", &[("FOGCONNECT_TURN_SECRET", TURN_SECRET)])
}

/// A captured Allocate replayed from another port of the same IP is
/// challenged (438) instead of allocating: nonces are bound to the
/// 5-tuple. Fresh time-limited credentials of one id share its quota.
/// Peers in special-purpose ranges, and IPv6 peers on an IPv4 allocation,
/// are refused.
#[tokio::test]
async fn turn_nonces_quotas_and_forbidden_peers() -> anyhow::Result<()> {
    use fogconnect_proto::turn::{TurnRequest, TurnResponse};
    let relay = start_relay(&["--max-allocations-per-user", "2"], None)?;
    let (username, password) = time_limited("mallory", unix_now() + 600);
    let mut first = RawTurn::new(relay.addr).await?;
    let (allocated, captured) = first.allocate(&username, &password).await?;
    ensure!(matches!(allocated, TurnResponse::Allocated { .. }), "{allocated:?}");
    let replayer = RawTurn::new(relay.addr).await?;
    let answer = replayer.exchange(&captured, WAIT).await?.context("no answer to the replay")?;
    let answer = fogconnect_proto::turn::decode_response(&answer)?;
    ensure!(error_code(&answer) == Some(438), "a replayed Allocate from another port got {answer:?}");

    // Quota per identity: three credential sets of one id, two allocations.
    let mut outcomes = Vec::new();
    for later in [1200, 1800] {
        let (username, password) = time_limited("mallory", unix_now() + later);
        let mut client = RawTurn::new(relay.addr).await?;
        outcomes.push(client.allocate(&username, &password).await?.0);
    }
    ensure!(matches!(outcomes[0], TurnResponse::Allocated { .. }), "{outcomes:?}");
    ensure!(error_code(&outcomes[1]) == Some(486), "a third allocation of one id: {:?}", outcomes[1]);

    // Forbidden peers.
    let forbidden = ["0.1.2.3:9", "192.0.0.9:9", "198.18.0.1:9", "240.0.0.1:9", "127.0.0.1:9", "10.1.2.3:9"];
    for peer in forbidden {
        let (answer, _) = first.request(&TurnRequest::CreatePermission { peers: vec![peer.parse()?] }).await?;
        ensure!(error_code(&answer) == Some(403), "permission to {peer}: {answer:?}");
    }
    for peer in ["[::127.0.0.1]:9", "[64:ff9b::7f00:1]:9", "[2002:7f00:1::1]:9", "[fec0::1]:9", "[2001:4860::1]:9"] {
        let (answer, _) = first.request(&TurnRequest::CreatePermission { peers: vec![peer.parse()?] }).await?;
        ensure!(error_code(&answer) == Some(443), "an IPv6 peer {peer} on an IPv4 allocation: {answer:?}");
    }
    let (answer, _) = first.request(&TurnRequest::CreatePermission { peers: vec!["203.0.113.5:9".parse()?] }).await?;
    ensure!(matches!(answer, TurnResponse::Success { .. }), "a public peer: {answer:?}");
    Ok(())
}

/// Unauthenticated requests from one address get answers within a
/// per-address budget (the relay's 401s and Binding answers, the STUN
/// server's Binding answers): a spoofed source cannot turn either into a
/// reflector. The STUN server does not answer a wrong FINGERPRINT.
#[tokio::test]
async fn unauthenticated_answers_are_limited_per_address() -> anyhow::Result<()> {
    use fogconnect_proto::stun::{BindingRequest, binding_request};
    let relay = start_relay(&[], None)?;
    let stun = ServerProcess::start(&["stun", "--listen", "127.0.0.1:0"], None, "stun listening on ", &[])?;
    for (name, server, burst) in [("relay", relay.addr, 40u64), ("stun", stun.addr, 400)] {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let request = binding_request([1; 12], &BindingRequest::default())?;
        let started = Instant::now();
        let sent = 2_000u64;
        for _ in 0..sent {
            socket.send_to(&request, server).await?;
        }
        let mut answers = 0u64;
        let mut buf = [0u8; 2048];
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await {
            answers += 1;
        }
        let rate = if name == "relay" { 20.0 } else { 200.0 };
        let allowed = burst + (started.elapsed().as_secs_f64() * rate).ceil() as u64;
        println!("{name}: {answers} answers to {sent} unauthenticated requests from one address (allowed {allowed})");
        ensure!(answers > 0 && answers <= allowed, "{name}: {answers} answers, at most {allowed} allowed");
    }
    // A wrong FINGERPRINT gets no answer from a fresh address.
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await?;
    let mut request = binding_request([2; 12], &BindingRequest { auth: Some(("a:b", "pw")), ..Default::default() })?;
    let last = request.len() - 1;
    request[last] ^= 0xff;
    socket.send_to(&request, stun.addr).await?;
    let mut buf = [0u8; 2048];
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await.is_err(),
        "the STUN server answered a request with a wrong FINGERPRINT"
    );
    Ok(())
}

/// Hundreds of idle TCP connections from one address at a relay limited
/// to 256 descriptors: the address gets its share, the rest is closed at
/// once, the share is closed when it does not authenticate in time, and
/// UDP allocations and a TCP client from another address are served.
#[tokio::test]
async fn idle_tcp_connections_cannot_exhaust_the_relay() -> anyhow::Result<()> {
    fogconnect::limits::raise_descriptor_limit();
    let relay = start_relay(&["--max-tcp-clients-per-ip", "16", "--tcp-auth-timeout-s", "1"], Some(256))?;
    let mut idle = idle_connections("127.0.0.2".parse()?, relay.addr, 400).await;
    let mut open = 0;
    for stream in idle.iter_mut() {
        if !closed_by_server(stream, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    ensure!(open <= 16, "{open} idle TCP connections held from one address with a cap of 16");
    // UDP allocations still get a relay socket each.
    let mut allocated = 0;
    for n in 0..20 {
        let (username, password) = time_limited(&format!("device-{n}"), unix_now() + 600);
        let mut client = RawTurn::new(relay.addr).await?;
        if matches!(
            client.allocate(&username, &password).await?.0,
            fogconnect_proto::turn::TurnResponse::Allocated { .. }
        ) {
            allocated += 1;
        }
    }
    ensure!(allocated == 20, "only {allocated} of 20 UDP allocations while idle TCP clients wait");
    // The idle ones are closed for not authenticating.
    let started = Instant::now();
    for stream in idle.iter_mut() {
        ensure!(closed_by_server(stream, WAIT).await, "an unauthenticated TCP client outlived the deadline");
    }
    ensure!(started.elapsed() < Duration::from_secs(4), "idle TCP clients closed after {:?}", started.elapsed());
    // A TCP client from another address is served.
    let mut tcp = tokio::net::TcpStream::connect(relay.addr).await?;
    let request = fogconnect_proto::turn::encode_request(
        rand_txid(),
        &fogconnect_proto::turn::TurnRequest::Allocate {
            lifetime: None,
            family: None,
            even_port: None,
            reservation: None,
        },
        None,
    )?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(&request).await?;
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await??;
    let answer = fogconnect_proto::turn::decode_response(&buf[..n])?;
    ensure!(error_code(&answer) == Some(401), "a TCP client got {answer:?}");
    Ok(())
}
