//! One step of a Deployment's rollout, decided without IO from the Deployment and the
//! ReplicaSets it controls: which ReplicaSet to create, which to resize or renumber, which
//! old ones to delete, and the Deployment's status. Upstream's arithmetic throughout
//! (`deployment/rolling.go`, `recreate.go`, `sync.go`, `util/deployment_util.go`).
//!
//! A step does one thing at a time and waits for the ReplicaSets' status to show its
//! effect; their status changes trigger the next step.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time},
};

use super::hash;
use crate::controllers::workload::{controller_ref, scaled_value};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// What one step writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// The ReplicaSet for the current template, when there is none yet.
    pub create: Option<ReplicaSet>,
    /// Existing ReplicaSets with new `spec.replicas` and/or annotations (whole objects,
    /// as planned; the writer sends only those two fields).
    pub update: Vec<ReplicaSet>,
    /// Old ReplicaSets beyond `revisionHistoryLimit`, by name.
    pub delete: Vec<String>,
    /// The Deployment's revision annotation, when it must change.
    pub revision: Option<String>,
    pub status: DeploymentStatus,
}

/// Max surge and max unavailable as pod counts (upstream's ResolveFenceposts): surge
/// rounds up, unavailable down, and both 0 would deadlock, so unavailable becomes 1.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let rolling = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), replicas, true).max(0);
    let unavailable = scaled_value(rolling.and_then(|r| r.max_unavailable.as_ref()), replicas, false).max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn set_replicas(rs: &mut ReplicaSet, n: i32) {
    rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(n);
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn annotate(rs: &mut ReplicaSet, key: &str, value: String) {
    rs.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value);
}

/// Plans one step. `old_pods_running`: some pod of an old ReplicaSet still exists (only
/// Recreate asks; the caller looks it up live, since terminating pods count).
pub fn plan(d: &Deployment, controlled: &[ReplicaSet], old_pods_running: bool, now: Timestamp) -> Plan {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let template = spec.template.clone();
    let paused = spec.paused == Some(true);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let (surge, _) = fenceposts(d);

    let mut all: Vec<ReplicaSet> = controlled.to_vec();
    // Oldest first: upstream scales old ReplicaSets down oldest first, and picks the
    // oldest of several with the current template as the new one.
    all.sort_by(|a, b| {
        let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut new_idx = all.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| hash::same_template(t, &template))
    });
    let max_old_revision = all
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| revision_of(&rs.metadata))
        .max()
        .unwrap_or(0);
    let mut created = false;

    // The current template's ReplicaSet carries the highest revision: a rollback to an
    // old template renumbers that old ReplicaSet.
    if let Some(i) = new_idx
        && revision_of(&all[i].metadata) <= max_old_revision
    {
        annotate(&mut all[i], REVISION, (max_old_revision + 1).to_string());
    }

    let old_sum = |all: &[ReplicaSet], new_idx: Option<usize>| {
        all.iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_idx)
            .map(|(_, rs)| spec_replicas(rs))
            .sum::<i32>()
    };

    if paused {
        // A paused Deployment only follows scaling, and only when one ReplicaSet is active.
        let active: Vec<usize> = (0..all.len()).filter(|i| spec_replicas(&all[*i]) > 0).collect();
        let target = match active.as_slice() {
            [one] => Some(*one),
            [] => new_idx,
            _ => None,
        };
        if let Some(i) = target {
            scale(&mut all[i], replicas, replicas + surge);
        }
    } else if recreate {
        let mut scaled_down = false;
        for (i, rs) in all.iter_mut().enumerate() {
            if Some(i) != new_idx && spec_replicas(rs) > 0 {
                scale(rs, 0, replicas);
                scaled_down = true;
            }
        }
        if !scaled_down && !old_pods_running {
            match new_idx {
                Some(i) => scale(&mut all[i], replicas, replicas),
                None => {
                    all.push(new_replicaset(d, &template, replicas, max_old_revision + 1, replicas));
                    new_idx = Some(all.len() - 1);
                    created = true;
                }
            }
        }
    } else {
        let (_, max_unavailable) = fenceposts(d);
        let all_sum: i32 = all.iter().map(spec_replicas).sum();
        let scaled_up = match new_idx {
            None => {
                let n = new_replicas_rolling(replicas, surge, all_sum, 0);
                all.push(new_replicaset(d, &template, n, max_old_revision + 1, replicas + surge));
                new_idx = Some(all.len() - 1);
                created = true;
                false
            }
            Some(i) => {
                let current = spec_replicas(&all[i]);
                let target = if old_sum(&all, new_idx) == 0 || current > replicas {
                    // A finished rollout that is scaled, or a new ReplicaSet above the
                    // wanted count: straight to it.
                    replicas
                } else {
                    new_replicas_rolling(replicas, surge, all_sum, current)
                };
                if target != current {
                    scale(&mut all[i], target, replicas + surge);
                }
                target > current
            }
        };
        if !scaled_up {
            scale_down_old(&mut all, new_idx, replicas, max_unavailable);
        }
    }

    let status = status(d, &all, new_idx, created, now);
    let complete = !paused && is_complete(d, &status, replicas);
    let new_revision = new_idx.map(|i| revision_of(&all[i].metadata).to_string());

    let mut out = Plan::default();
    for (i, rs) in all.iter().enumerate() {
        if created && Some(i) == new_idx {
            out.create = Some(rs.clone());
            continue;
        }
        let before = controlled.iter().find(|c| c.metadata.name == rs.metadata.name);
        let changed = before
            .is_none_or(|b| spec_replicas(b) != spec_replicas(rs) || b.metadata.annotations != rs.metadata.annotations);
        if changed {
            out.update.push(rs.clone());
        }
    }
    if complete {
        out.delete = history_to_delete(&all, new_idx, spec.revision_history_limit.unwrap_or(10));
    }
    let current_revision = d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION));
    if new_revision.is_some() && current_revision != new_revision.as_ref() {
        out.revision = new_revision;
    }
    out.status = status;
    out
}

