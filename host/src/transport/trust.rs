//! The server certificates a node trusts on TLS connections to its
//! infrastructure (`wss://` signaling, `turns:` relays): the public web
//! roots, plus the certificate authorities of an optional PEM file (a
//! private CA or a self-signed server certificate).

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
