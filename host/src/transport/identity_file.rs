//! A node identity kept in a file across restarts, so peers that pinned its
//! certificate fingerprint keep trusting the node.
//!
//! The file holds the PKCS#8 private key and the self-signed certificate,
//! both PEM. The certificate is stored rather than made again at each
//! start: a new certificate for the same key would carry another serial
//! and validity, hence another fingerprint. The file is created on first
//! use readable by its owner only; a file others may read is refused (its
//! key would let them impersonate the node).

use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::identity::{Fingerprint, Identity, IdentityError};

/// What is wrong with an identity file.
#[derive(Debug, thiserror::Error)]
#[error("identity file {}: {reason}", path.display())]
pub struct IdentityFileError {
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
}

impl IdentityFileError {
    fn new(path: &Path, reason: impl Into<String>) -> Self {
        Self { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// Whether [`Identity::load_or_create`] read the file or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The file existed and was read.
    Loaded,
    /// The file did not exist; a new identity was written to it.
    Created,
}

impl Identity {
    /// The identity kept in `path`: read when the file exists, else a new
    /// one written there (mode 0600, in a directory that must exist).
    ///
    /// # Errors
    /// [`IdentityError::File`] when the file cannot be read or written, is
    /// readable or writable by others than its owner, or does not hold a
    /// matching key and certificate; [`IdentityError::Generate`] when a new
    /// key cannot be made.
    pub fn load_or_create(path: &Path) -> Result<(Self, IdentitySource), IdentityError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok((Self::load(path)?, IdentitySource::Loaded)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                identity.write_new(path)?;
                Ok((identity, IdentitySource::Created))
            }
            Err(e) => Err(IdentityFileError::new(path, format!("cannot read it: {e}")).into()),
        }
    }

    /// Reads the identity kept in `path`.
    ///
    /// # Errors
    /// As [`Identity::load_or_create`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let fail = |reason: String| IdentityError::from(IdentityFileError::new(path, reason));
        let metadata = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if !metadata.is_file() {
            return Err(fail("cannot read it: not a regular file".into()));
        }
        check_private(&metadata).map_err(fail)?;
        let text = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let (cert, key) = parse(&text).map_err(fail)?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(vec![cert.clone()], PrivateKeyDer::Pkcs8(key.clone_key()), &provider)
            .map_err(|e| fail(format!("the key does not belong to the certificate: {e}")))?;
        Ok(Self::from_parts(cert, key))
    }

    /// Writes this identity to `path`, which must not exist yet.
    fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let fail =
            |e: std::io::Error| IdentityError::from(IdentityFileError::new(path, format!("cannot create it: {e}")));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(fail)?;
        let text = format!(
            "# fogconnect node identity (certificate fingerprint {}); keep it private\n{}{}",
            self.fingerprint(),
            pem("PRIVATE KEY", self.key_der()),
            pem("CERTIFICATE", self.cert_der()),
        );
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)
    }
}

/// Refuses a file that anyone but its owner may read or write.
#[cfg(unix)]
fn check_private(metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its permissions {mode:03o} let others than its owner read or change the node's private key; \
             allow its owner only (chmod 600)"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_metadata: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// The certificate and the PKCS#8 key of an identity file.
fn parse(text: &[u8]) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), String> {
    let mut cert = None;
    let mut key = None;
    for item in rustls_pemfile::read_all(&mut &text[..]) {
        match item.map_err(|e| format!("not PEM: {e}"))? {
            rustls_pemfile::Item::X509Certificate(der) if cert.is_none() => cert = Some(der),
            rustls_pemfile::Item::Pkcs8Key(der) if key.is_none() => key = Some(der),
            rustls_pemfile::Item::X509Certificate(_) | rustls_pemfile::Item::Pkcs8Key(_) => {
                return Err("more than one certificate or key".into());
            }
            _ => return Err("holds something other than one PKCS#8 key and one certificate".into()),
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok((cert, key)),
        (None, _) => Err("no certificate in it (not a fogconnect identity file?)".into()),
        (_, None) => Err("no PKCS#8 private key in it (not a fogconnect identity file?)".into()),
    }
}

/// The PEM block of `der` with `label`.
fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// The fingerprint of the identity kept in `path`, creating the file when
/// it does not exist (`fogconnect id`).
///
/// # Errors
/// As [`Identity::load_or_create`].
pub fn fingerprint_of(path: &Path) -> Result<(Fingerprint, IdentitySource), IdentityError> {
    Identity::load_or_create(path).map(|(identity, source)| (identity.fingerprint(), source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod: {e}"));
    }

    #[test]
    fn created_once_then_loaded_with_the_same_fingerprint() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.identity");
        let (first, source) = Identity::load_or_create(&path)?;
        assert_eq!(source, IdentitySource::Created);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let (again, source) = Identity::load_or_create(&path)?;
        assert_eq!(source, IdentitySource::Loaded);
        assert_eq!(first.fingerprint(), again.fingerprint());
        Ok(())
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.identity");
        Identity::load_or_create(&path)?;
        set_mode(&path, 0o644);
        let err = Identity::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("permissions 644") && err.contains("chmod 600"), "{err}");

        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "hello")?;
        set_mode(&garbage, 0o600);
        let err = Identity::load(&garbage).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no certificate"), "{err}");

        // A key from one identity with the certificate of another.
        let (a, b) = (Identity::generate()?, Identity::generate()?);
        let mixed = dir.path().join("mixed");
        std::fs::write(&mixed, format!("{}{}", pem("PRIVATE KEY", a.key_der()), pem("CERTIFICATE", b.cert_der())))?;
        set_mode(&mixed, 0o600);
        let err = Identity::load(&mixed).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("does not belong"), "{err}");

        let err = Identity::load_or_create(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("not a regular file"), "{err}");
        let missing_dir = dir.path().join("no/such/dir/identity");
        let err = Identity::load_or_create(&missing_dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("cannot create it"), "{err}");
        Ok(())
    }
}
