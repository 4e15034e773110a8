//! ClusterIP and NodePort allocation.
//!
//! Each allocation is its own store key, created with create-if-absent. The store's
//! atomic create is what makes duplicates impossible, also with several API servers on one
//! etcd (the same idea as Kubernetes' IPAddress objects).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    sync::Arc,
};

use ipnet::IpNet;

use crate::store::{Store, StoreError};

use super::status::{ApiError, Cause};

const IP_PREFIX: &str = "/registry/allocations/serviceips/";
const PORT_PREFIX: &str = "/registry/allocations/nodeports/";

/// Parses `--service-cluster-ip-range` (one family): host bits are cleared, and the range
/// must leave room for the `kubernetes` Service and others (IPv4 /8 to /30; IPv6 /64 to
/// /126, since every allocation is one store key and needs no bitmap).
pub fn parse_service_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR (want a.b.c.d/n or an IPv6 prefix)"))?;
    let allowed = match net {
        IpNet::V4(_) => 8..=30,
        IpNet::V6(_) => 64..=126,
    };
    if !allowed.contains(&net.prefix_len()) {
        return Err(format!(
            "prefix length {} of {s:?} must be between {} and {}",
            net.prefix_len(),
            allowed.start(),
            allowed.end()
        ));
    }
    Ok(net.trunc())
}

/// Parses `--service-cluster-ip-range`: one CIDR, or two of different families (the first
/// is the cluster's primary family), as kube-apiserver takes them.
pub fn parse_service_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    let cidrs = s
        .split(',')
        .map(|part| parse_service_cidr(part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    match cidrs.as_slice() {
        [_] => Ok(cidrs),
        [a, b] if family_name(a) != family_name(b) => Ok(cidrs),
        [_, _] => Err(format!("{s:?}: a dual-stack range needs one IPv4 and one IPv6 CIDR")),
        _ => Err(format!("{s:?}: at most two CIDRs (one per IP family) are allowed")),
    }
}

/// The `n`-th address of `net`; `.1` goes to the `kubernetes` Service, like upstream.
pub fn nth(net: &IpNet, n: u128) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(n as u32))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(n))),
    }
}

/// How far `ip` lies from `net`'s first address (any family; `None` across families).
fn offset(net: &IpNet, ip: IpAddr) -> Option<u128> {
    match (net.network(), ip) {
        (IpAddr::V4(base), IpAddr::V4(ip)) => Some(u128::from(u32::from(ip).wrapping_sub(u32::from(base)))),
        (IpAddr::V6(base), IpAddr::V6(ip)) => Some(u128::from(ip).wrapping_sub(u128::from(base))),
        _ => None,
    }
}

/// Addresses in `net`, first and last included.
fn size(net: &IpNet) -> u128 {
    1u128 << (net.max_prefix_len() - net.prefix_len())
}

