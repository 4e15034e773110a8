//! Whether a node is still heard from, and what its status and taints become when it is
//! not (upstream's `monitorNodeHealth` and its tainting passes), as pure functions of the
//! Node, its Lease and the time.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, NodeCondition, Taint},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The conditions the kubelet posts and the controller turns `Unknown` (upstream's list).
pub const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
pub const MESSAGE_UNKNOWN: &str = "Kubelet stopped posting node status.";
pub const REASON_NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
pub const MESSAGE_NEVER_UPDATED: &str = "Kubelet never posted node status.";

/// The writes one node needs; `None` where nothing changes.
#[derive(Debug, Default, PartialEq)]
pub struct NodeUpdate {
    pub conditions: Option<Vec<NodeCondition>>,
    pub taints: Option<Vec<Taint>>,
}

/// The Ready condition's status (`True`, `False`, `Unknown`), if the node has one.
pub fn ready_status(conditions: &[NodeCondition]) -> Option<&str> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// The last sign of life: the newest of the Lease's renewal, the Ready condition's
/// heartbeat and, for a node that never posted either, its creation.
pub fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
    let heartbeat = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    [renewed, heartbeat, created].into_iter().flatten().max()
}

/// What `node` should become at `now` when it must be heard from every `grace`.
pub fn assess(node: &Node, lease: Option<&Lease>, now: Timestamp, grace: SignedDuration) -> NodeUpdate {
    let current = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let silent = last_heard(node, lease).is_none_or(|t| now.duration_since(t) > grace);
    let conditions = if silent {
        unknown_conditions(&current, now)
    } else {
        current.clone()
    };
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    // A node that has not posted its first status yet is left alone until it is late.
    let wanted_taints = match ready_status(&conditions) {
        Some(ready) => taints_for(&taints, ready, now),
        None => taints.clone(),
    };
    NodeUpdate {
        conditions: (conditions != current).then_some(conditions),
        taints: (wanted_taints != taints).then_some(wanted_taints),
    }
}

/// The kubelet's conditions set to `Unknown` (the ones it never posted added so), keeping
/// their heartbeat, and any other condition as it is.
fn unknown_conditions(current: &[NodeCondition], now: Timestamp) -> Vec<NodeCondition> {
    let mut out = current.to_vec();
    for kind in KUBELET_CONDITIONS {
        match out.iter_mut().find(|c| c.type_ == *kind) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some(REASON_UNKNOWN.into());
                c.message = Some(MESSAGE_UNKNOWN.into());
                c.last_transition_time = Some(Time(now));
            }
            None => out.push(NodeCondition {
                type_: (*kind).into(),
                status: "Unknown".into(),
                reason: Some(REASON_NEVER_UPDATED.into()),
                message: Some(MESSAGE_NEVER_UPDATED.into()),
                last_heartbeat_time: None,
                last_transition_time: Some(Time(now)),
            }),
        }
    }
    out
}

