//! The CA and serving certificate through `Pki`'s public API, against real files.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _,
};
use time::{Month, OffsetDateTime};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, UnixTime, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use x509_parser::extensions::ParsedExtension;

use super::params::leaf_params;
use super::params::tests::utc;
use super::san::{San, cert_sans};
use super::serving::SERVING_COMMON_NAME;
use super::*;

pub(super) fn mode(path: &Path) -> u32 {
    fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
}

pub(super) fn read(path: &Path) -> String {
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
    let years = (ca.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days() / 365;
    assert!((9..=10).contains(&years), "CA valid for ~10 years, got {years}");

    let serving_pem = read(&d.join(SERVING_CERT_FILE));
    let mut want = sans(DEFAULT_SANS);
    want.extend(sans(&["10.96.0.1", "api.example.com"]));
    assert_eq!(sans_of(&serving_pem), want);
    pki.ca
        .verify_serving_chain(&pki.serving_cert_der, OffsetDateTime::now_utc())
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

    let second = Pki::load_or_create(d, &["192.168.1.10".into(), "[fd00::1]".into()]).expect("reload with new SANs");
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
        .verify_serving_chain(&second.serving_cert_der, OffsetDateTime::now_utc())
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
    let mut params = leaf_params(SERVING_COMMON_NAME, OffsetDateTime::now_utc(), 1).expect("params");
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
        .verify_serving_chain(&reloaded.serving_cert_der, OffsetDateTime::now_utc())
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
        .verify_serving_chain(&pki.serving_cert_der, OffsetDateTime::now_utc())
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

/// Runs openssl, a second X.509 implementation, and returns its stdout; fails the test with
/// openssl's stderr if it refuses.
fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (installed by `cargo xtask setup`)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "openssl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// The encoded validity bound as it sits in the DER: tag, length, then the digits.
fn der_time(tag: u8, digits: &str) -> Vec<u8> {
    let mut out = vec![tag, u8::try_from(digits.len()).expect("short")];
    out.extend_from_slice(digits.as_bytes());
    out
}
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A cluster created with the clock at 2049-06-01 12:34:56: X.509 writes dates before 2050 as
/// UTCTime (two-digit years) and from 2050 on as GeneralizedTime, so every certificate's
/// validity starts in one encoding and ends in the other. openssl must read the dates we
/// meant and accept the chain at that time, and a restart at that time keeps the serving
/// certificate (our own expiry and chain checks read GeneralizedTime too).
#[test]
fn validity_across_2050_switches_to_generalized_time_and_openssl_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let now = utc(2049, Month::June, 1, (12, 34, 56));
    let pki = Pki::load_or_create_at(d, &[], now).expect("create in 2049");
    let (client_pem, _) = pki
        .issue_client_cert_at("jane", &["dev", "ops"], now)
        .expect("client cert in 2049");
    let client_path = d.join("client.crt");
    fs::write(&client_path, &client_pem).expect("write");
    let client_der = pem::parse(&client_pem).expect("PEM").into_contents();

    let not_before = der_time(UTC_TIME, "490531123456Z");
    let ca_der = pki.ca_der().to_vec();
    assert!(contains(&ca_der, &not_before), "CA notBefore as UTCTime");
    assert!(
        contains(&ca_der, &der_time(GENERALIZED_TIME, "20590530123456Z")),
        "CA notAfter (+3650 days) as GeneralizedTime"
    );
    for (what, der) in [("serving", pki.serving_cert_der.to_vec()), ("client", client_der)] {
        assert!(contains(&der, &not_before), "{what} notBefore as UTCTime");
        assert!(
            contains(&der, &der_time(GENERALIZED_TIME, "20500601123456Z")),
            "{what} notAfter as GeneralizedTime"
        );
    }

    for (path, not_after) in [
        (d.join(CA_CERT_FILE), "May 30 12:34:56 2059 GMT"),
        (d.join(SERVING_CERT_FILE), "Jun  1 12:34:56 2050 GMT"),
        (client_path.clone(), "Jun  1 12:34:56 2050 GMT"),
    ] {
        let dates = openssl(&["x509", "-noout", "-startdate", "-enddate", "-in", path_str(&path)]);
        assert_eq!(
            dates,
            format!("notBefore=May 31 12:34:56 2049 GMT\nnotAfter={not_after}\n"),
            "{}",
            path.display()
        );
    }
    let attime = (now + time::Duration::HOUR).unix_timestamp().to_string();
    let ca = d.join(CA_CERT_FILE);
    for (purpose, path) in [("sslserver", d.join(SERVING_CERT_FILE)), ("sslclient", client_path)] {
        let verdict = openssl(&[
            "verify",
            "-attime",
            &attime,
            "-purpose",
            purpose,
            "-CAfile",
            path_str(&ca),
            path_str(&path),
        ]);
        assert!(verdict.trim_end().ends_with(": OK"), "{verdict}");
    }

    let serving = read(&d.join(SERVING_CERT_FILE));
    Pki::load_or_create_at(d, &[], now + time::Duration::DAY).expect("restart in 2049");
    assert_eq!(read(&d.join(SERVING_CERT_FILE)), serving, "still fit: not reissued");
    // Past 2050-05-02 the serving certificate is within 30 days of expiry and is renewed;
    // the CA, valid to 2059, is kept.
    let renewed = Pki::load_or_create_at(d, &[], utc(2050, Month::May, 10, (0, 0, 0))).expect("restart in 2050");
    assert_ne!(read(&d.join(SERVING_CERT_FILE)), serving, "renewed near expiry");
    assert_eq!(renewed.ca_pem(), pki.ca_pem());
}

/// A cluster created on a leap day: the dates openssl reads are the calendar's, one day
/// back and 365 / 3650 days ahead.
#[test]
fn validity_from_a_leap_day_is_read_back_by_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let now = utc(2028, Month::February, 29, (23, 59, 59));
    let pki = Pki::load_or_create_at(d, &[], now).expect("create on a leap day");
    let (client_pem, _) = pki.issue_client_cert_at("u", &[], now).expect("client cert");
    let client_path = d.join("client.crt");
    fs::write(&client_path, client_pem).expect("write");
    for (path, not_after) in [
        (d.join(CA_CERT_FILE), "Feb 26 23:59:59 2038 GMT"),
        (d.join(SERVING_CERT_FILE), "Feb 28 23:59:59 2029 GMT"),
        (client_path, "Feb 28 23:59:59 2029 GMT"),
    ] {
        let dates = openssl(&["x509", "-noout", "-startdate", "-enddate", "-in", path_str(&path)]);
        assert_eq!(
            dates,
            format!("notBefore=Feb 28 23:59:59 2028 GMT\nnotAfter={not_after}\n"),
            "{}",
            path.display()
        );
    }
}

