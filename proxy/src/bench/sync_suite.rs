//! The `sync` suite: per mode and size, a fresh namespace and one worker run in it (a cold
//! sync, then one-change syncs that replace one endpoint of one Service, then scale-up
//! syncs that add one; [`super::run`] measures); our modes and kube-proxy's layouts side by
//! side, with ratios within each family.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{
    Opts, Progress, Ratio, Stat,
    machine::{Capabilities, Capability},
    plot,
    run::{BenchMode, Measurement},
    worker::{self, Job, WorkerArgs, mode_name},
};

pub const DEFAULT_SIZES: &[usize] = &[1000, 5000, 10_000];
pub const ENDPOINTS: usize = 10;

pub const MODES: [BenchMode; 9] = [
    BenchMode::RudderEbpf,
    BenchMode::RudderNftables,
    BenchMode::KubeProxyNftables,
    BenchMode::RudderIptablesLegacy,
    BenchMode::KubeProxyIptablesLegacy,
    BenchMode::RudderIptablesNft,
    BenchMode::KubeProxyIptablesNft,
    BenchMode::RudderIpvs,
    BenchMode::KubeProxyIpvs,
];

/// What a mode needs of the node, named as a refusal names it.
pub fn needs(mode: BenchMode, caps: &Capabilities) -> Vec<(&'static str, &Capability)> {
    match mode {
        BenchMode::RudderEbpf => vec![("bpf", &caps.bpf)],
        BenchMode::RudderNftables | BenchMode::KubeProxyNftables => vec![("nft", &caps.nft)],
        BenchMode::RudderIptablesLegacy | BenchMode::KubeProxyIptablesLegacy => {
            vec![("iptables-legacy", &caps.iptables_legacy)]
        }
        BenchMode::RudderIptablesNft | BenchMode::KubeProxyIptablesNft => vec![("iptables-nft", &caps.iptables_nft)],
        BenchMode::RudderIpvs | BenchMode::KubeProxyIpvs => vec![
            ("ipvs", &caps.ip_vs),
            ("ipset", &caps.ipset),
            ("iptables-nft", &caps.iptables_nft),
        ],
    }
}

