//! The `scale` subresource of custom objects: an `autoscaling/v1` Scale read from and
//! written to the paths `subresources.scale` names.

use serde_json::{Value, json};

use super::{ScaleSpec, printer};
use crate::apiserver::{
    meta,
    status::{ApiError, Cause},
};

/// `.spec.replicas` as the object keys it.
fn segments(path: &str) -> Vec<&str> {
    path.split('.').filter(|s| !s.is_empty()).collect()
}

pub fn scale_of(spec: &ScaleSpec, parent: &Value) -> Value {
    let mut metadata = serde_json::Map::new();
    for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta::metadata(parent).and_then(|m| m.get(field)) {
            metadata.insert(field.into(), v.clone());
        }
    }
    let int = |path: &str| printer::eval(path, parent).and_then(Value::as_i64).unwrap_or(0);
    let mut status = json!({"replicas": int(&spec.status_replicas_path)});
    if let Some(selector) = spec
        .label_selector_path
        .as_deref()
        .and_then(|p| printer::eval(p, parent))
        .and_then(Value::as_str)
    {
        status["selector"] = json!(selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": int(&spec.spec_replicas_path)},
        "status": status,
    })
}

/// The parent with the Scale's `spec.replicas` written at `specReplicasPath`.
pub fn apply_to_parent(spec: &ScaleSpec, parent: &Value, scale: &Value, name: &str) -> Result<Value, ApiError> {
    if !scale.is_object() {
        return Err(ApiError::bad_request("the body of a Scale must be a JSON object"));
    }
    if let Some(n) = meta::name(scale).filter(|n| *n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let replicas = match &scale["spec"]["replicas"] {
        Value::Null => 0,
        v => v
            .as_i64()
            .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
            .ok_or_else(|| {
                ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    name,
                    vec![Cause::invalid(
                        "spec.replicas",
                        format!("Invalid value: {v}: must be greater than or equal to 0"),
                    )],
                )
            })?,
    };
    let mut new = parent.clone();
    let path = segments(&spec.spec_replicas_path);
    let Some((last, parents)) = path.split_last() else {
        return Err(ApiError::internal("the CRD has no specReplicasPath"));
    };
    let mut cur = &mut new;
    for seg in parents {
        if !cur[*seg].is_object() {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
    cur[*last] = json!(replicas);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_reads_and_writes_the_named_paths() {
        let spec = ScaleSpec {
            spec_replicas_path: ".spec.size".into(),
            status_replicas_path: ".status.ready".into(),
            label_selector_path: Some(".status.selector".into()),
        };
        let parent = json!({"metadata": {"name": "w", "resourceVersion": "5"}, "spec": {"size": 2}, "status": {"ready": 1, "selector": "app=w"}});
        let scale = scale_of(&spec, &parent);
        assert_eq!(scale["spec"]["replicas"], 2);
        assert_eq!(scale["status"], json!({"replicas": 1, "selector": "app=w"}));
        assert_eq!(scale["metadata"]["resourceVersion"], "5");
        let new = apply_to_parent(&spec, &parent, &json!({"spec": {"replicas": 7}}), "w").unwrap();
        assert_eq!(new["spec"]["size"], 7);
        assert_eq!(
            apply_to_parent(&spec, &parent, &json!({"spec": {"replicas": -1}}), "w")
                .unwrap_err()
                .code,
            422
        );
    }
}
