//! Echo service plugin (service 0 by convention): every message is sent back
//! unchanged on the connection it arrived on.

use fogconnect_guest::{Connection, Service, export_service};

/// The echo service; it keeps no state.
#[derive(Default)]
pub struct Echo;

impl Service for Echo {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        // A full send buffer or a closing connection loses only this reply;
        // the remote side sees the close.
        let _ = conn.send(&data);
    }
}

export_service!(Echo);
