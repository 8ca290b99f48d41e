//! The plugins of a running node: load, live swap and unload, per-plugin
//! limits from manifests, and what each service is doing (list, metrics).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fogconnect_proto::manifest::PluginManifest;
use tokio::sync::mpsc;

use super::{Node, NodeError, NodeServices};
use crate::runtime::PluginError;
use crate::runtime::actor::{ActorHandle, ActorSpec, PluginIdentity, PluginRunState, StateHandoff, SwapRequest};
use crate::runtime::engine::{PluginWorld, PreparedPlugin};
use crate::runtime::state::{PluginContext, PluginLimits};
use crate::transport::conn::{ConnEvent, EVENT_CHANNEL_CAPACITY};

/// The name a plugin file is known by: its file stem ("plugin" without
/// one).
pub fn plugin_name(path: &Path) -> String {
    path.file_stem().map_or_else(|| "plugin".to_string(), |s| s.to_string_lossy().into_owned())
}

/// Where the manifest of the plugin file at `path` is looked for: beside
/// it, with the extension `toml` (`echo.wasm` → `echo.toml`).
pub fn manifest_path(path: &Path) -> PathBuf {
    path.with_extension("toml")
}

/// A plugin build to load or swap in: its name, its wasm bytes and the
/// manifest its limits come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginBuild {
    /// The name it is listed by.
    pub name: String,
    /// The WebAssembly component.
    pub wasm: Vec<u8>,
    /// Its limits; what the manifest leaves out takes the node's default.
    pub manifest: PluginManifest,
}

impl PluginBuild {
    /// A build with the node's default limits.
    pub fn new(name: impl Into<String>, wasm: Vec<u8>) -> Self {
        Self { name: name.into(), wasm, manifest: PluginManifest::default() }
    }

    /// The same build with `manifest`'s limits.
    pub fn with_manifest(mut self, manifest: PluginManifest) -> Self {
        self.manifest = manifest;
        self
    }

    /// Reads the plugin file at `path`, named by its file stem, and its
    /// manifest from [`manifest_path`] when that file exists.
    ///
    /// # Errors
    /// [`PluginError::Read`] when a file cannot be read,
    /// [`PluginError::Manifest`] when the manifest is not valid.
    pub async fn read(path: &Path) -> Result<Self, PluginError> {
        let read_error = |path: &Path, e: std::io::Error| PluginError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let wasm = tokio::fs::read(path).await.map_err(|e| read_error(path, e))?;
        let manifest_file = manifest_path(path);
        let manifest = match tokio::fs::read_to_string(&manifest_file).await {
            Ok(text) => PluginManifest::decode(&text).map_err(|e| PluginError::Manifest {
                path: manifest_file.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PluginManifest::default(),
            Err(e) => return Err(read_error(&manifest_file, e)),
        };
        Ok(Self { name: plugin_name(path), wasm, manifest })
    }
}

/// What a live swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapReport {
    /// The new generation's number.
    pub generation: u64,
    /// How long the service's events waited (instantiation, state handoff
    /// and the `on-connect` announcements).
    pub pause: Duration,
    /// Time spent compiling the new plugin or loading it from the
    /// precompiled cache, while the old generation kept serving.
    pub compile: Duration,
    /// Whether the compiled plugin came from the cache.
    pub from_cache: bool,
    /// What became of the old generation's state.
    pub state: StateHandoff,
}

/// What a service's plugin is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service number.
    pub service: u8,
    /// Plugin name (file stem or given name).
    pub name: String,
    /// The world the plugin implements (fixed for the service: a swap
    /// keeps it).
    pub world: PluginWorld,
    /// Hex SHA-256 of the wasm.
    pub hash: String,
    /// The plugin's version, when its manifest gives one.
    pub version: Option<String>,
    /// The limits the plugin runs with.
    pub limits: PluginLimits,
    /// The plugin generation serving: 1 when loaded, one more per swap.
    pub generation: u64,
    /// Lifecycle state.
    pub state: PluginRunState,
    /// Open connections.
    pub connections: u64,
    /// Callbacks invoked.
    pub calls: u64,
    /// Failures.
    pub crashes: u64,
    /// Re-instantiations after failures.
    pub restarts: u64,
}

/// A plugin loaded for a service.
pub(crate) struct LoadedService {
    pub(crate) actor: ActorHandle,
    world: PluginWorld,
    counters: Arc<crate::metrics::ServiceCounters>,
}

impl LoadedService {
    /// What the service's plugin is and how it is doing.
    fn info(&self, service: u8) -> ServiceInfo {
        let s = &self.actor.status;
        let PluginIdentity { name, hash, version, limits } = s.identity();
        ServiceInfo {
            service,
            name,
            world: self.world,
            hash,
            version,
            limits,
            generation: s.generation.load(Ordering::Relaxed),
            state: s.state(),
            connections: s.connections.load(Ordering::Relaxed),
            calls: self.counters.call_seconds.count(),
            crashes: s.crashes.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
        }
    }
}

