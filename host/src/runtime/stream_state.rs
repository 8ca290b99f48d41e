//! The data of one stream plugin `Store`: the sandbox, and the stream
//! bookkeeping ([`StreamCore`]) its host functions work on; and the host
//! functions of the stream world, which translate between the WIT types
//! and the core's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::state::{PluginContext, PluginLimiter, plugin_log, sandbox};
use super::stderr_tail::StderrTail;
use super::stream_bindings::fogconnect::streaming::{host, types};
use crate::stream::core::{CommandFailure, StreamHostError};
pub use crate::stream::core::{HARD_BUFFER_LIMIT, StreamCore};

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
    /// Calls counted and not yet flushed into the service's counters.
    pub tally: crate::metrics::ServiceTally,
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
            core: StreamCore::new(Instant::now()),
            subscriptions: Default::default(),
            tally: crate::metrics::ServiceTally::new(ctx.counters.clone()),
            ctx,
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
pub fn wit_command_error(err: &CommandFailure) -> types::CommandError {
    match err {
        CommandFailure::UnknownConnection => types::CommandError::UnknownConnection,
        CommandFailure::Timeout => types::CommandError::Timeout,
        CommandFailure::Closed => types::CommandError::Closed,
        CommandFailure::TooLarge(limit) => types::CommandError::TooLarge(clip_u32(*limit)),
        CommandFailure::TooMany(limit) => types::CommandError::TooMany(clip_u32(*limit)),
        CommandFailure::Refused(reason) => types::CommandError::Refused(reason.clone()),
    }
}

fn wit_stream_error(err: StreamHostError) -> types::StreamError {
    match err {
        StreamHostError::UnknownStream => types::StreamError::UnknownStream,
        StreamHostError::InvalidWatermarks(why) => types::StreamError::InvalidWatermarks(why),
    }
}

impl types::Host for StreamState {}

impl host::Host for StreamState {
    fn buffered(&mut self, handle: u64) -> Result<u64, types::StreamError> {
        self.core.buffered_of(handle).map_err(wit_stream_error)
    }

    fn send_status(&mut self, handle: u64) -> Result<types::SendStatistics, types::StreamError> {
        let status = self.core.send_status(handle).map_err(wit_stream_error)?;
        Ok(types::SendStatistics {
            rate_bytes_per_second: status.rate_bytes_per_second,
            bytes_sent: status.bytes_sent,
            bytes_buffered: status.bytes_buffered,
            rtt_us: u64::try_from(status.rtt.as_micros()).unwrap_or(u64::MAX),
            loss_ppm: status.loss_ppm,
            congestion_window: status.congestion_window,
        })
    }

    fn set_watermarks(&mut self, handle: u64, low: u64, warn: u64, high: u64) -> Result<(), types::StreamError> {
        self.core.set_watermarks(handle, low, warn, high).map_err(wit_stream_error)
    }

    fn send_command(&mut self, conn: u64, message: Vec<u8>, timeout_ms: u32) -> Result<u64, types::CommandError> {
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        self.core.send_command(conn, Bytes::from(message), timeout).map_err(|e| wit_command_error(&e))
    }

    fn peer_id(&mut self, conn: u64) -> String {
        self.core.peer_id(conn).unwrap_or_default().to_string()
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
