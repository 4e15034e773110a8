//! The PodSecurity admission plugin: namespaces choose a Pod Security Standard per mode
//! with the labels `pod-security.kubernetes.io/{enforce,audit,warn}` (and `-version`).
//! Pods that break the `enforce` level are refused; `warn` adds `Warning` headers. Pod
//! templates of workloads are never refused, as upstream: they get warnings for both the
//! enforce and warn levels. Audit annotations are not written (there is no audit log).
//! Relabelling a namespace warns about its existing pods that break the new enforce level.
//! No namespaces, users or runtime classes are exempt (upstream's defaults).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    Attributes, Operation,
    pss::{self, Level, Violation},
};
use crate::apiserver::{
    App,
    filter::ObjectFilter,
    meta,
    registry::Scope,
    resources,
    status::{ApiError, Cause},
};

const PREFIX: &str = "pod-security.kubernetes.io/";
const MODES: [&str; 3] = ["enforce", "audit", "warn"];

/// One mode's level and version, as the namespace's labels give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModePolicy {
    pub level: Level,
    pub version: String,
}

impl ModePolicy {
    /// `restricted:latest`, as messages name a policy.
    pub fn label(&self) -> String {
        format!("{}:{}", self.level.as_str(), self.version)
    }
}

/// The policy of one mode from namespace labels; a missing or unreadable label means
/// privileged (the label validation below refuses bad values on write).
pub fn mode_policy(labels: &Value, mode: &str) -> ModePolicy {
    let level = labels[format!("{PREFIX}{mode}")]
        .as_str()
        .and_then(Level::parse)
        .unwrap_or(Level::Privileged);
    let version = labels[format!("{PREFIX}{mode}-version")]
        .as_str()
        .filter(|v| valid_version(v))
        .unwrap_or("latest")
        .to_owned();
    ModePolicy { level, version }
}

fn valid_version(v: &str) -> bool {
    v == "latest"
        || v.strip_prefix("v1.")
            .is_some_and(|minor| !minor.is_empty() && minor.chars().all(|c| c.is_ascii_digit()))
}

/// The pod metadata and spec of a pod or of a workload's template.
fn pod_parts<'a>(group: &str, kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value, bool)> {
    match (group, kind) {
        ("", "Pod") => Some((&obj["metadata"], &obj["spec"], false)),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
        | ("batch", "Job") => Some((
            &obj["spec"]["template"]["metadata"],
            &obj["spec"]["template"]["spec"],
            true,
        )),
        ("batch", "CronJob") => {
            let t = &obj["spec"]["jobTemplate"]["spec"]["template"];
            Some((&t["metadata"], &t["spec"], true))
        }
        _ => None,
    }
}

pub async fn validate(app: &App, attrs: &Attributes<'_>, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    evaluate(app, attrs, obj, old).await.map(|_| ())
}

/// Validates and returns the warnings for the response.
pub async fn evaluate(
    app: &App,
    attrs: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let req = attrs.req;
    let rt = req.resource;
    if req.subresource.is_some() || !matches!(attrs.operation, Operation::Create | Operation::Update) {
        return Ok(vec![]);
    }
    if rt.group.is_empty() && rt.kind == "Namespace" {
        return namespace(app, obj, old).await;
    }
    let Some((metadata, spec, template)) = pod_parts(rt.group, rt.kind, obj) else {
        return Ok(vec![]);
    };
    // Updates that leave the pod spec alone (labels, finalizers, status) are not checked.
    if let Some(old) = old
        && pod_parts(rt.group, rt.kind, old)
            .is_some_and(|(m, s, _)| s == spec && m["annotations"] == metadata["annotations"])
    {
        return Ok(vec![]);
    }
    let Some(ns) = req.namespace.as_deref() else {
        return Ok(vec![]);
    };
    let Some(labels) = namespace_labels(app, ns).await? else {
        return Ok(vec![]);
    };
    let name = meta::name(obj).unwrap_or_default();
    let enforce = mode_policy(&labels, "enforce");
    let warn = mode_policy(&labels, "warn");
    let mut warnings = Vec::new();
    let enforced = pss::check(enforce.level, metadata, spec);
    if !enforced.is_empty() {
        if !template {
            return Err(ApiError::forbidden(format!(
                "{} {name:?} is forbidden: violates PodSecurity {:?}: {}",
                rt.group_resource(),
                enforce.label(),
                pss::describe(&enforced)
            )));
        }
        warnings.push(would_violate(&enforce, &enforced));
    }
    // A template already warned about at the enforce level is not warned about twice.
    if !(template && warn == enforce) {
        let warned = pss::check(warn.level, metadata, spec);
        if !warned.is_empty() {
            warnings.push(would_violate(&warn, &warned));
        }
    }
    Ok(warnings)
}

