//! The plugin runtime without network: the precompile cache, the harness,
//! and clear errors for bad plugins.

mod common;

use anyhow::{bail, ensure};
use bytes::Bytes;
use fogconnect::PluginLimits;
use fogconnect::runtime::PluginError;
use fogconnect::runtime::engine::PluginEngine;
use fogconnect::runtime::harness::{PluginHarness, harness_limits};
use fogconnect::transport::conn::DetachedOutput;

#[test]
fn compiled_plugins_are_cached_and_a_corrupt_artifact_is_recompiled() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let wasm = std::fs::read(common::plugin("echo"))?;
    let engine = PluginEngine::new(Some(cache.path().to_path_buf()))?;
    let first = engine.prepare(&wasm)?;
    ensure!(!first.from_cache);
    let second = engine.prepare(&wasm)?;
    ensure!(second.from_cache, "second load should come from the cache");
    assert_eq!(first.hash, second.hash);
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())?.collect::<Result<_, _>>()?;
    assert_eq!(artifacts.len(), 1);
    // A damaged artifact is not trusted: the plugin is compiled again.
    std::fs::write(artifacts[0].path(), b"garbage")?;
    let third = engine.prepare(&wasm)?;
    ensure!(!third.from_cache);
    ensure!(engine.prepare(&wasm)?.from_cache, "the artifact was rewritten");
    Ok(())
}

#[test]
fn bad_plugins_get_clear_errors() -> anyhow::Result<()> {
    let engine = PluginEngine::new(None)?;
    match engine.prepare(b"not wasm at all") {
        Err(PluginError::Compile(message)) => ensure!(!message.is_empty()),
        Err(other) => bail!("unexpected error {other}"),
        Ok(_) => bail!("garbage compiled"),
    }
    // A core module (not a component) is refused too.
    match engine.prepare(b"\0asm\x01\0\0\0") {
        Err(PluginError::Compile(_)) => {}
        Err(other) => bail!("unexpected error {other}"),
        Ok(_) => bail!("core module accepted as a plugin"),
    }
    Ok(())
}

#[test]
fn the_harness_drives_a_plugin_without_network() -> anyhow::Result<()> {
    let engine = PluginEngine::new(None)?;
    let wasm = std::fs::read(common::plugin("echo"))?;
    let mut harness = PluginHarness::new(&engine, &wasm, 0, PluginLimits::default())?;
    let (id, mut wire) = harness.open("tester", harness_limits()).map_err(anyhow::Error::msg)?;
    for i in 0..100u32 {
        harness.recv(id, Bytes::from(i.to_be_bytes().to_vec())).map_err(anyhow::Error::msg)?;
        assert_eq!(wire.try_take(), Some(DetachedOutput::Message(Bytes::from(i.to_be_bytes().to_vec()))));
    }
    assert_eq!(wire.try_take(), None);
    Ok(())
}

#[test]
fn a_trap_in_the_harness_is_reported_and_ends_the_connection() -> anyhow::Result<()> {
    let engine = PluginEngine::new(None)?;
    let wasm = std::fs::read(common::plugin("test-panic"))?;
    let mut harness = PluginHarness::new(&engine, &wasm, 8, PluginLimits::default())?;
    let (id, _wire) = harness.open("tester", harness_limits()).map_err(anyhow::Error::msg)?;
    match harness.recv(id, Bytes::from_static(b"panic")) {
        Err(message) => ensure!(message.starts_with("trap: "), "{message}"),
        Ok(()) => bail!("the panic was not reported"),
    }
    Ok(())
}
