//! HTTPS for Weft's own listeners (webhooks and the admin API).
//!
//! Why it exists: webhook senders (shops, payment providers) deliver only to
//! `https://` endpoints, and the admin API's bearer token must not cross a
//! network in the clear. Behind a TLS-terminating proxy or on loopback,
//! plain HTTP is fine; anywhere else `server.tls` names a PEM certificate
//! chain and its private key, and both listeners speak HTTPS (TLS 1.2 and
//! 1.3, HTTP/1.1 over ALPN, rustls with the ring provider, as for egress).
//!
//! The files are read at start (and by `weft validate`), and again on
//! `SIGHUP` ([`ListenerTls::reload`]): a renewed certificate takes over for
//! new connections without a restart; one that cannot be used is refused
//! with an error in the log, and the current one stays.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why the listeners' TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("server.tls.cert: {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("server.tls.key: {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate and key do not go together, or rustls refuses them.
    #[error("server.tls: {0}")]
    Pair(String),
}

/// The listeners' TLS: the acceptor new connections use, and the files to
/// read it from again.
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<tokio_rustls::TlsAcceptor>,
}

impl ListenerTls {
    /// Reads `cert` and `key` (see [`acceptor`]).
    pub fn load(cert: &Path, key: &Path) -> Result<ListenerTls, TlsError> {
        Ok(ListenerTls {
            acceptor: RwLock::new(acceptor(cert, key)?),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        match self.acceptor.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on success new connections use them, on
    /// failure the current certificate stays. Connections already open
    /// keep theirs.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        match self.acceptor.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The certificate file (for log lines).
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// A [`TlsError`] with the place of its setting in the config file.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {error}")]
pub struct LocatedTlsError {
    /// `file:line:column` of the setting.
    pub at: String,
    /// What is wrong.
    pub error: TlsError,
}

/// The acceptor for `cert` (a PEM chain, leaf first) and `key` (a PEM
/// private key: PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error(
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        ));
    }
    warn_if_readable_by_others(key);
    let key_error = |reason: String| TlsError::Key {
        path: key.display().to_string(),
        reason,
    };
    // The message never quotes the file: it is the private key.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            key_error("no private key in it (expected a PEM \"PRIVATE KEY\" block)".into())
        }
        rustls::pki_types::pem::Error::Io(io) => key_error(io.to_string()),
        _ => key_error("not a readable PEM private key".into()),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Pair(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| TlsError::Pair(format!("the certificate and key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Warns when the private key file may be read by others (not refused:
/// mounted secrets and `ssl-cert` group setups are often 0640 or 0644).
fn warn_if_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(key = %key.display(), mode = format_args!("{mode:o}"), "the TLS private key can be read by other users; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_named_and_the_key_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = acceptor(&missing, &missing).err().unwrap().to_string();
        assert!(err.starts_with("server.tls.cert: "), "{err}");
        assert!(err.contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let err = acceptor(&empty, &empty).err().unwrap().to_string();
        assert!(err.contains("no certificate in it"), "{err}");

        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let secret = dir.path().join("key.pem");
        std::fs::write(&secret, "s3cret-material-that-is-not-pem\n").unwrap();
        let err = acceptor(&cert, &secret).err().unwrap().to_string();
        assert!(err.starts_with("server.tls.key: "), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
