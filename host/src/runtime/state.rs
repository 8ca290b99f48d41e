//! The data of one plugin `Store` and the host functions of the service
//! world. Plain Rust, testable without wasm.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::fogconnect::plugin::{host, types};
use super::stderr_tail::StderrTail;
use super::subscriptions::{NodeEventFilter, NodeEventKinds, Subscriptions, WatchFault};
use crate::convention::{Convention, Transport};
use crate::transport::conn::{CloseKind, CloseReason, ConnShared, ConnectionId, Owner, PathKind, SendError};

/// Services of the node that plugins reach through their imports.
pub trait HostServices: Send + Sync + 'static {
    /// A fresh connection id, never reused by this node.
    fn next_connection_id(&self) -> ConnectionId;
    /// Starts connecting to `peer` (an address or a peer id) in the
    /// background; the outcome is sent to `owner` as `Opened` or
    /// `OpenFailed` for `id`.
    ///
    /// # Errors
    /// A message when the peer cannot even be resolved.
    fn connect(&self, peer: &str, convention: Convention, id: ConnectionId, owner: Owner) -> Result<(), String>;

    /// A plugin instance chose node event `kinds`: tells `owner` (the
    /// plugin's channel) the node's state now for them, and makes sure the
    /// node's events that `filter` may want reach that channel as
    /// [`crate::transport::conn::ConnEvent::Node`] until it closes; in
    /// the background.
    fn forward_node_events(&self, kinds: NodeEventKinds, filter: Arc<NodeEventFilter>, owner: Owner);

    /// Makes sure the node learns presence from its signaling server, then
    /// tells `owner` whether `peer` is online now (a presence node event),
    /// in the background.
    ///
    /// # Errors
    /// [`WatchFault::NoSignaling`] when the node has no signaling server.
    fn watch_presence(&self, peer: &str, owner: Owner) -> Result<(), WatchFault>;
}

/// Per-plugin resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Linear memory cap, in bytes.
    pub memory_bytes: usize,
    /// Longest a single callback may run.
    pub call_deadline: std::time::Duration,
    /// Whether the plugin may open connections with `connect-peer`.
    pub allow_connect: bool,
}

