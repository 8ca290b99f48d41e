//! Framing of one fogconnect connection on a QUIC bidirectional stream.
//!
//! Every frame is `type: u8, length: u32 (big endian), payload`. The active
//! side opens the stream with [`Frame::Open`]; the passive side answers with
//! [`Frame::Accept`] or [`Frame::Refuse`]. Then both sides send
//! [`Frame::Data`] (one frame = one message) and end with [`Frame::Close`]
//! followed by the end of the stream.
//!
//! Pure encode/decode functions; the [`Decoder`] is sans-IO: feed it bytes,
//! take frames out.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Version of this framing, carried in `Open` and `Accept`.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 5;
/// Largest payload of a control frame (everything but `Data`).
pub const MAX_CONTROL_LEN: usize = 1024;
/// Longest node id, in bytes.
pub const MAX_PEER_ID_LEN: usize = 255;
/// Prefix of the ids a node shows for peers whose claimed id nobody
/// vouched for: `fp:` and the hex fingerprint of the certificate the peer
/// presented. Signaling refuses to register ids with this prefix, so an id
/// that starts with it always names a key, never a registered node.
pub const KEY_ID_PREFIX: &str = "fp:";

/// Why `id` cannot be a node id, if it cannot: it must be 1 to
/// [`MAX_PEER_ID_LEN`] bytes without control characters (ids end up in
/// logs, terminals and plugins), and must not start with
/// [`KEY_ID_PREFIX`].
pub fn peer_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_PEER_ID_LEN {
        Some("an id must be 1 to 255 bytes")
    } else if id.chars().any(char::is_control) {
        Some("an id must not contain control characters")
    } else if id.starts_with(KEY_ID_PREFIX) {
        Some("ids starting with fp: name certificates and cannot be registered")
    } else {
        None
    }
}

const TYPE_OPEN: u8 = 0x01;
const TYPE_ACCEPT: u8 = 0x02;
const TYPE_REFUSE: u8 = 0x03;
const TYPE_DATA: u8 = 0x10;
const TYPE_CLOSE: u8 = 0x11;

/// Errors of decoding frames. Any of them ends the connection with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first byte names no frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame announces more payload than allowed for its type.
    #[error("frame of type {kind:#04x} too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// Frame type.
        kind: u8,
        /// Announced payload length.
        len: usize,
        /// Limit for this type.
        limit: usize,
    },
    /// A control frame's payload does not have its documented layout.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Why a passive node refused a connect request; stable numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RefuseCode {
    /// No plugin is loaded for the requested service.
    NoSuchService = 1,
    /// Reserved convention bits 12..31 were set.
    ReservedBits = 2,
    /// The transport in bits 0..3 is unknown or not offered.
    UnsupportedTransport = 3,
    /// The caller speaks another framing version.
    VersionMismatch = 4,
    /// The service's plugin is disabled (crash budget exhausted) or unavailable.
    ServiceUnavailable = 5,
    /// The request was malformed.
    BadRequest = 6,
    /// Any other reason; see the message.
    Other = 0xFFFF,
}

impl RefuseCode {
    /// The code for a raw value; unknown values map to [`RefuseCode::Other`].
    pub fn from_u16(value: u16) -> Self {
        match value {
            1 => Self::NoSuchService,
            2 => Self::ReservedBits,
            3 => Self::UnsupportedTransport,
            4 => Self::VersionMismatch,
            5 => Self::ServiceUnavailable,
            6 => Self::BadRequest,
            _ => Self::Other,
        }
    }
}

/// How a sender ended a connection, carried in [`Frame::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// Orderly close: the receiver reports end of file.
    Normal,
    /// Failure on the sender's side (e.g. its plugin crashed).
    Error,
}

/// One frame of the connection protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Connect request from the active side.
    Open {
        /// Framing version of the caller.
        version: u8,
        /// Raw convention number (validated by the receiver).
        convention: u32,
        /// Node id of the caller.
        peer_id: String,
    },
    /// The passive side accepted the request.
    Accept {
        /// Framing version of the callee.
        version: u8,
        /// Node id of the callee.
        peer_id: String,
    },
    /// The passive side refused the request.
    Refuse {
        /// Stable reason code.
        code: RefuseCode,
        /// Human-readable detail.
        message: String,
    },
    /// One application message.
    Data(Bytes),
    /// The sender ends the connection; the stream finishes after it.
    Close {
        /// Orderly or failure.
        code: CloseCode,
        /// Human-readable detail.
        message: String,
    },
}

