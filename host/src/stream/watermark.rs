//! Send-buffer watermarks of a stream, sans-IO: the buffered byte count
//! goes in, the events and whether to keep pulling come out.
//!
//! The device SDK's contract: above `warn` one `Warn` event; above `high`
//! one `High` event and pulling pauses; below `low` one `Low` event and
//! pulling resumes. Each crossing is reported exactly once: after `Warn`
//! or `High` nothing more is reported until the buffer falls below `low`,
//! which re-arms both. With all three marks zero the marks are off: no
//! event ever, pulling never pauses, and the plugin does its own control
//! from the buffer size and send status.

/// What crossing a watermark means for the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkEvent {
    /// The buffer rose above the warn mark.
    Warn,
    /// The buffer rose above the high mark: pulling pauses.
    High,
    /// The buffer fell below the low mark after a `Warn` or `High`:
    /// pulling resumes.
    Low,
}

/// The three marks, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermarks {
    /// Below this, after a `Warn` or `High`, `Low` fires and pulling
    /// resumes.
    pub low: u64,
    /// Above this `Warn` fires.
    pub warn: u64,
    /// Above this `High` fires and pulling pauses.
    pub high: u64,
}

/// Why marks were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    /// The marks must satisfy low ≤ warn ≤ high, with high above zero
    /// unless all are zero.
    #[error(
        "watermarks must satisfy low <= warn <= high and high > 0 (or all zero to turn them off); got low {low}, warn {warn}, high {high}"
    )]
    Order {
        /// The low mark given.
        low: u64,
        /// The warn mark given.
        warn: u64,
        /// The high mark given.
        high: u64,
    },
}

impl Watermarks {
    /// The marks turned off.
    pub const OFF: Self = Self { low: 0, warn: 0, high: 0 };

    /// Checked marks.
    ///
    /// # Errors
    /// [`WatermarkError::Order`] unless low ≤ warn ≤ high and high > 0, or
    /// all three are zero.
    pub fn new(low: u64, warn: u64, high: u64) -> Result<Self, WatermarkError> {
        let marks = Self { low, warn, high };
        if marks == Self::OFF || (low <= warn && warn <= high && high > 0) {
            Ok(marks)
        } else {
            Err(WatermarkError::Order { low, warn, high })
        }
    }

    /// Whether the marks are off.
    pub fn is_off(&self) -> bool {
        *self == Self::OFF
    }
}

/// Where the buffer stands relative to the marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Armed: nothing reported since the last `Low` (or the start).
    Normal,
    /// `Warn` reported.
    Warned,
    /// `High` reported; pulling paused.
    High,
}

/// The watermark state of one stream.
#[derive(Debug, Clone)]
pub struct WatermarkState {
    marks: Watermarks,
    level: Level,
}

impl WatermarkState {
    /// A stream starting with an empty buffer under `marks`.
    pub fn new(marks: Watermarks) -> Self {
        Self { marks, level: Level::Normal }
    }

    /// The marks in force.
    pub fn marks(&self) -> Watermarks {
        self.marks
    }

    /// Replaces the marks; the state is re-armed (the next crossing of the
    /// new marks is reported), and pulling resumes until the next
    /// [`WatermarkState::update`] says otherwise.
    pub fn set_marks(&mut self, marks: Watermarks) {
        self.marks = marks;
        self.level = Level::Normal;
    }

    /// Whether the host may pull more data from the plugin.
    pub fn pulling(&self) -> bool {
        self.level != Level::High
    }

