//! Native stream services end to end on loopback: a camera written
//! against `fogconnect::stream::StreamService` on a device node, a
//! `StreamSession` on an application node. Every callback the camera gets
//! is written to a shared log the tests read.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use common::media::{frame, number, to_end};
use common::{WAIT, eventually, node_with};
use fogconnect::stream::harness::ServeHarness;
use fogconnect::stream::{
    CommandFailure, NativeStreamHarness, Pull, StreamHost, StreamService, StreamServiceError, StreamServiceEvent,
    WatermarkEvent,
};
use fogconnect::transport::conn::DetachedOutput;
use fogconnect::{Node, NodeError, StreamSession, Transport};
use fogconnect_proto::stream::StreamMessage;

const SERVICE: u8 = 7;

/// What the camera was told, in order.
#[derive(Debug, Default)]
struct Log {
    inits: u64,
    stops: HashMap<u64, u32>,
    stopped_by_app: Vec<u64>,
    marks: Vec<(u64, WatermarkEvent)>,
    connected: Vec<u64>,
    disconnected: Vec<u64>,
    talk: HashMap<u64, (u64, u32)>,
    replies: Vec<(u64, Result<Vec<u8>, CommandFailure>)>,
    in_callback: Option<StreamServiceError>,
}

type SharedLog = Arc<Mutex<Log>>;

fn log(shared: &SharedLog) -> std::sync::MutexGuard<'_, Log> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one stream sends.
struct Source {
    frame_size: usize,
    next: u64,
    /// Frames before the stream ends (`Some`) or fails.
    until: Option<(u64, bool)>,
}

/// The test camera: numbered frames, parameters from the request.
struct Camera {
    log: SharedLog,
    next_handle: u64,
    sources: HashMap<u64, Source>,
    /// Filled in after the service starts, for the in-callback check.
    handle: Arc<Mutex<Option<fogconnect::stream::StreamServiceHandle>>>,
}

impl Camera {
    /// A camera telling `log` what it hears.
    fn new(log: SharedLog) -> Self {
        Self { log, next_handle: 0, sources: HashMap::new(), handle: Arc::default() }
    }
}

