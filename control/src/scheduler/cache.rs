//! What the scheduler knows of the cluster: every Node and Pod from the watches, plus the
//! Pods it bound whose binding the watch has not shown yet ("assumed", as upstream's
//! cache calls them), so that two Pods scheduled in quick succession see each other.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use tokio::time::Instant;

use super::{node_info::NodeInfo, resources};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What an event changed, for the loop to queue.
#[derive(Debug, Default)]
pub struct Changed {
    /// Pods that are (or may now be) waiting for us.
    pub pending: Vec<PodKey>,
    /// Nodes or bound Pods changed: Pods that did not fit may fit now.
    pub cluster: bool,
    /// Pods that are gone or no longer ours to schedule: forget what was said about them.
    pub gone: Vec<PodKey>,
}

#[derive(Debug)]
struct Assumed {
    node: String,
    until: Instant,
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, Node>,
    pods: HashMap<PodKey, Pod>,
    init_nodes: Option<Vec<Node>>,
    init_pods: Option<Vec<Pod>>,
    nodes_synced: bool,
    pods_synced: bool,
    assumed: HashMap<PodKey, Assumed>,
}

impl Cache {
    pub fn synced(&self) -> bool {
        self.nodes_synced && self.pods_synced
    }

    pub fn pod(&self, key: &PodKey) -> Option<&Pod> {
        self.pods.get(key)
    }

    pub fn sizes(&self) -> (usize, usize) {
        (self.nodes.len(), self.pods.len())
    }

    /// Whether the Pod waits for the scheduler named `scheduler`: unbound (and not bound by
    /// us a moment ago), ours, not being deleted, not ended.
    pub fn is_pending(&self, pod: &Pod, scheduler: &str, now: Instant) -> bool {
        let Some(spec) = &pod.spec else { return false };
        spec.node_name.as_deref().unwrap_or_default().is_empty()
            && spec.scheduler_name.as_deref().unwrap_or("default-scheduler") == scheduler
            && pod.metadata.deletion_timestamp.is_none()
            && !resources::is_terminated(pod)
            && self.assumed_node(&PodKey::of(pod), now).is_none()
    }

    fn assumed_node(&self, key: &PodKey, now: Instant) -> Option<&str> {
        self.assumed.get(key).filter(|a| a.until > now).map(|a| a.node.as_str())
    }

    /// Counts the Pod on `node` until the watch shows it bound, or until `until`.
    pub fn assume(&mut self, key: PodKey, node: String, until: Instant) {
        self.assumed.insert(key, Assumed { node, until });
    }

    pub fn forget(&mut self, key: &PodKey) {
        self.assumed.remove(key);
    }

