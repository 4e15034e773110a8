//! What every certificate we issue shares: the validity window, a random serial, and the
//! leaf profile.

use std::ops::RangeInclusive;

use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose, SerialNumber};
use ring::rand::{SecureRandom as _, SystemRandom};
use time::{Duration, OffsetDateTime};

use super::PkiError;

/// Leaf certificates are short-lived compared to the CA so a leaked admin or node credential
/// stops working on its own; the serving certificate renews itself on restart.
pub(super) const LEAF_VALIDITY_DAYS: i64 = 365;

/// Years a validity bound may fall in. rcgen writes 1950..=2049 as UTCTime and later years
/// as GeneralizedTime, as RFC 5280 requires; GeneralizedTime has four year digits, and a
/// clock before 1950 is wrong rather than a date to certify.
const ENCODABLE_YEARS: RangeInclusive<i32> = 1950..=9999;

pub(super) fn leaf_params(common_name: &str, now: OffsetDateTime, days: i64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Python 3.13's default X509_STRICT verification (and RFC 5280) want an AKI on every
    // certificate that is not self-signed.
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, days)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Valid from a day before `now`, so clients whose clock lags accept a fresh certificate,
/// until exactly `days` days after `now` (to the second: rcgen drops the fraction).
pub(super) fn set_validity(params: &mut CertificateParams, now: OffsetDateTime, days: i64) -> Result<(), PkiError> {
    let in_range = |t: Option<OffsetDateTime>| t.filter(|t| ENCODABLE_YEARS.contains(&t.year()));
    let (Some(not_before), Some(not_after)) = (
        in_range(now.checked_sub(Duration::DAY)),
        in_range(now.checked_add(Duration::days(days))),
    ) else {
        return Err(PkiError::Generate {
            what: "certificate validity",
            reason: format!("the system clock ({now}) is out of range"),
        });
    };
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(())
}

/// Random positive 16-byte serials: two certificates for the same key (a reissued client
/// cert) must still differ, which rcgen's key-derived default would not give.
pub(super) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Generate {
        what: "certificate serial number",
        reason: "the system random number generator failed".into(),
    })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keeps the DER integer exactly 16 bytes long
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use time::{Date, Month, Time};

    pub(in super::super) fn utc(year: i32, month: Month, day: u8, hms: (u8, u8, u8)) -> OffsetDateTime {
        let date = Date::from_calendar_date(year, month, day).expect("date");
        let time = Time::from_hms(hms.0, hms.1, hms.2).expect("time");
        date.with_time(time).assume_utc()
    }

    fn window(now: OffsetDateTime, days: i64) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
        let mut params = CertificateParams::default();
        set_validity(&mut params, now, days)?;
        Ok((params.not_before, params.not_after))
    }

    #[test]
    fn validity_is_a_day_back_to_exactly_the_given_days_ahead() {
        // Not midnight: the bounds keep the time of day (before, they were cut to midnight,
        // which made a "365-day" certificate up to a day short).
        let now = utc(2030, Month::July, 15, (18, 30, 5));
        assert_eq!(
            window(now, 365).expect("window"),
            (
                utc(2030, Month::July, 14, (18, 30, 5)),
                utc(2031, Month::July, 15, (18, 30, 5))
            )
        );
        // Across leap days: 2028-02-29 plus 365 days is 2029-02-28; plus 3650 days crosses the
        // leap days of 2032 and 2036 and lands on 2038-02-26.
        let leap = utc(2028, Month::February, 29, (0, 0, 0));
        let (not_before, not_after) = window(leap, 365).expect("window");
        assert_eq!(not_before, utc(2028, Month::February, 28, (0, 0, 0)));
        assert_eq!(not_after, utc(2029, Month::February, 28, (0, 0, 0)));
        assert_eq!(
            window(leap, 3650).expect("window").1,
            utc(2038, Month::February, 26, (0, 0, 0))
        );
        // The day before 2028-03-01 is the leap day itself.
        assert_eq!(
            window(utc(2028, Month::March, 1, (6, 0, 0)), 1).expect("window").0,
            utc(2028, Month::February, 29, (6, 0, 0))
        );
    }

    #[test]
    fn a_clock_outside_what_x509_can_hold_is_an_error_not_a_panic() {
        for now in [
            utc(9999, Month::June, 1, (0, 0, 0)),
            utc(1949, Month::December, 31, (0, 0, 0)),
            utc(1950, Month::January, 1, (12, 0, 0)),
        ] {
            let err = window(now, 365).expect_err("out of range");
            assert!(err.to_string().contains("system clock"), "{err}");
        }
        assert!(window(utc(1950, Month::January, 2, (12, 0, 0)), 365).is_ok());
        assert!(window(utc(9998, Month::December, 1, (0, 0, 0)), 30).is_ok());
    }
}
