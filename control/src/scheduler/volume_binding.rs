//! The volume binding plugin: a pod's claims constrain where it may run. A claim that does
//! not exist, or an unbound claim whose class binds immediately, keeps the pod pending; a
//! bound claim's volume admits only the nodes its node affinity names; an unbound claim
//! whose class waits for the first consumer fits a node where a free volume would serve
//! it or where its class's provisioner can make one. Once a node is chosen, such claims are
//! annotated `volume.kubernetes.io/selected-node` before the pod is bound, which is the PV
//! controller's signal to bind or provision there.

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;

use crate::controllers::volume::plan::{self, SELECTED_NODE};

pub const REASON_AFFINITY: &str = "node(s) had volume node affinity conflict";
pub const REASON_NO_VOLUME: &str = "node(s) didn't find available persistent volumes to bind";
pub const REASON_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// Claims, volumes and classes, kept by reflectors.
#[derive(Clone)]
pub struct Volumes {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
}

impl Volumes {
    /// The stores and one stream that yields on every change to them (it must be polled for
    /// the stores to fill).
    pub fn start(client: &Client) -> (Self, BoxStream<'static, ()>) {
        let (claims, cw) = reflector::store();
        let (volumes, vw) = reflector::store();
        let (classes, sw) = reflector::store();
        let cfg = watcher::Config::default;
        let changes = futures::stream::select_all([
            reflector::reflector(cw, watcher(Api::<PersistentVolumeClaim>::all(client.clone()), cfg()))
                .default_backoff()
                .touched_objects()
                .map(|_| ())
                .boxed(),
            reflector::reflector(vw, watcher(Api::<PersistentVolume>::all(client.clone()), cfg()))
                .default_backoff()
                .touched_objects()
                .map(|_| ())
                .boxed(),
            reflector::reflector(sw, watcher(Api::<StorageClass>::all(client.clone()), cfg()))
                .default_backoff()
                .touched_objects()
                .map(|_| ())
                .boxed(),
        ])
        .boxed();
        (
            Self {
                claims,
                volumes,
                classes,
            },
            changes,
        )
    }

    /// What the pod's claims require, or why it cannot be scheduled at all.
    pub fn for_pod(&self, pod: &Pod) -> Result<PodClaims, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
            .collect();
        let mut out = PodClaims::default();
        if names.is_empty() {
            return Ok(out);
        }
        let volumes: Vec<PersistentVolume> = self.volumes.state().iter().map(|v| (**v).clone()).collect();
        for name in names {
            let claim = self
                .claims
                .state()
                .into_iter()
                .find(|c| c.metadata.namespace.as_deref() == Some(&ns) && c.metadata.name.as_deref() == Some(&name))
                .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            if let Some(volume) = plan::claim_volume_name(&claim) {
                if let Some(v) = volumes.iter().find(|v| v.metadata.name.as_deref() == Some(volume)) {
                    out.bound.push(v.clone());
                }
                continue;
            }
            let class = self
                .classes
                .state()
                .into_iter()
                .find(|c| c.metadata.name.as_deref() == Some(plan::claim_class(&claim)));
            if !plan::waits_for_consumer(class.as_deref()) {
                return Err(REASON_IMMEDIATE.to_owned());
            }
            out.waiting.push(Waiting {
                claim: (*claim).clone(),
                provisioned: class
                    .is_some_and(|c| c.provisioner == crate::controllers::volume::local_path::PROVISIONER),
            });
        }
        out.candidates = volumes;
        Ok(out)
    }
}

/// An unbound claim that waits for its first pod.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub claim: PersistentVolumeClaim,
    /// Its class's provisioner is one we run, so any node will do.
    pub provisioned: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PodClaims {
    /// Volumes of the pod's bound claims.
    pub bound: Vec<PersistentVolume>,
    pub waiting: Vec<Waiting>,
    /// Every volume, for the waiting claims' matches.
    pub candidates: Vec<PersistentVolume>,
}

impl PodClaims {
    /// Why `node` cannot take the pod (empty: it can).
    pub fn reasons(&self, node: &Node) -> Vec<String> {
        if self.bound.iter().any(|v| !plan::affinity_admits(v, node)) {
            return vec![REASON_AFFINITY.to_owned()];
        }
        let unserved = self
            .waiting
            .iter()
            .any(|w| !w.provisioned && plan::best_match(&w.claim, &self.candidates, Some(node)).is_none());
        if unserved {
            return vec![REASON_NO_VOLUME.to_owned()];
        }
        Vec::new()
    }

    /// The claims to annotate with the chosen node, as (namespace, name).
    pub fn to_select(&self, node: &str) -> Vec<(String, String)> {
        self.waiting
            .iter()
            .filter(|w| {
                w.claim
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SELECTED_NODE))
                    .map(String::as_str)
                    != Some(node)
            })
            .map(|w| {
                (
                    w.claim.metadata.namespace.clone().unwrap_or_default(),
                    w.claim.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Writes the selected node onto each claim.
pub async fn select_node(client: &Client, claims: &[(String, String)], node: &str) -> Result<(), kube::Error> {
    for (ns, name) in claims {
        let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid")
    }

    fn node(name: &str) -> Node {
        from(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
    }

    fn local_volume(name: &str, on: &str, claimed: bool) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local", "local": {"path": "/d"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [on]}]}]}}}});
        if claimed {
            v["spec"]["claimRef"] = json!({"namespace": "default", "name": "other"});
        }
        from(v)
    }

    #[test]
    fn bound_volumes_pin_the_pod_to_their_node() {
        let claims = PodClaims {
            bound: vec![local_volume("v", "n1", true)],
            ..Default::default()
        };
        assert!(claims.reasons(&node("n1")).is_empty());
        assert_eq!(claims.reasons(&node("n2")), [REASON_AFFINITY]);
    }

    #[test]
    fn waiting_claims_need_a_free_volume_on_the_node_unless_provisioned() {
        let claim: PersistentVolumeClaim = from(json!({"metadata": {"name": "c", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "resources": {"requests": {"storage": "1Gi"}}}}));
        let mut claims = PodClaims {
            waiting: vec![Waiting {
                claim,
                provisioned: false,
            }],
            candidates: vec![local_volume("free", "n1", false), local_volume("taken", "n2", true)],
            ..Default::default()
        };
        assert!(claims.reasons(&node("n1")).is_empty());
        assert_eq!(claims.reasons(&node("n2")), [REASON_NO_VOLUME]);
        assert_eq!(claims.to_select("n1"), [("default".to_owned(), "c".to_owned())]);
        claims.waiting[0].provisioned = true;
        assert!(claims.reasons(&node("n2")).is_empty());
    }
}
