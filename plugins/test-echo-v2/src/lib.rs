//! Test plugin for live swaps: echoes every message as "v2:<message>".

/// The reply prefix.
const VERSION: &str = "v2";

include!("../../test-echo-v1/src/versioned.rs");
