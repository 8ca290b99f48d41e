// criterion_group! generates functions without docs.
#![allow(missing_docs)]

//! Host CPU cost of the 10 ms pull tick of a stream plugin for 1, 100 and
//! 1,000 streams: batched (one `send-get` call for all streams due, as the
//! node does) against one call per stream (the baseline, measured in the
//! same run), and the same streams from a native Rust stream service
//! (`StreamService`, what the C API's `iv_avt_p2p_*` sits on). Each stream
//! yields a 160-byte frame per pull; the tick includes the watermark checks
//! and queueing the frames. The frames are taken out of the send queues
//! between ticks, outside the timing.
//!
//! `cargo bench -p fogconnect --bench streams` after `make plugins`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fogconnect::PluginLimits;
use fogconnect::runtime::engine::PluginEngine;
use fogconnect::runtime::stream_actor::PULL_BATCH;
use fogconnect::runtime::stream_harness::StreamHarness;
use fogconnect::stream::harness::ServeHarness;
use fogconnect::stream::serve::StreamServer;
use fogconnect::stream::{NativeStreamHarness, Pull, StreamHost, StreamService};
use fogconnect::transport::conn::{ConnectionId, Detached, DetachedOutput};
use fogconnect_proto::stream::StreamMessage;

/// Streams per application connection.
const PER_CONNECTION: usize = 100;

/// A native stream service doing the plugin's work per pull: a frame of
/// `frame=` bytes, numbered.
#[derive(Default)]
struct Frames {
    next_handle: u64,
    next: std::collections::HashMap<u64, (usize, u64)>,
}

impl StreamService for Frames {
    fn send_init(&mut self, _: &mut StreamHost<'_>, _conn: u64, params: &str) -> Result<u64, String> {
        let size = params.split('&').find_map(|p| p.strip_prefix("frame=")?.parse().ok()).unwrap_or(160);
        self.next_handle += 1;
        self.next.insert(self.next_handle, (size, 0));
        Ok(self.next_handle)
    }

    fn send_get(&mut self, _: &mut StreamHost<'_>, handle: u64) -> Pull {
        let Some((size, next)) = self.next.get_mut(&handle) else { return Pull::NOTHING };
        let mut frame = BytesMut::with_capacity(*size);
        frame.put_u64(*next);
        frame.resize(*size, 0xAB);
        *next += 1;
        Pull::Data(frame.freeze())
    }

    fn send_stop(&mut self, _: &mut StreamHost<'_>, handle: u64) {
        self.next.remove(&handle);
    }
}

/// A plugin harness with `streams` streams of 160-byte frames open,
/// pulling at most `batch` streams per call.
fn harness_with(
    engine: &PluginEngine,
    wasm: &[u8],
    streams: usize,
    batch: usize,
) -> (StreamHarness, Vec<(ConnectionId, Detached)>) {
    let mut harness = StreamHarness::new(engine, wasm, 5, PluginLimits::default()).expect("stream harness");
    harness.set_pull_batch(batch);
    let conns = open_streams(&mut harness, streams);
    (harness, conns)
}

/// `streams` streams of 160-byte frames opened on `harness`.
fn open_streams<S: StreamServer>(harness: &mut ServeHarness<S>, streams: usize) -> Vec<(ConnectionId, Detached)> {
    let mut conns = Vec::new();
    for i in 0..streams {
        if i % PER_CONNECTION == 0 {
            conns.push(harness.open(&format!("app{i}")).expect("open"));
        }
        let (id, _) = conns.last().expect("a connection");
        let open = StreamMessage::Open { stream: i as u32, params: "action=live&frame=160".into() };
        harness.deliver(*id, &open).expect("send-init");
    }
    for (_, wire) in &mut conns {
        while let Some(out) = wire.try_take() {
            let accepted = matches!(out, DetachedOutput::Message(ref m)
                if matches!(StreamMessage::decode(m), Ok(StreamMessage::Accepted { .. })));
            assert!(accepted, "stream not accepted: {out:?}");
        }
    }
    conns
}

/// Measures `ticks` pull ticks of `harness`; the frames are taken out
/// between ticks, outside the timing.
fn timed_ticks<S: StreamServer>(
    harness: &mut ServeHarness<S>,
    conns: &[(ConnectionId, Detached)],
    streams: usize,
    ticks: u64,
) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..ticks {
        let due = harness.next_wake().expect("streams are scheduled");
        let started = Instant::now();
        harness.tick(due.max(Instant::now())).expect("tick");
        spent += started.elapsed();
        let mut frames = 0;
        for (id, _) in conns {
            frames += harness.take_queued(*id).len();
        }
        assert_eq!(frames, streams, "one frame per stream per tick");
    }
    spent
}

fn pull_tick(c: &mut Criterion) {
    let engine = PluginEngine::new(None).expect("engine");
    let wasm = std::fs::read(common::plugin("adaptive-source")).expect("read adaptive_source.wasm");
    let mut group = c.benchmark_group("pull_tick");
    group.measurement_time(Duration::from_secs(3));
    for streams in [1usize, 100, 1000] {
        for (name, batch) in [("batched", PULL_BATCH), ("per_stream", 1)] {
            let (mut harness, conns) = harness_with(&engine, &wasm, streams, batch);
            group.bench_with_input(BenchmarkId::new(name, streams), &streams, |b, &streams| {
                b.iter_custom(|ticks| timed_ticks(&mut harness, &conns, streams, ticks));
            });
        }
        let mut native: NativeStreamHarness<Frames> = ServeHarness::native(5, Frames::default());
        let conns = open_streams(&mut native, streams);
        group.bench_with_input(BenchmarkId::new("native", streams), &streams, |b, &streams| {
            b.iter_custom(|ticks| timed_ticks(&mut native, &conns, streams, ticks));
        });
    }
    group.finish();
}

criterion_group!(benches, pull_tick);
criterion_main!(benches);
