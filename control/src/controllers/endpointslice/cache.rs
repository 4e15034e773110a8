//! The controller's view of the cluster, fed by kube-runtime watchers: Services, Pods (as
//! [`PodInfo`], indexed by namespace), this controller's EndpointSlices (by Service),
//! Endpoints and Node zones.
//!
//! Like kube-runtime's reflector store (a relist is buffered and swapped in at
//! `InitDone`), but owned by the event loop, indexed for the questions the controller
//! asks, and change-aware: each event reports which Service keys it affects, and events
//! that change nothing the controller reads (a Pod status heartbeat, a Node lease) affect
//! none.
//!
//! It also remembers the controller's own writes until their watch events arrive, so the
//! controller can tell its own writes' echoes from news, and never plans from a cache that
//! is behind what it wrote itself (upstream's EndpointSlice tracker does the same).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::{
    core::v1::{Endpoints, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use tokio::time::Instant;

use super::{
    apply::{ObjectKind, Written},
    desired::{PodInfo, SERVICE_NAME_LABEL, ZONE_LABEL, managed_selector, selects},
};

/// How long a write of ours may take to show up in the watch before the cache is
/// trusted anyway (it was, say, deleted by someone else before we saw it).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// A Service's namespace and name: the unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The watched kinds, for sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    Pod,
    EndpointSlice,
    Endpoints,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::Pod,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::Node,
    ];
}

/// What an event means for the work queue.
#[derive(Debug, Default)]
pub struct Affected {
    pub keys: BTreeSet<ServiceKey>,
    /// Changes to slices or Endpoints: work for their key unless they are our own writes
    /// coming back ([`Cache::is_own_write`]), which the caller can only tell once the
    /// reconcile that made them has finished.
    pub echoes: Vec<Echo>,
    /// A relist finished: every key must be checked.
    pub resync: bool,
}

/// A slice or Endpoints event, as written (`resource_version`) or deleted (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub key: ServiceKey,
    pub kind: ObjectKind,
    pub name: String,
    pub resource_version: Option<String>,
}

/// Everything one reconcile reads, copied out of the cache (cheaply: `Arc`s).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub key: ServiceKey,
    pub service: Option<Arc<Service>>,
    /// The Pods the Service selects (all of the namespace's, if it selects none).
    pub pods: Vec<Arc<PodInfo>>,
    /// Zones of the Nodes those Pods run on.
    pub zones: HashMap<String, String>,
    /// `None` when the cache may be behind our own writes: read them live.
    pub slices: Option<Vec<Arc<EndpointSlice>>>,
    pub endpoints: Option<Option<Arc<Endpoints>>>,
    /// A change that left no trace on any remaining object (a Pod deleted or
    /// relabelled away, a Service edited), when the controller saw it.
    pub observed_change: Option<Timestamp>,
}

#[derive(Debug)]
struct Expectation {
    kind: ObjectKind,
    name: String,
    /// `None`: deleted.
    resource_version: Option<String>,
    until: Instant,
}

#[derive(Default)]
pub struct Cache {
    services: BTreeMap<ServiceKey, Arc<Service>>,
    pods: HashMap<String, HashMap<String, Arc<PodInfo>>>,
    slices: HashMap<ServiceKey, HashMap<String, Arc<EndpointSlice>>>,
    /// (namespace, slice name) -> the Service its label names, to notice relabelling.
    slice_owner: HashMap<(String, String), ServiceKey>,
    endpoints: HashMap<ServiceKey, Arc<Endpoints>>,
    zones: HashMap<String, String>,
    synced: HashSet<Kind>,
    /// Relists in progress, buffered until `InitDone`.
    init_services: Option<Vec<Service>>,
    init_pods: Option<Vec<Pod>>,
    init_slices: Option<Vec<EndpointSlice>>,
    init_endpoints: Option<Vec<Endpoints>>,
    init_nodes: Option<Vec<Node>>,
    expected: HashMap<ServiceKey, Vec<Expectation>>,
    /// Keys whose next reconcile must read live (after a conflict).
    force_live: HashSet<ServiceKey>,
    observed: HashMap<ServiceKey, Timestamp>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

/// Numeric resourceVersions (every real API server's) compare as numbers; otherwise only
/// equality says anything.
fn at_least(current: Option<&str>, expected: &str) -> bool {
    match (
        current.and_then(|c| c.parse::<u64>().ok()),
        expected.parse::<u64>().ok(),
    ) {
        (Some(c), Some(e)) => c >= e,
        _ => current == Some(expected),
    }
}

impl Cache {
    /// Whether every watch has listed once; before that nothing may be reconciled (an
    /// empty Pod cache would empty every slice).
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// Every key worth checking: Services, and the owners of slices and Endpoints we
    /// manage (orphans whose Service went while we were not watching).
    pub fn all_keys(&self) -> BTreeSet<ServiceKey> {
        let mut keys: BTreeSet<ServiceKey> = self.services.keys().cloned().collect();
        keys.extend(self.slices.keys().cloned());
        keys.extend(
            self.endpoints
                .iter()
                .filter(|(_, e)| controlled_by_service(e))
                .map(|(k, _)| k.clone()),
        );
        keys
    }

