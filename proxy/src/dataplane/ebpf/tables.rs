//! The desired state in BPF terms, per Service port: the frontend entries
//! (`RUDDER_SERVICES` keys and what their values say), the endpoint sets as backend lists,
//! and the source ranges. Pure: the reconciler assigns ids and writes the maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use rudder_abi::lb::{
    ACTION_DROP, ACTION_FORWARD, ACTION_REJECT, Backend, Backend6, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceKey6, flags,
};

use crate::model::{
    DesiredPort,
    desired::{EndpointSetId, FrontendKind, Masquerade, Target},
    service::{Protocol, ServicePortName},
};

/// A frontend's key in its family's map (`RUDDER_SERVICES` or `RUDDER_SERVICES6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl FrontendKey {
    /// `port` in host order.
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(ServiceKey {
                addr: u32::from(a).to_be(),
                port: port.to_be(),
                proto,
                pad: 0,
            }),
            IpAddr::V6(a) => Self::V6(ServiceKey6 {
                addr: v6_words(a),
                port: port.to_be(),
                proto,
                pad: 0,
            }),
        }
    }

    /// A ClusterIP's catch-all entry (port 0, protocol 0).
    pub fn wildcard(addr: IpAddr) -> Self {
        Self::new(addr, 0, 0)
    }

    pub fn ip(&self) -> IpAddr {
        match self {
            Self::V4(k) => Ipv4Addr::from(u32::from_be(k.addr)).into(),
            Self::V6(k) => v6_addr(k.addr).into(),
        }
    }

    /// Host order.
    pub fn port(&self) -> u16 {
        u16::from_be(match self {
            Self::V4(k) => k.port,
            Self::V6(k) => k.port,
        })
    }

    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }
}

/// A backend's entry in its family's map (`RUDDER_BACKENDS` or `RUDDER_BACKENDS6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddr {
    V4(Backend),
    V6(Backend6),
}

impl From<SocketAddr> for BackendAddr {
    fn from(a: SocketAddr) -> Self {
        match a.ip() {
            IpAddr::V4(ip) => Self::V4(Backend {
                addr: u32::from(ip).to_be(),
                port: a.port().to_be(),
                pad: 0,
            }),
            IpAddr::V6(ip) => Self::V6(Backend6 {
                addr: v6_words(ip),
                port: a.port().to_be(),
                pad: 0,
            }),
        }
    }
}

impl From<BackendAddr> for SocketAddr {
    fn from(b: BackendAddr) -> Self {
        match b {
            BackendAddr::V4(b) => (Ipv4Addr::from(u32::from_be(b.addr)), u16::from_be(b.port)).into(),
            BackendAddr::V6(b) => (v6_addr(b.addr), u16::from_be(b.port)).into(),
        }
    }
}

/// An IPv6 address as the programs hold it: four words, each as it sits in the packet.
pub fn v6_words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

pub fn v6_addr(words: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// One frontend's entry, before ids are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendSpec {
    pub action: u8,
    pub flags: u16,
    pub set: Option<EndpointSetId>,
    pub short_circuit: Option<EndpointSetId>,
    /// `loadBalancerSourceRanges` of the frontend's family, as (network, prefix length).
    pub source_ranges: Vec<(IpAddr, u8)>,
}

/// Everything one Service port needs in the maps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortTables {
    pub frontends: BTreeMap<FrontendKey, FrontendSpec>,
    pub sets: BTreeMap<EndpointSetId, Vec<BackendAddr>>,
    pub affinity_timeout: Option<u32>,
    /// ClusterIPs of this port (their undefined ports are rejected, not dropped).
    pub cluster_ips: BTreeSet<IpAddr>,
}

/// Why part of a port cannot be served by this mode (logged, the rest is programmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    Sctp,
}

pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => rudder_abi::lb::PROTO_SCTP,
    }
}

pub fn backend(b: &crate::model::desired::Backend) -> BackendAddr {
    SocketAddr::new(b.address, b.port).into()
}

