//! The cluster's certificates: a self-managed CA, the API server's serving certificate,
//! client certificates for users and nodes, and kubeconfig files that carry them.
//!
//! Everything lives in one directory (by default the server's data dir):
//!
//! | file            | what                                   | mode |
//! |-----------------|----------------------------------------|------|
//! | `ca.crt`        | CA certificate (CN `rudder-ca`)        | 0644 |
//! | `ca.key`        | CA private key, PKCS#8                 | 0600 |
//! | `apiserver.crt` | serving certificate, signed by the CA  | 0644 |
//! | `apiserver.key` | serving private key, PKCS#8            | 0600 |
//!
//! An operator may drop in their own `ca.crt`/`ca.key` (PKCS#8 key, ECDSA/Ed25519/RSA) before
//! the first start; it is used as is. The serving certificate is ours to manage: it is
//! reissued whenever its SAN set, its issuer or its key no longer fit, or it nears expiry.
//!
//! [`Pki`] (here) is the whole API; the parts: `ca` (create or load the CA), `serving` (the
//! API server's own certificate), `params` (validity, serials, the leaf profile), `san`,
//! `subject` and `der` (multi-`O` client subjects), `tls` (rustls configurations), `files`
//! (private directories, atomic writes) and `kubeconfig`.

mod ca;
mod csr_sign;
mod der;
mod error;
mod files;
mod kubeconfig;
mod params;
mod san;
mod serving;
mod subject;
mod tls;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256};
use time::OffsetDateTime;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use ca::Ca;
pub use error::PkiError;
use files::{create_private_dir, exists};
pub use kubeconfig::{
    ClusterEntry, ContextEntry, Credential, Kubeconfig, NamedCluster, NamedContext, NamedUser, UserEntry,
    write_kubeconfig,
};
use params::{LEAF_VALIDITY_DAYS, leaf_params};
use san::{San, serving_sans};
use subject::{certificate_pem, encode_subject, replace_subject_and_resign};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVING_CERT_FILE: &str = "apiserver.crt";
pub const SERVING_KEY_FILE: &str = "apiserver.key";

pub const CA_COMMON_NAME: &str = "rudder-ca";

/// Names every serving certificate carries: loopback for local tools, and the names pods use
/// to reach the API through the `kubernetes` Service. The Service's ClusterIP is not known
/// here; the caller passes it in `extra_sans`.
pub const DEFAULT_SANS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// The CA plus the serving certificate, loaded once at startup and shared read-only.
pub struct Pki {
    ca: Ca,
    serving_cert_der: CertificateDer<'static>,
    serving_key_der: PrivateKeyDer<'static>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.ca.dir)
            .field("keys", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA from `dir` or creates one, then loads or (re)issues the serving
    /// certificate for the default SANs plus `extra_sans` (IP addresses become IP SANs,
    /// anything else a DNS SAN).
    pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Pki, PkiError> {
        Pki::load_or_create_at(dir, extra_sans, OffsetDateTime::now_utc())
    }

    /// [`Pki::load_or_create`] with the clock read once by the caller: what is created is
    /// valid from `now`, and what is loaded is checked against it.
    fn load_or_create_at(dir: &Path, extra_sans: &[String], now: OffsetDateTime) -> Result<Pki, PkiError> {
        let wanted_sans = serving_sans(extra_sans)?;
        create_private_dir(dir)?;

        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        let (ca_pem, ca_der, issuer) = match (exists(&ca_cert_path)?, exists(&ca_key_path)?) {
            (true, true) => ca::load_ca(&ca_cert_path, &ca_key_path, now)?,
            (false, false) => ca::create_ca(&ca_cert_path, &ca_key_path, now)?,
            (true, false) => {
                return Err(PkiError::IncompleteCa {
                    present: ca_cert_path,
                    missing: ca_key_path,
                });
            }
            (false, true) => {
                return Err(PkiError::IncompleteCa {
                    present: ca_key_path,
                    missing: ca_cert_path,
                });
            }
        };

        let ca = Ca {
            dir: dir.to_path_buf(),
            pem: ca_pem,
            der: ca_der,
            issuer,
        };
        let (serving_cert_der, serving_key_der) = ca.load_or_issue_serving(&wanted_sans, now)?;
        Ok(Pki {
            ca,
            serving_cert_der,
            serving_key_der,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.ca.dir
    }

    /// The CA certificate, PEM, as clients need it in `certificate-authority-data`.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca.der
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca.dir.join(CA_CERT_FILE)
    }

    pub fn serving_cert_path(&self) -> PathBuf {
        self.ca.dir.join(SERVING_CERT_FILE)
    }

    /// Issues a client certificate (ECDSA P-256, one year) with subject `CN=common_name` and
    /// one `O=` per organization, in the order given; Kubernetes reads the CN as the user
    /// name and each O as a group. Returns `(certificate PEM, PKCS#8 key PEM)`.
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str]) -> Result<(String, String), PkiError> {
        self.issue_client_cert_at(common_name, organizations, OffsetDateTime::now_utc())
    }

    fn issue_client_cert_at(
        &self,
        common_name: &str,
        organizations: &[&str],
        now: OffsetDateTime,
    ) -> Result<(String, String), PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidSubject {
                field: "CN",
                reason: "must not be empty (it becomes the user name)",
            });
        }
        if organizations.iter().any(|o| o.is_empty()) {
            return Err(PkiError::InvalidSubject {
                field: "O",
                reason: "must not be empty (each one becomes a group)",
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::generate("client key"))?;
        let mut params = leaf_params(common_name, now, LEAF_VALIDITY_DAYS)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(PkiError::generate("client certificate"))?;
        // rcgen keeps one value per attribute type, so a subject with several O= cannot be
        // expressed through its API; we swap in our own subject and re-sign the TBS.
        let subject = encode_subject(common_name, organizations);
        let der = replace_subject_and_resign(cert.der(), &subject, &self.ca.issuer)?;
        Ok((certificate_pem(der), key.serialize_pem()))
    }

    /// Issues a serving certificate (ECDSA P-256, one year, server auth) for `names`
    /// (IP addresses become IP SANs, anything else a DNS SAN), with `CN=common_name`: a
    /// node agent's HTTPS port gets one for its node IP. Returns `(certificate PEM,
    /// PKCS#8 key PEM)`.
    pub fn issue_serving_cert(&self, common_name: &str, names: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::generate("serving key"))?;
        let mut params = leaf_params(common_name, OffsetDateTime::now_utc(), LEAF_VALIDITY_DAYS)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = names
            .iter()
            .map(|n| San::parse(n).and_then(|s| s.to_rcgen()))
            .collect::<Result<_, _>>()?;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(PkiError::generate("serving certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