pub fn parse_mode(name: &str) -> Option<BenchMode> {
    MODES.into_iter().find(|m| mode_name(*m) == name)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub endpoints_per_service: usize,
    /// One-change and scale-up syncs per run (each round's figure is their median).
    pub reps: usize,
    pub rounds: usize,
    pub warmup: bool,
    pub cpu: Option<usize>,
    pub rows: Vec<SyncRow>,
    pub raw: Vec<RawSync>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRow {
    pub mode: String,
    pub family: String,
    pub services: usize,
    pub cold_s: Stat,
    pub one_change_ms: Option<Stat>,
    pub one_change_render_ms: Option<Stat>,
    pub scale_change_ms: Option<Stat>,
    pub peak_rss_mib: Stat,
    /// Ours over kube-proxy's layout of the same family and size.
    pub cold_vs_kube_proxy: Option<Ratio>,
    pub one_change_vs_kube_proxy: Option<Ratio>,
    pub scale_change_vs_kube_proxy: Option<Ratio>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawSync {
    pub round: usize,
    pub measurement: Measurement,
}

fn median(v: &[f64]) -> f64 {
    Stat::of(v).map_or(f64::NAN, |s| s.median)
}

pub fn run(opts: &Opts, progress: &Progress) -> Result<Report> {
    let sizes = opts.sizes_or(DEFAULT_SIZES);
    let modes: Vec<BenchMode> = if opts.modes.is_empty() {
        MODES.to_vec()
    } else {
        opts.modes.iter().filter_map(|m| parse_mode(m)).collect()
    };
    let rounds = opts.rounds.max(1);
    let pairs: Vec<(usize, BenchMode)> = sizes.iter().flat_map(|&s| modes.iter().map(move |&m| (s, m))).collect();
    let warm = opts.warmup && !pairs.is_empty();
    progress.add_steps((pairs.len() * rounds + usize::from(warm)) as u64);
    let job = |services: usize, mode: BenchMode| WorkerArgs {
        job: Job::Sync,
        services,
        runs: 0,
        mode: Some(mode),
        endpoints: ENDPOINTS,
        reps: opts.reps,
        cpu: opts.cpu,
    };
    if warm && let (Some(&smallest), Some(&mode)) = (sizes.iter().min(), modes.first()) {
        progress.status(&format!("sync: warm-up, {} at {smallest} Services", mode_name(mode)));
        worker::settle(opts.settle);
        let _: Measurement = worker::run_isolated("sync-warmup", &job(smallest, mode))?;
        progress.step_done();
    }
    let mut raw = Vec::new();
    for round in 1..=rounds {
        for (size, mode) in Opts::interleaved(&pairs, round - 1) {
            let name = mode_name(mode);
            progress.status(&format!("sync: {name} at {size} Services, round {round}/{rounds}"));
            worker::settle(opts.settle);
            let m: Measurement = worker::run_isolated(&format!("sync-{size}-r{round}"), &job(size, mode))?;
            progress.step_done();
            raw.push(RawSync { round, measurement: m });
        }
    }
    Ok(summarise(opts, &pairs, rounds, raw))
}

fn summarise(opts: &Opts, pairs: &[(usize, BenchMode)], rounds: usize, raw: Vec<RawSync>) -> Report {
    let mut rows: Vec<SyncRow> = Vec::new();
    for &(services, mode) in pairs {
        let runs: Vec<&Measurement> = raw
            .iter()
            .map(|r| &r.measurement)
            .filter(|m| m.services == services.max(1) && m.mode == format!("{mode:?}"))
            .collect();
        let per_round = |f: &dyn Fn(&Measurement) -> f64| Stat::of(&runs.iter().map(|m| f(m)).collect::<Vec<_>>());
        let Some(cold_s) = per_round(&|m| m.cold_s) else {
            continue;
        };
        rows.push(SyncRow {
            mode: mode_name(mode),
            family: mode.family().to_owned(),
            services,
            cold_s,
            one_change_ms: per_round(&|m| median(&m.one_change_s) * 1e3),
            one_change_render_ms: per_round(&|m| median(&m.one_change_render_s) * 1e3),
            scale_change_ms: per_round(&|m| median(&m.scale_change_s) * 1e3),
            peak_rss_mib: per_round(&|m| m.peak_rss_kib as f64 / 1024.0).unwrap_or(Stat {
                min: 0.0,
                median: 0.0,
                max: 0.0,
                n: 0,
            }),
            cold_vs_kube_proxy: None,
            one_change_vs_kube_proxy: None,
            scale_change_vs_kube_proxy: None,
        });
    }
    let snapshot = rows.clone();
    for row in rows.iter_mut().filter(|r| r.mode.starts_with("rudder")) {
        let Some(base) = snapshot
            .iter()
            .find(|b| b.family == row.family && b.services == row.services && b.mode.starts_with("kube-proxy"))
        else {
            continue;
        };
        let ratio = |a: Option<Stat>, b: Option<Stat>| Ratio::of(&a?, &b?);
        row.cold_vs_kube_proxy = Ratio::of(&row.cold_s, &base.cold_s);
        row.one_change_vs_kube_proxy = ratio(row.one_change_ms, base.one_change_ms);
        row.scale_change_vs_kube_proxy = ratio(row.scale_change_ms, base.scale_change_ms);
    }
    Report {
        endpoints_per_service: ENDPOINTS,
        reps: opts.reps,
        rounds,
        warmup: opts.warmup,
        cpu: opts.cpu,
        rows,
        raw,
    }
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::from(
            "| mode | Services | cold sync (s) | one-change sync (ms) | of which render (ms) | scale-up sync (ms) | peak RSS (MiB) | cold / kube-proxy | one-change / kube-proxy | scale-up / kube-proxy |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let stat = |s: &Option<Stat>, p: usize| s.map_or("-".to_owned(), |s| s.show(p));
        let ratio = |r: &Option<Ratio>| r.map_or("-".to_owned(), |r| r.show());
        for r in &self.rows {
            t += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.mode,
                r.services,
                r.cold_s.show(2),
                stat(&r.one_change_ms, 1),
                stat(&r.one_change_render_ms, 1),
                stat(&r.scale_change_ms, 1),
                r.peak_rss_mib.show(0),
                ratio(&r.cold_vs_kube_proxy),
                ratio(&r.one_change_vs_kube_proxy),
                ratio(&r.scale_change_vs_kube_proxy),
            );
        }
        t += &format!(
            "\n{} endpoints per Service; {} rounds (modes and sizes interleaved){}; one-change and scale-up: each round's median of {} syncs. Figures: median ±half the range over rounds; ratios: ratio of medians (range from min/max), `≈` when the range includes 1.\n",
            self.endpoints_per_service,
            self.rounds,
            if self.warmup { ", after a warm-up" } else { "" },
            self.reps
        );
        t
    }

    /// Sync time against Service count, per mode: cold, and one change.
    pub fn plots(&self) -> Result<Vec<(String, String)>> {
        let mut modes: Vec<&str> = self.rows.iter().map(|r| r.mode.as_str()).collect();
        modes.dedup();
        modes.sort_unstable();
        modes.dedup();
        let series = |f: &dyn Fn(&SyncRow) -> Option<Stat>| -> Vec<plot::Series> {
            modes
                .iter()
                .map(|m| plot::Series {
                    name: (*m).to_owned(),
                    points: self
                        .rows
                        .iter()
                        .filter(|r| r.mode == *m)
                        .filter_map(|r| Some((r.services as f64, f(r)?)))
                        .collect(),
                })
                .collect()
        };
        Ok(vec![
            (
                "sync-cold.svg".to_owned(),
                plot::lines(
                    "cold sync vs Services (10 endpoints each)",
                    "Services",
                    "seconds",
                    &series(&|r| Some(r.cold_s)),
                )?,
            ),
            (
                "sync-one-change.svg".to_owned(),
                plot::lines(
                    "one-change sync vs Services",
                    "Services",
                    "milliseconds",
                    &series(&|r| r.one_change_ms),
                )?,
            ),
        ])
    }
}
