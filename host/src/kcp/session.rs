//! One KCP session as a sans-IO state machine: messages in, sealed
//! datagrams out, datagrams in, messages out, with the time passed in.
//!
//! KCP runs in stream mode and carries the same frames as a QUIC stream
//! (a 5-byte header and the payload per message), so a message may be as
//! large as the node allows and its boundaries hold. KCP is tuned for
//! latency as it is meant to be used on lossy links: no delay on
//! acknowledgements, a 10 ms internal clock, a resend after two
//! duplicate acknowledgements, and no congestion window (the send and
//! receive windows of [`WINDOW`] packets bound what is in flight).
//!
//! The session asks to be woken only while it has unacknowledged data:
//! an idle session needs no timer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fogconnect_proto::wire::{Decoder, Frame, data_header};
use kcp::Kcp;

use super::envelope::{Envelope, OVERHEAD, Rejected};

/// Largest sealed datagram: QUIC's minimum path size, so a KCP session
/// goes wherever its link goes (a relay adds its 4-byte ChannelData
/// header on top, as it does for QUIC).
pub const MAX_DATAGRAM: usize = 1200;
/// KCP's send and receive windows, in packets.
pub const WINDOW: u16 = 256;
/// KCP's internal clock.
const INTERVAL_MS: i32 = 10;
/// Duplicate acknowledgements that resend a packet at once.
const FAST_RESEND: i32 = 2;

/// KCP's output: the packets it wrote, in order, until the session seals
/// them. (The `kcp` crate writes through `io::Write` and offers no way
/// back to its writer, hence the shared queue.)
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<VecDeque<Vec<u8>>>>);

impl Outbox {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

impl std::io::Write for Outbox {
    fn write(&mut self, packet: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(packet.to_vec());
        Ok(packet.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Datagrams a session dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KcpDrops {
    /// The tag did not verify: forged, corrupted, or another session's.
    pub forged: u64,
    /// Seen already, or too old for the replay window.
    pub replayed: u64,
    /// Not a KCP datagram, or authentic but refused by KCP.
    pub malformed: u64,
}

/// Why a session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KcpError {
    /// The keying material had the wrong length.
    #[error("KCP keying material must be {0} bytes")]
    Keys(usize),
    /// The peer sent what the framing does not allow.
    #[error("KCP stream: {0}")]
    Protocol(String),
    /// KCP's core refused a message or a step of its clock.
    #[error("KCP send: {0}")]
    Send(String),
}

/// One KCP session.
pub struct KcpSession {
    kcp: Kcp<Outbox>,
    outbox: Outbox,
    envelope: Envelope,
    epoch: Instant,
    decoder: Decoder,
    received: VecDeque<Frame>,
    drops: KcpDrops,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for KcpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpSession").field("envelope", &self.envelope).field("drops", &self.drops).finish()
    }
}

impl KcpSession {
    /// Session `conversation` sealed with `material` (see
    /// [`Envelope::new`]); messages up to `max_message_size`.
    pub fn new(
        conversation: u32,
        material: &[u8],
        dialler: bool,
        max_message_size: usize,
        now: Instant,
    ) -> Result<Self, KcpError> {
        let envelope = Envelope::new(conversation, material, dialler)
            .ok_or(KcpError::Keys(super::envelope::KEYING_MATERIAL_LEN))?;
        let outbox = Outbox::default();
        let mut kcp = Kcp::new_stream(conversation, outbox.clone());
        kcp.set_mtu(MAX_DATAGRAM - OVERHEAD).map_err(|e| KcpError::Send(e.to_string()))?;
        kcp.set_nodelay(true, INTERVAL_MS, FAST_RESEND, true);
        kcp.set_wndsize(WINDOW, WINDOW);
        kcp.update(0).map_err(|e| KcpError::Send(e.to_string()))?;
        let scratch = vec![0; kcp.mss()];
        Ok(Self {
            kcp,
            outbox,
            envelope,
            epoch: now,
            decoder: Decoder::new(max_message_size),
            received: VecDeque::new(),
            drops: KcpDrops::default(),
            scratch,
        })
    }

