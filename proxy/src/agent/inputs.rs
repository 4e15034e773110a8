//! The watch side (kube-rs runtime's watcher → our trackers): three watches feed one
//! [`Inputs`], which the sync loop drains. Each watch wakes the loop when something it
//! reads changed; no-op updates stop at the trackers.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, NodeStatus, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{health::ProxyHealth, metrics::TrackerStats};
use crate::model::{EndpointsChangeTracker, ServiceChangeTracker};

/// kube-proxy's watch selector: Services and slices another proxy owns, or that are
/// headless, never reach us.
pub const SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// What the watches collected since the sync loop last looked.
#[derive(Debug)]
pub struct Inputs {
    pub services: ServiceChangeTracker,
    pub endpoints: EndpointsChangeTracker,
    /// This proxy's Node, once seen.
    pub node: Option<Node>,
    pub node_changed: bool,
    /// Which watches finished their first list.
    pub synced: BTreeSet<&'static str>,
}

impl Inputs {
    pub fn all_synced(&self) -> bool {
        ["services", "endpointslices", "node"]
            .iter()
            .all(|w| self.synced.contains(w))
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            service_changes_pending: self.services.pending(),
            service_changes_total: self.services.total(),
            endpoint_changes_pending: self.endpoints.pending(),
            endpoint_changes_total: self.endpoints.total(),
        }
    }
}

/// The state the watches and the sync loop share.
pub struct Shared {
    inputs: Mutex<Inputs>,
    pub wake: Notify,
    pub health: Arc<ProxyHealth>,
}

impl Shared {
    pub fn new(node_name: &str, health: Arc<ProxyHealth>) -> Self {
        Self {
            inputs: Mutex::new(Inputs {
                services: ServiceChangeTracker::new(),
                endpoints: EndpointsChangeTracker::new(node_name, SystemTime::now()),
                node: None,
                node_changed: false,
                synced: BTreeSet::new(),
            }),
            wake: Notify::new(),
            health,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inputs> {
        // The trackers stay consistent across a panic elsewhere (each update is one call).
        self.inputs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self) {
        self.health.queued();
        self.wake.notify_one();
    }
}

/// How one watched kind updates the inputs. Returns whether the next sync has work.
trait Tracked: Resource<DynamicType = ()> + Default + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    const WATCH: &'static str;
    fn apply(inputs: &mut Inputs, object: &Self) -> bool;
    /// Reads only the object's namespace and name: a re-list passes a stub for objects
    /// it no longer lists.
    fn delete(inputs: &mut Inputs, object: &Self) -> bool;
}

fn logged<E: std::fmt::Display>(kind: &str, name: &str, result: Result<bool, E>) -> bool {
    result.unwrap_or_else(|error| {
        // The last valid version stays programmed: a bad write must not tear a Service down.
        tracing::warn!(kind, object = name, %error, "ignoring invalid object");
        false
    })
}

impl Tracked for Service {
    const WATCH: &'static str = "services";
    fn apply(inputs: &mut Inputs, s: &Self) -> bool {
        logged("Service", &full_name(s), inputs.services.apply(s))
    }
    fn delete(inputs: &mut Inputs, s: &Self) -> bool {
        logged("Service", &full_name(s), inputs.services.delete(s))
    }
}

impl Tracked for EndpointSlice {
    const WATCH: &'static str = "endpointslices";
    fn apply(inputs: &mut Inputs, s: &Self) -> bool {
        logged("EndpointSlice", &full_name(s), inputs.endpoints.apply(s))
    }
    fn delete(inputs: &mut Inputs, s: &Self) -> bool {
        logged("EndpointSlice", &full_name(s), inputs.endpoints.delete(s))
    }
}

impl Tracked for Node {
    const WATCH: &'static str = "node";
    fn apply(inputs: &mut Inputs, n: &Self) -> bool {
        let changed = inputs.node.as_ref().is_none_or(|old| {
            old.metadata.labels != n.metadata.labels
                || old.status.as_ref().map(|s| &s.addresses) != n.status.as_ref().map(|s| &s.addresses)
        });
        inputs.node = Some(trimmed(n));
        inputs.node_changed |= changed;
        changed
    }
    fn delete(inputs: &mut Inputs, _: &Self) -> bool {
        inputs.node = None;
        inputs.node_changed = true;
        true
    }
}

/// The Node with only what the model reads (name, labels, addresses): its status also
/// lists every image on the node and changes with each heartbeat.
fn trimmed(n: &Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: n.metadata.name.clone(),
            labels: n.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: n.status.as_ref().and_then(|s| s.addresses.clone()),
            ..NodeStatus::default()
        }),
    }
}