    fn services_selecting<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = ServiceKey> + 'a {
        let from = ServiceKey::new(namespace, "");
        self.services
            .range(from..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .filter(move |(_, s)| managed_selector(s).is_some_and(|sel| selects(sel, labels)))
            .map(|(k, _)| k.clone())
    }

    pub fn on_service(&mut self, event: Event<Service>, now: Timestamp) -> Affected {
        let mut out = Affected::default();
        match event {
            Event::Init => self.init_services = Some(Vec::new()),
            Event::InitApply(s) => self.init_services.get_or_insert_default().push(s),
            Event::InitDone => {
                let items = self.init_services.take().unwrap_or_default();
                self.services = items
                    .into_iter()
                    .filter_map(|s| Some((key_of(&s.metadata)?, Arc::new(s))))
                    .collect();
                self.synced.insert(Kind::Service);
                out.resync = true;
            }
            Event::Apply(s) => {
                let Some(key) = key_of(&s.metadata) else { return out };
                let new = Arc::new(s);
                let old = self.services.insert(key.clone(), Arc::clone(&new));
                let relevant = |s: &Service| {
                    (
                        s.metadata.uid.clone(),
                        s.metadata.labels.clone(),
                        s.metadata.annotations.clone(),
                        s.spec.clone(),
                    )
                };
                match old {
                    Some(old) if relevant(&old) == relevant(&new) => {}
                    Some(_) => {
                        self.observe(&key, now);
                        out.keys.insert(key);
                    }
                    None => {
                        out.keys.insert(key);
                    }
                }
            }
            Event::Delete(s) => {
                if let Some(key) = key_of(&s.metadata) {
                    self.services.remove(&key);
                    out.keys.insert(key);
                }
            }
        }
        out
    }

    pub fn on_pod(&mut self, event: Event<Pod>, now: Timestamp) -> Affected {
        let mut out = Affected::default();
        match event {
            Event::Init => self.init_pods = Some(Vec::new()),
            Event::InitApply(p) => self.init_pods.get_or_insert_default().push(p),
            Event::InitDone => {
                let mut pods: HashMap<String, HashMap<String, Arc<PodInfo>>> = HashMap::new();
                for p in self.init_pods.take().unwrap_or_default() {
                    if let Some(info) = PodInfo::from_pod(&p) {
                        pods.entry(info.namespace.clone())
                            .or_default()
                            .insert(info.name.clone(), Arc::new(info));
                    }
                }
                self.pods = pods;
                self.synced.insert(Kind::Pod);
                out.resync = true;
            }
            Event::Apply(p) => {
                let Some(new) = PodInfo::from_pod(&p) else { return out };
                let new = Arc::new(new);
                let old = self
                    .pods
                    .entry(new.namespace.clone())
                    .or_default()
                    .insert(new.name.clone(), Arc::clone(&new));
                if old.as_deref() == Some(&*new) {
                    return out;
                }
                let now_in: BTreeSet<ServiceKey> = self.services_selecting(&new.namespace, &new.labels).collect();
                if let Some(old) = old {
                    let before: Vec<ServiceKey> = self.services_selecting(&old.namespace, &old.labels).collect();
                    for key in before {
                        if !now_in.contains(&key) {
                            self.observe(&key, now);
                        }
                        out.keys.insert(key);
                    }
                }
                out.keys.extend(now_in);
            }
            Event::Delete(p) => {
                let Some(info) = PodInfo::from_pod(&p) else { return out };
                let old = self.pods.get_mut(&info.namespace).and_then(|m| m.remove(&info.name));
                if self.pods.get(&info.namespace).is_some_and(HashMap::is_empty) {
                    self.pods.remove(&info.namespace);
                }
                let labels = old.map(|o| o.labels.clone()).unwrap_or(info.labels);
                let keys: Vec<ServiceKey> = self.services_selecting(&info.namespace, &labels).collect();
                for key in keys {
                    self.observe(&key, now);
                    out.keys.insert(key);
                }
            }
        }
        out
    }