/// `taints` with the not-ready/unreachable ones (NoSchedule and NoExecute) as the Ready
/// status calls for: none when True, `not-ready` when False, `unreachable` when Unknown.
/// A taint that stays keeps its `timeAdded`, which eviction counts from.
pub fn taints_for(taints: &[Taint], ready: &str, now: Timestamp) -> Vec<Taint> {
    let wanted_key = match ready {
        "True" => None,
        "False" => Some(TAINT_NOT_READY),
        _ => Some(TAINT_UNREACHABLE),
    };
    let managed = |t: &Taint| {
        matches!(t.key.as_str(), TAINT_UNREACHABLE | TAINT_NOT_READY)
            && matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
    };
    let mut out: Vec<Taint> = taints
        .iter()
        .filter(|t| !managed(t) || Some(t.key.as_str()) == wanted_key)
        .cloned()
        .collect();
    if let Some(key) = wanted_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    // Upstream stamps only NoExecute taints (eviction counts from it).
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime};

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn node(ready: &str, heartbeat: i64, taints: Vec<Taint>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.creation_timestamp = Some(Time(at(0)));
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(
                KUBELET_CONDITIONS
                    .iter()
                    .map(|k| NodeCondition {
                        type_: (*k).into(),
                        status: if *k == "Ready" { ready.into() } else { "False".into() },
                        reason: Some("KubeletReady".into()),
                        message: Some("fine".into()),
                        last_heartbeat_time: Some(Time(at(heartbeat))),
                        last_transition_time: Some(Time(at(0))),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    fn lease(renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const GRACE: SignedDuration = SignedDuration::from_secs(40);

    #[test]
    fn a_renewed_lease_keeps_a_ready_node_as_it_is() {
        // The heartbeat is old, but the Lease was renewed 5 s ago.
        let n = node("True", 10, vec![]);
        assert_eq!(assess(&n, Some(&lease(100)), at(105), GRACE), NodeUpdate::default());
    }

    #[test]
    fn a_silent_node_turns_unknown_and_unreachable() {
        let n = node("True", 10, vec![]);
        let update = assess(&n, Some(&lease(20)), at(61), GRACE);
        let conds = update.conditions.expect("conditions change");
        for c in &conds {
            assert_eq!(c.status, "Unknown", "{}", c.type_);
            assert_eq!(c.reason.as_deref(), Some(REASON_UNKNOWN));
            assert_eq!(c.message.as_deref(), Some(MESSAGE_UNKNOWN));
            assert_eq!(c.last_transition_time, Some(Time(at(61))));
            assert_eq!(
                c.last_heartbeat_time,
                Some(Time(at(10))),
                "the heartbeat stays the kubelet's"
            );
        }
        let taints = update.taints.expect("taints change");
        let pairs: Vec<_> = taints.iter().map(|t| (t.key.as_str(), t.effect.as_str())).collect();
        assert_eq!(
            pairs,
            [(TAINT_UNREACHABLE, "NoSchedule"), (TAINT_UNREACHABLE, "NoExecute")]
        );
        assert_eq!(taints[1].time_added, Some(Time(at(61))));
        // Exactly at the grace period it is still heard from.
        assert_eq!(assess(&n, Some(&lease(20)), at(60), GRACE), NodeUpdate::default());
    }

    #[test]
    fn an_unknown_node_keeps_its_taint_time_and_is_not_rewritten() {
        let n = node("True", 10, vec![]);
        let first = assess(&n, None, at(100), GRACE);
        let mut after = n.clone();
        after.status.as_mut().expect("status").conditions = first.conditions;
        after.spec.as_mut().expect("spec").taints = first.taints;
        assert_eq!(assess(&after, None, at(200), GRACE), NodeUpdate::default());
    }

    #[test]
    fn a_node_that_comes_back_loses_the_taints_and_keeps_others() {
        let other = Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let stale = taints_for(std::slice::from_ref(&other), "Unknown", at(50));
        let n = node("True", 100, stale);
        let update = assess(&n, Some(&lease(100)), at(101), GRACE);
        assert_eq!(update.conditions, None);
        assert_eq!(update.taints, Some(vec![other]));
    }

    #[test]
    fn a_node_reporting_not_ready_gets_the_not_ready_taints() {
        let n = node("False", 100, taints_for(&[], "Unknown", at(50)));
        let update = assess(&n, Some(&lease(100)), at(101), GRACE);
        let keys: Vec<_> = update
            .taints
            .expect("taints change")
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                (TAINT_NOT_READY.to_owned(), "NoSchedule".to_owned()),
                (TAINT_NOT_READY.to_owned(), "NoExecute".to_owned())
            ]
        );
    }

    #[test]
    fn a_node_that_never_posted_status_gets_never_updated_conditions() {
        let mut n = Node::default();
        n.metadata.creation_timestamp = Some(Time(at(0)));
        let update = assess(&n, None, at(41), GRACE);
        let conds = update.conditions.expect("conditions");
        assert_eq!(conds.len(), KUBELET_CONDITIONS.len());
        assert!(conds.iter().all(|c| c.reason.as_deref() == Some(REASON_NEVER_UPDATED)));
        // A fresh node without a status yet is given its grace period.
        assert_eq!(assess(&n, None, at(30), GRACE), NodeUpdate::default());
    }
}
