//! Field ownership (`metadata.managedFields`) and server-side apply, with the semantics of
//! Kubernetes' structured-merge-diff.
//!
//! Every write through the API records who set what. Creates, updates and non-apply
//! patches are `Update` operations: the request's field manager takes every field the
//! write added or changed, from whoever owned it, and a removed field leaves every set.
//! An apply (`application/apply-patch+yaml`) is an `Apply` operation: the applier's set
//! becomes exactly the fields of its configuration; changing a field another manager
//! owns to a different value is a 409 Conflict naming the managers and fields, unless
//! `force=true` takes them over; applying the value that is already there shares the
//! field; a field the applier applied before and applies no more is removed from the
//! object unless another manager still owns it.
//!
//! The sets (`fieldset`) hold leaves and list items, spelled as FieldsV1 (`f:`, `k:`,
//! `v:`); which lists are keyed, sets or atomic comes from `patch::list_type` for the
//! built-in types and from the CRD schema for custom ones (`typed`). Writes to a
//! subresource are recorded under it (`subresource: status`) and see only its part of
//! the object; the main resource's managers never own `status` where it has its own
//! subresource. Clients may replace `managedFields` with an update or patch (kubectl's
//! client-side-to-server-side migration does; `[{}]` clears them), but not in an apply.

mod entries;
mod fieldset;
mod typed;

use serde_json::{Map, Value, json};

use self::{
    entries::{APPLY, Entry, UPDATE},
    fieldset::{Element, FieldSet, path_string},
    typed::{Mode, Shape},
};
use super::{
    meta,
    resources::ResourceType,
    status::{ApiError, Cause, Details},
};

/// kubectl's client-side apply keeps the applied configuration in this annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// `kubectl apply --server-side`'s default manager: upstream lets it take over fields
/// client-side apply set to what the annotation still records.
const KUBECTL_SSA: &str = "kubectl";
/// Who owns the fields of an object that had no managedFields when it was first applied.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// Upstream's limit on a field manager's name.
const MAX_MANAGER_LEN: usize = 128;

/// Who writes, and whether an apply may take fields from other managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldManager {
    pub name: String,
    pub force: bool,
}

impl FieldManager {
    /// From a request: `fieldManager`, else the User-Agent's program name (`kubectl/v1.33…`
    /// is `kubectl`), as upstream. `force` is for applies only.
    pub fn from_request(
        field_manager: Option<&str>,
        user_agent: Option<&str>,
        force: Option<&str>,
        apply: bool,
    ) -> Result<Self, ApiError> {
        let invalid =
            |field: &str, message: String| ApiError::invalid("", "", "", vec![Cause::invalid(field, message)]);
        let name = match field_manager {
            Some(m) => {
                if m.chars().count() > MAX_MANAGER_LEN {
                    return Err(invalid(
                        "fieldManager",
                        format!("Too long: may not be longer than {MAX_MANAGER_LEN}"),
                    ));
                }
                if m.chars().any(|c| c.is_control()) {
                    return Err(invalid(
                        "fieldManager",
                        format!("Invalid value: {m:?}: must only contain printable characters"),
                    ));
                }
                m.to_owned()
            }
            None => user_agent
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_MANAGER_LEN)
                .collect(),
        };
        let force = match force {
            None => false,
            Some(_) if !apply => {
                return Err(invalid(
                    "force",
                    "Forbidden: may not be specified for non-apply patch".into(),
                ));
            }
            Some("true") => true,
            Some("false") => false,
            Some(other) => return Err(ApiError::bad_request(format!("invalid value for force: {other:?}"))),
        };
        Ok(FieldManager { name, force })
    }
}

/// Which paths a write through `subresource` may own.
fn tracked(rt: &ResourceType, subresource: Option<&str>) -> impl Fn(&[Element]) -> bool + use<> {
    let status_apart = rt.has_subresource("status");
    let subresource = subresource.map(str::to_owned);
    move |path: &[Element]| {
        let names: Vec<&str> = path.iter().take(2).map(|e| e.field_name().unwrap_or("")).collect();
        let server_set = matches!(
            names.as_slice(),
            ["apiVersion" | "kind", ..]
                | ["metadata"]
                | [
                    "metadata",
                    "name"
                        | "namespace"
                        | "uid"
                        | "resourceVersion"
                        | "generation"
                        | "creationTimestamp"
                        | "deletionTimestamp"
                        | "deletionGracePeriodSeconds"
                        | "selfLink"
                        | "managedFields"
                ]
        );
        if server_set {
            return false;
        }
        match subresource.as_deref() {
            Some("status") => matches!(
                names.as_slice(),
                ["status", ..] | ["metadata", "labels" | "annotations"]
            ),
            _ => !(status_apart && names.first() == Some(&"status")),
        }
    }
}

fn api_version(rt: &ResourceType) -> String {
    rt.api_version()
}

