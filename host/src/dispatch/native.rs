//! Native handlers: services served by the embedding application's own
//! code (Rust, or C through the C API) instead of a plugin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{Dispatcher, NativeSlot, Refusal};
use crate::node::Connection;
use crate::transport::conn::EVENT_CHANNEL_CAPACITY;
use crate::transport::conn::{ConnEvent, ConnShared, Owner};
use crate::transport::wire::RefuseCode;

/// Connections a native handler may have waiting for `accept`; requests
/// beyond are refused with "service unavailable".
pub const NATIVE_BACKLOG: usize = 128;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The dispatcher's side of a native handler.
pub(super) struct NativeService {
    queue: mpsc::Sender<Connection>,
    token: u64,
}

impl NativeService {
    pub(super) fn new(slot: NativeSlot, dispatcher: Weak<Dispatcher>) -> (Self, Incoming) {
        let (queue, accepted) = mpsc::channel(NATIVE_BACKLOG);
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        (Self { queue, token }, Incoming { accepted, slot, token, dispatcher })
    }

    pub(super) fn token(&self) -> u64 {
        self.token
    }

    /// The application dropped its [`Incoming`].
    pub(super) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    fn full(service: u8) -> Refusal {
        (
            RefuseCode::ServiceUnavailable,
            format!("service {service} is busy: {NATIVE_BACKLOG} connections are waiting to be accepted"),
        )
    }

    pub(super) fn has_room(&self, service: u8) -> Result<(), Refusal> {
        if self.queue.capacity() == 0 { Err(Self::full(service)) } else { Ok(()) }
    }

    /// Reserves a backlog place for one connection.
    pub(super) fn reserve(&self, service: u8) -> Result<NativeRoute, Refusal> {
        let place = self.queue.clone().try_reserve_owned().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Self::full(service),
            mpsc::error::TrySendError::Closed(_) => (RefuseCode::NoSuchService, format!("no such service: {service}")),
        })?;
        let (owner, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        Ok(NativeRoute { owner, events, place })
    }
}

/// A connection on its way to a native handler: its event channel and its
/// reserved backlog place.
pub(crate) struct NativeRoute {
    owner: Owner,
    events: mpsc::Receiver<ConnEvent>,
    place: mpsc::OwnedPermit<Connection>,
}

impl NativeRoute {
    pub(super) fn owner(&self) -> Owner {
        self.owner.clone()
    }

    /// Queues the established connection for `accept`. Should the handler
    /// be gone by now, the connection is dropped, which closes it.
    pub(super) fn deliver(self, shared: Arc<ConnShared>) {
        self.place.send(Connection::new(shared, self.events));
    }
}

/// Incoming connections of a service served natively, from
/// [`crate::Node::incoming`], [`crate::Node::incoming_default`] or their
/// [`crate::NodeBuilder`] twins. Each accepted [`Connection`] is passive
/// and behaves as a plugin's connection does: messages in order, one
/// ending with its reason. Dropping the `Incoming` frees the service
/// number: connections waiting to be accepted are closed (the remote side
/// sees end of file) and new requests are refused "no such service".
///
/// # Examples
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use fogconnect::{ConnectionEvent, Node};
/// let node = Node::builder().node_id("device").start().await?;
/// let mut incoming = node.incoming(1)?;
/// while let Some(mut conn) = incoming.accept().await {
///     tokio::spawn(async move {
///         while let ConnectionEvent::Message(data) = conn.recv().await {
///             let _ = conn.send(data);
///         }
///     });
/// }
/// # Ok(()) }
/// ```
pub struct Incoming {
    accepted: mpsc::Receiver<Connection>,
    slot: NativeSlot,
    token: u64,
    dispatcher: Weak<Dispatcher>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("service", &self.service()).finish()
    }
}

impl Incoming {
    /// The next connection, in the order they were established; `None`
    /// once the node shut down.
    pub async fn accept(&mut self) -> Option<Connection> {
        self.accepted.recv().await
    }

    /// The service number served, `None` for the default handler.
    pub fn service(&self) -> Option<u8> {
        match self.slot {
            NativeSlot::Service(n) => Some(n),
            NativeSlot::Default => None,
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepted.close();
        if let Some(dispatcher) = self.dispatcher.upgrade() {
            dispatcher.remove_native(self.slot, self.token);
        }
    }
}
