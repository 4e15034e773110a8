//! What a pod references, for the node authorizer: a node may read a Secret, ConfigMap,
//! PersistentVolumeClaim or ServiceAccount only when a pod bound to it uses that object
//! (upstream's graph authorizer keeps these edges in a graph fed by informers; here the
//! node's pods in the namespace are read and walked per request).

use serde_json::Value;

/// The kinds of object a pod reaches through its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referenced {
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    ServiceAccount,
}

impl Referenced {
    /// The kind behind a core/v1 resource a node might read.
    pub fn from_plural(plural: &str) -> Option<Self> {
        Some(match plural {
            "secrets" => Self::Secret,
            "configmaps" => Self::ConfigMap,
            "persistentvolumeclaims" => Self::PersistentVolumeClaim,
            "serviceaccounts" => Self::ServiceAccount,
            _ => return None,
        })
    }
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_str()
}

fn each<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    v[key].as_array().into_iter().flatten()
}

/// True when `pod` uses the `kind` object called `name` (in the pod's namespace).
pub fn references(pod: &Value, kind: Referenced, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |found: Option<&str>| found == Some(name);
    let containers = || {
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(|k| each(spec, k))
    };
    let volumes = || each(spec, "volumes");
    let projected = || volumes().flat_map(|v| each(&v["projected"], "sources"));
    match kind {
        Referenced::ServiceAccount => {
            // An unset name means `default`, which admission fills in upstream.
            spec["serviceAccountName"].as_str().unwrap_or("default") == name
        }
        Referenced::Secret => {
            each(spec, "imagePullSecrets").any(|s| is(str_at(s, &["name"])))
                || containers().any(|c| {
                    each(c, "envFrom").any(|e| is(str_at(e, &["secretRef", "name"])))
                        || each(c, "env").any(|e| is(str_at(e, &["valueFrom", "secretKeyRef", "name"])))
                })
                || volumes().any(|v| {
                    is(str_at(v, &["secret", "secretName"]))
                        || is(str_at(v, &["csi", "nodePublishSecretRef", "name"]))
                        || is(str_at(v, &["azureFile", "secretName"]))
                        || ["cephfs", "cinder", "flexVolume", "iscsi", "rbd", "scaleIO", "storageos"]
                            .iter()
                            .any(|source| is(str_at(v, &[source, "secretRef", "name"])))
                })
                || projected().any(|s| is(str_at(s, &["secret", "name"])))
        }
        Referenced::ConfigMap => {
            containers().any(|c| {
                each(c, "envFrom").any(|e| is(str_at(e, &["configMapRef", "name"])))
                    || each(c, "env").any(|e| is(str_at(e, &["valueFrom", "configMapKeyRef", "name"])))
            }) || volumes().any(|v| is(str_at(v, &["configMap", "name"])))
                || projected().any(|s| is(str_at(s, &["configMap", "name"])))
        }
        Referenced::PersistentVolumeClaim => volumes().any(|v| {
            is(str_at(v, &["persistentVolumeClaim", "claimName"]))
                // A generic ephemeral volume's claim is named `<pod>-<volume>`.
                || (!v["ephemeral"].is_null()
                    && pod["metadata"]["name"]
                        .as_str()
                        .zip(v["name"].as_str())
                        .is_some_and(|(p, vol)| format!("{p}-{vol}") == name))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_way_a_pod_names_an_object_counts() {
        let pod = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "serviceAccountName": "builder",
                "imagePullSecrets": [{"name": "pull"}],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{
                    "name": "c",
                    "envFrom": [{"configMapRef": {"name": "cm-env"}}],
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s-key", "key": "k"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm-key", "key": "k"}}},
                        {"name": "C", "value": "plain"},
                    ],
                }],
                "ephemeralContainers": [{"name": "e", "env": [{"name": "D", "valueFrom": {"secretKeyRef": {"name": "debug", "key": "k"}}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": "vol-secret"}},
                    {"name": "c", "configMap": {"name": "vol-cm"}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "proj-cm"}}, {"serviceAccountToken": {"path": "t"}}]}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                    {"name": "csi", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "csi-secret"}}},
                    {"name": "rbd", "rbd": {"secretRef": {"name": "rbd-secret"}}},
                ],
            },
        });
        for s in [
            "pull",
            "init-env",
            "s-key",
            "debug",
            "vol-secret",
            "proj-secret",
            "csi-secret",
            "rbd-secret",
        ] {
            assert!(references(&pod, Referenced::Secret, s), "secret {s}");
        }
        for c in ["cm-env", "cm-key", "vol-cm", "proj-cm"] {
            assert!(references(&pod, Referenced::ConfigMap, c), "configmap {c}");
        }
        assert!(references(&pod, Referenced::PersistentVolumeClaim, "data"));
        assert!(references(&pod, Referenced::PersistentVolumeClaim, "web-scratch"));
        assert!(references(&pod, Referenced::ServiceAccount, "builder"));
        // Names used for another kind, or not at all, are not references.
        for (kind, name) in [
            (Referenced::Secret, "vol-cm"),
            (Referenced::Secret, "plain"),
            (Referenced::Secret, "other"),
            (Referenced::ConfigMap, "vol-secret"),
            (Referenced::PersistentVolumeClaim, "scratch"),
            (Referenced::ServiceAccount, "default"),
        ] {
            assert!(!references(&pod, kind, name), "{kind:?} {name}");
        }
        let bare = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        assert!(references(&bare, Referenced::ServiceAccount, "default"));
        assert!(!references(&bare, Referenced::Secret, "default"));
    }
}
