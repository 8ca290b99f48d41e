//! The one UDP socket of a node, as quinn sees it.
//!
//! [`FogSocket`] implements quinn's [`AsyncUdpSocket`] over a tokio UDP
//! socket and demultiplexes every received datagram by its first byte
//! (RFC 7983 / RFC 9443) before quinn sees it: QUIC packets go to quinn,
//! STUN and TURN ChannelData go to a side channel for the NAT traversal and
//! relay layers. Written by hand because quinn offers no hook between the
//! socket and its endpoint; the GSO/GRO socket state comes from `quinn-udp`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::conn::{PathKind, path_of};

/// What a received datagram is, judged by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// STUN message (first byte 0..=3).
    Stun,
    /// TURN ChannelData (first byte 64..=79 while a TURN channel is bound).
    ChannelData,
    /// DTLS record (first byte 20..=63): a browser's WebRTC connection.
    Dtls,
    /// QUIC short header (64..=127) or long header (192..=255) packet.
    Quic,
    /// A sealed KCP datagram (128..=191, RTP's range in RFC 9443: the
    /// node's socket carries no RTP).
    Kcp,
    /// Anything else: dropped.
    Unknown,
}

/// Classifies a datagram by its first byte (RFC 9443 section 3).
/// `channels_bound` tells whether TURN channels are in use on this socket
/// (only then is 64..=79 ChannelData rather than a QUIC short header).
///
/// QUIC packets always have the fixed bit (0x40) set because nodes disable
/// QUIC bit greasing (RFC 9287) on their endpoint; 128..=191 (RTP/RTCP in
/// RFC 9443) is therefore never QUIC here, and carries KCP.
pub fn classify(first_byte: u8, channels_bound: bool) -> PacketKind {
    match first_byte {
        0..=3 => PacketKind::Stun,
        20..=63 => PacketKind::Dtls,
        64..=79 if channels_bound => PacketKind::ChannelData,
        64..=127 | 192..=255 => PacketKind::Quic,
        128..=191 => PacketKind::Kcp,
        _ => PacketKind::Unknown,
    }
}

/// A KCP conversation's place on the node's socket: its datagrams arrive
/// on `inbox` until this is dropped.
pub struct KcpRegistration {
    routes: Arc<KcpRoutes>,
    conversation: u32,
    /// The route's end, to tell it from a later registration's.
    route: mpsc::Sender<Bytes>,
    /// The conversation's datagrams, as they arrived.
    pub inbox: mpsc::Receiver<Bytes>,
}

impl fmt::Debug for KcpRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KcpRegistration").field("conversation", &self.conversation).finish()
    }
}

impl Drop for KcpRegistration {
    fn drop(&mut self) {
        let mut routes = self.routes.lock();
        if routes.get(&self.conversation).is_some_and(|route| route.same_channel(&self.route)) {
            routes.remove(&self.conversation);
        }
    }
}

/// Identifies an extra socket of the facade (see [`FogSocket::add_aux`]).
pub type AuxId = u16;

/// A datagram that is not QUIC, handed to the side channel.
#[derive(Debug, Clone)]
pub struct SideDatagram {
    /// The extra socket it arrived on; `None` for the node's socket.
    pub via: Option<AuxId>,
    /// Sender address.
    pub from: SocketAddr,
    /// The node's address it was sent to, when known: the node's own
    /// socket tells (WebRTC needs it when bound to a wildcard), and for a
    /// datagram that came through the node's relay allocation it is the
    /// relayed address.
    pub to: Option<SocketAddr>,
    /// What the first byte says it is.
    pub kind: PacketKind,
    /// The datagram.
    pub data: Bytes,
}

/// Counters of the socket facade.
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Datagrams passed to quinn.
    pub quic: AtomicU64,
    /// Datagrams passed to the side channel.
    pub side: AtomicU64,
    /// Datagrams dropped: unknown first byte or side channel full.
    pub dropped: AtomicU64,
    /// Sends that handed the kernel several datagrams at once (segmentation
    /// offload, GSO).
    pub offload_sends: AtomicU64,
    /// Receives that took several datagrams from the kernel at once
    /// (receive offload, GRO).
    pub offload_receives: AtomicU64,
}

/// An extra socket and its receive task.
struct AuxSocket {
    io: Arc<tokio::net::UdpSocket>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AuxSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How QUIC datagrams quinn addresses to a remote address travel, when
/// not plainly from the node's socket to that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// From the extra socket with this id.
    Aux(AuxId),
    /// Through this node's TURN allocation to `peer` (the address quinn
    /// names is then the peer's presented address, see
    /// [`FogSocket::attach_relay`]).
    Relay {
        /// The peer's address as the relay sees it.
        peer: SocketAddr,
    },
    /// As is from the node's socket; the address is a relayed address of
    /// the peer's TURN allocation (recorded so the path is reported as
    /// relayed).
    PeerRelay,
    /// To another address than quinn names, from the node's socket or an
    /// extra one: the path moved under a QUIC connection (relay to direct,
    /// or to the peer's new relayed address), and datagrams from `to` are
    /// presented to quinn as from the named address.
    Moved {
        /// Where the datagrams go now.
        to: SocketAddr,
        /// The extra socket they leave from, if any.
        aux: Option<AuxId>,
        /// Whether `to` is a relayed address of the peer's allocation.
        relayed: bool,
    },
}

