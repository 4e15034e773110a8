//! The resource quota controller: keeps every ResourceQuota's `status.hard` (its
//! `spec.hard`) and `status.used` (what the namespace's objects use) current.
//!
//! kube-runtime's `Controller` over ResourceQuotas, reconciled when a quota is created or
//! its spec changes (not on status writes: the ResourceQuota admission plugin charges
//! creates there, and a recount racing a charged create whose object is not stored yet
//! would give the slot back), when a counted object is updated or deleted (creates were
//! charged at admission), and every [`RESYNC`]. Pods and Services are watched into
//! reflector stores, ConfigMaps and Secrets as metadata only (they are just counted);
//! other `count/<resource>.<group>` names are listed when reconciled. [`compute`] does the
//! arithmetic.

pub mod compute;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Debug,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, Secret, Service};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, PredicateConfig, WatchStreamExt,
        controller::Action,
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::quota::usage;

/// How often every quota is recounted even without a change (upstream's default is 5 min).
pub const RESYNC: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of ResourceQuota {quota}: {source}")]
    Status { quota: String, source: kube::Error },
    #[error("counting {resource} in namespace {namespace}: {source}")]
    Count {
        resource: String,
        namespace: String,
        source: kube::Error,
    },
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    services: Store<Service>,
    configmaps: Store<PartialObjectMeta<ConfigMap>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    /// The four caches' first lists.
    ready: super::ready::Ready,
    /// `(group, plural)` → how to list it, found by discovery once.
    resolved: Mutex<HashMap<(String, String), ApiResource>>,
}

/// Turns a counted kind's watch events into reconcile requests for the quotas of the
/// object's namespace: updates and deletes only (a re-list recounts every quota).
fn triggers<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    quotas: Store<ResourceQuota>,
) -> impl Stream<Item = ObjectRef<ResourceQuota>> + Send + 'static
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
{
    let mut seen: HashSet<String> = HashSet::new();
    events
        .map(move |ev| {
            let uid = |o: &K| o.meta().uid.clone().unwrap_or_default();
            // None: every namespace.
            let namespaces: Vec<Option<String>> = match ev {
                Ok(watcher::Event::InitApply(o)) => {
                    seen.insert(uid(&o));
                    vec![]
                }
                Ok(watcher::Event::Apply(o)) => {
                    if seen.insert(uid(&o)) {
                        vec![]
                    } else {
                        vec![o.meta().namespace.clone()]
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&uid(&o));
                    vec![o.meta().namespace.clone()]
                }
                Ok(watcher::Event::InitDone) => vec![None],
                Ok(watcher::Event::Init) | Err(_) => vec![],
            };
            let refs: Vec<ObjectRef<ResourceQuota>> = namespaces
                .into_iter()
                .flat_map(|ns| {
                    quotas
                        .state()
                        .into_iter()
                        .filter(move |q| ns.is_none() || q.namespace() == ns)
                        .map(|q| ObjectRef::from_obj(&*q))
                })
                .collect();
            stream::iter(refs)
        })
        .flatten()
}

fn reflect<K>(
    writer: reflector::store::Writer<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    reflector::reflector(writer, events).default_backoff()
}

fn watch_all<K>(client: &Client) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (quotas, quotas_writer) = reflector::store::<ResourceQuota>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (services, services_writer) = reflector::store::<Service>();
    let (configmaps, configmaps_writer) = reflector::store();
    let (secrets, secrets_writer) = reflector::store();
    let quota_changes = reflect(quotas_writer, watch_all::<ResourceQuota>(&client))
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    let pod_events = triggers(reflect(pods_writer, watch_all::<Pod>(&client)), quotas.clone());
    let service_events = triggers(reflect(services_writer, watch_all::<Service>(&client)), quotas.clone());
    let configmap_events = triggers(
        reflect(configmaps_writer, watch_all::<PartialObjectMeta<ConfigMap>>(&client)),
        quotas.clone(),
    );
    let secret_events = triggers(
        reflect(secrets_writer, watch_all::<PartialObjectMeta<Secret>>(&client)),
        quotas.clone(),
    );
    let controller = Controller::for_stream(quota_changes, quotas)
        .reconcile_on(pod_events)
        .reconcile_on(service_events)
        .reconcile_on(configmap_events)
        .reconcile_on(secret_events)
        .graceful_shutdown_on(shutdown.boxed().shared());
    let ctx = Arc::new(Context {
        client,
        ready: super::ready::Ready::all([
            super::ready::Ready::of(&pods),
            super::ready::Ready::of(&services),
            super::ready::Ready::of(&configmaps),
            super::ready::Ready::of(&secrets),
        ]),
        pods,
        services,
        configmaps,
        secrets,
        resolved: Mutex::new(HashMap::new()),
    });
    tracing::info!("ResourceQuota controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "ResourceQuota reconcile");
            }
        })
        .await;
    tracing::info!("ResourceQuota controller stopped");
}

