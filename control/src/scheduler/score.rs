//! Which feasible node is best: a few of upstream's default score plugins, each giving
//! 0–100 per node, summed with upstream's plugin weights.
//!
//! - NodeResourcesFit, LeastAllocated strategy (weight 1): the share of CPU and memory left
//!   after placing the Pod, averaged; requests are counted with upstream's defaults for
//!   containers without one.
//! - NodeAffinity (weight 2): the weights of the matching preferred terms, normalized so
//!   the best node gets 100.
//! - TaintToleration (weight 3): fewer untolerated `PreferNoSchedule` taints is better.
//! - Spreading (weight 2, standing in for PodTopologySpread's default constraints): fewer
//!   Pods of the same controller on the node is better.
//!
//! Ties are broken round-robin by a counter the caller keeps, so equal nodes take turns.

use k8s_openapi::api::core::v1::Pod;

use super::{
    filter::{effective_taints, term_matches, tolerates},
    node_info::NodeInfo,
    resources::{self, Counting},
};

pub const MAX_SCORE: i64 = 100;

const WEIGHT_LEAST_ALLOCATED: i64 = 1;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_TAINTS: i64 = 3;
const WEIGHT_SPREAD: i64 = 2;

/// The total score of each node in `feasible`, in the same order.
pub fn scores(pod: &Pod, feasible: &[&NodeInfo]) -> Vec<i64> {
    let least: Vec<i64> = feasible.iter().map(|n| least_allocated(pod, n)).collect();
    let affinity = normalize(
        &feasible.iter().map(|n| preferred_affinity(pod, n)).collect::<Vec<_>>(),
        false,
    );
    let taints = normalize(
        &feasible
            .iter()
            .map(|n| intolerable_soft_taints(pod, n))
            .collect::<Vec<_>>(),
        true,
    );
    let spread = normalize(&feasible.iter().map(|n| same_owner(pod, n)).collect::<Vec<_>>(), true);
    (0..feasible.len())
        .map(|i| {
            least[i] * WEIGHT_LEAST_ALLOCATED
                + affinity[i] * WEIGHT_NODE_AFFINITY
                + taints[i] * WEIGHT_TAINTS
                + spread[i] * WEIGHT_SPREAD
        })
        .collect()
}

/// The index of the best score; among equals, the `turn`th (modulo their number), and
/// `turn` moves on.
pub fn pick(scores: &[i64], turn: &mut u64) -> Option<usize> {
    let best = *scores.iter().max()?;
    let tied: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] == best).collect();
    let chosen = tied[(*turn % tied.len() as u64) as usize];
    *turn = turn.wrapping_add(1);
    Some(chosen)
}

/// Scales raw values to 0–100 against the largest (upstream's DefaultNormalizeScore);
/// `reverse` when less is better. All zero: nobody is preferred.
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&v| match (max, reverse) {
            (0, true) => MAX_SCORE,
            (0, false) => 0,
            (m, false) => v * MAX_SCORE / m,
            (m, true) => (m - v) * MAX_SCORE / m,
        })
        .collect()
}

fn least_allocated(pod: &Pod, node: &NodeInfo) -> i64 {
    let allocatable = resources::allocatable(node.node).resources;
    let used = node.requested(Counting::NonZero);
    let want = resources::pod_requests(pod, Counting::NonZero);
    let share = |capacity: i64, requested: i64| {
        if capacity <= 0 || requested > capacity {
            0
        } else {
            (capacity - requested) * MAX_SCORE / capacity
        }
    };
    let cpu = share(allocatable.milli_cpu, used.milli_cpu + want.milli_cpu);
    let memory = share(allocatable.memory, used.memory + want.memory);
    (cpu + memory) / 2
}