impl Node {
    /// Loads the plugin file at `path` for `service`, with the limits of
    /// its manifest when one lies beside it (see [`PluginBuild::read`]).
    ///
    /// # Errors
    /// [`NodeError::Plugin`] when a file cannot be read, the manifest is
    /// not valid, the plugin does not compile, does not fit a world, fails
    /// to instantiate, or the service is already served (by a plugin or a native handler).
    pub async fn load_plugin(&self, service: u8, path: &Path) -> Result<(), NodeError> {
        let build = PluginBuild::read(path).await.map_err(|source| NodeError::Plugin { service, source })?;
        self.load_plugin_build(service, build).await
    }

    /// Loads a plugin from wasm bytes for `service`, with the node's
    /// default limits.
    ///
    /// # Errors
    /// As [`Node::load_plugin_build`].
    pub async fn load_plugin_bytes(&self, service: u8, name: &str, wasm: &[u8]) -> Result<(), NodeError> {
        self.load_plugin_build(service, PluginBuild::new(name, wasm.to_vec())).await
    }

    /// Loads a plugin build for `service`.
    ///
    /// # Errors
    /// [`NodeError::Plugin`] when the plugin does not compile, does not fit
    /// a world, fails to instantiate (e.g. its initial memory is above its
    /// memory cap), or the service is already served.
    pub async fn load_plugin_build(&self, service: u8, build: PluginBuild) -> Result<(), NodeError> {
        let plugin_err = |source| NodeError::Plugin { service, source };
        if self.inner.dispatcher.is_served(service) {
            return Err(plugin_err(PluginError::ServiceTaken(service)));
        }
        let prepared = self.prepare_plugin(service, &build.wasm).await?;
        let limits = self.inner.config.plugin_limits.with_manifest(&build.manifest);
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let counters = Arc::new(crate::metrics::ServiceCounters::default());
        let ctx = Arc::new(PluginContext {
            service,
            limits,
            host: Arc::new(NodeServices(Arc::downgrade(&self.inner))),
            owner: tx,
            epoch: self.inner.started,
            counters: counters.clone(),
            node_events: Default::default(),
        });
        let hash = prepared.hash.clone();
        let world = prepared.world.kind();
        let spec = ActorSpec {
            ctx,
            prepared,
            crash_policy: self.inner.config.crash_policy,
            events: self.inner.plugin_events.clone(),
        };
        let actor = ActorHandle::start(spec, rx).await.map_err(plugin_err)?;
        actor.status.set_identity(PluginIdentity { name: build.name, hash, version: build.manifest.version, limits });
        let loaded = Arc::new(LoadedService { actor, world, counters });
        if let Err(loaded) = self.inner.dispatcher.add_plugin(service, loaded) {
            tokio::spawn(async move { loaded.actor.stop().await });
            return Err(plugin_err(PluginError::ServiceTaken(service)));
        }
        Ok(())
    }

    /// Compiles (or loads from the cache) and pre-links a plugin for
    /// `service`, off the network tasks (compilation is CPU work).
    async fn prepare_plugin(&self, service: u8, wasm: &[u8]) -> Result<PreparedPlugin, NodeError> {
        let plugin_err = |source| NodeError::Plugin { service, source };
        let inner = self.inner.clone();
        let wasm = wasm.to_vec();
        let prepared = tokio::task::spawn_blocking(move || inner.engine.prepare(&wasm))
            .await
            .map_err(|e| plugin_err(PluginError::Actor(e.to_string())))?
            .map_err(plugin_err)?;
        tracing::info!(service, hash = %prepared.hash, from_cache = prepared.from_cache, load_ms = prepared.load_time.as_millis() as u64, "plugin compiled");
        Ok(prepared)
    }

    /// Replaces the plugin of `service` with the plugin file at `path` (and
    /// the limits of its manifest, see [`PluginBuild::read`]), live: see
    /// [`Node::swap_plugin_build`].
    ///
    /// # Errors
    /// As [`Node::swap_plugin_build`], and [`NodeError::Plugin`] with
    /// [`PluginError::Read`] or [`PluginError::Manifest`] when a file
    /// cannot be read or the manifest is not valid.
    pub async fn swap_plugin(&self, service: u8, path: &Path) -> Result<SwapReport, NodeError> {
        let build = PluginBuild::read(path).await.map_err(|source| NodeError::Plugin { service, source })?;
        self.swap_plugin_build(service, build).await
    }

    /// Replaces the plugin of `service` with a build from `wasm` with the
    /// node's default limits: see [`Node::swap_plugin_build`].
    ///
    /// # Errors
    /// As [`Node::swap_plugin_build`].
    pub async fn swap_plugin_bytes(&self, service: u8, name: &str, wasm: &[u8]) -> Result<SwapReport, NodeError> {
        self.swap_plugin_build(service, PluginBuild::new(name, wasm.to_vec())).await
    }

