//! Messages of a stream service connection (stream plugins).
//!
//! A connection to a service served by a stream plugin carries these
//! messages, one per connection message (see [`crate::wire`]): the
//! application asks for streams and talk-back streams, the device sends
//! the streams' data, both sides send commands and replies. Every message
//! is `kind: u8, id: u32 (big endian), body`; the body runs to the end of
//! the message.
//!
//! Stream ids are chosen by the application, unique per connection among
//! its send and talk-back streams; command ids by the side sending the
//! command.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before a message's body.
pub const HEADER_LEN: usize = 5;
/// Longest parameter or reason text, in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

const KIND_OPEN: u8 = 0x01;
const KIND_TALK: u8 = 0x02;
const KIND_ACCEPTED: u8 = 0x03;
const KIND_REFUSED: u8 = 0x04;
const KIND_DATA: u8 = 0x05;
const KIND_END: u8 = 0x06;
const KIND_COMMAND: u8 = 0x07;
const KIND_REPLY: u8 = 0x08;
const KIND_REPLY_ERROR: u8 = 0x09;

/// One message of a stream service connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// Application → device: open send stream `stream` with `params`.
    Open {
        /// The new stream's id.
        stream: u32,
        /// Parameters for the plugin's `send-init`, e.g. `action=live`.
        params: String,
    },
    /// Application → device: open talk-back stream `stream` with `params`.
    Talk {
        /// The new stream's id.
        stream: u32,
        /// Parameters for the plugin's `recv-init`.
        params: String,
    },
    /// Device → application: the stream was accepted.
    Accepted {
        /// The stream.
        stream: u32,
    },
    /// Device → application: the stream was refused (the id is free again).
    Refused {
        /// The stream.
        stream: u32,
        /// The plugin's or node's reason.
        reason: String,
    },
    /// One chunk of a stream's data (device → application for send streams,
    /// application → device for talk-back).
    Data {
        /// The stream.
        stream: u32,
        /// The chunk.
        data: Bytes,
    },
    /// The sender ends the stream: no data follows. From the application
    /// for a send stream it asks the device to stop it; the device answers
    /// with its own `End` once the stream stopped.
    End {
        /// The stream.
        stream: u32,
        /// Why, for logs and the other side (may be empty).
        reason: String,
    },
    /// A command, answered by one `Reply` or `ReplyError` with its id.
    Command {
        /// The sender's command id.
        id: u32,
        /// The command.
        data: Bytes,
    },
    /// The reply to command `id`.
    Reply {
        /// The command's id.
        id: u32,
        /// The reply.
        data: Bytes,
    },
    /// Command `id` failed on the other side (no handler, handler error).
    ReplyError {
        /// The command's id.
        id: u32,
        /// Why.
        reason: String,
    },
}

/// Errors of decoding a stream message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamMessageError {
    /// Shorter than the header.
    #[error("stream message of {0} bytes is shorter than its 5-byte header")]
    Truncated(usize),
    /// The first byte names no message kind.
    #[error("unknown stream message kind {0:#04x}")]
    UnknownKind(u8),
    /// A text body is not UTF-8 or longer than [`MAX_TEXT_LEN`].
    #[error("stream message of kind {0:#04x}: text is not UTF-8 or longer than 4096 bytes")]
    BadText(u8),
    /// A message that has no body came with one.
    #[error("stream message of kind {0:#04x} has an unexpected body")]
    UnexpectedBody(u8),
}

fn text(kind: u8, body: &Bytes) -> Result<String, StreamMessageError> {
    if body.len() > MAX_TEXT_LEN {
        return Err(StreamMessageError::BadText(kind));
    }
    String::from_utf8(body.to_vec()).map_err(|_| StreamMessageError::BadText(kind))
}

