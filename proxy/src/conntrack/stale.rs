//! Which UDP conntrack entries are stale for a desired state.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::model::{DesiredState, Protocol, Target};

/// One direction of a flow, as conntrack records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number (17 for UDP).
    pub protocol: u8,
}

/// A conntrack entry: the original direction (client → frontend) and the reply direction
/// (endpoint → client after DNAT; frontend → client without NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
}

pub fn has_udp_frontends(state: &DesiredState) -> bool {
    state.ports.keys().any(|name| name.protocol == Protocol::Udp)
}

/// The (address, port) pairs a frontend's traffic may reach.
type Reachable = BTreeSet<(IpAddr, u16)>;

/// Entries to delete: the original destination is a UDP frontend of `state`, and the reply
/// comes from something that frontend may not use now (a removed endpoint, or the frontend
/// itself: an entry created while the Service had no endpoints, so never DNATed, which
/// would keep the flow un-NATed now that endpoints exist).
pub fn stale_entries(entries: &[Entry], state: &DesiredState) -> Vec<Entry> {
    // (frontend address, port) → the endpoints traffic to it may reach, or None when the
    // frontend forwards nowhere.
    let mut allowed: BTreeMap<(IpAddr, u16), Option<Reachable>> = BTreeMap::new();
    for (name, port) in &state.ports {
        if name.protocol != Protocol::Udp {
            continue;
        }
        for (frontend, rule) in &port.frontends {
            let mut sets = Vec::new();
            if let Target::Forward(id) = rule.target {
                sets.push(id);
            }
            if let Some(sc) = &rule.short_circuit {
                sets.push(sc.to);
            }
            let reachable: BTreeSet<(IpAddr, u16)> = sets
                .iter()
                .filter_map(|id| port.endpoint_sets.get(id))
                .flatten()
                .map(|b| (b.address, b.port))
                .collect();
            let value = (!sets.is_empty()).then_some(reachable);
            allowed.insert((frontend.address, frontend.port), value);
        }
    }
    entries
        .iter()
        .filter(|e| e.orig.protocol == 17)
        .filter(|e| {
            let Some(allowed) = allowed.get(&(e.orig.dst, e.orig.dst_port)) else {
                return false;
            };
            let natted = (e.reply.src, e.reply.src_port) != (e.orig.dst, e.orig.dst_port);
            match allowed {
                Some(backends) => !natted || !backends.contains(&(e.reply.src, e.reply.src_port)),
                // Rejected or dropped now: only a flow still NATed to an old endpoint matters.
                None => natted,
            }
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map, fixtures, service::service_ports,
    };
    use serde_json::json;

    fn state(endpoints: &[&str]) -> DesiredState {
        let svc = fixtures::service(json!({
            "metadata": {"namespace": "ns", "name": "dns"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}
        }));
        let mut ports = ServicePortMap::new();
        ports.extend(service_ports(&svc).unwrap());
        let eps: Vec<_> = endpoints.iter().map(|ip| fixtures::ready(ip, "n1")).collect();
        let slice = fixtures::slice(json!({
            "metadata": {"namespace": "ns", "name": "dns-1", "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}], "endpoints": eps,
        }));
        let endpoints = endpoints_map(&[slice], "n1").unwrap();
        let node = NodeInfo {
            name: "n1".into(),
            ..Default::default()
        };
        DesiredState::build(&ports, &endpoints, &node, &ModelConfig::default())
    }

    fn entry(reply_src: &str, reply_port: u16) -> Entry {
        let ip = |s: &str| s.parse().unwrap();
        Entry {
            orig: Tuple {
                src: ip("10.244.2.10"),
                dst: ip("10.96.0.10"),
                src_port: 40000,
                dst_port: 53,
                protocol: 17,
            },
            reply: Tuple {
                src: ip(reply_src),
                dst: ip("10.244.2.10"),
                src_port: reply_port,
                dst_port: 40000,
                protocol: 17,
            },
        }
    }

    #[test]
    fn flows_to_live_endpoints_stay_and_flows_to_removed_ones_go() {
        let s = state(&["10.244.1.10", "10.244.1.11"]);
        let live = entry("10.244.1.10", 5353);
        let removed = entry("10.244.1.99", 5353);
        assert_eq!(stale_entries(&[live, removed], &s), vec![removed]);
    }

    #[test]
    fn unnatted_flows_go_once_endpoints_exist_and_stay_while_there_are_none() {
        let never_natted = entry("10.96.0.10", 53);
        assert_eq!(
            stale_entries(&[never_natted], &state(&["10.244.1.10"])),
            vec![never_natted]
        );
        assert!(stale_entries(&[never_natted], &state(&[])).is_empty());
        let to_gone = entry("10.244.1.10", 5353);
        assert_eq!(
            stale_entries(&[to_gone], &state(&[])),
            vec![to_gone],
            "a flow NATed to the last endpoint goes"
        );
    }

    #[test]
    fn other_flows_are_not_ours() {
        let mut other = entry("10.244.1.99", 5353);
        other.orig.dst = "10.96.0.99".parse().unwrap();
        let mut tcp = entry("10.244.1.99", 5353);
        tcp.orig.protocol = 6;
        assert!(stale_entries(&[other, tcp], &state(&["10.244.1.10"])).is_empty());
    }
}
