//! A TURN server (RFC 8656) core, sans-IO: allocations keyed by the
//! client's address, permissions, channels, lifetimes, quotas and
//! authentication (long-term users, and the time-limited shared-secret
//! scheme coturn calls `use-auth-secret`). The driver owns the sockets: it
//! feeds client and peer datagrams in, opens a relay socket when asked
//! ([`Output::OpenRelay`]) and reports it with [`TurnServerCore::relay_opened`],
//! and sends what comes out.
//!
//! Never an open relay: every request but Binding needs valid credentials,
//! peers need a permission, and by default peers on loopback, link-local,
//! private and unspecified addresses are refused (no pivot into the
//! operator's network).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use fogconnect_proto::stun::{self, SuccessResponse, TxId};
use fogconnect_proto::turn::{
    self, ChannelData, IncomingRequest, LongTermAuth, MAX_CHANNEL_RFC5766, MIN_CHANNEL, RelayFamily, TurnResponse,
    method,
};
use ring::hmac;

use crate::limits::PerIpRate;
use crate::signal::rate::TokenBucket;

/// Configuration of the server core.
#[derive(Debug, Clone)]
pub struct TurnServerConfig {
    /// The realm announced in challenges.
    pub realm: String,
    /// Long-term users: name → password.
    pub users: HashMap<String, String>,
    /// Shared secret for time-limited credentials: user name
    /// `<unix expiry>[:<anything>]`, password base64(HMAC-SHA1(secret,
    /// user name)), as coturn's `use-auth-secret` and the signaling server
    /// issue them.
    pub auth_secret: Option<Vec<u8>>,
    /// Relay to loopback, link-local and private peers too (labs only).
    pub allow_private_peers: bool,
    /// The families the server has a relay address of (the driver sets
    /// them from its relay addresses): an Allocate for another family
    /// gets 440 (RFC 8656 section 7.2).
    pub relay_families: Vec<RelayFamily>,
    /// Lifetime granted when the client asks for none, in seconds.
    pub default_lifetime: u32,
    /// Longest lifetime granted, in seconds.
    pub max_lifetime: u32,
    /// Allocations one user may hold.
    pub max_allocations_per_user: usize,
    /// Allocations the server holds in all.
    pub max_allocations: usize,
    /// Bytes per second relayed per allocation each way; 0: unlimited.
    pub bandwidth_per_allocation: u32,
    /// How long a nonce stays valid (then 438 Stale Nonce).
    pub nonce_lifetime: Duration,
    /// Permissions and channels per allocation.
    pub max_peers_per_allocation: usize,
    /// Answers per second to requests that are not authenticated (401
    /// challenges, Binding), per source IP: a challenge is ~4.8x the
    /// smallest request, so this bounds what a spoofed source can reflect.
    pub unauthenticated_rate: u32,
    /// Burst of such answers per source IP.
    pub unauthenticated_burst: u32,
    /// TCP and TLS clients at once (fewer when the descriptor limit leaves
    /// less room: half of it stays for relay sockets).
    pub max_tcp_clients: usize,
    /// TCP and TLS clients from one IP address at once.
    pub max_tcp_clients_per_ip: usize,
    /// How long a TCP or TLS client may stay connected without an
    /// allocation (its TLS handshake included).
    pub tcp_auth_timeout: Duration,
}

impl Default for TurnServerConfig {
    fn default() -> Self {
        Self {
            realm: "fogconnect".into(),
            users: HashMap::new(),
            auth_secret: None,
            allow_private_peers: false,
            relay_families: vec![RelayFamily::V4],
            default_lifetime: 600,
            max_lifetime: 3600,
            max_allocations_per_user: 16,
            max_allocations: 10_000,
            bandwidth_per_allocation: 0,
            nonce_lifetime: Duration::from_secs(600),
            max_peers_per_allocation: 256,
            unauthenticated_rate: 20,
            unauthenticated_burst: 40,
            max_tcp_clients: 10_000,
            max_tcp_clients_per_ip: 64,
            tcp_auth_timeout: Duration::from_secs(10),
        }
    }
}

/// Source IPs whose unauthenticated answers are counted at once (the least
/// recently seen is forgotten first).
const UNAUTHENTICATED_TRACKED: usize = 65_536;

/// Permission lifetime (RFC 8656 section 9).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 section 12).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientTransport {
    /// UDP datagrams.
    Udp,
    /// A TCP connection (RFC 8656 section 3.1): the allocation ends with it.
    Tcp,
}

/// A client: its transport and address (the allocation's 5-tuple as far
/// as the server tells clients apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    /// The transport.
    pub transport: ClientTransport,
    /// The client's address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.transport {
            ClientTransport::Udp => "udp",
            ClientTransport::Tcp => "tcp",
        };
        write!(f, "{transport}:{}", self.addr)
    }
}

impl Client {
    /// A UDP client at `addr`.
    pub fn udp(addr: SocketAddr) -> Self {
        Self { transport: ClientTransport::Udp, addr }
    }

    /// A TCP client at `addr`.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self { transport: ClientTransport::Tcp, addr }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send to a client from the server's listening address.
    ToClient {
        /// The client.
        client: Client,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Send to a peer from a relay socket.
    ToPeer {
        /// The relay socket's address.
        relay: SocketAddr,
        /// The peer.
        peer: SocketAddr,
        /// The data.
        bytes: Vec<u8>,
    },
    /// Open a relay socket for `client`'s new allocation, then call
    /// [`TurnServerCore::relay_opened`].
    OpenRelay {
        /// The client.
        client: Client,
        /// The client asked for an even port (EVEN-PORT).
        even: bool,
        /// The client also asked for the next port to be reserved
        /// (EVEN-PORT with R): open it too and report it with
        /// [`TurnServerCore::relay_opened_reserving`].
        reserve_next: bool,
        /// The relayed address's family.
        family: RelayFamily,
    },
    /// Close this relay socket (allocation ended).
    CloseRelay {
        /// The relay socket's address.
        relay: SocketAddr,
    },
}

#[derive(Debug)]
struct Allocation {
    /// The credentials it was made with (`key.username` owns it).
    key: LongTermAuth,
    relay: Option<SocketAddr>,
    allocate_txid: TxId,
    lifetime: u32,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    channel_of: HashMap<SocketAddr, u16>,
    to_peers: Option<TokenBucket>,
    to_client: Option<TokenBucket>,
    /// The RESERVATION-TOKEN its answer carried (retransmissions get it
    /// again).
    reservation: Option<[u8; 8]>,
}

/// How long a port reserved by EVEN-PORT with R waits for the allocation
/// that claims it (RFC 8656 section 7.2: about 30 seconds).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// A relay socket held for a RESERVATION-TOKEN.
#[derive(Debug)]
struct Reservation {
    relay: SocketAddr,
    family: RelayFamily,
    expires: Instant,
}

/// Counters of the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Allocations now.
    pub allocations: usize,
    /// Allocations granted since start.
    pub allocations_granted: u64,
    /// Requests refused (any error answer).
    pub refused: u64,
    /// Refusals by error code (401 challenges included).
    pub refused_by_code: std::collections::BTreeMap<u16, u64>,
    /// Datagrams relayed client → peer.
    pub to_peers: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peers: u64,
    /// Datagrams relayed peer → client.
    pub to_clients: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_clients: u64,
    /// Datagrams dropped: no permission, over bandwidth, garbage.
    pub dropped: u64,
}

