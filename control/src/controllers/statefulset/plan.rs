//! What one sync of a StatefulSet does (pure), as upstream's
//! `StatefulSetControl.UpdateStatefulSet` decides it, in three passes:
//!
//! 1. the ordinals `start..start+replicas`, ascending: create missing pods (claims first),
//!    delete failed ones and ones whose identity or storage is wrong;
//! 2. the condemned pods (ordinals outside the range), highest first: delete them;
//! 3. RollingUpdate only: delete the highest pod at or above the partition that is not of
//!    the update revision, once every pod above it is healthy.
//!
//! With `podManagementPolicy: OrderedReady` (the default) each pass stops at the first
//! pod that is not yet Running, Ready and available, or at the first action, so a set
//! moves one pod at a time; with `Parallel` the first two passes do everything at once.
//! Status is counted from the pods as observed (what the next sync will see after the
//! watch events is counted then).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{StatefulSet, StatefulSetStatus},
    core::v1::{PersistentVolumeClaim, Pod},
};

use super::identity::{self, claims_for, identity_matches, new_pod, ordinal_of, revision_of, storage_matches};
use crate::controllers::workload;

/// What the controller saw for one set.
pub struct Observed<'a> {
    pub set: &'a StatefulSet,
    /// Pods the set owns (controller reference), any ordinal; pods whose name is not
    /// `<set>-<n>` are left alone.
    pub pods: Vec<&'a Pod>,
    /// Names of the PVCs that exist in the set's namespace.
    pub claims: BTreeSet<String>,
    /// `status.currentRevision`, or the update revision when there is none.
    pub current_revision: String,
    /// The revision of the set's current template.
    pub update_revision: String,
    /// For `minReadySeconds`.
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this claim (before the pod that mounts it, which comes later in the list).
    CreateClaim(PersistentVolumeClaim),
    /// Create this pod, built by [`identity::new_pod`] for its revision.
    CreatePod(Pod),
    /// Delete this pod; `uid` is for a delete precondition.
    DeletePod { name: String, uid: String },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In the order to carry them out.
    pub actions: Vec<Action>,
    pub status: StatefulSetStatus,
}

/// Upstream's isRunningAndReady.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && workload::is_ready(pod)
}

/// Running and Ready for `minReadySeconds` (upstream's isRunningAndAvailable).
pub fn is_running_and_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    phase(pod) == Some("Running") && workload::is_available(pod, min_ready_seconds, now)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Finished pods are replaced whatever their exit code: an evicted or node-rebooted pod
/// may end Succeeded (upstream's comment on processReplica).
fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Failed" | "Succeeded"))
}

fn pending(pod: &Pod) -> bool {
    matches!(phase(pod), None | Some("Pending"))
}

fn healthy(pod: &Pod) -> bool {
    is_running_and_ready(pod) && !terminating(pod)
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// `spec.replicas`, 1 when unset.
pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

/// `podManagementPolicy: OrderedReady` (the default), not `Parallel`.
pub fn is_ordered(set: &StatefulSet) -> bool {
    set.spec.as_ref().and_then(|s| s.pod_management_policy.as_deref()) != Some("Parallel")
}

/// `updateStrategy.type: OnDelete`.
pub fn is_on_delete(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete")
}

/// `rollingUpdate.partition`; None without a rollingUpdate (API defaulting sets 0).
fn partition(set: &StatefulSet) -> Option<i32> {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .map(|r| r.partition.unwrap_or(0).max(0))
}

/// Upstream's replica counts over every pod with an ordinal, in range or condemned.
fn count(obs: &Observed, pods: &[&Pod]) -> StatefulSetStatus {
    let set = obs.set;
    let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let (mut total, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for pod in pods {
        total += 1;
        if is_running_and_ready(pod) {
            ready += 1;
            available += i32::from(is_running_and_available(pod, min_ready, obs.now));
        }
        if !terminating(pod) {
            let rev = revision_of(pod);
            current += i32::from(rev == Some(obs.current_revision.as_str()));
            updated += i32::from(rev == Some(obs.update_revision.as_str()));
        }
    }
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: total,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(obs.current_revision.clone()),
        update_revision: Some(obs.update_revision.clone()),
        collision_count: Some(set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0)),
        conditions: None,
    };
    // Upstream's completeRollingUpdate: once every pod is updated and ready, the update
    // revision becomes the current one. OnDelete sets never get there, as upstream.
    if !is_on_delete(set) && updated == total && ready == total {
        status.current_revision = Some(obs.update_revision.clone());
        status.current_replicas = Some(updated);
    }
    status
}

