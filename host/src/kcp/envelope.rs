//! The envelope of every KCP datagram: KCP has no security of its own, so
//! each datagram it sends is sealed with ChaCha20-Poly1305 under keys both
//! nodes export from the TLS session of the QUIC link between them (bound
//! to the pinned node identities that link verified), numbered, and
//! checked against a replay window when opened.
//!
//! ```text
//! byte 0      FIRST_BYTE (128..=191 is free on the node's socket: no RTP)
//! bytes 1..5  conversation id, big endian (names the session on the socket)
//! bytes 5..13 packet number, big endian (the nonce; never repeats per key)
//! then        ciphertext of the KCP packet, then the 16-byte tag
//! ```
//!
//! The 13 header bytes are authenticated too. A datagram whose tag does
//! not verify (forged, corrupted, or for a session this one is not), or
//! whose number was seen or is too old, is dropped and counted.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// First byte of every KCP datagram.
pub const FIRST_BYTE: u8 = 0x80;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes of the authentication tag after it.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its KCP packet.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Bytes of keying material a session needs: a key and an IV per
/// direction.
pub const KEYING_MATERIAL_LEN: usize = 2 * (KEY_LEN + NONCE_LEN);
const KEY_LEN: usize = 32;

/// Packet numbers tracked behind the highest one seen.
const REPLAY_WINDOW: u64 = 1024;

/// Why an incoming datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Too short for the header and tag, or not a KCP datagram.
    #[error("not a KCP datagram")]
    Malformed,
    /// The tag did not verify: forged, corrupted, or another session's.
    #[error("authentication failed")]
    Forged,
    /// The packet number was seen already or is behind the window.
    #[error("replayed")]
    Replayed,
    /// Authentic, but KCP refused its contents.
    #[error("KCP refused the packet")]
    Refused,
}

/// The conversation id a datagram names, if it is a KCP datagram at all.
pub fn conversation_of(datagram: &[u8]) -> Option<u32> {
    match datagram {
        [FIRST_BYTE, a, b, c, d, ..] if datagram.len() >= OVERHEAD => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// One direction's key and IV.
struct Direction {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
}

impl Direction {
    fn new(material: &[u8]) -> Option<Self> {
        let (key, iv) = material.split_at(KEY_LEN);
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
        Some(Self { key, iv: iv.try_into().ok()? })
    }

    /// The nonce of `number`: the IV with the number in its last 8 bytes
    /// (RFC 9001's construction).
    fn nonce(&self, number: u64) -> Nonce {
        let mut nonce = self.iv;
        for (byte, n) in nonce[NONCE_LEN - 8..].iter_mut().zip(number.to_be_bytes()) {
            *byte ^= n;
        }
        Nonce::assume_unique_for_key(nonce)
    }
}

/// Seals this side's datagrams and opens the peer's, for one session.
pub struct Envelope {
    conversation: u32,
    seal: Direction,
    open: Direction,
    next_number: u64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope").field("conversation", &self.conversation).finish_non_exhaustive()
    }
}

impl Envelope {
    /// The envelope of session `conversation` from keying material both
    /// sides exported alike; the side that opened the connection
    /// (`dialler`) seals with the first half, the other with the second.
    /// `None` when the material is not [`KEYING_MATERIAL_LEN`] bytes.
    pub fn new(conversation: u32, material: &[u8], dialler: bool) -> Option<Self> {
        if material.len() != KEYING_MATERIAL_LEN {
            return None;
        }
        let (first, second) = material.split_at(KEYING_MATERIAL_LEN / 2);
        let (seal, open) = if dialler { (first, second) } else { (second, first) };
        Some(Self {
            conversation,
            seal: Direction::new(seal)?,
            open: Direction::new(open)?,
            next_number: 0,
            replay: ReplayWindow::default(),
        })
    }

    /// `packet` sealed as the next datagram.
    pub fn seal(&mut self, packet: &[u8]) -> Vec<u8> {
        let number = self.next_number;
        self.next_number += 1;
        let mut out = Vec::with_capacity(OVERHEAD + packet.len());
        out.push(FIRST_BYTE);
        out.extend_from_slice(&self.conversation.to_be_bytes());
        out.extend_from_slice(&number.to_be_bytes());
        out.extend_from_slice(packet);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        // Sealing fails only for inputs beyond ChaCha20's 256 GiB.
        match self.seal.key.seal_in_place_separate_tag(self.seal.nonce(number), Aad::from(&*header), body) {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => out.clear(),
        }
        out
    }

    /// The KCP packet inside `datagram`, if it is authentic and new.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<&'a [u8], Rejected> {
        if conversation_of(datagram) != Some(self.conversation) {
            return Err(if datagram.len() >= OVERHEAD { Rejected::Forged } else { Rejected::Malformed });
        }
        let mut number = [0u8; 8];
        number.copy_from_slice(&datagram[5..HEADER_LEN]);
        let number = u64::from_be_bytes(number);
        if !self.replay.is_new(number) {
            return Err(Rejected::Replayed);
        }
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let plain = self
            .open
            .key
            .open_in_place(self.open.nonce(number), Aad::from(&*header), body)
            .map_err(|_| Rejected::Forged)?;
        // Marked only once authentic: a forgery cannot burn a number.
        self.replay.mark(number);
        Ok(plain)
    }
}

