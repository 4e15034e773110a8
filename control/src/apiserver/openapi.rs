//! OpenAPI v3 discovery, as far as kubectl needs it.
//!
//! kubectl's default `--validate=strict` first asks whether the server validates fields
//! itself: it looks in `/openapi/v3/<group-version>` for the PATCH operation tagged with
//! the object's group/version/kind and checks that it takes a `fieldValidation` query
//! parameter. When it does, kubectl sends `fieldValidation=Strict` and leaves validation to
//! us (see `strategy::unknown_fields`), so no schemas are needed. Schemas (for
//! `kubectl explain`) are not served yet.

use serde_json::{Map, Value, json};

use super::resources::{self, RESOURCES, ResourceType};

/// The key of a group-version in `/openapi/v3`'s path index: `api/v1`, `apis/apps/v1`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Changes whenever the served documents change, so clients' caches refresh.
fn hash() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in RESOURCES {
        for b in r
            .group
            .bytes()
            .chain(r.plural.bytes())
            .chain(r.kind.bytes())
            .chain(env!("CARGO_PKG_VERSION").bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    let h = hash();
    let mut gvs = vec![("", "v1")];
    gvs.extend(resources::groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}),
        );
    }
    json!({"paths": paths})
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

/// `/openapi/v3/<gv>`: the paths of one group-version, or None when it is not served.
pub fn group_version(path: &str) -> Option<Value> {
    let path = path.split('?').next().unwrap_or(path);
    let served: Vec<&ResourceType> = RESOURCES
        .iter()
        .filter(|r| gv_path(r.group, r.version) == path)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    for r in served {
        let base = format!("/{path}");
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(item, item_operations(r));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v2`. kubectl reads it only as gnostic protobuf and only to build its
/// validator and patch helpers, which for the built-in types need nothing from it: an
/// empty document (swagger "2.0" plus info) is valid and enough. JSON clients get the
/// same empty document.
pub fn v2(accept: &str) -> (&'static str, Vec<u8>) {
    if accept.contains("protobuf") {
        fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
            out.push((number << 3) | 2);
            let mut len = bytes.len();
            while len >= 0x80 {
                out.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            out.push(len as u8);
            out.extend_from_slice(bytes);
        }
        let mut info = Vec::new();
        field(&mut info, 1, b"Kubernetes");
        field(&mut info, 2, b"v1.33.0");
        let mut doc = Vec::new();
        field(&mut doc, 1, b"2.0");
        field(&mut doc, 2, &info);
        // Upstream answers octet-stream too: Go cannot parse the "@" in the proto media type.
        ("application/octet-stream", doc)
    } else {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}});
        ("application/json", serde_json::to_vec(&doc).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_points_at_every_group_version() {
        let idx = index();
        assert!(
            idx["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
        assert!(idx["paths"].get("apis/apps/v1").is_some());
    }

    #[test]
    fn patch_operations_advertise_field_validation_per_kind() {
        let doc = group_version("apis/apps/v1").unwrap();
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(group_version("apis/nope/v1").is_none());
    }
}