impl Route {
    fn aux(self) -> Option<AuxId> {
        match self {
            Route::Aux(id) | Route::Moved { aux: Some(id), .. } => Some(id),
            _ => None,
        }
    }
}

/// How each remote address's datagrams travel, and the reverse names of
/// moved paths.
#[derive(Default)]
struct Routes {
    table: Mutex<RouteTable>,
    /// Entries of `by_remote`, read without the lock on the send path.
    routed: AtomicUsize,
    /// Entries of `presented`, read without the lock on the receive path.
    moved: AtomicUsize,
}

#[derive(Default)]
struct RouteTable {
    by_remote: HashMap<SocketAddr, Route>,
    /// Real source address → the address quinn knows it by.
    presented: HashMap<SocketAddr, SocketAddr>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, remote: &SocketAddr) -> Option<Route> {
        if self.routed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.lock().by_remote.get(remote).copied()
    }

    /// The address quinn knows the sender `from` by.
    fn presented(&self, from: SocketAddr) -> SocketAddr {
        if self.moved.load(Ordering::Relaxed) == 0 {
            return from;
        }
        self.lock().presented.get(&from).copied().unwrap_or(from)
    }

    fn update(&self, f: impl FnOnce(&mut RouteTable)) {
        let mut table = self.lock();
        f(&mut table);
        self.routed.store(table.by_remote.len(), Ordering::Relaxed);
        self.moved.store(table.presented.len(), Ordering::Relaxed);
    }

    fn set(&self, remote: SocketAddr, route: Route) {
        self.update(|t| {
            if let Some(Route::Moved { to, .. }) = t.by_remote.insert(remote, route) {
                t.presented.remove(&to);
            }
            if let Route::Moved { to, .. } = route {
                t.presented.insert(to, remote);
            }
        });
    }
}

/// The address in its plain form: an IPv4-mapped IPv6 address (how a
/// dual-stack socket, and quinn over one, name IPv4 peers) as IPv4. Every
/// address the node keeps (routes, candidates, paths) is in this form; the
/// facade maps to the socket's family only where the socket and quinn see
/// addresses.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `addr` as a socket of the family of a socket bound to `local` names it:
/// IPv4 as IPv4-mapped IPv6 for an IPv6 socket (dual stack), else as is.
pub fn in_family_of(local_is_v6: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if local_is_v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        other => other,
    }
}

