//! TLS with rustls (ring): the `[tls]` certificate and key, loaded once at start.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// An acceptor for the configured certificate, or why it cannot be built.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", config.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", config.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", config.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not fit: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