fn error_policy(quota: Arc<ResourceQuota>, e: &Error, _: Arc<Context>) -> Action {
    tracing::debug!(quota = %quota.name_any(), error = %e, "syncing ResourceQuota failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

fn in_namespace<K>(store: &Store<K>, ns: &str) -> Vec<Value>
where
    K: Resource + Clone + serde::Serialize,
    K::DynamicType: Eq + Hash + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .filter_map(|o| serde_json::to_value(&*o).ok())
        .collect()
}

fn count_in<K>(store: &Store<K>, ns: &str) -> usize
where
    K: Resource + Clone,
    K::DynamicType: Eq + Hash + Clone,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .count()
}

async fn resolve(ctx: &Context, group: &str, plural: &str) -> Option<ApiResource> {
    let key = (group.to_owned(), plural.to_owned());
    if let Some(ar) = ctx.resolved.lock().ok()?.get(&key) {
        return Some(ar.clone());
    }
    let found = kube::discovery::group(&ctx.client, group).await.ok()?;
    let ar = found
        .recommended_resources()
        .into_iter()
        .find(|(ar, _)| ar.plural == plural)
        .map(|(ar, _)| ar)?;
    ctx.resolved.lock().ok()?.insert(key, ar.clone());
    Some(ar)
}

async fn reconcile(quota: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = quota.name_any();
    let Some(ns) = quota.namespace() else {
        return Ok(Action::await_change());
    };
    if quota.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = ctx.ready.wait().await;
    let quota_json = serde_json::to_value(&*quota).unwrap_or_default();
    let pods = in_namespace(&ctx.pods, &ns);
    let services = in_namespace(&ctx.services, &ns);
    let blank = json!({});
    let configmaps = vec![&blank; count_in(&ctx.configmaps, &ns)];
    let secrets = vec![&blank; count_in(&ctx.secrets, &ns)];
    let mut counts = BTreeMap::new();
    for (count_name, group, plural) in compute::listed_counts(&quota_json) {
        // A resource nobody serves counts zero, as upstream's generic evaluator does.
        let Some(ar) = resolve(&ctx, &group, &plural).await else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        let list = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|source| Error::Count {
                resource: count_name.clone(),
                namespace: ns.clone(),
                source,
            })?;
        counts.insert(count_name, list.items.len() as i64);
    }
    let mut namespace = compute::Namespace {
        counts,
        ..compute::Namespace::default()
    };
    namespace.objects.insert("pods", pods.iter().collect());
    namespace.objects.insert("services", services.iter().collect());
    namespace.objects.insert("configmaps", configmaps);
    namespace.objects.insert("secrets", secrets);
    let used = compute::used(&quota_json, &namespace);
    let hard = usage::parse_list(&quota_json["spec"]["hard"]);
    let same = usage::parse_list(&quota_json["status"]["hard"]) == hard
        && quota_json["status"]["hard"].as_object().map(|m| m.len()) == Some(hard.len())
        && usage::parse_list(&quota_json["status"]["used"]) == used
        && quota_json["status"]["used"].as_object().map(|m| m.len()) == Some(used.len());
    if !same {
        // Pinned to the version read: a charge the admission plugin wrote since then makes
        // this a conflict, and the recount runs again on the newer quota.
        let patch = json!({
            "metadata": {"resourceVersion": quota.resource_version()},
            "status": {
                "hard": replacing(&quota_json["status"]["hard"], &quota_json["spec"]["hard"]),
                "used": replacing(&quota_json["status"]["used"], &usage::to_json(&used)),
            },
        });
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Status {
                quota: format!("{ns}/{name}"),
                source,
            })?;
    }
    Ok(Action::requeue(RESYNC))
}

/// A merge patch value that turns map `old` into `new` (removed keys become null).
fn replacing(old: &Value, new: &Value) -> Value {
    let mut out = new.as_object().cloned().unwrap_or_default();
    for k in old.as_object().into_iter().flatten().map(|(k, _)| k) {
        out.entry(k.clone()).or_insert(Value::Null);
    }
    Value::Object(out)
}
