//! STUN messages as NAT traversal uses them: binding requests and
//! responses with the RFC 5780 and ICE attributes, encoded and decoded by
//! stun-rs. Pure functions, no I/O.

/// Errors of encoding or decoding STUN messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunCodecError {
    /// A datagram is not a well-formed STUN binding message.
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    /// A message could not be encoded (bad credentials or attribute).
    #[error("cannot encode STUN message: {0}")]
    Encode(String),
}

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin};
use stun_rs::attributes::ice::UseCandidate;
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Software, UnknownAttributes, UserName, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{
    DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute,
    StunMessage, StunMessageBuilder, TransactionId,
};

/// A STUN transaction id: 96 random bits.
pub type TxId = [u8; 12];

/// Largest STUN message this layer builds or accepts.
pub const MAX_STUN_MESSAGE: usize = 1024;

/// The software name put in server responses.
const SOFTWARE: &str = concat!("fogconnect ", env!("CARGO_PKG_VERSION"));

/// A fresh random transaction id.
pub fn random_txid() -> TxId {
    *TransactionId::default().as_bytes()
}

/// What a binding request asks for, beyond the mapped address.
#[derive(Debug, Clone, Default)]
pub struct BindingRequest<'a> {
    /// RFC 5780 CHANGE-REQUEST: answer from the alternate IP.
    pub change_ip: bool,
    /// RFC 5780 CHANGE-REQUEST: answer from the alternate port.
    pub change_port: bool,
    /// Short-term credentials: USERNAME and the password keying
    /// MESSAGE-INTEGRITY (connectivity checks).
    pub auth: Option<(&'a str, &'a str)>,
    /// ICE USE-CANDIDATE: the controlling side nominates this pair.
    pub use_candidate: bool,
}

/// A decoded binding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A request.
    Request {
        /// Transaction id.
        txid: TxId,
        /// USERNAME, if present.
        username: Option<String>,
        /// CHANGE-REQUEST change IP flag.
        change_ip: bool,
        /// CHANGE-REQUEST change port flag.
        change_port: bool,
        /// USE-CANDIDATE present.
        use_candidate: bool,
        /// Comprehension-required attributes this layer does not know.
        unknown: Vec<u16>,
    },
    /// A success response.
    Success {
        /// Transaction id.
        txid: TxId,
        /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
        mapped: Option<SocketAddr>,
        /// RFC 5780 OTHER-ADDRESS: the server's alternate address.
        other: Option<SocketAddr>,
        /// RFC 5780 RESPONSE-ORIGIN: where the response was sent from.
        origin: Option<SocketAddr>,
    },
    /// An error response.
    Error {
        /// Transaction id.
        txid: TxId,
        /// The error code (300..=699).
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// An indication (e.g. a keep-alive); carries nothing we use.
    Indication,
}

impl Binding {
    /// The transaction id of a request or response.
    pub fn txid(&self) -> Option<TxId> {
        match self {
            Binding::Request { txid, .. } | Binding::Success { txid, .. } | Binding::Error { txid, .. } => Some(*txid),
            Binding::Indication => None,
        }
    }
}

fn encode(message: &StunMessage) -> Result<Vec<u8>, StunCodecError> {
    encode_with_capacity(message, MAX_STUN_MESSAGE)
}

/// Encodes `message` into a buffer of `capacity` bytes.
pub(crate) fn encode_with_capacity(message: &StunMessage, capacity: usize) -> Result<Vec<u8>, StunCodecError> {
    let mut buf = vec![0u8; capacity];
    let size = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, message)
        .map_err(|e| StunCodecError::Encode(format!("{e:?}")))?;
    buf.truncate(size);
    Ok(buf)
}

fn key(pwd: &str) -> Result<HMACKey, StunCodecError> {
    HMACKey::new_short_term(pwd).map_err(|e| StunCodecError::Encode(format!("bad password: {e:?}")))
}

