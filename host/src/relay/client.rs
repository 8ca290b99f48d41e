//! A TURN client (RFC 8656) over UDP, sans-IO: one allocation on one
//! server, its permissions and channels, refreshed before they expire.
//! The caller sends what [`TurnClient::poll_transmit`] returns to the
//! server, feeds the server's datagrams in, and runs timers at
//! [`TurnClient::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fogconnect_proto::stun::{StunCodecError, TxId, random_txid};
use fogconnect_proto::turn::{
    self, ChannelData, LongTermAuth, MAX_CHANNEL, MIN_CHANNEL, RelayFamily, TurnRequest, TurnResponse,
};

use super::RelayError;
use super::url::TurnTransport;
use crate::nat::transaction::{RetransmitPolicy, Step, Transaction};

/// How to reach and authenticate with a TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnConfig {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// User name (with a coturn `use-auth-secret` server: `<expiry>:<user>`).
    pub username: String,
    /// Password.
    pub password: String,
    /// Allocation lifetime asked for, in seconds.
    pub lifetime: u32,
    /// Retransmissions of requests (over TCP and TLS: one send, and the
    /// wait for the answer).
    pub retransmit: RetransmitPolicy,
    /// How the messages travel; over a stream ChannelData is padded.
    pub transport: TurnTransport,
    /// The family of the relayed address to ask for (RFC 6156); `None`:
    /// the server's default, IPv4 (which an IPv6-only node, reaching the
    /// relay over IPv6, needs to reach IPv4 peers).
    pub family: Option<RelayFamily>,
}

/// Lifetime of a permission (RFC 8656 section 9: 300 s); refreshed a
/// minute early.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Lifetime of a channel binding (600 s); refreshed a minute early.
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);

/// Challenges (401, 438) answered in a row before giving up.
const AUTH_RETRIES: u32 = 2;

