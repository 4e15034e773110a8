//! A StatefulSet pod's stable identity: its name `<set>-<ordinal>`, its hostname and
//! subdomain (the governing Service, for DNS), its labels and the claims
//! `<template>-<set>-<ordinal>` its volumes name, which outlive the pod so a replacement
//! finds the same data.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::api::ObjectMeta;

use crate::controllers::workload::controller_ref;

/// The pod label naming the ControllerRevision the pod was built from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The pod label holding the pod's own name, for a Service per pod.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label holding the ordinal (upstream since 1.28).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// `<set>-<ordinal>`.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.metadata.name.as_deref().unwrap_or_default())
}

/// The ordinal in `pod`'s name when it is `<set>-<n>`; None for any other name.
pub fn ordinal_of(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    let set_name = set.metadata.name.as_deref()?;
    let rest = pod
        .metadata
        .name
        .as_deref()?
        .strip_prefix(set_name)?
        .strip_prefix('-')?;
    // Only the canonical spelling: "web-01" or "web-+1" are not web's pods.
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// `spec.ordinals.start`, 0 when unset.
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0)
}

/// `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &PersistentVolumeClaim, set: &StatefulSet, ordinal: i32) -> String {
    format!(
        "{}-{}",
        template.metadata.name.as_deref().unwrap_or_default(),
        pod_name(set, ordinal)
    )
}

fn claim_templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default()
}

/// `persistentVolumeClaimRetentionPolicy` as (whenDeleted, whenScaled), each true for
/// Delete; Retain (upstream's default) and unknown values are false.
fn retention(set: &StatefulSet) -> (bool, bool) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |v: Option<&Option<String>>| v.and_then(Option::as_deref) == Some("Delete");
    (
        delete(policy.map(|p| &p.when_deleted)),
        delete(policy.map(|p| &p.when_scaled)),
    )
}

/// A plain (not controller) reference, as upstream puts on claims: the garbage collector
/// deletes a claim once every owner is gone.
fn plain_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// The claims whose owner references the retention policy wants changed, with the
/// references they should have (upstream's updateClaimOwnerRefForSetAndPod): the set owns
/// the claims of pods in range when `whenDeleted: Delete`; a pod scaled away owns its claims
/// when `whenScaled: Delete` (and the set then no longer does, or they would outlive it);
/// references to the set or pod that the policy does not want are dropped. Other owners
/// are kept. Apply these before deleting condemned pods, so their claims go with them.
pub fn claim_owner_updates(
    set: &StatefulSet,
    pods: &[&Pod],
    claims: &[&PersistentVolumeClaim],
) -> Vec<(String, Vec<OwnerReference>)> {
    let (when_deleted, when_scaled) = retention(set);
    let start = start_ordinal(set);
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0);
    let by_name: BTreeMap<&str, &PersistentVolumeClaim> = claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| Some((c.metadata.name.as_deref()?, *c)))
        .collect();
    let set_uid = set.metadata.uid.clone().unwrap_or_default();
    let mut out = Vec::new();
    for pod in pods {
        let Some(ordinal) = ordinal_of(set, pod) else {
            continue;
        };
        let scaled_down = !(start..start.saturating_add(replicas)).contains(&ordinal);
        let (set_owns, pod_owns) = match (when_deleted, when_scaled) {
            (_, true) if scaled_down => (false, true),
            (deleted, _) => (deleted, false),
        };
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        for template in claim_templates(set) {
            let name = claim_name(template, set, ordinal);
            let Some(claim) = by_name.get(name.as_str()) else {
                continue;
            };
            let before = claim.metadata.owner_references.clone().unwrap_or_default();
            let mut after: Vec<OwnerReference> = before
                .iter()
                .filter(|r| r.uid != set_uid && r.uid != pod_uid)
                .cloned()
                .collect();
            let keep_or_make = |uid: &str, make: &dyn Fn() -> OwnerReference| {
                before.iter().find(|r| r.uid == uid).cloned().unwrap_or_else(make)
            };
            if set_owns {
                after.push(keep_or_make(&set_uid, &|| {
                    plain_ref("apps/v1", "StatefulSet", &set.metadata)
                }));
            }
            if pod_owns && !pod_uid.is_empty() {
                after.push(keep_or_make(&pod_uid, &|| plain_ref("v1", "Pod", &pod.metadata)));
            }
            let same = after.len() == before.len() && after.iter().all(|r| before.contains(r));
            if !same {
                out.push((name, after));
            }
        }
    }
    out
}