/// Encodes a binding request.
///
/// # Errors
/// [`StunCodecError::Encode`] for a username or password stun-rs refuses
/// (e.g. over 513 bytes).
pub fn binding_request(txid: TxId, request: &BindingRequest<'_>) -> Result<Vec<u8>, StunCodecError> {
    let mut builder =
        StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(TransactionId::from(txid));
    let flags = match (request.change_ip, request.change_port) {
        (false, false) => None,
        (true, false) => Some(ChangeRequestFlags::ChangeIp.into()),
        (false, true) => Some(ChangeRequestFlags::ChangePort.into()),
        (true, true) => Some(ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort),
    };
    if flags.is_some() {
        builder = builder.with_attribute(ChangeRequest::new(flags));
    }
    if request.use_candidate {
        builder = builder.with_attribute(UseCandidate::default());
    }
    if let Some((username, pwd)) = request.auth {
        let name = UserName::new(username).map_err(|e| StunCodecError::Encode(format!("bad username: {e:?}")))?;
        builder = builder.with_attribute(name).with_attribute(MessageIntegrity::new(key(pwd)?));
        builder = builder.with_attribute(Fingerprint::default());
    }
    encode(&builder.build())
}

/// The attributes of a success response.
#[derive(Debug, Clone, Default)]
pub struct SuccessResponse<'a> {
    /// The address the request came from.
    pub mapped: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780), when the server has an alternate address.
    pub other: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780).
    pub origin: Option<SocketAddr>,
    /// Password keying MESSAGE-INTEGRITY (connectivity checks).
    pub pwd: Option<&'a str>,
    /// Add SOFTWARE and the classic MAPPED-ADDRESS (STUN server).
    pub server: bool,
}

/// Encodes a binding success response.
///
/// # Errors
/// [`StunCodecError::Encode`] for a password stun-rs refuses.
pub fn binding_success(txid: TxId, response: &SuccessResponse<'_>) -> Result<Vec<u8>, StunCodecError> {
    let mut builder =
        StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse).with_transaction_id(TransactionId::from(txid));
    if let Some(mapped) = response.mapped {
        builder = builder.with_attribute(XorMappedAddress::from(mapped));
        if response.server {
            // RFC 3489 clients read only MAPPED-ADDRESS.
            builder = builder.with_attribute(MappedAddress::from(mapped));
        }
    }
    if let Some(other) = response.other {
        builder = builder.with_attribute(OtherAddress::from(other));
    }
    if let Some(origin) = response.origin {
        builder = builder.with_attribute(ResponseOrigin::from(origin));
    }
    if response.server
        && let Ok(software) = Software::new(SOFTWARE)
    {
        builder = builder.with_attribute(software);
    }
    if let Some(pwd) = response.pwd {
        builder = builder.with_attribute(MessageIntegrity::new(key(pwd)?)).with_attribute(Fingerprint::default());
    }
    encode(&builder.build())
}

/// Encodes a binding error response, listing `unknown` attributes for 420.
///
/// # Errors
/// [`StunCodecError::Encode`] for a code outside 300..=699.
pub fn binding_error(txid: TxId, code: u16, reason: &str, unknown: &[u16]) -> Result<Vec<u8>, StunCodecError> {
    let error = stun_rs::ErrorCode::new(code, reason).map_err(|e| StunCodecError::Encode(format!("{e:?}")))?;
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
        .with_transaction_id(TransactionId::from(txid))
        .with_attribute(ErrorCode::from(error));
    if !unknown.is_empty() {
        let mut list = UnknownAttributes::default();
        for &attr in unknown {
            list.add(attr);
        }
        builder = builder.with_attribute(list);
    }
    encode(&builder.build())
}

