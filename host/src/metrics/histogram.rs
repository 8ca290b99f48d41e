//! A fixed-bucket histogram of durations, updated without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 10 µs to 5 s, roughly ×2.5
/// per step (plugin calls take microseconds; swaps up to a cold compile).
pub const BUCKETS: [f64; 12] = [1e-5, 2.5e-5, 1e-4, 2.5e-4, 1e-3, 2.5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1.0, 5.0];

/// [`BUCKETS`] in nanoseconds, the bounds observations are placed by.
const BUCKET_NANOS: [u64; BUCKETS.len()] = {
    let mut nanos = [0; BUCKETS.len()];
    let mut i = 0;
    while i < BUCKETS.len() {
        nanos[i] = (BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
};

/// The bucket of an observation of `nanos` nanoseconds: the first bound at
/// or above it, or the one above the last bound.
fn bucket_of(nanos: u64) -> usize {
    BUCKET_NANOS.iter().position(|&bound| nanos <= bound).unwrap_or(BUCKETS.len())
}

/// Counts of durations per bucket, their sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; the renderer
    /// accumulates), and one more for above the last bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A copy of a histogram's values.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts at or below each bound of [`BUCKETS`].
    pub cumulative: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Adds the observations gathered in `local` and empties it.
    pub fn absorb(&self, local: &mut LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (shared, count) in self.buckets.iter().zip(local.buckets.iter_mut()) {
            if *count > 0 {
                shared.fetch_add(std::mem::take(count), Ordering::Relaxed);
            }
        }
        self.sum_nanos.fetch_add(std::mem::take(&mut local.sum_nanos), Ordering::Relaxed);
        self.count.fetch_add(std::mem::take(&mut local.count), Ordering::Relaxed);
    }

    /// The values now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self.buckets[..BUCKETS.len()]
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Observations gathered by one thread without atomics, added to a
/// [`Histogram`] in one go with [`Histogram::absorb`]: a plugin call takes
/// well under a microsecond, and three atomic additions per call were a
/// noticeable part of it.
#[derive(Debug, Default)]
pub struct LocalHistogram {
    buckets: [u64; BUCKETS.len() + 1],
    sum_nanos: u64,
    count: u64,
}

impl LocalHistogram {
    /// Records one duration of `nanos` nanoseconds.
    pub fn observe_nanos(&mut self, nanos: u64) {
        self.buckets[bucket_of(nanos)] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
        self.count += 1;
    }

    /// Observations not yet absorbed.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5)); // ≤ 10 µs
        h.observe(Duration::from_micros(10)); // on the bound: ≤ 10 µs
        h.observe(Duration::from_millis(3)); // ≤ 10 ms
        h.observe(Duration::from_secs(9)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[5], 2, "nothing between 10 µs and 2.5 ms");
        assert_eq!(s.cumulative[6], 3);
        assert_eq!(*s.cumulative.last().expect("buckets"), 3, "9 s is only in +Inf (the count)");
        assert!((s.sum_seconds - 9.003_015).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn local_observations_land_where_shared_ones_do() {
        let durations = [5_000, 10_000, 10_001, 3_000_000, 9_000_000_000];
        let shared = Histogram::default();
        for nanos in durations {
            shared.observe(Duration::from_nanos(nanos));
        }
        let absorbed = Histogram::default();
        let mut local = LocalHistogram::default();
        for nanos in durations {
            local.observe_nanos(nanos);
        }
        assert_eq!(local.count(), 5);
        absorbed.absorb(&mut local);
        assert_eq!(local.count(), 0, "absorbing empties the local histogram");
        absorbed.absorb(&mut local);
        assert_eq!(absorbed.snapshot(), shared.snapshot());
    }

    #[test]
    fn nanosecond_bounds_are_the_bounds_in_seconds() {
        for (seconds, nanos) in BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }
}
