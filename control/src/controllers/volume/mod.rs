//! The PersistentVolume controller with the local-path provisioner: binds claims to
//! volumes, keeps both phases, reclaims released volumes, and provisions `local` volumes
//! on the node a claim's first pod was scheduled to.
//!
//! Layers: reflector stores of claims, volumes, classes, nodes and the provisioner's helper
//! pods → any change (or a periodic resync) wakes one loop that takes a snapshot, asks
//! [`plan`] (pure) what to do, and does it through the API. Every step is idempotent and
//! re-derived from the API on the next pass, so a failed write is simply retried and a
//! restarted controller carries on where the last one stopped.

pub mod local_path;
pub mod plan;

use std::{future::Future, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, stream::SelectAll};
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;

pub use local_path::LOCAL_PATH_ROOT_ANNOTATION;
use plan::{Action, ClaimKey, Snapshot};

/// How often the whole state is looked at even without a change.
const RESYNC: Duration = Duration::from_secs(15);
const FAILED_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Build(String),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

struct Stores {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    helpers: Store<Pod>,
}

fn plain<T: Clone>(items: Vec<Arc<T>>) -> Vec<T> {
    items.into_iter().map(|a| (*a).clone()).collect()
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let mut changes: SelectAll<futures::stream::BoxStream<'static, ()>> = SelectAll::new();
    macro_rules! store {
        ($ty:ty, $api:expr, $cfg:expr) => {{
            let (reader, writer) = reflector::store::<$ty>();
            changes.push(
                reflector::reflector(writer, watcher($api, $cfg))
                    .default_backoff()
                    .touched_objects()
                    .map(|_| ())
                    .boxed(),
            );
            reader
        }};
    }
    let all = watcher::Config::default;
    let helper_selector = "app.kubernetes.io/managed-by=rudder-local-path";
    let stores = Stores {
        claims: store!(PersistentVolumeClaim, Api::all(client.clone()), all()),
        volumes: store!(PersistentVolume, Api::all(client.clone()), all()),
        classes: store!(StorageClass, Api::all(client.clone()), all()),
        nodes: store!(Node, Api::all(client.clone()), all()),
        helpers: store!(
            Pod,
            Api::namespaced(client.clone(), local_path::HELPER_NAMESPACE),
            all().labels(helper_selector)
        ),
    };
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    tracing::info!("persistent volume controller starting");
    for s in [
        stores.claims.wait_until_ready().boxed(),
        stores.volumes.wait_until_ready().boxed(),
    ] {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = s => {},
            // The stores fill only while their streams are polled.
            _ = async { loop { changes.next().await; } } => {},
        }
    }
    loop {
        let failed = !sync(&client, &stores).await;
        // A failed write is tried again soon, not only at the next change.
        let resync = if failed { FAILED_RETRY } else { RESYNC };
        let wait = async {
            changes.next().await;
            // Let a burst of events settle into one pass.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while changes.next().now_or_never().flatten().is_some() {}
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = wait => {},
            _ = tokio::time::sleep(resync) => {},
        }
    }
    tracing::info!("persistent volume controller stopped");
}

/// One pass; false when an action failed.
async fn sync(client: &Client, stores: &Stores) -> bool {
    let claims = plain(stores.claims.state());
    let volumes = plain(stores.volumes.state());
    let classes = plain(stores.classes.state());
    let nodes = plain(stores.nodes.state());
    let snapshot = Snapshot {
        claims: &claims,
        volumes: &volumes,
        classes: &classes,
        nodes: &nodes,
    };
    let mut ok = true;
    for action in plan::plan(&snapshot, &[local_path::PROVISIONER]) {
        tracing::debug!(?action, "volume action");
        if let Err(e) = act(client, &snapshot, stores, &action).await {
            ok = false;
            tracing::warn!(?action, error = %crate::controllers::display_chain(&e), "volume action failed; retrying");
        }
    }
    ok
}

fn find_claim<'a>(s: &'a Snapshot<'_>, key: &ClaimKey) -> Option<&'a PersistentVolumeClaim> {
    s.claims.iter().find(|c| {
        c.metadata.namespace.as_deref() == Some(&key.namespace) && c.metadata.name.as_deref() == Some(&key.name)
    })
}

fn find_volume<'a>(s: &'a Snapshot<'_>, name: &str) -> Option<&'a PersistentVolume> {
    s.volumes.iter().find(|v| v.metadata.name.as_deref() == Some(name))
}

async fn act(client: &Client, s: &Snapshot<'_>, stores: &Stores, action: &Action) -> Result<(), Error> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pp = PatchParams::default();
    match action {
        Action::Bind { claim, volume } => {
            let (Some(c), Some(v)) = (find_claim(s, claim), find_volume(s, volume)) else {
                return Ok(());
            };
            bind(client, c, v).await
        }
        Action::ClaimLost { claim } => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
            let status = json!({"status": {"phase": "Lost"}});
            claims
                .patch_status(&claim.name, &pp, &Patch::Merge(status))
                .await
                .map_err(api_err(format!(
                    "marking claim {}/{} Lost",
                    claim.namespace, claim.name
                )))?;
            Ok(())
        }
        Action::VolumePhase { volume, phase, message } => {
            let status = json!({"status": {"phase": phase, "message": message}});
            pvs.patch_status(volume, &pp, &Patch::Merge(status))
                .await
                .map_err(api_err(format!("setting volume {volume} {phase}")))?;
            Ok(())
        }
        Action::Reclaim { volume } => {
            let Some(v) = find_volume(s, volume) else {
                return Ok(());
            };
            reclaim(client, stores, v).await
        }
        Action::Provision { claim, class, node } => {
            let (Some(c), Some(sc)) = (
                find_claim(s, claim),
                s.classes.iter().find(|k| k.metadata.name.as_deref() == Some(class)),
            ) else {
                return Ok(());
            };
            let Some(node) = node else {
                // Immediate binding: the provisioner cannot know where the pod will run.
                return Ok(());
            };
            let root = local_path::node_root(s.nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node)));
            let reclaim = sc.reclaim_policy.as_deref().unwrap_or("Delete");
            let body = local_path::volume_for(c, class, reclaim, node, &root);
            let pv: PersistentVolume = serde_json::from_value(body).map_err(|e| Error::Build(e.to_string()))?;
            match pvs.create(&PostParams::default(), &pv).await {
                Ok(_) => {
                    tracing::info!(claim = %format!("{}/{}", claim.namespace, claim.name), volume = %pv.name_any(), node, "provisioned a local volume");
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(api_err(format!("provisioning {}", pv.name_any()))(e)),
            }
        }
    }
}

