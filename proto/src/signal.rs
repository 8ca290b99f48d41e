//! The signaling protocol: JSON messages in WebSocket text frames. See
//! `host/src/signal/PROTOCOL.md` for the full description.
//!
//! Pure encode/decode functions; unknown fields are ignored so later
//! versions can add optional fields without breaking older peers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Version of the protocol, sent in `register`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Most candidates in one offer.
pub const MAX_CANDIDATES: usize = 32;

/// Stable error codes of the `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The message is not valid JSON or not a known message.
    BadRequest = 1,
    /// The credential is missing, malformed, expired or not for this id.
    Unauthorized = 2,
    /// The message needs a registered session.
    NotRegistered = 3,
    /// The message exceeds [`MAX_MESSAGE_BYTES`].
    TooLarge = 4,
    /// The client sends faster than its rate limit; the message was dropped.
    RateLimited = 5,
    /// The target peer is not online.
    UnknownPeer = 6,
    /// The server holds its maximum number of clients.
    ServerFull = 7,
    /// The client speaks another protocol version.
    VersionMismatch = 8,
    /// No message arrived within the idle timeout.
    IdleTimeout = 9,
    /// The target peer cannot take more messages now.
    PeerBusy = 10,
    /// The signaling server holding the target cannot be reached now (the
    /// servers' cluster is down or slow); try again.
    Unreachable = 11,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if known.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Self::BadRequest,
            2 => Self::Unauthorized,
            3 => Self::NotRegistered,
            4 => Self::TooLarge,
            5 => Self::RateLimited,
            6 => Self::UnknownPeer,
            7 => Self::ServerFull,
            8 => Self::VersionMismatch,
            9 => Self::IdleTimeout,
            10 => Self::PeerBusy,
            11 => Self::Unreachable,
            _ => return None,
        })
    }

    /// The code's name as the protocol documents it (`unknown-peer`).
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::NotRegistered => "not-registered",
            Self::TooLarge => "too-large",
            Self::RateLimited => "rate-limited",
            Self::UnknownPeer => "unknown-peer",
            Self::ServerFull => "server-full",
            Self::VersionMismatch => "version-mismatch",
            Self::IdleTimeout => "idle-timeout",
            Self::PeerBusy => "peer-busy",
            Self::Unreachable => "unreachable",
        }
    }
}

/// How a candidate address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateKind {
    /// An address of a local interface.
    Host,
    /// The public address a STUN server saw (server-reflexive).
    ServerReflexive,
    /// An address learned from a connectivity check (peer-reflexive).
    PeerReflexive,
    /// An address on a TURN relay.
    Relayed,
}

/// An address a node may be reached at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// How the address was learned.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
}

/// How a NAT treats a behaviour (mapping or filtering), RFC 4787 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatBehaviour {
    /// The same for every remote endpoint.
    EndpointIndependent,
    /// Depends on the remote address.
    AddressDependent,
    /// Depends on the remote address and port.
    AddressAndPortDependent,
    /// Not determined.
    Unknown,
}

/// How a NAT picks the public port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PortAllocation {
    /// The public port equals the local port.
    Preserving,
    /// Each new mapping gets the previous public port plus `delta`.
    Sequential {
        /// Step between consecutive mappings (may be negative).
        delta: i32,
    },
    /// Ports are drawn at random.
    Random,
    /// Not determined.
    Unknown,
}

/// A node's NAT classification, as far as it knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatInfo {
    /// Mapping behaviour.
    pub mapping: NatBehaviour,
    /// Filtering behaviour.
    pub filtering: NatBehaviour,
    /// Port allocation of new mappings.
    #[serde(default = "unknown_allocation")]
    pub allocation: PortAllocation,
    /// No UDP reached the STUN server: only a relay over TCP can help.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub udp_blocked: bool,
}

fn unknown_allocation() -> PortAllocation {
    PortAllocation::Unknown
}

