//! fogconnect: a P2P transport host. Nodes talk QUIC to each other;
//! application logic runs in sandboxed WebAssembly plugins selected per
//! connection by the service number of the convention number.
//!
//! Layout:
//! - [`convention`]: the convention number.
//! - [`transport`]: socket facade, identity/TLS, framing, connection tasks.
//! - `runtime`: the wasmtime plugin runtime and its supervisor (feature
//!   `plugins`, on by default; off in the device build).
//! - [`nat`]: STUN, NAT classification, punching strategy and checks.
//! - [`relay`]: TURN (relay) client and server.
//! - [`stream`]: stream plugins (watermark core so far).
//! - [`limits`]: per-source rates and connection caps, descriptors.
//! - [`dispatch`]: which service (plugin or native handler) gets an
//!   incoming connection.
//! - [`events`]: network signals as events (paths, silence, signaling,
//!   NAT, relay, presence).
//! - [`node`]: the node that ties them together, and its Rust API.

#[cfg(feature = "plugins")]
pub mod admin;
pub mod convention;
pub mod dispatch;
pub mod events;
pub mod kcp;
pub mod limits;
pub mod metrics;
pub mod nat;
pub mod node;
#[cfg(feature = "plugins")]
pub mod plugin_dir;
pub mod relay;
#[cfg(feature = "plugins")]
pub mod runtime;
pub mod signal;
pub mod stream;
pub mod transport;

pub use convention::{Convention, ConventionError, Transport};
pub use dispatch::Incoming;
pub use events::{NetworkEvent, NodeEvent, PathInfo};
pub use fogconnect_proto::manifest::PluginManifest;
pub use kcp::{KcpDrops, KcpStats};
pub use nat::NatReport;
pub use node::{
    Commander, ConnectError, Connection, ConnectionActivity, ConnectionEvent, ConnectionSender, IncomingCommand,
    MAX_LINK_STREAMS, MediaEvent, MediaStream, Node, NodeBuilder, NodeConfig, NodeError, RelayServer, RelayStatus,
    StreamError, StreamSession, TalkBack, TraversalReport,
};
#[cfg(feature = "plugins")]
pub use node::{PluginBuild, ServiceInfo, SwapReport};
#[cfg(feature = "plugins")]
pub use runtime::PluginError;
#[cfg(feature = "plugins")]
pub use runtime::actor::{PluginEvent, PluginRunState, StateHandoff};
#[cfg(feature = "plugins")]
pub use runtime::engine::PluginWorld;
#[cfg(feature = "plugins")]
pub use runtime::state::PluginLimits;
#[cfg(feature = "plugins")]
pub use runtime::supervisor::CrashPolicy;
pub use transport::conn::{CloseKind, CloseReason, ConnStats, ConnectionId, PathKind, SendError};
pub use transport::identity::Fingerprint;
pub use transport::wire::RefuseCode;
