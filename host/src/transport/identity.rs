//! Node identity: a key pair with a self-signed certificate, and the QUIC TLS
//! configurations that authenticate peers by certificate fingerprint.
//!
//! There is no certificate authority: a peer is known by the SHA-256
//! fingerprint of its certificate. Both sides present a certificate (mutual
//! TLS); the handshake proves possession of the key. The dialling side pins
//! the expected fingerprint when it knows one (from signaling or from the
//! user) and refuses a peer that presents another certificate.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN protocol id of fogconnect's QUIC connections.
pub const ALPN: &[u8] = b"fogconnect/1";

/// Errors of creating an identity or TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or certificate generation failed.
    #[error("cannot generate the node certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The identity file cannot be used (see [`Identity::load_or_create`]).
    #[error(transparent)]
    File(#[from] super::identity_file::IdentityFileError),
}

/// SHA-256 fingerprint of a certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Parses the lowercase or uppercase hex form (64 digits, colons allowed).
    pub fn parse(text: &str) -> Option<Self> {
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A node's key pair and self-signed certificate.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a fresh key pair and certificate.
    ///
    /// # Errors
    /// [`IdentityError::Generate`] when key generation fails.
    pub fn generate() -> Result<Self, IdentityError> {
        let certified = rcgen::generate_simple_self_signed(vec!["fogconnect".to_string()])?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let fingerprint = Fingerprint::of(&cert);
        Ok(Self { cert, key, fingerprint })
    }

    /// An identity from a certificate and its key (checked by the caller).
    pub(super) fn from_parts(cert: CertificateDer<'static>, key: PrivatePkcs8KeyDer<'static>) -> Self {
        let fingerprint = Fingerprint::of(&cert);
        Self { cert, key, fingerprint }
    }

    /// The certificate, DER.
    pub(super) fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// The PKCS#8 private key, DER.
    pub(super) fn key_der(&self) -> &[u8] {
        self.key.secret_pkcs8_der()
    }

    /// The certificate fingerprint peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    fn chain(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))
    }

    /// The QUIC server configuration: presents this identity and requires a
    /// client certificate (any; its fingerprint identifies the caller).
    ///
    /// # Errors
    /// [`IdentityError`] when rustls or quinn refuse the configuration.
    pub fn server_config(&self, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ServerConfig, IdentityError> {
        let provider = provider();
        let (chain, key) = self.chain();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(FingerprintVerifier { provider, expected: None }))
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| IdentityError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    /// The QUIC client configuration for one dial: presents this identity
    /// and, when `expected` is given, refuses a server whose certificate has
    /// another fingerprint.
    ///
    /// # Errors
    /// [`IdentityError`] when rustls or quinn refuse the configuration.
    pub fn client_config(
        &self,
        expected: Option<Fingerprint>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, IdentityError> {
        let provider = provider();
        let (chain, key) = self.chain();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier { provider, expected }))
            .with_client_auth_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| IdentityError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The fingerprint of the certificate a QUIC peer presented.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// Accepts a self-signed certificate, optionally only with a given
/// fingerprint, and checks the handshake signature with it.
#[derive(Debug)]
struct FingerprintVerifier {
    provider: Arc<CryptoProvider>,
    expected: Option<Fingerprint>,
}

impl FingerprintVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self.expected {
            Some(expected) if Fingerprint::of(end_entity) != expected => Err(rustls::Error::General(format!(
                "peer certificate fingerprint {} does not match the pinned {expected}",
                Fingerprint::of(end_entity)
            ))),
            _ => Ok(()),
        }
    }

    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for FingerprintVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trips() {
        let fp = Fingerprint::of(b"certificate");
        assert_eq!(Fingerprint::parse(&fp.to_string()), Some(fp));
        let with_colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Fingerprint::parse(&with_colons.join(":")), Some(fp));
        assert_eq!(Fingerprint::parse("abc"), None);
        assert_eq!(Fingerprint::parse(&"zz".repeat(32)), None);
        // Signs are not hex digits.
        assert_eq!(Fingerprint::parse(&"+f".repeat(32)), None);
    }

    #[test]
    fn identities_differ() -> Result<(), IdentityError> {
        let a = Identity::generate()?;
        let b = Identity::generate()?;
        assert_ne!(a.fingerprint(), b.fingerprint());
        Ok(())
    }
}
