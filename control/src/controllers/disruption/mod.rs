//! The disruption controller: keeps each PodDisruptionBudget's status — how many of its
//! pods are expected, healthy and required, and so how many may be evicted now — which the
//! API server's `pods/eviction` reads and decrements.
//!
//! kube-runtime's `Controller` drives it: budgets are the main objects and every Pod change
//! (after the reflector has stored it) reconciles them all. Reconcile picks the budget's
//! pods from the store, asks the pods' controllers for their scale when the budget is a
//! percentage or a maxUnavailable (`scale`), does the arithmetic in [`budget`] (pure) and
//! writes the status with the budget's resourceVersion, so an eviction that decremented
//! the budget meanwhile is never overwritten by a stale computation.

pub mod budget;
mod scale;

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        core::v1::Pod,
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, ResourceExt,
    api::PostParams,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, Store},
        watcher,
    },
};

use crate::apiserver::selector::LabelSelector;
use budget::{IntOrPercent, PodView, Rule};

/// The condition the controller keeps, and its reasons (upstream's names).
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";
pub const SUFFICIENT_PODS: &str = "SufficientPods";
pub const INSUFFICIENT_PODS: &str = "InsufficientPods";
pub const SYNC_FAILED: &str = "SyncFailed";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The budget's status cannot be computed; its message goes into the SyncFailed condition.
    #[error("{0}")]
    Compute(String),
    #[error("writing the status of PodDisruptionBudget {pdb}: {source}")]
    Status { pdb: String, source: kube::Error },
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    pods_ready: super::ready::Ready,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (pods, pods_writer) = reflector::store::<Pod>();
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|p| async move { p.ok().map(|_| ()) });
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(pod_events)
    .graceful_shutdown_on(shutdown.boxed().shared());
    let ctx = Arc::new(Context {
        client,
        pods_ready: super::ready::Ready::of(&pods),
        pods,
    });
    tracing::info!("disruption controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "PodDisruptionBudget reconcile");
            }
        })
        .await;
    tracing::info!("disruption controller stopped");
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(pdb = %pdb.name_any(), error = %e, "syncing PodDisruptionBudget failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = ctx.pods_ready.wait().await;
    let now = Timestamp::now();
    let (status, recheck) = match compute(&pdb, &ctx, now).await {
        Ok(computed) => computed,
        Err(e) => {
            write_status(&ctx, &pdb, fail_safe(&pdb, &e, now)).await?;
            return Err(e);
        }
    };
    if write_status(&ctx, &pdb, status).await? == Written::Conflict {
        // An eviction wrote the budget since we read it: compute again from the newer one
        // soon rather than at the next periodic look.
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    Ok(match recheck {
        // A pending eviction's entry expires without any event; look again then.
        Some(at) => Action::requeue(Duration::try_from(at.duration_since(now)).unwrap_or_default()),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// The status the budget should have at `now`, and when to look again.
async fn compute(
    pdb: &PodDisruptionBudget,
    ctx: &Context,
    now: Timestamp,
) -> Result<(PodDisruptionBudgetStatus, Option<Timestamp>), Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let rule = rule_of(&spec)?;
    let selector_json = serde_json::to_value(&spec.selector).map_err(|e| Error::Compute(e.to_string()))?;
    let selector =
        LabelSelector::from_label_selector_json(&selector_json).map_err(|e| Error::Compute(e.to_string()))?;
    let empty = BTreeMap::new();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty)))
        .collect();
    let scale = if rule.needs_scale() {
        scale::expected_scale(&ctx.client, &ns, &pods).await?
    } else {
        0
    };
    let (expected, desired) = rule.expected_and_desired(i32::try_from(pods.len()).unwrap_or(i32::MAX), scale);
    let views: Vec<PodView> = pods.iter().map(|p| view(p)).collect();
    let old = pdb.status.clone().unwrap_or_default();
    let recorded: BTreeMap<String, Timestamp> = old
        .disrupted_pods
        .iter()
        .flatten()
        .map(|(name, t)| (name.clone(), t.0))
        .collect();
    let (pending, recheck) = budget::pending_disruptions(&recorded, &views, now);
    let healthy = budget::current_healthy(&views, &pending);
    let allowed = budget::disruptions_allowed(healthy, desired, expected);
    let generation = pdb.metadata.generation;
    let mut status = PodDisruptionBudgetStatus {
        conditions: old.conditions.clone(),
        current_healthy: healthy,
        desired_healthy: desired,
        disrupted_pods: Some(pending.into_iter().map(|(k, t)| (k, Time(t))).collect()),
        disruptions_allowed: allowed,
        expected_pods: expected,
        observed_generation: generation,
    };
    let (state, reason) = if allowed > 0 {
        ("True", SUFFICIENT_PODS)
    } else {
        ("False", INSUFFICIENT_PODS)
    };
    set_condition(&mut status, state, reason, "", now);
    Ok((status, recheck))
}

fn rule_of(spec: &k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec) -> Result<Rule, Error> {
    let parse = |v| IntOrPercent::parse(v).map_err(Error::Compute);
    Ok(match (&spec.min_available, &spec.max_unavailable) {
        (_, Some(max)) => Rule::MaxUnavailable(parse(max)?),
        (Some(min), None) => Rule::MinAvailable(parse(min)?),
        (None, None) => Rule::Unset,
    })
}

fn view(pod: &Pod) -> PodView {
    PodView {
        name: pod.name_any(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready: is_ready(pod),
    }
}

/// Upstream's IsPodReady: the Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Upstream's failSafe: no disruptions until the status can be computed again, and why.
fn fail_safe(pdb: &PodDisruptionBudget, e: &Error, now: Timestamp) -> PodDisruptionBudgetStatus {
    let mut status = pdb.status.clone().unwrap_or_default();
    status.disruptions_allowed = 0;
    set_condition(&mut status, "False", SYNC_FAILED, &e.to_string(), now);
    status
}

/// Sets the DisruptionAllowed condition as apimachinery's SetStatusCondition does: the
/// transition time moves only when the status does.
fn set_condition(status: &mut PodDisruptionBudgetStatus, state: &str, reason: &str, message: &str, now: Timestamp) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let observed_generation = status.observed_generation;
    match conditions.iter_mut().find(|c| c.type_ == DISRUPTION_ALLOWED) {
        Some(c) => {
            if c.status != state {
                c.status = state.to_owned();
                c.last_transition_time = Time(now);
            }
            c.reason = reason.to_owned();
            c.message = message.to_owned();
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: DISRUPTION_ALLOWED.to_owned(),
            status: state.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation,
            last_transition_time: Time(now),
        }),
    }
}

/// How soon a reconcile whose status write lost a race looks again.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);

/// What became of a status write.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// Written, unchanged, or the budget is gone.
    Done,
    /// Someone (an eviction) wrote the budget since we read it.
    Conflict,
}

/// Replaces the status under the budget's resourceVersion, when it changed.
async fn write_status(
    ctx: &Context,
    pdb: &PodDisruptionBudget,
    status: PodDisruptionBudgetStatus,
) -> Result<Written, Error> {
    if pdb.status.as_ref() == Some(&status) {
        return Ok(Written::Done);
    }
    let ns = pdb.namespace().unwrap_or_default();
    let name = pdb.name_any();
    let mut updated = pdb.clone();
    updated.status = Some(status);
    match Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns)
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Written::Conflict),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Written::Done),
        Err(source) => Err(Error::Status {
            pdb: format!("{ns}/{name}"),
            source,
        }),
    }
}
