//! Address families, and IP and CIDR parsing as the API server means them. CIDRs are
//! `ipnet::IpNet`, always with host bits cleared.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

pub use ipnet::IpNet;

/// An IP family. Dual-stack Services carry one ClusterIP per family, and every frontend
/// only ever reaches endpoints of its own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Why an IP address or CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{value:?} is not an IP address")]
    Ip { value: String },
    #[error("{value:?} is not a CIDR")]
    Cidr { value: String },
}

/// Parses an IP address the way the API server accepted it.
///
/// Objects written before Kubernetes 1.30 may hold IPv4 addresses with leading zeros
/// ("010.0.0.1"), which the API server read as decimal. Rust's parser refuses them, so this
/// accepts them as decimal too; otherwise an old Service would vanish from the dataplane.
pub fn parse_ip(value: &str) -> Result<IpAddr, AddrError> {
    if let Ok(addr) = value.parse::<IpAddr>() {
        return Ok(addr);
    }
    parse_ipv4_leading_zeros(value)
        .map(IpAddr::V4)
        .ok_or_else(|| AddrError::Ip {
            value: value.to_owned(),
        })
}

fn parse_ipv4_leading_zeros(value: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = value.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Parses a CIDR the way the API server accepted it: surrounding whitespace ignored
/// (`loadBalancerSourceRanges` validation has always let it through), IPv4 octets with
/// leading zeros read as decimal (see [`parse_ip`]), and host bits cleared, as the API
/// server's sloppy parser does ("10.1.2.3/16" is 10.1.0.0/16).
pub fn parse_cidr(value: &str) -> Result<IpNet, AddrError> {
    let err = || AddrError::Cidr {
        value: value.to_owned(),
    };
    let (addr, len) = value.trim().split_once('/').ok_or_else(err)?;
    let addr = parse_ip(addr).map_err(|_| err())?;
    let len = len.parse::<u8>().map_err(|_| err())?;
    IpNet::new(addr, len).map(|net| net.trunc()).map_err(|_| err())
}

impl IpFamily {
    /// The family of a CIDR's addresses.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_with_leading_zeros_reads_as_decimal() {
        assert_eq!(parse_ip("010.000.0.01"), Ok("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip("fd00::1"), Ok("fd00::1".parse().unwrap()));
        assert!(parse_ip("10.0.0").is_err());
        assert!(parse_ip("256.0.0.1").is_err());
        assert!(parse_ip("none").is_err());
    }

    #[test]
    fn cidr_parses_masks_and_contains() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = parse_cidr(" 10.1.2.3/16 ").unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!(c, "10.1.0.0/16".parse::<IpNet>().unwrap());
        assert!(c.contains(&ip("10.1.255.1")));
        assert!(!c.contains(&ip("10.2.0.1")));
        assert!(!c.contains(&ip("::1")));
        assert_eq!(parse_cidr("010.001.0.0/16"), Ok(c));
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(all.contains(&ip("192.0.2.1")));
        let v6 = parse_cidr("fd00::/8").unwrap();
        assert_eq!(IpFamily::of_net(&v6), IpFamily::V6);
        assert!(v6.contains(&ip("fd12::1")));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("fd00::/129").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
