//! The cluster CA: created on first start, or an operator's own loaded as is.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _,
};
use time::OffsetDateTime;
use tokio_rustls::rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject as _},
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use super::files::write_atomic;
use super::params::{leaf_params, random_serial, set_validity};
use super::{CA_CERT_FILE, CA_COMMON_NAME, PkiError};

const CA_VALIDITY_DAYS: i64 = 3650;

/// The CA as loaded: what is needed to sign, and to check what was signed.
pub(super) struct Ca {
    pub(super) dir: PathBuf,
    pub(super) pem: String,
    pub(super) der: CertificateDer<'static>,
    pub(super) issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub(super) fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).map_err(|e| PkiError::InvalidCertificate {
            path: self.dir.join(CA_CERT_FILE),
            reason: format!("not usable as a trust anchor: {e}"),
        })?;
        Ok(Arc::new(roots))
    }
}

pub(super) fn create_ca(
    cert_path: &Path,
    key_path: &Path,
    now: OffsetDateTime,
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
    set_validity(&mut params, now, CA_VALIDITY_DAYS)?;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(PkiError::generate("CA certificate"))?;
    let pem = cert.pem();
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, pem.as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "created a new cluster CA");
    Ok((pem, cert.der().clone(), Issuer::new(params, key)))
}

pub(super) fn load_ca(
    cert_path: &Path,
    key_path: &Path,
    now: OffsetDateTime,
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
    let not_after = x509.validity().not_after;
    if not_after.to_datetime() <= now {
        return Err(PkiError::CaExpired {
            path: cert_path.to_path_buf(),
            not_after: not_after.timestamp(),
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
    let probe = leaf_params("probe", now, 1)?
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
pub(super) fn issuer_from_ca(x509: &X509Certificate<'_>, key: KeyPair) -> Result<Issuer<'static, KeyPair>, String> {
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

pub(super) fn dn_from_x509(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
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
