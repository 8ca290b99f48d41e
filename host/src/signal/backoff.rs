//! Reconnect backoff with jitter, sans-IO: the random draw is passed in.

use std::time::Duration;

/// Exponential backoff: each delay doubles up to `max`, then is spread by
/// "equal jitter" (between half and all of it) so many clients that lost
/// the server together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, current: initial }
    }

    /// The next delay; `random` is a uniform draw in `[0, 1)`.
    pub fn next(&mut self, random: f64) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base / 2 + base.mul_f64(random.clamp(0.0, 1.0) / 2.0)
    }

    /// Back to the initial delay (after a successful connection).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        assert_eq!(b.next(0.0), Duration::from_millis(50));
        assert_eq!(b.next(1.0), Duration::from_millis(200));
        assert_eq!(b.next(0.5), Duration::from_millis(300));
        assert_eq!(b.next(0.5), Duration::from_millis(300));
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_millis(50));
    }
}
