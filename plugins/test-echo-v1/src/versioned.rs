// The echo of the versioned test plugins, shared by `test-echo-v1` and
// `test-echo-v2` (each defines `VERSION` and includes this file): every
// message comes back as "<VERSION>:<message>".

use fogconnect_guest::{Connection, Service, export_service};

/// The versioned echo service.
#[derive(Default)]
pub struct VersionedEcho;

impl Service for VersionedEcho {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        let mut reply = Vec::with_capacity(VERSION.len() + 1 + data.len());
        reply.extend_from_slice(VERSION.as_bytes());
        reply.push(b':');
        reply.extend_from_slice(&data);
        let _ = conn.send(&reply);
    }
}

export_service!(VersionedEcho);
