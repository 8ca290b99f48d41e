//! A device that serves a service natively, in Rust, without a plugin:
//! every connection to service 0 gets its messages echoed. Registers as
//! `ID` with the signaling server at `URL` (token in `FOGCONNECT_TOKEN`),
//! prints "ready" and runs until SIGTERM or Ctrl-C.
//!
//! ```text
//! FOGCONNECT_TOKEN=... cargo run --release --example native_echo -- ws://127.0.0.1:7600/ws device-1
//! ```

use anyhow::Context;
use fogconnect::{ConnectionEvent, Node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(id)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: native_echo URL ID");
    };
    let token = std::env::var("FOGCONNECT_TOKEN").context("FOGCONNECT_TOKEN is not set")?;
    let listen = std::env::var("FOGCONNECT_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into()).parse()?;
    let builder = Node::builder().node_id(id).listen(listen).signal(url, token);
    // Made before the node starts: no connection is refused meanwhile.
    let mut incoming = builder.incoming(0)?;
    let node = builder.start().await?;
    node.registered(std::time::Duration::from_secs(10)).await?;
    println!("ready");
    let serve = async move {
        while let Some(mut conn) = incoming.accept().await {
            tokio::spawn(async move {
                while let ConnectionEvent::Message(data) = conn.recv().await {
                    if conn.send(data).is_err() {
                        return;
                    }
                }
            });
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    node.shutdown().await;
    Ok(())
}
