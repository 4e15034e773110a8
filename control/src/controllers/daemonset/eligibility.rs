//! Whether a daemon pod belongs on a node: the node selector, required node affinity, and
//! the node's taints against the pod's tolerations plus those every daemon pod gets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PodSpec, Toleration};

// The same matching rules as the scheduler's (upstream shares them too).
use crate::scheduler::filter::term_matches;
pub use crate::scheduler::filter::tolerates;

/// Where a node stands for one DaemonSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligibility {
    /// A pod should be created there.
    pub should_run: bool,
    /// A pod already there may stay (only untolerated NoExecute taints, not NoSchedule
    /// ones, evict a running pod; a selector that no longer matches does).
    pub should_continue_running: bool,
}

/// The tolerations upstream's DaemonSet controller adds to every daemon pod, so that node
/// conditions that keep ordinary pods away do not keep away the pods that often fix them
/// (network plugins, storage drivers).
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    let mut out = vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(exists("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// The pod spec's tolerations with the daemon ones added (those it has already kept).
pub fn with_daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut all = spec.tolerations.clone().unwrap_or_default();
    for t in daemon_tolerations(spec.host_network.unwrap_or(false)) {
        if !all.iter().any(|have| have.key == t.key && have.effect == t.effect) {
            all.push(t);
        }
    }
    all
}

pub fn eligibility(node: &Node, spec: &PodSpec) -> Eligibility {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !selector_matches(spec, &labels) || !affinity_matches(spec, name, &labels) {
        return Eligibility {
            should_run: false,
            should_continue_running: false,
        };
    }
    let tolerations = with_daemon_tolerations(spec);
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    let evicting = untolerated("NoExecute");
    Eligibility {
        should_run: !evicting && !untolerated("NoSchedule"),
        should_continue_running: !evicting,
    }
}

fn selector_matches(spec: &PodSpec, labels: &BTreeMap<String, String>) -> bool {
    spec.node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Required node affinity: any term matches; within a term every expression and field does.
fn affinity_matches(spec: &PodSpec, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    let Some(required) = required else { return true };
    required
        .node_selector_terms
        .iter()
        .any(|term| term_matches(term, labels, node_name))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, Taint,
    };
    use kube::api::ObjectMeta;

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Taint::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    fn run(n: &Node, spec: &PodSpec) -> (bool, bool) {
        let e = eligibility(n, spec);
        (e.should_run, e.should_continue_running)
    }

    #[test]
    fn node_selector_must_match_every_label() {
        let spec = PodSpec {
            node_selector: Some([("disk".to_owned(), "ssd".to_owned())].into()),
            ..PodSpec::default()
        };
        assert_eq!(run(&node("a", &[("disk", "ssd")], &[]), &spec), (true, true));
        assert_eq!(run(&node("b", &[("disk", "hdd")], &[]), &spec), (false, false));
        assert_eq!(run(&node("c", &[], &[]), &spec), (false, false));
    }

    fn affinity(terms: Vec<NodeSelectorTerm>) -> PodSpec {
        PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..PodSpec::default()
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn required_affinity_terms_are_ored_and_their_requirements_anded() {
        let spec = affinity(vec![
            NodeSelectorTerm {
                match_expressions: Some(vec![req("zone", "In", &["a", "b"]), req("gpu", "DoesNotExist", &[])]),
                match_fields: None,
            },
            NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![req("metadata.name", "In", &["special"])]),
            },
        ]);
        assert!(eligibility(&node("n1", &[("zone", "a")], &[]), &spec).should_run);
        assert!(!eligibility(&node("n2", &[("zone", "a"), ("gpu", "1")], &[]), &spec).should_run);
        assert!(!eligibility(&node("n3", &[("zone", "c")], &[]), &spec).should_run);
        assert!(eligibility(&node("special", &[], &[]), &spec).should_run);
        let numbers = affinity(vec![NodeSelectorTerm {
            match_expressions: Some(vec![req("cores", "Gt", &["4"])]),
            match_fields: None,
        }]);
        assert!(eligibility(&node("big", &[("cores", "8")], &[]), &numbers).should_run);
        assert!(!eligibility(&node("small", &[("cores", "2")], &[]), &numbers).should_run);
        assert!(!eligibility(&node("any", &[], &[]), &affinity(vec![NodeSelectorTerm::default()])).should_run);
    }

    #[test]
    fn taints_keep_pods_away_unless_tolerated() {
        let plain = PodSpec::default();
        let tainted = node("t", &[], &[("dedicated", "NoSchedule")]);
        assert_eq!(run(&tainted, &plain), (false, true), "NoSchedule keeps a running pod");
        let evicting = node("e", &[], &[("dedicated", "NoExecute")]);
        assert_eq!(run(&evicting, &plain), (false, false));
        assert_eq!(
            run(&node("p", &[], &[("soft", "PreferNoSchedule")]), &plain),
            (true, true)
        );

        let tolerant = PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            ..PodSpec::default()
        };
        assert_eq!(run(&tainted, &tolerant), (true, true));
        assert_eq!(run(&evicting, &tolerant), (true, true));
        let everything = PodSpec {
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            ..PodSpec::default()
        };
        assert_eq!(run(&evicting, &everything), (true, true));
    }

    #[test]
    fn equal_tolerations_need_the_same_value_and_effect() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let t = |value: &str, effect: Option<&str>| Toleration {
            key: Some("k".into()),
            value: Some(value.into()),
            effect: effect.map(str::to_owned),
            ..Toleration::default()
        };
        assert!(tolerates(&t("v", None), &taint));
        assert!(tolerates(&t("v", Some("NoSchedule")), &taint));
        assert!(!tolerates(&t("w", None), &taint));
        assert!(!tolerates(&t("v", Some("NoExecute")), &taint));
    }

    #[test]
    fn daemon_pods_tolerate_node_conditions_and_host_network_ones_network_unavailable() {
        let plain = PodSpec::default();
        for (key, effect) in [
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/disk-pressure", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
            ("node.kubernetes.io/pid-pressure", "NoSchedule"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ] {
            assert_eq!(run(&node("n", &[], &[(key, effect)]), &plain), (true, true), "{key}");
        }
        let unavailable = node("n", &[], &[("node.kubernetes.io/network-unavailable", "NoSchedule")]);
        assert_eq!(run(&unavailable, &plain), (false, true));
        let host = PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        };
        assert_eq!(run(&unavailable, &host), (true, true));
        assert_eq!(with_daemon_tolerations(&host).len(), 7);
    }
}
