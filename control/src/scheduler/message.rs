//! The text of a scheduling failure, as upstream's `FitError` writes it, so people and
//! tools reading `kubectl describe pod` see what they know.

use std::collections::BTreeMap;

/// Upstream's text when the cluster has no nodes at all.
pub const NO_NODES: &str = "no nodes available to schedule pods";

/// "0/N nodes are available: <count> <reason>, ...." from each rejected node's reasons.
/// As upstream, the "<count> <reason>" strings are sorted as strings (so "1 node(s)..."
/// comes before "2 Insufficient cpu"). There is no preemption, hence no "preemption:" part.
pub fn unschedulable(total_nodes: usize, rejections: &[Vec<String>]) -> String {
    if total_nodes == 0 {
        return NO_NODES.to_string();
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in rejections.iter().flatten() {
        *histogram.entry(reason).or_default() += 1;
    }
    let mut parts: Vec<String> = histogram
        .into_iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    parts.sort();
    let mut text = format!("0/{total_nodes} nodes are available:");
    if !parts.is_empty() {
        text.push(' ');
        text.push_str(&parts.join(", "));
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(reasons: &[&str]) -> Vec<String> {
        reasons.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_reasons_and_sorts_them_as_upstream() {
        let taint = "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }";
        let rejections = [r(&["Insufficient cpu"]), r(&[taint]), r(&["Insufficient cpu"])];
        assert_eq!(
            unschedulable(3, &rejections),
            format!("0/3 nodes are available: 1 {taint}, 2 Insufficient cpu.")
        );
    }

    #[test]
    fn one_node_may_give_several_reasons() {
        let rejections = [
            r(&["Insufficient cpu", "Insufficient memory"]),
            r(&["Insufficient cpu"]),
            r(&["Insufficient cpu"]),
        ];
        assert_eq!(
            unschedulable(3, &rejections),
            "0/3 nodes are available: 1 Insufficient memory, 3 Insufficient cpu."
        );
    }

    #[test]
    fn no_nodes() {
        assert_eq!(unschedulable(0, &[]), NO_NODES);
    }
}
