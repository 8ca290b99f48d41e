//! Adaptive source: a stream plugin that produces synthetic media frames at
//! a target bitrate and adapts the bitrate to the link.
//!
//! Stream parameters (`key=value` pairs separated by `&`):
//! - `action=live` (endless) or `action=playback` (ends after `seconds`,
//!   default 10) — required;
//! - `bitrate` initial bits per second (default 2,000,000), `min` (default
//!   100,000) and `max` (default 50,000,000);
//! - `control`: `events` (default) steers by watermark events and send
//!   statistics: warn ×0.85, high ×0.5; every 500 ms, a buffer above the
//!   low mark that grew since the last look, or a round trip 25 ms above
//!   the lowest seen (a queue filling on the path), sets the bitrate to 90%
//!   of the rate the data leaves at, and after 2 s without such pressure a
//!   buffer under the low mark and a round trip within 10 ms of the lowest
//!   raise it by 5%; `status` turns the watermarks off and steers from the
//!   buffer, send rate and round trip alone; `none` turns them off and
//!   keeps the bitrate (a plugin that ignores its buffer);
//! - `marks=low,warn,high` in bytes (default 32768,98304,196608);
//! - `frame=BYTES`: every pull yields one frame of exactly that size (at
//!   least 16) instead of the bytes the bitrate makes due since the last
//!   pull (for benchmarks of the pull itself);
//! - `notify=stop`: when the stream stops, send the application the
//!   command `stopped <handle>` (so it can check each stream stops once).
//!
//! Every chunk starts with a 16-byte header: frame number (u64) and the
//! bitrate it was produced at (u64), big endian.
//!
//! Commands: `ping` → `pong`; `stats` → one line per stream and counters
//! (see [`AdaptiveSource::stats`]); `ask <timeout-ms> <text>` sends `<text>`
//! to the application as a command and records its reply; talk-back
//! streams are accepted and their bytes counted.

use std::collections::BTreeMap;
use std::fmt::Write;

use fogconnect_guest::export_stream;
use fogconnect_guest::stream::{CommandError, Pull, Stream, StreamConnection, StreamPlugin, WatermarkEvent};

const MS: u64 = 1_000_000;
/// Queueing delay (round trip above the lowest seen) from which a queue on
/// the path is building: the bitrate is not raised.
const QUEUE_BUILDING_US: u64 = 10_000;
/// Queueing delay from which the path's queue is filling: back off.
const QUEUE_FULL_US: u64 = 25_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Events,
    Status,
    None,
}

#[derive(Debug)]
struct Source {
    conn: StreamConnection,
    notify_stop: bool,
    bitrate: u64,
    min: u64,
    max: u64,
    control: Control,
    low: u64,
    last_buffered: u64,
    min_rtt_us: u64,
    ends_at: Option<u64>,
    frame: u64,
    last_pull: Option<u64>,
    last_pressure: u64,
    last_adjust: u64,
    max_buffered: u64,
    events: [u64; 3],
    frame_size: Option<usize>,
    started: u64,
    /// The buffer has been at or above the low mark.
    overshot: bool,
    /// Time from `send-init` until the buffer first fell below the low mark
    /// after an overshoot: the source has found the link's rate.
    settled_after: Option<u64>,
}

#[derive(Debug, Default)]
struct Talk {
    bytes: u64,
    chunks: u64,
    ended: bool,
}

/// The plugin's state: its streams, talk-back streams and counters.
#[derive(Debug, Default)]
pub struct AdaptiveSource {
    next_handle: u64,
    sources: BTreeMap<u64, Source>,
    talks: BTreeMap<u64, Talk>,
    inits: u64,
    stops: u64,
    unknown_stops: u64,
    replies: BTreeMap<u64, String>,
}

fn parse_params(params: &str) -> Result<BTreeMap<&str, &str>, String> {
    let mut map = BTreeMap::new();
    for pair in params.split('&').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("parameter {pair:?} is not key=value"))?;
        map.insert(key.trim(), value.trim());
    }
    Ok(map)
}

