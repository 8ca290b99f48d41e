//! The dispatcher: which service gets an incoming connection.
//!
//! Every incoming connect request names a service number (bits 4..11 of the
//! convention number). The dispatcher holds what serves each number — a
//! plugin actor (Wasm, [`crate::runtime`]), a native stream service
//! ([`crate::stream::native`]) or a native handler of the embedding
//! application ([`Incoming`]) — and a native default handler for
//! every number nobody serves on its own (the C API's passive callback).
//! Order: the number's own server (plugin or native), then the default,
//! else "no such service". One table, so a number is never served twice.

mod native;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use native::Incoming;
pub(crate) use native::NativeRoute;

use crate::convention::{Convention, Transport};
#[cfg(feature = "plugins")]
use crate::node::LoadedService;
#[cfg(feature = "plugins")]
use crate::runtime::actor::PluginRunState;
use crate::stream::native::NativeStreams;
use crate::transport::conn::{ConnShared, Owner};
use crate::transport::wire::RefuseCode;

/// A refusal: the code and the message the caller sees.
pub(crate) type Refusal = (RefuseCode, String);

/// Which native slot a handler occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NativeSlot {
    /// One service number.
    Service(u8),
    /// Every number without a server of its own.
    Default,
}

#[derive(Default)]
struct Table {
    #[cfg(feature = "plugins")]
    plugins: HashMap<u8, Arc<LoadedService>>,
    native: HashMap<NativeSlot, native::NativeService>,
    /// Native stream services ([`crate::stream::native`]).
    streams: HashMap<u8, NativeStreams>,
}

impl Table {
    /// Whether `slot` is taken: by a live native handler, or for a single
    /// number also by a plugin.
    fn is_taken(&self, slot: NativeSlot) -> bool {
        self.native.get(&slot).is_some_and(|h| !h.is_closed())
            || matches!(slot, NativeSlot::Service(n) if self.has_plugin(n) || self.streams.contains_key(&n))
    }

    /// Whether a plugin serves `service`.
    fn has_plugin(&self, service: u8) -> bool {
        #[cfg(feature = "plugins")]
        return self.plugins.contains_key(&service);
        #[cfg(not(feature = "plugins"))]
        {
            let _ = service;
            false
        }
    }

    /// The actor of the plugin serving `service`, or why it is not
    /// served; `None` when no plugin is loaded for it.
    #[cfg(feature = "plugins")]
    fn plugin_actor(&self, service: u8) -> Option<Result<Server<'_>, Refusal>> {
        let plugin = self.plugins.get(&service)?;
        Some(match plugin.actor.status.state() {
            PluginRunState::Disabled => Err((
                RefuseCode::ServiceUnavailable,
                format!("service {service} is disabled after repeated plugin crashes"),
            )),
            PluginRunState::Stopped => Err((RefuseCode::ServiceUnavailable, format!("service {service} is stopping"))),
            _ => Ok(Server::Actor(&plugin.actor.tx)),
        })
    }
}

/// What serves a number.
enum Server<'a> {
    /// An actor told of connections with `Opened`: a plugin's, or a
    /// native stream service's.
    Actor(&'a Owner),
    Native(&'a native::NativeService),
}

/// The server of `convention`, asked for over a link of `carrier`, in
/// `table`: the number's plugin, else its native handler, else the
/// default handler. Nodes reach each other over QUIC links (QUIC streams,
/// UDP datagrams) and browsers over RTC: a convention naming a transport
/// the link does not carry is refused.
fn locate(table: &Table, convention: Convention, carrier: Transport) -> Result<Server<'_>, Refusal> {
    let transport = convention.transport();
    if !carrier.carries(transport) {
        let offered = if transport.is_offered() { format!(" over {carrier}") } else { String::new() };
        return Err((
            RefuseCode::UnsupportedTransport,
            format!(
                "unsupported transport: {transport} (code {}) is not offered by this node{offered}",
                transport.code()
            ),
        ));
    }
    let service = convention.service();
    #[cfg(feature = "plugins")]
    if let Some(served) = table.plugin_actor(service) {
        return served;
    }
    if let Some(streams) = table.streams.get(&service).filter(|s| !s.owner.is_closed()) {
        return Ok(Server::Actor(&streams.owner));
    }
    [NativeSlot::Service(service), NativeSlot::Default]
        .into_iter()
        .find_map(|slot| table.native.get(&slot).filter(|handler| !handler.is_closed()))
        .map(Server::Native)
        .ok_or_else(|| (RefuseCode::NoSuchService, format!("no such service: {service}")))
}