    /// Replaces the plugin of `service` with a new generation, without
    /// closing its connections: the new build is compiled (or taken from
    /// the cache) and instantiated first, with its own limits; when both
    /// generations export `fogconnect:handoff/state`, the old one's
    /// `snapshot` is given to the new one's `restore`; then the connections
    /// move to it, each announced with `on-connect`, and the events that
    /// arrived meanwhile follow in order, none lost or repeated. Returns the
    /// new generation's number, the times and what became of the state.
    ///
    /// # Errors
    /// [`NodeError::NoSuchService`] when the service has no plugin;
    /// [`NodeError::Plugin`] when the new plugin does not compile, link or
    /// instantiate, refuses the state handed over
    /// ([`PluginError::Handoff`]), or fails in `on-connect` — the old
    /// generation then keeps serving, with its state.
    pub async fn swap_plugin_build(&self, service: u8, build: PluginBuild) -> Result<SwapReport, NodeError> {
        let plugin_err = |source| NodeError::Plugin { service, source };
        let loaded = self.service(service).ok_or(NodeError::NoSuchService(service))?;
        let prepared = self.prepare_plugin(service, &build.wasm).await?;
        let limits = self.inner.config.plugin_limits.with_manifest(&build.manifest);
        let hash = prepared.hash.clone();
        let (compile, from_cache) = (prepared.load_time, prepared.from_cache);
        let (done, outcome) = tokio::sync::oneshot::channel();
        let request = SwapRequest { prepared, limits, done };
        loaded
            .actor
            .tx
            .send(ConnEvent::Swap(Box::new(request)))
            .await
            .map_err(|_| plugin_err(PluginError::Actor("the plugin has stopped".into())))?;
        let outcome = outcome
            .await
            .map_err(|_| plugin_err(PluginError::Actor("the plugin stopped during the swap".into())))?
            .map_err(plugin_err)?;
        loaded.actor.status.set_identity(PluginIdentity {
            name: build.name,
            hash,
            version: build.manifest.version,
            limits,
        });
        Ok(SwapReport {
            generation: outcome.generation,
            pause: outcome.pause,
            compile,
            from_cache,
            state: outcome.state,
        })
    }

    /// Unloads the plugin of `service`: new connections to the service are
    /// refused at once ("no such service"), its connections are closed
    /// (the remote side sees end of file with "service unloaded", the
    /// plugin `on-close` with kind `local`), and its actor stops. The
    /// service number is free again when this returns.
    ///
    /// # Errors
    /// [`NodeError::NoSuchService`] when the service has no plugin.
    pub async fn unload_plugin(&self, service: u8) -> Result<(), NodeError> {
        let loaded = self.inner.dispatcher.remove_plugin(service).ok_or(NodeError::NoSuchService(service))?;
        loaded.actor.unload().await;
        let _ = tokio::task::spawn_blocking(move || loaded.actor.join()).await;
        Ok(())
    }

    fn service(&self, service: u8) -> Option<Arc<LoadedService>> {
        self.inner.dispatcher.plugin(service)
    }

    /// The services served by plugins, by service number (natively served
    /// ones are the application's own and not listed).
    pub fn services(&self) -> Vec<ServiceInfo> {
        let services = self.inner.dispatcher.plugins();
        let mut list: Vec<ServiceInfo> = services.iter().map(|(service, loaded)| loaded.info(*service)).collect();
        list.sort_by_key(|s| s.service);
        list
    }

    /// The services' metrics in the Prometheus text format: connections,
    /// messages and bytes per service, plugin calls and their latency
    /// histogram, traps, restarts, swaps and the swap pause histogram.
    pub fn metrics(&self) -> String {
        let services = self.inner.dispatcher.plugins();
        let mut snapshot: Vec<crate::metrics::ServiceMetrics> = services
            .iter()
            .map(|(service, loaded)| {
                let info = loaded.info(*service);
                let c = &loaded.counters;
                crate::metrics::ServiceMetrics {
                    service: info.service,
                    plugin: info.name,
                    connections: info.connections,
                    messages_received: c.messages_received.load(Ordering::Relaxed),
                    bytes_received: c.bytes_received.load(Ordering::Relaxed),
                    messages_sent: c.messages_sent.load(Ordering::Relaxed),
                    bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                    calls: info.calls,
                    traps: info.crashes,
                    restarts: info.restarts,
                    swaps: c.swaps.load(Ordering::Relaxed),
                    generation: info.generation,
                    call_seconds: c.call_seconds.snapshot(),
                    swap_pause_seconds: c.swap_pause_seconds.snapshot(),
                }
            })
            .collect();
        snapshot.sort_by_key(|s| s.service);
        crate::metrics::render(&snapshot)
    }
}
