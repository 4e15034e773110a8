//! What the PV controller should do next, from the claims, volumes, classes and nodes it
//! sees (pure): which claim binds to which volume (upstream's findBestMatchForClaim:
//! class, volume mode, access modes, selector, node affinity for a selected node, the
//! smallest volume that fits), which volumes change phase, which are reclaimed, and which
//! claims the local-path provisioner must provision.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};

use crate::{apiserver::selector::LabelSelector, quota::quantity::Quantity, scheduler::filter::term_matches};

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";

/// A claim by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimKey {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bind the two: the volume's claimRef and phase, then the claim's volumeName and phase
    /// (each step skipped when already done).
    Bind { claim: ClaimKey, volume: String },
    /// The claim's volume is gone.
    ClaimLost { claim: ClaimKey },
    VolumePhase {
        volume: String,
        phase: &'static str,
        message: Option<String>,
    },
    /// The released volume's policy is Delete: remove it (and its data).
    Reclaim { volume: String },
    /// Provision a volume for the claim with the class's provisioner on `node`.
    Provision {
        claim: ClaimKey,
        class: String,
        node: Option<String>,
    },
}

pub struct Snapshot<'a> {
    pub claims: &'a [PersistentVolumeClaim],
    pub volumes: &'a [PersistentVolume],
    pub classes: &'a [StorageClass],
    pub nodes: &'a [Node],
}

fn key_of(c: &PersistentVolumeClaim) -> ClaimKey {
    ClaimKey {
        namespace: c.metadata.namespace.clone().unwrap_or_default(),
        name: c.metadata.name.clone().unwrap_or_default(),
    }
}

fn phase_of_volume(v: &PersistentVolume) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn name_of(v: &PersistentVolume) -> String {
    v.metadata.name.clone().unwrap_or_default()
}

/// A claim's class: the field, or "" (no class) when unset.
pub fn claim_class(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_class(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

pub fn claim_volume_name(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether the volume's claimRef points at this claim (by uid when the ref has one).
pub fn refers_to(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.namespace == c.metadata.namespace
        && r.name == c.metadata.name
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
}

/// Whether the class waits for a pod to be scheduled before binding or provisioning.
pub fn waits_for_consumer(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

fn storage(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<Quantity> {
    Quantity::parse(&q?.0).ok()
}

/// The claim's storage request.
pub fn request(c: &PersistentVolumeClaim) -> Option<Quantity> {
    storage(c.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage"))
}

pub fn capacity(v: &PersistentVolume) -> Option<Quantity> {
    storage(v.spec.as_ref()?.capacity.as_ref()?.get("storage"))
}

/// Whether the volume's required node affinity admits the node.
pub fn affinity_admits(v: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = v
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    required
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, labels, name))
}

/// Whether the volume could serve the claim, apart from who it is bound to.
pub fn satisfies(v: &PersistentVolume, c: &PersistentVolumeClaim, node: Option<&Node>) -> bool {
    let (Some(vs), Some(cs)) = (v.spec.as_ref(), c.spec.as_ref()) else {
        return false;
    };
    if v.metadata.deletion_timestamp.is_some() || volume_class(v) != claim_class(c) {
        return false;
    }
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    if mode(&vs.volume_mode) != mode(&cs.volume_mode) {
        return false;
    }
    let has = vs.access_modes.clone().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| has.contains(m)) {
        return false;
    }
    match (capacity(v), request(c)) {
        (Some(cap), Some(req)) if cap >= req => {}
        _ => return false,
    }
    if let Some(selector) = &cs.selector {
        let json = serde_json::to_value(selector).unwrap_or_default();
        let empty = BTreeMap::new();
        match LabelSelector::from_label_selector_json(&json) {
            Ok(s) if s.matches(v.metadata.labels.as_ref().unwrap_or(&empty)) => {}
            _ => return false,
        }
    }
    node.is_none_or(|n| affinity_admits(v, n))
}

/// The smallest unclaimed volume that satisfies the claim.
pub fn best_match<'v>(
    c: &PersistentVolumeClaim,
    volumes: &'v [PersistentVolume],
    node: Option<&Node>,
) -> Option<&'v PersistentVolume> {
    volumes
        .iter()
        .filter(|v| v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()))
        .filter(|v| satisfies(v, c, node))
        .min_by(|a, b| capacity(a).cmp(&capacity(b)).then_with(|| name_of(a).cmp(&name_of(b))))
}

