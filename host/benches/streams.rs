// criterion_group! generates functions without docs.
#![allow(missing_docs)]

//! Host CPU cost of the 10 ms pull tick of a stream plugin for 1, 100 and
//! 1,000 streams: batched (one `send-get` call for all streams due, as the
//! node does) against one call per stream (the baseline, measured in the
//! same run). Each stream yields a 160-byte frame per pull; the tick
//! includes the watermark checks and queueing the frames. The frames are
//! taken out of the send queues between ticks, outside the timing.
//!
//! `cargo bench -p fogconnect --bench streams` after `make plugins`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fogconnect::PluginLimits;
use fogconnect::runtime::engine::PluginEngine;
use fogconnect::runtime::stream_actor::PULL_BATCH;
use fogconnect::runtime::stream_harness::StreamHarness;
use fogconnect::transport::conn::{ConnectionId, Detached, DetachedOutput};
use fogconnect_proto::stream::StreamMessage;

/// Streams per application connection.
const PER_CONNECTION: usize = 100;

/// A harness with `streams` streams of 160-byte frames open, pulling at
/// most `batch` streams per call.
fn harness_with(
    engine: &PluginEngine,
    wasm: &[u8],
    streams: usize,
    batch: usize,
) -> (StreamHarness, Vec<(ConnectionId, Detached)>) {
    let mut harness = StreamHarness::new(engine, wasm, 5, PluginLimits::default()).expect("stream harness");
    harness.set_pull_batch(batch);
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
    (harness, conns)
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
                b.iter_custom(|ticks| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..ticks {
                        let due = harness.next_wake().expect("streams are scheduled");
                        let started = Instant::now();
                        harness.tick(due.max(Instant::now())).expect("tick");
                        spent += started.elapsed();
                        let mut frames = 0;
                        for (id, _) in &conns {
                            frames += harness.take_queued(*id).len();
                        }
                        assert_eq!(frames, streams, "one frame per stream per tick");
                    }
                    spent
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pull_tick);
criterion_main!(benches);
