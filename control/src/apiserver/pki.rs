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

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType, SerialNumber,
    SigningKey as _,
};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    client::WebPkiServerVerifier,
    client::danger::ServerCertVerifier as _,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::X509Name;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVING_CERT_FILE: &str = "apiserver.crt";
pub const SERVING_KEY_FILE: &str = "apiserver.key";

pub const CA_COMMON_NAME: &str = "rudder-ca";
/// kubeadm's choice too: the CN has no meaning to clients, which check SANs only.
const SERVING_COMMON_NAME: &str = "kube-apiserver";

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

const CA_VALIDITY_DAYS: i64 = 3650;
/// Leaf certificates are short-lived compared to the CA so a leaked admin or node credential
/// stops working on its own; the serving certificate renews itself on restart.
const LEAF_VALIDITY_DAYS: i64 = 365;
/// A serving certificate this close to expiry is reissued at startup, so a server restarted
/// at least monthly never serves an expired certificate.
const RENEW_BEFORE_SECS: i64 = 30 * 86_400;
const SECS_PER_DAY: i64 = 86_400;

// DER attribute type OIDs (encoded) for the subject names we write ourselves.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

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
    fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, action, source }
    }

    fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        // rcgen's errors describe parameters and algorithms, never key material.
        move |e| PkiError::Generate {
            what,
            reason: e.to_string(),
        }
    }
}

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
        let wanted_sans = serving_sans(extra_sans)?;
        create_private_dir(dir)?;

        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        let (ca_pem, ca_der, issuer) = match (exists(&ca_cert_path)?, exists(&ca_key_path)?) {
            (true, true) => load_ca(&ca_cert_path, &ca_key_path)?,
            (false, false) => create_ca(&ca_cert_path, &ca_key_path)?,
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
        let (serving_cert_der, serving_key_der) = ca.load_or_issue_serving(&wanted_sans)?;
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
        let mut params = leaf_params(common_name, LEAF_VALIDITY_DAYS)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(PkiError::generate("client certificate"))?;
        // rcgen keeps one value per attribute type, so a subject with several O= cannot be
        // expressed through its API; we swap in our own subject and re-sign the TBS.
        let subject = encode_subject(common_name, organizations);
        let der = replace_subject_and_resign(cert.der(), &subject, &self.ca.issuer)?;
        Ok((pem_encode("CERTIFICATE", &der), key.serialize_pem()))
    }

    /// Issues a serving certificate (ECDSA P-256, one year, server auth) for `names`
    /// (IP addresses become IP SANs, anything else a DNS SAN), with `CN=common_name`: a
    /// node agent's HTTPS port gets one for its node IP. Returns `(certificate PEM,
    /// PKCS#8 key PEM)`.
    pub fn issue_serving_cert(&self, common_name: &str, names: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::generate("serving key"))?;
        let mut params = leaf_params(common_name, LEAF_VALIDITY_DAYS)?;
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

