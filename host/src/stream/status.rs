//! A stream's send status, sans-IO: the sending rate and loss over a
//! recent window, computed from counters sampled with time passed in (the
//! host samples the stream's byte count and its QUIC path's statistics).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counters read at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendSample {
    /// Payload bytes the stream handed to the transport so far.
    pub bytes_sent: u64,
    /// Bytes queued and not yet handed over.
    pub bytes_buffered: u64,
    /// Packets the QUIC path sent so far.
    pub packets_sent: u64,
    /// Packets the QUIC path declared lost so far.
    pub packets_lost: u64,
    /// The path's smoothed round-trip time.
    pub rtt: Duration,
    /// The path's congestion window, in bytes.
    pub cwnd: u64,
}

/// What a stream plugin is told about its sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendStatus {
    /// Payload sending rate over the window, in bytes per second.
    pub rate: f64,
    /// Payload bytes handed to the transport so far.
    pub bytes_sent: u64,
    /// Bytes queued and not yet handed over.
    pub bytes_buffered: u64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Share of the packets sent in the window that were lost (0..=1).
    pub loss: f64,
    /// Congestion window, in bytes.
    pub cwnd: u64,
}

/// Samples of the last window.
#[derive(Debug)]
pub struct SendMeter {
    window: Duration,
    samples: VecDeque<(Instant, SendSample)>,
}

impl SendMeter {
    /// A meter averaging over `window` (at least 1 ms).
    pub fn new(window: Duration) -> Self {
        Self { window: window.max(Duration::from_millis(1)), samples: VecDeque::new() }
    }

    /// Records the counters read at `now` (times must not go backwards;
    /// an earlier one is ignored).
    pub fn sample(&mut self, now: Instant, sample: SendSample) {
        if self.samples.back().is_some_and(|(at, _)| *at > now) {
            return;
        }
        self.samples.push_back((now, sample));
        // Keep one sample at or before the window's start as its base.
        while self.samples.len() > 2
            && self.samples.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    /// The status from the samples so far; `None` before the first.
    pub fn status(&self) -> Option<SendStatus> {
        let (last_at, last) = *self.samples.back()?;
        let (first_at, first) = *self.samples.front()?;
        let span = last_at.duration_since(first_at).as_secs_f64();
        let rate = if span > 0.0 { last.bytes_sent.saturating_sub(first.bytes_sent) as f64 / span } else { 0.0 };
        let sent = last.packets_sent.saturating_sub(first.packets_sent);
        let lost = last.packets_lost.saturating_sub(first.packets_lost);
        let loss = if sent > 0 { (lost as f64 / sent as f64).min(1.0) } else { 0.0 };
        Some(SendStatus {
            rate,
            bytes_sent: last.bytes_sent,
            bytes_buffered: last.bytes_buffered,
            rtt: last.rtt,
            loss,
            cwnd: last.cwnd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(bytes_sent: u64, packets_sent: u64, packets_lost: u64) -> SendSample {
        SendSample { bytes_sent, packets_sent, packets_lost, rtt: 20 * MS, cwnd: 12_000, bytes_buffered: 0 }
    }

    #[test]
    fn rate_and_loss_over_the_window() {
        let t0 = Instant::now();
        let mut meter = SendMeter::new(1_000 * MS);
        assert_eq!(meter.status(), None);
        meter.sample(t0, at(0, 0, 0));
        assert_eq!(meter.status().map(|s| s.rate), Some(0.0));
        meter.sample(t0 + 500 * MS, at(50_000, 50, 0));
        meter.sample(t0 + 1_000 * MS, at(100_000, 100, 10));
        let status = meter.status().expect("status");
        assert!((status.rate - 100_000.0).abs() < 1e-6, "{status:?}");
        assert!((status.loss - 0.1).abs() < 1e-9, "{status:?}");
        assert_eq!((status.bytes_sent, status.rtt, status.cwnd), (100_000, 20 * MS, 12_000));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let t0 = Instant::now();
        let mut meter = SendMeter::new(1_000 * MS);
        meter.sample(t0, at(0, 0, 0));
        // A fast first second, then a slow one: the rate follows.
        meter.sample(t0 + 1_000 * MS, at(1_000_000, 1_000, 500));
        meter.sample(t0 + 1_500 * MS, at(1_005_000, 1_010, 500));
        meter.sample(t0 + 2_000 * MS, at(1_010_000, 1_020, 500));
        let status = meter.status().expect("status");
        assert!((status.rate - 10_000.0).abs() < 1e-6, "{status:?}");
        assert_eq!(status.loss, 0.0, "the lossy second has left the window");
    }

    #[test]
    fn backwards_time_and_counter_resets_do_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut meter = SendMeter::new(100 * MS);
        meter.sample(t0, at(500, 5, 1));
        meter.sample(t0 - 10 * MS, at(9_999, 99, 9));
        meter.sample(t0 + 50 * MS, at(100, 1, 0));
        let status = meter.status().expect("status");
        assert_eq!((status.rate, status.loss), (0.0, 0.0));
    }
}
