//! The arithmetic of a PodDisruptionBudget, as upstream's disruption controller does it:
//! how many pods are expected, how many must stay healthy, and so how many may go.
//! Pure: the controller gathers the pods and the controllers' scale, this decides.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// How long an eviction's entry in `status.disruptedPods` keeps its pod out of the healthy
/// count; a pod still there after this was not deleted after all (upstream's
/// `DeletionTimeout`).
pub const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);

/// `minAvailable` or `maxUnavailable`: a count or a percentage of the expected pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i32),
    Percent(i32),
}

impl IntOrPercent {
    /// Reads the value as upstream's intstr does; the error says why it is not one.
    pub fn parse(v: &IntOrString) -> Result<Self, String> {
        match v {
            IntOrString::Int(n) => Ok(Self::Int(*n)),
            IntOrString::String(s) => s
                .strip_suffix('%')
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse().ok())
                .map(Self::Percent)
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}")),
        }
    }

    /// The value against `total` pods; a percentage rounds up, as upstream's
    /// `GetScaledValueFromIntOrPercent(..., roundUp: true)` (10% of 11 is 2).
    pub fn scaled(self, total: i32) -> i32 {
        match self {
            Self::Int(n) => n,
            Self::Percent(p) => {
                let product = i64::from(p) * i64::from(total.max(0));
                i32::try_from((product + 99) / 100).unwrap_or(i32::MAX)
            }
        }
    }

    pub fn is_percent(self) -> bool {
        matches!(self, Self::Percent(_))
    }
}

/// What a budget's spec asks for; at most one of the two is set (validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    MinAvailable(IntOrPercent),
    MaxUnavailable(IntOrPercent),
    /// Neither: upstream allows it and then protects nothing and allows nothing.
    Unset,
}

impl Rule {
    /// Whether the expected count comes from the pods' controllers' scale (percentages
    /// and maxUnavailable) rather than from the number of matching pods.
    pub fn needs_scale(self) -> bool {
        match self {
            Self::MinAvailable(v) => v.is_percent(),
            Self::MaxUnavailable(_) => true,
            Self::Unset => false,
        }
    }

    /// (expectedPods, desiredHealthy) for `pods` matching pods whose controllers together
    /// ask for `scale` replicas (only read when [`Rule::needs_scale`]).
    pub fn expected_and_desired(self, pods: i32, scale: i32) -> (i32, i32) {
        match self {
            Self::MinAvailable(IntOrPercent::Int(n)) => (pods, n),
            Self::MinAvailable(p) => (scale, p.scaled(scale)),
            Self::MaxUnavailable(v) => (scale, (scale - v.scaled(scale)).max(0)),
            Self::Unset => (0, 0),
        }
    }
}

/// `disruptionsAllowed`: never negative, and zero while the budget expects no pods, so a
/// budget whose first pods appear before its status is computed protects them.
pub fn disruptions_allowed(current_healthy: i32, desired_healthy: i32, expected: i32) -> i32 {
    if expected <= 0 {
        return 0;
    }
    (current_healthy - desired_healthy).max(0)
}

/// One matching pod, as the arithmetic sees it.
#[derive(Debug, Clone)]
pub struct PodView {
    pub name: String,
    pub deleting: bool,
    pub ready: bool,
}

/// The entries of `status.disruptedPods` still pending at `now` (their pod exists, is not
/// being deleted yet, and the eviction is younger than [`DELETION_TIMEOUT`]), and when the
/// earliest of them expires, so the budget is looked at again then.
pub fn pending_disruptions(
    recorded: &BTreeMap<String, Timestamp>,
    pods: &[PodView],
    now: Timestamp,
) -> (BTreeMap<String, Timestamp>, Option<Timestamp>) {
    let mut pending = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    for pod in pods.iter().filter(|p| !p.deleting) {
        let Some(at) = recorded.get(&pod.name) else { continue };
        let expires = at.checked_add(DELETION_TIMEOUT).unwrap_or(Timestamp::MAX);
        if expires > now {
            pending.insert(pod.name.clone(), *at);
            recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
        }
    }
    (pending, recheck)
}

