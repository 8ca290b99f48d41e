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
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::mpsc;

/// What a received datagram is, judged by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// STUN message (first byte 0..=3).
    Stun,
    /// TURN ChannelData (first byte 64..=79 while a TURN channel is bound).
    ChannelData,
    /// QUIC short header (64..=127) or long header (192..=255) packet.
    Quic,
    /// Anything else: dropped.
    Unknown,
}

/// Classifies a datagram by its first byte (RFC 9443 section 3).
/// `channels_bound` tells whether TURN channels are in use on this socket
/// (only then is 64..=79 ChannelData rather than a QUIC short header).
///
/// QUIC packets always have the fixed bit (0x40) set because nodes disable
/// QUIC bit greasing (RFC 9287) on their endpoint; 128..=191 (RTP/RTCP in
/// RFC 9443) is therefore never QUIC here.
pub fn classify(first_byte: u8, channels_bound: bool) -> PacketKind {
    match first_byte {
        0..=3 => PacketKind::Stun,
        64..=79 if channels_bound => PacketKind::ChannelData,
        64..=127 | 192..=255 => PacketKind::Quic,
        _ => PacketKind::Unknown,
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

/// Which extra socket carries the path to each remote address.
#[derive(Default)]
struct Routes {
    by_remote: Mutex<HashMap<SocketAddr, AuxId>>,
    /// Entries in `by_remote`, read without the lock on the send path.
    len: AtomicUsize,
}

impl Routes {
    fn get(&self, remote: &SocketAddr) -> Option<AuxId> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.by_remote.lock().unwrap_or_else(|p| p.into_inner()).get(remote).copied()
    }

    fn set(&self, remote: SocketAddr, aux: AuxId) {
        let mut routes = self.by_remote.lock().unwrap_or_else(|p| p.into_inner());
        routes.insert(remote, aux);
        self.len.store(routes.len(), Ordering::Relaxed);
    }
}

/// A QUIC datagram received on an extra socket.
type AuxDatagram = (SocketAddr, Bytes);

/// Capacity of the queue of QUIC datagrams from extra sockets.
const AUX_QUEUE_CAPACITY: usize = 1024;

/// The node's UDP socket facade under quinn.
///
/// Besides the node's socket it can carry extra sockets (birthday probing
/// opens many; the one that works keeps carrying its path): quinn sees one
/// socket, and the facade sends each remote's datagrams from the socket
/// that path uses.
pub struct FogSocket {
    io: Arc<tokio::net::UdpSocket>,
    state: UdpSocketState,
    side: mpsc::Sender<SideDatagram>,
    counters: Arc<SocketCounters>,
    aux: Mutex<HashMap<AuxId, AuxSocket>>,
    next_aux: AtomicU16,
    routes: Arc<Routes>,
    aux_quic_tx: mpsc::Sender<AuxDatagram>,
    aux_quic_rx: Mutex<mpsc::Receiver<AuxDatagram>>,
}

impl fmt::Debug for FogSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FogSocket").field("local", &self.io.local_addr().ok()).finish_non_exhaustive()
    }
}

/// Capacity of the side channel, in datagrams.
const SIDE_CHANNEL_CAPACITY: usize = 1024;

