//! The agent's sync loop, unchanged, inside the benchmark's node namespace: the same
//! change trackers, desired state, bounded-frequency batching (`min_sync_period`) and
//! backend (`dataplane::seam::open`) that `rudder-proxy run` uses, fed directly instead
//! of by watches. Everything from a change entering the trackers to the kernel holding it
//! is the agent's own code.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::topology::{self, CLUSTER_CIDR, Cgroup, SERVICE_CIDR, Topology};
use crate::{
    agent::{
        health::ProxyHealth,
        inputs::Shared,
        metrics::Metrics,
        sync::{SyncLoop, SyncSettings},
    },
    dataplane::{Mode, ebpf::EbpfOptions, ipvs::Scheduler, seam},
    model::{DesiredState, ModelConfig},
};

pub const NODE_NAME: &str = "bench-node";

/// Run after each successful sync, on the sync loop's thread.
pub type Hook = Box<dyn FnMut(&DesiredState) + Send>;

/// A running proxy; dropping it stops the loop and removes what the mode left outside the
/// node namespace (the ebpf mode's pins and its cgroup).
pub struct ProxyUnderTest {
    pub shared: Arc<Shared>,
    /// The loop's threads (its runtime's and the blocking pool's), for CPU accounting.
    pub tids: Arc<Mutex<Vec<i32>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<Result<()>>>>,
    bpf_root: Option<PathBuf>,
    _cgroup: Option<Cgroup>,
}

pub struct Settings {
    pub mode: Mode,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// For the ebpf mode's map sizes.
    pub max_endpoints: usize,
}

impl ProxyUnderTest {
    /// Loads `objects` into the trackers, then starts the loop, whose first sync is the
    /// cold one; `hook` sees every sync's result.
    pub fn start(
        topo: &Topology,
        settings: &Settings,
        objects: &[(Service, EndpointSlice)],
        hook: Hook,
    ) -> Result<Self> {
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(3600)));
        let shared = Arc::new(Shared::new(NODE_NAME, Arc::clone(&health)));
        {
            let mut inputs = shared.lock();
            for (svc, slice) in objects {
                inputs.services.apply(svc).context("a synthetic Service")?;
                inputs.endpoints.apply(slice).context("a synthetic EndpointSlice")?;
            }
            inputs.synced.extend(["services", "endpointslices", "node"]);
        }
        let (mut bpf_root, mut cgroup) = (None, None);
        let mut ebpf = EbpfOptions::default();
        if settings.mode == Mode::Ebpf {
            let root = PathBuf::from("/sys/fs/bpf").join(topology::unique("lb"));
            let cg = Cgroup::create("lb")?;
            ebpf = EbpfOptions {
                bpf_root: root.clone(),
                cgroup: cg.path.clone(),
                devices: topo.node_devices.clone(),
                service_cidrs: vec![SERVICE_CIDR.parse().expect("a CIDR")],
                pod_cidrs: vec![CLUSTER_CIDR.parse().expect("a CIDR")],
                lb_map_max: u32::try_from(settings.max_endpoints + 65_536).unwrap_or(u32::MAX),
                ..EbpfOptions::default()
            };
            bpf_root = Some(root);
            cgroup = Some(cg);
        }
        let sync_settings = SyncSettings {
            node_name: NODE_NAME.into(),
            model: ModelConfig {
                cluster_cidrs: vec![CLUSTER_CIDR.parse().expect("a CIDR")],
                service_cidrs: vec![SERVICE_CIDR.parse().expect("a CIDR")],
                ..Default::default()
            },
            nodeport_addresses: Vec::new(),
            min_sync_period: settings.min_sync_period,
            sync_period: settings.sync_period,
        };
        let tids = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let mode = settings.mode;
        let (shared2, tids2) = (Arc::clone(&shared), Arc::clone(&tids));
        let thread = topo.node.spawn("rbench-proxy", move || -> Result<()> {
            tids2.lock().expect("not poisoned").push(topology::gettid());
            let on_start = Arc::clone(&tids2);
            // Built in the node namespace: every thread it starts (the blocking pool that
            // runs the backend's sync, `nft` and `iptables-restore`) inherits it.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_keep_alive(Duration::from_secs(24 * 3600))
                .on_thread_start(move || on_start.lock().expect("not poisoned").push(topology::gettid()))
                .build()
                .context("a runtime")?;
            let backend = match seam::open(mode, &ebpf, Scheduler::RoundRobin) {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("open the {mode:?} backend: {e}")));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut sync = SyncLoop::new(shared2, backend, sync_settings, Arc::new(Metrics::new(mode)), health);
            sync.after_sync(hook);
            rt.block_on(async {
                tokio::select! {
                    () = sync.run() => {}
                    _ = stopped => {}
                }
            });
            drop(sync);
            Ok(())
        })?;
        let mut me = Self {
            shared,
            tids,
            stop: Some(stop),
            thread: Some(thread),
            bpf_root,
            _cgroup: cgroup,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let e = me.join().err();
                bail!("the proxy's thread ended before its backend opened: {e:?}");
            }
        }
        me.shared.wake.notify_one();
        Ok(me)
    }

    /// Hands one changed slice to the loop, as the EndpointSlice watch does.
    pub fn update(&self, slice: &EndpointSlice) -> Result<()> {
        self.shared.lock().endpoints.apply(slice).context("a changed slice")?;
        self.shared.health.queued();
        self.shared.wake.notify_one();
        Ok(())
    }

    /// CPU seconds the loop's threads have used so far.
    pub fn cpu_s(&self) -> f64 {
        self.tids
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|&t| topology::thread_cpu_s(t))
            .sum::<f64>()
            + topology::children_cpu_s()
    }

    fn join(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r??,
                Err(_) => bail!("the proxy's thread panicked"),
            }
        }
        Ok(())
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::warn!(error = %e, "the benchmark's proxy ended with an error");
        }
        if let Some(root) = &self.bpf_root
            && let Err(e) = crate::dataplane::ebpf::attach::cleanup(root)
        {
            tracing::warn!(root = %root.display(), error = %crate::dataplane::ebpf::chain(&e), "could not remove the benchmark's pins");
        }
    }
}
