//! Brings k8s-openapi's generated schemas to the shape upstream publishes, where clients
//! depend on it:
//! - kubectl finds a kind's schema by `x-kubernetes-group-version-kind`;
//! - kubectl ≥ 1.27 computes `apply`'s strategic merge patch from the OpenAPI v3 schema's
//!   `x-kubernetes-patch-strategy`/`-merge-key` once a kind has one, so they must say what
//!   our server's strategic merge does (the same table, `patch::schema`), or lists that
//!   merge would be replaced whole;
//! - k8s-openapi marks `metadata` required (its Rust field is not optional) and writes
//!   IntOrString/Quantity without a type, which upstream's validators do not expect;
//! - OpenAPI 3.0 ignores the siblings of a `$ref`, so upstream wraps a described reference
//!   in `allOf`; swagger 2.0 documents keep the plain `$ref`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::builtin::Gvk;
use crate::apiserver::patch::schema::{ListStrategy, list_strategy};

const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const DEFINITIONS: &str = "#/definitions/";
/// Values of any JSON type in a CRD's schema (`default`, `enum`, `example`, `items`,
/// `additionalProperties`...): upstream publishes them with no type at all, and kubectl's
/// client-side validation refuses a string where k8s-openapi's schema says object.
const ANY_JSON: &[&str] = &[
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
];

/// Applies the fixes above that both documents share; refs stay `#/definitions/<name>`.
pub fn upstream(defs: &mut Map<String, Value>, kinds: &[(Gvk, String)]) {
    if let Some(s) = defs.get_mut(INT_OR_STRING) {
        strip_int_or_string(s);
        s["type"] = json!("string");
        s["format"] = json!("int-or-string");
    }
    if let Some(s) = defs.get_mut(QUANTITY) {
        strip_int_or_string(s);
        s["type"] = json!("string");
    }
    for name in ANY_JSON {
        if let Some(s) = defs.get_mut(*name) {
            let description = s.get("description").cloned();
            *s = json!({});
            if let Some(d) = description {
                s["description"] = d;
            }
        }
    }
    for schema in defs.values_mut() {
        let is_object = ["apiVersion", "kind", "metadata"]
            .iter()
            .all(|p| schema["properties"].get(*p).is_some());
        if is_object && let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| r != "metadata");
            if req.is_empty()
                && let Some(o) = schema.as_object_mut()
            {
                o.remove("required");
            }
        }
    }
    let mut by_name: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (gvk, name) in kinds {
        by_name
            .entry(name)
            .or_default()
            .push(json!({"group": gvk.group, "version": gvk.version, "kind": gvk.kind}));
    }
    for (name, gvks) in by_name {
        if let Some(s) = defs.get_mut(name) {
            s["x-kubernetes-group-version-kind"] = Value::Array(gvks);
        }
    }
    patch_extensions(defs, kinds);
}

fn strip_int_or_string(s: &mut Value) {
    if let Some(o) = s.as_object_mut() {
        o.remove("x-kubernetes-int-or-string");
    }
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix(DEFINITIONS)
}

/// Marks each list property with the strategy the server's strategic merge uses for it.
fn patch_extensions(defs: &mut Map<String, Value>, kinds: &[(Gvk, String)]) {
    let mut found: BTreeMap<(String, String), ListStrategy> = BTreeMap::new();
    for (gvk, name) in kinds {
        let mut path = Vec::new();
        walk(defs, gvk.kind, name, &mut path, &mut found);
    }
    for ((def, prop), strategy) in found {
        let Some(p) = defs.get_mut(&def).and_then(|d| d["properties"].get_mut(&prop)) else {
            continue;
        };
        match strategy {
            ListStrategy::MergeKey(key) => {
                p["x-kubernetes-patch-strategy"] = json!("merge");
                p["x-kubernetes-patch-merge-key"] = json!(key);
            }
            ListStrategy::MergePrimitives => p["x-kubernetes-patch-strategy"] = json!("merge"),
            ListStrategy::Replace => {}
        }
    }
}

/// Deep enough for CronJob's `spec.jobTemplate.spec.template.spec.containers.env`, and a
/// bound for the recursive types (JSONSchemaProps).
const MAX_DEPTH: usize = 12;

fn walk(
    defs: &Map<String, Value>,
    kind: &str,
    def: &str,
    path: &mut Vec<String>,
    found: &mut BTreeMap<(String, String), ListStrategy>,
) {
    if path.len() >= MAX_DEPTH {
        return;
    }
    let Some(props) = defs.get(def).and_then(|d| d["properties"].as_object()) else {
        return;
    };
    for (prop, schema) in props {
        path.push(prop.clone());
        let target = if schema["type"] == "array" {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let strategy = list_strategy(kind, &segments);
            if strategy != ListStrategy::Replace {
                found.insert((def.to_owned(), prop.clone()), strategy);
            }
            ref_name(&schema["items"])
        } else {
            ref_name(schema)
        };
        if let Some(target) = target {
            walk(defs, kind, target, path, found);
        }
        path.pop();
    }
}

