//! `/openapi/v2` and `/openapi/v3`: the schemas of the built-in kinds (generated from
//! k8s-openapi's types, `builtin`), shaped as upstream publishes them (`shape`), merged with
//! the CRDs' schemas, cached per catalog state (`documents`) and served with ETags and
//! `?hash=` URLs as upstream does, so kubectl's caches work (`serve`).
//!
//! kubectl's default `--validate=strict` first asks whether the server validates fields
//! itself: it looks in `/openapi/v3/<group-version>` for the PATCH operation tagged with
//! the object's group/version/kind and checks that it takes a `fieldValidation` query
//! parameter. When it does, kubectl sends `fieldValidation=Strict` and leaves validation to
//! us (see `strategy::unknown_fields`); the schemas serve `kubectl explain`, `apply`'s
//! patch computation and the client-side validation of clients that do not ask.

mod builtin;
mod documents;
mod gnostic;
mod serve;
mod shape;
mod typecheck;

pub use documents::{Documents, current};
pub use serve::{v2, v3};
pub use typecheck::{Mistyped, mistyped};

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

/// The key of a group-version in `/openapi/v3`'s path index: `api/v1`, `apis/apps/v1`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

pub fn item_operations(r: &ResourceType) -> Value {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let write_params = vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_param(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "How the server handles unknown or duplicate fields: Ignore, Warn (the default) or Strict.",
        ),
    ];
    let ok = json!({"200": {"description": "OK"}});
    let op = |verb: &str, extra: &[Value]| {
        let mut params = write_params.clone();
        params.extend_from_slice(extra);
        json!({
            "operationId": format!("{verb}{}", r.kind),
            "parameters": params,
            "responses": ok,
            "x-kubernetes-action": verb,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    json!({
        "get": {"operationId": format!("read{}", r.kind), "responses": ok, "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
        "put": op("replace", &[]),
        "patch": op("patch", &[query_param("force", "Force is going to \"force\" Apply requests.")]),
        "delete": {"operationId": format!("delete{}", r.kind), "responses": ok, "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk},
        "parameters": [
            {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
        ],
    })
}

/// The `paths` of a group-version's v3 document: each kind's item operations.
pub fn group_version_paths(gv: &str, served: &[&ResourceType]) -> Value {
    let mut paths = Map::new();
    for r in served {
        let base = format!("/{gv}");
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(item, item_operations(r));
    }
    Value::Object(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::RESOURCES;

    #[test]
    fn patch_operations_advertise_field_validation_per_kind() {
        let apps: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == "apps").collect();
        let paths = group_version_paths("apis/apps/v1", &apps);
        let patch = &paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
    }
}
