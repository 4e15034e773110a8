//! The desired state: what every backend programs, computed from the Services, their
//! endpoints, this node and the proxy's configuration.
//!
//! It answers, for every address:port:protocol the node must handle, "where does a packet
//! go, and is its source rewritten?" in backend-neutral terms. A backend maps frontends to
//! its lookups (nftables maps, BPF hash maps, …) and endpoint sets to its load-balancing
//! structures; it never re-derives policy. Hairpin traffic (an endpoint reaching itself
//! through its Service) is always masqueraded, by every backend, so no rule states it.
//!
//! Everything is in `BTreeMap`s and sorted `Vec`s, so equal inputs give equal states and
//! byte-identical renders, and [`super::diff`] can compare two states entry by entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    diff::Diff,
    endpoints::{Endpoint, EndpointsMap},
    net::{IpFamily, IpNet},
    service::{ServiceName, ServicePort, ServicePortMap, ServicePortName, SessionAffinity, TrafficPolicy},
    topology::{Categorized, categorize_endpoints},
};

/// The node this proxy programs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// The Node object's name, which EndpointSlices use in `nodeName`.
    pub name: String,
    /// The node's own IPs: candidates for NodePort frontends.
    pub addresses: Vec<IpAddr>,
    /// The Node's labels, for its topology zone.
    pub labels: BTreeMap<String, String>,
}

/// Proxy settings that shape the desired state (kube-proxy's flags of the same names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelConfig {
    /// `--cluster-cidr`: pod addresses. Traffic from outside them to a ClusterIP is
    /// masqueraded so replies come back through this node; empty disables that (and the
    /// short-circuit of pod traffic under `externalTrafficPolicy: Local`).
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`: which node IPs serve NodePorts. Empty means all of
    /// [`NodeInfo::addresses`].
    pub nodeport_addresses: Vec<IpNet>,
    /// `--masquerade-all`: masquerade every packet to a ClusterIP.
    pub masquerade_all: bool,
    /// The Service CIDRs. Traffic to an address in them that is no ClusterIP is dropped
    /// rather than routed out of the node.
    pub service_cidrs: Vec<IpNet>,
}

/// What made an address:port a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    /// One per selected node address.
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// Whether traffic to it follows `externalTrafficPolicy` (all but ClusterIP).
    pub fn is_external(self) -> bool {
        self != Self::ClusterIp
    }
}

/// An address and port the node answers for one Service port. The protocol is the
/// Service port's ([`ServicePortName::protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub address: IpAddr,
    pub port: u16,
}

/// Names one of a Service port's endpoint sets: per family, the set for Cluster-policy
/// traffic and the set for Local-policy traffic. Frontends share sets, so a backend builds
/// each once (one nftables chain, one BPF backend list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointSetId {
    pub family: IpFamily,
    pub policy: TrafficPolicy,
}

/// One destination of an endpoint set: only what the dataplane needs, so changes to
/// conditions or hints that do not change the set leave the desired state equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub is_local: bool,
}

impl From<&Endpoint> for Backend {
    fn from(ep: &Endpoint) -> Self {
        Self {
            address: ep.address,
            port: ep.port,
            is_local: ep.is_local,
        }
    }
}

/// What happens to a new connection to a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Load-balance over this (never empty) set.
    Forward(EndpointSetId),
    /// No usable endpoint anywhere: refuse (ICMP unreachable or TCP reset) so clients
    /// fail fast.
    Reject,
    /// Endpoints exist, but a Local policy allows none on this node: drop silently, so an
    /// external load balancer's health check (not a reset) decides to use other nodes.
    Drop,
}

/// Whether packets to a frontend get the node's address as source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masquerade {
    /// Always: under `--masquerade-all`, and for external traffic with
    /// `externalTrafficPolicy: Cluster`, whose replies must return through this node.
    Always,
    /// Unless the source is in these CIDRs (the pods): outside clients reaching a ClusterIP
    /// through this node must get replies back through it.
    UnlessFrom(Vec<IpNet>),
    /// Only hairpin traffic: the client's source IP is preserved.
    HairpinOnly,
}

/// Under `externalTrafficPolicy: Local`, traffic that starts on this node does not need the
/// client source IP preserved and must not be dropped for lack of local endpoints, so it
/// uses the cluster-wide set instead (upstream's "short circuit").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortCircuit {
    /// The set to use instead.
    pub to: EndpointSetId,
    /// Pod sources that take the short circuit without masquerade; traffic from the host's
    /// own addresses takes it too, masqueraded (its source would not route back).
    pub pod_sources: Vec<IpNet>,
}

