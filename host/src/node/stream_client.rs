//! The application side of a stream service: over a connection to a
//! service served by a stream plugin, ask for streams and read their data,
//! talk back, send commands and answer the device's commands.
//!
//! ```no_run
//! # async fn demo(node: &fogconnect::Node, addr: std::net::SocketAddr) -> anyhow::Result<()> {
//! use fogconnect::{MediaEvent, StreamSession, Transport};
//! let session = StreamSession::new(node.connect(addr, Transport::Quic, 5).await?);
//! let mut live = session.open("action=live").await?;
//! while let MediaEvent::Data(chunk) = live.recv().await {
//!     println!("{} bytes", chunk.len());
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fogconnect_proto::stream::StreamMessage;
use tokio::sync::{mpsc, oneshot};

use super::connection::{Connection, ConnectionEvent};
use crate::stream::command::MAX_COMMAND_BYTES;
use crate::transport::conn::{ConnShared, SendError};

/// Events of a stream's data buffered per stream before the session's
/// reader waits for the application (QUIC flow control then slows the
/// device down).
const MEDIA_QUEUE: usize = 1024;
/// Device commands waiting for the application; more are refused as busy.
const COMMAND_QUEUE: usize = 64;

/// Errors of a stream session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The device refused the stream; the text is its reason.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection ended.
    #[error("connection closed: {0}")]
    Closed(String),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    /// A command or reply above the 16 KiB limit.
    #[error("{0} bytes exceed the command limit of {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
    /// The device answered a command with an error.
    #[error("the device refused the command: {0}")]
    Remote(String),
    /// The device ended the talk-back stream (e.g. "service plugin
    /// swapped"); open a new one.
    #[error("the device ended the stream: {0}")]
    Ended(String),
    /// The data could not be queued on the connection.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// What [`MediaStream::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// One chunk, whole and in order.
    Data(Bytes),
    /// The stream ended (every later `recv` says so again): the device
    /// finished it, stopped it after [`MediaStream::stop`], or the
    /// connection ended. The text says which.
    Ended(String),
}

#[derive(Default)]
struct Routes {
    opening: HashMap<u32, oneshot::Sender<Result<(), String>>>,
    media: HashMap<u32, mpsc::Sender<MediaEvent>>,
    /// Open talk-back streams: `Some(reason)` once the device ended one.
    talk: HashMap<u32, Option<String>>,
    commands: HashMap<u32, oneshot::Sender<Result<Bytes, StreamError>>>,
    ended: Option<String>,
}

struct SessionShared {
    conn: Arc<ConnShared>,
    next_stream: AtomicU32,
    next_command: AtomicU32,
    routes: Mutex<Routes>,
}

impl SessionShared {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, message: &StreamMessage) -> Result<(), StreamError> {
        self.conn.send(message.encode()).map_err(StreamError::from)
    }
}

/// A device's command waiting for the application's reply. Dropping it
/// unanswered refuses the command.
#[derive(Debug)]
pub struct IncomingCommand {
    id: u32,
    data: Bytes,
    conn: Option<Arc<ConnShared>>,
}

impl IncomingCommand {
    /// The command's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Answers the command: the reply bytes, or a refusal text.
    ///
    /// # Errors
    /// [`StreamError::TooLarge`] for a reply above 16 KiB (the command is
    /// then refused), [`StreamError::Send`] when the connection ended.
    pub fn reply(mut self, reply: Result<Bytes, String>) -> Result<(), StreamError> {
        let Some(conn) = self.conn.take() else { return Ok(()) };
        let message = match reply {
            Ok(data) if data.len() > MAX_COMMAND_BYTES => {
                let len = data.len();
                let reason = format!("the reply of {len} bytes exceeds {MAX_COMMAND_BYTES}");
                let _ = conn.send(StreamMessage::ReplyError { id: self.id, reason }.encode());
                return Err(StreamError::TooLarge(len));
            }
            Ok(data) => StreamMessage::Reply { id: self.id, data },
            Err(reason) => StreamMessage::ReplyError { id: self.id, reason },
        };
        conn.send(message.encode()).map_err(StreamError::from)
    }
}

