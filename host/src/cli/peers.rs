//! `fogconnect peers`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Arguments of `fogconnect peers`.
#[derive(Debug, Args)]
pub struct PeersArgs {
    #[command(flatten)]
    signal: super::SignalJoinArgs,
}

/// Prints the ids online, one per line.
pub async fn run(args: PeersArgs) -> anyhow::Result<()> {
    let node = args.signal.node().await?;
    let result = async {
        node.registered(Duration::from_secs(10)).await.context("cannot register with signaling")?;
        node.peers().await.context("cannot list peers")
    }
    .await;
    node.shutdown().await;
    for peer in result? {
        println!("{}", super::terminal_safe(&peer));
    }
    Ok(())
}
