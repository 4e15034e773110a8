//! Which nodes can take a Pod: upstream's default filter plugins that matter without
//! volumes, in upstream's order, each failure worded as upstream words it (the words end
//! up in `kubectl describe` and in tools that grep for them).
//!
//! As upstream, a node is judged by the first plugin that rejects it; that plugin may give
//! several reasons ("Insufficient cpu" and "Insufficient memory").
//!
//! Not enforced: required pod affinity (only anti-affinity is), anti-affinity terms'
//! non-empty `namespaceSelector` (the scheduler does not watch Namespaces; the term then
//! covers its `namespaces`, or the Pod's own namespace), volumes, topology spread
//! constraints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerPort, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
};

use super::{
    node_info::NodeInfo,
    resources::{self, Counting},
};
use crate::apiserver::selector::LabelSelector;

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";
pub const REASON_CPU: &str = "Insufficient cpu";
pub const REASON_MEMORY: &str = "Insufficient memory";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Whether `node` can take `pod`: `Err` holds the first failing plugin's reasons.
/// `cluster` is every node (with `node` among them), for rules that span a topology domain.
pub fn filter(pod: &Pod, node: &NodeInfo, cluster: &[NodeInfo]) -> Result<(), Vec<String>> {
    let checks: [&dyn Fn() -> Vec<String>; 6] = [
        &|| unschedulable(pod, node),
        &|| taints(pod, node),
        &|| node_affinity(pod, node),
        &|| ports(pod, node),
        &|| fit(pod, node),
        &|| anti_affinity(pod, node, cluster),
    ];
    for check in checks {
        let reasons = check();
        if !reasons.is_empty() {
            return Err(reasons);
        }
    }
    Ok(())
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// Upstream's NodeUnschedulable: a cordoned node takes only Pods that tolerate its taint.
fn unschedulable(pod: &Pod, node: &NodeInfo) -> Vec<String> {
    let cordoned = node.node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if cordoned && !tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
        return vec![REASON_UNSCHEDULABLE.into()];
    }
    Vec::new()
}

/// Whether one toleration tolerates one taint, as upstream's `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        // An empty key with Exists tolerates everything (of the effect).
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty() && t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The node's taints, with a not-ready node's taint added when the node lifecycle
/// controller has not put it there (yet: it taints only after its grace period).
pub fn effective_taints(node: &NodeInfo) -> Vec<Taint> {
    let mut taints = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready && !taints.iter().any(|t| t.key == TAINT_NOT_READY) {
        taints.push(Taint {
            key: TAINT_NOT_READY.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    taints
}

/// Upstream's TaintToleration: every NoSchedule and NoExecute taint must be tolerated; the
/// reason names the first that is not.
fn taints(pod: &Pod, node: &NodeInfo) -> Vec<String> {
    let tolerations = tolerations(pod);
    effective_taints(node)
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
        .map(|t| {
            vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            )]
        })
        .unwrap_or_default()
}

/// Upstream's NodeAffinity filter: `nodeSelector` and the required node affinity.
fn node_affinity(pod: &Pod, node: &NodeInfo) -> Vec<String> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    let labels = node.node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    let affinity_ok = required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| term_matches(t, &labels, node.name()))
    });
    if selector_ok && affinity_ok {
        Vec::new()
    } else {
        vec![REASON_NODE_AFFINITY.into()]
    }
}

/// A node selector term: all its expressions and fields hold. A term with neither
/// matches no node, as upstream.
pub fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let as_int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [want]) = (value.and_then(as_int), values) else {
                return false;
            };
            let Some(want) = as_int(want) else { return false };
            if r.operator == "Gt" { have > want } else { have < want }
        }
        _ => false,
    }
}

/// Host ports a Pod takes: its containers' and its sidecars' (which keep running).
fn host_ports(pod: &Pod) -> Vec<&ContainerPort> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|hp| hp > 0))
        .collect()
}

/// Two host ports clash on the same port and protocol when their addresses overlap (the
/// wildcard overlaps every address).
fn ports_clash(a: &ContainerPort, b: &ContainerPort) -> bool {
    let protocol = |p: &ContainerPort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let ip = |p: &ContainerPort| {
        p.host_ip
            .clone()
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| "0.0.0.0".into())
    };
    let (ia, ib) = (ip(a), ip(b));
    a.host_port == b.host_port && protocol(a) == protocol(b) && (ia == ib || ia == "0.0.0.0" || ib == "0.0.0.0")
}