/// Clips a text to [`MAX_TEXT_LEN`] bytes at a character boundary.
fn clipped(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl StreamMessage {
    /// Encodes the message. Texts longer than [`MAX_TEXT_LEN`] are clipped.
    pub fn encode(&self) -> Bytes {
        let (kind, id, body): (u8, u32, &[u8]) = match self {
            StreamMessage::Open { stream, params } => (KIND_OPEN, *stream, clipped(params).as_bytes()),
            StreamMessage::Talk { stream, params } => (KIND_TALK, *stream, clipped(params).as_bytes()),
            StreamMessage::Accepted { stream } => (KIND_ACCEPTED, *stream, &[]),
            StreamMessage::Refused { stream, reason } => (KIND_REFUSED, *stream, clipped(reason).as_bytes()),
            StreamMessage::Data { stream, data } => (KIND_DATA, *stream, data),
            StreamMessage::End { stream, reason } => (KIND_END, *stream, clipped(reason).as_bytes()),
            StreamMessage::Command { id, data } => (KIND_COMMAND, *id, data),
            StreamMessage::Reply { id, data } => (KIND_REPLY, *id, data),
            StreamMessage::ReplyError { id, reason } => (KIND_REPLY_ERROR, *id, clipped(reason).as_bytes()),
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        out.put_u8(kind);
        out.put_u32(id);
        out.put_slice(body);
        out.freeze()
    }

    /// The header of a `Data` message for `stream`, to send in front of a
    /// chunk without copying it.
    pub fn data_header(stream: u32) -> [u8; HEADER_LEN] {
        let id = stream.to_be_bytes();
        [KIND_DATA, id[0], id[1], id[2], id[3]]
    }

    /// Decodes one message.
    ///
    /// # Errors
    /// [`StreamMessageError`] for anything that is not a well-formed message.
    pub fn decode(message: &Bytes) -> Result<Self, StreamMessageError> {
        if message.len() < HEADER_LEN {
            return Err(StreamMessageError::Truncated(message.len()));
        }
        let kind = message[0];
        let id = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
        let body = message.slice(HEADER_LEN..);
        Ok(match kind {
            KIND_OPEN => StreamMessage::Open { stream: id, params: text(kind, &body)? },
            KIND_TALK => StreamMessage::Talk { stream: id, params: text(kind, &body)? },
            KIND_ACCEPTED if body.is_empty() => StreamMessage::Accepted { stream: id },
            KIND_ACCEPTED => return Err(StreamMessageError::UnexpectedBody(kind)),
            KIND_REFUSED => StreamMessage::Refused { stream: id, reason: text(kind, &body)? },
            KIND_DATA => StreamMessage::Data { stream: id, data: body },
            KIND_END => StreamMessage::End { stream: id, reason: text(kind, &body)? },
            KIND_COMMAND => StreamMessage::Command { id, data: body },
            KIND_REPLY => StreamMessage::Reply { id, data: body },
            KIND_REPLY_ERROR => StreamMessage::ReplyError { id, reason: text(kind, &body)? },
            other => return Err(StreamMessageError::UnknownKind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<StreamMessage> {
        vec![
            StreamMessage::Open { stream: 1, params: "action=live".into() },
            StreamMessage::Talk { stream: u32::MAX, params: String::new() },
            StreamMessage::Accepted { stream: 7 },
            StreamMessage::Refused { stream: 7, reason: "no such recording: é".into() },
            StreamMessage::Data { stream: 3, data: Bytes::from_static(&[0, 1, 2, 255]) },
            StreamMessage::Data { stream: 3, data: Bytes::new() },
            StreamMessage::End { stream: 3, reason: "application closed the stream".into() },
            StreamMessage::Command { id: 9, data: Bytes::from_static(b"bitrate?") },
            StreamMessage::Reply { id: 9, data: Bytes::from_static(b"2000000") },
            StreamMessage::ReplyError { id: 10, reason: "no command handler".into() },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for message in every_kind() {
            assert_eq!(StreamMessage::decode(&message.encode()), Ok(message.clone()), "{message:?}");
        }
    }

    #[test]
    fn data_header_matches_the_encoding() {
        let message = StreamMessage::Data { stream: 0x0102_0304, data: Bytes::from_static(b"xy") };
        let encoded = message.encode();
        assert_eq!(&encoded[..HEADER_LEN], &StreamMessage::data_header(0x0102_0304));
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(StreamMessage::decode(&Bytes::from_static(&[1, 0, 0])), Err(StreamMessageError::Truncated(3)));
        assert_eq!(
            StreamMessage::decode(&Bytes::from_static(&[0x42, 0, 0, 0, 1])),
            Err(StreamMessageError::UnknownKind(0x42))
        );
        assert_eq!(
            StreamMessage::decode(&Bytes::from_static(&[KIND_OPEN, 0, 0, 0, 1, 0xff, 0xfe])),
            Err(StreamMessageError::BadText(KIND_OPEN))
        );
        assert_eq!(
            StreamMessage::decode(&Bytes::from_static(&[KIND_ACCEPTED, 0, 0, 0, 1, 0])),
            Err(StreamMessageError::UnexpectedBody(KIND_ACCEPTED))
        );
        let mut long = vec![KIND_END, 0, 0, 0, 1];
        long.extend(std::iter::repeat_n(b'a', MAX_TEXT_LEN + 1));
        assert_eq!(StreamMessage::decode(&Bytes::from(long)), Err(StreamMessageError::BadText(KIND_END)));
    }

    #[test]
    fn long_texts_are_clipped_on_a_character_boundary() {
        let params = "é".repeat(MAX_TEXT_LEN);
        let decoded = StreamMessage::decode(&StreamMessage::Open { stream: 1, params }.encode());
        let Ok(StreamMessage::Open { params, .. }) = decoded else { panic!("{decoded:?}") };
        assert_eq!(params.len(), MAX_TEXT_LEN);
    }
}
