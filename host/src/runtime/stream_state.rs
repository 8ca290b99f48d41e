//! The data of one stream plugin `Store`: the plugin's connections, its
//! streams and their send queues, the pull schedule and the commands it
//! waits on; and the host functions of the stream world. Plain Rust,
//! testable without wasm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::state::{PluginContext, PluginLimiter, plugin_log, sandbox};
use super::stderr_tail::StderrTail;
use super::stream_bindings::fogconnect::streaming::{host, types};
use crate::stream::command::{CommandError, CommandTable, DEFAULT_TIMEOUT, MAX_COMMAND_BYTES};
use crate::stream::mux::WireStream;
use crate::stream::pump::MuxShared;
use crate::stream::schedule::{DEFAULT_PERIOD, PullSchedule};
use crate::stream::status::{SendMeter, SendSample};
use crate::stream::watermark::{WatermarkEvent, Watermarks};
use crate::transport::conn::ConnShared;

/// A send stream's buffer size at which pulling stops even with its
/// watermarks off, so a plugin that ignores its buffer cannot exhaust the
/// node's memory; nothing is dropped.
pub const HARD_BUFFER_LIMIT: u64 = 8 << 20;

/// Most commands of one plugin waiting for replies.
pub const MAX_WAITING_COMMANDS: usize = 256;

/// The smallest QUIC send window the node gives a link a stream plugin
/// sends on.
pub const MIN_STREAM_SEND_WINDOW: u64 = 64 * 1024;

/// The window of a send stream's rate and loss.
pub const STATUS_WINDOW: Duration = Duration::from_secs(1);

/// One application connection of a stream plugin.
#[derive(Debug)]
pub struct StreamConn {
    /// The connection.
    pub shared: Arc<ConnShared>,
    /// Its send queues, drained by its pump task.
    pub queues: Arc<MuxShared>,
    /// Stops the pump task.
    pub stop: CancellationToken,
    /// Its streams: wire id → plugin handle.
    pub streams: HashMap<WireStream, u64>,
}

impl StreamConn {
    /// Sends a control message at once (ahead of queued stream data); a
    /// closed connection is reported by its own `Closed` event.
    pub fn send_now(&self, message: &StreamMessage) {
        let _ = self.shared.send(message.encode());
    }
}

/// Which way a stream's data goes.
#[derive(Debug)]
pub enum StreamKind {
    /// The plugin sends (pulled with `send-get`).
    Send {
        /// Rate and loss over [`STATUS_WINDOW`].
        meter: SendMeter,
    },
    /// The application talks back (`recv-data`).
    Recv,
}

/// One live stream of the plugin, by handle.
#[derive(Debug)]
pub struct StreamEntry {
    /// Its connection's handle.
    pub conn: u64,
    /// Its id on the connection.
    pub wire: WireStream,
    /// Send or talk-back.
    pub kind: StreamKind,
}

/// The stream bookkeeping of one plugin instance.
#[derive(Debug)]
pub struct StreamCore {
    /// Open connections by handle.
    pub conns: HashMap<u64, StreamConn>,
    /// Live streams by plugin handle.
    pub streams: HashMap<u64, StreamEntry>,
    /// The pull ticks of the send streams.
    pub schedule: PullSchedule,
    /// Commands the plugin sent, by id, with their connection.
    pub commands: CommandTable<u64>,
    /// Watermark events caused by `set-watermarks`, delivered after the
    /// call that caused them.
    pub pending_events: Vec<(u64, WatermarkEvent)>,
    /// True while `send-init` runs: `set-watermarks` for a handle not yet
    /// known is then kept for the handle `send-init` returns.
    pub initializing: bool,
    /// Marks set during `send-init`, by handle.
    pub early_marks: HashMap<u64, Watermarks>,
}

impl StreamCore {
    fn new(now: Instant) -> Self {
        Self {
            conns: HashMap::new(),
            streams: HashMap::new(),
            schedule: PullSchedule::new(DEFAULT_PERIOD, now),
            commands: CommandTable::new(MAX_WAITING_COMMANDS),
            pending_events: Vec::new(),
            initializing: false,
            early_marks: HashMap::new(),
        }
    }

    /// Bytes buffered for a send stream (`None` for anything else).
    pub fn buffered(&self, handle: u64) -> Option<u64> {
        let entry = self.streams.get(&handle)?;
        if !matches!(entry.kind, StreamKind::Send { .. }) {
            return None;
        }
        let conn = self.conns.get(&entry.conn)?;
        Some(conn.queues.lock().buffered(entry.wire))
    }

    /// Records a sample of every send stream's counters (rate and loss),
    /// and sizes the QUIC send window of every link a stream is sent on to
    /// twice its congestion window: QUIC then holds about one window of
    /// data beyond what is in flight, and the rest of a backlog waits in
    /// the streams' send buffers, where the watermarks see it (with QUIC's
    /// default of 10 MB a slow link would hide seconds of media).
    pub fn sample_meters(&mut self, now: Instant) {
        // One read of each connection's path per sample.
        let mut paths = HashMap::new();
        for (&id, conn) in &self.conns {
            if conn.streams.is_empty() {
                continue;
            }
            let path = conn.shared.path_sample();
            if let Some(path) = path {
                conn.shared.set_send_window(path.cwnd.saturating_mul(2).max(MIN_STREAM_SEND_WINDOW));
            }
            paths.insert(id, path);
        }
        for entry in self.streams.values_mut() {
            let StreamKind::Send { meter } = &mut entry.kind else { continue };
            let Some(conn) = self.conns.get(&entry.conn) else { continue };
            let path = paths.get(&entry.conn).copied().flatten();
            let (sent, buffered) = {
                let mux = conn.queues.lock();
                (mux.sent(entry.wire), mux.buffered(entry.wire))
            };
            meter.sample(
                now,
                SendSample {
                    bytes_sent: sent,
                    bytes_buffered: buffered,
                    packets_sent: path.map_or(0, |p| p.packets_sent),
                    packets_lost: path.map_or(0, |p| p.packets_lost),
                    rtt: path.map_or(Duration::ZERO, |p| p.rtt),
                    cwnd: path.map_or(0, |p| p.cwnd),
                },
            );
        }
    }

