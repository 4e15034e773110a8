//! What can go wrong with certificates, keys and kubeconfig files.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {action}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{present} exists but {missing} does not; refusing to generate a new CA next to half of \
         an existing one (restore the missing file, or remove both to start a new CA)",
        present = .present.display(),
        missing = .missing.display()
    )]
    IncompleteCa { present: PathBuf, missing: PathBuf },
    #[error("{path}: invalid certificate: {reason}", path = .path.display())]
    InvalidCertificate { path: PathBuf, reason: String },
    #[error("{path}: invalid private key: {reason}", path = .path.display())]
    InvalidKey { path: PathBuf, reason: String },
    #[error(
        "{key}: private key does not match the public key in {cert}",
        key = .key.display(),
        cert = .cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{path}: CA certificate expired at unix time {not_after}; remove ca.crt and ca.key to \
         create a new CA (every issued kubeconfig must then be reissued)",
        path = .path.display()
    )]
    CaExpired { path: PathBuf, not_after: i64 },
    #[error("subject alternative name {san:?}: {reason}")]
    InvalidSan { san: String, reason: &'static str },
    #[error("certificate subject {field}: {reason}")]
    InvalidSubject { field: &'static str, reason: &'static str },
    #[error("generating {what}: {reason}")]
    Generate { what: &'static str, reason: String },
    #[error("building the TLS server configuration: {reason}")]
    Tls { reason: String },
    #[error("kubeconfig {field}: {reason}")]
    InvalidKubeconfig { field: &'static str, reason: &'static str },
}

impl PkiError {
    pub(super) fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, action, source }
    }

    pub(super) fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        // rcgen's errors describe parameters and algorithms, never key material.
        move |e| PkiError::Generate {
            what,
            reason: e.to_string(),
        }
    }
}