fn put_header(out: &mut BytesMut, kind: u8, len: usize) {
    out.put_u8(kind);
    // Lengths are bounded by the caller (control frames by MAX_CONTROL_LEN,
    // data by the node's maximum message size, itself below u32::MAX).
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// Truncates `text` to at most `max` bytes on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The header of a data frame carrying `len` payload bytes; the payload is
/// sent after it without copying.
pub fn data_header(len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = TYPE_DATA;
    header[1..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    header
}

impl Frame {
    /// Encodes the frame. Ids and messages longer than their limits are
    /// clipped (ids to [`MAX_PEER_ID_LEN`], messages to fit
    /// [`MAX_CONTROL_LEN`]).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Frame::Open { version, convention, peer_id } => {
                let id = clip(peer_id, MAX_PEER_ID_LEN);
                put_header(&mut out, TYPE_OPEN, 1 + 4 + 1 + id.len());
                out.put_u8(*version);
                out.put_u32(*convention);
                out.put_u8(id.len() as u8);
                out.put_slice(id.as_bytes());
            }
            Frame::Accept { version, peer_id } => {
                let id = clip(peer_id, MAX_PEER_ID_LEN);
                put_header(&mut out, TYPE_ACCEPT, 1 + 1 + id.len());
                out.put_u8(*version);
                out.put_u8(id.len() as u8);
                out.put_slice(id.as_bytes());
            }
            Frame::Refuse { code, message } => {
                let msg = clip(message, MAX_CONTROL_LEN - 2);
                put_header(&mut out, TYPE_REFUSE, 2 + msg.len());
                out.put_u16(*code as u16);
                out.put_slice(msg.as_bytes());
            }
            Frame::Data(payload) => {
                out.put_slice(&data_header(payload.len()));
                out.put_slice(payload);
            }
            Frame::Close { code, message } => {
                let msg = clip(message, MAX_CONTROL_LEN - 1);
                put_header(&mut out, TYPE_CLOSE, 1 + msg.len());
                out.put_u8(match code {
                    CloseCode::Normal => 0,
                    CloseCode::Error => 1,
                });
                out.put_slice(msg.as_bytes());
            }
        }
        out.freeze()
    }

    fn decode_payload(kind: u8, mut p: Bytes) -> Result<Frame, WireError> {
        match kind {
            TYPE_DATA => Ok(Frame::Data(p)),
            TYPE_OPEN => {
                if p.len() < 6 {
                    return Err(WireError::Malformed("open"));
                }
                let version = p.get_u8();
                let convention = p.get_u32();
                let id_len = usize::from(p.get_u8());
                if p.len() != id_len {
                    return Err(WireError::Malformed("open"));
                }
                let peer_id = String::from_utf8(p.to_vec()).map_err(|_| WireError::Malformed("open"))?;
                Ok(Frame::Open { version, convention, peer_id })
            }
            TYPE_ACCEPT => {
                if p.len() < 2 {
                    return Err(WireError::Malformed("accept"));
                }
                let version = p.get_u8();
                let id_len = usize::from(p.get_u8());
                if p.len() != id_len {
                    return Err(WireError::Malformed("accept"));
                }
                let peer_id = String::from_utf8(p.to_vec()).map_err(|_| WireError::Malformed("accept"))?;
                Ok(Frame::Accept { version, peer_id })
            }
            TYPE_REFUSE => {
                if p.len() < 2 {
                    return Err(WireError::Malformed("refuse"));
                }
                let code = RefuseCode::from_u16(p.get_u16());
                let message = String::from_utf8(p.to_vec()).map_err(|_| WireError::Malformed("refuse"))?;
                Ok(Frame::Refuse { code, message })
            }
            TYPE_CLOSE => {
                if p.is_empty() {
                    return Err(WireError::Malformed("close"));
                }
                let code = match p.get_u8() {
                    0 => CloseCode::Normal,
                    1 => CloseCode::Error,
                    _ => return Err(WireError::Malformed("close")),
                };
                let message = String::from_utf8(p.to_vec()).map_err(|_| WireError::Malformed("close"))?;
                Ok(Frame::Close { code, message })
            }
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Sans-IO frame decoder: push received bytes, pop whole frames.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_message_size: usize,
}

impl Decoder {
    /// A decoder accepting data frames up to `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self { buf: BytesMut::new(), max_message_size }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, or `None` when more bytes are needed.
    ///
    /// # Errors
    /// A [`WireError`] when the bytes are not a valid frame; the stream is
    /// unusable after that.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        let limit = match kind {
            TYPE_DATA => self.max_message_size,
            TYPE_OPEN | TYPE_ACCEPT | TYPE_REFUSE | TYPE_CLOSE => MAX_CONTROL_LEN,
            other => return Err(WireError::UnknownType(other)),
        };
        if len > limit {
            return Err(WireError::TooLarge { kind, len, limit });
        }
        if self.buf.len() < HEADER_LEN + len {
            // Reserve once for the whole frame instead of growing per chunk.
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Frame::decode_payload(kind, payload).map(Some)
    }

    /// Call at the end of the stream.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when a partial frame is left over.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::Truncated(self.buf.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Open { version: WIRE_VERSION, convention: 0x15, peer_id: "ee:34:a1:44:2c:1c".into() },
            Frame::Open { version: 9, convention: 0xFFFF_FFFF, peer_id: String::new() },
            Frame::Accept { version: WIRE_VERSION, peer_id: "node-b".into() },
            Frame::Refuse { code: RefuseCode::NoSuchService, message: "no such service: 7".into() },
            Frame::Refuse { code: RefuseCode::Other, message: String::new() },
            Frame::Data(Bytes::from_static(b"I am fog data!")),
            Frame::Data(Bytes::new()),
            Frame::Close { code: CloseCode::Normal, message: String::new() },
            Frame::Close { code: CloseCode::Error, message: "plugin crashed".into() },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in all_frames() {
            let mut d = Decoder::new(1024);
            d.push(&frame.encode());
            assert_eq!(d.next_frame(), Ok(Some(frame.clone())));
            assert_eq!(d.next_frame(), Ok(None));
            assert_eq!(d.finish(), Ok(()));
        }
    }

    #[test]
    fn golden_bytes() {
        let open = Frame::Open { version: 1, convention: 0x15, peer_id: "ab".into() }.encode();
        assert_eq!(&open[..], &[0x01, 0, 0, 0, 8, 1, 0, 0, 0, 0x15, 2, b'a', b'b']);
        let data = Frame::Data(Bytes::from_static(b"hi")).encode();
        assert_eq!(&data[..], &[0x10, 0, 0, 0, 2, b'h', b'i']);
        let refuse = Frame::Refuse { code: RefuseCode::NoSuchService, message: "x".into() }.encode();
        assert_eq!(&refuse[..], &[0x03, 0, 0, 0, 3, 0, 1, b'x']);
    }

    #[test]
    fn frames_split_at_every_byte_decode_the_same() {
        let mut stream = Vec::new();
        for f in all_frames() {
            stream.extend_from_slice(&f.encode());
        }
        for split in 0..stream.len() {
            let mut d = Decoder::new(1024);
            let mut out = Vec::new();
            d.push(&stream[..split]);
            while let Some(f) = d.next_frame().expect("valid") {
                out.push(f);
            }
            d.push(&stream[split..]);
            while let Some(f) = d.next_frame().expect("valid") {
                out.push(f);
            }
            assert_eq!(out, all_frames());
        }
    }

    #[test]
    fn truncated_input_is_reported_at_end_of_stream() {
        let bytes = Frame::Data(Bytes::from_static(b"hello")).encode();
        for cut in 1..bytes.len() {
            let mut d = Decoder::new(1024);
            d.push(&bytes[..cut]);
            assert_eq!(d.next_frame(), Ok(None));
            assert_eq!(d.finish(), Err(WireError::Truncated(cut)));
        }
    }

    #[test]
    fn oversize_data_is_refused_before_buffering() {
        let mut d = Decoder::new(16);
        d.push(&data_header(17));
        assert_eq!(d.next_frame(), Err(WireError::TooLarge { kind: TYPE_DATA, len: 17, limit: 16 }));
        let mut d = Decoder::new(16);
        d.push(&[TYPE_OPEN, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(d.next_frame(), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(
            {
                let mut d = Decoder::new(16);
                d.push(&[0x7F, 0, 0, 0, 0]);
                d.next_frame()
            },
            Err(WireError::UnknownType(0x7F))
        );
        let malformed: &[&[u8]] = &[
            &[TYPE_OPEN, 0, 0, 0, 1, 1],
            &[TYPE_OPEN, 0, 0, 0, 6, 1, 0, 0, 0, 0x15, 5],
            &[TYPE_OPEN, 0, 0, 0, 7, 1, 0, 0, 0, 0x15, 1, 0xFF],
            &[TYPE_ACCEPT, 0, 0, 0, 1, 1],
            &[TYPE_REFUSE, 0, 0, 0, 1, 0],
            &[TYPE_CLOSE, 0, 0, 0, 0],
            &[TYPE_CLOSE, 0, 0, 0, 1, 7],
        ];
        for bytes in malformed {
            let mut d = Decoder::new(16);
            d.push(bytes);
            assert!(matches!(d.next_frame(), Err(WireError::Malformed(_))), "{bytes:?}");
        }
        // A deterministic pseudo-random sweep: no input may panic.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            let mut d = Decoder::new(64);
            let mut chunk = [0u8; 12];
            for b in &mut chunk {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = (state & 0xFF) as u8;
            }
            d.push(&chunk);
            while let Ok(Some(_)) = d.next_frame() {}
        }
    }

    #[test]
    fn long_texts_are_clipped_on_char_boundaries() {
        let id = "é".repeat(200);
        let frame = Frame::Open { version: 1, convention: 0x15, peer_id: id }.encode();
        let mut d = Decoder::new(16);
        d.push(&frame);
        match d.next_frame() {
            Ok(Some(Frame::Open { peer_id, .. })) => assert!(peer_id.len() <= MAX_PEER_ID_LEN),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn peer_ids_are_printable_bounded_and_not_key_ids() {
        assert_eq!(peer_id_problem("ee:34:a1:44:2c:1c"), None);
        assert_eq!(peer_id_problem("caméra-1"), None);
        assert!(peer_id_problem("").is_some());
        assert!(peer_id_problem(&"x".repeat(256)).is_some());
        assert!(peer_id_problem("evil\x1b[2Jid").is_some());
        assert!(peer_id_problem("line\nbreak").is_some());
        assert!(peer_id_problem("fp:0011").is_some());
    }
}
