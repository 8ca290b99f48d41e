//! The host side of `fogconnect:streaming@0.2.0`: the imports of 0.1.0
//! (the same functions on the same types) and those of the events.

use super::bindings_0_2::fogconnect::plugin::types as plugin_types;
use super::service_0_2;
use super::stream_bindings::fogconnect::streaming::{host as host_0_1, types};
use super::stream_bindings_0_2::fogconnect::streaming0_2_0::host;
use super::stream_state::StreamState;

impl plugin_types::Host for StreamState {}

impl host::Host for StreamState {
    fn buffered(&mut self, handle: u64) -> Result<u64, types::StreamError> {
        host_0_1::Host::buffered(self, handle)
    }

    fn send_status(&mut self, handle: u64) -> Result<types::SendStatistics, types::StreamError> {
        host_0_1::Host::send_status(self, handle)
    }

    fn set_watermarks(&mut self, handle: u64, low: u64, warn: u64, high: u64) -> Result<(), types::StreamError> {
        host_0_1::Host::set_watermarks(self, handle, low, warn, high)
    }

    fn send_command(&mut self, conn: u64, message: Vec<u8>, timeout_ms: u32) -> Result<u64, types::CommandError> {
        host_0_1::Host::send_command(self, conn, message, timeout_ms)
    }

    fn peer_id(&mut self, conn: u64) -> String {
        host_0_1::Host::peer_id(self, conn)
    }

    fn path(&mut self, conn: u64) -> Option<plugin_types::PathInfo> {
        self.core.conns.get(&conn).map(|c| service_0_2::path_info(&c.shared.path()))
    }

    fn subscribe(&mut self, flags: plugin_types::NodeEventKinds) {
        service_0_2::subscribe(&self.ctx, &mut self.subscriptions, flags);
    }

    fn watch_peer(&mut self, peer: String) -> Result<(), plugin_types::WatchError> {
        service_0_2::watch_peer(&self.ctx, &mut self.subscriptions, &peer)
    }

    fn unwatch_peer(&mut self, peer: String) {
        self.subscriptions.unwatch(&peer);
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        host_0_1::Host::log(self, level, message);
    }

    fn monotonic_now(&mut self) -> u64 {
        host_0_1::Host::monotonic_now(self)
    }
}
