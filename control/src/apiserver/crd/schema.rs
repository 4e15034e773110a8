//! Validation of a custom object against its version's structural OpenAPI v3 schema, with
//! upstream's messages (kube-openapi's "in body" wording), so clients see the same 422s.

use serde_json::Value;

use crate::apiserver::status::Cause;

/// Checks `obj` (a whole custom object) against `schema` (the version's
/// `openAPIV3Schema`). `apiVersion`, `kind` and `metadata` are the API server's to check,
/// not the schema's.
pub fn validate_object(schema: &Value, obj: &Value, causes: &mut Vec<Cause>) {
    let Some(fields) = obj.as_object() else {
        return;
    };
    if let Some(required) = schema["required"].as_array() {
        for r in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(r) && !["apiVersion", "kind", "metadata"].contains(&r) {
                causes.push(Cause::required(r));
            }
        }
    }
    for (key, value) in fields {
        if ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
            continue;
        }
        if let Some(prop) = property_schema(schema, key) {
            validate(prop, value, key, causes);
        }
    }
}

/// The schema of property `key` of an object schema: its `properties` entry, else its
/// `additionalProperties` schema.
pub fn property_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema["properties"]
        .get(key)
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

/// The JSON type name of a value, as upstream's type errors print it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(want: &str, v: &Value) -> bool {
    match want {
        "number" => v.is_number(),
        other => type_name(v) == other,
    }
}