fn number(map: &BTreeMap<&str, &str>, key: &str, default: u64) -> Result<u64, String> {
    match map.get(key) {
        Some(text) => text.parse().map_err(|_| format!("{key}={text} is not a whole number")),
        None => Ok(default),
    }
}

impl AdaptiveSource {
    fn new_source(&self, conn: StreamConnection, params: &str) -> Result<(Source, [u64; 3]), String> {
        let map = parse_params(params)?;
        let now = fogconnect_guest::stream::monotonic_now();
        let ends_at = match map.get("action").copied() {
            Some("live") => None,
            Some("playback") => Some(now + number(&map, "seconds", 10)?.saturating_mul(1_000 * MS)),
            Some(other) => return Err(format!("unknown action {other:?} (live or playback)")),
            None => return Err("missing action=live or action=playback".into()),
        };
        let control = match map.get("control").copied().unwrap_or("events") {
            "events" => Control::Events,
            "status" => Control::Status,
            "none" => Control::None,
            other => return Err(format!("unknown control {other:?} (events, status or none)")),
        };
        let marks = match map.get("marks") {
            None => [32_768, 98_304, 196_608],
            Some(text) => {
                let parts: Vec<u64> = text
                    .split(',')
                    .map(|p| p.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("marks={text} is not low,warn,high"))?;
                match parts[..] {
                    [low, warn, high] => [low, warn, high],
                    _ => return Err(format!("marks={text} is not low,warn,high")),
                }
            }
        };
        let min = number(&map, "min", 100_000)?;
        let max = number(&map, "max", 50_000_000)?;
        let bitrate = number(&map, "bitrate", 2_000_000)?.clamp(min, max.max(min));
        let notify_stop = match map.get("notify").copied() {
            None => false,
            Some("stop") => true,
            Some(other) => return Err(format!("unknown notify {other:?} (stop)")),
        };
        let frame_size = match map.get("frame") {
            Some(text) => {
                Some(text.parse::<usize>().map_err(|_| format!("frame={text} is not a size in bytes"))?.max(16))
            }
            None => None,
        };
        let source = Source {
            frame_size,
            started: now,
            overshot: false,
            settled_after: None,
            conn,
            notify_stop,
            bitrate,
            min,
            max,
            control,
            low: marks[0],
            last_buffered: 0,
            min_rtt_us: u64::MAX,
            ends_at,
            frame: 0,
            last_pull: None,
            last_pressure: 0,
            last_adjust: now,
            max_buffered: 0,
            events: [0; 3],
        };
        Ok((source, marks))
    }

    /// The `stats` reply: `inits=… stops=… unknown_stops=…`, then one line
    /// per stream `stream <handle> bitrate=… buffered=… max_buffered=…
    /// warn=… high=… low=… settled_ms=… sent_bps=… sent_bytes=… rtt_us=…
    /// loss_ppm=… cwnd=…` (max_buffered since the previous `stats`;
    /// settled_ms the time from the stream's start until its buffer first
    /// fell below the low mark after rising above it, `-` before that; the
    /// rest the node's send status), per
    /// talk-back `talk <handle> bytes=… chunks=… ended=…`, and per command
    /// sent `reply <id> <outcome>`.
    fn stats(&mut self) -> String {
        let mut out = format!("inits={} stops={} unknown_stops={}\n", self.inits, self.stops, self.unknown_stops);
        for (handle, source) in &mut self.sources {
            let buffered = Stream::from_raw(*handle).buffered().unwrap_or(0);
            let settled = source.settled_after.map_or_else(|| "-".to_string(), |ns| (ns / MS).to_string());
            let status = Stream::from_raw(*handle).send_status().ok();
            let _ = writeln!(
                out,
                "stream {handle} bitrate={} buffered={buffered} max_buffered={} warn={} high={} low={} settled_ms={settled} \
                 sent_bps={} sent_bytes={} rtt_us={} loss_ppm={} cwnd={}",
                source.bitrate,
                source.max_buffered,
                source.events[0],
                source.events[1],
                source.events[2],
                status.as_ref().map_or(0, |s| s.rate_bytes_per_second * 8),
                status.as_ref().map_or(0, |s| s.bytes_sent),
                status.as_ref().map_or(0, |s| s.rtt_us),
                status.as_ref().map_or(0, |s| s.loss_ppm),
                status.as_ref().map_or(0, |s| s.congestion_window),
            );
            source.max_buffered = buffered;
        }
        for (handle, talk) in &self.talks {
            let _ = writeln!(out, "talk {handle} bytes={} chunks={} ended={}", talk.bytes, talk.chunks, talk.ended);
        }
        for (id, outcome) in &self.replies {
            let _ = writeln!(out, "reply {id} {outcome}");
        }
        out
    }

