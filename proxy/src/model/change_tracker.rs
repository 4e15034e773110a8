//! Change trackers: they sit between the watches and the sync loop, accumulate updates
//! until the next sync, and hand over only what really changed.
//!
//! The watch reports whole objects, most of whose updates are noise for a proxy (status
//! heartbeats, managedFields, annotations nobody here reads). Each tracker reads an object
//! into the model's own types first and compares those, so noise never reaches a backend.
//! Both trackers keep the last state they handed over, so callers need no copy of the old
//! object; this fits watchers that report `Apply(obj)` / `Delete(obj)` without a previous
//! version.
//!
//! Both trackers return the same [`Changes`] shape, keyed by Service.

use std::{
    collections::BTreeMap,
    mem,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    jiff::Timestamp,
};

use super::{
    endpoints::{Endpoint, SliceError, SliceInfo, merge_slices, parse_slice},
    service::{ServiceError, ServiceName, ServicePort, ServicePortMap, ServicePortName, object_name, service_ports},
};

/// Annotation where the EndpointSlice controller records when the Pod or Service change
/// that caused this slice update happened; the start of the network-programming latency.
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// One Service's ports (or endpoints) as of the previous hand-over and now. A Service that
/// appeared has an empty `previous`; one that went away has an empty `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<V> {
    pub previous: BTreeMap<ServicePortName, V>,
    pub current: BTreeMap<ServicePortName, V>,
}

/// Everything that changed since the last [`take_changes`](ServiceChangeTracker::take_changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<V> {
    /// Only Services whose model really changed; never an entry with `previous == current`.
    pub services: BTreeMap<ServiceName, Change<V>>,
    /// When the changes being handed over were triggered, per Service, for the
    /// network-programming-latency metric: observe `now - t` for each once the sync that
    /// applies them is done. Always empty for Services, which carry no such annotation.
    pub trigger_times: BTreeMap<ServiceName, Vec<SystemTime>>,
}

impl<V> Default for Changes<V> {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            trigger_times: BTreeMap::new(),
        }
    }
}

