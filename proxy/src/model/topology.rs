//! Which endpoints a Service port's traffic may use on this node: the traffic policies,
//! topology hints and the terminating-endpoint fallback, in one pure function.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    endpoints::Endpoint,
    service::{ServicePort, TopologyMode},
};

/// The node label holding the node's zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// The result of [`categorize_endpoints`]. Lists keep the input order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized<'a> {
    /// Endpoints for traffic under a Cluster policy, topology applied. Empty when the port
    /// never uses Cluster policy ([`ServicePort::uses_cluster_endpoints`]).
    pub cluster: Vec<&'a Endpoint>,
    /// Endpoints for traffic under a Local policy: this node's only. Empty when the port
    /// never uses Local policy ([`ServicePort::uses_local_endpoints`]) or this node has none.
    pub local: Vec<&'a Endpoint>,
    /// The union of `cluster` and `local`, sorted, one entry per address and port: every
    /// endpoint this node may send the port's traffic to (for conntrack cleanup).
    pub all_reachable: Vec<&'a Endpoint>,
    /// Whether the port has a usable endpoint anywhere in the cluster, even if none is
    /// reachable from here. Decides between rejecting (nothing anywhere: fail fast) and
    /// dropping (a Local policy with nothing here: let the client's load balancer retry
    /// elsewhere).
    pub has_any_endpoints: bool,
}

/// Sorts `endpoints` (of one port, one family) into the sets this node uses for `port`'s
/// traffic. `node_labels` are this node's labels; only the zone label is read.
///
/// "Usable" means ready. Only if no endpoint is ready does a set fall back to endpoints
/// that are serving and terminating, so connections drain during a rollout instead of
/// failing (upstream's ProxyTerminatingEndpoints). The fallback is decided separately for
/// the cluster and the local set.
///
/// Every case:
///
/// - No endpoints: everything empty, `has_any_endpoints` false.
/// - Cluster set (computed when the port uses Cluster policy: `internalTrafficPolicy:
///   Cluster`, or any external address, since `externalTrafficPolicy: Local` still sends
///   this node's own traffic cluster-wide):
///   - Topology: when every ready endpoint has node hints and one is hinted for this
///     node, only those hinted for this node; otherwise, when every ready endpoint has zone
///     hints and one is hinted for this node's zone, only those; otherwise all. A single
///     ready endpoint without hints, or no match for this node or zone, disables topology
///     entirely, so hints never turn a reachable Service into an unreachable one.
///   - Hints come from the slice. Under `trafficDistribution: PreferClose`/`PreferSameZone`
///     an endpoint without zone hints counts as hinted for its own zone, and under
///     `PreferSameNode` as hinted for its own node and zone: that is what the EndpointSlice
///     controller would write, so the port behaves the same whether or not it has.
///   - Ready endpoints passing topology; if none, every serving-terminating endpoint
///     (topology is ignored: with nothing ready there were no hints to follow).
///   - `has_any_endpoints` is true when the set is not empty.
/// - Local set (computed when the port uses Local policy: `internalTrafficPolicy: Local`,
///   or `externalTrafficPolicy: Local` with an external address):
///   - This node's ready endpoints; if none, this node's serving-terminating ones; if none,
///     empty. Topology does not apply: the node is as close as it gets.
///   - `has_any_endpoints` is also true when any endpoint anywhere is ready or
///     serving-terminating, so an iTP=Local-only port knows whether to reject or drop.
/// - `all_reachable`: the union of both sets.
pub fn categorize_endpoints<'a>(
    port: &ServicePort,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> Categorized<'a> {
    let endpoints: Vec<&Endpoint> = endpoints.into_iter().collect();
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        return out;
    }
    let zone = node_labels.get(LABEL_TOPOLOGY_ZONE).map(String::as_str).unwrap_or("");

    if port.uses_cluster_endpoints() {
        let place = Place {
            node: node_name,
            zone,
            mode: port.topology_mode,
        };
        let scope = place.scope(&endpoints);
        out.cluster = endpoints
            .iter()
            .copied()
            .filter(|ep| ep.ready && place.within(ep, scope))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .copied()
                .filter(|ep| ep.is_serving_terminating())
                .collect();
        }
        out.has_any_endpoints = !out.cluster.is_empty();
    }

    if port.uses_local_endpoints() {
        out.has_any_endpoints |= endpoints.iter().any(|ep| ep.ready || ep.is_serving_terminating());
        out.local = endpoints.iter().copied().filter(|ep| ep.is_local && ep.ready).collect();
        if out.local.is_empty() {
            out.local = endpoints
                .iter()
                .copied()
                .filter(|ep| ep.is_local && ep.is_serving_terminating())
                .collect();
        }
    }

    let mut all: Vec<&Endpoint> = out.cluster.iter().chain(&out.local).copied().collect();
    all.sort();
    all.dedup_by_key(|ep| (ep.address, ep.port));
    out.all_reachable = all;
    out
}

