//! Objects seen through their type's list and map kinds: the field set an object (or an
//! applied configuration) spells, the comparison of two objects, the merge of an applied
//! configuration into a live object, and the removal of fields an applier gave up.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fieldset::{Element, FieldSet, Path};
use crate::apiserver::{
    patch::{self, ListType},
    resources::ResourceType,
};

/// Where list and map kinds come from: the built-in table for Kubernetes' own types, the
/// CRD's structural schema (`x-kubernetes-list-type`, `x-kubernetes-map-type`) for
/// custom ones. ObjectMeta is the same everywhere.
#[derive(Clone, Copy)]
pub struct Shape<'a> {
    kind: &'a str,
    schema: Option<&'a Value>,
}

impl<'a> Shape<'a> {
    pub fn of(rt: &'a ResourceType) -> Self {
        Shape {
            kind: rt.kind,
            schema: rt.custom.map(|c| &c.schema).filter(|s| s.is_object()),
        }
    }

    #[cfg(test)]
    pub fn custom(kind: &'a str, schema: &'a Value) -> Self {
        Shape {
            kind,
            schema: Some(schema),
        }
    }

    /// The CRD schema node at `path`, if the schema describes it.
    fn schema_at(&self, path: &[&str]) -> Option<&'a Value> {
        let mut node = self.schema?;
        for name in path {
            // List items add no step to `path`: descend through `items` first.
            while node["type"] == "array" {
                node = node.get("items")?;
            }
            node = node.get("properties")?.get(*name)?;
        }
        Some(node)
    }

    fn list(&self, path: &[&str]) -> ListType {
        if matches!(path, [.., "metadata", "finalizers" | "ownerReferences"]) || self.schema.is_none() {
            return patch::list_type(self.kind, path);
        }
        let Some(node) = self.schema_at(path) else {
            return ListType::Atomic;
        };
        match node["x-kubernetes-list-type"].as_str() {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys: Vec<&str> = node["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if keys.is_empty() {
                    ListType::Atomic
                } else {
                    ListType::Map(intern(&keys))
                }
            }
            _ => ListType::Atomic,
        }
    }

    fn atomic_map(&self, path: &[&str]) -> bool {
        if self.schema.is_none() {
            return patch::map_is_atomic(self.kind, path);
        }
        self.schema_at(path)
            .is_some_and(|n| n["x-kubernetes-map-type"] == "atomic")
    }
}

/// [`ListType::Map`] holds `'static` keys, as the built-in table does; a CRD's keys are
/// leaked once per distinct key list, so repeated requests leak nothing more.
fn intern(keys: &[&str]) -> &'static [&'static str] {
    use std::sync::{Mutex, OnceLock};
    type Interned = Vec<&'static [&'static str]>;
    static KEYS: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut known = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(k) = known.iter().find(|k| **k == keys) {
        return k;
    }
    let owned: Vec<&'static str> = keys
        .iter()
        .map(|k| &*Box::leak((*k).to_owned().into_boxed_str()))
        .collect();
    let leaked: &'static [&'static str] = Vec::leak(owned);
    known.push(leaked);
    leaked
}

/// What an invalid applied configuration is refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub path: String,
    pub reason: String,
}

/// How strictly lists are read: an applied configuration must key every item of an
/// associative list; a stored object that does not is still tracked, by position.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Lenient,
}

/// The paths of `v`, each with its value when it is a leaf (`None` for list items, whose
/// content is compared through their own paths).
pub type Leaves<'v> = BTreeMap<Path, Option<&'v Value>>;

pub fn leaves<'v>(shape: Shape<'_>, v: &'v Value, mode: Mode) -> Result<Leaves<'v>, ShapeError> {
    let mut out = BTreeMap::new();
    let mut names = Vec::new();
    collect(shape, v, &mut names, &mut Vec::new(), &mut out, mode)?;
    Ok(out)
}

pub fn field_set(shape: Shape<'_>, v: &Value, mode: Mode) -> Result<FieldSet, ShapeError> {
    Ok(leaves(shape, v, mode)?.into_keys().collect())
}

