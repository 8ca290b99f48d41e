//! The UDP transport: a connection's messages as QUIC DATAGRAM frames
//! (RFC 9221) on the link between the two nodes, unreliable and
//! unordered, encrypted like everything on the link.
//!
//! The connection itself is made as every connection is, with a
//! bidirectional stream that carries the handshake and, later, the close;
//! only its messages leave as datagrams. Every datagram starts with the
//! connection's tag, the id of that stream on the link (a QUIC variable-
//! length integer), then a 32-bit sequence number, then the message: the
//! link's datagram reader hands it to the connection the tag names, and
//! the receiver counts the sequence numbers that never came as lost.
//!
//! The tag is routed before the handshake's answer can arrive (the
//! caller reserves it when it opens the stream, the answering side before
//! it accepts), so datagrams that overtake the answer wait, a few at most,
//! until the connection exists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes, BytesMut};

use super::conn::ConnShared;

/// Bytes of the sequence number after the tag.
const SEQUENCE_BYTES: usize = 4;

/// Datagrams kept for a reserved tag until its connection exists.
const EARLY_DATAGRAMS: usize = 64;

/// The most bytes of datagrams a link holds that are not sent yet (quinn
/// drops the oldest beyond it, or `send_when_ready` waits): quinn's default
/// is 1 MiB, which on a path carrying 1 Mbit/s holds datagrams 8 s old,
/// against the point of a transport whose messages should rather be
/// dropped than late. 64 KiB is half a second at 1 Mbit/s and 5 ms at
/// 100 Mbit/s.
pub const LINK_DATAGRAM_SEND_BUFFER: usize = 64 << 10;

/// Encodes `value` as a QUIC variable-length integer (RFC 9000 section
/// 16) into `out`; values of 2⁶² and above, which no stream id reaches,
/// are cut to 62 bits.
fn put_varint(out: &mut impl BufMut, value: u64) {
    let value = value & ((1 << 62) - 1);
    if value < 1 << 6 {
        out.put_u8(value as u8);
    } else if value < 1 << 14 {
        out.put_u16(0x4000 | value as u16);
    } else if value < 1 << 30 {
        out.put_u32(0x8000_0000 | value as u32);
    } else {
        out.put_u64(0xC000_0000_0000_0000 | value);
    }
}

/// Decodes a QUIC variable-length integer at the start of `data`: the
/// value and its length, or `None` when `data` is too short.
fn get_varint(data: &[u8]) -> Option<(u64, usize)> {
    let first = *data.first()?;
    let len = 1usize << (first >> 6);
    let bytes = data.get(..len)?;
    let mut value = u64::from(first & 0x3F);
    for byte in &bytes[1..] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

/// Length of the tag `tag` as a variable-length integer.
fn varint_len(tag: u64) -> usize {
    match tag {
        0..0x40 => 1,
        0x40..0x4000 => 2,
        0x4000..0x4000_0000 => 4,
        _ => 8,
    }
}

/// A datagram split into its parts.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    tag: u64,
    sequence: u32,
    payload: Bytes,
}

fn parse(datagram: Bytes) -> Option<Parsed> {
    let (tag, len) = get_varint(&datagram)?;
    let sequence = datagram.get(len..len + SEQUENCE_BYTES)?;
    let sequence = u32::from_be_bytes([sequence[0], sequence[1], sequence[2], sequence[3]]);
    Some(Parsed { tag, sequence, payload: datagram.slice(len + SEQUENCE_BYTES..) })
}

/// The datagram side of one connection: its tag, the next sequence
/// number it sends, and what it knows of the ones it received.
#[derive(Debug)]
pub(crate) struct DatagramPath {
    tag: u64,
    next_sent: AtomicU32,
    /// The sequence number expected next (the highest seen plus one);
    /// meaningful once `received` is not zero.
    expected: AtomicU32,
    received: AtomicU64,
    lost: AtomicU64,
}