/// The API's name of `net`'s family (`spec.ipFamilies`).
pub fn family_name(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

pub struct Allocator {
    store: Arc<dyn Store>,
    /// One range per family, the primary family first.
    pub service_cidrs: Vec<IpNet>,
    pub node_ports: RangeInclusive<u16>,
}

impl Allocator {
    pub fn new(store: Arc<dyn Store>, service_cidrs: Vec<IpNet>, node_ports: RangeInclusive<u16>) -> Self {
        Self {
            store,
            service_cidrs,
            node_ports,
        }
    }

    /// Reserves `requested` (or a free address) from `cidr` for `owner` (the Service's key);
    /// `field` is what an error names.
    pub async fn allocate_ip(
        &self,
        cidr: &IpNet,
        requested: Option<&str>,
        owner: &str,
        field: &str,
    ) -> Result<IpAddr, ApiError> {
        let invalid = |message: String| {
            ApiError::invalid("Service", "", service_name(owner), vec![Cause::invalid(field, message)])
        };
        if let Some(req) = requested {
            let ip: IpAddr = req
                .parse()
                .map_err(|_| invalid(format!("Invalid value: {req:?}: must be a valid IP address")))?;
            let n = offset(cidr, ip);
            if !cidr.contains(&ip) || n == Some(0) || n == Some(size(cidr) - 1) {
                return Err(invalid(format!(
                    "Invalid value: {req:?}: provided IP is not in the valid range. The range of valid IPs is {cidr}"
                )));
            }
            return match self.claim(&format!("{IP_PREFIX}{ip}"), owner).await? {
                true => Ok(ip),
                false => Err(invalid(format!(
                    "Invalid value: {req:?}: provided IP is already allocated"
                ))),
            };
        }
        // Usable addresses are 1..size-1; start at a random one and probe upward.
        let usable = size(cidr) - 2;
        let start = rand::random::<u128>() % usable;
        let mut i = 0;
        while i < usable {
            let n = 1 + (start + i) % usable;
            i += 1;
            // .1 is reserved for the `kubernetes` Service, which asks for it by name.
            if n == 1 {
                continue;
            }
            let ip = nth(cidr, n);
            if self.claim(&format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "failed to allocate a serviceIP: range {cidr} is full"
        )))
    }

    pub async fn release_ip(&self, ip: &str) {
        self.release(&format!("{IP_PREFIX}{ip}")).await;
    }

    /// Reserves `requested` (or a free port) for `owner`. A Service may hold one port
    /// number for several protocols, so claiming a port it already owns succeeds.
    pub async fn allocate_node_port(&self, requested: Option<u16>, owner: &str, field: &str) -> Result<u16, ApiError> {
        if let Some(port) = requested {
            if !self.node_ports.contains(&port) {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    "",
                    vec![Cause::invalid(
                        field,
                        format!(
                            "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}-{}",
                            self.node_ports.start(),
                            self.node_ports.end()
                        ),
                    )],
                ));
            }
            return match self.claim(&format!("{PORT_PREFIX}{port}"), owner).await? {
                true => Ok(port),
                false => Err(ApiError::invalid(
                    "Service",
                    "",
                    service_name(owner),
                    vec![Cause::invalid(
                        field,
                        format!("Invalid value: {port}: provided port is already allocated"),
                    )],
                )),
            };
        }
        let span = u32::from(*self.node_ports.end() - *self.node_ports.start()) + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = *self.node_ports.start() + ((start + i) % span) as u16;
            if self.claim(&format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal("failed to allocate a nodePort: range is full"))
    }

    pub async fn release_node_port(&self, port: u16) {
        self.release(&format!("{PORT_PREFIX}{port}")).await;
    }

    /// True when `key` is now ours (newly, or already by the same owner).
    async fn claim(&self, key: &str, owner: &str) -> Result<bool, ApiError> {
        match self.store.create(key, owner.as_bytes().to_vec()).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => {
                let held = self.store.get(key).await?;
                Ok(held.is_some_and(|kv| kv.value == owner.as_bytes()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, key: &str) {
        match self.store.delete(key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key, error = %e, "could not release an allocation; it stays reserved"),
        }
    }
}

/// The Service's name from the owner an allocation is recorded for (its store key ends in
/// the name), so a refusal says `Service "web" is invalid` as upstream's does.
fn service_name(owner: &str) -> &str {
    owner.rsplit('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidrs_parse_in_either_family() {
        let c = parse_service_cidr("10.96.5.3/16").unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/16");
        assert!(c.contains(&"10.96.255.254".parse::<IpAddr>().unwrap()));
        assert!(!c.contains(&"10.97.0.1".parse::<IpAddr>().unwrap()));
        assert_eq!(nth(&c, 1), "10.96.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(size(&c), 65536);
        assert!(parse_service_cidr("10.96.0.0").is_err());
        assert!(parse_service_cidr("10.96.0.0/31").is_err());
        let v6 = parse_service_cidr("fd00:10:96::5/112").unwrap();
        assert_eq!(v6.to_string(), "fd00:10:96::/112");
        assert_eq!(nth(&v6, 1), "fd00:10:96::1".parse::<IpAddr>().unwrap());
        assert_eq!(offset(&v6, "fd00:10:96::ff".parse().unwrap()), Some(255));
        assert_eq!(offset(&v6, "10.0.0.1".parse().unwrap()), None);
        assert_eq!(family_name(&v6), "IPv6");
        let err = parse_service_cidr("fd00::/48").unwrap_err();
        assert!(err.contains("between 64 and 126"), "{err}");
    }

    #[test]
    fn dual_stack_ranges_need_one_cidr_per_family() {
        let both = parse_service_cidrs("10.96.0.0/16, fd00:10:96::/112").unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(family_name(&both[0]), "IPv4");
        assert_eq!(family_name(&both[1]), "IPv6");
        let v6_first = parse_service_cidrs("fd00:10:96::/112,10.96.0.0/16").unwrap();
        assert_eq!(family_name(&v6_first[0]), "IPv6");
        assert_eq!(parse_service_cidrs("10.96.0.0/16").unwrap().len(), 1);
        let err = parse_service_cidrs("10.96.0.0/16,10.97.0.0/16").unwrap_err();
        assert!(err.contains("one IPv4 and one IPv6"), "{err}");
        let err = parse_service_cidrs("10.96.0.0/16,fd00::/112,10.97.0.0/16").unwrap_err();
        assert!(err.contains("at most two"), "{err}");
        assert!(parse_service_cidrs("10.96.0.0/16,bogus").is_err());
    }
}