/// Short-term credentials of connectivity checks (ICE style): binding
/// requests to a node carry `USERNAME` `<its ufrag>:<sender's ufrag>` and
/// `MESSAGE-INTEGRITY` keyed with its `pwd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCredentials {
    /// User fragment, 4 to 64 characters.
    pub ufrag: String,
    /// Password, 22 to 128 characters.
    pub pwd: String,
}

/// What one side tells the other so it can reach and authenticate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// SHA-256 fingerprint (hex) of the node's certificate; pinned in the
    /// QUIC handshake.
    pub fingerprint: String,
    /// Addresses to try, best first.
    pub candidates: Vec<Candidate>,
    /// The node's NAT classification, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatInfo>,
    /// Credentials for connectivity checks; without them the peer is
    /// dialled directly on its candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<CheckCredentials>,
}

impl Offer {
    /// The address of the first candidate of `kind`, if the offer has one
    /// (e.g. the peer's relayed address).
    pub fn address_of(&self, kind: CandidateKind) -> Option<SocketAddr> {
        self.candidates.iter().find(|c| c.kind == kind).map(|c| c.addr)
    }
}

/// A TURN relay and time-limited credentials for it (coturn's
/// `use-auth-secret` scheme: the user name is `<expiry>:<node id>`, the
/// password the base64 HMAC-SHA1 of the user name under the secret the
/// signaling server shares with the relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCredentials {
    /// TURN URL (RFC 7065), e.g. `turn:relay.example:3478?transport=udp`.
    pub url: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Unix time (seconds) after which the relay refuses the credentials.
    pub expires: u64,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// Join under `id`, proven by `token`. Must be the first message.
    Register {
        /// Protocol version of the client.
        version: u32,
        /// The node id.
        id: String,
        /// Credential issued for `id` (see `fogconnect signal token`).
        token: String,
    },
    /// Ask for the ids online.
    List,
    /// Receive `presence` events from now on.
    Subscribe,
    /// Ask `to` for a connection.
    Connect {
        /// Chosen by the caller; the answer carries it back.
        request_id: u64,
        /// The callee's id.
        to: String,
        /// The convention number of the requested connection.
        convention: u32,
        /// How to reach the caller.
        offer: Offer,
    },
    /// Accept a `connect` from `to`.
    Answer {
        /// The request being answered.
        request_id: u64,
        /// The caller's id.
        to: String,
        /// How to reach the callee.
        offer: Offer,
    },
    /// Refuse a `connect` from `to`.
    Reject {
        /// The request being refused.
        request_id: u64,
        /// The caller's id.
        to: String,
        /// Reason code (the connection refuse codes).
        code: u16,
        /// Human-readable reason.
        message: String,
    },
    /// Ask for fresh relay credentials (before the ones from `registered`
    /// expire); answered with `relays`.
    Relays,
    /// A browser asks `to` for a connection over a WebRTC DataChannel
    /// (transport RTC).
    RtcConnect {
        /// Chosen by the browser; the answer and the candidates carry it.
        request_id: u64,
        /// The node's id.
        to: String,
        /// The convention number (transport RTC, code 0).
        convention: u32,
        /// The browser's SDP offer (one data channel section).
        sdp: String,
    },
    /// A node accepts an `rtc-connect` from `to`.
    RtcAnswer {
        /// The request being answered.
        request_id: u64,
        /// The browser's id.
        to: String,
        /// The node's SDP answer, with all its candidates.
        sdp: String,
    },
    /// A browser trickles an ICE candidate of its request to `to`.
    RtcCandidate {
        /// The request.
        request_id: u64,
        /// The node's id.
        to: String,
        /// The candidate attribute (`candidate:…`); empty when the browser
        /// has gathered all its candidates.
        candidate: String,
    },
    /// Keep-alive; answered with `pong`.
    Ping {
        /// Echoed in the `pong`.
        nonce: u64,
    },
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// Registration succeeded.
    Registered {
        /// The registered id.
        id: String,
        /// Protocol version of the server.
        version: u32,
        /// TURN relays the node may use, with credentials issued for it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        relays: Vec<RelayCredentials>,
        /// STUN servers (`stun:host:port` URLs) for browsers' ICE.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stun: Vec<String>,
    },
    /// Another session registered the same id; this one ends.
    Replaced {
        /// Detail.
        message: String,
    },
    /// A request failed.
    Error {
        /// Stable code, see [`ErrorCode`].
        code: u16,
        /// Human-readable detail.
        message: String,
        /// The request it concerns, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<u64>,
    },
    /// The ids online, sorted.
    Peers {
        /// Ids.
        peers: Vec<String>,
    },
    /// A peer came online or went offline (after `subscribe`).
    Presence {
        /// The peer.
        id: String,
        /// Online or not.
        online: bool,
    },
    /// A peer asks for a connection.
    Incoming {
        /// Echo it in the answer.
        request_id: u64,
        /// The caller (authenticated by the server).
        from: String,
        /// Requested convention number.
        convention: u32,
        /// How to reach the caller.
        offer: Offer,
        /// The IP address the caller's signaling connection comes from, as
        /// the server saw it: the caller has shown it receives there (a
        /// TCP handshake), so the callee may probe ports of it. Absent from
        /// servers that do not vouch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<std::net::IpAddr>,
    },
    /// The callee accepted.
    Answered {
        /// The request.
        request_id: u64,
        /// The callee (authenticated by the server).
        from: String,
        /// How to reach the callee.
        offer: Offer,
        /// The IP address the callee's signaling connection comes from, as
        /// the server saw it (see `incoming`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<std::net::IpAddr>,
    },
    /// The callee refused.
    Rejected {
        /// The request.
        request_id: u64,
        /// The callee.
        from: String,
        /// Reason code.
        code: u16,
        /// Reason.
        message: String,
    },
    /// A browser asks for a connection over a WebRTC DataChannel.
    RtcIncoming {
        /// Echo it in the answer.
        request_id: u64,
        /// The browser (authenticated by the server).
        from: String,
        /// Requested convention number.
        convention: u32,
        /// The browser's SDP offer.
        sdp: String,
    },
    /// The node accepted a browser's request.
    RtcAnswered {
        /// The request.
        request_id: u64,
        /// The node (authenticated by the server).
        from: String,
        /// The node's SDP answer.
        sdp: String,
    },
    /// An ICE candidate the browser trickled.
    RtcCandidate {
        /// The request.
        request_id: u64,
        /// The browser (authenticated by the server).
        from: String,
        /// The candidate attribute; empty at the end of candidates.
        candidate: String,
    },
    /// Fresh relay credentials, the answer to `relays` (empty when the
    /// server hands out none).
    Relays {
        /// The relays with credentials issued now.
        relays: Vec<RelayCredentials>,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// Errors of decoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    /// Not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// An offer with more than [`MAX_CANDIDATES`] candidates.
    #[error("offer with more than {MAX_CANDIDATES} candidates")]
    TooManyCandidates,
}

