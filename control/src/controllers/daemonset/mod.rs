//! The DaemonSet controller: one pod per eligible node, replaced template by template.
//!
//! kube-runtime's `Controller` drives it: DaemonSets are the main objects; daemon Pod and
//! Node changes trigger reconciles too. Reconcile reads Pods and Nodes from reflector
//! stores, plans with [`plan`] (pure) and writes.
//!
//! The stores may lag our own writes; like upstream's "expectations", a DaemonSet whose
//! last creates or deletes have not shown up yet is not planned again until they have (or
//! [`EXPECTATION_TIMEOUT`] passes), so a slow watch never doubles a pod.

pub mod eligibility;
pub mod plan;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::time::Instant;

/// How long a write may take to show up in the stores before planning goes on anyway.
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating a pod for DaemonSet {ds} on node {node}: {source}")]
    Create {
        ds: String,
        node: String,
        source: kube::Error,
    },
    #[error("deleting pod {pod} of DaemonSet {ds}: {source}")]
    Delete {
        ds: String,
        pod: String,
        source: kube::Error,
    },
    #[error("writing the status of DaemonSet {ds}: {source}")]
    Status { ds: String, source: kube::Error },
}

/// Writes of one DaemonSet not yet seen in the stores.
#[derive(Debug, Default)]
struct Expectations {
    /// Nodes a pod was created on.
    creates: Vec<String>,
    /// Uids of pods deleted.
    deletes: Vec<String>,
    since: Option<Instant>,
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// The pod and node caches' first lists.
    ready: super::ready::Ready,
    expectations: Mutex<HashMap<String, Expectations>>,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    // Pod and Node events trigger reconciles only after the reflector has put them in the
    // store reconcile reads: a trigger from a watch of its own could come first, and the
    // reconcile would plan from a store without the change. (kube-runtime's way to map
    // such a stream to one owner is still unstable, so a daemon pod's event reconciles
    // every DaemonSet; the applier merges the requests.)
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|p| async move {
        p.ok()
            .filter(|p| p.owner_references().iter().any(|o| o.kind == "DaemonSet"))
            .map(|_| ())
    });
    // Any Node change may change where any DaemonSet runs.
    let node_events = reflector::reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|n| async move { n.ok().map(|_| ()) });

    let controller = Controller::new(Api::<DaemonSet>::all(client.clone()), watcher::Config::default())
        .reconcile_all_on(pod_events)
        .reconcile_all_on(node_events)
        .graceful_shutdown_on(shutdown.boxed().shared());
    let ctx = Arc::new(Context {
        client,
        ready: super::ready::Ready::all([super::ready::Ready::of(&pods), super::ready::Ready::of(&nodes)]),
        pods,
        nodes,
        expectations: Mutex::new(HashMap::new()),
    });
    tracing::info!("DaemonSet controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "DaemonSet reconcile");
            }
        })
        .await;
    tracing::info!("DaemonSet controller stopped");
}

fn error_policy(ds: Arc<DaemonSet>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(daemonset = %ds.name_any(), error = %e, "syncing DaemonSet failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = ds.name_any();
    let ns = ds.namespace().unwrap_or_default();
    let key = format!("{ns}/{name}");
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = ctx.ready.wait().await;
    let uid = ds.uid().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();
    if !expectations_met(&ctx, &key, &pods) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let nodes = ctx.nodes.state();
    let plan = plan::plan(&ds, &nodes, &pods, Timestamp::now());

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut expected = Expectations {
        since: Some(Instant::now()),
        ..Expectations::default()
    };
    let mut first_error = None;
    for node in &plan.create_on {
        match pod_api.create(&PostParams::default(), &plan::new_pod(&ds, node)).await {
            Ok(_) => expected.creates.push(node.clone()),
            Err(source) => {
                first_error.get_or_insert(Error::Create {
                    ds: key.clone(),
                    node: node.clone(),
                    source,
                });
            }
        }
    }
    for pod in &plan.delete {
        let pod_name = pod.name_any();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pod_api.delete(&pod_name, &dp).await {
            Ok(_) => expected.deletes.push(pod.uid().unwrap_or_default()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => {
                first_error.get_or_insert(Error::Delete {
                    ds: key.clone(),
                    pod: pod_name,
                    source,
                });
            }
        }
    }
    if !plan.create_on.is_empty() || !plan.delete.is_empty() {
        tracing::info!(daemonset = %key, created = expected.creates.len(), deleted = expected.deletes.len(), "synced daemon pods");
    }
    if let Ok(mut all) = ctx.expectations.lock() {
        all.insert(key.clone(), expected);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if ds.status.as_ref() != Some(&plan.status) {
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": plan.status})),
            )
            .await
            .map_err(|source| Error::Status {
                ds: key.clone(),
                source,
            })?;
    }
    // minReadySeconds passes without an event.
    let waiting_for_time = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0) > 0
        && plan.status.number_available != Some(plan.status.number_ready);
    Ok(if waiting_for_time {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// Whether the stores show our last writes to this DaemonSet (or they are too old to wait
/// for); clears them when they do.
fn expectations_met(ctx: &Context, key: &str, pods: &[Arc<Pod>]) -> bool {
    let Ok(mut all) = ctx.expectations.lock() else {
        return true;
    };
    let Some(e) = all.get_mut(key) else { return true };
    let live_on = |node: &str| {
        pods.iter().any(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
        })
    };
    e.creates.retain(|n| !live_on(n));
    e.deletes.retain(|uid| {
        pods.iter()
            .any(|p| p.metadata.deletion_timestamp.is_none() && p.uid().as_deref() == Some(uid))
    });
    let met =
        (e.creates.is_empty() && e.deletes.is_empty()) || e.since.is_some_and(|s| s.elapsed() > EXPECTATION_TIMEOUT);
    if met {
        all.remove(key);
    }
    met
}
