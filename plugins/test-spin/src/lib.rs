//! Misbehaving test plugin: the message "spin" makes `on_recv` loop forever
//! (the node must interrupt it at its deadline); anything else is echoed.

use fogconnect_guest::{Connection, Service, export_service};

/// The spinning service.
#[derive(Default)]
pub struct Spin;

impl Service for Spin {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        if data == b"spin" {
            let mut counter: u64 = 0;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        let _ = conn.send(&data);
    }
}

export_service!(Spin);
