//! Node and server identities: a self-signed certificate and its key.

use std::path::Path;

use boxer_proto::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Why an identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A key or certificate file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A certificate, its private key and its fingerprint.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { cert: self.cert.clone(), key: self.key.clone_key(), fingerprint: self.fingerprint }
    }
}

/// File names of a persisted identity inside a state directory.
const CERT_FILE: &str = "cert.der";
const KEY_FILE: &str = "key.der";

impl Identity {
    /// A fresh ECDSA P-256 key with a self-signed certificate. P-256 because
    /// every TLS stack verifies it fast and its signatures are small.
    pub fn generate() -> Result<Self, IdentityError> {
        let certified = rcgen::generate_simple_self_signed(vec![boxer_proto::TLS_SERVER_NAME.to_owned()])?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Self::from_parts(cert, key))
    }

    /// Loads the identity kept in `dir`, or generates one and saves it there
    /// (the key readable by the owner only), so that a restarted server keeps
    /// the fingerprint its clients pinned.
    pub fn load_or_generate(dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let file_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| IdentityError::File { path, source }
        };
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(file_err(&cert_path))?;
            let key = std::fs::read(&key_path).map_err(file_err(&key_path))?;
            return Ok(Self::from_parts(CertificateDer::from(cert), PrivatePkcs8KeyDer::from(key)));
        }
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
        let identity = Self::generate()?;
        write_private(&key_path, identity.key.secret_pkcs8_der()).map_err(file_err(&key_path))?;
        std::fs::write(&cert_path, identity.cert.as_ref()).map_err(file_err(&cert_path))?;
        Ok(identity)
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivatePkcs8KeyDer<'static>) -> Self {
        let fingerprint = fingerprint_of(&cert);
        Self { cert, key, fingerprint }
    }

    /// The certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// SHA-256 of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// SHA-256 of a DER certificate.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> Fingerprint {
    Fingerprint(Sha256::digest(cert.as_ref()).into())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_identity_keeps_its_fingerprint() {
        let dir = std::env::temp_dir().join(format!("boxer-identity-{}", std::process::id()));
        let first = Identity::load_or_generate(&dir).unwrap();
        let second = Identity::load_or_generate(&dir).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_ne!(first.fingerprint(), Identity::generate().unwrap().fingerprint());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
