//! ClusterIP and NodePort allocation.
//!
//! Each allocation is its own store key, created with create-if-absent. The store's
//! atomic create is what makes duplicates impossible, also with several API servers on one
//! etcd (the same idea as Kubernetes' IPAddress objects).

use std::{net::Ipv4Addr, ops::RangeInclusive, sync::Arc};

use crate::store::{Store, StoreError};

use super::status::{ApiError, Cause};

const IP_PREFIX: &str = "/registry/allocations/serviceips/";
const PORT_PREFIX: &str = "/registry/allocations/nodeports/";

/// An IPv4 CIDR such as 10.96.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix length {len:?} of {s:?} must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Cidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & (u32::MAX << (32 - self.prefix)) == u32::from(self.base)
    }
    /// The n-th address; `.1` goes to the `kubernetes` Service, like upstream.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }
}

pub struct Allocator {
    store: Arc<dyn Store>,
    pub service_cidr: Cidr,
    pub node_ports: RangeInclusive<u16>,
}

impl Allocator {
    pub fn new(store: Arc<dyn Store>, service_cidr: Cidr, node_ports: RangeInclusive<u16>) -> Self {
        Self {
            store,
            service_cidr,
            node_ports,
        }
    }

    /// Reserves `requested` (or a free address) for `owner` (the Service's key).
    pub async fn allocate_ip(&self, requested: Option<&str>, owner: &str) -> Result<Ipv4Addr, ApiError> {
        if let Some(req) = requested {
            let ip: Ipv4Addr = req.parse().map_err(|_| {
                ApiError::invalid(
                    "Service",
                    "",
                    "",
                    vec![Cause::invalid(
                        "spec.clusterIP",
                        format!("Invalid value: {req:?}: not an IPv4 address"),
                    )],
                )
            })?;
            let n = u32::from(ip).wrapping_sub(u32::from(self.service_cidr.base));
            if !self.service_cidr.contains(ip) || n == 0 || n == self.service_cidr.size() - 1 {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    "",
                    vec![Cause::invalid(
                        "spec.clusterIP",
                        format!(
                            "Invalid value: {req:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                            self.service_cidr
                        ),
                    )],
                ));
            }
            return match self.claim(&format!("{IP_PREFIX}{ip}"), owner).await? {
                true => Ok(ip),
                false => Err(ApiError::invalid(
                    "Service",
                    "",
                    "",
                    vec![Cause::invalid(
                        "spec.clusterIP",
                        format!("Invalid value: {req:?}: provided IP is already allocated"),
                    )],
                )),
            };
        }
        // Usable addresses are 1..size-1; start at a random one and probe upward.
        let usable = self.service_cidr.size() - 2;
        let start = rand::random::<u32>() % usable;
        for i in 0..usable {
            let n = 1 + (start + i) % usable;
            let ip = self.service_cidr.nth(n);
            // .1 is reserved for the `kubernetes` Service, which asks for it by name.
            if n == 1 {
                continue;
            }
            if self.claim(&format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "failed to allocate a serviceIP: range {} is full",
            self.service_cidr
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
                    "",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.96.5.3/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/16");
        assert!(c.contains("10.96.255.254".parse().unwrap()));
        assert!(!c.contains("10.97.0.1".parse().unwrap()));
        assert_eq!(c.nth(1), "10.96.0.1".parse::<Ipv4Addr>().unwrap());
        assert!("10.96.0.0".parse::<Cidr>().is_err());
        assert!("10.96.0.0/31".parse::<Cidr>().is_err());
    }
}
