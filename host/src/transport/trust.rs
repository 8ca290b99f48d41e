//! The server certificates a node trusts on TLS connections to its
//! infrastructure (`wss://` signaling, `turns:` relays): the public web
//! roots, plus the certificate authorities of an optional PEM file (a
//! private CA or a self-signed server certificate); and the server side of
//! such TLS from PEM files.

use std::path::Path;
use std::sync::Arc;

/// A rustls client configuration trusting the web roots and the
/// certificates in `ca_file`.
///
/// # Errors
/// A message naming the file when it cannot be read or holds an unusable
/// certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(file)) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A rustls server configuration from a PEM certificate chain and private
/// key (for `wss://` signaling and `turns:` relays).
///
/// # Errors
/// A message naming the file when it cannot be read or used.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let open = |path: &Path| {
        std::fs::File::open(path).map(std::io::BufReader::new).map_err(|e| format!("{}: {e}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|e| format!("private key {}: {e}", key.display()))?
        .ok_or_else(|| format!("no private key in {}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate {}: {e}", cert.display()))
}
