//! The pull schedule of stream plugins, sans-IO: every period (10 ms in
//! the device SDK) the host pulls data from each stream whose send buffer
//! is not above its high mark. Time is passed in; the driver sleeps until
//! [`PullSchedule::poll_timeout`] and pulls what
//! [`PullSchedule::handle_timeout`] returns, all of a tick's streams in one
//! batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::watermark::{WatermarkEvent, WatermarkState, Watermarks};

/// Identifies a stream within one schedule.
pub type StreamId = u64;

/// The device SDK's pull period.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(10);

/// A stream the schedule does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown stream {0}")]
pub struct UnknownStream(pub StreamId);

#[derive(Debug)]
struct Stream {
    watermarks: WatermarkState,
    buffered: u64,
}

/// The streams of one plugin and their ticks.
#[derive(Debug)]
pub struct PullSchedule {
    period: Duration,
    next_tick: Instant,
    streams: BTreeMap<StreamId, Stream>,
}

impl PullSchedule {
    /// A schedule ticking every `period` (at least 1 ms), the first tick
    /// one period after `now`.
    pub fn new(period: Duration, now: Instant) -> Self {
        let period = period.max(Duration::from_millis(1));
        Self { period, next_tick: now + period, streams: BTreeMap::new() }
    }

    /// Adds a stream with an empty buffer under `marks`; it is pulled from
    /// the next tick on. Replaces a stream with the same id.
    pub fn add(&mut self, id: StreamId, marks: Watermarks) {
        self.streams.insert(id, Stream { watermarks: WatermarkState::new(marks), buffered: 0 });
    }

    /// Removes a stream; false when it was not there.
    pub fn remove(&mut self, id: StreamId) -> bool {
        self.streams.remove(&id).is_some()
    }

    /// Streams scheduled.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is scheduled.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Replaces a stream's marks (re-armed; see
    /// [`WatermarkState::set_marks`]) and returns the events the current
    /// buffer level causes under them.
    ///
    /// # Errors
    /// [`UnknownStream`].
    pub fn set_marks(&mut self, id: StreamId, marks: Watermarks) -> Result<Vec<WatermarkEvent>, UnknownStream> {
        let stream = self.streams.get_mut(&id).ok_or(UnknownStream(id))?;
        stream.watermarks.set_marks(marks);
        Ok(stream.watermarks.update(stream.buffered))
    }

    /// Records a stream's buffered byte count after it changed (data
    /// queued, or sent on); returns the watermark events, in order.
    ///
    /// # Errors
    /// [`UnknownStream`].
    pub fn buffered(&mut self, id: StreamId, bytes: u64) -> Result<Vec<WatermarkEvent>, UnknownStream> {
        let stream = self.streams.get_mut(&id).ok_or(UnknownStream(id))?;
        stream.buffered = bytes;
        Ok(stream.watermarks.update(bytes))
    }

    /// Whether the stream is pulled at its ticks (not paused above its
    /// high mark).
    ///
    /// # Errors
    /// [`UnknownStream`].
    pub fn is_pulling(&self, id: StreamId) -> Result<bool, UnknownStream> {
        self.streams.get(&id).map(|s| s.watermarks.pulling()).ok_or(UnknownStream(id))
    }

    /// When the next tick is due; `None` without streams.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.streams.is_empty()).then_some(self.next_tick)
    }

    /// Runs the tick due at `now`, if any: returns the streams to pull, in
    /// id order (empty before the tick, or when every stream is paused).
    /// Ticks missed by a late caller are skipped, not made up in a burst.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<StreamId> {
        if now < self.next_tick {
            return Vec::new();
        }
        let behind = now.duration_since(self.next_tick);
        let missed = (behind.as_nanos() / self.period.as_nanos()) as u32;
        self.next_tick += self.period * (missed + 1);
        self.streams.iter().filter(|(_, s)| s.watermarks.pulling()).map(|(&id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::watermark::WatermarkEvent::{High, Low, Warn};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ticks_every_period_only_with_streams() {
        let t0 = Instant::now();
        let mut schedule = PullSchedule::new(DEFAULT_PERIOD, t0);
        assert_eq!(schedule.poll_timeout(), None);
        schedule.add(1, Watermarks::OFF);
        schedule.add(2, Watermarks::OFF);
        assert_eq!(schedule.poll_timeout(), Some(t0 + 10 * MS));
        assert!(schedule.handle_timeout(t0 + 9 * MS).is_empty());
        assert_eq!(schedule.handle_timeout(t0 + 10 * MS), [1, 2]);
        assert_eq!(schedule.poll_timeout(), Some(t0 + 20 * MS));
        assert!(schedule.handle_timeout(t0 + 15 * MS).is_empty(), "one pull per tick");
        assert!(schedule.remove(1));
        assert!(!schedule.remove(1));
        assert_eq!(schedule.handle_timeout(t0 + 20 * MS), [2]);
        assert!(schedule.remove(2));
        assert_eq!(schedule.poll_timeout(), None);
    }

    #[test]
    fn a_late_caller_skips_missed_ticks() {
        let t0 = Instant::now();
        let mut schedule = PullSchedule::new(DEFAULT_PERIOD, t0);
        schedule.add(7, Watermarks::OFF);
        assert_eq!(schedule.handle_timeout(t0 + 55 * MS), [7]);
        assert_eq!(schedule.poll_timeout(), Some(t0 + 60 * MS));
        assert!(schedule.handle_timeout(t0 + 59 * MS).is_empty());
    }

    #[test]
    fn streams_above_their_high_mark_are_not_pulled_until_below_low() {
        let t0 = Instant::now();
        let mut schedule = PullSchedule::new(DEFAULT_PERIOD, t0);
        let marks = Watermarks::new(1_000, 4_000, 8_000).expect("ordered");
        schedule.add(1, marks);
        schedule.add(2, marks);
        assert_eq!(schedule.buffered(1, 9_000), Ok(vec![Warn, High]));
        assert_eq!(schedule.is_pulling(1), Ok(false));
        assert_eq!(schedule.handle_timeout(t0 + 10 * MS), [2]);
        assert_eq!(schedule.buffered(1, 2_000), Ok(vec![]));
        assert_eq!(schedule.handle_timeout(t0 + 20 * MS), [2]);
        assert_eq!(schedule.buffered(1, 500), Ok(vec![Low]));
        assert_eq!(schedule.handle_timeout(t0 + 30 * MS), [1, 2]);
    }

    #[test]
    fn new_marks_apply_to_the_current_buffer() {
        let t0 = Instant::now();
        let mut schedule = PullSchedule::new(DEFAULT_PERIOD, t0);
        schedule.add(1, Watermarks::OFF);
        assert_eq!(schedule.buffered(1, 50_000), Ok(vec![]));
        let marks = Watermarks::new(1_000, 4_000, 8_000).expect("ordered");
        assert_eq!(schedule.set_marks(1, marks), Ok(vec![Warn, High]));
        assert!(schedule.handle_timeout(t0 + 10 * MS).is_empty());
        assert_eq!(schedule.set_marks(9, marks), Err(UnknownStream(9)));
        assert_eq!(schedule.buffered(9, 1), Err(UnknownStream(9)));
    }
}
