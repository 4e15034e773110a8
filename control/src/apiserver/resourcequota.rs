//! ResourceQuota's own rules: validation of `spec.hard`, scopes and status lists (422 naming
//! the field, as upstream's ValidateResourceQuota), and its Table cells.

use serde_json::{Value, json};

use super::status::Cause;
use crate::quota::{quantity::Quantity, usage};

/// Resource names a quota may constrain besides the prefixed and domain-qualified ones.
const STANDARD: &[&str] = &[
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

/// What scoped quotas may constrain: the pod count, and for all scopes but BestEffort the
/// pod compute resources.
const POD_COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

fn valid_resource_name(name: &str) -> bool {
    STANDARD.contains(&name)
        || name.strip_prefix("count/").is_some_and(|r| !r.is_empty())
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
        || (name.contains('/') && !name.starts_with('/') && !name.ends_with('/'))
}

fn validate_list(list: &Value, at: &str, causes: &mut Vec<Cause>) {
    if !list.is_null() && !list.is_object() {
        causes.push(Cause::invalid(
            at,
            "Invalid value: must be a map of resource names to quantities",
        ));
        return;
    }
    for (name, value) in list.as_object().into_iter().flatten() {
        let field = format!("{at}[{name}]");
        if !valid_resource_name(name) {
            causes.push(Cause::invalid(
                field.clone(),
                format!("Invalid value: {name:?}: must be a standard resource for quota"),
            ));
        }
        let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
        match Quantity::parse(&text) {
            Err(e) => causes.push(Cause::invalid(field, format!("Invalid value: {text:?}: {e}"))),
            Ok(q) if q.is_negative() => causes.push(Cause::invalid(
                field,
                format!("Invalid value: {text:?}: must be greater than or equal to 0"),
            )),
            Ok(_) => {}
        }
    }
}

/// Field rules of a ResourceQuota.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    validate_list(&spec["hard"], "spec.hard", causes);
    validate_list(&obj["status"]["hard"], "status.hard", causes);
    validate_list(&obj["status"]["used"], "status.used", causes);
    let mut scopes: Vec<String> = Vec::new();
    for (i, s) in spec["scopes"].as_array().into_iter().flatten().enumerate() {
        let s = s.as_str().unwrap_or_default();
        if !usage::SCOPES.contains(&s) {
            causes.push(Cause::not_supported(
                format!("spec.scopes[{i}]"),
                format!(
                    "Unsupported value: {s:?}: supported values: {}",
                    usage::SCOPES
                        .iter()
                        .map(|s| format!("{s:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        scopes.push(s.to_owned());
    }
    let terms = spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, t) in terms.iter().enumerate() {
        let at = format!("spec.scopeSelector.matchExpressions[{i}]");
        let scope = t["scopeName"].as_str().unwrap_or_default();
        if !usage::SCOPES.contains(&scope) {
            causes.push(Cause::not_supported(
                format!("{at}.scopeName"),
                format!("Unsupported value: {scope:?}"),
            ));
        }
        let op = t["operator"].as_str().unwrap_or_default();
        let values = t["values"].as_array().map_or(0, Vec::len);
        match op {
            "In" | "NotIn" if scope != "PriorityClass" => causes.push(Cause::invalid(
                format!("{at}.operator"),
                format!("Invalid value: {op:?}: must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity")
            )),
            "In" | "NotIn" if values == 0 => causes.push(Cause::required(format!("{at}.values"))),
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if values > 0 => causes.push(Cause::invalid(
                format!("{at}.values"),
                "Invalid value: must be no value when `Exists` or 'DoesNotExist' operator is used",
            )),
            "Exists" | "DoesNotExist" => {}
            _ => causes.push(Cause::not_supported(
                format!("{at}.operator"),
                format!("Unsupported value: {op:?}: supported values: \"DoesNotExist\", \"Exists\", \"In\", \"NotIn\""),
            )),
        }
        scopes.push(scope.to_owned());
    }
    let has = |s: &str| scopes.iter().any(|x| x == s);
    if has("Terminating") && has("NotTerminating") || has("BestEffort") && has("NotBestEffort") {
        causes.push(Cause::invalid(
            "spec.scopes",
            format!("Invalid value: {scopes:?}: conflicting scopes"),
        ));
    }
    if !scopes.is_empty() {
        for name in spec["hard"].as_object().into_iter().flatten().map(|(k, _)| k.as_str()) {
            let pods = matches!(name, "pods" | "count/pods");
            let fits = scopes.iter().all(|s| match s.as_str() {
                "BestEffort" => pods,
                "VolumeAttributesClass" => name.ends_with("storage") || name == "persistentvolumeclaims",
                _ => pods || POD_COMPUTE.contains(&name),
            });
            if !fits {
                causes.push(Cause::invalid(
                    "spec.scopes",
                    format!("Invalid value: {scopes:?}: unsupported scope applied to resource"),
                ));
                break;
            }
        }
    }
}

/// Upstream's REQUEST and LIMIT columns: `name: used/hard` for every resource in
/// `spec.hard`, the `limits.*` ones in LIMIT.
fn column(o: &Value, limits: bool) -> Value {
    let used = usage::parse_list(&o["status"]["used"]);
    let hard = usage::parse_list(&o["status"]["hard"]);
    let is_limit = |k: &str| k.split_once('.').is_some_and(|(p, _)| p == "limits");
    let mut names: Vec<&String> = o["spec"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
        .collect();
    names.sort();
    let cells: Vec<String> = names
        .into_iter()
        .filter(|k| is_limit(k) == limits)
        .map(|k| {
            let show = |l: &usage::ResourceList| l.get(k.as_str()).copied().unwrap_or_default().to_string();
            format!("{k}: {}/{}", show(&used), show(&hard))
        })
        .collect();
    json!(cells.join(", "))
}

pub fn request_column(o: &Value) -> Value {
    column(o, false)
}

pub fn limit_column(o: &Value) -> Value {
    column(o, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(obj: Value) -> Vec<String> {
        let mut c = Vec::new();
        validate(&obj, &mut c);
        c.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn hard_quantities_and_names_are_checked() {
        let got = causes(
            json!({"spec": {"hard": {"pods": "abc", "cpu": "-1", "bogus": "1", "count/deployments.apps": "2", "requests.nvidia.com/gpu": "1"}}}),
        );
        assert_eq!(
            got,
            vec![
                "spec.hard[bogus]: Invalid value: \"bogus\": must be a standard resource for quota",
                "spec.hard[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
                "spec.hard[pods]: Invalid value: \"abc\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            ]
        );
    }

    #[test]
    fn scopes_are_checked_against_each_other_and_the_resources() {
        assert_eq!(
            causes(json!({"spec": {"hard": {"pods": "1"}, "scopes": ["Bogus"]}})),
            vec![
                "spec.scopes[0]: Unsupported value: \"Bogus\": supported values: \"Terminating\", \"NotTerminating\", \"BestEffort\", \"NotBestEffort\", \"PriorityClass\", \"CrossNamespacePodAffinity\", \"VolumeAttributesClass\""
            ]
        );
        assert_eq!(
            causes(json!({"spec": {"hard": {"cpu": "1"}, "scopes": ["BestEffort"]}})),
            vec!["spec.scopes: Invalid value: [\"BestEffort\"]: unsupported scope applied to resource"]
        );
        assert_eq!(
            causes(json!({"spec": {"hard": {"pods": "1"}, "scopes": ["Terminating", "NotTerminating"]}})),
            vec!["spec.scopes: Invalid value: [\"Terminating\", \"NotTerminating\"]: conflicting scopes"]
        );
        assert!(
            causes(json!({"spec": {"hard": {"pods": "1", "limits.cpu": "2"}, "scopes": ["NotBestEffort"]}})).is_empty()
        );
    }

    #[test]
    fn columns_split_requests_and_limits() {
        let q = json!({"spec": {"hard": {"pods": "2", "limits.cpu": "2", "requests.cpu": "1"}},
            "status": {"hard": {"pods": "2", "limits.cpu": "2", "requests.cpu": "1"}, "used": {"pods": "1", "limits.cpu": "500m"}}});
        assert_eq!(request_column(&q), json!("pods: 1/2, requests.cpu: 0/1"));
        assert_eq!(limit_column(&q), json!("limits.cpu: 500m/2"));
    }
}
