//! The service world in each contract version a node loads:
//! `fogconnect:plugin@0.1.0` (connections and messages) and `@0.2.0` (the
//! same with network and node events). The actor calls a plugin through
//! [`ServiceBindings`] and never sees which version it is, except that a
//! 0.1.0 plugin is not told about events.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::bindings;
use super::bindings_0_2;
use super::service_0_2;
use super::state::{PluginState, wit_reason};
use crate::events::{NetworkEvent, NodeEvent};
use crate::transport::conn::{CloseReason, ConnShared};

/// Where a service plugin's exports are, by contract version.
#[derive(Clone)]
pub enum ServiceIndices {
    /// `fogconnect:plugin/service@0.1.0`.
    V0_1(bindings::ServiceIndices),
    /// `fogconnect:plugin/evented-service@0.2.0`.
    V0_2(bindings_0_2::EventedServiceIndices),
}

impl ServiceIndices {
    /// Finds the exports of either version in a pre-linked component.
    ///
    /// # Errors
    /// Why it fits neither version.
    pub fn new(pre: &InstancePre<PluginState>) -> wasmtime::Result<Self> {
        match bindings::ServiceIndices::new(pre) {
            Ok(indices) => Ok(Self::V0_1(indices)),
            Err(v0_1) => match bindings_0_2::EventedServiceIndices::new(pre) {
                Ok(indices) => Ok(Self::V0_2(indices)),
                Err(v0_2) => Err(wasmtime::format_err!("as version 0.1.0: {v0_1:#}; as version 0.2.0: {v0_2:#}")),
            },
        }
    }

    /// The exports of an instance; a 0.2.0 plugin's `init` has run when
    /// this returns.
    ///
    /// # Errors
    /// A missing export, or `init` failed.
    pub fn load(&self, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<ServiceBindings> {
        match self {
            Self::V0_1(indices) => Ok(ServiceBindings::V0_1(indices.load(&mut *store, instance)?)),
            Self::V0_2(indices) => {
                let plugin = indices.load(&mut *store, instance)?;
                plugin.fogconnect_plugin_handler().call_init(&mut *store)?;
                Ok(ServiceBindings::V0_2(plugin))
            }
        }
    }

    /// The contract version, e.g. `0.2.0`.
    pub fn version(&self) -> &'static str {
        match self {
            Self::V0_1(_) => "0.1.0",
            Self::V0_2(_) => "0.2.0",
        }
    }
}

/// A service plugin instance's exports, by contract version.
pub enum ServiceBindings {
    /// `fogconnect:plugin/service@0.1.0`.
    V0_1(bindings::Service),
    /// `fogconnect:plugin/evented-service@0.2.0`.
    V0_2(bindings_0_2::EventedService),
}

impl ServiceBindings {
    /// Calls `on-connect`.
    pub fn on_connect(&self, store: &mut Store<PluginState>, id: u64, shared: &ConnShared) -> wasmtime::Result<()> {
        match self {
            Self::V0_1(plugin) => {
                let meta = shared.meta();
                let info = bindings::fogconnect::plugin::types::ConnectInfo {
                    peer_id: meta.peer_id.clone(),
                    passive: meta.passive,
                    convention: meta.convention.raw_for_plugin_contract_0_1(),
                    remote_address: meta.remote.to_string(),
                };
                plugin.fogconnect_plugin_handler().call_on_connect(store, id, &info)
            }
            Self::V0_2(plugin) => {
                let info = service_0_2::connect_info(shared);
                plugin.fogconnect_plugin_handler().call_on_connect(store, id, &info)
            }
        }
    }

    /// Calls `on-recv`.
    pub fn on_recv(&self, store: &mut Store<PluginState>, id: u64, data: &[u8]) -> wasmtime::Result<()> {
        match self {
            Self::V0_1(plugin) => plugin.fogconnect_plugin_handler().call_on_recv(store, id, data),
            Self::V0_2(plugin) => plugin.fogconnect_plugin_handler().call_on_recv(store, id, data),
        }
    }

    /// Calls `on-close`.
    pub fn on_close(&self, store: &mut Store<PluginState>, id: u64, reason: &CloseReason) -> wasmtime::Result<()> {
        match self {
            Self::V0_1(plugin) => plugin.fogconnect_plugin_handler().call_on_close(store, id, &wit_reason(reason)),
            Self::V0_2(plugin) => {
                plugin.fogconnect_plugin_handler().call_on_close(store, id, &service_0_2::close_reason(reason))
            }
        }
    }

    /// Whether the plugin takes events (0.2.0 on): a 0.1.0 plugin is
    /// never called for them.
    pub fn takes_events(&self) -> bool {
        matches!(self, Self::V0_2(_))
    }

    /// Calls `on-network-event` (nothing for 0.1.0).
    pub fn on_network_event(
        &self,
        store: &mut Store<PluginState>,
        id: u64,
        event: &NetworkEvent,
    ) -> wasmtime::Result<()> {
        match self {
            Self::V0_1(_) => Ok(()),
            Self::V0_2(plugin) => {
                plugin.fogconnect_plugin_handler().call_on_network_event(store, id, &service_0_2::network_event(event))
            }
        }
    }

    /// Calls `on-node-event` (nothing for 0.1.0, nor for an event the
    /// contract has no case for).
    pub fn on_node_event(&self, store: &mut Store<PluginState>, event: &NodeEvent) -> wasmtime::Result<()> {
        match (self, service_0_2::node_event(event)) {
            (Self::V0_2(plugin), Some(event)) => plugin.fogconnect_plugin_handler().call_on_node_event(store, &event),
            _ => Ok(()),
        }
    }
}
