//! `fogconnect stun`.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use fogconnect::nat::server::{StunResponder, StunServer, StunServerLimits};

/// Arguments of `fogconnect stun`.
#[derive(Debug, Args)]
pub struct StunArgs {
    /// Primary address to answer on.
    #[arg(long, default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// Alternate address (another IP and another port of this host) for
    /// RFC 5780 NAT behaviour discovery; needs a specific --listen IP.
    #[arg(long, value_name = "IP:PORT")]
    alt_addr: Option<SocketAddr>,
    /// Requests per second answered per client IP.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[command(flatten)]
    config: super::ConfigFileArg,
}

/// Runs the STUN server until Ctrl-C or SIGTERM.
pub async fn run(args: StunArgs) -> anyhow::Result<()> {
    args.config.log();
    let responder = StunResponder::new(args.listen, args.alt_addr)?;
    let limits =
        StunServerLimits { per_ip_rate: args.rate.max(1), per_ip_burst: args.rate.max(1) * 2, ..Default::default() };
    let server = StunServer::start(responder, limits).await.context("cannot start the STUN server")?;
    for addr in server.addrs() {
        println!("stun listening on {addr}");
    }
    if args.alt_addr.is_some() {
        println!("RFC 5780: OTHER-ADDRESS, RESPONSE-ORIGIN and CHANGE-REQUEST enabled");
    }
    super::node::wait_for_signal().await?;
    server.stop().await;
    Ok(())
}
