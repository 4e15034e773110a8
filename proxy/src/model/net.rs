//! Address families, CIDRs, and IP parsing as the API server means them.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

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

/// An IP prefix. Host bits are cleared on parse, as the API server's sloppy parser does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// `None` when `prefix_len` is longer than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let network = match addr {
            IpAddr::V4(a) if prefix_len <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix_len))),
            IpAddr::V6(a) if prefix_len <= 128 => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix_len))),
            _ => return None,
        };
        Some(Self { network, prefix_len })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.network)
    }

    /// Whether `addr` lies in this prefix (never across families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & v4_mask(self.prefix_len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => u128::from(a) & v6_mask(self.prefix_len) == u128::from(net),
            _ => false,
        }
    }
}

fn v4_mask(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)
}

fn v6_mask(prefix_len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = AddrError;

    /// Surrounding whitespace is ignored because `loadBalancerSourceRanges` validation has
    /// always let it through.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = || AddrError::Cidr {
            value: value.to_owned(),
        };
        let (addr, len) = value.trim().split_once('/').ok_or_else(err)?;
        let addr = parse_ip(addr).map_err(|_| err())?;
        let len = len.parse::<u8>().map_err(|_| err())?;
        Self::new(addr, len).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
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
        let c: Cidr = " 10.1.2.3/16 ".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert!(c.contains("10.1.255.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert_eq!(v6.family(), IpFamily::V6);
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }
}
