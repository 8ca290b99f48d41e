//! TURN (RFC 8656) messages a client sends and the answers it reads, and
//! the ChannelData framing: pure functions over stun-rs (`turn` feature),
//! no I/O. The groundwork of the relay (issue 5); the client state machine
//! builds on it.

use std::net::SocketAddr;

use stun_rs::attributes::stun::{ErrorCode, MessageIntegrity, Nonce, Realm, UserName, XorMappedAddress};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedAddressFamily, RequestedTrasport, XorPeerAddress, XorRelayedAddress,
};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, DATA, REFRESH, SEND};
use stun_rs::{
    Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunMessage, StunMessageBuilder, TransactionId,
};

use crate::stun::{StunCodecError, TxId};

/// First channel number a client may bind (RFC 8656 section 12).
pub const MIN_CHANNEL: u16 = 0x4000;
/// Last channel number a client may bind (RFC 8656; its first byte stays
/// in 64..=79, which the node's socket demultiplexes as ChannelData).
pub const MAX_CHANNEL: u16 = 0x4FFF;
/// Last channel number of RFC 5766, which older clients still use; a
/// server accepts it, our client never binds above [`MAX_CHANNEL`].
pub const MAX_CHANNEL_RFC5766: u16 = 0x7FFF;
/// Largest TURN message built or accepted here (a Send indication carries
/// a whole datagram).
pub const MAX_TURN_MESSAGE: usize = 65_535 + 64;

/// A ChannelData message: application data on a bound channel, with a
/// 4-byte header instead of a 36-byte Send or Data indication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelData {
    /// The channel number, [`MIN_CHANNEL`]..=[`MAX_CHANNEL_RFC5766`].
    pub channel: u16,
    /// The application data.
    pub data: Vec<u8>,
}

impl ChannelData {
    /// Encodes the message; `padded` pads to a multiple of 4 bytes, which
    /// TURN over TCP requires (over UDP it is optional).
    ///
    /// # Errors
    /// [`StunCodecError::Encode`] for a channel out of range or data over
    /// 65,535 bytes.
    pub fn encode(&self, padded: bool) -> Result<Vec<u8>, StunCodecError> {
        if !(MIN_CHANNEL..=MAX_CHANNEL_RFC5766).contains(&self.channel) {
            return Err(StunCodecError::Encode(format!("channel {:#06x} out of range", self.channel)));
        }
        let len = u16::try_from(self.data.len())
            .map_err(|_| StunCodecError::Encode(format!("{} bytes do not fit a channel", self.data.len())))?;
        let mut out = Vec::with_capacity(4 + self.data.len() + 3);
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.data);
        if padded {
            out.resize(out.len().next_multiple_of(4), 0);
        }
        Ok(out)
    }

    /// Decodes one message from the front of `bytes`; returns it and the
    /// bytes it used (padding included when present, as over TCP).
    ///
    /// # Errors
    /// [`StunCodecError::Malformed`] for a short buffer, a channel out of
    /// range or a length beyond the buffer.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), StunCodecError> {
        let header: [u8; 4] = bytes
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| StunCodecError::Malformed("ChannelData shorter than its header".into()))?;
        let channel = u16::from_be_bytes([header[0], header[1]]);
        if !(MIN_CHANNEL..=MAX_CHANNEL_RFC5766).contains(&channel) {
            return Err(StunCodecError::Malformed(format!("channel {channel:#06x} out of range")));
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let data = bytes
            .get(4..4 + len)
            .ok_or_else(|| StunCodecError::Malformed(format!("ChannelData length {len} beyond the datagram")))?;
        let used = (4 + len).next_multiple_of(4).min(bytes.len());
        Ok((Self { channel, data: data.to_vec() }, used))
    }
}