/// What happened, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: peers reach this node at `relayed`.
    Allocated {
        /// The relayed address.
        relayed: SocketAddr,
        /// This node's address as the server sees it.
        mapped: Option<SocketAddr>,
    },
    /// A peer's data arrived through the relay.
    Data {
        /// The peer.
        peer: SocketAddr,
        /// The data.
        data: Vec<u8>,
    },
    /// The server refused a permission or channel for `peer` (e.g. 403
    /// for an internal address); the allocation goes on.
    PeerRefused {
        /// The peer (port 0 for a permission, which covers the IP).
        peer: SocketAddr,
        /// The server's answer.
        error: RelayError,
    },
    /// The allocation is gone or could not be made; the reason says why.
    Failed(RelayError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Allocate,
    Refresh,
    Permission(IpAddr),
    Channel(SocketAddr, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated,
    Closed,
}

/// The client state machine.
#[derive(Debug)]
pub struct TurnClient {
    config: TurnConfig,
    state: State,
    auth: Option<LongTermAuth>,
    /// Authentication retries left (401 and 438 answers).
    auth_retries: u32,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    permissions: HashMap<IpAddr, Option<Instant>>,
    channels: HashMap<SocketAddr, (u16, Option<Instant>)>,
    by_channel: HashMap<u16, SocketAddr>,
    next_channel: u16,
    pending: HashMap<TxId, (Transaction, Purpose, TurnRequest)>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
}

impl TurnClient {
    /// Starts allocating at `now` (the first Allocate goes without
    /// credentials, to learn the realm and nonce).
    pub fn new(config: TurnConfig, now: Instant) -> Self {
        let mut client = Self {
            config,
            state: State::Allocating,
            auth: None,
            auth_retries: AUTH_RETRIES,
            relayed: None,
            refresh_at: None,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_channel: HashMap::new(),
            next_channel: MIN_CHANNEL,
            pending: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        let (lifetime, family) = (client.config.lifetime, client.config.family);
        client.request(
            TurnRequest::Allocate { lifetime: Some(lifetime), family, even_port: None, reservation: None },
            Purpose::Allocate,
            now,
        );
        client
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed.filter(|_| self.state == State::Allocated)
    }

    fn request(&mut self, request: TurnRequest, purpose: Purpose, now: Instant) {
        let txid = random_txid();
        match turn::encode_request(txid, &request, self.auth.as_ref()) {
            Ok(bytes) => {
                let transaction = Transaction::new(txid, self.config.server, bytes, self.config.retransmit, now);
                self.pending.insert(txid, (transaction, purpose, request));
            }
            Err(e) => self.fail(RelayError::Codec(e)),
        }
    }

    fn fail(&mut self, error: RelayError) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.pending.clear();
            self.events.push_back(TurnEvent::Failed(error));
        }
    }

    /// Whether the server confirmed a permission for `peer`'s IP.
    pub fn is_permitted(&self, peer: SocketAddr) -> bool {
        self.permissions.get(&peer.ip()).is_some_and(Option::is_some)
    }

    /// Whether a permission for `peer`'s IP was asked for and the server
    /// has not answered yet.
    pub fn is_permission_pending(&self, peer: SocketAddr) -> bool {
        self.state != State::Closed && self.permissions.get(&peer.ip()).is_some_and(Option::is_none)
    }

    /// Whether a refresh of the allocation is waiting for its answer.
    pub fn is_refresh_pending(&self) -> bool {
        self.pending.values().any(|(_, purpose, _)| *purpose == Purpose::Refresh)
    }

    /// Whether the server confirmed a channel for `peer`.
    pub fn is_bound(&self, peer: SocketAddr) -> bool {
        self.channels.get(&peer).is_some_and(|(_, at)| at.is_some())
    }

    /// Allows `peer`'s IP to send through the relay (CreatePermission).
    pub fn permit(&mut self, peer: SocketAddr, now: Instant) {
        if self.state == State::Closed || self.permissions.contains_key(&peer.ip()) {
            return;
        }
        self.permissions.insert(peer.ip(), None);
        if self.state == State::Allocated {
            self.request(TurnRequest::CreatePermission { peers: vec![peer] }, Purpose::Permission(peer.ip()), now);
        }
    }

    /// Binds a channel to `peer` (which also permits it), so data goes in
    /// ChannelData messages.
    ///
    /// # Errors
    /// [`RelayError::ChannelsExhausted`] when all 4,096 channels are bound.
    pub fn bind_channel(&mut self, peer: SocketAddr, now: Instant) -> Result<(), RelayError> {
        if self.state == State::Closed || self.channels.contains_key(&peer) {
            return Ok(());
        }
        if self.next_channel > MAX_CHANNEL {
            return Err(RelayError::ChannelsExhausted);
        }
        let channel = self.next_channel;
        self.next_channel += 1;
        self.channels.insert(peer, (channel, None));
        self.permissions.entry(peer.ip()).or_insert(None);
        if self.state == State::Allocated {
            self.request(TurnRequest::ChannelBind { channel, peer }, Purpose::Channel(peer, channel), now);
        }
        Ok(())
    }

    /// Queues `data` for `peer` through the relay: ChannelData when a
    /// channel is bound, else a Send indication.
    ///
    /// # Errors
    /// [`RelayError::NotAllocated`] before the allocation exists or after
    /// it failed; [`RelayError::NoPermission`] for a peer never permitted;
    /// [`RelayError::Codec`] for data over 65,535 bytes.
    pub fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), RelayError> {
        if self.state != State::Allocated {
            return Err(RelayError::NotAllocated);
        }
        if let Some((channel, Some(_))) = self.channels.get(&peer) {
            let bytes =
                ChannelData { channel: *channel, data: data.to_vec() }.encode(self.config.transport.is_stream())?;
            self.transmits.push_back(bytes);
            return Ok(());
        }
        if !self.permissions.contains_key(&peer.ip()) {
            return Err(RelayError::NoPermission(peer));
        }
        self.transmits.push_back(turn::encode_send(random_txid(), peer, data)?);
        Ok(())
    }

    /// Refreshes the allocation now, e.g. to learn whether the server
    /// still has it after a path through it went silent: a server that
    /// lost it answers 437 and the client fails.
    pub fn refresh_now(&mut self, now: Instant) {
        let refreshing = self.pending.values().any(|(_, purpose, _)| *purpose == Purpose::Refresh);
        if self.state == State::Allocated && !refreshing {
            self.refresh_at = None;
            let lifetime = self.config.lifetime;
            self.request(TurnRequest::Refresh { lifetime }, Purpose::Refresh, now);
        }
    }

    /// Deletes the allocation (Refresh with lifetime 0); the client ends.
    pub fn close(&mut self) {
        if self.state == State::Allocated {
            let txid = random_txid();
            if let Ok(bytes) = turn::encode_request(txid, &TurnRequest::Refresh { lifetime: 0 }, self.auth.as_ref()) {
                self.transmits.push_back(bytes);
            }
        }
        self.state = State::Closed;
        self.pending.clear();
    }

    /// Feeds a datagram from the server: a response, a Data indication or
    /// ChannelData. Anything else is ignored.
    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) {
        if bytes.first().is_some_and(|b| (0x40..=0x4F).contains(b)) {
            if let Ok((message, _)) = ChannelData::decode(bytes)
                && let Some(&peer) = self.by_channel.get(&message.channel)
            {
                self.events.push_back(TurnEvent::Data { peer, data: message.data });
            }
            return;
        }
        let Ok(response) = turn::decode_response(bytes) else { return };
        let txid = match &response {
            TurnResponse::Data { peer, data } => {
                if self.state == State::Allocated {
                    self.events.push_back(TurnEvent::Data { peer: *peer, data: data.clone() });
                }
                return;
            }
            TurnResponse::Allocated { txid, .. }
            | TurnResponse::Success { txid, .. }
            | TurnResponse::Error { txid, .. } => *txid,
        };
        let Some((mut transaction, purpose, request)) = self.pending.remove(&txid) else { return };
        if !transaction.on_response(&txid) {
            return;
        }
        // Once authenticated, answers must prove the server knows the key.
        if let Some(auth) = &self.auth
            && !matches!(response, TurnResponse::Error { code: 401 | 438, .. })
            && !turn::long_term_integrity_ok(bytes, auth)
        {
            tracing::debug!("TURN answer without valid integrity ignored");
            self.pending.insert(txid, (transaction, purpose, request));
            return;
        }
        if !matches!(response, TurnResponse::Error { .. }) {
            // Authenticated again: later stale nonces may be retried too.
            self.auth_retries = AUTH_RETRIES;
        }
        match response {
            TurnResponse::Allocated { relayed, mapped, lifetime, .. } if purpose == Purpose::Allocate => {
                self.state = State::Allocated;
                self.relayed = Some(relayed);
                self.refresh_at = Some(now + refresh_after(lifetime));
                self.events.push_back(TurnEvent::Allocated { relayed, mapped });
                // Permissions and channels asked for while allocating.
                let permissions: Vec<IpAddr> = self.permissions.keys().copied().collect();
                for ip in permissions {
                    let peer = SocketAddr::new(ip, 0);
                    if !self.channels.keys().any(|p| p.ip() == ip) {
                        self.request(TurnRequest::CreatePermission { peers: vec![peer] }, Purpose::Permission(ip), now);
                    }
                }
                let channels: Vec<(SocketAddr, u16)> = self.channels.iter().map(|(p, (c, _))| (*p, *c)).collect();
                for (peer, channel) in channels {
                    self.request(TurnRequest::ChannelBind { channel, peer }, Purpose::Channel(peer, channel), now);
                }
            }
            TurnResponse::Success { lifetime, .. } => match purpose {
                Purpose::Refresh => {
                    self.refresh_at = Some(now + refresh_after(lifetime.unwrap_or(self.config.lifetime)))
                }
                Purpose::Permission(ip) => {
                    self.permissions.insert(ip, Some(now + PERMISSION_REFRESH));
                }
                Purpose::Channel(peer, channel) => {
                    self.channels.insert(peer, (channel, Some(now + CHANNEL_REFRESH)));
                    self.by_channel.insert(channel, peer);
                    // A channel also installs the permission.
                    self.permissions.insert(peer.ip(), Some(now + PERMISSION_REFRESH));
                }
                Purpose::Allocate => {}
            },
            TurnResponse::Error { code: 401 | 438, realm, nonce, .. } if self.auth_retries > 0 => {
                self.auth_retries -= 1;
                let (Some(nonce), realm) = (nonce, realm.or_else(|| self.auth.as_ref().map(|a| a.realm.clone())))
                else {
                    return self.fail(RelayError::Refused { code: 401, reason: "no nonce in the challenge".into() });
                };
                self.auth = Some(LongTermAuth {
                    username: self.config.username.clone(),
                    password: self.config.password.clone(),
                    realm: realm.unwrap_or_default(),
                    nonce,
                });
                self.request(request, purpose, now);
            }
            TurnResponse::Error { code, reason, .. } => match purpose {
                Purpose::Allocate | Purpose::Refresh => self.fail(RelayError::Refused { code, reason }),
                Purpose::Permission(ip) => {
                    self.permissions.remove(&ip);
                    let error = RelayError::Refused { code, reason };
                    self.events.push_back(TurnEvent::PeerRefused { peer: SocketAddr::new(ip, 0), error });
                }
                Purpose::Channel(peer, channel) => {
                    self.channels.remove(&peer);
                    self.by_channel.remove(&channel);
                    let error = RelayError::Refused { code, reason };
                    self.events.push_back(TurnEvent::PeerRefused { peer, error });
                }
            },
            _ => {}
        }
    }

    /// Runs retransmissions and refreshes due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.state == State::Allocated {
            self.start_refreshes(now);
        }
        let mut timed_out = Vec::new();
        for (txid, (transaction, purpose, _)) in &mut self.pending {
            loop {
                match transaction.poll(now) {
                    Step::Send(bytes, _) => self.transmits.push_back(bytes.to_vec()),
                    Step::TimedOut => {
                        timed_out.push((*txid, *purpose));
                        break;
                    }
                    Step::WaitUntil(_) | Step::Done => break,
                }
            }
        }
        for (txid, purpose) in timed_out {
            self.pending.remove(&txid);
            match purpose {
                Purpose::Allocate | Purpose::Refresh => {
                    let server = self.config.server;
                    return self.fail(RelayError::Unreachable(server));
                }
                // Asked again on the next permit or bind.
                Purpose::Permission(ip) => {
                    self.permissions.remove(&ip);
                }
                Purpose::Channel(peer, channel) => {
                    self.channels.remove(&peer);
                    self.by_channel.remove(&channel);
                }
            }
        }
    }

    /// Starts the refreshes of the allocation, permissions and channels
    /// that are due.
    fn start_refreshes(&mut self, now: Instant) {
        if self.refresh_at.is_some_and(|at| now >= at) {
            self.refresh_at = None;
            let lifetime = self.config.lifetime;
            self.request(TurnRequest::Refresh { lifetime }, Purpose::Refresh, now);
        }
        let due: Vec<IpAddr> =
            self.permissions.iter().filter(|(_, at)| at.is_some_and(|at| now >= at)).map(|(ip, _)| *ip).collect();
        for ip in due {
            self.permissions.insert(ip, None);
            let peers = vec![SocketAddr::new(ip, 0)];
            self.request(TurnRequest::CreatePermission { peers }, Purpose::Permission(ip), now);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, (_, at))| at.is_some_and(|at| now >= at))
            .map(|(peer, (channel, _))| (*peer, *channel))
            .collect();
        for (peer, channel) in due {
            // Data keeps flowing on the channel while the refresh is out.
            self.channels.insert(peer, (channel, Some(now + CHANNEL_REFRESH)));
            self.request(TurnRequest::ChannelBind { channel, peer }, Purpose::Channel(peer, channel), now);
        }
    }

    /// When [`TurnClient::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let pending = self.pending.values().filter_map(|(t, ..)| t.next_at());
        let permissions = self.permissions.values().flatten().copied();
        let channels = self.channels.values().filter_map(|(_, at)| *at);
        pending.chain(permissions).chain(channels).chain(self.refresh_at).min()
    }

    /// The next datagram for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }
}