/// Everything to do now. Idempotent: the same snapshot after the actions ran yields none.
pub fn plan(s: &Snapshot<'_>, provisioners: &[&str]) -> Vec<Action> {
    let mut out = Vec::new();
    for v in s.volumes.iter().filter(|v| v.metadata.deletion_timestamp.is_none()) {
        plan_volume(v, s, &mut out);
    }
    for c in s.claims.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
        plan_claim(c, s, provisioners, &mut out);
    }
    out
}

fn plan_volume(v: &PersistentVolume, s: &Snapshot<'_>, out: &mut Vec<Action>) {
    let name = name_of(v);
    let phase = phase_of_volume(v);
    let set = |phase: &'static str, message: Option<String>| Action::VolumePhase {
        volume: name.clone(),
        phase,
        message,
    };
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        if phase != "Available" {
            out.push(set("Available", None));
        }
        return;
    };
    let claim = s
        .claims
        .iter()
        .find(|c| c.metadata.namespace == r.namespace && c.metadata.name == r.name);
    let ref_uid = r.uid.as_deref().filter(|u| !u.is_empty());
    match (claim, ref_uid) {
        // Pre-bound to a claim that does not exist yet: free for that claim only.
        (None, None) => {
            if phase != "Available" {
                out.push(set("Available", None));
            }
        }
        (Some(c), Some(uid)) if c.metadata.uid.as_deref() == Some(uid) => {
            if claim_volume_name(c) == Some(name.as_str()) && phase != "Bound" {
                out.push(set("Bound", None));
            }
        }
        (Some(_), None) => {}
        // Its claim is gone (or is another object of the same name): released.
        _ => {
            let policy = v
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                .unwrap_or("Retain");
            match policy {
                "Delete" => {
                    if phase != "Released" && phase != "Failed" {
                        out.push(set("Released", None));
                    }
                    if phase != "Failed" {
                        out.push(Action::Reclaim { volume: name });
                    }
                }
                "Recycle" => {
                    if phase != "Failed" {
                        out.push(set(
                            "Failed",
                            Some("the Recycle reclaim policy is not supported".into()),
                        ));
                    }
                }
                _ => {
                    if phase != "Released" {
                        out.push(set("Released", None));
                    }
                }
            }
        }
    }
}

