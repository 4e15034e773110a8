//! ControllerRevisions as upstream's StatefulSet controller keeps them: each holds the pod
//! template as a strategic-merge patch (`{"spec":{"template":{..., "$patch":"replace"}}}`)
//! and is named `<set>-<hash>`, so pods label themselves with the revision they were built
//! from and an older revision can be rebuilt for the ordinals below a partition.
//!
//! Upstream hashes Go's encoding of the patch, which we cannot reproduce byte for byte; we
//! hash a canonical JSON form (keys sorted) with FNV-1a, 32 bits, and spell the number as
//! upstream's `rand.SafeEncodeString` does. Names only have to be stable for one template
//! (also across restarts, hence no std hasher) and differ between templates.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, StatefulSet},
        core::v1::PodTemplateSpec,
    },
    apimachinery::pkg::runtime::RawExtension,
};
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use crate::controllers::workload::controller_ref;

/// The label on a ControllerRevision holding its hash (upstream's `ControllerRevisionHashLabel`).
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// Upstream's revisionHistoryLimit default for apps/v1.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// Upstream truncates the set name so `<prefix>-<hash>` stays a valid object name.
const MAX_PREFIX_LEN: usize = 223;

/// The revision's data: the set's template as a patch that replaces the whole template.
pub fn revision_data(set: &StatefulSet) -> Value {
    let template = set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(obj) = template.as_object_mut() {
        obj.insert("$patch".into(), Value::String("replace".into()));
    } else {
        template = json!({"$patch": "replace"});
    }
    json!({ "spec": { "template": template } })
}

/// The hash part of a revision name, from the data and the set's `collisionCount`.
pub fn revision_hash(data: &Value, collision_count: i32) -> String {
    let mut bytes = Vec::new();
    write_canonical(data, &mut bytes);
    // Upstream's StatefulSet controller always passes its collision count, 0 included.
    bytes.extend_from_slice(collision_count.to_string().as_bytes());
    crate::controllers::deployment::hash::safe_hash(&bytes)
}

/// `<set-name>-<hash>`.
pub fn revision_name(set: &StatefulSet, data: &Value, collision_count: i32) -> String {
    let name = set.metadata.name.as_deref().unwrap_or_default();
    let prefix = match name.char_indices().nth(MAX_PREFIX_LEN) {
        Some((i, _)) => &name[..i],
        None => name,
    };
    format!("{prefix}-{}", revision_hash(data, collision_count))
}

/// A new ControllerRevision of `set`'s current template with number `revision`.
pub fn new_revision(set: &StatefulSet, revision: i64, collision_count: i32) -> ControllerRevision {
    let data = revision_data(set);
    let mut labels = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), revision_hash(&data, collision_count));
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(set, &data, collision_count)),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            // Upstream copies the set's annotations onto each revision.
            annotations: set.metadata.annotations.clone().filter(|a| !a.is_empty()),
            owner_references: Some(vec![controller_ref("apps/v1", "StatefulSet", &set.metadata)]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// Whether `rev` holds `set`'s current template (upstream's `Match`).
pub fn matches(rev: &ControllerRevision, set: &StatefulSet) -> bool {
    rev.data.as_ref().is_some_and(|d| d.0 == revision_data(set))
}

/// One more than the highest revision number, 1 for the first.
pub fn next_revision_number(revs: &[&ControllerRevision]) -> i64 {
    revs.iter().map(|r| r.revision).max().map_or(1, |m| m.saturating_add(1))
}

/// The template a revision holds, if its data is a template patch.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// `set` with the revision's template, to build pods of that revision. A revision whose
/// data is not a template patch leaves the set as it is.
pub fn apply_revision(set: &StatefulSet, rev: &ControllerRevision) -> StatefulSet {
    let mut out = set.clone();
    if let (Some(spec), Some(template)) = (out.spec.as_mut(), template_of(rev)) {
        spec.template = template;
    }
    out
}

/// Revisions to delete so at most `revisionHistoryLimit` unused ones remain, oldest first.
/// `live` are the names still in use (by pods, or as the current or update revision);
/// they are never pruned and do not count toward the limit.
pub fn to_prune(set: &StatefulSet, revs: &[&ControllerRevision], live: &BTreeSet<String>) -> Vec<String> {
    let limit = set
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0);
    let mut history: Vec<&ControllerRevision> = revs
        .iter()
        .copied()
        .filter(|r| !r.metadata.name.as_ref().is_some_and(|n| live.contains(n)))
        .collect();
    sort_oldest_first(&mut history);
    let excess = history.len().saturating_sub(usize::try_from(limit).unwrap_or(0));
    history
        .into_iter()
        .take(excess)
        .filter_map(|r| r.metadata.name.clone())
        .collect()
}

/// By revision number, then creation time, then name (upstream's SortControllerRevisions).
pub fn sort_oldest_first(revs: &mut [&ControllerRevision]) {
    revs.sort_by(|a, b| {
        (
            a.revision,
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.name,
        )
            .cmp(&(
                b.revision,
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.name,
            ))
    });
}

