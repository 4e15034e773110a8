//! The `packet` suite: the ebpf mode's per-packet cost (BPF_PROG_TEST_RUN) with N Services
//! loaded, one fresh namespace per size and round ([`super::packet`] measures), each case
//! over a bare `return XDP_PASS` timed the same way (the physical limit of a program that
//! looks at a packet), and the largest size over the smallest (flat with scale is 1).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{
    Opts, Progress, Ratio, Stat,
    packet::{ENDPOINTS, NEW_FLOWS, PacketMeasurement},
    plot,
    worker::{self, Job, WorkerArgs},
};

pub const DEFAULT_SIZES: &[usize] = &[1000, 10_000, 100_000];

/// Per-packet cases, each with the floor timed the same way (repeat over repeat, single
/// over single), and its label.
pub const CASES: [(&str, &str, &str); 9] = [
    ("tc_non_service_repeat", "xdp_pass_repeat", "tc: no Service (repeat)"),
    ("tc_non_service", "xdp_pass", "tc: no Service (single)"),
    ("tc_new_flow", "xdp_pass", "tc: pod to ClusterIP, new flow (single)"),
    (
        "tc_established",
        "xdp_pass",
        "tc: pod to ClusterIP, established (single)",
    ),
    (
        "tc_established_repeat",
        "xdp_pass_repeat",
        "tc: pod to ClusterIP, established (repeat, mirrored)",
    ),
    ("xdp_non_service_repeat", "xdp_pass_repeat", "XDP: no Service (repeat)"),
    (
        "xdp_new_flow",
        "xdp_pass",
        "XDP: outside client to frontend, remote backend, new flow (single)",
    ),
    ("xdp_established", "xdp_pass", "XDP: same, established (single)"),
    (
        "xdp_established_repeat",
        "xdp_pass_repeat",
        "XDP: same, established (repeat, mirrored)",
    ),
];