/// When to refresh an allocation of `lifetime` seconds: a minute early, or
/// at half the lifetime when it is short.
fn refresh_after(lifetime: u32) -> Duration {
    let lifetime = Duration::from_secs(u64::from(lifetime.max(1)));
    if lifetime > Duration::from_secs(120) { lifetime - Duration::from_secs(60) } else { lifetime / 2 }
}

impl From<StunCodecError> for RelayError {
    fn from(e: StunCodecError) -> Self {
        RelayError::Codec(e)
    }
}

#[cfg(test)]
mod tests {
    use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH};
    use stun_rs::{MessageClass, MessageDecoderBuilder};

    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    const RELAYED: &str = "198.51.100.1:50000";

    fn config() -> TurnConfig {
        TurnConfig {
            server: a("198.51.100.1:3478"),
            username: "dev".into(),
            password: "secret".into(),
            lifetime: 600,
            retransmit: RetransmitPolicy::DISCOVERY,
            transport: TurnTransport::Udp,
            family: None,
        }
    }

    /// A scripted server: challenges unauthenticated requests with 401,
    /// checks the password, answers everything else with success unless
    /// `refuse` names the method.
    struct FakeServer {
        refuse: Option<(u16, u16)>,
        requests: Vec<u16>,
    }

    impl FakeServer {
        fn answer(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
            let (message, _) = MessageDecoderBuilder::default().build().decode(bytes).ok()?;
            if message.class() != MessageClass::Request {
                return None;
            }
            let txid = *message.transaction_id().as_bytes();
            let method = message.method().as_u16();
            self.requests.push(method);
            let auth = LongTermAuth {
                username: "dev".into(),
                password: "secret".into(),
                realm: "fog".into(),
                nonce: "nonce-1".into(),
            };
            let error = |code: u16, reason: &str| TurnResponse::Error {
                txid,
                method,
                code,
                reason: reason.into(),
                realm: Some("fog".into()),
                nonce: Some("nonce-1".into()),
            };
            let response = if !turn::long_term_integrity_ok(bytes, &auth) {
                error(401, "Unauthorized")
            } else if let Some((refused, code)) = self.refuse
                && refused == method
            {
                error(code, "Refused")
            } else if method == ALLOCATE.as_u16() {
                TurnResponse::Allocated {
                    txid,
                    relayed: a(RELAYED),
                    mapped: Some(a("203.0.113.9:4000")),
                    lifetime: 600,
                    reservation: None,
                }
            } else {
                let lifetime = (method == REFRESH.as_u16()).then_some(600);
                TurnResponse::Success { txid, method, lifetime }
            };
            // Challenges go without integrity; every other answer carries it.
            let key = (!matches!(response, TurnResponse::Error { code: 401 | 438, .. })).then_some(&auth);
            turn::encode_response(&response, key).ok()
        }
    }

    /// Delivers every transmit to the server and its answers back, until
    /// quiet.
    fn exchange(client: &mut TurnClient, server: &mut FakeServer, now: Instant) {
        client.handle_timeout(now);
        while let Some(bytes) = client.poll_transmit() {
            if let Some(answer) = server.answer(&bytes) {
                client.handle_datagram(&answer, now);
            }
            client.handle_timeout(now);
        }
    }

    #[test]
    fn allocates_after_the_challenge_then_permits_binds_and_relays() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: None, requests: Vec::new() };
        let mut client = TurnClient::new(config(), t0);
        let peer = a("203.0.113.50:7000");
        client.permit(peer, t0);
        exchange(&mut client, &mut server, t0);
        assert_eq!(
            client.poll_event(),
            Some(TurnEvent::Allocated { relayed: a(RELAYED), mapped: Some(a("203.0.113.9:4000")) })
        );
        assert_eq!(client.relayed(), Some(a(RELAYED)));
        // Allocate (401), Allocate again with credentials, CreatePermission.
        assert_eq!(server.requests, [ALLOCATE.as_u16(), ALLOCATE.as_u16(), CREATE_PERMMISSION.as_u16()]);
        // Send indication while no channel is bound.
        client.send_to(peer, b"hello").expect("send");
        let send = client.poll_transmit().expect("send indication");
        assert!(fogconnect_proto::stun::looks_like_stun(&send));
        // Bind a channel: data goes as ChannelData from then on.
        client.bind_channel(peer, t0).expect("bind");
        exchange(&mut client, &mut server, t0);
        assert_eq!(server.requests.last(), Some(&CHANNEL_BIND.as_u16()));
        client.send_to(peer, b"hello").expect("send");
        let bytes = client.poll_transmit().expect("channel data");
        let (message, _) = ChannelData::decode(&bytes).expect("channel data");
        assert_eq!((message.channel, message.data.as_slice()), (MIN_CHANNEL, &b"hello"[..]));
        // Data back on the channel and as an indication.
        let back = ChannelData { channel: MIN_CHANNEL, data: b"hi".to_vec() }.encode(true).expect("encode");
        client.handle_datagram(&back, t0);
        assert_eq!(client.poll_event(), Some(TurnEvent::Data { peer, data: b"hi".to_vec() }));
        let indication = turn::encode_response(&TurnResponse::Data { peer, data: b"yo".to_vec() }, None).expect("enc");
        client.handle_datagram(&indication, t0);
        assert_eq!(client.poll_event(), Some(TurnEvent::Data { peer, data: b"yo".to_vec() }));
        // Unknown peers are refused locally.
        assert_eq!(client.send_to(a("192.0.2.1:1"), b"x"), Err(RelayError::NoPermission(a("192.0.2.1:1"))));
    }

    #[test]
    fn refreshes_before_expiry_and_closes_with_lifetime_zero() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: None, requests: Vec::new() };
        let mut client = TurnClient::new(config(), t0);
        exchange(&mut client, &mut server, t0);
        assert!(client.relayed().is_some());
        let refresh_at = client.poll_timeout().expect("a refresh is scheduled");
        assert_eq!(refresh_at - t0, Duration::from_secs(540));
        exchange(&mut client, &mut server, refresh_at);
        assert_eq!(server.requests.last(), Some(&REFRESH.as_u16()));
        assert!(client.relayed().is_some());
        client.close();
        assert!(client.poll_transmit().is_some(), "refresh with lifetime 0");
        assert_eq!(client.relayed(), None);
        assert_eq!(client.poll_timeout(), None);
    }

    #[test]
    fn errors_and_silence_end_the_allocation_with_the_reason() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: Some((ALLOCATE.as_u16(), 486)), requests: Vec::new() };
        let mut client = TurnClient::new(config(), t0);
        exchange(&mut client, &mut server, t0);
        let Some(TurnEvent::Failed(error)) = client.poll_event() else { panic!("failure expected") };
        assert_eq!(error, RelayError::Refused { code: 486, reason: "Refused".into() });
        assert!(error.to_string().contains("allocation quota reached"), "{error}");
        assert_eq!(client.send_to(a("203.0.113.50:7000"), b"x"), Err(RelayError::NotAllocated));

        let mut client = TurnClient::new(config(), t0);
        let mut now = t0;
        while let Some(at) = client.poll_timeout() {
            now = at;
            client.handle_timeout(now);
            while client.poll_transmit().is_some() {}
        }
        assert_eq!(now - t0, RetransmitPolicy::DISCOVERY.total());
        assert_eq!(client.poll_event(), Some(TurnEvent::Failed(RelayError::Unreachable(config().server))));
    }

    #[test]
    fn wrong_password_fails_after_the_retries_and_garbage_is_ignored() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: None, requests: Vec::new() };
        let mut client = TurnClient::new(TurnConfig { password: "wrong".into(), ..config() }, t0);
        client.handle_datagram(b"garbage", t0);
        client.handle_datagram(&[0x40, 0x00, 0x00, 0x10], t0);
        exchange(&mut client, &mut server, t0);
        let Some(TurnEvent::Failed(RelayError::Refused { code: 401, .. })) = client.poll_event() else {
            panic!("401 expected")
        };
        assert!(server.requests.len() <= 3, "bounded retries: {:?}", server.requests);
    }

    #[test]
    fn refused_permissions_are_reported_and_the_allocation_goes_on() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: Some((CREATE_PERMMISSION.as_u16(), 403)), requests: Vec::new() };
        let mut client = TurnClient::new(config(), t0);
        exchange(&mut client, &mut server, t0);
        assert!(matches!(client.poll_event(), Some(TurnEvent::Allocated { .. })));
        let peer = a("127.0.0.1:9");
        client.permit(peer, t0);
        exchange(&mut client, &mut server, t0);
        let Some(TurnEvent::PeerRefused { peer: refused, error }) = client.poll_event() else {
            panic!("refusal expected")
        };
        assert_eq!(refused.ip(), peer.ip());
        assert!(error.to_string().contains("403") && error.to_string().contains("forbidden"), "{error}");
        assert!(!client.is_permitted(peer));
        assert_eq!(client.relayed(), Some(a(RELAYED)));
    }

    #[test]
    fn refresh_now_learns_that_the_server_lost_the_allocation() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: None, requests: Vec::new() };
        let mut client = TurnClient::new(config(), t0);
        exchange(&mut client, &mut server, t0);
        assert!(matches!(client.poll_event(), Some(TurnEvent::Allocated { .. })));
        // A restarted server knows nothing of it.
        server.refuse = Some((REFRESH.as_u16(), 437));
        client.refresh_now(t0);
        client.refresh_now(t0);
        exchange(&mut client, &mut server, t0);
        assert_eq!(server.requests.iter().filter(|&&m| m == REFRESH.as_u16()).count(), 1, "one refresh at a time");
        let Some(TurnEvent::Failed(error)) = client.poll_event() else { panic!("failure expected") };
        assert!(error.to_string().contains("437"), "{error}");
    }

    #[test]
    fn over_a_stream_channel_data_is_padded() {
        let t0 = Instant::now();
        let mut server = FakeServer { refuse: None, requests: Vec::new() };
        let mut client = TurnClient::new(TurnConfig { transport: TurnTransport::Tcp, ..config() }, t0);
        exchange(&mut client, &mut server, t0);
        let peer = a("203.0.113.50:7000");
        client.bind_channel(peer, t0).expect("channel");
        exchange(&mut client, &mut server, t0);
        client.send_to(peer, b"abcde").expect("send");
        let bytes = client.poll_transmit().expect("channel data");
        assert_eq!(bytes.len(), 12, "4-byte header, 5 bytes, 3 bytes padding");
        assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), 5);
    }
}
