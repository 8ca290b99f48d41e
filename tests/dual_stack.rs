//! IPv6 and dual stack on loopback: a node bound to `[::]` serves IPv4 and
//! IPv6 peers on one port, names IPv4 peers plainly (never IPv4-mapped),
//! offers candidates of both families, and a connect by id between two
//! dual-stack nodes takes the IPv6 pair. (Across routers and firewalls:
//! the IPv6 lab in `tests/nat_lab.rs`.)

mod common;

use std::net::SocketAddr;

use anyhow::ensure;
use common::{ask, config};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{Node, NodeConfig, Transport};

const SECRET: &[u8] = b"dual stack test secret";

fn on(listen: &str) -> anyhow::Result<NodeConfig> {
    Ok(NodeConfig { listen: listen.parse()?, ..config() })
}

async fn node(id: &str, listen: &str, signal: Option<&str>, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    let mut builder = Node::builder().config(on(listen)?).node_id(id);
    if let Some(url) = signal {
        builder = builder.signal(url, token::issue(SECRET, id, u64::MAX / 2));
    }
    for (service, name) in plugins {
        builder = builder.plugin(*service, common::plugin(name));
    }
    let node = builder.start().await?;
    if signal.is_some() {
        node.registered(common::WAIT).await?;
    }
    Ok(node)
}

#[tokio::test]
async fn a_dual_stack_node_serves_ipv4_and_ipv6_peers_on_one_port() -> anyhow::Result<()> {
    let device = node("device", "[::]:0", None, &[(0, "echo")]).await?;
    let port = device.local_addr().port();
    let v4 = node("app4", "127.0.0.1:0", None, &[(0, "echo")]).await?;
    let v6 = node("app6", "[::1]:0", None, &[]).await?;
    let to_v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let to_v6: SocketAddr = format!("[::1]:{port}").parse()?;
    let mut over_v4 = v4.connect(to_v4, Transport::Quic, 0).await?;
    let mut over_v6 = v6.connect(to_v6, Transport::Quic, 0).await?;
    assert_eq!(ask(&mut over_v4, "over IPv4").await?, "over IPv4");
    assert_eq!(ask(&mut over_v6, "over IPv6").await?, "over IPv6");
    assert_eq!(over_v4.remote_addr(), to_v4);
    assert_eq!(over_v6.remote_addr(), to_v6);
    // The device dials an IPv4 peer from its IPv6 socket and names it
    // plainly, not as ::ffff:127.0.0.1.
    let mut back = device.connect(v4.local_addr(), Transport::Quic, 0).await?;
    assert_eq!(ask(&mut back, "back over IPv4").await?, "back over IPv4");
    assert_eq!(back.remote_addr(), v4.local_addr());
    // An IPv4-only node cannot reach an IPv6 address: a clear error.
    let refused = v4.connect(to_v6, Transport::Quic, 0).await;
    ensure!(refused.is_err(), "an IPv4 socket reached an IPv6 address");
    for n in [v4, v6, device] {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn connects_by_id_take_the_ipv6_pair_between_dual_stack_nodes() -> anyhow::Result<()> {
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let url = server.url();
    let device = node("device", "[::]:0", Some(&url), &[(0, "echo")]).await?;
    let dual = node("dual", "[::]:0", Some(&url), &[]).await?;
    let v4 = node("v4", "127.0.0.1:0", Some(&url), &[]).await?;
    let mut conn = dual.connect_peer("device", Transport::Quic, 0).await?;
    assert_eq!(ask(&mut conn, "dual to dual").await?, "dual to dual");
    ensure!(conn.remote_addr().is_ipv6(), "dual-stack pair took {}", conn.remote_addr());
    let mut conn = v4.connect_peer("device", Transport::Quic, 0).await?;
    assert_eq!(ask(&mut conn, "v4 to dual").await?, "v4 to dual");
    ensure!(conn.remote_addr().is_ipv4(), "IPv4-only node took {}", conn.remote_addr());
    for n in [v4, dual, device] {
        n.shutdown().await;
    }
    drop(server);
    Ok(())
}
