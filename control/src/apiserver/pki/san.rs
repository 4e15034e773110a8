//! Subject alternative names: parsed from what operators write, compared as clients do.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rcgen::SanType;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{DEFAULT_SANS, PkiError};

/// A SAN normalized for comparison: DNS names are case-insensitive, IPs compare by value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    pub(super) fn parse(raw: &str) -> Result<San, PkiError> {
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

    pub(super) fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(name) => SanType::DnsName(name.as_str().try_into().map_err(|_| PkiError::InvalidSan {
                san: name.clone(),
                reason: "is not ASCII",
            })?),
        })
    }
}

pub(super) fn serving_sans(extra: &[String]) -> Result<BTreeSet<San>, PkiError> {
    DEFAULT_SANS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(San::parse)
        .collect()
}

/// `None` if the certificate carries a SAN kind we never issue, which forces a reissue.
pub(super) fn cert_sans(x509: &X509Certificate<'_>) -> Option<BTreeSet<San>> {
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
