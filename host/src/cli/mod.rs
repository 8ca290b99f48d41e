//! Command-line interface.

mod demo;
mod node;
mod send;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fogconnect::{NodeConfig, PluginLimits};

/// fogconnect: P2P transport host with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "fogconnect", version, about, propagate_version = true)]
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
    /// Run two nodes in this process and show the plugin exchange.
    Demo(demo::DemoArgs),
}

/// Options every node-running command shares.
#[derive(Debug, Args)]
pub struct CommonNodeArgs {
    /// Node id (e.g. a MAC address); default derived from the certificate.
    #[arg(long)]
    id: Option<String>,
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
}

impl CommonNodeArgs {
    fn config(&self) -> NodeConfig {
        let mut config = NodeConfig::default();
        if let Some(id) = &self.id {
            config.node_id = id.clone();
        }
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
        config
    }
}

impl Cli {
    /// Log level when `RUST_LOG` is not set: a node reports its life at
    /// `info`; one-shot commands print their results and only warn.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Node(_) => "info",
            Command::Send(_) | Command::Demo(_) => "warn",
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `default_level`).
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
        Command::Demo(args) => demo::run(args).await,
    }
}