/// The claims pod `ordinal` mounts, one per `spec.volumeClaimTemplates` entry: the template
/// with the pod's claim name, the set's namespace and the selector's labels added. With
/// `whenDeleted: Delete` the set owns them (a plain reference, as upstream: the garbage
/// collector deletes them with the set); otherwise nothing does and they stay.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let selector_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(set)
        .iter()
        .map(|template| {
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            let owner_references = retention(set)
                .0
                .then(|| vec![plain_ref("apps/v1", "StatefulSet", &set.metadata)]);
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(template, set, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: (!labels.is_empty()).then_some(labels),
                    annotations: template.metadata.annotations.clone(),
                    finalizers: template.metadata.finalizers.clone(),
                    owner_references,
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// Pod `ordinal` of `set` as the template says, labelled with `revision_name`. Each claim
/// template becomes a volume of the same name that mounts the pod's claim, replacing a
/// template volume of that name.
pub fn new_pod(set: &StatefulSet, ordinal: i32, revision_name: &str) -> Pod {
    let template = set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let name = pod_name(set, ordinal);
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), revision_name.to_owned());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());

    let mut spec = template.spec.unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    let templates = claim_templates(set);
    let mut volumes: Vec<Volume> = templates
        .iter()
        .map(|t| Volume {
            name: t.metadata.name.clone().unwrap_or_default(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(t, set, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        })
        .collect();
    let claimed: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>();
    let others: Vec<Volume> = spec
        .volumes
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !claimed.contains(&v.name.as_str()))
        .collect();
    volumes.extend(others);
    spec.volumes = (!volumes.is_empty()).then_some(volumes);

    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "StatefulSet", &set.metadata)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Whether `pod` carries the name, namespace and pod-name label of one of `set`'s pods
/// (upstream's identityMatches; hostname and subdomain are immutable, so not compared).
pub fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let Some(ordinal) = ordinal_of(set, pod) else {
        return false;
    };
    let name = pod_name(set, ordinal);
    pod.metadata.name.as_deref() == Some(name.as_str())
        && pod.metadata.namespace == set.metadata.namespace
        && pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_NAME_LABEL))
            .is_some_and(|v| *v == name)
}

/// Whether every claim template is mounted from this pod's claim (upstream's storageMatches).
pub fn storage_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let Some(ordinal) = ordinal_of(set, pod) else {
        return false;
    };
    let volumes: BTreeMap<&str, &Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    claim_templates(set).iter().all(|t| {
        volumes
            .get(t.metadata.name.as_deref().unwrap_or_default())
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .is_some_and(|c| c.claim_name == claim_name(t, set, ordinal))
    })
}

