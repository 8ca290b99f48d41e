//! Test plugin for state handoff: counts the messages of its service across
//! every connection and answers each with the count so far. The count moves
//! to the next generation on a live swap (`snapshot`/`restore`).
//!
//! Two messages arm the next snapshot, for the tests of a failing handoff;
//! neither is counted:
//! - "spoil-snapshot" makes it unreadable (so `restore` refuses it),
//!   answered with "spoiled";
//! - "trap-snapshot" makes it panic (a trap of the generation serving),
//!   answered with "armed".

use fogconnect_guest::handoff::Handoff;
use fogconnect_guest::{Connection, Service, export_service};

/// Tag of the state format, so a build can tell a state it can read.
const STATE_TAG: &[u8] = b"counter/1:";

/// The counting service.
#[derive(Default)]
pub struct Counter {
    count: u64,
    spoil_next_snapshot: bool,
    trap_next_snapshot: bool,
}

impl Service for Counter {
    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        if data == b"spoil-snapshot" {
            self.spoil_next_snapshot = true;
            let _ = conn.send(b"spoiled");
            return;
        }
        if data == b"trap-snapshot" {
            self.trap_next_snapshot = true;
            let _ = conn.send(b"armed");
            return;
        }
        self.count += 1;
        let _ = conn.send(self.count.to_string().as_bytes());
    }
}

impl Handoff for Counter {
    fn snapshot(&mut self) -> Vec<u8> {
        if self.trap_next_snapshot {
            panic!("snapshot asked to trap");
        }
        if std::mem::take(&mut self.spoil_next_snapshot) {
            return b"not a counter state".to_vec();
        }
        let mut state = STATE_TAG.to_vec();
        state.extend_from_slice(&self.count.to_le_bytes());
        state
    }

    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let count = state
            .strip_prefix(STATE_TAG)
            .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
            .ok_or_else(|| format!("not a {} state ({} bytes)", "counter/1", state.len()))?;
        self.count = u64::from_le_bytes(count);
        Ok(())
    }
}

export_service!(Counter, handoff);
