//! What a terminating namespace's status says after one pass over its content (pure): the
//! conditions upstream's namespace controller sets, and whether the namespace may be
//! finalized.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::NamespaceCondition, apimachinery::pkg::apis::meta::v1::Time};

/// The finalizer in `spec.finalizers` this controller removes once the namespace is empty.
pub const FINALIZER: &str = "kubernetes";

/// One pass's findings.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    /// Discovery failed (its message); what was discovered was still deleted.
    pub discovery_error: Option<String>,
    /// Failed deletions and lists, one message each.
    pub deletion_errors: Vec<String>,
    /// Objects still there, by group-resource (`pods`, `deployments.apps`).
    pub remaining: BTreeMap<String, usize>,
    /// Finalizers still on the remaining objects, with how many objects carry each.
    pub finalizers: BTreeMap<String, usize>,
}

impl Pass {
    /// Empty, and known to be: the `kubernetes` finalizer may go.
    pub fn done(&self) -> bool {
        self.discovery_error.is_none() && self.deletion_errors.is_empty() && self.remaining.is_empty()
    }
}

fn condition(kind: &str, failed: bool, reason: (&str, &str), message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: kind.into(),
        status: if failed { "True" } else { "False" }.into(),
        reason: Some(if failed { reason.1 } else { reason.0 }.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// The deletion conditions for `pass`, merged into `current` (other conditions kept, a
/// condition's transition time kept while its status does not change).
pub fn conditions(current: &[NamespaceCondition], pass: &Pass, now: Timestamp) -> Vec<NamespaceCondition> {
    let listing = |m: &BTreeMap<String, usize>, fmt: &dyn Fn(&str, usize) -> String| {
        m.iter().map(|(k, n)| fmt(k, *n)).collect::<Vec<_>>().join(", ")
    };
    let fresh = [
        condition(
            "NamespaceDeletionDiscoveryFailure",
            pass.discovery_error.is_some(),
            ("ResourcesDiscovered", "DiscoveryFailed"),
            pass.discovery_error
                .clone()
                .unwrap_or_else(|| "All resources successfully discovered".into()),
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            ("ParsedGroupVersions", "GroupVersionParsingFailed"),
            "All legacy kube types successfully parsed".into(),
        ),
        condition(
            "NamespaceDeletionContentFailure",
            !pass.deletion_errors.is_empty(),
            ("ContentDeleted", "ContentDeletionFailed"),
            if pass.deletion_errors.is_empty() {
                "All content successfully deleted, may be waiting on finalization".into()
            } else {
                pass.deletion_errors.join(", ")
            },
        ),
        condition(
            "NamespaceContentRemaining",
            !pass.remaining.is_empty(),
            ("ContentRemoved", "SomeResourcesRemain"),
            if pass.remaining.is_empty() {
                "All content successfully removed".into()
            } else {
                format!(
                    "Some resources are remaining: {}",
                    listing(&pass.remaining, &|r, n| format!("{r} has {n} resource instances"))
                )
            },
        ),
        condition(
            "NamespaceFinalizersRemaining",
            !pass.finalizers.is_empty(),
            ("ContentHasNoFinalizers", "SomeFinalizersRemain"),
            if pass.finalizers.is_empty() {
                "All content-preserving finalizers finished".into()
            } else {
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    listing(&pass.finalizers, &|f, n| format!("{f} in {n} resource instances"))
                )
            },
        ),
    ];
    let mut out: Vec<NamespaceCondition> = current
        .iter()
        .filter(|c| !fresh.iter().any(|f| f.type_ == c.type_))
        .cloned()
        .collect();
    for mut c in fresh {
        let before = current.iter().find(|o| o.type_ == c.type_);
        c.last_transition_time = match before {
            Some(b) if b.status == c.status => b.last_transition_time.clone(),
            _ => Some(Time(now)),
        };
        out.push(c);
    }
    out
}

/// `spec.finalizers` without ours.
pub fn without_ours(finalizers: &[String]) -> Vec<String> {
    finalizers.iter().filter(|f| *f != FINALIZER).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn find<'a>(cs: &'a [NamespaceCondition], kind: &str) -> &'a NamespaceCondition {
        cs.iter().find(|c| c.type_ == kind).expect(kind)
    }

    #[test]
    fn remaining_content_and_finalizers_are_named_as_upstream() {
        let pass = Pass {
            remaining: BTreeMap::from([("pods".into(), 2), ("widgets.example.com".into(), 1)]),
            finalizers: BTreeMap::from([("example.com/hold".into(), 1)]),
            ..Default::default()
        };
        assert!(!pass.done());
        let cs = conditions(&[], &pass, at(1));
        assert_eq!(cs.len(), 5);
        let remaining = find(&cs, "NamespaceContentRemaining");
        assert_eq!(
            (remaining.status.as_str(), remaining.reason.as_deref()),
            ("True", Some("SomeResourcesRemain"))
        );
        assert_eq!(
            remaining.message.as_deref(),
            Some(
                "Some resources are remaining: pods has 2 resource instances, widgets.example.com has 1 resource instances"
            )
        );
        let fins = find(&cs, "NamespaceFinalizersRemaining");
        assert_eq!(
            fins.message.as_deref(),
            Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
        );
        let deleted = find(&cs, "NamespaceDeletionContentFailure");
        assert_eq!(
            (deleted.status.as_str(), deleted.reason.as_deref()),
            ("False", Some("ContentDeleted"))
        );
    }

    #[test]
    fn failures_are_reported_and_hold_the_namespace() {
        let pass = Pass {
            discovery_error: Some(
                "metrics.k8s.io/v1beta1: the server is currently unable to handle the request".into(),
            ),
            deletion_errors: vec!["deleting configmaps: forbidden".into()],
            ..Default::default()
        };
        assert!(!pass.done());
        let cs = conditions(&[], &pass, at(1));
        let discovery = find(&cs, "NamespaceDeletionDiscoveryFailure");
        assert_eq!(
            (discovery.status.as_str(), discovery.reason.as_deref()),
            ("True", Some("DiscoveryFailed"))
        );
        let content = find(&cs, "NamespaceDeletionContentFailure");
        assert_eq!(content.reason.as_deref(), Some("ContentDeletionFailed"));
        assert_eq!(content.message.as_deref(), Some("deleting configmaps: forbidden"));
    }

    #[test]
    fn an_empty_namespace_is_done_and_transition_times_stay_while_status_does() {
        let pass = Pass::default();
        assert!(pass.done());
        let first = conditions(
            &[],
            &Pass {
                remaining: BTreeMap::from([("pods".into(), 1)]),
                ..Default::default()
            },
            at(1),
        );
        let second = conditions(&first, &pass, at(5));
        assert_eq!(
            find(&second, "NamespaceContentRemaining").last_transition_time,
            Some(Time(at(5)))
        );
        assert_eq!(
            find(&second, "NamespaceDeletionDiscoveryFailure").last_transition_time,
            Some(Time(at(1)))
        );
        assert_eq!(
            find(&second, "NamespaceContentRemaining").message.as_deref(),
            Some("All content successfully removed")
        );
    }

    #[test]
    fn only_our_finalizer_is_removed() {
        let f = vec!["kubernetes".to_owned(), "example.com/other".to_owned()];
        assert_eq!(without_ours(&f), vec!["example.com/other".to_owned()]);
    }
}