/// The port's tables, and what had to be left out.
pub fn port_tables(name: &ServicePortName, port: &DesiredPort) -> (PortTables, Vec<Unsupported>) {
    let mut out = PortTables {
        affinity_timeout: port.affinity.map(|a| a.timeout_seconds),
        ..PortTables::default()
    };
    let mut left_out = Vec::new();
    if name.protocol == Protocol::Sctp {
        // The per-packet path cannot fix SCTP's CRC32c after NAT.
        left_out.push(Unsupported::Sctp);
        return (out, left_out);
    }
    let proto = protocol_number(name.protocol);
    for (id, backends) in &port.endpoint_sets {
        out.sets.insert(*id, backends.iter().map(backend).collect());
    }
    for (fe, rule) in &port.frontends {
        let mut f = 0u16;
        if fe.kind == FrontendKind::ClusterIp {
            f |= flags::CLUSTER_IP;
            out.cluster_ips.insert(fe.address);
        }
        match &rule.masquerade {
            Masquerade::Always => f |= flags::MASQ_ALWAYS,
            Masquerade::UnlessFrom(_) => f |= flags::MASQ_UNLESS_POD,
            Masquerade::HairpinOnly => {}
        }
        if rule.short_circuit.is_some() {
            f |= flags::SHORT_CIRCUIT;
        }
        if out.affinity_timeout.is_some() {
            f |= flags::AFFINITY;
        }
        let source_ranges: Vec<(IpAddr, u8)> = match &rule.source_ranges {
            None => Vec::new(),
            Some(ranges) => {
                f |= flags::SOURCE_RANGES;
                // A range of the other family can never match this frontend's clients.
                ranges
                    .iter()
                    .filter(|c| c.network().is_ipv6() == fe.address.is_ipv6())
                    .map(|c| (c.network(), c.prefix_len()))
                    .collect()
            }
        };
        let (action, set) = match &rule.target {
            Target::Forward(set) => (ACTION_FORWARD, Some(*set)),
            Target::Reject => (ACTION_REJECT, None),
            Target::Drop => (ACTION_DROP, None),
        };
        let key = FrontendKey::new(fe.address, fe.port, proto);
        out.frontends.insert(
            key,
            FrontendSpec {
                action,
                flags: f,
                set,
                short_circuit: rule.short_circuit.as_ref().map(|s| s.to),
                source_ranges,
            },
        );
    }
    (out, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;

    #[test]
    fn cluster_ip_port_becomes_one_forwarding_frontend_with_its_backends() {
        let state = fixtures::simple_state();
        let (name, port) = state.ports.iter().next().expect("one port");
        let (t, left_out) = port_tables(name, port);
        assert!(left_out.is_empty());
        let (key, spec) = t.frontends.iter().next().expect("a frontend");
        assert_eq!(spec.action, ACTION_FORWARD);
        assert_ne!(spec.flags & flags::CLUSTER_IP, 0);
        assert_eq!(key.port(), 80);
        let set = spec.set.expect("a set");
        assert_eq!(t.sets[&set].len(), port.endpoint_sets[&set].len());
        assert!(t.cluster_ips.contains(&key.ip()));
    }

    #[test]
    fn a_dual_stack_port_gets_a_frontend_per_family_with_that_familys_backends_and_ranges() {
        use serde_json::json;
        let svc = json!({"metadata": {"namespace": "ns", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                     "loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8::/32"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"ip": "2001:db8:1::1"}]}}});
        let slice = |family: &str, name: &str, ip: &str| {
            json!({
            "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [fixtures::ready(ip, "node-2")]})
        };
        let state = fixtures::state_of(
            &[svc],
            &[
                slice("IPv4", "web-4", "10.244.2.10"),
                slice("IPv6", "web-6", "fd00:244::10"),
            ],
        );
        let (name, port) = state.ports.iter().next().expect("one port");
        let (t, left_out) = port_tables(name, port);
        assert!(left_out.is_empty(), "{left_out:?}");
        let cluster6 = FrontendKey::new("fd00:96::a".parse().unwrap(), 80, PROTO_TCP);
        let spec = &t.frontends[&cluster6];
        assert!(matches!(cluster6, FrontendKey::V6(_)));
        let backends = &t.sets[&spec.set.expect("a set")];
        assert_eq!(
            backends
                .iter()
                .map(|b| SocketAddr::from(*b).to_string())
                .collect::<Vec<_>>(),
            ["[fd00:244::10]:8080"]
        );
        let lb6 = &t.frontends[&FrontendKey::new("2001:db8:1::1".parse().unwrap(), 80, PROTO_TCP)];
        assert_eq!(
            lb6.source_ranges,
            [("2001:db8::".parse().unwrap(), 32)],
            "only the IPv6 range applies to an IPv6 frontend"
        );
        let lb4 = &t.frontends[&FrontendKey::new("203.0.113.1".parse().unwrap(), 80, PROTO_TCP)];
        assert_eq!(lb4.source_ranges, [("198.51.100.0".parse().unwrap(), 24)]);
        assert!(t.cluster_ips.contains(&"fd00:96::a".parse::<IpAddr>().unwrap()));
        // Keys and backends survive the round trip through the maps' representation.
        assert_eq!(cluster6.ip(), "fd00:96::a".parse::<IpAddr>().unwrap());
        assert_eq!(cluster6.port(), 80);
    }
}