/// The packet numbers seen: the highest, and a bitmap of the
/// [`REPLAY_WINDOW`] before it.
#[derive(Default)]
struct ReplayWindow {
    /// One more than the highest number seen (0: none yet).
    top: u64,
    /// Bit `i` set: number `top - 1 - i` was seen.
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn is_new(&self, number: u64) -> bool {
        if number >= self.top {
            return true;
        }
        let behind = self.top - 1 - number;
        behind < REPLAY_WINDOW && self.seen[(behind / 64) as usize] & (1 << (behind % 64)) == 0
    }

    fn mark(&mut self, number: u64) {
        if number >= self.top {
            // Saturating: the last number of all (never reached by a
            // sender counting from zero) must not wrap the window.
            let top = number.saturating_add(1);
            self.shift(top - self.top);
            self.top = top;
            self.seen[0] |= 1;
        } else {
            let behind = self.top - 1 - number;
            self.seen[(behind / 64) as usize] |= 1 << (behind % 64);
        }
    }

    /// Moves the window `by` numbers up.
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen = Default::default();
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        let len = self.seen.len();
        for i in (0..len).rev() {
            let from = i.checked_sub(words);
            let high = from.map_or(0, |j| self.seen[j]);
            let low = from.and_then(|j| j.checked_sub(1)).map_or(0, |j| self.seen[j]);
            self.seen[i] = if bits == 0 { high } else { (high << bits) | (low >> (64 - bits)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Envelope, Envelope) {
        let material: Vec<u8> = (0..KEYING_MATERIAL_LEN as u8).collect();
        let dialler = Envelope::new(7, &material, true).expect("keys");
        let answerer = Envelope::new(7, &material, false).expect("keys");
        (dialler, answerer)
    }

    #[test]
    fn sealed_datagrams_open_on_the_other_side_only() {
        let (mut a, mut b) = pair();
        let mut sealed = a.seal(b"kcp packet");
        assert_eq!(sealed.len(), OVERHEAD + 10);
        assert_eq!(conversation_of(&sealed), Some(7));
        assert_eq!(b.open(&mut sealed.clone()), Ok(&b"kcp packet"[..]));
        // The sender's own key does not open it: each direction has its own.
        assert_eq!(a.open(&mut sealed), Err(Rejected::Forged));
    }

    #[test]
    fn forged_corrupted_and_replayed_datagrams_are_rejected() {
        let (mut a, mut b) = pair();
        let sealed = a.seal(b"once");
        // Any flipped bit, in the header or the body, fails the tag.
        for bit in (5 * 8)..(sealed.len() * 8) {
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(b.open(&mut flipped), Err(Rejected::Forged), "bit {bit}");
        }
        let mut forged = sealed.clone();
        forged[HEADER_LEN..].fill(0x55);
        assert_eq!(b.open(&mut forged), Err(Rejected::Forged));
        assert_eq!(b.open(&mut sealed.clone()), Ok(&b"once"[..]));
        assert_eq!(b.open(&mut sealed.clone()), Err(Rejected::Replayed));
        // Another conversation id, or too short.
        let mut other = sealed.clone();
        other[4] ^= 1;
        assert_eq!(b.open(&mut other), Err(Rejected::Forged));
        assert_eq!(b.open(&mut sealed[..OVERHEAD - 1].to_vec()), Err(Rejected::Malformed));
    }

    #[test]
    fn the_replay_window_takes_reordered_numbers_once_and_refuses_old_ones() {
        let (mut a, mut b) = pair();
        let sealed: Vec<Vec<u8>> = (0..2_000).map(|_| a.seal(b"x")).collect();
        // 0, then 1,500 (ahead), then 600 (inside the window): all new.
        for n in [0, 1_500, 600, 1_499] {
            assert!(b.open(&mut sealed[n].clone()).is_ok(), "{n}");
        }
        for n in [0, 1_500, 600, 1_499] {
            assert_eq!(b.open(&mut sealed[n].clone()), Err(Rejected::Replayed), "{n}");
        }
        // 400 is more than the window behind 1,500.
        assert_eq!(b.open(&mut sealed[400].clone()), Err(Rejected::Replayed));
        for (n, datagram) in sealed.iter().enumerate().skip(1_501) {
            assert!(b.open(&mut datagram.clone()).is_ok(), "{n}");
        }
        assert!(b.open(&mut sealed[1_000].clone()).is_ok());
        assert_eq!(b.open(&mut sealed[1_000].clone()), Err(Rejected::Replayed));
    }

    #[test]
    fn the_window_shift_keeps_every_bit_in_place() {
        let marked = [3u64, 70, 200, 900];
        let mut window = ReplayWindow::default();
        for n in marked {
            window.mark(n);
        }
        for by in [1u64, 63, 64, 65, 130] {
            let mut moved = ReplayWindow { top: window.top, seen: window.seen };
            let newest = window.top - 1 + by;
            moved.mark(newest);
            for n in marked {
                assert!(!moved.is_new(n), "shift {by}: {n} seen");
                // Its neighbours were never seen: new while inside the window.
                for neighbour in [n - 1, n + 1].into_iter().filter(|&m| m != newest) {
                    let inside = moved.top - 1 - neighbour < REPLAY_WINDOW;
                    assert_eq!(moved.is_new(neighbour), inside, "shift {by}: neighbour {neighbour}");
                }
            }
        }
    }
}