/// The length of the first complete frame at the front of a TURN-over-TCP
/// stream (RFC 8656 section 12.5): a STUN message, or ChannelData padded to
/// a multiple of 4 bytes; `None` while more bytes are needed.
///
/// # Errors
/// [`StunCodecError::Malformed`] when the stream holds neither (the
/// connection should be closed).
pub fn tcp_frame_len(stream: &[u8]) -> Result<Option<usize>, StunCodecError> {
    let Some(&first) = stream.first() else { return Ok(None) };
    let Some(length) = stream.get(2..4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
        return Ok(None);
    };
    let total = match first {
        0x00..=0x3F => {
            if length % 4 != 0 {
                return Err(StunCodecError::Malformed(format!("STUN length {length} is not a multiple of 4")));
            }
            20 + length
        }
        0x40..=0x7F => (4 + length).next_multiple_of(4),
        _ => return Err(StunCodecError::Malformed(format!("first byte {first:#04x} is neither STUN nor ChannelData"))),
    };
    Ok((stream.len() >= total).then_some(total))
}

/// Long-term credentials (RFC 8489 section 9.2) once the server told its
/// realm and nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongTermAuth {
    /// User name (for coturn's `use-auth-secret`: `<expiry>:<user>`).
    pub username: String,
    /// The password.
    pub password: String,
    /// The realm from the server's 401.
    pub realm: String,
    /// The nonce from the server's 401 or 438.
    pub nonce: String,
}

/// The address family of a relayed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayFamily {
    /// IPv4 (code 0x01).
    V4,
    /// IPv6 (code 0x02).
    V6,
}

impl RelayFamily {
    /// The family of `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

/// A TURN request or indication a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnRequest {
    /// Allocate a relayed UDP address for `lifetime` seconds.
    Allocate {
        /// Requested lifetime in seconds (`None`: the server's default).
        lifetime: Option<u32>,
        /// The relayed address's family (REQUESTED-ADDRESS-FAMILY, RFC
        /// 8656 section 18.1, first in RFC 6156); `None`: the server's
        /// default, IPv4.
        family: Option<RelayFamily>,
        /// EVEN-PORT: an even relayed port, and with `true` (R) the next
        /// port reserved for a second allocation (RFC 8656 section 18.5).
        even_port: Option<bool>,
        /// RESERVATION-TOKEN: claim the port an earlier allocation
        /// reserved (RFC 8656 section 18.9).
        reservation: Option<[u8; 8]>,
    },
    /// Refresh the allocation; lifetime 0 deletes it.
    Refresh {
        /// Requested lifetime in seconds.
        lifetime: u32,
    },
    /// Install permissions for these peers' IPs.
    CreatePermission {
        /// The peers (only their IPs matter).
        peers: Vec<SocketAddr>,
    },
    /// Bind `channel` to `peer`.
    ChannelBind {
        /// The channel number.
        channel: u16,
        /// The peer.
        peer: SocketAddr,
    },
}

fn encode(message: &StunMessage, capacity: usize) -> Result<Vec<u8>, StunCodecError> {
    crate::stun::encode_with_capacity(message, capacity)
}

fn long_term_key(auth: &LongTermAuth) -> Result<HMACKey, StunCodecError> {
    HMACKey::new_long_term(&auth.username, &auth.realm, &auth.password, Algorithm::from(AlgorithmId::MD5))
        .map_err(|e| StunCodecError::Encode(format!("bad credentials: {e:?}")))
}