impl PluginLimits {
    /// These limits with the values `manifest` gives in their place.
    pub fn with_manifest(self, manifest: &fogconnect_proto::manifest::PluginManifest) -> Self {
        Self {
            memory_bytes: manifest.memory_mib.map_or(self.memory_bytes, |mib| (mib as usize) << 20),
            call_deadline: manifest
                .call_deadline_ms
                .map_or(self.call_deadline, |ms| std::time::Duration::from_millis(u64::from(ms))),
            allow_connect: manifest.connect_peer.unwrap_or(self.allow_connect),
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self { memory_bytes: 64 << 20, call_deadline: std::time::Duration::from_secs(1), allow_connect: true }
    }
}

/// What the plugin's store needs to know about its place in the node.
pub struct PluginContext {
    /// The service number the plugin serves.
    pub service: u8,
    /// Limits of the plugin.
    pub limits: PluginLimits,
    /// The node.
    pub host: Arc<dyn HostServices>,
    /// The plugin's own event channel (owner of its connections).
    pub owner: Owner,
    /// Origin of `monotonic-now`.
    pub epoch: Instant,
    /// The service's traffic and call metrics.
    pub counters: Arc<crate::metrics::ServiceCounters>,
    /// Which node events the service's plugin instances ever chose (shared
    /// by its generations).
    pub node_events: Arc<NodeEventFilter>,
}

impl PluginContext {
    /// The same place in the node with other limits (a new generation's).
    pub fn with_limits(&self, limits: PluginLimits) -> Self {
        Self {
            service: self.service,
            limits,
            host: self.host.clone(),
            owner: self.owner.clone(),
            epoch: self.epoch,
            counters: self.counters.clone(),
            node_events: self.node_events.clone(),
        }
    }
}

/// A plugin's connections by handle. Handles are numbers the node hands
/// out, so the table hashes them with the fast Fx hash rather than the
/// default SipHash (two lookups per message were 4 % of a plugin call).
pub type ConnTable = rustc_hash::FxHashMap<u64, ConnEntry>;

/// One connection in a plugin's table.
#[derive(Debug)]
pub enum ConnEntry {
    /// A `connect-peer` still in progress; `cancelled` when the plugin
    /// closed it before it completed.
    Pending {
        /// The plugin called `close` on the pending handle.
        cancelled: bool,
    },
    /// An established connection.
    Open {
        /// The connection.
        shared: Arc<ConnShared>,
        /// The plugin's user-data slot.
        user_data: u64,
    },
}

/// Memory limiter that remembers whether it refused a growth, so a trap can
/// be reported as "memory cap exceeded".
pub struct PluginLimiter {
    inner: StoreLimits,
    /// Set when a memory growth was refused.
    pub memory_refused: bool,
}

impl ResourceLimiter for PluginLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let result = self.inner.memory_growing(current, desired, maximum);
        if !matches!(result, Ok(true)) {
            self.memory_refused = true;
        }
        result
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_refused = true;
        self.inner.memory_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The sandbox of a plugin store: WASI with every capability denied (no
/// preopened directories, no environment, no arguments, no network, stdin
/// empty, stdout discarded; standard error kept as a short tail for crash
/// reports) and the memory limiter.
pub(super) fn sandbox(limits: &PluginLimits) -> (WasiCtx, StderrTail, PluginLimiter) {
    let stderr = StderrTail::default();
    let wasi = WasiCtxBuilder::new()
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes)
        .instances(32)
        .tables(64)
        .memories(8)
        .trap_on_grow_failure(true)
        .build();
    (wasi, stderr, PluginLimiter { inner: store_limits, memory_refused: false })
}

/// Data of one plugin store.
pub struct PluginState {
    wasi: WasiCtx,
    /// The newest bytes the plugin wrote to standard error.
    pub stderr: StderrTail,
    table: ResourceTable,
    /// The memory limiter.
    pub limiter: PluginLimiter,
    /// The plugin's place in the node.
    pub ctx: Arc<PluginContext>,
    /// The plugin's connections by handle; changed only through the
    /// methods below so `open_count` stays right.
    conns: ConnTable,
    /// How many entries of `conns` are open (not pending).
    open_count: usize,
    /// Local closes made during the current callback, reported with
    /// `on-close` once it returns.
    pub deferred_closes: Vec<(u64, CloseReason)>,
    /// The node events this instance chose (contract 0.2.0 on).
    pub subscriptions: Subscriptions,
    /// Messages and calls counted and not yet flushed into the service's
    /// counters (the actor flushes it).
    pub tally: crate::metrics::ServiceTally,
}

/// Longest log line taken from a plugin.
const MAX_LOG_LINE: usize = 4096;

/// Writes a plugin's log line to the node's log (clipped to 4 KiB).
pub(super) fn plugin_log(service: u8, level: tracing::Level, message: &str) {
    let mut end = message.len().min(MAX_LOG_LINE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let line = &message[..end];
    match level {
        tracing::Level::TRACE => tracing::trace!(target: "plugin", service, "{line}"),
        tracing::Level::DEBUG => tracing::debug!(target: "plugin", service, "{line}"),
        tracing::Level::INFO => tracing::info!(target: "plugin", service, "{line}"),
        tracing::Level::WARN => tracing::warn!(target: "plugin", service, "{line}"),
        tracing::Level::ERROR => tracing::error!(target: "plugin", service, "{line}"),
    }
}

impl PluginState {
    /// Fresh state in a [`sandbox`].
    pub fn new(ctx: Arc<PluginContext>) -> Self {
        let (wasi, stderr, limiter) = sandbox(&ctx.limits);
        Self {
            wasi,
            stderr,
            table: ResourceTable::new(),
            limiter,
            tally: crate::metrics::ServiceTally::new(ctx.counters.clone()),
            ctx,
            conns: ConnTable::default(),
            open_count: 0,
            deferred_closes: Vec::new(),
            subscriptions: Subscriptions::default(),
        }
    }

    /// The entry of a handle.
    pub fn conn(&self, id: u64) -> Option<&ConnEntry> {
        self.conns.get(&id)
    }

    /// Every handle in the table.
    pub fn conn_ids(&self) -> Vec<u64> {
        self.conns.keys().copied().collect()
    }

    /// Records an established connection.
    pub fn insert_open(&mut self, id: u64, shared: Arc<ConnShared>) {
        if !matches!(self.conns.insert(id, ConnEntry::Open { shared, user_data: 0 }), Some(ConnEntry::Open { .. })) {
            self.open_count += 1;
        }
    }

    /// Forgets a handle.
    pub fn remove_conn(&mut self, id: u64) -> Option<ConnEntry> {
        let entry = self.conns.remove(&id);
        if matches!(entry, Some(ConnEntry::Open { .. })) {
            self.open_count -= 1;
        }
        entry
    }

    /// Empties the table (the plugin instance is going away).
    pub fn take_conns(&mut self) -> ConnTable {
        self.open_count = 0;
        std::mem::take(&mut self.conns)
    }

    /// Takes over a table emptied from another instance (a swap).
    pub fn put_conns(&mut self, conns: ConnTable) {
        self.open_count = conns.values().filter(|e| matches!(e, ConnEntry::Open { .. })).count();
        self.conns = conns;
    }

    /// Open (not pending) connections.
    pub fn open_connections(&self) -> usize {
        self.open_count
    }

    /// The established connection of a handle.
    pub(super) fn open(&self, conn: u64) -> Result<&Arc<ConnShared>, ConnFault> {
        match self.conns.get(&conn) {
            Some(ConnEntry::Open { shared, .. }) => Ok(shared),
            _ => Err(ConnFault::UnknownConnection),
        }
    }

    /// The version-neutral part of `send`.
    pub(super) fn send_message(&mut self, conn: u64, data: Vec<u8>) -> Result<(), ConnFault> {
        let len = data.len();
        let sent = self.open(conn)?.send(Bytes::from(data));
        sent.map(|()| self.tally.sent(len)).map_err(|e| match e {
            SendError::Closed => ConnFault::Closed,
            SendError::TooLarge { max, .. } => ConnFault::TooLarge(clip_u32(max)),
            SendError::BufferFull { limit } => ConnFault::BufferFull(clip_u32(limit)),
        })
    }

    /// The version-neutral part of `close`.
    pub(super) fn close_conn(&mut self, conn: u64) -> Result<(), ConnFault> {
        match self.conns.get_mut(&conn) {
            Some(ConnEntry::Open { shared, .. }) => {
                if shared.close_local("closed by this plugin") {
                    self.deferred_closes.push((conn, CloseReason::new(CloseKind::Local, "closed by this plugin")));
                }
                Ok(())
            }
            Some(ConnEntry::Pending { cancelled }) => {
                *cancelled = true;
                Ok(())
            }
            None => Err(ConnFault::UnknownConnection),
        }
    }

    /// The version-neutral part of `user-data`.
    pub(super) fn user_data_of(&self, conn: u64) -> Result<u64, ConnFault> {
        match self.conns.get(&conn) {
            Some(ConnEntry::Open { user_data, .. }) => Ok(*user_data),
            _ => Err(ConnFault::UnknownConnection),
        }
    }

    /// The version-neutral part of `set-user-data`.
    pub(super) fn set_user_data_of(&mut self, conn: u64, value: u64) -> Result<(), ConnFault> {
        match self.conns.get_mut(&conn) {
            Some(ConnEntry::Open { user_data, .. }) => {
                *user_data = value;
                Ok(())
            }
            _ => Err(ConnFault::UnknownConnection),
        }
    }

    /// The version-neutral part of `connect-peer`, for a transport the
    /// contract could name (`None`: one this node does not offer).
    pub(super) fn start_connect(
        &mut self,
        peer: &str,
        transport: Option<Transport>,
        service: u8,
    ) -> Result<u64, ConnectFault> {
        if !self.ctx.limits.allow_connect {
            return Err(ConnectFault::NotAllowed);
        }
        // Plugins reach other nodes: over what a link between nodes carries.
        let transport = match transport {
            Some(t) if Transport::Quic.carries(t) => t,
            _ => return Err(ConnectFault::UnsupportedTransport),
        };
        let id = self.ctx.host.next_connection_id();
        self.ctx
            .host
            .connect(peer, Convention::new(transport, service), id, self.ctx.owner.clone())
            .map_err(ConnectFault::InvalidPeer)?;
        self.conns.insert(id.0, ConnEntry::Pending { cancelled: false });
        Ok(id.0)
    }

    /// Nanoseconds since the node's plugin epoch.
    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.ctx.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Why a call on a connection handle failed, whatever the contract version
/// (each version's `conn-error` has these cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnFault {
    /// Not a handle of an established connection of this plugin.
    UnknownConnection,
    /// The connection is closing.
    Closed,
    /// Larger than the maximum message size (the maximum).
    TooLarge(u32),
    /// The send buffer is full (its limit).
    BufferFull(u32),
}

/// Why a `connect-peer` failed, whatever the contract version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnectFault {
    /// The peer could not be resolved (why).
    InvalidPeer(String),
    /// The transport is not offered.
    UnsupportedTransport,
    /// The plugin may not connect.
    NotAllowed,
}

impl From<ConnFault> for types::ConnError {
    fn from(fault: ConnFault) -> Self {
        match fault {
            ConnFault::UnknownConnection => types::ConnError::UnknownConnection,
            ConnFault::Closed => types::ConnError::Closed,
            ConnFault::TooLarge(max) => types::ConnError::TooLarge(max),
            ConnFault::BufferFull(limit) => types::ConnError::BufferFull(limit),
        }
    }
}

impl From<ConnectFault> for types::ConnectError {
    fn from(fault: ConnectFault) -> Self {
        match fault {
            ConnectFault::InvalidPeer(why) => types::ConnectError::InvalidPeer(why),
            ConnectFault::UnsupportedTransport => types::ConnectError::UnsupportedTransport,
            ConnectFault::NotAllowed => types::ConnectError::NotAllowed,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Converts a close reason to its WIT form.
pub fn wit_reason(reason: &CloseReason) -> types::CloseReason {
    types::CloseReason {
        kind: match reason.kind {
            CloseKind::Eof => types::CloseKind::Eof,
            CloseKind::Error => types::CloseKind::Error,
            CloseKind::Timeout => types::CloseKind::Timeout,
            CloseKind::Refused => types::CloseKind::Refused,
            CloseKind::Local => types::CloseKind::Local,
        },
        message: reason.message.clone(),
    }
}

fn clip_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn send(&mut self, conn: u64, data: Vec<u8>) -> Result<(), types::ConnError> {
        Ok(self.send_message(conn, data)?)
    }

    fn close(&mut self, conn: u64) -> Result<(), types::ConnError> {
        Ok(self.close_conn(conn)?)
    }

    fn convention(&mut self, conn: u64) -> Result<u32, types::ConnError> {
        Ok(self.open(conn)?.meta().convention.raw_for_plugin_contract_0_1())
    }

    fn is_passive(&mut self, conn: u64) -> Result<bool, types::ConnError> {
        Ok(self.open(conn)?.meta().passive)
    }

    fn peer_id(&mut self, conn: u64) -> Result<String, types::ConnError> {
        Ok(self.open(conn)?.meta().peer_id.clone())
    }

    fn user_data(&mut self, conn: u64) -> Result<u64, types::ConnError> {
        Ok(self.user_data_of(conn)?)
    }

    fn set_user_data(&mut self, conn: u64, value: u64) -> Result<(), types::ConnError> {
        Ok(self.set_user_data_of(conn, value)?)
    }

    fn connect_peer(
        &mut self,
        peer: String,
        transport: types::Transport,
        service: u8,
    ) -> Result<u64, types::ConnectError> {
        let transport = match transport {
            types::Transport::Quic => Some(Transport::Quic),
            types::Transport::Kcp => None,
        };
        Ok(self.start_connect(&peer, transport, service)?)
    }

    fn stats(&mut self, conn: u64) -> Result<types::ConnectionStats, types::ConnError> {
        let s = self.open(conn)?.stats();
        Ok(types::ConnectionStats {
            rtt_us: u64::try_from(s.rtt.as_micros()).unwrap_or(u64::MAX),
            path: match s.path {
                PathKind::Lan => types::PathKind::Lan,
                PathKind::Direct => types::PathKind::Direct,
                PathKind::Relayed => types::PathKind::Relayed,
            },
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            messages_sent: s.messages_sent,
            messages_received: s.messages_received,
        })
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        let level = match level {
            types::LogLevel::Trace => tracing::Level::TRACE,
            types::LogLevel::Debug => tracing::Level::DEBUG,
            types::LogLevel::Info => tracing::Level::INFO,
            types::LogLevel::Warn => tracing::Level::WARN,
            types::LogLevel::Error => tracing::Level::ERROR,
        };
        plugin_log(self.ctx.service, level, &message);
    }

    fn monotonic_now(&mut self) -> u64 {
        self.now_ns()
    }
}
