//! rustls configurations built from the CA and the serving certificate.

use std::sync::Arc;

use tokio_rustls::rustls::{
    self, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

use super::{Pki, PkiError};

impl Pki {
    /// TLS settings for the API server's connections to node agents (logs): the node's
    /// serving certificate must chain to our CA, and we present a client certificate for
    /// `kube-apiserver-kubelet-client` in `system:masters` (issued now, kept in memory).
    pub fn kubelet_client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let (cert_pem, key_pem) = self.issue_client_cert("kube-apiserver-kubelet-client", &["system:masters"])?;
        let tls = |reason: String| PkiError::Tls { reason };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(self.ca.roots()?)
            .with_client_auth_cert(vec![cert], key)
            .map_err(|e| tls(format!("kubelet client certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// TLS settings for the API server: our serving certificate, ALPN h2 and http/1.1, and
    /// client certificates optional but, when presented, verified against our CA (a client
    /// with a certificate from another CA fails the handshake rather than falling back to
    /// anonymous). Uses ring explicitly so no process-wide default provider is needed.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.ca.roots()?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls {
                reason: format!("client certificate verifier: {e}"),
            })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls { reason: e.to_string() })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.serving_cert_der.clone()], self.serving_key_der.clone_key())
            .map_err(|e| PkiError::Tls {
                reason: format!("serving certificate: {e}"),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_offers_h2_and_http1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("create");
        let config = pki.server_config().expect("config");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
