//! The send buffers of one stream service connection, sans-IO: one queue
//! per send stream, drained round-robin (one chunk per stream in turn) into
//! the connection, so a busy stream cannot starve the others. Nothing is
//! dropped: a queue only empties by being sent, or when its stream is
//! stopped by the application or the connection ends (then what is left is
//! discarded, since nobody will read it).
//!
//! Chunks are stored as ready-to-send `Data` messages; the buffered count of
//! a stream is the payload bytes of its queue.

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use fogconnect_proto::stream::{HEADER_LEN, StreamMessage};

/// Identifies a stream on its connection (chosen by the application).
pub type WireStream = u32;

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<(Bytes, usize)>,
    buffered: u64,
    sent: u64,
    /// Set when the stream ends after its queued data; the end message is
    /// sent once the queue is empty.
    end: Option<String>,
}

/// One message to hand to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The stream it belongs to.
    pub stream: WireStream,
    /// The encoded message.
    pub message: Bytes,
    /// Payload bytes of the stream it carries (0 for the end message).
    pub payload: usize,
    /// True for the stream's end message (the stream is gone from the mux).
    pub end: bool,
}

/// The send queues of one connection.
#[derive(Debug)]
pub struct SendMux {
    max_chunk: usize,
    queues: BTreeMap<WireStream, Queue>,
    /// Streams with something to send, in turn order.
    turn: VecDeque<WireStream>,
    buffered: u64,
}

