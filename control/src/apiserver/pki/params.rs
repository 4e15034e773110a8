//! What every certificate we issue shares: the validity window, a random serial, and the
//! leaf profile.

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose, SerialNumber};
use tokio_rustls::rustls;

use super::PkiError;

/// Leaf certificates are short-lived compared to the CA so a leaked admin or node credential
/// stops working on its own; the serving certificate renews itself on restart.
pub(super) const LEAF_VALIDITY_DAYS: i64 = 365;
pub(super) const SECS_PER_DAY: i64 = 86_400;

pub(super) fn leaf_params(common_name: &str, validity_days: i64) -> Result<CertificateParams, PkiError> {
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
pub(super) fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), PkiError> {
    let today = unix_now().div_euclid(SECS_PER_DAY);
    let (y, m, d) = checked_date(today - 1)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = checked_date(today + days)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(())
}

/// `date_time_ymd` panics outside the time crate's range; X.509 dates must also fit 4 digits.
pub(super) fn checked_date(days: i64) -> Result<(i32, u8, u8), PkiError> {
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
pub(super) fn civil_from_days(days: i64) -> (i64, u8, u8) {
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

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Random positive 16-byte serials: two certificates for the same key (a reissued client
/// cert) must still differ, which rcgen's key-derived default would not give.
pub(super) fn random_serial() -> Result<SerialNumber, PkiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
