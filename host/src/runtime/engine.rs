//! The wasmtime engine shared by every plugin of a node: one `Engine`, one
//! `Linker` with the host functions added once, an epoch ticker, and the
//! on-disk cache of precompiled components.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::PluginError;
use super::bindings::Service;
use super::bindings_0_2::EventedService;
use super::handoff_bindings::HandoffIndices;
use super::service_world::ServiceIndices;
use super::state::PluginState;
use super::stream_bindings::StreamPlugin;
use super::stream_bindings_0_2::EventedStreamPlugin;
use super::stream_state::StreamState;
use super::stream_world::StreamIndices;
use super::transport_bindings::TransportStats;

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A plugin of one world, pre-linked for store data `T`, with the indices
/// of its exports: the world's (`I`), and the optional state handoff's.
pub struct PluginComponent<T: 'static, I> {
    /// The pre-linked component.
    pub pre: InstancePre<T>,
    /// Where the world's exports are.
    pub world: I,
    /// Where the `fogconnect:handoff/state` exports are, when the plugin
    /// has them.
    pub handoff: Option<HandoffIndices>,
}

impl<T: 'static, I: Clone> Clone for PluginComponent<T, I> {
    fn clone(&self) -> Self {
        Self { pre: self.pre.clone(), world: self.world.clone(), handoff: self.handoff.clone() }
    }
}

impl<T: 'static, I> PluginComponent<T, I> {
    fn new(pre: InstancePre<T>, world: impl FnOnce(&InstancePre<T>) -> wasmtime::Result<I>) -> wasmtime::Result<Self> {
        let world = world(&pre)?;
        // Optional: a plugin without the handoff exports starts each
        // generation afresh.
        let handoff = HandoffIndices::new(&pre).ok();
        Ok(Self { pre, world, handoff })
    }
}

/// A service plugin, ready to instantiate.
pub type ServiceComponent = PluginComponent<PluginState, ServiceIndices>;
/// A stream plugin, ready to instantiate.
pub type StreamComponent = PluginComponent<StreamState, StreamIndices>;

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginWorld {
    /// `fogconnect:plugin/service` (0.1.0 or 0.2.0): connections and
    /// messages, and from 0.2.0 network and node events.
    Service,
    /// `fogconnect:streaming/stream-plugin` (0.1.0, or 0.2.0 with events):
    /// streams pulled by the node.
    Stream,
}

impl PluginWorld {
    /// `service` or `stream`.
    pub fn name(self) -> &'static str {
        match self {
            PluginWorld::Service => "service",
            PluginWorld::Stream => "stream",
        }
    }
}

impl PreparedWorld {
    /// Which world it is.
    pub fn kind(&self) -> PluginWorld {
        match self {
            PreparedWorld::Service(_) => PluginWorld::Service,
            PreparedWorld::Stream(_) => PluginWorld::Stream,
        }
    }
}

/// Which world a plugin implements, pre-linked: instantiating it is cheap.
#[derive(Clone)]
pub enum PreparedWorld {
    /// A service plugin (`fogconnect:plugin/service`), possibly with the
    /// state handoff exports (`fogconnect:handoff/state`).
    Service(ServiceComponent),
    /// A stream plugin (`fogconnect:streaming/stream-plugin`), possibly
    /// with the state handoff exports.
    Stream(StreamComponent),
}

/// Result of preparing a plugin: ready to instantiate.
#[derive(Clone)]
pub struct PreparedPlugin {
    /// The pre-linked component.
    pub world: PreparedWorld,
    /// Hex SHA-256 of the wasm bytes.
    pub hash: String,
    /// Whether the compiled artifact came from the cache.
    pub from_cache: bool,
    /// Time spent compiling or loading the artifact.
    pub load_time: Duration,
}

/// The node's plugin engine.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<PluginState>,
    stream_linker: Linker<StreamState>,
    cache_dir: Option<PathBuf>,
    compat_key: String,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// Creates the engine, links WASI (every capability denied, see
    /// [`PluginState`]) and the fogconnect host interface, and starts the
    /// epoch ticker. `cache_dir` enables the precompile cache.
    ///
    /// # Errors
    /// [`PluginError::Engine`] when wasmtime refuses the configuration.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Measured: a recv+send call costs about half with this off, and the
        // service world uses no async component calls.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        Service::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        EventedService::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        TransportStats::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut stream_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut stream_linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        StreamPlugin::add_to_linker::<StreamState, HasSelf<StreamState>>(&mut stream_linker, |state| state)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        EventedStreamPlugin::add_to_linker::<StreamState, HasSelf<StreamState>>(&mut stream_linker, |state| state)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat_key = format!("{:016x}", hasher.finish());

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("fogconnect-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        Ok(Self { engine, linker, stream_linker, cache_dir, compat_key, ticker_stop })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads from the cache) and pre-links a plugin for the
    /// world it implements: the service world (0.1.0 or 0.2.0), or else
    /// the stream world.
    ///
    /// # Errors
    /// [`PluginError::Compile`] when the bytes are not a valid component,
    /// [`PluginError::Link`] when it fits neither world.
    pub fn prepare(&self, wasm: &[u8]) -> Result<PreparedPlugin, PluginError> {
        let started = Instant::now();
        let hash = hex_sha256(wasm);
        let (component, from_cache) = self.component(wasm, &hash)?;
        let service = self
            .linker
            .instantiate_pre(&component)
            .and_then(|pre| ServiceComponent::new(pre, ServiceIndices::new))
            .map(PreparedWorld::Service);
        let world = match service {
            Ok(world) => world,
            Err(service_err) => self
                .stream_linker
                .instantiate_pre(&component)
                .and_then(|pre| StreamComponent::new(pre, StreamIndices::new))
                .map(PreparedWorld::Stream)
                .map_err(|stream_err| {
                    PluginError::Link(format!(
                        "as a service plugin: {service_err:#}; as a stream plugin: {stream_err:#}"
                    ))
                })?,
        };
        Ok(PreparedPlugin { world, hash, from_cache, load_time: started.elapsed() })
    }

    fn cache_path(&self, hash: &str) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|dir| dir.join(format!("{hash}-{}.cwasm", self.compat_key)))
    }

    fn component(&self, wasm: &[u8], hash: &str) -> Result<(Component, bool), PluginError> {
        let cached = self.cache_path(hash);
        if let Some(path) = &cached
            && path.exists()
        {
            // Read into memory rather than mmap the file: a cache file
            // truncated or rewritten while the node runs must not fault the
            // node (SIGBUS on a mapped page).
            match std::fs::read(path) {
                // SAFETY: the artifact was written by `store_artifact` below
                // from a component this engine compiled, into the node's own
                // cache directory (which must be writable only by the node's
                // user), and its name carries the engine compatibility hash;
                // wasmtime also checks its header and compatibility.
                Ok(bytes) => match unsafe { Component::deserialize(&self.engine, &bytes) } {
                    Ok(component) => return Ok((component, true)),
                    Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cached artifact: {e}"),
                },
                Err(e) => tracing::warn!(path = %path.display(), "cannot read cached artifact: {e}"),
            }
        }
        let component = Component::new(&self.engine, wasm).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        if let Some(path) = &cached
            && let Err(e) = store_artifact(&component, path)
        {
            tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {e}");
        }
        Ok((component, false))
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Writes the artifact atomically (temporary file, then rename).
fn store_artifact(component: &Component, path: &Path) -> Result<(), String> {
    let bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
    let dir = path.parent().ok_or("cache path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// Lowercase hex SHA-256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    hex::encode(digest.as_ref())
}