/// One sync of `obs.set`. `revision_sets` maps revision names to the set with that
/// revision's template (`revision::apply_revision`); pods of a revision not in it are built
/// from the update revision.
pub fn plan(obs: &Observed, revision_sets: &BTreeMap<String, StatefulSet>) -> Plan {
    let set = obs.set;
    let start = identity::start_ordinal(set);
    let end = start.saturating_add(replicas(set));
    let ordered = is_ordered(set);
    let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);

    let mut slots: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for pod in &obs.pods {
        match ordinal_of(set, pod) {
            Some(ord) if (start..end).contains(&ord) => {
                slots.insert(ord, pod);
            }
            Some(ord) => condemned.push((ord, pod)),
            None => {}
        }
    }
    condemned.sort_by_key(|(ord, _)| std::cmp::Reverse(*ord));
    let counted: Vec<&Pod> = slots
        .values()
        .copied()
        .chain(condemned.iter().map(|(_, p)| *p))
        .collect();
    let mut out = Plan {
        actions: Vec::new(),
        status: count(obs, &counted),
    };
    if set.metadata.deletion_timestamp.is_some() {
        return out;
    }

    let mut sync = Sync {
        obs,
        claims: obs.claims.clone(),
        deleted: BTreeSet::new(),
        actions: &mut out.actions,
    };

    // 1. Every ordinal in range.
    for ord in start..end {
        let Some(pod) = slots.get(&ord).copied() else {
            let (rev, source) = revision_for(obs, revision_sets, ord - start);
            sync.create_claims(ord);
            sync.actions.push(Action::CreatePod(new_pod(source, ord, rev)));
            if ordered {
                return out;
            }
            continue;
        };
        if finished(pod) {
            if !terminating(pod) {
                sync.delete(pod);
            }
            if ordered {
                return out;
            }
            continue;
        }
        if pending(pod) && !terminating(pod) {
            sync.create_claims(ord);
        }
        if terminating(pod) {
            if ordered {
                return out;
            }
            continue;
        }
        if ordered && !is_running_and_available(pod, min_ready, obs.now) {
            return out;
        }
        if !identity_matches(set, pod) || !storage_matches(set, pod) {
            // Upstream relabels such a pod in place; its hostname and volumes cannot be
            // changed on a live pod, so a fresh one is the only sure fix.
            sync.delete(pod);
            if ordered {
                return out;
            }
        }
    }

    // 2. Condemned pods, highest ordinal first. In order, only the lowest unhealthy pod
    // (the one that would otherwise block progress forever) may go while unhealthy.
    let first_unhealthy = if ordered {
        condemned
            .iter()
            .rev()
            .map(|(_, p)| *p)
            .find(|p| !healthy(p))
            .map(name_of)
    } else {
        None
    };
    for (_, pod) in &condemned {
        if terminating(pod) || sync.deleted.contains(name_of(pod)) {
            if ordered {
                return out;
            }
            continue;
        }
        if ordered && !is_running_and_available(pod, min_ready, obs.now) && first_unhealthy != Some(name_of(pod)) {
            return out;
        }
        sync.delete(pod);
        if ordered {
            return out;
        }
    }

    // 3. Rolling update: the highest pod not of the update revision, one at a time.
    if is_on_delete(set) {
        return out;
    }
    let update_min = start.saturating_add(partition(set).unwrap_or(0));
    for ord in (update_min..end).rev() {
        let Some(pod) = slots.get(&ord).copied() else {
            // Being created in this sync (Parallel): not healthy yet.
            break;
        };
        let going = terminating(pod) || sync.deleted.contains(name_of(pod));
        if revision_of(pod) != Some(obs.update_revision.as_str()) && !going {
            sync.delete(pod);
            break;
        }
        if going || !healthy(pod) {
            break;
        }
    }
    out
}

/// The revision (name and set) pod `index` (its ordinal minus the start) is created from:
/// below the partition the current one, at or above it the update one. Without a
/// rollingUpdate stanza upstream keeps the first `status.currentReplicas` pods current.
fn revision_for<'a>(
    obs: &'a Observed,
    revision_sets: &'a BTreeMap<String, StatefulSet>,
    index: i32,
) -> (&'a str, &'a StatefulSet) {
    let set = obs.set;
    let update = (
        obs.update_revision.as_str(),
        revision_sets.get(&obs.update_revision).unwrap_or(set),
    );
    if is_on_delete(set) {
        return update;
    }
    let keep_current_below =
        partition(set).unwrap_or_else(|| set.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0));
    if index < keep_current_below
        && let Some(current) = revision_sets.get(&obs.current_revision)
    {
        return (obs.current_revision.as_str(), current);
    }
    update
}

/// The actions of one sync so far, and what they change for the rest of it.
struct Sync<'o, 'p> {
    obs: &'o Observed<'o>,
    /// Existing claims and those created in this sync.
    claims: BTreeSet<String>,
    deleted: BTreeSet<String>,
    actions: &'p mut Vec<Action>,
}

impl Sync<'_, '_> {
    fn create_claims(&mut self, ordinal: i32) {
        for claim in claims_for(self.obs.set, ordinal) {
            let name = claim.metadata.name.clone().unwrap_or_default();
            if self.claims.insert(name) {
                self.actions.push(Action::CreateClaim(claim));
            }
        }
    }

    fn delete(&mut self, pod: &Pod) {
        let name = name_of(pod).to_owned();
        if self.deleted.insert(name.clone()) {
            self.actions.push(Action::DeletePod {
                name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
            });
        }
    }
}