fn full_name<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Starts the three watches. They run until the process ends, re-listing with backoff
/// whenever a watch breaks (kube-rs' watcher handles resourceVersion and 410 Gone).
pub fn spawn_watches(client: &Client, node_name: &str, shared: &Arc<Shared>) {
    let selected = watcher::Config::default().labels(SELECTOR);
    tokio::spawn(watch(
        Api::<Service>::all(client.clone()),
        selected.clone(),
        Arc::clone(shared),
    ));
    tokio::spawn(watch(
        Api::<EndpointSlice>::all(client.clone()),
        selected,
        Arc::clone(shared),
    ));
    let own = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    tokio::spawn(watch(Api::<Node>::all(client.clone()), own, Arc::clone(shared)));
}

async fn watch<K: Tracked>(api: Api<K>, config: watcher::Config, shared: Arc<Shared>) {
    // Which objects were last seen, so a re-list can tell which ones were deleted
    // meanwhile. Names only: a delete reads nothing else (see `Tracked::stub`), and the
    // objects themselves, managedFields and all, would be the agent's largest allocation
    // at scale (several hundred MiB at 10k Services × 10 endpoints).
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut relisted: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(watch = K::WATCH, %error, "watch failed; retrying");
                continue;
            }
        };
        let mut inputs = shared.lock();
        let changed = match event {
            watcher::Event::Init => {
                relisted.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                relisted.insert(ObjectKey::of(&o));
                K::apply(&mut inputs, &o)
            }
            watcher::Event::InitDone => {
                let mut changed = false;
                for gone in known.difference(&relisted) {
                    changed |= K::delete(&mut inputs, &gone.stub());
                }
                known = std::mem::take(&mut relisted);
                if inputs.synced.insert(K::WATCH) {
                    tracing::info!(watch = K::WATCH, objects = known.len(), "initial list done");
                    changed = true;
                }
                changed
            }
            watcher::Event::Apply(o) => {
                known.insert(ObjectKey::of(&o));
                K::apply(&mut inputs, &o)
            }
            watcher::Event::Delete(o) => {
                known.remove(&ObjectKey::of(&o));
                K::delete(&mut inputs, &o)
            }
        };
        drop(inputs);
        if changed {
            shared.changed();
        }
    }
}

/// An object's namespace and name: all a re-list needs to remember of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    namespace: Option<String>,
    name: String,
}

impl ObjectKey {
    fn of<K: Resource>(o: &K) -> Self {
        Self {
            namespace: o.meta().namespace.clone(),
            name: o.meta().name.clone().unwrap_or_default(),
        }
    }

    /// The object with only its namespace and name, which is all `Tracked::delete` reads.
    fn stub<K: Resource + Default>(&self) -> K {
        let mut o = K::default();
        o.meta_mut().namespace.clone_from(&self.namespace);
        o.meta_mut().name = Some(self.name.clone());
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{ready, service, simple_slice};

    /// A delete made from the remembered key must find what the full object recorded.
    #[test]
    fn a_stub_deletes_what_the_full_object_applied() {
        let shared = Shared::new("node-1", Arc::new(ProxyHealth::new(std::time::Duration::from_secs(60))));
        let mut inputs = shared.lock();
        let svc = service(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "web", "uid": "u", "annotations": {"a": "b"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
        }));
        let slice = simple_slice("web", "web-1", "http", 8080, vec![ready("10.244.1.5", "node-1")]);
        assert!(Service::apply(&mut inputs, &svc));
        assert!(EndpointSlice::apply(&mut inputs, &slice));
        inputs.services.take_changes();
        inputs.endpoints.take_changes();
        assert!(Service::delete(&mut inputs, &ObjectKey::of(&svc).stub()));
        assert!(EndpointSlice::delete(&mut inputs, &ObjectKey::of(&slice).stub()));
        assert_eq!(inputs.services.take_changes().services.len(), 1);
        assert_eq!(inputs.endpoints.take_changes().services.len(), 1);
    }
}