fn would_violate(policy: &ModePolicy, violations: &[Violation]) -> String {
    format!(
        "would violate PodSecurity {:?}: {}",
        policy.label(),
        pss::describe(violations)
    )
}

/// The namespace's labels, or None when it does not exist (the write fails elsewhere).
async fn namespace_labels(app: &App, ns: &str) -> Result<Option<Value>, ApiError> {
    let namespaces = resources::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces"))?;
    match app.registry.get(namespaces, None, ns).await {
        Ok(obj) => Ok(Some(obj["metadata"]["labels"].clone())),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Namespace writes: the labels must name real levels and versions (422), and a new
/// enforce level is tried on the pods already there (warnings, never a refusal).
async fn namespace(app: &App, obj: &Value, old: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let labels = &obj["metadata"]["labels"];
    let name = meta::name(obj).unwrap_or_default();
    let mut causes = Vec::new();
    for mode in MODES {
        let key = format!("{PREFIX}{mode}");
        if let Some(v) = labels[&key].as_str()
            && Level::parse(v).is_none()
        {
            causes.push(Cause::not_supported(
                format!("metadata.labels[{key}]"),
                format!("Unsupported value: {v:?}: supported values: \"privileged\", \"baseline\", \"restricted\""),
            ));
        }
        let key = format!("{key}-version");
        if let Some(v) = labels[&key].as_str()
            && !valid_version(v)
        {
            causes.push(Cause::invalid(
                format!("metadata.labels[{key}]"),
                format!("Invalid value: {v:?}: must be \"latest\" or \"v1.x\""),
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Namespace", "", name, causes));
    }
    let Some(old) = old else {
        return Ok(vec![]);
    };
    let new_policy = mode_policy(labels, "enforce");
    if new_policy == mode_policy(&old["metadata"]["labels"], "enforce") || new_policy.level == Level::Privileged {
        return Ok(vec![]);
    }
    existing_pod_warnings(app, name, &new_policy).await
}

/// Upstream's summary: one line for the namespace, then one per distinct set of failed
/// checks, naming the first pod and how many others share it.
async fn existing_pod_warnings(app: &App, ns: &str, policy: &ModePolicy) -> Result<Vec<String>, ApiError> {
    let pods_rt = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods"))?;
    let filter = ObjectFilter::from_query(pods_rt, None, None)?;
    let scope = Scope {
        rt: pods_rt,
        namespace: Some(ns),
        filter: &filter,
    };
    let pods = app.registry.list(&scope, None, None, None, false).await?.items;
    let mut groups: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut order = Vec::new();
    for pod in &pods {
        let violations = pss::check(policy.level, &pod["metadata"], &pod["spec"]);
        if violations.is_empty() {
            continue;
        }
        let reasons = violations
            .iter()
            .map(|v| v.reason.clone())
            .collect::<Vec<_>>()
            .join(", ");
        let entry = groups.entry(reasons.clone()).or_insert_with(|| {
            order.push(reasons.clone());
            (meta::name(pod).unwrap_or_default().to_owned(), 0)
        });
        entry.1 += 1;
    }
    if groups.is_empty() {
        return Ok(vec![]);
    }
    let mut out = vec![format!(
        "existing pods in namespace {ns:?} violate the new PodSecurity enforce level {:?}",
        policy.label()
    )];
    for reasons in order {
        let (first, count) = &groups[&reasons];
        out.push(match count {
            1 => format!("{first}: {reasons}"),
            n => format!(
                "{first} (and {} other {}): {reasons}",
                n - 1,
                if n - 1 == 1 { "pod" } else { "pods" }
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn labels_choose_level_and_version() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/warn-version": "v1.33"});
        assert_eq!(mode_policy(&labels, "enforce").label(), "baseline:latest");
        assert_eq!(mode_policy(&labels, "warn").label(), "restricted:v1.33");
        assert_eq!(mode_policy(&labels, "audit").level, Level::Privileged);
        assert!(!valid_version("1.33") && !valid_version("v1.") && valid_version("v1.27"));
    }

    #[test]
    fn templates_are_found_in_every_workload() {
        let t = json!({"spec": {"template": {"spec": {"hostNetwork": true}}}});
        assert!(pod_parts("apps", "Deployment", &t).is_some_and(|(_, s, tpl)| s["hostNetwork"] == true && tpl));
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"hostPID": true}}}}}});
        assert!(pod_parts("batch", "CronJob", &cj).is_some_and(|(_, s, _)| s["hostPID"] == true));
        assert!(pod_parts("", "ConfigMap", &t).is_none());
    }
}
