//! The handles and functions of a stream plugin, written once for every
//! contract version: each version's module calls [`stream_api!`] with its
//! own generated `host` and the stream types in scope.

/// Defines `StreamConnection`, `Stream`, `log` and `monotonic_now` over the
/// `host` functions and the `CommandError`, `StreamError`,
/// `SendStatistics` and `LogLevel` types in scope.
macro_rules! stream_api {
    () => {
        /// One application connection to this plugin's service.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct StreamConnection(u64);

        impl StreamConnection {
            /// Wraps a raw handle given by the node.
            pub fn from_raw(handle: u64) -> Self {
                Self(handle)
            }

            /// The raw handle.
            pub fn raw(self) -> u64 {
                self.0
            }

            /// Identifier of the application node (empty once the connection ended).
            pub fn peer_id(self) -> String {
                host::peer_id(self.0)
            }

            /// Sends a command to the application; exactly one
            /// [`StreamPlugin::on_command_reply`] with the returned id follows.
            ///
            /// # Errors
            /// [`CommandError`] when the command cannot be sent at all (unknown
            /// connection, too large, too many waiting).
            pub fn send_command(self, message: &[u8], timeout_ms: u32) -> Result<u64, CommandError> {
                host::send_command(self.0, message, timeout_ms)
            }
        }

        /// A stream handle chosen by the plugin (see `send_init` / `recv_init`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct Stream(u64);

        impl Stream {
            /// A handle from a plugin-chosen number.
            pub fn from_raw(handle: u64) -> Self {
                Self(handle)
            }

            /// The raw handle.
            pub fn raw(self) -> u64 {
                self.0
            }

            /// Bytes of this send stream waiting in its send buffer.
            ///
            /// # Errors
            /// [`StreamError::UnknownStream`] when it is not a live send stream.
            pub fn buffered(self) -> Result<u64, StreamError> {
                host::buffered(self.0)
            }

            /// Rate, bytes sent and buffered, and the path's rtt, loss and
            /// congestion window.
            ///
            /// # Errors
            /// [`StreamError::UnknownStream`] when it is not a live send stream.
            pub fn send_status(self) -> Result<SendStatistics, StreamError> {
                host::send_status(self.0)
            }

            /// Sets the send-buffer watermarks in bytes (`low <= warn <= high`; all
            /// zero turns events and the pause off).
            ///
            /// # Errors
            /// [`StreamError::UnknownStream`], [`StreamError::InvalidWatermarks`].
            pub fn set_watermarks(self, low: u64, warn: u64, high: u64) -> Result<(), StreamError> {
                host::set_watermarks(self.0, low, warn, high)
            }
        }

        /// Writes a line to the node's log.
        pub fn log(level: LogLevel, message: &str) {
            host::log(level, message)
        }

        /// Monotonic time in nanoseconds.
        pub fn monotonic_now() -> u64 {
            host::monotonic_now()
        }
    };
}