/// Encodes a request; with `auth`, USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY are added (the first Allocate goes without, to learn
/// realm and nonce from the 401).
///
/// # Errors
/// [`StunCodecError::Encode`] for credentials stun-rs refuses.
pub fn encode_request(
    txid: TxId,
    request: &TurnRequest,
    auth: Option<&LongTermAuth>,
) -> Result<Vec<u8>, StunCodecError> {
    let method = match request {
        TurnRequest::Allocate { .. } => ALLOCATE,
        TurnRequest::Refresh { .. } => REFRESH,
        TurnRequest::CreatePermission { .. } => CREATE_PERMMISSION,
        TurnRequest::ChannelBind { .. } => CHANNEL_BIND,
    };
    let mut builder =
        StunMessageBuilder::new(method, MessageClass::Request).with_transaction_id(TransactionId::from(txid));
    match request {
        TurnRequest::Allocate { lifetime, family, even_port, reservation } => {
            builder = builder.with_attribute(RequestedTrasport::default());
            if let Some(reserve) = even_port {
                builder = builder.with_attribute(stun_rs::attributes::turn::EvenPort::new(*reserve));
            }
            if let Some(token) = reservation {
                builder = builder.with_attribute(stun_rs::attributes::turn::ReservationToken::from(*token));
            }
            if let Some(lifetime) = lifetime {
                builder = builder.with_attribute(LifeTime::from(*lifetime));
            }
            if let Some(family) = family {
                let family = match family {
                    RelayFamily::V4 => stun_rs::AddressFamily::IPv4,
                    RelayFamily::V6 => stun_rs::AddressFamily::IPv6,
                };
                builder = builder.with_attribute(RequestedAddressFamily::from(family));
            }
        }
        TurnRequest::Refresh { lifetime } => builder = builder.with_attribute(LifeTime::from(*lifetime)),
        TurnRequest::CreatePermission { peers } => {
            for peer in peers {
                builder = builder.with_attribute(XorPeerAddress::from(*peer));
            }
        }
        TurnRequest::ChannelBind { channel, peer } => {
            builder = builder.with_attribute(ChannelNumber::new(*channel)).with_attribute(XorPeerAddress::from(*peer));
        }
    }
    if let Some(auth) = auth {
        let bad = |what: &str, e: stun_rs::StunError| StunCodecError::Encode(format!("bad {what}: {e:?}"));
        builder = builder
            .with_attribute(UserName::new(&auth.username).map_err(|e| bad("username", e))?)
            .with_attribute(Realm::new(&auth.realm).map_err(|e| bad("realm", e))?)
            .with_attribute(Nonce::new(&auth.nonce).map_err(|e| bad("nonce", e))?)
            .with_attribute(MessageIntegrity::new(long_term_key(auth)?));
    }
    encode(&builder.build(), 2048)
}

/// Encodes a Send indication carrying `data` to `peer`.
///
/// # Errors
/// [`StunCodecError::Encode`] when the data does not fit a message.
pub fn encode_send(txid: TxId, peer: SocketAddr, data: &[u8]) -> Result<Vec<u8>, StunCodecError> {
    let message = StunMessageBuilder::new(SEND, MessageClass::Indication)
        .with_transaction_id(TransactionId::from(txid))
        .with_attribute(XorPeerAddress::from(peer))
        .with_attribute(Data::from(data))
        .build();
    encode(&message, data.len() + 64)
}

/// Encodes a server's answer (the other side of [`decode_response`]);
/// with `auth` the answer carries MESSAGE-INTEGRITY under that key. Error
/// answers carry REALM and NONCE when given (401, 438).
///
/// # Errors
/// [`StunCodecError::Encode`] for a code outside 300..=699, a realm or
/// nonce stun-rs refuses, or data that does not fit.
pub fn encode_response(response: &TurnResponse, auth: Option<&LongTermAuth>) -> Result<Vec<u8>, StunCodecError> {
    let bad = |e: stun_rs::StunError| StunCodecError::Encode(format!("{e:?}"));
    let method_of = |m: u16| MessageMethod::try_from(m).map_err(bad);
    let builder = match response {
        TurnResponse::Allocated { txid, relayed, mapped, lifetime, reservation } => {
            let mut b = StunMessageBuilder::new(ALLOCATE, MessageClass::SuccessResponse)
                .with_transaction_id(TransactionId::from(*txid))
                .with_attribute(XorRelayedAddress::from(*relayed))
                .with_attribute(LifeTime::from(*lifetime));
            if let Some(mapped) = mapped {
                b = b.with_attribute(XorMappedAddress::from(*mapped));
            }
            if let Some(token) = reservation {
                b = b.with_attribute(stun_rs::attributes::turn::ReservationToken::from(*token));
            }
            b
        }
        TurnResponse::Success { txid, method, lifetime } => {
            let mut b = StunMessageBuilder::new(method_of(*method)?, MessageClass::SuccessResponse)
                .with_transaction_id(TransactionId::from(*txid));
            if let Some(lifetime) = lifetime {
                b = b.with_attribute(LifeTime::from(*lifetime));
            }
            b
        }
        TurnResponse::Error { txid, method, code, reason, realm, nonce } => {
            let mut b = StunMessageBuilder::new(method_of(*method)?, MessageClass::ErrorResponse)
                .with_transaction_id(TransactionId::from(*txid))
                .with_attribute(ErrorCode::from(stun_rs::ErrorCode::new(*code, reason).map_err(bad)?));
            if let Some(realm) = realm {
                b = b.with_attribute(Realm::new(realm).map_err(bad)?);
            }
            if let Some(nonce) = nonce {
                b = b.with_attribute(Nonce::new(nonce).map_err(bad)?);
            }
            b
        }
        TurnResponse::Data { peer, data } => {
            return encode(
                &StunMessageBuilder::new(DATA, MessageClass::Indication)
                    .with_attribute(XorPeerAddress::from(*peer))
                    .with_attribute(Data::from(data.as_slice()))
                    .build(),
                data.len() + 64,
            );
        }
    };
    let builder = match auth {
        Some(auth) => builder.with_attribute(MessageIntegrity::new(long_term_key(auth)?)),
        None => builder,
    };
    encode(&builder.build(), 1024)
}

