//! The ReplicaSet controller, as upstream's: every ReplicaSet keeps `spec.replicas` active
//! pods matching its selector, each with a controller reference to it.
//!
//! kube-runtime's `Controller` runs it: the ReplicaSet watcher, and a pod reflector whose
//! events trigger the pod's owner (or, for an orphan, every ReplicaSet that selects it).
//! The reconcile reads that same pod cache, so a trigger never outruns what it reads;
//! [`expectations`] cover the other direction (our own writes not in the cache yet), and
//! [`plan`] decides everything else without IO.

pub mod expectations;
pub mod plan;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::time::Instant;

use self::expectations::{Expectations, Seen};
use super::workload::{controller_of, controller_ref, selector_matches};

/// Upstream's burstReplicas: at most this many creates or deletes per reconcile.
const BURST: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not {action} pod {pod}")]
    Pod {
        action: &'static str,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not write the status of ReplicaSet {name}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the pod cache stopped before it was ready")]
    CacheGone,
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    /// The pod cache's first list, which every reconcile waits for.
    pods_ready: super::ready::Ready,
    expectations: Mutex<Expectations>,
}

/// Runs the controller until `shutdown` completes. The client needs to list and watch
/// ReplicaSets and Pods, create, patch and delete Pods, and patch `replicasets/status`.
pub async fn run(client: Client, shutdown: impl Future<Output = ()>) {
    let (pods, writer) = reflector::store::<Pod>();
    let pod_events = reflector::reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default());
    let replicasets = controller.store();
    let controller = controller.watches_stream(pod_events, move |pod: Pod| replicasets_to_sync(&replicasets, &pod));
    let ctx = Arc::new(Context {
        client,
        pods_ready: super::ready::Ready::of(&pods),
        pods,
        expectations: Mutex::new(Expectations::default()),
    });
    tracing::info!("ReplicaSet controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .take_until(shutdown)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %super::display_chain(&e), "ReplicaSet controller event");
            }
        })
        .await;
    tracing::info!("ReplicaSet controller stopped");
}

/// The ReplicaSets a pod event concerns: its controller if that is a ReplicaSet, else
/// (an orphan) every ReplicaSet of its namespace that selects it.
fn replicasets_to_sync(replicasets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(owner) = controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return vec![];
    }
    replicasets
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            rs.spec
                .as_ref()
                .is_some_and(|s| selector_matches(&s.selector, pod.metadata.labels.as_ref()))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

/// The pod cache of one namespace, as expectations see it.
struct NamespacePods<'a>(&'a [Arc<Pod>]);

impl Seen for NamespacePods<'_> {
    fn has_name(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.metadata.name.as_deref() == Some(name))
    }
    fn has_live_uid(&self, uid: &str) -> bool {
        self.0
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none())
    }
}

fn error_policy(rs: Arc<ReplicaSet>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(replicaset = %ObjectRef::from_obj(rs.as_ref()), error = %super::display_chain(e), "syncing ReplicaSet failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.pods_ready.wait().await {
        return Err(Error::CacheGone);
    }
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let key = format!("{ns}/{name}");
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let manage = ctx
        .expectations
        .lock()
        .map(|mut e| e.satisfied(&key, &NamespacePods(&pods), Instant::now()))
        .unwrap_or(true);
    let plan = plan::plan(&rs, &pods, Timestamp::now(), manage);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    for pod in &plan.adopt {
        set_controller(&api, pod, Some(&rs)).await?;
    }
    for pod in &plan.release {
        set_controller(&api, pod, None).await?;
    }
    if plan.create > 0 {
        create_pods(&ctx, &api, &rs, &key, plan.create.min(BURST)).await?;
    }
    for pod in plan.delete.iter().take(BURST) {
        let pod_name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod_name, &dp).await {
            Ok(_) => {
                if let Ok(mut e) = ctx.expectations.lock() {
                    e.deleted(&key, uid, Instant::now());
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Pod {
                    action: "delete",
                    pod: pod_name,
                    source,
                });
            }
        }
    }
    if plan.create > 0 || !plan.delete.is_empty() {
        tracing::debug!(replicaset = %key, created = plan.create, deleted = plan.delete.len(), "managed pods");
    }
    write_status(&ctx.client, &rs, &plan.status).await?;

    if !manage {
        // Our last writes have not shown up yet: their events trigger us, this is a backstop.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if let Some(secs) = plan.recheck_after_seconds {
        return Ok(Action::requeue(Duration::from_secs(secs.unsigned_abs())));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Creates `count` pods in batches of 1, 2, 4, ... (upstream's slow start): a failing
/// create (quota, a terminating namespace) then fails after one request, not hundreds.
async fn create_pods(ctx: &Context, api: &Api<Pod>, rs: &ReplicaSet, key: &str, count: usize) -> Result<(), Error> {
    let template = plan::pod_for(rs);
    let mut remaining = count;
    let mut batch = 1;
    let params = PostParams::default();
    while remaining > 0 {
        let n = batch.min(remaining);
        let results = futures::future::join_all((0..n).map(|_| api.create(&params, &template))).await;
        for result in results {
            match result {
                Ok(pod) => {
                    if let Ok(mut e) = ctx.expectations.lock() {
                        e.created(key, pod.name_any(), Instant::now());
                    }
                }
                Err(source) => {
                    return Err(Error::Pod {
                        action: "create",
                        pod: format!("{}-<generated>", rs.name_any()),
                        source,
                    });
                }
            }
        }
        remaining -= n;
        batch *= 2;
    }
    Ok(())
}

/// Adopts the pod (`owner` Some) or releases it: rewrites its owner references, pinned to
/// the version we planned from, so a concurrent change makes us replan.
async fn set_controller(api: &Api<Pod>, pod: &Pod, owner: Option<&ReplicaSet>) -> Result<(), Error> {
    let mut refs: Vec<_> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.controller != Some(true))
        .collect();
    if let Some(rs) = owner {
        refs.push(controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
    }
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.metadata.resource_version}});
    let action = if owner.is_some() { "adopt" } else { "release" };
    match api
        .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Pod {
            action,
            pod: pod.name_any(),
            source,
        }),
    }
}

async fn write_status(
    client: &Client,
    rs: &ReplicaSet,
    status: &k8s_openapi::api::apps::v1::ReplicaSetStatus,
) -> Result<(), Error> {
    let current = serde_json::to_value(rs.status.clone().unwrap_or_default()).unwrap_or_default();
    let wanted = serde_json::to_value(status).unwrap_or_default();
    if current == wanted {
        return Ok(());
    }
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &rs.namespace().unwrap_or_default());
    api.patch_status(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": wanted})),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        name: rs.name_any(),
        source,
    })
}