/// How far cluster traffic is kept from leaving this node, once the hints are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Anywhere,
    SameZone,
    SameNode,
}

/// This node, as the hints name it.
struct Place<'a> {
    node: &'a str,
    zone: &'a str,
    mode: TopologyMode,
}

impl Place<'_> {
    /// The narrowest scope that every ready endpoint is hinted for and that this node has
    /// at least one endpoint in; upstream's topologyModeFromHints.
    fn scope(&self, endpoints: &[&Endpoint]) -> Scope {
        let mut ready = endpoints.iter().filter(|ep| ep.ready).peekable();
        if ready.peek().is_none() {
            return Scope::Anywhere;
        }
        let (mut all_node_hinted, mut any_for_node) = (true, false);
        let (mut all_zone_hinted, mut any_for_zone) = (true, false);
        for ep in ready {
            let nodes = self.node_hints(ep);
            all_node_hinted &= !nodes.is_empty();
            any_for_node |= nodes.has(self.node);
            let zones = self.zone_hints(ep);
            all_zone_hinted &= !zones.is_empty();
            any_for_zone |= zones.has(self.zone);
        }
        if all_node_hinted && any_for_node {
            Scope::SameNode
        } else if all_zone_hinted && any_for_zone {
            Scope::SameZone
        } else {
            Scope::Anywhere
        }
    }

    fn within(&self, ep: &Endpoint, scope: Scope) -> bool {
        match scope {
            Scope::Anywhere => true,
            Scope::SameZone => self.zone_hints(ep).has(self.zone),
            Scope::SameNode => self.node_hints(ep).has(self.node),
        }
    }

    fn zone_hints<'e>(&self, ep: &'e Endpoint) -> Hints<'e> {
        let implied = matches!(self.mode, TopologyMode::PreferSameZone | TopologyMode::PreferSameNode);
        Hints::read(&ep.zone_hints, implied.then_some(ep.zone.as_deref()).flatten())
    }

    fn node_hints<'e>(&self, ep: &'e Endpoint) -> Hints<'e> {
        let implied = self.mode == TopologyMode::PreferSameNode;
        Hints::read(&ep.node_hints, implied.then_some(ep.node_name.as_deref()).flatten())
    }
}

