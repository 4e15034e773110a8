//! The sync loop: kube-proxy's bounded-frequency runner and `syncProxyRules` in one place.
//!
//! It waits for a change (or the periodic resync, or a retry), never syncs twice within
//! `--min-sync-period`, folds the trackers' changes into the full maps, builds the
//! [`DesiredState`], and hands the backend either the diff against what the kernel holds
//! (a partial sync) or everything (a full sync: the first one, the periodic one, and the
//! one after a failure, since then the kernel's state is not known for sure).
//!
//! Nothing is lost on failure: the maps keep every change, the previous rules stay (each
//! backend applies a sync as one transaction), and the retry comes with backoff.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Node;
use tokio::time::sleep_until;

use super::{
    config::NodePortAddress,
    health::{HealthCheckServers, ProxyHealth},
    inputs::Shared,
    metrics::Metrics,
};
use crate::{
    dataplane::{Dataplane, DataplaneError, SyncKind},
    model::{DesiredState, Diff, EndpointsMap, IpNet, ModelConfig, NodeInfo, ServicePortMap, ServicePortName},
};

/// What the loop needs besides its inputs.
pub struct SyncSettings {
    pub node_name: String,
    pub model: ModelConfig,
    pub nodeport_addresses: Vec<NodePortAddress>,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

pub struct SyncLoop {
    shared: Arc<Shared>,
    backend: Option<Box<dyn Dataplane>>,
    settings: SyncSettings,
    metrics: Arc<Metrics>,
    health_checks: HealthCheckServers,
    services: ServicePortMap,
    endpoints: EndpointsMap,
    node: NodeInfo,
    /// What the kernel holds, as the last successful sync wrote it; `None` when unknown.
    applied: Option<DesiredState>,
    /// Trigger times of changes not yet programmed (kept across failed syncs).
    triggers: Vec<SystemTime>,
    /// Called after each successful sync with the new state (UDP conntrack cleanup).
    after_sync: Vec<AfterSync>,
}

/// Work run after each successful sync with the state it programmed.
type AfterSync = Box<dyn FnMut(&DesiredState) + Send>;

/// Retry delays after consecutive failures: 1 s doubling, capped (kube-proxy retries on
/// its next periodic sync; a failing `nft` usually fails the same way for a while).
fn backoff(failures: u32, cap: Duration) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(cap.max(Duration::from_secs(1)))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl SyncLoop {
    pub fn new(
        shared: Arc<Shared>,
        backend: Box<dyn Dataplane>,
        settings: SyncSettings,
        metrics: Arc<Metrics>,
        health: Arc<ProxyHealth>,
    ) -> Self {
        let node = NodeInfo {
            name: settings.node_name.clone(),
            ..NodeInfo::default()
        };
        Self {
            shared,
            backend: Some(backend),
            settings,
            metrics,
            health_checks: HealthCheckServers::new(health),
            services: ServicePortMap::new(),
            endpoints: EndpointsMap::new(),
            node,
            applied: None,
            triggers: Vec::new(),
            after_sync: Vec::new(),
        }
    }

    pub fn after_sync(&mut self, hook: impl FnMut(&DesiredState) + Send + 'static) {
        self.after_sync.push(Box::new(hook));
    }

    /// Drains the healthCheckNodePort servers (see [`HealthCheckServers::shutdown`]).
    pub async fn shutdown_health_checks(&mut self, grace: std::time::Duration) {
        self.health_checks.shutdown(grace).await;
    }

    /// Syncs until the future is dropped (a sync itself is never cut: it has no await).
    pub async fn run(&mut self) {
        loop {
            if self.shared.lock().all_synced() {
                break;
            }
            self.shared.wake.notified().await;
        }
        if self.shared.lock().node.is_none() {
            tracing::warn!(
                node = %self.settings.node_name,
                "no Node object with this name: NodePorts on primary addresses are not served until it exists \
                 (set --hostname-override to the Node's name)"
            );
        }
        let mut last_start: Option<Instant> = None;
        let mut last_full = Instant::now();
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        let mut first = true;
        loop {
            if !first {
                let due = retry_at.unwrap_or(last_full + self.settings.sync_period);
                tokio::select! {
                    () = self.shared.wake.notified() => {}
                    () = sleep_until(due.into()) => {}
                }
            }
            first = false;
            if let Some(retry) = retry_at.filter(|r| Instant::now() < *r) {
                // Backing off: changes wait for the retry, which syncs everything anyway.
                sleep_until(retry.into()).await;
            }
            if let Some(earliest) = last_start.map(|t| t + self.settings.min_sync_period) {
                sleep_until(earliest.into()).await;
            }
            let start = Instant::now();
            last_start = Some(start);
            let full = self.applied.is_none() || start >= last_full + self.settings.sync_period;
            match self.sync_once(full, start).await {
                Ok(()) => {
                    failures = 0;
                    retry_at = None;
                    if full {
                        last_full = start;
                        // Here, not inside the sync: its locals (the cold hand-over's
                        // Changes, the touched set) must be gone before the trim, or the
                        // pages they free stay resident until the next full sync.
                        release_free_memory();
                    }
                }
                Err(error) => {
                    failures += 1;
                    let delay = backoff(failures, self.settings.sync_period);
                    retry_at = Some(Instant::now() + delay);
                    self.metrics.sync_failed();
                    tracing::error!(%error, retry_in = ?delay, "sync failed; the previous rules stay in place");
                }
            }
        }
    }

    async fn sync_once(&mut self, full: bool, start: Instant) -> Result<(), DataplaneError> {
        let (service_changes, endpoint_changes, node) = {
            let mut inputs = self.shared.lock();
            let node = inputs.node_changed.then(|| inputs.node.clone());
            inputs.node_changed = false;
            (inputs.services.take_changes(), inputs.endpoints.take_changes(), node)
        };
        self.metrics.queued(unix_now());
        service_changes.apply_to(&mut self.services);
        endpoint_changes.apply_to(&mut self.endpoints);
        self.triggers
            .extend(endpoint_changes.trigger_times.values().flatten().copied());
        // Node updates arrive with every status heartbeat; only a change of what the
        // model reads (addresses, labels) touches every port.
        let mut node_changed = false;
        if let Some(node) = node {
            let info = node_info(
                &self.settings.node_name,
                node.as_ref(),
                &self.settings.nodeport_addresses,
            );
            node_changed = info != self.node;
            self.node = info;
        }
        // Only the touched ports are rebuilt and compared, unless everything may have
        // changed (node, nothing applied yet) or this is the periodic full resync, which
        // rebuilds from scratch as a check on the incremental path.
        let touched: BTreeSet<ServicePortName> = service_changes
            .services
            .values()
            .flat_map(|c| c.previous.keys().chain(c.current.keys()))
            .chain(
                endpoint_changes
                    .services
                    .values()
                    .flat_map(|c| c.previous.keys().chain(c.current.keys())),
            )
            .cloned()
            .collect();
        let (desired, old, diff) = match self.applied.take() {
            Some(mut state) if !node_changed && !full => {
                let (old, diff) = state.update(
                    &self.services,
                    &self.endpoints,
                    &self.node,
                    &self.settings.model,
                    &touched,
                );
                (state, Some(old), Some(diff))
            }
            prev => {
                let desired = DesiredState::build(&self.services, &self.endpoints, &self.node, &self.settings.model);
                let diff = prev.as_ref().map(|old| Diff::between(old, &desired));
                (desired, prev, diff)
            }
        };
        let skip = !full && diff.as_ref().is_some_and(Diff::is_empty);
        if !skip {
            let mut backend = self.backend.take().expect("the backend is only out during a sync");
            let old = if full { None } else { old };
            let (backend, result) = tokio::task::spawn_blocking(move || {
                let result = {
                    let kind = match (&old, &diff) {
                        (Some(old), Some(diff)) => SyncKind::Partial { old, diff },
                        _ => SyncKind::Full,
                    };
                    backend.sync(&desired, kind)
                };
                (backend, result.map(|()| desired))
            })
            .await
            .expect("the backend's sync does not panic");
            self.backend = Some(backend);
            match result {
                Ok(desired) => self.applied = Some(desired),
                Err(error) => {
                    // A partial sync that failed left the old rules in the kernel; still,
                    // the next attempt rebuilds and writes everything rather than trusting
                    // that.
                    self.applied = None;
                    return Err(error);
                }
            }
        } else {
            self.applied = Some(desired);
        }
        let Some(applied) = self.applied.as_ref() else {
            return Ok(());
        };
        let took = start.elapsed();
        let nle = applied.no_local_endpoints;
        self.metrics
            .sync_succeeded(full, took, unix_now(), (nle.internal, nle.external));
        let now = SystemTime::now();
        for t in self.triggers.drain(..) {
            if let Ok(latency) = now.duration_since(t) {
                self.metrics.programmed(latency);
            }
        }
        self.shared.health.updated(start);
        self.health_checks.update(&applied.health_checks).await;
        for hook in &mut self.after_sync {
            hook(applied);
        }
        tracing::info!(
            full,
            skipped = skip,
            ports = applied.ports.len(),
            took_ms = took.as_millis() as u64,
            "synced"
        );
        Ok(())
    }
}

/// Returns the heap's free pages to the kernel. A full sync frees the whole previous
/// state and its rendered copy, and the cold sync follows the initial lists' decoding
/// garbage; glibc keeps such memory mapped (in every thread's arena) unless asked. Measured
/// at 10k Services × 10 endpoints (`proxy/tests/memory.rs`): RSS 155 → 119 MiB in nftables
/// mode, for a few milliseconds once per full sync.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The node as the model sees it: name, labels (topology), and the addresses NodePorts may
/// use: the Node's own addresses for `primary`, this host's interface addresses for CIDRs.
pub fn node_info(name: &str, node: Option<&Node>, nodeport: &[NodePortAddress]) -> NodeInfo {
    let labels = node
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let primary = nodeport.is_empty() || nodeport.contains(&NodePortAddress::Primary);
    let mut addresses: Vec<IpAddr> = Vec::new();
    if primary {
        let listed = node.and_then(|n| n.status.as_ref()).and_then(|s| s.addresses.as_ref());
        for a in listed.into_iter().flatten() {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && let Ok(ip) = a.address.parse()
            {
                addresses.push(ip);
            }
        }
    }
    let cidrs: Vec<IpNet> = nodeport
        .iter()
        .filter_map(|a| match a {
            NodePortAddress::Cidr(c) => Some(*c),
            NodePortAddress::Primary => None,
        })
        .collect();
    if !cidrs.is_empty() {
        addresses.extend(
            interface_addresses()
                .into_iter()
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip))),
        );
    }
    addresses.sort();
    addresses.dedup();
    NodeInfo {
        name: name.to_owned(),
        addresses,
        labels,
    }
}

