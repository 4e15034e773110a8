//! What one object charges against a ResourceQuota, and which quotas match it: the pure
//! part both the quota controller (summing a namespace) and the ResourceQuota admission
//! plugin (charging one create) read, so the two cannot count differently.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::quantity::Quantity;

/// Resource name → quantity, sorted as upstream prints them.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Resources counted from pods besides `requests.*`/`limits.*`.
const POD_COMPUTE_ALIASES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Quota names that require every container to state the resource (upstream's
/// backward-compatible rule for cpu and memory only).
const MUST_SPECIFY: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The scopes a quota may name (`spec.scopes`, `spec.scopeSelector`).
pub const SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
    "VolumeAttributesClass",
];

/// Reads a `ResourceList` (`spec.hard`, `status.used`); entries that do not parse are left
/// out (validation refuses them on write).
pub fn parse_list(v: &Value) -> ResourceList {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), Quantity::parse(q.as_str()?).ok()?)))
        .collect()
}

pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(list.iter().map(|(k, q)| (k.clone(), json!(q.to_string()))).collect())
}

/// `count/pods` or `count/deployments.apps`: the object-count name of a resource.
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// The kinds whose usage goes beyond one object count (the rest are only `count/…`).
pub const TRACKED: &[&str] = &["pods", "services", "configmaps", "secrets", "persistentvolumeclaims"];

/// Whether `name` is computed from a core kind in [`TRACKED`] (else it is a `count/` of
/// some other resource, or nothing we count).
pub fn tracked_kind_of(name: &str) -> Option<&'static str> {
    match name {
        "pods" | "count/pods" | "cpu" | "memory" | "ephemeral-storage" => Some("pods"),
        n if n.starts_with("limits.") => Some("pods"),
        "requests.storage" => Some("persistentvolumeclaims"),
        n if n.starts_with("requests.") => Some("pods"),
        n if n.starts_with("hugepages-") => Some("pods"),
        "services" | "count/services" | "services.nodeports" | "services.loadbalancers" => Some("services"),
        "configmaps" | "count/configmaps" => Some("configmaps"),
        "secrets" | "count/secrets" => Some("secrets"),
        "persistentvolumeclaims" | "count/persistentvolumeclaims" => Some("persistentvolumeclaims"),
        _ => None,
    }
}