/// The managers `base` starts from: those of the written object when a client sent some
/// (not through a subresource), else the stored object's. Lists that do not decode are
/// dropped, as upstream does.
fn starting_entries(old: Option<&Value>, new: &Value, subresource: Option<&str>) -> Vec<Entry> {
    if subresource.is_none()
        && let Ok(sent) = entries::decode(new)
        && !sent.is_empty()
    {
        return sent;
    }
    old.and_then(|o| entries::decode(o).ok()).unwrap_or_default()
}

/// Records an `Update` by `fm` that turns `old` (None for a create) into `new`, after the
/// server's own changes (defaults, status kept), in `new.metadata.managedFields`.
pub fn record_update(
    rt: &ResourceType,
    subresource: Option<&str>,
    old: Option<&Value>,
    new: &mut Value,
    fm: &FieldManager,
) {
    let shape = Shape::of(rt);
    let tracked = tracked(rt, subresource);
    let mut list = starting_entries(old, new, subresource);
    let mut cmp = typed::compare(shape, old.unwrap_or(&Value::Null), new);
    for set in [&mut cmp.added, &mut cmp.modified, &mut cmp.removed] {
        set.retain(|p| tracked(p));
    }
    let changed = cmp.changed();
    for e in &mut list {
        e.fields = e.fields.difference(&changed).difference(&cmp.removed);
    }
    let me = Entry::new(&fm.name, UPDATE, &api_version(rt), subresource.unwrap_or_default());
    let at = match list.iter().position(|e| e.same_manager(&me)) {
        Some(i) => i,
        None => {
            list.push(me);
            list.len() - 1
        }
    };
    // Its own earlier fields stay, minus what the write removed (dropped above).
    let mine = &mut list[at];
    mine.fields = mine.fields.union(&changed);
    if !changed.is_empty() {
        mine.time = Some(meta::now_rfc3339());
    }
    entries::encode_into(new, list);
}

/// The result of an apply: the object to validate and store, and the managedFields to
/// put in it once the server's own changes are made.
#[derive(Debug)]
pub struct Applied {
    pub object: Value,
    pub managed_fields: Value,
}

impl Applied {
    /// Puts the managedFields back (a status write starts from the stored object).
    pub fn finish(&self, obj: &mut Value) {
        match &self.managed_fields {
            Value::Null => {
                meta::metadata_mut(obj).remove("managedFields");
            }
            v => {
                meta::metadata_mut(obj).insert("managedFields".into(), v.clone());
            }
        }
    }
}

