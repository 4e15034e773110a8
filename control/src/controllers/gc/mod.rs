//! The garbage collector: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletions, as upstream's `garbagecollector` controller.
//!
//! It watches the kinds in [`KINDS`] (metadata is all it uses), keeps the ownership
//! [`graph::Graph`], and works a queue of uids: each is decided from its direct edges
//! ([`graph::Graph::decide`], pure) and the step is written through the API. An owner the
//! graph does not hold is looked up live before anything is deleted for its absence (the
//! watch of its kind may just be behind), and owners of kinds outside [`KINDS`] are never
//! taken for absent.

pub mod graph;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::pin,
    time::Duration,
};

use futures::{
    FutureExt, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered, SelectAll},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::time::Instant;

use self::graph::{Graph, Object, OwnerState, Step, Uid};
use super::queue::{Backoff, WorkQueue};
use crate::apiserver::registry::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation};

/// A watched kind: (group, version, kind, plural, namespaced).
type Kind = (&'static str, &'static str, &'static str, &'static str, bool);

/// The kinds that have owners or are owners here.
pub const KINDS: &[Kind] = &[
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "Endpoints", "endpoints", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
    ("", "v1", "Node", "nodes", false),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("apps", "v1", "ControllerRevision", "controllerrevisions", true),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
];

/// Reconciles in flight at once (upstream's `--concurrent-gc-syncs` is 20; writes here are
/// cheap and the machines small).
const WORKERS: usize = 5;

fn api_resource(k: &Kind) -> ApiResource {
    let (group, version, kind, plural, _) = *k;
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn kind_of(api_version: &str, kind: &str) -> Option<usize> {
    KINDS
        .iter()
        .position(|k| api_resource(k).api_version == api_version && k.2 == kind)
}

fn api(client: &Client, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
    let k = &KINDS[kind];
    match namespace.filter(|_| k.4) {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &api_resource(k)),
        None => Api::all_with(client.clone(), &api_resource(k)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind} {name}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

struct Input {
    kind: usize,
    event: watcher::Result<watcher::Event<DynamicObject>>,
}

fn to_object(kind: usize, o: &DynamicObject) -> Option<Object> {
    let m = &o.metadata;
    Some(Object {
        uid: m.uid.clone()?,
        kind,
        namespace: m.namespace.clone(),
        name: m.name.clone()?,
        resource_version: m.resource_version.clone(),
        owners: m.owner_references.clone().unwrap_or_default(),
        deleting: m.deletion_timestamp.is_some(),
        finalizers: m.finalizers.clone().unwrap_or_default(),
    })
}

struct State {
    graph: Graph,
    queue: WorkQueue<Uid>,
    /// Kinds whose initial list has not finished (nothing is decided until all have).
    unsynced: HashSet<usize>,
    /// Uids seen during a relist of a kind; the others of that kind are gone.
    relisting: HashMap<usize, HashSet<Uid>>,
}

impl State {
    fn on_input(&mut self, input: Input) {
        let kind = input.kind;
        let event = match input.event {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(kind = KINDS[kind].2, error = %e, "watch failed; retrying with backoff");
                return;
            }
        };
        let affected = match event {
            watcher::Event::Init => {
                self.relisting.insert(kind, HashSet::new());
                vec![]
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => match to_object(kind, &o) {
                Some(obj) => {
                    if let Some(seen) = self.relisting.get_mut(&kind) {
                        seen.insert(obj.uid.clone());
                    }
                    self.graph.upsert(obj)
                }
                None => vec![],
            },
            watcher::Event::Delete(o) => o
                .metadata
                .uid
                .as_deref()
                .map(|u| self.graph.remove(u))
                .unwrap_or_default(),
            watcher::Event::InitDone => {
                self.unsynced.remove(&kind);
                let seen = self.relisting.remove(&kind).unwrap_or_default();
                let mut affected = vec![];
                for uid in self.graph.uids_of_kind(kind) {
                    if !seen.contains(&uid) {
                        affected.extend(self.graph.remove(&uid));
                    }
                }
                if self.unsynced.is_empty() {
                    tracing::info!(objects = self.graph.len(), "garbage collector synced");
                }
                affected
            }
        };
        for uid in affected {
            self.queue.add(uid);
        }
    }
}

/// Runs the garbage collector until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let mut inputs: SelectAll<BoxStream<'static, Input>> = SelectAll::new();
    for (kind, k) in KINDS.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(k));
        inputs.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |event| Input { kind, event })
                .boxed(),
        );
    }
    let mut state = State {
        graph: Graph::default(),
        queue: WorkQueue::new(Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(60),
        }),
        unsynced: (0..KINDS.len()).collect(),
        relisting: HashMap::new(),
    };
    let mut running: FuturesUnordered<BoxFuture<'static, (Uid, Result<(), Error>)>> = FuturesUnordered::new();
    let mut shutdown = pin!(shutdown.fuse());
    tracing::info!(kinds = KINDS.len(), "garbage collector starting");
    loop {
        if state.unsynced.is_empty() {
            while running.len() < WORKERS {
                let Some(uid) = state.queue.pop() else { break };
                let work = prepare(&state.graph, &uid, &client);
                running.push(async move { (uid, work.await) }.boxed());
            }
        }
        let deadline = state.queue.next_deadline();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some((uid, result)) = running.next(), if !running.is_empty() => {
                state.queue.done(&uid);
                match result {
                    Ok(()) => state.queue.forget(&uid),
                    Err(e) => {
                        let delay = state.queue.retry(uid.clone(), Instant::now());
                        tracing::warn!(uid, error = %e, retry_in_ms = delay.as_millis() as u64, "garbage collection step failed");
                    }
                }
            }
            Some(input) = inputs.next() => state.on_input(input),
            () = crate::controllers::queue::sleep_until(deadline), if deadline.is_some() => state.queue.promote_due(Instant::now()),
        }
    }
    tracing::info!("garbage collector stopped");
}