impl FogSocket {
    /// Wraps a bound UDP socket. Returns the facade and the receiver of
    /// non-QUIC datagrams. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// I/O errors of configuring the socket.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<(Arc<Self>, mpsc::Receiver<SideDatagram>)> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let io = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let (side, side_rx) = mpsc::channel(SIDE_CHANNEL_CAPACITY);
        let (aux_quic_tx, aux_quic_rx) = mpsc::channel(AUX_QUEUE_CAPACITY);
        let facade = Self {
            io,
            state,
            side,
            counters: Arc::default(),
            aux: Mutex::default(),
            next_aux: AtomicU16::new(0),
            routes: Arc::default(),
            aux_quic_tx,
            aux_quic_rx: Mutex::new(aux_quic_rx),
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
            (io.clone(), self.side.clone(), self.aux_quic_tx.clone(), self.routes.clone(), self.counters.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let (len, from) = match reader.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return,
                };
                let data = Bytes::copy_from_slice(&buf[..len]);
                let sent = match classify(data.first().copied().unwrap_or(0), false) {
                    PacketKind::Quic => {
                        if routes.get(&from) != Some(id) {
                            routes.set(from, id);
                        }
                        quic.try_send((from, data)).is_ok()
                    }
                    PacketKind::Unknown => false,
                    kind => side.try_send(SideDatagram { via: Some(id), from, kind, data }).is_ok(),
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
        self.routes.set(remote, aux);
    }

    /// Forgets the route to `remote` and closes its extra socket when no
    /// other route uses it.
    pub fn unroute(&self, remote: SocketAddr) {
        let still_used = {
            let mut routes = self.routes.by_remote.lock().unwrap_or_else(|p| p.into_inner());
            let Some(aux) = routes.remove(&remote) else { return };
            self.routes.len.store(routes.len(), Ordering::Relaxed);
            routes.values().any(|&a| a == aux).then_some(()).ok_or(aux)
        };
        if let Err(aux) = still_used {
            self.aux.lock().unwrap_or_else(|p| p.into_inner()).remove(&aux);
        }
    }

    /// Closes the extra sockets that are not in `keep` and carry no route.
    pub fn release_aux(&self, candidates: &[AuxId], keep: &HashSet<AuxId>) {
        let routed: HashSet<AuxId> =
            self.routes.by_remote.lock().unwrap_or_else(|p| p.into_inner()).values().copied().collect();
        let mut aux = self.aux.lock().unwrap_or_else(|p| p.into_inner());
        for id in candidates {
            if !keep.contains(id) && !routed.contains(id) {
                aux.remove(id);
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
        let Some(id) = via else { return self.io.send_to(data, to).await };
        let socket = self.aux.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|a| a.io.clone());
        match socket {
            Some(socket) => socket.send_to(data, to).await,
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("extra socket {id} is closed"))),
        }
    }

    fn try_send_aux(&self, id: AuxId, transmit: &Transmit) -> io::Result<()> {
        let socket = self.aux.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|a| a.io.clone());
        let Some(socket) = socket else {
            // The extra socket is gone: its path is dead; drop like a loss.
            return Ok(());
        };
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for datagram in transmit.contents.chunks(segment) {
            match socket.try_send_to(datagram, transmit.destination) {
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
        self.io.send_to(data, to).await
    }

    /// Moves the non-QUIC datagrams among the first `count` received ones to
    /// the side channel and compacts the QUIC ones to the front. Returns how
    /// many QUIC datagrams remain.
    fn demux(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], count: usize) -> usize {
        let mut kept = 0;
        for i in 0..count {
            let len = meta[i].len;
            let first = bufs[i].first().copied().unwrap_or(0);
            match classify(first, false) {
                PacketKind::Quic => {
                    if kept != i {
                        let (front, back) = bufs.split_at_mut(i);
                        front[kept][..len].copy_from_slice(&back[0][..len]);
                        meta[kept] = meta[i];
                    }
                    kept += 1;
                    self.counters.quic.fetch_add(1, Ordering::Relaxed);
                }
                PacketKind::Unknown => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                kind => {
                    // A GRO batch holds segments of `stride` bytes each.
                    let stride = meta[i].stride.max(1);
                    for segment in bufs[i][..len].chunks(stride) {
                        let datagram =
                            SideDatagram { via: None, from: meta[i].addr, kind, data: Bytes::copy_from_slice(segment) };
                        if self.side.try_send(datagram).is_ok() {
                            self.counters.side.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        kept
    }
}

impl AsyncUdpSocket for FogSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller { io: self.io.clone(), pending: None })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if let Some(aux) = self.routes.get(&transmit.destination) {
            return self.try_send_aux(aux, transmit);
        }
        self.io.try_io(Interest::WRITABLE, || self.state.send((&*self.io).into(), transmit))
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // QUIC from extra sockets first; polling registers the waker.
        if let Ok(mut queue) = self.aux_quic_rx.try_lock()
            && let Poll::Ready(Some((addr, data))) = queue.poll_recv(cx)
            && let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut())
            && data.len() <= buf.len()
        {
            buf[..data.len()].copy_from_slice(&data);
            *slot = RecvMeta { addr, len: data.len(), stride: data.len(), ecn: None, dst_ip: None };
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
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
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
        assert_eq!(classify(64, false), PacketKind::Quic);
        assert_eq!(classify(64, true), PacketKind::ChannelData);
        assert_eq!(classify(79, true), PacketKind::ChannelData);
        assert_eq!(classify(80, true), PacketKind::Quic);
        assert_eq!(classify(127, false), PacketKind::Quic);
        assert_eq!(classify(128, false), PacketKind::Unknown);
        assert_eq!(classify(191, true), PacketKind::Unknown);
        assert_eq!(classify(192, false), PacketKind::Quic);
        assert_eq!(classify(255, true), PacketKind::Quic);
    }
}
