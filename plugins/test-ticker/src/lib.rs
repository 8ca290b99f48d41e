//! Test stream plugin for live swaps: every stream sends numbered chunks,
//! "0", "1", "2", … (one per pull), and its numbering moves to the next
//! generation on a swap (`snapshot`/`restore`), so a test can tell that no
//! chunk was lost or repeated. The command "panic" makes the plugin trap.

use std::collections::BTreeMap;

use fogconnect_guest::export_stream;
use fogconnect_guest::handoff::Handoff;
use fogconnect_guest::stream::{Pull, Stream, StreamConnection, StreamPlugin};

/// Tag of the state format.
const STATE_TAG: &[u8] = b"ticker/1:";

/// The numbering of every stream.
#[derive(Default)]
pub struct Ticker {
    last_handle: u64,
    next: BTreeMap<u64, u64>,
}

impl StreamPlugin for Ticker {
    fn send_init(&mut self, _conn: StreamConnection, _params: String) -> Result<Stream, String> {
        self.last_handle += 1;
        self.next.insert(self.last_handle, 0);
        Ok(Stream::from_raw(self.last_handle))
    }

    fn send_get(&mut self, stream: Stream) -> Pull {
        match self.next.get_mut(&stream.raw()) {
            Some(next) => {
                let chunk = next.to_string().into_bytes();
                *next += 1;
                Pull::Data(chunk)
            }
            None => Pull::End,
        }
    }

    fn send_stop(&mut self, stream: Stream) {
        self.next.remove(&stream.raw());
    }

    fn on_command(&mut self, _conn: StreamConnection, message: Vec<u8>) -> Result<Vec<u8>, String> {
        if message == b"panic" {
            panic!("ticker asked to panic");
        }
        Err("unknown command".into())
    }
}

impl Handoff for Ticker {
    fn snapshot(&mut self) -> Vec<u8> {
        let mut state = STATE_TAG.to_vec();
        state.extend_from_slice(&self.last_handle.to_le_bytes());
        for (handle, next) in &self.next {
            state.extend_from_slice(&handle.to_le_bytes());
            state.extend_from_slice(&next.to_le_bytes());
        }
        state
    }

    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let body = state.strip_prefix(STATE_TAG).ok_or("not a ticker/1 state")?;
        let mut words = body.chunks(8).map(|w| <[u8; 8]>::try_from(w).map(u64::from_le_bytes));
        let last_handle = words.next().ok_or("truncated ticker state")?.map_err(|_| "truncated ticker state")?;
        let words: Vec<u64> = words.collect::<Result<_, _>>().map_err(|_| "truncated ticker state")?;
        if !words.len().is_multiple_of(2) {
            return Err("truncated ticker state".into());
        }
        self.last_handle = last_handle;
        self.next = words.chunks(2).map(|pair| (pair[0], pair[1])).collect();
        Ok(())
    }
}

export_stream!(Ticker, handoff);
