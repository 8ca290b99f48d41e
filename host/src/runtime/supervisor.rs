//! Crash supervision of one plugin, sans-IO: time is passed in.
//!
//! After each crash the supervisor says whether to restart the plugin and
//! after how long (exponential backoff), or to disable it because it crashed
//! more often than its budget allows within a window. A plugin that has run
//! without crashing for [`CrashPolicy::healthy_after`] starts over with the
//! initial backoff.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How crashes of a plugin are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPolicy {
    /// Crashes allowed within `window`; one more disables the plugin.
    pub max_crashes: u32,
    /// The sliding window of the crash budget.
    pub window: Duration,
    /// Delay before the first restart.
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
    /// A run this long without a crash resets the backoff.
    pub healthy_after: Duration,
}

impl Default for CrashPolicy {
    fn default() -> Self {
        Self {
            max_crashes: 10,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            healthy_after: Duration::from_secs(30),
        }
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashDecision {
    /// Re-instantiate the plugin after this delay.
    RestartAfter(Duration),
    /// The budget is exhausted: keep the plugin down.
    Disable,
}

/// Crash bookkeeping of one plugin.
#[derive(Debug)]
pub struct Supervisor {
    policy: CrashPolicy,
    recent: VecDeque<Instant>,
    next_backoff: Duration,
    last_start: Option<Instant>,
    total_crashes: u64,
}

impl Supervisor {
    /// A supervisor following `policy`.
    pub fn new(policy: CrashPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            next_backoff: policy.initial_backoff,
            last_start: None,
            total_crashes: 0,
        }
    }

    /// Records that the plugin (re)started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.last_start = Some(now);
    }

    /// Records a crash at `now` and decides what follows.
    pub fn crashed(&mut self, now: Instant) -> CrashDecision {
        self.total_crashes += 1;
        if let Some(start) = self.last_start
            && now.saturating_duration_since(start) >= self.policy.healthy_after
        {
            self.next_backoff = self.policy.initial_backoff;
        }
        while let Some(&first) = self.recent.front() {
            if now.saturating_duration_since(first) >= self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        if self.recent.len() > self.policy.max_crashes as usize {
            return CrashDecision::Disable;
        }
        let delay = self.next_backoff;
        self.next_backoff = (self.next_backoff * 2).min(self.policy.max_backoff);
        CrashDecision::RestartAfter(delay)
    }

    /// Whether a crash at `now` would spend the budget (disable the plugin).
    pub fn next_crash_disables(&self, now: Instant) -> bool {
        let recent = self.recent.iter().filter(|&&at| now.saturating_duration_since(at) < self.policy.window).count();
        recent + 1 > self.policy.max_crashes as usize
    }

    /// Crashes since the plugin was loaded.
    pub fn total_crashes(&self) -> u64 {
        self.total_crashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CrashPolicy {
        CrashPolicy {
            max_crashes: 3,
            window: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            healthy_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut s = Supervisor::new(CrashPolicy { max_crashes: 100, ..policy() });
        let t0 = Instant::now();
        s.started(t0);
        let delays: Vec<_> = (0..5)
            .map(|i| match s.crashed(t0 + Duration::from_millis(i)) {
                CrashDecision::RestartAfter(d) => d.as_millis(),
                CrashDecision::Disable => 0,
            })
            .collect();
        assert_eq!(delays, vec![100, 200, 350, 350, 350]);
        assert_eq!(s.total_crashes(), 5);
    }

    #[test]
    fn budget_exhausted_within_window_disables() {
        let mut s = Supervisor::new(policy());
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(matches!(s.crashed(t0 + Duration::from_secs(i)), CrashDecision::RestartAfter(_)));
        }
        assert_eq!(s.crashed(t0 + Duration::from_secs(3)), CrashDecision::Disable);
    }

    #[test]
    fn crashes_outside_the_window_do_not_count() {
        let mut s = Supervisor::new(policy());
        let t0 = Instant::now();
        for i in 0..20u64 {
            // One crash every 4 s: at most 3 within any 10 s window.
            let d = s.crashed(t0 + Duration::from_secs(4 * i));
            assert!(matches!(d, CrashDecision::RestartAfter(_)), "crash {i}: {d:?}");
        }
    }

    #[test]
    fn the_crash_that_spends_the_budget_is_known_before() {
        let mut s = Supervisor::new(policy());
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!s.next_crash_disables(t0 + Duration::from_secs(i)));
            s.crashed(t0 + Duration::from_secs(i));
        }
        assert!(s.next_crash_disables(t0 + Duration::from_secs(3)));
        assert!(!s.next_crash_disables(t0 + Duration::from_secs(11)), "the first crash left the window");
        assert_eq!(s.crashed(t0 + Duration::from_secs(3)), CrashDecision::Disable);
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let mut s = Supervisor::new(CrashPolicy { max_crashes: 100, ..policy() });
        let t0 = Instant::now();
        s.started(t0);
        s.crashed(t0);
        s.crashed(t0);
        s.started(t0 + Duration::from_secs(1));
        assert_eq!(s.crashed(t0 + Duration::from_secs(7)), CrashDecision::RestartAfter(Duration::from_millis(100)));
    }
}
