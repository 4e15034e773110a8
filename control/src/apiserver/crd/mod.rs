//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom resources they
//! define.
//!
//! A CRD is stored like any object. `controller` watches them, sets their status
//! conditions (NamesAccepted, Established) and keeps this server's `Catalog` of served
//! custom types; request routing, discovery and OpenAPI read the catalog. Each served
//! version becomes a `ResourceType` whose `custom` field points at a `CustomType`, so the
//! registry serves custom objects with the same code as built-in ones; `strategy` hands
//! them to `prepare_*`/`validate` here (pruning, defaulting, schema validation). All
//! versions share one storage key space; with conversion strategy None an object is stored
//! with the storage version's apiVersion and served with the requested one.

pub mod controller;
pub mod defaults;
pub mod definition;
pub mod discovery;
pub mod printer;
pub mod prune;
pub mod scale;
pub mod schema;

use std::{
    collections::BTreeMap,
    sync::{Mutex, RwLock},
};

use serde_json::{Value, json};

use super::{meta, resources::ResourceType, status::Cause};

/// One served version of a custom resource, as its CRD defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomType {
    /// The CRD's name (`<plural>.<group>`).
    pub crd: String,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub storage_version: String,
    /// Every served version, in the CRD's order (discovery lists them all).
    pub served_versions: Vec<String>,
    /// `openAPIV3Schema`; Null when the version has none.
    pub schema: Value,
    pub status_subresource: bool,
    pub scale: Option<ScaleSpec>,
    pub columns: Vec<PrinterColumn>,
}

/// `subresources.scale`: where the Scale's fields live in the object (JSON paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSpec {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    pub label_selector_path: Option<String>,
}

/// One of `additionalPrinterColumns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

