//! Plugin crashes do not leak: 200 consecutive crashes and restarts leave
//! the node's resident memory where it was. Alone in its test binary so no
//! other test's allocations disturb the measurement.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{WAIT, ask, closed_within, config, node_with, node_with_config};
use fogconnect::{CloseKind, CrashPolicy, NodeConfig, Transport};

fn resident_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("statm"))?.parse()?;
    Ok(pages * 4096)
}

#[tokio::test]
async fn two_hundred_crashes_do_not_grow_memory() -> anyhow::Result<()> {
    let policy = CrashPolicy {
        max_crashes: 10_000,
        initial_backoff: Duration::from_micros(100),
        max_backoff: Duration::from_millis(1),
        ..CrashPolicy::default()
    };
    let server =
        node_with_config("server", &[(8, "test-panic")], NodeConfig { crash_policy: policy, ..config() }).await?;
    let client = node_with("client", &[]).await?;
    let crash = || async {
        let mut conn = client.connect(server.local_addr(), Transport::Quic, 8).await?;
        conn.send(b"panic".to_vec())?;
        let reason = closed_within(&mut conn, WAIT).await?;
        ensure!(reason.kind == CloseKind::Error, "{reason}");
        anyhow::Ok(())
    };
    // Warm up allocator pools and caches first.
    for _ in 0..20 {
        crash().await?;
    }
    let before = resident_bytes()?;
    for _ in 0..200 {
        crash().await?;
    }
    let after = resident_bytes()?;
    let growth = after.saturating_sub(before);
    println!(
        "resident before {} KiB, after 200 crashes {} KiB, growth {} KiB",
        before / 1024,
        after / 1024,
        growth / 1024
    );
    ensure!(growth < 4 << 20, "resident memory grew by {} KiB over 200 crashes", growth / 1024);
    let crashes = server.services().first().map(|s| s.crashes).unwrap_or(0);
    assert_eq!(crashes, 220);
    let mut conn = client.connect(server.local_addr(), Transport::Quic, 8).await?;
    assert_eq!(ask(&mut conn, "alive").await?, "alive");
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}
