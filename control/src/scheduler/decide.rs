//! One scheduling decision: filter every node, score the feasible ones, pick one.

use k8s_openapi::api::core::v1::Pod;

use super::{filter, message, node_info::NodeInfo, score};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind the Pod to this node.
    Bind(String),
    /// No node fits; upstream's message says why.
    Unschedulable(String),
}

/// `turn` breaks ties between equally good nodes (see [`score::pick`]).
pub fn decide(pod: &Pod, nodes: &[NodeInfo], turn: &mut u64) -> Decision {
    decide_with(pod, nodes, turn, &|_| Vec::new())
}

/// [`decide`] with one more filter after the built-in ones (the volume binding filter,
/// which needs claims and volumes the node infos do not carry).
pub fn decide_with(
    pod: &Pod,
    nodes: &[NodeInfo],
    turn: &mut u64,
    extra: &dyn Fn(&NodeInfo) -> Vec<String>,
) -> Decision {
    let mut feasible = Vec::new();
    let mut rejections = Vec::new();
    for node in nodes {
        match filter::filter(pod, node, nodes).and_then(|()| {
            let reasons = extra(node);
            if reasons.is_empty() { Ok(()) } else { Err(reasons) }
        }) {
            Ok(()) => feasible.push(node),
            Err(reasons) => rejections.push(reasons),
        }
    }
    let scores = score::scores(pod, &feasible);
    match score::pick(&scores, turn) {
        Some(i) => Decision::Bind(feasible[i].name().to_string()),
        None => Decision::Unschedulable(message::unschedulable(nodes.len(), &rejections)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::scheduler::filter::tests::{node, pod};

    #[test]
    fn equal_nodes_take_turns_and_a_pod_too_big_is_explained() {
        let nodes = [
            node("a", "2", "4Gi", json!({})),
            node("b", "2", "4Gi", json!({})),
            node("c", "2", "4Gi", json!({})),
        ];
        let infos: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo::new(n, vec![])).collect();
        let mut turn = 0;
        let picks: Vec<Decision> = (0..3)
            .map(|_| decide(&pod("p", "1", json!({})), &infos, &mut turn))
            .collect();
        assert_eq!(picks, ["a", "b", "c"].map(|n| Decision::Bind(n.into())));
        assert_eq!(
            decide(&pod("big", "3", json!({})), &infos, &mut turn),
            Decision::Unschedulable("0/3 nodes are available: 3 Insufficient cpu.".into())
        );
    }
}
