//! Strategic merge patch: JSON merge patch, except that lists with patch metadata
//! ([`super::schema`]) merge element by element, plus the `$`-directives kubectl and
//! client libraries send. Follows apimachinery's `strategicpatch.StrategicMergePatch`
//! with `IgnoreUnmatchedNulls`, with two deliberate simplifications: `$patch: delete` on a
//! map removes the key (apimachinery leaves `{}`), and `$setElementOrder` puts the listed
//! elements first, in order, followed by the rest in their current order.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::{
    PatchError,
    schema::{self, ListStrategy},
};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to `current` (a missing or non-object `current` counts as `{}`).
/// Without `directives` (server-side apply), `$`-keys are plain fields.
pub(super) fn merge(
    kind: &str,
    current: &Value,
    patch: &Map<String, Value>,
    directives: bool,
) -> Result<Value, PatchError> {
    let merger = Merger {
        kind,
        directives,
        // CRD schemas are built-in objects full of JSON Schema's `$ref`/`$schema` fields.
        dollar_fields: kind == "CustomResourceDefinition",
    };
    let base = current.as_object().cloned().unwrap_or_default();
    Ok(Value::Object(
        merger.merge_map(base, patch, &mut vec![])?.unwrap_or_default(),
    ))
}

struct Merger<'k> {
    kind: &'k str,
    directives: bool,
    dollar_fields: bool,
}

fn at(path: &[&str]) -> String {
    if path.is_empty() {
        "<root>".into()
    } else {
        path.join(".")
    }
}

fn invalid(path: &[&str], directive: &str, reason: impl Into<String>) -> PatchError {
    PatchError::InvalidDirective {
        path: at(path),
        directive: directive.into(),
        reason: reason.into(),
    }
}