/// Where incoming connections go, by service number.
#[derive(Default)]
pub(crate) struct Dispatcher {
    table: RwLock<Table>,
}

/// The server a connect request was routed to.
pub(crate) enum Route {
    /// An actor (a plugin's, or a native stream service's): it learns of
    /// the connection with `Opened`.
    Plugin(Owner),
    /// A native handler: the connection is handed to its [`Incoming`].
    Native(NativeRoute),
}

impl Route {
    /// Where the connection's events go.
    pub(crate) fn owner(&self) -> Owner {
        match self {
            Route::Plugin(owner) => owner.clone(),
            Route::Native(native) => native.owner(),
        }
    }

    /// Whether the owner is told of the connection with an `Opened` event
    /// (plugins) rather than by [`Route::deliver`] (native handlers).
    pub(crate) fn announces(&self) -> bool {
        matches!(self, Route::Plugin(_))
    }

    /// Hands an established connection to a native handler (nothing to do
    /// for plugins, which were told by `Opened`).
    pub(crate) fn deliver(self, shared: Arc<ConnShared>) {
        if let Route::Native(native) = self {
            native.deliver(shared);
        }
    }
}

impl Dispatcher {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request for `convention` over `carrier` would be accepted, without
    /// reserving anything (signaling answers with this before the checks).
    ///
    /// # Errors
    /// The refusal the caller would see.
    pub(crate) fn check(&self, convention: Convention, carrier: Transport) -> Result<(), Refusal> {
        let table = self.table();
        match locate(&table, convention, carrier)? {
            Server::Actor(_) => Ok(()),
            Server::Native(handler) => handler.has_room(convention.service()),
        }
    }

    /// The server of an incoming connection for `convention` over
    /// `carrier`; a native
    /// handler's backlog place is reserved.
    ///
    /// # Errors
    /// The refusal to send: unsupported transport, no such service, a
    /// disabled or stopping plugin, a native handler whose backlog is full.
    pub(crate) fn route(&self, convention: Convention, carrier: Transport) -> Result<Route, Refusal> {
        let table = self.table();
        match locate(&table, convention, carrier)? {
            Server::Actor(owner) => Ok(Route::Plugin(owner.clone())),
            Server::Native(handler) => handler.reserve(convention.service()).map(Route::Native),
        }
    }

    /// Adds a plugin for `service`.
    #[cfg(feature = "plugins")]
    ///
    /// # Errors
    /// The plugin back when the number is already served (by a plugin or
    /// its own native handler).
    pub(crate) fn add_plugin(&self, service: u8, plugin: Arc<LoadedService>) -> Result<(), Arc<LoadedService>> {
        let mut table = self.table_mut();
        if table.is_taken(NativeSlot::Service(service)) {
            return Err(plugin);
        }
        table.plugins.insert(service, plugin);
        Ok(())
    }

    /// Whether `service` is served by a plugin or its own native handler.
    #[cfg(feature = "plugins")]
    pub(crate) fn is_served(&self, service: u8) -> bool {
        self.table().is_taken(NativeSlot::Service(service))
    }

    /// The plugin of `service`.
    #[cfg(feature = "plugins")]
    pub(crate) fn plugin(&self, service: u8) -> Option<Arc<LoadedService>> {
        self.table().plugins.get(&service).cloned()
    }