/// JSON with object keys sorted at every level, whatever map serde_json was built with.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                if let Some(inner) = map.get(k) {
                    write_canonical(inner, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::controllers::statefulset::plan::tests::set;

    fn rev(name: &str, number: i64) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: None,
            revision: number,
        }
    }

    #[test]
    fn the_data_is_a_patch_replacing_the_template() {
        let s = set(1, "nginx:1");
        let data = revision_data(&s);
        assert_eq!(data.pointer("/spec/template/$patch"), Some(&json!("replace")));
        assert_eq!(
            data.pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("nginx:1"))
        );
        assert_eq!(data.as_object().map(|o| o.len()), Some(1), "only spec");
        assert_eq!(
            data.pointer("/spec").and_then(Value::as_object).map(|o| o.len()),
            Some(1)
        );
    }

    #[test]
    fn names_are_stable_and_tell_templates_and_collisions_apart() {
        let a = set(1, "nginx:1");
        let name = revision_name(&a, &revision_data(&a), 0);
        assert_eq!(name, revision_name(&a, &revision_data(&a), 0));
        // Replicas, generation and status are not part of a revision.
        let mut scaled = set(5, "nginx:1");
        scaled.metadata.generation = Some(9);
        assert_eq!(name, revision_name(&scaled, &revision_data(&scaled), 0));
        let b = set(1, "nginx:2");
        assert_ne!(name, revision_name(&b, &revision_data(&b), 0));
        assert_ne!(name, revision_name(&a, &revision_data(&a), 1));
        let hash = name.strip_prefix("web-").unwrap();
        assert!(
            !hash.is_empty()
                && hash
                    .bytes()
                    .all(|c| crate::controllers::deployment::hash::ALPHANUMS.contains(&c)),
            "{name}"
        );
        // Key order in the data does not matter (data read back from the API).
        let reordered: Value = serde_json::from_str(&revision_data(&a).to_string()).unwrap();
        assert_eq!(name, revision_name(&a, &reordered, 0));
        // Long set names are cut so the name stays valid.
        let mut long = a.clone();
        long.metadata.name = Some("x".repeat(300));
        let n = revision_name(&long, &revision_data(&long), 0);
        assert!(n.len() <= 253 && n.starts_with(&"x".repeat(223)), "{}", n.len());
    }

    #[test]
    fn a_new_revision_is_labelled_owned_and_matches_its_set() {
        let mut s = set(1, "nginx:1");
        s.metadata.annotations = Some([("note".to_owned(), "kept".to_owned())].into());
        let r = new_revision(&s, 4, 0);
        assert_eq!(r.metadata.name, Some(revision_name(&s, &revision_data(&s), 0)));
        assert_eq!(r.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(r.revision, 4);
        let labels = r.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(HASH_LABEL).map(String::as_str),
            r.metadata.name.as_deref().and_then(|n| n.strip_prefix("web-"))
        );
        assert_eq!(
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("note"))
                .map(String::as_str),
            Some("kept")
        );
        let owner = &r.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("StatefulSet", "set-uid", Some(true), Some(true))
        );
        assert!(matches(&r, &s));
        assert!(matches(&r, &set(7, "nginx:1")));
        assert!(!matches(&r, &set(1, "nginx:2")));
    }

    #[test]
    fn applying_a_revision_restores_its_template() {
        let old = set(1, "nginx:1");
        let r = new_revision(&old, 1, 0);
        let new = set(3, "nginx:2");
        let back = apply_revision(&new, &r);
        assert_eq!(
            back.spec.as_ref().unwrap().template,
            old.spec.as_ref().unwrap().template
        );
        assert_eq!(back.spec.as_ref().unwrap().replicas, Some(3), "only the template");
        assert!(matches(&r, &back));
        assert_eq!(apply_revision(&new, &rev("junk", 1)), new, "no data: unchanged");
    }

    #[test]
    fn revision_numbers_count_up() {
        assert_eq!(next_revision_number(&[]), 1);
        let (a, b) = (rev("a", 3), rev("b", 7));
        assert_eq!(next_revision_number(&[&a, &b]), 8);
    }

    #[test]
    fn pruning_keeps_the_limit_and_never_touches_live_revisions() {
        let mut s = set(1, "nginx");
        s.spec.as_mut().unwrap().revision_history_limit = Some(2);
        let revs: Vec<ControllerRevision> = (1..=6).rev().map(|i| rev(&format!("r{i}"), i)).collect();
        let refs: Vec<&ControllerRevision> = revs.iter().collect();
        let live: BTreeSet<String> = ["r1".to_owned(), "r6".to_owned()].into();
        // Unused: r2..r5; two stay (r4, r5), the oldest go.
        assert_eq!(to_prune(&s, &refs, &live), ["r2", "r3"]);
        s.spec.as_mut().unwrap().revision_history_limit = Some(0);
        assert_eq!(to_prune(&s, &refs, &live), ["r2", "r3", "r4", "r5"]);
        s.spec.as_mut().unwrap().revision_history_limit = None;
        assert!(to_prune(&s, &refs, &live).is_empty(), "default 10");

        // Equal numbers: the older creation time goes first.
        s.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let mut x = rev("x", 1);
        x.metadata.creation_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(5)));
        let mut y = rev("y", 1);
        y.metadata.creation_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(to_prune(&s, &[&x, &y], &BTreeSet::new()), ["y"]);
    }
}