fn param(params: &str, key: &str) -> Option<u64> {
    params.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

impl StreamService for Camera {
    fn send_init(&mut self, host: &mut StreamHost<'_>, _conn: u64, params: &str) -> Result<u64, String> {
        if params.contains("action=bad") {
            return Err("no such recording".into());
        }
        self.next_handle += 1;
        let handle = self.next_handle;
        if let (Some(low), Some(warn), Some(high)) =
            (param(params, "low"), param(params, "warn"), param(params, "high"))
        {
            host.set_watermarks(handle, low, warn, high).map_err(|e| e.to_string())?;
        }
        let until = match (param(params, "frames"), param(params, "fail_after")) {
            (Some(n), _) => Some((n, false)),
            (_, Some(n)) => Some((n, true)),
            _ => None,
        };
        let frame_size = param(params, "frame").unwrap_or(1_000) as usize;
        self.sources.insert(handle, Source { frame_size: frame_size.max(8), next: 0, until });
        log(&self.log).inits += 1;
        Ok(handle)
    }

    fn send_get(&mut self, _: &mut StreamHost<'_>, handle: u64) -> Pull {
        let Some(source) = self.sources.get_mut(&handle) else { return Pull::NOTHING };
        match source.until {
            Some((n, false)) if source.next == n => return Pull::End,
            Some((n, true)) if source.next == n => return Pull::Failed("the encoder failed".into()),
            _ => {}
        }
        let mut frame = BytesMut::with_capacity(source.frame_size);
        frame.put_u64(source.next);
        frame.resize(source.frame_size, (source.next % 251) as u8);
        source.next += 1;
        Pull::Data(frame.freeze())
    }

    fn send_stop(&mut self, _: &mut StreamHost<'_>, handle: u64) {
        self.sources.remove(&handle);
        *log(&self.log).stops.entry(handle).or_default() += 1;
    }

    fn on_watermark(&mut self, _: &mut StreamHost<'_>, handle: u64, event: WatermarkEvent) {
        log(&self.log).marks.push((handle, event));
    }

    fn recv_init(&mut self, _: &mut StreamHost<'_>, _conn: u64, _params: &str) -> Result<u64, String> {
        self.next_handle += 1;
        log(&self.log).talk.insert(self.next_handle, (0, 0));
        Ok(self.next_handle)
    }

    fn recv_data(&mut self, _: &mut StreamHost<'_>, handle: u64, data: &[u8]) {
        let mut log = log(&self.log);
        let entry = log.talk.entry(handle).or_default();
        if data.is_empty() {
            entry.1 += 1;
        } else {
            entry.0 += data.len() as u64;
        }
    }

    fn on_command(&mut self, host: &mut StreamHost<'_>, conn: u64, message: &[u8]) -> Result<Vec<u8>, String> {
        match message {
            b"who" => Ok(host.peer_id(conn).unwrap_or("?").as_bytes().to_vec()),
            b"ask me" => {
                let id = host
                    .send_command(conn, Bytes::from_static(b"question"), Duration::from_millis(500))
                    .map_err(|e| e.to_string())?;
                Ok(format!("sent {id}").into_bytes())
            }
            b"block" => {
                // A blocking call from inside a callback must not hang.
                let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(handle) = handle {
                    log(&self.log).in_callback = handle.call_blocking(|host| host.connections()).err();
                }
                Ok(b"done".to_vec())
            }
            b"panic" => panic!("the camera's command handler broke"),
            other => Err(format!("unknown command {:?}", String::from_utf8_lossy(other))),
        }
    }

    fn on_command_reply(&mut self, _: &mut StreamHost<'_>, id: u64, reply: Result<&[u8], &CommandFailure>) {
        log(&self.log).replies.push((id, reply.map(<[u8]>::to_vec).map_err(Clone::clone)));
    }

    fn on_event(&mut self, _: &mut StreamHost<'_>, event: StreamServiceEvent<'_>) {
        let mut log = log(&self.log);
        match event {
            StreamServiceEvent::Connected(conn) => log.connected.push(conn),
            StreamServiceEvent::Disconnected(conn) => log.disconnected.push(conn),
            StreamServiceEvent::StreamStopped(handle) => log.stopped_by_app.push(handle),
            StreamServiceEvent::Network(..) => {}
        }
    }
}

/// A device node serving the test camera, its log and service handle.
async fn camera() -> anyhow::Result<(Node, SharedLog, fogconnect::stream::StreamServiceHandle)> {
    let device = node_with("native-camera", &[]).await?;
    let log = SharedLog::default();
    let camera = Camera::new(log.clone());
    let slot = camera.handle.clone();
    let handle = device.serve_streams(SERVICE, camera)?;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.clone());
    Ok((device, log, handle))
}

async fn session(app: &Node, device: &Node) -> anyhow::Result<StreamSession> {
    Ok(StreamSession::new(app.connect(device.local_addr(), Transport::Quic, SERVICE).await?))
}

#[tokio::test]
async fn numbered_frames_arrive_whole_and_in_order_and_an_app_stop_stops_once() -> anyhow::Result<()> {
    let (device, log_, _service) = camera().await?;
    let app = node_with("viewer", &[]).await?;
    let session = session(&app, &device).await?;
    let mut live = session.open("action=live&frame=3000").await?;
    for expected in 0..50u64 {
        let data = frame(&mut live).await?;
        ensure!(data.len() == 3000, "frame {expected} arrived as {} bytes", data.len());
        ensure!(number(&data)? == expected, "frame {} where {expected} was due", number(&data)?);
        ensure!(data[8..].iter().all(|&b| b == (expected % 251) as u8), "frame {expected} corrupted");
    }
    live.stop();
    eventually("send_stop after the app stopped the stream", || log(&log_).stops.get(&1) == Some(&1)).await?;
    let log = log(&log_);
    assert_eq!(log.stopped_by_app, vec![1], "the camera heard the application stop stream 1");
    assert_eq!(log.connected.len(), 1, "one connection came up");
    Ok(())
}

