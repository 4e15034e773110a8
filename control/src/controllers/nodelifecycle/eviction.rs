//! What happens to the pods of a node that is not ready (pure): they stop being Ready at
//! once, so EndpointSlices drop them (upstream's `MarkPodsNotReady`), and each is evicted
//! when its tolerations of the node's NoExecute taints run out (upstream's taint manager).

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::core::v1::{Pod, PodCondition, Taint, Toleration},
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::scheduler::filter::tolerates;

/// When a pod on a NoExecute-tainted node goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Every NoExecute taint is tolerated for ever (or there is none).
    Never,
    At(Timestamp),
}

/// The pod's conditions with Ready turned False, or None when it is not Ready now (or
/// already finished, when readiness no longer matters).
pub fn not_ready_conditions(pod: &Pod, now: Timestamp) -> Option<Vec<PodCondition>> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let ready = conditions
        .iter_mut()
        .find(|c| c.type_ == "Ready" && c.status != "False")?;
    ready.status = "False".into();
    ready.last_transition_time = Some(Time(now));
    Some(conditions)
}

/// When `pod` must leave a node with `taints`: at once for a NoExecute taint it does not
/// tolerate; for tolerated ones, when the shortest `tolerationSeconds` has passed since the
/// taint was added (a taint without `timeAdded` counts from `now`).
pub fn eviction(pod: &Pod, taints: &[Taint], now: Timestamp) -> Eviction {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        // As upstream, the first toleration that matches the taint decides.
        let Some(toleration) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Eviction::At(now);
        };
        let Some(seconds) = toleration.toleration_seconds else {
            continue;
        };
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = added
            .checked_add(SignedDuration::from_secs(seconds.max(0)))
            .unwrap_or(added);
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due.map_or(Eviction::Never, Eviction::At)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn pod(tolerations: serde_json::Value, ready: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}], "tolerations": tolerations},
            "status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": ready},
            ]},
        }))
        .expect("pod")
    }

    fn unreachable(added: i64) -> Taint {
        Taint {
            key: super::super::health::TAINT_UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(at(added))),
        }
    }

    #[test]
    fn a_ready_pod_turns_not_ready_once() {
        let p = pod(json!([]), "True");
        let conds = not_ready_conditions(&p, at(5)).expect("changes");
        assert_eq!(conds[1].status, "False");
        assert_eq!(conds[1].last_transition_time, Some(Time(at(5))));
        assert_eq!(conds[0].status, "True", "other conditions stay");
        assert_eq!(not_ready_conditions(&pod(json!([]), "False"), at(5)), None);
        let mut done = pod(json!([]), "True");
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        assert_eq!(not_ready_conditions(&done, at(5)), None);
    }

    #[test]
    fn an_untolerated_taint_evicts_at_once() {
        let p = pod(
            json!([{"key": "other", "operator": "Exists", "effect": "NoExecute"}]),
            "True",
        );
        assert_eq!(eviction(&p, &[unreachable(0)], at(9)), Eviction::At(at(9)));
    }

    #[test]
    fn toleration_seconds_count_from_the_taint() {
        let p = pod(
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
            "True",
        );
        assert_eq!(eviction(&p, &[unreachable(10)], at(20)), Eviction::At(at(310)));
        // A NoSchedule taint never evicts.
        let mut no_schedule = unreachable(10);
        no_schedule.effect = "NoSchedule".into();
        assert_eq!(eviction(&p, &[no_schedule], at(20)), Eviction::Never);
    }

    #[test]
    fn a_toleration_without_seconds_keeps_the_pod_for_ever() {
        let p = pod(json!([{"operator": "Exists"}]), "True");
        assert_eq!(eviction(&p, &[unreachable(10)], at(20)), Eviction::Never);
    }

    #[test]
    fn the_shortest_toleration_wins_and_negative_means_now() {
        let mut not_ready = unreachable(0);
        not_ready.key = super::super::health::TAINT_NOT_READY.into();
        let p = pod(
            json!([
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": -5},
            ]),
            "True",
        );
        assert_eq!(eviction(&p, &[unreachable(0), not_ready], at(1)), Eviction::At(at(0)));
    }
}
