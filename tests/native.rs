//! Native services: the embedding application serves a service number with
//! its own Rust code, through the same dispatcher as plugins, with the same
//! connect / receive / close semantics; transports nobody offers are refused.

mod common;

use anyhow::{Context, bail, ensure};
use common::{WAIT, ask, closed_within, config, message, node_with};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{
    CloseKind, ConnectError, ConnectionEvent, Convention, Incoming, Node, NodeError, RefuseCode, Transport,
};

/// Accepts connections and answers each message with `prefix` + message,
/// until the connection ends; returns how each one ended.
fn serve(mut incoming: Incoming, prefix: &'static str) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut endings = tokio::task::JoinSet::new();
        while let Some(mut conn) = incoming.accept().await {
            endings.spawn(async move {
                loop {
                    match conn.recv().await {
                        ConnectionEvent::Message(data) if &data[..] == b"bye" => {
                            conn.close();
                            return "closed here".to_string();
                        }
                        ConnectionEvent::Message(data) => {
                            let mut reply = prefix.as_bytes().to_vec();
                            reply.extend_from_slice(&data);
                            if conn.send(reply).is_err() {
                                return "send failed".to_string();
                            }
                        }
                        ConnectionEvent::Closed(reason) => return reason.to_string(),
                    }
                }
            });
        }
        let mut ended = Vec::new();
        while let Some(done) = endings.join_next().await {
            ended.push(done.unwrap_or_else(|e| e.to_string()));
        }
        ended
    })
}

