//! What a plugin actor counts on its own thread between flushes into the
//! shared [`ServiceCounters`], and the clock it times calls with.
//!
//! One message through a plugin costs about half a microsecond. Counting it
//! straight into the shared counters took eight atomic additions, and
//! timing the call two reads of the system clock: together a fifth of the
//! cost. The actor now counts into a [`ServiceTally`], which it flushes
//! when its queue runs empty (so a scrape of an idle node is exact) and at
//! least every [`FLUSH_EVERY`] calls under load; calls are timed with the
//! CPU's time-stamp counter where it is usable ([`CallClock`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use super::ServiceCounters;
use super::histogram::LocalHistogram;

/// Calls after which a busy actor flushes its tally anyway.
pub const FLUSH_EVERY: u32 = 256;

/// The clock plugin calls are timed with: the CPU's time-stamp counter
/// scaled to nanoseconds where it is invariant, else the system's
/// monotonic clock. From `quanta`, which calibrates the counter against
/// the monotonic clock once per process (typically about a millisecond,
/// at most 200 ms) when the first plugin is instantiated.
#[derive(Debug, Clone, Copy)]
pub struct CallClock {
    clock: &'static quanta::Clock,
}

impl CallClock {
    /// The process's call clock, calibrated on first use.
    pub fn get() -> Self {
        static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
        Self { clock: CLOCK.get_or_init(quanta::Clock::new) }
    }

    /// A reading, only meaningful to [`CallClock::nanos_between`].
    pub fn read(self) -> u64 {
        self.clock.raw()
    }

    /// Nanoseconds between two readings.
    pub fn nanos_between(self, start: u64, end: u64) -> u64 {
        self.clock.delta_as_nanos(start, end)
    }
}

/// The counts of one service gathered on its actor's thread and not yet
/// in its shared counters. Dropping it flushes it, so a plugin instance
/// dropped after a crash or a swap loses nothing it counted.
#[derive(Debug)]
pub struct ServiceTally {
    counters: Arc<ServiceCounters>,
    messages_received: u64,
    bytes_received: u64,
    messages_sent: u64,
    bytes_sent: u64,
    call_seconds: LocalHistogram,
    /// Counts since the last flush.
    pending: u32,
}

impl ServiceTally {
    /// An empty tally flushing into `counters`.
    pub fn new(counters: Arc<ServiceCounters>) -> Self {
        Self {
            counters,
            messages_received: 0,
            bytes_received: 0,
            messages_sent: 0,
            bytes_sent: 0,
            call_seconds: LocalHistogram::default(),
            pending: 0,
        }
    }

    /// Counts one message of `bytes` delivered to the plugin.
    pub fn received(&mut self, bytes: usize) {
        self.messages_received += 1;
        self.bytes_received += bytes as u64;
        self.pending += 1;
    }

    /// Counts one message of `bytes` the plugin sent.
    pub fn sent(&mut self, bytes: usize) {
        self.messages_sent += 1;
        self.bytes_sent += bytes as u64;
        self.pending += 1;
    }

    /// Counts one plugin call that took `nanos` nanoseconds.
    pub fn call(&mut self, nanos: u64) {
        self.call_seconds.observe_nanos(nanos);
        self.pending += 1;
    }

    /// Flushes when the actor's queue is `idle` (so a scrape of a quiet
    /// service is exact), or under load once [`FLUSH_EVERY`] counts wait.
    pub fn settle(&mut self, idle: bool) {
        if idle || self.pending >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Adds everything counted to the shared counters.
    pub fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.pending = 0;
        let c = &self.counters;
        for (shared, local) in [
            (&c.messages_received, &mut self.messages_received),
            (&c.bytes_received, &mut self.bytes_received),
            (&c.messages_sent, &mut self.messages_sent),
            (&c.bytes_sent, &mut self.bytes_sent),
        ] {
            if *local > 0 {
                shared.fetch_add(std::mem::take(local), Ordering::Relaxed);
            }
        }
        c.call_seconds.absorb(&mut self.call_seconds);
    }
}

impl Drop for ServiceTally {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reach_the_shared_counters_on_flush_and_on_drop() {
        let counters = Arc::new(ServiceCounters::default());
        let mut tally = ServiceTally::new(counters.clone());
        tally.received(10);
        tally.sent(7);
        tally.sent(3);
        tally.call(400);
        assert_eq!(counters.messages_sent.load(Ordering::Relaxed), 0, "nothing shared before a flush");
        tally.flush();
        assert_eq!(counters.messages_received.load(Ordering::Relaxed), 1);
        assert_eq!(counters.bytes_received.load(Ordering::Relaxed), 10);
        assert_eq!(counters.messages_sent.load(Ordering::Relaxed), 2);
        assert_eq!(counters.bytes_sent.load(Ordering::Relaxed), 10);
        assert_eq!(counters.call_seconds.count(), 1);

        tally.call(600_000);
        drop(tally);
        assert_eq!(counters.call_seconds.count(), 2, "dropping flushes");
        assert_eq!(counters.call_seconds.snapshot().cumulative[4], 2, "both at or below 1 ms");
    }

    #[test]
    fn a_busy_tally_flushes_after_flush_every_counts_and_an_idle_one_at_once() {
        let counters = Arc::new(ServiceCounters::default());
        let mut tally = ServiceTally::new(counters.clone());
        for _ in 0..FLUSH_EVERY - 1 {
            tally.call(100);
        }
        tally.settle(false);
        assert_eq!(counters.call_seconds.count(), 0, "not due yet");
        tally.received(1);
        tally.settle(false);
        assert_eq!(counters.call_seconds.count(), u64::from(FLUSH_EVERY) - 1, "due");
        tally.call(100);
        tally.settle(true);
        assert_eq!(counters.call_seconds.count(), u64::from(FLUSH_EVERY), "idle");
    }

    #[test]
    fn the_call_clock_measures_elapsed_time() {
        let clock = CallClock::get();
        let start = clock.read();
        let wall = std::time::Instant::now();
        while wall.elapsed() < std::time::Duration::from_millis(2) {}
        let nanos = clock.nanos_between(start, clock.read());
        assert!((1_500_000..1_000_000_000).contains(&nanos), "{nanos} ns for a 2 ms busy wait");
    }
}
