//! From a DaemonSet, the Nodes and its Pods to the Pods to create and delete and the
//! status to report (pure).
//!
//! As upstream's `manage` + `rollingUpdate` + `updateDaemonSetStatus` in one pass: a
//! node that should run a daemon pod and has none gets one; extra, failed, evicted,
//! misscheduled and orphaned (node gone) pods go; then, for RollingUpdate, old-template
//! pods are deleted while at most `maxUnavailable` nodes lack an available pod of the
//! current template. Pods being deleted count for nothing.

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetStatus},
        core::v1::{Node, Pod},
    },
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};
use kube::api::ObjectMeta;

use super::eligibility::{eligibility, with_daemon_tolerations};

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// What one reconcile should do.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Nodes to create a pod on.
    pub create_on: Vec<String>,
    pub delete: Vec<Arc<Pod>>,
    pub status: DaemonSetStatus,
}

/// A stable name for the pod template, as upstream's ControllerRevision hash: the same
/// template always gives the same label, also across restarts. FNV-1a, not the std
/// hasher, whose keys are random per process.
pub fn template_hash(ds: &DaemonSet) -> String {
    let bytes = ds
        .spec
        .as_ref()
        .map(|s| serde_json::to_vec(&s.template).unwrap_or_default())
        .unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(ready.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready for at least `min_ready_seconds` (a Ready condition without a time counts as
/// long enough).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => true,
        Some(Some(since)) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH_LABEL)
        .map(String::as_str)
}

/// `maxUnavailable` of `desired` nodes: a number, or a percentage rounded up; never 0,
/// since this controller does not surge and 0 would never update anything.
pub fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    let value = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let n = match value {
        None => 1,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(pct) => i32::try_from((pct * i64::from(desired) + 99) / 100).unwrap_or(i32::MAX),
            None => 1,
        },
    };
    n.max(1)
}

fn on_delete(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete")
}

/// `pods` are the DaemonSet's own (controller reference to its uid).
pub fn plan(ds: &DaemonSet, nodes: &[Arc<Node>], pods: &[Arc<Pod>], now: Timestamp) -> Plan {
    let hash = template_hash(ds);
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let min_ready = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let mut out = Plan::default();

    let mut by_node: BTreeMap<&str, Vec<&Arc<Pod>>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !terminating(p)) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    let known: BTreeMap<&str, &Arc<Node>> = nodes
        .iter()
        .map(|n| (n.metadata.name.as_deref().unwrap_or_default(), n))
        .collect();
    for (node, pods) in &by_node {
        if !known.contains_key(node) {
            out.delete.extend(pods.iter().map(|p| Arc::clone(p)));
        }
    }

    let (mut desired, mut current, mut ready, mut available, mut updated, mut misscheduled) = (0, 0, 0, 0, 0, 0);
    // Nodes whose only pod is of an old template: (node, available).
    let mut old: Vec<&Arc<Pod>> = Vec::new();
    let mut unavailable = 0;
    for (name, node) in &known {
        let e = eligibility(node, &spec);
        let mut live: Vec<&Arc<Pod>> = by_node.get(name).cloned().unwrap_or_default();
        let (dead, alive): (Vec<_>, Vec<_>) = live.drain(..).partition(|p| failed(p));
        out.delete.extend(dead.into_iter().cloned());
        let mut live = alive;
        if e.should_run {
            desired += 1;
            if live.is_empty() {
                out.create_on.push((*name).to_owned());
                unavailable += 1;
                continue;
            }
            // Keep one: the current template's if any, then the oldest.
            live.sort_by_key(|p| {
                (
                    hash_of(p) != Some(&hash),
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                    p.metadata.name.clone(),
                )
            });
            out.delete.extend(live.drain(1..).cloned());
            let kept = live[0];
            current += 1;
            let is_new = hash_of(kept) == Some(&hash);
            let avail = is_available(kept, min_ready, now);
            ready += i32::from(is_ready(kept));
            available += i32::from(avail);
            if is_new {
                updated += 1;
                unavailable += i32::from(!avail);
            } else if !avail {
                // An old pod that serves nothing may be replaced at once.
                if !on_delete(ds) {
                    out.delete.push(Arc::clone(kept));
                }
                unavailable += 1;
            } else {
                old.push(kept);
            }
        } else if !live.is_empty() {
            misscheduled += 1;
            if !e.should_continue_running {
                out.delete.extend(live.into_iter().cloned());
            }
        }
    }
    if !on_delete(ds) {
        let budget = (max_unavailable(ds, desired) - unavailable).max(0);
        out.delete
            .extend(old.into_iter().take(usize::try_from(budget).unwrap_or(0)).cloned());
    }
    out.status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        ..DaemonSetStatus::default()
    };
    out
}

