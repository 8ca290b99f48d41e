//! A camera served natively, in Rust, without a plugin: the device SDK's
//! push model through [`fogconnect::stream::StreamService`]. Each stream
//! carries numbered frames (an 8-byte big-endian frame number, then
//! filler) at a bitrate the application asks for (`bitrate=` in bits per
//! second, default 1 Mbit/s); the camera halves its bitrate on the high
//! watermark, and on the low one raises it again in steps up to what was
//! asked. Commands: `stats` (frames, bitrate, buffer, talk-back bytes per
//! stream), `bitrate N`. Talk-back bytes are counted.
//!
//! Registers as `ID` with the signaling server at `URL` (token in
//! `FOGCONNECT_TOKEN`), serves streams on service `SERVICE` (default 2),
//! prints "ready" and runs until SIGTERM or Ctrl-C.
//!
//! ```text
//! FOGCONNECT_TOKEN=... cargo run --release --example native_camera -- ws://127.0.0.1:7600/ws camera-1 2
//! fogconnect stream --signal ws://127.0.0.1:7600/ws --peer camera-1 --service 2 --params action=live
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use fogconnect::Node;
use fogconnect::stream::{Pull, StreamHost, StreamService, WatermarkEvent};

/// Pull ticks per second.
const TICKS_PER_SECOND: u64 = 100;
/// The watermarks of every stream: low, warn, high (bytes).
const MARKS: (u64, u64, u64) = (32 * 1024, 128 * 1024, 256 * 1024);
/// The lowest bitrate the camera falls back to.
const MIN_BITRATE: u64 = 64_000;

/// One live stream.
struct Live {
    asked: u64,
    bitrate: u64,
    next_frame: u64,
}

/// The camera: its streams and the talk-back bytes heard.
#[derive(Default)]
struct Camera {
    next_handle: u64,
    streams: HashMap<u64, Live>,
    talk_bytes: HashMap<u64, u64>,
}

fn param(params: &str, key: &str) -> Option<String> {
    params.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

impl StreamService for Camera {
    fn send_init(&mut self, host: &mut StreamHost<'_>, _conn: u64, params: &str) -> Result<u64, String> {
        if param(params, "action").as_deref() != Some("live") {
            return Err(format!("unsupported stream {params:?}: this camera serves action=live"));
        }
        let asked = match param(params, "bitrate") {
            Some(text) => text.parse().map_err(|_| format!("bitrate={text} is not a number"))?,
            None => 1_000_000,
        };
        self.next_handle += 1;
        let handle = self.next_handle;
        let (low, warn, high) = MARKS;
        host.set_watermarks(handle, low, warn, high).map_err(|e| e.to_string())?;
        self.streams.insert(handle, Live { asked, bitrate: asked, next_frame: 0 });
        Ok(handle)
    }

    fn send_get(&mut self, _: &mut StreamHost<'_>, handle: u64) -> Pull {
        let Some(live) = self.streams.get_mut(&handle) else { return Pull::End };
        let size = (live.bitrate / 8 / TICKS_PER_SECOND).max(8) as usize;
        let mut frame = BytesMut::with_capacity(size);
        frame.put_u64(live.next_frame);
        frame.resize(size, 0xAB);
        live.next_frame += 1;
        Pull::Data(frame.freeze())
    }

    fn send_stop(&mut self, _: &mut StreamHost<'_>, handle: u64) {
        self.streams.remove(&handle);
    }

    fn on_watermark(&mut self, _: &mut StreamHost<'_>, handle: u64, event: WatermarkEvent) {
        let Some(live) = self.streams.get_mut(&handle) else { return };
        match event {
            WatermarkEvent::High => live.bitrate = (live.bitrate / 2).max(MIN_BITRATE),
            WatermarkEvent::Low => live.bitrate = (live.bitrate + live.asked / 8).min(live.asked),
            WatermarkEvent::Warn => {}
        }
    }

    fn recv_init(&mut self, _: &mut StreamHost<'_>, _conn: u64, _params: &str) -> Result<u64, String> {
        self.next_handle += 1;
        self.talk_bytes.insert(self.next_handle, 0);
        Ok(self.next_handle)
    }

    fn recv_data(&mut self, _: &mut StreamHost<'_>, handle: u64, data: &[u8]) {
        if let Some(bytes) = self.talk_bytes.get_mut(&handle) {
            *bytes += data.len() as u64;
        }
    }

    fn on_command(&mut self, host: &mut StreamHost<'_>, _conn: u64, message: &[u8]) -> Result<Vec<u8>, String> {
        let text = String::from_utf8_lossy(message);
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (Some("stats"), None) => {
                let mut reply = String::new();
                let mut handles: Vec<_> = self.streams.keys().copied().collect();
                handles.sort_unstable();
                for handle in handles {
                    let live = &self.streams[&handle];
                    let buffered = host.buffered(handle).unwrap_or(0);
                    let _ = writeln!(
                        reply,
                        "stream {handle}: frames={} bitrate={} buffered={buffered}",
                        live.next_frame, live.bitrate
                    );
                }
                for (handle, bytes) in &self.talk_bytes {
                    let _ = writeln!(reply, "talk-back {handle}: bytes={bytes}");
                }
                Ok(reply.into_bytes())
            }
            (Some("bitrate"), Some(value)) => {
                let bitrate: u64 = value.parse().map_err(|_| format!("{value} is not a bitrate"))?;
                for live in self.streams.values_mut() {
                    live.asked = bitrate;
                    live.bitrate = bitrate;
                }
                Ok(format!("bitrate {bitrate}").into_bytes())
            }
            _ => Err(format!("unknown command {text:?}: try stats or bitrate N")),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(id)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: native_camera URL ID [SERVICE]");
    };
    let service: u8 = args.next().map_or(Ok(2), |s| s.parse()).context("SERVICE is a number 0..255")?;
    let token = std::env::var("FOGCONNECT_TOKEN").context("FOGCONNECT_TOKEN is not set")?;
    let listen = std::env::var("FOGCONNECT_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into()).parse()?;
    let builder = Node::builder().node_id(id).listen(listen).signal(url, token);
    // Made before the node starts: no connection is refused meanwhile.
    let camera = builder.serve_streams(service, Camera::default())?;
    let node = builder.start().await?;
    node.registered(std::time::Duration::from_secs(10)).await?;
    println!("ready");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    camera.stop().await;
    node.shutdown().await;
    Ok(())
}
