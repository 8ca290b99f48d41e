//! `fogconnect plugin list|load|swap|unload|metrics`: manage the plugins of
//! a running node through its admin API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fogconnect::admin::client::{AdminClient, ServiceEntry};
use fogconnect::{PluginBuild, PluginManifest};

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
    /// List the services: plugin, world, version, limits, generation, state, connections, calls, crashes.
    List,
    /// Load a plugin on a free service number.
    Load(UploadArgs),
    /// Swap the plugin of a service for a new build, keeping its connections
    /// (and its state, when both builds export snapshot/restore).
    Swap(UploadArgs),
    /// Print the node's metrics (Prometheus text format).
    Metrics,
    /// Create a new plugin crate (a service, or a stream plugin with
    /// --stream) outside any fogconnect checkout, ready to build with
    /// `cargo build --release` and load on a node.
    New(super::plugin_new::NewArgs),
    /// Unload the plugin of a service (its connections close with "service unloaded").
    Unload {
        /// Service number.
        #[arg(long)]
        service: u8,
    },
}

/// A plugin to upload: its file and limits.
#[derive(Debug, Args)]
struct UploadArgs {
    /// Service number.
    #[arg(long)]
    service: u8,
    /// The plugin's .wasm file. Its manifest is read from the same path
    /// with the extension .toml when that file exists.
    file: PathBuf,
    /// Read the manifest (limits) from this file instead.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Memory cap in MiB (over the manifest's).
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u32>,
    /// Longest one plugin call may run, in milliseconds (over the manifest's).
    #[arg(long, value_name = "MS")]
    call_deadline_ms: Option<u32>,
    /// Whether the plugin may open connections (over the manifest's).
    #[arg(long, value_name = "BOOL")]
    connect_peer: Option<bool>,
    /// The build's version, shown in the list (over the manifest's).
    #[arg(long, value_name = "TEXT")]
    plugin_version: Option<String>,
}

impl UploadArgs {
    /// The build: the file, its manifest, the flags over it.
    async fn build(&self) -> anyhow::Result<PluginBuild> {
        let mut build = PluginBuild::read(&self.file).await?;
        if let Some(path) = &self.manifest {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read the manifest {}", path.display()))?;
            build.manifest = PluginManifest::decode(&text).with_context(|| format!("manifest {}", path.display()))?;
        }
        let flags = PluginManifest {
            version: self.plugin_version.clone(),
            memory_mib: self.memory_mib,
            call_deadline_ms: self.call_deadline_ms,
            connect_peer: self.connect_peer,
        };
        flags.check()?;
        build.manifest = flags.or(build.manifest);
        Ok(build)
    }
}

fn print_entry(entry: &ServiceEntry) {
    println!(
        "{:>7}  {:<20} {:<7} {:<10} {:<22} {:>10}  {:<10} {:>11} {:>10} {:>7}  {}",
        entry.service,
        entry.name,
        entry.world,
        entry.version.as_deref().unwrap_or("-"),
        format!(
            "{}MiB {}ms {}",
            entry.limits.memory_bytes >> 20,
            entry.limits.call_deadline_ms,
            if entry.limits.connect_peer { "connect" } else { "no-connect" }
        ),
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
        "{:>7}  {:<20} {:<7} {:<10} {:<22} {:>10}  {:<10} {:>11} {:>10} {:>7}  hash",
        "service", "plugin", "world", "version", "limits", "generation", "state", "connections", "calls", "crashes"
    );
}

/// Runs one plugin command.
pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    let admin = || -> anyhow::Result<AdminClient> {
        let token = args.token.clone().context("give the node's admin token (--token or FOGCONNECT_ADMIN_TOKEN)")?;
        Ok(AdminClient::new(args.node, token))
    };
    match &args.action {
        PluginAction::New(new) => return super::plugin_new::run(new),
        PluginAction::List => {
            let services = admin()?.list().await?;
            header();
            services.iter().for_each(print_entry);
        }
        PluginAction::Load(upload) => {
            let entry = admin()?.load(upload.service, upload.build().await?).await?;
            header();
            print_entry(&entry);
        }
        PluginAction::Swap(upload) => {
            let entry = admin()?.swap(upload.service, upload.build().await?).await?;
            if let Some(swap) = &entry.swap {
                println!("swapped: {swap}");
            }
            header();
            print_entry(&entry);
        }
        PluginAction::Metrics => print!("{}", admin()?.metrics().await?),
        PluginAction::Unload { service } => {
            admin()?.unload(*service).await?;
            println!("service {service} unloaded");
        }
    }
    Ok(())
}
