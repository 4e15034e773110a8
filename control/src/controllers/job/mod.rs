//! The Job controller, as upstream's: every Job runs pods from its template until enough
//! succeed (`completions`, or each index of an Indexed Job), at most `parallelism` at a
//! time, and fails past `backoffLimit` failures or `activeDeadlineSeconds`; a finished Job
//! with `ttlSecondsAfterFinished` is deleted once that has passed (upstream's
//! ttl-after-finished controller, folded in here: it reads the same Job cache).
//!
//! kube-runtime's `Controller` runs it over Jobs, triggered by a pod reflector's events
//! for each pod's controlling Job; the reconcile reads that same cache. The ReplicaSet
//! controller's expectations keep a lagging cache from doubling pods. [`plan`] decides.

pub mod plan;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::time::Instant;

use super::{
    replicaset::expectations::{Expectations, Seen},
    workload::controller_of,
};

/// Upstream's burst of pod creates per sync.
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
    #[error("could not {action} Job {name}")]
    Job {
        action: &'static str,
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
    pods_ready: super::ready::Ready,
    expectations: Mutex<Expectations>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` completes. The client needs to list and watch
/// Jobs and Pods, create and delete Pods, patch `jobs/status`, delete Jobs and create Events.
pub async fn run(client: Client, shutdown: impl Future<Output = ()>) {
    let (pods, writer) = reflector::store::<Pod>();
    let pod_events = reflector::reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .watches_stream(pod_events, |pod: Pod| owner_of(&pod));
    let reporter = Reporter {
        controller: "job-controller".into(),
        instance: None,
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        pods_ready: super::ready::Ready::of(&pods),
        pods,
        expectations: Mutex::new(Expectations::default()),
    });
    tracing::info!("Job controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .take_until(shutdown)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %super::display_chain(&e), "Job controller event");
            }
        })
        .await;
    tracing::info!("Job controller stopped");
}

fn owner_of(pod: &Pod) -> Option<ObjectRef<Job>> {
    let owner = controller_of(&pod.metadata)?;
    (owner.kind == "Job" && owner.api_version.starts_with("batch/"))
        .then(|| ObjectRef::new(&owner.name).within(pod.metadata.namespace.as_deref().unwrap_or_default()))
}

struct OwnedPods<'a>(&'a [Arc<Pod>]);

impl Seen for OwnedPods<'_> {
    fn has_name(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.metadata.name.as_deref() == Some(name))
    }
    fn has_live_uid(&self, uid: &str) -> bool {
        self.0
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none())
    }
}

fn error_policy(job: Arc<Job>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(job = %ObjectRef::from_obj(job.as_ref()), error = %super::display_chain(e), "syncing Job failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.pods_ready.wait().await {
        return Err(Error::CacheGone);
    }
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let key = format!("{ns}/{name}");
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let manage = ctx
        .expectations
        .lock()
        .map(|mut e| e.satisfied(&key, &OwnedPods(&pods), Instant::now()))
        .unwrap_or(true);
    let mut plan = plan::plan(&job, &pods, Timestamp::now());
    if !manage {
        // Our last creates or deletes are not in the cache yet: counting now would double them.
        plan.create.clear();
        plan.delete.clear();
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if plan.delete_job {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        return match jobs.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(job = %key, "deleted finished Job past its ttlSecondsAfterFinished");
                Ok(Action::await_change())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
            Err(source) => Err(Error::Job {
                action: "delete",
                name,
                source,
            }),
        };
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    delete_pods(&ctx, &api, &key, &plan.delete).await?;
    create_pods(&ctx, &api, &job, &key, &plan.create).await?;
    publish(&ctx, &job, &plan.events).await;
    match write_status(&jobs, &job, &plan.status).await {
        Ok(()) => {}
        // Our cached Job is older than the one stored: plan again from the newer one.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::from_millis(500))),
        Err(source) => {
            return Err(Error::Job {
                action: "write the status of",
                name,
                source,
            });
        }
    }
    if !manage {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(match plan.recheck_after {
        Some(secs) => Action::requeue(Duration::from_secs_f64(secs.clamp(0.5, 3600.0))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

async fn delete_pods(ctx: &Context, api: &Api<Pod>, key: &str, pods: &[Arc<Pod>]) -> Result<(), Error> {
    for pod in pods.iter().take(BURST) {
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
                    e.deleted(key, uid, Instant::now());
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(Error::Pod {
                    action: "delete",
                    pod: pod_name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Creates the pods in batches of 1, 2, 4, ... (upstream's slow start), so a create that
/// keeps failing (quota, a terminating namespace) fails after one request.
async fn create_pods(
    ctx: &Context,
    api: &Api<Pod>,
    job: &Job,
    key: &str,
    indexes: &[Option<i32>],
) -> Result<(), Error> {
    let params = PostParams::default();
    let mut rest = &indexes[..indexes.len().min(BURST)];
    let mut batch = 1;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        let results = futures::future::join_all(now.iter().map(|i| {
            let (pod, params) = (plan::pod_for(job, *i), &params);
            async move { api.create(params, &pod).await }
        }))
        .await;
        for result in results {
            match result {
                Ok(pod) => {
                    if let Ok(mut e) = ctx.expectations.lock() {
                        e.created(key, pod.name_any(), Instant::now());
                    }
                }
                Err(source) => {
                    let event = ("Warning", "FailedCreate", format!("Error creating: {source}"));
                    publish(ctx, job, &[event]).await;
                    return Err(Error::Pod {
                        action: "create",
                        pod: format!("{}-<generated>", job.name_any()),
                        source,
                    });
                }
            }
        }
        rest = later;
        batch *= 2;
    }
    if !indexes.is_empty() {
        tracing::debug!(job = %key, created = indexes.len(), "created pods");
    }
    Ok(())
}

async fn publish(ctx: &Context, job: &Job, events: &[(&'static str, &'static str, String)]) {
    for (ty, reason, note) in events {
        let event = Event {
            type_: if *ty == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: (*reason).into(),
            note: Some(note.clone()),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "could not record a Job event");
        }
    }
}

/// Writes the status when it changed, pinned to the Job version we planned from.
async fn write_status(
    api: &Api<Job>,
    job: &Job,
    status: &k8s_openapi::api::batch::v1::JobStatus,
) -> Result<(), kube::Error> {
    let current = serde_json::to_value(job.status.clone().unwrap_or_default()).unwrap_or_default();
    let wanted = serde_json::to_value(status).unwrap_or_default();
    if current == wanted {
        return Ok(());
    }
    // Fields the plan leaves out are written as null: a merge patch keeps what it omits.
    let mut patch = wanted.clone();
    if let (Some(p), Some(c)) = (patch.as_object_mut(), current.as_object()) {
        for field in c.keys() {
            p.entry(field.clone()).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"resourceVersion": job.metadata.resource_version}, "status": patch})),
    )
    .await
    .map(|_| ())
}
