//! Discovery and OpenAPI documents for the custom types in the catalog, merged into the
//! built-in ones by the handlers.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use super::Catalog;
use crate::apiserver::{discovery, openapi, resources::ResourceType};

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first, and
/// anything else last, alphabetically.
pub fn version_order(a: &str, b: &str) -> Ordering {
    fn rank(v: &str) -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        let (stage, minor) = if tail.is_empty() {
            (2, 0)
        } else if let Some(n) = tail.strip_prefix("beta") {
            (1, n.parse().ok()?)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n.parse().ok()?)
        } else {
            return None;
        };
        Some((stage, major, minor))
    }
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Each custom group with its served versions, preferred first.
pub fn groups_of(catalog: &Catalog) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for rt in catalog.all() {
        match out.iter_mut().find(|(g, _)| g == rt.group) {
            Some((_, versions)) if versions.iter().any(|v| v == rt.version) => {}
            Some((_, versions)) => versions.push(rt.version.to_owned()),
            None => out.push((rt.group.to_owned(), vec![rt.version.to_owned()])),
        }
    }
    for (_, versions) in &mut out {
        versions.sort_by(|a, b| version_order(a, b));
    }
    out.sort();
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null)})
}

/// Adds the custom groups to `/apis`' APIGroupList.
pub fn extend_groups(doc: &mut Value, catalog: &Catalog) {
    if let Some(groups) = doc["groups"].as_array_mut() {
        for (g, versions) in groups_of(catalog) {
            groups.push(group_doc(&g, &versions));
        }
    }
}

/// `/apis/<group>` for a custom group.
pub fn group(catalog: &Catalog, name: &str) -> Option<Value> {
    let (g, versions) = groups_of(catalog).into_iter().find(|(g, _)| g == name)?;
    let mut doc = group_doc(&g, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn served(catalog: &Catalog, group: &str, version: &str) -> Vec<&'static ResourceType> {
    let mut rts: Vec<_> = catalog
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    rts.sort_by_key(|r| r.plural);
    rts
}

/// `/apis/<group>/<version>` for a custom group-version.
pub fn resource_list(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let rts = served(catalog, group, version);
    if rts.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in rts {
        list.push(discovery::resource_doc(r));
        for sub in r.subresources {
            list.push(discovery::subresource_doc(r, sub));
        }
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": list}),
    )
}

/// `/openapi/v3/apis/<group>/<version>` for a custom group-version: the operations (with
/// `fieldValidation`, so kubectl leaves validation to the server) and each kind's schema.
pub fn openapi_group_version(catalog: &Catalog, path: &str) -> Option<Value> {
    let path = path.split('?').next().unwrap_or(path);
    let (group, version) = path.strip_prefix("apis/")?.split_once('/')?;
    let rts = served(catalog, group, version);
    if rts.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in rts {
        let base = format!("/{path}");
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(item, openapi::item_operations(r));
        let reversed: Vec<&str> = group.rsplit('.').collect();
        let mut schema = r.custom.map(|c| c.schema.clone()).unwrap_or(Value::Null);
        if !schema.is_object() {
            schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        }
        schema["x-kubernetes-group-version-kind"] = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        schemas.insert(format!("{}.{version}.{}", reversed.join("."), r.kind), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut v = vec!["v1alpha1", "v2", "foo", "v1beta2", "v1", "v1beta1", "v10"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}
