//! Metrics of a node's services in the Prometheus text format (version
//! 0.0.4): lock-free counters and histograms the plugin actors update, and
//! a pure renderer over a snapshot of them.

pub mod exporter;
pub mod histogram;
pub mod render;
#[cfg(feature = "plugins")]
pub mod tally;

pub use histogram::{Histogram, HistogramSnapshot, LocalHistogram};
pub use render::{ServiceMetrics, render};
#[cfg(feature = "plugins")]
pub use tally::{CallClock, ServiceTally};

use std::sync::atomic::{AtomicU64, Ordering};

/// Traffic counters of one service, shared by its actor and its plugin's
/// host functions.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Messages delivered to the plugin.
    pub messages_received: AtomicU64,
    /// Payload bytes delivered to the plugin.
    pub bytes_received: AtomicU64,
    /// Messages (or stream chunks) the plugin sent.
    pub messages_sent: AtomicU64,
    /// Payload bytes the plugin sent.
    pub bytes_sent: AtomicU64,
    /// Plugin call durations, one observation per call (callbacks, and the
    /// snapshot and restore of swaps): its count is the calls made.
    pub call_seconds: Histogram,
    /// Live swaps made.
    pub swaps: AtomicU64,
    /// How long the service's events waited during each swap.
    pub swap_pause_seconds: Histogram,
}

impl ServiceCounters {
    /// Counts one message of `bytes` delivered to the plugin.
    pub fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one message of `bytes` the plugin sent.
    pub fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}
