//! The stream world in each contract version a node loads:
//! `fogconnect:streaming@0.1.0` and `@0.2.0` (the same callbacks on the
//! same types, and the events). The stream actor calls a plugin through
//! [`StreamBindings`]; a 0.1.0 plugin is never called for events.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::service_0_2;
use super::stream_bindings;
use super::stream_bindings::fogconnect::streaming::types::{CommandError, Pull, WatermarkEvent};
use super::stream_bindings_0_2;
use super::stream_state::StreamState;
use crate::events::{NetworkEvent, NodeEvent};

/// Where a stream plugin's exports are, by contract version.
#[derive(Clone)]
pub enum StreamIndices {
    /// `fogconnect:streaming/stream-plugin@0.1.0`.
    V0_1(stream_bindings::StreamPluginIndices),
    /// `fogconnect:streaming/evented-stream-plugin@0.2.0`.
    V0_2(stream_bindings_0_2::EventedStreamPluginIndices),
}

impl StreamIndices {
    /// Finds the exports of either version in a pre-linked component.
    ///
    /// # Errors
    /// Why it fits neither version.
    pub fn new(pre: &InstancePre<StreamState>) -> wasmtime::Result<Self> {
        match stream_bindings::StreamPluginIndices::new(pre) {
            Ok(indices) => Ok(Self::V0_1(indices)),
            Err(v0_1) => match stream_bindings_0_2::EventedStreamPluginIndices::new(pre) {
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
    pub fn load(&self, store: &mut Store<StreamState>, instance: &Instance) -> wasmtime::Result<StreamBindings> {
        match self {
            Self::V0_1(indices) => Ok(StreamBindings::V0_1(indices.load(&mut *store, instance)?)),
            Self::V0_2(indices) => {
                let plugin = indices.load(&mut *store, instance)?;
                plugin.fogconnect_streaming0_2_0_handler().call_init(&mut *store)?;
                Ok(StreamBindings::V0_2(plugin))
            }
        }
    }
}

/// A stream plugin instance's exports, by contract version.
pub enum StreamBindings {
    /// `fogconnect:streaming/stream-plugin@0.1.0`.
    V0_1(stream_bindings::StreamPlugin),
    /// `fogconnect:streaming/evented-stream-plugin@0.2.0`.
    V0_2(stream_bindings_0_2::EventedStreamPlugin),
}

/// Calls the same handler function of whichever version.
macro_rules! either {
    ($self:expr, $call:ident($($arg:expr),*)) => {
        match $self {
            StreamBindings::V0_1(plugin) => plugin.fogconnect_streaming_handler().$call($($arg),*),
            StreamBindings::V0_2(plugin) => plugin.fogconnect_streaming0_2_0_handler().$call($($arg),*),
        }
    };
}

type Call<T> = wasmtime::Result<T>;

impl StreamBindings {
    /// Calls `send-init`.
    pub fn send_init(&self, store: &mut Store<StreamState>, conn: u64, params: &str) -> Call<Result<u64, String>> {
        either!(self, call_send_init(store, conn, params))
    }

    /// Calls `send-get`.
    pub fn send_get(&self, store: &mut Store<StreamState>, handles: &[u64]) -> Call<Vec<Pull>> {
        either!(self, call_send_get(store, handles))
    }

    /// Calls `send-stop`.
    pub fn send_stop(&self, store: &mut Store<StreamState>, handle: u64) -> Call<()> {
        either!(self, call_send_stop(store, handle))
    }

    /// Calls `on-event`.
    pub fn on_event(&self, store: &mut Store<StreamState>, handle: u64, event: WatermarkEvent) -> Call<()> {
        either!(self, call_on_event(store, handle, event))
    }

    /// Calls `recv-init`.
    pub fn recv_init(&self, store: &mut Store<StreamState>, conn: u64, params: &str) -> Call<Result<u64, String>> {
        either!(self, call_recv_init(store, conn, params))
    }

    /// Calls `recv-data`.
    pub fn recv_data(&self, store: &mut Store<StreamState>, handle: u64, data: &[u8]) -> Call<()> {
        either!(self, call_recv_data(store, handle, data))
    }

    /// Calls `on-command`.
    pub fn on_command(
        &self,
        store: &mut Store<StreamState>,
        conn: u64,
        message: &[u8],
    ) -> Call<Result<Vec<u8>, String>> {
        either!(self, call_on_command(store, conn, message))
    }

    /// Calls `on-command-reply`.
    pub fn on_command_reply(
        &self,
        store: &mut Store<StreamState>,
        id: u64,
        reply: Result<&[u8], &CommandError>,
    ) -> Call<()> {
        either!(self, call_on_command_reply(store, id, reply))
    }

    /// Whether the plugin takes events (0.2.0 on).
    pub fn takes_events(&self) -> bool {
        matches!(self, Self::V0_2(_))
    }

    /// Calls `on-network-event` (nothing for 0.1.0).
    pub fn on_network_event(&self, store: &mut Store<StreamState>, conn: u64, event: &NetworkEvent) -> Call<()> {
        match self {
            Self::V0_1(_) => Ok(()),
            Self::V0_2(plugin) => plugin.fogconnect_streaming0_2_0_handler().call_on_network_event(
                store,
                conn,
                &service_0_2::network_event(event),
            ),
        }
    }

    /// Calls `on-node-event` (nothing for 0.1.0, nor for an event the
    /// contract has no case for).
    pub fn on_node_event(&self, store: &mut Store<StreamState>, event: &NodeEvent) -> Call<()> {
        match (self, service_0_2::node_event(event)) {
            (Self::V0_2(plugin), Some(event)) => {
                plugin.fogconnect_streaming0_2_0_handler().call_on_node_event(store, &event)
            }
            _ => Ok(()),
        }
    }
}
