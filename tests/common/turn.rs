//! TURN servers for tests and benchmarks: coturn and `fogconnect relay` on
//! loopback with the user `dev:secret` in realm `fog.test`, and a loop
//! that drives our TURN client over a UDP socket.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fogconnect::nat::transaction::RetransmitPolicy;
use fogconnect::relay::client::{TurnClient, TurnConfig, TurnEvent};
use fogconnect::relay::url::TurnTransport;
use tokio::net::UdpSocket;

use super::Running;

/// Our TURN client's configuration for the test user `dev:secret` on
/// `server` over UDP: 100 ms initial RTO and seven sends, which cover a
/// server that is still starting.
pub fn test_client_config(server: SocketAddr) -> TurnConfig {
    TurnConfig {
        server,
        username: "dev".into(),
        password: "secret".into(),
        lifetime: 600,
        retransmit: RetransmitPolicy { rto: Duration::from_millis(100), max_sends: 7, last_wait: 8 },
        transport: TurnTransport::Udp,
        family: None,
    }
}

/// A UDP and TCP port free on loopback right now.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

/// coturn on `127.0.0.1:port`, relaying on ports 49152-65535, loopback
/// peers allowed.
pub fn start_coturn(port: u16) -> anyhow::Result<Running> {
    let port = port.to_string();
    let child = Command::new("turnserver")
        .args(["-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", &port])
        .args(["--lt-cred-mech", "--user", "dev:secret", "--realm", "fog.test", "--allow-loopback-peers"])
        .args(["--no-tls", "--no-dtls", "--no-cli", "--min-port", "49152", "--max-port", "65535"])
        .args(["--log-file", "stdout", "--simple-log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start turnserver (apt-get install coturn; make lab-deps installs it)")?;
    Ok(Running(child))
}

/// The options of the test relays: realm `fog.test`, user `dev:secret`,
/// loopback peers allowed.
const TEST_RELAY_OPTIONS: [&str; 5] = ["--realm", "fog.test", "--user", "dev:secret", "--allow-private-peers"];

/// The command line of `fogconnect relay` on `127.0.0.1:port` with the
/// test options and `extra` ones.
fn relay_command(port: u16, extra: &[&str]) -> Command {
    let mut command = bare_relay_command(port, &TEST_RELAY_OPTIONS);
    command.args(extra);
    command
}

/// The command line of `fogconnect relay` on `127.0.0.1:port` with only
/// `options`.
fn bare_relay_command(port: u16, options: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fogconnect"));
    command
        .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
        .args(options)
        .env("RUST_LOG", "error")
        .stderr(Stdio::null());
    command
}

/// `fogconnect relay` (see [`relay_command`]); returns once it listens.
pub fn start_fogconnect_relay(port: u16, extra: &[&str]) -> anyhow::Result<Running> {
    started(relay_command(port, extra))
}

/// `fogconnect relay` on `127.0.0.1:port` with only `options` (no test
/// user, internal peers refused); returns once it listens.
pub fn start_bare_fogconnect_relay(port: u16, options: &[&str]) -> anyhow::Result<Running> {
    started(bare_relay_command(port, options))
}

fn started(mut command: Command) -> anyhow::Result<Running> {
    let mut relay = Running(command.stdout(Stdio::piped()).spawn()?);
    let line = BufReader::new(relay.0.stdout.take().context("stdout")?).lines().next().context("no output")??;
    ensure!(line.starts_with("relay listening on 127.0.0.1:"), "{line}");
    Ok(relay)
}

/// Drives `client` over `socket` until `done` holds or `limit` passes;
/// events go to `events`, a failure is an error.
pub async fn drive(
    client: &mut TurnClient,
    socket: &UdpSocket,
    server: SocketAddr,
    events: &mut Vec<TurnEvent>,
    limit: Duration,
    mut done: impl FnMut(&TurnClient, &mut Vec<TurnEvent>) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 65_536];
    loop {
        client.handle_timeout(Instant::now());
        while let Some(bytes) = client.poll_transmit() {
            socket.send_to(&bytes, server).await?;
        }
        while let Some(event) = client.poll_event() {
            if let TurnEvent::Failed(e) = &event {
                bail!("relay failed: {e}");
            }
            events.push(event);
        }
        if done(client, events) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not done within {limit:?}; events {events:?}");
        }
        let wake = client.poll_timeout().unwrap_or(deadline).min(deadline);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, from) = received?;
                if from == server {
                    client.handle_datagram(&buf[..len], Instant::now());
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}
