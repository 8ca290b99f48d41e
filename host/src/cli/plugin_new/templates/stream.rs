//! {{name}}: a fogconnect stream plugin.
//!
//! An application asks the device for a stream (`fogconnect stream
//! --params count=100`); the node then pulls the stream's data from this
//! plugin every 10 ms while the stream's send buffer has room. Each pull
//! here gives one chunk, `GREETING N` (N from 0), until `count` chunks (no
//! `count`: until the application stops the stream). The command `hello`
//! is answered with the greeting and the number of streams started.
//#if handoff
//!
//! A live swap hands the streams to the next build, which carries on
//! with each stream's numbering (see the `Handoff` implementation below).
//#else
//!
//! A live swap ends the streams (`fogconnect plugin new --stream --handoff`
//! makes a plugin whose streams carry on in the next build).
//#end
//!
//! Build with `cargo build --release`; the component is
//! `target/wasm32-wasip2/release/{{crate}}.wasm`.

use std::collections::BTreeMap;

use fogconnect_guest::export_stream;
//#if handoff
use fogconnect_guest::handoff::Handoff;
//#end
use fogconnect_guest::stream::{Pull, Stream, StreamConnection, StreamPlugin};

/// What every chunk starts with: change it, rebuild, and swap the plugin
/// on a running node (`fogconnect plugin swap`) to see the new build.
const GREETING: &str = "{{name}}";

/// One stream: the next chunk's number, and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    next: u64,
    count: Option<u64>,
}

/// The plugin. The node makes one with `Default` when it loads the plugin
/// and calls it for every stream of the service, one call at a time.
#[derive(Default)]
pub struct Plugin {
    /// The handle of the last stream started.
    last_handle: u64,
    /// The streams running, by handle.
    streams: BTreeMap<u64, Source>,
}

/// The parameters, `key=value` pairs separated by `&`: `count=N`.
fn parse_count(params: &str) -> Result<Option<u64>, String> {
    let mut count = None;
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        // Other parameters are the application's business.
        if let Some(("count", n)) = pair.split_once('=') {
            count = Some(n.parse().map_err(|_| format!("count must be a number, got {n:?}"))?);
        }
    }
    Ok(count)
}

impl StreamPlugin for Plugin {
    fn send_init(&mut self, _conn: StreamConnection, params: String) -> Result<Stream, String> {
        let count = parse_count(&params)?;
        self.last_handle += 1;
        self.streams.insert(self.last_handle, Source { next: 0, count });
        Ok(Stream::from_raw(self.last_handle))
    }

    fn send_get(&mut self, stream: Stream) -> Pull {
        let Some(source) = self.streams.get_mut(&stream.raw()) else { return Pull::End };
        if source.count.is_some_and(|count| source.next >= count) {
            return Pull::End;
        }
        let chunk = format!("{GREETING} {}", source.next);
        source.next += 1;
        Pull::Data(chunk.into_bytes())
    }

    fn send_stop(&mut self, stream: Stream) {
        self.streams.remove(&stream.raw());
    }

    fn on_command(&mut self, _conn: StreamConnection, message: Vec<u8>) -> Result<Vec<u8>, String> {
        match message.as_slice() {
            b"hello" => Ok(format!("{GREETING}: {} streams started", self.last_handle).into_bytes()),
            _ => Err("unknown command (try hello)".into()),
        }
    }
}
//#if handoff

/// The state handed to the next build on a live swap: the last handle,
/// then each stream's handle, next number and count + 1 (0: none), 8 bytes
/// each, big endian. A build that changes the format must still read the
/// old one, or refuse it (the swap is then refused and the old build keeps
/// streaming).
impl Handoff for Plugin {
    fn snapshot(&mut self) -> Vec<u8> {
        let mut state = self.last_handle.to_be_bytes().to_vec();
        for (handle, source) in &self.streams {
            for word in [*handle, source.next, source.count.map_or(0, |count| count.saturating_add(1))] {
                state.extend_from_slice(&word.to_be_bytes());
            }
        }
        state
    }

    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let words: Vec<u64> = state
            .chunks(8)
            .map(|word| <[u8; 8]>::try_from(word).map(u64::from_be_bytes))
            .collect::<Result<_, _>>()
            .map_err(|_| "the state is not whole 8-byte words".to_string())?;
        let Some((last_handle, streams)) = words.split_first() else { return Err("empty state".into()) };
        if streams.len() % 3 != 0 {
            return Err("the state's streams are not whole".into());
        }
        self.last_handle = *last_handle;
        self.streams = streams
            .chunks(3)
            .map(|s| (s[0], Source { next: s[1], count: s[2].checked_sub(1) }))
            .collect();
        Ok(())
    }
}

export_stream!(Plugin, handoff);
//#else

export_stream!(Plugin);
//#end