/// Resizes `rs`, recording the counts it was sized for, as upstream does.
fn scale(rs: &mut ReplicaSet, to: i32, max: i32) {
    if spec_replicas(rs) == to {
        return;
    }
    set_replicas(rs, to);
    annotate(rs, MAX_REPLICAS, max.to_string());
    let desired = if to == 0 { rs_desired(rs) } else { None };
    annotate(rs, DESIRED_REPLICAS, desired.unwrap_or(to).to_string());
}

fn rs_desired(rs: &ReplicaSet) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(DESIRED_REPLICAS)?.parse().ok()
}

/// The new ReplicaSet's size in a rolling update (upstream's NewRSNewReplicas): grow by
/// what the surge allows, never past `replicas`.
pub fn new_replicas_rolling(replicas: i32, surge: i32, all_sum: i32, new_current: i32) -> i32 {
    let max_total = replicas + surge;
    if all_sum >= max_total {
        return new_current;
    }
    new_current + (max_total - all_sum).min(replicas - new_current).max(0)
}

/// Scales old ReplicaSets down as far as availability allows (upstream's
/// reconcileOldReplicaSets): first the pods that are not available anyway, then
/// available ones down to `replicas - max_unavailable`, oldest ReplicaSet first.
fn scale_down_old(all: &mut [ReplicaSet], new_idx: Option<usize>, replicas: i32, max_unavailable: i32) {
    let is_old = |i: usize| Some(i) != new_idx;
    if !(0..all.len()).any(|i| is_old(i) && spec_replicas(&all[i]) > 0) {
        return;
    }
    let all_sum: i32 = all.iter().map(spec_replicas).sum();
    let min_available = replicas - max_unavailable;
    let new_unavailable = new_idx.map_or(0, |i| (spec_replicas(&all[i]) - available(&all[i])).max(0));
    let max_scaled_down = all_sum - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    let mut total = 0;
    for i in (0..all.len()).filter(|i| is_old(*i)) {
        if total >= max_scaled_down {
            break;
        }
        let unhealthy = (spec_replicas(&all[i]) - available(&all[i])).max(0);
        if unhealthy == 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - total);
        let to = spec_replicas(&all[i]) - n;
        scale(&mut all[i], to, replicas);
        total += n;
    }
    let available_sum: i32 = all.iter().map(available).sum();
    if available_sum <= min_available {
        return;
    }
    let allowed = available_sum - min_available;
    let mut done = 0;
    for i in (0..all.len()).filter(|i| is_old(*i)) {
        if done >= allowed {
            break;
        }
        let current = spec_replicas(&all[i]);
        if current == 0 {
            continue;
        }
        let n = current.min(allowed - done);
        scale(&mut all[i], current - n, replicas);
        done += n;
    }
}

