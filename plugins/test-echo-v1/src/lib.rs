//! Test plugin for live swaps: echoes every message as "v1:<message>".

/// The reply prefix.
const VERSION: &str = "v1";

include!("versioned.rs");
