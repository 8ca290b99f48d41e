//! Browsers behind NATs: a real headless Chromium in a namespace of the
//! NAT lab reaches a device behind another NAT over a DataChannel,
//! directly when the NATs allow it, through TURN otherwise (over TCP when
//! the browser's network blocks UDP). Needs root (CI runs as root).

mod common;
mod natlab;

use anyhow::{Context, ensure};
use common::browser::Browser;
use natlab::{Lab, NatKind};
use serde_json::Value;

/// Where the lab's signaling server serves the web app.
const APP: &str = "http://203.0.113.10:7600/";

/// Builds a lab with the browser's side behind `browser_nat` and the
/// device `dev-b` (echo on service 0) behind `device_nat`, connects from
/// a page in the browser's host, and returns the echo and the path the
/// browser took (`Connection.path()`).
async fn browse(browser_nat: NatKind, device_nat: NatKind) -> anyhow::Result<Value> {
    natlab::lab_available()?;
    let mut lab = Lab::new(browser_nat, device_nat)?;
    let url = lab.start_servers()?;
    let _device = lab.start_echo_node("host-b", &url, &[])?;
    let token = lab.token("web-a")?;
    let ns = lab.ns("host-a");
    let mut browser = Browser::launch(&["ip", "netns", "exec", &ns]).await?;
    let page = browser.open(APP).await?;
    let script = format!(
        r#"(async () => {{
            const fog = await import("/fogconnect.js");
            const session = await fog.signIn({{ id: "web-a", token: {token} }});
            const conn = await session.connect("dev-b", 0, {{ timeoutMs: 20000 }});
            const echo = await new Promise((resolve, reject) => {{
                const timer = setTimeout(() => reject(new Error("no echo")), 10000);
                conn.addEventListener("message", (e) => {{ clearTimeout(timer); resolve(e.detail.text()); }}, {{ once: true }});
                conn.send("across the NATs");
            }});
            const path = await conn.path();
            conn.close("done");
            return {{ echo, path }};
        }})()"#,
        token = serde_json::to_string(&token)?
    );
    let seen = browser
        .eval(&page, &script)
        .await
        .with_context(|| format!("{} × {}", browser_nat.name(), device_nat.name()))?;
    ensure!(seen["echo"] == "across the NATs", "{seen}");
    Ok(seen["path"].clone())
}

#[tokio::test]
async fn a_browser_behind_a_port_restricted_nat_reaches_a_device_behind_another_nat_directly() -> anyhow::Result<()> {
    let path = browse(NatKind::PortRestricted, NatKind::PortRestricted).await?;
    ensure!(path["relayed"] == false, "took a relay: {path}");
    ensure!(path["remote"]["address"] == "203.0.113.22", "the device's public address: {path}");
    Ok(())
}

#[tokio::test]
async fn a_browser_whose_network_blocks_udp_reaches_the_device_through_turn_over_tcp() -> anyhow::Result<()> {
    let path = browse(NatKind::UdpBlocked, NatKind::PortRestricted).await?;
    ensure!(path["local"]["type"] == "relay" && path["local"]["relayProtocol"] == "tcp", "{path}");
    Ok(())
}

#[tokio::test]
async fn a_browser_and_a_device_behind_symmetric_nats_go_through_turn() -> anyhow::Result<()> {
    let path = browse(NatKind::Symmetric, NatKind::Symmetric).await?;
    ensure!(path["relayed"] == true, "{path}");
    Ok(())
}
