//! The plugin runtime: wasmtime engine, per-plugin stores driven by actor
//! threads, host imports, and crash supervision.

pub mod actor;
pub mod engine;
mod generation;
pub mod harness;
mod service_0_2;
mod service_world;
pub mod state;
pub mod stderr_tail;
mod stream_0_2;
pub mod stream_actor;
pub mod stream_harness;
pub mod stream_state;
mod stream_world;
pub mod subscriptions;
pub mod supervisor;
mod transport_stats;

/// Bindings of the `fogconnect:plugin/service` world generated from `wit/`
/// (documented there).
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "service",
        path: "../wit",
    });
}

/// Bindings of the `fogconnect:plugin/evented-service@0.2.0` world (network and
/// node events) generated from `wit/plugin-0.2.0` (documented there).
#[allow(missing_docs)]
pub mod bindings_0_2 {
    wasmtime::component::bindgen!({
        world: "evented-service",
        path: "../wit/plugin-0.2.0",
    });
}

/// Bindings of the optional `fogconnect:transport/transport-stats` world
/// generated from `wit/transport-stats` (documented there): a service
/// plugin's reading of its connections' transport counters.
#[allow(missing_docs)]
pub mod transport_bindings {
    wasmtime::component::bindgen!({
        world: "transport-stats",
        path: "../wit/transport-stats",
    });
}

/// Bindings of the optional `fogconnect:handoff/handoff` world generated
/// from `wit/handoff` (documented there): a service plugin's state moving
/// to its next generation on a live swap.
#[allow(missing_docs)]
pub mod handoff_bindings {
    wasmtime::component::bindgen!({
        world: "handoff",
        path: "../wit/handoff",
    });
}

/// Bindings of the `fogconnect:streaming/stream-plugin` world generated
/// from `wit/stream` (documented there).
#[allow(missing_docs)]
pub mod stream_bindings {
    wasmtime::component::bindgen!({
        world: "stream-plugin",
        path: "../wit/stream",
    });
}

/// Bindings of the `fogconnect:streaming/evented-stream-plugin@0.2.0`
/// world (the stream world with network and node events) generated from
/// `wit/stream-0.2.0` (documented there); its types are those of the
/// stream world 0.1.0 and the service world 0.2.0.
#[allow(missing_docs)]
pub mod stream_bindings_0_2 {
    wasmtime::component::bindgen!({
        world: "evented-stream-plugin",
        path: "../wit/stream-0.2.0",
        with: {
            "fogconnect:streaming/types@0.1.0": super::stream_bindings::fogconnect::streaming::types,
            "fogconnect:plugin/types@0.2.0": super::bindings_0_2::fogconnect::plugin::types,
        },
    });
}

/// Errors of loading and running plugins.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("cannot read plugin {path}: {message}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The plugin's manifest is not valid.
    #[error("plugin manifest {path}: {message}")]
    Manifest {
        /// Where the manifest came from.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// wasmtime refused the engine configuration.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The bytes are not a valid WebAssembly component.
    #[error("plugin does not compile: {0}")]
    Compile(String),
    /// The component fits neither service world (0.1.0, 0.2.0) nor the
    /// stream world (missing exports, unknown imports).
    #[error("plugin fits neither a fogconnect service world (0.1.0, 0.2.0) nor the stream world: {0}")]
    Link(String),
    /// Instantiation failed (start function trapped, limits).
    #[error("plugin failed to instantiate: {0}")]
    Instantiate(String),
    /// The service number is already served, by a plugin or a native
    /// handler.
    #[error("service {0} is already served (by a plugin or a native handler)")]
    ServiceTaken(u8),
    /// The new generation refused the state of the one serving (its
    /// `restore` returned an error or trapped): the swap was rejected.
    #[error("the new generation refused the state handed over: {0}")]
    Handoff(String),
    /// The plugin's thread could not be started or stopped unexpectedly.
    #[error("plugin actor: {0}")]
    Actor(String),
}
