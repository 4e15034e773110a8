//! `churn`: network programming latency under load, as ClusterLoader2 measures it, but
//! observed on the wire: with N Services × E endpoints programmed, EndpointSlice changes
//! arrive at a steady rate; each replaces one endpoint of one Service with a new address
//! that really answers (see [`super::topology`]). For every change we take
//!
//! - *programmed*: from the change entering the agent's change tracker to the end of the
//!   sync that carried it (the agent's `after_sync` hook; what kube-proxy's
//!   `network_programming_duration` measures, minus the API server's part), and
//! - *observed*: from the same instant to the first reply from the new endpoint to a
//!   connection to the Service's ClusterIP, made from a client namespace through the
//!   node's dataplane.
//!
//! The loop is the agent's own ([`super::proxy_under_test`]), so a change waits for the
//! sync in progress and, with `min_sync_period`, for the period; several changes then share
//! one sync. The client cannot know which endpoint a connection gets: probes repeat until
//! the new one answers (one in E on average). Before the change's sync has ended they are
//! paced (one per `slow_probe` per prober); afterwards back to back, so *observed* includes
//! a few probe round trips beyond *programmed*; `observed_after_programmed_ms` shows how
//! much. CPU per change is the sync loop's threads' user+system time plus its children's
//! (`nft`, `iptables-restore`) over the run, divided by the changes.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    proxy_under_test::{ProxyUnderTest, Settings},
    spread::{Dist, fmt3},
    synthetic,
    topology::{self, SERVICE_PORT, Topology},
};
use crate::{
    dataplane::Mode,
    model::{DesiredState, Protocol, ServicePortName},
};

pub const SCHEMA: &str = "rudder.bench.churn/v1";

#[derive(Debug, Clone)]
pub struct Opts {
    pub modes: Vec<Mode>,
    pub services: Vec<usize>,
    pub endpoints: usize,
    /// Changes per second.
    pub rate: f64,
    pub changes: usize,
    /// The agent's `--min-sync-period` (its default is 1 s; 0 measures the pipeline itself).
    pub min_sync_period: Duration,
    /// The agent's `--sync-period` (periodic full resync).
    pub sync_period: Duration,
    /// Client threads probing for new endpoints.
    pub probers: usize,
    /// Pace of probes for a change whose sync has not ended yet.
    pub slow_probe: Duration,
    /// How long a change may take to be observed before it counts as lost.
    pub timeout: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            modes: vec![Mode::Ebpf, Mode::Nftables, Mode::Iptables],
            services: vec![1_000, 10_000],
            endpoints: 10,
            rate: 50.0,
            changes: 1_000,
            min_sync_period: Duration::ZERO,
            sync_period: Duration::from_secs(30),
            probers: 2,
            slow_probe: Duration::from_millis(2),
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub endpoints_per_service: usize,
    pub rate_per_s: f64,
    pub min_sync_period_ms: f64,
    pub sync_period_s: f64,
    pub results: Vec<Row>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub mode: String,
    pub services: usize,
    pub changes: usize,
    /// Changes seen answering from their new endpoint.
    pub observed: usize,
    /// Changes never observed within the timeout (should be 0).
    pub lost: usize,
    /// The rate the changes actually went in at.
    pub achieved_rate_per_s: f64,
    pub cold_sync_s: f64,
    /// Syncs during the churn (fewer than changes: several changes shared a sync).
    pub syncs: u64,
    pub programmed_ms: Option<Dist>,
    pub observed_ms: Option<Dist>,
    pub observed_after_programmed_ms: Option<Dist>,
    pub probes_per_change: f64,
    pub probe_errors: u64,
    pub cpu_s: f64,
    pub cpu_ms_per_change: f64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = format!(
            "churn: {} changes/s, {} endpoints per Service, min sync period {} ms, full resync every {} s\n",
            self.rate_per_s, self.endpoints_per_service, self.min_sync_period_ms, self.sync_period_s
        );
        t += "| mode | Services | changes (lost) | syncs | cold sync s | programmed p50 / p99 / max ms | observed p50 / p99 / max ms | probe overhead p50 / p99 ms | CPU ms per change |\n|---|---|---|---|---|---|---|---|---|\n";
        let d = |d: &Option<Dist>| {
            d.map_or("-".into(), |d| {
                format!("{} / {} / {}", fmt3(d.p50), fmt3(d.p99), fmt3(d.max))
            })
        };
        for r in &self.results {
            t += &format!(
                "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |\n",
                r.mode,
                r.services,
                r.changes,
                r.lost,
                r.syncs,
                fmt3(r.cold_sync_s),
                d(&r.programmed_ms),
                d(&r.observed_ms),
                r.observed_after_programmed_ms
                    .map_or("-".into(), |d| format!("{} / {}", fmt3(d.p50), fmt3(d.p99))),
                fmt3(r.cpu_ms_per_change),
            );
        }
        t
    }
}

