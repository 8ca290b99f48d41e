//! Misbehaving test plugin: the message "panic" makes `on_recv` panic (a
//! trap for the node); anything else is echoed.

use fogconnect_guest::{Connection, Service, export_service};

/// The panicking service.
#[derive(Default)]
pub struct Panicky;

impl Service for Panicky {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        if data == b"panic" {
            panic!("test plugin asked to panic");
        }
        let _ = conn.send(&data);
    }
}

export_service!(Panicky);
