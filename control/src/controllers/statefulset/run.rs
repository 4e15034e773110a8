//! The StatefulSet controller's IO: kube-runtime's `Controller` over StatefulSets, with
//! reflector stores of Pods, ControllerRevisions and PersistentVolumeClaims (a pod or
//! revision event triggers its controlling set). One sync adopts orphans the set selects,
//! finds or creates the update revision (upstream's collision handling included), asks
//! [`plan`](super::plan) what to do, carries it out in order, stopping at the first
//! failure, writes the status when it changed and prunes the revision history.
//!
//! There are no expectations as the ReplicaSet controller keeps: pod names are fixed, so a
//! store that lags a create makes the next create a 409, which stops the sync until the
//! watch catches up; a repeated delete is a 404 or a failed uid precondition.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{ControllerRevision, StatefulSet},
        core::v1::{PersistentVolumeClaim, Pod},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action as Requeue,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{
    identity::{self, ordinal_of},
    plan::{self, Action, Observed},
    revision,
};
use crate::controllers::{
    ready::Ready,
    workload::{controller_of, controller_ref, is_controlled_by, selector_matches},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not {action} {what} for StatefulSet {set}")]
    Write {
        action: &'static str,
        what: String,
        set: String,
        #[source]
        source: kube::Error,
    },
    #[error("revision {name} of StatefulSet {set} collides with another object; collisionCount is now {count}")]
    Collision { set: String, name: String, count: i32 },
    #[error("the caches stopped before they were ready")]
    CacheGone,
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    claims: Store<PersistentVolumeClaim>,
    /// The three caches' first lists.
    ready: Ready,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` completes. The client needs to list and watch
/// StatefulSets, Pods, ControllerRevisions and PVCs, write Pods, ControllerRevisions and
/// PVCs, patch `statefulsets/status`, and create Events.
pub async fn run(client: Client, shutdown: impl Future<Output = ()>) {
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (revisions, revisions_writer) = reflector::store::<ControllerRevision>();
    let (claims, claims_writer) = reflector::store::<PersistentVolumeClaim>();
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let revision_events = reflector::reflector(
        revisions_writer,
        watcher(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    // Claims only feed the store: a claim's change alters no plan (a missing one is
    // created when its pod is, and a duplicate create is a harmless 409).
    let claim_events = reflector::reflector(
        claims_writer,
        watcher(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(Api::<StatefulSet>::all(client.clone()), watcher::Config::default());
    let sets = controller.store();
    let sets_for_revisions = sets.clone();
    let controller = controller
        .watches_stream(pod_events, move |pod: Pod| sets_to_sync(&sets, &pod.metadata))
        .watches_stream(revision_events, move |rev: ControllerRevision| {
            sets_to_sync(&sets_for_revisions, &rev.metadata)
        })
        .watches_stream(claim_events, |_: PersistentVolumeClaim| Vec::new());
    let reporter = Reporter {
        controller: "statefulset-controller".into(),
        instance: None,
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        ready: Ready::all([Ready::of(&pods), Ready::of(&revisions), Ready::of(&claims)]),
        pods,
        revisions,
        claims,
    });
    tracing::info!("StatefulSet controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .take_until(shutdown)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %crate::controllers::display_chain(&e), "StatefulSet controller event");
            }
        })
        .await;
    tracing::info!("StatefulSet controller stopped");
}

/// The sets an event of a pod or revision concerns: its controller if that is a
/// StatefulSet, else (an orphan) every set of its namespace that selects it.
fn sets_to_sync(sets: &Store<StatefulSet>, meta: &kube::api::ObjectMeta) -> Vec<ObjectRef<StatefulSet>> {
    let ns = meta.namespace.clone().unwrap_or_default();
    if let Some(owner) = controller_of(meta) {
        if owner.kind == "StatefulSet" && owner.api_version.starts_with("apps/") {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return vec![];
    }
    sets.state()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|spec| selector_matches(&spec.selector, meta.labels.as_ref()))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn error_policy(set: Arc<StatefulSet>, e: &Error, _: Arc<Context>) -> Requeue {
    tracing::warn!(statefulset = %ObjectRef::from_obj(set.as_ref()), error = %crate::controllers::display_chain(e), "syncing StatefulSet failed; retrying");
    Requeue::requeue(Duration::from_secs(2))
}

fn in_namespace<K>(store: &Store<K>, ns: &str) -> Vec<Arc<K>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .collect()
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.ready.wait().await {
        return Err(Error::CacheGone);
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = format!("{ns}/{name}");
    let uid = set.uid().unwrap_or_default();
    let selector = set.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
    let deleting = set.metadata.deletion_timestamp.is_some();

    // Adopt the orphans the set selects (pods only with one of its names), release what it
    // owns but no longer selects; not while it is being deleted (upstream's ClaimObject).
    let mut pods: Vec<Arc<Pod>> = Vec::new();
    for pod in in_namespace(&ctx.pods, &ns) {
        let selected = selector_matches(&selector, pod.metadata.labels.as_ref()) && ordinal_of(&set, &pod).is_some();
        let owned = is_controlled_by(&pod.metadata, &uid);
        if owned && !selected && !deleting {
            set_controller(&ctx.client, &set, pod.as_ref(), false).await?;
        } else if owned {
            pods.push(pod);
        } else if selected
            && controller_of(&pod.metadata).is_none()
            && !deleting
            && pod.metadata.deletion_timestamp.is_none()
        {
            set_controller(&ctx.client, &set, pod.as_ref(), true).await?;
            // Planned from the next event, which shows the new owner.
        }
    }
    let mut revisions: Vec<Arc<ControllerRevision>> = Vec::new();
    for rev in in_namespace(&ctx.revisions, &ns) {
        if is_controlled_by(&rev.metadata, &uid) {
            revisions.push(rev);
        } else if controller_of(&rev.metadata).is_none()
            && !deleting
            && selector_matches(&selector, rev.metadata.labels.as_ref())
        {
            set_controller(&ctx.client, &set, rev.as_ref(), true).await?;
        }
    }
    if deleting {
        return Ok(Requeue::await_change());
    }

    let (current, update, collision_count) = revisions_of(&ctx, &set, &key, &revisions).await?;
    let mut revision_sets: BTreeMap<String, StatefulSet> = BTreeMap::new();
    for rev in revisions.iter().map(AsRef::as_ref).chain([&current, &update]) {
        if let Some(rev_name) = &rev.metadata.name {
            revision_sets.insert(rev_name.clone(), revision::apply_revision(&set, rev));
        }
    }
    let current_name = current.metadata.name.clone().unwrap_or_default();
    let update_name = update.metadata.name.clone().unwrap_or_default();

    let claim_objects = in_namespace(&ctx.claims, &ns);
    // The retention policy's owner references go on before any pod is deleted, so the
    // garbage collector removes a condemned pod's claims with it (whenScaled: Delete).
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let claim_refs: Vec<&PersistentVolumeClaim> = claim_objects.iter().map(AsRef::as_ref).collect();
    for (claim_name, owners) in identity::claim_owner_updates(&set, &pod_refs, &claim_refs) {
        let version = claim_refs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(claim_name.as_str()))
            .and_then(|c| c.metadata.resource_version.clone());
        let patch = json!({"metadata": {"ownerReferences": owners, "resourceVersion": version}});
        match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(Error::Write {
                    action: "set the owners of",
                    what: format!("claim {claim_name}"),
                    set: key,
                    source,
                });
            }
        }
    }
    let claims: BTreeSet<String> = claim_objects.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let observed = Observed {
        set: &set,
        pods: pods.iter().map(AsRef::as_ref).collect(),
        claims,
        current_revision: current_name.clone(),
        update_revision: update_name.clone(),
        now: Timestamp::now(),
    };
    let mut planned = plan::plan(&observed, &revision_sets);
    planned.status.collision_count = Some(collision_count);

    let waiting = carry_out(&ctx, &set, &key, &planned.actions).await?;
    write_status(&ctx.client, &set, &planned.status).await?;

    // History: keep what pods, the current and the update revision use, and at most
    // revisionHistoryLimit others.
    let mut live: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| identity::revision_of(p).map(str::to_owned))
        .collect();
    live.insert(current_name);
    live.insert(update_name);
    let all: Vec<&ControllerRevision> = revisions.iter().map(AsRef::as_ref).collect();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    for stale in revision::to_prune(&set, &all, &live) {
        match api.delete(&stale, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(source) => {
                return Err(Error::Write {
                    action: "delete",
                    what: format!("revision {stale}"),
                    set: key,
                    source,
                });
            }
        }
    }

    if waiting {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    // minReadySeconds passes without an event.
    let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    if min_ready > 0 && planned.status.available_replicas != planned.status.ready_replicas {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    Ok(Requeue::requeue(Duration::from_secs(300)))
}

/// Upstream's getStatefulSetRevisions: the current revision (named by the status, else the
/// update revision) and the update revision, an existing one when one holds the template
/// (renumbered to be the newest), else a new one. A name taken by a different revision
/// bumps `collisionCount` in the status and retries.
async fn revisions_of(
    ctx: &Context,
    set: &StatefulSet,
    key: &str,
    revisions: &[Arc<ControllerRevision>],
) -> Result<(ControllerRevision, ControllerRevision, i32), Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let collision_count = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let mut sorted: Vec<&ControllerRevision> = revisions.iter().map(AsRef::as_ref).collect();
    revision::sort_oldest_first(&mut sorted);
    let next = revision::next_revision_number(&sorted);
    let equal: Vec<&ControllerRevision> = sorted.iter().copied().filter(|r| revision::matches(r, set)).collect();
    let update = match (equal.last(), sorted.last()) {
        (Some(found), Some(newest)) if found.metadata.name == newest.metadata.name => (*found).clone(),
        (Some(found), _) => {
            // Back to an older template: it becomes the newest revision again.
            let rev_name = found.metadata.name.clone().unwrap_or_default();
            api.patch(
                &rev_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"revision": next})),
            )
            .await
            .map_err(|source| Error::Write {
                action: "renumber",
                what: format!("revision {rev_name}"),
                set: key.to_owned(),
                source,
            })?
        }
        (None, _) => {
            let wanted = revision::new_revision(set, next, collision_count);
            let rev_name = wanted.metadata.name.clone().unwrap_or_default();
            match api.create(&PostParams::default(), &wanted).await {
                Ok(created) => created,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = api.get(&rev_name).await.map_err(|source| Error::Write {
                        action: "read",
                        what: format!("revision {rev_name}"),
                        set: key.to_owned(),
                        source,
                    })?;
                    if revision::matches(&existing, set)
                        && is_controlled_by(&existing.metadata, &set.uid().unwrap_or_default())
                    {
                        existing
                    } else {
                        let count = collision_count.saturating_add(1);
                        Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
                            .patch_status(
                                &set.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(json!({"status": {"collisionCount": count}})),
                            )
                            .await
                            .map_err(|source| Error::Write {
                                action: "write",
                                what: "collisionCount".into(),
                                set: key.to_owned(),
                                source,
                            })?;
                        return Err(Error::Collision {
                            set: key.to_owned(),
                            name: rev_name,
                            count,
                        });
                    }
                }
                Err(source) => {
                    return Err(Error::Write {
                        action: "create",
                        what: format!("revision {rev_name}"),
                        set: key.to_owned(),
                        source,
                    });
                }
            }
        }
    };
    let status_current = set.status.as_ref().and_then(|s| s.current_revision.clone());
    let current = sorted
        .iter()
        .find(|r| r.metadata.name.is_some() && r.metadata.name == status_current)
        .map(|r| (*r).clone())
        .unwrap_or_else(|| update.clone());
    Ok((current, update, collision_count))
}

/// Carries the actions out in order, stopping at the first that fails. Returns whether a
/// create found its pod already there (our store lags our own write): the caller checks
/// again shortly.
async fn carry_out(ctx: &Context, set: &StatefulSet, key: &str, actions: &[Action]) -> Result<bool, Error> {
    let ns = set.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let fail = |action: &'static str, what: String, source: kube::Error| Error::Write {
        action,
        what,
        set: key.to_owned(),
        source,
    };
    for action in actions {
        match action {
            Action::CreateClaim(claim) => {
                let claim_name = claim.name_any();
                match claims.create(&PostParams::default(), claim).await {
                    Ok(_) => {
                        let note = format!("create Claim {claim_name} in StatefulSet {} success", set.name_any());
                        record(ctx, set, EventType::Normal, "SuccessfulCreate", note).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(source) => {
                        let note = format!(
                            "create Claim {claim_name} in StatefulSet {} failed error: {source}",
                            set.name_any()
                        );
                        record(ctx, set, EventType::Warning, "FailedCreate", note).await;
                        return Err(fail("create", format!("claim {claim_name}"), source));
                    }
                }
            }
            Action::CreatePod(pod) => {
                let pod_name = pod.name_any();
                match pods.create(&PostParams::default(), pod).await {
                    Ok(_) => {
                        tracing::debug!(statefulset = %key, pod = %pod_name, "created pod");
                        let note = format!("create Pod {pod_name} in StatefulSet {} successful", set.name_any());
                        record(ctx, set, EventType::Normal, "SuccessfulCreate", note).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => return Ok(true),
                    Err(source) => {
                        let note = format!(
                            "create Pod {pod_name} in StatefulSet {} failed error: {source}",
                            set.name_any()
                        );
                        record(ctx, set, EventType::Warning, "FailedCreate", note).await;
                        return Err(fail("create", format!("pod {pod_name}"), source));
                    }
                }
            }
            Action::DeletePod { name, uid } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match pods.delete(name, &dp).await {
                    Ok(_) => {
                        tracing::debug!(statefulset = %key, pod = %name, "deleted pod");
                        let note = format!("delete Pod {name} in StatefulSet {} successful", set.name_any());
                        record(ctx, set, EventType::Normal, "SuccessfulDelete", note).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(source) => {
                        let note = format!(
                            "delete Pod {name} in StatefulSet {} failed error: {source}",
                            set.name_any()
                        );
                        record(ctx, set, EventType::Warning, "FailedDelete", note).await;
                        return Err(fail("delete", format!("pod {name}"), source));
                    }
                }
            }
        }
    }
    Ok(false)
}

async fn record(ctx: &Context, set: &StatefulSet, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &set.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "could not record a StatefulSet event");
    }
}

/// Adopts `obj` (`adopt`) or releases it: rewrites its owner references, pinned to the
/// version we read, so a concurrent change makes us look again.
async fn set_controller<K>(client: &Client, set: &StatefulSet, obj: &K, adopt: bool) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let meta = obj.meta();
    let mut refs: Vec<_> = meta
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.controller != Some(true))
        .collect();
    if adopt {
        refs.push(controller_ref("apps/v1", "StatefulSet", &set.metadata));
    }
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}});
    let api: Api<K> = Api::namespaced(client.clone(), meta.namespace.as_deref().unwrap_or_default());
    let obj_name = meta.name.clone().unwrap_or_default();
    match api
        .patch(&obj_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::Write {
            action: if adopt { "adopt" } else { "release" },
            what: format!("{} {obj_name}", K::kind(&())),
            set: set.name_any(),
            source,
        }),
    }
}

/// Writes the status when it differs from the stored one.
async fn write_status(
    client: &Client,
    set: &StatefulSet,
    status: &k8s_openapi::api::apps::v1::StatefulSetStatus,
) -> Result<(), Error> {
    let current = serde_json::to_value(set.status.clone().unwrap_or_default()).unwrap_or_default();
    let wanted = serde_json::to_value(status).unwrap_or_default();
    if current == wanted {
        return Ok(());
    }
    Api::<StatefulSet>::namespaced(client.clone(), &set.namespace().unwrap_or_default())
        .patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": wanted})),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Write {
            action: "write",
            what: "status".into(),
            set: set.name_any(),
            source,
        })
}
