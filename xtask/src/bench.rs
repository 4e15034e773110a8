//! `cargo xtask bench`: eight suites (`--suite`). `packet`, `sync`, `churn`, `first-packet` and
//! `memory` are `rudder-proxy bench`
//! (release build; its report, table and plots in `target/bench/<suite>/`), the ipvs sync
//! modes in a `cargo xtask vm` guest when this kernel lacks IP_VS. `throughput`, `cluster`
//! and `dns` are described in `throughput.rs`, `cluster.rs` and `dns_bench.rs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::cmd;

pub const MODES: &[&str] = &[
    "rudder-ebpf",
    "rudder-nftables",
    "kube-proxy-nftables",
    "rudder-iptables-legacy",
    "kube-proxy-iptables-legacy",
    "rudder-iptables-nft",
    "kube-proxy-iptables-nft",
    "rudder-ipvs",
    "kube-proxy-ipvs",
];

/// Whether this kernel has IPVS (present or loadable); without it the ipvs modes run in a
/// `cargo xtask vm` guest (so their figures are on TCG's slower clock).
fn host_has_ipvs() -> bool {
    let loaded = || Path::new("/proc/net/ip_vs").exists();
    loaded()
        || (Command::new("modprobe")
            .arg("ip_vs")
            .output()
            .is_ok_and(|o| o.status.success())
            && loaded())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Service counts (10 endpoints each).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    sizes: Vec<usize>,
    /// Modes to run (default: all).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// One-change syncs per run.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Rounds of the sync benchmark over every (mode, size), interleaved, each run in a
    /// fresh namespace; figures are min/median/max over them.
    #[arg(long, default_value_t = 3)]
    sync_rounds: usize,
    /// Only 1000 and 5000 Services.
    #[arg(long)]
    quick: bool,
    /// Which benchmarks: sync (sync times per mode), packet (ebpf per-packet cost),
    /// throughput (ClusterIP vs pod IP end to end, per mode), cluster (`rudder up`: time
    /// to the proof, pod startup latency, control plane and agent memory).
    /// dns: the cluster DNS server's queries/s, p99 latency and memory. Not by default:
    /// churn (network programming latency under EndpointSlice changes), first-packet
    /// (connection setup through a ClusterIP as Services grow) and memory (the real agent's
    /// RSS fed by `rudder server`), each `rudder-proxy bench` with its own defaults.
    #[arg(long, value_delimiter = ',', default_value = "sync,packet,throughput,cluster,dns")]
    suite: Vec<String>,
    /// Service counts for the DNS benchmark.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    dns_sizes: Vec<usize>,
    /// Service counts for the packet benchmark.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    packet_sizes: Vec<usize>,
    /// Runs per packet-benchmark case (repeat count and number of single runs).
    #[arg(long, default_value_t = 1_000_000)]
    packet_runs: u32,
    /// Rounds over all packet-benchmark sizes (interleaved: 1k, 10k, 100k, 1k, ...); each
    /// figure is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    packet_rounds: usize,
    /// Rounds of the cluster benchmark (each: one `rudder up` to its proof, one with pods).
    #[arg(long, default_value_t = 3)]
    cluster_rounds: usize,
    /// Pods in the cluster benchmark's Deployment.
    #[arg(long, default_value_t = 30)]
    cluster_pods: usize,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

const SUITES: &[&str] = &[
    "sync",
    "packet",
    "throughput",
    "cluster",
    "dns",
    "churn",
    "first-packet",
    "memory",
];

/// Suites that are `rudder-proxy bench` with its own defaults (see `rudder-proxy bench --help`).
const PROXY_ONLY: &[&str] = &["churn", "first-packet", "memory"];

pub fn run(args: BenchArgs) -> Result<()> {
    cmd::require_root("cargo xtask bench")?;
    crate::setup::run()?;
    let wants = |s: &str| args.suite.iter().any(|x| x == s);
    if let Some(s) = args.suite.iter().find(|s| !SUITES.contains(&s.as_str())) {
        anyhow::bail!("--suite {s:?}: want one of {}", SUITES.join(", "));
    }
    if wants("memory") {
        cmd::run(Command::new(env!("CARGO")).args(["build", "--release", "-p", "rudder-control", "--bin", "rudder"]))?;
    }
    if wants("sync") || wants("packet") || PROXY_ONLY.iter().any(|s| wants(s)) {
        cmd::run(Command::new(env!("CARGO")).args([
            "build",
            "--release",
            "-p",
            "rudder-proxy",
            "--bin",
            "rudder-proxy",
        ]))?;
    }
    if wants("packet") {
        packet(&args)?;
    }
    if wants("throughput") {
        crate::throughput::run()?;
    }
    if wants("sync") {
        sync(&args)?;
    }
    if wants("cluster") {
        crate::cluster::run(args.cluster_rounds, args.cluster_pods)?;
    }
    if wants("dns") {
        crate::dns_bench::run(&args.dns_sizes)?;
    }
    for suite in PROXY_ONLY.iter().filter(|s| wants(s)) {
        let mut flags = Vec::new();
        if *suite == "memory" {
            flags.push("--rudder".to_owned());
            flags.push(target_dir().join("release/rudder").display().to_string());
        }
        proxy_bench(suite, &flags)?;
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `rudder-proxy bench` (release build) for one suite, its report in
/// `target/bench/<suite>/` (report.json, report.md, SVG plots).
fn proxy_bench(suite: &str, flags: &[String]) -> Result<()> {
    let bin = target_dir().join("release/rudder-proxy");
    let out = target_dir().join("bench").join(suite);
    cmd::run(
        Command::new(&bin)
            .args(["bench", "--suite", suite, "--out"])
            .arg(&out)
            .args(flags),
    )
}

/// The ebpf mode's per-packet cost (BPF_PROG_TEST_RUN) with N Services loaded, in a fresh
/// namespace per size and round; ratios to a bare XDP_PASS timed the same way.
fn packet(args: &BenchArgs) -> Result<()> {
    let sizes = args
        .packet_sizes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    proxy_bench(
        "packet",
        &[
            "--sizes".into(),
            sizes,
            "--runs".into(),
            args.packet_runs.to_string(),
            "--rounds".into(),
            args.packet_rounds.to_string(),
        ],
    )
}

/// Sync times per mode and size beside kube-proxy's layouts. The ipvs modes run in a
/// `cargo xtask vm` guest when this kernel has no IP_VS (their figures are then on TCG's
/// slower clock, in `target/bench/sync-ipvs/`).
fn sync(args: &BenchArgs) -> Result<()> {
    let sizes: Vec<usize> = if args.quick {
        vec![1000, 5000]
    } else {
        args.sizes.clone()
    };
    let sizes = sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let modes: Vec<&str> = MODES
        .iter()
        .copied()
        .filter(|m| args.modes.is_empty() || args.modes.iter().any(|a| a == m))
        .collect();
    let (ipvs, here): (Vec<&str>, Vec<&str>) = modes.iter().partition(|m| m.ends_with("-ipvs"));
    let in_guest = !ipvs.is_empty() && !host_has_ipvs();
    let here = if in_guest { here } else { modes.clone() };
    let flags = |modes: &[&str]| -> Vec<String> {
        vec![
            "--sizes".into(),
            sizes.clone(),
            "--modes".into(),
            modes.join(","),
            "--reps".into(),
            args.reps.to_string(),
            "--rounds".into(),
            args.sync_rounds.max(1).to_string(),
        ]
    };
    if !here.is_empty() {
        proxy_bench("sync", &flags(&here))?;
    }
    if in_guest {
        eprintln!("bench: {} in a guest with IP_VS (TCG: slower) ...", ipvs.join(", "));
        let bin = target_dir().join("release/rudder-proxy");
        let out = target_dir().join("bench/sync-ipvs");
        let exe = std::env::current_exe()?;
        cmd::run(
            Command::new(exe)
                .args(["vm", "--mem", "3072", "--"])
                .arg(&bin)
                .args(["bench", "--suite", "sync", "--out"])
                .arg(&out)
                .args(flags(&ipvs)),
        )?;
    }
    Ok(())
}
