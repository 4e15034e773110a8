//! The patch metadata strategic merge needs: which lists of the built-in types merge, and
//! by which key. Kubernetes reads it from the `patchStrategy`/`patchMergeKey` struct tags;
//! this is the subset clients actually patch. Lists not listed here are replaced whole,
//! which is also what every list of an unknown kind (a custom resource) gets.

/// How a list in a strategic merge patch combines with the current list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// The patch's list is the new list (no `patchStrategy`, or an atomic list).
    Replace,
    /// Objects are matched by this key and merged; unmatched patch elements are appended.
    MergeKey(&'static str),
    /// A set of scalars (`patchStrategy: merge` without a key): the union.
    MergePrimitives,
}

/// Kinds whose `status.conditions` carry `patchMergeKey: type`.
const CONDITIONS_BY_TYPE: &[&str] = &[
    "Pod",
    "Node",
    "Namespace",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "ReplicationController",
    "Job",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
];

/// Where a kind keeps its PodSpec.
fn pod_spec_at(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &["spec"],
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" | "ReplicationController" => {
            &["spec", "template", "spec"]
        }
        "PodTemplate" => &["template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => &[],
    }
}

/// `path` is the chain of field names from the object's root to the list; list elements
/// add no segment (`spec.containers.env` is the `env` of every container).
pub(crate) fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    // ObjectMeta is the same type at the root and in every template, whatever the kind.
    match path {
        [.., "metadata", "finalizers"] => return MergePrimitives,
        [.., "metadata", "ownerReferences"] => return MergeKey("uid"),
        _ => {}
    }
    let prefix = pod_spec_at(kind);
    if !prefix.is_empty()
        && let Some(s) = path.strip_prefix(prefix).and_then(pod_spec_list)
    {
        return s;
    }
    match (kind, path) {
        ("Service", ["spec", "ports"]) => MergeKey("port"),
        ("Node", ["status", "addresses"]) => MergeKey("type"),
        ("Node", ["spec", "podCIDRs"]) => MergePrimitives,
        ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeKey("ip"),
        ("Pod", ["status", "resourceClaimStatuses"]) => MergeKey("name"),
        ("ServiceAccount", ["secrets"]) => MergeKey("name"),
        (k, ["status", "conditions"]) if CONDITIONS_BY_TYPE.contains(&k) => MergeKey("type"),
        _ => Replace,
    }
}

/// How server-side apply tells the items of a list apart (`x-kubernetes-list-type`):
/// the same table as strategic merge, except where Kubernetes' list-map keys are wider
/// than the patch merge key (ports are keyed by number and protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole; owned as one field.
    Atomic,
    /// Scalars, each owned on its own (`v:<value>`).
    Set,
    /// Objects keyed by these fields (`k:{...}`).
    Map(&'static [&'static str]),
}

/// Key fields an item may omit, and the value Kubernetes defaults them to.
pub const LIST_MAP_KEY_DEFAULTS: &[(&str, &str)] = &[("protocol", "TCP")];

/// [`ListType`] of the list at `path` (field names from the root, as [`list_strategy`]).
pub fn list_type(kind: &str, path: &[&str]) -> ListType {
    match list_strategy(kind, path) {
        ListStrategy::Replace => ListType::Atomic,
        ListStrategy::MergePrimitives => ListType::Set,
        ListStrategy::MergeKey("containerPort") => ListType::Map(&["containerPort", "protocol"]),
        ListStrategy::MergeKey("port") => ListType::Map(&["port", "protocol"]),
        ListStrategy::MergeKey("topologyKey") => ListType::Map(&["topologyKey", "whenUnsatisfiable"]),
        ListStrategy::MergeKey(key) => ListType::Map(match key {
            "name" => &["name"],
            "type" => &["type"],
            "uid" => &["uid"],
            "ip" => &["ip"],
            "mountPath" => &["mountPath"],
            "devicePath" => &["devicePath"],
            _ => return ListType::Atomic,
        }),
    }
}

/// Whether the object at `path` is replaced whole by an apply and owned as one field
/// (`+mapType=atomic`/`+structType=atomic`): label selectors and node selectors.
pub fn map_is_atomic(kind: &str, path: &[&str]) -> bool {
    match path {
        [
            ..,
            "labelSelector" | "namespaceSelector" | "podSelector" | "nodeSelector",
        ] => true,
        ["spec", "selector"] => matches!(
            kind,
            "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" | "PodDisruptionBudget" | "Service"
        ),
        _ => false,
    }
}

