//! The `scale` subresource of Deployments and ReplicaSets: an `autoscaling/v1` Scale that
//! is a view of the parent, not a stored object. Reads build it from the parent; writes
//! change only the parent's `spec.replicas`, under the parent's resourceVersion, so a
//! Scale read and written back conflicts exactly when the parent changed in between.

use serde_json::{Value, json};

use super::{
    meta,
    selector::LabelSelector,
    status::{ApiError, Cause},
};

/// The Scale view of a Deployment or ReplicaSet.
pub fn scale_of(parent: &Value) -> Value {
    let mut metadata = serde_json::Map::new();
    for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta::metadata(parent).and_then(|m| m.get(field)) {
            metadata.insert(field.into(), v.clone());
        }
    }
    // HPA and `kubectl scale` read the selector as a query string; an unparsable one
    // (validation refuses those on write) is left out rather than failing the read.
    let selector = LabelSelector::from_label_selector_json(&parent["spec"]["selector"])
        .ok()
        .filter(|s| !s.is_nothing())
        .map(|s| s.to_string());
    let mut status = json!({"replicas": parent["status"]["replicas"].as_i64().unwrap_or(0)});
    if let Some(selector) = selector {
        status["selector"] = json!(selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": parent["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": status,
    })
}

/// The parent after writing `scale` to it: its `spec.replicas` only. Refuses a Scale for
/// another object and replica counts that are not non-negative 32-bit integers.
pub fn apply_to_parent(parent: &Value, scale: &Value, name: &str) -> Result<Value, ApiError> {
    if !scale.is_object() {
        return Err(ApiError::bad_request("the body of a Scale must be a JSON object"));
    }
    match meta::name(scale) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {}
    }
    let invalid = |message: String| {
        ApiError::invalid(
            "Scale",
            "autoscaling",
            name,
            vec![Cause::invalid("spec.replicas", message)],
        )
    };
    let replicas = match &scale["spec"]["replicas"] {
        Value::Null => 0,
        v => v
            .as_i64()
            .ok_or_else(|| invalid(format!("Invalid value: {v}: must be an integer")))?,
    };
    if !(0..=i64::from(i32::MAX)).contains(&replicas) {
        return Err(invalid(format!(
            "Invalid value: {replicas}: must be greater than or equal to 0"
        )));
    }
    let mut new = parent.clone();
    new["spec"]["replicas"] = json!(replicas);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "generation": 2},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2},
        })
    }

    #[test]
    fn scale_reflects_the_parent_with_a_string_selector() {
        let s = scale_of(&deployment());
        assert_eq!(
            (s["kind"].clone(), s["apiVersion"].clone()),
            (json!("Scale"), json!("autoscaling/v1"))
        );
        assert_eq!(s["metadata"]["resourceVersion"], "7");
        assert_eq!(s["metadata"].get("generation"), None);
        assert_eq!(
            (s["spec"]["replicas"].clone(), s["status"]["replicas"].clone()),
            (json!(3), json!(2))
        );
        assert_eq!(s["status"]["selector"], "app=web,tier in (a,b)");
    }

    #[test]
    fn writing_a_scale_changes_only_replicas_and_refuses_bad_counts() {
        let d = deployment();
        let new = apply_to_parent(
            &d,
            &json!({"metadata": {"name": "web"}, "spec": {"replicas": 5}}),
            "web",
        )
        .expect("valid");
        assert_eq!(new["spec"]["replicas"], 5);
        assert_eq!(new["spec"]["selector"], d["spec"]["selector"]);
        assert_eq!(new["status"], d["status"]);
        assert_eq!(
            apply_to_parent(&d, &json!({"spec": {"replicas": -1}}), "web")
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            apply_to_parent(&d, &json!({"spec": {"replicas": "x"}}), "web")
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            apply_to_parent(&d, &json!({"metadata": {"name": "other"}}), "web")
                .unwrap_err()
                .code,
            400
        );
    }
}
