//! The desired state in BPF terms, per Service port: the frontend entries
//! (`RUDDER_SERVICES` keys and what their values say), the endpoint sets as backend lists,
//! and the source ranges. Pure: the reconciler assigns ids and writes the maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use rudder_abi::lb::{
    ACTION_DROP, ACTION_FORWARD, ACTION_REJECT, Backend, PROTO_TCP, PROTO_UDP, ServiceKey, flags,
};

use crate::model::{
    DesiredPort,
    desired::{EndpointSetId, FrontendKind, Masquerade, Target},
    net::IpFamily,
    service::{Protocol, ServicePortName},
};

/// One frontend's entry, before ids are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendSpec {
    pub action: u8,
    pub flags: u16,
    pub set: Option<EndpointSetId>,
    pub short_circuit: Option<EndpointSetId>,
    /// `loadBalancerSourceRanges` as (network, prefix length), network in network order.
    pub source_ranges: Vec<(u32, u8)>,
}

/// Everything one Service port needs in the maps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortTables {
    pub frontends: BTreeMap<ServiceKey, FrontendSpec>,
    pub sets: BTreeMap<EndpointSetId, Vec<Backend>>,
    pub affinity_timeout: Option<u32>,
    /// ClusterIPs of this port (their undefined ports are rejected, not dropped).
    pub cluster_ips: BTreeSet<u32>,
}

/// Why part of a port cannot be served by this mode (logged, the rest is programmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    Ipv6,
    Sctp,
}

pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => rudder_abi::lb::PROTO_SCTP,
    }
}

fn v4(addr: IpAddr) -> Option<u32> {
    match addr {
        IpAddr::V4(a) => Some(u32::from(a).to_be()),
        IpAddr::V6(_) => None,
    }
}

pub fn backend(b: &crate::model::desired::Backend) -> Option<Backend> {
    Some(Backend { addr: v4(b.address)?, port: b.port.to_be(), pad: 0 })
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
        if id.family == IpFamily::V6 {
            continue;
        }
        out.sets.insert(*id, backends.iter().filter_map(backend).collect());
    }
    for (fe, rule) in &port.frontends {
        let Some(addr) = v4(fe.address) else {
            if !left_out.contains(&Unsupported::Ipv6) {
                left_out.push(Unsupported::Ipv6);
            }
            continue;
        };
        let mut f = 0u16;
        if fe.kind == FrontendKind::ClusterIp {
            f |= flags::CLUSTER_IP;
            out.cluster_ips.insert(addr);
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
        let source_ranges: Vec<(u32, u8)> = match &rule.source_ranges {
            None => Vec::new(),
            Some(ranges) => {
                f |= flags::SOURCE_RANGES;
                ranges.iter().filter_map(|c| Some((v4(c.network())?, c.prefix_len()))).collect()
            }
        };
        let (action, set) = match &rule.target {
            Target::Forward(set) => (ACTION_FORWARD, Some(*set)),
            Target::Reject => (ACTION_REJECT, None),
            Target::Drop => (ACTION_DROP, None),
        };
        let key = ServiceKey { addr, port: fe.port.to_be(), proto, pad: 0 };
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
        assert_eq!(u16::from_be(key.port), 80);
        let set = spec.set.expect("a set");
        assert_eq!(t.sets[&set].len(), port.endpoint_sets[&set].len());
        assert!(t.cluster_ips.contains(&key.addr));
    }
}
