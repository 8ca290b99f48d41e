//! Test plugin that tries to escape its sandbox. Each message is a request,
//! answered with "denied: <error>" or "allowed: <detail>":
//! - `file:<path>` opens and reads a file,
//! - `tcp:<addr>` opens a TCP connection,
//! - `udp:<addr>` sends a UDP datagram,
//! - `env` counts environment variables (denied when there are none).

use fogconnect_guest::{Connection, Service, export_service};
use std::io::Read;

/// The sandbox-probing service.
#[derive(Default)]
pub struct Escape;

fn attempt(request: &str) -> String {
    if let Some(path) = request.strip_prefix("file:") {
        let result = std::fs::File::open(path).and_then(|mut f| {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map(|_| buf.len())
        });
        return match result {
            Ok(len) => format!("allowed: read {len} bytes"),
            Err(e) => format!("denied: {e}"),
        };
    }
    if let Some(addr) = request.strip_prefix("tcp:") {
        return match std::net::TcpStream::connect(addr) {
            Ok(_) => "allowed: connected".to_string(),
            Err(e) => format!("denied: {e}"),
        };
    }
    if let Some(addr) = request.strip_prefix("udp:") {
        let result = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"escape", addr));
        return match result {
            Ok(n) => format!("allowed: sent {n} bytes"),
            Err(e) => format!("denied: {e}"),
        };
    }
    if request == "env" {
        let count = std::env::vars().count();
        return if count == 0 { "denied: no environment".to_string() } else { format!("allowed: {count} variables") };
    }
    format!("unknown request {request:?}")
}

impl Service for Escape {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        let reply = attempt(&String::from_utf8_lossy(&data));
        let _ = conn.send(reply.as_bytes());
    }
}

export_service!(Escape);
