//! `fogconnect node`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use fogconnect::{Node, RelayStatus};

/// Arguments of `fogconnect node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// A plugin for a service number, as SERVICE=PATH (repeatable).
    #[arg(long = "plugin", value_name = "SERVICE=PATH", value_parser = parse_plugin)]
    plugins: Vec<(u8, PathBuf)>,
    /// Load every plugin file in this directory (named SERVICE-NAME.wasm,
    /// manifest SERVICE-NAME.toml beside it) and keep watching it: a
    /// changed file swaps its service's plugin, a removed one unloads it.
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Time between two scans of --plugin-dir, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000), requires = "plugin_dir")]
    plugin_scan_ms: u64,
    /// Signaling server to register with, e.g. ws://host:7600/ws; servers
    /// of a cluster separated by commas (the node moves to the next when
    /// its server is lost).
    #[arg(long, value_name = "URL", requires = "token")]
    signal: Option<String>,
    /// The token for --id at the signaling server.
    #[arg(long, env = "FOGCONNECT_TOKEN", hide_env_values = true, requires = "signal")]
    token: Option<String>,
    /// PEM file of a CA (or self-signed certificate) to trust for wss://.
    #[arg(long, value_name = "FILE", requires = "signal")]
    signal_ca: Option<PathBuf>,
    /// Offer the admin API (plugin list/load/swap/unload) on this TCP
    /// address; loopback only unless --admin-allow-remote. Needs
    /// --admin-token.
    #[arg(long, value_name = "ADDR", requires = "admin_token")]
    admin: Option<SocketAddr>,
    /// The admin API's bearer token (at least 16 characters).
    #[arg(long, env = "FOGCONNECT_ADMIN_TOKEN", hide_env_values = true, requires = "admin")]
    admin_token: Option<String>,
    /// Let the admin API listen on a non-loopback address.
    #[arg(long, requires = "admin")]
    admin_allow_remote: bool,
    #[command(flatten)]
    common: super::CommonNodeArgs,
    #[command(flatten)]
    config: super::ConfigFileArg,
}

fn parse_plugin(text: &str) -> Result<(u8, PathBuf), String> {
    let (service, path) = text.split_once('=').ok_or_else(|| format!("expected SERVICE=PATH, got {text:?}"))?;
    let service: u8 =
        service.trim().parse().map_err(|_| format!("service must be a number 0..=255, got {service:?}"))?;
    if path.is_empty() {
        return Err("plugin path is empty".into());
    }
    Ok((service, PathBuf::from(path)))
}

/// Runs a node until Ctrl-C or SIGTERM.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    args.config.log();
    let mut seen = std::collections::HashSet::new();
    for (service, _) in &args.plugins {
        if !seen.insert(*service) {
            bail!("service {service} is given more than one plugin");
        }
    }
    let mut builder = Node::builder().config(args.common.config()?).listen(args.listen);
    if let (Some(url), Some(token)) = (&args.signal, &args.token) {
        if args.common.id.is_none() {
            bail!("--signal needs --id: the id the token was issued for");
        }
        builder = builder.signal(url, token);
        if let Some(ca) = &args.signal_ca {
            builder = builder.signal_ca(ca);
        }
    }
    for (service, path) in &args.plugins {
        builder = builder.plugin(*service, path);
    }
    let node = builder.start().await.context("cannot start the node")?;
    println!("listening on {}", node.local_addr());
    println!("node id {}", node.id());
    println!("fingerprint {}", node.fingerprint());
    if args.signal.is_some() {
        match node.registered(std::time::Duration::from_secs(10)).await {
            Ok(()) => println!("registered with {}", args.signal.as_deref().unwrap_or_default()),
            Err(e) => tracing::warn!("not registered yet (retrying in the background): {e}"),
        }
    }
    if node.config().stun.is_some() {
        match node.nat_classified(std::time::Duration::from_secs(15)).await {
            Some(report) => println!(
                "nat: {}, public address {}, mapping {}, filtering {}, allocation {}",
                report.kind_name(),
                node.public_addr().await.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                fogconnect::nat::classify::behaviour_name(report.mapping),
                fogconnect::nat::classify::behaviour_name(report.filtering),
                fogconnect::nat::classify::allocation_name(report.allocation)
            ),
            None => println!("nat: not classified (no answer from the STUN server in time)"),
        }
    }
    let expect_relay = !node.config().relays.is_empty() || !node.signal_relays().is_empty();
    if let Some(mut relay) = node.relay_status().filter(|_| expect_relay) {
        let settled = relay.wait_for(|s| matches!(s, RelayStatus::Allocated { .. } | RelayStatus::Failed(_)));
        match tokio::time::timeout(std::time::Duration::from_secs(15), settled).await {
            Ok(Ok(status)) => match &*status {
                RelayStatus::Allocated { url, relayed } => println!("relay: allocated {relayed} on {url}"),
                RelayStatus::Failed(why) => println!("relay: no allocation yet (retrying): {why}"),
                _ => {}
            },
            _ => println!("relay: no allocation yet"),
        }
    }
    // Every network signal from now on, as "event: ..." lines.
    let mut events = node.events();
    tokio::spawn(async move {
        use std::io::Write;
        loop {
            let line = match events.recv().await {
                Ok(event) => format!("event: {}", super::terminal_safe(&event.to_string())),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    format!("event: {missed} events missed (output too slow)")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Nobody reads the output any more (a closed pipe): stop telling.
            if writeln!(std::io::stdout(), "{line}").is_err() {
                return;
            }
        }
    });
    let directory = match &args.plugin_dir {
        Some(dir) => {
            let interval = std::time::Duration::from_millis(args.plugin_scan_ms);
            match fogconnect::plugin_dir::PluginDirectory::start(node.clone(), dir, interval).await {
                Ok((directory, initial)) => {
                    for event in initial {
                        println!("plugin directory: {event}");
                    }
                    let mut events = directory.events();
                    tokio::spawn(async move {
                        while let Ok(event) = events.recv().await {
                            println!("plugin directory: {event}");
                        }
                    });
                    Some(directory)
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(e).context("cannot watch the plugin directory");
                }
            }
        }
        None => None,
    };
    for service in node.services() {
        let hash = service.hash.get(..16).unwrap_or(&service.hash);
        println!("service {} -> {} ({} plugin, {hash})", service.service, service.name, service.world.name());
    }
    let admin = match (args.admin, &args.admin_token) {
        (Some(listen), Some(token)) => {
            let config =
                fogconnect::admin::AdminConfig { listen, token: token.clone(), allow_remote: args.admin_allow_remote };
            let admin = fogconnect::admin::AdminServer::start(node.clone(), config).await;
            let admin = match admin {
                Ok(admin) => admin,
                Err(e) => {
                    node.shutdown().await;
                    return Err(e).context("cannot start the admin API");
                }
            };
            println!("admin API on {}", admin.local_addr());
            Some(admin)
        }
        _ => None,
    };
    wait_for_signal().await?;
    drop(admin);
    drop(directory);
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
