//! Test plugin that needs 80 MiB of memory before its first call: its
//! statically allocated buffer is part of its initial linear memory, above a
//! node's default 64 MiB cap, so it fails to instantiate there. Under a cap
//! of 81 MiB or more (e.g. `memory-mib = 96` in its manifest) it loads and
//! echoes every message as "big:<message>".

use std::sync::Mutex;

use fogconnect_guest::{Connection, Service, export_service};

/// Size of the static buffer.
const BUFFER_BYTES: usize = 80 << 20;

/// Zero-initialised, so it costs nothing in the wasm file, only initial
/// memory.
static BUFFER: Mutex<[u8; BUFFER_BYTES]> = Mutex::new([0; BUFFER_BYTES]);

/// The echo with a large buffer.
#[derive(Default)]
pub struct Oversized;

impl Service for Oversized {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        // Touch the buffer so it is kept.
        if let Ok(mut buffer) = BUFFER.lock() {
            buffer[data.len() % BUFFER_BYTES] = std::hint::black_box(1);
        }
        let mut reply = b"big:".to_vec();
        reply.extend_from_slice(&data);
        let _ = conn.send(&reply);
    }
}

export_service!(Oversized);