impl Drop for IncomingCommand {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let reason = "the application did not answer".to_string();
            let _ = conn.send(StreamMessage::ReplyError { id: self.id, reason }.encode());
        }
    }
}

/// One stream the device sends. Dropping it stops the stream.
#[derive(Debug)]
pub struct MediaStream {
    id: u32,
    rx: mpsc::Receiver<MediaEvent>,
    session: Arc<SessionShared>,
    ended: Option<String>,
    stopped: bool,
}

impl std::fmt::Debug for SessionShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionShared").field("conn", &self.conn.meta().id).finish_non_exhaustive()
    }
}

impl MediaStream {
    /// The stream's id on its connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk, or the end.
    pub async fn recv(&mut self) -> MediaEvent {
        if let Some(reason) = &self.ended {
            return MediaEvent::Ended(reason.clone());
        }
        match self.rx.recv().await {
            Some(MediaEvent::Data(data)) => MediaEvent::Data(data),
            Some(MediaEvent::Ended(reason)) => {
                self.ended = Some(reason.clone());
                MediaEvent::Ended(reason)
            }
            None => {
                let reason = "the session ended".to_string();
                self.ended = Some(reason.clone());
                MediaEvent::Ended(reason)
            }
        }
    }

    /// Asks the device to stop the stream; data already on its way is
    /// still yielded, then [`MediaEvent::Ended`].
    pub fn stop(&mut self) {
        if !self.stopped && self.ended.is_none() {
            self.stopped = true;
            let _ =
                self.session.send(&StreamMessage::End { stream: self.id, reason: "stopped by the application".into() });
        }
    }
}

impl Drop for MediaStream {
    fn drop(&mut self) {
        self.stop();
        self.session.routes().media.remove(&self.id);
    }
}

/// A talk-back stream to the device. Dropping it finishes it.
#[derive(Debug)]
pub struct TalkBack {
    id: u32,
    session: Arc<SessionShared>,
    finished: bool,
}

impl TalkBack {
    /// The stream's id on its connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends one chunk; the plugin's `recv-data` gets it whole. Empty
    /// chunks are skipped (the end is [`TalkBack::finish`]).
    ///
    /// # Errors
    /// [`StreamError::Ended`] when the device ended the stream,
    /// [`StreamError::Send`] when the connection's buffer is full or it
    /// ended.
    pub fn send(&self, data: &[u8]) -> Result<(), StreamError> {
        if let Some(reason) = self.ended() {
            return Err(StreamError::Ended(reason));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut message = Vec::with_capacity(fogconnect_proto::stream::HEADER_LEN + data.len());
        message.extend_from_slice(&StreamMessage::data_header(self.id));
        message.extend_from_slice(data);
        self.session.conn.send(Bytes::from(message)).map_err(StreamError::from)
    }

    /// Why the device ended the stream, once it did.
    pub fn ended(&self) -> Option<String> {
        self.session.routes().talk.get(&self.id).cloned().flatten()
    }

    /// Ends the stream: the plugin's `recv-data` gets the empty end chunk.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if !self.finished {
            self.finished = true;
            let ended_by_device = self.session.routes().talk.remove(&self.id).flatten().is_some();
            if !ended_by_device {
                let _ = self.session.send(&StreamMessage::End { stream: self.id, reason: "talk-back finished".into() });
            }
        }
    }
}

impl Drop for TalkBack {
    fn drop(&mut self) {
        self.end();
    }
}

/// Sends commands on a [`StreamSession`] from any task.
#[derive(Debug, Clone)]
pub struct Commander(Arc<SessionShared>);

impl Commander {
    /// As [`StreamSession::command`].
    ///
    /// # Errors
    /// As [`StreamSession::command`].
    pub async fn command(&self, data: impl Into<Bytes>, timeout: Duration) -> Result<Bytes, StreamError> {
        command(&self.0, data.into(), timeout).await
    }
}