/// The addresses on this network namespace's interfaces.
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below and only read meanwhile.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: the family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use k8s_openapi::api::core::v1::Service;

    use super::*;
    use crate::dataplane::Mode;

    /// Records each sync as (full?, number of ports); fails the first `fail` ones.
    struct FakeDataplane {
        log: Arc<Mutex<Vec<(bool, usize)>>>,
        fail: Arc<AtomicUsize>,
    }

    impl Dataplane for FakeDataplane {
        fn mode(&self) -> Mode {
            Mode::Nftables
        }
        fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), DataplaneError> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(DataplaneError::Command(
                    crate::dataplane::command::CommandError::Failed {
                        command: "the test's dataplane".into(),
                        status: "refused".into(),
                        stderr: String::new(),
                    },
                ));
            }
            self.log
                .lock()
                .unwrap()
                .push((matches!(kind, SyncKind::Full), new.ports.len()));
            Ok(())
        }
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    async fn wait_for(log: &Mutex<Vec<(bool, usize)>>, n: usize) -> Vec<(bool, usize)> {
        for _ in 0..200 {
            let l = log.lock().unwrap().clone();
            if l.len() >= n {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("only {:?} syncs happened", log.lock().unwrap());
    }

    #[tokio::test]
    async fn failed_syncs_are_retried_in_full_with_nothing_lost_then_changes_go_partial() {
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        let shared = Arc::new(Shared::new("n1", Arc::clone(&health)));
        {
            let mut inputs = shared.lock();
            inputs.services.apply(&service("a", "10.96.0.10")).unwrap();
            inputs.synced.extend(["services", "endpointslices", "node"]);
        }
        let (log, fail) = (Arc::default(), Arc::new(AtomicUsize::new(2)));
        let backend = FakeDataplane {
            log: Arc::clone(&log),
            fail: Arc::clone(&fail),
        };
        let metrics = Arc::new(Metrics::new(Mode::Nftables));
        let settings = SyncSettings {
            node_name: "n1".into(),
            model: ModelConfig::default(),
            nodeport_addresses: Vec::new(),
            min_sync_period: Duration::from_millis(10),
            sync_period: Duration::from_secs(60),
        };
        let sync = SyncLoop::new(
            Arc::clone(&shared),
            Box::new(backend),
            settings,
            Arc::clone(&metrics),
            health.clone(),
        );
        let mut sync = sync;
        let task = tokio::spawn(async move { sync.run().await });
        // A change that arrives while the syncs fail is kept for the retry.
        tokio::time::sleep(Duration::from_millis(300)).await;
        shared.lock().services.apply(&service("b", "10.96.0.11")).unwrap();
        shared.wake.notify_one();
        let first = wait_for(&log, 1).await;
        assert_eq!(
            first[0],
            (true, 2),
            "after two failures, one full sync with both Services"
        );
        assert_eq!(metrics.sync_failures(), 2);
        assert!(health.is_healthy());
        shared.lock().services.apply(&service("c", "10.96.0.12")).unwrap();
        shared.wake.notify_one();
        let next = wait_for(&log, 2).await;
        assert_eq!(next[1], (false, 3), "the next change is a partial sync");
        task.abort();
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(30);
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n, cap).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn primary_addresses_come_from_the_node_object() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "a"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.250.0.11"},
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "192.0.2.7"}
            ]}
        }))
        .unwrap();
        let info = node_info("n1", Some(&node), &[]);
        assert_eq!(
            info.addresses,
            vec!["10.250.0.11".parse::<IpAddr>().unwrap(), "192.0.2.7".parse().unwrap()]
        );
        assert_eq!(
            info.labels.get("topology.kubernetes.io/zone").map(String::as_str),
            Some("a")
        );
        let loopback = node_info(
            "n1",
            Some(&node),
            &[NodePortAddress::Cidr("127.0.0.0/8".parse().unwrap())],
        );
        assert_eq!(
            loopback.addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
            "interface addresses in the CIDR"
        );
    }
}
