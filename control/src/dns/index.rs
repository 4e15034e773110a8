//! The cluster's DNS data as plain values: what every Service, its ready endpoints and every
//! pod IP mean for name lookups. Built in one pass from the watched objects, so answering is
//! a lookup in maps and never touches the API objects.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use hickory_proto::rr::Name;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A/AAAA with these addresses.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the ready endpoints' addresses.
    Headless,
    /// A CNAME to this name.
    ExternalName(Name),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Empty for an unnamed port (no SRV name of its own).
    pub name: String,
    /// Lowercase, as SRV names spell it (`tcp`, `udp`, `sctp`).
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The endpoint's own DNS label: its `hostname` (StatefulSet pods) or else its address
    /// with dashes, as CoreDNS names endpoints.
    pub label: String,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub kind: Kind,
    pub ports: Vec<Port>,
    /// Ready endpoints only: a not-ready pod must not receive traffic by name either.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone)]
pub struct Index {
    /// The cluster domain, lowercase and fully qualified (`cluster.local.`).
    pub zone: Name,
    /// The SOA serial (CoreDNS uses the time of the last change, in seconds).
    pub serial: u32,
    /// (namespace, name) → Service.
    pub services: BTreeMap<(String, String), ServiceEntry>,
    /// PTR targets: ClusterIPs, then endpoint addresses, then pod IPs.
    pub reverse: HashMap<IpAddr, Name>,
}

/// `10.1.2.3` → `10-1-2-3`; `fd00::1` → `fd00--1` (the form pod and endpoint names use).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace([':', '.'], "-")
}

/// The inverse of [`dashed`]: four dash-separated octets are IPv4, anything else is read as
/// IPv6 with dashes for colons.
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.split('-').count() == 4
        && let Ok(v4) = label.replace('-', ".").parse::<std::net::Ipv4Addr>()
    {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn protocol(p: Option<&String>) -> String {
    p.map_or_else(|| "tcp".to_owned(), |p| p.to_ascii_lowercase())
}

fn port_number(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0)
}

impl Index {
    pub fn empty(zone: Name) -> Self {
        Self {
            zone,
            serial: 0,
            services: BTreeMap::new(),
            reverse: HashMap::new(),
        }
    }

    /// Names under the zone: `<labels...>.<zone>`.
    pub fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(&self.zone)
            .ok()
    }

    pub fn build<'a>(
        zone: Name,
        serial: u32,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut index = Self::empty(zone.to_lowercase());
        index.serial = serial;
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (&svc.metadata.namespace, &svc.metadata.name, &svc.spec) else {
                continue;
            };
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                match spec.external_name.as_deref().and_then(|n| Name::from_ascii(n).ok()) {
                    Some(mut target) => {
                        target.set_fqdn(true);
                        Kind::ExternalName(target)
                    }
                    None => continue,
                }
            } else if spec.cluster_ip.as_deref() == Some("None") {
                Kind::Headless
            } else {
                let mut ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                ips.dedup();
                if ips.is_empty() {
                    continue;
                }
                Kind::ClusterIp(ips)
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: protocol(p.protocol.as_ref()),
                        port: port_number(p.port)?,
                    })
                })
                .collect();
            index.services.insert(
                (ns.clone(), name.clone()),
                ServiceEntry {
                    kind,
                    ports,
                    endpoints: Vec::new(),
                },
            );
        }
        for slice in slices {
            let Some(ns) = &slice.metadata.namespace else { continue };
            let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                continue;
            };
            let Some(entry) = index.services.get_mut(&(ns.clone(), svc.clone())) else {
                continue;
            };
            let ports: Vec<Port> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: protocol(p.protocol.as_ref()),
                        port: port_number(p.port?)?,
                    })
                })
                .collect();
            for ep in &slice.endpoints {
                // Unset `ready` means ready (the field's documented default).
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else { continue };
                    let label = ep.hostname.clone().unwrap_or_else(|| dashed(ip));
                    entry.endpoints.push(Endpoint {
                        ip,
                        label,
                        ports: ports.clone(),
                    });
                }
            }
        }
        // Slices come in any order; sorted endpoints give stable answers.
        for entry in index.services.values_mut() {
            entry.endpoints.sort_by(|a, b| (a.ip, &a.label).cmp(&(b.ip, &b.label)));
            entry.endpoints.dedup_by(|a, b| a.ip == b.ip && a.label == b.label);
        }
        // PTRs: ClusterIPs win over endpoints, endpoints over bare pods; among equals the
        // first Service in name order.
        let mut reverse = HashMap::new();
        for ((ns, name), entry) in &index.services {
            if let Kind::ClusterIp(ips) = &entry.kind
                && let Some(target) = index.name(&[name, ns, "svc"])
            {
                for ip in ips {
                    reverse.entry(*ip).or_insert_with(|| target.clone());
                }
            }
        }
        for ((ns, name), entry) in &index.services {
            for ep in &entry.endpoints {
                if let Some(target) = index.name(&[&ep.label, name, ns, "svc"]) {
                    reverse.entry(ep.ip).or_insert(target);
                }
            }
        }
        for pod in pods {
            let (Some(ns), Some(status)) = (&pod.metadata.namespace, &pod.status) else {
                continue;
            };
            if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                continue;
            }
            let ips = status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.pod_ip.as_deref());
            for ip in ips {
                let Ok(ip) = ip.parse::<IpAddr>() else { continue };
                if let Some(target) = index.name(&[&dashed(ip), ns, "pod"]) {
                    reverse.entry(ip).or_insert(target);
                }
            }
        }
        index.reverse = reverse;
        index
    }
}