async fn command(shared: &SessionShared, data: Bytes, timeout: Duration) -> Result<Bytes, StreamError> {
    if data.len() > MAX_COMMAND_BYTES {
        return Err(StreamError::TooLarge(data.len()));
    }
    let id = shared.next_command.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    {
        let mut routes = shared.routes();
        if let Some(reason) = &routes.ended {
            return Err(StreamError::Closed(reason.clone()));
        }
        routes.commands.insert(id, tx);
    }
    if let Err(e) = shared.send(&StreamMessage::Command { id, data }) {
        shared.routes().commands.remove(&id);
        return Err(e);
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(StreamError::Closed("the session ended".into())),
        Err(_) => {
            // A late reply finds no caller and is dropped.
            shared.routes().commands.remove(&id);
            Err(StreamError::TimedOut(timeout))
        }
    }
}

/// An application's session with a stream service over one connection.
/// Dropping it closes the connection (the device stops every stream).
#[derive(Debug)]
pub struct StreamSession {
    shared: Arc<SessionShared>,
    commands: mpsc::Receiver<IncomingCommand>,
    reader: tokio::task::JoinHandle<()>,
    peer_id: String,
}

impl StreamSession {
    /// Takes over a connection to a stream service.
    pub fn new(conn: Connection) -> Self {
        let shared = Arc::new(SessionShared {
            conn: conn.shared().clone(),
            next_stream: AtomicU32::new(1),
            next_command: AtomicU32::new(1),
            routes: Mutex::new(Routes::default()),
        });
        let peer_id = conn.peer_id().to_string();
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let reader = tokio::spawn(read_loop(conn, shared.clone(), commands_tx));
        Self { shared, commands, reader, peer_id }
    }

    /// The device's node id.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    async fn open_any(
        &self,
        params: &str,
        send: bool,
    ) -> Result<(u32, Option<mpsc::Receiver<MediaEvent>>), StreamError> {
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let media = {
            let mut routes = self.shared.routes();
            if let Some(reason) = &routes.ended {
                return Err(StreamError::Closed(reason.clone()));
            }
            routes.opening.insert(id, tx);
            if !send {
                // Before the request: the device may end it right after
                // accepting it.
                routes.talk.insert(id, None);
            }
            send.then(|| {
                let (media_tx, media_rx) = mpsc::channel(MEDIA_QUEUE);
                routes.media.insert(id, media_tx);
                media_rx
            })
        };
        let message = if send {
            StreamMessage::Open { stream: id, params: params.to_string() }
        } else {
            StreamMessage::Talk { stream: id, params: params.to_string() }
        };
        let outcome = match self.shared.send(&message) {
            Ok(()) => rx.await.unwrap_or_else(|_| Err("the session ended".into())),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => Ok((id, media)),
            Err(reason) => {
                let mut routes = self.shared.routes();
                routes.opening.remove(&id);
                routes.media.remove(&id);
                routes.talk.remove(&id);
                Err(match &routes.ended {
                    Some(ended) => StreamError::Closed(ended.clone()),
                    None => StreamError::Refused(reason),
                })
            }
        }
    }

    /// Asks the device for a stream with `params` (e.g. `action=live`).
    ///
    /// # Errors
    /// [`StreamError::Refused`] with the plugin's reason,
    /// [`StreamError::Closed`] when the connection ended.
    pub async fn open(&self, params: &str) -> Result<MediaStream, StreamError> {
        let (id, rx) = self.open_any(params, true).await?;
        let rx = rx.ok_or_else(|| StreamError::Closed("the session ended".into()))?;
        Ok(MediaStream { id, rx, session: self.shared.clone(), ended: None, stopped: false })
    }

    /// Opens a talk-back stream to the device with `params`.
    ///
    /// # Errors
    /// As [`StreamSession::open`].
    pub async fn talk(&self, params: &str) -> Result<TalkBack, StreamError> {
        let (id, _) = self.open_any(params, false).await?;
        Ok(TalkBack { id, session: self.shared.clone(), finished: false })
    }

    /// Sends a command to the device's plugin and waits for its reply.
    ///
    /// # Errors
    /// [`StreamError::TimedOut`], [`StreamError::Remote`] when the plugin
    /// refused it, [`StreamError::TooLarge`] above 16 KiB,
    /// [`StreamError::Closed`].
    pub async fn command(&self, data: impl Into<Bytes>, timeout: Duration) -> Result<Bytes, StreamError> {
        command(&self.shared, data.into(), timeout).await
    }

    /// A handle that sends commands on this session from another task.
    pub fn commander(&self) -> Commander {
        Commander(self.shared.clone())
    }

    /// The next command from the device's plugin; `None` once the
    /// connection ended.
    pub async fn next_command(&mut self) -> Option<IncomingCommand> {
        self.commands.recv().await
    }

    /// Why the session ended, once it did.
    pub fn ended(&self) -> Option<String> {
        self.shared.routes().ended.clone()
    }
}