/// How one frontend is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendRule {
    pub target: Target,
    pub masquerade: Masquerade,
    pub short_circuit: Option<ShortCircuit>,
    /// `loadBalancerSourceRanges` for LoadBalancer frontends: `None` allows every source;
    /// `Some` allows only these (an empty list, when the Service lists only ranges of the
    /// other family, allows none).
    pub source_ranges: Option<Vec<IpNet>>,
}

/// Everything programmed for one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPort {
    pub affinity: Option<SessionAffinity>,
    pub frontends: BTreeMap<Frontend, FrontendRule>,
    /// The sets the frontends forward to, each sorted and non-empty. A set no frontend uses
    /// is absent.
    pub endpoint_sets: BTreeMap<EndpointSetId, Vec<Backend>>,
}

/// A `healthCheckNodePort` this node serves, for external load balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Distinct addresses of this node's ready endpoints over all the Service's ports
    /// (terminating ones do not count: the node should be taken out while they drain).
    pub local_endpoints: usize,
}

/// Service ports whose Local-policy traffic is dropped for lack of local endpoints, per
/// family, for `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoLocalEndpoints {
    pub internal: usize,
    pub external: usize,
}

/// The whole desired state of the node's dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    pub ports: BTreeMap<ServicePortName, DesiredPort>,
    pub service_cidrs: Vec<IpNet>,
    pub health_checks: BTreeMap<ServiceName, HealthCheck>,
    pub no_local_endpoints: NoLocalEndpoints,
}

impl DesiredState {
    /// Computes the desired state. Endpoints of ports that no Service has are ignored.
    pub fn build(services: &ServicePortMap, endpoints: &EndpointsMap, node: &NodeInfo, config: &ModelConfig) -> Self {
        let mut state = Self {
            service_cidrs: config.service_cidrs.clone(),
            ..Self::default()
        };
        for (name, port) in services {
            let eps = endpoints.get(name).map(Vec::as_slice).unwrap_or_default();
            let desired = PortBuilder {
                port,
                node,
                config,
                counts: &mut state.no_local_endpoints,
            }
            .build(eps);
            state.ports.insert(name.clone(), desired);
        }
        state.health_checks = health_checks(services, endpoints);
        state
    }

    /// Brings the state up to date where `touched` ports may have changed (the names the
    /// change trackers handed over), rebuilding only those: at 10k Services a full
    /// [`build`](Self::build) and a [`Diff::between`] whole states cost ~60 ms, this well
    /// under one. Node and config changes touch every port: use `build` for them.
    ///
    /// Returns the previous values of the touched ports as a state of its own (with the
    /// previous Service CIDRs and health checks), and the diff between the two, which is
    /// what a backend's partial sync reads; no backend reads untouched ports of `old`.
    pub fn update(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        node: &NodeInfo,
        config: &ModelConfig,
        touched: &BTreeSet<ServicePortName>,
    ) -> (DesiredState, Diff) {
        let mut old = Self {
            service_cidrs: std::mem::replace(&mut self.service_cidrs, config.service_cidrs.clone()),
            health_checks: std::mem::take(&mut self.health_checks),
            no_local_endpoints: self.no_local_endpoints,
            ports: BTreeMap::new(),
        };
        let mut new_ports = BTreeMap::new();
        for name in touched {
            if let Some(prev) = self.ports.remove(name) {
                let (internal, external) = no_local_counts(&prev);
                self.no_local_endpoints.internal -= internal;
                self.no_local_endpoints.external -= external;
                old.ports.insert(name.clone(), prev);
            }
            let Some(port) = services.get(name) else { continue };
            let eps = endpoints.get(name).map(Vec::as_slice).unwrap_or_default();
            let mut counts = NoLocalEndpoints::default();
            let desired = PortBuilder {
                port,
                node,
                config,
                counts: &mut counts,
            }
            .build(eps);
            self.no_local_endpoints.internal += counts.internal;
            self.no_local_endpoints.external += counts.external;
            new_ports.insert(name.clone(), desired);
        }
        self.health_checks = health_checks(services, endpoints);
        // The diff of the touched ports alone: compare the two small states, then move
        // the new ports in.
        let view = Self {
            ports: new_ports,
            service_cidrs: self.service_cidrs.clone(),
            health_checks: self.health_checks.clone(),
            no_local_endpoints: self.no_local_endpoints,
        };
        let diff = Diff::between(&old, &view);
        self.ports.extend(view.ports);
        (old, diff)
    }
}