/// What one object of `group`/`plural` uses.
pub fn usage(group: &str, plural: &str, obj: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    if group.is_empty() {
        match plural {
            "pods" => return pod_usage(obj),
            "services" => service_usage(obj, &mut out),
            "configmaps" | "secrets" | "persistentvolumeclaims" | "replicationcontrollers" | "resourcequotas" => {
                out.insert(plural.to_owned(), Quantity::count(1));
            }
            _ => {}
        }
        if plural == "persistentvolumeclaims"
            && let Some(q) = obj["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(|s| Quantity::parse(s).ok())
        {
            out.insert("requests.storage".into(), q);
        }
    }
    out.insert(count_name(group, plural), Quantity::count(1));
    out
}

fn service_usage(svc: &Value, out: &mut ResourceList) {
    out.insert("services".into(), Quantity::count(1));
    let spec = &svc["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let ports = spec["ports"].as_array().map_or(0, Vec::len) as i64;
    let node_ports = match ty {
        "NodePort" => ports,
        "LoadBalancer" if spec["allocateLoadBalancerNodePorts"] != false => ports,
        _ => 0,
    };
    out.insert("services.nodeports".into(), Quantity::count(node_ports));
    out.insert(
        "services.loadbalancers".into(),
        Quantity::count(i64::from(ty == "LoadBalancer")),
    );
}

/// A pod that has ended uses nothing (upstream's `QuotaV1Pod`).
fn pod_counts(pod: &Value) -> bool {
    !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn pod_usage(pod: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    if !pod_counts(pod) {
        return out;
    }
    out.insert("pods".into(), Quantity::count(1));
    out.insert("count/pods".into(), Quantity::count(1));
    for (field, prefix) in [("requests", "requests."), ("limits", "limits.")] {
        for (resource, q) in pod_resources(&pod["spec"], field) {
            if field == "requests" && POD_COMPUTE_ALIASES.contains(&resource.as_str()) {
                out.insert(resource.clone(), q);
            }
            out.insert(format!("{prefix}{resource}"), q);
        }
    }
    out
}

/// A container's `requests` (falling back, per resource, to its limit, as API defaulting
/// does) or `limits`.
fn container_resources(c: &Value, field: &str) -> ResourceList {
    let mut out = parse_list(&c["resources"][field]);
    if field == "requests" {
        for (k, q) in parse_list(&c["resources"]["limits"]) {
            out.entry(k).or_insert(q);
        }
    }
    out
}

fn add_into(into: &mut ResourceList, from: &ResourceList) {
    for (k, q) in from {
        let sum = into.get(k).map_or(*q, |have| have.add(q));
        into.insert(k.clone(), sum);
    }
}

/// The pod's effective requests or limits, as upstream's `PodRequests`: the containers'
/// sum (with restartable init containers, i.e. sidecars) or the largest init container,
/// whichever is more, plus the pod overhead.
pub fn pod_resources(spec: &Value, field: &str) -> ResourceList {
    let mut sum = ResourceList::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        add_into(&mut sum, &container_resources(c, field));
    }
    let mut init_max = ResourceList::new();
    let mut sidecars = ResourceList::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let r = container_resources(c, field);
        if c["restartPolicy"] == "Always" {
            add_into(&mut sidecars, &r);
            add_into(&mut sum, &r);
        } else {
            // An init container runs beside the sidecars started before it.
            let mut with_sidecars = sidecars.clone();
            add_into(&mut with_sidecars, &r);
            for (k, q) in with_sidecars {
                if init_max.get(&k).is_none_or(|have| *have < q) {
                    init_max.insert(k, q);
                }
            }
        }
    }
    for (k, q) in init_max {
        if sum.get(&k).is_none_or(|have| *have < q) {
            sum.insert(k, q);
        }
    }
    add_into(&mut sum, &parse_list(&spec["overhead"]));
    sum
}

fn best_effort(pod: &Value) -> bool {
    let spec = &pod["spec"];
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
        .all(|c| {
            ["requests", "limits"].iter().all(|f| {
                c["resources"][f]
                    .as_object()
                    .is_none_or(|m| !m.contains_key("cpu") && !m.contains_key("memory"))
            })
        })
}

/// Whether a scope selector term (or a plain scope, as an `Exists` term) selects `pod`.
fn scope_matches(pod: &Value, scope: &str, operator: &str, values: &[&str]) -> bool {
    let spec = &pod["spec"];
    match scope {
        "Terminating" => spec["activeDeadlineSeconds"].as_i64().is_some_and(|d| d >= 0),
        "NotTerminating" => spec["activeDeadlineSeconds"].as_i64().is_none_or(|d| d < 0),
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "PriorityClass" => {
            let class = spec["priorityClassName"].as_str().filter(|c| !c.is_empty());
            match operator {
                "In" => class.is_some_and(|c| values.contains(&c)),
                "NotIn" => class.is_none_or(|c| !values.contains(&c)),
                "DoesNotExist" => class.is_none(),
                _ => class.is_some(),
            }
        }
        "CrossNamespacePodAffinity" => ["podAffinity", "podAntiAffinity"].iter().any(|a| {
            let aff = &spec["affinity"][a];
            let required = aff["requiredDuringSchedulingIgnoredDuringExecution"].as_array();
            let preferred = aff["preferredDuringSchedulingIgnoredDuringExecution"].as_array();
            required
                .into_iter()
                .flatten()
                .chain(preferred.into_iter().flatten().map(|p| &p["podAffinityTerm"]))
                .any(|t| {
                    t["namespaceSelector"].is_object() || t["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                })
        }),
        _ => false,
    }
}

/// Whether `quota` applies to an object of `group`/`plural`: a quota with scopes applies
/// to pods the scopes select, and to nothing else.
pub fn quota_matches(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let spec = &quota["spec"];
    let scopes: Vec<&str> = spec["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let terms = spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if scopes.is_empty() && terms.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    scopes.iter().all(|s| scope_matches(obj, s, "Exists", &[]))
        && terms.iter().all(|t| {
            let values: Vec<&str> = t["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            scope_matches(
                obj,
                t["scopeName"].as_str().unwrap_or_default(),
                t["operator"].as_str().unwrap_or("Exists"),
                &values,
            )
        })
}

/// The containers (init ones too) that do not state a resource the quota constrains,
/// worded as upstream's "must specify limits.cpu for: a,b; requests.memory for: c", or
/// None when every container does.
pub fn missing_constraints(pod: &Value, hard: &ResourceList) -> Option<String> {
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = &pod["spec"];
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        for required in MUST_SPECIFY.iter().filter(|r| hard.contains_key(**r)) {
            let (field, resource) = match required.split_once('.') {
                Some(("limits", r)) => ("limits", r),
                Some((_, r)) => ("requests", r),
                None => ("requests", *required),
            };
            if !container_resources(c, field).contains_key(resource) {
                missing.entry(required).or_default().insert(name.clone());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| format!("{r} for: {}", names.iter().cloned().collect::<Vec<_>>().join(",")))
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// `pods=1,requests.cpu=500m`: upstream's way of printing a list in a quota refusal.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, q)| format!("{k}={q}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).expect("quantity")
    }

    fn pod(containers: Value) -> Value {
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn pods_charge_requests_limits_and_their_aliases() {
        let p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}},
        ]));
        let u = usage("", "pods", &p);
        assert_eq!(u["pods"], Quantity::count(1));
        assert_eq!(u["count/pods"], Quantity::count(1));
        assert_eq!(u["requests.cpu"], q("750m"), "b's request defaults to its limit");
        assert_eq!(u["cpu"], q("750m"));
        assert_eq!(u["requests.memory"].to_string(), "192Mi");
        assert_eq!(u["limits.cpu"], q("1500m"));
        assert_eq!(u["limits.memory"], q("128Mi"));
    }

    #[test]
    fn init_containers_count_as_the_larger_of_max_and_sum() {
        let p = json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m"}}}],
            "overhead": {"cpu": "100m"},
        }});
        assert_eq!(usage("", "pods", &p)["requests.cpu"], q("2100m"));
    }

    #[test]
    fn ended_pods_use_nothing() {
        let p = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Succeeded"}});
        assert!(usage("", "pods", &p).is_empty());
    }

    #[test]
    fn services_count_node_ports_and_load_balancers() {
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &lb);
        assert_eq!(u["services.nodeports"], Quantity::count(2));
        assert_eq!(u["services.loadbalancers"], Quantity::count(1));
        assert_eq!(u["count/services"], Quantity::count(1));
        let plain = usage("", "services", &json!({"spec": {"ports": [{"port": 80}]}}));
        assert_eq!(plain["services.nodeports"], Quantity::zero());
    }

    #[test]
    fn other_kinds_count_as_objects() {
        let u = usage("apps", "deployments", &json!({}));
        assert_eq!(u.keys().collect::<Vec<_>>(), vec!["count/deployments.apps"]);
        assert_eq!(usage("", "configmaps", &json!({}))["configmaps"], Quantity::count(1));
    }

    #[test]
    fn scopes_select_pods_only() {
        let quota = json!({"spec": {"scopes": ["BestEffort"]}});
        let be = pod(json!([{"name": "a"}]));
        let burstable = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        assert!(quota_matches(&quota, "", "pods", &be));
        assert!(!quota_matches(&quota, "", "pods", &burstable));
        assert!(!quota_matches(&quota, "", "services", &json!({})));
        let terminating = json!({"spec": {"scopes": ["Terminating"]}});
        assert!(!quota_matches(&terminating, "", "pods", &be));
        let deadline = json!({"spec": {"activeDeadlineSeconds": 30, "containers": []}});
        assert!(quota_matches(&terminating, "", "pods", &deadline));
        let class = json!({"spec": {"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert!(!quota_matches(&class, "", "pods", &be));
        assert!(quota_matches(
            &class,
            "",
            "pods",
            &json!({"spec": {"priorityClassName": "high"}})
        ));
        assert!(quota_matches(&json!({"spec": {}}), "", "services", &json!({})));
    }

    #[test]
    fn constrained_resources_must_be_stated_by_every_container() {
        let hard = parse_list(&json!({"limits.cpu": "2", "requests.memory": "1Gi", "pods": "3"}));
        let p = pod(json!([
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "a"},
            {"name": "c"},
        ]));
        assert_eq!(
            missing_constraints(&p, &hard).as_deref(),
            Some("must specify limits.cpu for: a,c; requests.memory for: a,c")
        );
        let ok = pod(json!([{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]));
        assert_eq!(missing_constraints(&ok, &hard), None);
    }

    #[test]
    fn refusals_print_sorted_pairs() {
        let l = parse_list(&json!({"pods": "1", "requests.cpu": "500m"}));
        assert_eq!(pretty(&l), "pods=1,requests.cpu=500m");
    }
}
