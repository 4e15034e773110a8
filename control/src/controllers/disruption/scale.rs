//! The denominator of a percentage budget: the replicas the matching pods' controllers
//! ask for, each controller counted once (upstream's getExpectedScale). A ReplicaSet
//! owned by a Deployment counts as its Deployment; any other controller is asked through
//! its `scale` subresource, found by discovery (custom resources included).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, ResourceExt,
    core::{DynamicObject, GroupVersionKind},
};

use super::Error;
use crate::controllers::workload::controller_of;

/// The summed scale of the pods' controllers. Pods without a controller do not count (as
/// upstream, which reports them as unmanaged); a controller that cannot be found is an error.
pub async fn expected_scale(client: &Client, ns: &str, pods: &[Arc<Pod>]) -> Result<i32, Error> {
    let mut scales: BTreeMap<String, i32> = BTreeMap::new();
    for pod in pods {
        let Some(owner) = controller_of(&pod.metadata) else {
            continue;
        };
        if scales.contains_key(&owner.uid) {
            continue;
        }
        match scale_of(client, ns, owner).await {
            Ok(Some((uid, replicas))) => {
                scales.insert(owner.uid.clone(), 0);
                scales.insert(uid, replicas);
            }
            Ok(None) => {
                return Err(Error::Compute(format!(
                    "found no controllers for pod {:?}",
                    pod.name_any()
                )));
            }
            Err(e) => return Err(Error::Compute(crate::controllers::display_chain(&e))),
        }
    }
    Ok(scales.values().sum())
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// (uid of the controller that decides the scale, its replicas), or None when `owner` is gone.
async fn scale_of(client: &Client, ns: &str, owner: &OwnerReference) -> Result<Option<(String, i32)>, kube::Error> {
    let (group, version) = owner.api_version.rsplit_once('/').unwrap_or(("", &owner.api_version));
    if group == "apps" && owner.kind == "ReplicaSet" {
        let rs = match Api::<ReplicaSet>::namespaced(client.clone(), ns).get(&owner.name).await {
            Ok(rs) if rs.uid().as_deref() == Some(owner.uid.as_str()) => rs,
            Ok(_) => return Ok(None),
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(dep_ref) = controller_of(&rs.metadata).filter(|r| r.kind == "Deployment") {
            return match Api::<Deployment>::namespaced(client.clone(), ns)
                .get(&dep_ref.name)
                .await
            {
                Ok(d) if d.uid().as_deref() == Some(dep_ref.uid.as_str()) => Ok(Some((
                    dep_ref.uid.clone(),
                    d.spec.and_then(|s| s.replicas).unwrap_or(1),
                ))),
                Ok(_) => Ok(None),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            };
        }
        return Ok(Some((owner.uid.clone(), rs.spec.and_then(|s| s.replicas).unwrap_or(1))));
    }
    let gvk = GroupVersionKind::gvk(group, version, &owner.kind);
    let (resource, _) = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(found) => found,
        Err(kube::Error::Discovery(_)) => return Ok(None),
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    match Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .get_scale(&owner.name)
        .await
    {
        Ok(scale) => Ok(Some((
            owner.uid.clone(),
            scale.spec.and_then(|s| s.replicas).unwrap_or(0),
        ))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}