/// Server-side apply of the configuration in `body` by `fm` to `live` (None: the object
/// does not exist yet).
pub fn apply(
    rt: &ResourceType,
    subresource: Option<&str>,
    live: Option<&Value>,
    body: &[u8],
    fm: &FieldManager,
) -> Result<Applied, ApiError> {
    let config = super::patch::decode_apply_config(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if config
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let config = Value::Object(config);
    let shape = Shape::of(rt);
    let tracked = tracked(rt, subresource);
    let mut applied = typed::field_set(shape, &config, Mode::Strict).map_err(|e| {
        ApiError::invalid(
            rt.kind,
            rt.group,
            meta::name(&config).unwrap_or_default(),
            vec![Cause::invalid(e.path, e.reason)],
        )
    })?;
    applied.retain(|p| tracked(p));
    let live_obj = live.unwrap_or(&Value::Null);
    let mut list = match live {
        Some(l) => match entries::decode(l) {
            Ok(list) if !list.is_empty() => list,
            // An object nobody has applied or updated through a field manager: what it
            // holds belongs to a stand-in, so the first applier neither takes it silently
            // nor removes it.
            _ => {
                let mut e = Entry::new(
                    BEFORE_FIRST_APPLY,
                    UPDATE,
                    &api_version(rt),
                    subresource.unwrap_or_default(),
                );
                e.fields = typed::field_set(shape, l, Mode::Lenient).unwrap_or_default();
                e.fields.retain(|p| tracked(p));
                vec![e]
            }
        },
        None => vec![],
    };
    let me = Entry::new(&fm.name, APPLY, &api_version(rt), subresource.unwrap_or_default());
    let last = list
        .iter()
        .find(|e| e.same_manager(&me))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut merged = typed::merge(shape, live_obj, &config);
    let others: FieldSet = list
        .iter()
        .filter(|e| !e.same_manager(&me))
        .fold(FieldSet::new(), |acc, e| acc.union(&e.fields));
    typed::prune(shape, &mut merged, &last, &applied.union(&others), &tracked);

    let mut cmp = typed::compare(shape, live_obj, &merged);
    for set in [&mut cmp.added, &mut cmp.modified, &mut cmp.removed] {
        set.retain(|p| tracked(p));
    }
    let changed = cmp.changed();
    let conflicts: Vec<(usize, FieldSet)> = list
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.same_manager(&me))
        .map(|(i, e)| (i, e.fields.intersection(&changed)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let allowed = conflicts.is_empty()
        || fm.force
        || (fm.name == KUBECTL_SSA && allowed_by_last_applied(shape, live_obj, &conflicts));
    if !allowed {
        return Err(conflict_error(&list, &conflicts));
    }
    for (i, taken) in &conflicts {
        list[*i].fields = list[*i].fields.difference(taken);
    }
    for e in list.iter_mut().filter(|e| !e.same_manager(&me)) {
        e.fields = e.fields.difference(&cmp.removed);
    }
    let object_changed = !(cmp.added.is_empty() && cmp.modified.is_empty() && cmp.removed.is_empty());
    match list.iter_mut().find(|e| e.same_manager(&me)) {
        Some(e) => {
            if object_changed || e.fields != applied {
                e.time = Some(meta::now_rfc3339());
            }
            e.fields = applied;
            e.api_version = api_version(rt);
        }
        None => {
            let mut e = me;
            e.fields = applied;
            e.time = Some(meta::now_rfc3339());
            list.push(e);
        }
    }
    if fm.name == KUBECTL_SSA && has_last_applied(live_obj) {
        sync_last_applied(&mut merged, live_obj, &config);
    }
    let mut holder = json!({"metadata": {}});
    entries::encode_into(&mut holder, list);
    let managed_fields = holder["metadata"]["managedFields"].take();
    let applied = Applied {
        object: merged,
        managed_fields,
    };
    let mut object = applied.object.clone();
    applied.finish(&mut object);
    Ok(Applied { object, ..applied })
}

fn has_last_applied(obj: &Value) -> bool {
    obj["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .is_some_and(|s| !s.is_empty())
}

/// Upstream lets `kubectl apply --server-side` take fields from client-side apply when
/// the client-side annotation still records their live value: the user applied them
/// before, with the other mechanism.
fn allowed_by_last_applied(shape: Shape<'_>, live: &Value, conflicts: &[(usize, FieldSet)]) -> bool {
    let Some(text) = live["metadata"]["annotations"][LAST_APPLIED].as_str() else {
        return false;
    };
    let Ok(last_applied) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let (Ok(recorded), Ok(current)) = (
        typed::leaves(shape, &last_applied, Mode::Lenient),
        typed::leaves(shape, live, Mode::Lenient),
    ) else {
        return false;
    };
    conflicts
        .iter()
        .flat_map(|(_, set)| set.iter())
        .all(|p| matches!((recorded.get(p), current.get(p)), (Some(a), Some(b)) if a == b))
}

/// Keeps the client-side annotation in step with what `kubectl` applies server-side, so
/// a later client-side apply computes its patch from the right base (as upstream).
fn sync_last_applied(obj: &mut Value, live: &Value, config: &Value) {
    // `get_mut`, not indexing: `v["metadata"]["annotations"]` would insert a null where
    // there are none, and `{}`, null and absent annotations must all compare equal.
    fn normalized(mut v: Value) -> Value {
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(LAST_APPLIED);
            }
            if m.get("annotations")
                .is_some_and(|a| a.is_null() || a.as_object().is_some_and(Map::is_empty))
            {
                m.remove("annotations");
            }
        }
        v
    }
    let recorded = normalized(config.clone());
    // Unchanged content keeps client-side apply's own spelling (it diffs against it).
    if let Some(text) = live["metadata"]["annotations"][LAST_APPLIED].as_str()
        && serde_json::from_str::<Value>(text).ok().map(normalized).as_ref() == Some(&recorded)
    {
        obj["metadata"]["annotations"][LAST_APPLIED] = Value::String(text.to_owned());
        return;
    }
    let text = serde_json::to_string(&recorded).unwrap_or_default();
    obj["metadata"]["annotations"][LAST_APPLIED] = Value::String(text);
}

/// Upstream's 409: one cause per field, the message listing them by manager.
fn conflict_error(list: &[Entry], conflicts: &[(usize, FieldSet)]) -> ApiError {
    let mut by_manager: Vec<(String, Vec<String>)> = conflicts
        .iter()
        .map(|(i, set)| (list[*i].describe(), set.iter().map(|p| path_string(p)).collect()))
        .collect();
    by_manager.sort();
    let causes: Vec<Cause> = by_manager
        .iter()
        .flat_map(|(who, fields)| {
            fields.iter().map(move |f| Cause {
                field: f.clone(),
                reason: "FieldManagerConflict",
                message: format!("conflict with {who}"),
            })
        })
        .collect();
    let message = if let [only] = causes.as_slice() {
        format!("Apply failed with 1 conflict: {}: {}", only.message, only.field)
    } else {
        let lines: Vec<String> = by_manager
            .iter()
            .flat_map(|(who, fields)| {
                std::iter::once(format!("conflicts with {who}:")).chain(fields.iter().map(|f| format!("- {f}")))
            })
            .collect();
        format!("Apply failed with {} conflicts: {}", causes.len(), lines.join("\n"))
    };
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(Box::new(Details {
            causes,
            ..Details::default()
        })),
    }
}

#[cfg(test)]
mod tests;