/// Encoding and decoding shared by both directions.
trait Json: Serialize + serde::de::DeserializeOwned {
    /// The offer the message carries, if any (checked on decode).
    fn offer(&self) -> Option<&Offer>;

    fn to_json(&self) -> String {
        // Serializing these plain data types cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn from_json(text: &str) -> Result<Self, DecodeError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(text.len()));
        }
        let message: Self = serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        match message.offer() {
            Some(offer) if offer.candidates.len() > MAX_CANDIDATES => Err(DecodeError::TooManyCandidates),
            _ => Ok(message),
        }
    }
}

impl Json for ClientMessage {
    fn offer(&self) -> Option<&Offer> {
        match self {
            ClientMessage::Connect { offer, .. } | ClientMessage::Answer { offer, .. } => Some(offer),
            _ => None,
        }
    }
}

impl Json for ServerMessage {
    fn offer(&self) -> Option<&Offer> {
        match self {
            ServerMessage::Incoming { offer, .. } | ServerMessage::Answered { offer, .. } => Some(offer),
            _ => None,
        }
    }
}

impl ClientMessage {
    /// Encodes as JSON text.
    pub fn encode(&self) -> String {
        self.to_json()
    }

    /// Decodes JSON text.
    ///
    /// # Errors
    /// [`DecodeError`] for oversize, malformed or over-long input.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        Self::from_json(text)
    }
}