    /// KCP's clock: milliseconds since the session started (wraps after
    /// 49 days, which KCP's arithmetic allows for).
    fn clock(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Queues one message; it leaves at once as far as the window allows.
    pub fn send(&mut self, payload: &[u8], now: Instant) -> Result<(), KcpError> {
        self.send_frame(&data_header(payload.len()), payload, now)
    }

    /// Queues a control frame (the close) behind the messages.
    pub fn send_control(&mut self, frame: &Frame, now: Instant) -> Result<(), KcpError> {
        self.send_frame(&[], &frame.encode(), now)
    }

    fn send_frame(&mut self, header: &[u8], body: &[u8], now: Instant) -> Result<(), KcpError> {
        for part in [header, body] {
            if !part.is_empty() {
                self.kcp.send(part).map_err(|e| KcpError::Send(e.to_string()))?;
            }
        }
        self.kcp.update(self.clock(now)).map_err(|e| KcpError::Send(e.to_string()))?;
        self.kcp.flush().map_err(|e| KcpError::Send(e.to_string()))
    }

    /// Takes one datagram the socket received for this session: dropped
    /// (and counted) unless authentic, new and well-formed; otherwise its
    /// messages become available from [`KcpSession::poll_frame`] and its
    /// acknowledgements leave at once.
    ///
    /// # Errors
    /// The peer's stream broke the framing: the session cannot go on.
    pub fn handle_datagram(&mut self, datagram: &mut [u8], now: Instant) -> Result<(), KcpError> {
        self.kcp.update(self.clock(now)).map_err(|e| KcpError::Send(e.to_string()))?;
        let accepted = match self.envelope.open(datagram) {
            // The length check is KCP's own (shorter input is refused,
            // never read). An authentic peer may still send anything: a
            // panic of KCP's core on it ends this session, not the node.
            Ok(packet) => {
                let kcp = &mut self.kcp;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kcp.input(packet))) {
                    Ok(result) => result.map(drop).map_err(|_| Rejected::Refused),
                    Err(_) => return Err(KcpError::Protocol("KCP's core failed on the peer's packet".into())),
                }
            }
            Err(rejected) => Err(rejected),
        };
        match accepted {
            Ok(()) => {}
            Err(Rejected::Forged) => self.drops.forged += 1,
            Err(Rejected::Replayed) => self.drops.replayed += 1,
            Err(Rejected::Malformed | Rejected::Refused) => self.drops.malformed += 1,
        }
        self.kcp.flush().map_err(|e| KcpError::Send(e.to_string()))?;
        // Stream mode hands out a segment at a time; a peer's fragment
        // flags may join up to a receive window's worth.
        while let Ok(size) = self.kcp.peeksize() {
            if size > self.scratch.len() {
                self.scratch.resize(size, 0);
            }
            let (kcp, scratch) = (&mut self.kcp, &mut self.scratch);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kcp.recv(scratch))) {
                Ok(Ok(n)) => self.decoder.push(&self.scratch[..n]),
                Ok(Err(_)) => break,
                Err(_) => return Err(KcpError::Protocol("KCP's core failed reading the peer's data".into())),
            }
        }
        while let Some(frame) = self.decoder.next_frame().map_err(|e| KcpError::Protocol(e.to_string()))? {
            self.received.push_back(frame);
        }
        Ok(())
    }

    /// The next frame received (a message, or the peer's close).
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.received.pop_front()
    }

    /// The next sealed datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let packet = self.outbox.take()?;
        Some(self.envelope.seal(&packet))
    }

    /// When [`KcpSession::handle_timeout`] must run next: only while data
    /// is unacknowledged (an idle session needs no timer).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.kcp.wait_snd() == 0 {
            return None;
        }
        let clock = self.clock(now);
        Some(now + Duration::from_millis(u64::from(self.kcp.check(clock))))
    }

    /// Resends what is due.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), KcpError> {
        self.kcp.update(self.clock(now)).map_err(|e| KcpError::Send(e.to_string()))
    }

    /// Packets sent and not yet acknowledged, or not yet sent.
    pub fn unacknowledged(&self) -> usize {
        self.kcp.wait_snd()
    }

    /// Datagrams dropped so far.
    pub fn drops(&self) -> KcpDrops {
        self.drops
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const MATERIAL: [u8; super::super::envelope::KEYING_MATERIAL_LEN] =
        [9; super::super::envelope::KEYING_MATERIAL_LEN];

    /// A tiny deterministic generator for the simulated losses.
    struct Lcg(u64);

    impl Lcg {
        fn percent(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % 100
        }
    }

    /// Two sessions joined by a path that drops `loss` percent of the
    /// datagrams each way and delays each by `delay`.
    struct Path {
        a: KcpSession,
        b: KcpSession,
        now: Instant,
        delay: Duration,
        loss: u64,
        random: Lcg,
        /// (arrival, to b?, datagram)
        in_flight: Vec<(Instant, bool, Vec<u8>)>,
        sent: u64,
    }

    impl Path {
        fn new(loss: u64) -> Self {
            let now = Instant::now();
            Self {
                a: KcpSession::new(42, &MATERIAL, true, 1 << 20, now).expect("a"),
                b: KcpSession::new(42, &MATERIAL, false, 1 << 20, now).expect("b"),
                now,
                delay: Duration::from_millis(20),
                loss,
                random: Lcg(7),
                in_flight: Vec::new(),
                sent: 0,
            }
        }

        fn collect(&mut self) {
            for (to_b, session) in [(true, &mut self.a), (false, &mut self.b)] {
                while let Some(datagram) = session.poll_transmit() {
                    self.sent += 1;
                    if self.random.percent() >= self.loss {
                        self.in_flight.push((self.now + self.delay, to_b, datagram));
                    }
                }
            }
        }

        /// Runs until nothing is in flight or unacknowledged, at most
        /// `limit` of simulated time; returns the frames b received.
        fn run(&mut self, limit: Duration) -> Vec<Frame> {
            let end = self.now + limit;
            let mut frames = Vec::new();
            loop {
                self.collect();
                let next_arrival = self.in_flight.iter().map(|(at, ..)| *at).min();
                let next_timer =
                    [self.a.poll_timeout(self.now), self.b.poll_timeout(self.now)].into_iter().flatten().min();
                let Some(next) = [next_arrival, next_timer].into_iter().flatten().min() else { break };
                if next > end {
                    break;
                }
                self.now = self.now.max(next);
                let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(at, ..)| *at <= self.now);
                self.in_flight = later;
                for (_, to_b, mut datagram) in due {
                    let session = if to_b { &mut self.b } else { &mut self.a };
                    session.handle_datagram(&mut datagram, self.now).expect("framing");
                }
                self.a.handle_timeout(self.now).expect("a");
                self.b.handle_timeout(self.now).expect("b");
                while let Some(frame) = self.b.poll_frame() {
                    frames.push(frame);
                }
            }
            frames
        }
    }

    fn numbered(i: usize) -> Vec<u8> {
        let mut message = format!("message #{i} ").into_bytes();
        message.resize(40 + i % 3_000, b'k');
        message
    }

    #[test]
    fn messages_arrive_whole_and_in_order_at_ten_percent_loss() {
        let mut path = Path::new(10);
        let count = 2_000;
        let mut messages = Vec::new();
        for i in 0..count {
            path.a.send(&numbered(i), path.now).expect("send");
            if i % 50 == 49 {
                messages.extend(path.run(Duration::from_millis(1)));
            }
        }
        messages.extend(path.run(Duration::from_secs(120)));
        assert_eq!(messages.len(), count);
        for (i, frame) in messages.iter().enumerate() {
            assert_eq!(frame, &Frame::Data(Bytes::from(numbered(i))), "message {i}");
        }
        // All acknowledged: no timer left, on either side.
        assert_eq!(path.a.unacknowledged(), 0);
        assert_eq!((path.a.poll_timeout(path.now), path.b.poll_timeout(path.now)), (None, None));
        assert_eq!(path.b.drops(), KcpDrops::default());
    }

    #[test]
    fn forged_replayed_and_corrupted_datagrams_are_dropped_and_counted() {
        let mut path = Path::new(0);
        path.a.send(b"first", path.now).expect("send");
        let first = path.a.poll_transmit().expect("a datagram");
        path.a.send(b"second", path.now).expect("send");
        let second = path.a.poll_transmit().expect("a datagram");
        let now = path.now;
        path.b.handle_datagram(&mut first.clone(), now).expect("first");
        path.b.handle_datagram(&mut first.clone(), now).expect("replayed");
        // A forgery or a corruption does not burn the number it carries.
        let mut flipped = second.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 0x10;
        path.b.handle_datagram(&mut flipped, now).expect("corrupted");
        let mut forged = second.clone();
        forged[13..].fill(0xAB);
        path.b.handle_datagram(&mut forged, now).expect("forged");
        path.b.handle_datagram(&mut [0x80, 0, 0], now).expect("short");
        assert_eq!(path.b.drops(), KcpDrops { forged: 2, replayed: 1, malformed: 1 });
        path.b.handle_datagram(&mut second.clone(), now).expect("second");
        // Each authentic datagram gave its message once; the session
        // carries on.
        let frames: Vec<Frame> = std::iter::from_fn(|| path.b.poll_frame()).collect();
        let expected = [Frame::Data(Bytes::from_static(b"first")), Frame::Data(Bytes::from_static(b"second"))];
        assert_eq!(frames, expected);
        path.a.send(b"third", path.now).expect("send");
        let frames = path.run(Duration::from_secs(5));
        assert_eq!(frames, [Frame::Data(Bytes::from_static(b"third"))]);
        assert_eq!(path.b.drops(), KcpDrops { forged: 2, replayed: 1, malformed: 1 });
    }

    #[test]
    fn a_close_frame_follows_the_messages_sent_before_it() {
        let mut path = Path::new(20);
        for i in 0..100 {
            path.a.send(&numbered(i), path.now).expect("send");
        }
        let close = Frame::Close { code: fogconnect_proto::wire::CloseCode::Normal, message: "done".into() };
        path.a.send_control(&close, path.now).expect("close");
        let frames = path.run(Duration::from_secs(60));
        assert_eq!(frames.len(), 101);
        for (i, frame) in frames[..100].iter().enumerate() {
            assert_eq!(frame, &Frame::Data(Bytes::from(numbered(i))), "message {i}");
        }
        assert_eq!(frames.last(), Some(&close));
    }
}
