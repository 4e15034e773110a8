//! The served OpenAPI documents, generated once and kept as bytes with their ETags.
//!
//! The built-in part never changes in a running server and is generated on first use;
//! what depends on the CRD catalog (the index, the custom group-versions and the single
//! v2 document) is regenerated when the catalog's content changes, recognised by the
//! interned (immutable) custom types it serves.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{builtin, gnostic, group_version_paths, gv_path, shape};
use crate::apiserver::{
    crd::{self, Catalog},
    resources::{RESOURCES, ResourceType},
};

/// Upstream's `info.version`: the Kubernetes release whose types we serve.
pub const KUBERNETES_VERSION: &str = "v1.33.0";

/// One document: its bytes and the hash that is both its ETag and the `?hash=` of its URL.
#[derive(Debug, Clone)]
pub struct Served {
    pub bytes: Bytes,
    pub hash: String,
}

impl Served {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hash = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        Self {
            bytes: Bytes::from(bytes),
            hash,
        }
    }

    fn json(v: &Value) -> Self {
        Self::new(serde_json::to_vec(v).unwrap_or_default())
    }
}

/// The built-in kinds' schemas (swagger 2.0 form) and their per-group-version v3 documents.
pub(super) struct Builtin {
    pub definitions: Map<String, Value>,
    /// The definition of each published kind.
    pub kinds: Vec<(builtin::Gvk, String)>,
    group_versions: BTreeMap<String, Served>,
}

/// What the built-in kinds published: each served kind, and the body kind of each served
/// subresource (`Scale` next to Deployments).
fn published_kinds() -> Vec<(builtin::Gvk, &'static str, &'static str)> {
    let mut out = Vec::new();
    for r in RESOURCES {
        let mut push = |gvk: builtin::Gvk| {
            if !out
                .iter()
                .any(|(g, gr, v)| *g == gvk && *gr == r.group && *v == r.version)
            {
                out.push((gvk, r.group, r.version));
            }
        };
        if let Some(gvk) = builtin::known(r.group, r.version, r.kind) {
            push(gvk);
        } else {
            tracing::warn!(group = r.group, kind = r.kind, "no OpenAPI schema for a served kind");
        }
        for sub in r.subresources {
            if let Some(gvk) = builtin::subresource_kind(sub) {
                push(gvk);
            }
        }
    }
    out
}

pub(super) fn builtin_docs() -> &'static Builtin {
    static BUILTIN: OnceLock<Builtin> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let started = Instant::now();
        let published = published_kinds();
        let mut gvks: Vec<builtin::Gvk> = published.iter().map(|(g, ..)| *g).collect();
        gvks.sort();
        gvks.dedup();
        let (mut definitions, named) = builtin::generate(&gvks);
        shape::upstream(&mut definitions, &named);
        let name_of = |gvk: &builtin::Gvk| named.iter().find(|(g, _)| g == gvk).map(|(_, n)| n.as_str());
        let mut group_versions = BTreeMap::new();
        let mut served_gvs: Vec<(&str, &str)> = published.iter().map(|(_, g, v)| (*g, *v)).collect();
        served_gvs.sort();
        served_gvs.dedup();
        for (group, version) in served_gvs {
            let roots = published
                .iter()
                .filter(|(_, g, v)| *g == group && *v == version)
                .filter_map(|(gvk, ..)| name_of(gvk));
            let mut schemas = Map::new();
            for name in shape::closure(&definitions, roots) {
                schemas.insert(name.to_owned(), shape::v3_definition(name, &definitions[name]));
            }
            let rts: Vec<&ResourceType> = RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
                .collect();
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
                "paths": group_version_paths(&gv_path(group, version), &rts),
                "components": {"schemas": schemas},
            });
            group_versions.insert(gv_path(group, version), Served::json(&doc));
        }
        let bytes: usize = group_versions.values().map(|s| s.bytes.len()).sum();
        tracing::info!(
            schemas = definitions.len(),
            v3_bytes = bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "generated the built-in OpenAPI schemas"
        );
        Builtin {
            definitions,
            kinds: named,
            group_versions,
        }
    })
}

/// Everything served under `/openapi` for one state of the CRD catalog.
pub struct Documents {
    catalog: Vec<usize>,
    pub index: Served,
    custom: BTreeMap<String, Served>,
    custom_definitions: Map<String, Value>,
    v2_json: OnceLock<Served>,
    v2_protobuf: OnceLock<Served>,
}

