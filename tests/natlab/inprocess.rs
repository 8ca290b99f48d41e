//! Nodes inside this process whose threads live in lab namespaces, and the
//! two measurements the transport comparison makes between them: request
//! and response one at a time, and bulk transfer.
//!
//! The application node listens on [`LINK_APP`]:7700 in `app` and serves
//! [`ECHO`] (every message back) and [`COUNT`] (counts the bytes of a
//! transfer; an empty message ends it and is answered with the count).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fogconnect::{Connection, ConnectionEvent, Node, Transport};

use super::{LINK_APP, LINK_DEVICE};

/// The echo service.
pub const ECHO: u8 = 1;
/// The counting service.
pub const COUNT: u8 = 2;

/// Runs `job` on a new thread that lives in network namespace `ns`: the
/// sockets it makes are on that namespace's links.
pub fn thread_in<T: Send + 'static>(
    ns: &str,
    job: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with an open namespace
        // descriptor.
        ensure!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0, "setns");
        job()
    }))
}

/// Waits for a thread of [`thread_in`].
pub fn join<T>(thread: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    thread.join().map_err(|_| anyhow::anyhow!("a namespace thread panicked"))?
}

/// The nodes' send buffer per connection: small, so the backlog a
/// transfer leaves drains in seconds even on a slow, lossy path (the
/// default, 8 MiB, takes a minute and more at 1 Mbit/s).
pub const SEND_BUFFER: usize = 256 << 10;

/// The configuration of both nodes.
fn config() -> fogconnect::NodeConfig {
    fogconnect::NodeConfig { send_buffer: SEND_BUFFER, ..crate::common::config() }
}

/// A multi-thread tokio runtime whose threads live in network namespace
/// `ns` (threads inherit the namespace of the thread that starts them), so
/// the sockets its nodes bind are on that namespace's link.
pub fn runtime_in(ns: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    join(thread_in(ns, || Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?))?)
}

/// The two nodes of a link lab: `app` serving [`ECHO`] and [`COUNT`], and
/// `dev` connecting to it. Each has a send buffer of [`SEND_BUFFER`] per
/// connection.
pub struct LinkNodes {
    app_rt: tokio::runtime::Runtime,
    dev_rt: tokio::runtime::Runtime,
    app: Node,
    dev: Arc<Node>,
    /// Where the application node listens.
    pub app_addr: SocketAddr,
}

impl LinkNodes {
    /// Starts both nodes in lab `lab` (a link lab: `dev` and `app`).
    pub fn start(lab: &super::Lab) -> anyhow::Result<Self> {
        let (app_rt, dev_rt) = (runtime_in(&lab.ns("app"))?, runtime_in(&lab.ns("dev"))?);
        let app_addr: SocketAddr = format!("{LINK_APP}:7700").parse()?;
        // Spawned, not run by `block_on`: the runtime's own threads are in
        // the namespace, the calling thread is not.
        let app = app_rt.block_on(app_rt.spawn(async move {
            let builder = Node::builder().config(config()).node_id("app").listen(app_addr);
            let mut echo = builder.incoming(ECHO)?;
            let mut count = builder.incoming(COUNT)?;
            let app = builder.start().await?;
            tokio::spawn(async move {
                while let Some(conn) = echo.accept().await {
                    tokio::spawn(echo_each(conn));
                }
            });
            tokio::spawn(async move {
                while let Some(conn) = count.accept().await {
                    tokio::spawn(count_each(conn));
                }
            });
            anyhow::Ok(app)
        }))??;
        let dev = dev_rt.block_on(dev_rt.spawn(async move {
            let listen: SocketAddr = format!("{LINK_DEVICE}:0").parse()?;
            anyhow::Ok(Node::builder().config(config()).node_id("dev").listen(listen).start().await?)
        }))??;
        Ok(Self { app_rt, dev_rt, app, dev: Arc::new(dev), app_addr })
    }

    /// Runs `job` with the device node on the device's runtime.
    pub fn on_dev<T, F, J>(&self, job: J) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
        J: FnOnce(Arc<Node>) -> F,
    {
        self.dev_rt.block_on(self.dev_rt.spawn(job(self.dev.clone())))?
    }

    /// Connects the device to `service` over `transport`.
    pub fn connect(&self, transport: Transport, service: u8) -> anyhow::Result<Connection> {
        let addr = self.app_addr;
        self.on_dev(move |dev| async move { Ok(dev.connect(addr, transport, service).await?) })
    }

    /// Stops both nodes.
    pub fn shutdown(self) {
        if let Ok(dev) = Arc::try_unwrap(self.dev) {
            self.dev_rt.block_on(dev.shutdown());
        }
        self.app_rt.block_on(self.app.shutdown());
    }
}

