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

// A plan holds a handful of actions once per sync, and callers match on plain values.
#[allow(clippy::large_enum_variant)]
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

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{
                RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetStatus, StatefulSetUpdateStrategy,
            },
            core::v1::{
                Container, PersistentVolumeClaimSpec, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
                VolumeResourceRequirements,
            },
        },
        apimachinery::pkg::{
            api::resource::Quantity,
            apis::meta::v1::{LabelSelector, Time},
        },
    };
    use kube::api::ObjectMeta;

    use super::*;

    pub(crate) fn set(replicas: i32, image: &str) -> StatefulSet {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("set-uid".into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("nginx".into()),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "nginx".into(),
                            image: Some(image.into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some([("storage".to_owned(), Quantity("1Gi".into()))].into()),
                            limits: None,
                        }),
                        ..PersistentVolumeClaimSpec::default()
                    }),
                    status: None,
                }]),
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    fn with_strategy(mut s: StatefulSet, type_: &str, partition: Option<i32>) -> StatefulSet {
        s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some(type_.into()),
            rolling_update: partition.map(|p| RollingUpdateStatefulSetStrategy {
                partition: Some(p),
                max_unavailable: None,
            }),
        });
        s
    }

    fn parallel(mut s: StatefulSet) -> StatefulSet {
        s.spec.as_mut().unwrap().pod_management_policy = Some("Parallel".into());
        s
    }

    #[derive(Clone, Copy)]
    enum State {
        Ready,
        NotReady,
        Pending,
        Failed,
        Terminating,
    }

    fn pod(s: &StatefulSet, ord: i32, rev: &str, state: State) -> Pod {
        let mut p = new_pod(s, ord, rev);
        p.metadata.uid = Some(format!("uid-{ord}"));
        let (phase, ready) = match state {
            State::Ready | State::Terminating => ("Running", true),
            State::NotReady => ("Running", false),
            State::Pending => ("Pending", false),
            State::Failed => ("Failed", false),
        };
        if let State::Terminating = state {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        }
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    /// All claims of ordinals 0..10 exist unless a test says otherwise.
    fn all_claims() -> BTreeSet<String> {
        (0..10).map(|i| format!("data-web-{i}")).collect()
    }

    fn run(s: &StatefulSet, pods: &[Pod], claims: BTreeSet<String>, current: &str, update: &str) -> Plan {
        let revision_sets: BTreeMap<String, StatefulSet> = [
            ("web-old".to_owned(), with_image(s, "nginx:old")),
            ("web-new".to_owned(), with_image(s, "nginx:new")),
        ]
        .into();
        let obs = Observed {
            set: s,
            pods: pods.iter().collect(),
            claims,
            current_revision: current.into(),
            update_revision: update.into(),
            now: Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(100),
        };
        plan(&obs, &revision_sets)
    }

    fn with_image(s: &StatefulSet, image: &str) -> StatefulSet {
        let mut s = s.clone();
        s.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        s
    }

    /// The actions as short strings: `claim data-web-0`, `create web-0@web-new`, `delete web-2`.
    fn summary(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| match a {
                Action::CreateClaim(c) => format!("claim {}", c.metadata.name.as_deref().unwrap_or_default()),
                Action::CreatePod(pod) => format!("create {}@{}", name_of(pod), revision_of(pod).unwrap_or_default()),
                Action::DeletePod { name, .. } => format!("delete {name}"),
            })
            .collect()
    }

    fn image_of(a: &Action) -> Option<&str> {
        match a {
            Action::CreatePod(p) => p.spec.as_ref()?.containers[0].image.as_deref(),
            _ => None,
        }
    }

    use State::*;

    /// What, the pods (ordinal, state), the actions expected.
    type Case = (&'static str, Vec<(i32, State)>, &'static [&'static str]);
    /// As [`Case`], with each pod's revision.
    type RevCase = (&'static str, Vec<(i32, &'static str, State)>, &'static [&'static str]);

    #[test]
    fn ordered_creation_goes_one_pod_at_a_time_and_waits_for_ready() {
        let s = set(3, "nginx:new");
        let cases: &[Case] = &[
            ("empty set: web-0 first", vec![], &["create web-0@web-new"]),
            ("web-0 not ready: wait", vec![(0, NotReady)], &[]),
            ("web-0 pending: wait", vec![(0, Pending)], &[]),
            ("web-0 ready: web-1", vec![(0, Ready)], &["create web-1@web-new"]),
            (
                "gap: web-1 again",
                vec![(0, Ready), (2, Ready)],
                &["create web-1@web-new"],
            ),
            ("web-0 terminating: wait", vec![(0, Terminating), (1, Ready)], &[]),
            (
                "web-0 failed: delete it only",
                vec![(0, Failed), (1, Ready)],
                &["delete web-0"],
            ),
            ("all there", vec![(0, Ready), (1, Ready), (2, Ready)], &[]),
        ];
        for (what, pods, want) in cases {
            let pods: Vec<Pod> = pods.iter().map(|(o, st)| pod(&s, *o, "web-new", *st)).collect();
            let p = run(&s, &pods, all_claims(), "web-new", "web-new");
            assert_eq!(summary(&p), *want, "{what}");
        }
    }

    #[test]
    fn min_ready_seconds_holds_the_next_pod_back() {
        let mut s = set(2, "nginx:new");
        s.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let mut web0 = pod(&s, 0, "web-new", Ready);
        // Ready since t=90, now is t=100.
        web0.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(Time(Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(90)));
        let p = run(&s, std::slice::from_ref(&web0), all_claims(), "web-new", "web-new");
        assert!(p.actions.is_empty());
        assert_eq!(
            (p.status.ready_replicas, p.status.available_replicas),
            (Some(1), Some(0))
        );
        s.spec.as_mut().unwrap().min_ready_seconds = Some(10);
        let p = run(&s, &[web0], all_claims(), "web-new", "web-new");
        assert_eq!(summary(&p), ["create web-1@web-new"]);
    }

    #[test]
    fn parallel_creates_every_missing_pod_at_once_with_its_claims_first() {
        let s = parallel(set(3, "nginx:new"));
        let p = run(
            &s,
            &[pod(&s, 1, "web-new", NotReady)],
            BTreeSet::new(),
            "web-new",
            "web-new",
        );
        assert_eq!(
            summary(&p),
            [
                "claim data-web-0",
                "create web-0@web-new",
                "claim data-web-2",
                "create web-2@web-new"
            ],
            "web-1 is Running: as upstream, only new and Pending pods get their missing claims"
        );
    }

    #[test]
    fn claims_are_created_before_their_pod_and_only_when_missing() {
        let s = set(2, "nginx:new");
        let p = run(&s, &[], BTreeSet::new(), "web-new", "web-new");
        assert_eq!(summary(&p), ["claim data-web-0", "create web-0@web-new"]);
        let Action::CreateClaim(claim) = &p.actions[0] else {
            panic!("{:?}", p.actions[0])
        };
        assert_eq!(claim.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        assert!(claim.metadata.owner_references.is_none(), "Retain by default");
        let Action::CreatePod(web0) = &p.actions[1] else {
            panic!("{:?}", p.actions[1])
        };
        assert!(storage_matches(&s, web0));

        // A Pending pod whose claim went missing gets it back; a Running one is left alone.
        let p = run(
            &s,
            &[pod(&s, 0, "web-new", Pending)],
            BTreeSet::new(),
            "web-new",
            "web-new",
        );
        assert_eq!(summary(&p), ["claim data-web-0"]);
    }

    #[test]
    fn scale_down_deletes_the_highest_condemned_pod_once_all_are_ready() {
        let s = set(1, "nginx:new");
        let cases: &[Case] = &[
            (
                "highest first",
                vec![(0, Ready), (1, Ready), (2, Ready)],
                &["delete web-2"],
            ),
            (
                "in-range pod not ready: wait",
                vec![(0, NotReady), (1, Ready), (2, Ready)],
                &[],
            ),
            (
                "highest terminating: wait",
                vec![(0, Ready), (1, Ready), (2, Terminating)],
                &[],
            ),
            (
                "an unhealthy condemned pod goes when it is the lowest unhealthy",
                vec![(0, Ready), (1, Ready), (2, NotReady)],
                &["delete web-2"],
            ),
            (
                "an unhealthy pod below it blocks an unhealthy highest one",
                vec![(0, Ready), (1, NotReady), (2, NotReady)],
                &[],
            ),
            ("then web-1", vec![(0, Ready), (1, Ready)], &["delete web-1"]),
        ];
        for (what, pods, want) in cases {
            let pods: Vec<Pod> = pods.iter().map(|(o, st)| pod(&s, *o, "web-new", *st)).collect();
            assert_eq!(
                summary(&run(&s, &pods, all_claims(), "web-new", "web-new")),
                *want,
                "{what}"
            );
        }

        let s = parallel(s);
        let pods: Vec<Pod> = [(0, Ready), (1, NotReady), (2, Ready), (3, Terminating)]
            .iter()
            .map(|(o, st)| pod(&s, *o, "web-new", *st))
            .collect();
        assert_eq!(
            summary(&run(&s, &pods, all_claims(), "web-new", "web-new")),
            ["delete web-2", "delete web-1"],
            "Parallel deletes every condemned pod at once"
        );
    }

    #[test]
    fn ordinals_start_where_spec_ordinals_says() {
        let mut s = set(2, "nginx:new");
        s.spec.as_mut().unwrap().ordinals = Some(k8s_openapi::api::apps::v1::StatefulSetOrdinals { start: Some(5) });
        let s = parallel(s);
        let pods = [pod(&s, 0, "web-new", Ready)];
        assert_eq!(
            summary(&run(&s, &pods, all_claims(), "web-new", "web-new")),
            ["create web-5@web-new", "create web-6@web-new", "delete web-0"]
        );
    }

    #[test]
    fn a_partition_keeps_low_ordinals_on_the_current_revision() {
        let s = parallel(with_strategy(set(3, "nginx:new"), "RollingUpdate", Some(2)));
        let p = run(&s, &[], all_claims(), "web-old", "web-new");
        assert_eq!(
            summary(&p),
            ["create web-0@web-old", "create web-1@web-old", "create web-2@web-new"]
        );
        let images: Vec<_> = p.actions.iter().filter_map(image_of).collect();
        assert_eq!(images, ["nginx:old", "nginx:old", "nginx:new"]);

        // The update stops at the partition, and the current revision stays.
        let pods = [
            pod(&s, 0, "web-old", Ready),
            pod(&s, 1, "web-old", Ready),
            pod(&s, 2, "web-new", Ready),
        ];
        let p = run(&s, &pods, all_claims(), "web-old", "web-new");
        assert!(p.actions.is_empty(), "{:?}", summary(&p));
        assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
        assert_eq!(
            (p.status.current_replicas, p.status.updated_replicas),
            (Some(2), Some(1))
        );
    }

    #[test]
    fn rolling_update_replaces_the_highest_old_pod_one_at_a_time() {
        let s = with_strategy(set(3, "nginx:new"), "RollingUpdate", Some(0));
        let cases: &[RevCase] = &[
            (
                "all old and ready: web-2 goes",
                vec![(0, "web-old", Ready), (1, "web-old", Ready), (2, "web-old", Ready)],
                &["delete web-2"],
            ),
            (
                "web-2 gone: it comes back on the update revision",
                vec![(0, "web-old", Ready), (1, "web-old", Ready)],
                &["create web-2@web-new"],
            ),
            (
                "web-2 not ready yet: wait",
                vec![(0, "web-old", Ready), (1, "web-old", Ready), (2, "web-new", NotReady)],
                &[],
            ),
            (
                "web-2 ready: web-1 goes",
                vec![(0, "web-old", Ready), (1, "web-old", Ready), (2, "web-new", Ready)],
                &["delete web-1"],
            ),
            (
                "web-1 terminating: wait",
                vec![
                    (0, "web-old", Ready),
                    (1, "web-old", Terminating),
                    (2, "web-new", Ready),
                ],
                &[],
            ),
            (
                "a missing lower pod comes back on the update revision (partition 0)",
                vec![(1, "web-new", Ready), (2, "web-new", Ready)],
                &["create web-0@web-new"],
            ),
        ];
        for (what, pods, want) in cases {
            let pods: Vec<Pod> = pods.iter().map(|(o, rev, st)| pod(&s, *o, rev, *st)).collect();
            assert_eq!(
                summary(&run(&s, &pods, all_claims(), "web-old", "web-new")),
                *want,
                "{what}"
            );
        }

        // Parallel does not hurry an update: still one at a time.
        let s = parallel(s);
        let pods: Vec<Pod> = (0..3).map(|o| pod(&s, o, "web-old", Ready)).collect();
        assert_eq!(
            summary(&run(&s, &pods, all_claims(), "web-old", "web-new")),
            ["delete web-2"]
        );
    }

    #[test]
    fn without_a_rolling_update_stanza_the_first_current_replicas_stay_current() {
        let mut s = with_strategy(set(3, "nginx:new"), "RollingUpdate", None);
        s.status = Some(StatefulSetStatus {
            current_replicas: Some(2),
            ..StatefulSetStatus::default()
        });
        let pods = [pod(&s, 1, "web-old", Ready), pod(&s, 2, "web-new", Ready)];
        assert_eq!(
            summary(&run(&s, &pods, all_claims(), "web-old", "web-new")),
            ["create web-0@web-old"]
        );
    }

    #[test]
    fn the_rollout_completes_when_every_pod_is_updated_and_ready() {
        let s = with_strategy(set(3, "nginx:new"), "RollingUpdate", Some(0));
        let pods: Vec<Pod> = (0..3).map(|o| pod(&s, o, "web-new", Ready)).collect();
        let p = run(&s, &pods, all_claims(), "web-old", "web-new");
        assert!(p.actions.is_empty());
        assert_eq!(
            p.status,
            StatefulSetStatus {
                observed_generation: Some(3),
                replicas: 3,
                ready_replicas: Some(3),
                available_replicas: Some(3),
                current_replicas: Some(3),
                updated_replicas: Some(3),
                current_revision: Some("web-new".into()),
                update_revision: Some("web-new".into()),
                collision_count: Some(0),
                conditions: None,
            }
        );
        // One not ready: not complete yet.
        let mut pods = pods;
        pods[0] = pod(&s, 0, "web-new", NotReady);
        let p = run(&s, &pods, all_claims(), "web-old", "web-new");
        assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
        assert_eq!(p.status.current_replicas, Some(0));
    }

    #[test]
    fn on_delete_never_deletes_for_an_update() {
        let s = with_strategy(set(3, "nginx:new"), "OnDelete", None);
        let pods = [pod(&s, 0, "web-old", Ready), pod(&s, 1, "web-old", Ready)];
        let p = run(&s, &pods, all_claims(), "web-old", "web-new");
        assert_eq!(
            summary(&p),
            ["create web-2@web-new"],
            "new pods take the update revision"
        );
        let pods = [
            pod(&s, 0, "web-old", Ready),
            pod(&s, 1, "web-new", Ready),
            pod(&s, 2, "web-new", Ready),
        ];
        let p = run(&s, &pods, all_claims(), "web-old", "web-new");
        assert!(p.actions.is_empty());
        assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
        assert_eq!(
            (p.status.current_replicas, p.status.updated_replicas),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn pods_with_a_wrong_identity_or_storage_are_replaced() {
        let s = set(2, "nginx:new");
        let mut relabelled = pod(&s, 0, "web-new", Ready);
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(identity::POD_NAME_LABEL);
        let p = run(&s, &[relabelled], all_claims(), "web-new", "web-new");
        assert_eq!(summary(&p), ["delete web-0"]);
        let mut no_volume = pod(&s, 0, "web-new", Ready);
        no_volume.spec.as_mut().unwrap().volumes = None;
        let p = run(&s, &[no_volume], all_claims(), "web-new", "web-new");
        assert_eq!(summary(&p), ["delete web-0"]);
        let Action::DeletePod { uid, .. } = &p.actions[0] else {
            panic!()
        };
        assert_eq!(uid, "uid-0");
    }

    #[test]
    fn pods_of_other_names_are_ignored_and_a_deleted_set_does_nothing() {
        let s = parallel(set(1, "nginx:new"));
        let mut stranger = pod(&s, 0, "web-new", Ready);
        stranger.metadata.name = Some("web-abc".into());
        let p = run(&s, &[stranger], all_claims(), "web-new", "web-new");
        assert_eq!(summary(&p), ["create web-0@web-new"]);
        assert_eq!(p.status.replicas, 0);

        let mut s = s;
        s.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let p = run(&s, &[pod(&s, 3, "web-new", Ready)], all_claims(), "web-new", "web-new");
        assert!(p.actions.is_empty());
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn status_counts_every_pod_by_readiness_and_revision() {
        let mut s = set(2, "nginx:new");
        s.status = Some(StatefulSetStatus {
            collision_count: Some(2),
            ..StatefulSetStatus::default()
        });
        let pods = [
            pod(&s, 0, "web-old", Ready),
            pod(&s, 1, "web-new", NotReady),
            pod(&s, 2, "web-new", Terminating),
        ];
        let st = run(&s, &pods, all_claims(), "web-old", "web-new").status;
        assert_eq!(st.replicas, 3);
        assert_eq!((st.ready_replicas, st.available_replicas), (Some(2), Some(2)));
        assert_eq!((st.current_replicas, st.updated_replicas), (Some(1), Some(1)));
        assert_eq!(st.collision_count, Some(2));
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.update_revision.as_deref(), Some("web-new"));
    }
}
