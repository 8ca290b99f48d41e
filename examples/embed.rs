//! Embedding fogconnect as a Rust library: a node serving the echo plugin and
//! a second node talking to it.
//!
//! ```text
//! make plugins && cargo run --release --example embed
//! ```

use std::path::PathBuf;

use anyhow::{Context, bail};
use fogconnect::{ConnectionEvent, Node, Transport};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let plugins = std::env::var_os("FOGCONNECT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/wasm32-wasip2/plugin"));
    let server = Node::builder().node_id("server").plugin(0, plugins.join("echo.wasm")).start().await?;
    let client = Node::builder().node_id("client").start().await?;

    let mut conn = client.connect(server.local_addr(), Transport::Quic, 0).await.context("connect")?;
    conn.send(&b"hello from an embedding application"[..])?;
    match conn.recv().await {
        ConnectionEvent::Message(reply) => println!("echo: {}", String::from_utf8_lossy(&reply)),
        ConnectionEvent::Closed(reason) => bail!("closed: {reason}"),
    }
    println!("rtt {:?}, services {:?}", conn.stats().rtt, server.services());
    conn.close();
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}
