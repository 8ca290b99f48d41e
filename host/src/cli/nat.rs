//! `fogconnect nat`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fogconnect::nat::discovery;
use fogconnect::nat::transaction::RetransmitPolicy;

/// Arguments of `fogconnect nat`.
#[derive(Debug, Args)]
pub struct NatArgs {
    /// STUN server, host:port (RFC 5780 support needed for mapping and
    /// filtering; any RFC 5389 server gives the public address).
    #[arg(long, value_name = "HOST:PORT")]
    stun: String,
    /// Initial retransmission timeout of STUN requests, in milliseconds;
    /// a test that gets no answer waits 19 × this.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    rto_ms: u64,
}

/// Classifies the local NAT and prints the report.
pub async fn run(args: NatArgs) -> anyhow::Result<()> {
    let server = discovery::resolve(&args.stun).await?;
    let policy = RetransmitPolicy { rto: Duration::from_millis(args.rto_ms.max(1)), ..RetransmitPolicy::DISCOVERY };
    let report = discovery::discover(server, policy).await.with_context(|| format!("cannot test against {server}"))?;
    println!("stun server:     {server}");
    println!("{report}");
    Ok(())
}