impl ServerMessage {
    /// Encodes as JSON text.
    pub fn encode(&self) -> String {
        self.to_json()
    }

    /// Decodes JSON text.
    ///
    /// # Errors
    /// [`DecodeError`] for oversize, malformed or over-long input.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        Self::from_json(text)
    }

    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: Option<u64>) -> Self {
        ServerMessage::Error { code: code.code(), message: message.into(), request_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            fingerprint: "ab".repeat(32),
            candidates: vec![
                Candidate { kind: CandidateKind::Host, addr: "10.0.0.2:7700".parse().expect("addr") },
                Candidate { kind: CandidateKind::ServerReflexive, addr: "[2001:db8::1]:7700".parse().expect("addr") },
            ],
            nat: Some(NatInfo {
                mapping: NatBehaviour::EndpointIndependent,
                filtering: NatBehaviour::AddressAndPortDependent,
                allocation: PortAllocation::Sequential { delta: -2 },
                udp_blocked: false,
            }),
            checks: Some(CheckCredentials { ufrag: "abcd".into(), pwd: "p".repeat(22) }),
        }
    }

    #[test]
    fn an_offer_names_its_first_candidate_of_a_kind() {
        let offer = offer();
        assert_eq!(offer.address_of(CandidateKind::ServerReflexive), "[2001:db8::1]:7700".parse().ok());
        assert_eq!(offer.address_of(CandidateKind::Relayed), None);
    }

    #[test]
    fn version_1_offers_without_new_fields_still_decode() {
        let text = r#"{"type":"answer","request_id":1,"to":"a","offer":{"fingerprint":"ab","candidates":[],"nat":{"mapping":"endpoint-independent","filtering":"unknown"}}}"#;
        let Ok(ClientMessage::Answer { offer, .. }) = ClientMessage::decode(text) else { panic!("decodes") };
        let nat = offer.nat.expect("nat");
        assert_eq!(nat.allocation, PortAllocation::Unknown);
        assert!(!nat.udp_blocked);
        assert_eq!(offer.checks, None);
    }

    #[test]
    fn client_messages_round_trip() {
        let all = vec![
            ClientMessage::Register { version: 1, id: "ee:34:a1:44:2c:1c".into(), token: "v1.1.ab".into() },
            ClientMessage::List,
            ClientMessage::Subscribe,
            ClientMessage::Connect { request_id: u64::MAX, to: "b".into(), convention: 0x15, offer: offer() },
            ClientMessage::Answer { request_id: 7, to: "a".into(), offer: offer() },
            ClientMessage::Reject { request_id: 7, to: "a".into(), code: 1, message: "no such service: 7".into() },
            ClientMessage::Relays,
            ClientMessage::Ping { nonce: 3 },
            ClientMessage::RtcConnect { request_id: 9, to: "dev".into(), convention: 0x10, sdp: "v=0".into() },
            ClientMessage::RtcAnswer { request_id: 9, to: "web".into(), sdp: "v=0".into() },
            ClientMessage::RtcCandidate {
                request_id: 9,
                to: "dev".into(),
                candidate: "candidate:1 1 udp 2122260223 192.0.2.11 50001 typ host".into(),
            },
        ];
        for m in all {
            assert_eq!(ClientMessage::decode(&m.encode()), Ok(m.clone()));
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let all = vec![
            ServerMessage::Registered { id: "a".into(), version: 1, relays: Vec::new(), stun: Vec::new() },
            ServerMessage::Registered {
                id: "a".into(),
                version: 1,
                relays: vec![relay()],
                stun: vec!["stun:stun.example:3478".into()],
            },
            ServerMessage::RtcIncoming { request_id: 1, from: "web".into(), convention: 0x10, sdp: "v=0".into() },
            ServerMessage::RtcAnswered { request_id: 1, from: "dev".into(), sdp: "v=0".into() },
            ServerMessage::RtcCandidate { request_id: 1, from: "web".into(), candidate: String::new() },
            ServerMessage::Relays { relays: vec![relay()] },
            ServerMessage::Relays { relays: Vec::new() },
            ServerMessage::Replaced { message: "x".into() },
            ServerMessage::error(ErrorCode::Unauthorized, "bad token", None),
            ServerMessage::error(ErrorCode::UnknownPeer, "b is offline", Some(9)),
            ServerMessage::Peers { peers: vec!["a".into(), "b".into()] },
            ServerMessage::Presence { id: "a".into(), online: false },
            ServerMessage::Incoming {
                request_id: 1,
                from: "a".into(),
                convention: 0x15,
                offer: offer(),
                observed: None,
            },
            ServerMessage::Incoming {
                request_id: 1,
                from: "a".into(),
                convention: 0x15,
                offer: offer(),
                observed: Some("203.0.113.9".parse().expect("ip")),
            },
            ServerMessage::Answered { request_id: 1, from: "b".into(), offer: offer(), observed: None },
            ServerMessage::Answered {
                request_id: 1,
                from: "b".into(),
                offer: offer(),
                observed: Some("2001:db8::1".parse().expect("ip")),
            },
            ServerMessage::Rejected { request_id: 1, from: "b".into(), code: 1, message: "no".into() },
            ServerMessage::Pong { nonce: 1 },
        ];
        for m in all {
            assert_eq!(ServerMessage::decode(&m.encode()), Ok(m.clone()));
        }
    }

    fn relay() -> RelayCredentials {
        RelayCredentials {
            url: "turn:relay.example:3478?transport=tcp".into(),
            username: "1795000000:a".into(),
            password: "c2VjcmV0".into(),
            expires: 1_795_000_000,
        }
    }

    #[test]
    fn golden_text() {
        assert_eq!(ClientMessage::Ping { nonce: 5 }.encode(), r#"{"type":"ping","nonce":5}"#);
        assert_eq!(
            ServerMessage::error(ErrorCode::TooLarge, "too big", None).encode(),
            r#"{"type":"error","code":4,"message":"too big"}"#
        );
        assert_eq!(ClientMessage::List.encode(), r#"{"type":"list"}"#);
        assert_eq!(ClientMessage::Relays.encode(), r#"{"type":"relays"}"#);
        // What the browser module sends, byte for byte.
        assert_eq!(
            ClientMessage::decode(r#"{"type":"rtc-candidate","request_id":3,"to":"dev","candidate":""}"#),
            Ok(ClientMessage::RtcCandidate { request_id: 3, to: "dev".into(), candidate: String::new() })
        );
        // Without relays, `registered` is what version 1 servers sent.
        assert_eq!(
            ServerMessage::Registered { id: "a".into(), version: 1, relays: Vec::new(), stun: Vec::new() }.encode(),
            r#"{"type":"registered","id":"a","version":1}"#
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        for text in
            ["", "{", "null", "[]", r#"{"type":"nope"}"#, r#"{"type":"ping"}"#, r#"{"type":"register","id":"a"}"#]
        {
            assert!(matches!(ClientMessage::decode(text), Err(DecodeError::Malformed(_))), "{text}");
        }
        let big = format!(r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(ClientMessage::decode(&big), Err(DecodeError::TooLarge(_))));
        let many = Offer {
            nat: None,
            checks: None,
            fingerprint: String::new(),
            candidates: vec![Candidate { kind: CandidateKind::Host, addr: "1.2.3.4:5".parse().expect("addr") }; 33],
        };
        let text = ClientMessage::Answer { request_id: 1, to: "a".into(), offer: many }.encode();
        assert_eq!(ClientMessage::decode(&text), Err(DecodeError::TooManyCandidates));
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let text = r#"{"type":"ping","nonce":1,"future":"field"}"#;
        assert_eq!(ClientMessage::decode(text), Ok(ClientMessage::Ping { nonce: 1 }));
    }

    #[test]
    fn error_codes_are_stable() {
        for code in 1..=10u16 {
            assert_eq!(ErrorCode::from_code(code).map(ErrorCode::code), Some(code));
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::Unauthorized.code(), 2);
    }
}