/// What a TURN client reads from its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnResponse {
    /// The allocation exists.
    Allocated {
        /// Transaction id.
        txid: TxId,
        /// The relayed address peers send to.
        relayed: SocketAddr,
        /// The client's address as the server sees it.
        mapped: Option<SocketAddr>,
        /// Seconds until the allocation expires without a refresh.
        lifetime: u32,
        /// RESERVATION-TOKEN: the next port is held for a second
        /// allocation that presents this token (EVEN-PORT with R).
        reservation: Option<[u8; 8]>,
    },
    /// A Refresh, CreatePermission or ChannelBind succeeded.
    Success {
        /// Transaction id.
        txid: TxId,
        /// The method answered.
        method: u16,
        /// LIFETIME, for Refresh.
        lifetime: Option<u32>,
    },
    /// A request failed.
    Error {
        /// Transaction id.
        txid: TxId,
        /// The method answered.
        method: u16,
        /// The error code (e.g. 401, 438, 486).
        code: u16,
        /// The reason phrase.
        reason: String,
        /// REALM, with 401.
        realm: Option<String>,
        /// NONCE, with 401 and 438.
        nonce: Option<String>,
    },
    /// Data a peer sent to the relayed address.
    Data {
        /// The peer.
        peer: SocketAddr,
        /// The data.
        data: Vec<u8>,
    },
}

/// Decodes a server's response or Data indication (no integrity check:
/// see [`long_term_integrity_ok`]).
///
/// # Errors
/// [`StunCodecError::Malformed`] for anything else or a message missing
/// the attributes its kind needs.
pub fn decode_response(bytes: &[u8]) -> Result<TurnResponse, StunCodecError> {
    let malformed = |what: &str| StunCodecError::Malformed(what.to_string());
    let message = crate::stun::decode_message(bytes)?;
    let txid = *message.transaction_id().as_bytes();
    let method: MessageMethod = message.method();
    let lifetime = message.get::<LifeTime>().and_then(|a| a.as_life_time().ok()).map(|l| l.as_u32());
    match message.class() {
        MessageClass::Indication if method == DATA => {
            let peer = message
                .get::<XorPeerAddress>()
                .and_then(|a| a.as_xor_peer_address().ok())
                .map(|a| *a.socket_address())
                .ok_or_else(|| malformed("Data indication without XOR-PEER-ADDRESS"))?;
            let data = message
                .get::<Data>()
                .and_then(|a| a.as_data().ok())
                .map(|d| d.as_bytes().to_vec())
                .ok_or_else(|| malformed("Data indication without DATA"))?;
            Ok(TurnResponse::Data { peer, data })
        }
        MessageClass::SuccessResponse if method == ALLOCATE => {
            let relayed = message
                .get::<XorRelayedAddress>()
                .and_then(|a| a.as_xor_relayed_address().ok())
                .map(|a| *a.socket_address())
                .ok_or_else(|| malformed("Allocate success without XOR-RELAYED-ADDRESS"))?;
            let mapped = message
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address());
            let reservation = message
                .get::<stun_rs::attributes::turn::ReservationToken>()
                .and_then(|a| a.as_reservation_token().ok())
                .and_then(|t| <[u8; 8]>::try_from(t.token()).ok());
            Ok(TurnResponse::Allocated { txid, relayed, mapped, lifetime: lifetime.unwrap_or(0), reservation })
        }
        MessageClass::SuccessResponse if [REFRESH, CREATE_PERMMISSION, CHANNEL_BIND].contains(&method) => {
            Ok(TurnResponse::Success { txid, method: method.as_u16(), lifetime })
        }
        MessageClass::ErrorResponse => {
            let error = message.get::<ErrorCode>().and_then(|a| a.as_error_code().ok());
            let (code, reason) = error
                .map_or((0, String::new()), |e| (e.error_code().error_code(), e.error_code().reason().to_string()));
            let realm =
                message.get::<Realm>().and_then(|a| a.as_realm().ok()).map(|r| AsRef::<str>::as_ref(r).to_string());
            let nonce = message.get::<Nonce>().and_then(|a| a.as_nonce().ok()).map(|n| n.as_str().to_string());
            Ok(TurnResponse::Error { txid, method: method.as_u16(), code, reason, realm, nonce })
        }
        _ => Err(malformed("not a TURN response or Data indication")),
    }
}