/// Upstream's NodePorts.
fn ports(pod: &Pod, node: &NodeInfo) -> Vec<String> {
    let wanted = host_ports(pod);
    if wanted.is_empty() {
        return Vec::new();
    }
    let taken: Vec<&ContainerPort> = node.pods.iter().flat_map(|p| host_ports(p)).collect();
    if wanted.iter().any(|w| taken.iter().any(|t| ports_clash(w, t))) {
        vec![REASON_PORTS.into()]
    } else {
        Vec::new()
    }
}

/// Upstream's NodeResourcesFit filter: the Pod count, then CPU and memory against what is
/// allocatable minus what the node's Pods request.
fn fit(pod: &Pod, node: &NodeInfo) -> Vec<String> {
    let allocatable = resources::allocatable(node.node);
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > allocatable.pods {
        reasons.push(REASON_TOO_MANY_PODS.into());
    }
    let want = resources::pod_requests(pod, Counting::Exact);
    let used = node.requested(Counting::Exact);
    if want.milli_cpu > 0 && want.milli_cpu > allocatable.resources.milli_cpu - used.milli_cpu {
        reasons.push(REASON_CPU.into());
    }
    if want.memory > 0 && want.memory > allocatable.resources.memory - used.memory {
        reasons.push(REASON_MEMORY.into());
    }
    reasons
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Whether `term` (written in a Pod of namespace `owner_ns`) selects `other`.
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, other: &Pod) -> bool {
    let other_ns = namespace(other);
    let all_namespaces = term
        .namespace_selector
        .as_ref()
        .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_none());
    let listed = term.namespaces.as_deref().unwrap_or_default();
    let ns_ok = all_namespaces
        || if listed.is_empty() {
            other_ns == owner_ns
        } else {
            listed.iter().any(|n| n == other_ns)
        };
    if !ns_ok {
        return false;
    }
    let selector = term
        .label_selector
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| LabelSelector::from_label_selector_json(&v).ok())
        .unwrap_or_else(LabelSelector::nothing);
    selector.matches(&other.metadata.labels.clone().unwrap_or_default())
}

/// Whether two nodes share the term's topology domain. A node that lacks the topology
/// label is in no domain, as upstream, except for the hostname key: the kubelet always
/// sets that label to the node's name, and a hand-made Node without it is its own domain.
fn same_domain(key: &str, a: &NodeInfo, b: &NodeInfo) -> bool {
    match (a.label(key), b.label(key)) {
        (Some(x), Some(y)) => x == y,
        (None, None) if key == HOSTNAME_LABEL => a.name() == b.name(),
        _ => false,
    }
}

fn required_anti_affinity(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default()
}