    fn adapt(source: &mut Source, stream: Stream, now: u64) {
        let buffered = stream.buffered().unwrap_or(0);
        source.max_buffered = source.max_buffered.max(buffered);
        if buffered >= source.low {
            source.overshot = true;
        } else if source.overshot && source.settled_after.is_none() {
            source.settled_after = Some(now.saturating_sub(source.started));
        }
        if now.saturating_sub(source.last_adjust) < 500 * MS {
            return;
        }
        source.last_adjust = now;
        let grew = buffered > source.last_buffered;
        source.last_buffered = buffered;
        let Ok(status) = stream.send_status() else { return };
        // Queueing delay: how far the round trip is above the lowest seen.
        if status.rtt_us > 0 {
            source.min_rtt_us = source.min_rtt_us.min(status.rtt_us);
        }
        let queueing_us = status.rtt_us.saturating_sub(source.min_rtt_us);
        let sending = status.rate_bytes_per_second.saturating_mul(8);
        let back_off = |source: &mut Source| {
            if sending > 0 {
                source.bitrate = (source.bitrate.min(sending) * 9 / 10).max(source.min);
            }
        };
        match source.control {
            Control::None => {}
            Control::Events => {
                if (buffered >= source.low && grew) || queueing_us > QUEUE_FULL_US {
                    // Producing faster than the link takes: just under the
                    // rate the data actually leaves at.
                    back_off(source);
                    source.last_pressure = now;
                } else if now.saturating_sub(source.last_pressure) >= 2_000 * MS
                    && buffered < source.low
                    && queueing_us < QUEUE_BUILDING_US
                {
                    source.bitrate = (source.bitrate + source.bitrate / 20).min(source.max);
                }
            }
            Control::Status => {
                if (buffered > 65_536 && grew) || queueing_us > QUEUE_FULL_US {
                    back_off(source);
                } else if buffered < 16_384 && queueing_us < QUEUE_BUILDING_US {
                    source.bitrate = (source.bitrate + source.bitrate / 20).min(source.max);
                }
            }
        }
    }
}

impl StreamPlugin for AdaptiveSource {
    fn send_init(&mut self, conn: StreamConnection, params: String) -> Result<Stream, String> {
        let (source, [low, warn, high]) = self.new_source(conn, &params)?;
        self.next_handle += 1;
        let stream = Stream::from_raw(self.next_handle);
        if source.control == Control::Events {
            stream.set_watermarks(low, warn, high).map_err(|e| format!("watermarks: {e:?}"))?;
        }
        self.sources.insert(stream.raw(), source);
        self.inits += 1;
        Ok(stream)
    }

