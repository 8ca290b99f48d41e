//! `fogconnect plugin list|load|swap|unload|metrics`: manage the plugins of
//! a running node through its admin API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fogconnect::admin::client::{AdminClient, ServiceEntry};

/// Arguments of `fogconnect plugin`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// The node's admin API address (its --admin).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7701", global = true)]
    node: SocketAddr,
    /// The node's admin token.
    #[arg(long, env = "FOGCONNECT_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: PluginAction,
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// List the services: plugin, generation, state, connections, calls, crashes.
    List,
    /// Load a plugin on a free service number.
    Load {
        /// Service number.
        #[arg(long)]
        service: u8,
        /// The plugin's .wasm file.
        file: PathBuf,
    },
    /// Swap the plugin of a service for a new build, keeping its connections.
    Swap {
        /// Service number.
        #[arg(long)]
        service: u8,
        /// The new plugin's .wasm file.
        file: PathBuf,
    },
    /// Print the node's metrics (Prometheus text format).
    Metrics,
    /// Unload the plugin of a service (its connections close with "service unloaded").
    Unload {
        /// Service number.
        #[arg(long)]
        service: u8,
    },
}

fn print_entry(entry: &ServiceEntry) {
    println!(
        "{:>7}  {:<20} {:>10}  {:<10} {:>11} {:>10} {:>7}  {}",
        entry.service,
        entry.name,
        entry.generation,
        entry.state,
        entry.connections,
        entry.calls,
        entry.crashes,
        entry.hash.get(..16).unwrap_or(&entry.hash)
    );
}

fn header() {
    println!(
        "{:>7}  {:<20} {:>10}  {:<10} {:>11} {:>10} {:>7}  hash",
        "service", "plugin", "generation", "state", "connections", "calls", "crashes"
    );
}

async fn read_plugin(file: &PathBuf) -> anyhow::Result<(String, Vec<u8>)> {
    let wasm = tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))?;
    Ok((fogconnect::node::plugin_name(file), wasm))
}

/// Runs one plugin command.
pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    let token = args.token.context("give the node's admin token (--token or FOGCONNECT_ADMIN_TOKEN)")?;
    let client = AdminClient::new(args.node, token);
    match args.action {
        PluginAction::List => {
            let services = client.list().await?;
            header();
            services.iter().for_each(print_entry);
        }
        PluginAction::Load { service, file } => {
            let (name, wasm) = read_plugin(&file).await?;
            let entry = client.load(service, &name, wasm).await?;
            header();
            print_entry(&entry);
        }
        PluginAction::Swap { service, file } => {
            let (name, wasm) = read_plugin(&file).await?;
            let entry = client.swap(service, &name, wasm).await?;
            header();
            print_entry(&entry);
        }
        PluginAction::Metrics => print!("{}", client.metrics().await?),
        PluginAction::Unload { service } => {
            client.unload(service).await?;
            println!("service {service} unloaded");
        }
    }
    Ok(())
}
