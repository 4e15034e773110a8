//! PKCS#10 certificate requests as `spec.request` carries them: PEM decoding, parsing with
//! x509-parser, and the proof of possession (the request's signature checked with its own
//! public key through ring, the algorithms Go's x509 accepts for CSRs minus the legacy ones).

use std::net::IpAddr;

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::{
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
    },
    prelude::FromDer,
};

/// Why a request is not usable; the text follows `spec.request: Invalid value: ...`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("PEM block type must be CERTIFICATE REQUEST")]
    NotPem,
    #[error("the CERTIFICATE REQUEST does not parse: {0}")]
    Malformed(String),
    #[error("unsupported public key algorithm (ECDSA P-256/P-384, RSA or Ed25519 only)")]
    UnsupportedKey,
    #[error("unsupported signature algorithm")]
    UnsupportedSignature,
    #[error("the signature does not verify with the request's public key")]
    BadSignature,
}

/// The key types we verify and certify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

/// What the signers and the approver need from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    /// The subject as encoded in the request, copied into the certificate unchanged.
    pub subject_der: Vec<u8>,
    pub key_type: KeyType,
    /// The subjectPublicKey BIT STRING's bytes (an EC point, an RSAPublicKey, 32 Ed25519 bytes).
    pub public_key: Vec<u8>,
}

/// Decodes the first PEM block of `bytes` (Go's `pem.Decode`: later blocks are ignored),
/// which must be a `CERTIFICATE REQUEST`, parses it and checks its signature.
pub fn parse_pem(bytes: &[u8]) -> Result<CertificateRequest, RequestError> {
    let block = pem::parse(bytes).map_err(|_| RequestError::NotPem)?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(RequestError::NotPem);
    }
    parse_der(block.contents())
}

pub fn parse_der(der: &[u8]) -> Result<CertificateRequest, RequestError> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let key_type = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or(RequestError::UnsupportedKey)?;
        if curve == OID_EC_P256 {
            KeyType::EcdsaP256
        } else if curve == OID_NIST_EC_P384 {
            KeyType::EcdsaP384
        } else {
            return Err(RequestError::UnsupportedKey);
        }
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        KeyType::Rsa
    } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
        KeyType::Ed25519
    } else {
        return Err(RequestError::UnsupportedKey);
    };
    let public_key = spki.subject_public_key.data.to_vec();
    let sig = &csr.signature_algorithm.algorithm;
    let algorithm: &dyn VerificationAlgorithm = match key_type {
        KeyType::EcdsaP256 if *sig == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyType::EcdsaP256 if *sig == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
        KeyType::EcdsaP384 if *sig == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
        KeyType::EcdsaP384 if *sig == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyType::Rsa if *sig == OID_PKCS1_SHA256WITHRSA => &signature::RSA_PKCS1_2048_8192_SHA256,
        KeyType::Rsa if *sig == OID_PKCS1_SHA384WITHRSA => &signature::RSA_PKCS1_2048_8192_SHA384,
        KeyType::Rsa if *sig == OID_PKCS1_SHA512WITHRSA => &signature::RSA_PKCS1_2048_8192_SHA512,
        KeyType::Ed25519 if *sig == OID_SIG_ED25519 => &signature::ED25519,
        _ => return Err(RequestError::UnsupportedSignature),
    };
    UnparsedPublicKey::new(algorithm, &public_key)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| RequestError::BadSignature)?;

    let text = |r: Result<&str, _>| {
        r.map(str::to_owned)
            .map_err(|_| RequestError::Malformed("subject text".into()))
    };
    let common_name = match info.subject.iter_common_name().next() {
        Some(cn) => text(cn.as_str())?,
        None => String::new(),
    };
    let organizations = info
        .subject
        .iter_organization()
        .map(|o| text(o.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = CertificateRequest {
        common_name,
        organizations,
        dns_names: vec![],
        ip_addresses: vec![],
        emails: vec![],
        uris: vec![],
        subject_der: info.subject.as_raw().to_vec(),
        key_type,
        public_key,
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => request.dns_names.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => request.emails.push((*e).to_owned()),
                GeneralName::URI(u) => request.uris.push((*u).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => request
                        .ip_addresses
                        .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => request
                        .ip_addresses
                        .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {
                        return Err(RequestError::Malformed(
                            "an IP address SAN is neither 4 nor 16 bytes".into(),
                        ));
                    }
                },
                _ => {}
            }
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request made by rcgen, as a client library would make one.
    pub(crate) fn make_request(cn: &str, orgs: &[&str], sans: &[&str]) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            // rcgen keeps one value per type; a single O is enough here.
            params.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        let csr = params.serialize_request(&key).expect("request");
        (csr.pem().expect("pem"), key)
    }

    #[test]
    fn a_request_parses_and_its_signature_verifies() {
        let (pem, _) = make_request("system:node:n1", &["system:nodes"], &["n1.example", "10.0.0.7"]);
        let r = parse_pem(pem.as_bytes()).expect("parses");
        assert_eq!(r.common_name, "system:node:n1");
        assert_eq!(r.organizations, vec!["system:nodes"]);
        assert_eq!(r.dns_names, vec!["n1.example"]);
        assert_eq!(r.ip_addresses, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.key_type, KeyType::EcdsaP256);
    }

    #[test]
    fn garbage_wrong_blocks_and_tampering_are_refused() {
        assert_eq!(parse_pem(b"hello"), Err(RequestError::NotPem));
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert_eq!(parse_pem(cert.as_bytes()), Err(RequestError::NotPem));
        let junk = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![1, 2, 3]));
        assert!(matches!(parse_pem(junk.as_bytes()), Err(RequestError::Malformed(_))));
        let (pem, _) = make_request("alice", &[], &[]);
        let mut der = pem::parse(pem.as_bytes()).expect("pem").into_contents();
        // Flip a byte inside the CN "alice": still parses, no longer matches its signature.
        let at = der.windows(5).position(|w| w == b"alice").expect("CN in DER");
        der[at] = b'b';
        assert_eq!(parse_der(&der), Err(RequestError::BadSignature));
    }
}
