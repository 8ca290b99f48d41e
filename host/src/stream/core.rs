//! The bookkeeping of one stream service, whoever serves it (a Wasm stream
//! plugin or native code): its application connections, their streams and
//! send queues, the pull schedule and the commands it waits on; and the
//! operations a server may call (buffer level, send status, watermarks,
//! commands). Plain Rust, testable without wasm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use tokio_util::sync::CancellationToken;

use super::command::{CommandError, CommandTable, DEFAULT_TIMEOUT, MAX_COMMAND_BYTES};
use super::mux::WireStream;
use super::pump::MuxShared;
use super::schedule::{DEFAULT_PERIOD, PullSchedule};
use super::status::{SendMeter, SendSample};
use super::watermark::{WatermarkEvent, Watermarks};
use crate::transport::conn::{ConnShared, PathKind};

/// A send stream's buffer size at which pulling stops even with its
/// watermarks off, so a server that ignores its buffer cannot exhaust the
/// node's memory; nothing is dropped.
pub const HARD_BUFFER_LIMIT: u64 = 8 << 20;

/// Most commands of one server waiting for replies.
pub const MAX_WAITING_COMMANDS: usize = 256;

/// The smallest QUIC send window the node gives a link a stream service
/// sends on.
pub const MIN_STREAM_SEND_WINDOW: u64 = 64 * 1024;

/// The window of a send stream's rate and loss.
pub const STATUS_WINDOW: Duration = Duration::from_secs(1);

/// What a server hands over for one stream at one pull tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    /// Bytes to send: one chunk, delivered whole and in order to the
    /// application (chunks above the connection's maximum message size
    /// arrive split, in order). Empty means nothing this tick.
    Data(Bytes),
    /// The stream is finished: what is buffered is sent, the stream ends
    /// for the application, then the server gets its `send_stop`.
    End,
    /// The stream failed: what is buffered is sent, the stream ends for
    /// the application with this reason, then the server gets its
    /// `send_stop`.
    Failed(String),
}

impl Pull {
    /// Nothing this tick.
    pub const NOTHING: Pull = Pull::Data(Bytes::new());
}

/// Errors of the operations that take a stream handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamHostError {
    /// The handle is not one of the server's live send streams.
    #[error("unknown stream")]
    UnknownStream,
    /// The marks are not ordered `low <= warn <= high` (all zero is
    /// allowed and turns the events off); the text says which.
    #[error("invalid watermarks: {0}")]
    InvalidWatermarks(String),
}

/// Why a command a server sent got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandFailure {
    /// The connection is not one of the server's live connections.
    #[error("unknown connection")]
    UnknownConnection,
    /// No reply within the timeout.
    #[error("no reply within the timeout")]
    Timeout,
    /// The connection ended before the reply came.
    #[error("the connection closed")]
    Closed,
    /// The command is larger than the limit (the payload).
    #[error("the command exceeds {0} bytes")]
    TooLarge(usize),
    /// Too many commands wait for replies (the payload is the limit).
    #[error("{0} commands are already waiting for replies")]
    TooMany(usize),
    /// The other side answered with an error.
    #[error("refused: {0}")]
    Refused(String),
}

impl From<&CommandError> for CommandFailure {
    fn from(err: &CommandError) -> Self {
        match err {
            CommandError::TimedOut(_) => CommandFailure::Timeout,
            CommandError::TooLarge(_) => CommandFailure::TooLarge(MAX_COMMAND_BYTES),
            CommandError::TooMany(_) => CommandFailure::TooMany(MAX_WAITING_COMMANDS),
        }
    }
}

/// How a send stream's data is leaving the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendStatistics {
    /// Payload bytes per second handed to the transport over the last
    /// second.
    pub rate_bytes_per_second: u64,
    /// Payload bytes of the stream handed to the transport so far.
    pub bytes_sent: u64,
    /// Bytes of the stream waiting in its send buffer.
    pub bytes_buffered: u64,
    /// Smoothed round-trip time of the connection's path.
    pub rtt: Duration,
    /// Share of the packets to the application's node declared lost over
    /// the last second, in parts per million.
    pub loss_ppm: u32,
    /// The congestion window of that path, in bytes.
    pub congestion_window: u64,
    /// How the connection reaches the application: direct, relayed, or
    /// `None` when the path is unknown.
    pub path: Option<PathKind>,
}

impl SendStatistics {
    /// The rate the path carries now, estimated as one congestion window
    /// per round trip, in bytes per second (0 while unknown).
    pub fn path_rate(&self) -> u64 {
        let rtt = self.rtt.as_secs_f64();
        if rtt > 0.0 { (self.congestion_window as f64 / rtt) as u64 } else { 0 }
    }
}

/// One application connection of a stream service.
#[derive(Debug)]
pub struct StreamConn {
    /// The connection.
    pub shared: Arc<ConnShared>,
    /// Its send queues, drained by its pump task.
    pub queues: Arc<MuxShared>,
    /// Stops the pump task.
    pub stop: CancellationToken,
    /// Its streams: wire id → server handle.
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
    /// The server sends (pulled every tick).
    Send {
        /// Rate and loss over [`STATUS_WINDOW`].
        meter: SendMeter,
    },
    /// The application talks back.
    Recv,
}

/// One live stream of the server, by handle.
#[derive(Debug)]
pub struct StreamEntry {
    /// Its connection's handle.
    pub conn: u64,
    /// Its id on the connection.
    pub wire: WireStream,
    /// Send or talk-back.
    pub kind: StreamKind,
}