#[tokio::test]
async fn a_stream_ends_after_its_data_or_fails_with_the_reason() -> anyhow::Result<()> {
    let (device, log_, _service) = camera().await?;
    let app = node_with("viewer", &[]).await?;
    let session = session(&app, &device).await?;
    let mut playback = session.open("action=playback&frames=20").await?;
    let (numbers, reason) = to_end(&mut playback).await?;
    assert_eq!(numbers, (0..20).collect::<Vec<_>>());
    assert!(reason.contains("the stream finished"), "{reason}");
    let mut failing = session.open("action=live&fail_after=5").await?;
    let (numbers, reason) = to_end(&mut failing).await?;
    assert_eq!(numbers, (0..5).collect::<Vec<_>>(), "what was produced before the failure arrives");
    assert!(reason.contains("the encoder failed"), "{reason}");
    eventually("both streams stopped", || log(&log_).stops.len() == 2).await?;
    assert!(log(&log_).stops.values().all(|&n| n == 1), "{:?}", log(&log_).stops);
    let refused = session.open("action=bad").await;
    assert!(matches!(&refused, Err(fogconnect::StreamError::Refused(r)) if r == "no such recording"), "{refused:?}");
    Ok(())
}

#[tokio::test]
async fn commands_go_both_ways_with_replies_failures_and_timeouts() -> anyhow::Result<()> {
    let (device, log_, service) = camera().await?;
    let app = node_with("viewer", &[]).await?;
    let mut session = session(&app, &device).await?;
    // Reached by address, the viewer is known by its key.
    let viewer = format!("fp:{}", app.fingerprint());
    assert_eq!(session.command(&b"who"[..], WAIT).await?, Bytes::from(viewer));
    let unknown = session.command(&b"dance"[..], WAIT).await;
    assert!(
        matches!(&unknown, Err(fogconnect::StreamError::Remote(r)) if r.contains("unknown command")),
        "{unknown:?}"
    );

    // From another task, through the handle: the application answers.
    let conn = service.call(|host| host.connections()).await?[0];
    let asking = tokio::spawn({
        let service = service.clone();
        async move { service.send_command(conn, Bytes::from_static(b"status?"), WAIT).await }
    });
    let incoming = tokio::time::timeout(WAIT, session.next_command()).await?.context("no command")?;
    assert_eq!(incoming.data(), &Bytes::from_static(b"status?"));
    incoming.reply(Ok(Bytes::from_static(b"all good")))?;
    assert_eq!(asking.await??, Bytes::from_static(b"all good"));

    // From a callback: the reply (here none: a timeout) comes to
    // on_command_reply, once.
    let sent = session.command(&b"ask me"[..], WAIT).await?;
    let id: u64 = String::from_utf8_lossy(&sent).trim_start_matches("sent ").parse()?;
    let question = tokio::time::timeout(WAIT, session.next_command()).await?.context("no question")?;
    std::mem::forget(question); // never answered, never refused
    eventually("the command timed out", || !log(&log_).replies.is_empty()).await?;
    assert_eq!(log(&log_).replies, vec![(id, Err(CommandFailure::Timeout))]);

    // A blocking call from inside a callback fails instead of hanging.
    assert_eq!(session.command(&b"block"[..], WAIT).await?, Bytes::from_static(b"done"));
    assert_eq!(log(&log_).in_callback, Some(StreamServiceError::InCallback));
    Ok(())
}

#[tokio::test]
async fn talk_back_arrives_whole_and_ends_with_one_marker() -> anyhow::Result<()> {
    let (device, log_, _service) = camera().await?;
    let app = node_with("viewer", &[]).await?;
    let session = session(&app, &device).await?;
    let talk = session.talk("codec=pcm").await?;
    for size in [160usize, 320, 480] {
        talk.send(&vec![7u8; size])?;
    }
    talk.finish();
    eventually("talk-back ended", || log(&log_).talk.values().any(|&(_, ends)| ends > 0)).await?;
    assert_eq!(log(&log_).talk.values().copied().collect::<Vec<_>>(), vec![(960, 1)]);
    Ok(())
}