    fn slice_key(s: &EndpointSlice) -> Option<(ServiceKey, String)> {
        let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some((
            ServiceKey::new(s.metadata.namespace.clone().unwrap_or_default(), svc.clone()),
            s.metadata.name.clone()?,
        ))
    }

    pub fn on_slice(&mut self, event: Event<EndpointSlice>) -> Affected {
        let mut out = Affected::default();
        match event {
            Event::Init => self.init_slices = Some(Vec::new()),
            Event::InitApply(s) => self.init_slices.get_or_insert_default().push(s),
            Event::InitDone => {
                self.slices.clear();
                self.slice_owner.clear();
                for s in self.init_slices.take().unwrap_or_default() {
                    if let Some((key, name)) = Self::slice_key(&s) {
                        self.slice_owner
                            .insert((key.namespace.clone(), name.clone()), key.clone());
                        self.slices.entry(key).or_default().insert(name, Arc::new(s));
                    }
                }
                self.synced.insert(Kind::EndpointSlice);
                out.resync = true;
            }
            Event::Apply(s) => {
                let Some((key, name)) = Self::slice_key(&s) else {
                    return out;
                };
                let echo = Echo {
                    key: key.clone(),
                    kind: ObjectKind::EndpointSlice,
                    name: name.clone(),
                    resource_version: s.metadata.resource_version.clone(),
                };
                // A slice relabelled to another Service leaves the old one's set.
                let previous = self
                    .slice_owner
                    .insert((key.namespace.clone(), name.clone()), key.clone());
                if let Some(previous) = previous.filter(|p| *p != key) {
                    self.remove_slice(&previous, &name);
                    out.keys.insert(previous);
                }
                self.slices.entry(key).or_default().insert(name, Arc::new(s));
                out.echoes.push(echo);
            }
            Event::Delete(s) => {
                let Some((key, name)) = Self::slice_key(&s) else {
                    return out;
                };
                self.slice_owner.remove(&(key.namespace.clone(), name.clone()));
                self.remove_slice(&key, &name);
                out.echoes.push(Echo {
                    key,
                    kind: ObjectKind::EndpointSlice,
                    name,
                    resource_version: None,
                });
            }
        }
        out
    }

    fn remove_slice(&mut self, key: &ServiceKey, name: &str) {
        if let Some(set) = self.slices.get_mut(key) {
            set.remove(name);
            if set.is_empty() {
                self.slices.remove(key);
            }
        }
    }

    pub fn on_endpoints(&mut self, event: Event<Endpoints>) -> Affected {
        let mut out = Affected::default();
        match event {
            Event::Init => self.init_endpoints = Some(Vec::new()),
            Event::InitApply(e) => self.init_endpoints.get_or_insert_default().push(e),
            Event::InitDone => {
                let items = self.init_endpoints.take().unwrap_or_default();
                self.endpoints = items
                    .into_iter()
                    .filter_map(|e| Some((key_of(&e.metadata)?, Arc::new(e))))
                    .collect();
                self.synced.insert(Kind::Endpoints);
                out.resync = true;
            }
            Event::Apply(e) => {
                let Some(key) = key_of(&e.metadata) else { return out };
                let interesting =
                    controlled_by_service(&e) || self.services.get(&key).is_some_and(|s| managed_selector(s).is_some());
                let rv = e.metadata.resource_version.clone();
                self.endpoints.insert(key.clone(), Arc::new(e));
                if interesting {
                    out.echoes.push(Echo {
                        name: key.name.clone(),
                        key,
                        kind: ObjectKind::Endpoints,
                        resource_version: rv,
                    });
                }
            }
            Event::Delete(e) => {
                let Some(key) = key_of(&e.metadata) else { return out };
                self.endpoints.remove(&key);
                if self.services.get(&key).is_some_and(|s| managed_selector(s).is_some()) {
                    out.echoes.push(Echo {
                        name: key.name.clone(),
                        key,
                        kind: ObjectKind::Endpoints,
                        resource_version: None,
                    });
                }
            }
        }
        out
    }