    /// Every node with the Pods on it, for one decision. Ended Pods hold nothing.
    pub fn node_infos(&self, now: Instant) -> Vec<NodeInfo<'_>> {
        let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for (key, pod) in &self.pods {
            if resources::is_terminated(pod) {
                continue;
            }
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty());
            if let Some(node) = bound.or_else(|| self.assumed_node(key, now)) {
                by_node.entry(node).or_default().push(pod);
            }
        }
        self.nodes
            .iter()
            .map(|(name, node)| NodeInfo::new(node, by_node.remove(name.as_str()).unwrap_or_default()))
            .collect()
    }

    /// Every Pod waiting for `scheduler`.
    pub fn pending(&self, scheduler: &str, now: Instant) -> Vec<PodKey> {
        self.pods
            .iter()
            .filter(|(_, p)| self.is_pending(p, scheduler, now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn on_node(&mut self, event: Event<Node>) -> Changed {
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Init => self.init_nodes = Some(Vec::new()),
            Event::InitApply(n) => self.init_nodes.get_or_insert_default().push(n),
            Event::InitDone => {
                let nodes = self.init_nodes.take().unwrap_or_default();
                self.nodes = nodes.into_iter().map(|n| (name(&n), n)).collect();
                self.nodes_synced = true;
            }
            Event::Apply(n) => {
                self.nodes.insert(name(&n), n);
            }
            Event::Delete(n) => {
                self.nodes.remove(&name(&n));
            }
        }
        Changed {
            cluster: true,
            ..Default::default()
        }
    }

    pub fn on_pod(&mut self, event: Event<Pod>, scheduler: &str, now: Instant) -> Changed {
        let mut changed = Changed::default();
        match event {
            Event::Init => self.init_pods = Some(Vec::new()),
            Event::InitApply(p) => self.init_pods.get_or_insert_default().push(p),
            Event::InitDone => {
                let pods = self.init_pods.take().unwrap_or_default();
                let old = std::mem::take(&mut self.pods);
                self.pods = pods.into_iter().map(|p| (PodKey::of(&p), p)).collect();
                changed.gone = old.into_keys().filter(|k| !self.pods.contains_key(k)).collect();
                for key in &changed.gone {
                    self.assumed.remove(key);
                }
                self.pods_synced = true;
                changed.pending = self.pending(scheduler, now);
                changed.cluster = true;
            }
            Event::Apply(p) => {
                let key = PodKey::of(&p);
                let bound = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty());
                if bound {
                    // The watch caught up with our binding (or someone else's).
                    self.assumed.remove(&key);
                }
                if self.is_pending(&p, scheduler, now) {
                    changed.pending.push(key.clone());
                } else {
                    changed.gone.push(key.clone());
                    changed.cluster = true;
                }
                self.pods.insert(key, p);
            }
            Event::Delete(p) => {
                let key = PodKey::of(&p);
                self.pods.remove(&key);
                self.assumed.remove(&key);
                changed.gone.push(key);
                changed.cluster = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::scheduler::filter::tests::{node, pod};

    #[test]
    fn assumed_pods_count_on_their_node_until_the_watch_shows_them() {
        let mut cache = Cache::default();
        let now = Instant::now();
        cache.on_node(Event::Apply(node("n1", "2", "4Gi", json!({}))));
        let p = pod("p", "1", json!({}));
        let key = PodKey::of(&p);
        let changed = cache.on_pod(Event::Apply(p.clone()), "default-scheduler", now);
        assert_eq!(changed.pending, std::slice::from_ref(&key));
        assert!(cache.node_infos(now)[0].pods.is_empty());

        cache.assume(key.clone(), "n1".into(), now + Duration::from_secs(30));
        assert!(!cache.is_pending(&p, "default-scheduler", now));
        assert_eq!(cache.node_infos(now)[0].pods.len(), 1);
        assert!(
            cache.node_infos(now + Duration::from_secs(31))[0].pods.is_empty(),
            "assumptions expire"
        );

        let mut bound = p.clone();
        bound.spec.as_mut().expect("spec").node_name = Some("n1".into());
        let changed = cache.on_pod(Event::Apply(bound), "default-scheduler", now);
        assert!(changed.pending.is_empty() && changed.cluster);
        assert_eq!(
            cache.node_infos(now + Duration::from_secs(31))[0].pods.len(),
            1,
            "now bound for real"
        );
    }

    #[test]
    fn only_our_unbound_live_pods_are_pending() {
        let cache = Cache::default();
        let now = Instant::now();
        let ours = pod("a", "0", json!({"spec": {"schedulerName": "default-scheduler"}}));
        let other = pod("b", "0", json!({"spec": {"schedulerName": "other"}}));
        let done = pod("c", "0", json!({"status": {"phase": "Succeeded"}}));
        let deleting = pod(
            "d",
            "0",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        assert!(cache.is_pending(&ours, "default-scheduler", now));
        assert!(!cache.is_pending(&other, "default-scheduler", now));
        assert!(cache.is_pending(&other, "other", now));
        assert!(!cache.is_pending(&done, "default-scheduler", now));
        assert!(!cache.is_pending(&deleting, "default-scheduler", now));
    }
}
