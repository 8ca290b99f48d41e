//! Command-line interface.

mod config;
pub mod config_file;
mod demo;
mod nat;
mod node;
mod peers;
mod plugin;
mod plugin_new;
mod relay;
mod send;
mod signal;
mod stream;
mod stun;
mod target;

use std::path::PathBuf;

use anyhow::Context;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fogconnect::{NodeConfig, PluginLimits};

/// What `fogconnect --version` prints after the name: the version, the
/// commit, profile and optional features of the build (see `build.rs`).
const BUILD: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FOGCONNECT_BUILD_COMMIT"),
    ", ",
    env!("FOGCONNECT_BUILD_PROFILE"),
    " build, features: ",
    env!("FOGCONNECT_BUILD_FEATURES"),
    ")"
);

/// fogconnect: P2P transport host with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "fogconnect", version = BUILD, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node that answers connections with plugins.
    Node(node::NodeArgs),
    /// Connect to a node, send one message per argument and print the replies.
    Send(send::SendArgs),
    /// Manage the plugins of a running node (list, load, swap, unload).
    Plugin(plugin::PluginArgs),
    /// Ask a stream service for a stream and show the received rate live.
    Stream(stream::StreamArgs),
    /// Run two nodes in this process and show the plugin exchange.
    Demo(demo::DemoArgs),
    /// Run the signaling server, or issue a node's token (`signal token`).
    Signal(signal::SignalArgs),
    /// List the nodes registered with a signaling server.
    Peers(peers::PeersArgs),
    /// Run a STUN server (RFC 5389; RFC 5780 with --alt-addr).
    Stun(stun::StunArgs),
    /// Classify the local NAT against a STUN server.
    Nat(nat::NatArgs),
    /// Run a TURN relay server (RFC 8656, coturn-compatible credentials).
    Relay(relay::RelayArgs),
    /// Print the certificate fingerprint of a node identity file (made
    /// when it does not exist), the value peers pin.
    Id(IdArgs),
    /// Check config files (`fogconnect config check FILE`).
    Config(config::ConfigArgs),
    /// Print shell completions for bash, zsh, fish, elvish or PowerShell,
    /// e.g. `fogconnect completions bash > /etc/bash_completion.d/fogconnect`.
    Completions(CompletionsArgs),
}

/// `fogconnect completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl CompletionsArgs {
    fn run(&self) -> anyhow::Result<()> {
        use clap::CommandFactory;
        let mut out = std::io::stdout().lock();
        clap_complete::generate(self.shell, &mut Cli::command(), "fogconnect", &mut out);
        std::io::Write::flush(&mut out).context("writing the completions")
    }
}

/// `fogconnect id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The identity file, as given to `fogconnect node --identity`.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
}

impl IdArgs {
    fn run(&self) -> anyhow::Result<()> {
        use fogconnect::transport::identity_file::{IdentitySource, fingerprint_of};
        let (fingerprint, source) = fingerprint_of(&self.identity)?;
        if source == IdentitySource::Created {
            eprintln!("created a new node identity in {}", self.identity.display());
        }
        println!("{fingerprint}");
        Ok(())
    }
}

/// `--config FILE` of a server command.
#[derive(Debug, Args)]
pub struct ConfigFileArg {
    /// Read settings from this TOML file first: its table named after
    /// this command ([node], [signal], [relay] or [stun]) holds one key
    /// per long flag, spelled the same. Flags and environment variables
    /// given as well win over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigFileArg {
    /// Says in the log which file the settings came from.
    pub fn log(&self) {
        if let Some(path) = &self.config {
            tracing::info!(file = %path.display(), "settings read from the config file");
        }
    }
}

/// Joining a signaling server from a one-shot command.
#[derive(Debug, Args)]
pub struct SignalJoinArgs {
    /// Signaling server URL, e.g. ws://host:7600/ws; servers of a cluster
    /// separated by commas.
    #[arg(long, value_name = "URL")]
    signal: String,
    /// This command's node id at the signaling server.
    #[arg(long)]
    id: String,
    /// The token for --id (from `fogconnect signal token`).
    #[arg(long, env = "FOGCONNECT_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM file of a CA (or self-signed certificate) to trust for wss://.
    #[arg(long, value_name = "FILE")]
    signal_ca: Option<PathBuf>,
}

