//! The connection handle of a service plugin, written once for every
//! contract version: each version's module calls [`connection_api!`] with
//! its own generated `host` and `types` in scope.

/// Defines `Connection` over the `host` functions and the `ConnError` and
/// `ConnectionStats` types in scope; `$convention_doc` documents what
/// `convention` returns in that contract version.
macro_rules! connection_api {
    ($convention_doc:literal) => {
        /// One connection of this plugin's service.
        ///
        /// A cheap copyable handle; it stays valid until `on_close` was
        /// called for it, after which every method returns
        /// [`ConnError::UnknownConnection`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct Connection(u64);

        impl Connection {
            /// Wraps a raw handle given by the node.
            pub fn from_raw(handle: u64) -> Self {
                Self(handle)
            }

            /// The raw handle, e.g. as a map key.
            pub fn raw(self) -> u64 {
                self.0
            }

            /// Queues one message; it arrives as exactly one `on_recv` on
            /// the remote side.
            ///
            /// # Errors
            /// [`ConnError::TooLarge`] above the node's maximum message
            /// size, [`ConnError::BufferFull`] when the send buffer is full,
            /// [`ConnError::Closed`] / [`ConnError::UnknownConnection`] when
            /// the connection has ended.
            pub fn send(self, data: &[u8]) -> Result<(), ConnError> {
                host::send(self.0, data)
            }

            /// Closes the connection in an orderly way; `on_close` with
            /// [`CloseKind::Local`] follows.
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn close(self) -> Result<(), ConnError> {
                host::close(self.0)
            }

            #[doc = $convention_doc]
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn convention(self) -> Result<u32, ConnError> {
                host::convention(self.0)
            }

            /// True when the remote node dialled this connection.
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn is_passive(self) -> Result<bool, ConnError> {
                host::is_passive(self.0)
            }

            /// Identifier of the remote node.
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn peer_id(self) -> Result<String, ConnError> {
                host::peer_id(self.0)
            }

            /// The connection's user-data slot (0 until set).
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn user_data(self) -> Result<u64, ConnError> {
                host::user_data(self.0)
            }

            /// Stores a value in the connection's user-data slot.
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn set_user_data(self, value: u64) -> Result<(), ConnError> {
                host::set_user_data(self.0, value)
            }

            /// Counters and measurements of the connection.
            ///
            /// # Errors
            /// [`ConnError::UnknownConnection`] when the connection has
            /// ended.
            pub fn stats(self) -> Result<ConnectionStats, ConnError> {
                host::stats(self.0)
            }

            /// What the connection's transport counts beyond
            /// [`stats`](Self::stats): a UDP connection's datagram size and
            /// datagrams lost, a KCP session's drops (see
            /// [`crate::transport`]; the plugin then imports
            /// `fogconnect:transport/stats@0.1.0`).
            ///
            /// # Errors
            /// [`crate::transport::StatsError::UnknownConnection`] when the
            /// connection has ended.
            pub fn transport_stats(self) -> Result<$crate::transport::TransportStats, $crate::transport::StatsError> {
                $crate::transport::stats(self.0)
            }
        }

        /// Starts a connection to `peer` (a `host:port` address or a peer
        /// id) for `service`. The result arrives later as `on_connect` or
        /// `on_close`.
        ///
        /// # Errors
        /// [`ConnectError`] when the request cannot even be started.
        pub fn connect_peer(peer: &str, transport: Transport, service: u8) -> Result<Connection, ConnectError> {
            host::connect_peer(peer, transport, service).map(Connection)
        }

        /// Writes a line to the node's log.
        pub fn log(level: LogLevel, message: &str) {
            host::log(level, message)
        }

        /// Monotonic time in nanoseconds since a point fixed for the node's
        /// lifetime.
        pub fn monotonic_now() -> u64 {
            host::monotonic_now()
        }
    };
}
