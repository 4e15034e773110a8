//! `first-packet`: connection setup through a ClusterIP as the Service count grows, beside
//! the same connection to the pod IP directly. Each sample is one new TCP connection from
//! the client namespace: SYN to established plus the first one-byte request and its
//! answer (the endpoint's address), timed on the client. kube-proxy's iptables layout walks
//! a list of Services on a connection's first packet, which is why upstream's write-ups see
//! this figure grow with scale.
//!
//! Per mode, one proxy (the agent's sync loop, [`super::proxy_under_test`]) grows through
//! the sizes (each step a partial sync adding Services); at each size the last Service
//! added is measured, `rounds` times in alternation with the direct path (d c d c …), and
//! the ClusterIP/direct ratio of medians is reported per round (its spread). Size 0 is the
//! mode's base rules with no Service. The direct path crosses the same node and the same
//! hooks (in the iptables mode its first packet walks the same nat chains), so a ratio near
//! 1 there can hide a cost both paths pay: compare the direct figures across sizes too.
//! The client runs outside the ebpf mode's socket-LB cgroup: its connections take the
//! per-packet (tc) path, as a pod's do on a node without socket LB for pods.
//!
//! Seen on the ebpf mode and not explained yet: 0.1–0.6 % of new connections time out, on
//! the direct path too; `errors` counts them (the other modes show none).

use std::{
    net::SocketAddrV4,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    proxy_under_test::{ProxyUnderTest, Settings},
    spread::{Dist, Stat, fmt3},
    synthetic,
    topology::{self, BACKEND_PORT, SERVICE_PORT, Topology},
};
use crate::{dataplane::Mode, model::DesiredState};

pub const SCHEMA: &str = "rudder.bench.first-packet/v1";

#[derive(Debug, Clone)]
pub struct Opts {
    pub modes: Vec<Mode>,
    /// Service counts, measured in increasing order (0 = no Service).
    pub services: Vec<usize>,
    pub endpoints: usize,
    /// Connections per path per round.
    pub connections: usize,
    pub rounds: usize,
    /// Connections made and not counted before each size's first round.
    pub warmup: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            modes: vec![Mode::Ebpf, Mode::Nftables, Mode::Iptables],
            services: vec![1_000, 5_000, 10_000, 30_000],
            endpoints: 10,
            connections: 1_000,
            rounds: 3,
            warmup: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub endpoints_per_service: usize,
    pub connections_per_round: usize,
    pub rounds: usize,
    pub results: Vec<Row>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub mode: String,
    pub services: usize,
    /// Seconds the sync that brought the node to this size took (0: nothing added).
    pub sync_s: f64,
    /// Microseconds per connection, over every round.
    pub direct_us: Option<Dist>,
    pub cluster_ip_us: Option<Dist>,
    /// ClusterIP median / direct median, per round.
    pub ratio_median: Option<Stat>,
    /// ClusterIP median / the direct median with no Service (size 0, when measured): the
    /// cost the rules add to a path that also has to walk them.
    pub ratio_to_bare: Option<f64>,
    /// Connections that failed (timeouts, resets); should be 0.
    pub errors: usize,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = format!(
            "first-packet: connect + first request/response, {} connections × {} rounds per path\n",
            self.connections_per_round, self.rounds
        );
        t += "| mode | Services | direct min / p50 / p99 µs | ClusterIP min / p50 / p99 µs | ClusterIP/direct p50 (min–max over rounds) | ClusterIP p50 / bare direct p50 | errors |\n|---|---|---|---|---|---|---|\n";
        let d = |d: &Option<Dist>| {
            d.map_or("-".into(), |d| {
                format!("{} / {} / {}", fmt3(d.min), fmt3(d.p50), fmt3(d.p99))
            })
        };
        for r in &self.results {
            t += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.mode,
                r.services,
                d(&r.direct_us),
                d(&r.cluster_ip_us),
                r.ratio_median.map_or("-".into(), |s| format!(
                    "{} ({}–{})",
                    fmt3(s.median),
                    fmt3(s.min),
                    fmt3(s.max)
                )),
                r.ratio_to_bare.map_or("-".into(), fmt3),
                r.errors,
            );
        }
        t
    }
}

pub fn run(opts: &Opts, progress: &dyn Fn(&str)) -> Result<Report> {
    if opts.endpoints == 0 || opts.connections == 0 || opts.rounds == 0 {
        bail!("first-packet: endpoints, connections and rounds must be positive");
    }
    let mut sizes = opts.services.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut results = Vec::new();
    for &mode in &opts.modes {
        results.extend(run_mode(opts, mode, &sizes, progress).with_context(|| format!("first-packet, {mode:?}"))?);
    }
    Ok(Report {
        schema: SCHEMA.into(),
        endpoints_per_service: opts.endpoints,
        connections_per_round: opts.connections,
        rounds: opts.rounds,
        results,
    })
}