/// A port's share of [`NoLocalEndpoints`], read back from what [`PortBuilder`] built:
/// one per family whose ClusterIP, or whose external frontends, drop for want of local
/// endpoints.
fn no_local_counts(port: &DesiredPort) -> (usize, usize) {
    let mut internal = BTreeSet::new();
    let mut external = BTreeSet::new();
    for (fe, rule) in &port.frontends {
        if rule.target == Target::Drop {
            let family = IpFamily::of(fe.address);
            if fe.kind.is_external() {
                external.insert(family)
            } else {
                internal.insert(family)
            };
        }
    }
    (internal.len(), external.len())
}

struct PortBuilder<'a> {
    port: &'a ServicePort,
    node: &'a NodeInfo,
    config: &'a ModelConfig,
    counts: &'a mut NoLocalEndpoints,
}

impl PortBuilder<'_> {
    fn build(mut self, endpoints: &[Endpoint]) -> DesiredPort {
        let mut desired = DesiredPort {
            affinity: self.port.session_affinity,
            frontends: BTreeMap::new(),
            endpoint_sets: BTreeMap::new(),
        };
        let families: BTreeSet<IpFamily> = self.port.families().collect();
        for family in families {
            let of_family = endpoints.iter().filter(|ep| IpFamily::of(ep.address) == family);
            let sets = categorize_endpoints(self.port, of_family, &self.node.name, &self.node.labels);
            self.family(family, &sets, &mut desired);
        }
        desired
    }

    fn family(&mut self, family: IpFamily, sets: &Categorized<'_>, desired: &mut DesiredPort) {
        let port = self.port;
        let cluster = EndpointSetId {
            family,
            policy: TrafficPolicy::Cluster,
        };
        let local = EndpointSetId {
            family,
            policy: TrafficPolicy::Local,
        };
        let mut used = BTreeSet::new();

        if let Some(cluster_ip) = port.cluster_ip(family) {
            let target = self.target(sets, port.internal_policy_local(), family);
            if target == Target::Drop {
                self.counts.internal += 1;
            }
            let rule = FrontendRule {
                target,
                masquerade: self.cluster_ip_masquerade(family),
                short_circuit: None,
                source_ranges: None,
            };
            desired.frontends.insert(
                Frontend {
                    kind: FrontendKind::ClusterIp,
                    address: cluster_ip,
                    port: port.port,
                },
                rule,
            );
        }

        let external = self.external_frontends(family);
        if !external.is_empty() {
            let policy_local = port.external_policy_local();
            let target = self.target(sets, policy_local, family);
            if target == Target::Drop {
                self.counts.external += 1;
            }
            // Also when the local set is empty (`Target::Drop`): as upstream, only traffic
            // from outside the node is dropped; pods and the host still reach the Service
            // through the cluster-wide set. Without any endpoints (Reject) there is nothing
            // to short-circuit to.
            let short_circuit = (policy_local && !sets.cluster.is_empty()).then(|| ShortCircuit {
                to: cluster,
                pod_sources: of_family(&self.config.cluster_cidrs, family),
            });
            let masquerade = if policy_local {
                Masquerade::HairpinOnly
            } else {
                Masquerade::Always
            };
            let ranges = &port.load_balancer_source_ranges;
            for frontend in external {
                let source_ranges = (frontend.kind == FrontendKind::LoadBalancer && !ranges.is_empty())
                    .then(|| of_family(ranges, family));
                let rule = FrontendRule {
                    target: target.clone(),
                    masquerade: masquerade.clone(),
                    short_circuit: short_circuit.clone(),
                    source_ranges,
                };
                desired.frontends.insert(frontend, rule);
            }
        }

        for rule in desired.frontends.values() {
            if let Target::Forward(id) = rule.target {
                used.insert(id);
            }
            if let Some(sc) = &rule.short_circuit {
                used.insert(sc.to);
            }
        }
        for id in used.into_iter().filter(|id| id.family == family) {
            let members = if id == local { &sets.local } else { &sets.cluster };
            let mut backends: Vec<Backend> = members.iter().map(|ep| Backend::from(*ep)).collect();
            backends.sort();
            desired.endpoint_sets.insert(id, backends);
        }
    }

    /// Reject when nothing is usable anywhere; drop when the policy's set is empty here.
    fn target(&self, sets: &Categorized<'_>, policy_local: bool, family: IpFamily) -> Target {
        let (policy, members) = if policy_local {
            (TrafficPolicy::Local, &sets.local)
        } else {
            (TrafficPolicy::Cluster, &sets.cluster)
        };
        if !sets.has_any_endpoints {
            Target::Reject
        } else if members.is_empty() {
            Target::Drop
        } else {
            Target::Forward(EndpointSetId { family, policy })
        }
    }

    fn cluster_ip_masquerade(&self, family: IpFamily) -> Masquerade {
        let pods = of_family(&self.config.cluster_cidrs, family);
        if self.config.masquerade_all {
            Masquerade::Always
        } else if pods.is_empty() {
            Masquerade::HairpinOnly
        } else {
            Masquerade::UnlessFrom(pods)
        }
    }

    /// NodePorts on the selected node addresses, externalIPs and load balancer IPs, all of
    /// `family`. A family the Service has no ClusterIP in gets none, as upstream, whose
    /// per-family proxiers skip such a Service entirely.
    fn external_frontends(&self, family: IpFamily) -> Vec<Frontend> {
        let port = self.port;
        let mut out = Vec::new();
        if let Some(node_port) = port.node_port {
            let selected = self.node.addresses.iter().copied().filter(|addr| {
                IpFamily::of(*addr) == family
                    && (self.config.nodeport_addresses.is_empty()
                        || self.config.nodeport_addresses.iter().any(|cidr| cidr.contains(addr)))
            });
            out.extend(selected.map(|address| Frontend {
                kind: FrontendKind::NodePort,
                address,
                port: node_port,
            }));
        }
        let in_family = |ips: &[IpAddr], kind| {
            ips.iter()
                .copied()
                .filter(|ip| IpFamily::of(*ip) == family)
                .map(move |address| Frontend {
                    kind,
                    address,
                    port: port.port,
                })
                .collect::<Vec<_>>()
        };
        out.extend(in_family(&port.external_ips, FrontendKind::ExternalIp));
        out.extend(in_family(&port.load_balancer_ips, FrontendKind::LoadBalancer));
        out
    }
}