fn pod_spec_list(path: &[&str]) -> Option<ListStrategy> {
    use ListStrategy::*;
    Some(match path {
        ["containers" | "initContainers" | "ephemeralContainers"] => MergeKey("name"),
        ["containers" | "initContainers" | "ephemeralContainers", field] => match *field {
            "ports" => MergeKey("containerPort"),
            "env" => MergeKey("name"),
            "volumeMounts" => MergeKey("mountPath"),
            "volumeDevices" => MergeKey("devicePath"),
            _ => return None,
        },
        ["volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"] => MergeKey("name"),
        ["hostAliases"] => MergeKey("ip"),
        ["topologySpreadConstraints"] => MergeKey("topologyKey"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{ListStrategy::*, *};

    #[test]
    fn table() {
        let cases: &[(&str, &str, ListStrategy)] = &[
            ("Pod", "spec.containers", MergeKey("name")),
            ("Pod", "spec.initContainers", MergeKey("name")),
            ("Pod", "spec.ephemeralContainers", MergeKey("name")),
            ("Pod", "spec.containers.ports", MergeKey("containerPort")),
            ("Pod", "spec.containers.env", MergeKey("name")),
            ("Pod", "spec.initContainers.volumeMounts", MergeKey("mountPath")),
            ("Pod", "spec.containers.volumeDevices", MergeKey("devicePath")),
            ("Pod", "spec.containers.args", Replace),
            ("Pod", "spec.containers.env.valueFrom", Replace),
            ("Pod", "spec.volumes", MergeKey("name")),
            ("Pod", "spec.imagePullSecrets", MergeKey("name")),
            ("Pod", "spec.tolerations", Replace),
            ("Pod", "spec.hostAliases", MergeKey("ip")),
            ("Pod", "status.conditions", MergeKey("type")),
            ("Pod", "status.podIPs", MergeKey("ip")),
            ("Pod", "status.containerStatuses", Replace),
            ("Pod", "metadata.finalizers", MergePrimitives),
            ("Pod", "metadata.ownerReferences", MergeKey("uid")),
            ("Pod", "spec.template.spec.containers", Replace),
            ("Deployment", "spec.template.spec.containers", MergeKey("name")),
            ("Deployment", "spec.template.spec.containers.env", MergeKey("name")),
            ("Deployment", "spec.template.metadata.finalizers", MergePrimitives),
            ("Deployment", "spec.containers", Replace),
            ("Deployment", "status.conditions", MergeKey("type")),
            ("ReplicaSet", "spec.template.spec.volumes", MergeKey("name")),
            ("DaemonSet", "spec.template.spec.containers", MergeKey("name")),
            ("StatefulSet", "spec.template.spec.initContainers", MergeKey("name")),
            ("Job", "spec.template.spec.containers", MergeKey("name")),
            (
                "CronJob",
                "spec.jobTemplate.spec.template.spec.containers",
                MergeKey("name"),
            ),
            ("PodTemplate", "template.spec.containers", MergeKey("name")),
            ("Service", "spec.ports", MergeKey("port")),
            ("Service", "spec.ipFamilies", Replace),
            ("Node", "status.conditions", MergeKey("type")),
            ("Node", "status.addresses", MergeKey("type")),
            ("Node", "spec.taints", Replace),
            ("Node", "spec.podCIDRs", MergePrimitives),
            ("ConfigMap", "metadata.finalizers", MergePrimitives),
            ("Widget", "metadata.ownerReferences", MergeKey("uid")),
            ("Widget", "status.conditions", Replace),
            ("Widget", "spec.template.spec.containers", Replace),
        ];
        for (kind, path, want) in cases {
            let path: Vec<&str> = path.split('.').collect();
            assert_eq!(list_strategy(kind, &path), *want, "{kind} {path:?}");
        }
    }

    #[test]
    fn apply_list_types_widen_port_keys() {
        let ports = ["spec", "template", "spec", "containers", "ports"];
        assert_eq!(
            list_type("Deployment", &ports),
            ListType::Map(&["containerPort", "protocol"])
        );
        assert_eq!(
            list_type("Service", &["spec", "ports"]),
            ListType::Map(&["port", "protocol"])
        );
        assert_eq!(list_type("Pod", &["spec", "containers"]), ListType::Map(&["name"]));
        assert_eq!(list_type("Pod", &["metadata", "finalizers"]), ListType::Set);
        assert_eq!(list_type("Pod", &["spec", "tolerations"]), ListType::Atomic);
        assert!(map_is_atomic("Deployment", &["spec", "selector"]));
        assert!(!map_is_atomic("Deployment", &["spec", "template"]));
    }
}
