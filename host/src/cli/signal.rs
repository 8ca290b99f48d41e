//! `fogconnect signal` and `fogconnect signal token`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fogconnect::metrics::exporter::MetricsExporter;
use fogconnect::relay::url::TurnUrl;
use fogconnect::signal::routes::cluster::ClusterConfig;
use fogconnect::signal::server::{RelayGrant, SignalServer, SignalServerConfig};
use fogconnect::signal::token;

/// Arguments of `fogconnect signal`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SignalArgs {
    #[command(subcommand)]
    action: Option<SignalAction>,
    /// TCP address to listen on (WebSocket on path /ws).
    #[arg(long, default_value = "0.0.0.0:7600")]
    listen: SocketAddr,
    #[command(flatten)]
    secret: SecretArgs,
    /// PEM certificate chain for TLS (wss://); needs --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for TLS; needs --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 100_000)]
    max_clients: usize,
    /// Most TCP connections from one IP address (handshakes included);
    /// more are closed at once. Devices behind one carrier-grade NAT share
    /// an address: raise it for such populations.
    #[arg(long, default_value_t = 1024)]
    max_clients_per_ip: usize,
    /// New TCP connections per second from one IP address (ten times as
    /// many in a burst); more are closed at once.
    #[arg(long, default_value_t = 20)]
    connect_rate_per_ip: u32,
    /// Close sessions that send no protocol message for this many seconds
    /// (WebSocket pings do not count).
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
    /// Close connections that have not finished the TLS and WebSocket
    /// handshake within this many seconds.
    #[arg(long, default_value_t = 10)]
    handshake_timeout_s: u64,
    /// Close sessions that have not registered within this many seconds.
    #[arg(long, default_value_t = 10)]
    register_timeout_s: u64,
    /// Close sessions that do not read what the server sends within this
    /// many seconds.
    #[arg(long, default_value_t = 10)]
    send_timeout_s: u64,
    /// Sustained messages per second allowed per client.
    #[arg(long, default_value_t = 50)]
    rate_per_second: u32,
    /// Burst of messages allowed per client above the rate.
    #[arg(long, default_value_t = 200)]
    rate_burst: u32,
    /// A TURN relay handed to every registered node, as a TURN URL
    /// (turn:host:port[?transport=tcp], turns:host:port); repeatable.
    /// Needs --relay-secret.
    #[arg(long = "relay", value_name = "URL", requires = "relay_secret")]
    relays: Vec<String>,
    /// The secret shared with the relays (their --auth-secret, coturn's
    /// static-auth-secret); nodes get time-limited credentials under it.
    #[arg(long, env = "FOGCONNECT_TURN_SECRET", hide_env_values = true)]
    relay_secret: Option<String>,
    /// How long handed-out relay credentials stay valid, in seconds.
    #[arg(long, default_value_t = 86_400)]
    relay_ttl_s: u64,
    /// A STUN server browsers use to learn their public address, as a
    /// STUN URL (stun:host:port); repeatable. Browsers also get the
    /// relays (--relay) with credentials.
    #[arg(long = "stun-url", value_name = "URL", value_parser = parse_stun_url)]
    stun_urls: Vec<String>,
    /// Join a NATS cluster with every other signaling server given the
    /// same cluster: NATS server URLs, comma-separated or repeated
    /// (nats://host:4222, tls://host:4222; user:password@ or token@ in
    /// the URL). Ids registered on any server are reached from all. Alone
    /// when absent.
    #[arg(long = "nats", value_name = "URL", value_delimiter = ',')]
    nats: Vec<String>,
    /// Replicas of the directory bucket when this server makes it (the
    /// first server to start makes it; do that with every NATS server up).
    #[arg(long, default_value_t = 3, requires = "nats")]
    nats_replicas: usize,
    /// Namespace of the servers' NATS subjects and directory bucket:
    /// servers of one deployment share it; another deployment on the same
    /// NATS cluster takes another.
    #[arg(long, default_value = "fogsig", requires = "nats", value_parser = parse_namespace)]
    nats_namespace: String,
    /// This server's name in the cluster (unique; default: random).
    #[arg(long, requires = "nats")]
    nats_name: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (sessions, messages,
    /// refusals by code, NATS health).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    config: super::ConfigFileArg,
}

/// A NATS subject token and bucket name: letters, digits, `-` and `_`.
fn parse_namespace(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{text:?}: 1 to 64 letters, digits, - or _"));
    }
    Ok(text.to_string())
}

/// A STUN URL (RFC 7064): `stun:host[:port]` (browsers take no `stuns:`).
fn parse_stun_url(text: &str) -> Result<String, String> {
    let rest = text.strip_prefix("stun:").ok_or_else(|| format!("{text:?} is not a STUN URL (stun:host:port)"))?;
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("{text:?}: unclosed ["))?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(|| format!("{text:?}: junk after ]"))?)),
            }
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() || host.contains(['/', '?', '@', ' ']) {
        return Err(format!("{text:?}: no host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{text:?}: bad port {port:?}"));
    }
    Ok(text.to_string())
}