impl DatagramPath {
    /// The datagram side of the connection on the stream `tag`.
    pub(crate) fn new(tag: u64) -> Self {
        Self {
            tag,
            next_sent: AtomicU32::new(0),
            expected: AtomicU32::new(0),
            received: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Bytes each datagram carries before the message.
    pub(crate) fn overhead(&self) -> usize {
        varint_len(self.tag) + SEQUENCE_BYTES
    }

    /// The largest message that fits in one datagram on a path that
    /// carries datagrams of `max_datagram` bytes.
    pub(crate) fn max_payload(&self, max_datagram: usize) -> usize {
        max_datagram.saturating_sub(self.overhead())
    }

    /// `payload` as the next datagram of this connection.
    pub(crate) fn encode(&self, payload: &[u8]) -> Bytes {
        let sequence = self.next_sent.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::with_capacity(self.overhead() + payload.len());
        put_varint(&mut out, self.tag);
        out.put_u32(sequence);
        out.put_slice(payload);
        out.freeze()
    }

    /// Accounts for the arrival of `sequence`: the numbers it skipped
    /// count as lost, a late one that fills such a gap is taken off again.
    /// Only the link's datagram reader calls this, one datagram at a time.
    pub(crate) fn arrived(&self, sequence: u32) {
        let first = self.received.fetch_add(1, Ordering::Relaxed) == 0;
        let expected = self.expected.load(Ordering::Relaxed);
        // Wrapping distance: ahead by less than 2³¹ is new, else late.
        let ahead = sequence.wrapping_sub(expected);
        if first {
            self.lost.fetch_add(u64::from(sequence), Ordering::Relaxed);
            self.expected.store(sequence.wrapping_add(1), Ordering::Relaxed);
        } else if ahead < 1 << 31 {
            self.lost.fetch_add(u64::from(ahead), Ordering::Relaxed);
            self.expected.store(sequence.wrapping_add(1), Ordering::Relaxed);
        } else {
            // Reordered (or repeated): it was counted lost when skipped.
            let _ = self.lost.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Counts a datagram that arrived but could not be handed to the
    /// owner (its queue was full): lost to the application all the same.
    pub(crate) fn dropped(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams that the peer sent and the application did not get: never
    /// arrived, or arrived while the owner's queue was full.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Where a tag's datagrams go.
enum Slot {
    /// Reserved by a handshake in progress: the datagrams (sequence
    /// number, message) that overtook it.
    Early(Vec<(u32, Bytes)>),
    /// The connection.
    Ready(Weak<ConnShared>),
}

/// The datagram routes of one link: which connection each tag names.
#[derive(Default)]
pub(crate) struct DatagramRoutes {
    slots: Mutex<HashMap<u64, Slot>>,
}

impl std::fmt::Debug for DatagramRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramRoutes").field("tags", &self.lock().len()).finish()
    }
}

impl DatagramRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `tag` for a connection being made: its datagrams are kept
    /// (a few) until [`Reservation::ready`]; dropping the reservation
    /// first frees the tag.
    pub(crate) fn reserve(self: &Arc<Self>, tag: u64) -> Reservation {
        let mut slots = self.lock();
        // Ended connections leave their slot behind: sweep them as the
        // table doubles, so a long-lived link's table does not grow.
        if slots.len() >= 64 && slots.len().is_power_of_two() {
            slots.retain(|_, slot| match slot {
                Slot::Ready(weak) => weak.strong_count() > 0,
                Slot::Early(_) => true,
            });
        }
        slots.insert(tag, Slot::Early(Vec::new()));
        drop(slots);
        Reservation { routes: self.clone(), tag, done: false }
    }

    /// Hands one datagram read from the link to its connection. Datagrams
    /// too short to carry a tag and a sequence number, or naming no
    /// connection, are dropped.
    pub(crate) fn deliver(&self, datagram: Bytes) {
        let Some(parsed) = parse(datagram) else {
            tracing::trace!("datagram without a tag and sequence number dropped");
            return;
        };
        let shared = {
            let mut slots = self.lock();
            match slots.get_mut(&parsed.tag) {
                Some(Slot::Ready(weak)) => match weak.upgrade() {
                    Some(shared) => shared,
                    None => {
                        slots.remove(&parsed.tag);
                        return;
                    }
                },
                Some(Slot::Early(early)) => {
                    if early.len() < EARLY_DATAGRAMS {
                        early.push((parsed.sequence, parsed.payload));
                    }
                    return;
                }
                None => return,
            }
        };
        shared.deliver_datagram(parsed.sequence, parsed.payload);
    }
}

/// A tag reserved on a link for a connection being made.
pub(crate) struct Reservation {
    routes: Arc<DatagramRoutes>,
    tag: u64,
    done: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("tag", &self.tag).finish()
    }
}

impl Reservation {
    /// The reserved tag.
    pub(crate) fn tag(&self) -> u64 {
        self.tag
    }

    /// Routes the tag to `shared` from now on, and hands it the datagrams
    /// that came before.
    pub(crate) fn ready(mut self, shared: &Arc<ConnShared>) {
        self.done = true;
        let early = self.routes.lock().insert(self.tag, Slot::Ready(Arc::downgrade(shared)));
        if let Some(Slot::Early(early)) = early {
            for (sequence, payload) in early {
                shared.deliver_datagram(sequence, payload);
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.routes.lock().remove(&self.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for value in [0u64, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(get_varint(&out), Some((value, out.len())), "{value}");
        }
        assert_eq!(get_varint(&[0x40]), None);
        assert_eq!(get_varint(&[]), None);
    }

    #[test]
    fn a_datagram_carries_tag_sequence_and_payload() {
        let path = DatagramPath::new(4_000);
        let first = path.encode(b"one");
        let second = path.encode(b"");
        assert_eq!(first.len(), path.overhead() + 3);
        assert_eq!(parse(first), Some(Parsed { tag: 4_000, sequence: 0, payload: Bytes::from_static(b"one") }));
        assert_eq!(parse(second), Some(Parsed { tag: 4_000, sequence: 1, payload: Bytes::new() }));
        // Too short for the sequence number.
        assert_eq!(parse(Bytes::from_static(&[0x04, 0, 0])), None);
        assert_eq!(path.max_payload(1_200), 1_200 - 2 - 4);
        assert_eq!(path.max_payload(3), 0);
    }

    #[test]
    fn skipped_sequence_numbers_count_as_lost_until_they_come_late() {
        let path = DatagramPath::new(0);
        for sequence in [0, 1, 4, 5] {
            path.arrived(sequence);
        }
        assert_eq!(path.lost(), 2);
        path.arrived(2);
        assert_eq!(path.lost(), 1);
        // The first one seen counts those before it.
        let late_start = DatagramPath::new(0);
        late_start.arrived(3);
        assert_eq!(late_start.lost(), 3);
        // Across the wrap of the 32-bit counter.
        let wrapping = DatagramPath::new(0);
        wrapping.arrived(u32::MAX - 1);
        wrapping.arrived(1);
        assert_eq!(wrapping.lost(), u64::from(u32::MAX - 1) + 2);
        wrapping.dropped();
        assert_eq!(wrapping.lost(), u64::from(u32::MAX - 1) + 3);
    }
}
