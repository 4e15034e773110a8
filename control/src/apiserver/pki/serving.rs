//! The API server's own serving certificate: reused while it fits, reissued when its SANs,
//! issuer or key no longer do, or when it nears expiry.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use rcgen::{ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};
use time::{Duration, OffsetDateTime};
use tokio_rustls::rustls::{
    self,
    client::WebPkiServerVerifier,
    client::danger::ServerCertVerifier as _,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};

use super::ca::Ca;
use super::files::{exists, write_atomic};
use super::params::{LEAF_VALIDITY_DAYS, leaf_params};
use super::san::{San, cert_sans};
use super::{PkiError, SERVING_CERT_FILE, SERVING_KEY_FILE};

/// kubeadm's choice too: the CN has no meaning to clients, which check SANs only.
pub(super) const SERVING_COMMON_NAME: &str = "kube-apiserver";
/// A serving certificate this close to expiry is reissued at startup, so a server restarted
/// at least monthly never serves an expired certificate.
const RENEW_BEFORE: Duration = Duration::days(30);

impl Ca {
    pub(super) fn load_or_issue_serving(
        &self,
        wanted_sans: &BTreeSet<San>,
        now: OffsetDateTime,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let cert_path = self.dir.join(SERVING_CERT_FILE);
        let key_path = self.dir.join(SERVING_KEY_FILE);
        if exists(&cert_path)? && exists(&key_path)? {
            match self.check_serving(&cert_path, &key_path, wanted_sans, now)? {
                Ok(pair) => return Ok(pair),
                Err(why) => tracing::info!(
                    cert = %cert_path.display(),
                    "reissuing the API server certificate: {why}"
                ),
            }
        }

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::generate("serving key"))?;
        let mut params = leaf_params(SERVING_COMMON_NAME, now, LEAF_VALIDITY_DAYS)?;
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
        now: OffsetDateTime,
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
        if x509.validity().not_after.to_datetime() < now + RENEW_BEFORE {
            return Ok(Err("certificate expires within 30 days".into()));
        }
        match cert_sans(&x509) {
            Some(sans) if sans == *wanted_sans => {}
            _ => return Ok(Err("subject alternative names changed".into())),
        }
        if let Err(e) = self.verify_serving_chain(&cert_der, now) {
            return Ok(Err(format!("not valid under the current CA: {e}")));
        }
        Ok(Ok((
            cert_der.into_owned(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )))
    }

    /// Runs the same webpki check a client would, so a certificate from a replaced CA or
    /// with the wrong EKU is reissued rather than served.
    pub(super) fn verify_serving_chain(&self, cert: &CertificateDer<'_>, now: OffsetDateTime) -> Result<(), String> {
        // A clock before 1970 fails the check, and the certificate is reissued.
        let now =
            u64::try_from(now.unix_timestamp()).map_err(|_| format!("the system clock ({now}) is before 1970"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.roots().map_err(|e| e.to_string())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(
                cert,
                &[],
                &name,
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
