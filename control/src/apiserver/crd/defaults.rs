//! Defaulting from the schema's `default` values: a missing property whose schema has a
//! default gets it, wherever its parent object exists (upstream's structural defaulting).

use serde_json::Value;

/// Fills defaults into a whole custom object.
pub fn default_object(schema: &Value, obj: &mut Value) {
    apply(schema, obj);
}

fn apply(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(fields) => {
            if let Some(props) = schema["properties"].as_object() {
                for (key, prop) in props {
                    if !fields.contains_key(key)
                        && let Some(d) = prop.get("default")
                    {
                        fields.insert(key.clone(), d.clone());
                    }
                }
            }
            for (key, value) in fields.iter_mut() {
                let prop = schema["properties"]
                    .get(key)
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(prop) = prop {
                    apply(prop, value);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    apply(item_schema, item);
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
    fn defaults_fill_missing_fields_where_the_parent_exists() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "replicas": {"type": "integer", "default": 1},
                "mode": {"type": "string", "default": "fast"},
                "ports": {"type": "array", "items": {"type": "object", "properties": {"protocol": {"type": "string", "default": "TCP"}}}},
                "nested": {"type": "object", "properties": {"x": {"type": "integer", "default": 5}}},
            }},
        }});
        let mut obj = json!({"spec": {"mode": "slow", "ports": [{"port": 80}, {"protocol": "UDP"}]}});
        default_object(&schema, &mut obj);
        assert_eq!(
            obj,
            json!({"spec": {"replicas": 1, "mode": "slow", "ports": [{"port": 80, "protocol": "TCP"}, {"protocol": "UDP"}]}})
        );
        let mut empty = json!({});
        default_object(&schema, &mut empty);
        assert_eq!(empty, json!({}), "no spec, so nothing inside it is defaulted");
    }
}
