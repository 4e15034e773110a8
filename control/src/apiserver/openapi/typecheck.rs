//! Names the field behind a body that does not decode as its built-in type, from the
//! published schemas: serde only says "invalid type: string, expected i32", upstream says
//! which field, and users (and kubectl's output) need that to fix a manifest.

use serde_json::Value;

use super::documents::builtin_docs;

const DEFINITIONS: &str = "#/definitions/";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// A value of the wrong JSON type.
#[derive(Debug, PartialEq, Eq)]
pub struct Mistyped {
    /// Go's name of the struct holding the field (`DeploymentSpec`).
    pub parent: String,
    /// The field's path from the object's root (`spec.replicas`); list elements add nothing.
    pub path: String,
    /// What the body has: string, number, bool, array or object.
    pub got: &'static str,
    /// The Go type the field has (`int32`, `[]v1.Container`).
    pub want: String,
}

impl Mistyped {
    /// Upstream's wording, as kubectl shows it after "Error from server (BadRequest)".
    pub fn message(&self, kind: &str, version: &str) -> String {
        format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {} into Go struct field {}.{} of type {}",
            self.got, self.parent, self.path, self.want
        )
    }
}

/// The first field of `obj` (a `group`/`version` `kind`) whose value has the wrong type.
pub fn mistyped(group: &str, version: &str, kind: &str, obj: &Value) -> Option<Mistyped> {
    let docs = builtin_docs();
    let (_, name) = docs
        .kinds
        .iter()
        .find(|(g, _)| g.group == group && g.version == version && g.kind == kind)?;
    let mut path = Vec::new();
    check(&docs.definitions, name, obj, &mut path)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// `io.k8s.api.core.v1.Container` → `v1.Container`, as Go prints a package-qualified type.
fn go_name(def: &str) -> String {
    let mut parts = def.rsplit('.');
    let ty = parts.next().unwrap_or(def);
    parts.next().map_or_else(|| ty.to_owned(), |pkg| format!("{pkg}.{ty}"))
}

fn go_type(defs: &serde_json::Map<String, Value>, schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str().and_then(|r| r.strip_prefix(DEFINITIONS)) {
        return match defs.get(r).map(|d| &d["type"]) {
            Some(Value::String(t)) if t != "object" => go_type(defs, &defs[r]),
            _ => go_name(r),
        };
    }
    match (schema["type"].as_str(), schema["format"].as_str()) {
        (Some("integer"), Some(f @ ("int32" | "int64"))) => f.to_owned(),
        (Some("integer"), _) => "int".to_owned(),
        (Some("number"), _) => "float64".to_owned(),
        (Some("boolean"), _) => "bool".to_owned(),
        (Some("string"), _) => "string".to_owned(),
        (Some("array"), _) => format!("[]{}", go_type(defs, &schema["items"])),
        (Some("object"), _) if schema["additionalProperties"].is_object() => {
            format!("map[string]{}", go_type(defs, &schema["additionalProperties"]))
        }
        _ => "object".to_owned(),
    }
}

fn check(defs: &serde_json::Map<String, Value>, def: &str, obj: &Value, path: &mut Vec<String>) -> Option<Mistyped> {
    let schema = defs.get(def)?;
    let props = schema["properties"].as_object()?;
    let fields = obj.as_object()?;
    for (name, value) in fields {
        let Some(prop) = props.get(name) else {
            continue;
        };
        path.push(name.clone());
        let found = check_value(defs, def, prop, value, path);
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

fn check_value(
    defs: &serde_json::Map<String, Value>,
    parent: &str,
    schema: &Value,
    value: &Value,
    path: &mut Vec<String>,
) -> Option<Mistyped> {
    if value.is_null() {
        return None;
    }
    if let Some(r) = schema["$ref"].as_str().and_then(|r| r.strip_prefix(DEFINITIONS)) {
        let target = defs.get(r)?;
        if r == QUANTITY && (value.is_string() || value.is_number()) {
            return None;
        }
        if target.get("properties").is_some() {
            if !value.is_object() {
                return Some(wrong(defs, parent, schema, value, path));
            }
            return check(defs, r, value, path);
        }
        return check_value(defs, parent, target, value, path);
    }
    let ok = match schema["type"].as_str() {
        Some("string") if schema["format"] == "int-or-string" => value.is_string() || value.is_i64() || value.is_u64(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => {
            let Some(items) = value.as_array() else {
                return Some(wrong(defs, parent, schema, value, path));
            };
            return items
                .iter()
                .find_map(|item| check_value(defs, parent, &schema["items"], item, path));
        }
        Some("object") => {
            let Some(map) = value.as_object() else {
                return Some(wrong(defs, parent, schema, value, path));
            };
            let each = schema.get("additionalProperties").filter(|s| s.is_object())?;
            return map.iter().find_map(|(k, v)| {
                path.push(k.clone());
                let found = check_value(defs, parent, each, v, path);
                path.pop();
                found
            });
        }
        _ => true,
    };
    (!ok).then(|| wrong(defs, parent, schema, value, path))
}

fn wrong(
    defs: &serde_json::Map<String, Value>,
    parent: &str,
    schema: &Value,
    value: &Value,
    path: &[String],
) -> Mistyped {
    Mistyped {
        parent: parent.rsplit('.').next().unwrap_or(parent).to_owned(),
        path: path.join("."),
        got: json_type(value),
        want: go_type(defs, schema),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_the_mistyped_field_as_upstream_does() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let m = mistyped("apps", "v1", "Deployment", &d).unwrap();
        assert_eq!(
            m.message("Deployment", "v1"),
            "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
        );
    }

    #[test]
    fn looks_inside_lists_and_maps_and_accepts_quantities_and_int_or_string() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}},
             "ports": [{"containerPort": 80}], "livenessProbe": {"httpGet": {"port": "http"}}},
            {"name": "b", "image": 7},
        ]}, "metadata": {"labels": {"a": "b"}}});
        let m = mistyped("", "v1", "Pod", &pod).unwrap();
        assert_eq!(
            (m.parent.as_str(), m.path.as_str()),
            ("Container", "spec.containers.image")
        );
        assert_eq!((m.got, m.want.as_str()), ("number", "string"));

        let labels = json!({"metadata": {"labels": {"a": 1}}});
        let m = mistyped("", "v1", "Pod", &labels).unwrap();
        assert_eq!(m.path, "metadata.labels.a");

        let list = json!({"spec": {"containers": {"name": "a"}}});
        let m = mistyped("", "v1", "Pod", &list).unwrap();
        assert_eq!(m.want, "[]v1.Container");
        assert!(mistyped("", "v1", "Pod", &json!({"spec": {"containers": [{"name": "a"}]}})).is_none());
    }
}