/// The OpenAPI v3 form of definition `name`: as `to_v3`, and IntOrString and Quantity
/// say their two JSON types with `oneOf` as upstream's v3 does (swagger 2.0 cannot, so
/// there they are strings). kubectl's `explain` then names them by their type name.
pub fn v3_definition(name: &str, schema: &Value) -> Value {
    let mut out = to_v3(schema);
    let types = match name {
        INT_OR_STRING => json!([{"type": "integer"}, {"type": "string"}]),
        QUANTITY => json!([{"type": "string"}, {"type": "number"}]),
        _ => return out,
    };
    if let Some(o) = out.as_object_mut() {
        o.remove("type");
        o.insert("oneOf".into(), types);
    }
    out
}

/// The OpenAPI v3 form of a schema: references into `#/components/schemas/`, and a
/// reference with siblings (a description, a default) wrapped in `allOf`.
pub fn to_v3(schema: &Value) -> Value {
    match schema {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                let v = match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => Value::String(r.replacen(DEFINITIONS, "#/components/schemas/", 1)),
                    // Extension values are data, not schemas.
                    (k, v) if k.starts_with("x-") => v.clone(),
                    ("enum" | "required" | "default" | "example", v) => v.clone(),
                    _ => to_v3(v),
                };
                out.insert(k.clone(), v);
            }
            if out.len() > 1
                && let Some(r) = out.remove("$ref")
            {
                out.insert("allOf".into(), json!([{"$ref": r}]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// The names `root` refers to, directly or not, itself included.
pub fn closure<'a>(defs: &'a Map<String, Value>, roots: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => {
                            if let Some(n) = r.strip_prefix(DEFINITIONS) {
                                out.push(n);
                            }
                        }
                        (k, _) if k.starts_with("x-") => {}
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut todo: Vec<&str> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        let Some((key, schema)) = defs.get_key_value(name) else {
            continue;
        };
        if seen.contains(&key.as_str()) {
            continue;
        }
        seen.push(key);
        refs(schema, &mut todo);
    }
    seen.sort_unstable();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::openapi::builtin;

    fn shaped(kinds: &[Gvk]) -> Map<String, Value> {
        let (mut defs, named) = builtin::generate(kinds);
        upstream(&mut defs, &named);
        defs
    }

    const DEPLOYMENT: Gvk = Gvk {
        group: "apps",
        version: "v1",
        kind: "Deployment",
    };

    #[test]
    fn kinds_carry_their_gvk_and_metadata_is_optional() {
        let defs = shaped(&[DEPLOYMENT]);
        let d = &defs["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert!(d.get("required").is_none(), "{:?}", d.get("required"));
        assert_eq!(defs[INT_OR_STRING]["format"], "int-or-string");
        assert_eq!(defs[INT_OR_STRING]["type"], "string");
        assert!(defs[INT_OR_STRING].get("x-kubernetes-int-or-string").is_none());
    }

    #[test]
    fn lists_carry_the_servers_merge_keys() {
        let defs = shaped(&[DEPLOYMENT]);
        let pod_spec = &defs["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(pod_spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(pod_spec["containers"]["x-kubernetes-patch-strategy"], "merge");
        assert!(pod_spec["tolerations"].get("x-kubernetes-patch-strategy").is_none());
        let container = &defs["io.k8s.api.core.v1.Container"]["properties"];
        assert_eq!(container["env"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(container["ports"]["x-kubernetes-patch-merge-key"], "containerPort");
        let meta = &defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"];
        assert_eq!(meta["finalizers"]["x-kubernetes-patch-strategy"], "merge");
        let status = &defs["io.k8s.api.apps.v1.DeploymentStatus"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-patch-merge-key"], "type");
    }

    #[test]
    fn v3_wraps_described_references_in_all_of() {
        let s = json!({"properties": {
            "spec": {"$ref": "#/definitions/a.B", "description": "the spec"},
            "plain": {"$ref": "#/definitions/a.C"},
            "list": {"type": "array", "items": {"$ref": "#/definitions/a.D"}},
        }, "x-kubernetes-group-version-kind": [{"$ref": "not a schema"}]});
        let v3 = to_v3(&s);
        assert_eq!(
            v3["properties"]["spec"],
            json!({"allOf": [{"$ref": "#/components/schemas/a.B"}], "description": "the spec"})
        );
        assert_eq!(v3["properties"]["plain"], json!({"$ref": "#/components/schemas/a.C"}));
        assert_eq!(v3["properties"]["list"]["items"]["$ref"], "#/components/schemas/a.D");
        assert_eq!(
            v3["x-kubernetes-group-version-kind"],
            s["x-kubernetes-group-version-kind"]
        );
    }

    #[test]
    fn v3_gives_int_or_string_both_types() {
        let defs = shaped(&[DEPLOYMENT]);
        let v3 = v3_definition(INT_OR_STRING, &defs[INT_OR_STRING]);
        assert_eq!(v3["oneOf"], json!([{"type": "integer"}, {"type": "string"}]));
        assert_eq!(v3["format"], "int-or-string");
        assert!(v3.get("type").is_none());
    }

    #[test]
    fn closure_follows_references_transitively() {
        let defs = shaped(&[DEPLOYMENT]);
        let names = closure(&defs, ["io.k8s.api.apps.v1.DeploymentSpec"]);
        assert!(names.contains(&"io.k8s.api.core.v1.Container"));
        assert!(names.contains(&"io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"));
        assert!(!names.contains(&"io.k8s.api.apps.v1.Deployment"));
    }
}