/// An endpoint's hints of one kind: written in the slice, or implied by the Service's
/// traffic distribution.
enum Hints<'e> {
    Written(&'e BTreeSet<String>),
    Implied(&'e str),
    None,
}

impl<'e> Hints<'e> {
    fn read(written: &'e BTreeSet<String>, implied: Option<&'e str>) -> Self {
        match implied {
            _ if !written.is_empty() => Self::Written(written),
            Some(place) if !place.is_empty() => Self::Implied(place),
            _ => Self::None,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::None)
    }

    /// Never true for an empty name: a node without a zone label matches no zone hint.
    fn has(&self, place: &str) -> bool {
        !place.is_empty()
            && match self {
                Self::Written(set) => set.contains(place),
                Self::Implied(p) => *p == place,
                Self::None => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::service::{Protocol, TargetPort, TrafficPolicy};

    const NODE: &str = "node-1";

    fn port(itp: TrafficPolicy, etp: TrafficPolicy, external: bool, mode: TopologyMode) -> ServicePort {
        ServicePort {
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            port: 80,
            protocol: Protocol::Tcp,
            node_port: external.then_some(30080),
            target_port: TargetPort::Number(8080),
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: None,
            internal_traffic_policy: itp,
            external_traffic_policy: etp,
            health_check_node_port: None,
            topology_mode: mode,
        }
    }

    fn cluster_port() -> ServicePort {
        port(
            TrafficPolicy::Cluster,
            TrafficPolicy::Cluster,
            false,
            TopologyMode::None,
        )
    }

    /// An endpoint `10.0.0.<n>`; `state` is "ready", "unready", "serving-terminating" or
    /// "terminating" (not serving); it runs on `node` in zone `zone-of-<node>`.
    fn ep(n: u8, state: &str, node: &str) -> Endpoint {
        let (ready, serving, terminating) = match state {
            "ready" => (true, true, false),
            "unready" => (false, false, false),
            "serving-terminating" => (false, true, true),
            "terminating" => (false, false, true),
            other => panic!("unknown state {other}"),
        };
        Endpoint {
            address: IpAddr::from([10, 0, 0, n]),
            port: 8080,
            ready,
            serving,
            terminating,
            node_name: Some(node.to_owned()),
            zone: Some(format!("zone-of-{node}")),
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
            is_local: node == NODE,
        }
    }

    fn hinted(mut e: Endpoint, zones: &[&str]) -> Endpoint {
        e.zone_hints = zones.iter().map(|z| (*z).to_owned()).collect();
        e
    }

    fn labels(zone: Option<&str>) -> BTreeMap<String, String> {
        zone.map(|z| (LABEL_TOPOLOGY_ZONE.to_owned(), z.to_owned()))
            .into_iter()
            .collect()
    }

    fn octets(eps: &[&Endpoint]) -> Vec<u8> {
        eps.iter()
            .map(|e| match e.address {
                IpAddr::V4(a) => a.octets()[3],
                IpAddr::V6(_) => unreachable!(),
            })
            .collect()
    }

    /// (cluster, local, all_reachable, has_any) as last octets, for compact assertions.
    fn run(p: &ServicePort, eps: &[Endpoint], zone: Option<&str>) -> (Vec<u8>, Vec<u8>, Vec<u8>, bool) {
        let c = categorize_endpoints(p, eps, NODE, &labels(zone));
        (
            octets(&c.cluster),
            octets(&c.local),
            octets(&c.all_reachable),
            c.has_any_endpoints,
        )
    }

    #[test]
    fn no_endpoints() {
        assert_eq!(run(&cluster_port(), &[], None), (vec![], vec![], vec![], false));
        let local = port(TrafficPolicy::Local, TrafficPolicy::Cluster, false, TopologyMode::None);
        assert_eq!(run(&local, &[], None), (vec![], vec![], vec![], false));
    }

    #[test]
    fn cluster_policy_uses_ready_endpoints_only() {
        let eps = [
            ep(1, "ready", NODE),
            ep(2, "unready", "node-2"),
            ep(3, "ready", "node-2"),
            ep(4, "serving-terminating", "node-2"),
        ];
        assert_eq!(run(&cluster_port(), &eps, None), (vec![1, 3], vec![], vec![1, 3], true));
    }

    #[test]
    fn cluster_policy_falls_back_to_serving_terminating() {
        let eps = [
            ep(1, "unready", NODE),
            ep(2, "serving-terminating", "node-2"),
            ep(3, "terminating", "node-2"),
            ep(4, "serving-terminating", NODE),
        ];
        assert_eq!(run(&cluster_port(), &eps, None), (vec![2, 4], vec![], vec![2, 4], true));
    }

    #[test]
    fn cluster_policy_with_nothing_usable() {
        let eps = [ep(1, "unready", NODE), ep(2, "terminating", "node-2")];
        assert_eq!(run(&cluster_port(), &eps, None), (vec![], vec![], vec![], false));
    }

    #[test]
    fn internal_local_uses_this_nodes_endpoints() {
        let p = port(TrafficPolicy::Local, TrafficPolicy::Cluster, false, TopologyMode::None);
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2"), ep(3, "unready", NODE)];
        assert_eq!(run(&p, &eps, None), (vec![], vec![1], vec![1], true));
    }

    #[test]
    fn internal_local_with_no_local_endpoints_still_knows_others_exist() {
        let p = port(TrafficPolicy::Local, TrafficPolicy::Cluster, false, TopologyMode::None);
        let eps = [ep(2, "ready", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![], vec![], vec![], true));
        let eps = [ep(2, "serving-terminating", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![], vec![], vec![], true));
        let eps = [ep(2, "unready", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![], vec![], vec![], false));
    }

    #[test]
    fn local_fallback_is_independent_of_cluster() {
        // Ready endpoints elsewhere, only a terminating one here: the cluster set stays on
        // the ready ones, the local set falls back to the terminating one.
        let p = port(TrafficPolicy::Cluster, TrafficPolicy::Local, true, TopologyMode::None);
        let eps = [ep(1, "serving-terminating", NODE), ep(2, "ready", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![2], vec![1], vec![1, 2], true));
    }

    #[test]
    fn external_local_keeps_cluster_set_for_short_circuit() {
        let p = port(TrafficPolicy::Cluster, TrafficPolicy::Local, true, TopologyMode::None);
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![1, 2], vec![1], vec![1, 2], true));
    }

    #[test]
    fn external_local_without_external_address_is_cluster() {
        let p = port(TrafficPolicy::Cluster, TrafficPolicy::Local, false, TopologyMode::None);
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![1, 2], vec![], vec![1, 2], true));
    }

    #[test]
    fn internal_local_with_external_address_needs_both_sets() {
        let p = port(TrafficPolicy::Local, TrafficPolicy::Cluster, true, TopologyMode::None);
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2")];
        assert_eq!(run(&p, &eps, None), (vec![1, 2], vec![1], vec![1, 2], true));
    }

    #[test]
    fn zone_hints_matching_this_zone_narrow_the_cluster_set() {
        let eps = [
            hinted(ep(1, "ready", NODE), &["a"]),
            hinted(ep(2, "ready", "node-2"), &["b"]),
            hinted(ep(3, "ready", "node-3"), &["a", "b"]),
            ep(4, "unready", "node-4"),
        ];
        assert_eq!(
            run(&cluster_port(), &eps, Some("a")),
            (vec![1, 3], vec![], vec![1, 3], true)
        );
        assert_eq!(
            run(&cluster_port(), &eps, Some("b")),
            (vec![2, 3], vec![], vec![2, 3], true)
        );
    }

    #[test]
    fn zone_hints_ignored_without_match_or_when_incomplete() {
        let eps = [
            hinted(ep(1, "ready", NODE), &["a"]),
            hinted(ep(2, "ready", "node-2"), &["b"]),
        ];
        assert_eq!(
            run(&cluster_port(), &eps, Some("c")).0,
            vec![1, 2],
            "no hint for zone c"
        );
        assert_eq!(run(&cluster_port(), &eps, None).0, vec![1, 2], "node has no zone label");
        let eps = [hinted(ep(1, "ready", NODE), &["a"]), ep(2, "ready", "node-2")];
        assert_eq!(
            run(&cluster_port(), &eps, Some("a")).0,
            vec![1, 2],
            "one ready endpoint unhinted"
        );
        // Unready endpoints' missing hints do not matter.
        let eps = [hinted(ep(1, "ready", NODE), &["a"]), ep(2, "unready", "node-2")];
        assert_eq!(run(&cluster_port(), &eps, Some("a")).0, vec![1]);
    }

    #[test]
    fn zone_hints_do_not_apply_to_local_set_or_fallback() {
        let p = port(TrafficPolicy::Cluster, TrafficPolicy::Local, true, TopologyMode::None);
        let eps = [
            hinted(ep(1, "ready", NODE), &["b"]),
            hinted(ep(2, "ready", "node-2"), &["a"]),
        ];
        assert_eq!(run(&p, &eps, Some("a")), (vec![2], vec![1], vec![1, 2], true));
        let eps = [
            hinted(ep(1, "serving-terminating", NODE), &["b"]),
            hinted(ep(2, "serving-terminating", "node-2"), &["a"]),
        ];
        assert_eq!(run(&cluster_port(), &eps, Some("a")).0, vec![1, 2]);
    }

    #[test]
    fn prefer_close_reads_endpoint_zones_as_hints() {
        let p = port(
            TrafficPolicy::Cluster,
            TrafficPolicy::Cluster,
            false,
            TopologyMode::PreferSameZone,
        );
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2"), ep(3, "ready", NODE)];
        assert_eq!(run(&p, &eps, Some("zone-of-node-1")).0, vec![1, 3]);
        assert_eq!(
            run(&p, &eps, Some("zone-of-node-9")).0,
            vec![1, 2, 3],
            "no endpoint in our zone"
        );
        let mut zoneless = ep(4, "ready", "node-4");
        zoneless.zone = None;
        let eps = [ep(1, "ready", NODE), zoneless];
        assert_eq!(
            run(&p, &eps, Some("zone-of-node-1")).0,
            vec![1, 4],
            "an endpoint without zone"
        );
        // Without the distribution, zones alone are not hints.
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2")];
        assert_eq!(run(&cluster_port(), &eps, Some("zone-of-node-1")).0, vec![1, 2]);
    }

    #[test]
    fn prefer_same_node_and_node_hints() {
        let p = port(
            TrafficPolicy::Cluster,
            TrafficPolicy::Cluster,
            false,
            TopologyMode::PreferSameNode,
        );
        let eps = [ep(1, "ready", NODE), ep(2, "ready", "node-2")];
        assert_eq!(run(&p, &eps, Some("zone-of-node-1")).0, vec![1]);
        // No endpoint on this node: falls back to same zone, then anywhere.
        let eps = [ep(2, "ready", "node-2"), ep(3, "ready", "node-3")];
        assert_eq!(run(&p, &eps, Some("zone-of-node-2")).0, vec![2]);
        assert_eq!(run(&p, &eps, Some("zone-of-node-1")).0, vec![2, 3]);
        // Written node hints apply whatever the mode.
        let mut a = ep(1, "ready", "node-2");
        a.node_hints = BTreeSet::from([NODE.to_owned()]);
        let mut b = ep(2, "ready", "node-2");
        b.node_hints = BTreeSet::from(["node-2".to_owned()]);
        assert_eq!(run(&cluster_port(), &[a, b], None).0, vec![1]);
    }

    #[test]
    fn all_reachable_is_deduplicated_union() {
        let p = port(TrafficPolicy::Cluster, TrafficPolicy::Local, true, TopologyMode::None);
        let eps = [
            hinted(ep(1, "ready", NODE), &["b"]),
            hinted(ep(2, "ready", "node-2"), &["a"]),
            hinted(ep(3, "ready", NODE), &["a"]),
        ];
        // Cluster: zone a -> 2, 3. Local: 1, 3. Union: 1, 2, 3 (3 once).
        assert_eq!(run(&p, &eps, Some("a")), (vec![2, 3], vec![1, 3], vec![1, 2, 3], true));
    }
}