#[tokio::test]
async fn every_stream_stops_once_whichever_way_it_ends() -> anyhow::Result<()> {
    let (device, log_, service) = camera().await?;
    let app = node_with("viewer", &[]).await?;
    // The application goes away.
    let leaving = session(&app, &device).await?;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = leaving.open("action=live").await?;
        frame(&mut stream).await?;
        streams.push(stream);
    }
    drop(leaving);
    eventually("three stops", || log(&log_).stops.len() == 3).await?;
    eventually("the camera heard the connection go", || log(&log_).disconnected.len() == 1).await?;
    // The service stops: live streams stop, the app hears why.
    let staying = session(&app, &device).await?;
    let mut live = staying.open("action=live").await?;
    frame(&mut live).await?;
    service.stop().await;
    {
        let log = log(&log_);
        assert_eq!(log.stops.len(), 4, "{:?}", log.stops);
        assert!(log.stops.values().all(|&n| n == 1), "{:?}", log.stops);
    }
    let (_, reason) = to_end(&mut live).await?;
    assert!(reason.contains("service stopped"), "{reason}");
    drop(streams);
    // The number is free again; a node shutdown stops what it serves.
    let (log2, slot) = (SharedLog::default(), Arc::new(Mutex::new(None)));
    let again = Camera { log: log2.clone(), next_handle: 0, sources: HashMap::new(), handle: slot };
    let _service2 = device.serve_streams(SERVICE, again)?;
    let taken = device.serve_streams(
        SERVICE,
        Camera {
            log: SharedLog::default(),
            next_handle: 0,
            sources: HashMap::new(),
            handle: Arc::new(Mutex::new(None)),
        },
    );
    assert!(matches!(taken, Err(NodeError::ServiceTaken(SERVICE))), "{taken:?}");
    let third = session(&app, &device).await?;
    let mut stream = third.open("action=live").await?;
    frame(&mut stream).await?;
    device.shutdown().await;
    assert_eq!(log(&log2).stops.values().copied().collect::<Vec<_>>(), vec![1], "shutdown stopped the stream once");
    Ok(())
}

#[test]
fn watermark_events_come_warn_high_low_once_per_crossing_and_pulling_pauses_above_high() -> anyhow::Result<()> {
    // In the harness: no pump drains the queue, the test does, so each
    // tick's buffer level is known.
    let log_ = SharedLog::default();
    let mut harness: NativeStreamHarness<Camera> = ServeHarness::native(SERVICE, Camera::new(log_.clone()));
    let (id, mut wire) = harness.open("viewer").map_err(anyhow::Error::msg)?;
    let params = "action=live&frame=300000&low=500000&warn=800000&high=1000000";
    harness.deliver(id, &StreamMessage::Open { stream: 1, params: params.into() }).map_err(anyhow::Error::msg)?;
    ensure!(
        matches!(wire.try_take(), Some(DetachedOutput::Message(m)) if StreamMessage::decode(&m)? == StreamMessage::Accepted { stream: 1 })
    );
    let tick = |harness: &mut NativeStreamHarness<Camera>| -> anyhow::Result<usize> {
        let due = harness.next_wake().context("scheduled")?;
        harness.tick(due).map_err(anyhow::Error::msg)?;
        Ok(log(&log_).marks.len())
    };
    // 300 kB a tick, nothing drained: 900 kB crosses warn, 1.2 MB high.
    let counts: Vec<usize> = (0..6).map(|_| tick(&mut harness)).collect::<anyhow::Result<_>>()?;
    assert_eq!(counts, [0, 0, 1, 2, 2, 2], "warn at the third pull, high at the fourth, then no more");
    let queued: usize = harness.take_queued(id).iter().map(|m| m.len()).sum();
    assert!((1_200_000..1_300_000).contains(&queued), "pulling paused above high: {queued} bytes queued");
    // Drained: the next tick hears low and pulls again.
    tick(&mut harness)?;
    let marks: Vec<WatermarkEvent> = log(&log_).marks.iter().map(|&(_, e)| e).collect();
    assert_eq!(marks, [WatermarkEvent::Warn, WatermarkEvent::High, WatermarkEvent::Low]);
    let queued: usize = harness.take_queued(id).iter().map(|m| m.len()).sum();
    assert!((300_000..310_000).contains(&queued), "pulling resumed: {queued}");
    Ok(())
}

#[tokio::test]
async fn a_panicking_callback_ends_the_connections_and_the_service_serves_on() -> anyhow::Result<()> {
    let (device, _log, _service) = camera().await?;
    let app = node_with("viewer", &[]).await?;
    let session = session(&app, &device).await?;
    let broken = session.command(&b"panic"[..], WAIT).await;
    assert!(broken.is_err(), "{broken:?}");
    let again = self::session(&app, &device).await?;
    let viewer = format!("fp:{}", app.fingerprint());
    assert_eq!(again.command(&b"who"[..], WAIT).await?, Bytes::from(viewer));
    Ok(())
}