/// A daemon pod for `node`, bound to it from the start.
///
/// Upstream (since 1.12) leaves `nodeName` empty and pins the pod with a required node
/// affinity `metadata.name In [node]` for the default scheduler to bind. This branch has
/// no scheduler, so the pod is created with `spec.nodeName` set, as upstream did before.
pub fn new_pod(ds: &DaemonSet, node: &str) -> Pod {
    let template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.into(), template_hash(ds));
    labels.insert(
        TEMPLATE_GENERATION_LABEL.into(),
        ds.metadata.generation.unwrap_or(0).to_string(),
    );
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(with_daemon_tolerations(&spec));
    spec.node_name = Some(node.to_owned());
    let name = ds.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name,
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
            core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus, PodTemplateSpec, Taint},
        },
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    fn ds(image: &str, max_unavailable: Option<i32>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("kube-system".into()),
                uid: Some("ds-uid".into()),
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_owned(), "agent".to_owned())].into()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![k8s_openapi::api::core::v1::Container {
                            name: "a".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                update_strategy: max_unavailable.map(|n| DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_unavailable: Some(IntOrString::Int(n)),
                        max_surge: None,
                    }),
                }),
                ..DaemonSetSpec::default()
            }),
            status: None,
        }
    }

    fn node(name: &str, taint: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: taint.map(|k| {
                    vec![Taint {
                        key: k.into(),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    }]
                }),
                ..NodeSpec::default()
            }),
            status: None,
        })
    }

    fn pod(ds: &DaemonSet, name: &str, node: &str, ready: bool) -> Arc<Pod> {
        let mut p = new_pod(ds, node);
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        Arc::new(p)
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        let mut v: Vec<&str> = pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn one_pod_per_eligible_node_and_none_on_a_tainted_one() {
        let d = ds("v1", None);
        let nodes = [node("a", None), node("b", None), node("t", Some("dedicated"))];
        let p = plan(&d, &nodes, &[pod(&d, "pa", "a", true)], Timestamp::now());
        assert_eq!(p.create_on, vec!["b"]);
        assert!(p.delete.is_empty());
        assert_eq!(
            (
                p.status.desired_number_scheduled,
                p.status.current_number_scheduled,
                p.status.number_ready
            ),
            (2, 1, 1)
        );
        assert_eq!(p.status.observed_generation, Some(2));
    }

    #[test]
    fn extra_orphaned_and_failed_pods_go() {
        let d = ds("v1", None);
        let nodes = [node("a", None), node("b", None)];
        let mut failed = (*pod(&d, "pb", "b", false)).clone();
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [
            pod(&d, "pa1", "a", true),
            pod(&d, "pa2", "a", true),
            pod(&d, "gone", "deleted-node", true),
            Arc::new(failed),
        ];
        let p = plan(&d, &nodes, &pods, Timestamp::now());
        assert_eq!(names(&p.delete), vec!["gone", "pa2", "pb"]);
        assert_eq!(p.create_on, vec!["b"]);
    }

    #[test]
    fn misscheduled_pods_are_counted_and_noschedule_does_not_evict() {
        let d = ds("v1", None);
        let p = plan(
            &d,
            &[node("t", Some("dedicated"))],
            &[pod(&d, "pt", "t", true)],
            Timestamp::now(),
        );
        assert!(p.delete.is_empty());
        assert_eq!(p.status.number_misscheduled, 1);
        assert_eq!(p.status.desired_number_scheduled, 0);
    }

    #[test]
    fn rolling_update_replaces_at_most_max_unavailable_and_waits_for_readiness() {
        let old = ds("v1", Some(1));
        let new = ds("v2", Some(1));
        assert_ne!(template_hash(&old), template_hash(&new));
        let nodes = [node("a", None), node("b", None), node("c", None)];
        let pods = [
            pod(&old, "pa", "a", true),
            pod(&old, "pb", "b", true),
            pod(&old, "pc", "c", true),
        ];
        let p = plan(&new, &nodes, &pods, Timestamp::now());
        assert_eq!(names(&p.delete), vec!["pa"], "one at a time");
        assert_eq!(p.status.updated_number_scheduled, Some(0));

        // pa deleted, its replacement not ready yet: nothing more goes.
        let pods = [
            pod(&new, "pa2", "a", false),
            pod(&old, "pb", "b", true),
            pod(&old, "pc", "c", true),
        ];
        let p = plan(&new, &nodes, &pods, Timestamp::now());
        assert!(p.delete.is_empty());
        let p = plan(&new, &nodes, &pods[1..], Timestamp::now());
        assert_eq!(p.create_on, vec!["a"]);
        assert!(p.delete.is_empty(), "a missing pod counts as unavailable");

        // Ready: the next one goes; with maxUnavailable 2, two go.
        let pods = [
            pod(&new, "pa2", "a", true),
            pod(&old, "pb", "b", true),
            pod(&old, "pc", "c", true),
        ];
        assert_eq!(names(&plan(&new, &nodes, &pods, Timestamp::now()).delete), vec!["pb"]);
        assert_eq!(
            names(&plan(&ds("v2", Some(2)), &nodes, &pods, Timestamp::now()).delete),
            vec!["pb", "pc"]
        );

        // An old pod that is not available anyway goes at once.
        let pods = [
            pod(&new, "pa2", "a", false),
            pod(&old, "pb", "b", false),
            pod(&old, "pc", "c", true),
        ];
        assert_eq!(names(&plan(&new, &nodes, &pods, Timestamp::now()).delete), vec!["pb"]);
    }

    #[test]
    fn on_delete_leaves_old_pods_alone() {
        let mut new = ds("v2", None);
        new.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        let p = plan(
            &new,
            &[node("a", None)],
            &[pod(&ds("v1", None), "pa", "a", true)],
            Timestamp::now(),
        );
        assert!(p.delete.is_empty());
        assert_eq!(p.status.updated_number_scheduled, Some(0));
    }

    #[test]
    fn max_unavailable_percentages_round_up_and_zero_means_one() {
        let mut d = ds("v1", Some(0));
        assert_eq!(max_unavailable(&d, 10), 1);
        d.spec
            .as_mut()
            .unwrap()
            .update_strategy
            .as_mut()
            .unwrap()
            .rolling_update
            .as_mut()
            .unwrap()
            .max_unavailable = Some(IntOrString::String("25%".into()));
        assert_eq!(max_unavailable(&d, 10), 3);
    }

    #[test]
    fn daemon_pods_are_bound_labelled_and_owned() {
        let d = ds("v1", None);
        let p = new_pod(&d, "a");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("a"));
        assert!(
            spec.tolerations
                .unwrap()
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready"))
        );
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(REVISION_HASH_LABEL), Some(&template_hash(&d)));
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("DaemonSet", "ds-uid", Some(true))
        );
    }
}
