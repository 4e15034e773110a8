//! Pruning: fields a structural schema does not declare are dropped before an object is
//! stored, as upstream does, unless the schema preserves unknown fields there.

use serde_json::{Map, Value};

use super::schema::property_schema;

/// Drops the fields of a whole custom object that its schema does not declare and returns
/// their paths (`spec.extra`), which `fieldValidation` reports. `apiVersion`, `kind` and
/// `metadata` always stay.
pub fn prune_object(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Some(fields) = obj.as_object_mut() {
        prune_fields(schema, fields, "", &["apiVersion", "kind", "metadata"], &mut pruned);
    }
    pruned
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn prune_fields(schema: &Value, fields: &mut Map<String, Value>, path: &str, keep: &[&str], pruned: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    let mut drop = Vec::new();
    for (key, value) in fields.iter_mut() {
        if keep.contains(&key.as_str()) {
            continue;
        }
        match property_schema(schema, key) {
            Some(prop) => prune(prop, value, &child(path, key), pruned),
            None if preserve => {}
            None => drop.push(key.clone()),
        }
    }
    for key in drop {
        fields.remove(&key);
        pruned.push(child(path, &key));
    }
}

/// Prunes one value at `path` by its schema.
fn prune(schema: &Value, v: &mut Value, path: &str, pruned: &mut Vec<String>) {
    // An int-or-string holds no fields; a schema-less subtree under preserve-unknown-fields
    // is kept whole.
    if schema["x-kubernetes-int-or-string"] == true {
        return;
    }
    match v {
        Value::Object(fields) => {
            let keep: &[&str] = if schema["x-kubernetes-embedded-resource"] == true {
                &["apiVersion", "kind", "metadata"]
            } else {
                &[]
            };
            if schema.get("properties").is_none()
                && schema.get("additionalProperties").is_none()
                && schema["x-kubernetes-preserve-unknown-fields"] != true
                && schema["type"] != "object"
            {
                return;
            }
            prune_fields(schema, fields, path, keep, pruned);
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_go_known_and_preserved_ones_stay() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "size": {"type": "integer"},
                "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"inner": {"type": "object", "properties": {}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "port": {"x-kubernetes-int-or-string": true},
                "embedded": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}},
            }},
        }});
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "anything": 1},
            "spec": {"size": 1, "typo": 2, "items": [{"a": "x", "b": "y"}],
                     "free": {"whatever": {"deep": 1}, "inner": {"gone": 1}},
                     "labels": {"k": "v"}, "port": "http",
                     "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}, "extra": 1}},
            "top": true});
        let pruned = prune_object(&schema, &mut obj);
        assert_eq!(
            pruned,
            [
                "spec.embedded.extra",
                "spec.free.inner.gone",
                "spec.items[0].b",
                "spec.typo",
                "top"
            ]
        );
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "anything": 1},
                "spec": {"size": 1, "items": [{"a": "x"}], "free": {"whatever": {"deep": 1}, "inner": {}},
                         "labels": {"k": "v"}, "port": "http",
                         "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}}})
        );
    }
}