/// The CA as loaded: what is needed to sign, and to check what was signed.
struct Ca {
    dir: PathBuf,
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).map_err(|e| PkiError::InvalidCertificate {
            path: self.dir.join(CA_CERT_FILE),
            reason: format!("not usable as a trust anchor: {e}"),
        })?;
        Ok(Arc::new(roots))
    }

    fn load_or_issue_serving(
        &self,
        wanted_sans: &BTreeSet<San>,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let cert_path = self.dir.join(SERVING_CERT_FILE);
        let key_path = self.dir.join(SERVING_KEY_FILE);
        if exists(&cert_path)? && exists(&key_path)? {
            match self.check_serving(&cert_path, &key_path, wanted_sans)? {
                Ok(pair) => return Ok(pair),
                Err(why) => tracing::info!(
                    cert = %cert_path.display(),
                    "reissuing the API server certificate: {why}"
                ),
            }
        }

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::generate("serving key"))?;
        let mut params = leaf_params(SERVING_COMMON_NAME, LEAF_VALIDITY_DAYS)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = wanted_sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::generate("serving certificate"))?;
        // Key first: a crash between the two writes leaves a cert/key mismatch, which the
        // next start detects and repairs, never a new cert beside a stale key it trusts.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(key.serialize_der().into())))
    }

    /// Outer `Err` = the files cannot be read at all; inner `Err` = readable but unfit, with
    /// the reason to log before reissuing.
    #[allow(clippy::type_complexity)]
    fn check_serving(
        &self,
        cert_path: &Path,
        key_path: &Path,
        wanted_sans: &BTreeSet<San>,
    ) -> Result<Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String>, PkiError> {
        let cert_pem = fs::read(cert_path).map_err(PkiError::io(cert_path, "reading"))?;
        let key_pem = fs::read_to_string(key_path).map_err(PkiError::io(key_path, "reading"))?;
        let Ok(cert_der) = CertificateDer::from_pem_slice(&cert_pem) else {
            return Ok(Err("no PEM certificate in the file".into()));
        };
        let Ok(key) = KeyPair::from_pem(&key_pem) else {
            return Ok(Err("key file is not a PKCS#8 private key".into()));
        };
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(&cert_der) else {
            return Ok(Err("certificate is not valid DER".into()));
        };
        if key.subject_public_key_info() != x509.public_key().raw {
            return Ok(Err("key does not match the certificate".into()));
        }
        if x509.validity().not_after.timestamp() < unix_now() + RENEW_BEFORE_SECS {
            return Ok(Err("certificate expires within 30 days".into()));
        }
        match cert_sans(&x509) {
            Some(sans) if sans == *wanted_sans => {}
            _ => return Ok(Err("subject alternative names changed".into())),
        }
        if let Err(e) = self.verify_serving_chain(&cert_der) {
            return Ok(Err(format!("not valid under the current CA: {e}")));
        }
        Ok(Ok((
            cert_der.into_owned(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )))
    }

    /// Runs the same webpki check a client would, so a certificate from a replaced CA or
    /// with the wrong EKU is reissued rather than served.
    fn verify_serving_chain(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.roots().map_err(|e| e.to_string())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn create_ca(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::generate("CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: this CA signs leaves only, so a leaked leaf can never act as a CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS)?;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(PkiError::generate("CA certificate"))?;
    let pem = cert.pem();
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, pem.as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "created a new cluster CA");
    Ok((pem, cert.der().clone(), Issuer::new(params, key)))
}

fn load_ca(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let invalid_cert = |reason: String| PkiError::InvalidCertificate {
        path: cert_path.to_path_buf(),
        reason,
    };
    let cert_pem = fs::read_to_string(cert_path).map_err(PkiError::io(cert_path, "reading"))?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| invalid_cert(format!("no PEM certificate: {e}")))?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid_cert(format!("not valid DER: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid_cert(
            "not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
        ));
    }
    let not_after = x509.validity().not_after.timestamp();
    if not_after <= unix_now() {
        return Err(PkiError::CaExpired {
            path: cert_path.to_path_buf(),
            not_after,
        });
    }

    let key_pem = fs::read_to_string(key_path).map_err(PkiError::io(key_path, "reading"))?;
    // Our own reason text: parser messages may quote fragments of the key.
    let key = KeyPair::from_pem(&key_pem).map_err(|_| PkiError::InvalidKey {
        path: key_path.to_path_buf(),
        reason: "expected an unencrypted PKCS#8 PEM key (\"BEGIN PRIVATE KEY\") for ECDSA, \
                 Ed25519 or RSA; convert with `openssl pkcs8 -topk8 -nocrypt`"
            .into(),
    })?;
    if key.subject_public_key_info() != x509.public_key().raw {
        return Err(PkiError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }

    let issuer = issuer_from_ca(&x509, key).map_err(invalid_cert)?;
    // Chain building compares the issued certificate's issuer name with the CA's subject
    // byte for byte; re-encoding the subject through rcgen could change string types or
    // order, so prove the round trip on a probe before trusting it.
    let probe = leaf_params("probe", 1)?
        .signed_by(issuer.key(), &issuer)
        .map_err(PkiError::generate("probe certificate"))?;
    let issuer_matches = x509_parser::parse_x509_certificate(probe.der())
        .map(|(_, p)| p.issuer().as_raw() == x509.subject().as_raw())
        .unwrap_or(false);
    if !issuer_matches {
        return Err(invalid_cert(
            "its subject name uses an encoding this server cannot reproduce when signing \
             (e.g. several attributes in one RDN or repeated attribute types)"
                .into(),
        ));
    }
    Ok((cert_pem, der.into_owned(), issuer))
}

/// rcgen's own `Issuer::from_ca_cert_der` needs its `x509-parser` feature; this is the same
/// mapping on the x509-parser we already depend on.
fn issuer_from_ca(x509: &X509Certificate<'_>, key: KeyPair) -> Result<Issuer<'static, KeyPair>, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_x509(x509.subject())?;
    // Issued certificates' authorityKeyIdentifier must equal the CA's subjectKeyIdentifier
    // (OpenSSL rejects a mismatch), whatever method produced it.
    params.key_identifier_method = x509
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(KeyIdMethod::PreSpecified(id.0.to_vec())),
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(Issuer::new(params, key))
}

fn dn_from_x509(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("subject has an RDN with other than one attribute".into());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("subject attribute type OID has an arc over 64 bits")?
            .collect();
        let data = attr.attr_value().data;
        let text = || {
            std::str::from_utf8(data)
                .map(str::to_owned)
                .map_err(|_| "subject attribute is not valid text".to_string())
        };
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => DnValue::PrintableString(
                text()?
                    .try_into()
                    .map_err(|_| "subject PrintableString has invalid characters")?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text()?
                    .try_into()
                    .map_err(|_| "subject IA5String has invalid characters")?,
            ),
            other => {
                return Err(format!("subject attribute string type {other} is unsupported"));
            }
        };
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err("subject repeats an attribute type".into());
        }
        dn.push(ty, value);
    }
    Ok(dn)
}

