//! The CronJob controller, as upstream's (v2): every CronJob creates a Job from its
//! template at each time its schedule names, in its `timeZone`, within
//! `startingDeadlineSeconds`, as `concurrencyPolicy` allows, and keeps `status.active`,
//! `lastScheduleTime`, `lastSuccessfulTime` and its finished Jobs within the history limits.
//!
//! kube-runtime's `Controller` runs it over CronJobs, triggered by a Job reflector's events
//! for each Job's controlling CronJob; the reconcile reads that same cache and asks to be
//! woken at the next schedule time. [`plan`] decides; [`schedule`] is the cron arithmetic.

pub mod plan;
pub mod schedule;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use super::workload::controller_of;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not {action} Job {job}")]
    Job {
        action: &'static str,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not write the status of CronJob {name}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Job cache stopped before it was ready")]
    CacheGone,
}

struct Context {
    client: Client,
    jobs: Store<Job>,
    jobs_ready: super::ready::Ready,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` completes. The client needs to list and watch
/// CronJobs and Jobs, create and delete Jobs, patch `cronjobs/status` and create Events.
pub async fn run(client: Client, shutdown: impl Future<Output = ()>) {
    let (jobs, writer) = reflector::store::<Job>();
    let job_events = reflector::reflector(
        writer,
        watcher(Api::<Job>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(Api::<CronJob>::all(client.clone()), watcher::Config::default())
        .watches_stream(job_events, |job: Job| owner_of(&job));
    let reporter = Reporter {
        controller: "cronjob-controller".into(),
        instance: None,
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        jobs_ready: super::ready::Ready::of(&jobs),
        jobs,
    });
    tracing::info!("CronJob controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .take_until(shutdown)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %super::display_chain(&e), "CronJob controller event");
            }
        })
        .await;
    tracing::info!("CronJob controller stopped");
}

fn owner_of(job: &Job) -> Option<ObjectRef<CronJob>> {
    let owner = controller_of(&job.metadata)?;
    (owner.kind == "CronJob" && owner.api_version.starts_with("batch/"))
        .then(|| ObjectRef::new(&owner.name).within(job.metadata.namespace.as_deref().unwrap_or_default()))
}

fn error_policy(cj: Arc<CronJob>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(cronjob = %ObjectRef::from_obj(cj.as_ref()), error = %super::display_chain(e), "syncing CronJob failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.jobs_ready.wait().await {
        return Err(Error::CacheGone);
    }
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let mut plan = plan::plan(&cj, &jobs, Timestamp::now());
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for (name, why) in &plan.delete {
        match api.delete(name, &background).await {
            Ok(_) => tracing::debug!(cronjob = %cj.name_any(), job = %name, why, "deleted Job"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Job {
                    action: "delete",
                    job: name.clone(),
                    source,
                });
            }
        }
    }
    if let Some(job) = &plan.create {
        let name = job.name_any();
        match api.create(&PostParams::default(), job).await {
            Ok(created) => {
                // The active list names the Job by uid once it exists.
                if let Some(active) = plan.status.active.as_mut()
                    && let Some(r) = active.iter_mut().find(|r| r.name.as_deref() == Some(name.as_str()))
                {
                    r.uid = created.metadata.uid.clone();
                    r.resource_version = created.metadata.resource_version.clone();
                }
            }
            // Created by an earlier pass whose status write our cache has not seen.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                plan.events
                    .push(("Warning", "FailedCreate", format!("Error creating job: {source}")));
                publish(&ctx, &cj, &plan.events).await;
                return Err(Error::Job {
                    action: "create",
                    job: name,
                    source,
                });
            }
        }
    }
    publish(&ctx, &cj, &plan.events).await;
    write_status(&ctx.client, &cj, &plan.status).await?;
    // Woken at the next schedule time; Job events wake it sooner.
    let wait = plan.requeue_after.unwrap_or(300.0).clamp(0.1, 3600.0);
    Ok(Action::requeue(Duration::from_secs_f64(wait)))
}

async fn publish(ctx: &Context, cj: &CronJob, events: &[(&'static str, &'static str, String)]) {
    for (ty, reason, note) in events {
        let event = Event {
            type_: if *ty == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: (*reason).into(),
            note: Some(note.clone()),
            action: "Schedule".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &cj.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "could not record a CronJob event");
        }
    }
}

async fn write_status(
    client: &Client,
    cj: &CronJob,
    status: &k8s_openapi::api::batch::v1::CronJobStatus,
) -> Result<(), Error> {
    // Absent fields are written as null: a merge patch leaves out what it omits.
    let wanted = json!({
        "active": status.active,
        "lastScheduleTime": status.last_schedule_time,
        "lastSuccessfulTime": status.last_successful_time,
    });
    let current = serde_json::to_value(cj.status.clone().unwrap_or_default()).unwrap_or_default();
    let same = ["active", "lastScheduleTime", "lastSuccessfulTime"]
        .iter()
        .all(|f| current.get(*f).unwrap_or(&serde_json::Value::Null) == &wanted[*f]);
    if same {
        return Ok(());
    }
    let api: Api<CronJob> = Api::namespaced(client.clone(), &cj.namespace().unwrap_or_default());
    api.patch_status(
        &cj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": wanted})),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        name: cj.name_any(),
        source,
    })
}