/// Decodes a binding message without checking MESSAGE-INTEGRITY.
///
/// # Errors
/// [`StunCodecError::Malformed`] for anything that is not a well-formed STUN
/// binding message (garbage, truncated, other methods).
pub fn decode(bytes: &[u8]) -> Result<Binding, StunCodecError> {
    let message = decode_message(bytes)?;
    if message.method() != BINDING {
        return Err(StunCodecError::Malformed(format!(
            "not a binding message (method {:#x})",
            message.method().as_u16()
        )));
    }
    let txid = *message.transaction_id().as_bytes();
    Ok(match message.class() {
        MessageClass::Request => {
            let username =
                message.get::<UserName>().and_then(|a| a.as_user_name().ok()).map(|name| name.as_str().to_string());
            let flags = message.get::<ChangeRequest>().and_then(|a| a.as_change_request().ok()).map(|c| c.flags());
            let unknown = message
                .attributes()
                .iter()
                .filter_map(|a| match a {
                    StunAttribute::Unknown(u) if u.attribute_type().is_comprehension_required() => {
                        Some(u.attribute_type().as_u16())
                    }
                    _ => None,
                })
                .collect();
            Binding::Request {
                txid,
                username,
                change_ip: flags.is_some_and(|f| f.contains(ChangeRequestFlags::ChangeIp)),
                change_port: flags.is_some_and(|f| f.contains(ChangeRequestFlags::ChangePort)),
                use_candidate: message.get::<UseCandidate>().is_some(),
                unknown,
            }
        }
        MessageClass::SuccessResponse => {
            let xor = message.get::<XorMappedAddress>().and_then(|a| a.as_xor_mapped_address().ok());
            let plain = message.get::<MappedAddress>().and_then(|a| a.as_mapped_address().ok());
            Binding::Success {
                txid,
                mapped: xor.map(|a| *a.socket_address()).or_else(|| plain.map(|a| *a.socket_address())),
                other: message
                    .get::<OtherAddress>()
                    .and_then(|a| a.as_other_address().ok())
                    .map(|a| *a.socket_address()),
                origin: message
                    .get::<ResponseOrigin>()
                    .and_then(|a| a.as_response_origin().ok())
                    .map(|a| *a.socket_address()),
            }
        }
        MessageClass::ErrorResponse => {
            let error = message.get::<ErrorCode>().and_then(|a| a.as_error_code().ok());
            let (code, reason) = error
                .map_or((0, String::new()), |e| (e.error_code().error_code(), e.error_code().reason().to_string()));
            Binding::Error { txid, code, reason }
        }
        MessageClass::Indication => Binding::Indication,
    })
}

/// Whether `bytes` carries a MESSAGE-INTEGRITY valid under the short-term
/// password `pwd` (and a valid FINGERPRINT if it has one).
pub fn integrity_ok(bytes: &[u8], pwd: &str) -> bool {
    key(pwd).is_ok_and(|key| integrity_valid(bytes, key))
}

/// Whether `bytes` carries a MESSAGE-INTEGRITY valid under `key` (and a
/// valid FINGERPRINT if it has one).
pub(crate) fn integrity_valid(bytes: &[u8], key: HMACKey) -> bool {
    let ctx = DecoderContextBuilder::default().with_key(key).with_validation().build();
    match MessageDecoderBuilder::default().with_context(ctx).build().decode(bytes) {
        Ok((message, _)) => message.get::<MessageIntegrity>().is_some(),
        Err(_) => false,
    }
}

/// Decodes one STUN message (any method and class). A FINGERPRINT, when
/// the message has one, must be its last attribute and match (RFC 8489
/// section 14.7: CRC-32 of everything before it, XOR 0x5354554e); a wrong
/// one makes the message malformed, so nobody answers it.
///
/// # Errors
/// [`StunCodecError::Malformed`] for garbage, truncated messages and a
/// wrong FINGERPRINT.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<StunMessage, StunCodecError> {
    let (message, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .map_err(|e| StunCodecError::Malformed(format!("{e:?}")))?;
    if let Some(attribute) = message.get::<Fingerprint>() {
        let at = bytes.len().saturating_sub(8);
        let valid = bytes.len() >= 28
            && bytes[at..at + 2] == [0x80, 0x28]
            && attribute.as_fingerprint().is_ok_and(|fingerprint| fingerprint.validate(&bytes[..at]));
        if !valid {
            return Err(StunCodecError::Malformed("wrong FINGERPRINT".into()));
        }
    }
    Ok(message)
}