    fn send_entry(&self, handle: u64) -> Result<(&StreamEntry, &StreamConn), types::StreamError> {
        let entry = self.streams.get(&handle).ok_or(types::StreamError::UnknownStream)?;
        if !matches!(entry.kind, StreamKind::Send { .. }) {
            return Err(types::StreamError::UnknownStream);
        }
        let conn = self.conns.get(&entry.conn).ok_or(types::StreamError::UnknownStream)?;
        Ok((entry, conn))
    }
}

/// Data of one stream plugin store.
pub struct StreamState {
    wasi: WasiCtx,
    /// The newest bytes the plugin wrote to standard error.
    pub stderr: StderrTail,
    table: ResourceTable,
    /// The memory limiter.
    pub limiter: PluginLimiter,
    /// The plugin's place in the node.
    pub ctx: Arc<PluginContext>,
    /// Connections, streams, schedule and commands.
    pub core: StreamCore,
    /// The node events this instance chose (contract 0.2.0 on).
    pub subscriptions: super::subscriptions::Subscriptions,
}

impl StreamState {
    /// Fresh state in the plugin sandbox, with no connections.
    pub fn new(ctx: Arc<PluginContext>) -> Self {
        let (wasi, stderr, limiter) = sandbox(&ctx.limits);
        Self {
            wasi,
            stderr,
            table: ResourceTable::new(),
            limiter,
            ctx,
            core: StreamCore::new(Instant::now()),
            subscriptions: Default::default(),
        }
    }
}

impl WasiView for StreamState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn clip_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The WIT form of a command failure.
pub fn wit_command_error(err: &CommandError) -> types::CommandError {
    match err {
        CommandError::TimedOut(_) => types::CommandError::Timeout,
        CommandError::TooLarge(_) => types::CommandError::TooLarge(clip_u32(MAX_COMMAND_BYTES)),
        CommandError::TooMany(_) => types::CommandError::TooMany(clip_u32(MAX_WAITING_COMMANDS)),
    }
}

impl types::Host for StreamState {}

impl host::Host for StreamState {
    fn buffered(&mut self, handle: u64) -> Result<u64, types::StreamError> {
        let (entry, conn) = self.core.send_entry(handle)?;
        Ok(conn.queues.lock().buffered(entry.wire))
    }

    fn send_status(&mut self, handle: u64) -> Result<types::SendStatistics, types::StreamError> {
        let (entry, conn) = self.core.send_entry(handle)?;
        let (sent, buffered) = {
            let mux = conn.queues.lock();
            (mux.sent(entry.wire), mux.buffered(entry.wire))
        };
        let path = conn.shared.path_sample();
        let (rate, loss) = match &entry.kind {
            StreamKind::Send { meter } => meter.status().map_or((0.0, 0.0), |s| (s.rate, s.loss)),
            StreamKind::Recv => (0.0, 0.0),
        };
        Ok(types::SendStatistics {
            rate_bytes_per_second: rate as u64,
            bytes_sent: sent,
            bytes_buffered: buffered,
            rtt_us: path.map_or(0, |p| u64::try_from(p.rtt.as_micros()).unwrap_or(u64::MAX)),
            loss_ppm: (loss * 1e6) as u32,
            congestion_window: path.map_or(0, |p| p.cwnd),
        })
    }

    fn set_watermarks(&mut self, handle: u64, low: u64, warn: u64, high: u64) -> Result<(), types::StreamError> {
        let marks =
            Watermarks::new(low, warn, high).map_err(|e| types::StreamError::InvalidWatermarks(e.to_string()))?;
        if self.core.initializing && !self.core.streams.contains_key(&handle) {
            self.core.early_marks.insert(handle, marks);
            return Ok(());
        }
        self.core.send_entry(handle)?;
        let events = self.core.schedule.set_marks(handle, marks).map_err(|_| types::StreamError::UnknownStream)?;
        self.core.pending_events.extend(events.into_iter().map(|e| (handle, e)));
        Ok(())
    }

    fn send_command(&mut self, conn: u64, message: Vec<u8>, timeout_ms: u32) -> Result<u64, types::CommandError> {
        let Some(stream_conn) = self.core.conns.get(&conn) else {
            return Err(types::CommandError::UnknownConnection);
        };
        let timeout = if timeout_ms == 0 { DEFAULT_TIMEOUT } else { Duration::from_millis(u64::from(timeout_ms)) };
        let id =
            self.core.commands.send(message.len(), conn, timeout, Instant::now()).map_err(|e| wit_command_error(&e))?;
        // Command ids count up from 1: they fit the wire's u32 for the
        // first 4 billion commands of an instance.
        let wire_id = u32::try_from(id).unwrap_or(u32::MAX);
        let sent = stream_conn.shared.send(StreamMessage::Command { id: wire_id, data: Bytes::from(message) }.encode());
        if sent.is_err() {
            self.core.commands.reply(id);
            return Err(types::CommandError::Closed);
        }
        Ok(id)
    }

    fn peer_id(&mut self, conn: u64) -> String {
        self.core.conns.get(&conn).map(|c| c.shared.meta().peer_id.clone()).unwrap_or_default()
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
        u64::try_from(self.ctx.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
