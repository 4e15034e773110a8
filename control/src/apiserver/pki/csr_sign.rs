//! Certificates for CertificateSigningRequests: the request's own subject and public key,
//! the SANs it asked for, the usages the CSR object names, and a validity the caller chose,
//! signed by the cluster CA. What a signer allows is decided before this (the CSR signers in
//! `apiserver::certificates::signers`); this only builds the certificate.

use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm};
use time::{Duration, OffsetDateTime};

use super::{Pki, PkiError, params, subject};
use crate::apiserver::certificates::request::{CertificateRequest, KeyType};

/// Upstream's signer backdates every certificate so clients whose clock lags accept it.
const BACKDATE: Duration = Duration::minutes(5);

/// The requester's public key as rcgen writes it into the certificate.
struct RequestKey<'a>(&'a CertificateRequest);

impl PublicKeyData for RequestKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.0.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        // Only the key's algorithm identifier is written from this, never a signature.
        match self.0.key_type {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa => &rcgen::PKCS_RSA_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A usage string of the CSR API as key usage or extended key usage; None for ones we do
/// not write (the signers refuse them before we get here).
fn usage(name: &str) -> Option<Result<KeyUsagePurpose, ExtendedKeyUsagePurpose>> {
    Some(match name {
        "digital signature" | "signing" => Ok(KeyUsagePurpose::DigitalSignature),
        "content commitment" => Ok(KeyUsagePurpose::ContentCommitment),
        "key encipherment" => Ok(KeyUsagePurpose::KeyEncipherment),
        "key agreement" => Ok(KeyUsagePurpose::KeyAgreement),
        "data encipherment" => Ok(KeyUsagePurpose::DataEncipherment),
        "server auth" => Err(ExtendedKeyUsagePurpose::ServerAuth),
        "client auth" => Err(ExtendedKeyUsagePurpose::ClientAuth),
        "code signing" => Err(ExtendedKeyUsagePurpose::CodeSigning),
        "email protection" | "s/mime" => Err(ExtendedKeyUsagePurpose::EmailProtection),
        "timestamping" => Err(ExtendedKeyUsagePurpose::TimeStamping),
        "ocsp signing" => Err(ExtendedKeyUsagePurpose::OcspSigning),
        "any" => Err(ExtendedKeyUsagePurpose::Any),
        _ => return None,
    })
}

impl Pki {
    /// Issues the certificate `request` asks for, valid from five minutes before now for
    /// `ttl` (never past the CA's own expiry). Returns the certificate as PEM.
    pub fn sign_request(
        &self,
        request: &CertificateRequest,
        usages: &[String],
        ttl: Duration,
    ) -> Result<String, PkiError> {
        self.sign_request_at(request, usages, ttl, OffsetDateTime::now_utc())
    }

    pub(super) fn sign_request_at(
        &self,
        request: &CertificateRequest,
        usages: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        // The subject is replaced by the request's own below; the CN only has to be valid.
        let mut params = params::leaf_params("csr", now, 1)?;
        params.not_before = now - BACKDATE;
        let ca_not_after = x509_parser::parse_x509_certificate(self.ca.der.as_ref())
            .ok()
            .and_then(|(_, c)| OffsetDateTime::from_unix_timestamp(c.validity().not_after.timestamp()).ok());
        let mut not_after = now + ttl;
        if let Some(limit) = ca_not_after
            && not_after > limit
        {
            not_after = limit;
        }
        params.not_after = not_after;
        params.key_usages.clear();
        for u in usages {
            match usage(u) {
                Some(Ok(ku)) if !params.key_usages.contains(&ku) => params.key_usages.push(ku),
                Some(Err(eku)) if !params.extended_key_usages.contains(&eku) => params.extended_key_usages.push(eku),
                _ => {}
            }
        }
        let mut sans = Vec::new();
        for d in &request.dns_names {
            sans.push(SanType::DnsName(
                d.as_str().try_into().map_err(PkiError::generate("a DNS SAN"))?,
            ));
        }
        for ip in &request.ip_addresses {
            sans.push(SanType::IpAddress(*ip));
        }
        for e in &request.emails {
            sans.push(SanType::Rfc822Name(
                e.as_str().try_into().map_err(PkiError::generate("an email SAN"))?,
            ));
        }
        for u in &request.uris {
            sans.push(SanType::URI(
                u.as_str().try_into().map_err(PkiError::generate("a URI SAN"))?,
            ));
        }
        params.subject_alt_names = sans;
        let cert = params
            .signed_by(&RequestKey(request), &self.ca.issuer)
            .map_err(PkiError::generate("certificate for a CertificateSigningRequest"))?;
        let der = subject::replace_subject_and_resign(cert.der(), &request.subject_der, &self.ca.issuer)?;
        Ok(subject::certificate_pem(der))
    }
}