/// Upstream's InterPodAffinity filter, anti-affinity half: no Pod already in the node's
/// domain may be selected by the Pod's terms, and the Pod may not be selected by theirs.
fn anti_affinity(pod: &Pod, node: &NodeInfo, cluster: &[NodeInfo]) -> Vec<String> {
    let uid = pod.metadata.uid.as_deref();
    let is_self = |p: &Pod| uid.is_some() && p.metadata.uid.as_deref() == uid;
    for other in cluster {
        for existing in other.pods.iter().filter(|p| !is_self(p)) {
            let violated = required_anti_affinity(existing)
                .iter()
                .any(|t| same_domain(&t.topology_key, node, other) && term_selects(t, namespace(existing), pod));
            if violated {
                return vec![REASON_EXISTING_ANTI_AFFINITY.into()];
            }
        }
    }
    for term in required_anti_affinity(pod) {
        for other in cluster.iter().filter(|o| same_domain(&term.topology_key, node, o)) {
            if other
                .pods
                .iter()
                .any(|p| !is_self(p) && term_selects(term, namespace(pod), p))
            {
                return vec![REASON_ANTI_AFFINITY.into()];
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    use super::*;

    pub fn node(name: &str, cpu: &str, memory: &str, extra: Value) -> Node {
        let mut n = json!({
            "metadata": {"name": name, "labels": {}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        merge(&mut n, extra);
        serde_json::from_value(n).expect("node")
    }

    pub fn pod(name: &str, cpu: &str, extra: Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {}},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]},
        });
        merge(&mut p, extra);
        serde_json::from_value(p).expect("pod")
    }

    /// A JSON merge patch, to write only what a test is about.
    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    fn check(pod: &Pod, node: &Node, on_node: &[Pod]) -> Result<(), Vec<String>> {
        let info = NodeInfo::new(node, on_node.iter().collect());
        filter(pod, &info, std::slice::from_ref(&info))
    }

    fn err(reason: &str) -> Result<(), Vec<String>> {
        Err(vec![reason.to_string()])
    }

    #[test]
    fn cpu_and_memory_count_what_bound_pods_request() {
        let n = node("n", "2", "4Gi", json!({}));
        assert_eq!(check(&pod("a", "1500m", json!({})), &n, &[]), Ok(()));
        let bound = [pod("b", "1", json!({}))];
        assert_eq!(check(&pod("a", "1500m", json!({})), &n, &bound), err(REASON_CPU));
        let big = pod(
            "a",
            "3",
            json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "3", "memory": "5Gi"}}}]}}),
        );
        assert_eq!(check(&big, &n, &[]), Err(vec![REASON_CPU.into(), REASON_MEMORY.into()]));
    }

    #[test]
    fn terminated_pods_are_the_callers_to_leave_out_and_pod_count_is_capped() {
        let n = node("n", "2", "4Gi", json!({"status": {"allocatable": {"pods": "1"}}}));
        assert_eq!(check(&pod("a", "0", json!({})), &n, &[]), Ok(()));
        assert_eq!(
            check(&pod("a", "0", json!({})), &n, &[pod("b", "0", json!({}))]),
            err(REASON_TOO_MANY_PODS)
        );
    }

    #[test]
    fn host_ports_conflict_on_same_port_protocol_and_overlapping_address() {
        let with_port = |name: &str, port: i32, proto: &str, ip: &str| {
            pod(
                name,
                "0",
                json!({"spec": {"containers": [{"name": "c", "image": "x",
                "ports": [{"containerPort": 80, "hostPort": port, "protocol": proto, "hostIP": ip}]}]}}),
            )
        };
        let n = node("n", "2", "4Gi", json!({}));
        let bound = [with_port("b", 8080, "TCP", "")];
        assert_eq!(
            check(&with_port("a", 8080, "TCP", "10.0.0.1"), &n, &bound),
            err(REASON_PORTS)
        );
        assert_eq!(check(&with_port("a", 8080, "UDP", ""), &n, &bound), Ok(()));
        assert_eq!(check(&with_port("a", 8081, "TCP", ""), &n, &bound), Ok(()));
        let on_ip = [with_port("b", 8080, "TCP", "10.0.0.2")];
        assert_eq!(check(&with_port("a", 8080, "TCP", "10.0.0.1"), &n, &on_ip), Ok(()));
    }

    #[test]
    fn node_selector_must_match_labels() {
        let n = node("n", "2", "4Gi", json!({"metadata": {"labels": {"disk": "ssd"}}}));
        assert_eq!(
            check(
                &pod("a", "0", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                &n,
                &[]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &pod("a", "0", json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
                &n,
                &[]
            ),
            err(REASON_NODE_AFFINITY)
        );
    }

    fn affinity(terms: Value) -> Value {
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}})
    }

    #[test]
    fn required_node_affinity_operators_and_fields() {
        let n = node(
            "n1",
            "2",
            "4Gi",
            json!({"metadata": {"labels": {"zone": "a", "gen": "5"}}}),
        );
        let expr = |key: &str, op: &str, values: Value| {
            affinity(json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]))
        };
        let cases = [
            (expr("zone", "In", json!(["a", "b"])), true),
            (expr("zone", "In", json!(["b"])), false),
            (expr("zone", "NotIn", json!(["b"])), true),
            (expr("missing", "NotIn", json!(["b"])), true),
            (expr("zone", "Exists", Value::Null), true),
            (expr("zone", "DoesNotExist", Value::Null), false),
            (expr("gen", "Gt", json!(["4"])), true),
            (expr("gen", "Lt", json!(["4"])), false),
            (expr("zone", "Gt", json!(["4"])), false),
            (
                affinity(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])),
                true,
            ),
            (
                affinity(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}])),
                false,
            ),
            // Terms are ORed; an empty term matches nothing.
            (
                affinity(json!([{}, {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}])),
                true,
            ),
            (affinity(json!([{}])), false),
        ];
        for (i, (extra, fits)) in cases.into_iter().enumerate() {
            let want = if fits { Ok(()) } else { err(REASON_NODE_AFFINITY) };
            assert_eq!(check(&pod("a", "0", extra), &n, &[]), want, "case {i}");
        }
    }

    #[test]
    fn taints_need_tolerations() {
        let n = node(
            "n",
            "2",
            "4Gi",
            json!({"spec": {"taints": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                {"key": "gpu", "value": "yes", "effect": "NoExecute"},
                {"key": "soft", "effect": "PreferNoSchedule"},
            ]}}),
        );
        let tolerating = |t: Value| pod("a", "0", json!({"spec": {"tolerations": t}}));
        assert_eq!(
            check(&pod("a", "0", json!({})), &n, &[]),
            err("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }")
        );
        let cp = json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"});
        assert_eq!(
            check(&tolerating(json!([cp])), &n, &[]),
            err("node(s) had untolerated taint {gpu: yes}")
        );
        let gpu_wrong = json!({"key": "gpu", "operator": "Equal", "value": "no"});
        assert_eq!(
            check(&tolerating(json!([cp, gpu_wrong])), &n, &[]),
            err("node(s) had untolerated taint {gpu: yes}")
        );
        let gpu = json!({"key": "gpu", "value": "yes"});
        assert_eq!(check(&tolerating(json!([cp, gpu])), &n, &[]), Ok(()));
        assert_eq!(
            check(&tolerating(json!([{"operator": "Exists"}])), &n, &[]),
            Ok(()),
            "empty key with Exists tolerates all"
        );
    }

    #[test]
    fn a_node_that_is_not_ready_is_tainted() {
        let n = node(
            "n",
            "2",
            "4Gi",
            json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        );
        assert_eq!(
            check(&pod("a", "0", json!({})), &n, &[]),
            err("node(s) had untolerated taint {node.kubernetes.io/not-ready: }")
        );
        let t = json!({"spec": {"tolerations": [{"key": TAINT_NOT_READY, "operator": "Exists"}]}});
        assert_eq!(check(&pod("a", "0", t), &n, &[]), Ok(()));
    }

    #[test]
    fn a_cordoned_node_takes_only_pods_tolerating_it() {
        let n = node("n", "2", "4Gi", json!({"spec": {"unschedulable": true}}));
        assert_eq!(check(&pod("a", "0", json!({})), &n, &[]), err(REASON_UNSCHEDULABLE));
        let t = json!({"spec": {"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}});
        assert_eq!(check(&pod("a", "0", t), &n, &[]), Ok(()));
    }

    fn anti(selector: Value, namespaces: Value) -> Value {
        json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector, "namespaces": namespaces, "topologyKey": HOSTNAME_LABEL}]}}}})
    }

    #[test]
    fn required_anti_affinity_on_hostname() {
        let n1 = node("n1", "2", "4Gi", json!({}));
        let n2 = node("n2", "2", "4Gi", json!({}));
        let web = pod("web-1", "0", json!({"metadata": {"labels": {"app": "web"}}}));
        let other_ns = pod(
            "web-x",
            "0",
            json!({"metadata": {"namespace": "other", "labels": {"app": "web"}}}),
        );
        let on_n1 = [web];
        let cluster = [NodeInfo::new(&n1, on_n1.iter().collect()), NodeInfo::new(&n2, vec![])];
        let incoming = pod("web-2", "0", anti(json!({"matchLabels": {"app": "web"}}), Value::Null));
        let mut incoming_labelled = incoming.clone();
        incoming_labelled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        assert_eq!(filter(&incoming, &cluster[0], &cluster), err(REASON_ANTI_AFFINITY));
        assert_eq!(filter(&incoming, &cluster[1], &cluster), Ok(()));

        // Only the Pod's namespace, unless the term names others.
        let elsewhere = [other_ns];
        let cluster = [NodeInfo::new(&n1, elsewhere.iter().collect())];
        assert_eq!(filter(&incoming, &cluster[0], &cluster), Ok(()));
        let naming = pod(
            "web-2",
            "0",
            anti(json!({"matchLabels": {"app": "web"}}), json!(["other"])),
        );
        assert_eq!(filter(&naming, &cluster[0], &cluster), err(REASON_ANTI_AFFINITY));

        // An existing Pod's anti-affinity keeps the incoming one away too.
        let guard = [pod(
            "guard",
            "0",
            anti(json!({"matchLabels": {"app": "web"}}), Value::Null),
        )];
        let cluster = [NodeInfo::new(&n1, guard.iter().collect())];
        assert_eq!(
            filter(&incoming_labelled, &cluster[0], &cluster),
            err(REASON_EXISTING_ANTI_AFFINITY)
        );
    }
}