    /// Every plugin, by service number.
    #[cfg(feature = "plugins")]
    pub(crate) fn plugins(&self) -> Vec<(u8, Arc<LoadedService>)> {
        self.table().plugins.iter().map(|(&service, plugin)| (service, plugin.clone())).collect()
    }

    /// Removes the plugin of `service`.
    #[cfg(feature = "plugins")]
    pub(crate) fn remove_plugin(&self, service: u8) -> Option<Arc<LoadedService>> {
        self.table_mut().plugins.remove(&service)
    }

    /// Removes every plugin (at shutdown).
    #[cfg(feature = "plugins")]
    pub(crate) fn take_plugins(&self) -> Vec<Arc<LoadedService>> {
        self.table_mut().plugins.drain().map(|(_, plugin)| plugin).collect()
    }

    /// Registers a native handler in `slot`.
    ///
    /// # Errors
    /// The slot when it is taken (a live handler, or for a single number
    /// also a plugin).
    pub(crate) fn add_native(self: &Arc<Self>, slot: NativeSlot) -> Result<Incoming, NativeSlot> {
        let mut table = self.table_mut();
        if table.is_taken(slot) {
            return Err(slot);
        }
        let (service, incoming) = native::NativeService::new(slot, Arc::downgrade(self));
        table.native.insert(slot, service);
        Ok(incoming)
    }

    /// Removes the native handler of `slot` if it is the one with `token`.
    fn remove_native(&self, slot: NativeSlot, token: u64) {
        let mut table = self.table_mut();
        if table.native.get(&slot).is_some_and(|h| h.token() == token) {
            table.native.remove(&slot);
        }
    }

    /// Ends every native handler (at shutdown): their `accept` returns
    /// `None`. Returns the native stream services' event channels, which
    /// are told to shut down by the caller.
    pub(crate) fn close_native(&self) -> Vec<Owner> {
        let mut table = self.table_mut();
        table.native.clear();
        table.streams.drain().map(|(_, streams)| streams.owner).collect()
    }

    /// Registers a native stream service for `service`; false when the
    /// number is taken.
    pub(crate) fn add_native_streams(&self, service: u8, streams: NativeStreams) -> bool {
        let mut table = self.table_mut();
        if table.is_taken(NativeSlot::Service(service)) {
            return false;
        }
        table.streams.insert(service, streams);
        true
    }

    /// Removes the native stream service of `service` if it is the one
    /// with `token`.
    pub(crate) fn remove_native_streams(&self, service: u8, token: u64) {
        let mut table = self.table_mut();
        if table.streams.get(&service).is_some_and(|s| s.token == token) {
            table.streams.remove(&service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal for `transport` asked for over a `carrier` link, if the
    /// refusal is for the transport.
    fn transport_refusal(carrier: Transport, transport: Transport) -> Option<String> {
        match locate(&Table::default(), Convention::new(transport, 1), carrier) {
            Err((RefuseCode::UnsupportedTransport, message)) => Some(message),
            _ => None,
        }
    }

    #[test]
    fn every_transport_code_is_served_or_refused_by_the_link_it_comes_over() {
        for transport in Transport::ALL {
            let over_quic = transport_refusal(Transport::Quic, transport);
            let over_rtc = transport_refusal(Transport::Rtc, transport);
            match transport {
                // Past the transport check: refused only for the empty table.
                Transport::Quic | Transport::Udp | Transport::Kcp => assert_eq!(over_quic, None, "{transport}"),
                _ => {
                    let message = over_quic.unwrap_or_default();
                    let expected = format!("unsupported transport: {transport} (code {})", transport.code());
                    assert!(message.starts_with(&expected), "{transport}: {message}");
                }
            }
            assert_eq!(over_rtc.is_none(), transport == Transport::Rtc, "{transport} over RTC");
        }
    }
}