#[tokio::test]
async fn a_native_service_exchanges_and_closes_like_a_plugin() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    let incoming = device.incoming(1)?;
    assert_eq!(incoming.service(), Some(1));
    let served = serve(incoming, "native:");
    let app = node_with("app", &[]).await?;

    let mut conn = app.connect(device.local_addr(), Transport::Quic, 1).await?;
    assert_eq!(conn.convention().raw(), 0x15);
    assert_eq!(ask(&mut conn, "I am fog data!").await?, "native:I am fog data!");
    // Many messages, in order.
    for i in 0..500 {
        conn.send(format!("{i}").into_bytes())?;
    }
    for i in 0..500 {
        assert_eq!(message(&mut conn).await?, format!("native:{i}").into_bytes());
    }
    // The application side closes: the native side sees end of file.
    conn.close();
    // The native side closes: the application sees end of file.
    let mut second = app.connect(device.local_addr(), Transport::Quic, 1).await?;
    second.send(&b"bye"[..])?;
    let reason = closed_within(&mut second, WAIT).await?;
    ensure!(reason.kind == CloseKind::Eof, "{reason}");

    device.shutdown().await;
    let mut ended = tokio::time::timeout(WAIT, served).await.context("handler ends at shutdown")??;
    ended.sort();
    ensure!(ended.len() == 2, "{ended:?}");
    ensure!(ended[0] == "closed here" && ended[1].starts_with("eof"), "{ended:?}");
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_default_handler_gets_what_nobody_else_serves() -> anyhow::Result<()> {
    let device = node_with("device", &[(0, "echo")]).await?;
    let _seven = serve(device.incoming(7)?, "seven:");
    let _default = serve(device.incoming_default()?, "default:");
    let app = node_with("app", &[]).await?;

    let mut echo = app.connect(device.local_addr(), Transport::Quic, 0).await?;
    assert_eq!(ask(&mut echo, "x").await?, "x", "the plugin keeps its number");
    let mut seven = app.connect(device.local_addr(), Transport::Quic, 7).await?;
    assert_eq!(ask(&mut seven, "x").await?, "seven:x");
    let mut other = app.connect(device.local_addr(), Transport::Quic, 200).await?;
    assert_eq!(ask(&mut other, "x").await?, "default:x");

    // One server per number.
    match device.incoming(0) {
        Err(NodeError::ServiceTaken(0)) => {}
        other => bail!("a plugin's number was handed out natively: {other:?}"),
    }
    match device.incoming(7) {
        Err(NodeError::ServiceTaken(7)) => {}
        other => bail!("a native number was handed out twice: {other:?}"),
    }
    ensure!(matches!(device.incoming_default(), Err(NodeError::DefaultTaken)));
    match device.load_plugin(7, &common::plugin("echo")).await {
        Err(e) => ensure!(e.to_string().contains("already served"), "{e}"),
        Ok(()) => bail!("a plugin was loaded over a native service"),
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dropping_the_handler_frees_the_number() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    let app = node_with("app", &[]).await?;
    let mut incoming = device.incoming(3)?;
    let conn = app.connect(device.local_addr(), Transport::Quic, 3).await?;
    let mut accepted = tokio::time::timeout(WAIT, incoming.accept()).await?.context("accepted")?;
    ensure!(accepted.is_passive());
    ensure!(accepted.peer_id() == format!("fp:{}", app.fingerprint()));
    // A connection waiting to be accepted when the handler goes is closed.
    let mut waiting = app.connect(device.local_addr(), Transport::Quic, 3).await?;
    drop(incoming);
    let reason = closed_within(&mut waiting, WAIT).await?;
    ensure!(reason.kind == CloseKind::Eof, "{reason}");
    // Accepted connections live on.
    conn.send(&b"still here"[..])?;
    ensure!(message(&mut accepted).await? == b"still here"[..]);
    match app.connect(device.local_addr(), Transport::Quic, 3).await {
        Err(ConnectError::Refused { code: RefuseCode::NoSuchService, message }) => {
            ensure!(message == "no such service: 3", "{message}")
        }
        other => bail!("expected no such service, got {other:?}"),
    }
    // The number can be served again, by a plugin this time.
    device.load_plugin(3, &common::plugin("echo")).await?;
    let mut echo = app.connect(device.local_addr(), Transport::Quic, 3).await?;
    assert_eq!(ask(&mut echo, "again").await?, "again");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn transports_not_offered_are_refused_with_the_reason() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    let _default = serve(device.incoming_default()?, "");
    let app = node_with("app", &[]).await?;
    for transport in [Transport::Rtc, Transport::Utp, Transport::Sctp] {
        match app.connect(device.local_addr(), transport, 1).await {
            Err(e @ ConnectError::UnsupportedTransport(t)) if t == transport => {
                ensure!(e.to_string().starts_with("unsupported transport"), "{e}");
                ensure!(e.close_reason().kind == CloseKind::Refused);
            }
            other => bail!("{transport}: {other:?}"),
        }
    }
    // Sent as given, each reaches the device, which refuses it the same way.
    for transport in [Transport::Rtc, Transport::Utp, Transport::Sctp] {
        match app.connect_raw(device.local_addr(), Convention::new(transport, 1).raw(), None).await {
            Err(ConnectError::Refused { code: RefuseCode::UnsupportedTransport, message }) => {
                let expected = format!("unsupported transport: {transport} (code {})", transport.code());
                ensure!(message.starts_with(&expected), "{message}")
            }
            other => bail!("{transport} sent as given: {other:?}"),
        }
    }
    // So is an unknown code.
    match app.connect_raw(device.local_addr(), 0x17, None).await {
        Err(ConnectError::Refused { code: RefuseCode::UnsupportedTransport, message }) => {
            ensure!(message.starts_with("unsupported transport"), "{message}")
        }
        other => bail!("code 7: {other:?}"),
    }
    // The device serves on.
    ensure!(app.connect(device.local_addr(), Transport::Quic, 1).await.is_ok(), "QUIC after the refusals");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_handler_made_before_start_serves_connects_by_id() -> anyhow::Result<()> {
    const SECRET: &[u8] = b"native test secret";
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let builder = Node::builder()
        .config(config())
        .node_id("device")
        .signal(server.url(), token::issue(SECRET, "device", u64::MAX / 2));
    let incoming = builder.incoming(1)?;
    let device = builder.start().await?;
    let _served = serve(incoming, "by id:");
    device.registered(WAIT).await?;
    let app = Node::builder()
        .config(config())
        .node_id("app")
        .signal(server.url(), token::issue(SECRET, "app", u64::MAX / 2))
        .start()
        .await?;
    app.registered(WAIT).await?;
    let mut conn = app.connect_peer("device", Transport::Quic, 1).await?;
    ensure!(conn.peer_verified() && conn.peer_id() == "device");
    assert_eq!(ask(&mut conn, "hi").await?, "by id:hi");
    match app.connect_peer("device", Transport::Quic, 2).await {
        Err(ConnectError::Refused { code: RefuseCode::NoSuchService, message }) => {
            ensure!(message == "no such service: 2", "{message}")
        }
        other => bail!("service 2: {other:?}"),
    }
    match app.connect_peer("device", Transport::Sctp, 1).await {
        Err(ConnectError::UnsupportedTransport(Transport::Sctp)) => {}
        other => bail!("SCTP by id: {other:?}"),
    }
    drop(conn);
    // Many connects to one peer at once (more than a peer answers from one
    // caller at a time): they wait for the first link and ride it.
    let second = Node::builder()
        .config(config())
        .node_id("second-app")
        .signal(server.url(), token::issue(SECRET, "second-app", u64::MAX / 2))
        .start()
        .await?;
    second.registered(WAIT).await?;
    let connects = (0..40).map(|_| second.connect_peer("device", Transport::Quic, 1));
    let mut conns = Vec::new();
    for result in futures_util::future::join_all(connects).await {
        conns.push(result.context("a concurrent connect by id failed")?);
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ask(conn, &i.to_string()).await?, format!("by id:{i}"));
    }
    second.shutdown().await;
    app.shutdown().await;
    device.shutdown().await;
    server.shutdown();
    Ok(())
}

#[tokio::test]
async fn hundreds_of_connections_share_one_link() -> anyhow::Result<()> {
    // A link starts allowing 32 streams at once and raises the limit as
    // the peer's connections near it: 300 at once all open and talk.
    let device = node_with("device", &[]).await?;
    let _served = serve(device.incoming(1)?, "");
    let app = node_with("app", &[]).await?;
    let connects = (0..300).map(|_| app.connect(device.local_addr(), Transport::Quic, 1));
    let mut conns = Vec::new();
    for result in futures_util::future::join_all(connects).await {
        conns.push(result.context("a concurrent connect failed")?);
    }
    for (i, conn) in conns.iter().enumerate() {
        conn.send(i.to_string().into_bytes())?;
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        ensure!(message(conn).await? == i.to_string().into_bytes(), "connection {i}");
    }
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_beyond_the_link_limit_fails_at_once_with_the_reason() -> anyhow::Result<()> {
    // One link carries at most MAX_LINK_STREAMS connections at once: the
    // next connect fails at once with the reason (it used to wait for a
    // stream the peer never grants, and time out), and one more fits as
    // soon as one closes.
    let limit = fogconnect::MAX_LINK_STREAMS as usize;
    let device = node_with("device", &[]).await?;
    let _served = serve(device.incoming(1)?, "");
    let app = node_with("app", &[]).await?;
    let mut conns = Vec::with_capacity(limit);
    while conns.len() < limit {
        // Below the native handler's backlog of waiting connections.
        let batch = (limit - conns.len()).min(100);
        let connects = (0..batch).map(|_| app.connect(device.local_addr(), Transport::Quic, 1));
        for result in futures_util::future::join_all(connects).await {
            conns.push(result.with_context(|| format!("connect {} of {limit}", conns.len() + 1))?);
        }
    }
    let started = std::time::Instant::now();
    match app.connect(device.local_addr(), Transport::Quic, 1).await {
        Err(ConnectError::LinkFull { limit: reported }) => ensure!(reported as usize == limit),
        Err(other) => bail!("the connect beyond the limit failed otherwise: {other}"),
        Ok(_) => bail!("a connect beyond the limit of {limit} succeeded"),
    }
    ensure!(started.elapsed() < std::time::Duration::from_secs(1), "refused after {:?}", started.elapsed());
    let last = conns.len() - 1;
    ensure!(ask(&mut conns[last], "still here").await? == "still here", "the open connections still talk");

    let mut closed = conns.pop().context("a connection")?;
    closed.close();
    let mut next = tokio::time::timeout(WAIT, async {
        loop {
            match app.connect(device.local_addr(), Transport::Quic, 1).await {
                Err(ConnectError::LinkFull { .. }) => tokio::task::yield_now().await,
                other => return other,
            }
        }
    })
    .await
    .context("no connect fits after one closed")??;
    ensure!(ask(&mut next, "fits").await? == "fits");
    app.shutdown().await;
    device.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_messages_arrive_whole_with_segmentation_offload_on_and_off() -> anyhow::Result<()> {
    // 4 MiB of numbered 16 KiB messages, each filled with a pattern of its
    // number, from one node to another: every one arrives, in order and
    // intact, whether the sockets batch datagrams (GSO, GRO) or not; and
    // the counters show which way they went.
    const MESSAGES: u32 = 256;
    const SIZE: usize = 16 * 1024;
    fn body(number: u32) -> Vec<u8> {
        let mut data: Vec<u8> = (0..SIZE).map(|i| (number as usize * 31 + i) as u8).collect();
        data[..4].copy_from_slice(&number.to_be_bytes());
        data
    }
    for offload in [true, false] {
        let config = || fogconnect::NodeConfig { segmentation_offload: offload, ..config() };
        let device = common::node_with_config("device", &[], config()).await?;
        let mut incoming = device.incoming(1)?;
        let checked = tokio::spawn(async move {
            let mut conn = incoming.accept().await.context("no connection")?;
            for number in 0..MESSAGES {
                match conn.recv().await {
                    ConnectionEvent::Message(data) => {
                        ensure!(data[..] == body(number)[..], "message {number} arrived altered or out of order")
                    }
                    ConnectionEvent::Closed(reason) => bail!("closed after {number} messages: {reason}"),
                }
            }
            conn.send(b"all here".to_vec())?;
            anyhow::Ok(conn)
        });
        let app = common::node_with_config("app", &[], config()).await?;
        let mut conn = app.connect(device.local_addr(), Transport::Quic, 1).await?;
        for number in 0..MESSAGES {
            conn.send_when_ready(body(number)).await?;
        }
        ensure!(message(&mut conn).await?[..] == b"all here"[..], "offload {offload}: the receiver did not confirm");
        let _device_side = tokio::time::timeout(WAIT, checked).await.context("the receiver hung")???;
        let batched = |node: &Node| {
            let counters = node.socket_counters();
            let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            (load(&counters.offload_sends), load(&counters.offload_receives))
        };
        let ((app_sends, app_receives), (device_sends, device_receives)) = (batched(&app), batched(&device));
        if offload {
            ensure!(app_sends > 0, "offload on: the sender never handed the kernel a batch");
            ensure!(device_receives > 0, "offload on: the receiver never took a batch from the kernel");
        } else {
            ensure!(
                app_sends + app_receives + device_sends + device_receives == 0,
                "offload off, yet batches passed: app {app_sends}/{app_receives}, device {device_sends}/{device_receives}"
            );
        }
        app.shutdown().await;
        device.shutdown().await;
    }
    Ok(())
}