impl Merger<'_> {
    /// `None` means the patch deleted this map (`$patch: delete`).
    fn merge_map<'p>(
        &self,
        mut orig: Map<String, Value>,
        patch: &'p Map<String, Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        if self.directives && !self.prologue(&mut orig, patch, path)? {
            return Ok(None);
        }
        for (k, pv) in patch {
            if self.directives && k.starts_with('$') {
                let known = k == PATCH || k == RETAIN_KEYS || k.starts_with(SET_ORDER) || k.starts_with(DELETE_FROM);
                if known {
                    continue;
                }
                if !self.dollar_fields {
                    return Err(PatchError::UnknownDirective {
                        path: at(path),
                        directive: k.clone(),
                    });
                }
            }
            path.push(k);
            // Taking the value out and putting the result back keeps the key's position.
            let old = orig.get_mut(k.as_str()).map(std::mem::take);
            let new = match pv {
                Value::Null => None,
                Value::Object(pm) => {
                    let base = match old {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    self.merge_map(base, pm, path)?.map(Value::Object)
                }
                Value::Array(pa) => {
                    let base = match old {
                        Some(Value::Array(a)) => a,
                        _ => vec![],
                    };
                    Some(Value::Array(self.merge_list(base, pa, path)?))
                }
                v => Some(v.clone()),
            };
            path.pop();
            match new {
                Some(v) => orig.insert(k.clone(), v),
                None => orig.remove(k.as_str()),
            };
        }
        if self.directives {
            self.set_element_order(&mut orig, patch, path)?;
        }
        Ok(Some(orig))
    }

    /// `$patch`, `$retainKeys` and `$deleteFromPrimitiveList/…`, which act before the
    /// fields merge. `false` means the map is deleted.
    fn prologue(
        &self,
        orig: &mut Map<String, Value>,
        patch: &Map<String, Value>,
        path: &[&str],
    ) -> Result<bool, PatchError> {
        match patch.get(PATCH) {
            None => {}
            Some(Value::String(d)) if d == "replace" => orig.clear(),
            Some(Value::String(d)) if d == "delete" => return Ok(false),
            Some(d) => {
                return Err(invalid(
                    path,
                    PATCH,
                    format!("{d} is not valid on a map; use \"replace\" or \"delete\""),
                ));
            }
        }
        if let Some(keys) = patch.get(RETAIN_KEYS) {
            let keys: Vec<&str> =
                string_list(keys).ok_or_else(|| invalid(path, RETAIN_KEYS, "must be a list of strings"))?;
            // A patch that sets a field it does not retain contradicts itself.
            if let Some(k) = patch
                .iter()
                .find(|(k, v)| !v.is_null() && !k.starts_with('$') && !keys.contains(&k.as_str()))
            {
                return Err(invalid(
                    path,
                    RETAIN_KEYS,
                    format!("the patch sets {:?}, which the list does not retain", k.0),
                ));
            }
            orig.retain(|k, _| keys.contains(&k.as_str()));
        }
        for (k, v) in patch {
            let Some(field) = k.strip_prefix(DELETE_FROM) else {
                continue;
            };
            let Value::Array(doomed) = v else {
                return Err(invalid(path, k, "must be a list"));
            };
            if field.is_empty() {
                return Err(invalid(path, k, "names no field"));
            }
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                let doomed: HashSet<String> = doomed.iter().map(Value::to_string).collect();
                list.retain(|e| !doomed.contains(&e.to_string()));
            }
        }
        Ok(true)
    }

    /// `$setElementOrder/…`, which acts on the merged lists.
    fn set_element_order<'p>(
        &self,
        orig: &mut Map<String, Value>,
        patch: &'p Map<String, Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<(), PatchError> {
        for (k, order) in patch {
            let Some(field) = k.strip_prefix(SET_ORDER) else {
                continue;
            };
            let Value::Array(order) = order else {
                return Err(invalid(path, k, "must be a list"));
            };
            if field.is_empty() {
                return Err(invalid(path, k, "names no field"));
            }
            path.push(field);
            let key = match schema::list_strategy(self.kind, path) {
                ListStrategy::MergeKey(key) => Some(key),
                _ => None,
            };
            path.pop();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                reorder(list, order, key);
            }
        }
        Ok(())
    }

    fn merge_list<'p>(
        &self,
        orig: Vec<Value>,
        patch: &'p [Value],
        path: &mut Vec<&'p str>,
    ) -> Result<Vec<Value>, PatchError> {
        // Elements carrying `$patch` are instructions about the list, not members of it.
        let (mut replace, mut deletes, mut items) = (false, vec![], vec![]);
        for e in patch {
            match e.get(PATCH).filter(|_| self.directives) {
                None => items.push(e),
                Some(d) if d == "replace" => replace = true,
                Some(d) if d == "delete" => deletes.push(e),
                Some(d) if d == "merge" => {
                    return Err(invalid(
                        path,
                        PATCH,
                        "merging lists cannot yet be specified in the patch",
                    ));
                }
                Some(d) => {
                    return Err(invalid(
                        path,
                        PATCH,
                        format!("{d} is not valid in a list; use \"replace\" or \"delete\""),
                    ));
                }
            }
        }
        let mut out = if replace { vec![] } else { orig };
        match schema::list_strategy(self.kind, path) {
            ListStrategy::Replace => {
                out.clear();
                for e in items {
                    match e {
                        Value::Object(m) => out.extend(self.merge_map(Map::new(), m, path)?.map(Value::Object)),
                        Value::Array(a) => out.push(Value::Array(self.merge_list(vec![], a, path)?)),
                        v => out.push(v.clone()),
                    }
                }
            }
            ListStrategy::MergePrimitives => {
                let mut seen: HashSet<String> = out.iter().map(Value::to_string).collect();
                out.extend(items.into_iter().filter(|e| seen.insert(e.to_string())).cloned());
            }
            ListStrategy::MergeKey(key) => {
                // Elements are identified by their merge key's value as JSON; the indexes
                // keep large lists linear.
                let doomed: HashSet<String> = deletes
                    .iter()
                    .map(|d| key_of(d, key, path).map(Value::to_string))
                    .collect::<Result<_, _>>()?;
                if !doomed.is_empty() {
                    out.retain(|o| o.get(key).is_none_or(|k| !doomed.contains(&k.to_string())));
                }
                let mut index: HashMap<String, usize> = HashMap::new();
                for (i, o) in out.iter().enumerate() {
                    if let Some(k) = o.get(key) {
                        index.entry(k.to_string()).or_insert(i);
                    }
                }
                for e in items {
                    let (Value::Object(pm), Some(wanted)) = (e, e.get(key).map(Value::to_string)) else {
                        return Err(PatchError::MissingMergeKey {
                            path: at(path),
                            key,
                            element: e.to_string(),
                        });
                    };
                    // Items carry no `$patch`, so merging never deletes them.
                    match index.get(&wanted) {
                        Some(&i) => {
                            let base = match std::mem::take(&mut out[i]) {
                                Value::Object(m) => m,
                                _ => Map::new(),
                            };
                            out[i] = Value::Object(self.merge_map(base, pm, path)?.unwrap_or_default());
                        }
                        None => {
                            index.insert(wanted, out.len());
                            out.push(Value::Object(self.merge_map(Map::new(), pm, path)?.unwrap_or_default()));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn key_of<'v>(e: &'v Value, key: &'static str, path: &[&str]) -> Result<&'v Value, PatchError> {
    e.get(key).ok_or_else(|| PatchError::MissingMergeKey {
        path: at(path),
        key,
        element: e.to_string(),
    })
}

fn string_list(v: &Value) -> Option<Vec<&str>> {
    v.as_array()?.iter().map(Value::as_str).collect()
}

/// Listed elements first, in the listed order; the rest keep their relative order. Map
/// entries are identified by the merge key, or by their only key when the list has no
/// known merge key (kubectl sends `{"name": "x"}`-shaped entries).
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let key = key.or_else(|| match order.first() {
        Some(Value::Object(m)) if m.len() == 1 => m.keys().next().map(String::as_str),
        _ => None,
    });
    let id = |v: &Value| match (v, key) {
        (Value::Object(_), Some(k)) => v.get(k).map(Value::to_string),
        (Value::Object(_), None) => None,
        _ => Some(v.to_string()),
    };
    let mut rank = HashMap::new();
    for (i, o) in order.iter().enumerate() {
        if let Some(id) = id(o) {
            rank.entry(id).or_insert(i);
        }
    }
    // A stable sort: unlisted elements share the last rank and keep their order.
    list.sort_by_cached_key(|e| id(e).and_then(|id| rank.get(&id).copied()).unwrap_or(usize::MAX));
}