fn of_family(cidrs: &[IpNet], family: IpFamily) -> Vec<IpNet> {
    cidrs
        .iter()
        .copied()
        .filter(|c| IpFamily::of_net(c) == family)
        .collect()
}

fn health_checks(services: &ServicePortMap, endpoints: &EndpointsMap) -> BTreeMap<ServiceName, HealthCheck> {
    let mut local_ready: BTreeMap<ServiceName, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut checks = BTreeMap::new();
    for (name, port) in services {
        let Some(node_port) = port.health_check_node_port else {
            continue;
        };
        let service = name.service();
        let addrs = local_ready.entry(service.clone()).or_default();
        let eps = endpoints.get(name).into_iter().flatten();
        addrs.extend(eps.filter(|ep| ep.is_local && ep.ready).map(|ep| ep.address));
        checks.insert(
            service,
            HealthCheck {
                node_port,
                local_endpoints: 0,
            },
        );
    }
    for (service, check) in &mut checks {
        check.local_endpoints = local_ready.get(service).map_or(0, BTreeSet::len);
    }
    checks
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{
        endpoints::endpoints_map,
        fixtures::{ready, service, simple_slice, slice},
        service::{Protocol, service_ports},
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-1".into(),
            addresses: vec![ip("10.250.0.11"), ip("192.168.1.11"), ip("fd00:250::11")],
            labels: BTreeMap::from([("topology.kubernetes.io/zone".into(), "a".into())]),
        }
    }

    fn config() -> ModelConfig {
        ModelConfig {
            cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:244::/56")],
            nodeport_addresses: vec![],
            masquerade_all: false,
            service_cidrs: vec![cidr("10.96.0.0/16")],
        }
    }

    fn build(services: &[Value], slices: &[Value], node: &NodeInfo, config: &ModelConfig) -> DesiredState {
        let mut ports = ServicePortMap::new();
        for s in services {
            ports.extend(service_ports(&service(s.clone())).unwrap());
        }
        let slices: Vec<_> = slices.iter().map(|s| slice(s.clone())).collect();
        let eps = endpoints_map(&slices, &node.name).unwrap();
        DesiredState::build(&ports, &eps, node, config)
    }

    fn key(name: &str, port_name: &str) -> ServicePortName {
        ServicePortName::new(&ServiceName::new("ns", name), port_name, Protocol::Tcp)
    }

    fn web_slice(endpoints: Vec<Value>) -> Value {
        json!({
            "metadata": {"namespace": "ns", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    }

    fn web(spec: Value) -> Value {
        let mut full = json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                              "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
        if let (Some(m), Value::Object(extra)) = (full.as_object_mut(), spec) {
            m.extend(extra);
        }
        json!({"metadata": {"namespace": "ns", "name": "web"}, "spec": full})
    }

    fn v4(policy: TrafficPolicy) -> EndpointSetId {
        EndpointSetId {
            family: IpFamily::V4,
            policy,
        }
    }

    fn frontend(kind: FrontendKind, address: &str, port: u16) -> Frontend {
        Frontend {
            kind,
            address: ip(address),
            port,
        }
    }

    fn set(state: &DesiredState, port: &ServicePortName, id: EndpointSetId) -> Vec<String> {
        state.ports[port].endpoint_sets[&id]
            .iter()
            .map(|b| format!("{}:{}", b.address, b.port))
            .collect()
    }

    #[test]
    fn cluster_ip_service() {
        let state = build(
            &[web(
                json!({"ports": [{"name": "http", "port": 80}], "sessionAffinity": "ClientIP"}),
            )],
            &[web_slice(vec![
                ready("10.244.1.10", "node-1"),
                ready("10.244.2.10", "node-2"),
            ])],
            &node(),
            &config(),
        );
        let port = &state.ports[&key("web", "http")];
        assert_eq!(
            port.affinity,
            Some(SessionAffinity {
                timeout_seconds: 10_800
            })
        );
        assert_eq!(port.frontends.len(), 1);
        let rule = &port.frontends[&frontend(FrontendKind::ClusterIp, "10.96.0.10", 80)];
        assert_eq!(rule.target, Target::Forward(v4(TrafficPolicy::Cluster)));
        assert_eq!(rule.masquerade, Masquerade::UnlessFrom(vec![cidr("10.244.0.0/16")]));
        assert_eq!(rule.short_circuit, None);
        assert_eq!(
            set(&state, &key("web", "http"), v4(TrafficPolicy::Cluster)),
            ["10.244.1.10:8080", "10.244.2.10:8080"]
        );
        assert_eq!(port.endpoint_sets.len(), 1);
        assert_eq!(state.service_cidrs, vec![cidr("10.96.0.0/16")]);
        assert!(state.health_checks.is_empty());
    }

    #[test]
    fn masquerade_all_and_no_cluster_cidr() {
        let svc = web(json!({"ports": [{"name": "http", "port": 80}]}));
        let eps = web_slice(vec![ready("10.244.1.10", "node-1")]);
        let fe = frontend(FrontendKind::ClusterIp, "10.96.0.10", 80);
        let all = ModelConfig {
            masquerade_all: true,
            ..config()
        };
        let state = build(std::slice::from_ref(&svc), std::slice::from_ref(&eps), &node(), &all);
        assert_eq!(
            state.ports[&key("web", "http")].frontends[&fe].masquerade,
            Masquerade::Always
        );
        let none = ModelConfig {
            cluster_cidrs: vec![],
            ..config()
        };
        let state = build(&[svc], &[eps], &node(), &none);
        assert_eq!(
            state.ports[&key("web", "http")].frontends[&fe].masquerade,
            Masquerade::HairpinOnly
        );
    }

    #[test]
    fn no_endpoints_rejects_everywhere() {
        let state = build(&[web(json!({"type": "NodePort"}))], &[], &node(), &config());
        let port = &state.ports[&key("web", "http")];
        assert_eq!(port.frontends.len(), 3, "ClusterIP + 2 IPv4 node addresses");
        assert!(port.frontends.values().all(|r| r.target == Target::Reject));
        assert!(port.endpoint_sets.is_empty());
    }

    #[test]
    fn node_port_on_selected_addresses() {
        let svc = web(json!({"type": "NodePort"}));
        let eps = web_slice(vec![ready("10.244.2.10", "node-2")]);
        let state = build(
            std::slice::from_ref(&svc),
            std::slice::from_ref(&eps),
            &node(),
            &config(),
        );
        let port = &state.ports[&key("web", "http")];
        let nodeports: Vec<_> = port
            .frontends
            .keys()
            .filter(|f| f.kind == FrontendKind::NodePort)
            .collect();
        assert_eq!(
            nodeports,
            [
                &frontend(FrontendKind::NodePort, "10.250.0.11", 30080),
                &frontend(FrontendKind::NodePort, "192.168.1.11", 30080)
            ],
            "IPv4 addresses only: the Service is single-stack"
        );
        let rule = &port.frontends[nodeports[0]];
        assert_eq!(rule.target, Target::Forward(v4(TrafficPolicy::Cluster)));
        assert_eq!(rule.masquerade, Masquerade::Always);

        let only_underlay = ModelConfig {
            nodeport_addresses: vec![cidr("10.250.0.0/24")],
            ..config()
        };
        let state = build(&[svc], &[eps], &node(), &only_underlay);
        let nodeports: Vec<_> = state.ports[&key("web", "http")]
            .frontends
            .keys()
            .filter(|f| f.kind == FrontendKind::NodePort)
            .collect();
        assert_eq!(nodeports, [&frontend(FrontendKind::NodePort, "10.250.0.11", 30080)]);
    }

    #[test]
    fn external_ips_and_load_balancer() {
        let svc = web(json!({
            "type": "LoadBalancer", "externalIPs": ["192.0.2.10"],
            "loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8::/32"]
        }));
        let mut svc = svc;
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
        let state = build(
            &[svc],
            &[web_slice(vec![ready("10.244.2.10", "node-2")])],
            &node(),
            &config(),
        );
        let port = &state.ports[&key("web", "http")];
        let kinds: Vec<_> = port.frontends.keys().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FrontendKind::ClusterIp,
                FrontendKind::NodePort,
                FrontendKind::NodePort,
                FrontendKind::ExternalIp,
                FrontendKind::LoadBalancer
            ]
        );
        let eip = &port.frontends[&frontend(FrontendKind::ExternalIp, "192.0.2.10", 80)];
        assert_eq!(eip.masquerade, Masquerade::Always);
        assert_eq!(eip.source_ranges, None, "source ranges guard only load balancer IPs");
        let lb = &port.frontends[&frontend(FrontendKind::LoadBalancer, "203.0.113.10", 80)];
        assert_eq!(lb.source_ranges, Some(vec![cidr("198.51.100.0/24")]));
        assert_eq!(lb.target, Target::Forward(v4(TrafficPolicy::Cluster)));
    }

    #[test]
    fn external_local_forwards_locally_and_short_circuits() {
        let svc = web(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                             "healthCheckNodePort": 32000}));
        let eps = web_slice(vec![
            ready("10.244.1.10", "node-1"),
            ready("10.244.1.11", "node-1"),
            ready("10.244.2.10", "node-2"),
        ]);
        let state = build(&[svc], &[eps], &node(), &config());
        let name = key("web", "http");
        let port = &state.ports[&name];
        let np = &port.frontends[&frontend(FrontendKind::NodePort, "10.250.0.11", 30080)];
        assert_eq!(np.target, Target::Forward(v4(TrafficPolicy::Local)));
        assert_eq!(np.masquerade, Masquerade::HairpinOnly, "client source preserved");
        assert_eq!(
            np.short_circuit,
            Some(ShortCircuit {
                to: v4(TrafficPolicy::Cluster),
                pod_sources: vec![cidr("10.244.0.0/16")]
            })
        );
        let cip = &port.frontends[&frontend(FrontendKind::ClusterIp, "10.96.0.10", 80)];
        assert_eq!(
            cip.target,
            Target::Forward(v4(TrafficPolicy::Cluster)),
            "iTP is still Cluster"
        );
        assert_eq!(
            set(&state, &name, v4(TrafficPolicy::Local)),
            ["10.244.1.10:8080", "10.244.1.11:8080"]
        );
        assert_eq!(set(&state, &name, v4(TrafficPolicy::Cluster)).len(), 3);
        assert_eq!(
            state.health_checks[&ServiceName::new("ns", "web")],
            HealthCheck {
                node_port: 32000,
                local_endpoints: 2
            }
        );
    }

    #[test]
    fn external_local_without_local_endpoints_drops_external_only() {
        let svc = web(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                             "healthCheckNodePort": 32000}));
        let eps = web_slice(vec![ready("10.244.2.10", "node-2")]);
        let state = build(&[svc], &[eps], &node(), &config());
        let port = &state.ports[&key("web", "http")];
        let np = &port.frontends[&frontend(FrontendKind::NodePort, "10.250.0.11", 30080)];
        assert_eq!(np.target, Target::Drop);
        // In-node sources still reach the remote endpoint, as with kube-proxy.
        let sc = np.short_circuit.as_ref().expect("pods and the host short-circuit");
        assert_eq!(sc.to, v4(TrafficPolicy::Cluster));
        assert_eq!(set(&state, &key("web", "http"), v4(TrafficPolicy::Cluster)).len(), 1);
        let cip = &port.frontends[&frontend(FrontendKind::ClusterIp, "10.96.0.10", 80)];
        assert_eq!(cip.target, Target::Forward(v4(TrafficPolicy::Cluster)));
        assert_eq!(
            state.no_local_endpoints,
            NoLocalEndpoints {
                internal: 0,
                external: 1
            }
        );
        assert_eq!(state.health_checks[&ServiceName::new("ns", "web")].local_endpoints, 0);
        assert!(!port.endpoint_sets.contains_key(&v4(TrafficPolicy::Local)));
    }

    #[test]
    fn internal_local_uses_local_set_or_drops() {
        let svc = web(json!({"ports": [{"name": "http", "port": 80}], "internalTrafficPolicy": "Local"}));
        let fe = frontend(FrontendKind::ClusterIp, "10.96.0.10", 80);
        let both = web_slice(vec![ready("10.244.1.10", "node-1"), ready("10.244.2.10", "node-2")]);
        let here = build(std::slice::from_ref(&svc), &[both], &node(), &config());
        let port = &here.ports[&key("web", "http")];
        assert_eq!(port.frontends[&fe].target, Target::Forward(v4(TrafficPolicy::Local)));
        assert_eq!(
            set(&here, &key("web", "http"), v4(TrafficPolicy::Local)),
            ["10.244.1.10:8080"]
        );
        assert_eq!(port.endpoint_sets.len(), 1, "the unused cluster set is not emitted");

        let elsewhere = build(
            &[svc],
            &[web_slice(vec![ready("10.244.2.10", "node-2")])],
            &node(),
            &config(),
        );
        assert_eq!(elsewhere.ports[&key("web", "http")].frontends[&fe].target, Target::Drop);
        assert_eq!(
            elsewhere.no_local_endpoints,
            NoLocalEndpoints {
                internal: 1,
                external: 0
            }
        );
    }

    #[test]
    fn dual_stack_splits_endpoints_by_family() {
        let svc = json!({"metadata": {"namespace": "ns", "name": "web"},
                         "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                                  "externalIPs": ["192.0.2.10", "2001:db8::10"],
                                  "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}});
        let v6 = json!({
            "metadata": {"namespace": "ns", "name": "web-6", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["fd00:244::10"], "nodeName": "node-2"}],
        });
        let state = build(
            &[svc],
            &[web_slice(vec![ready("10.244.1.10", "node-1")]), v6],
            &node(),
            &config(),
        );
        let name = key("web", "http");
        let port = &state.ports[&name];
        let v6_set = EndpointSetId {
            family: IpFamily::V6,
            policy: TrafficPolicy::Cluster,
        };
        assert_eq!(set(&state, &name, v4(TrafficPolicy::Cluster)), ["10.244.1.10:8080"]);
        assert_eq!(set(&state, &name, v6_set), ["fd00:244::10:8080"]);
        let cip6 = &port.frontends[&frontend(FrontendKind::ClusterIp, "fd00:96::10", 80)];
        assert_eq!(cip6.target, Target::Forward(v6_set));
        assert_eq!(cip6.masquerade, Masquerade::UnlessFrom(vec![cidr("fd00:244::/56")]));
        let np6 = &port.frontends[&frontend(FrontendKind::NodePort, "fd00:250::11", 30080)];
        assert_eq!(np6.target, Target::Forward(v6_set));
        assert!(
            port.frontends
                .contains_key(&frontend(FrontendKind::ExternalIp, "2001:db8::10", 80))
        );
        assert_eq!(
            port.frontends.len(),
            2 + 3 + 2,
            "2 ClusterIPs, 3 node addresses, 2 externalIPs"
        );
    }

    #[test]
    fn single_stack_ignores_other_family_externals() {
        let svc = web(json!({"ports": [{"name": "http", "port": 80}], "externalIPs": ["2001:db8::10"]}));
        let state = build(&[svc], &[], &node(), &config());
        assert_eq!(state.ports[&key("web", "http")].frontends.len(), 1);
    }

    #[test]
    fn load_balancer_ranges_of_other_family_only_allow_none() {
        let mut svc = json!({"metadata": {"namespace": "ns", "name": "web"},
                             "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                                      "loadBalancerSourceRanges": ["198.51.100.0/24"],
                                      "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}});
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"ip": "2001:db8::20"}]}});
        let state = build(&[svc], &[], &node(), &config());
        let port = &state.ports[&key("web", "http")];
        let lb6 = &port.frontends[&frontend(FrontendKind::LoadBalancer, "2001:db8::20", 80)];
        assert_eq!(lb6.source_ranges, Some(vec![]));
    }

    #[test]
    fn terminating_endpoints_serve_when_nothing_is_ready() {
        let svc = web(json!({"ports": [{"name": "http", "port": 80}]}));
        let eps = web_slice(vec![
            json!({"addresses": ["10.244.1.10"], "nodeName": "node-1",
                   "conditions": {"ready": false, "serving": true, "terminating": true}}),
            json!({"addresses": ["10.244.1.11"], "nodeName": "node-1",
                   "conditions": {"ready": false, "serving": false, "terminating": true}}),
        ]);
        let state = build(&[svc], &[eps], &node(), &config());
        assert_eq!(
            set(&state, &key("web", "http"), v4(TrafficPolicy::Cluster)),
            ["10.244.1.10:8080"]
        );
    }

    #[test]
    fn ports_of_one_service_are_independent() {
        let svc = json!({"metadata": {"namespace": "ns", "name": "web"},
                         "spec": {"clusterIP": "10.96.0.10",
                                  "ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}});
        let slices = [serde_json::to_value(simple_slice(
            "web",
            "web-1",
            "http",
            8080,
            vec![ready("10.244.1.10", "node-1")],
        ))
        .unwrap()];
        let state = build(&[svc], &slices, &node(), &config());
        let metrics = &state.ports[&key("web", "metrics")];
        assert_eq!(
            metrics.frontends[&frontend(FrontendKind::ClusterIp, "10.96.0.10", 9090)].target,
            Target::Reject
        );
        let http = &state.ports[&key("web", "http")];
        assert!(matches!(
            http.frontends[&frontend(FrontendKind::ClusterIp, "10.96.0.10", 80)].target,
            Target::Forward(_)
        ));
    }

    #[test]
    fn build_is_deterministic() {
        let services = [
            web(json!({"type": "NodePort"})),
            json!({"metadata": {"namespace": "a", "name": "z"},
                               "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 1}]}}),
        ];
        let slices = [web_slice(vec![
            ready("10.244.2.10", "node-2"),
            ready("10.244.1.10", "node-1"),
        ])];
        let one = build(&services, &slices, &node(), &config());
        let two = build(&services, &slices, &node(), &config());
        assert_eq!(one, two);
        assert_eq!(format!("{one:?}"), format!("{two:?}"));
        let names: Vec<_> = one.ports.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["a/z:/TCP", "ns/web:http/TCP"]);
    }

    /// `update` with the touched names must land exactly where `build` from scratch does,
    /// with the diff `Diff::between` the whole states gives, including the counters of
    /// ports that drop for want of local endpoints.
    #[test]
    fn update_of_touched_ports_equals_a_fresh_build() {
        let (node, config) = (node(), config());
        let inputs = |local_eps: bool, extra: bool| {
            let mut services = vec![
                web(json!({"type": "NodePort", "externalTrafficPolicy": "Local"})),
                json!({"metadata": {"namespace": "ns", "name": "db"},
                       "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                                "ports": [{"name": "sql", "port": 5432}]}}),
            ];
            if extra {
                services.push(json!({"metadata": {"namespace": "ns", "name": "new"},
                    "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"],
                             "ports": [{"name": "http", "port": 80}]}}));
            }
            let here = if local_eps { "node-1" } else { "node-2" };
            let slices = vec![
                web_slice(vec![ready("10.244.1.10", here), ready("10.244.2.10", "node-2")]),
                json!({"metadata": {"namespace": "ns", "name": "db-1",
                                    "labels": {"kubernetes.io/service-name": "db"}},
                       "addressType": "IPv4", "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
                       "endpoints": [ready("10.244.3.10", "node-3")]}),
            ];
            let mut ports = ServicePortMap::new();
            for s in &services {
                ports.extend(service_ports(&service(s.clone())).unwrap());
            }
            let slices: Vec<_> = slices.into_iter().map(slice).collect();
            (ports, endpoints_map(&slices, &node.name).unwrap())
        };
        let (ports_a, eps_a) = inputs(true, false);
        let (ports_b, eps_b) = inputs(false, true);
        let a = DesiredState::build(&ports_a, &eps_a, &node, &config);
        let b = DesiredState::build(&ports_b, &eps_b, &node, &config);
        assert_eq!(b.no_local_endpoints.external, 1, "web lost its local endpoint");

        let touched: BTreeSet<ServicePortName> = [key("web", "http"), key("new", "http")].into_iter().collect();
        let mut updated = a.clone();
        let (old, diff) = updated.update(&ports_b, &eps_b, &node, &config, &touched);
        assert_eq!(updated, b, "update drifted from a fresh build");
        assert_eq!(diff, Diff::between(&a, &b));
        assert_eq!(old.ports.keys().collect::<Vec<_>>(), [&key("web", "http")]);
        assert_eq!(old.ports[&key("web", "http")], a.ports[&key("web", "http")]);

        // And back: the counters come down again, the new Service goes.
        let (_, back) = updated.update(&ports_a, &eps_a, &node, &config, &touched);
        assert_eq!(updated, a);
        assert_eq!(back.removed.iter().collect::<Vec<_>>(), [&key("new", "http")]);
    }
}