/// The PEM we write for client certificates: 64-column base64 lines with LF endings between
/// the BEGIN and END lines (RFC 7468), parsed back to the same DER by the pem crate and
/// rustls, read by openssl with every O kept, and verified by openssl against the CA.
#[test]
fn client_cert_pem_is_wrapped_at_64_columns_and_openssl_verifies_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = Pki::load_or_create(d, &[]).expect("create");
    let (cert_pem, _) = pki
        .issue_client_cert("jane", &["dev", "ops", "system:masters"])
        .expect("issue");

    assert!(!cert_pem.contains('\r'), "LF line endings only");
    let lines: Vec<&str> = cert_pem.split_terminator('\n').collect();
    assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
    assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
    assert!(cert_pem.ends_with("-----END CERTIFICATE-----\n"));
    let body = &lines[1..lines.len() - 1];
    let (last, full) = body.split_last().expect("a body");
    assert!(
        full.iter().all(|l| l.len() == 64),
        "every line but the last is 64 columns: {body:?}"
    );
    assert!((1..=64).contains(&last.len()));
    let der = pem::parse(&cert_pem).expect("pem crate parses it").into_contents();
    assert_eq!(
        CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .expect("rustls parses it")
            .as_ref(),
        der.as_slice()
    );
    // Long enough that wrapping was exercised (a P-256 certificate is ~500 bytes of DER).
    assert!(full.len() >= 5, "{} full lines", full.len());

    let path = d.join("jane.crt");
    fs::write(&path, &cert_pem).expect("write");
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        path_str(&path),
    ]);
    assert_eq!(subject, "subject=O=system:masters,O=ops,O=dev,CN=jane\n");
    let der_path = d.join("jane.der");
    openssl(&[
        "x509",
        "-in",
        path_str(&path),
        "-outform",
        "DER",
        "-out",
        path_str(&der_path),
    ]);
    assert_eq!(fs::read(&der_path).expect("read"), der, "openssl decodes the same DER");
    let verdict = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        path_str(&d.join(CA_CERT_FILE)),
        path_str(&path),
    ]);
    assert_eq!(verdict, format!("{}: OK\n", path.display()));
}