impl SignalJoinArgs {
    /// A node on the wildcard address registered with the server.
    async fn node(&self) -> anyhow::Result<fogconnect::Node> {
        let mut builder = fogconnect::Node::builder()
            .node_id(&self.id)
            .listen(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            .configure(|c| c.cache_dir = None)
            .signal(&self.signal, &self.token);
        if let Some(ca) = &self.signal_ca {
            builder = builder.signal_ca(ca);
        }
        builder.start().await.context("cannot start the local node")
    }
}

/// Options every node-running command shares.
#[derive(Debug, Args)]
pub struct CommonNodeArgs {
    /// Node id (e.g. a MAC address); default derived from the certificate.
    #[arg(long)]
    id: Option<String>,
    /// File keeping the node's key pair and certificate across restarts,
    /// so peers that pinned its fingerprint keep trusting it (created on
    /// first use, readable by its owner only; a file others may read is
    /// refused). Without it the node gets a new identity at every start.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Directory of the precompiled plugin cache.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Disable the precompiled plugin cache.
    #[arg(long)]
    no_cache: bool,
    /// Memory cap per plugin, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    plugin_memory_mb: usize,
    /// Deadline of one plugin callback, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    plugin_deadline_ms: u64,
    /// Connect timeout, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    connect_timeout_ms: u64,
    /// Send and receive one datagram per system call: no segmentation or
    /// receive offload (GSO, GRO), for an interface or middlebox that
    /// mishandles them. Costs CPU on bulk transfers.
    #[arg(long)]
    no_segmentation_offload: bool,
    #[command(flatten)]
    keep_alive: KeepAliveArgs,
    #[command(flatten)]
    traversal: TraversalArgs,
}

/// How quickly a silent peer is given up.
#[derive(Debug, Args)]
pub struct KeepAliveArgs {
    /// Keep-alive interval, in milliseconds (the original's time_inter_s).
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    keep_alive_ms: u64,
    /// Unanswered keep-alives before a peer is considered gone and its
    /// connections end with reason timeout (the original's max_attempt_num).
    #[arg(long, default_value_t = 6, value_name = "N")]
    keep_alive_attempts: u32,
}

impl KeepAliveArgs {
    /// Applies the options to a node configuration.
    fn apply(&self, config: &mut NodeConfig) {
        config.keep_alive_interval = Duration::from_millis(self.keep_alive_ms.max(1));
        config.keep_alive_attempts = self.keep_alive_attempts.max(1);
    }
}

/// NAT traversal options of every node-running command.
#[derive(Debug, Args)]
pub struct TraversalArgs {
    /// STUN server (host:port) for the public address and NAT
    /// classification, e.g. one run by `fogconnect stun`. Several separated
    /// by commas (e.g. an IPv4 and an IPv6 one): the first IPv4 one
    /// classifies, one of the other family gives that family's public
    /// address.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT]")]
    pub(crate) stun: Option<String>,
    /// Time budget of the connectivity checks of one connect, in ms.
    #[arg(long, default_value_t = 8_000, value_name = "MS")]
    punch_budget_ms: u64,
    /// Extra sockets a symmetric-NAT side opens for birthday probing.
    #[arg(long, default_value_t = 256, value_name = "N")]
    birthday_sockets: u16,
    /// Probes per second a spraying side sends.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    probe_rate: u32,
    /// Most probes a spraying side sends in one connect.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    max_probes: u32,
    /// TURN relay to allocate on, as a TURN URL
    /// (turn:host:port[?transport=tcp], turns:host:port); repeatable, the
    /// first that grants an allocation is used. Without it the node uses
    /// the relays its signaling server hands out.
    #[arg(long = "relay", value_name = "URL", requires = "relay_user")]
    relays: Vec<String>,
    /// User name on the --relay servers.
    #[arg(long, value_name = "NAME", requires = "relay_password")]
    relay_user: Option<String>,
    /// Password on the --relay servers.
    #[arg(long, env = "FOGCONNECT_RELAY_PASSWORD", hide_env_values = true)]
    relay_password: Option<String>,
    /// PEM file of a CA (or self-signed certificate) to trust for turns:.
    #[arg(long, value_name = "FILE")]
    relay_ca: Option<PathBuf>,
    /// While a connection runs through a relay, rerun the checks for a
    /// direct path this often, in ms.
    #[arg(long, default_value_t = 15_000, value_name = "MS")]
    recheck_ms: u64,
    /// Ask the STUN server for the public address this often, in ms, to
    /// notice a new one behind an unchanged local network (0: never).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    public_check_ms: u64,
}

impl TraversalArgs {
    /// Applies the options to a node configuration.
    ///
    /// # Errors
    /// A --relay that is not a TURN URL.
    fn apply(&self, config: &mut NodeConfig) -> anyhow::Result<()> {
        config.stun = self.stun.clone();
        config.checks.budget = Duration::from_millis(self.punch_budget_ms.max(1));
        config.checks.birthday_sockets = self.birthday_sockets;
        config.checks.spray_rate = self.probe_rate.max(1);
        config.checks.max_spray_probes = self.max_probes;
        config.relays.clear();
        for url in &self.relays {
            config.relays.push(fogconnect::RelayServer {
                url: url.parse()?,
                username: self.relay_user.clone().unwrap_or_default(),
                password: self.relay_password.clone().unwrap_or_default(),
            });
        }
        config.relay_ca = self.relay_ca.clone();
        config.direct_recheck_interval = Duration::from_millis(self.recheck_ms.max(1));
        config.public_address_check = Duration::from_millis(self.public_check_ms);
        Ok(())
    }
}

impl CommonNodeArgs {
    fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = NodeConfig::default();
        if let Some(id) = &self.id {
            config.node_id = id.clone();
        }
        config.identity_file = self.identity.clone();
        if self.no_cache {
            config.cache_dir = None;
        } else if let Some(dir) = &self.cache_dir {
            config.cache_dir = Some(dir.clone());
        }
        config.plugin_limits = PluginLimits {
            memory_bytes: self.plugin_memory_mb << 20,
            call_deadline: Duration::from_millis(self.plugin_deadline_ms),
            ..PluginLimits::default()
        };
        config.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        config.segmentation_offload = !self.no_segmentation_offload;
        self.keep_alive.apply(&mut config);
        self.traversal.apply(&mut config)?;
        Ok(config)
    }
}