fn preferred_affinity(pod: &Pod, node: &NodeInfo) -> i64 {
    let Some(preferred) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
    else {
        return 0;
    };
    let labels = node.node.metadata.labels.clone().unwrap_or_default();
    preferred
        .iter()
        .filter(|p| term_matches(&p.preference, &labels, node.name()))
        .map(|p| i64::from(p.weight.max(0)))
        .sum()
}

fn intolerable_soft_taints(pod: &Pod, node: &NodeInfo) -> i64 {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    effective_taints(node)
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerations.iter().any(|tol| tolerates(tol, t)))
        .count() as i64
}

/// The uid of the Pod's controller (its ReplicaSet, StatefulSet, Job, ...).
fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn same_owner(pod: &Pod, node: &NodeInfo) -> i64 {
    let Some(owner) = controller_uid(pod) else { return 0 };
    node.pods.iter().filter(|p| controller_uid(p) == Some(owner)).count() as i64
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::scheduler::filter::tests::{node, pod};

    fn owned(name: &str) -> Pod {
        pod(
            name,
            "100m",
            json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1", "controller": true}]}}),
        )
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let (a, b) = (node("a", "2", "4Gi", json!({})), node("b", "2", "4Gi", json!({})));
        let busy = [pod("x", "1", json!({}))];
        let infos = [NodeInfo::new(&a, busy.iter().collect()), NodeInfo::new(&b, vec![])];
        let incoming = pod("p", "500m", json!({}));
        assert_eq!(
            least_allocated(&incoming, &infos[1]),
            (75 + (4096 - 200) * 100 / 4096) / 2
        );
        let s = scores(&incoming, &infos.iter().collect::<Vec<_>>());
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn preferred_node_affinity_adds_weight() {
        let (a, b) = (
            node("a", "2", "4Gi", json!({"metadata": {"labels": {"disk": "ssd"}}})),
            node("b", "2", "4Gi", json!({})),
        );
        let infos = [NodeInfo::new(&a, vec![]), NodeInfo::new(&b, vec![])];
        let incoming = pod(
            "p",
            "0",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}}),
        );
        let s = scores(&incoming, &infos.iter().collect::<Vec<_>>());
        assert_eq!(s[0] - s[1], MAX_SCORE * WEIGHT_NODE_AFFINITY);
    }

    #[test]
    fn pods_of_one_controller_spread() {
        let (a, b) = (node("a", "64", "256Gi", json!({})), node("b", "64", "256Gi", json!({})));
        // An unrelated Pod on b weighs much less than a sibling on a.
        let on_a = [owned("w1")];
        let on_b = [pod("other", "100m", json!({}))];
        let infos = [
            NodeInfo::new(&a, on_a.iter().collect()),
            NodeInfo::new(&b, on_b.iter().collect()),
        ];
        let s = scores(&owned("w2"), &infos.iter().collect::<Vec<_>>());
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn soft_taints_are_avoided() {
        let a = node(
            "a",
            "2",
            "4Gi",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        );
        let b = node("b", "2", "4Gi", json!({}));
        let infos = [NodeInfo::new(&a, vec![]), NodeInfo::new(&b, vec![])];
        let s = scores(&pod("p", "0", json!({})), &infos.iter().collect::<Vec<_>>());
        assert_eq!(s[1] - s[0], MAX_SCORE * WEIGHT_TAINTS);
    }

    #[test]
    fn ties_take_turns() {
        let mut turn = 0;
        let picks: Vec<_> = (0..4).map(|_| pick(&[5, 9, 9, 1, 9], &mut turn)).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(4), Some(1)]);
        assert_eq!(pick(&[], &mut turn), None);
        assert_eq!(pick(&[3, 7], &mut turn), Some(1));
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize(&[0, 5, 10], false), [0, 50, 100]);
        assert_eq!(normalize(&[0, 5, 10], true), [100, 50, 0]);
        assert_eq!(normalize(&[0, 0], true), [100, 100]);
        assert_eq!(normalize(&[0, 0], false), [0, 0]);
    }
}