/// A client's request or indication as a TURN server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// Transaction id.
    pub txid: TxId,
    /// The method (see [`method`]).
    pub method: u16,
    /// Whether it is an indication (no answer expected).
    pub indication: bool,
    /// LIFETIME.
    pub lifetime: Option<u32>,
    /// REQUESTED-TRANSPORT protocol number (17 = UDP).
    pub transport: Option<u8>,
    /// REQUESTED-ADDRESS-FAMILY.
    pub family: Option<RelayFamily>,
    /// XOR-PEER-ADDRESS attributes.
    pub peers: Vec<SocketAddr>,
    /// CHANNEL-NUMBER.
    pub channel: Option<u16>,
    /// DATA.
    pub data: Option<Vec<u8>>,
    /// EVEN-PORT, with its reserve-next-port flag.
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN: allocate the port an earlier EVEN-PORT with R
    /// reserved.
    pub reservation_token: Option<[u8; 8]>,
    /// USERNAME.
    pub username: Option<String>,
    /// NONCE.
    pub nonce: Option<String>,
    /// MESSAGE-INTEGRITY present (check it with [`long_term_integrity_ok`]
    /// once the key is known).
    pub has_integrity: bool,
    /// Attributes a server must refuse (DONT-FRAGMENT is not supported;
    /// unknown comprehension-required ones), for a 420.
    pub unsupported: Vec<u16>,
}