fn leaf_params(common_name: &str, validity_days: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Python 3.13's default X509_STRICT verification (and RFC 5280) want an AKI on every
    // certificate that is not self-signed.
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity_days)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Starts the validity a day back so clients with a slow clock accept a fresh certificate;
/// whole days because rcgen only exposes a date constructor without a time-crate dependency.
fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), PkiError> {
    let today = unix_now().div_euclid(SECS_PER_DAY);
    let (y, m, d) = checked_date(today - 1)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = checked_date(today + days)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(())
}

/// `date_time_ymd` panics outside the time crate's range; X.509 dates must also fit 4 digits.
fn checked_date(days: i64) -> Result<(i32, u8, u8), PkiError> {
    let (y, m, d) = civil_from_days(days);
    match i32::try_from(y) {
        Ok(y) if (1950..=9999).contains(&y) => Ok((y, m, d)),
        _ => Err(PkiError::Generate {
            what: "certificate validity",
            reason: "the system clock is out of range".into(),
        }),
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Random positive 16-byte serials: two certificates for the same key (a reissued client
/// cert) must still differ, which rcgen's key-derived default would not give.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate {
            what: "certificate serial number",
            reason: "the system random number generator failed".into(),
        })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keeps the DER integer exactly 16 bytes long
    Ok(SerialNumber::from_slice(&bytes))
}

/// A SAN normalized for comparison: DNS names are case-insensitive, IPs compare by value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    fn parse(raw: &str) -> Result<San, PkiError> {
        let invalid = |reason| PkiError::InvalidSan {
            san: raw.to_string(),
            reason,
        };
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("is empty"));
        }
        // Accept "[::1]" as people write IPv6 addresses in URLs.
        let unbracketed = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let mut labels = name.split('.');
        let first_ok = labels.next().is_some_and(|l| l == "*" || valid_label(l));
        if !first_ok || !labels.all(valid_label) || name.len() > 253 {
            return Err(invalid(
                "is neither an IP address nor a DNS name (letters, digits, '-', '.', optional \
                 leading '*.')",
            ));
        }
        Ok(San::Dns(name))
    }

    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(name) => SanType::DnsName(name.as_str().try_into().map_err(|_| PkiError::InvalidSan {
                san: name.clone(),
                reason: "is not ASCII",
            })?),
        })
    }
}

