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

/// Whether claims are deleted with the set (`persistentVolumeClaimRetentionPolicy.whenDeleted:
/// Delete`); upstream's default is Retain.
fn claims_deleted_with_set(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete")
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
            let owner_references = claims_deleted_with_set(set).then(|| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "StatefulSet".into(),
                    name: set.metadata.name.clone().unwrap_or_default(),
                    uid: set.metadata.uid.clone().unwrap_or_default(),
                    controller: None,
                    block_owner_deletion: None,
                }]
            });
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