/// Whether the host can route to `ip` at all: a loopback address, or one
/// of a family the host has a usable address of (not loopback, not IPv6
/// link-local). An IPv6-only host cannot send to IPv4 addresses although
/// its dual-stack socket accepts them (true when the interfaces cannot be
/// read).
pub fn host_has_family_of(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    if_addrs::get_if_addrs().map_or(true, |interfaces| {
        interfaces.iter().map(if_addrs::Interface::ip).any(|own| {
            own.is_ipv4() == ip.is_ipv4()
                && !own.is_loopback()
                && !matches!(own, IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
    })
}

/// Whether `ip` is an address of one of the host's interfaces (true when
/// they cannot be read).
fn is_local_address(ip: IpAddr) -> bool {
    if_addrs::get_if_addrs().map_or(true, |interfaces| interfaces.iter().any(|i| i.ip() == ip))
}

/// A QUIC datagram that did not come from the node's socket (an extra
/// socket, the relay), with the address quinn knows its sender by.
type InjectedDatagram = (SocketAddr, Bytes);

/// Capacity of the queue of QUIC datagrams from extra sockets and the
/// relay.
const INJECTED_QUEUE_CAPACITY: usize = 1024;

/// Capacity of each direction between the facade and a TURN allocation.
const RELAY_QUEUE_CAPACITY: usize = 1024;

/// The facade's end of a TURN allocation.
struct RelayTap {
    /// The relay's address when TURN runs over the node's UDP socket.
    udp_server: Option<SocketAddr>,
    from_server: mpsc::Sender<Bytes>,
    to_peers: mpsc::Sender<(SocketAddr, Bytes)>,
}

/// The allocation's end of the facade (see [`FogSocket::attach_relay`]).
#[derive(Debug)]
pub struct RelayPort {
    /// Datagrams the relay sent to the node's socket (TURN over UDP).
    pub from_server: mpsc::Receiver<Bytes>,
    /// QUIC datagrams for peers routed through the relay, by the peer's
    /// address as the relay sees it.
    pub to_peers: mpsc::Receiver<(SocketAddr, Bytes)>,
}

/// The address quinn knows the `index`-th peer reached through this node's
/// relay allocation by. Relayed peers need names of their own: a peer's
/// address as the relay sees it can equal its direct address (endpoint-
/// independent NAT), and a move from relay to direct must look like a new
/// address to QUIC. The names come from ranges no host uses: 240.0.0.0/4
/// (reserved) and 100::/64 (discard-only, RFC 6666).
pub fn presented_relay_addr(index: u32, port: u16, ipv6: bool) -> SocketAddr {
    let [a, b, c, d] = index.to_be_bytes();
    if ipv6 {
        let ip = std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        SocketAddr::new(ip.into(), port)
    } else {
        SocketAddr::new(std::net::Ipv4Addr::new(240 | (a & 0x0f), b, c, d).into(), port)
    }
}

/// Whether `addr` is a name given by [`presented_relay_addr`].
pub fn is_presented_relay(addr: SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[0] >= 240 && !ip.is_broadcast(),
        std::net::IpAddr::V6(ip) => ip.segments()[..4] == [0x100, 0, 0, 0],
    }
}

/// The node's UDP socket facade under quinn.
///
/// Besides the node's socket it can carry extra sockets (birthday probing
/// opens many; the one that works keeps carrying its path): quinn sees one
/// socket, and the facade sends each remote's datagrams from the socket
/// that path uses.
pub struct FogSocket {
    io: Arc<tokio::net::UdpSocket>,
    /// The node's socket is IPv6: bound to `[::]` it also carries IPv4
    /// (dual stack), whose peers it and quinn name IPv4-mapped.
    ipv6: bool,
    /// The node socket's port.
    port: u16,
    state: UdpSocketState,
    side: mpsc::Sender<SideDatagram>,
    counters: Arc<SocketCounters>,
    aux: Mutex<HashMap<AuxId, AuxSocket>>,
    next_aux: AtomicU16,
    routes: Arc<Routes>,
    injected_tx: mpsc::Sender<InjectedDatagram>,
    injected_rx: Mutex<mpsc::Receiver<InjectedDatagram>>,
    relay: Mutex<Option<RelayTap>>,
    /// Whether a relay exchanges datagrams with the node's socket (read on
    /// every receive without the lock).
    relay_on_socket: AtomicBool,
    /// Source addresses quinn asks for that the host no longer has (see
    /// [`FogSocket::send_main`]); `gone_count` is read without the lock.
    gone_sources: Mutex<Vec<IpAddr>>,
    gone_count: AtomicUsize,
    /// Whether several datagrams may pass between the kernel and quinn in
    /// one call (GSO and GRO, where the kernel offers them).
    offload: bool,
    /// Where each KCP conversation's datagrams go.
    kcp: Arc<KcpRoutes>,
}

/// The inbox of each KCP conversation on the node's sockets.
#[derive(Default)]
struct KcpRoutes(Mutex<HashMap<u32, mpsc::Sender<Bytes>>>);

impl KcpRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<Bytes>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a KCP datagram to its conversation's session, without
    /// waiting (a full inbox loses it, which KCP recovers from).
    fn deliver(&self, data: Bytes) -> bool {
        let Some(conversation) = crate::kcp::envelope::conversation_of(&data) else { return false };
        let inbox = self.lock().get(&conversation).cloned();
        inbox.is_some_and(|inbox| inbox.try_send(data).is_ok())
    }
}

/// Where a datagram that is not QUIC goes, from any of the node's sockets
/// or its relay: KCP to its conversation's session, the rest to the side
/// channel. False when it was dropped.
fn deliver_not_quic(side: &mpsc::Sender<SideDatagram>, kcp: &KcpRoutes, datagram: SideDatagram) -> bool {
    match datagram.kind {
        PacketKind::Kcp => kcp.deliver(datagram.data),
        _ => side.try_send(datagram).is_ok(),
    }
}

impl fmt::Debug for FogSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FogSocket").field("local", &self.io.local_addr().ok()).finish_non_exhaustive()
    }
}

