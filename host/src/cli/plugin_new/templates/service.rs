//! {{name}}: a fogconnect service plugin.
//!
//! Every message is answered on its connection with `GREETING #N: message`,
//! N counting the messages the service has answered since it was loaded.
//#if handoff
//! The count moves to the next build when the plugin is swapped live on a
//! node (see the `Handoff` implementation below).
//#else
//! A live swap starts a new count (`fogconnect plugin new --handoff` makes a
//! plugin whose state moves to the next build).
//#end
//!
//! Build with `cargo build --release`; the component is
//! `target/wasm32-wasip2/release/{{crate}}.wasm`.

//#if handoff
use fogconnect_guest::handoff::Handoff;
//#end
use fogconnect_guest::{CloseReason, ConnectInfo, Connection, LogLevel, Service, export_service, log};

/// What every reply starts with: change it, rebuild, and swap the plugin on
/// a running node (`fogconnect plugin swap`) to see the new build answer.
const GREETING: &str = "{{name}}";

/// The service. The node makes one with `Default` when it loads the plugin
/// and calls it for every connection of the service, one call at a time.
#[derive(Default)]
pub struct Plugin {
    /// Messages answered.
    answered: u64,
}

impl Service for Plugin {
    fn on_connect(&mut self, conn: Connection, info: ConnectInfo) {
        let side = if info.passive { "from" } else { "to" };
        log(LogLevel::Info, &format!("connection {} {side} {}", conn.raw(), info.peer_id));
    }

    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        self.answered += 1;
        let reply = format!("{GREETING} #{}: {}", self.answered, String::from_utf8_lossy(&data));
        // A full send buffer or a closing connection loses only this reply;
        // the other side sees the close.
        let _ = conn.send(reply.as_bytes());
    }

    fn on_close(&mut self, conn: Connection, reason: CloseReason) {
        log(LogLevel::Info, &format!("connection {} closed: {:?}", conn.raw(), reason.kind));
    }
}
//#if handoff

/// The state handed to the next build on a live swap: the count, as 8
/// bytes, big endian. A build that changes the state's format must still
/// read the old one, or refuse it (the swap is then refused and the old
/// build keeps serving).
impl Handoff for Plugin {
    fn snapshot(&mut self) -> Vec<u8> {
        self.answered.to_be_bytes().to_vec()
    }

    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let count: [u8; 8] = state.try_into().map_err(|_| "expected an 8-byte count".to_string())?;
        self.answered = u64::from_be_bytes(count);
        Ok(())
    }
}

export_service!(Plugin, handoff);
//#else

export_service!(Plugin);
//#end