    pub fn on_node(&mut self, event: Event<Node>) -> Affected {
        let mut out = Affected::default();
        let zone_of = |n: &Node| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .filter(|z| !z.is_empty())
                .cloned()
        };
        match event {
            Event::Init => self.init_nodes = Some(Vec::new()),
            Event::InitApply(n) => self.init_nodes.get_or_insert_default().push(n),
            Event::InitDone => {
                let items = self.init_nodes.take().unwrap_or_default();
                self.zones = items
                    .iter()
                    .filter_map(|n| Some((n.metadata.name.clone()?, zone_of(n)?)))
                    .collect();
                self.synced.insert(Kind::Node);
                out.resync = true;
            }
            Event::Apply(n) | Event::Delete(n) if n.metadata.name.is_none() => {}
            Event::Apply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                let zone = zone_of(&n);
                let changed = match &zone {
                    Some(z) => self.zones.insert(name.clone(), z.clone()).as_ref() != Some(z),
                    None => self.zones.remove(&name).is_some(),
                };
                if changed {
                    out.keys = self.services_on_node(&name);
                }
            }
            Event::Delete(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if self.zones.remove(&name).is_some() {
                    out.keys = self.services_on_node(&name);
                }
            }
        }
        out
    }

    /// Services selecting a Pod on the node. Scans every Pod; only zone changes call it.
    fn services_on_node(&self, node: &str) -> BTreeSet<ServiceKey> {
        let mut keys = BTreeSet::new();
        for pod in self.pods.values().flat_map(HashMap::values) {
            if pod.node_name.as_deref() == Some(node) {
                keys.extend(self.services_selecting(&pod.namespace, &pod.labels));
            }
        }
        keys
    }

    fn observe(&mut self, key: &ServiceKey, now: Timestamp) {
        let t = self.observed.entry(key.clone()).or_insert(now);
        *t = (*t).max(now);
    }

    /// Gives back an observed change a failed reconcile took.
    pub fn restore_observed(&mut self, key: &ServiceKey, t: Option<Timestamp>) {
        if let Some(t) = t {
            self.observe(key, t);
        }
    }

    /// Makes the key's next reconcile read live state (its cache was shown stale).
    pub fn force_live(&mut self, key: &ServiceKey) {
        self.force_live.insert(key.clone());
    }

    /// Remembers our writes until the watch shows them.
    pub fn record_writes(&mut self, key: &ServiceKey, writes: &[Written], now: Instant) {
        // Keys never reconciled again (their Service went) drop theirs here.
        self.expected.retain(|_, list| {
            list.retain(|e| e.until > now);
            !list.is_empty()
        });
        if writes.is_empty() {
            return;
        }
        let list = self.expected.entry(key.clone()).or_default();
        for w in writes {
            list.retain(|e| !(e.kind == w.kind && e.name == w.name));
            list.push(Expectation {
                kind: w.kind,
                name: w.name.clone(),
                resource_version: w.resource_version.clone(),
                until: now + EXPECTATION_TTL,
            });
        }
    }

    /// Whether the event is one of our recorded writes coming back.
    pub fn is_own_write(&self, echo: &Echo) -> bool {
        self.expected.get(&echo.key).is_some_and(|list| {
            list.iter()
                .any(|e| e.kind == echo.kind && e.name == echo.name && e.resource_version == echo.resource_version)
        })
    }

    /// Whether the cache shows every write we made for the key; drops the expectations
    /// it meets (or that expired).
    pub fn caught_up(&mut self, key: &ServiceKey, now: Instant) -> bool {
        let Some(mut list) = self.expected.remove(key) else {
            return true;
        };
        let slices = self.slices.get(key);
        let endpoints = self.endpoints.get(key);
        list.retain(|e| {
            if e.until <= now {
                return false;
            }
            let current = match e.kind {
                ObjectKind::EndpointSlice => slices
                    .and_then(|s| s.get(&e.name))
                    .map(|s| s.metadata.resource_version.as_deref()),
                ObjectKind::Endpoints => endpoints.map(|ep| ep.metadata.resource_version.as_deref()),
            };
            let met = match (&e.resource_version, current) {
                (None, None) => true,
                (None, Some(_)) => false,
                (Some(want), Some(have)) => at_least(have, want),
                (Some(_), None) => false,
            };
            !met
        });
        let ok = list.is_empty();
        if !ok {
            self.expected.insert(key.clone(), list);
        }
        ok
    }

    /// Copies out what reconciling `key` needs, and takes its observed change.
    pub fn snapshot(&mut self, key: &ServiceKey, now: Instant) -> Snapshot {
        let service = self.services.get(key).cloned();
        let selector = service.as_deref().and_then(managed_selector);
        let pods: Vec<Arc<PodInfo>> = match (selector, self.pods.get(&key.namespace)) {
            (Some(sel), Some(pods)) => pods.values().filter(|p| selects(sel, &p.labels)).cloned().collect(),
            _ => Vec::new(),
        };
        let zones = pods
            .iter()
            .filter_map(|p| p.node_name.as_ref())
            .filter_map(|n| Some((n.clone(), self.zones.get(n)?.clone())))
            .collect();
        let live = self.force_live.remove(key) | !self.caught_up(key, now);
        let (slices, endpoints) = if live {
            (None, None)
        } else {
            (
                Some(
                    self.slices
                        .get(key)
                        .map(|m| m.values().cloned().collect())
                        .unwrap_or_default(),
                ),
                Some(self.endpoints.get(key).cloned()),
            )
        };
        Snapshot {
            key: key.clone(),
            service,
            pods,
            zones,
            slices,
            endpoints,
            observed_change: self.observed.remove(key),
        }
    }

    /// Counts, for logs and tests.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.services.len(),
            self.pods.values().map(HashMap::len).sum(),
            self.slices.values().map(HashMap::len).sum(),
        )
    }
}