/// The revision a pod was built from (its `controller-revision-hash` label).
pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        apps::v1::{StatefulSetOrdinals, StatefulSetPersistentVolumeClaimRetentionPolicy},
        core::v1::EmptyDirVolumeSource,
    };

    use super::*;
    use crate::controllers::statefulset::plan::tests::set;

    fn named(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn names_and_ordinals() {
        let s = set(3, "nginx");
        assert_eq!(pod_name(&s, 2), "web-2");
        assert_eq!(ordinal_of(&s, &named("web-2")), Some(2));
        assert_eq!(ordinal_of(&s, &named("web-12")), Some(12));
        for other in [
            "web",
            "web-",
            "web-x",
            "web-01",
            "web-1-0",
            "webs-1",
            "web--1",
            "web-99999999999",
            "db-1",
        ] {
            assert_eq!(ordinal_of(&s, &named(other)), None, "{other}");
        }
        assert_eq!(start_ordinal(&s), 0);
        let mut s = s;
        s.spec.as_mut().unwrap().ordinals = Some(StatefulSetOrdinals { start: Some(4) });
        assert_eq!(start_ordinal(&s), 4);
    }

    #[test]
    fn claims_are_named_labelled_and_owned_per_retention_policy() {
        let mut s = set(3, "nginx");
        let template = &s.spec.as_ref().unwrap().volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(claim_name(template, &s, 0), "data-web-0");
        let claims = claims_for(&s, 1);
        assert_eq!(claims.len(), 1);
        let c = &claims[0];
        assert_eq!(c.metadata.name.as_deref(), Some("data-web-1"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(c.metadata.labels, s.spec.as_ref().unwrap().selector.match_labels);
        assert_eq!(c.spec, template.spec);
        assert!(c.metadata.owner_references.is_none());

        s.spec.as_mut().unwrap().persistent_volume_claim_retention_policy =
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            });
        let owners = claims_for(&s, 1).remove(0).metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("StatefulSet", "set-uid")
        );
    }

    #[test]
    fn a_new_pod_has_its_identity_labels_owner_and_claim_volumes() {
        let mut s = set(3, "nginx");
        // A template volume named like a claim template is replaced by the claim.
        s.spec.as_mut().unwrap().template.spec.as_mut().unwrap().volumes = Some(vec![
            Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]);
        let p = new_pod(&s, 1, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get(REVISION_LABEL).map(String::as_str), Some("web-abc"));
        assert_eq!(labels.get(POD_NAME_LABEL).map(String::as_str), Some("web-1"));
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("1"));
        assert_eq!(revision_of(&p), Some("web-abc"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("StatefulSet", "web", Some(true), Some(true))
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].name, "data");
        assert!(volumes[0].empty_dir.is_none());
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-1")
        );
        assert_eq!(volumes[1].name, "scratch");
        assert!(identity_matches(&s, &p));
        assert!(storage_matches(&s, &p));
    }

    #[test]
    fn identity_and_storage_mismatches_are_seen() {
        let s = set(3, "nginx");
        let good = new_pod(&s, 0, "web-abc");

        let mut p = good.clone();
        p.metadata.namespace = Some("other".into());
        assert!(!identity_matches(&s, &p), "namespace");
        let mut p = good.clone();
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_NAME_LABEL.into(), "web-1".into());
        assert!(!identity_matches(&s, &p), "pod-name label");
        let mut p = good.clone();
        p.metadata.name = Some("web-x".into());
        assert!(!identity_matches(&s, &p) && !storage_matches(&s, &p), "name");

        let mut p = good.clone();
        p.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0]
            .persistent_volume_claim
            .as_mut()
            .unwrap()
            .claim_name = "data-web-1".into();
        assert!(!storage_matches(&s, &p), "another pod's claim");
        assert!(identity_matches(&s, &p));
        // A pod of web-0's name built for another ordinal mounts web-1's claim.
        let mut p = new_pod(&s, 1, "web-abc");
        p.metadata.name = Some("web-0".into());
        assert!(!storage_matches(&s, &p));
    }

    fn policy(s: &mut StatefulSet, when_deleted: &str, when_scaled: &str) {
        s.spec.as_mut().unwrap().persistent_volume_claim_retention_policy =
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(when_deleted.into()),
                when_scaled: Some(when_scaled.into()),
            });
    }

    fn owners(updates: &[(String, Vec<OwnerReference>)]) -> Vec<(String, Vec<String>)> {
        updates
            .iter()
            .map(|(name, refs)| {
                (
                    name.clone(),
                    refs.iter().map(|r| format!("{}/{}", r.kind, r.name)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_retention_policy_decides_who_owns_claims() {
        let mut s = set(1, "nginx");
        let mut pods: Vec<Pod> = (0..2).map(|o| new_pod(&s, o, "r")).collect();
        for (o, p) in pods.iter_mut().enumerate() {
            p.metadata.uid = Some(format!("pod-uid-{o}"));
        }
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let claims: Vec<PersistentVolumeClaim> = (0..2).flat_map(|o| claims_for(&s, o)).collect();
        let claim_refs: Vec<&PersistentVolumeClaim> = claims.iter().collect();
        assert!(
            claim_owner_updates(&s, &pod_refs, &claim_refs).is_empty(),
            "Retain: nothing"
        );

        policy(&mut s, "Delete", "Retain");
        assert_eq!(
            owners(&claim_owner_updates(&s, &pod_refs, &claim_refs)),
            [
                ("data-web-0".to_owned(), vec!["StatefulSet/web".to_owned()]),
                ("data-web-1".to_owned(), vec!["StatefulSet/web".to_owned()]),
            ]
        );
        // Claims made under this policy already have their owner.
        let owned: Vec<PersistentVolumeClaim> = (0..2).flat_map(|o| claims_for(&s, o)).collect();
        let owned_refs: Vec<&PersistentVolumeClaim> = owned.iter().collect();
        assert!(claim_owner_updates(&s, &pod_refs, &owned_refs).is_empty());

        // whenScaled Delete: web-1 is scaled away, its pod owns its claim and the set lets go.
        policy(&mut s, "Delete", "Delete");
        assert_eq!(
            owners(&claim_owner_updates(&s, &pod_refs, &owned_refs)),
            [("data-web-1".to_owned(), vec!["Pod/web-1".to_owned()])]
        );
        policy(&mut s, "Retain", "Delete");
        assert_eq!(
            owners(&claim_owner_updates(&s, &pod_refs, &owned_refs)),
            [
                ("data-web-0".to_owned(), vec![]),
                ("data-web-1".to_owned(), vec!["Pod/web-1".to_owned()]),
            ]
        );
        // Back to Retain: the set's references go, other owners stay.
        policy(&mut s, "Retain", "Retain");
        let mut other = owned[0].clone();
        other.metadata.owner_references.as_mut().unwrap().push(OwnerReference {
            kind: "Other".into(),
            name: "o".into(),
            uid: "other-uid".into(),
            ..OwnerReference::default()
        });
        assert_eq!(
            owners(&claim_owner_updates(&s, &pod_refs[..1], &[&other])),
            [("data-web-0".to_owned(), vec!["Other/o".to_owned()])]
        );
    }
}
