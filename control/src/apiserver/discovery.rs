//! Discovery documents: what kubectl and the dynamic clients read to learn the API.
//! Served as plain JSON; clients that ask for aggregated discovery fall back to it.

use serde_json::{Value, json};

use super::resources::{self, RESOURCES, ResourceType};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0-rudder.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn groups() -> Value {
    let groups: Vec<Value> = resources::groups().into_iter().map(|(g, v)| group_doc(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str) -> Option<Value> {
    let (g, v) = resources::groups().into_iter().find(|(g, _)| *g == name)?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resource_doc(r: &ResourceType) -> Value {
    let mut doc = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
    });
    if !r.short_names.is_empty() {
        doc["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        doc["categories"] = json!(r.categories);
    }
    doc
}

pub fn subresource_doc(r: &ResourceType, sub: &str) -> Value {
    let (kind, verbs): (&str, &[&str]) = match sub {
        "binding" => ("Binding", &["create"]),
        "token" => ("TokenRequest", &["create"]),
        "eviction" => ("Eviction", &["create"]),
        "scale" => ("Scale", &["get", "patch", "update"]),
        "log" => ("Pod", &["get"]),
        "exec" => ("PodExecOptions", &["create", "get"]),
        "attach" => ("PodAttachOptions", &["create", "get"]),
        "portforward" => ("PodPortForwardOptions", &["create", "get"]),
        _ => (r.kind, &["get", "patch", "update"]),
    };
    let mut doc = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
    if sub == "token" {
        doc["group"] = json!("authentication.k8s.io");
        doc["version"] = json!("v1");
    }
    if sub == "eviction" {
        // kubectl drain evicts only when discovery names the group and version to post.
        doc["group"] = json!("policy");
        doc["version"] = json!("v1");
    }
    if sub == "scale" {
        doc["group"] = json!("autoscaling");
        doc["version"] = json!("v1");
    }
    doc
}

/// `APIResourceList` for one group/version, or None when it is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in served {
        list.push(resource_doc(r));
        for sub in r.subresources {
            list.push(subresource_doc(r, sub));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_pods_with_subresources() {
        let doc = resource_list("", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "pods",
            "pods/status",
            "pods/binding",
            "pods/log",
            "pods/eviction",
            "pods/exec",
            "pods/attach",
            "pods/portforward",
            "services",
            "namespaces",
            "nodes",
        ] {
            assert!(names.contains(&want), "{want} missing");
        }
        assert!(resource_list("nope", "v1").is_none());
    }

    #[test]
    fn groups_are_listed_once() {
        let doc = groups();
        let names: Vec<&str> = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.iter().filter(|n| **n == "events.k8s.io").count(), 1);
        assert!(names.contains(&"apps") && names.contains(&"discovery.k8s.io"));
    }
}