impl SendMux {
    /// Queues whose messages are at most `max_message` bytes (the
    /// connection's maximum message size): larger chunks are split.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_chunk: max_message.saturating_sub(HEADER_LEN).max(1),
            queues: BTreeMap::new(),
            turn: VecDeque::new(),
            buffered: 0,
        }
    }

    /// Adds an empty queue for `stream`; false when it exists already.
    pub fn open(&mut self, stream: WireStream) -> bool {
        if self.queues.contains_key(&stream) {
            return false;
        }
        self.queues.insert(stream, Queue::default());
        true
    }

    /// Whether `stream` has a queue.
    pub fn contains(&self, stream: WireStream) -> bool {
        self.queues.contains_key(&stream)
    }

    /// Queues one chunk of `stream` (split above the maximum message size);
    /// false for an unknown or ending stream (nothing queued).
    pub fn push(&mut self, stream: WireStream, chunk: &[u8]) -> bool {
        let Some(queue) = self.queues.get_mut(&stream) else { return false };
        if queue.end.is_some() {
            return false;
        }
        if chunk.is_empty() {
            return true;
        }
        let was_idle = queue.messages.is_empty();
        for piece in chunk.chunks(self.max_chunk) {
            let mut message = BytesMut::with_capacity(HEADER_LEN + piece.len());
            message.put_slice(&StreamMessage::data_header(stream));
            message.put_slice(piece);
            queue.messages.push_back((message.freeze(), piece.len()));
        }
        queue.buffered += chunk.len() as u64;
        self.buffered += chunk.len() as u64;
        if was_idle {
            self.turn.push_back(stream);
        }
        true
    }

    /// Ends `stream` once its queued data is sent: its end message (with
    /// `reason`) follows the data. False for an unknown or ending stream.
    pub fn finish(&mut self, stream: WireStream, reason: &str) -> bool {
        let Some(queue) = self.queues.get_mut(&stream) else { return false };
        if queue.end.is_some() {
            return false;
        }
        queue.end = Some(reason.to_string());
        if queue.messages.is_empty() {
            self.turn.push_back(stream);
        }
        true
    }

    /// Ends `stream` now: its queued data is discarded (nobody wants it any
    /// more) and only its end message is still sent. False for an unknown
    /// or ending stream.
    pub fn stop(&mut self, stream: WireStream, reason: &str) -> bool {
        let Some(queue) = self.queues.get_mut(&stream) else { return false };
        if queue.end.is_some() {
            return false;
        }
        self.buffered -= queue.buffered;
        queue.buffered = 0;
        queue.messages.clear();
        queue.end = Some(reason.to_string());
        if !self.turn.contains(&stream) {
            self.turn.push_back(stream);
        }
        true
    }

    /// Removes `stream` at once, discarding its queue; returns the payload
    /// bytes discarded, `None` for an unknown stream.
    pub fn remove(&mut self, stream: WireStream) -> Option<u64> {
        let queue = self.queues.remove(&stream)?;
        self.buffered -= queue.buffered;
        self.turn.retain(|&s| s != stream);
        Some(queue.buffered)
    }

    /// The next message to send: streams take turns, one message each.
    pub fn pop(&mut self) -> Option<Outgoing> {
        let stream = self.turn.pop_front()?;
        let queue = self.queues.get_mut(&stream)?;
        if let Some((message, payload)) = queue.messages.pop_front() {
            queue.buffered -= payload as u64;
            queue.sent += payload as u64;
            self.buffered -= payload as u64;
            if !queue.messages.is_empty() || queue.end.is_some() {
                self.turn.push_back(stream);
            }
            return Some(Outgoing { stream, message, payload, end: false });
        }
        let reason = queue.end.take()?;
        self.queues.remove(&stream);
        Some(Outgoing { stream, message: StreamMessage::End { stream, reason }.encode(), payload: 0, end: true })
    }

    /// Payload bytes queued for `stream` (0 for an unknown stream).
    pub fn buffered(&self, stream: WireStream) -> u64 {
        self.queues.get(&stream).map_or(0, |q| q.buffered)
    }

    /// Payload bytes of `stream` handed to the connection so far.
    pub fn sent(&self, stream: WireStream) -> u64 {
        self.queues.get(&stream).map_or(0, |q| q.sent)
    }

    /// Payload bytes queued over all streams.
    pub fn total_buffered(&self) -> u64 {
        self.buffered
    }

    /// Whether nothing waits to be sent.
    pub fn is_idle(&self) -> bool {
        self.turn.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(out: &Outgoing) -> Vec<u8> {
        match StreamMessage::decode(&out.message) {
            Ok(StreamMessage::Data { data, .. }) => data.to_vec(),
            other => panic!("not data: {other:?}"),
        }
    }

    #[test]
    fn streams_take_turns_one_message_each() {
        let mut mux = SendMux::new(1024);
        assert!(mux.open(1) && mux.open(2));
        for i in 0..3u8 {
            mux.push(1, &[i; 10]);
        }
        mux.push(2, &[9; 4]);
        let order: Vec<_> = std::iter::from_fn(|| mux.pop()).map(|o| (o.stream, o.payload)).collect();
        assert_eq!(order, vec![(1, 10), (2, 4), (1, 10), (1, 10)]);
        assert!(mux.is_idle());
        assert_eq!((mux.sent(1), mux.sent(2), mux.total_buffered()), (30, 4, 0));
    }

    #[test]
    fn buffered_counts_follow_pushes_and_pops() {
        let mut mux = SendMux::new(1024);
        mux.open(5);
        mux.push(5, &[1; 100]);
        mux.push(5, &[2; 50]);
        assert_eq!(mux.buffered(5), 150);
        let first = mux.pop().expect("queued");
        assert_eq!(payload(&first), vec![1; 100]);
        assert_eq!((mux.buffered(5), mux.sent(5)), (50, 100));
    }

    #[test]
    fn large_chunks_are_split_in_order() {
        let mut mux = SendMux::new(HEADER_LEN + 4);
        mux.open(1);
        mux.push(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let pieces: Vec<_> = std::iter::from_fn(|| mux.pop()).map(|o| payload(&o)).collect();
        assert_eq!(pieces, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
    }

    #[test]
    fn the_end_follows_the_queued_data_once() {
        let mut mux = SendMux::new(1024);
        mux.open(1);
        mux.push(1, b"abc");
        assert!(mux.finish(1, "playback over"));
        assert!(!mux.finish(1, "again"), "a stream ends once");
        assert!(!mux.push(1, b"late"), "nothing is queued after the end");
        assert_eq!(payload(&mux.pop().expect("data")), b"abc");
        let end = mux.pop().expect("end");
        assert!(end.end);
        assert_eq!(
            StreamMessage::decode(&end.message),
            Ok(StreamMessage::End { stream: 1, reason: "playback over".into() })
        );
        assert_eq!(mux.pop(), None);
        assert!(!mux.contains(1));
    }

    #[test]
    fn stopping_discards_the_data_but_sends_the_end() {
        let mut mux = SendMux::new(1024);
        mux.open(1);
        mux.push(1, &[0; 10]);
        assert!(mux.stop(1, "stopped by the application"));
        assert_eq!(mux.total_buffered(), 0);
        let end = mux.pop().expect("end");
        assert!(end.end);
        assert_eq!(mux.pop(), None);
    }

    #[test]
    fn removing_discards_the_queue() {
        let mut mux = SendMux::new(1024);
        mux.open(1);
        mux.open(2);
        mux.push(1, &[0; 10]);
        mux.push(2, &[0; 7]);
        assert_eq!(mux.remove(1), Some(10));
        assert_eq!(mux.remove(1), None);
        assert_eq!(mux.total_buffered(), 7);
        assert_eq!(mux.pop().map(|o| o.stream), Some(2));
        assert_eq!(mux.pop(), None);
    }

    #[test]
    fn empty_chunks_and_unknown_streams_queue_nothing() {
        let mut mux = SendMux::new(1024);
        assert!(!mux.push(3, b"x"));
        mux.open(3);
        assert!(mux.push(3, b""));
        assert!(mux.is_idle());
        assert!(!mux.open(3));
    }
}
