//! `fogconnect relay`.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use fogconnect::relay::net::{TlsListen, TurnServer};
use fogconnect::relay::server::TurnServerConfig;

/// Arguments of `fogconnect relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on for clients (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// The IP peers reach relayed addresses at (default: the --listen IP).
    /// Give one IPv4 and one IPv6 address for a dual-stack relay: clients
    /// then choose the family of their relayed address (RFC 6156), so an
    /// IPv6-only device reaches IPv4 peers.
    #[arg(long, value_name = "IP")]
    relay_ip: Vec<IpAddr>,
    /// Realm announced to clients.
    #[arg(long, default_value = "fogconnect")]
    realm: String,
    /// Shared secret for time-limited credentials (coturn's
    /// use-auth-secret / static-auth-secret).
    #[arg(long, env = "FOGCONNECT_TURN_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// A long-term user as NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// Also relay to loopback, link-local and private peers (labs only:
    /// lets clients reach this host's internal network).
    #[arg(long)]
    allow_private_peers: bool,
    /// Allocations one user may hold.
    #[arg(long, default_value_t = 16)]
    max_allocations_per_user: usize,
    /// Allocations in all.
    #[arg(long, default_value_t = 10_000)]
    max_allocations: usize,
    /// Bytes per second relayed per allocation each way (0: unlimited).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    bandwidth: u32,
    /// TCP and TLS clients at once (fewer when the descriptor limit leaves
    /// less room; half of it stays for relay sockets).
    #[arg(long, default_value_t = 10_000)]
    max_tcp_clients: usize,
    /// TCP and TLS clients from one IP address at once.
    #[arg(long, default_value_t = 64)]
    max_tcp_clients_per_ip: usize,
    /// Seconds a TCP or TLS client may stay connected without an allocation.
    #[arg(long, default_value_t = 10)]
    tcp_auth_timeout_s: u64,
    /// Answers per second to unauthenticated requests, per source IP.
    #[arg(long, default_value_t = 20)]
    unauthenticated_rate: u32,
    /// Also serve TURN over TLS (turns:) on this address; needs --cert
    /// and --key.
    #[arg(long, value_name = "ADDR", requires_all = ["cert", "key"])]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for --tls-listen.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    cert: Option<PathBuf>,
    /// PEM private key for --tls-listen.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    key: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (allocations, bytes,
    /// refusals by code).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    config: super::ConfigFileArg,
}

/// Runs the TURN server until Ctrl-C or SIGTERM.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    args.config.log();
    let mut users = HashMap::new();
    for user in &args.users {
        let Some((name, password)) = user.split_once(':').filter(|(n, p)| !n.is_empty() && !p.is_empty()) else {
            bail!("--user takes NAME:PASSWORD, got {user:?}");
        };
        users.insert(name.to_string(), password.to_string());
    }
    if users.is_empty() && args.auth_secret.is_none() {
        bail!("give --auth-secret or --user: the relay never runs without credentials");
    }
    let relay_ips = if args.relay_ip.is_empty() { vec![args.listen.ip()] } else { args.relay_ip.clone() };
    let config = TurnServerConfig {
        realm: args.realm.clone(),
        users,
        auth_secret: args.auth_secret.map(String::into_bytes),
        allow_private_peers: args.allow_private_peers,
        max_allocations_per_user: args.max_allocations_per_user,
        max_allocations: args.max_allocations,
        bandwidth_per_allocation: args.bandwidth,
        max_tcp_clients: args.max_tcp_clients,
        max_tcp_clients_per_ip: args.max_tcp_clients_per_ip,
        tcp_auth_timeout: std::time::Duration::from_secs(args.tcp_auth_timeout_s.max(1)),
        unauthenticated_rate: args.unauthenticated_rate,
        unauthenticated_burst: args.unauthenticated_rate.saturating_mul(2).max(1),
        ..TurnServerConfig::default()
    };
    let tls = match (args.tls_listen, args.cert, args.key) {
        (Some(listen), Some(cert), Some(key)) => Some(TlsListen { listen, cert, key }),
        _ => None,
    };
    let server =
        TurnServer::start_with_tls(args.listen, &relay_ips, config, tls).await.context("cannot start the relay")?;
    let tls = server.tls_addr().map(|addr| format!(", TLS on {addr}")).unwrap_or_default();
    let relaying = relay_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ");
    println!("relay listening on {} (UDP and TCP){tls}, relaying on {relaying}, realm {}", server.addr(), args.realm);
    let _exporter = match args.metrics {
        Some(addr) => {
            let exporter = fogconnect::metrics::exporter::MetricsExporter::start(addr, server.metrics_renderer())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            // A reader that took only the first line may have closed the
            // pipe: not worth dying for.
            let _ = writeln!(std::io::stdout(), "metrics on http://{}/metrics", exporter.local_addr());
            Some(exporter)
        }
        None => None,
    };
    super::node::wait_for_signal().await?;
    server.stop().await;
    Ok(())
}