/// The secret registration tokens are signed with.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// The secret, as text (prefer --secret-file or FOGCONNECT_SIGNAL_SECRET).
    #[arg(long, env = "FOGCONNECT_SIGNAL_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A file holding the secret.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    secret_file: Option<PathBuf>,
}

impl SecretArgs {
    fn load(&self) -> anyhow::Result<Vec<u8>> {
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(path)) => {
                let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                text.trim_ascii().to_vec()
            }
            (None, None) => bail!("a secret is needed: --secret-file FILE, --secret, or FOGCONNECT_SIGNAL_SECRET"),
        };
        if secret.len() < 16 {
            bail!("the secret must be at least 16 bytes");
        }
        Ok(secret)
    }
}

#[derive(Debug, Subcommand)]
enum SignalAction {
    /// Issue the registration token for a node id.
    Token(TokenArgs),
}

/// Arguments of `fogconnect signal token`.
#[derive(Debug, Args)]
struct TokenArgs {
    /// The node id the token admits.
    #[arg(long)]
    id: String,
    /// Days until the token expires.
    #[arg(long, default_value_t = 365)]
    valid_days: u64,
    #[command(flatten)]
    secret: SecretArgs,
}

/// Runs the server, or issues a token.
pub async fn run(args: SignalArgs) -> anyhow::Result<()> {
    if let Some(SignalAction::Token(t)) = args.action {
        let secret = t.secret.load()?;
        if let Some(problem) = fogconnect::transport::wire::peer_id_problem(&t.id) {
            bail!("{problem}");
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        println!("{}", token::issue(&secret, &t.id, now + t.valid_days * 86_400));
        return Ok(());
    }
    args.config.log();
    let mut config = SignalServerConfig::new(args.listen, args.secret.load()?);
    config.max_clients = args.max_clients;
    config.max_clients_per_ip = args.max_clients_per_ip;
    config.connect_rate_per_ip = args.connect_rate_per_ip;
    config.idle_timeout = Duration::from_secs(args.idle_timeout_s.max(1));
    config.handshake_timeout = Duration::from_secs(args.handshake_timeout_s.max(1));
    config.register_timeout = Duration::from_secs(args.register_timeout_s.max(1));
    config.send_timeout = Duration::from_secs(args.send_timeout_s.max(1));
    config.rate_per_second = args.rate_per_second;
    config.rate_burst = args.rate_burst;
    config.tls = args.cert.zip(args.key);
    config.stun_urls = args.stun_urls;
    if !args.relays.is_empty() {
        for url in &args.relays {
            url.parse::<TurnUrl>()?;
        }
        let secret = args.relay_secret.context("--relay needs --relay-secret")?;
        config.relays = Some(RelayGrant {
            urls: args.relays,
            secret: secret.into_bytes(),
            ttl: Duration::from_secs(args.relay_ttl_s.max(60)),
        });
    }
    if !args.nats.is_empty() {
        let mut cluster = ClusterConfig::new(args.nats);
        cluster.replicas = args.nats_replicas.max(1);
        cluster.subject_prefix = args.nats_namespace.clone();
        cluster.bucket = args.nats_namespace;
        cluster.server_name = args.nats_name;
        config.cluster = Some(cluster);
    }
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let server = SignalServer::start(config).await.context("cannot start the signaling server")?;
    println!("signaling on {scheme}://{}/ws", server.local_addr());
    let _exporter = match args.metrics {
        Some(addr) => {
            let exporter = MetricsExporter::start(addr, server.metrics_renderer())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            let _ = writeln!(std::io::stdout(), "metrics on http://{}/metrics", exporter.local_addr());
            Some(exporter)
        }
        None => None,
    };
    if let Some(name) = server.cluster_name() {
        let _ = writeln!(std::io::stdout(), "in the NATS cluster as {name}");
    }
    // A reader that took only the first line (the URL) may have closed
    // the pipe: this one is for people, and not worth dying for.
    let web = if scheme == "wss" { "https" } else { "http" };
    let _ =
        writeln!(std::io::stdout(), "web app on {web}://{}/ (browser module at /fogconnect.js)", server.local_addr());
    super::node::wait_for_signal().await?;
    server.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_stun_url;

    #[test]
    fn stun_urls_are_checked() {
        for good in ["stun:stun.example:3478", "stun:192.0.2.1", "stun:[2001:db8::1]:3478", "stun:[2001:db8::1]"] {
            assert_eq!(parse_stun_url(good).as_deref(), Ok(good));
        }
        for bad in ["turn:x:1", "stuns:x:1", "stun:", "stun:host:0", "stun:host:port", "stun:host/x:1", "http://x"] {
            assert!(parse_stun_url(bad).is_err(), "{bad}");
        }
    }
}