pub fn run(opts: &Opts, progress: &dyn Fn(&str)) -> Result<Report> {
    if opts.endpoints == 0 || opts.rate <= 0.0 || opts.changes == 0 || opts.probers == 0 {
        bail!("churn: endpoints, rate, changes and probers must be positive");
    }
    let mut results = Vec::new();
    for &n in &opts.services {
        for &mode in &opts.modes {
            results.push(run_one(opts, mode, n, progress).with_context(|| format!("churn, {mode:?}, {n} Services"))?);
        }
    }
    Ok(Report {
        schema: SCHEMA.into(),
        endpoints_per_service: opts.endpoints,
        rate_per_s: opts.rate,
        min_sync_period_ms: opts.min_sync_period.as_secs_f64() * 1e3,
        sync_period_s: opts.sync_period.as_secs_f64(),
        results,
    })
}

struct Change {
    service: usize,
    port: ServicePortName,
    new: Ipv4Addr,
    injected: Instant,
    programmed: Option<Instant>,
    observed: Option<Instant>,
}

#[derive(Default)]
struct Ledger {
    changes: Vec<Change>,
    /// Changes whose sync has not been seen yet.
    unprogrammed: Vec<usize>,
    /// Changes not yet answered from their new endpoint.
    unobserved: Vec<usize>,
    cold_done: Option<Instant>,
}

