//! What a ReplicaSet needs, from its object and the pods of its namespace (pure): which
//! pods to adopt and release, how many to create, which to delete, and its status.

use std::{cmp::Ordering, collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{ReplicaSet, ReplicaSetStatus},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::controllers::workload::{self, controller_of, is_active, is_available, is_ready, selector_matches};

/// Upstream's `controller.kubernetes.io/pod-deletion-cost`: lower goes first on scale down.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphans the selector matches: they get our controller reference.
    pub adopt: Vec<Arc<Pod>>,
    /// Pods we control that the selector no longer matches: they lose it.
    pub release: Vec<Arc<Pod>>,
    /// Pods to create from the template.
    pub create: usize,
    /// Pods to delete, in the order to delete them.
    pub delete: Vec<Arc<Pod>>,
    pub status: ReplicaSetStatus,
    /// Seconds until a ready pod becomes available (minReadySeconds), when one will.
    pub recheck_after_seconds: Option<i64>,
}

/// Plans one ReplicaSet. `manage` false (our last writes are not yet visible) plans no
/// creates or deletes, only ownership and status.
pub fn plan(rs: &ReplicaSet, namespace_pods: &[Arc<Pod>], now: Timestamp, manage: bool) -> Plan {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let spec = rs.spec.as_ref();
    let selector = spec.map(|s| s.selector.clone()).unwrap_or_default();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut out = Plan::default();
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in namespace_pods {
        let matches = selector_matches(&selector, pod.metadata.labels.as_ref());
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(pod.clone());
                } else if is_active(pod) {
                    out.release.push(pod.clone());
                }
            }
            Some(_) => {}
            // A ReplicaSet being deleted adopts nothing (upstream: it would orphan them again).
            None if matches && !deleting && is_active(pod) => {
                out.adopt.push(pod.clone());
                owned.push(pod.clone());
            }
            None => {}
        }
    }
    let active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| is_active(p)).collect();
    let wanted = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    if manage && !deleting {
        if active.len() < wanted {
            out.create = wanted - active.len();
        } else if active.len() > wanted {
            let mut ranked = active.clone();
            ranked.sort_by(|a, b| deletion_order(a, b));
            out.delete = ranked.into_iter().take(active.len() - wanted).collect();
        }
    }
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active.iter().filter(|p| is_available(p, min_ready, now)).count();
    if min_ready > 0 {
        out.recheck_after_seconds = active
            .iter()
            .filter(|p| !is_available(p, min_ready, now))
            .filter_map(|p| workload::ready_since(p).flatten())
            .map(|since| (since.as_second() + i64::from(min_ready) - now.as_second()).max(1))
            .min();
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    out.status = ReplicaSetStatus {
        replicas: count(active.len()),
        fully_labeled_replicas: Some(count(fully_labeled)),
        ready_replicas: Some(count(ready)),
        available_replicas: Some(count(available)),
        observed_generation: rs.metadata.generation,
        // Conditions (ReplicaFailure) are ours to set; keep what is there.
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    out
}

/// A pod for `rs`, from its template, named `<rs>-<random>` by the server.
pub fn pod_for(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![workload::controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    }
}

/// Upstream's order of deletion on scale down (ActivePods.Less), first to go first:
/// unscheduled before scheduled, Pending before Unknown before Running, not ready before
/// ready, lower deletion cost first, ready for less time first, more restarts first,
/// newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase_rank = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        Some(_) => 3,
    };
    let cost = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST_ANNOTATION))
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| i64::from(c.restart_count)).max().unwrap_or(0))
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let ready_at = |p: &Pod| workload::ready_since(p).flatten();
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then(cost(a).cmp(&cost(b)))
        // Both ready: the one ready more recently goes first.
        .then_with(|| {
            if is_ready(a) && is_ready(b) {
                ready_at(b).cmp(&ready_at(a))
            } else {
                Ordering::Equal
            }
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// Pods' labels, as a map to compare (tests and logs).
pub fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::ReplicaSetSpec,
            core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus, PodTemplateSpec},
        },
        apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    };

    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
    }

    fn rs(replicas: i32) -> ReplicaSet {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("ns".into()),
                uid: Some("rs-uid".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    struct P {
        name: &'static str,
        node: bool,
        phase: &'static str,
        ready_at: Option<i64>,
        restarts: i32,
        created: i64,
    }

    fn pod(p: P, owner: Option<&ReplicaSet>) -> Arc<Pod> {
        let conditions = p.ready_at.map(|at| {
            vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(ts(at))),
                ..Default::default()
            }]
        });
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(p.name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{}", p.name)),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                creation_timestamp: Some(Time(ts(p.created))),
                owner_references: owner.map(|o| vec![workload::controller_ref("apps/v1", "ReplicaSet", &o.metadata)]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: p.node.then(|| "n1".to_owned()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(p.phase.into()),
                conditions,
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: p.restarts,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect()
    }

    #[test]
    fn scale_down_deletes_in_upstream_order() {
        let r = rs(0);
        let pods = vec![
            pod(
                P {
                    name: "ready-old",
                    node: true,
                    phase: "Running",
                    ready_at: Some(10),
                    restarts: 0,
                    created: 0,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "ready-recent",
                    node: true,
                    phase: "Running",
                    ready_at: Some(50),
                    restarts: 0,
                    created: 0,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "unscheduled",
                    node: false,
                    phase: "Pending",
                    ready_at: None,
                    restarts: 0,
                    created: 0,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "pending",
                    node: true,
                    phase: "Pending",
                    ready_at: None,
                    restarts: 0,
                    created: 0,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "not-ready-restarts",
                    node: true,
                    phase: "Running",
                    ready_at: None,
                    restarts: 5,
                    created: 0,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "not-ready-newer",
                    node: true,
                    phase: "Running",
                    ready_at: None,
                    restarts: 0,
                    created: 9,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "not-ready-older",
                    node: true,
                    phase: "Running",
                    ready_at: None,
                    restarts: 0,
                    created: 1,
                },
                Some(&r),
            ),
        ];
        let p = plan(&r, &pods, ts(100), true);
        assert_eq!(
            names(&p.delete),
            [
                "unscheduled",
                "pending",
                "not-ready-restarts",
                "not-ready-newer",
                "not-ready-older",
                "ready-recent",
                "ready-old"
            ]
        );
        let mut partial = rs(5);
        partial.metadata.uid = r.metadata.uid.clone();
        assert_eq!(
            names(&plan(&partial, &pods, ts(100), true).delete),
            ["unscheduled", "pending"]
        );
    }

    #[test]
    fn adopts_orphans_releases_mismatches_and_ignores_terminating_pods() {
        let r = rs(3);
        let orphan = pod(
            P {
                name: "orphan",
                node: false,
                phase: "Pending",
                ready_at: None,
                restarts: 0,
                created: 0,
            },
            None,
        );
        let mut relabeled = (*pod(
            P {
                name: "relabeled",
                node: false,
                phase: "Pending",
                ready_at: None,
                restarts: 0,
                created: 0,
            },
            Some(&r),
        ))
        .clone();
        relabeled.metadata.labels = Some([("app".to_owned(), "other".to_owned())].into());
        let mut going = (*pod(
            P {
                name: "going",
                node: true,
                phase: "Running",
                ready_at: Some(0),
                restarts: 0,
                created: 0,
            },
            Some(&r),
        ))
        .clone();
        going.metadata.deletion_timestamp = Some(Time(ts(50)));
        let pods = vec![orphan, Arc::new(relabeled), Arc::new(going)];
        let p = plan(&r, &pods, ts(100), true);
        assert_eq!(names(&p.adopt), ["orphan"]);
        assert_eq!(names(&p.release), ["relabeled"]);
        assert_eq!(p.create, 2, "the terminating pod counts as gone");
        assert_eq!(p.status.replicas, 1);
        assert_eq!(
            plan(&r, &pods, ts(100), false).create,
            0,
            "unsatisfied expectations: no creates"
        );
    }

    #[test]
    fn status_counts_ready_and_available_after_min_ready_seconds() {
        let mut r = rs(2);
        if let Some(s) = r.spec.as_mut() {
            s.min_ready_seconds = Some(30);
        }
        let pods = vec![
            pod(
                P {
                    name: "a",
                    node: true,
                    phase: "Running",
                    ready_at: Some(0),
                    restarts: 0,
                    created: 0,
                },
                Some(&r),
            ),
            pod(
                P {
                    name: "b",
                    node: true,
                    phase: "Running",
                    ready_at: Some(90),
                    restarts: 0,
                    created: 0,
                },
                Some(&r),
            ),
        ];
        let p = plan(&r, &pods, ts(100), true);
        assert_eq!(
            (p.status.replicas, p.status.ready_replicas, p.status.available_replicas),
            (2, Some(2), Some(1))
        );
        assert_eq!(
            (p.status.fully_labeled_replicas, p.status.observed_generation),
            (Some(2), Some(4))
        );
        assert_eq!(p.recheck_after_seconds, Some(20));
    }

    #[test]
    fn new_pods_come_from_the_template_with_a_controller_reference() {
        let p = pod_for(&rs(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-1-"));
        assert_eq!(labels_of(&p).get("app").map(String::as_str), Some("web"));
        let owner = p.metadata.owner_references.as_deref().unwrap_or_default();
        assert_eq!(owner.len(), 1);
        assert_eq!(
            (
                owner[0].controller,
                owner[0].block_owner_deletion,
                owner[0].uid.as_str()
            ),
            (Some(true), Some(true), "rs-uid")
        );
    }
}