/// Whether a datagram looks like STUN: first two bits zero, the magic
/// cookie, a length that fits (RFC 5389 section 6).
pub fn looks_like_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 20
        && bytes[0] & 0xc0 == 0
        && bytes[4..8] == [0x21, 0x12, 0xa4, 0x42]
        && usize::from(u16::from_be_bytes([bytes[2], bytes[3]])) + 20 == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn request_round_trip_with_all_options() {
        let txid = [7u8; 12];
        let bytes = binding_request(
            txid,
            &BindingRequest {
                change_ip: true,
                change_port: false,
                auth: Some(("bob:alice", "0123456789abcdefghijkl")),
                use_candidate: true,
            },
        )
        .expect("encode");
        assert!(looks_like_stun(&bytes));
        let Binding::Request { txid: got, username, change_ip, change_port, use_candidate, unknown } =
            decode(&bytes).expect("decode")
        else {
            panic!("not a request")
        };
        assert_eq!(got, txid);
        assert_eq!(username.as_deref(), Some("bob:alice"));
        assert!(change_ip && !change_port && use_candidate);
        assert!(unknown.is_empty());
        assert!(integrity_ok(&bytes, "0123456789abcdefghijkl"));
        assert!(!integrity_ok(&bytes, "another password here!"));
    }

    #[test]
    fn tampered_message_fails_integrity() {
        let mut bytes =
            binding_request([1; 12], &BindingRequest { auth: Some(("a:b", "pw")), ..Default::default() }).expect("enc");
        let last = bytes.len() - 30;
        bytes[last] ^= 1;
        assert!(!integrity_ok(&bytes, "pw"));
    }

    #[test]
    fn success_round_trip_ipv4_and_ipv6() {
        for mapped in [addr("203.0.113.5:40000"), addr("[2001:db8::7]:1")] {
            let bytes = binding_success(
                [2; 12],
                &SuccessResponse {
                    mapped: Some(mapped),
                    other: Some(addr("198.51.100.2:3479")),
                    origin: Some(addr("198.51.100.1:3478")),
                    pwd: None,
                    server: true,
                },
            )
            .expect("encode");
            assert_eq!(
                decode(&bytes).expect("decode"),
                Binding::Success {
                    txid: [2; 12],
                    mapped: Some(mapped),
                    other: Some(addr("198.51.100.2:3479")),
                    origin: Some(addr("198.51.100.1:3478")),
                }
            );
        }
    }

    #[test]
    fn error_round_trip() {
        let bytes = binding_error([3; 12], 420, "Unknown Attribute", &[0x0003]).expect("encode");
        assert_eq!(
            decode(&bytes).expect("decode"),
            Binding::Error { txid: [3; 12], code: 420, reason: "Unknown Attribute".into() }
        );
    }

    #[test]
    fn garbage_and_truncated_input_are_errors() {
        let good = binding_request([4; 12], &BindingRequest::default()).expect("encode");
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        for garbage in [&b""[..], b"\x00", b"hello world, not stun at all", &[0xff; 64], &[0u8; 20]] {
            assert!(decode(garbage).is_err());
            assert!(!integrity_ok(garbage, "pw"));
        }
        let success =
            binding_success([5; 12], &SuccessResponse { mapped: Some(addr("1.2.3.4:5")), ..Default::default() })
                .expect("encode");
        for cut in 20..success.len() {
            let mut truncated = success[..cut].to_vec();
            let len = (cut - 20) as u16;
            truncated[2..4].copy_from_slice(&len.to_be_bytes());
            // Either an error or a message missing the cut attribute; never a panic.
            let _ = decode(&truncated);
        }
    }

    #[test]
    fn random_txids_differ() {
        assert_ne!(random_txid(), random_txid());
    }

    #[test]
    fn a_wrong_fingerprint_makes_a_message_malformed() {
        let request =
            binding_request([3; 12], &BindingRequest { auth: Some(("a:b", "password")), ..Default::default() })
                .expect("encode");
        assert!(decode(&request).is_ok());
        let mut wrong = request.clone();
        let last = wrong.len() - 1;
        wrong[last] ^= 0x01;
        assert_eq!(decode(&wrong), Err(StunCodecError::Malformed("wrong FINGERPRINT".into())));
        let plain = binding_request([4; 12], &BindingRequest::default()).expect("encode");
        assert!(decode(&plain).is_ok(), "no fingerprint: nothing to check");
    }
}