/// The server core.
pub struct TurnServerCore {
    config: TurnServerConfig,
    nonce_key: hmac::Key,
    allocations: HashMap<Client, Allocation>,
    by_relay: HashMap<SocketAddr, Client>,
    /// Allocations per identity (see [`quota_identity`]).
    per_user: HashMap<String, usize>,
    /// Ports reserved for a second allocation, by token.
    reservations: HashMap<[u8; 8], Reservation>,
    /// Unauthenticated answers per source IP.
    unauthenticated: PerIpRate,
    outputs: VecDeque<Output>,
    stats: ServerStats,
}

/// Who an allocation quota counts against: the user name of long-term
/// credentials; for time-limited ones (`<expiry>:<id>`) the id after the
/// expiry, so fresh credentials of the same id share its quota.
pub fn quota_identity(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, id)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => username,
    }
}

impl std::fmt::Debug for TurnServerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServerCore").field("allocations", &self.allocations.len()).finish_non_exhaustive()
    }
}

/// Whether `ip` is only reachable inside the operator's network, or is no
/// unicast host address on the internet at all (IANA special-purpose
/// registries), so a relay must never send there. IPv6 forms that carry an
/// IPv4 address (IPv4-mapped and -compatible, NAT64's 64:ff9b::/96 and
/// 64:ff9b:1::/48, 6to4's 2002::/16) are judged by that address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
                // "This network" (RFC 791).
                || a == 0
                // Shared address space (RFC 6598, carrier-grade NAT).
                || (a == 100 && (64..128).contains(&b))
                // IETF protocol assignments (RFC 6890).
                || (a == 192 && b == 0 && c == 0)
                // Benchmarking (RFC 2544).
                || (a == 198 && (b == 18 || b == 19))
                // Reserved, and multicast (RFC 1112, RFC 5771).
                || a >= 224
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |hi: usize| {
                let o = v6.octets();
                IpAddr::V4(std::net::Ipv4Addr::new(o[hi], o[hi + 1], o[hi + 2], o[hi + 3]))
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
                // Site-local (deprecated by RFC 3879, still routed inside
                // some networks).
                || (segments[0] & 0xffc0) == 0xfec0
                // Documentation (RFC 3849) and discard-only (RFC 6666).
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)
                || (segments[0..4] == [0x0100, 0, 0, 0])
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
                // IPv4-compatible (::a.b.c.d, deprecated by RFC 4291).
                || (segments[0..6] == [0, 0, 0, 0, 0, 0] && is_internal(embedded(12)))
                // NAT64 well-known and local-use prefixes (RFC 6052, 8215).
                || (segments[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_internal(embedded(12)))
                || (segments[0..3] == [0x64, 0xff9b, 1])
                // 6to4 (RFC 3056): the IPv4 address follows 2002:.
                || (segments[0] == 0x2002 && is_internal(embedded(2)))
        }
    }
}

/// The password of a time-limited user name under `secret` (coturn's
/// `use-auth-secret`, the TURN REST API).
pub fn shared_secret_password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