impl CustomType {
    /// The served versions of a CRD, or the reason it cannot be served.
    pub fn from_crd(crd: &Value) -> Vec<CustomType> {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let strings = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        let storage_version = versions
            .iter()
            .find(|v| v["storage"] == true)
            .map(|v| s(&v["name"]))
            .unwrap_or_default();
        let served: Vec<&Value> = versions.iter().filter(|v| v["served"] == true).collect();
        let served_versions: Vec<String> = served.iter().map(|v| s(&v["name"])).collect();
        let kind = s(&names["kind"]);
        served
            .iter()
            .map(|v| {
                let sub = &v["subresources"];
                CustomType {
                    crd: meta::name(crd).unwrap_or_default().to_owned(),
                    group: s(&spec["group"]),
                    version: s(&v["name"]),
                    kind: kind.clone(),
                    list_kind: names["listKind"]
                        .as_str()
                        .map_or_else(|| format!("{kind}List"), str::to_owned),
                    plural: s(&names["plural"]),
                    singular: names["singular"]
                        .as_str()
                        .map_or_else(|| kind.to_lowercase(), str::to_owned),
                    namespaced: spec["scope"] != "Cluster",
                    short_names: strings(&names["shortNames"]),
                    categories: strings(&names["categories"]),
                    storage_version: storage_version.clone(),
                    served_versions: served_versions.clone(),
                    schema: v["schema"]["openAPIV3Schema"].clone(),
                    status_subresource: sub.get("status").is_some_and(|s| !s.is_null()),
                    scale: sub.get("scale").filter(|s| s.is_object()).map(|sc| ScaleSpec {
                        spec_replicas_path: s(&sc["specReplicasPath"]),
                        status_replicas_path: s(&sc["statusReplicasPath"]),
                        label_selector_path: sc["labelSelectorPath"].as_str().map(str::to_owned),
                    }),
                    columns: v["additionalPrinterColumns"]
                        .as_array()
                        .map(|cols| {
                            cols.iter()
                                .map(|c| PrinterColumn {
                                    name: s(&c["name"]),
                                    ty: s(&c["type"]),
                                    format: s(&c["format"]),
                                    description: s(&c["description"]),
                                    priority: c["priority"].as_i64().unwrap_or(0),
                                    json_path: s(&c["jsonPath"]),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

/// Custom types live as long as the process: routing hands out `&'static ResourceType`.
/// Each distinct definition is leaked once and reused, so re-reading an unchanged CRD (every
/// status write, every restart of the watch) allocates nothing.
fn intern(ct: CustomType) -> &'static ResourceType {
    static INTERNED: Mutex<Vec<&'static ResourceType>> = Mutex::new(Vec::new());
    let mut interned = INTERNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(rt) = interned.iter().find(|rt| rt.custom == Some(&ct)) {
        return rt;
    }
    let ct: &'static CustomType = Box::leak(Box::new(ct));
    let leak_strs = |v: &'static [String]| -> &'static [&'static str] {
        Box::leak(v.iter().map(String::as_str).collect::<Vec<_>>().into_boxed_slice())
    };
    let subresources: &'static [&'static str] = match (ct.status_subresource, ct.scale.is_some()) {
        (true, true) => &["status", "scale"],
        (true, false) => &["status"],
        (false, true) => &["scale"],
        (false, false) => &[],
    };
    let rt: &'static ResourceType = Box::leak(Box::new(ResourceType {
        group: &ct.group,
        version: &ct.version,
        kind: &ct.kind,
        plural: &ct.plural,
        singular: &ct.singular,
        namespaced: ct.namespaced,
        short_names: leak_strs(&ct.short_names),
        subresources,
        categories: leak_strs(&ct.categories),
        custom: Some(ct),
    }));
    interned.push(rt);
    rt
}

/// The custom types this server serves now, by CRD name.
#[derive(Default)]
pub struct Catalog {
    by_crd: RwLock<BTreeMap<String, Vec<&'static ResourceType>>>,
}

impl Catalog {
    /// A catalog serving what this one serves now (a dry-run registry's).
    pub fn snapshot(&self) -> Catalog {
        Catalog {
            by_crd: RwLock::new(self.read().clone()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<&'static ResourceType>>> {
        self.by_crd.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        self.read()
            .values()
            .flatten()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .copied()
    }

    /// Every served custom type (one per served version).
    pub fn all(&self) -> Vec<&'static ResourceType> {
        self.read().values().flatten().copied().collect()
    }

    /// Serves the given versions of CRD `name` (replacing what it served before).
    pub fn set(&self, name: &str, types: Vec<CustomType>) {
        let rts = types.into_iter().map(intern).collect();
        self.by_crd
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), rts);
    }

    /// Stops serving every CRD not named in `names`.
    pub fn retain(&self, names: &[String]) {
        self.by_crd
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name, _| names.contains(name));
    }

    pub fn remove(&self, name: &str) {
        self.by_crd
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
}

/// Objects are stored in the storage version and served in the requested one. With
/// conversion strategy None only apiVersion differs.
pub fn to_served_version(rt: &ResourceType, obj: &mut Value) {
    if rt.custom.is_some() && obj.is_object() {
        obj["apiVersion"] = json!(rt.api_version());
    }
}

/// Create: prune, default, stamp generation 1, and store as the storage version. With a
/// status subresource, status is written only through it, as upstream.
pub fn prepare_create(ct: &CustomType, obj: &mut Value) {
    if ct.status_subresource
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    if ct.schema.is_object() {
        prune::prune_object(&ct.schema, obj);
        defaults::default_object(&ct.schema, obj);
    }
    meta::metadata_mut(obj).insert("generation".into(), json!(1));
    to_storage_version(ct, obj);
}

/// Update (the generic carry-overs already done): prune and default the new object, and
/// bump generation when anything but metadata and status changed, as upstream does for
/// custom objects.
pub fn prepare_update(ct: &CustomType, old: &Value, new: &mut Value) {
    if ct.schema.is_object() {
        prune::prune_object(&ct.schema, new);
        defaults::default_object(&ct.schema, new);
    }
    let content = |v: &Value| -> Value {
        let mut c = v.clone();
        if let Some(m) = c.as_object_mut() {
            for f in ["metadata", "status", "apiVersion", "kind"] {
                m.remove(f);
            }
        }
        c
    };
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let next = if content(old) != content(new) {
        generation + 1
    } else {
        generation
    };
    meta::metadata_mut(new).insert("generation".into(), json!(next));
    to_storage_version(ct, new);
}

/// The stored form carries the storage version (schema validation ignores apiVersion).
fn to_storage_version(ct: &CustomType, obj: &mut Value) {
    obj["apiVersion"] = json!(format!("{}/{}", ct.group, ct.storage_version));
}

/// Schema validation of a custom object (metadata is checked by the caller).
pub fn validate(ct: &CustomType, obj: &Value, causes: &mut Vec<Cause>) {
    if ct.schema.is_object() {
        schema::validate_object(&ct.schema, obj, causes);
    }
}

/// Fields pruning would drop: what `fieldValidation` reports as unknown.
pub fn unknown_fields(ct: &CustomType, obj: &Value) -> Vec<String> {
    if !ct.schema.is_object() {
        return Vec::new();
    }
    let mut copy = obj.clone();
    prune::prune_object(&ct.schema, &mut copy)
}
