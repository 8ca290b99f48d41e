//! Whether a link still hears from its peer: the sans-IO core that turns
//! the link's counters, sampled now and then, into
//! [`NetworkEvent::LinkSilent`] and [`NetworkEvent::LinkRecovered`].
//!
//! A link is silent when nothing arrived for a while although this side
//! sent something the peer must answer (data, a keep-alive ping): a NAT
//! that dropped its mapping, a network that changed, a peer that died. A
//! side that only acknowledges, or a link idle both ways, is not silent.

use std::time::{Duration, Instant};

use crate::events::NetworkEvent;

/// The shortest silence reported on links that wait long enough for a
/// silent peer: below it, a late acknowledgement or a short loss burst
/// would be taken for a broken path.
pub const MIN_SILENCE: Duration = Duration::from_secs(1);

/// The shortest silence reported on a link that gives a silent peer up
/// after `idle_timeout`: [`MIN_SILENCE`], or a third of the timeout when
/// that is shorter (at least 100 ms), so silence is reported before the end.
pub fn min_silence(idle_timeout: Duration) -> Duration {
    MIN_SILENCE.min(idle_timeout / 3).max(Duration::from_millis(100))
}

/// Round trips without an answer that count as silence on slow paths.
const SILENT_ROUND_TRIPS: u32 = 4;

/// The silence detector of one link.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Datagrams received, at the last sample that saw it change.
    received: u64,
    /// Answer-eliciting frames sent, at that sample.
    asked_then: u64,
    /// When that sample was taken.
    heard_at: Instant,
    /// Whether silence was reported and not yet recovered.
    silent: bool,
    /// The shortest silence reported.
    floor: Duration,
}

impl Liveness {
    /// Starts with the link's counters at `now`; silence shorter than
    /// `floor` (see [`min_silence`]) is never reported.
    pub fn new(now: Instant, received: u64, asked: u64, floor: Duration) -> Self {
        Self { received, asked_then: asked, heard_at: now, silent: false, floor }
    }

    /// Whether the link is silent now.
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// Takes a sample: `received` datagrams received so far, `asked`
    /// answer-eliciting frames sent so far, the path's smoothed `rtt`.
    /// Returns the change it shows, if any.
    pub fn observe(&mut self, now: Instant, received: u64, asked: u64, rtt: Duration) -> Option<NetworkEvent> {
        if received != self.received {
            let silent_for = now.saturating_duration_since(self.heard_at);
            (self.received, self.asked_then, self.heard_at) = (received, asked, now);
            return std::mem::take(&mut self.silent).then_some(NetworkEvent::LinkRecovered { silent_for });
        }
        let quiet = now.saturating_duration_since(self.heard_at);
        if !self.silent && asked > self.asked_then && quiet >= silence_threshold(rtt, self.floor) {
            self.silent = true;
            return Some(NetworkEvent::LinkSilent { after: quiet });
        }
        None
    }
}

/// How long nothing may arrive before a link is silent, for a path with
/// smoothed round-trip time `rtt` and the shortest silence `floor`.
pub fn silence_threshold(rtt: Duration, floor: Duration) -> Duration {
    floor.max(rtt.saturating_mul(SILENT_ROUND_TRIPS))
}

/// Frames of `stats` the peer answers (everything but acknowledgements
/// and padding), as a count to compare between samples.
pub fn answer_eliciting(stats: &quinn::FrameStats) -> u64 {
    stats.stream
        + stats.ping
        + stats.crypto
        + stats.datagram
        + stats.max_data
        + stats.max_stream_data
        + stats.max_streams_bidi
        + stats.max_streams_uni
        + stats.data_blocked
        + stats.stream_data_blocked
        + stats.streams_blocked_bidi
        + stats.streams_blocked_uni
        + stats.path_challenge
        + stats.path_response
        + stats.reset_stream
        + stats.stop_sending
        + stats.new_connection_id
        + stats.retire_connection_id
        + stats.new_token
        + stats.immediate_ack
        + stats.ack_frequency
        + u64::from(stats.handshake_done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn silence_needs_an_unanswered_question_and_ends_with_the_next_datagram() {
        let start = Instant::now();
        let mut link = Liveness::new(start, 10, 5, MIN_SILENCE);
        // Idle both ways: never silent.
        assert_eq!(link.observe(start + ms(5_000), 10, 5, RTT), None);
        // A keep-alive went out at 5 s; no answer yet at 5.5 s: quiet for
        // 5.5 s since the last datagram, and a question is open.
        assert_eq!(link.observe(start + ms(5_500), 10, 6, RTT), Some(NetworkEvent::LinkSilent { after: ms(5_500) }));
        assert!(link.is_silent());
        // Reported once.
        assert_eq!(link.observe(start + ms(6_000), 10, 9, RTT), None);
        assert_eq!(
            link.observe(start + ms(7_000), 11, 9, RTT),
            Some(NetworkEvent::LinkRecovered { silent_for: ms(7_000) })
        );
        assert!(!link.is_silent());
    }

    #[test]
    fn busy_links_are_silent_after_the_threshold_only() {
        let start = Instant::now();
        let mut link = Liveness::new(start, 0, 0, MIN_SILENCE);
        let mut now = start;
        // Traffic both ways every 100 ms.
        for i in 1..=10 {
            now = start + ms(100 * i);
            assert_eq!(link.observe(now, i, i, RTT), None);
        }
        // Then only this side sends.
        assert_eq!(link.observe(now + ms(900), 10, 20, RTT), None);
        assert_eq!(link.observe(now + ms(1_000), 10, 21, RTT), Some(NetworkEvent::LinkSilent { after: ms(1_000) }));
    }

    #[test]
    fn acknowledging_only_is_not_a_question() {
        let start = Instant::now();
        let mut link = Liveness::new(start, 0, 0, MIN_SILENCE);
        // The peer sent once; this side answered with acks only (no
        // answer-eliciting frame): quiet for a minute, not silent.
        assert_eq!(link.observe(start + ms(100), 1, 0, RTT), None);
        assert_eq!(link.observe(start + ms(60_000), 1, 0, RTT), None);
    }

    #[test]
    fn slow_paths_wait_four_round_trips() {
        assert_eq!(silence_threshold(ms(10), MIN_SILENCE), MIN_SILENCE);
        assert_eq!(silence_threshold(ms(600), MIN_SILENCE), ms(2_400));
        // Links that give a silent peer up quickly report silence sooner.
        assert_eq!(min_silence(Duration::from_secs(30)), MIN_SILENCE);
        assert_eq!(min_silence(ms(900)), ms(300));
        assert_eq!(min_silence(ms(60)), ms(100));
        let start = Instant::now();
        let mut link = Liveness::new(start, 0, 0, MIN_SILENCE);
        assert_eq!(link.observe(start + ms(2_000), 0, 1, ms(600)), None);
        assert!(matches!(link.observe(start + ms(2_400), 0, 1, ms(600)), Some(NetworkEvent::LinkSilent { .. })));
    }
}
