//! Misbehaving test plugin: the message "grow" makes it allocate memory
//! without bound (the node's memory cap must stop it); anything else is
//! echoed.

use fogconnect_guest::{Connection, Service, export_service};

/// The memory-hungry service; `hoard` only ever grows.
#[derive(Default)]
pub struct MemHog {
    hoard: Vec<Vec<u8>>,
}

impl Service for MemHog {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        if data == b"grow" {
            loop {
                // Touch every page so the memory is really used.
                self.hoard.push(vec![0xA5; 1 << 20]);
            }
        }
        let _ = conn.send(&data);
    }
}

export_service!(MemHog);