/// TURN method numbers.
pub mod method {
    /// Binding (STUN).
    pub const BINDING: u16 = 0x001;
    /// Allocate.
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh.
    pub const REFRESH: u16 = 0x004;
    /// Send (indication).
    pub const SEND: u16 = 0x006;
    /// Data (indication).
    pub const DATA: u16 = 0x007;
    /// CreatePermission.
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind.
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Decodes a client's request or indication.
///
/// # Errors
/// [`StunCodecError::Malformed`] for anything that is not a STUN request or
/// indication.
pub fn decode_request(bytes: &[u8]) -> Result<IncomingRequest, StunCodecError> {
    use stun_rs::StunAttribute;
    let message = crate::stun::decode_message(bytes)?;
    let indication = match message.class() {
        MessageClass::Request => false,
        MessageClass::Indication => true,
        _ => return Err(StunCodecError::Malformed("a response, not a request".into())),
    };
    let mut request = IncomingRequest {
        txid: *message.transaction_id().as_bytes(),
        method: message.method().as_u16(),
        indication,
        lifetime: None,
        transport: None,
        family: None,
        peers: Vec::new(),
        channel: None,
        data: None,
        even_port: None,
        reservation_token: None,
        username: None,
        nonce: None,
        has_integrity: false,
        unsupported: Vec::new(),
    };
    for attribute in message.attributes() {
        match attribute {
            StunAttribute::LifeTime(l) => request.lifetime = Some(l.as_u32()),
            StunAttribute::RequestedTrasport(t) => request.transport = Some(t.protocol().as_u8()),
            StunAttribute::RequestedAddressFamily(f) => {
                request.family = Some(match f.family() {
                    stun_rs::AddressFamily::IPv4 => RelayFamily::V4,
                    stun_rs::AddressFamily::IPv6 => RelayFamily::V6,
                });
            }
            StunAttribute::XorPeerAddress(p) => request.peers.push(*p.socket_address()),
            StunAttribute::ChannelNumber(c) => request.channel = Some(c.number()),
            StunAttribute::Data(d) => request.data = Some(d.as_bytes().to_vec()),
            StunAttribute::UserName(u) => request.username = Some(u.as_str().to_string()),
            StunAttribute::Nonce(n) => request.nonce = Some(n.as_str().to_string()),
            StunAttribute::MessageIntegrity(_) => request.has_integrity = true,
            StunAttribute::EvenPort(e) => request.even_port = Some(e.reserve()),
            StunAttribute::ReservationToken(t) => request.reservation_token = <[u8; 8]>::try_from(t.token()).ok(),
            StunAttribute::DontFragment(_) => request.unsupported.push(attribute.attribute_type().as_u16()),
            StunAttribute::Unknown(u) if u.attribute_type().is_comprehension_required() => {
                request.unsupported.push(u.attribute_type().as_u16())
            }
            _ => {}
        }
    }
    Ok(request)
}

/// Whether a request or answer carries a MESSAGE-INTEGRITY valid under
/// the long-term credentials `auth`.
pub fn long_term_integrity_ok(bytes: &[u8], auth: &LongTermAuth) -> bool {
    long_term_key(auth).is_ok_and(|key| crate::stun::integrity_valid(bytes, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn channel_data_round_trip_with_and_without_padding() {
        for len in [0usize, 1, 3, 4, 5, 1200] {
            let message = ChannelData { channel: 0x4001, data: vec![7; len] };
            let plain = message.encode(false).expect("encode");
            assert_eq!(plain.len(), 4 + len);
            assert_eq!(ChannelData::decode(&plain).expect("decode"), (message.clone(), 4 + len));
            let padded = message.encode(true).expect("encode");
            assert_eq!(padded.len() % 4, 0);
            assert_eq!(ChannelData::decode(&padded).expect("decode"), (message, padded.len()));
        }
    }

    #[test]
    fn tcp_frames_are_delimited() {
        let stun = encode_send([1; 12], a("203.0.113.5:1"), b"abc").expect("encode");
        let channel = ChannelData { channel: 0x4001, data: vec![9; 5] }.encode(true).expect("encode");
        let mut stream = stun.clone();
        stream.extend_from_slice(&channel);
        assert_eq!(tcp_frame_len(&stream), Ok(Some(stun.len())));
        assert_eq!(tcp_frame_len(&stream[stun.len()..]), Ok(Some(12)));
        for cut in 0..stun.len() {
            assert_eq!(tcp_frame_len(&stun[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(tcp_frame_len(&channel[..9]), Ok(None), "padding is part of the frame");
        assert!(tcp_frame_len(&[0x80, 0, 0, 4]).is_err());
        assert!(tcp_frame_len(&[0xFF; 8]).is_err());
        assert!(tcp_frame_len(&[0x00, 0x01, 0x00, 0x03]).is_err());
    }

    #[test]
    fn channel_data_refuses_bad_channels_and_truncation() {
        assert!(ChannelData { channel: 0x3FFF, data: vec![] }.encode(false).is_err());
        assert!(ChannelData { channel: 0x8000, data: vec![] }.encode(false).is_err());
        let good = ChannelData { channel: 0x4FFF, data: vec![1; 10] }.encode(false).expect("encode");
        for cut in 0..good.len() {
            assert!(ChannelData::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(ChannelData::decode(&[0x00, 0x01, 0, 0]).is_err(), "STUN is not ChannelData");
    }

    #[test]
    fn requests_encode_with_their_attributes_and_integrity() {
        let auth = LongTermAuth {
            username: "1700000000:dev".into(),
            password: "secret".into(),
            realm: "fog.example".into(),
            nonce: "abcdef".into(),
        };
        for request in [
            TurnRequest::Allocate { lifetime: Some(600), family: None, even_port: None, reservation: None },
            TurnRequest::Refresh { lifetime: 0 },
            TurnRequest::CreatePermission { peers: vec![a("203.0.113.5:1000"), a("198.51.100.7:2")] },
            TurnRequest::ChannelBind { channel: 0x4000, peer: a("203.0.113.5:1000") },
        ] {
            let bytes = encode_request([1; 12], &request, Some(&auth)).expect("encode");
            assert!(crate::stun::looks_like_stun(&bytes));
            assert!(long_term_integrity_ok(&bytes, &auth), "{request:?}");
            let wrong = LongTermAuth { password: "other".into(), ..auth.clone() };
            assert!(!long_term_integrity_ok(&bytes, &wrong));
            let unauthenticated = encode_request([1; 12], &request, None).expect("encode");
            assert!(!long_term_integrity_ok(&unauthenticated, &auth));
        }
    }

    #[test]
    fn encoded_answers_round_trip() {
        let auth = LongTermAuth { username: "u".into(), password: "p".into(), realm: "r".into(), nonce: "n".into() };
        for response in [
            TurnResponse::Allocated {
                txid: [1; 12],
                relayed: a("198.51.100.1:50000"),
                mapped: None,
                lifetime: 600,
                reservation: Some([7; 8]),
            },
            TurnResponse::Success { txid: [2; 12], method: REFRESH.as_u16(), lifetime: Some(0) },
            TurnResponse::Success { txid: [2; 12], method: CHANNEL_BIND.as_u16(), lifetime: None },
            TurnResponse::Error {
                txid: [3; 12],
                method: ALLOCATE.as_u16(),
                code: 486,
                reason: "Allocation Quota Reached".into(),
                realm: None,
                nonce: None,
            },
            TurnResponse::Data { peer: a("203.0.113.5:9"), data: vec![1, 2, 3] },
        ] {
            let bytes = encode_response(&response, Some(&auth)).expect("encode");
            assert_eq!(decode_response(&bytes).expect("decode"), response);
            if !matches!(response, TurnResponse::Data { .. }) {
                assert!(long_term_integrity_ok(&bytes, &auth));
            }
        }
    }

    #[test]
    fn server_answers_decode() {
        let allocated = StunMessageBuilder::new(ALLOCATE, MessageClass::SuccessResponse)
            .with_transaction_id(TransactionId::from([3; 12]))
            .with_attribute(XorRelayedAddress::from(a("198.51.100.1:49152")))
            .with_attribute(XorMappedAddress::from(a("203.0.113.9:4000")))
            .with_attribute(LifeTime::from(600))
            .build();
        assert_eq!(
            decode_response(&encode(&allocated, 512).expect("encode")).expect("decode"),
            TurnResponse::Allocated {
                txid: [3; 12],
                relayed: a("198.51.100.1:49152"),
                mapped: Some(a("203.0.113.9:4000")),
                lifetime: 600,
                reservation: None,
            }
        );
        let unauthorized = StunMessageBuilder::new(ALLOCATE, MessageClass::ErrorResponse)
            .with_transaction_id(TransactionId::from([4; 12]))
            .with_attribute(ErrorCode::from(stun_rs::ErrorCode::new(401, "Unauthorized").expect("code")))
            .with_attribute(Realm::new("fog.example").expect("realm"))
            .with_attribute(Nonce::new("n0nce").expect("nonce"))
            .build();
        assert_eq!(
            decode_response(&encode(&unauthorized, 512).expect("encode")).expect("decode"),
            TurnResponse::Error {
                txid: [4; 12],
                method: ALLOCATE.as_u16(),
                code: 401,
                reason: "Unauthorized".into(),
                realm: Some("fog.example".into()),
                nonce: Some("n0nce".into())
            }
        );
        let data = StunMessageBuilder::new(DATA, MessageClass::Indication)
            .with_attribute(XorPeerAddress::from(a("203.0.113.5:1000")))
            .with_attribute(Data::from(&b"hello"[..]))
            .build();
        assert_eq!(
            decode_response(&encode(&data, 512).expect("encode")).expect("decode"),
            TurnResponse::Data { peer: a("203.0.113.5:1000"), data: b"hello".to_vec() }
        );
        // An Allocate success without the relayed address is refused.
        let incomplete = StunMessageBuilder::new(ALLOCATE, MessageClass::SuccessResponse).build();
        assert!(decode_response(&encode(&incomplete, 512).expect("encode")).is_err());
    }

    #[test]
    fn requests_decode_for_the_server() {
        let auth = LongTermAuth { username: "u".into(), password: "p".into(), realm: "r".into(), nonce: "n".into() };
        let bytes = encode_request(
            [5; 12],
            &TurnRequest::ChannelBind { channel: 0x4002, peer: a("203.0.113.5:1000") },
            Some(&auth),
        )
        .expect("encode");
        let request = decode_request(&bytes).expect("decode");
        assert_eq!(request.method, method::CHANNEL_BIND);
        assert_eq!(request.channel, Some(0x4002));
        assert_eq!(request.peers, [a("203.0.113.5:1000")]);
        assert_eq!((request.username.as_deref(), request.nonce.as_deref()), (Some("u"), Some("n")));
        assert!(request.has_integrity && !request.indication && request.unsupported.is_empty());
        let allocate = decode_request(
            &encode_request(
                [6; 12],
                &TurnRequest::Allocate { lifetime: Some(60), family: None, even_port: None, reservation: None },
                None,
            )
            .expect("enc"),
        )
        .expect("decode");
        assert_eq!((allocate.method, allocate.transport, allocate.lifetime), (method::ALLOCATE, Some(17), Some(60)));
        assert_eq!(allocate.family, None);
        for family in [RelayFamily::V4, RelayFamily::V6] {
            let request =
                TurnRequest::Allocate { lifetime: None, family: Some(family), even_port: None, reservation: None };
            let allocate = decode_request(&encode_request([8; 12], &request, None).expect("enc")).expect("decode");
            assert_eq!(allocate.family, Some(family), "REQUESTED-ADDRESS-FAMILY round trip");
        }
        // EVEN-PORT with R, and RESERVATION-TOKEN.
        let request = TurnRequest::Allocate { lifetime: None, family: None, even_port: Some(true), reservation: None };
        let allocate = decode_request(&encode_request([9; 12], &request, None).expect("enc")).expect("decode");
        assert_eq!((allocate.even_port, allocate.reservation_token), (Some(true), None));
        let request =
            TurnRequest::Allocate { lifetime: None, family: None, even_port: None, reservation: Some([5; 8]) };
        let allocate = decode_request(&encode_request([9; 12], &request, None).expect("enc")).expect("decode");
        assert_eq!((allocate.even_port, allocate.reservation_token), (None, Some([5; 8])));
        assert!(allocate.unsupported.is_empty(), "RESERVATION-TOKEN is understood");
        let send = decode_request(&encode_send([7; 12], a("203.0.113.5:1"), b"x").expect("enc")).expect("decode");
        assert!(send.indication);
        assert_eq!(send.data.as_deref(), Some(&b"x"[..]));
        let answer =
            encode_response(&TurnResponse::Success { txid: [1; 12], method: method::REFRESH, lifetime: None }, None)
                .expect("enc");
        assert!(decode_request(&answer).is_err(), "answers are not requests");
    }

    #[test]
    fn send_indication_and_garbage() {
        let bytes = encode_send([2; 12], a("203.0.113.5:1000"), b"payload").expect("encode");
        assert!(crate::stun::looks_like_stun(&bytes));
        // A Send indication is not something a client reads.
        assert!(decode_response(&bytes).is_err());
        for garbage in [&b""[..], b"nope", &[0u8; 20], &[0x40, 0x00, 0x00, 0x01, 9]] {
            assert!(decode_response(garbage).is_err());
        }
        for cut in 0..bytes.len() {
            assert!(decode_response(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_request_with_a_wrong_fingerprint_is_malformed() {
        let auth = crate::stun::BindingRequest { auth: Some(("a:b", "password")), ..Default::default() };
        let mut request = crate::stun::binding_request([6; 12], &auth).expect("encode");
        assert!(decode_request(&request).is_ok());
        let last = request.len() - 1;
        request[last] ^= 0x01;
        assert!(decode_request(&request).is_err());
    }
}
