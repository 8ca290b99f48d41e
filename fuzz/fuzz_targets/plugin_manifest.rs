//! Any text must decode to a checked manifest or a clean error, never
//! panic; a decoded manifest must round-trip.
#![no_main]

use fogconnect_proto::manifest::PluginManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(manifest) = PluginManifest::decode(text)
    {
        assert_eq!(PluginManifest::decode(&manifest.encode()), Ok(manifest));
    }
});