    fn send_get(&mut self, stream: Stream) -> Pull {
        let Some(source) = self.sources.get_mut(&stream.raw()) else { return Pull::End };
        let now = fogconnect_guest::stream::monotonic_now();
        if source.ends_at.is_some_and(|end| now >= end) {
            return Pull::End;
        }
        Self::adapt(source, stream, now);
        // The bytes due since the last pull, at most 100 ms worth (after a
        // pause the source does not make up for lost time in a burst).
        let elapsed = source.last_pull.map_or(10 * MS, |last| now.saturating_sub(last)).min(100 * MS);
        source.last_pull = Some(now);
        let due = match source.frame_size {
            Some(size) => size,
            None => (u128::from(source.bitrate) * u128::from(elapsed) / (8 * 1_000_000_000)) as usize,
        };
        if due < 16 {
            return Pull::Data(Vec::new());
        }
        source.frame += 1;
        let mut chunk = vec![0xa5; due];
        chunk[..8].copy_from_slice(&source.frame.to_be_bytes());
        chunk[8..16].copy_from_slice(&source.bitrate.to_be_bytes());
        Pull::Data(chunk)
    }

    fn send_stop(&mut self, stream: Stream) {
        if let Some(source) = self.sources.remove(&stream.raw()) {
            self.stops += 1;
            if source.notify_stop {
                let notice = format!("stopped {}", stream.raw());
                // The connection may be gone already (peer loss): nothing
                // to tell then.
                let _ = source.conn.send_command(notice.as_bytes(), 1_000);
            }
        } else {
            self.unknown_stops += 1;
        }
    }

    fn on_event(&mut self, stream: Stream, event: WatermarkEvent) {
        let Some(source) = self.sources.get_mut(&stream.raw()) else { return };
        let now = fogconnect_guest::stream::monotonic_now();
        // Events come right after the pull that crossed a mark: with the
        // levels seen at pulls this is the buffer's true maximum (nothing
        // is pulled while it is above the high mark).
        source.max_buffered = source.max_buffered.max(stream.buffered().unwrap_or(0));
        match event {
            WatermarkEvent::Warn => {
                source.events[0] += 1;
                source.last_pressure = now;
                source.bitrate = (source.bitrate * 85 / 100).max(source.min);
            }
            WatermarkEvent::High => {
                source.events[1] += 1;
                source.last_pressure = now;
                source.bitrate = (source.bitrate / 2).max(source.min);
            }
            WatermarkEvent::Low => source.events[2] += 1,
        }
    }

    fn recv_init(&mut self, _conn: StreamConnection, _params: String) -> Result<Stream, String> {
        self.next_handle += 1;
        self.talks.insert(self.next_handle, Talk::default());
        Ok(Stream::from_raw(self.next_handle))
    }

    fn recv_data(&mut self, stream: Stream, data: Vec<u8>) {
        let Some(talk) = self.talks.get_mut(&stream.raw()) else { return };
        if data.is_empty() {
            talk.ended = true;
        } else {
            talk.bytes += data.len() as u64;
            talk.chunks += 1;
        }
    }

    fn on_command(&mut self, conn: StreamConnection, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = String::from_utf8(message).map_err(|_| "commands are text".to_string())?;
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("ping"), None, None) => Ok(b"pong".to_vec()),
            (Some("stats"), None, None) => Ok(self.stats().into_bytes()),
            (Some("ask"), Some(timeout), Some(question)) => {
                let timeout: u32 = timeout.parse().map_err(|_| format!("{timeout} is not a timeout in ms"))?;
                let id = conn.send_command(question.as_bytes(), timeout).map_err(|e| format!("{e:?}"))?;
                self.replies.insert(id, "waiting".into());
                Ok(format!("asked {id}").into_bytes())
            }
            _ => Err(format!("unknown command {text:?} (ping, stats, ask <timeout-ms> <text>)")),
        }
    }

    fn on_command_reply(&mut self, id: u64, reply: Result<Vec<u8>, CommandError>) {
        let outcome = match reply {
            Ok(data) => format!("ok {}", String::from_utf8_lossy(&data)),
            Err(CommandError::Timeout) => "timeout".into(),
            Err(CommandError::Closed) => "closed".into(),
            Err(CommandError::Refused(reason)) => format!("refused {reason}"),
            Err(other) => format!("error {other:?}"),
        };
        self.replies.insert(id, outcome);
    }
}

export_stream!(AdaptiveSource);