/// Ready pods that are neither being deleted nor about to be (a pending eviction).
pub fn current_healthy(pods: &[PodView], pending: &BTreeMap<String, Timestamp>) -> i32 {
    let n = pods
        .iter()
        .filter(|p| !p.deleting && p.ready && !pending.contains_key(&p.name))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrPercent {
        IntOrPercent::parse(&IntOrString::String(s.into())).expect("a percentage")
    }

    #[test]
    fn percentages_round_up_as_upstream() {
        assert_eq!(pct("10%").scaled(11), 2);
        assert_eq!(pct("50%").scaled(3), 2);
        assert_eq!(pct("50%").scaled(4), 2);
        assert_eq!(pct("1%").scaled(1), 1);
        assert_eq!(pct("0%").scaled(7), 0);
        assert_eq!(pct("100%").scaled(5), 5);
        assert_eq!(pct("33%").scaled(0), 0);
        assert_eq!(IntOrPercent::Int(4).scaled(2), 4);
    }

    #[test]
    fn malformed_percentages_are_refused() {
        for bad in ["10", "%", "ten%", "-5%", "5.5%", ""] {
            assert!(
                IntOrPercent::parse(&IntOrString::String(bad.into())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expected_and_desired_follow_the_rule() {
        use IntOrPercent::*;
        // An integer minAvailable counts the matching pods, not the controllers' scale.
        assert_eq!(Rule::MinAvailable(Int(2)).expected_and_desired(3, 10), (3, 2));
        // 50% of a scale of 3 rounds up to 2 that must stay.
        assert_eq!(Rule::MinAvailable(Percent(50)).expected_and_desired(2, 3), (3, 2));
        // maxUnavailable 25% of 5 rounds up to 2 that may go: 3 must stay.
        assert_eq!(Rule::MaxUnavailable(Percent(25)).expected_and_desired(5, 5), (5, 3));
        assert_eq!(Rule::MaxUnavailable(Int(1)).expected_and_desired(4, 3), (3, 2));
        // More unavailable than expected never makes desired negative.
        assert_eq!(Rule::MaxUnavailable(Int(9)).expected_and_desired(4, 3), (3, 0));
        assert_eq!(Rule::Unset.expected_and_desired(4, 3), (0, 0));
        assert!(Rule::MaxUnavailable(Int(1)).needs_scale());
        assert!(!Rule::MinAvailable(Int(1)).needs_scale());
    }

    #[test]
    fn disruptions_are_never_negative_and_need_expected_pods() {
        assert_eq!(disruptions_allowed(3, 2, 3), 1);
        assert_eq!(disruptions_allowed(1, 2, 3), 0);
        assert_eq!(disruptions_allowed(3, 0, 0), 0);
    }

    #[test]
    fn evicted_pods_stop_counting_until_their_entry_expires() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let pod = |name: &str, deleting: bool| PodView {
            name: name.into(),
            deleting,
            ready: true,
        };
        let pods = vec![pod("a", false), pod("b", false), pod("c", true), pod("d", false)];
        let recorded = BTreeMap::from([
            ("a".to_owned(), now - SignedDuration::from_secs(30)),
            ("b".to_owned(), now - SignedDuration::from_secs(121)),
            ("c".to_owned(), now - SignedDuration::from_secs(10)),
            ("gone".to_owned(), now),
        ]);
        let (pending, recheck) = pending_disruptions(&recorded, &pods, now);
        // b expired (never deleted), c is being deleted, "gone" no longer exists.
        assert_eq!(pending.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(recheck, Some(now + SignedDuration::from_secs(90)));
        // a is pending, c deleting: b and d count.
        assert_eq!(current_healthy(&pods, &pending), 2);
    }
}