fn serving_sans(extra: &[String]) -> Result<BTreeSet<San>, PkiError> {
    DEFAULT_SANS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(San::parse)
        .collect()
}

/// `None` if the certificate carries a SAN kind we never issue, which forces a reissue.
fn cert_sans(x509: &X509Certificate<'_>) -> Option<BTreeSet<San>> {
    let ext = x509.subject_alternative_name().ok()??;
    let mut sans = BTreeSet::new();
    for name in &ext.value.general_names {
        let san = match name {
            GeneralName::DNSName(s) => San::Dns(s.to_ascii_lowercase()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                _ => return None,
            },
            _ => return None,
        };
        sans.insert(san);
    }
    Some(sans)
}

// --- DER surgery for multi-O subjects -------------------------------------------------------

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// Splits the first TLV off `input`: `(tag, content, total length)`. Single-byte tags and
/// definite lengths only, which is all DER certificates use.
fn der_read(input: &[u8]) -> Option<(u8, &[u8], usize)> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let content = input.get(header..header.checked_add(len)?)?;
    Some((tag, content, header + len))
}

/// `CN=<cn>, O=<org>...` as UTF8Strings, one attribute per RDN, CN first as Kubernetes and
/// openssl write it.
fn encode_subject(common_name: &str, organizations: &[&str]) -> Vec<u8> {
    let attr = |oid: &[u8], value: &str| {
        let mut seq = der_tlv(0x06, oid);
        seq.extend(der_tlv(0x0c, value.as_bytes()));
        der_tlv(0x31, &der_tlv(0x30, &seq))
    };
    let mut rdns = attr(OID_COMMON_NAME, common_name);
    for org in organizations {
        rdns.extend(attr(OID_ORGANIZATION, org));
    }
    der_tlv(0x30, &rdns)
}

fn replace_subject_and_resign(cert: &[u8], subject: &[u8], issuer: &Issuer<'_, KeyPair>) -> Result<Vec<u8>, PkiError> {
    let malformed = || PkiError::Generate {
        what: "client certificate",
        reason: "unexpected certificate layout while setting the subject".into(),
    };
    let (_, cert_body, _) = der_read(cert).ok_or_else(malformed)?;
    let (_, tbs, tbs_len) = der_read(cert_body).ok_or_else(malformed)?;
    let (_, _, sig_alg_len) = der_read(&cert_body[tbs_len..]).ok_or_else(malformed)?;
    let sig_alg = &cert_body[tbs_len..tbs_len + sig_alg_len];

    // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, ...
    let mut offset = 0;
    for _ in 0..5 {
        let (_, _, len) = der_read(&tbs[offset..]).ok_or_else(malformed)?;
        offset += len;
    }
    if tbs.first() != Some(&0xa0) {
        return Err(malformed());
    }
    let (_, _, subject_len) = der_read(&tbs[offset..]).ok_or_else(malformed)?;

    let mut new_tbs_content = Vec::with_capacity(tbs.len() + subject.len());
    new_tbs_content.extend_from_slice(&tbs[..offset]);
    new_tbs_content.extend_from_slice(subject);
    new_tbs_content.extend_from_slice(&tbs[offset + subject_len..]);
    let new_tbs = der_tlv(0x30, &new_tbs_content);

    let signature = issuer
        .key()
        .sign(&new_tbs)
        .map_err(PkiError::generate("client certificate signature"))?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);

    let mut body = new_tbs;
    body.extend_from_slice(sig_alg);
    body.extend(der_tlv(0x03, &bits));
    Ok(der_tlv(0x30, &body))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// --- files ----------------------------------------------------------------------------------

fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(PkiError::io(path, "checking"))
}

/// New directories get 0700: they hold private keys. An existing directory is left as the
/// operator set it up.
fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(PkiError::io(dir, "creating directory"))
}