/// Everything one uid's work needs from the graph, taken before it runs (the graph stays
/// with the event loop).
struct Snapshot {
    obj: Object,
    dependents: Vec<Object>,
    /// Owners the graph knows, with their state; the others are looked up.
    known: HashMap<Uid, OwnerState>,
}

fn prepare(graph: &Graph, uid: &str, client: &Client) -> BoxFuture<'static, Result<(), Error>> {
    let Some(obj) = graph.get(uid).cloned() else {
        return futures::future::ready(Ok(())).boxed();
    };
    let known = obj
        .owners
        .iter()
        .filter_map(|o| Some((o.uid.clone(), graph.owner_state(o)?)))
        .collect();
    let snapshot = Snapshot {
        dependents: graph.dependents(uid).into_iter().cloned().collect(),
        known,
        obj,
    };
    // The decision needs the looked-up owners; deciding again with them is cheap, so the
    // graph's part is redone on a copy holding just this object and its dependents.
    let mut local = Graph::default();
    for d in &snapshot.dependents {
        local.upsert(d.clone());
    }
    local.upsert(snapshot.obj.clone());
    let client = client.clone();
    async move { work(&client, &local, snapshot).await }.boxed()
}

async fn work(client: &Client, local: &Graph, s: Snapshot) -> Result<(), Error> {
    let mut owners = s.known.clone();
    if !s.obj.deleting {
        for o in &s.obj.owners {
            if !owners.contains_key(&o.uid) {
                owners.insert(o.uid.clone(), look_up(client, &s.obj, o).await?);
            }
        }
    }
    let Some(step) = local.decide(&s.obj.uid, &owners) else {
        return Ok(());
    };
    let kind = KINDS[s.obj.kind].2;
    tracing::debug!(kind, name = %s.obj.name, ?step, "garbage collecting");
    match step {
        Step::DropOwnerRefs(gone) => {
            let remaining: Vec<&OwnerReference> = s.obj.owners.iter().filter(|o| !gone.contains(&o.uid)).collect();
            patch_meta(
                client,
                &s.obj,
                json!({"ownerReferences": remaining}),
                "removing ownerReferences from",
            )
            .await
        }
        Step::Delete { policy, unblock } => {
            if !unblock.is_empty() {
                let refs: Vec<OwnerReference> = s
                    .obj
                    .owners
                    .iter()
                    .cloned()
                    .map(|mut o| {
                        if unblock.contains(&o.uid) {
                            o.block_owner_deletion = Some(false);
                        }
                        o
                    })
                    .collect();
                patch_meta(client, &s.obj, json!({"ownerReferences": refs}), "unblocking owners of").await?;
            }
            let dp = DeleteParams {
                propagation_policy: Some(match policy {
                    Propagation::Background => PropagationPolicy::Background,
                    Propagation::Foreground => PropagationPolicy::Foreground,
                    Propagation::Orphan => PropagationPolicy::Orphan,
                }),
                preconditions: Some(Preconditions {
                    uid: Some(s.obj.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api(client, s.obj.kind, s.obj.namespace.as_deref())
                .delete(&s.obj.name, &dp)
                .await
            {
                Ok(_) => {
                    tracing::info!(kind, namespace = ?s.obj.namespace, name = %s.obj.name, "deleted: its owners are gone");
                    Ok(())
                }
                Err(e) if is_gone(&e) => Ok(()),
                Err(source) => Err(Error::Api {
                    action: "deleting",
                    kind,
                    name: s.obj.name.clone(),
                    source,
                }),
            }
        }
        Step::Orphan { dependents } => {
            for d in s.dependents.iter().filter(|d| dependents.contains(&d.uid)) {
                let remaining: Vec<&OwnerReference> = d.owners.iter().filter(|o| o.uid != s.obj.uid).collect();
                patch_meta(client, d, json!({"ownerReferences": remaining}), "orphaning").await?;
            }
            remove_finalizer(client, &s.obj, ORPHAN_FINALIZER).await
        }
        Step::RemoveFinalizer(f) => remove_finalizer(client, &s.obj, f).await,
    }
}

async fn remove_finalizer(client: &Client, obj: &Object, finalizer: &str) -> Result<(), Error> {
    debug_assert!(finalizer == ORPHAN_FINALIZER || finalizer == FOREGROUND_FINALIZER);
    let remaining: Vec<&String> = obj.finalizers.iter().filter(|f| *f != finalizer).collect();
    patch_meta(
        client,
        obj,
        json!({"finalizers": remaining}),
        "removing a finalizer from",
    )
    .await
}

/// A merge patch of `metadata`, pinned to the resourceVersion the decision was made on:
/// if the object changed since, the write fails and the uid is decided again.
async fn patch_meta(
    client: &Client,
    obj: &Object,
    mut fields: serde_json::Value,
    action: &'static str,
) -> Result<(), Error> {
    fields["resourceVersion"] = json!(obj.resource_version);
    let patch = json!({"metadata": fields});
    match api(client, obj.kind, obj.namespace.as_deref())
        .patch(&obj.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(source) => Err(Error::Api {
            action,
            kind: KINDS[obj.kind].2,
            name: obj.name.clone(),
            source,
        }),
    }
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// An owner the graph does not hold, read live. Kinds not watched here count as solid:
/// the collector never deletes what it cannot check.
async fn look_up(client: &Client, dependent: &Object, owner: &OwnerReference) -> Result<OwnerState, Error> {
    let Some(kind) = kind_of(&owner.api_version, &owner.kind) else {
        return Ok(OwnerState::Solid);
    };
    let namespace = if KINDS[kind].4 {
        dependent.namespace.as_deref()
    } else {
        None
    };
    match api(client, kind, namespace).get_opt(&owner.name).await {
        Ok(Some(o)) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
            let found = to_object(kind, &o);
            Ok(if found.is_some_and(|f| f.waiting_for_dependents()) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            })
        }
        Ok(_) => Ok(OwnerState::Absent),
        Err(source) => Err(Error::Api {
            action: "looking up owner",
            kind: KINDS[kind].2,
            name: owner.name.clone(),
            source,
        }),
    }
}
