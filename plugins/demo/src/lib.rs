//! The original FogConnect demo exchange (service 1): the caller sends
//! "I am fog data!" and this plugin answers "I know!".

use fogconnect_guest::{ConnectInfo, Connection, LogLevel, Service, export_service, log};

/// The reply the original C demo gave to every message.
pub const REPLY: &[u8] = b"I know!";

/// The demo service; it keeps no state.
#[derive(Default)]
pub struct Demo;

impl Service for Demo {
    fn on_connect(&mut self, _conn: Connection, info: ConnectInfo) {
        log(
            LogLevel::Info,
            &format!("connected to {} (convention {:#x}, passive {})", info.peer_id, info.convention, info.passive),
        );
    }

    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        log(LogLevel::Info, &format!("received {:?}", String::from_utf8_lossy(&data)));
        let _ = conn.send(REPLY);
    }
}

export_service!(Demo);
