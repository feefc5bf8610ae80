//! Optional TLS for `https://` and `wss://` (`server.tls_cert` / `server.tls_key`).
//!
//! Owns: reading the PEM certificate chain and private key into a rustls server
//! configuration (ring as the crypto provider). Must not: bind or serve; the server
//! hands the configuration to actix-web.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("server.tls_key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A rustls server configuration from PEM files: the certificate chain (leaf first)
/// and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_bad_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &missing).unwrap_err().to_string();
        assert!(e.starts_with("server.tls_cert"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = server_config(&junk, &junk).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        let e = server_config(&cert_path, &junk).unwrap_err().to_string();
        assert!(e.starts_with("server.tls_key"), "{e}");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        assert!(server_config(&cert_path, &key_path).is_ok());
    }
}
