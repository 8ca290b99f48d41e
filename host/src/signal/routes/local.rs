//! The sessions this server holds, by id: what a signaling server alone
//! needs, and what each server of a cluster keeps of its own clients.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::super::protocol::ServerMessage;

/// One registered WebSocket session.
pub(crate) struct LocalSession {
    /// Tells this session apart from earlier and later ones of its id.
    pub serial: u64,
    /// The session's outgoing queue (boxed: a queue allocates its slots
    /// in blocks, and a message inline is ~200 bytes; a session holds
    /// one block whatever it sends).
    pub tx: mpsc::Sender<Box<ServerMessage>>,
    /// Whether it asked for presence events.
    pub subscribed: bool,
    /// The revision of its ownership record in the cluster directory, once
    /// written (none alone, or while the cluster cannot be reached).
    pub revision: Option<u64>,
}

/// What registering a session changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The id was not held here and was not waiting out its offline grace.
    New,
    /// The id came back within the grace of its offline event: nobody was
    /// told it had gone.
    Returned,
    /// An older session of the id was replaced (and told so).
    Replaced,
}

/// Why a message could not be queued for a local session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalMiss {
    /// No session of that id here.
    Absent,
    /// Its queue is full.
    Busy,
}

/// The local session table and the offline events waiting out their grace.
#[derive(Default)]
pub(crate) struct LocalPeers {
    sessions: Mutex<HashMap<String, LocalSession>>,
    /// Ids whose offline event waits out the grace, with the serial of the
    /// session that left.
    offline_pending: Mutex<HashMap<String, u64>>,
}

impl LocalPeers {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.offline_pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registered sessions.
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    /// The ids held here.
    pub fn ids(&self) -> Vec<String> {
        self.sessions().keys().cloned().collect()
    }

    /// The ids held here with their session serials.
    pub fn held(&self) -> Vec<(String, u64)> {
        self.sessions().iter().map(|(id, s)| (id.clone(), s.serial)).collect()
    }

    /// Makes `session` the holder of `id`; an older session of the id is
    /// told it was replaced.
    pub fn insert(&self, id: &str, session: LocalSession) -> Inserted {
        let mut sessions = self.sessions();
        let serial = session.serial;
        let replaced = sessions.insert(id.to_string(), session);
        // Read under the sessions lock, as `remove` writes it: a
        // registration cannot slip between a removal and its record.
        let returned = self.pending().remove(id).is_some();
        match replaced {
            Some(old) if old.serial != serial => {
                let _ = old.tx.try_send(Box::new(ServerMessage::Replaced {
                    message: "this id registered again from another session".into(),
                }));
                Inserted::Replaced
            }
            Some(_) => Inserted::Returned,
            None if returned => Inserted::Returned,
            None => Inserted::New,
        }
    }

    /// Records the directory revision written for the session `serial` of
    /// `id`.
    pub fn set_revision(&self, id: &str, serial: u64, revision: Option<u64>) {
        if let Some(s) = self.sessions().get_mut(id).filter(|s| s.serial == serial) {
            s.revision = revision;
        }
    }

    /// The directory revision of the session `serial` of `id`.
    pub fn revision(&self, id: &str, serial: u64) -> Option<u64> {
        self.sessions().get(id).filter(|s| s.serial == serial).and_then(|s| s.revision)
    }

    /// Whether any session holds `id` here.
    pub fn contains(&self, id: &str) -> bool {
        self.sessions().contains_key(id)
    }

    /// Removes the session `serial` of `id` (not a newer one) and records
    /// its offline event as pending; whether it was removed, with its
    /// directory revision.
    pub fn remove(&self, id: &str, serial: u64) -> Option<Option<u64>> {
        let mut sessions = self.sessions();
        if sessions.get(id).is_none_or(|s| s.serial != serial) {
            return None;
        }
        let removed = sessions.remove(id)?;
        self.pending().insert(id.to_string(), serial);
        Some(removed.revision)
    }

    /// Ends the offline grace of the session `serial` of `id`: true when
    /// the id did not come back here, so its offline event is due.
    pub fn grace_over(&self, id: &str, serial: u64) -> bool {
        let sessions = self.sessions();
        let mut pending = self.pending();
        if pending.get(id) != Some(&serial) {
            return false;
        }
        pending.remove(id);
        !sessions.contains_key(id)
    }

    /// Closes the session holding `id` because another server took the id
    /// over; true when there was one.
    pub fn replaced_elsewhere(&self, id: &str) -> bool {
        let removed = self.sessions().remove(id);
        match removed {
            Some(old) => {
                let _ = old.tx.try_send(Box::new(ServerMessage::Replaced {
                    message: "this id registered again on another signaling server".into(),
                }));
                true
            }
            None => false,
        }
    }

    /// Marks the session `serial` of `id` as subscribed to presence.
    pub fn subscribe(&self, id: &str, serial: u64) {
        if let Some(s) = self.sessions().get_mut(id).filter(|s| s.serial == serial) {
            s.subscribed = true;
        }
    }

    /// Queues `message` for the session holding `to`.
    pub fn deliver(&self, to: &str, message: ServerMessage) -> Result<(), LocalMiss> {
        let sessions = self.sessions();
        let target = sessions.get(to).ok_or(LocalMiss::Absent)?;
        target.tx.try_send(Box::new(message)).map_err(|_| LocalMiss::Busy)
    }

    /// Tells every subscribed session but `id`'s own that `id` came or went.
    pub fn broadcast_presence(&self, id: &str, online: bool) {
        for (other, session) in self.sessions().iter() {
            if session.subscribed && other != id {
                let _ = session.tx.try_send(Box::new(ServerMessage::Presence { id: id.to_string(), online }));
            }
        }
    }
}