/// The port count of the last sync, and when it ended.
type Synced = Arc<(Mutex<(usize, Option<Instant>)>, Condvar)>;

fn run_mode(opts: &Opts, mode: Mode, sizes: &[usize], progress: &dyn Fn(&str)) -> Result<Vec<Row>> {
    let e = opts.endpoints;
    let max = sizes.last().copied().unwrap_or(0);
    let topo = Topology::create()?;
    let synced: Synced = Arc::default();
    let hook = {
        let synced = Arc::clone(&synced);
        Box::new(move |state: &DesiredState| {
            *synced.0.lock().expect("not poisoned") = (state.ports.len(), Some(Instant::now()));
            synced.1.notify_all();
        })
    };
    let settings = Settings {
        mode,
        min_sync_period: Duration::ZERO,
        sync_period: Duration::from_secs(24 * 3600),
        max_endpoints: max * (e + 2),
    };
    let proxy = ProxyUnderTest::start(&topo, &settings, &[], hook)?;
    let wait_for = |ports: usize| -> Result<Instant> {
        let (lock, cv) = &*synced;
        let g = cv
            .wait_timeout_while(lock.lock().expect("not poisoned"), Duration::from_secs(1800), |s| {
                s.0 < ports || s.1.is_none()
            })
            .expect("not poisoned")
            .0;
        if g.0 < ports {
            bail!("the proxy did not program {ports} Services within 30 minutes");
        }
        g.1.context("a sync ended")
    };
    wait_for(0)?;
    let mut rows = Vec::new();
    let mut have = 0;
    for &n in sizes {
        let mut sync_s = 0.0;
        if n > have {
            progress(&format!("first-packet {mode:?}: growing to {n} Services"));
            let start = Instant::now();
            {
                let mut inputs = proxy.shared.lock();
                for i in have..n {
                    inputs
                        .services
                        .apply(&synthetic::service(i))
                        .context("a synthetic Service")?;
                    inputs
                        .endpoints
                        .apply(&synthetic::slice(i, e, 0))
                        .context("a synthetic EndpointSlice")?;
                }
            }
            proxy.shared.wake.notify_one();
            sync_s = (wait_for(n)? - start).as_secs_f64();
            have = n;
        }
        progress(&format!("first-packet {mode:?} {n} Services: measuring"));
        rows.push(measure(opts, mode, n, sync_s, &topo)?);
    }
    let bare = rows
        .iter()
        .find(|r| r.services == 0)
        .and_then(|r| r.direct_us)
        .map(|d| d.p50);
    for r in &mut rows {
        r.ratio_to_bare = bare.zip(r.cluster_ip_us).map(|(b, c)| c.p50 / b);
    }
    drop(proxy);
    drop(topo);
    Ok(rows)
}

fn measure(opts: &Opts, mode: Mode, n: usize, sync_s: f64, topo: &Topology) -> Result<Row> {
    // Size 0 has no Service: only the direct path, to an address that answers.
    let (direct, vip) = if n == 0 {
        (SocketAddrV4::new(synthetic::endpoint_ip(0), BACKEND_PORT), None)
    } else {
        let i = n - 1;
        (
            SocketAddrV4::new(synthetic::endpoint_ip(i * opts.endpoints), BACKEND_PORT),
            Some(SocketAddrV4::new(synthetic::cluster_ip(i), SERVICE_PORT)),
        )
    };
    let (conns, rounds, warmup) = (opts.connections, opts.rounds, opts.warmup);
    let (d, c, ratios, errors) = topo.client.run(move || {
        let mut errors = 0usize;
        let mut batch = |target: SocketAddrV4, k: usize| -> Vec<f64> {
            let mut out = Vec::with_capacity(k);
            for _ in 0..k {
                let t = Instant::now();
                match topology::ask(target, Duration::from_secs(2)) {
                    Ok(_) => out.push(t.elapsed().as_secs_f64() * 1e6),
                    Err(_) => errors += 1,
                }
            }
            out
        };
        batch(direct, warmup);
        if let Some(v) = vip {
            batch(v, warmup);
        }
        let (mut d, mut c, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let dr = batch(direct, conns);
            if let Some(v) = vip {
                let cr = batch(v, conns);
                if let (Some(dm), Some(cm)) = (Dist::of(&dr), Dist::of(&cr)) {
                    ratios.push(cm.p50 / dm.p50);
                }
                c.extend(cr);
            }
            d.extend(dr);
        }
        (d, c, ratios, errors)
    })?;
    Ok(Row {
        mode: format!("{mode:?}").to_lowercase(),
        services: n,
        sync_s,
        direct_us: Dist::of(&d),
        cluster_ip_us: Dist::of(&c),
        ratio_median: Stat::of(&ratios),
        ratio_to_bare: None,
        errors,
    })
}