/// The socket buffer size asked for, each way: bursts of transports that
/// do not pace (SCTP under browsers' DataChannels) overflow the kernel's
/// default of ~208 KiB, which holds ~90 full datagrams.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Asks for [`SOCKET_BUFFER`] each way; the kernel caps it at its maximum
/// (`net.core.rmem_max`, `wmem_max`), and a refusal leaves the default.
fn widen_buffers(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    for (name, result) in
        [("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)), ("send", socket.set_send_buffer_size(SOCKET_BUFFER))]
    {
        if let Err(e) = result {
            tracing::debug!("socket {name} buffer left at its default: {e}");
        }
    }
}

/// Turns the kernel's receive offload (`UDP_GRO`) off for `socket`.
/// Written by hand: neither socket2 nor quinn-udp offers turning it off.
fn receive_offload_off(socket: &std::net::UdpSocket) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let off: libc::c_int = 0;
        // SAFETY: a valid descriptor (borrowed for the call), and the
        // option value is a c_int of the size passed.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // ENOPROTOOPT: a kernel without UDP GRO, where it is off anyway.
        if result != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOPROTOOPT) {
                return Err(error);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
    Ok(())
}

/// Capacity of the side channel, in datagrams.
const SIDE_CHANNEL_CAPACITY: usize = 1024;

impl FogSocket {
    /// Wraps a bound UDP socket. Returns the facade and the receiver of
    /// non-QUIC datagrams. Must be called inside a tokio runtime.
    /// `offload`: send and receive several datagrams per system call with
    /// segmentation and receive offload (GSO, GRO) where the kernel offers
    /// them; off, every datagram is its own send and receive.
    ///
    /// # Errors
    /// I/O errors of configuring the socket.
    pub fn new(socket: std::net::UdpSocket, offload: bool) -> io::Result<(Arc<Self>, mpsc::Receiver<SideDatagram>)> {
        socket.set_nonblocking(true)?;
        widen_buffers(&socket);
        let local = socket.local_addr()?;
        let (ipv6, port) = (local.is_ipv6(), local.port());
        // quinn-udp turns receive offload on where the kernel has it.
        let state = UdpSocketState::new((&socket).into())?;
        if !offload {
            receive_offload_off(&socket)?;
        }
        let io = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let (side, side_rx) = mpsc::channel(SIDE_CHANNEL_CAPACITY);
        let (injected_tx, injected_rx) = mpsc::channel(INJECTED_QUEUE_CAPACITY);
        let facade = Self {
            io,
            ipv6,
            port,
            state,
            side,
            counters: Arc::default(),
            aux: Mutex::default(),
            next_aux: AtomicU16::new(0),
            routes: Arc::default(),
            injected_tx,
            injected_rx: Mutex::new(injected_rx),
            relay: Mutex::new(None),
            relay_on_socket: AtomicBool::new(false),
            gone_sources: Mutex::new(Vec::new()),
            gone_count: AtomicUsize::new(0),
            offload,
            kcp: Arc::default(),
        };
        Ok((Arc::new(facade), side_rx))
    }

    /// Adds an extra socket: its STUN datagrams go to the side channel
    /// (tagged with its id), its QUIC datagrams to quinn, and a remote whose
    /// QUIC datagrams arrive on it gets its replies from it. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// I/O errors of configuring the socket.
    pub fn add_aux(&self, socket: std::net::UdpSocket) -> io::Result<AuxId> {
        socket.set_nonblocking(true)?;
        let io = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let id = self.next_aux.fetch_add(1, Ordering::Relaxed);
        let (reader, side, quic, routes, counters) =
            (io.clone(), self.side.clone(), self.injected_tx.clone(), self.routes.clone(), self.counters.clone());
        let kcp = self.kcp.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let (len, from) = match reader.recv_from(&mut buf).await {
                    Ok((len, from)) => (len, canonical(from)),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return,
                };
                let data = Bytes::copy_from_slice(&buf[..len]);
                let sent = match classify(data.first().copied().unwrap_or(0), false) {
                    PacketKind::Quic => {
                        let presented = routes.presented(from);
                        if presented == from && routes.get(&from) != Some(Route::Aux(id)) {
                            routes.set(from, Route::Aux(id));
                        }
                        quic.try_send((presented, data)).is_ok()
                    }
                    PacketKind::Unknown => false,
                    kind => deliver_not_quic(&side, &kcp, SideDatagram { via: Some(id), from, to: None, kind, data }),
                };
                let counter = if sent { &counters.side } else { &counters.dropped };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        self.aux.lock().unwrap_or_else(|p| p.into_inner()).insert(id, AuxSocket { io, task });
        Ok(id)
    }

    /// Sends QUIC to `remote` from the extra socket `aux` from now on.
    pub fn route(&self, remote: SocketAddr, aux: AuxId) {
        self.routes.set(canonical(remote), Route::Aux(aux));
    }

    /// Sets how QUIC datagrams to `remote` travel from now on.
    pub fn set_route(&self, remote: SocketAddr, route: Route) {
        self.routes.set(canonical(remote), route);
    }

    /// How QUIC datagrams to `remote` travel, when not plainly.
    pub fn route_of(&self, remote: SocketAddr) -> Option<Route> {
        self.routes.get(&canonical(remote))
    }

    /// Whether the node's socket can send to `addr`: IPv4 from an IPv4
    /// socket, IPv6 from an IPv6 one, both from one bound to `[::]`.
    pub fn reaches(&self, addr: SocketAddr) -> bool {
        match self.io.local_addr() {
            Ok(local) if local.is_ipv6() => addr.is_ipv6() || local.ip().is_unspecified(),
            Ok(_) => addr.is_ipv4(),
            Err(_) => false,
        }
    }

    /// `addr` as the node's socket and quinn name it.
    fn in_family(&self, addr: SocketAddr) -> SocketAddr {
        in_family_of(self.ipv6, addr)
    }

    /// The address the datagrams quinn sends to `remote` reach: the peer's
    /// address as the relay sees it for a presented address, the new
    /// address of a moved path, else `remote` itself.
    pub fn peer_address(&self, remote: SocketAddr) -> SocketAddr {
        let remote = canonical(remote);
        match self.routes.get(&remote) {
            Some(Route::Relay { peer }) => peer,
            Some(Route::Moved { to, .. }) => to,
            _ => remote,
        }
    }

    /// Which way QUIC datagrams to `remote` travel now.
    pub fn path_kind(&self, remote: SocketAddr) -> PathKind {
        let remote = canonical(remote);
        match self.routes.get(&remote) {
            Some(Route::Relay { .. } | Route::PeerRelay) => PathKind::Relayed,
            Some(Route::Moved { relayed: true, .. }) => PathKind::Relayed,
            Some(Route::Moved { to, .. }) => path_of(to),
            _ if is_presented_relay(remote) => PathKind::Relayed,
            _ => path_of(remote),
        }
    }

    /// Which way QUIC datagrams quinn sends to `named` travel, and where
    /// they arrive.
    pub fn path_info(&self, named: SocketAddr) -> crate::events::PathInfo {
        crate::events::PathInfo { kind: self.path_kind(named), remote: self.peer_address(named) }
    }

    /// Forgets the route to `remote` and closes its extra socket when no
    /// other route uses it.
    pub fn unroute(&self, remote: SocketAddr) {
        let remote = canonical(remote);
        let mut orphan = None;
        self.routes.update(|t| {
            let Some(route) = t.by_remote.remove(&remote) else { return };
            if let Route::Moved { to, .. } = route {
                t.presented.remove(&to);
            }
            if let Some(aux) = route.aux()
                && !t.by_remote.values().any(|r| r.aux() == Some(aux))
            {
                orphan = Some(aux);
            }
        });
        if let Some(aux) = orphan {
            self.aux.lock().unwrap_or_else(|p| p.into_inner()).remove(&aux);
        }
    }

    /// Sends from the node's socket. A QUIC server connection keeps the
    /// local address its client first reached as the source of everything
    /// it sends (quinn never updates it); when the host loses that address
    /// (a new lease, another network) every such send would fail. Those go
    /// without a source address instead, from whatever address routing
    /// picks, and the peer's QUIC follows.
    fn send_main(&self, transmit: &Transmit) -> io::Result<()> {
        let gone = |ip: &IpAddr| {
            self.gone_count.load(Ordering::Relaxed) > 0
                && self.gone_sources.lock().unwrap_or_else(|p| p.into_inner()).contains(ip)
        };
        let stripped;
        let transmit = match transmit.src_ip {
            Some(ip) if gone(&ip) => {
                stripped = Transmit { src_ip: None, ..*transmit };
                &stripped
            }
            _ => transmit,
        };
        self.io.try_io(Interest::WRITABLE, || match self.state.try_send((&*self.io).into(), transmit) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // The kernel refuses a source it does not have (EINVAL,
            // EADDRNOTAVAIL or ENETUNREACH, by version): look it up only
            // then, on this rare path.
            Err(e) if transmit.src_ip.is_some_and(|ip| e.raw_os_error().is_some() && !is_local_address(ip)) => {
                if let Some(ip) = transmit.src_ip {
                    tracing::info!(%ip, "the host no longer has this address: sending from another");
                    let mut gone = self.gone_sources.lock().unwrap_or_else(|p| p.into_inner());
                    if !gone.contains(&ip) {
                        gone.push(ip);
                        self.gone_count.store(gone.len(), Ordering::Relaxed);
                    }
                }
                // Like quinn-udp's own send: an error is a lost datagram.
                self.state.send((&*self.io).into(), &Transmit { src_ip: None, ..*transmit })
            }
            // EMSGSIZE is expected for MTU probes; anything else is a loss
            // QUIC recovers from (as quinn-udp's `send` treats it).
            Err(e) => {
                tracing::trace!(to = %transmit.destination, "send failed: {e}");
                Ok(())
            }
        })
    }

    /// The host's addresses changed: sources marked gone may be back.
    pub fn network_changed(&self) {
        let mut gone = self.gone_sources.lock().unwrap_or_else(|p| p.into_inner());
        gone.clear();
        self.gone_count.store(0, Ordering::Relaxed);
    }

    /// Closes the extra sockets that are not in `keep` and carry no route.
    pub fn release_aux(&self, candidates: &[AuxId], keep: &HashSet<AuxId>) {
        let routed: HashSet<AuxId> = self.routes.lock().by_remote.values().filter_map(|r| r.aux()).collect();
        let mut aux = self.aux.lock().unwrap_or_else(|p| p.into_inner());
        for id in candidates {
            if !keep.contains(id) && !routed.contains(id) {
                aux.remove(id);
            }
        }
    }

    /// Connects a TURN allocation to the facade: datagrams from
    /// `udp_server` (TURN over this socket) go to the returned port instead
    /// of being demultiplexed, and QUIC for remotes with a
    /// [`Route::Relay`] goes to the port for wrapping. Replaces an earlier
    /// allocation's connection and its relay routes.
    pub fn attach_relay(&self, udp_server: Option<SocketAddr>) -> RelayPort {
        self.detach_relay();
        let (from_server, from_server_rx) = mpsc::channel(RELAY_QUEUE_CAPACITY);
        let (to_peers, to_peers_rx) = mpsc::channel(RELAY_QUEUE_CAPACITY);
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(RelayTap { udp_server, from_server, to_peers });
        self.relay_on_socket.store(udp_server.is_some(), Ordering::Release);
        RelayPort { from_server: from_server_rx, to_peers: to_peers_rx }
    }

    /// Disconnects the TURN allocation and forgets the routes through it.
    pub fn detach_relay(&self) {
        self.relay_on_socket.store(false, Ordering::Release);
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.routes.update(|t| t.by_remote.retain(|_, r| !matches!(r, Route::Relay { .. })));
    }

    /// Hands quinn a QUIC datagram that arrived another way than the
    /// node's socket (through the relay), as sent by `from`. Dropped (like
    /// a loss) when quinn is that far behind.
    pub fn deliver(&self, from: SocketAddr, data: Bytes) {
        let counter = if self.injected_tx.try_send((canonical(from), data)).is_ok() {
            &self.counters.quic
        } else {
            &self.counters.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands a datagram that is not QUIC to the side channel (from the
    /// node's socket, or another way: through the relay). Dropped when the
    /// side channel is full.
    pub fn deliver_side(&self, datagram: SideDatagram) {
        let sent = deliver_not_quic(&self.side, &self.kcp, datagram);
        let counter = if sent { &self.counters.side } else { &self.counters.dropped };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Routes the KCP datagrams of `conversation` to the returned inbox
    /// until the registration is dropped; `None` when the conversation is
    /// taken.
    pub fn register_kcp(&self, conversation: u32, capacity: usize) -> Option<KcpRegistration> {
        let mut routes = self.kcp.lock();
        if routes.get(&conversation).is_some_and(|inbox| !inbox.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(capacity);
        routes.insert(conversation, tx.clone());
        Some(KcpRegistration { routes: self.kcp.clone(), conversation, route: tx, inbox: rx })
    }

    /// Sends one datagram to `remote` as quinn names it (a relayed peer's
    /// presented address, a moved one), the way the link's QUIC packets
    /// go: a transport riding a link's path (KCP) follows its moves. A
    /// full socket buffer drops it, like a loss.
    ///
    /// # Errors
    /// I/O errors of the socket.
    pub fn send_on_path(&self, data: &[u8], remote: SocketAddr) -> io::Result<()> {
        let transmit = Transmit { destination: remote, ecn: None, contents: data, segment_size: None, src_ip: None };
        match self.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            other => other,
        }
    }

    /// Sends `data` to `peer` through the node's TURN allocation; false
    /// (a loss) when there is none or it is that far behind.
    pub fn send_through_relay(&self, peer: SocketAddr, data: Bytes) -> bool {
        let sent = self.to_relay_peers().is_some_and(|tx| tx.try_send((canonical(peer), data)).is_ok());
        if !sent {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Where datagrams from `from` go when it is the relay TURN runs with
    /// over the node's socket.
    fn relay_sink(&self, from: SocketAddr) -> Option<mpsc::Sender<Bytes>> {
        if !self.relay_on_socket.load(Ordering::Acquire) {
            return None;
        }
        let relay = self.relay.lock().unwrap_or_else(|p| p.into_inner());
        relay.as_ref().filter(|t| t.udp_server == Some(from)).map(|t| t.from_server.clone())
    }

    /// Where datagrams for peers go to be wrapped by the TURN allocation,
    /// while there is one.
    fn to_relay_peers(&self) -> Option<mpsc::Sender<(SocketAddr, Bytes)>> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.to_peers.clone())
    }

    fn send_relay(&self, peer: SocketAddr, transmit: &Transmit) {
        let to_peers = self.to_relay_peers();
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for datagram in transmit.contents.chunks(segment) {
            // No relay or no room: a loss QUIC recovers from.
            let sent =
                to_peers.as_ref().is_some_and(|tx| tx.try_send((peer, Bytes::copy_from_slice(datagram))).is_ok());
            if !sent {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Extra sockets open now.
    pub fn aux_count(&self) -> usize {
        self.aux.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends a raw datagram from the extra socket `via`, or from the
    /// node's socket for `None`.
    ///
    /// # Errors
    /// I/O errors of the socket; an unknown extra socket is `NotFound`.
    pub async fn send_raw_via(&self, via: Option<AuxId>, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        let Some(id) = via else { return self.send_raw(data, to).await };
        let socket = self.aux.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|a| a.io.clone());
        match socket {
            Some(socket) => socket.send_to(data, to).await,
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("extra socket {id} is closed"))),
        }
    }

    fn try_send_aux(&self, id: AuxId, transmit: &Transmit, to: SocketAddr) -> io::Result<()> {
        let socket = self.aux.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|a| a.io.clone());
        let Some(socket) = socket else {
            // The extra socket is gone: its path is dead; drop like a loss.
            return Ok(());
        };
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for datagram in transmit.contents.chunks(segment) {
            match socket.try_send_to(datagram, to) {
                Ok(_) => {}
                // quinn would wait for the node's socket, not this one, and
                // retry at once: drop like a loss instead (QUIC recovers).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The facade's counters.
    pub fn counters(&self) -> Arc<SocketCounters> {
        self.counters.clone()
    }

    /// Sends a raw datagram (e.g. a STUN message) from the node's port.
    ///
    /// # Errors
    /// I/O errors of the socket.
    pub async fn send_raw(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.io.send_to(data, self.in_family(to)).await
    }

    /// Sends a datagram from the node's socket without waiting, from the
    /// source address `source` when given (a wildcard socket otherwise
    /// lets routing pick it). A full socket buffer drops it, like a loss.
    ///
    /// # Errors
    /// I/O errors of the socket.
    pub fn try_send_from(&self, source: Option<IpAddr>, data: &[u8], to: SocketAddr) -> io::Result<()> {
        // quinn-udp takes an IPv4 source on a dual-stack socket as is, as
        // it reports one.
        let src_ip = source.filter(|_| self.bound_to_wildcard());
        let transmit =
            Transmit { destination: self.in_family(to), ecn: None, contents: data, segment_size: None, src_ip };
        match self.io.try_io(Interest::WRITABLE, || self.state.try_send((&*self.io).into(), &transmit)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            other => other,
        }
    }

    fn bound_to_wildcard(&self) -> bool {
        self.io.local_addr().is_ok_and(|a| a.ip().is_unspecified())
    }

    /// Moves the non-QUIC datagrams among the first `count` received ones to
    /// the side channel and compacts the QUIC ones to the front. Returns how
    /// many QUIC datagrams remain.
    fn demux(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], count: usize) -> usize {
        let mut kept = 0;
        for i in 0..count {
            let len = meta[i].len;
            if meta[i].stride < len {
                self.counters.offload_receives.fetch_add(1, Ordering::Relaxed);
            }
            let from = canonical(meta[i].addr);
            if let Some(sink) = self.relay_sink(from) {
                self.to_relay(&sink, &bufs[i][..len], meta[i].stride);
                continue;
            }
            let first = bufs[i].first().copied().unwrap_or(0);
            match classify(first, false) {
                PacketKind::Quic => {
                    if kept != i {
                        let (front, back) = bufs.split_at_mut(i);
                        front[kept][..len].copy_from_slice(&back[0][..len]);
                        meta[kept] = meta[i];
                    }
                    meta[kept].addr = self.in_family(self.routes.presented(from));
                    kept += 1;
                    self.counters.quic.fetch_add(1, Ordering::Relaxed);
                }
                PacketKind::Unknown => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                kind => {
                    // A GRO batch holds segments of `stride` bytes each.
                    let stride = meta[i].stride.max(1);
                    let to = meta[i].dst_ip.map(|ip| canonical(SocketAddr::new(ip, self.port)));
                    for segment in bufs[i][..len].chunks(stride) {
                        let data = Bytes::copy_from_slice(segment);
                        self.deliver_side(SideDatagram { via: None, from, to, kind, data });
                    }
                }
            }
        }
        kept
    }

    /// Hands the segments of a datagram batch from the relay to its
    /// allocation.
    fn to_relay(&self, sink: &mpsc::Sender<Bytes>, batch: &[u8], stride: usize) {
        for segment in batch.chunks(stride.max(1)) {
            let sent = sink.try_send(Bytes::copy_from_slice(segment)).is_ok();
            let counter = if sent { &self.counters.side } else { &self.counters.dropped };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncUdpSocket for FogSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller { io: self.io.clone(), pending: None })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.segment_size.is_some_and(|size| size < transmit.contents.len()) {
            self.counters.offload_sends.fetch_add(1, Ordering::Relaxed);
        }
        let destination = canonical(transmit.destination);
        match self.routes.get(&destination) {
            Some(Route::Aux(aux)) => self.try_send_aux(aux, transmit, destination),
            Some(Route::Moved { to, aux: Some(aux), .. }) => self.try_send_aux(aux, transmit, to),
            Some(Route::Moved { to, aux: None, .. }) => {
                self.send_main(&Transmit { destination: self.in_family(to), ..*transmit })
            }
            Some(Route::Relay { peer }) => {
                self.send_relay(peer, transmit);
                Ok(())
            }
            Some(Route::PeerRelay) | None => self.send_main(transmit),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // QUIC from extra sockets and the relay first; polling registers
        // the waker.
        if let Ok(mut queue) = self.injected_rx.try_lock()
            && let Poll::Ready(Some((addr, data))) = queue.poll_recv(cx)
            && let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut())
            && data.len() <= buf.len()
        {
            buf[..data.len()].copy_from_slice(&data);
            *slot =
                RecvMeta { addr: self.in_family(addr), len: data.len(), stride: data.len(), ecn: None, dst_ip: None };
            self.counters.quic.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(1));
        }
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(count) = self.io.try_io(Interest::READABLE, || self.state.recv((&*self.io).into(), bufs, meta)) {
                let kept = self.demux(bufs, meta, count);
                if kept > 0 {
                    return Poll::Ready(Ok(kept));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        if self.offload { self.state.max_gso_segments() } else { 1 }
    }

    fn max_receive_segments(&self) -> usize {
        if self.offload { self.state.gro_segments() } else { 1 }
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for the socket to become writable; reusable after each readiness.
struct WritablePoller {
    io: Arc<tokio::net::UdpSocket>,
    pending: Option<WritableFuture>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let io = this.io.clone();
        let fut = this.pending.get_or_insert_with(|| Box::pin(async move { io.writable().await }));
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            this.pending = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_ranges_follow_rfc_9443() {
        assert_eq!(classify(0, false), PacketKind::Stun);
        assert_eq!(classify(3, true), PacketKind::Stun);
        assert_eq!(classify(4, false), PacketKind::Unknown);
        assert_eq!(classify(19, false), PacketKind::Unknown);
        assert_eq!(classify(20, true), PacketKind::Dtls);
        assert_eq!(classify(63, false), PacketKind::Dtls);
        assert_eq!(classify(64, false), PacketKind::Quic);
        assert_eq!(classify(64, true), PacketKind::ChannelData);
        assert_eq!(classify(79, true), PacketKind::ChannelData);
        assert_eq!(classify(80, true), PacketKind::Quic);
        assert_eq!(classify(127, false), PacketKind::Quic);
        assert_eq!(classify(128, false), PacketKind::Kcp);
        assert_eq!(classify(191, true), PacketKind::Kcp);
        assert_eq!(classify(192, false), PacketKind::Quic);
        assert_eq!(classify(255, true), PacketKind::Quic);
    }

    #[test]
    fn presented_relay_addresses_are_distinct_and_recognised() {
        let a = presented_relay_addr(1, 5000, false);
        let b = presented_relay_addr(2, 5000, false);
        let c = presented_relay_addr(1, 5000, true);
        assert_ne!(a, b);
        assert!(is_presented_relay(a) && is_presented_relay(b) && is_presented_relay(c));
        assert_eq!(a.port(), 5000);
        for real in ["203.0.113.7:7700", "10.0.0.1:1", "255.255.255.255:1", "[2001:db8::1]:7700"] {
            assert!(!is_presented_relay(real.parse().expect("addr")), "{real}");
        }
    }

    async fn facade() -> (Arc<FogSocket>, SocketAddr) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (facade, _side) = FogSocket::new(socket, true).expect("facade");
        // quinn waits for writability before its first send; so do we.
        facade.io.writable().await.expect("writable");
        (facade, addr)
    }

    /// What quinn would receive next: (sender as quinn sees it, data).
    async fn quinn_receives(facade: &FogSocket) -> (SocketAddr, Vec<u8>) {
        let mut storage = vec![0u8; 2048];
        let mut meta = [RecvMeta::default()];
        let count = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| {
                let mut bufs = [IoSliceMut::new(&mut storage)];
                facade.poll_recv(cx, &mut bufs, &mut meta)
            }),
        )
        .await
        .expect("quinn got nothing")
        .expect("recv");
        assert_eq!(count, 1);
        (meta[0].addr, storage[..meta[0].len].to_vec())
    }

    fn transmit(to: SocketAddr, contents: &[u8]) -> Transmit<'_> {
        Transmit { destination: to, ecn: None, contents, segment_size: None, src_ip: None }
    }

    #[tokio::test]
    async fn a_moved_path_is_hidden_from_quinn_both_ways() {
        let (facade, facade_addr) = facade().await;
        let direct = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let direct_addr = direct.local_addr().expect("addr");
        let named: SocketAddr = "198.51.100.9:3478".parse().expect("addr");
        facade.set_route(named, Route::Moved { to: direct_addr, aux: None, relayed: false });
        assert_eq!(facade.peer_address(named), direct_addr);
        assert_eq!(facade.path_kind(named), PathKind::Lan);

        facade.try_send(&transmit(named, &[0x41, 1, 2, 3])).expect("send");
        let mut buf = [0u8; 64];
        let (len, from) = direct.recv_from(&mut buf).await.expect("recv");
        assert_eq!((&buf[..len], from), (&[0x41, 1, 2, 3][..], facade_addr));

        direct.send_to(&[0x42, 9], facade_addr).await.expect("send");
        assert_eq!(quinn_receives(&facade).await, (named, vec![0x42, 9]));

        facade.unroute(named);
        direct.send_to(&[0x43], facade_addr).await.expect("send");
        assert_eq!(quinn_receives(&facade).await, (direct_addr, vec![0x43]));
    }

    #[tokio::test]
    async fn relayed_peers_go_through_the_allocation_under_presented_addresses() {
        let (facade, facade_addr) = facade().await;
        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let relay_addr = relay.local_addr().expect("addr");
        let mut port = facade.attach_relay(Some(relay_addr));
        let peer: SocketAddr = "203.0.113.22:40000".parse().expect("addr");
        let presented = presented_relay_addr(1, peer.port(), false);
        facade.set_route(presented, Route::Relay { peer });
        assert_eq!(facade.path_kind(presented), PathKind::Relayed);
        assert_eq!(facade.peer_address(presented), peer);

        // quinn's datagrams to the presented address go to the allocation.
        facade.try_send(&transmit(presented, &[0x40, 7])).expect("send");
        let (to, data) = port.to_peers.recv().await.expect("to peers");
        assert_eq!((to, &data[..]), (peer, &[0x40, 7][..]));

        // What the allocation delivers reaches quinn from the presented
        // address.
        facade.deliver(presented, Bytes::from_static(&[0x44, 1]));
        assert_eq!(quinn_receives(&facade).await, (presented, vec![0x44, 1]));

        // Everything the relay sends (here ChannelData, which looks like a
        // QUIC short header) goes to the allocation, not to quinn.
        relay.send_to(&[0x40, 0x00, 0x00, 0x02, 0x44, 2], facade_addr).await.expect("send");
        let from_relay = tokio::select! {
            received = port.from_server.recv() => received.expect("open"),
            wrong = quinn_receives(&facade) => panic!("quinn got the relay's datagram: {wrong:?}"),
        };
        assert_eq!(&from_relay[..], &[0x40, 0x00, 0x00, 0x02, 0x44, 2]);

        facade.detach_relay();
        assert_eq!(facade.route_of(presented), None);
        assert_eq!(facade.path_kind(presented), PathKind::Relayed);
    }
}
