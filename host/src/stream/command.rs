//! Commands between stream peers, sans-IO: each command a side sends
//! waits for one reply, routed back to its caller, or times out (the
//! device SDK's default is about 7.5 s). Replies to unknown or expired
//! commands are dropped; a caller learns of its timeout exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The device SDK's default reply timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(7_500);

/// Largest command or reply the SDK advises (16 KiB); larger ones are
/// refused before they are sent.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// Identifies one command on one connection (carried with its reply).
pub type CommandId = u64;

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    /// The command is larger than [`MAX_COMMAND_BYTES`].
    #[error("command of {0} bytes exceeds {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
    /// Too many commands are waiting for replies already.
    #[error("{0} commands are already waiting for replies")]
    TooMany(usize),
}

/// The commands one side has sent and not seen answered, with their
/// callers (`C`: whatever the driver needs to hand the reply back).
#[derive(Debug)]
pub struct CommandTable<C> {
    next_id: CommandId,
    limit: usize,
    pending: HashMap<CommandId, (Instant, Duration, C)>,
}

impl<C> CommandTable<C> {
    /// A table holding at most `limit` waiting commands.
    pub fn new(limit: usize) -> Self {
        Self { next_id: 1, limit: limit.max(1), pending: HashMap::new() }
    }

    /// Registers a command of `len` bytes from `caller`, sent at `now`,
    /// waiting at most `timeout`; returns the id to send it with.
    ///
    /// # Errors
    /// [`CommandError::TooLarge`], [`CommandError::TooMany`].
    pub fn send(&mut self, len: usize, caller: C, timeout: Duration, now: Instant) -> Result<CommandId, CommandError> {
        if len > MAX_COMMAND_BYTES {
            return Err(CommandError::TooLarge(len));
        }
        if self.pending.len() >= self.limit {
            return Err(CommandError::TooMany(self.pending.len()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, (now + timeout, timeout, caller));
        Ok(id)
    }

    /// The caller waiting for the reply to `id`, which it gets; `None` for
    /// a reply to an unknown, answered or expired command (dropped).
    pub fn reply(&mut self, id: CommandId) -> Option<C> {
        self.pending.remove(&id).map(|(_, _, caller)| caller)
    }

    /// The caller waiting for the reply to `id`, left waiting.
    pub fn caller(&self, id: CommandId) -> Option<&C> {
        self.pending.get(&id).map(|(_, _, caller)| caller)
    }

    /// Ends the waiting commands whose caller matches (e.g. those of a
    /// connection that closed), in id order.
    pub fn drain_matching(&mut self, matches: impl Fn(&C) -> bool) -> Vec<(CommandId, C)> {
        let ids: Vec<CommandId> =
            self.pending.iter().filter(|(_, (_, _, caller))| matches(caller)).map(|(&id, _)| id).collect();
        let mut out: Vec<_> =
            ids.into_iter().filter_map(|id| self.pending.remove(&id).map(|(_, _, caller)| (id, caller))).collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Commands waiting for replies.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no command waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the next command times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|(deadline, ..)| *deadline).min()
    }

    /// The commands that timed out by `now`, with their callers and the
    /// error to give them; each once.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(CommandId, C, CommandError)> {
        let expired: Vec<CommandId> =
            self.pending.iter().filter(|(_, (deadline, ..))| *deadline <= now).map(|(&id, _)| id).collect();
        let mut out: Vec<_> = expired
            .into_iter()
            .filter_map(|id| self.pending.remove(&id).map(|(_, t, caller)| (id, caller, CommandError::TimedOut(t))))
            .collect();
        out.sort_by_key(|(id, ..)| *id);
        out
    }

    /// Ends every waiting command (the connection closed); returns their
    /// callers.
    pub fn drain(&mut self) -> Vec<(CommandId, C)> {
        let mut out: Vec<_> = self.pending.drain().map(|(id, (_, _, caller))| (id, caller)).collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn replies_go_to_their_callers_once() {
        let t0 = Instant::now();
        let mut table = CommandTable::new(8);
        let a = table.send(10, "a", DEFAULT_TIMEOUT, t0).expect("sent");
        let b = table.send(10, "b", DEFAULT_TIMEOUT, t0).expect("sent");
        assert_ne!(a, b);
        assert_eq!(table.reply(b), Some("b"));
        assert_eq!(table.reply(b), None, "a second reply is dropped");
        assert_eq!(table.reply(999), None, "a reply to nothing is dropped");
        assert_eq!(table.reply(a), Some("a"));
        assert!(table.is_empty());
        assert_eq!(table.poll_timeout(), None);
    }

    #[test]
    fn timeouts_are_reported_once_and_late_replies_dropped() {
        let t0 = Instant::now();
        let mut table = CommandTable::new(8);
        let short = table.send(1, "short", 100 * MS, t0).expect("sent");
        let long = table.send(1, "long", DEFAULT_TIMEOUT, t0).expect("sent");
        assert_eq!(table.poll_timeout(), Some(t0 + 100 * MS));
        assert!(table.handle_timeout(t0 + 99 * MS).is_empty());
        assert_eq!(table.handle_timeout(t0 + 100 * MS), [(short, "short", CommandError::TimedOut(100 * MS))]);
        assert!(table.handle_timeout(t0 + 200 * MS).is_empty());
        assert_eq!(table.reply(short), None);
        assert_eq!(table.poll_timeout(), Some(t0 + DEFAULT_TIMEOUT));
        assert_eq!(table.drain(), [(long, "long")]);
        assert!(table.is_empty());
    }

    #[test]
    fn oversized_and_excess_commands_are_refused() {
        let t0 = Instant::now();
        let mut table = CommandTable::new(2);
        assert_eq!(table.send(MAX_COMMAND_BYTES + 1, (), DEFAULT_TIMEOUT, t0), Err(CommandError::TooLarge(16_385)));
        table.send(MAX_COMMAND_BYTES, (), DEFAULT_TIMEOUT, t0).expect("at the limit");
        table.send(0, (), DEFAULT_TIMEOUT, t0).expect("second");
        assert_eq!(table.send(0, (), DEFAULT_TIMEOUT, t0), Err(CommandError::TooMany(2)));
    }
}