/// A new ReplicaSet for `template`: named and labelled with its hash, controlled by `d`.
fn new_replicaset(
    d: &Deployment,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    replicas: i32,
    revision: i64,
    max: i32,
) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let hash = hash::template_hash(template, d.status.as_ref().and_then(|s| s.collision_count));
    let mut template = template.clone();
    let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
    tmeta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(hash::LABEL.to_owned(), hash.clone());
    let labels = tmeta.labels.clone();
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(hash::LABEL.to_owned(), hash.clone());
    let name = d.metadata.name.clone().unwrap_or_default();
    let annotations = BTreeMap::from([
        (REVISION.to_owned(), revision.to_string()),
        (DESIRED_REPLICAS.to_owned(), spec.replicas.unwrap_or(1).to_string()),
        (MAX_REPLICAS.to_owned(), max.to_string()),
    ]);
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref("apps/v1", "Deployment", &d.metadata)]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Old ReplicaSets past the history limit: empty ones (no pods left), lowest revision first.
fn history_to_delete(all: &[ReplicaSet], new_idx: Option<usize>, limit: i32) -> Vec<String> {
    let mut cleanable: Vec<&ReplicaSet> = all
        .iter()
        .enumerate()
        .filter(|(i, rs)| {
            Some(*i) != new_idx
                && rs.metadata.deletion_timestamp.is_none()
                && spec_replicas(rs) == 0
                && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
        })
        .map(|(_, rs)| rs)
        .collect();
    let excess = cleanable
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    cleanable.sort_by_key(|rs| revision_of(&rs.metadata));
    cleanable
        .into_iter()
        .take(excess)
        .filter_map(|rs| rs.metadata.name.clone())
        .collect()
}

/// Upstream's DeploymentComplete: every replica updated, available, and no old ones left.
fn is_complete(d: &Deployment, s: &DeploymentStatus, replicas: i32) -> bool {
    s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && s.observed_generation >= d.metadata.generation
}

fn status(
    d: &Deployment,
    all: &[ReplicaSet],
    new_idx: Option<usize>,
    created: bool,
    now: Timestamp,
) -> DeploymentStatus {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let actual: i32 = all.iter().map(|rs| st(rs).replicas).sum();
    let ready: i32 = all.iter().map(|rs| st(rs).ready_replicas.unwrap_or(0)).sum();
    let avail: i32 = all.iter().map(available).sum();
    let total: i32 = all.iter().map(spec_replicas).sum();
    let updated = new_idx.map_or(0, |i| st(&all[i]).replicas);
    let old = d.status.clone().unwrap_or_default();
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(actual),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((total - avail).max(0)),
        collision_count: old.collision_count,
        conditions: None,
        terminating_replicas: old.terminating_replicas,
    };
    let (_, max_unavailable) = fenceposts(d);
    let available_cond = if avail >= replicas - max_unavailable {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_owned(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_owned(),
        )
    };
    let new_name = new_idx.and_then(|i| all[i].metadata.name.clone()).unwrap_or_default();
    let progressing_cond = if spec.paused == Some(true) {
        ("Unknown", "DeploymentPaused", "Deployment is paused".to_owned())
    } else if is_complete(d, &s, replicas) {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if created {
        (
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_name}\""),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    let previous = old.conditions.unwrap_or_default();
    s.conditions = Some(vec![
        condition(&previous, "Available", available_cond, now),
        condition(&previous, "Progressing", progressing_cond, now),
    ]);
    s
}

/// A condition that keeps its times while nothing about it changes, so an unchanged
/// Deployment gets no status write.
fn condition(
    previous: &[DeploymentCondition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
    now: Timestamp,
) -> DeploymentCondition {
    let prev = previous.iter().find(|c| c.type_ == type_);
    let same_status = prev.is_some_and(|p| p.status == status);
    let same_all = same_status
        && prev.is_some_and(|p| p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(message.as_str()));
    DeploymentCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_transition_time: if same_status {
            prev.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(Time(now))
        },
        last_update_time: if same_all {
            prev.and_then(|p| p.last_update_time.clone())
        } else {
            Some(Time(now))
        },
    }
}

#[cfg(test)]
mod tests;
