//! Aggregated discovery (`apidiscovery.k8s.io/v2`, and `v2beta1` for kubectl 1.27–1.29): every
//! group's resources in one document at `/apis`, and the core group's at `/api`.
//!
//! Built from the legacy `APIResourceList`s that `discovery` serves, as upstream's aggregated
//! discovery manager does, so the two forms can never disagree about what is served.

use serde_json::{Value, json};

use super::{
    crd::{self, Catalog},
    discovery, resources,
};

/// The `Content-Type` upstream sets on an aggregated discovery answer; client-go checks the
/// `g`, `v` and `as` parameters before parsing it as aggregated.
pub fn content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// `/api` as an `APIGroupDiscoveryList` of one item, the core group (whose name is empty).
pub fn core(version: &str) -> Value {
    list(version, vec![group_doc("", &["v1"], &discovery::resource_list)])
}

/// `/apis` as an `APIGroupDiscoveryList`: every named group, in the legacy `/apis` order, then
/// the groups of the CustomResourceDefinitions this server serves.
pub fn groups(version: &str, catalog: &Catalog) -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in resources::groups() {
        if !names.contains(&g) {
            names.push(g);
        }
    }
    let items = names
        .into_iter()
        .map(|g| {
            let versions: Vec<&str> = resources::groups()
                .into_iter()
                .filter(|(name, _)| *name == g)
                .map(|(_, v)| v)
                .collect();
            group_doc(g, &versions, &discovery::resource_list)
        })
        .chain(crd::discovery::groups_of(catalog).into_iter().map(|(g, versions)| {
            let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
            group_doc(&g, &versions, &|g, v| crd::discovery::resource_list(catalog, g, v))
        }))
        .collect();
    list(version, items)
}

fn list(version: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// One `APIGroupDiscovery`; `versions` come preferred first, as clients take the first.
fn group_doc(group: &str, versions: &[&str], legacy_list: &dyn Fn(&str, &str) -> Option<Value>) -> Value {
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    let versions: Vec<Value> = versions
        .iter()
        .filter_map(|v| {
            let legacy = legacy_list(group, v)?;
            Some(json!({"version": v, "resources": resources_of(group, v, &legacy), "freshness": "Current"}))
        })
        .collect();
    json!({"metadata": metadata, "versions": versions})
}

/// Folds a legacy list's flat `pods`, `pods/status`, ... entries into resources with their
/// subresources.
fn resources_of(group: &str, version: &str, legacy: &Value) -> Vec<Value> {
    let entries = legacy["resources"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut out: Vec<Value> = Vec::new();
    for e in entries {
        let name = e["name"].as_str().unwrap_or_default();
        let kind = json!({
            "group": e["group"].as_str().unwrap_or(group),
            "version": e["version"].as_str().unwrap_or(version),
            "kind": e["kind"],
        });
        let verbs = e["verbs"].clone();
        match name.split_once('/') {
            None => {
                let mut doc = json!({
                    "resource": name,
                    "responseKind": kind,
                    "scope": if e["namespaced"] == true { "Namespaced" } else { "Cluster" },
                    "singularResource": e["singularName"],
                    "verbs": verbs,
                });
                for field in ["shortNames", "categories"] {
                    if e[field].as_array().is_some_and(|a| !a.is_empty()) {
                        doc[field] = e[field].clone();
                    }
                }
                out.push(doc);
            }
            Some((parent, sub)) => {
                let Some(parent_doc) = out.iter_mut().find(|d| d["resource"] == parent) else {
                    continue;
                };
                let subs = parent_doc
                    .as_object_mut()
                    .expect("built as an object above")
                    .entry("subresources")
                    .or_insert_with(|| json!([]));
                if let Some(subs) = subs.as_array_mut() {
                    subs.push(json!({"subresource": sub, "responseKind": kind, "verbs": verbs}));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource<'a>(doc: &'a Value, group: &str, plural: &str) -> &'a Value {
        doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"].as_str().unwrap_or_default() == group)
            .unwrap_or_else(|| panic!("group {group:?} missing"))["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == plural)
            .unwrap_or_else(|| panic!("{plural} missing"))
    }

    #[test]
    fn core_pods_carry_their_subresources() {
        let doc = core("v2");
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
        let pods = resource(&doc, "", "pods");
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert_eq!(
            subs,
            ["status", "binding", "log", "eviction", "exec", "attach", "portforward"]
        );
        let nodes = resource(&doc, "", "nodes");
        assert_eq!(nodes["scope"], "Cluster");
    }

    #[test]
    fn groups_keep_the_scale_subresource_kind() {
        let doc = groups("v2beta1", &Catalog::default());
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let deployments = resource(&doc, "apps", "deployments");
        let scale = deployments["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        assert_eq!(scale["responseKind"]["kind"], "Scale");
        assert!(
            doc["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()))
        );
    }
}