fn collect<'v>(
    shape: Shape<'_>,
    v: &'v Value,
    names: &mut Vec<String>,
    path: &mut Path,
    out: &mut Leaves<'v>,
    mode: Mode,
) -> Result<(), ShapeError> {
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match v {
        Value::Object(m) if !m.is_empty() && (path.is_empty() || !shape.atomic_map(&name_refs)) => {
            for (k, child) in m {
                names.push(k.clone());
                path.push(Element::field(k));
                collect(shape, child, names, path, out, mode)?;
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list(&name_refs) {
            ListType::Atomic => {
                out.insert(path.clone(), Some(v));
            }
            ListType::Set => {
                for item in items {
                    path.push(Element::value(item));
                    out.insert(path.clone(), Some(item));
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                for (i, item) in items.iter().enumerate() {
                    let e = match item_key(item, keys) {
                        Ok(e) => e,
                        Err(reason) if mode == Mode::Strict => {
                            return Err(ShapeError {
                                path: format!("{}[{i}]", super::fieldset::path_string(path)),
                                reason,
                            });
                        }
                        Err(_) => Element::index(i),
                    };
                    path.push(e);
                    if out.contains_key(path.as_slice()) {
                        if mode == Mode::Strict {
                            let p = super::fieldset::path_string(path);
                            return Err(ShapeError {
                                path: p,
                                reason: "duplicate entries for this key".into(),
                            });
                        }
                    } else {
                        out.insert(path.clone(), None);
                        collect(shape, item, names, path, out, mode)?;
                    }
                    path.pop();
                }
            }
        },
        _ => {
            if !path.is_empty() {
                out.insert(path.clone(), Some(v));
            }
        }
    }
    Ok(())
}

/// The `k:{...}` element of an associative list's item.
pub fn item_key(item: &Value, keys: &[&str]) -> Result<Element, String> {
    let Value::Object(m) = item else {
        return Err("an item of an associative list must be an object".into());
    };
    let mut parts = Vec::with_capacity(keys.len());
    let defaults: Vec<Value> = keys
        .iter()
        .map(|k| {
            patch::LIST_MAP_KEY_DEFAULTS
                .iter()
                .find(|(name, _)| name == k)
                .map_or(Value::Null, |(_, d)| Value::String((*d).to_owned()))
        })
        .collect();
    for (k, default) in keys.iter().zip(&defaults) {
        match m.get(*k).filter(|v| !v.is_null()) {
            Some(v) => parts.push((*k, v)),
            None if !default.is_null() => parts.push((*k, default)),
            None => {
                return Err(format!(
                    "associative list with keys has an element that omits key field {k:?} (and doesn't have default value)"
                ));
            }
        }
    }
    Ok(Element::key(&parts))
}

/// What changed from one object to the next, as upstream's `Comparison`.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }
}

pub fn compare(shape: Shape<'_>, old: &Value, new: &Value) -> Comparison {
    let empty = BTreeMap::new();
    let a = leaves(shape, old, Mode::Lenient).unwrap_or_else(|_| empty.clone());
    let b = leaves(shape, new, Mode::Lenient).unwrap_or(empty);
    let mut c = Comparison::default();
    for (path, value) in &b {
        match a.get(path) {
            None => c.added.insert(path.clone()),
            Some(before) if before != value => c.modified.insert(path.clone()),
            Some(_) => {}
        }
    }
    for path in a.keys().filter(|p| !b.contains_key(*p)) {
        c.removed.insert(path.clone());
    }
    c
}

/// The live object with the applied configuration merged in: objects merge field by
/// field, associative lists item by item (keyed), sets by value, everything else (atomic
/// lists and maps, scalars) is replaced. `null` removes a field.
pub fn merge(shape: Shape<'_>, live: &Value, config: &Value) -> Value {
    merge_at(shape, live, config, &mut Vec::new())
}

fn merge_at(shape: Shape<'_>, live: &Value, config: &Value, names: &mut Vec<String>) -> Value {
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if names.is_empty() || !shape.atomic_map(&name_refs) => {
            let mut out = l.clone();
            for (k, cv) in c {
                if cv.is_null() {
                    out.remove(k);
                    continue;
                }
                names.push(k.clone());
                let merged = merge_at(shape, l.get(k).unwrap_or(&Value::Null), cv, names);
                names.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match shape.list(&name_refs) {
            ListType::Atomic => config.clone(),
            ListType::Set => {
                let mut out = l.clone();
                for item in c {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            ListType::Map(keys) => merge_keyed(shape, l, c, keys, names).unwrap_or_else(|| config.clone()),
        },
        _ => config.clone(),
    }
}

/// Items in both lists are merged and take the configuration's order among themselves;
/// items only the live list has keep their places; new items come last. `None` when an
/// item has no key, which the applied configuration was already refused for.
fn merge_keyed(
    shape: Shape<'_>,
    live: &[Value],
    config: &[Value],
    keys: &[&str],
    names: &mut Vec<String>,
) -> Option<Value> {
    let live_keys: Vec<Element> = live.iter().map(|i| item_key(i, keys).ok()).collect::<Option<_>>()?;
    let config_keys: Vec<Element> = config.iter().map(|i| item_key(i, keys).ok()).collect::<Option<_>>()?;
    let mut shared = config_keys
        .iter()
        .enumerate()
        .filter(|(_, k)| live_keys.contains(k))
        .map(|(i, _)| i);
    let mut out = Vec::with_capacity(live.len() + config.len());
    for (item, key) in live.iter().zip(&live_keys) {
        if !config_keys.contains(key) {
            out.push(item.clone());
            continue;
        }
        let Some(ci) = shared.next() else { continue };
        let li = live_keys.iter().position(|k| *k == config_keys[ci])?;
        out.push(merge_at(shape, &live[li], &config[ci], names));
    }
    for (item, key) in config.iter().zip(&config_keys) {
        if !live_keys.contains(key) {
            out.push(merge_at(shape, &Value::Null, item, names));
        }
    }
    Some(Value::Array(out))
}

/// Removes from `obj` what the applier owned before (`last`, with the fields leading to
/// it) unless someone still owns it or something below it (`kept`). Paths `protected`
/// says are not tracked (metadata the server keeps, status behind its subresource) are
/// never removed.
pub fn prune(
    shape: Shape<'_>,
    obj: &mut Value,
    last: &FieldSet,
    kept: &FieldSet,
    tracked: &dyn Fn(&[Element]) -> bool,
) {
    let last = last.with_parent_fields();
    prune_at(shape, obj, &last, kept, tracked, &mut Vec::new(), &mut Vec::new());
}

fn prune_at(
    shape: Shape<'_>,
    v: &mut Value,
    last: &FieldSet,
    kept: &FieldSet,
    tracked: &dyn Fn(&[Element]) -> bool,
    names: &mut Vec<String>,
    path: &mut Path,
) {
    let gone = |path: &Path| tracked(path) && last.contains(path) && !kept.covers(path);
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match v {
        Value::Object(m) if path.is_empty() || !shape.atomic_map(&name_refs) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                path.push(Element::field(&k));
                if gone(path) {
                    m.remove(&k);
                } else if let Some(child) = m.get_mut(&k) {
                    names.push(k.clone());
                    prune_at(shape, child, last, kept, tracked, names, path);
                    names.pop();
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let keyed = match shape.list(&name_refs) {
                ListType::Atomic => return,
                ListType::Set => None,
                ListType::Map(keys) => Some(keys),
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                let e = match keyed {
                    None => Element::value(&item),
                    Some(keys) => item_key(&item, keys).unwrap_or_else(|_| Element::index(i)),
                };
                path.push(e);
                if !gone(path) {
                    if keyed.is_some() {
                        prune_at(shape, &mut item, last, kept, tracked, names, path);
                    }
                    out.push(item);
                }
                path.pop();
            }
            *items = out;
        }
        _ => {}
    }
}