impl TurnServerCore {
    /// A server core; `nonce_secret` keys the stateless nonces (random per
    /// process).
    pub fn new(config: TurnServerConfig, nonce_secret: &[u8]) -> Self {
        Self {
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, nonce_secret),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            reservations: HashMap::new(),
            unauthenticated: PerIpRate::new(
                config.unauthenticated_rate,
                config.unauthenticated_burst,
                UNAUTHENTICATED_TRACKED,
            ),
            outputs: VecDeque::new(),
            stats: ServerStats::default(),
            config,
        }
    }

    /// Whether `client` holds an allocation (an authenticated client).
    pub fn has_allocation(&self, client: Client) -> bool {
        self.allocations.contains_key(&client)
    }

    /// The configuration.
    pub fn config(&self) -> &TurnServerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        ServerStats { allocations: self.allocations.len(), ..self.stats.clone() }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A nonce for `client` at `unix_time`: bound to the client's 5-tuple
    /// (its transport and address with port; the server's side is fixed),
    /// as coturn does, so a captured request replayed from another port is
    /// challenged again.
    fn nonce(&self, client: Client, unix_time: u64) -> String {
        let transport = match client.transport {
            ClientTransport::Udp => "udp",
            ClientTransport::Tcp => "tcp",
        };
        let tag = hmac::sign(&self.nonce_key, format!("{unix_time}|{transport}|{}", client.addr).as_bytes());
        format!("{unix_time:x}-{}", hex::encode(&tag.as_ref()[..12]))
    }

    fn nonce_fresh(&self, nonce: &str, client: Client, unix_time: u64) -> bool {
        let Some((time, _)) = nonce.split_once('-') else { return false };
        let Ok(issued) = u64::from_str_radix(time, 16) else { return false };
        issued <= unix_time
            && unix_time - issued <= self.config.nonce_lifetime.as_secs()
            && self.nonce(client, issued) == nonce
    }

    fn password(&self, username: &str, unix_time: u64) -> Option<String> {
        if let Some(password) = self.config.users.get(username) {
            return Some(password.clone());
        }
        let secret = self.config.auth_secret.as_ref()?;
        let expiry: u64 = username.split(':').next()?.parse().ok()?;
        (expiry > unix_time).then(|| shared_secret_password(secret, username))
    }

    fn respond(&mut self, client: Client, response: &TurnResponse, key: Option<&LongTermAuth>) {
        if let TurnResponse::Error { code, .. } = response {
            self.stats.refused += 1;
            *self.stats.refused_by_code.entry(*code).or_default() += 1;
        }
        match turn::encode_response(response, key) {
            Ok(bytes) => self.outputs.push_back(Output::ToClient { client, bytes }),
            Err(e) => tracing::debug!("cannot encode a TURN answer: {e}"),
        }
    }

    fn error(
        &mut self,
        client: Client,
        request: &IncomingRequest,
        code: u16,
        reason: &str,
        key: Option<&LongTermAuth>,
    ) {
        let response = TurnResponse::Error {
            txid: request.txid,
            method: request.method,
            code,
            reason: reason.into(),
            realm: None,
            nonce: None,
        };
        self.respond(client, &response, key);
    }

    /// Whether an unauthenticated answer may go to `client` now (its IP's
    /// budget); counts a dropped request when not.
    fn may_answer_unauthenticated(&mut self, client: Client, now: Instant) -> bool {
        let allowed = self.unauthenticated.allow(&client.addr.ip(), 1, now);
        if !allowed {
            self.stats.dropped += 1;
        }
        allowed
    }

    fn challenge(&mut self, client: Client, request: &IncomingRequest, code: u16, unix_time: u64, now: Instant) {
        if !self.may_answer_unauthenticated(client, now) {
            return;
        }
        let reason = if code == 438 { "Stale Nonce" } else { "Unauthorized" };
        let response = TurnResponse::Error {
            txid: request.txid,
            method: request.method,
            code,
            reason: reason.into(),
            realm: Some(self.config.realm.clone()),
            nonce: Some(self.nonce(client, unix_time)),
        };
        self.respond(client, &response, None);
    }

    /// Feeds a datagram from `client` at `now`; `unix_time` (seconds) dates
    /// nonces and time-limited credentials.
    pub fn handle_client(&mut self, client: Client, bytes: &[u8], now: Instant, unix_time: u64) {
        // ChannelData: first byte 0x40..=0x7F (RFC 5766 channel range).
        if bytes.first().is_some_and(|b| (0x40..=0x7F).contains(b)) {
            return self.channel_data_from_client(client, bytes, now);
        }
        // Garbage and a wrong FINGERPRINT alike: no answer.
        let Ok(request) = turn::decode_request(bytes) else {
            self.stats.dropped += 1;
            return;
        };
        if request.method == method::BINDING && !request.indication {
            if !self.may_answer_unauthenticated(client, now) {
                return;
            }
            let response = SuccessResponse { mapped: Some(client.addr), ..Default::default() };
            if let Ok(bytes) = stun::binding_success(request.txid, &response) {
                self.outputs.push_back(Output::ToClient { client, bytes });
            }
            return;
        }
        if request.indication {
            if request.method == method::SEND {
                self.send_indication(client, &request, now);
            }
            return;
        }
        // Authentication (RFC 8489 section 9.2.4).
        if !request.has_integrity {
            return self.challenge(client, &request, 401, unix_time, now);
        }
        let (Some(username), Some(nonce)) = (request.username.clone(), request.nonce.clone()) else {
            if !self.may_answer_unauthenticated(client, now) {
                return;
            }
            return self.error(client, &request, 400, "Bad Request: USERNAME and NONCE required", None);
        };
        let Some(password) = self.password(&username, unix_time) else {
            return self.challenge(client, &request, 401, unix_time, now);
        };
        let key = LongTermAuth { username: username.clone(), password, realm: self.config.realm.clone(), nonce };
        if !turn::long_term_integrity_ok(bytes, &key) {
            return self.challenge(client, &request, 401, unix_time, now);
        }
        if !self.nonce_fresh(&key.nonce, client, unix_time) {
            return self.challenge(client, &request, 438, unix_time, now);
        }
        if !request.unsupported.is_empty() {
            let response = TurnResponse::Error {
                txid: request.txid,
                method: request.method,
                code: 420,
                reason: format!("Unknown Attribute {:?}", request.unsupported),
                realm: None,
                nonce: None,
            };
            return self.respond(client, &response, Some(&key));
        }
        // A live allocation belongs to the user that made it (441).
        if let Some(allocation) = self.allocations.get(&client)
            && allocation.key.username != username
        {
            return self.error(client, &request, 441, "Wrong Credentials", Some(&key));
        }
        match request.method {
            method::ALLOCATE => self.allocate(client, &request, key, now),
            method::REFRESH => self.refresh(client, &request, &key, now),
            method::CREATE_PERMISSION => self.create_permission(client, &request, &key, now),
            method::CHANNEL_BIND => self.channel_bind(client, &request, &key, now),
            _ => self.error(client, &request, 400, "Bad Request: unknown method", Some(&key)),
        }
    }

    fn allocate(&mut self, client: Client, request: &IncomingRequest, key: LongTermAuth, now: Instant) {
        if let Some(allocation) = self.allocations.get(&client) {
            // A retransmission of the Allocate gets the same answer.
            if allocation.allocate_txid == request.txid
                && let Some(relay) = allocation.relay
            {
                let response = TurnResponse::Allocated {
                    txid: request.txid,
                    relayed: relay,
                    mapped: Some(client.addr),
                    lifetime: allocation.lifetime,
                    reservation: allocation.reservation,
                };
                return self.respond(client, &response, Some(&key));
            }
            if allocation.allocate_txid == request.txid {
                return; // Still opening the relay socket.
            }
            return self.error(client, request, 437, "Allocation Mismatch", Some(&key));
        }
        if request.even_port.is_some() && request.reservation_token.is_some() {
            return self.error(client, request, 400, "Bad Request: EVEN-PORT with RESERVATION-TOKEN", Some(&key));
        }
        match request.transport {
            Some(17) => {}
            Some(_) => return self.error(client, request, 442, "Unsupported Transport Protocol", Some(&key)),
            None => return self.error(client, request, 400, "Bad Request: REQUESTED-TRANSPORT missing", Some(&key)),
        }
        // Without REQUESTED-ADDRESS-FAMILY: IPv4 (RFC 8656 section 7.2),
        // or the one family an IPv6-only relay has.
        let family = request.family.unwrap_or_else(|| {
            if self.config.relay_families.contains(&RelayFamily::V4) { RelayFamily::V4 } else { RelayFamily::V6 }
        });
        if !self.config.relay_families.contains(&family) {
            return self.error(client, request, 440, "Address Family not Supported", Some(&key));
        }
        let identity = quota_identity(&key.username).to_string();
        if self.per_user.get(&identity).copied().unwrap_or(0) >= self.config.max_allocations_per_user {
            return self.error(client, request, 486, "Allocation Quota Reached", Some(&key));
        }
        // A reserved port counts as an allocation until it is claimed.
        if self.allocations.len() + self.reservations.len() >= self.config.max_allocations
            && request.reservation_token.is_none()
        {
            return self.error(client, request, 508, "Insufficient Capacity", Some(&key));
        }
        let reserved = match request.reservation_token {
            Some(token) => match self.reservations.remove(&token) {
                Some(reserved) if reserved.expires > now && reserved.family == family => Some(reserved.relay),
                Some(reserved) => {
                    self.outputs.push_back(Output::CloseRelay { relay: reserved.relay });
                    return self.error(client, request, 508, "Insufficient Capacity: reservation expired", Some(&key));
                }
                None => {
                    return self.error(client, request, 508, "Insufficient Capacity: no such reservation", Some(&key));
                }
            },
            None => None,
        };
        let lifetime = self.lifetime(request.lifetime);
        let bucket = |rate: u32| (rate > 0).then(|| TokenBucket::new(rate, rate, now));
        *self.per_user.entry(identity).or_default() += 1;
        self.allocations.insert(
            client,
            Allocation {
                key,
                relay: None,
                allocate_txid: request.txid,
                lifetime,
                expires: now + Duration::from_secs(u64::from(lifetime)),
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
                to_peers: bucket(self.config.bandwidth_per_allocation),
                to_client: bucket(self.config.bandwidth_per_allocation),
                reservation: None,
            },
        );
        match reserved {
            // The reserved socket is open already.
            Some(relay) => self.relay_opened(client, Ok(relay)),
            None => self.outputs.push_back(Output::OpenRelay {
                client,
                even: request.even_port.is_some(),
                reserve_next: request.even_port == Some(true),
                family,
            }),
        }
    }

    fn lifetime(&self, asked: Option<u32>) -> u32 {
        asked.unwrap_or(self.config.default_lifetime).min(self.config.max_lifetime)
    }

    /// The driver opened (or failed to open) the relay socket of
    /// `client`'s allocation.
    pub fn relay_opened(&mut self, client: Client, relay: Result<SocketAddr, String>) {
        self.opened(client, relay.map(|relay| (relay, None)), None);
    }

    /// The driver opened (or failed to open) the relay socket of
    /// `client`'s allocation, and with `Some(next)` the socket of the next
    /// port, reserved for [`RESERVATION_LIFETIME`] from `now` under a
    /// token the answer carries.
    pub fn relay_opened_reserving(
        &mut self,
        client: Client,
        relays: Result<(SocketAddr, Option<SocketAddr>), String>,
        now: Instant,
    ) {
        self.opened(client, relays, Some(now));
    }

    fn opened(
        &mut self,
        client: Client,
        relays: Result<(SocketAddr, Option<SocketAddr>), String>,
        now: Option<Instant>,
    ) {
        let Some(allocation) = self.allocations.get_mut(&client) else {
            // The allocation ended meanwhile.
            if let Ok((relay, next)) = relays {
                self.outputs.push_back(Output::CloseRelay { relay });
                if let Some(next) = next {
                    self.outputs.push_back(Output::CloseRelay { relay: next });
                }
            }
            return;
        };
        match relays {
            Ok((relay, next)) => {
                allocation.relay = Some(relay);
                if let (Some(next), Some(now)) = (next, now) {
                    let token: [u8; 8] = rand::random();
                    let family = if next.is_ipv4() { RelayFamily::V4 } else { RelayFamily::V6 };
                    self.reservations
                        .insert(token, Reservation { relay: next, family, expires: now + RESERVATION_LIFETIME });
                    allocation.reservation = Some(token);
                }
                self.by_relay.insert(relay, client);
                self.stats.allocations_granted += 1;
                let response = TurnResponse::Allocated {
                    txid: allocation.allocate_txid,
                    relayed: relay,
                    mapped: Some(client.addr),
                    lifetime: allocation.lifetime,
                    reservation: allocation.reservation,
                };
                let key = allocation.key.clone();
                self.respond(client, &response, Some(&key));
            }
            Err(e) => {
                tracing::warn!(%client, "cannot open a relay socket: {e}");
                let txid = allocation.allocate_txid;
                let key = allocation.key.clone();
                self.remove(client);
                let response = TurnResponse::Error {
                    txid,
                    method: method::ALLOCATE,
                    code: 508,
                    reason: "Insufficient Capacity".into(),
                    realm: None,
                    nonce: None,
                };
                self.respond(client, &response, Some(&key));
            }
        }
    }

    fn remove(&mut self, client: Client) {
        let Some(allocation) = self.allocations.remove(&client) else { return };
        let identity = quota_identity(&allocation.key.username);
        if let Some(count) = self.per_user.get_mut(identity) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_user.remove(identity);
            }
        }
        if let Some(relay) = allocation.relay {
            self.by_relay.remove(&relay);
            self.outputs.push_back(Output::CloseRelay { relay });
        }
    }

    fn refresh(&mut self, client: Client, request: &IncomingRequest, key: &LongTermAuth, now: Instant) {
        let lifetime = self.lifetime(request.lifetime);
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return self.error(client, request, 437, "Allocation Mismatch", Some(key));
        };
        if lifetime == 0 {
            self.remove(client);
        } else {
            allocation.lifetime = lifetime;
            allocation.expires = now + Duration::from_secs(u64::from(lifetime));
        }
        let response = TurnResponse::Success { txid: request.txid, method: method::REFRESH, lifetime: Some(lifetime) };
        self.respond(client, &response, Some(key));
    }

    fn peer_refusal(&self, client: Client, peers: &[SocketAddr]) -> Option<(u16, &'static str)> {
        if peers.is_empty() {
            return Some((400, "Bad Request: XOR-PEER-ADDRESS missing"));
        }
        let relay = self.allocations.get(&client).and_then(|a| a.relay);
        for peer in peers {
            // An IPv4 relay cannot reach IPv6 peers nor the other way round
            // (RFC 8656 section 9.1).
            if relay.is_some_and(|relay| relay.is_ipv4() != peer.is_ipv4()) {
                return Some((443, "Peer Address Family Mismatch"));
            }
            if peer.ip().is_multicast() || (!self.config.allow_private_peers && is_internal(peer.ip())) {
                return Some((403, "Forbidden: the server does not relay to that address"));
            }
        }
        None
    }

    fn create_permission(&mut self, client: Client, request: &IncomingRequest, key: &LongTermAuth, now: Instant) {
        if let Some((code, reason)) = self.peer_refusal(client, &request.peers) {
            return self.error(client, request, code, reason, Some(key));
        }
        let limit = self.config.max_peers_per_allocation;
        let Some(allocation) = self.allocations.get_mut(&client).filter(|a| a.relay.is_some()) else {
            return self.error(client, request, 437, "Allocation Mismatch", Some(key));
        };
        let new = request.peers.iter().filter(|p| !allocation.permissions.contains_key(&p.ip())).count();
        if allocation.permissions.len() + new > limit {
            return self.error(client, request, 508, "Insufficient Capacity: too many permissions", Some(key));
        }
        for peer in &request.peers {
            allocation.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        }
        let response = TurnResponse::Success { txid: request.txid, method: method::CREATE_PERMISSION, lifetime: None };
        self.respond(client, &response, Some(key));
    }

    fn channel_bind(&mut self, client: Client, request: &IncomingRequest, key: &LongTermAuth, now: Instant) {
        let Some(channel) = request.channel.filter(|c| (MIN_CHANNEL..=MAX_CHANNEL_RFC5766).contains(c)) else {
            return self.error(client, request, 400, "Bad Request: channel number out of range", Some(key));
        };
        if let Some((code, reason)) = self.peer_refusal(client, &request.peers) {
            return self.error(client, request, code, reason, Some(key));
        }
        let peer = request.peers[0];
        let limit = self.config.max_peers_per_allocation;
        let Some(allocation) = self.allocations.get_mut(&client).filter(|a| a.relay.is_some()) else {
            return self.error(client, request, 437, "Allocation Mismatch", Some(key));
        };
        let bound_elsewhere = allocation.channels.get(&channel).is_some_and(|(p, _)| *p != peer)
            || allocation.channel_of.get(&peer).is_some_and(|c| *c != channel);
        if bound_elsewhere {
            return self.error(client, request, 400, "Bad Request: channel or peer bound otherwise", Some(key));
        }
        if !allocation.channels.contains_key(&channel) && allocation.channels.len() >= limit {
            return self.error(client, request, 508, "Insufficient Capacity: too many channels", Some(key));
        }
        allocation.channels.insert(channel, (peer, now + CHANNEL_LIFETIME));
        allocation.channel_of.insert(peer, channel);
        allocation.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        let response = TurnResponse::Success { txid: request.txid, method: method::CHANNEL_BIND, lifetime: None };
        self.respond(client, &response, Some(key));
    }

    fn relay_to_peer(&mut self, client: Client, peer: SocketAddr, data: Vec<u8>, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&client) else { return self.stats.dropped += 1 };
        let (Some(relay), true) = (allocation.relay, allocation.permissions.contains_key(&peer.ip())) else {
            return self.stats.dropped += 1;
        };
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if allocation.to_peers.as_mut().is_some_and(|b| !b.take_n(len, now)) {
            return self.stats.dropped += 1;
        }
        self.stats.to_peers += 1;
        self.stats.bytes_to_peers += data.len() as u64;
        self.outputs.push_back(Output::ToPeer { relay, peer, bytes: data });
    }

    fn send_indication(&mut self, client: Client, request: &IncomingRequest, now: Instant) {
        match (request.peers.first(), &request.data) {
            (Some(&peer), Some(data)) => self.relay_to_peer(client, peer, data.clone(), now),
            _ => self.stats.dropped += 1,
        }
    }

    fn channel_data_from_client(&mut self, client: Client, bytes: &[u8], now: Instant) {
        let Ok((message, _)) = ChannelData::decode(bytes) else { return self.stats.dropped += 1 };
        let peer = self.allocations.get(&client).and_then(|a| a.channels.get(&message.channel)).map(|(p, _)| *p);
        match peer {
            Some(peer) => self.relay_to_peer(client, peer, message.data, now),
            None => self.stats.dropped += 1,
        }
    }

    /// Feeds a datagram that `peer` sent to the relay socket `relay`.
    pub fn handle_peer(&mut self, relay: SocketAddr, peer: SocketAddr, bytes: &[u8], now: Instant) {
        let Some(&client) = self.by_relay.get(&relay) else { return self.stats.dropped += 1 };
        let Some(allocation) = self.allocations.get_mut(&client) else { return self.stats.dropped += 1 };
        if !allocation.permissions.contains_key(&peer.ip()) {
            return self.stats.dropped += 1;
        }
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        if allocation.to_client.as_mut().is_some_and(|b| !b.take_n(len, now)) {
            return self.stats.dropped += 1;
        }
        let encoded = match allocation.channel_of.get(&peer) {
            Some(&channel) => ChannelData { channel, data: bytes.to_vec() }.encode(false),
            None => turn::encode_response(&TurnResponse::Data { peer, data: bytes.to_vec() }, None),
        };
        match encoded {
            Ok(encoded) => {
                self.stats.to_clients += 1;
                self.stats.bytes_to_clients += bytes.len() as u64;
                let bytes = encoded;
                self.outputs.push_back(Output::ToClient { client, bytes });
            }
            Err(_) => self.stats.dropped += 1,
        }
    }

    /// The client's connection ended (TCP): its allocation ends too.
    pub fn client_gone(&mut self, client: Client) {
        self.remove(client);
    }

    /// Expires allocations, permissions, channels and reservations due at
    /// `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let lapsed: Vec<[u8; 8]> =
            self.reservations.iter().filter(|(_, r)| r.expires <= now).map(|(token, _)| *token).collect();
        for token in lapsed {
            if let Some(reserved) = self.reservations.remove(&token) {
                self.outputs.push_back(Output::CloseRelay { relay: reserved.relay });
            }
        }
        let expired: Vec<Client> = self.allocations.iter().filter(|(_, a)| a.expires <= now).map(|(c, _)| *c).collect();
        for client in expired {
            self.remove(client);
        }
        for allocation in self.allocations.values_mut() {
            allocation.permissions.retain(|_, until| *until > now);
            let gone: Vec<u16> = allocation.channels.iter().filter(|(_, (_, t))| *t <= now).map(|(c, _)| *c).collect();
            for channel in gone {
                if let Some((peer, _)) = allocation.channels.remove(&channel) {
                    allocation.channel_of.remove(&peer);
                }
            }
        }
    }

    /// When [`TurnServerCore::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations
            .values()
            .flat_map(|a| {
                std::iter::once(a.expires)
                    .chain(a.permissions.values().copied())
                    .chain(a.channels.values().map(|c| c.1))
            })
            .chain(self.reservations.values().map(|r| r.expires))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::transaction::RetransmitPolicy;
    use crate::relay::RelayError;
    use crate::relay::client::{TurnClient, TurnConfig, TurnEvent};

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    const CLIENT: &str = "203.0.113.7:40000";
    const RELAY: &str = "198.51.100.1:50000";
    const UNIX: u64 = 1_800_000_000;

    /// Our client's configuration for this server.
    fn client_config(username: &str, password: &str) -> TurnConfig {
        TurnConfig {
            server: a("198.51.100.1:3478"),
            username: username.into(),
            password: password.into(),
            lifetime: 600,
            retransmit: RetransmitPolicy::DISCOVERY,
            transport: crate::relay::url::TurnTransport::Udp,
            family: None,
        }
    }

    /// Our client against our server, without sockets.
    struct Wire {
        server: TurnServerCore,
        client: TurnClient,
        to_peers: Vec<(SocketAddr, Vec<u8>)>,
        closed: Vec<SocketAddr>,
        events: Vec<TurnEvent>,
        unix: u64,
    }

    impl Wire {
        fn new(config: TurnServerConfig, username: &str, password: &str, t0: Instant) -> Self {
            Self {
                server: TurnServerCore::new(config, b"nonce secret"),
                client: TurnClient::new(client_config(username, password), t0),
                to_peers: Vec::new(),
                closed: Vec::new(),
                events: Vec::new(),
                unix: UNIX,
            }
        }

        fn run(&mut self, now: Instant) {
            for _ in 0..100 {
                self.client.handle_timeout(now);
                let mut quiet = true;
                while let Some(bytes) = self.client.poll_transmit() {
                    quiet = false;
                    self.server.handle_client(Client::udp(a(CLIENT)), &bytes, now, self.unix);
                }
                while let Some(output) = self.server.poll_output() {
                    quiet = false;
                    match output {
                        Output::ToClient { client, bytes } => {
                            assert_eq!(client, Client::udp(a(CLIENT)));
                            self.client.handle_datagram(&bytes, now);
                        }
                        Output::OpenRelay { client, .. } => self.server.relay_opened(client, Ok(a(RELAY))),
                        Output::ToPeer { relay, peer, bytes } => {
                            assert_eq!(relay, a(RELAY));
                            self.to_peers.push((peer, bytes));
                        }
                        Output::CloseRelay { relay } => self.closed.push(relay),
                    }
                }
                while let Some(event) = self.client.poll_event() {
                    self.events.push(event);
                }
                if quiet {
                    return;
                }
            }
        }

        fn failure(&self) -> Option<&RelayError> {
            self.events.iter().find_map(|e| match e {
                TurnEvent::Failed(error) => Some(error),
                _ => None,
            })
        }
    }

    /// Sends an Allocate from `from` (after the 401 that gives realm and
    /// nonce) with EVEN-PORT `even_port` and RESERVATION-TOKEN
    /// `reservation`; returns the outputs of the authenticated one.
    fn raw_allocate(
        server: &mut TurnServerCore,
        from: &str,
        even_port: Option<bool>,
        reservation: Option<[u8; 8]>,
        now: Instant,
    ) -> Vec<Output> {
        use fogconnect_proto::turn::{TurnRequest, decode_response, encode_request};
        let client = Client::udp(a(from));
        let request = TurnRequest::Allocate { lifetime: None, family: None, even_port, reservation };
        server.handle_client(client, &encode_request([1; 12], &request, None).expect("encode"), now, UNIX);
        let Some(Output::ToClient { bytes, .. }) = server.poll_output() else { panic!("no challenge") };
        let Ok(TurnResponse::Error { code: 401, realm: Some(realm), nonce: Some(nonce), .. }) = decode_response(&bytes)
        else {
            panic!("not a 401")
        };
        let auth = LongTermAuth { username: "dev".into(), password: "secret".into(), realm, nonce };
        server.handle_client(client, &encode_request([2; 12], &request, Some(&auth)).expect("encode"), now, UNIX);
        std::iter::from_fn(|| server.poll_output()).collect()
    }

    /// The answer among `outputs`.
    fn answer(outputs: &[Output]) -> TurnResponse {
        outputs
            .iter()
            .find_map(|o| match o {
                Output::ToClient { bytes, .. } => fogconnect_proto::turn::decode_response(bytes).ok(),
                _ => None,
            })
            .expect("an answer")
    }

    #[test]
    fn even_port_with_r_reserves_the_next_port_for_the_token() {
        let t0 = Instant::now();
        let mut server = TurnServerCore::new(users(), b"nonce secret");
        // RTP: an even port, the next one reserved.
        let outputs = raw_allocate(&mut server, "203.0.113.7:5000", Some(true), None, t0);
        assert!(matches!(outputs[..], [Output::OpenRelay { even: true, reserve_next: true, .. }]), "{outputs:?}");
        let rtp = Client::udp(a("203.0.113.7:5000"));
        server.relay_opened_reserving(rtp, Ok((a("198.51.100.1:50000"), Some(a("198.51.100.1:50001")))), t0);
        let outputs: Vec<Output> = std::iter::from_fn(|| server.poll_output()).collect();
        let TurnResponse::Allocated { relayed, reservation: Some(token), .. } = answer(&outputs) else {
            panic!("no token: {outputs:?}")
        };
        assert_eq!(relayed, a("198.51.100.1:50000"));
        // RTCP: the reserved port, at once, by the token; once only.
        let outputs = raw_allocate(&mut server, "203.0.113.7:5001", None, Some(token), t0);
        let TurnResponse::Allocated { relayed, reservation: None, .. } = answer(&outputs) else {
            panic!("not allocated: {outputs:?}")
        };
        assert_eq!(relayed, a("198.51.100.1:50001"));
        assert!(!outputs.iter().any(|o| matches!(o, Output::OpenRelay { .. })), "the reserved socket is used");
        let again = raw_allocate(&mut server, "203.0.113.7:5003", None, Some(token), t0);
        assert!(matches!(answer(&again), TurnResponse::Error { code: 508, .. }), "{again:?}");
        // Both at once is a bad request.
        let both = raw_allocate(&mut server, "203.0.113.7:5005", Some(true), Some(token), t0);
        assert!(matches!(answer(&both), TurnResponse::Error { code: 400, .. }), "{both:?}");
        // A reservation nobody claims is closed after its lifetime.
        let outputs = raw_allocate(&mut server, "203.0.113.7:6000", Some(true), None, t0);
        assert!(matches!(outputs[..], [Output::OpenRelay { .. }]));
        let third = Client::udp(a("203.0.113.7:6000"));
        server.relay_opened_reserving(third, Ok((a("198.51.100.1:50010"), Some(a("198.51.100.1:50011")))), t0);
        while server.poll_output().is_some() {}
        assert_eq!(server.poll_timeout(), Some(t0 + RESERVATION_LIFETIME));
        server.handle_timeout(t0 + RESERVATION_LIFETIME);
        let closed: Vec<Output> = std::iter::from_fn(|| server.poll_output()).collect();
        assert_eq!(closed, [Output::CloseRelay { relay: a("198.51.100.1:50011") }]);
    }

    fn users() -> TurnServerConfig {
        TurnServerConfig { users: HashMap::from([("dev".into(), "secret".into())]), ..TurnServerConfig::default() }
    }

    #[test]
    fn our_client_allocates_permits_binds_and_relays_both_ways() {
        let t0 = Instant::now();
        let mut wire = Wire::new(users(), "dev", "secret", t0);
        let peer = a("192.0.2.80:9000");
        wire.client.permit(peer, t0);
        wire.run(t0);
        assert_eq!(wire.client.relayed(), Some(a(RELAY)));
        assert!(wire.client.is_permitted(peer));
        wire.client.send_to(peer, b"one").expect("send");
        wire.run(t0);
        assert_eq!(wire.to_peers, [(peer, b"one".to_vec())]);
        wire.server.handle_peer(a(RELAY), peer, b"two", t0);
        wire.run(t0);
        assert!(wire.events.contains(&TurnEvent::Data { peer, data: b"two".to_vec() }));
        // Channel: both ways as ChannelData.
        wire.client.bind_channel(peer, t0).expect("bind");
        wire.run(t0);
        assert!(wire.client.is_bound(peer));
        wire.client.send_to(peer, b"three").expect("send");
        wire.run(t0);
        assert_eq!(wire.to_peers.last(), Some(&(peer, b"three".to_vec())));
        wire.server.handle_peer(a(RELAY), peer, b"four", t0);
        wire.run(t0);
        assert!(wire.events.contains(&TurnEvent::Data { peer, data: b"four".to_vec() }));
        // Peers without permission are dropped both ways.
        let stranger = a("192.0.2.99:1");
        wire.server.handle_peer(a(RELAY), stranger, b"let me in", t0);
        assert_eq!(wire.server.poll_output(), None);
        assert_eq!(wire.server.stats().allocations, 1);
        // Close: the relay socket goes.
        wire.client.close();
        wire.run(t0);
        assert_eq!(wire.closed, [a(RELAY)]);
        assert_eq!(wire.server.stats().allocations, 0);
    }

    #[test]
    fn the_relayed_family_is_the_one_asked_for_and_a_missing_one_is_refused_with_440() {
        let t0 = Instant::now();
        // Runs one client against `server` until quiet; opens relay sockets
        // of the family asked for; returns the families opened.
        let allocate = |server: &mut TurnServerCore, family: Option<RelayFamily>| {
            let config = TurnConfig { family, ..client_config("dev", "secret") };
            let mut client = TurnClient::new(config, t0);
            let mut opened = Vec::new();
            for _ in 0..20 {
                client.handle_timeout(t0);
                while let Some(bytes) = client.poll_transmit() {
                    server.handle_client(Client::udp(a(CLIENT)), &bytes, t0, UNIX);
                }
                while let Some(output) = server.poll_output() {
                    match output {
                        Output::ToClient { bytes, .. } => client.handle_datagram(&bytes, t0),
                        Output::OpenRelay { client: who, family, .. } => {
                            opened.push(family);
                            let relay =
                                if family == RelayFamily::V4 { "198.51.100.1:50000" } else { "[2001:db8::1]:50000" };
                            server.relay_opened(who, Ok(a(relay)));
                        }
                        _ => {}
                    }
                }
            }
            let events: Vec<TurnEvent> = std::iter::from_fn(|| client.poll_event()).collect();
            (opened, client.relayed(), events)
        };
        // An IPv4-only relay: IPv6 asked for gets 440, nothing opened.
        let mut server = TurnServerCore::new(users(), b"nonce secret");
        let (opened, relayed, events) = allocate(&mut server, Some(RelayFamily::V6));
        assert!(opened.is_empty() && relayed.is_none());
        assert!(
            events.iter().any(|e| matches!(e, TurnEvent::Failed(RelayError::Refused { code: 440, .. }))),
            "{events:?}"
        );
        // A dual-stack relay: the family asked for, IPv4 without asking.
        let dual = TurnServerConfig { relay_families: vec![RelayFamily::V4, RelayFamily::V6], ..users() };
        let mut server = TurnServerCore::new(dual.clone(), b"nonce secret");
        let (opened, relayed, _) = allocate(&mut server, Some(RelayFamily::V6));
        assert_eq!((opened, relayed), (vec![RelayFamily::V6], Some(a("[2001:db8::1]:50000"))));
        let mut server = TurnServerCore::new(dual, b"nonce secret");
        let (opened, relayed, _) = allocate(&mut server, None);
        assert_eq!((opened, relayed), (vec![RelayFamily::V4], Some(a("198.51.100.1:50000"))));
    }

    #[test]
    fn time_limited_credentials_work_until_they_expire() {
        let t0 = Instant::now();
        let secret = b"shared with signaling".to_vec();
        let config = TurnServerConfig { auth_secret: Some(secret.clone()), ..TurnServerConfig::default() };
        let username = format!("{}:dev", UNIX + 3600);
        let password = shared_secret_password(&secret, &username);
        let mut wire = Wire::new(config.clone(), &username, &password, t0);
        wire.run(t0);
        assert!(wire.client.relayed().is_some(), "{:?}", wire.events);
        let expired = format!("{}:dev", UNIX - 1);
        let password = shared_secret_password(&secret, &expired);
        let mut wire = Wire::new(config, &expired, &password, t0);
        wire.run(t0);
        assert!(matches!(wire.failure(), Some(RelayError::Refused { code: 401, .. })), "{:?}", wire.events);
    }

    #[test]
    fn loopback_and_private_peers_are_refused_unless_allowed() {
        let t0 = Instant::now();
        for (peer, allowed) in [("127.0.0.1:80", false), ("10.1.2.3:80", false), ("169.254.1.1:1", false)] {
            let mut wire = Wire::new(users(), "dev", "secret", t0);
            wire.run(t0);
            wire.client.permit(a(peer), t0);
            wire.run(t0);
            assert_eq!(wire.client.is_permitted(a(peer)), allowed, "{peer}");
            assert!(wire.server.stats().refused >= 1);
        }
        let mut wire = Wire::new(TurnServerConfig { allow_private_peers: true, ..users() }, "dev", "secret", t0);
        wire.run(t0);
        wire.client.permit(a("127.0.0.1:80"), t0);
        wire.run(t0);
        assert!(wire.client.is_permitted(a("127.0.0.1:80")));
    }

    #[test]
    fn unauthenticated_requests_and_wrong_passwords_get_nothing_relayed() {
        let t0 = Instant::now();
        let mut wire = Wire::new(users(), "dev", "not the password", t0);
        wire.run(t0);
        assert!(matches!(wire.failure(), Some(RelayError::Refused { code: 401, .. })));
        assert_eq!(wire.server.stats().allocations, 0);
        // A Send indication from a stranger is dropped.
        let send = turn::encode_send([1; 12], a("192.0.2.80:9000"), b"spoof").expect("encode");
        wire.server.handle_client(Client::udp(a("203.0.113.66:1")), &send, t0, UNIX);
        assert_eq!(wire.server.poll_output(), None);
        for garbage in [&b""[..], b"x", &[0x40, 0x00, 0x00, 0x09, 1], &[0u8; 20]] {
            wire.server.handle_client(Client::udp(a("203.0.113.66:1")), garbage, t0, UNIX);
        }
        assert_eq!(wire.server.poll_output(), None);
    }

    #[test]
    fn quota_and_stale_nonce() {
        let t0 = Instant::now();
        let config = TurnServerConfig { max_allocations_per_user: 1, ..users() };
        let mut wire = Wire::new(config, "dev", "secret", t0);
        wire.run(t0);
        assert!(wire.client.relayed().is_some());
        // A second client of the same user hits the quota.
        let mut other = TurnClient::new(client_config("dev", "secret"), t0);
        for _ in 0..4 {
            while let Some(bytes) = other.poll_transmit() {
                wire.server.handle_client(Client::udp(a("203.0.113.8:1")), &bytes, t0, UNIX);
            }
            while let Some(output) = wire.server.poll_output() {
                if let Output::ToClient { bytes, .. } = output {
                    other.handle_datagram(&bytes, t0);
                }
            }
            other.handle_timeout(t0);
        }
        assert_eq!(
            other.poll_event(),
            Some(TurnEvent::Failed(RelayError::Refused { code: 486, reason: "Allocation Quota Reached".into() }))
        );
        // Much later the nonce is stale: the refresh is challenged with
        // 438 and retried with the new nonce.
        wire.unix += 3600;
        let later = t0 + Duration::from_secs(540);
        wire.run(later);
        assert!(wire.client.relayed().is_some(), "{:?}", wire.events);
        assert_eq!(wire.failure(), None);
        // And again an hour later: challenges are retried every time.
        wire.unix += 3600;
        wire.run(later + Duration::from_secs(540));
        assert_eq!(wire.failure(), None);
        assert_eq!(wire.server.stats().allocations, 1);
    }

    #[test]
    fn allocations_expire_without_refresh() {
        let t0 = Instant::now();
        let mut wire = Wire::new(users(), "dev", "secret", t0);
        wire.run(t0);
        let expiry = wire.server.poll_timeout().expect("expiry");
        assert_eq!(expiry - t0, Duration::from_secs(600));
        wire.server.handle_timeout(expiry);
        assert_eq!(wire.server.poll_output(), Some(Output::CloseRelay { relay: a(RELAY) }));
        assert_eq!(wire.server.stats().allocations, 0);
    }

    #[test]
    fn special_purpose_and_embedded_internal_addresses_are_internal() {
        let internal = [
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.1",
            "240.0.0.1",
            "255.255.255.255",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:1::1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:192.168.1.1",
        ];
        for ip in internal {
            assert!(is_internal(ip.parse().expect("ip")), "{ip} should be internal");
        }
        let public =
            ["203.0.113.7", "198.51.100.1", "8.8.8.8", "2001:4860::8888", "64:ff9b::808:808", "2002:808:808::1"];
        for ip in public {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip} should be public");
        }
    }

    #[test]
    fn quota_counts_the_identity_behind_time_limited_names() {
        assert_eq!(quota_identity("1795000000:device-7"), "device-7");
        assert_eq!(quota_identity("1795000000:a:b"), "a:b");
        assert_eq!(quota_identity("1795000000"), "1795000000");
        assert_eq!(quota_identity("dev"), "dev");
        assert_eq!(quota_identity("ee:34:a1"), "ee:34:a1");
    }

    #[test]
    fn unauthenticated_answers_are_limited_per_source_ip() {
        let t0 = Instant::now();
        let config = TurnServerConfig { unauthenticated_rate: 10, unauthenticated_burst: 5, ..users() };
        let mut server = TurnServerCore::new(config, b"nonce secret");
        // The smallest request: a 20-byte Binding (the 401 an
        // unauthenticated Allocate gets is limited the same way).
        let allocate = stun::binding_request([7; 12], &stun::BindingRequest::default()).expect("encode");
        assert_eq!(allocate.len(), 20);
        let spoofed = Client::udp(a("192.0.2.99:1000"));
        let mut answers = 0;
        for _ in 0..100 {
            server.handle_client(spoofed, &allocate, t0, UNIX);
            while server.poll_output().is_some() {
                answers += 1;
            }
        }
        assert_eq!(answers, 5, "a burst of 5, then nothing");
        // Another source has its own budget; time refills it.
        server.handle_client(Client::udp(a("192.0.2.100:1000")), &allocate, t0, UNIX);
        assert!(server.poll_output().is_some());
        server.handle_client(spoofed, &allocate, t0 + Duration::from_millis(110), UNIX);
        assert!(server.poll_output().is_some());
    }
}