fn port_name(i: usize) -> ServicePortName {
    ServicePortName {
        namespace: synthetic::NAMESPACE.into(),
        name: format!("svc-{i}"),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn holds(state: &DesiredState, port: &ServicePortName, ip: Ipv4Addr) -> bool {
    state.ports.get(port).is_some_and(|p| {
        p.endpoint_sets
            .values()
            .any(|set| set.iter().any(|b| b.address == std::net::IpAddr::V4(ip)))
    })
}

/// Addresses of new endpoints: a range the original endpoints never reach, inside the
/// answering range.
const NEW_BASE: usize = 1_500_000;

fn run_one(opts: &Opts, mode: Mode, n: usize, progress: &dyn Fn(&str)) -> Result<Row> {
    let e = opts.endpoints;
    progress(&format!("churn {mode:?} {n} Services: setting up"));
    let topo = Topology::create()?;
    let objects: Vec<_> = (0..n)
        .map(|i| (synthetic::service(i), synthetic::slice(i, e, 0)))
        .collect();
    let mut current: Vec<Vec<usize>> = (0..n).map(|i| (0..e).map(|k| i * e + k).collect()).collect();
    let ledger = Arc::new((Mutex::new(Ledger::default()), Condvar::new()));
    let syncs = Arc::new(AtomicU64::new(0));
    let hook = {
        let (ledger, syncs) = (Arc::clone(&ledger), Arc::clone(&syncs));
        Box::new(move |state: &DesiredState| {
            let now = Instant::now();
            syncs.fetch_add(1, Ordering::Relaxed);
            let mut l = ledger.0.lock().expect("not poisoned");
            l.cold_done.get_or_insert(now);
            let Ledger {
                changes, unprogrammed, ..
            } = &mut *l;
            unprogrammed.retain(|&c| {
                let ch = &mut changes[c];
                if holds(state, &ch.port, ch.new) {
                    ch.programmed = Some(now);
                    false
                } else {
                    true
                }
            });
            ledger.1.notify_all();
        })
    };
    let settings = Settings {
        mode,
        min_sync_period: opts.min_sync_period,
        sync_period: opts.sync_period,
        max_endpoints: n * (e + 2) + opts.changes,
    };
    let started = Instant::now();
    let proxy = ProxyUnderTest::start(&topo, &settings, &objects, hook)?;
    drop(objects);
    let cold_done = {
        let (lock, cv) = &*ledger;
        let guard = cv
            .wait_timeout_while(lock.lock().expect("not poisoned"), Duration::from_secs(1800), |l| {
                l.cold_done.is_none()
            })
            .expect("not poisoned")
            .0;
        guard.cold_done.context("the cold sync did not end within 30 minutes")?
    };
    let cold_sync_s = (cold_done - started).as_secs_f64();
    progress(&format!("churn {mode:?} {n} Services: cold sync {cold_sync_s:.2} s"));
    // The path works before anything is timed: the first Service answers from one of its
    // endpoints.
    let vip = |i: usize| SocketAddrV4::new(synthetic::cluster_ip(i), SERVICE_PORT);
    let first = vip(0);
    topo.client
        .run(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match topology::ask(first, Duration::from_secs(1)) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        })?
        .with_context(|| format!("{first} does not answer through the {mode:?} dataplane"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let (probes, probe_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut probers = Vec::new();
    for p in 0..opts.probers {
        let (ledger, stop, probes, errors) = (
            Arc::clone(&ledger),
            Arc::clone(&stop),
            Arc::clone(&probes),
            Arc::clone(&probe_errors),
        );
        let slow = opts.slow_probe;
        probers.push(topo.client.spawn("rbench-prober", move || {
            probe_loop(p, &ledger, &stop, &probes, &errors, slow, vip);
        })?);
    }

    let cpu_before = proxy.cpu_s();
    let syncs_before = syncs.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    for k in 0..opts.changes {
        if let Some(wait) = (t0 + period * k as u32).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let i = (k * 7919 + 1) % n;
        let slot = (k / n) % e;
        let j = NEW_BASE + k;
        current[i][slot] = j;
        let slice = synthetic::slice_with(i, current[i].iter().copied());
        {
            let mut l = ledger.0.lock().expect("not poisoned");
            let c = l.changes.len();
            l.changes.push(Change {
                service: i,
                port: port_name(i),
                new: synthetic::endpoint_ip(j),
                injected: Instant::now(),
                programmed: None,
                observed: None,
            });
            l.unprogrammed.push(c);
            l.unobserved.push(c);
        }
        proxy.update(&slice)?;
        if (k + 1) % 100 == 0 {
            progress(&format!(
                "churn {mode:?} {n} Services: {} of {} changes",
                k + 1,
                opts.changes
            ));
        }
    }
    let injected_s = t0.elapsed().as_secs_f64();
    {
        let (lock, cv) = &*ledger;
        let _unused = cv
            .wait_timeout_while(lock.lock().expect("not poisoned"), opts.timeout, |l| {
                !l.unobserved.is_empty()
            })
            .expect("not poisoned");
    }
    let cpu_s = proxy.cpu_s() - cpu_before;
    let syncs = syncs.load(Ordering::Relaxed) - syncs_before;
    stop.store(true, Ordering::Relaxed);
    for p in probers {
        let _ = p.join();
    }
    drop(proxy);
    drop(topo);

    let l = ledger.0.lock().expect("not poisoned");
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let programmed: Vec<f64> = l
        .changes
        .iter()
        .filter_map(|c| Some(ms(c.injected, c.programmed?)))
        .collect();
    let observed: Vec<f64> = l
        .changes
        .iter()
        .filter_map(|c| Some(ms(c.injected, c.observed?)))
        .collect();
    let after: Vec<f64> = l
        .changes
        .iter()
        .filter_map(|c| Some(ms(c.programmed?, c.observed?).max(0.0)))
        .collect();
    let changes = l.changes.len();
    Ok(Row {
        mode: format!("{mode:?}").to_lowercase(),
        services: n,
        changes,
        observed: observed.len(),
        lost: changes - observed.len(),
        achieved_rate_per_s: changes as f64 / injected_s.max(1e-9),
        cold_sync_s,
        syncs,
        programmed_ms: Dist::of(&programmed),
        observed_ms: Dist::of(&observed),
        observed_after_programmed_ms: Dist::of(&after),
        probes_per_change: probes.load(Ordering::Relaxed) as f64 / changes.max(1) as f64,
        probe_errors: probe_errors.load(Ordering::Relaxed),
        cpu_s,
        cpu_ms_per_change: cpu_s * 1e3 / changes.max(1) as f64,
    })
}

/// One prober: connects to the ClusterIP of the oldest programmed, unobserved change
/// until its new endpoint answers; with none programmed, paces probes of the oldest
/// unprogrammed one (so a dataplane faster than the sync hook would still be seen).
fn probe_loop(
    me: usize,
    ledger: &(Mutex<Ledger>, Condvar),
    stop: &AtomicBool,
    probes: &AtomicU64,
    errors: &AtomicU64,
    slow: Duration,
    vip: impl Fn(usize) -> SocketAddrV4,
) {
    let (lock, cv) = ledger;
    loop {
        let pick = {
            // Set once every change was observed or the timeout passed.
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let l = lock.lock().expect("not poisoned");
            let ready: Vec<usize> = l
                .unobserved
                .iter()
                .copied()
                .filter(|&c| l.changes[c].programmed.is_some())
                .collect();
            // Probers share the programmed changes, oldest first.
            match ready.get(me % ready.len().max(1)).or(ready.first()) {
                Some(&c) => Some((c, true)),
                None => l.unobserved.first().map(|&c| (c, false)),
            }
        };
        let Some((c, programmed)) = pick else {
            thread::sleep(slow);
            continue;
        };
        let (target, want) = {
            let l = lock.lock().expect("not poisoned");
            (vip(l.changes[c].service), l.changes[c].new)
        };
        probes.fetch_add(1, Ordering::Relaxed);
        match topology::ask(target, Duration::from_secs(1)) {
            Ok(ip) if ip == want => {
                let now = Instant::now();
                let mut l = lock.lock().expect("not poisoned");
                if l.changes[c].observed.is_none() {
                    l.changes[c].observed = Some(now);
                    l.unobserved.retain(|&x| x != c);
                    cv.notify_all();
                }
            }
            Ok(_) => {}
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !programmed {
            thread::sleep(slow);
        }
    }
}