impl Drop for StreamSession {
    fn drop(&mut self) {
        self.shared.conn.close_local("closed by the application");
        self.reader.abort();
    }
}

async fn read_loop(mut conn: Connection, shared: Arc<SessionShared>, commands: mpsc::Sender<IncomingCommand>) {
    let reason = loop {
        let data = match conn.recv().await {
            ConnectionEvent::Message(data) => data,
            ConnectionEvent::Closed(reason) => break reason.to_string(),
        };
        let message = match StreamMessage::decode(&data) {
            Ok(message) => message,
            Err(e) => {
                let reason = format!("protocol: {e}");
                shared.conn.fail(reason.clone());
                break reason;
            }
        };
        match message {
            StreamMessage::Accepted { stream } => {
                if let Some(tx) = shared.routes().opening.remove(&stream) {
                    let _ = tx.send(Ok(()));
                }
            }
            StreamMessage::Refused { stream, reason } => {
                if let Some(tx) = shared.routes().opening.remove(&stream) {
                    let _ = tx.send(Err(reason));
                }
            }
            StreamMessage::Data { stream, data } => {
                let tx = shared.routes().media.get(&stream).cloned();
                if let Some(tx) = tx {
                    // Waits while the application is behind: back-pressure.
                    let _ = tx.send(MediaEvent::Data(data)).await;
                }
            }
            StreamMessage::End { stream, reason } => {
                let tx = {
                    let mut routes = shared.routes();
                    if let Some(talk) = routes.talk.get_mut(&stream) {
                        talk.get_or_insert(reason.clone());
                    }
                    routes.media.remove(&stream)
                };
                if let Some(tx) = tx {
                    let _ = tx.send(MediaEvent::Ended(reason)).await;
                }
            }
            StreamMessage::Command { id, data } => {
                let command = IncomingCommand { id, data, conn: Some(shared.conn.clone()) };
                if let Err(e) = commands.try_send(command) {
                    let reason = match e {
                        mpsc::error::TrySendError::Full(_) => "the application is busy",
                        mpsc::error::TrySendError::Closed(_) => "the application takes no commands",
                    };
                    // Dropping the command refuses it; say why instead.
                    let mut command = e.into_inner();
                    command.conn = None;
                    let _ = shared.send(&StreamMessage::ReplyError { id, reason: reason.into() });
                }
            }
            StreamMessage::Reply { id, data } => {
                if let Some(tx) = shared.routes().commands.remove(&id) {
                    let _ = tx.send(Ok(data));
                }
            }
            StreamMessage::ReplyError { id, reason } => {
                if let Some(tx) = shared.routes().commands.remove(&id) {
                    let _ = tx.send(Err(StreamError::Remote(reason)));
                }
            }
            StreamMessage::Open { .. } | StreamMessage::Talk { .. } => {
                tracing::debug!("ignoring an application message from the device");
            }
        }
    };
    let (opening, media, waiting) = {
        let mut routes = shared.routes();
        routes.ended = Some(reason.clone());
        (std::mem::take(&mut routes.opening), std::mem::take(&mut routes.media), std::mem::take(&mut routes.commands))
    };
    for (_, tx) in opening {
        let _ = tx.send(Err(reason.clone()));
    }
    for (_, tx) in media {
        let _ = tx.send(MediaEvent::Ended(format!("connection closed: {reason}"))).await;
    }
    for (_, tx) in waiting {
        let _ = tx.send(Err(StreamError::Closed(reason.clone())));
    }
}