/// Writes through a temporary file and rename so readers never see half a key, and so the
/// file has `mode` from its first byte (no window where a key is world-readable).
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path.file_name().ok_or_else(|| PkiError::Io {
        path: path.to_path_buf(),
        action: "writing",
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(PkiError::io(path, "writing"))
}

// --- kubeconfig -----------------------------------------------------------------------------

/// How a kubeconfig user proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    ClientCert { cert_pem: String, key_pem: String },
    Token(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ClientCert { .. } => f.write_str("ClientCert([elided])"),
            Credential::Token(_) => f.write_str("Token([elided])"),
        }
    }
}

/// The subset of the kubeconfig schema we write; also usable to read one back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
    #[serde(default)]
    pub preferences: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: ClusterEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub server: String,
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserEntry {
    #[serde(rename = "client-certificate-data", default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data", default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("client_certificate_data", &self.client_certificate_data.is_some())
            .field("client_key_data", &self.client_key_data.as_ref().map(|_| "[elided]"))
            .field("token", &self.token.as_ref().map(|_| "[elided]"))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

/// Writes a single-cluster, single-user kubeconfig with mode 0600 (it holds a key or token).
///
/// The file is JSON: it is valid YAML, every kubeconfig reader (kubectl via sigs.k8s.io/yaml,
/// client-go, kube-rs, the Python client via PyYAML) accepts it, and unlike a YAML emitter it
/// cannot produce a scalar that a YAML 1.1 reader re-types (a cluster named `on`, a numeric
/// token) or a layout that older parsers mis-read.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    cluster_name: &str,
    user: &str,
    credential: Credential,
) -> Result<(), PkiError> {
    let invalid = |field, reason| PkiError::InvalidKubeconfig { field, reason };
    if !server_url.starts_with("https://") {
        return Err(invalid("server", "must be an https:// URL"));
    }
    if cluster_name.is_empty() {
        return Err(invalid("cluster name", "must not be empty"));
    }
    if user.is_empty() {
        return Err(invalid("user name", "must not be empty"));
    }
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid("certificate-authority-data", "is not a PEM certificate"));
    }
    let user_entry = match credential {
        Credential::ClientCert { cert_pem, key_pem } => UserEntry {
            client_certificate_data: Some(BASE64.encode(cert_pem)),
            client_key_data: Some(BASE64.encode(key_pem)),
            token: None,
        },
        Credential::Token(token) => {
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("token", "must be non-empty without whitespace"));
            }
            UserEntry {
                token: Some(token),
                ..UserEntry::default()
            }
        }
    };
    let context_name = format!("{user}@{cluster_name}");
    let config = Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: cluster_name.into(),
            cluster: ClusterEntry {
                server: server_url.into(),
                certificate_authority_data: BASE64.encode(ca_pem),
            },
        }],
        users: vec![NamedUser {
            name: user.into(),
            user: user_entry,
        }],
        contexts: vec![NamedContext {
            name: context_name.clone(),
            context: ContextEntry {
                cluster: cluster_name.into(),
                user: user.into(),
            },
        }],
        current_context: context_name,
        preferences: serde_json::Map::new(),
    };
    let mut text = serde_json::to_string_pretty(&config).map_err(|e| PkiError::Io {
        path: path.to_path_buf(),
        action: "serializing kubeconfig",
        source: io::Error::other(e),
    })?;
    text.push('\n');
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    write_atomic(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn sans_of(pem: &str) -> BTreeSet<San> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("DER");
        cert_sans(&x509).expect("SANs")
    }

    fn sans(list: &[&str]) -> BTreeSet<San> {
        list.iter().map(|s| San::parse(s).expect("SAN")).collect()
    }

    #[test]
    fn creates_ca_and_serving_cert_and_reloads_them_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("pki");
        let extra = vec!["10.96.0.1".to_string(), "api.Example.com".to_string()];
        let pki = Pki::load_or_create(&d, &extra).expect("create");

        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&d.join(SERVING_KEY_FILE)), 0o600);
        assert_eq!(mode(&d.join(CA_CERT_FILE)), 0o644);
        assert_eq!(pki.ca_path(), d.join(CA_CERT_FILE));
        assert_eq!(pki.ca_pem(), read(&d.join(CA_CERT_FILE)));

        let (_, ca) = x509_parser::parse_x509_certificate(pki.ca_der()).expect("CA DER");
        assert!(ca.is_ca());
        let cn: Vec<_> = ca
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(cn, ["rudder-ca"]);
        let years = (ca.validity().not_after.timestamp() - unix_now()) / (365 * SECS_PER_DAY);
        assert!((9..=10).contains(&years), "CA valid for ~10 years, got {years}");

        let serving_pem = read(&d.join(SERVING_CERT_FILE));
        let mut want = sans(DEFAULT_SANS);
        want.extend(sans(&["10.96.0.1", "api.example.com"]));
        assert_eq!(sans_of(&serving_pem), want);
        pki.ca
            .verify_serving_chain(&pki.serving_cert_der)
            .expect("serving cert chains to CA");

        let again = Pki::load_or_create(&d, &extra).expect("reload");
        assert_eq!(again.ca_pem(), pki.ca_pem());
        assert_eq!(read(&d.join(SERVING_CERT_FILE)), serving_pem, "no reissue needed");
        assert_eq!(again.serving_cert_der, pki.serving_cert_der);
        // SAN comparison ignores case, order and duplicates.
        let shuffled = vec!["API.example.com".into(), "10.96.0.1".into(), "localhost".into()];
        Pki::load_or_create(&d, &shuffled).expect("reload");
        assert_eq!(read(&d.join(SERVING_CERT_FILE)), serving_pem);
    }

    #[test]
    fn san_change_reissues_serving_cert_but_keeps_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let first = Pki::load_or_create(d, &[]).expect("create");
        let serving_before = read(&d.join(SERVING_CERT_FILE));
        let key_before = read(&d.join(SERVING_KEY_FILE));

        let second =
            Pki::load_or_create(d, &["192.168.1.10".into(), "[fd00::1]".into()]).expect("reload with new SANs");
        assert_eq!(second.ca_pem(), first.ca_pem());
        let serving_after = read(&d.join(SERVING_CERT_FILE));
        assert_ne!(serving_after, serving_before);
        assert_ne!(read(&d.join(SERVING_KEY_FILE)), key_before);
        assert_eq!(mode(&d.join(SERVING_KEY_FILE)), 0o600);
        let mut want = sans(DEFAULT_SANS);
        want.extend(sans(&["192.168.1.10", "fd00::1"]));
        assert_eq!(sans_of(&serving_after), want);
        second
            .ca
            .verify_serving_chain(&second.serving_cert_der)
            .expect("new serving cert chains to the kept CA");
    }

    #[test]
    fn reissues_serving_cert_that_is_expiring_mismatched_or_from_another_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let pki = Pki::load_or_create(d, &[]).expect("create");
        let cert_path = d.join(SERVING_CERT_FILE);
        let key_path = d.join(SERVING_KEY_FILE);

        // Expiring tomorrow: inside the 30-day renewal window.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = leaf_params(SERVING_COMMON_NAME, 1).expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = sans(DEFAULT_SANS)
            .iter()
            .map(San::to_rcgen)
            .collect::<Result<_, _>>()
            .expect("SANs");
        let short = params.signed_by(&key, &pki.ca.issuer).expect("sign");
        fs::write(&cert_path, short.pem()).expect("write");
        fs::write(&key_path, key.serialize_pem()).expect("write");
        Pki::load_or_create(d, &[]).expect("reload");
        assert_ne!(read(&cert_path), short.pem(), "expiring cert reissued");

        // A key that does not belong to the certificate.
        let good_cert = read(&cert_path);
        fs::write(&key_path, key.serialize_pem()).expect("write");
        Pki::load_or_create(d, &[]).expect("reload");
        assert_ne!(read(&cert_path), good_cert, "mismatched key repaired");

        // A serving pair from another CA with the right SANs.
        let other = tempfile::tempdir().expect("tempdir");
        Pki::load_or_create(other.path(), &[]).expect("other CA");
        let foreign_cert = read(&other.path().join(SERVING_CERT_FILE));
        fs::copy(other.path().join(SERVING_CERT_FILE), &cert_path).expect("copy");
        fs::copy(other.path().join(SERVING_KEY_FILE), &key_path).expect("copy");
        let reloaded = Pki::load_or_create(d, &[]).expect("reload");
        assert_ne!(read(&cert_path), foreign_cert, "foreign cert reissued");
        reloaded
            .ca
            .verify_serving_chain(&reloaded.serving_cert_der)
            .expect("chains");
    }

    #[test]
    fn refuses_half_a_ca_and_mismatched_ca_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        Pki::load_or_create(d, &[]).expect("create");
        let key = read(&d.join(CA_KEY_FILE));
        fs::remove_file(d.join(CA_KEY_FILE)).expect("rm");
        let err = Pki::load_or_create(d, &[]).expect_err("half a CA");
        assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");

        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        fs::write(d.join(CA_KEY_FILE), other.serialize_pem()).expect("write");
        let err = Pki::load_or_create(d, &[]).expect_err("wrong key");
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");

        fs::write(
            d.join(CA_KEY_FILE),
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = Pki::load_or_create(d, &[]).expect_err("SEC1 key");
        let msg = err.to_string();
        assert!(msg.contains("ca.key") && msg.contains("PKCS#8"), "{msg}");
        assert!(!msg.contains("AAAA"), "no key material in errors: {msg}");
        fs::write(d.join(CA_KEY_FILE), key).expect("restore");
        Pki::load_or_create(d, &[]).expect("whole again");
    }

    #[test]
    fn uses_an_operator_provided_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // A CA whose subject uses PrintableString and two attributes, like openssl makes.
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::OrganizationName,
            DnValue::PrintableString("Example Corp".try_into().expect("printable")),
        );
        params.distinguished_name.push(DnType::CommonName, "Example Root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::Sha512;
        let ca = params.self_signed(&ca_key).expect("CA");
        fs::write(d.join(CA_CERT_FILE), ca.pem()).expect("write");
        fs::write(d.join(CA_KEY_FILE), ca_key.serialize_pem()).expect("write");

        let pki = Pki::load_or_create(d, &[]).expect("load foreign CA");
        assert_eq!(pki.ca_pem(), ca.pem());
        pki.ca
            .verify_serving_chain(&pki.serving_cert_der)
            .expect("chains to the foreign CA");
        // AKI of issued certs must equal the CA's SKI (here SHA-512-derived).
        let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.der()).expect("DER");
        let (_, leaf) = x509_parser::parse_x509_certificate(&pki.serving_cert_der).expect("DER");
        let ski = ca_x509.iter_extensions().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
        let aki = leaf.iter_extensions().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|id| id.0.to_vec()),
            _ => None,
        });
        assert!(ski.is_some());
        assert_eq!(aki, ski);
        // Reloading keeps the serving cert: it verifies under the loaded CA.
        let serving = read(&d.join(SERVING_CERT_FILE));
        Pki::load_or_create(d, &[]).expect("reload");
        assert_eq!(read(&d.join(SERVING_CERT_FILE)), serving);
    }

    #[test]
    fn client_cert_has_cn_all_orgs_and_verifies_against_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("create");
        let (cert_pem, key_pem) = pki
            .issue_client_cert("jane", &["dev", "ops", "system:masters"])
            .expect("issue");
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("PEM");
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("DER");
        let cn: Vec<_> = x509
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        let orgs: Vec<_> = x509
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(cn, ["jane"]);
        assert_eq!(orgs, ["dev", "ops", "system:masters"]);
        let key = KeyPair::from_pem(&key_pem).expect("key");
        assert_eq!(key.subject_public_key_info(), x509.public_key().raw);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(pki.ca.roots().expect("roots"), provider)
            .build()
            .expect("verifier");
        verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .expect("re-signed client cert verifies");

        let (other_pem, _) = pki.issue_client_cert("x", &[]).expect("no orgs");
        let other = CertificateDer::from_pem_slice(other_pem.as_bytes()).expect("PEM");
        verifier
            .verify_client_cert(&other, &[], UnixTime::now())
            .expect("verifies");
        assert!(pki.issue_client_cert("", &["g"]).is_err());
        assert!(pki.issue_client_cert("u", &[""]).is_err());
    }

    #[test]
    fn server_config_offers_h2_and_http1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("create");
        let config = pki.server_config().expect("config");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn rejects_bad_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "has space", "under:score", "a..b", "ünïcode"] {
            let err = Pki::load_or_create(dir.path(), &[bad.to_string()]).expect_err(bad);
            assert!(matches!(err, PkiError::InvalidSan { .. }), "{bad}: {err}");
        }
        assert_eq!(
            San::parse("*.Example.com.").expect("wildcard"),
            San::Dns("*.example.com".into())
        );
        assert_eq!(San::parse("[::1]").expect("v6"), San::Ip("::1".parse().expect("ip")));
    }

    #[test]
    fn pki_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pki>();
        assert_send_sync::<PkiError>();
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn kubeconfig_round_trips_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(&dir.path().join("pki"), &[]).expect("create");
        let (cert_pem, key_pem) = pki
            .issue_client_cert("rudder-admin", &["system:masters"])
            .expect("issue");
        let path = dir.path().join("home/.kube/config");
        write_kubeconfig(
            &path,
            "https://127.0.0.1:6443",
            pki.ca_pem(),
            "rudder",
            "rudder-admin",
            Credential::ClientCert {
                cert_pem: cert_pem.clone(),
                key_pem: key_pem.clone(),
            },
        )
        .expect("write");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("home/.kube")), 0o700);

        let text = read(&path);
        let parsed: Kubeconfig = serde_saphyr::from_str(&text).expect("YAML parse");
        assert_eq!(parsed.api_version, "v1");
        assert_eq!(parsed.kind, "Config");
        assert_eq!(parsed.current_context, "rudder-admin@rudder");
        assert_eq!(parsed.clusters[0].name, "rudder");
        assert_eq!(parsed.clusters[0].cluster.server, "https://127.0.0.1:6443");
        let ca = BASE64
            .decode(&parsed.clusters[0].cluster.certificate_authority_data)
            .expect("b64");
        assert_eq!(ca, pki.ca_pem().as_bytes());
        let user = &parsed.users[0];
        assert_eq!(user.name, "rudder-admin");
        let cert = BASE64
            .decode(user.user.client_certificate_data.as_deref().expect("cert"))
            .expect("b64");
        let key = BASE64
            .decode(user.user.client_key_data.as_deref().expect("key"))
            .expect("b64");
        assert_eq!((cert, key), (cert_pem.into_bytes(), key_pem.into_bytes()));
        assert_eq!(user.user.token, None);
        assert_eq!(parsed.contexts[0].context.cluster, "rudder");
        assert_eq!(parsed.contexts[0].context.user, "rudder-admin");

        // Values a YAML 1.1 reader would re-type survive as strings.
        write_kubeconfig(
            &path,
            "https://[::1]:6443",
            pki.ca_pem(),
            "on",
            "0123",
            Credential::Token("12345".into()),
        )
        .expect("overwrite");
        assert_eq!(mode(&path), 0o600);
        let parsed: Kubeconfig = serde_saphyr::from_str(&read(&path)).expect("YAML parse");
        assert_eq!(parsed.clusters[0].name, "on");
        assert_eq!(parsed.users[0].name, "0123");
        assert_eq!(parsed.users[0].user.token.as_deref(), Some("12345"));
        assert_eq!(parsed.users[0].user.client_certificate_data, None);
        assert_eq!(parsed.current_context, "0123@on");

        let err = write_kubeconfig(&path, "http://x", pki.ca_pem(), "c", "u", Credential::Token("t".into()))
            .expect_err("plain http");
        assert!(err.to_string().contains("server"), "{err}");
    }
}
