//! The TURN client against the real coturn (installed by `make test`):
//! allocation with long-term credentials, a permission, data both ways as
//! Send/Data indications and then over a channel.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::Running;
use common::turn::{
    drive, free_port, start_bare_fogconnect_relay, start_coturn, start_fogconnect_relay, test_client_config,
};
use fogconnect::nat::transaction::RetransmitPolicy;
use fogconnect::relay::client::{TurnClient, TurnConfig, TurnEvent};
use tokio::net::UdpSocket;

async fn recv_from(peer: &UdpSocket) -> anyhow::Result<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    let (len, from) =
        tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await.context("peer got nothing")??;
    Ok((buf[..len].to_vec(), from))
}

#[tokio::test]
async fn our_client_relays_through_coturn() -> anyhow::Result<()> {
    let port = free_port()?;
    let _coturn = start_coturn(port)?;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;
    // coturn needs a moment to listen: the client's retransmissions (RFC
    // 5389 schedule, 100 ms initial) cover it.
    let mut client = TurnClient::new(test_client_config(server), Instant::now());
    let mut events = Vec::new();
    let limit = Duration::from_secs(10);
    drive(&mut client, &socket, server, &mut events, limit, |c, _| c.relayed().is_some()).await?;
    let relayed = client.relayed().context("relayed address")?;
    ensure!(relayed.ip().is_loopback() && relayed.port() >= 49152, "{relayed}");

    // Permission, then data both ways as indications.
    client.permit(peer_addr, Instant::now());
    drive(&mut client, &socket, server, &mut events, limit, |c, _| c.is_permitted(peer_addr)).await?;
    client.send_to(peer_addr, b"via send indication")?;
    drive(&mut client, &socket, server, &mut events, limit, |_, _| true).await?;
    let (data, from) = recv_from(&peer).await?;
    assert_eq!((data.as_slice(), from), (&b"via send indication"[..], relayed));
    peer.send_to(b"back as data indication", relayed).await?;
    drive(&mut client, &socket, server, &mut events, limit, |_, e| {
        e.iter().any(|e| matches!(e, TurnEvent::Data { .. }))
    })
    .await?;
    ensure!(
        events.contains(&TurnEvent::Data { peer: peer_addr, data: b"back as data indication".to_vec() }),
        "{events:?}"
    );

    // A channel, then data both ways as ChannelData.
    events.clear();
    client.bind_channel(peer_addr, Instant::now())?;
    drive(&mut client, &socket, server, &mut events, limit, |c, _| c.is_bound(peer_addr)).await?;
    client.send_to(peer_addr, b"over the channel")?;
    drive(&mut client, &socket, server, &mut events, limit, |_, _| true).await?;
    let (data, from) = recv_from(&peer).await?;
    assert_eq!((data.as_slice(), from), (&b"over the channel"[..], relayed));
    peer.send_to(b"channel back", relayed).await?;
    drive(&mut client, &socket, server, &mut events, limit, |_, e| !e.is_empty()).await?;
    assert_eq!(events, [TurnEvent::Data { peer: peer_addr, data: b"channel back".to_vec() }]);

    client.close();
    while let Some(bytes) = client.poll_transmit() {
        socket.send_to(&bytes, server).await?;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_unreachable_server_fail_clearly() -> anyhow::Result<()> {
    let port = free_port()?;
    let _coturn = start_coturn(port)?;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let config = TurnConfig { password: "wrong".into(), ..test_client_config(server) };
    let mut client = TurnClient::new(config.clone(), Instant::now());
    let mut events = Vec::new();
    let result = drive(&mut client, &socket, server, &mut events, Duration::from_secs(10), |_, _| false).await;
    let message = format!("{:#}", result.err().context("a wrong password must fail")?);
    ensure!(message.contains("401") && message.contains("wrong user name or password"), "{message}");

    // Nothing listens on this port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let nowhere = silent.local_addr()?;
    let quick = RetransmitPolicy { rto: Duration::from_millis(20), max_sends: 3, last_wait: 2 };
    let mut client = TurnClient::new(TurnConfig { server: nowhere, retransmit: quick, ..config }, Instant::now());
    let result = drive(&mut client, &socket, nowhere, &mut events, Duration::from_secs(5), |_, _| false).await;
    let message = format!("{:#}", result.err().context("an unreachable server must fail")?);
    ensure!(message.contains("unreachable"), "{message}");
    Ok(())
}

/// coturn's own test client, `turnutils_uclient`, against `fogconnect
/// relay`: its default RTP/RTCP pairs (EVEN-PORT with R, then
/// RESERVATION-TOKEN), static users and time-limited credentials,
/// ChannelData and Send/Data indications, over UDP and TCP, several
/// clients at once; nothing lost.
#[test]
fn coturn_client_relays_through_our_server() -> anyhow::Result<()> {
    let peer_port = free_port()?.to_string();
    let _peer = Running(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("turnutils_peer (coturn) missing")?,
    );
    for (what, extra) in [
        // The client's default: RTP/RTCP pairs, the RTP allocation with
        // EVEN-PORT (R set), the RTCP one claiming the reserved port with
        // its RESERVATION-TOKEN.
        ("RTP/RTCP pairs, reserved ports, 2 clients", &["-u", "dev", "-w", "secret", "-m", "2"][..]),
        // `-c`: no RTCP, one allocation per client.
        ("channels, 4 clients", &["-c", "-u", "dev", "-w", "secret", "-m", "4"]),
        ("send/data indications", &["-c", "-u", "dev", "-w", "secret", "-s"]),
        ("time-limited credentials", &["-c", "-u", "dev", "-W", "rest secret"]),
        ("TCP, channels, 3 clients", &["-c", "-t", "-u", "dev", "-w", "secret", "-m", "3"]),
        ("TCP, send/data indications", &["-c", "-t", "-u", "dev", "-w", "secret", "-s"]),
    ] {
        // The client binds a first channel to the peer's port + 1, then a
        // random one of 4,096 to the peer's port: one time in 4,096 it
        // draws the number it already bound, which RFC 8656 (section 12)
        // has the server refuse, as coturn does. Only that run is made
        // again, at most twice.
        let mut attempts = 0;
        let (_relay, metrics, text) = loop {
            attempts += 1;
            // A relay of its own per run: a run's allocations outlive its
            // client, and the next client may get the same local port (an
            // allocation of another user there is refused with 441).
            let relay_port = free_port()?;
            let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let metrics_arg = metrics.to_string();
            let relay =
                start_fogconnect_relay(relay_port, &["--auth-secret", "rest secret", "--metrics", &metrics_arg])?;
            let port = relay_port.to_string();
            let base = ["-e", "127.0.0.1", "-r", &peer_port, "-n", "50", "-p", &port];
            let out = Command::new("turnutils_uclient").args(base).args(extra).arg("127.0.0.1").output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            if attempts < 3 && text.contains("channel bind: error 400 (Bad Request: channel or peer bound otherwise)") {
                continue;
            }
            break (relay, metrics, text);
        };
        let summary: Vec<&str> = text.lines().filter(|l| l.contains("tot_send_msgs=") && !l.contains("msz=")).collect();
        ensure!(text.contains("Total lost packets 0 (0.000000%)"), "{what}: {text}");
        let sent_and_received = summary.iter().any(|l| {
            let count =
                |key: &str| l.split(key).nth(1).and_then(|r| r.split(',').next()).map(str::trim).map(str::to_owned);
            count("tot_send_msgs=").is_some_and(|s| s != "0") && count("tot_send_msgs=") == count("tot_recv_msgs=")
        });
        ensure!(sent_and_received, "{what}: {summary:?}");
        // The relay's metrics tell the same story (published every second).
        // At least one allocation per client (with RTP/RTCP pairs the
        // client does not always make its second one before it is done).
        let clients: f64 = extra.iter().skip_while(|a| **a != "-m").nth(1).map_or(Ok(1.0), |m| m.parse())?;
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            let (code, text) = common::http_get(metrics, "/metrics")?;
            ensure!(code == 200, "{what}: metrics answered {code}");
            let granted = common::sample(&text, "fogconnect_relay_allocations_granted_total").unwrap_or(0.0);
            let bytes = common::sample(&text, "fogconnect_relay_bytes_total{direction=\"to_peer\"}").unwrap_or(0.0);
            let challenges = common::sample(&text, "fogconnect_relay_refusals_total{code=\"401\"}").unwrap_or(0.0);
            if granted >= clients && bytes > 0.0 && challenges >= 1.0 {
                break;
            }
            ensure!(std::time::Instant::now() < deadline, "{what}: metrics do not add up:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// `fogconnect relay` over real sockets, as a deployment runs it (time-
/// limited credentials, one allocation per user, internal peers refused):
/// expired credentials get 401, a second allocation of the same user gets
/// 486, and a permission to relay to 127.0.0.1 gets 403 while the
/// allocation goes on.
#[tokio::test]
async fn our_relay_refuses_expired_credentials_over_quota_and_loopback_peers() -> anyhow::Result<()> {
    const SECRET: &str = "relay test secret 0123456789";
    let port = free_port()?;
    let options = ["--auth-secret", SECRET, "--max-allocations-per-user", "1"];
    let _relay = start_bare_fogconnect_relay(port, &options)?;
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let credentials = |expiry: u64| {
        let username = format!("{expiry}:dev");
        let password = fogconnect::relay::server::shared_secret_password(SECRET.as_bytes(), &username);
        TurnConfig {
            username,
            password,
            retransmit: RetransmitPolicy { rto: Duration::from_millis(100), max_sends: 5, last_wait: 4 },
            ..test_client_config(server)
        }
    };
    let mut events = Vec::new();

    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut expired = TurnClient::new(credentials(now - 60), Instant::now());
    let result = drive(&mut expired, &socket, server, &mut events, Duration::from_secs(5), |_, _| false).await;
    let message = format!("{:#}", result.err().context("expired credentials must be refused")?);
    ensure!(message.contains("401"), "{message}");

    let mut valid = TurnClient::new(credentials(now + 600), Instant::now());
    drive(&mut valid, &socket, server, &mut events, Duration::from_secs(5), |c, _| c.relayed().is_some()).await?;

    let other = UdpSocket::bind("127.0.0.1:0").await?;
    let mut second = TurnClient::new(credentials(now + 600), Instant::now());
    let result = drive(&mut second, &other, server, &mut events, Duration::from_secs(5), |_, _| false).await;
    let message = format!("{:#}", result.err().context("the user's second allocation must be refused")?);
    ensure!(message.contains("486") && message.contains("quota"), "{message}");

    let loopback: SocketAddr = ([127, 0, 0, 1], 9).into();
    valid.permit(loopback, Instant::now());
    events.clear();
    let refused = |_: &TurnClient, events: &mut Vec<TurnEvent>| {
        events.iter().any(|e| matches!(e, TurnEvent::PeerRefused { peer, .. } if peer.ip() == loopback.ip()))
    };
    drive(&mut valid, &socket, server, &mut events, Duration::from_secs(5), refused).await?;
    let refusal = format!("{events:?}");
    ensure!(refusal.contains("403"), "{refusal}");
    ensure!(!valid.is_permitted(loopback) && valid.relayed().is_some(), "the allocation must go on");
    Ok(())
}