async fn echo_each(mut conn: Connection) {
    while let ConnectionEvent::Message(data) = conn.recv().await {
        if conn.send_when_ready(data).await.is_err() {
            return;
        }
    }
}

async fn count_each(mut conn: Connection) {
    let (mut bytes, mut first, mut last) = (0u64, None, Instant::now());
    while let ConnectionEvent::Message(data) = conn.recv().await {
        if data.is_empty() {
            // The transfer's bytes, and the microseconds from its first to
            // its last message.
            let took = first.map_or(0, |first: Instant| last.duration_since(first).as_micros() as u64);
            let mut answer = bytes.to_be_bytes().to_vec();
            answer.extend_from_slice(&took.to_be_bytes());
            if conn.send(answer).is_err() {
                return;
            }
            continue;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        bytes += data.len() as u64;
    }
}

/// What [`request_response`] saw.
#[derive(Debug, Clone, Default)]
pub struct RoundTrips {
    /// The round trip of each request answered, in order.
    pub times: Vec<Duration>,
    /// Requests that got no answer within the wait.
    pub unanswered: usize,
}

impl RoundTrips {
    /// The `q` quantile (0..=1) of the round trips.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.times, q)
    }
}

/// The `q` quantile (0..=1) of `times`, nearest rank; zero for none.
pub fn quantile(times: &[Duration], q: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sends `count` requests of `size` bytes on `conn` (to [`ECHO`]) one at a
/// time, each numbered, waiting for its answer up to `wait`. On a reliable
/// transport a missing, repeated or reordered answer is an error; on UDP a
/// request unanswered within `wait` is counted and a late answer skipped.
pub async fn request_response(
    conn: &mut Connection,
    count: u32,
    size: usize,
    wait: Duration,
) -> anyhow::Result<RoundTrips> {
    let reliable = conn.convention().transport() != Transport::Udp;
    let mut trips = RoundTrips::default();
    let mut request = vec![0x5A; size.max(4)];
    for number in 0..count {
        request[..4].copy_from_slice(&number.to_be_bytes());
        let sent = Instant::now();
        conn.send_when_ready(request.clone()).await.with_context(|| format!("request {number}"))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, conn.recv()).await {
                Ok(ConnectionEvent::Message(answer)) => {
                    let got = answer.get(..4).map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]));
                    if got == Some(number) && answer.len() == request.len() {
                        trips.times.push(sent.elapsed());
                        break;
                    }
                    ensure!(!reliable, "request {number}: answer {got:?} of {} bytes", answer.len());
                }
                Ok(ConnectionEvent::Closed(reason)) => bail!("closed at request {number}: {reason}"),
                Err(_) if reliable => bail!("request {number}: no answer within {wait:?}"),
                Err(_) => {
                    trips.unanswered += 1;
                    break;
                }
            }
        }
    }
    Ok(trips)
}

/// What [`transfer`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes that arrived.
    pub arrived: u64,
    /// Megabits per second that arrived, first to last message.
    pub mbit_per_s: f64,
}

/// Sends messages of `size` bytes on `conn` (to [`COUNT`]) as fast as it
/// takes them for `length`, then asks for the count: on a reliable
/// transport once, the answer coming when what was sent has arrived (at
/// most 2 minutes); on UDP again every 500 ms until answered (at most 20
/// times), since the question or the answer may be lost.
pub async fn transfer(conn: &mut Connection, size: usize, length: Duration) -> anyhow::Result<Transfer> {
    let reliable = conn.convention().transport() != Transport::Udp;
    let payload = bytes::Bytes::from(vec![0x5A; size]);
    let until = Instant::now() + length;
    let mut sent = 0u64;
    while Instant::now() < until {
        conn.send_when_ready(payload.clone()).await.context("transfer")?;
        sent += size as u64;
    }
    let (questions, wait) = if reliable { (1, Duration::from_secs(120)) } else { (20, Duration::from_millis(500)) };
    for _ in 0..questions {
        conn.send_when_ready(bytes::Bytes::new()).await.context("asking for the count")?;
        match tokio::time::timeout(wait, conn.recv()).await {
            Ok(ConnectionEvent::Message(answer)) if answer.len() == 16 => {
                let arrived = u64::from_be_bytes(answer[..8].try_into()?);
                let micros = u64::from_be_bytes(answer[8..].try_into()?);
                let mbit_per_s = if micros == 0 { 0.0 } else { arrived as f64 * 8.0 / micros as f64 };
                return Ok(Transfer { sent, arrived, mbit_per_s });
            }
            Ok(ConnectionEvent::Message(other)) => bail!("a count of {} bytes", other.len()),
            Ok(ConnectionEvent::Closed(reason)) => bail!("closed during the transfer: {reason}"),
            Err(_) => {}
        }
    }
    bail!("no count after {questions} question(s), {wait:?} each")
}
