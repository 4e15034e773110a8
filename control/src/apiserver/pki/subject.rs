//! Client certificate subjects with several `O=` (one per Kubernetes group), which rcgen
//! cannot express: it keeps one value per attribute type. We swap our own subject into the
//! certificate rcgen built and re-sign it.

use pem::{EncodeConfig, LineEnding, Pem};
use rcgen::{Issuer, KeyPair, SigningKey as _};

use super::PkiError;
use super::der::{der_read, der_tlv};

// DER attribute type OIDs (encoded) for the subject names we write ourselves.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// `CN=<cn>, O=<org>...` as UTF8Strings, one attribute per RDN, CN first as Kubernetes and
/// openssl write it.
pub(super) fn encode_subject(common_name: &str, organizations: &[&str]) -> Vec<u8> {
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

pub(super) fn replace_subject_and_resign(
    cert: &[u8],
    subject: &[u8],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Vec<u8>, PkiError> {
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

/// PEM as rcgen writes it (64-column lines, LF endings), so every certificate we hand out
/// looks the same.
pub(super) fn certificate_pem(der: Vec<u8>) -> String {
    pem::encode_config(
        &Pem::new("CERTIFICATE", der),
        EncodeConfig::new().set_line_ending(LineEnding::LF),
    )
}