/// Upstream's bind: the volume first (claimRef, then phase), then the claim (volumeName,
/// then phase), so a crash in between leaves a pre-bound volume the next pass finishes.
async fn bind(client: &Client, c: &PersistentVolumeClaim, v: &PersistentVolume) -> Result<(), Error> {
    let pp = PatchParams::default();
    let ns = c.namespace().unwrap_or_default();
    let (claim_name, volume_name) = (c.name_any(), v.name_any());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let vspec = v.spec.clone().unwrap_or_default();
    let ref_complete = vspec
        .claim_ref
        .as_ref()
        .is_some_and(|r| r.uid.as_deref() == c.metadata.uid.as_deref());
    if !ref_complete {
        let by_controller = vspec.claim_ref.is_none();
        let mut patch = json!({"spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": ns, "name": claim_name, "uid": c.metadata.uid, "resourceVersion": c.metadata.resource_version}},
            "metadata": {"resourceVersion": v.metadata.resource_version}});
        if by_controller {
            patch["metadata"]["annotations"] = json!({plan::BOUND_BY_CONTROLLER: "yes"});
        }
        pvs.patch(&volume_name, &pp, &Patch::Merge(patch))
            .await
            .map_err(api_err(format!("binding volume {volume_name} to {ns}/{claim_name}")))?;
    }
    if v.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        pvs.patch_status(&volume_name, &pp, &Patch::Merge(json!({"status": {"phase": "Bound"}})))
            .await
            .map_err(api_err(format!("marking volume {volume_name} Bound")))?;
    }
    if plan::claim_volume_name(c) != Some(volume_name.as_str()) {
        let patch = json!({"spec": {"volumeName": volume_name},
            "metadata": {"annotations": {plan::BIND_COMPLETED: "yes", plan::BOUND_BY_CONTROLLER: "yes"}}});
        claims
            .patch(&claim_name, &pp, &Patch::Merge(patch))
            .await
            .map_err(api_err(format!("binding claim {ns}/{claim_name} to {volume_name}")))?;
    } else if c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(plan::BIND_COMPLETED))
        .is_none()
    {
        let patch = json!({"metadata": {"annotations": {plan::BIND_COMPLETED: "yes"}}});
        claims
            .patch(&claim_name, &pp, &Patch::Merge(patch))
            .await
            .map_err(api_err(format!("annotating claim {ns}/{claim_name}")))?;
    }
    let status = json!({"status": {"phase": "Bound", "accessModes": vspec.access_modes, "capacity": vspec.capacity}});
    claims
        .patch_status(&claim_name, &pp, &Patch::Merge(status))
        .await
        .map_err(api_err(format!("marking claim {ns}/{claim_name} Bound")))?;
    tracing::info!(claim = %format!("{ns}/{claim_name}"), volume = %volume_name, "bound");
    Ok(())
}

/// The Delete policy: our volumes' directories are removed by a helper pod on their node
/// first; any other volume is only removed from the API (there is no storage backend here
/// to delete it from).
async fn reclaim(client: &Client, stores: &Stores, v: &PersistentVolume) -> Result<(), Error> {
    let name = v.name_any();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if local_path::is_ours(v)
        && let Some((node, path)) = local_path::location(v)
    {
        let pods: Api<Pod> = Api::namespaced(client.clone(), local_path::HELPER_NAMESPACE);
        let helper_name = local_path::helper_name(&name);
        let helper = stores.helpers.state().into_iter().find(|p| p.name_any() == helper_name);
        let phase = helper
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.clone());
        match phase.as_deref() {
            None if helper.is_none() => {
                let pod = local_path::delete_helper(&name, &node, &path).map_err(|e| Error::Build(e.to_string()))?;
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(api_err(format!("starting {helper_name}"))(e)),
                }
                tracing::info!(volume = %name, node, path, "removing a released local volume's directory");
                return Ok(());
            }
            Some("Succeeded") => {}
            Some("Failed") => {
                let _ = pods.delete(&helper_name, &DeleteParams::default()).await;
                let status =
                    json!({"status": {"phase": "Failed", "message": format!("removing {path} on {node} failed")}});
                pvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .map_err(api_err(format!("marking volume {name} Failed")))?;
                return Ok(());
            }
            _ => return Ok(()),
        }
        let _ = pods
            .delete(&helper_name, &DeleteParams::default().grace_period(0))
            .await;
    }
    match pvs.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(volume = %name, "deleted a released volume");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(api_err(format!("deleting volume {name}"))(e)),
    }
}
