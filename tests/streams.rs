//! Stream plugins end to end on loopback: the adaptive source plugin on a
//! device node, a `StreamSession` on an application node.

mod common;

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use common::media::{frame, number, open_flowing};
use common::{WAIT, node_with, node_with_config};
use fogconnect::runtime::engine::PluginEngine;
use fogconnect::runtime::stream_harness::StreamHarness;
use fogconnect::transport::conn::{ConnectionId, Detached, DetachedOutput};
use fogconnect::{MediaEvent, MediaStream, Node, NodeConfig, PluginLimits, StreamError, StreamSession, Transport};
use fogconnect_proto::stream::StreamMessage;

const SERVICE: u8 = 5;

async fn device_and_app() -> anyhow::Result<(Node, Node)> {
    let device = node_with("camera", &[(SERVICE, "adaptive-source")]).await?;
    let app = node_with("phone", &[]).await?;
    Ok((device, app))
}

async fn session(app: &Node, device: &Node) -> anyhow::Result<StreamSession> {
    let conn = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    Ok(StreamSession::new(conn))
}

/// Reads until the end; returns the reason and the chunks read before it.
async fn until_end(stream: &mut MediaStream) -> anyhow::Result<(String, usize)> {
    let mut chunks = 0;
    loop {
        match tokio::time::timeout(WAIT, stream.recv()).await {
            Ok(MediaEvent::Data(_)) => chunks += 1,
            Ok(MediaEvent::Ended(reason)) => return Ok((reason, chunks)),
            Err(_) => bail!("stream {} did not end within {WAIT:?}", stream.id()),
        }
    }
}

