//! A watched plugin directory on a running node: files present at start are
//! loaded, a changed file swaps its service's plugin (connections kept), a
//! broken build leaves the service as it was, a manifest beside a file sets
//! its limits, a removed file unloads its service.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use common::{WAIT, ask, node_with};
use fogconnect::Transport;
use fogconnect::plugin_dir::{DirectoryEvent, DirectoryOutcome, PluginDirectory};
use tokio::sync::broadcast;

const SCAN: Duration = Duration::from_millis(40);

/// Publishes a file the way operators should: written under a temporary
/// name, then renamed into place.
fn publish(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn build(plugin: &str) -> anyhow::Result<Vec<u8>> {
    Ok(std::fs::read(common::plugin(plugin))?)
}

/// The next event about `service`, within [`WAIT`].
async fn next_for(events: &mut broadcast::Receiver<DirectoryEvent>, service: u8) -> anyhow::Result<DirectoryOutcome> {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(event) if event.service == Some(service) => break Ok(event.outcome),
                Ok(_) => continue,
                Err(e) => break Err(anyhow::anyhow!("directory events: {e}")),
            }
        }
    })
    .await;
    found.with_context(|| format!("no directory event for service {service} within {WAIT:?}"))?
}

#[tokio::test]
async fn a_watched_directory_loads_swaps_and_unloads_its_plugins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    publish(dir.path(), "3-echo.wasm", &build("test-echo-v1")?)?;
    publish(dir.path(), "echo.wasm", &build("echo")?)?;
    std::fs::write(dir.path().join("notes.txt"), "not a plugin")?;
    let device = node_with("device", &[]).await?;
    let (directory, initial) = PluginDirectory::start(device.clone(), dir.path(), SCAN).await?;
    let mut events = directory.events();
    let outcomes: Vec<String> = initial.iter().map(ToString::to_string).collect();
    assert_eq!(outcomes, ["echo.wasm: not named <service 0-255>-<name>.wasm", "service 3: loaded 3-echo.wasm"]);
    let info = device.services().into_iter().find(|s| s.service == 3).context("service 3")?;
    assert_eq!((info.name.as_str(), info.generation), ("echo", 1));

    let app = node_with("app", &[]).await?;
    let mut conn = app.connect(device.local_addr(), Transport::Quic, 3).await?;
    assert_eq!(ask(&mut conn, "one").await?, "v1:one");

    // A new build: swapped live, the connection kept.
    publish(dir.path(), "3-echo.wasm", &build("test-echo-v2")?)?;
    assert_eq!(next_for(&mut events, 3).await?, DirectoryOutcome::Swapped { generation: 2 });
    assert_eq!(ask(&mut conn, "two").await?, "v2:two");

    // A broken build: reported, the service as it was.
    publish(dir.path(), "3-echo.wasm", b"\0asm but not a component")?;
    match next_for(&mut events, 3).await? {
        DirectoryOutcome::Failed { reason } => assert!(reason.contains("does not compile"), "{reason}"),
        other => bail!("expected the broken build to fail, got {other:?}"),
    }
    assert_eq!(ask(&mut conn, "three").await?, "v2:three");

    // The build serving published again: nothing to swap.
    publish(dir.path(), "3-echo.wasm", &build("test-echo-v2")?)?;
    assert_eq!(next_for(&mut events, 3).await?, DirectoryOutcome::Unchanged);

    // A new service with a manifest beside it.
    publish(dir.path(), "4-counter.toml", b"memory-mib = 16\n")?;
    publish(dir.path(), "4-counter.wasm", &build("test-counter")?)?;
    assert_eq!(next_for(&mut events, 4).await?, DirectoryOutcome::Loaded);
    let info = device.services().into_iter().find(|s| s.service == 4).context("service 4")?;
    assert_eq!((info.name.as_str(), info.limits.memory_bytes), ("counter", 16 << 20));
    let mut counting = app.connect(device.local_addr(), Transport::Quic, 4).await?;
    assert_eq!(ask(&mut counting, "add").await?, "1");
    // Its manifest changes: swapped with the new limits, the count kept.
    publish(dir.path(), "4-counter.toml", b"memory-mib = 24\n")?;
    assert_eq!(next_for(&mut events, 4).await?, DirectoryOutcome::Swapped { generation: 2 });
    assert_eq!(ask(&mut counting, "add").await?, "2");
    let info = device.services().into_iter().find(|s| s.service == 4).context("service 4")?;
    assert_eq!(info.limits.memory_bytes, 24 << 20);

    // Removed: unloaded, its connections closed with the reason.
    std::fs::remove_file(dir.path().join("4-counter.wasm"))?;
    assert_eq!(next_for(&mut events, 4).await?, DirectoryOutcome::Unloaded);
    let reason = common::closed_within(&mut counting, WAIT).await?;
    assert_eq!(reason.message, "service unloaded");
    assert!(device.services().iter().all(|s| s.service != 4));

    // A plugin swapped in by other means is not unloaded with the file.
    device.swap_plugin(3, &common::plugin("test-echo-v1")).await?;
    std::fs::remove_file(dir.path().join("3-echo.wasm"))?;
    assert_eq!(next_for(&mut events, 3).await?, DirectoryOutcome::Kept);
    assert_eq!(ask(&mut conn, "four").await?, "v1:four");
    Ok(())
}

#[tokio::test]
async fn a_directory_that_cannot_be_read_is_refused() -> anyhow::Result<()> {
    let device = node_with("device", &[]).await?;
    let dir = tempfile::tempdir()?;
    match PluginDirectory::start(device, &dir.path().join("missing"), SCAN).await {
        Err(e) => assert!(e.to_string().starts_with("cannot read the plugin directory"), "{e}"),
        Ok(_) => bail!("watching a missing directory"),
    }
    Ok(())
}