impl Cli {
    /// Log level when `RUST_LOG` is not set: servers report their life at
    /// `info`; one-shot commands print their results, and their failure as
    /// one line.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Node(_) | Command::Signal(_) | Command::Stun(_) | Command::Relay(_) => "info",
            Command::Send(_)
            | Command::Stream(_)
            | Command::Plugin(_)
            | Command::Demo(_)
            | Command::Peers(_)
            | Command::Id(_)
            | Command::Completions(_)
            | Command::Config(_)
            | Command::Nat(_) => "error",
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `default_level`).
/// `text` from the network made safe for a terminal: control characters
/// other than newline and tab are shown as escapes (`\u{1b}`), so a peer
/// cannot move the cursor, clear the screen or forge output.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            safe.extend(c.escape_unicode());
        } else {
            safe.push(c);
        }
    }
    std::borrow::Cow::Owned(safe)
}

pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => node::run(args).await,
        Command::Send(args) => send::run(args).await,
        Command::Stream(args) => stream::run(args).await,
        Command::Plugin(args) => plugin::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Signal(args) => signal::run(args).await,
        Command::Peers(args) => peers::run(args).await,
        Command::Stun(args) => stun::run(args).await,
        Command::Nat(args) => nat::run(args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Id(args) => args.run(),
        Command::Completions(args) => args.run(),
        Command::Config(args) => config::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_from_the_network_are_escaped() {
        assert_eq!(terminal_safe("I know!"), "I know!");
        assert_eq!(terminal_safe("a\tb\nc"), "a\tb\nc");
        assert_eq!(terminal_safe("evil\u{1b}[2J\r"), "evil\\u{1b}[2J\\u{d}");
    }
}