async fn stats(session: &StreamSession) -> anyhow::Result<String> {
    let reply = session.command(&b"stats"[..], WAIT).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Asks for `stats` until `done` holds (plugin state changes after events
/// the application cannot observe), at most [`WAIT`].
async fn stats_until(session: &StreamSession, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = stats(session).await?;
        if done(&reply) {
            return Ok(reply);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("stats never satisfied the check; last:\n{reply}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_live_stream_delivers_numbered_frames_until_the_app_stops_it() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let session = session(&app, &device).await?;
    let mut live = session.open("action=live&bitrate=800000").await?;
    let mut last = 0;
    for _ in 0..20 {
        let data = frame(&mut live).await?;
        let frame = number(&data)?;
        assert_eq!(frame, last + 1, "frames arrive whole, in order, none lost");
        last = frame;
    }
    live.stop();
    let (reason, _) = until_end(&mut live).await?;
    assert_eq!(reason, "stopped by the application");
    let stats = stats_until(&session, |s| s.starts_with("inits=1 stops=1")).await?;
    assert!(stats.starts_with("inits=1 stops=1 unknown_stops=0"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn the_send_status_tells_the_plugin_how_its_data_leaves() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let session = session(&app, &device).await?;
    let mut live = session.open("action=live&bitrate=1000000&max=1000000").await?;
    let started = std::time::Instant::now();
    let mut received = 0u64;
    while started.elapsed() < Duration::from_millis(1_500) {
        received += frame(&mut live).await?.len() as u64;
    }
    let stats = stats(&session).await?;
    let line = stats.lines().find(|l| l.starts_with("stream ")).context("no stream line")?;
    let value = |key: &str| -> anyhow::Result<u64> {
        let word = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).context("missing")?;
        Ok(word.parse()?)
    };
    // 1 Mbit/s of frames leaves at about 1 Mbit/s (rate over the last second).
    let sent_bps = value("sent_bps")?;
    assert!((700_000..=1_300_000).contains(&sent_bps), "{line}");
    assert!(value("sent_bytes")? >= received, "everything received was counted as sent: {line}");
    assert!(value("rtt_us")? > 0 && value("cwnd")? > 0, "{line}");
    assert_eq!(value("loss_ppm")?, 0, "no loss on loopback: {line}");
    Ok(())
}

#[tokio::test]
async fn a_playback_ends_by_itself_after_its_data() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let session = session(&app, &device).await?;
    let mut playback = session.open("action=playback&seconds=1&bitrate=400000").await?;
    let (reason, chunks) = until_end(&mut playback).await?;
    assert_eq!(reason, "the stream finished");
    // 1 s of pulls every 10 ms; bounded both ways for a loaded machine.
    assert!((20..=110).contains(&chunks), "{chunks} chunks for 1 s of playback");
    let stats = stats_until(&session, |s| s.starts_with("inits=1 stops=1")).await?;
    assert!(stats.starts_with("inits=1 stops=1 unknown_stops=0"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn bad_parameters_are_refused_with_the_plugins_reason() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let session = session(&app, &device).await?;
    match session.open("action=rewind").await {
        Err(StreamError::Refused(reason)) => assert!(reason.contains("unknown action \"rewind\""), "{reason}"),
        other => bail!("expected a refusal, got {other:?}"),
    }
    match session.open("marks=1,2").await {
        Err(StreamError::Refused(reason)) => assert!(reason.contains("missing action"), "{reason}"),
        other => bail!("expected a refusal, got {other:?}"),
    }
    // The session goes on.
    let mut live = session.open("action=live").await?;
    frame(&mut live).await?;
    Ok(())
}

#[tokio::test]
async fn several_streams_on_several_connections_all_flow() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let first = session(&app, &device).await?;
    let second = session(&app, &device).await?;
    let mut streams = Vec::new();
    for session in [&first, &second] {
        for _ in 0..3 {
            streams.push(session.open("action=live&bitrate=400000").await?);
        }
    }
    for stream in &mut streams {
        for expected in 1..=5 {
            assert_eq!(number(&frame(stream).await?)?, expected);
        }
    }
    let stats = stats(&first).await?;
    assert!(stats.starts_with("inits=6 stops=0"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn commands_round_trip_both_ways_and_time_out_as_such() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let mut session = session(&app, &device).await?;
    assert_eq!(session.command(&b"ping"[..], WAIT).await?, Bytes::from_static(b"pong"));
    match session.command(&b"dance"[..], WAIT).await {
        Err(StreamError::Remote(reason)) => assert!(reason.contains("unknown command"), "{reason}"),
        other => bail!("expected the plugin's refusal, got {other:?}"),
    }
    match session.command(vec![0u8; 16 * 1024 + 1], WAIT).await {
        Err(StreamError::TooLarge(len)) => assert_eq!(len, 16 * 1024 + 1),
        other => bail!("expected too large, got {other:?}"),
    }

    // Device → application: the plugin asks, the application answers.
    let asked = session.command(&b"ask 5000 battery?"[..], WAIT).await?;
    assert_eq!(asked, Bytes::from_static(b"asked 1"));
    let incoming = tokio::time::timeout(WAIT, session.next_command()).await?.context("session ended")?;
    assert_eq!(incoming.data(), &Bytes::from_static(b"battery?"));
    incoming.reply(Ok(Bytes::from_static(b"87%")))?;
    stats_until(&session, |s| s.contains("reply 1 ok 87%")).await?;

    // Unanswered within its timeout: the plugin hears `timeout`, once.
    session.command(&b"ask 200 still there?"[..], WAIT).await?;
    let held = tokio::time::timeout(WAIT, session.next_command()).await?.context("session ended")?;
    let after_timeout = stats_until(&session, |s| s.contains("reply 2 timeout")).await?;
    assert!(!after_timeout.contains("reply 2 waiting"), "{after_timeout}");
    // A reply after the timeout is dropped: the outcome stays `timeout`.
    held.reply(Ok(Bytes::from_static(b"late")))?;
    assert_eq!(session.command(&b"ping"[..], WAIT).await?, Bytes::from_static(b"pong"));
    let stats = stats(&session).await?;
    assert!(stats.contains("reply 2 timeout") && !stats.contains("late"), "{stats}");

    Ok(())
}

#[tokio::test]
async fn a_device_that_never_answers_times_out_on_the_applications_side() -> anyhow::Result<()> {
    // The echo service plugin sends every message back: the command comes
    // back as a command from the "device", and no reply ever comes.
    let device = node_with("mute", &[(SERVICE, "echo")]).await?;
    let app = node_with("phone", &[]).await?;
    let session = session(&app, &device).await?;
    let started = std::time::Instant::now();
    match session.command(&b"ping"[..], Duration::from_millis(300)).await {
        Err(StreamError::TimedOut(limit)) => assert_eq!(limit, Duration::from_millis(300)),
        other => bail!("expected the application's timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn talk_back_arrives_whole_and_ends_with_the_marker() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let session = session(&app, &device).await?;
    let talk = session.talk("codec=pcm").await?;
    for size in [160usize, 320, 480] {
        talk.send(&vec![7u8; size])?;
    }
    talk.send(b"")?; // skipped: only `finish` ends the stream
    let handle = {
        let stats = stats_until(&session, |s| s.contains("chunks=3")).await?;
        assert!(stats.contains("bytes=960 chunks=3 ended=false"), "{stats}");
        talk.id()
    };
    talk.finish();
    let stats = stats_until(&session, |s| s.contains("ended=true")).await?;
    assert!(stats.contains("bytes=960 chunks=3 ended=true"), "stream {handle}: {stats}");
    Ok(())
}

#[tokio::test]
async fn streams_stop_once_when_the_application_goes_away() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let observer = session(&app, &device).await?;
    let leaving = session(&app, &device).await?;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(leaving.open("action=live&bitrate=400000").await?);
    }
    for stream in &mut streams {
        frame(stream).await?;
    }
    drop(streams);
    drop(leaving);
    let stats = stats_until(&observer, |s| s.starts_with("inits=3 stops=3")).await?;
    assert!(stats.starts_with("inits=3 stops=3 unknown_stops=0"), "{stats}");

    Ok(())
}

#[tokio::test]
async fn streams_stop_once_when_the_application_vanishes() -> anyhow::Result<()> {
    // Short keep-alives on the device: a silent peer is declared lost in
    // about 300 ms.
    let quick =
        NodeConfig { keep_alive_interval: Duration::from_millis(100), keep_alive_attempts: 3, ..common::config() };
    let device = node_with_config("camera", &[(SERVICE, "adaptive-source")], quick).await?;
    let addr = device.local_addr();
    // The vanishing application: no close reaches the device, only
    // silence.
    common::vanish(move || async move {
        let app = node_with("vanishing", &[]).await?;
        let session = StreamSession::new(app.connect(addr, Transport::Quic, SERVICE).await?);
        let streams = open_flowing(&session, "action=live&bitrate=400000", 2).await?;
        anyhow::Ok((app, session, streams))
    })
    .await?;
    let app = node_with("phone", &[]).await?;
    let observer = session(&app, &device).await?;
    let stats = stats_until(&observer, |s| s.starts_with("inits=2 stops=2")).await?;
    assert!(stats.starts_with("inits=2 stops=2 unknown_stops=0"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn a_device_shutting_down_stops_every_stream_once() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let mut session = session(&app, &device).await?;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(session.open("action=live&bitrate=400000&notify=stop").await?);
    }
    for stream in &mut streams {
        frame(stream).await?;
    }
    device.shutdown().await;
    let mut stopped = Vec::new();
    while let Ok(Some(command)) = tokio::time::timeout(WAIT, session.next_command()).await {
        stopped.push(String::from_utf8_lossy(command.data()).into_owned());
    }
    stopped.sort();
    assert_eq!(stopped, vec!["stopped 1", "stopped 2", "stopped 3"], "each stream stops exactly once");
    for stream in &mut streams {
        let (reason, _) = until_end(stream).await?;
        assert!(reason.contains("connection closed"), "{reason}");
    }
    Ok(())
}

/// The next message the harness's node sent on a connection at once.
fn sent(wire: &mut Detached) -> anyhow::Result<StreamMessage> {
    match wire.try_take() {
        Some(DetachedOutput::Message(message)) => Ok(StreamMessage::decode(&message)?),
        other => bail!("expected a message, got {other:?}"),
    }
}

/// Runs the next pull tick.
fn tick(harness: &mut StreamHarness) -> anyhow::Result<()> {
    let due = harness.next_wake().context("the stream is scheduled")?;
    harness.tick(due).map_err(anyhow::Error::msg)
}

fn harness_stats(harness: &mut StreamHarness, id: ConnectionId, wire: &mut Detached) -> anyhow::Result<String> {
    harness
        .deliver(id, &StreamMessage::Command { id: 99, data: Bytes::from_static(b"stats") })
        .map_err(anyhow::Error::msg)?;
    match sent(wire)? {
        StreamMessage::Reply { id: 99, data } => Ok(String::from_utf8_lossy(&data).into_owned()),
        other => bail!("expected the stats reply, got {other:?}"),
    }
}

#[test]
fn watermark_events_fire_once_per_crossing_and_pulling_pauses_above_high() -> anyhow::Result<()> {
    let engine = PluginEngine::new(None)?;
    let wasm = std::fs::read(common::plugin("adaptive-source"))?;
    let mut harness = StreamHarness::new(&engine, &wasm, SERVICE, PluginLimits::default())?;
    let (id, mut wire) = harness.open("phone").map_err(anyhow::Error::msg)?;
    // 10,000-byte frames against marks 15,000 / 35,000 / 55,000; nothing
    // leaves the buffer until the test takes it out.
    let open = StreamMessage::Open { stream: 1, params: "action=live&frame=10000&marks=15000,35000,55000".into() };
    harness.deliver(id, &open).map_err(anyhow::Error::msg)?;
    assert_eq!(sent(&mut wire)?, StreamMessage::Accepted { stream: 1 });
    // 10k, 20k, 30k, 40k (warn), 50k, 60k (high: paused), then two paused ticks.
    for _ in 0..8 {
        tick(&mut harness)?;
    }
    let stats = harness_stats(&mut harness, id, &mut wire)?;
    assert!(stats.contains("buffered=60000 ") && stats.contains("warn=1 high=1 low=0"), "{stats}");
    let queued = harness.take_queued(id);
    assert_eq!(queued.len(), 6, "six pulls, then paused above the high mark");
    // Emptied: the next tick reports low once and pulls again.
    tick(&mut harness)?;
    tick(&mut harness)?;
    let stats = harness_stats(&mut harness, id, &mut wire)?;
    assert!(stats.contains("buffered=20000 ") && stats.contains("warn=1 high=1 low=1"), "{stats}");
    // Rising again: warn and high once more, each once.
    for _ in 0..6 {
        tick(&mut harness)?;
    }
    let stats = harness_stats(&mut harness, id, &mut wire)?;
    assert!(stats.contains("buffered=60000 ") && stats.contains("warn=2 high=2 low=1"), "{stats}");
    Ok(())
}

#[test]
fn with_all_marks_zero_no_event_fires_and_pulling_never_pauses() -> anyhow::Result<()> {
    let engine = PluginEngine::new(None)?;
    let wasm = std::fs::read(common::plugin("adaptive-source"))?;
    let mut harness = StreamHarness::new(&engine, &wasm, SERVICE, PluginLimits::default())?;
    let (id, mut wire) = harness.open("phone").map_err(anyhow::Error::msg)?;
    let open = StreamMessage::Open { stream: 1, params: "action=live&frame=10000&control=none".into() };
    harness.deliver(id, &open).map_err(anyhow::Error::msg)?;
    assert_eq!(sent(&mut wire)?, StreamMessage::Accepted { stream: 1 });
    for _ in 0..50 {
        tick(&mut harness)?;
    }
    let stats = harness_stats(&mut harness, id, &mut wire)?;
    assert!(stats.contains("buffered=500000 ") && stats.contains("warn=0 high=0 low=0"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn an_application_breaking_the_protocol_is_cut_off_and_its_streams_stop() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let observer = session(&app, &device).await?;
    let mut raw = app.connect(device.local_addr(), Transport::Quic, SERVICE).await?;
    raw.send(StreamMessage::Open { stream: 1, params: "action=live".into() }.encode())?;
    let accepted = StreamMessage::decode(&common::message(&mut raw).await?)?;
    assert_eq!(accepted, StreamMessage::Accepted { stream: 1 });
    raw.send(&b"\x42 not a stream message"[..])?;
    // Data of the stream may still be on its way; then the ending.
    let reason = loop {
        match tokio::time::timeout(WAIT, raw.recv()).await? {
            fogconnect::ConnectionEvent::Message(_) => continue,
            fogconnect::ConnectionEvent::Closed(reason) => break reason,
        }
    };
    assert!(reason.message.contains("protocol: unknown stream message kind 0x42"), "{reason}");
    let stats = stats_until(&observer, |s| s.starts_with("inits=1 stops=1")).await?;
    assert!(stats.starts_with("inits=1 stops=1 unknown_stops=0"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn streams_beyond_the_per_connection_limit_are_refused() -> anyhow::Result<()> {
    let (device, app) = device_and_app().await?;
    let session = session(&app, &device).await?;
    let mut talks = Vec::new();
    for _ in 0..256 {
        talks.push(session.talk("codec=pcm").await?);
    }
    match session.talk("codec=pcm").await {
        Err(StreamError::Refused(reason)) => assert!(reason.contains("too many streams"), "{reason}"),
        other => bail!("expected a refusal, got {other:?}"),
    }
    // Finishing one frees a place.
    talks.pop().context("a talk-back stream")?.finish();
    session.command(&b"ping"[..], WAIT).await?;
    session.talk("codec=pcm").await?;
    Ok(())
}
