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
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;

const SECRET: &[u8] = b"browser test secret";

fn token_for(id: &str) -> String {
    token::issue(SECRET, id, u64::MAX / 2)
}

/// A device registered with the server, on every interface (the browser
/// reaches it on the host's own address).
async fn device(url: &str, id: &str, plugins: &[(u8, &str)]) -> anyhow::Result<Node> {
    let listen: SocketAddr = "0.0.0.0:0".parse()?;
    let mut builder = Node::builder().config(config()).listen(listen).node_id(id).signal(url, token_for(id));
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

/// Waits until the app logged a line starting with `start`.
async fn logged(browser: &mut Browser, page: &Page, start: &str) -> anyhow::Result<()> {
    let condition = format!(
        "[...document.querySelectorAll('#log li')].some((li) => li.textContent.startsWith({}))",
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
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let device_a = device(&server.url(), "dev-a", &[(0, "echo"), (1, "demo")]).await?;
    let mut browser = Browser::launch(&[]).await?;
    let page = app_page(&mut browser, &server, "web-1", "dev-a").await?;

    click(&mut browser, &page, "signin-button").await?;
    browser.wait_for(&page, "document.querySelector('#peers li[data-id=\"dev-a\"]')", WAIT).await?;
    ensure!(browser.eval(&page, "document.getElementById('status').textContent").await? == "signed in as web-1");

    // Service 1 is the demo plugin: "I am fog data!" gets "I know!".
    click(&mut browser, &page, "connect").await?;
    logged(&mut browser, &page, "connected in").await?;
    click(&mut browser, &page, "send").await?;
    logged(&mut browser, &page, "I know!").await?;

    // A service nobody serves is refused with the node's reason.
    click(&mut browser, &page, "close").await?;
    logged(&mut browser, &page, "closed: local").await?;
    set_value(&mut browser, &page, "service", "9").await?;
    click(&mut browser, &page, "connect").await?;
    logged(&mut browser, &page, "refused: no such service: 9").await?;

    // Devices coming online and going offline show up live.
    let device_b = device(&server.url(), "dev-b", &[]).await?;
    browser.wait_for(&page, "document.querySelector('#peers li[data-id=\"dev-b\"]')", WAIT).await?;
    device_b.shutdown().await;
    browser.wait_for(&page, "!document.querySelector('#peers li[data-id=\"dev-b\"]')", WAIT).await?;
    logged(&mut browser, &page, "dev-b offline").await?;

    device_a.shutdown().await;
    Ok(())
}

/// The browser module alone, as a page would use it: 1,000 numbered
/// messages through the echo service come back in order.
#[tokio::test]
async fn a_thousand_messages_are_echoed_in_order() -> anyhow::Result<()> {
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
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
