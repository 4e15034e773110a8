//! One benchmark run: a cold sync and repeated one-change syncs of one mode at one size,
//! through the same trackers, model and renderers the agent uses, applied to the kernel of
//! the current network namespace.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use super::{kube_proxy, synthetic};
use crate::{
    dataplane::{
        Dataplane, DataplaneError, SyncKind,
        command::run_with_stdin,
        iptables::{self, Flavor, Iptables},
        nftables,
    },
    model::{
        DesiredState, Diff, EndpointsChangeTracker, EndpointsMap, ModelConfig, NodeInfo, ServiceChangeTracker,
        ServicePortMap, ServicePortName,
    },
};

/// What is measured: our renderers, and kube-proxy's layouts as baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// The reconciler writing BPF maps (programs loaded, not attached).
    RudderEbpf,
    RudderNftables,
    RudderIptablesLegacy,
    RudderIptablesNft,
    KubeProxyNftables,
    KubeProxyIptablesLegacy,
    KubeProxyIptablesNft,
    /// The ipvs backend itself (IPVS over netlink, its ipsets and iptables-nft rules).
    RudderIpvs,
    /// kube-proxy's ipvs layout: the same IPVS objects, the whole table read back and its
    /// rules restored every sync, its ipsets (written with one `ipset restore` per sync
    /// where kube-proxy runs one `ipset add`/`del` process per entry: this favours it).
    KubeProxyIpvs,
}

impl BenchMode {
    /// (family, variant): layouts compare within a family.
    pub fn family(self) -> &'static str {
        match self {
            Self::RudderEbpf => "ebpf",
            Self::RudderNftables | Self::KubeProxyNftables => "nftables",
            Self::RudderIptablesLegacy | Self::KubeProxyIptablesLegacy => "iptables-legacy",
            Self::RudderIptablesNft | Self::KubeProxyIptablesNft => "iptables-nft",
            Self::RudderIpvs | Self::KubeProxyIpvs => "ipvs",
        }
    }

    fn flavor(self) -> Flavor {
        match self {
            Self::RudderIptablesLegacy | Self::KubeProxyIptablesLegacy => Flavor::Legacy,
            _ => Flavor::Nft,
        }
    }

    fn render_full(self, s: &DesiredState) -> String {
        match self {
            Self::RudderEbpf | Self::RudderIpvs | Self::KubeProxyIpvs => String::new(),
            Self::RudderNftables => nftables::render_full(s),
            Self::RudderIptablesLegacy | Self::RudderIptablesNft => {
                let r = iptables::render_full(s);
                r.v4 + &r.v6
            }
            Self::KubeProxyNftables => kube_proxy::nft_full(s),
            Self::KubeProxyIptablesLegacy | Self::KubeProxyIptablesNft => kube_proxy::iptables_full(s),
        }
    }

    fn render_partial(self, old: &DesiredState, new: &DesiredState, diff: &Diff) -> Partial {
        Partial::Script(match self {
            Self::RudderEbpf | Self::RudderIpvs | Self::KubeProxyIpvs => String::new(),
            // The backend's own path: element-only changes skip `nft`.
            Self::RudderNftables => {
                return Partial::Nftables(nftables::render::incremental(old, new, diff));
            }
            Self::RudderIptablesLegacy | Self::RudderIptablesNft => {
                let r = iptables::render_partial(old, new, diff);
                r.v4 + &r.v6
            }
            Self::KubeProxyNftables => kube_proxy::nft_partial(old, new, diff),
            Self::KubeProxyIptablesLegacy | Self::KubeProxyIptablesNft => kube_proxy::iptables_partial(old, new, diff),
        })
    }

    fn apply(self, script: &str) -> Result<(), DataplaneError> {
        match self {
            Self::RudderNftables | Self::KubeProxyNftables => run_with_stdin("nft", &["-f", "-"], script)?,
            _ => run_with_stdin(
                &self.flavor().binary(crate::model::IpFamily::V4, "-restore"),
                &["--noflush", "--wait"],
                script,
            )?,
        }
        Ok(())
    }

    fn apply_partial(self, partial: &Partial) -> Result<(), DataplaneError> {
        match partial {
            Partial::Script(s) => self.apply(s),
            Partial::Nftables(delta) => nftables::apply::apply_incremental(delta),
        }
    }
}

enum Partial {
    Script(String),
    Nftables(nftables::render::Incremental),
}