    /// Feeds the buffered byte count after a change; returns the events
    /// this crossing causes, in order (a jump from below `warn` to above
    /// `high` gives `Warn` then `High`).
    pub fn update(&mut self, buffered: u64) -> Vec<WatermarkEvent> {
        let mut events = Vec::new();
        if self.marks.is_off() {
            return events;
        }
        if buffered > self.marks.warn && self.level == Level::Normal {
            self.level = Level::Warned;
            events.push(WatermarkEvent::Warn);
        }
        if buffered > self.marks.high && self.level != Level::High {
            self.level = Level::High;
            events.push(WatermarkEvent::High);
        }
        if buffered < self.marks.low && self.level != Level::Normal {
            self.level = Level::Normal;
            events.push(WatermarkEvent::Low);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::WatermarkEvent::{High, Low, Warn};
    use super::*;

    fn run(marks: Watermarks, levels: &[u64]) -> (Vec<WatermarkEvent>, Vec<bool>) {
        let mut state = WatermarkState::new(marks);
        let mut events = Vec::new();
        let mut pulling = Vec::new();
        for &level in levels {
            events.extend(state.update(level));
            pulling.push(state.pulling());
        }
        (events, pulling)
    }

    fn marks() -> Watermarks {
        Watermarks::new(100, 200, 300).expect("ordered")
    }

    #[test]
    fn each_crossing_is_reported_once_and_pulling_pauses_between_high_and_low() {
        let (events, pulling) = run(marks(), &[50, 150, 250, 260, 250, 350, 400, 250, 150, 120, 90, 80]);
        assert_eq!(events, [Warn, High, Low]);
        assert_eq!(pulling, [true, true, true, true, true, false, false, false, false, false, true, true]);
    }

    #[test]
    fn a_jump_over_both_marks_reports_warn_then_high() {
        let (events, pulling) = run(marks(), &[0, 1_000, 0]);
        assert_eq!(events, [Warn, High, Low]);
        assert_eq!(pulling, [true, false, true]);
    }

    #[test]
    fn warn_without_high_is_re_armed_by_low() {
        let (events, pulling) = run(marks(), &[250, 150, 250, 99, 250, 301]);
        assert_eq!(events, [Warn, Low, Warn, High]);
        assert!(pulling[..5].iter().all(|&p| p));
        assert!(!pulling[5]);
    }

    #[test]
    fn levels_on_the_marks_do_not_cross_them() {
        // Above means strictly above; below strictly below.
        let (events, _) = run(marks(), &[200, 300, 250, 100]);
        assert_eq!(events, [Warn]);
        let (events, pulling) = run(marks(), &[301, 100, 99]);
        assert_eq!(events, [Warn, High, Low]);
        assert_eq!(pulling, [false, false, true]);
    }

    #[test]
    fn below_low_without_a_previous_warning_reports_nothing() {
        let (events, pulling) = run(marks(), &[50, 0, 99, 10]);
        assert!(events.is_empty());
        assert!(pulling.iter().all(|&p| p));
    }

    #[test]
    fn all_zero_turns_events_and_pausing_off() {
        let (events, pulling) = run(Watermarks::OFF, &[0, 1 << 40, 5, u64::MAX]);
        assert!(events.is_empty());
        assert!(pulling.iter().all(|&p| p));
    }

    #[test]
    fn new_marks_re_arm_and_resume() {
        let mut state = WatermarkState::new(marks());
        assert_eq!(state.update(500), [Warn, High]);
        assert!(!state.pulling());
        state.set_marks(Watermarks::new(1_000, 2_000, 3_000).expect("ordered"));
        assert!(state.pulling());
        // Re-armed: no Low for a buffer that was never reported above the
        // new marks; their first crossing is.
        assert!(state.update(500).is_empty());
        assert_eq!(state.update(2_500), [Warn]);
        state.set_marks(Watermarks::OFF);
        assert!(state.update(u64::MAX).is_empty());
        assert!(state.pulling());
    }

    #[test]
    fn disordered_marks_are_refused() {
        for (low, warn, high) in [(300, 200, 100), (0, 0, 0), (10, 5, 20), (0, 30, 20), (1, 0, 0)] {
            let result = Watermarks::new(low, warn, high);
            if (low, warn, high) == (0, 0, 0) {
                assert_eq!(result, Ok(Watermarks::OFF));
            } else {
                assert!(result.is_err(), "{low} {warn} {high}");
            }
        }
        assert!(Watermarks::new(0, 0, 1).is_ok());
        assert!(Watermarks::new(5, 5, 5).is_ok());
    }
}