fn controlled_by_service(e: &Endpoints) -> bool {
    e.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == "Service")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, app: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "uid": name},
            "spec": {"selector": {"app": app}, "ports": [{"port": 80}]}}))
        .expect("svc")
    }

    fn pod(name: &str, app: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .expect("pod")
    }

    fn synced() -> Cache {
        let mut c = Cache::default();
        let now = Timestamp::now();
        c.on_service(Event::InitDone, now);
        c.on_pod(Event::InitDone, now);
        c.on_slice(Event::InitDone);
        c.on_endpoints(Event::InitDone);
        c.on_node(Event::InitDone);
        c
    }

    fn keys(a: Affected) -> Vec<String> {
        a.keys.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn pod_events_map_to_old_and_new_services_and_noise_to_none() {
        let mut c = synced();
        assert!(c.synced());
        let now = Timestamp::now();
        c.on_service(Event::Apply(svc("a", "a")), now);
        c.on_service(Event::Apply(svc("b", "b")), now);
        assert_eq!(keys(c.on_pod(Event::Apply(pod("p", "a", false)), now)), ["ns/a"]);
        // Same Pod again, only irrelevant fields changed: nothing to do.
        let mut noisy = pod("p", "a", false);
        noisy.metadata.annotations = Some([("x".to_owned(), "y".to_owned())].into());
        assert!(keys(c.on_pod(Event::Apply(noisy), now)).is_empty());
        // Relabelled from a to b: both Services, and a records the observed change.
        assert_eq!(
            keys(c.on_pod(Event::Apply(pod("p", "b", false)), now)),
            ["ns/a", "ns/b"]
        );
        let snap = c.snapshot(&ServiceKey::new("ns", "a"), Instant::now());
        assert_eq!(snap.observed_change, Some(now));
        assert!(snap.pods.is_empty());
        let snap = c.snapshot(&ServiceKey::new("ns", "b"), Instant::now());
        assert_eq!(snap.pods.len(), 1);
        assert_eq!(keys(c.on_pod(Event::Delete(pod("p", "b", false)), now)), ["ns/b"]);
    }

    #[test]
    fn own_writes_are_awaited_and_their_echoes_ignored() {
        let mut c = synced();
        let key = ServiceKey::new("ns", "a");
        let now = Instant::now();
        c.record_writes(
            &key,
            &[Written {
                kind: ObjectKind::EndpointSlice,
                name: "a-x".into(),
                resource_version: Some("7".into()),
            }],
            now,
        );
        assert!(c.snapshot(&key, now).slices.is_none(), "cache is behind: read live");
        let slice: EndpointSlice = serde_json::from_value(
            json!({"metadata": {"name": "a-x", "namespace": "ns", "resourceVersion": "7",
            "labels": {SERVICE_NAME_LABEL: "a"}}, "addressType": "IPv4", "endpoints": []}),
        )
        .expect("slice");
        let affected = c.on_slice(Event::Apply(slice));
        assert!(affected.keys.is_empty());
        assert!(c.is_own_write(&affected.echoes[0]), "our own write's echo");
        assert_eq!(c.snapshot(&key, now).slices.map(|s| s.len()), Some(1));
        // Expired expectations stop blocking.
        c.record_writes(
            &key,
            &[Written {
                kind: ObjectKind::Endpoints,
                name: "a".into(),
                resource_version: Some("9".into()),
            }],
            now,
        );
        assert!(c.snapshot(&key, now + EXPECTATION_TTL).slices.is_some());
    }
}