const FLOORS: [&str; 2] = ["xdp_pass_repeat", "xdp_pass"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub endpoints_per_service: usize,
    /// Runs per case (`repeat` count and number of single runs).
    pub runs: u32,
    /// New flows per program (at most 100,000: the conntrack map's room).
    pub new_flow_runs: u32,
    pub rounds: usize,
    pub warmup: bool,
    pub cpu: Option<usize>,
    pub sizes: Vec<PacketSize>,
    /// Per case: its cost at the largest size over the smallest.
    pub largest_over_smallest: BTreeMap<String, Ratio>,
    /// Every round's measurement, in the order run.
    pub raw: Vec<RawPacket>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketSize {
    pub services: usize,
    /// ns per packet by case (and the two floors), over the rounds.
    pub ns: BTreeMap<String, Stat>,
    /// Each case over its floor.
    pub per_xdp_pass: BTreeMap<String, Ratio>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawPacket {
    pub round: usize,
    pub measurement: PacketMeasurement,
}

fn figures(m: &PacketMeasurement) -> BTreeMap<String, f64> {
    let v = serde_json::to_value(m).unwrap_or_default();
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.strip_suffix("_ns")?.to_owned(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(opts: &Opts, progress: &Progress) -> Result<Report> {
    let sizes = opts.sizes_or(DEFAULT_SIZES);
    let rounds = opts.rounds.max(1);
    progress.add_steps((sizes.len() * rounds + usize::from(opts.warmup)) as u64);
    let job = |services: usize| WorkerArgs {
        job: Job::Packet,
        services,
        runs: opts.runs,
        mode: None,
        endpoints: ENDPOINTS,
        reps: 0,
        cpu: opts.cpu,
    };
    if opts.warmup
        && let Some(&smallest) = sizes.iter().min()
    {
        progress.status(&format!("packet: warm-up at {smallest} Services"));
        worker::settle(opts.settle);
        let _: PacketMeasurement = worker::run_isolated("packet-warmup", &job(smallest))?;
        progress.step_done();
    }
    let mut raw = Vec::new();
    for round in 1..=rounds {
        for size in Opts::interleaved(&sizes, round - 1) {
            progress.status(&format!("packet: {size} Services, round {round}/{rounds}"));
            worker::settle(opts.settle);
            let m: PacketMeasurement = worker::run_isolated(&format!("packet-{size}-r{round}"), &job(size))?;
            raw.push(RawPacket { round, measurement: m });
            progress.step_done();
        }
    }
    Ok(summarise(opts, &sizes, rounds, raw))
}

fn summarise(opts: &Opts, sizes: &[usize], rounds: usize, raw: Vec<RawPacket>) -> Report {
    let mut out = Vec::new();
    for &services in sizes {
        let rounds_of: Vec<BTreeMap<String, f64>> = raw
            .iter()
            .filter(|r| r.measurement.services == services.max(1))
            .map(|r| figures(&r.measurement))
            .collect();
        let keys = FLOORS.iter().copied().chain(CASES.iter().map(|c| c.0));
        let ns: BTreeMap<String, Stat> = keys
            .filter_map(|k| {
                let samples: Vec<f64> = rounds_of.iter().filter_map(|f| f.get(k).copied()).collect();
                Some((k.to_owned(), Stat::of(&samples)?))
            })
            .collect();
        let per_xdp_pass = CASES
            .iter()
            .filter_map(|(case, floor, _)| Some(((*case).to_owned(), Ratio::of(ns.get(*case)?, ns.get(*floor)?)?)))
            .collect();
        out.push(PacketSize {
            services,
            ns,
            per_xdp_pass,
        });
    }
    let mut largest_over_smallest = BTreeMap::new();
    let smallest = out.iter().min_by_key(|s| s.services);
    let largest = out.iter().max_by_key(|s| s.services);
    if let (Some(a), Some(b)) = (smallest, largest)
        && a.services != b.services
    {
        for key in FLOORS.iter().copied().chain(CASES.iter().map(|c| c.0)) {
            if let Some(r) = b.ns.get(key).zip(a.ns.get(key)).and_then(|(b, a)| Ratio::of(b, a)) {
                largest_over_smallest.insert(key.to_owned(), r);
            }
        }
    }
    Report {
        endpoints_per_service: ENDPOINTS,
        runs: opts.runs,
        new_flow_runs: opts.runs.min(NEW_FLOWS),
        rounds,
        warmup: opts.warmup,
        cpu: opts.cpu,
        sizes: out,
        largest_over_smallest,
        raw,
    }
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::from(
            "| Services | case | ns per packet (median ±half range) | / XDP_PASS timed alike (range) |\n|---|---|---|---|\n",
        );
        let show = |s: Option<&Stat>| s.map_or("-".to_owned(), |s| s.show(1));
        for size in &self.sizes {
            t += &format!(
                "| {} | XDP_PASS (repeat / single) | {} / {} | 1 |\n",
                size.services,
                show(size.ns.get("xdp_pass_repeat")),
                show(size.ns.get("xdp_pass"))
            );
            for (case, _, label) in CASES {
                t += &format!(
                    "| {} | {label} | {} | {} |\n",
                    size.services,
                    show(size.ns.get(case)),
                    size.per_xdp_pass.get(case).map_or("-".to_owned(), Ratio::show)
                );
            }
        }
        if let (Some(a), Some(b)) = (self.sizes.first(), self.sizes.last())
            && !self.largest_over_smallest.is_empty()
        {
            t += &format!(
                "\n| case | {} over {} Services (range) |\n|---|---|\n",
                b.services, a.services
            );
            for (case, r) in &self.largest_over_smallest {
                t += &format!("| {case} | {} |\n", r.show());
            }
        }
        t += &format!(
            "\n{} rounds (sizes interleaved){}; `repeat`: one BPF_PROG_TEST_RUN of {} repetitions (established flows mirrored); `single`: the kernel's time of one run on a fresh packet copy, averaged over {} runs ({} for new flows). `≈`: the range over rounds includes 1.\n",
            self.rounds,
            if self.warmup { ", after a warm-up" } else { "" },
            self.runs,
            self.runs,
            self.new_flow_runs
        );
        t
    }

    /// The scaling curves: ns per packet against Service count, per case.
    pub fn plots(&self) -> Result<Vec<(String, String)>> {
        let keys = FLOORS.iter().copied().chain(CASES.iter().map(|c| c.0));
        let series: Vec<plot::Series> = keys
            .map(|k| plot::Series {
                name: k.to_owned(),
                points: self
                    .sizes
                    .iter()
                    .filter_map(|s| Some((s.services as f64, *s.ns.get(k)?)))
                    .collect(),
            })
            .collect();
        let svg = plot::lines(
            "ebpf per-packet cost vs Services (BPF_PROG_TEST_RUN)",
            "Services",
            "ns per packet",
            &series,
        )?;
        Ok(vec![("packet.svg".to_owned(), svg)])
    }
}
