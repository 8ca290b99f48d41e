// criterion_group! generates functions without docs.
#![allow(missing_docs)]

//! Plugin dispatch cost against native Rust: the call itself (a message
//! handed to the plugin's `on-recv`, its `send`, the reply taken from the
//! connection's queue, metrics on as in production), and the whole node
//! path (a QUIC echo round trip on loopback through a plugin and through a
//! native handler of the same node).
//!
//! `make bench` (or `cargo bench -p fogconnect --bench dispatch` after
//! `make plugins`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fogconnect::runtime::engine::PluginEngine;
use fogconnect::runtime::harness::{PluginHarness, harness_limits};
use fogconnect::transport::conn::{ConnMeta, Detached, DetachedOutput};
use fogconnect::{ConnectionEvent, ConnectionId, Convention, Node, PluginLimits, Transport};
use tokio::sync::mpsc;

fn plugin(name: &str) -> PathBuf {
    std::env::var_os("FOGCONNECT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin"))
        .join(format!("{name}.wasm"))
}

/// The same echo handler written as native Rust, sending through the same
/// connection type the plugin's `send` import uses.
fn native_echo(conn: &fogconnect::transport::conn::ConnShared, data: Bytes) {
    let _ = conn.send(data);
}

fn dispatch(c: &mut Criterion) {
    let engine = PluginEngine::new(None).expect("engine");
    let wasm = std::fs::read(plugin("echo")).expect("echo.wasm: run make plugins");
    let mut harness = PluginHarness::new(&engine, &wasm, 0, PluginLimits::default()).expect("harness");
    let (id, mut wire) = harness.open("bench", harness_limits()).expect("open");

    let (owner, _events) = mpsc::channel(16);
    let meta = ConnMeta {
        id: ConnectionId(1),
        peer_id: "bench".into(),
        peer_verified: true,
        passive: true,
        convention: Convention::new(Transport::Quic, 0),
        remote: "127.0.0.1:1".parse().expect("addr"),
    };
    let (native_conn, mut native_wire) = Detached::new(meta, harness_limits(), owner);

    let mut group = c.benchmark_group("echo_dispatch");
    for size in [64usize, 1024, 16 * 1024] {
        let payload = Bytes::from(vec![0x5A; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("plugin", size), &payload, |b, payload| {
            b.iter(|| {
                harness.recv(id, payload.clone()).expect("plugin call");
                match wire.try_take() {
                    Some(DetachedOutput::Message(reply)) => reply,
                    other => panic!("no echo: {other:?}"),
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("native", size), &payload, |b, payload| {
            b.iter(|| {
                native_echo(&native_conn, payload.clone());
                match native_wire.try_take() {
                    Some(DetachedOutput::Message(reply)) => reply,
                    other => panic!("no echo: {other:?}"),
                }
            })
        });
    }
    group.finish();
}

/// One 64-byte echo through `conn` and back, checked.
async fn echo_once(conn: &mut fogconnect::Connection, n: u64) {
    let mut payload = vec![0u8; 64];
    payload[..8].copy_from_slice(&n.to_be_bytes());
    conn.send(payload).expect("send");
    match conn.recv().await {
        ConnectionEvent::Message(reply) => assert_eq!(reply[..8], n.to_be_bytes()),
        ConnectionEvent::Closed(reason) => panic!("closed: {reason}"),
    }
}

/// The whole node path of a message, socket to socket: a QUIC echo round
/// trip on loopback through the echo plugin (service 0) and through the
/// same echo as a native handler (service 1) of the same node, over the
/// same link.
fn quic_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (server, client, mut via_plugin, mut via_native) = runtime.block_on(async {
        let server =
            Node::builder().configure(|c| c.cache_dir = None).plugin(0, plugin("echo")).start().await.expect("server");
        let mut incoming = server.incoming(1).expect("native service 1");
        tokio::spawn(async move {
            while let Some(mut conn) = incoming.accept().await {
                tokio::spawn(async move {
                    while let ConnectionEvent::Message(data) = conn.recv().await {
                        if conn.send(data).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let client = Node::builder().configure(|c| c.cache_dir = None).start().await.expect("client");
        let via_plugin = client.connect(server.local_addr(), Transport::Quic, 0).await.expect("connect");
        let via_native = client.connect(server.local_addr(), Transport::Quic, 1).await.expect("connect");
        (server, client, via_plugin, via_native)
    });
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("quic_echo_round_trip");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("64B via plugin", |b| {
        b.iter(|| runtime.block_on(echo_once(&mut via_plugin, counter.fetch_add(1, Ordering::Relaxed))))
    });
    group.bench_function("64B via native", |b| {
        b.iter(|| runtime.block_on(echo_once(&mut via_native, counter.fetch_add(1, Ordering::Relaxed))))
    });
    group.finish();
    runtime.block_on(async {
        client.shutdown().await;
        server.shutdown().await;
    });
}

criterion_group!(benches, dispatch, quic_round_trip);
criterion_main!(benches);