impl Documents {
    fn generate(catalog: &Catalog, fingerprint: Vec<usize>) -> Self {
        let builtin = builtin_docs();
        let mut paths = Map::new();
        for (p, served) in &builtin.group_versions {
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", served.hash)}),
            );
        }
        let mut custom = BTreeMap::new();
        let mut custom_definitions = Map::new();
        for (group, versions) in crd::discovery::groups_of(catalog) {
            for version in versions {
                let p = gv_path(&group, &version);
                let Some(doc) = crd::discovery::openapi_group_version(catalog, &p) else {
                    continue;
                };
                if let Some(schemas) = doc["components"]["schemas"].as_object() {
                    for (name, s) in schemas {
                        custom_definitions.insert(name.clone(), v2_of_structural(s));
                    }
                }
                let served = Served::json(&doc);
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", served.hash)}),
                );
                custom.insert(p, served);
            }
        }
        Self {
            catalog: fingerprint,
            index: Served::json(&json!({"paths": paths})),
            custom,
            custom_definitions,
            v2_json: OnceLock::new(),
            v2_protobuf: OnceLock::new(),
        }
    }

    /// `/openapi/v3/<gv>` (without the query).
    pub fn group_version(&self, path: &str) -> Option<&Served> {
        builtin_docs()
            .group_versions
            .get(path)
            .or_else(|| self.custom.get(path))
    }

    fn v2_definitions(&self) -> Map<String, Value> {
        let mut defs = builtin_docs().definitions.clone();
        defs.extend(self.custom_definitions.clone());
        defs
    }

    pub fn v2_json(&self) -> &Served {
        self.v2_json.get_or_init(|| {
            Served::json(&json!({
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
                "paths": {},
                "definitions": self.v2_definitions(),
            }))
        })
    }

    pub fn v2_protobuf(&self) -> &Served {
        self.v2_protobuf.get_or_init(|| {
            Served::new(gnostic::document(
                "Kubernetes",
                KUBERNETES_VERSION,
                &self.v2_definitions(),
            ))
        })
    }
}

/// A CRD's structural schema as a swagger 2.0 definition: upstream drops what 2.0 cannot
/// say (`nullable`, `anyOf`/`oneOf`/`not`), so v2 validators are never stricter than the
/// server.
fn v2_of_structural(s: &Value) -> Value {
    match s {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                match k.as_str() {
                    "nullable" | "anyOf" | "oneOf" | "not" => {}
                    k if k.starts_with("x-") || matches!(k, "enum" | "required" | "default" | "example") => {
                        out.insert(k.to_owned(), v.clone());
                    }
                    _ => {
                        out.insert(k.clone(), v2_of_structural(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(v2_of_structural).collect()),
        other => other.clone(),
    }
}

/// The documents for the catalog's current content, regenerated only when it changed.
/// A few are kept, as tests run several servers (with different CRDs) in one process.
pub fn current(catalog: &Catalog) -> Arc<Documents> {
    static CACHE: Mutex<Vec<Arc<Documents>>> = Mutex::new(Vec::new());
    const KEPT: usize = 4;
    let mut fingerprint: Vec<usize> = catalog
        .all()
        .into_iter()
        .map(|r| r as *const ResourceType as usize)
        .collect();
    fingerprint.sort_unstable();
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(pos) = cache.iter().position(|d| d.catalog == fingerprint) {
        let docs = cache.remove(pos);
        cache.push(Arc::clone(&docs));
        return docs;
    }
    let docs = Arc::new(Documents::generate(catalog, fingerprint));
    if cache.len() >= KEPT {
        cache.remove(0);
    }
    cache.push(Arc::clone(&docs));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_version_documents_hold_their_kinds_and_what_they_refer_to() {
        let docs = current(&Catalog::default());
        let apps: Value = serde_json::from_slice(&docs.group_version("apis/apps/v1").unwrap().bytes).unwrap();
        let schemas = apps["components"]["schemas"].as_object().unwrap();
        let d = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(d["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        assert_eq!(
            d["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(schemas.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert!(schemas.contains_key("io.k8s.api.autoscaling.v1.Scale"));
        assert!(!schemas.contains_key("io.k8s.api.core.v1.Pod"));
        let core: Value = serde_json::from_slice(&docs.group_version("api/v1").unwrap().bytes).unwrap();
        assert!(core["components"]["schemas"].get("io.k8s.api.core.v1.Pod").is_some());
    }

    #[test]
    fn index_urls_carry_each_documents_hash() {
        let docs = current(&Catalog::default());
        let index: Value = serde_json::from_slice(&docs.index.bytes).unwrap();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        let hash = &docs.group_version("apis/apps/v1").unwrap().hash;
        assert_eq!(url, format!("/openapi/v3/apis/apps/v1?hash={hash}"));
        assert!(index["paths"].get("api/v1").is_some());
    }

    #[test]
    fn every_reference_in_v2_resolves() {
        let docs = current(&Catalog::default());
        let v2: Value = serde_json::from_slice(&docs.v2_json().bytes).unwrap();
        let defs = v2["definitions"].as_object().unwrap();
        let text = serde_json::to_string(&v2).unwrap();
        for piece in text.split("\"$ref\":\"#/definitions/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(defs.contains_key(name), "dangling {name}");
        }
        assert!(!docs.v2_protobuf().bytes.is_empty());
    }

    #[test]
    fn documents_are_reused_until_the_catalog_changes() {
        let catalog = Catalog::default();
        let a = current(&catalog);
        assert!(Arc::ptr_eq(&a, &current(&catalog)));
    }
}