impl<V: Clone> Changes<V> {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Brings a full per-port map (all Services) up to date with these changes.
    pub fn apply_to(&self, map: &mut BTreeMap<ServicePortName, V>) {
        for change in self.services.values() {
            for gone in change.previous.keys().filter(|k| !change.current.contains_key(*k)) {
                map.remove(gone);
            }
            for (key, value) in &change.current {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

pub type ServiceChanges = Changes<ServicePort>;
pub type EndpointsChanges = Changes<Vec<Endpoint>>;

/// One Service's ports as handed over, sorted by name. A slice rather than a map: most
/// Services have one port, and a map of one entry allocates room for eleven (about 2.5 KiB
/// per Service, 25 MiB at 10k Services).
type AppliedPorts = Box<[(ServicePortName, ServicePort)]>;

fn same_ports(applied: Option<&AppliedPorts>, ports: &ServicePortMap) -> bool {
    match applied {
        Some(a) => a.len() == ports.len() && a.iter().map(|(k, v)| (k, v)).eq(ports.iter()),
        None => ports.is_empty(),
    }
}

/// Tracks Services between syncs.
#[derive(Debug, Default)]
pub struct ServiceChangeTracker {
    /// The ports handed over by the last `take_changes`; ignored Services are absent.
    applied: BTreeMap<ServiceName, AppliedPorts>,
    /// Ports a Service will have at the next hand-over, only where that differs from
    /// `applied`. Empty means the Service goes away.
    pending: BTreeMap<ServiceName, AppliedPorts>,
    total: u64,
}

impl ServiceChangeTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an added or updated Service. Returns whether this changed what the next
    /// `take_changes` returns (false for a no-op update).
    ///
    /// An invalid Service is an error and leaves the tracker as it was, so its last valid
    /// version stays programmed rather than being torn down by a bad write.
    pub fn apply(&mut self, service: &Service) -> Result<bool, ServiceError> {
        self.total += 1;
        let name = object_name(&service.metadata)?;
        let ports = service_ports(service)?;
        Ok(self.record(name, ports))
    }

    /// Records a deleted Service. Returns whether anything changed.
    pub fn delete(&mut self, service: &Service) -> Result<bool, ServiceError> {
        self.total += 1;
        let name = object_name(&service.metadata)?;
        Ok(self.record(name, ServicePortMap::new()))
    }

    fn record(&mut self, name: ServiceName, ports: ServicePortMap) -> bool {
        let applied = self.applied.get(&name);
        let upcoming_same = match self.pending.get(&name) {
            Some(pending) => same_ports(Some(pending), &ports),
            None => same_ports(applied, &ports),
        };
        if upcoming_same {
            return false;
        }
        if same_ports(applied, &ports) {
            // Changed and changed back before a sync: nothing left to do.
            self.pending.remove(&name);
        } else {
            self.pending.insert(name, ports.into_iter().collect());
        }
        true
    }

    /// Hands over the pending changes and forgets them.
    pub fn take_changes(&mut self) -> ServiceChanges {
        let mut changes = ServiceChanges::default();
        for (name, current) in mem::take(&mut self.pending) {
            let previous = if current.is_empty() {
                self.applied.remove(&name)
            } else {
                self.applied.insert(name.clone(), current.clone())
            };
            let expand = |p: AppliedPorts| p.into_vec().into_iter().collect();
            changes.services.insert(
                name,
                Change {
                    previous: previous.map(expand).unwrap_or_default(),
                    current: expand(current),
                },
            );
        }
        changes
    }

    /// Services with changes waiting for a sync (`..._service_changes_pending`).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Updates received, no-ops included (`..._service_changes_total`).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Tracks EndpointSlices between syncs, merging them per Service at hand-over.
///
/// Slices are cached one by one rather than merged on arrival because endpoints move
/// between slices: removing one slice must not remove an address another slice still
/// lists.
#[derive(Debug)]
pub struct EndpointsChangeTracker {
    /// This proxy's node, to mark endpoints local.
    node_name: String,
    /// Trigger times before this are from before we started, and would report the time we
    /// were not running as programming latency.
    started_at: SystemTime,
    /// Slices handed over by the last `take_changes`, by Service then slice name.
    /// Each Service's slices are sorted by name in a vector: a map of one slice would
    /// allocate room for eleven.
    applied: BTreeMap<ServiceName, Vec<SliceInfo>>,
    /// Slices that differ from `applied`; `None` means the slice goes away.
    /// Sorted by slice name, a vector for the same reason as `applied`.
    pending: BTreeMap<ServiceName, Vec<(String, Option<SliceInfo>)>>,
    /// Which Service each known slice (namespace, name) belongs to, so a delete or a
    /// relabel finds the slice without trusting the labels of the object it is given.
    owners: BTreeMap<(String, String), ServiceName>,
    trigger_times: BTreeMap<ServiceName, Vec<SystemTime>>,
    total: u64,
}

impl EndpointsChangeTracker {
    /// `started_at` is normally the current time; it is a parameter so the model does no IO.
    pub fn new(node_name: impl Into<String>, started_at: SystemTime) -> Self {
        Self {
            node_name: node_name.into(),
            started_at,
            applied: BTreeMap::new(),
            pending: BTreeMap::new(),
            owners: BTreeMap::new(),
            trigger_times: BTreeMap::new(),
            total: 0,
        }
    }

    /// Records an added or updated slice. Returns whether this changed what the next
    /// `take_changes` returns. A slice the proxy does not use (see [`parse_slice`]) counts as
    /// deleted. An invalid slice is an error and leaves the tracker as it was.
    pub fn apply(&mut self, slice: &EndpointSlice) -> Result<bool, SliceError> {
        self.total += 1;
        let Some(info) = parse_slice(slice, &self.node_name)? else {
            return self.delete_counted(slice);
        };
        let id = (info.service.namespace.clone(), info.name.clone());
        let mut changed = false;
        if let Some(old_owner) = self.owners.get(&id).filter(|o| **o != info.service).cloned() {
            changed |= self.record(old_owner, &id.1, None);
        }
        let service = info.service.clone();
        let trigger = trigger_time(slice);
        if self.record(service.clone(), &id.1, Some(info)) {
            changed = true;
            if let Some(t) = trigger.filter(|t| *t > self.started_at) {
                self.trigger_times.entry(service).or_default().push(t);
            }
        }
        Ok(changed)
    }

    /// Records a deleted slice. Returns whether anything changed.
    pub fn delete(&mut self, slice: &EndpointSlice) -> Result<bool, SliceError> {
        self.total += 1;
        self.delete_counted(slice)
    }

    fn delete_counted(&mut self, slice: &EndpointSlice) -> Result<bool, SliceError> {
        let id = object_name(&slice.metadata)?;
        let id = (id.namespace, id.name);
        let Some(owner) = self.owners.get(&id).cloned() else {
            return Ok(false);
        };
        let changed = self.record(owner.clone(), &id.1, None);
        if changed {
            // A deletion's annotation dates from the slice's last update, not from what
            // caused the deletion, so any time we hold would measure the wrong thing.
            self.trigger_times.remove(&owner);
        }
        Ok(changed)
    }

    fn record(&mut self, service: ServiceName, slice_name: &str, info: Option<SliceInfo>) -> bool {
        let applied = self
            .applied
            .get(&service)
            .and_then(|s| s.iter().find(|i| i.name == slice_name));
        let pending = self
            .pending
            .get(&service)
            .and_then(|s| s.iter().find(|(n, _)| n == slice_name))
            .map(|(_, p)| p);
        let upcoming = match pending {
            Some(p) => p.as_ref(),
            None => applied,
        };
        if upcoming == info.as_ref() {
            return false;
        }
        let id = (service.namespace.clone(), slice_name.to_owned());
        if info.is_some() {
            self.owners.insert(id, service.clone());
        } else {
            self.owners.remove(&id);
        }
        if applied == info.as_ref() {
            if let Some(slices) = self.pending.get_mut(&service) {
                slices.retain(|(n, _)| n != slice_name);
                if slices.is_empty() {
                    self.pending.remove(&service);
                }
            }
        } else {
            let slices = self.pending.entry(service).or_default();
            match slices.binary_search_by(|(n, _)| n.as_str().cmp(slice_name)) {
                Ok(at) => slices[at].1 = info,
                Err(at) => slices.insert(at, (slice_name.to_owned(), info)),
            }
        }
        true
    }

    /// Hands over the pending changes, merged per Service, and forgets them. A Service
    /// whose slices changed without changing its merged endpoints (an endpoint moving
    /// between slices) is not reported.
    pub fn take_changes(&mut self) -> EndpointsChanges {
        let mut changes = EndpointsChanges {
            services: BTreeMap::new(),
            trigger_times: mem::take(&mut self.trigger_times),
        };
        for (service, slices) in mem::take(&mut self.pending) {
            let applied = self.applied.entry(service.clone()).or_default();
            let previous = merge_slices(applied.iter());
            for (name, info) in slices {
                match (applied.binary_search_by(|i| i.name.as_str().cmp(&name)), info) {
                    (Ok(at), Some(info)) => applied[at] = info,
                    (Err(at), Some(info)) => applied.insert(at, info),
                    (Ok(at), None) => {
                        applied.remove(at);
                    }
                    (Err(_), None) => {}
                }
            }
            applied.shrink_to_fit();
            let current = merge_slices(applied.iter());
            if applied.is_empty() {
                self.applied.remove(&service);
            }
            if previous != current {
                changes.services.insert(service, Change { previous, current });
            }
        }
        changes
    }

    /// Services with slice changes waiting for a sync (`..._endpoint_changes_pending`).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Updates received, no-ops included (`..._endpoint_changes_total`).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The slice's trigger-time annotation. Absent or unparseable is `None`: the metric then
/// skips this change, as upstream does, rather than failing the update.
fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)?;
    let ts: Timestamp = value.parse().ok()?;
    let secs = u64::try_from(ts.as_second()).ok()?;
    let nanos = u32::try_from(ts.subsec_nanosecond()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{
        fixtures::{ready, service, simple_slice},
        service::Protocol,
    };

    fn web_service(extra_meta: Value, port: u16) -> Service {
        let mut meta = json!({"namespace": "ns", "name": "web", "resourceVersion": "1"});
        if let (Some(m), Value::Object(extra)) = (meta.as_object_mut(), extra_meta) {
            m.extend(extra);
        }
        service(json!({
            "metadata": meta,
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port}]}
        }))
    }

    fn web() -> ServiceName {
        ServiceName::new("ns", "web")
    }

    fn http() -> ServicePortName {
        ServicePortName::new(&web(), "http", Protocol::Tcp)
    }

    #[test]
    fn service_tracker_reports_add_update_delete() {
        let mut t = ServiceChangeTracker::new();
        assert_eq!(t.apply(&web_service(json!({}), 80)), Ok(true));
        let added = t.take_changes();
        let change = &added.services[&web()];
        assert!(change.previous.is_empty());
        assert_eq!(change.current[&http()].port, 80);

        assert_eq!(t.apply(&web_service(json!({}), 8080)), Ok(true));
        let updated = t.take_changes();
        let change = &updated.services[&web()];
        assert_eq!(
            (change.previous[&http()].port, change.current[&http()].port),
            (80, 8080)
        );

        assert_eq!(t.delete(&web_service(json!({}), 8080)), Ok(true));
        let deleted = t.take_changes();
        assert!(deleted.services[&web()].current.is_empty());
        assert_eq!(t.total(), 3);
    }

    #[test]
    fn service_tracker_drops_noop_updates() {
        let mut t = ServiceChangeTracker::new();
        t.apply(&web_service(json!({}), 80)).unwrap();
        t.take_changes();
        let noise = json!({
            "resourceVersion": "2",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        });
        assert_eq!(t.apply(&web_service(noise, 80)), Ok(false));
        assert_eq!(t.pending(), 0);
        assert!(t.take_changes().is_empty());
        assert_eq!(t.total(), 2, "no-ops still count as received");
    }

    #[test]
    fn service_tracker_change_and_revert_is_no_change() {
        let mut t = ServiceChangeTracker::new();
        t.apply(&web_service(json!({}), 80)).unwrap();
        t.take_changes();
        assert_eq!(t.apply(&web_service(json!({}), 81)), Ok(true));
        assert_eq!(t.pending(), 1);
        assert_eq!(t.apply(&web_service(json!({}), 80)), Ok(true));
        assert_eq!(t.pending(), 0);
        assert!(t.take_changes().is_empty());
        // Added then deleted between two syncs: nothing to program either.
        let mut t = ServiceChangeTracker::new();
        t.apply(&web_service(json!({}), 80)).unwrap();
        t.delete(&web_service(json!({}), 80)).unwrap();
        assert!(t.take_changes().is_empty());
    }

    #[test]
    fn service_tracker_keeps_last_valid_version_on_error() {
        let mut t = ServiceChangeTracker::new();
        t.apply(&web_service(json!({}), 80)).unwrap();
        t.take_changes();
        let bad = service(json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": {"clusterIP": "bogus", "ports": [{"name": "http", "port": 80}]}
        }));
        assert!(t.apply(&bad).is_err());
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn changes_apply_to_a_full_map() {
        let mut t = ServiceChangeTracker::new();
        let mut map = ServicePortMap::new();
        t.apply(&web_service(json!({}), 80)).unwrap();
        t.take_changes().apply_to(&mut map);
        assert_eq!(map[&http()].port, 80);
        t.delete(&web_service(json!({}), 80)).unwrap();
        t.take_changes().apply_to(&mut map);
        assert!(map.is_empty());
    }

