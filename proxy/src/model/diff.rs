//! What changed between two desired states, so a backend touches only that.
//!
//! The diff names what changed; the data stays in the two states (a backend reads new
//! values from the new state and, to clean up, old ones from the old state).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    desired::{DesiredPort, DesiredState, EndpointSetId, Frontend},
    service::{ServiceName, ServicePortName},
};

/// The difference between two [`DesiredState`]s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    pub added: BTreeSet<ServicePortName>,
    pub removed: BTreeSet<ServicePortName>,
    pub changed: BTreeMap<ServicePortName, PortChange>,
    pub service_cidrs_changed: bool,
    /// Services whose health check appeared, went away, or changed port or count.
    pub health_checks_changed: BTreeSet<ServiceName>,
}

/// What changed within one Service port present in both states.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortChange {
    pub frontends_added: BTreeSet<Frontend>,
    pub frontends_removed: BTreeSet<Frontend>,
    /// Present in both, with a different rule (target, masquerade, short circuit, ranges).
    pub frontends_changed: BTreeSet<Frontend>,
    /// Sets that appeared, went away, or whose backends changed.
    pub endpoint_sets_changed: BTreeSet<EndpointSetId>,
    pub affinity_changed: bool,
}

impl Diff {
    pub fn between(old: &DesiredState, new: &DesiredState) -> Self {
        let (added, removed, both) = compare_keys(&old.ports, &new.ports);
        let changed = both
            .into_iter()
            .filter(|name| old.ports[*name] != new.ports[*name])
            .map(|name| (name.clone(), PortChange::between(&old.ports[name], &new.ports[name])))
            .collect();
        let (hc_added, hc_removed, hc_both) = compare_keys(&old.health_checks, &new.health_checks);
        let health_checks_changed = hc_added
            .into_iter()
            .chain(hc_removed)
            .chain(
                hc_both
                    .into_iter()
                    .filter(|s| old.health_checks[*s] != new.health_checks[*s]),
            )
            .cloned()
            .collect();
        Self {
            added: added.into_iter().cloned().collect(),
            removed: removed.into_iter().cloned().collect(),
            changed,
            service_cidrs_changed: old.service_cidrs != new.service_cidrs,
            health_checks_changed,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.service_cidrs_changed
            && self.health_checks_changed.is_empty()
    }
}

impl PortChange {
    fn between(old: &DesiredPort, new: &DesiredPort) -> Self {
        let (added, removed, both) = compare_keys(&old.frontends, &new.frontends);
        let (sets_added, sets_removed, sets_both) = compare_keys(&old.endpoint_sets, &new.endpoint_sets);
        Self {
            frontends_added: added.into_iter().copied().collect(),
            frontends_removed: removed.into_iter().copied().collect(),
            frontends_changed: both
                .into_iter()
                .filter(|f| old.frontends[*f] != new.frontends[*f])
                .copied()
                .collect(),
            endpoint_sets_changed: sets_added
                .into_iter()
                .chain(sets_removed)
                .chain(
                    sets_both
                        .into_iter()
                        .filter(|id| old.endpoint_sets[*id] != new.endpoint_sets[*id]),
                )
                .copied()
                .collect(),
            affinity_changed: old.affinity != new.affinity,
        }
    }
}

/// Keys only in `new`, only in `old`, and in both.
fn compare_keys<'a, K: Ord, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> (Vec<&'a K>, Vec<&'a K>, Vec<&'a K>) {
    let added = new.keys().filter(|k| !old.contains_key(*k)).collect();
    let (both, removed) = old.keys().partition(|k| new.contains_key(*k));
    (added, removed, both)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use serde_json::json;

    use super::*;
    use crate::model::{
        desired::{FrontendKind, ModelConfig, NodeInfo, Target},
        endpoints::{EndpointsMap, endpoints_map},
        fixtures::{ready, service, simple_slice},
        net::IpFamily,
        service::{Protocol, ServicePortMap, TrafficPolicy, service_ports},
    };

    fn services(n: usize) -> ServicePortMap {
        (0..n)
            .flat_map(|i| {
                service_ports(&service(json!({
                    "metadata": {"namespace": "ns", "name": format!("svc-{i}")},
                    "spec": {"type": "NodePort", "clusterIP": format!("10.96.0.{}", i + 1),
                             "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}]}
                })))
                .unwrap()
            })
            .collect()
    }

    fn endpoints(n: usize, extra_for_first: bool) -> EndpointsMap {
        let slices: Vec<_> = (0..n)
            .map(|i| {
                let mut eps = vec![ready(&format!("10.244.1.{}", i + 10), "node-1")];
                if extra_for_first && i == 0 {
                    eps.push(ready("10.244.2.99", "node-2"));
                }
                simple_slice(&format!("svc-{i}"), &format!("svc-{i}-1"), "http", 8080, eps)
            })
            .collect();
        endpoints_map(&slices, "node-1").unwrap()
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-1".into(),
            addresses: vec!["10.250.0.11".parse().unwrap()],
            labels: BTreeMap::new(),
        }
    }

    fn state(services: &ServicePortMap, endpoints: &EndpointsMap) -> DesiredState {
        DesiredState::build(services, endpoints, &node(), &ModelConfig::default())
    }

    fn name(i: usize) -> ServicePortName {
        ServicePortName::new(&ServiceName::new("ns", format!("svc-{i}")), "http", Protocol::Tcp)
    }

    #[test]
    fn identical_states_have_an_empty_diff() {
        let s = state(&services(10), &endpoints(10, false));
        assert!(Diff::between(&s, &s.clone()).is_empty());
    }

    #[test]
    fn one_endpoint_change_is_one_changed_set() {
        let svcs = services(100);
        let old = state(&svcs, &endpoints(100, false));
        let new = state(&svcs, &endpoints(100, true));
        let diff = Diff::between(&old, &new);
        assert!(diff.added.is_empty() && diff.removed.is_empty());
        assert_eq!(diff.changed.keys().collect::<Vec<_>>(), [&name(0)]);
        let change = &diff.changed[&name(0)];
        let cluster_v4 = EndpointSetId {
            family: IpFamily::V4,
            policy: TrafficPolicy::Cluster,
        };
        assert_eq!(
            change,
            &PortChange {
                endpoint_sets_changed: BTreeSet::from([cluster_v4]),
                ..PortChange::default()
            },
            "frontends are untouched: only the set's members changed"
        );
    }

    #[test]
    fn services_added_and_removed() {
        let old = state(&services(2), &endpoints(2, false));
        let mut fewer = services(3);
        fewer.remove(&name(0));
        let new = state(&fewer, &endpoints(3, false));
        let diff = Diff::between(&old, &new);
        assert_eq!(diff.added, BTreeSet::from([name(2)]));
        assert_eq!(diff.removed, BTreeSet::from([name(0)]));
        assert!(diff.changed.is_empty());
    }

    #[test]
    fn losing_all_endpoints_changes_frontends_and_drops_the_set() {
        let svcs = services(2);
        let old = state(&svcs, &endpoints(2, false));
        let mut eps = endpoints(2, false);
        eps.remove(&name(1));
        let new = state(&svcs, &eps);
        let diff = Diff::between(&old, &new);
        let change = &diff.changed[&name(1)];
        assert_eq!(change.frontends_changed.len(), 2, "ClusterIP and NodePort now reject");
        assert!(change.frontends_added.is_empty() && change.frontends_removed.is_empty());
        assert_eq!(change.endpoint_sets_changed.len(), 1);
        let cip = Frontend {
            kind: FrontendKind::ClusterIp,
            address: IpAddr::from([10, 96, 0, 2]),
            port: 80,
        };
        assert_eq!(new.ports[&name(1)].frontends[&cip].target, Target::Reject);
    }

    #[test]
    fn frontend_moves_are_added_and_removed() {
        let svcs = services(1);
        let eps = endpoints(1, false);
        let old = state(&svcs, &eps);
        let moved_node = NodeInfo {
            addresses: vec!["10.250.0.12".parse().unwrap()],
            ..node()
        };
        let new = DesiredState::build(&svcs, &eps, &moved_node, &ModelConfig::default());
        let change = &Diff::between(&old, &new).changed[&name(0)];
        assert_eq!(change.frontends_added.len(), 1);
        assert_eq!(change.frontends_removed.len(), 1);
        assert!(change.endpoint_sets_changed.is_empty());
    }

    #[test]
    fn service_cidrs_and_health_checks_are_reported() {
        let svcs = services(1);
        let eps = endpoints(1, false);
        let old = state(&svcs, &eps);
        let config = ModelConfig {
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..ModelConfig::default()
        };
        let new = DesiredState::build(&svcs, &eps, &node(), &config);
        let diff = Diff::between(&old, &new);
        assert!(diff.service_cidrs_changed && diff.changed.is_empty());

        let lb = service_ports(&service(json!({
            "metadata": {"namespace": "ns", "name": "svc-0"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 32000,
                     "ports": [{"name": "http", "port": 80, "nodePort": 30000}]}
        })))
        .unwrap();
        let new = state(&lb, &eps);
        let diff = Diff::between(&old, &new);
        assert_eq!(
            diff.health_checks_changed,
            BTreeSet::from([ServiceName::new("ns", "svc-0")])
        );
        assert_eq!(diff.changed.len(), 1);
    }
}