impl Partial {
    fn lines(&self) -> usize {
        match self {
            Self::Script(s) => s.lines().count(),
            Self::Nftables(d) => d.script().lines().count(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    pub mode: String,
    pub family: String,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub cold_s: f64,
    pub cold_render_s: f64,
    /// Syncs after one endpoint of one Service is replaced (the endpoint count stays).
    pub one_change_s: Vec<f64>,
    pub one_change_render_s: Vec<f64>,
    /// Syncs after one Service gains an endpoint (its count changes).
    pub scale_change_s: Vec<f64>,
    pub scale_change_lines: Vec<usize>,
    pub script_lines: usize,
    pub peak_rss_kib: i64,
    /// Where the cold sync's and the last one-change sync's time went, in seconds per
    /// phase (the ipvs modes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold_phases_s: Vec<(String, f64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_change_phases_s: Vec<(String, f64)>,
}

struct Pipeline {
    services: ServiceChangeTracker,
    endpoints: EndpointsChangeTracker,
    service_map: ServicePortMap,
    endpoint_map: EndpointsMap,
    node: NodeInfo,
    config: ModelConfig,
}

impl Pipeline {
    fn state(&mut self) -> DesiredState {
        self.services.take_changes().apply_to(&mut self.service_map);
        self.endpoints.take_changes().apply_to(&mut self.endpoint_map);
        DesiredState::build(&self.service_map, &self.endpoint_map, &self.node, &self.config)
    }

    /// What the agent's sync loop does between full syncs: only touched ports rebuilt.
    /// Returns the previous values of those ports and the diff.
    fn update(&mut self, state: &mut DesiredState) -> (DesiredState, Diff) {
        let (services, endpoints) = (self.services.take_changes(), self.endpoints.take_changes());
        services.apply_to(&mut self.service_map);
        endpoints.apply_to(&mut self.endpoint_map);
        let touched: BTreeSet<ServicePortName> = services
            .services
            .values()
            .flat_map(|c| c.previous.keys().chain(c.current.keys()))
            .chain(
                endpoints
                    .services
                    .values()
                    .flat_map(|c| c.previous.keys().chain(c.current.keys())),
            )
            .cloned()
            .collect();
        state.update(
            &self.service_map,
            &self.endpoint_map,
            &self.node,
            &self.config,
            &touched,
        )
    }
}

/// The map writer for the ebpf mode: the real reconciler over freshly loaded maps.
struct EbpfTarget {
    lb: crate::dataplane::ebpf::testrun::TestLb,
}

/// Where a mode's syncs go: modes with a backend of their own run exactly what the agent
/// runs (the ebpf reconciler; the iptables backend, both families' restores and the
/// ledger it keeps); the baselines run their script.
struct Took {
    rendered: f64,
    synced: f64,
}

enum Target {
    Ebpf(Box<EbpfTarget>),
    Iptables(Iptables),
    Ipvs(IpvsTarget),
    Script,
}

impl Target {
    fn sync(&mut self, mode: BenchMode, state: &DesiredState, script: &str) -> Result<(), DataplaneError> {
        match self {
            Self::Ebpf(t) => Ok(t.lb.sync(state)?),
            Self::Iptables(b) => b.sync(state, SyncKind::Full),
            Self::Ipvs(t) => t.sync(state, SyncKind::Full),
            Self::Script => mode.apply(script),
        }
    }

    /// A partial sync timed from `start` (the change's arrival): through the render, and
    /// through the sync, which for the iptables backend renders again itself, so its
    /// figure leaves out the separate render.
    fn timed_partial(
        &mut self,
        mode: BenchMode,
        old: &DesiredState,
        state: &DesiredState,
        diff: &Diff,
        start: Instant,
    ) -> Result<(Partial, Took), DataplaneError> {
        let updated = start.elapsed();
        let rendering = Instant::now();
        let partial = mode.render_partial(old, state, diff);
        let render = rendering.elapsed();
        let syncing = Instant::now();
        self.sync_partial(mode, old, state, diff, &partial)?;
        let sync = syncing.elapsed();
        let counted = if let Self::Iptables(_) = self {
            Duration::ZERO
        } else {
            render
        };
        let took = Took {
            rendered: (updated + render).as_secs_f64(),
            synced: (updated + counted + sync).as_secs_f64(),
        };
        Ok((partial, took))
    }

    fn sync_partial(
        &mut self,
        mode: BenchMode,
        old: &DesiredState,
        state: &DesiredState,
        diff: &Diff,
        partial: &Partial,
    ) -> Result<(), DataplaneError> {
        match self {
            Self::Ebpf(t) => Ok(t.lb.sync_partial(state, diff)?),
            Self::Iptables(b) => b.sync(state, SyncKind::Partial { old, diff }),
            Self::Ipvs(t) => t.sync(state, SyncKind::Partial { old, diff }),
            Self::Script => mode.apply_partial(partial),
        }
    }
}

impl EbpfTarget {
    fn load(n: usize, e: usize) -> Result<Self, DataplaneError> {
        // Room for every frontend (ClusterIP and its wildcard), every backend and the ones
        // the one-change runs add.
        let max = u32::try_from(n * 2 + n * e + 4096).unwrap_or(u32::MAX);
        let lb = crate::dataplane::ebpf::testrun::TestLb::load(
            "10.96.0.0/16".parse().expect("a CIDR"),
            "10.128.0.0/10".parse().expect("a CIDR"),
            max,
            None,
        )?;
        Ok(Self { lb })
    }
}

/// The ipvs modes' target: the backend itself, or kube-proxy's layout over the same
/// netlink handle, one request and one wait per operation as kube-proxy's IPVS library
/// makes them.
enum IpvsTarget {
    Rudder(Box<crate::dataplane::ipvs::seam::Ipvs<crate::dataplane::ipvs::netlink::NetlinkIpvs>>),
    KubeProxy {
        handle: OneByOne,
        sets: Option<Vec<(&'static str, &'static str, BTreeSet<String>)>>,
        timings: crate::dataplane::ipvs::SyncTimings,
    },
}

/// The kernel's IPVS handle applying each operation on its own: a request, then its
/// answer (kube-proxy's ipvs proxier, through `moby/ipvs` and `vishvananda/netlink`).
struct OneByOne(crate::dataplane::ipvs::netlink::NetlinkIpvs);

impl crate::dataplane::ipvs::IpvsHandle for OneByOne {
    fn state(&self) -> Result<crate::dataplane::ipvs::IpvsState, crate::dataplane::ipvs::IpvsError> {
        self.0.state()
    }

    fn destinations(
        &self,
        key: &crate::dataplane::ipvs::ServiceKey,
    ) -> Result<
        (
            BTreeSet<crate::dataplane::ipvs::Destination>,
            crate::dataplane::ipvs::seam::Connections,
        ),
        crate::dataplane::ipvs::IpvsError,
    > {
        self.0.destinations(key)
    }

    fn apply(&mut self, op: &crate::dataplane::ipvs::Op) -> Result<(), crate::dataplane::ipvs::IpvsError> {
        self.0.apply(op)
    }
}

impl IpvsTarget {
    fn open(mode: BenchMode) -> Result<Self, DataplaneError> {
        use crate::dataplane::ipvs;
        ipvs::load_modules();
        ipvs::preflight(std::path::Path::new("/proc"))?;
        let handle = ipvs::netlink::NetlinkIpvs::open()?;
        ipvs::apply::set_sysctls()?;
        Ok(match mode {
            BenchMode::RudderIpvs => Self::Rudder(Box::new(ipvs::seam::Ipvs {
                handle,
                scheduler: ipvs::Scheduler::RoundRobin,
                helpers: Some(ipvs::apply::HelperRules::new()),
                timings: Default::default(),
            })),
            _ => Self::KubeProxy {
                handle: OneByOne(handle),
                sets: None,
                timings: Default::default(),
            },
        })
    }

    /// Where the last sync's time went, in seconds per phase.
    fn phases(&self) -> Vec<(String, f64)> {
        let timings = match self {
            Self::Rudder(b) => &b.timings,
            Self::KubeProxy { timings, .. } => timings,
        };
        timings
            .0
            .iter()
            .map(|(p, t)| ((*p).to_owned(), t.as_secs_f64()))
            .collect()
    }

    fn sync(&mut self, new: &DesiredState, kind: crate::dataplane::SyncKind<'_>) -> Result<(), DataplaneError> {
        use crate::dataplane::Dataplane;
        match self {
            Self::Rudder(b) => b.sync(new, kind),
            Self::KubeProxy { handle, sets, timings } => {
                *timings = Default::default();
                let want = kube_proxy::ipvs_sets(new);
                let mut script = String::new();
                for (i, (name, kind, members)) in want.iter().enumerate() {
                    let before = sets.as_ref().map(|s| &s[i].2);
                    if before.is_none() {
                        script += &format!("create {name} {kind} maxelem {}\n", (members.len() * 2).max(65536));
                    }
                    let empty = BTreeSet::new();
                    let before = before.unwrap_or(&empty);
                    for m in members.difference(before) {
                        script += &format!("add {name} {m}\n");
                    }
                    for m in before.difference(members) {
                        script += &format!("del {name} {m}\n");
                    }
                }
                timings.time("ipset restore", || {
                    run_with_stdin("ipset", &["-exist", "restore"], &script)
                })?;
                *sets = Some(want);
                timings.time("iptables-restore", || {
                    run_with_stdin(
                        &Flavor::Nft.binary(crate::model::IpFamily::V4, "-restore"),
                        &["--noflush", "--wait"],
                        &kube_proxy::ipvs_rules(),
                    )
                })?;
                crate::dataplane::ipvs::seam::sync_timed(
                    handle,
                    new,
                    crate::dataplane::ipvs::Scheduler::RoundRobin,
                    timings,
                )?;
                Ok(())
            }
        }
    }
}

pub fn run(mode: BenchMode, n: usize, e: usize, reps: usize) -> Result<Measurement, DataplaneError> {
    let mut target = match mode {
        BenchMode::RudderEbpf => Target::Ebpf(Box::new(EbpfTarget::load(n, e)?)),
        BenchMode::RudderIptablesLegacy | BenchMode::RudderIptablesNft => {
            Target::Iptables(Iptables::new(mode.flavor()))
        }
        BenchMode::RudderIpvs | BenchMode::KubeProxyIpvs => Target::Ipvs(IpvsTarget::open(mode)?),
        _ => Target::Script,
    };
    let objects: Vec<_> = (0..n)
        .map(|i| (synthetic::service(i), synthetic::slice(i, e, 0)))
        .collect();
    let mut p = Pipeline {
        services: ServiceChangeTracker::new(),
        endpoints: EndpointsChangeTracker::new("bench-node", SystemTime::now()),
        service_map: ServicePortMap::new(),
        endpoint_map: EndpointsMap::new(),
        node: NodeInfo {
            name: "bench-node".into(),
            ..Default::default()
        },
        config: ModelConfig {
            cluster_cidrs: vec!["10.128.0.0/10".parse().expect("a valid CIDR")],
            service_cidrs: vec!["10.96.0.0/16".parse().expect("a valid CIDR")],
            ..Default::default()
        },
    };
    let start = Instant::now();
    for (svc, slice) in &objects {
        let _ = p.services.apply(svc);
        let _ = p.endpoints.apply(slice);
    }
    let mut state = p.state();
    let modelled = start.elapsed().as_secs_f64();
    // The iptables backend renders inside its sync: its render is timed apart, untimed in
    // the cold figure.
    let (script, cold_s) = if let Target::Iptables(_) = target {
        let synced = Instant::now();
        target.sync(mode, &state, "")?;
        let cold_s = modelled + synced.elapsed().as_secs_f64();
        (mode.render_full(&state), cold_s)
    } else {
        let script = mode.render_full(&state);
        target.sync(mode, &state, &script)?;
        (script, start.elapsed().as_secs_f64())
    };
    let phases = |t: &Target| match t {
        Target::Ipvs(t) => t.phases(),
        _ => Vec::new(),
    };
    let cold_phases_s = phases(&target);
    if !cold_phases_s.is_empty() {
        eprintln!("{mode:?} {n} Services: cold sync {cold_s:.2} s: {cold_phases_s:?}");
    }
    let rendered = Instant::now();
    let _ = mode.render_full(&state);
    let cold_render_s = modelled + rendered.elapsed().as_secs_f64();
    let script_lines = script.lines().count();
    drop(script);

    let (mut one_change_s, mut one_change_render_s) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let i = (rep * 7919) % n;
        let start = Instant::now();
        let _ = p.endpoints.apply(&synthetic::slice(i, e, rep + 1));
        let (old, diff) = p.update(&mut state);
        let (_, took) = target.timed_partial(mode, &old, &state, &diff, start)?;
        one_change_render_s.push(took.rendered);
        one_change_s.push(took.synced);
    }
    let one_change_phases_s = phases(&target);
    let (mut scale_change_s, mut scale_change_lines) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let i = (rep * 7919 + 17) % n;
        let start = Instant::now();
        let _ = p.endpoints.apply(&synthetic::slice_plus(i, e, 1));
        let (old, diff) = p.update(&mut state);
        let (partial, took) = target.timed_partial(mode, &old, &state, &diff, start)?;
        scale_change_s.push(took.synced);
        scale_change_lines.push(partial.lines());
    }
    Ok(Measurement {
        mode: format!("{mode:?}"),
        family: mode.family().into(),
        services: n,
        endpoints_per_service: e,
        cold_s,
        cold_render_s,
        one_change_s,
        one_change_render_s,
        scale_change_s,
        scale_change_lines,
        script_lines,
        peak_rss_kib: peak_rss_kib(),
        cold_phases_s,
        one_change_phases_s,
    })
}

fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_maxrss
    }
}