    fn tracker() -> EndpointsChangeTracker {
        EndpointsChangeTracker::new("node-1", SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    fn annotated(mut s: EndpointSlice, annotations: Value, rv: &str) -> EndpointSlice {
        s.metadata.annotations = serde_json::from_value(annotations).unwrap();
        s.metadata.resource_version = Some(rv.to_owned());
        s
    }

    #[test]
    fn endpoints_tracker_merges_and_reports_changes() {
        let mut t = tracker();
        let a = simple_slice("web", "web-a", "http", 8080, vec![ready("10.244.1.10", "node-1")]);
        let b = simple_slice("web", "web-b", "http", 8080, vec![ready("10.244.2.10", "node-2")]);
        assert_eq!(t.apply(&a), Ok(true));
        assert_eq!(t.apply(&b), Ok(true));
        assert_eq!(t.pending(), 1, "pending counts Services, not slices");
        let changes = t.take_changes();
        let eps = &changes.services[&web()].current[&http()];
        assert_eq!(eps.len(), 2);
        assert!(eps[0].is_local && !eps[1].is_local);

        assert_eq!(t.delete(&a), Ok(true));
        let changes = t.take_changes();
        let change = &changes.services[&web()];
        assert_eq!(change.previous[&http()].len(), 2);
        assert_eq!(change.current[&http()].len(), 1);
    }

    #[test]
    fn endpoints_tracker_drops_noop_updates() {
        let mut t = tracker();
        let a = simple_slice("web", "web-a", "http", 8080, vec![ready("10.244.1.10", "node-1")]);
        t.apply(&a).unwrap();
        t.take_changes();
        let mut noisy = annotated(a.clone(), json!({"unrelated": "x"}), "7");
        noisy.metadata.managed_fields = serde_json::from_value(json!([{"manager": "kcm"}])).unwrap();
        noisy.endpoints[0].target_ref =
            serde_json::from_value(json!({"kind": "Pod", "name": "web-0", "uid": "u2"})).unwrap();
        assert_eq!(t.apply(&noisy), Ok(false));
        assert_eq!(t.pending(), 0);
        assert_eq!(t.total(), 2);
        // Deleting a slice we never saw is a no-op too.
        let stranger = simple_slice("web", "web-z", "http", 8080, vec![]);
        assert_eq!(t.delete(&stranger), Ok(false));
    }

    #[test]
    fn endpoint_moving_between_slices_is_not_a_change() {
        let mut t = tracker();
        let ep = ready("10.244.1.10", "node-1");
        t.apply(&simple_slice("web", "web-a", "http", 8080, vec![ep.clone()]))
            .unwrap();
        t.take_changes();
        // The controller adds it to web-b first, then removes it from web-a.
        t.apply(&simple_slice("web", "web-b", "http", 8080, vec![ep])).unwrap();
        t.apply(&simple_slice("web", "web-a", "http", 8080, vec![])).unwrap();
        assert_eq!(t.pending(), 1);
        assert!(t.take_changes().is_empty());
    }

    #[test]
    fn endpoints_tracker_keeps_trigger_times_until_taken() {
        let mut t = tracker();
        let triggered = |at: &str| json!({"endpoints.kubernetes.io/last-change-trigger-time": at});
        let a = simple_slice("web", "web-a", "http", 8080, vec![ready("10.244.1.10", "node-1")]);
        t.apply(&annotated(a.clone(), triggered("2024-01-01T00:00:01.5Z"), "1"))
            .unwrap();
        // Before the tracker started: the wait was not ours to measure.
        let db = simple_slice("db", "db-a", "sql", 5432, vec![ready("10.244.1.12", "node-1")]);
        t.apply(&annotated(db, triggered("2001-01-01T00:00:00Z"), "2")).unwrap();
        let changes = t.take_changes();
        assert_eq!(changes.services.len(), 2);
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_067_201_500);
        assert_eq!(changes.trigger_times, BTreeMap::from([(web(), vec![at])]));
        assert!(
            t.take_changes().trigger_times.is_empty(),
            "handed over once, then forgotten"
        );

        // A no-op update's time is not recorded.
        t.apply(&annotated(a, triggered("2024-01-01T00:00:09Z"), "3")).unwrap();
        assert!(t.take_changes().trigger_times.is_empty());

        // Deleting forgets times not yet handed over.
        let c = simple_slice("web", "web-c", "http", 8080, vec![ready("10.244.1.13", "node-1")]);
        t.apply(&annotated(c.clone(), triggered("2024-01-01T00:00:05Z"), "4"))
            .unwrap();
        t.delete(&c).unwrap();
        assert!(t.take_changes().trigger_times.is_empty());
    }

    #[test]
    fn endpoints_tracker_trigger_times_kept_across_updates() {
        let mut t = tracker();
        let triggered = |at: &str| json!({"endpoints.kubernetes.io/last-change-trigger-time": at});
        let a = simple_slice("web", "web-a", "http", 8080, vec![ready("10.244.1.10", "node-1")]);
        let b = simple_slice("web", "web-a", "http", 8080, vec![ready("10.244.1.11", "node-1")]);
        t.apply(&annotated(a, triggered("2024-01-01T00:00:01Z"), "1")).unwrap();
        t.apply(&annotated(b, triggered("2024-01-01T00:00:02Z"), "2")).unwrap();
        assert_eq!(t.take_changes().trigger_times[&web()].len(), 2);
    }

    #[test]
    fn slice_relabelled_to_another_service_moves() {
        let mut t = tracker();
        t.apply(&simple_slice(
            "web",
            "s",
            "http",
            8080,
            vec![ready("10.244.1.10", "node-1")],
        ))
        .unwrap();
        t.take_changes();
        t.apply(&simple_slice(
            "api",
            "s",
            "http",
            8080,
            vec![ready("10.244.1.10", "node-1")],
        ))
        .unwrap();
        let changes = t.take_changes();
        assert!(changes.services[&web()].current.is_empty());
        assert_eq!(changes.services[&ServiceName::new("ns", "api")].current.len(), 1);
    }

    #[test]
    fn slice_gaining_the_other_proxy_label_is_removed() {
        let mut t = tracker();
        let s = simple_slice("web", "s", "http", 8080, vec![ready("10.244.1.10", "node-1")]);
        t.apply(&s).unwrap();
        t.take_changes();
        let mut owned = s.clone();
        owned
            .metadata
            .labels
            .get_or_insert_default()
            .insert("service.kubernetes.io/service-proxy-name".into(), "other".into());
        assert_eq!(t.apply(&owned), Ok(true));
        assert!(t.take_changes().services[&web()].current.is_empty());
    }
}
