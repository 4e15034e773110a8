//! The Deployment controller, as upstream's: each Deployment owns one ReplicaSet per pod
//! template it has had, named and labelled by the template's [`hash`], and moves replicas
//! from the old ones to the current one by its strategy (RollingUpdate within maxSurge and
//! maxUnavailable, or Recreate), numbering them with revisions so `kubectl rollout undo`
//! can go back, and keeping `revisionHistoryLimit` old ones.
//!
//! kube-runtime's `Controller` runs it: the Deployment watcher, and a ReplicaSet reflector
//! whose events trigger their owner; the reconcile reads that same cache. [`plan`] decides
//! one step without IO; this module reads what it needs and writes what it planned.

pub mod hash;
pub mod plan;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use super::workload::{is_controlled_by, selector_matches};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not {action} ReplicaSet {name}")]
    ReplicaSet {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not {action} Deployment {name}")]
    Deployment {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not list the pods of Deployment {name}")]
    Pods {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("ReplicaSet {0} exists with another template; the Deployment's collisionCount was raised")]
    HashCollision(String),
    #[error("the ReplicaSet cache stopped before it was ready")]
    CacheGone,
}

struct Context {
    client: Client,
    replicasets: Store<ReplicaSet>,
    replicasets_ready: super::ready::Ready,
}

/// Runs the controller until `shutdown` completes. The client needs to list and watch
/// Deployments and ReplicaSets, list Pods, create, patch and delete ReplicaSets, and
/// patch Deployments and `deployments/status`.
pub async fn run(client: Client, shutdown: impl Future<Output = ()>) {
    let (replicasets, writer) = reflector::store::<ReplicaSet>();
    let rs_events = reflector::reflector(
        writer,
        watcher(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller =
        Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default()).owns_stream(rs_events);
    let ctx = Arc::new(Context {
        client,
        replicasets_ready: super::ready::Ready::of(&replicasets),
        replicasets,
    });
    tracing::info!("Deployment controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .take_until(shutdown)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %super::display_chain(&e), "Deployment controller event");
            }
        })
        .await;
    tracing::info!("Deployment controller stopped");
}

fn error_policy(d: Arc<Deployment>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(deployment = %ObjectRef::from_obj(d.as_ref()), error = %super::display_chain(e), "syncing Deployment failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.replicasets_ready.wait().await {
        return Err(Error::CacheGone);
    }
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let controlled: Vec<ReplicaSet> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()) && is_controlled_by(&rs.metadata, &uid))
        .map(|rs| (*rs).clone())
        .collect();
    let recreate = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate");
    let old_pods_running = recreate && old_pods_exist(&ctx.client, &d, &controlled).await?;
    let plan = plan::plan(&d, &controlled, old_pods_running, Timestamp::now());

    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(rs) = &plan.create {
        create_replicaset(&rs_api, &d_api, &d, rs).await?;
    }
    for rs in &plan.update {
        let patch = json!({
            "metadata": {"annotations": rs.metadata.annotations, "resourceVersion": rs.metadata.resource_version},
            "spec": {"replicas": rs.spec.as_ref().and_then(|s| s.replicas)},
        });
        let rs_name = rs.name_any();
        rs_api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::ReplicaSet {
                action: "update",
                name: rs_name.clone(),
                source,
            })?;
        tracing::debug!(deployment = %name, replicaset = %rs_name, replicas = ?rs.spec.as_ref().and_then(|s| s.replicas), "scaled");
    }
    for rs_name in &plan.delete {
        match rs_api.delete(rs_name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::debug!(deployment = %name, replicaset = %rs_name, "deleted old ReplicaSet beyond the history limit")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::ReplicaSet {
                    action: "delete",
                    name: rs_name.clone(),
                    source,
                });
            }
        }
    }
    if let Some(revision) = &plan.revision {
        let patch = json!({"metadata": {"annotations": {plan::REVISION: revision}}});
        d_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Deployment {
                action: "annotate",
                name: name.clone(),
                source,
            })?;
    }
    let current = serde_json::to_value(d.status.clone().unwrap_or_default()).unwrap_or_default();
    let wanted = serde_json::to_value(&plan.status).unwrap_or_default();
    if current != wanted {
        d_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": wanted})))
            .await
            .map_err(|source| Error::Deployment {
                action: "write the status of",
                name: name.clone(),
                source,
            })?;
    }
    if old_pods_running {
        // Pod deletions do not trigger Deployments: look again soon.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Creates the new ReplicaSet. A name taken by a ReplicaSet with another template is a
/// hash collision: raising `collisionCount` gives the next attempt another name.
async fn create_replicaset(
    rs_api: &Api<ReplicaSet>,
    d_api: &Api<Deployment>,
    d: &Deployment,
    rs: &ReplicaSet,
) -> Result<(), Error> {
    let rs_name = rs.name_any();
    match rs_api.create(&PostParams::default(), rs).await {
        Ok(_) => {
            tracing::debug!(deployment = %d.name_any(), replicaset = %rs_name, "created ReplicaSet");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = rs_api.get(&rs_name).await.map_err(|source| Error::ReplicaSet {
                action: "read",
                name: rs_name.clone(),
                source,
            })?;
            let same = existing
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .zip(rs.spec.as_ref().and_then(|s| s.template.as_ref()));
            if same.is_some_and(|(a, b)| hash::same_template(a, b))
                && is_controlled_by(&existing.metadata, d.metadata.uid.as_deref().unwrap_or_default())
            {
                // Ours, and our cache has not shown it yet: its event triggers the next step.
                return Ok(());
            }
            let count = d.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0) + 1;
            d_api
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"collisionCount": count}})),
                )
                .await
                .map_err(|source| Error::Deployment {
                    action: "raise the collisionCount of",
                    name: d.name_any(),
                    source,
                })?;
            Err(Error::HashCollision(rs_name))
        }
        Err(source) => Err(Error::ReplicaSet {
            action: "create",
            name: rs_name,
            source,
        }),
    }
}

/// Whether any pod of an old ReplicaSet still exists (Recreate waits for none). Read
/// live: this controller keeps no pod cache, and terminating pods count.
async fn old_pods_exist(client: &Client, d: &Deployment, controlled: &[ReplicaSet]) -> Result<bool, Error> {
    let template = d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let old_uids: Vec<&str> = controlled
        .iter()
        .filter(|rs| {
            !rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| hash::same_template(t, &template))
        })
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    if old_uids.is_empty() {
        return Ok(false);
    }
    let selector = d.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
    let query = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), &d.namespace().unwrap_or_default());
    let pods = api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(|source| Error::Pods {
            name: d.name_any(),
            source,
        })?;
    Ok(pods.items.iter().any(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        selector_matches(&selector, p.metadata.labels.as_ref())
            && old_uids.iter().any(|uid| is_controlled_by(&p.metadata, uid))
            && !matches!(phase, Some("Succeeded" | "Failed"))
    }))
}
