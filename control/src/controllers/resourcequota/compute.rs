//! A quota's status from the objects of its namespace (pure): `hard` is `spec.hard`, and
//! `used` sums, for every resource it names, what the matching objects use
//! ([`crate::quota::usage`], the same rules the admission plugin charges by).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quota::{
    quantity::Quantity,
    usage::{self, ResourceList},
};

/// The objects of one namespace: the tracked core kinds by plural, and how many objects
/// each other `count/…` resource has.
#[derive(Debug, Default)]
pub struct Namespace<'a> {
    pub objects: BTreeMap<&'static str, Vec<&'a Value>>,
    pub counts: BTreeMap<String, i64>,
}

/// `status.used` for `quota`.
pub fn used(quota: &Value, ns: &Namespace<'_>) -> ResourceList {
    let hard = usage::parse_list(&quota["spec"]["hard"]);
    let mut out = ResourceList::new();
    for name in hard.keys() {
        let total = match usage::tracked_kind_of(name) {
            Some(kind) => ns
                .objects
                .get(kind)
                .into_iter()
                .flatten()
                .filter(|o| usage::quota_matches(quota, "", kind, o))
                .filter_map(|o| usage::usage("", kind, o).get(name).copied())
                // The sum keeps the first quantity's format (`256Mi`, not `268435456`).
                .reduce(|a, b| a.add(&b))
                .unwrap_or_default(),
            // Other kinds are counted only by unscoped quotas (scopes select pods).
            None if quota_is_scoped(quota) => Quantity::zero(),
            None => Quantity::count(ns.counts.get(name).copied().unwrap_or(0)),
        };
        out.insert(name.clone(), total);
    }
    out
}

fn quota_is_scoped(quota: &Value) -> bool {
    quota["spec"]["scopes"].as_array().is_some_and(|s| !s.is_empty())
        || quota["spec"]["scopeSelector"]["matchExpressions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
}

/// The `count/…` names of `quota` that no tracked kind answers, with the group and plural
/// to list: `count/deployments.apps` → ("apps", "deployments").
pub fn listed_counts(quota: &Value) -> Vec<(String, String, String)> {
    quota["spec"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, _)| {
            let resource = name.strip_prefix("count/")?;
            if usage::tracked_kind_of(name).is_some() {
                return None;
            }
            let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
            Some((name.clone(), group.to_owned(), plural.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sums_matching_objects_for_each_hard_resource() {
        let quota = json!({"spec": {"hard": {
            "pods": "10", "requests.cpu": "4", "limits.memory": "1Gi", "services": "5",
            "services.nodeports": "2", "configmaps": "3", "count/deployments.apps": "2", "secrets": "9"}}});
        let pods = [
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "256Mi"}}}]}}),
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "0.5"}}}]}}),
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Failed"}}),
        ];
        let services = [
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
            json!({"spec": {"ports": [{"port": 80}]}}),
        ];
        let cm = json!({});
        let mut ns = Namespace::default();
        ns.objects.insert("pods", pods.iter().collect());
        ns.objects.insert("services", services.iter().collect());
        ns.objects.insert("configmaps", vec![&cm]);
        ns.counts.insert("count/deployments.apps".into(), 1);
        let used = used(&quota, &ns);
        let show: BTreeMap<&str, String> = used.iter().map(|(k, q)| (k.as_str(), q.to_string())).collect();
        assert_eq!(show["pods"], "2");
        assert_eq!(show["requests.cpu"], "750m");
        assert_eq!(show["limits.memory"], "256Mi");
        assert_eq!(show["services"], "2");
        assert_eq!(show["services.nodeports"], "1");
        assert_eq!(show["configmaps"], "1");
        assert_eq!(show["secrets"], "0");
        assert_eq!(show["count/deployments.apps"], "1");
    }

    #[test]
    fn scoped_quotas_count_only_the_pods_they_select() {
        let quota = json!({"spec": {"hard": {"pods": "5", "count/deployments.apps": "1"}, "scopes": ["BestEffort"]}});
        let pods = [
            json!({"spec": {"containers": [{"name": "a"}]}}),
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}}),
        ];
        let mut ns = Namespace::default();
        ns.objects.insert("pods", pods.iter().collect());
        ns.counts.insert("count/deployments.apps".into(), 3);
        let used = used(&quota, &ns);
        assert_eq!(used["pods"], Quantity::count(1));
        assert_eq!(used["count/deployments.apps"], Quantity::zero());
    }

    #[test]
    fn other_counts_are_listed_by_group_and_plural() {
        let quota =
            json!({"spec": {"hard": {"count/deployments.apps": "1", "count/pods": "2", "count/serviceaccounts": "3"}}});
        assert_eq!(
            listed_counts(&quota),
            vec![
                ("count/deployments.apps".into(), "apps".into(), "deployments".into()),
                ("count/serviceaccounts".into(), String::new(), "serviceaccounts".into()),
            ]
        );
    }
}