fn plan_claim(c: &PersistentVolumeClaim, s: &Snapshot<'_>, provisioners: &[&str], out: &mut Vec<Action>) {
    let key = key_of(c);
    if let Some(wanted) = claim_volume_name(c) {
        match s.volumes.iter().find(|v| name_of(v) == wanted) {
            None => {
                if phase_of_claim(c) == "Bound" {
                    out.push(Action::ClaimLost { claim: key });
                }
            }
            Some(v) => {
                let ref_set = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
                let complete = refers_to(v, c)
                    && v.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .and_then(|r| r.uid.as_deref())
                        .is_some_and(|u| !u.is_empty());
                let bindable = (refers_to(v, c) || !ref_set) && (ref_set || satisfies(v, c, None));
                if bindable && (!complete || phase_of_claim(c) != "Bound") {
                    out.push(Action::Bind {
                        claim: key,
                        volume: wanted.to_owned(),
                    });
                }
            }
        }
        return;
    }
    // A volume pre-bound to this claim (a provisioned one, or one an admin pointed at it).
    if let Some(v) = s
        .volumes
        .iter()
        .find(|v| v.metadata.deletion_timestamp.is_none() && refers_to(v, c))
    {
        out.push(Action::Bind {
            claim: key,
            volume: name_of(v),
        });
        return;
    }
    let class_name = claim_class(c);
    let class = s
        .classes
        .iter()
        .find(|k| k.metadata.name.as_deref() == Some(class_name));
    let selected = c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTED_NODE))
        .cloned();
    if waits_for_consumer(class) && selected.is_none() {
        return;
    }
    let node = selected
        .as_deref()
        .and_then(|n| s.nodes.iter().find(|x| x.metadata.name.as_deref() == Some(n)));
    if selected.is_some() && node.is_none() {
        return;
    }
    if let Some(v) = best_match(c, s.volumes, node) {
        out.push(Action::Bind {
            claim: key,
            volume: name_of(v),
        });
        return;
    }
    if let Some(class) = class
        && provisioners.contains(&class.provisioner.as_str())
    {
        out.push(Action::Provision {
            claim: key,
            class: class_name.to_owned(),
            node: selected,
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    fn claim(name: &str, class: &str, size: &str, extra: Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}, "volumeMode": "Filesystem"},
            "status": {"phase": "Pending"}});
        merge(&mut v, extra);
        from(v)
    }

    fn volume(name: &str, class: &str, size: &str, extra: Value) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class, "capacity": {"storage": size},
                     "hostPath": {"path": format!("/data/{name}")}, "persistentVolumeReclaimPolicy": "Retain",
                     "volumeMode": "Filesystem"},
            "status": {"phase": "Available"}});
        merge(&mut v, extra);
        from(v)
    }

    fn merge(target: &mut Value, patch: Value) {
        if let (Value::Object(t), Value::Object(p)) = (&mut *target, &patch) {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v.clone());
            }
        } else {
            *target = patch;
        }
    }

    fn class(name: &str, mode: &str) -> StorageClass {
        from(
            json!({"metadata": {"name": name}, "provisioner": "rudder.dev/local-path",
            "volumeBindingMode": mode, "reclaimPolicy": "Delete"}),
        )
    }

    fn node(name: &str) -> Node {
        from(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
    }

    fn run(claims: &[PersistentVolumeClaim], volumes: &[PersistentVolume], classes: &[StorageClass]) -> Vec<Action> {
        let nodes = [node("n1"), node("n2")];
        plan(
            &Snapshot {
                claims,
                volumes,
                classes,
                nodes: &nodes,
            },
            &["rudder.dev/local-path"],
        )
    }

    fn key(name: &str) -> ClaimKey {
        ClaimKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_smallest_fitting_volume_of_the_class_binds() {
        let claims = [claim("c", "manual", "2Gi", json!({}))];
        let volumes = [
            volume("small", "manual", "1Gi", json!({})),
            volume("big", "manual", "10Gi", json!({})),
            volume("right", "manual", "3Gi", json!({})),
            volume("other-class", "fast", "2Gi", json!({})),
            volume(
                "read-only",
                "manual",
                "2Gi",
                json!({"spec": {"accessModes": ["ReadOnlyMany"]}}),
            ),
        ];
        assert_eq!(
            run(&claims, &volumes, &[]),
            [Action::Bind {
                claim: key("c"),
                volume: "right".into()
            }]
        );
    }

    #[test]
    fn selectors_and_volume_name_choose_the_volume() {
        let labelled = volume("labelled", "", "5Gi", json!({"metadata": {"labels": {"tier": "gold"}}}));
        let plain = volume("plain", "", "1Gi", json!({}));
        let claims = [claim(
            "c",
            "",
            "1Gi",
            json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}),
        )];
        assert_eq!(
            run(&claims, &[labelled.clone(), plain.clone()], &[]),
            [Action::Bind {
                claim: key("c"),
                volume: "labelled".into()
            }]
        );
        let named = [claim("c", "", "1Gi", json!({"spec": {"volumeName": "labelled"}}))];
        assert_eq!(
            run(&named, &[labelled, plain], &[]),
            [Action::Bind {
                claim: key("c"),
                volume: "labelled".into()
            }]
        );
    }

    #[test]
    fn a_bound_pair_needs_nothing_and_a_lost_claim_is_marked() {
        let c = claim(
            "c",
            "",
            "1Gi",
            json!({"spec": {"volumeName": "v"}, "status": {"phase": "Bound"}}),
        );
        let v = volume(
            "v",
            "",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "uid-c"}}, "status": {"phase": "Bound"}}),
        );
        assert_eq!(run(std::slice::from_ref(&c), &[v], &[]), []);
        assert_eq!(run(&[c], &[], &[]), [Action::ClaimLost { claim: key("c") }]);
    }

    #[test]
    fn released_volumes_follow_their_reclaim_policy() {
        let gone = json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "uid-old"}}, "status": {"phase": "Bound"}});
        let retain = volume("keep", "", "1Gi", gone.clone());
        let mut delete_extra = gone.clone();
        delete_extra["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        let delete = volume("drop", "", "1Gi", delete_extra);
        assert_eq!(
            run(&[], &[retain, delete], &[]),
            [
                Action::VolumePhase {
                    volume: "keep".into(),
                    phase: "Released",
                    message: None
                },
                Action::VolumePhase {
                    volume: "drop".into(),
                    phase: "Released",
                    message: None
                },
                Action::Reclaim { volume: "drop".into() },
            ]
        );
        // A new claim of the same name is not the old one.
        let same_name = claim("c", "", "1Gi", json!({}));
        let released = volume("keep", "", "1Gi", {
            let mut g = gone;
            g["status"]["phase"] = json!("Released");
            g
        });
        assert_eq!(run(&[same_name], &[released], &[]), []);
    }

    #[test]
    fn wait_for_first_consumer_provisions_only_on_the_selected_node() {
        let classes = [class("local-path", "WaitForFirstConsumer")];
        let waiting = [claim("c", "local-path", "1Gi", json!({}))];
        assert_eq!(run(&waiting, &[], &classes), []);
        let selected = [claim(
            "c",
            "local-path",
            "1Gi",
            json!({"metadata": {"annotations": {SELECTED_NODE: "n2"}}}),
        )];
        assert_eq!(
            run(&selected, &[], &classes),
            [Action::Provision {
                claim: key("c"),
                class: "local-path".into(),
                node: Some("n2".into())
            }]
        );
        // A free volume of the class on another node does not serve it; one on n2 does.
        let affinity = |n: &str| {
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}}}})
        };
        let on_n1 = volume("on-n1", "local-path", "1Gi", affinity("n1"));
        let on_n2 = volume("on-n2", "local-path", "1Gi", affinity("n2"));
        assert!(matches!(
            run(&selected, std::slice::from_ref(&on_n1), &classes)[..],
            [Action::Provision { .. }]
        ));
        assert_eq!(
            run(&selected, &[on_n1, on_n2], &classes),
            [Action::Bind {
                claim: key("c"),
                volume: "on-n2".into()
            }]
        );
    }

    #[test]
    fn a_provisioned_volume_prebound_to_its_claim_binds_it() {
        let c = claim(
            "c",
            "local-path",
            "1Gi",
            json!({"metadata": {"annotations": {SELECTED_NODE: "n1"}}}),
        );
        let v = volume(
            "pvc-uid-c",
            "local-path",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "uid-c"}}, "status": {"phase": "Pending"}}),
        );
        assert_eq!(
            run(&[c], &[v], &[class("local-path", "WaitForFirstConsumer")]),
            [Action::Bind {
                claim: key("c"),
                volume: "pvc-uid-c".into()
            }]
        );
    }
}