/// How `Invalid value: X` shows a value: scalars as JSON (strings quoted), containers by type.
fn shown(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &Value, what: String) -> Cause {
    Cause::invalid(path, format!("Invalid value: {}: {path} in body {what}", shown(v)))
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks one value at `path` against its schema.
pub fn validate(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if v.is_null() {
        // Only a declared type refuses null; nullable allows it.
        if schema["nullable"] == true || schema.get("type").is_none() {
            return;
        }
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !matches!(type_name(v), "integer" | "string") {
            causes.push(Cause::invalid(
                path,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer-or-string: \"{}\"",
                    type_name(v),
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(want) = schema["type"].as_str()
        && !type_matches(want, v)
    {
        let actual = type_name(v);
        causes.push(Cause::invalid(
            path,
            format!("Invalid value: \"{actual}\": {path} in body must be of type {want}: \"{actual}\""),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list = allowed.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
        causes.push(Cause::not_supported(
            path,
            format!("Unsupported value: {}: supported values: {list}", shown(v)),
        ));
    }
    match v {
        Value::Number(n) => number(schema, v, n.as_f64().unwrap_or_default(), path, causes),
        Value::String(s) => string(schema, v, s, path, causes),
        Value::Array(items) => array(schema, v, items, path, causes),
        Value::Object(fields) => object(schema, v, fields, path, causes),
        _ => {}
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            validate(s, v, path, causes);
        }
    }
}

fn number(schema: &Value, v: &Value, n: f64, path: &str, causes: &mut Vec<Cause>) {
    if let Some(min) = schema["minimum"].as_f64() {
        if schema["exclusiveMinimum"] == true && n <= min {
            causes.push(invalid(
                path,
                v,
                format!("should be greater than {}", schema["minimum"]),
            ));
        } else if n < min {
            causes.push(invalid(
                path,
                v,
                format!("should be greater than or equal to {}", schema["minimum"]),
            ));
        }
    }
    if let Some(max) = schema["maximum"].as_f64() {
        if schema["exclusiveMaximum"] == true && n >= max {
            causes.push(invalid(path, v, format!("should be less than {}", schema["maximum"])));
        } else if n > max {
            causes.push(invalid(
                path,
                v,
                format!("should be less than or equal to {}", schema["maximum"]),
            ));
        }
    }
    if let Some(m) = schema["multipleOf"].as_f64().filter(|m| *m > 0.0)
        && (n / m).fract() != 0.0
    {
        causes.push(invalid(
            path,
            v,
            format!("should be a multiple of {}", schema["multipleOf"]),
        ));
    }
}

fn string(schema: &Value, v: &Value, s: &str, path: &str, causes: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        causes.push(invalid(path, v, format!("should be at least {min} chars long")));
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        causes.push(invalid(path, v, format!("may not be longer than {max}")));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(s) => {}
            // The definition's validation refuses patterns that do not compile.
            _ => causes.push(invalid(path, v, format!("should match '{pattern}'"))),
        }
    }
}

fn array(schema: &Value, v: &Value, items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    let n = items.len() as u64;
    if let Some(min) = schema["minItems"].as_u64()
        && n < min
    {
        causes.push(invalid(path, v, format!("should have at least {min} items")));
    }
    if let Some(max) = schema["maxItems"].as_u64()
        && n > max
    {
        causes.push(invalid(path, v, format!("should have at most {max} items")));
    }
    if schema["uniqueItems"] == true && items.iter().enumerate().any(|(i, a)| items[..i].contains(a)) {
        causes.push(invalid(path, v, "shouldn't contain duplicates".to_owned()));
    }
    if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
        for (i, item) in items.iter().enumerate() {
            validate(item_schema, item, &format!("{path}[{i}]"), causes);
        }
    }
}

fn object(schema: &Value, v: &Value, fields: &serde_json::Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    let n = fields.len() as u64;
    if let Some(min) = schema["minProperties"].as_u64()
        && n < min
    {
        causes.push(invalid(path, v, format!("should have at least {min} properties")));
    }
    if let Some(max) = schema["maxProperties"].as_u64()
        && n > max
    {
        causes.push(invalid(path, v, format!("should have at most {max} properties")));
    }
    if let Some(required) = schema["required"].as_array() {
        for r in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(r) {
                causes.push(Cause::required(child(path, r)));
            }
        }
    }
    if schema["x-kubernetes-embedded-resource"] == true {
        for r in ["apiVersion", "kind"] {
            if fields.get(r).and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required(child(path, r)));
            }
        }
    }
    for (key, value) in fields {
        if let Some(prop) = property_schema(schema, key) {
            validate(prop, value, &child(path, key), causes);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages(schema: Value, obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate_object(&schema, &obj, &mut causes);
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    fn spec_schema(props: Value) -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": props}}})
    }

    #[test]
    fn type_errors_read_as_upstream() {
        let s = spec_schema(json!({"replicas": {"type": "integer"}}));
        assert_eq!(
            messages(s.clone(), json!({"spec": {"replicas": "string"}})),
            [r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#]
        );
        assert!(messages(s.clone(), json!({"spec": {"replicas": 3}})).is_empty());
        assert!(messages(s, json!({"spec": {"replicas": 3.0}})).is_empty());
    }

    #[test]
    fn required_enum_bounds_lengths_and_patterns() {
        let s = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object",
        "required": ["mode"],
        "properties": {
            "mode": {"type": "string", "enum": ["a", "b"]},
            "n": {"type": "integer", "minimum": 1, "maximum": 5},
            "name": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"},
        }}}});
        assert_eq!(messages(s.clone(), json!({})), ["spec: Required value"]);
        assert_eq!(
            messages(s.clone(), json!({"spec": {"mode": "c", "n": 0, "name": "A"}})),
            [
                r#"spec.mode: Unsupported value: "c": supported values: "a", "b""#,
                "spec.n: Invalid value: 0: spec.n in body should be greater than or equal to 1",
                r#"spec.name: Invalid value: "A": spec.name in body should be at least 2 chars long"#,
                r#"spec.name: Invalid value: "A": spec.name in body should match '^[a-z]+$'"#,
            ]
        );
        assert_eq!(
            messages(s.clone(), json!({"spec": {"n": 6}})),
            [
                "spec.mode: Required value",
                "spec.n: Invalid value: 6: spec.n in body should be less than or equal to 5"
            ]
        );
        assert_eq!(
            messages(s, json!({"spec": {"mode": "a", "name": "abcd"}})),
            [r#"spec.name: Invalid value: "abcd": spec.name in body may not be longer than 3"#]
        );
    }

    #[test]
    fn items_maps_nullable_int_or_string_and_embedded() {
        let s = spec_schema(json!({
            "ports": {"type": "array", "items": {"type": "integer"}},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "maybe": {"type": "string", "nullable": true},
            "never": {"type": "string"},
            "port": {"x-kubernetes-int-or-string": true},
            "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
        }));
        assert_eq!(
            messages(
                s.clone(),
                json!({"spec": {"ports": [1, "x"], "env": {"A": 1}, "maybe": null, "never": null, "port": true, "template": {"kind": "Pod"}}})
            ),
            [
                r#"spec.env.A: Invalid value: "integer": spec.env.A in body must be of type string: "integer""#,
                r#"spec.never: Invalid value: "null": spec.never in body must be of type string: "null""#,
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer-or-string: "boolean""#,
                r#"spec.ports[1]: Invalid value: "string": spec.ports[1] in body must be of type integer: "string""#,
                "spec.template.apiVersion: Required value",
            ]
        );
        assert!(
            messages(
                s,
                json!({"spec": {"port": "http", "template": {"apiVersion": "v1", "kind": "Pod", "spec": {}}}})
            )
            .is_empty()
        );
    }
}
