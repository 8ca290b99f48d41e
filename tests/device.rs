//! The device build: the node without the WebAssembly runtime and without
//! browser connections (`cargo test --no-default-features --test device`,
//! which `make test` runs), as a device maker serving native services
//! embeds it. It registers, serves a native service by id, and refuses
//! what it cannot serve with the reason. The same tests run in the full
//! build, except the browser refusal.

mod common;

use anyhow::{bail, ensure};
use common::ask;
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::{ConnectError, ConnectionEvent, Incoming, RefuseCode, Transport};

const SECRET: &[u8] = b"device build test secret";

/// Echoes every message with `prefix` on every accepted connection.
fn echo(mut incoming: Incoming, prefix: &'static str) {
    tokio::spawn(async move {
        while let Some(mut conn) = incoming.accept().await {
            tokio::spawn(async move {
                while let ConnectionEvent::Message(data) = conn.recv().await {
                    let mut reply = prefix.as_bytes().to_vec();
                    reply.extend_from_slice(&data);
                    if conn.send(reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[tokio::test]
async fn a_device_serves_a_native_service_by_id_and_refuses_the_rest() -> anyhow::Result<()> {
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let device = common::registered_node(&server.url(), SECRET, "device").await?;
    echo(device.incoming(1)?, "device:");
    let app = common::registered_node(&server.url(), SECRET, "app").await?;

    let mut conn = app.connect_peer("device", Transport::Quic, 1).await?;
    ensure!(conn.peer_verified() && conn.peer_id() == "device");
    ensure!(ask(&mut conn, "I am fog data!").await? == "device:I am fog data!");
    for i in 0..200 {
        conn.send(i.to_string().into_bytes())?;
    }
    for i in 0..200 {
        ensure!(common::message(&mut conn).await? == format!("device:{i}").into_bytes(), "message {i}");
    }
    match app.connect_peer("device", Transport::Quic, 2).await {
        Err(ConnectError::Refused { code: RefuseCode::NoSuchService, message }) => {
            ensure!(message == "no such service: 2", "{message}")
        }
        other => bail!("service 2: {other:?}"),
    }
    app.shutdown().await;
    device.shutdown().await;
    server.shutdown();
    Ok(())
}

/// A browser's request reaches a device without browser connections: it is
/// refused at once as an unsupported transport, with the reason, rather
/// than left unanswered.
#[cfg(not(feature = "browsers"))]
#[tokio::test]
async fn a_device_without_browsers_refuses_a_browser_with_the_reason() -> anyhow::Result<()> {
    use common::WAIT;
    use fogconnect::Convention;
    use fogconnect::signal::protocol::{ClientMessage, ServerMessage};
    use fogconnect::signal::token;

    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let device = common::registered_node(&server.url(), SECRET, "device").await?;
    echo(device.incoming(1)?, "device:");
    let (mut browser, welcome) =
        common::signal::Raw::register(&server.url(), "browser", &token::issue(SECRET, "browser", u64::MAX / 2)).await?;
    ensure!(matches!(welcome, ServerMessage::Registered { .. }), "{welcome:?}");
    let convention = Convention::new(Transport::Rtc, 1).raw();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string();
    browser.send(&ClientMessage::RtcConnect { request_id: 7, to: "device".into(), convention, sdp }).await?;
    match browser.recv_within(WAIT).await? {
        ServerMessage::Rejected { request_id: 7, from, code, message } => {
            ensure!(from == "device", "{from}");
            ensure!(code == RefuseCode::UnsupportedTransport as u16, "code {code}: {message}");
            ensure!(message.contains("without browser connections"), "{message}");
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    device.shutdown().await;
    server.shutdown();
    Ok(())
}
