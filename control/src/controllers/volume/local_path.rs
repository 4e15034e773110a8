//! The local-path provisioner (`rudder.dev/local-path`, after rancher's local-path
//! provisioner that single-node distributions ship): a claim's volume is a directory on the
//! node its first pod was scheduled to, `<node root>/local-path/pvc-<uid>_<ns>_<name>`, as
//! a `local` PersistentVolume with node affinity to that node. The node agent creates the
//! directory when it mounts it. Deleting such a volume runs a helper pod on its node that
//! removes the directory, as upstream's provisioner does, so the controller never needs
//! the node's file system.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use serde_json::{Value, json};

use super::plan::PROVISIONED_BY;

pub const PROVISIONER: &str = "rudder.dev/local-path";
/// The annotation a node agent puts on its Node: the directory its local volumes live in.
pub const LOCAL_PATH_ROOT_ANNOTATION: &str = "rudder.dev/local-path-root";
/// Where volumes go on a node that does not say.
pub const DEFAULT_ROOT: &str = "/var/lib/rudder/local-path";
/// Where the helper pods that delete a volume's directory run.
pub const HELPER_NAMESPACE: &str = "kube-system";

/// The name of the volume provisioned for a claim (the external provisioners' convention).
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default())
}

/// The node's volume directory.
pub fn node_root(node: Option<&Node>) -> String {
    node.and_then(|n| n.metadata.annotations.as_ref())
        .and_then(|a| a.get(LOCAL_PATH_ROOT_ANNOTATION))
        .filter(|r| r.starts_with('/'))
        .cloned()
        .unwrap_or_else(|| DEFAULT_ROOT.to_owned())
}

/// The PersistentVolume for `claim` on `node`, pre-bound to the claim.
pub fn volume_for(claim: &PersistentVolumeClaim, class: &str, reclaim: &str, node: &str, root: &str) -> Value {
    let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let pv = volume_name(claim);
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| "0".to_owned(), |q| q.0.clone());
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.unwrap_or_default(),
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": class,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "local": {"path": format!("{root}/{pv}_{ns}_{name}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                         "uid": claim.metadata.uid, "resourceVersion": claim.metadata.resource_version},
        }
    })
}

/// Whether this provisioner made the volume.
pub fn is_ours(v: &PersistentVolume) -> bool {
    v.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .map(String::as_str)
        == Some(PROVISIONER)
}

/// The node and directory of one of our volumes.
pub fn location(v: &PersistentVolume) -> Option<(String, String)> {
    let spec = v.spec.as_ref()?;
    let path = spec
        .local
        .as_ref()
        .map(|l| l.path.clone())
        .or_else(|| spec.host_path.as_ref().map(|h| h.path.clone()))?;
    let node = spec
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")?
        .values
        .as_ref()?
        .first()?
        .clone();
    Some((node, path))
}

/// The helper pod's name for a volume.
pub fn helper_name(volume: &str) -> String {
    format!("helper-pod-delete-{volume}")
}

/// A pod on `node` that removes `path` (mounted from the host at the same place).
pub fn delete_helper(volume: &str, node: &str, path: &str) -> Result<Pod, serde_json::Error> {
    let parent = std::path::Path::new(path)
        .parent()
        .map_or_else(|| "/".to_owned(), |p| p.display().to_string());
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": helper_name(volume), "namespace": HELPER_NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "rudder-local-path"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            // Removing a directory needs no network; the node may not have pod networking.
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "delete", "image": "rudder.dev/process", "command": ["rm", "-rf", path],
                            "volumeMounts": [{"name": "data", "mountPath": parent}]}],
            "volumes": [{"name": "data", "hostPath": {"path": parent, "type": "DirectoryOrCreate"}}],
        }
    }))
}

/// The cluster's default class, as `rudder up` creates it: volumes of this provisioner,
/// made where the claim's first pod runs, deleted with their claim.
pub fn default_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "local-path",
                     "annotations": {crate::apiserver::volumes::DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

/// Labels helpers carry, for the controller's watch.
pub fn helper_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_owned(),
        "rudder-local-path".to_owned(),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provisioned_volume_lives_on_the_node_and_is_prebound() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "web", "uid": "u1", "resourceVersion": "7"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap();
        let v = volume_for(&claim, "local-path", "Delete", "n2", "/run/n2/local-path");
        let pv: PersistentVolume = serde_json::from_value(v).expect("a PersistentVolume");
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u1"));
        assert!(is_ours(&pv));
        assert_eq!(
            location(&pv),
            Some(("n2".into(), "/run/n2/local-path/pvc-u1_web_data".into()))
        );
        let spec = pv.spec.unwrap();
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("u1"));
        let helper = delete_helper("pvc-u1", "n2", "/run/n2/local-path/pvc-u1_web_data").unwrap();
        let hspec = helper.spec.unwrap();
        assert_eq!(hspec.node_name.as_deref(), Some("n2"));
        assert_eq!(
            hspec.containers[0].command.as_deref().unwrap()[2],
            "/run/n2/local-path/pvc-u1_web_data"
        );
    }
}