/// The stream bookkeeping of one server instance.
#[derive(Debug)]
pub struct StreamCore {
    /// Open connections by handle.
    pub conns: HashMap<u64, StreamConn>,
    /// Live streams by server handle.
    pub streams: HashMap<u64, StreamEntry>,
    /// The pull ticks of the send streams.
    pub schedule: PullSchedule,
    /// Commands the server sent, by id, with their connection.
    pub commands: CommandTable<u64>,
    /// Watermark events caused by `set_watermarks`, delivered after the
    /// call that caused them.
    pub pending_events: Vec<(u64, WatermarkEvent)>,
    /// True while `send-init` runs: `set_watermarks` for a handle not yet
    /// known is then kept for the handle `send-init` returns.
    pub initializing: bool,
    /// Marks set during `send-init`, by handle.
    pub early_marks: HashMap<u64, Watermarks>,
    /// When the send meters were last sampled.
    pub last_sample: Instant,
}

impl StreamCore {
    /// Empty bookkeeping, the pull tick starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            conns: HashMap::new(),
            streams: HashMap::new(),
            schedule: PullSchedule::new(DEFAULT_PERIOD, now),
            commands: CommandTable::new(MAX_WAITING_COMMANDS),
            pending_events: Vec::new(),
            initializing: false,
            early_marks: HashMap::new(),
            last_sample: now,
        }
    }

    /// Bytes buffered for a send stream (`None` for anything else).
    pub fn buffered(&self, handle: u64) -> Option<u64> {
        let (entry, conn) = self.send_entry(handle).ok()?;
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
        self.last_sample = now;
    }

    fn send_entry(&self, handle: u64) -> Result<(&StreamEntry, &StreamConn), StreamHostError> {
        let entry = self.streams.get(&handle).ok_or(StreamHostError::UnknownStream)?;
        if !matches!(entry.kind, StreamKind::Send { .. }) {
            return Err(StreamHostError::UnknownStream);
        }
        let conn = self.conns.get(&entry.conn).ok_or(StreamHostError::UnknownStream)?;
        Ok((entry, conn))
    }

    /// Bytes of a send stream waiting in its send buffer.
    ///
    /// # Errors
    /// [`StreamHostError::UnknownStream`].
    pub fn buffered_of(&self, handle: u64) -> Result<u64, StreamHostError> {
        let (entry, conn) = self.send_entry(handle)?;
        Ok(conn.queues.lock().buffered(entry.wire))
    }

    /// How a send stream's data is leaving the node.
    ///
    /// # Errors
    /// [`StreamHostError::UnknownStream`].
    pub fn send_status(&self, handle: u64) -> Result<SendStatistics, StreamHostError> {
        let (entry, conn) = self.send_entry(handle)?;
        let (sent, buffered) = {
            let mux = conn.queues.lock();
            (mux.sent(entry.wire), mux.buffered(entry.wire))
        };
        let path = conn.shared.path_sample();
        let (rate, loss) = match &entry.kind {
            StreamKind::Send { meter } => meter.status().map_or((0.0, 0.0), |s| (s.rate, s.loss)),
            StreamKind::Recv => (0.0, 0.0),
        };
        let kind = conn.shared.path().kind;
        Ok(SendStatistics {
            rate_bytes_per_second: rate as u64,
            bytes_sent: sent,
            bytes_buffered: buffered,
            rtt: path.map_or(Duration::ZERO, |p| p.rtt),
            loss_ppm: (loss * 1e6) as u32,
            congestion_window: path.map_or(0, |p| p.cwnd),
            path: Some(kind),
        })
    }

    /// Sets a send stream's watermarks; the events the current level
    /// causes under the new marks wait in `pending_events`. During
    /// `send-init`, marks for a handle not yet known are kept for the
    /// handle it returns.
    ///
    /// # Errors
    /// [`StreamHostError::InvalidWatermarks`], [`StreamHostError::UnknownStream`].
    pub fn set_watermarks(&mut self, handle: u64, low: u64, warn: u64, high: u64) -> Result<(), StreamHostError> {
        let marks = Watermarks::new(low, warn, high).map_err(|e| StreamHostError::InvalidWatermarks(e.to_string()))?;
        if self.initializing && !self.streams.contains_key(&handle) {
            self.early_marks.insert(handle, marks);
            return Ok(());
        }
        self.send_entry(handle)?;
        let events = self.schedule.set_marks(handle, marks).map_err(|_| StreamHostError::UnknownStream)?;
        self.pending_events.extend(events.into_iter().map(|e| (handle, e)));
        Ok(())
    }

    /// Sends a command to the application at the other end of `conn`;
    /// the id its one reply (or failure) will come with. A `timeout` of
    /// zero means the default of 7.5 s.
    ///
    /// # Errors
    /// Why it was not sent.
    pub fn send_command(&mut self, conn: u64, message: Bytes, timeout: Duration) -> Result<u64, CommandFailure> {
        let Some(stream_conn) = self.conns.get(&conn) else {
            return Err(CommandFailure::UnknownConnection);
        };
        let timeout = if timeout.is_zero() { DEFAULT_TIMEOUT } else { timeout };
        let id =
            self.commands.send(message.len(), conn, timeout, Instant::now()).map_err(|e| CommandFailure::from(&e))?;
        // Command ids count up from 1: they fit the wire's u32 for the
        // first 4 billion commands of an instance.
        let wire_id = u32::try_from(id).unwrap_or(u32::MAX);
        if stream_conn.shared.send(StreamMessage::Command { id: wire_id, data: message }.encode()).is_err() {
            self.commands.reply(id);
            return Err(CommandFailure::Closed);
        }
        Ok(id)
    }

    /// The id of the application node at the other end of `conn`.
    pub fn peer_id(&self, conn: u64) -> Option<&str> {
        self.conns.get(&conn).map(|c| c.shared.meta().peer_id.as_str())
    }
}
