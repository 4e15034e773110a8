//! `cargo xtask bench`: five suites (`--suite`). `packet`, `throughput`, `cluster` and `dns` are
//! described at their functions (`packet` here, `throughput.rs`, `cluster.rs`, `dns_bench.rs`). `sync`: for each size and mode, a fresh network
//! namespace and one `rudder-sync-bench` run in it (a cold sync, then one-change syncs
//! that replace one endpoint of one Service, then scale-up syncs that add one);
//! our modes and kube-proxy's layouts side by side, with ratios per family. Writes
//! `target/bench/sync.json` (raw and medians) and `target/bench/sync.md` (the table).

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{Value, json};

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
    /// Cold syncs per (mode, size), each in a fresh namespace.
    #[arg(long, default_value_t = 1)]
    cold_reps: usize,
    /// Only 1000 and 5000 Services.
    #[arg(long)]
    quick: bool,
    /// Which benchmarks: sync (sync times per mode), packet (ebpf per-packet cost),
    /// throughput (ClusterIP vs pod IP end to end, per mode), cluster (`rudder up`: time
    /// to the proof, pod startup latency, control plane and agent memory).
    /// dns: the cluster DNS server's queries/s, p99 latency and memory.
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

/// Waits (at most 60 s) until the CPUs are at least 90% idle over half a second: the
/// kernel frees a deleted namespace's rules in the background, and a run that starts
/// while the previous one's 100k chains are being torn down is measured against that.
fn settle() {
    let idle = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        Some((cpu.get(3)? + cpu.get(4)?, cpu.iter().sum()))
    };
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(60) {
        let Some((i0, t0)) = idle() else { return };
        std::thread::sleep(std::time::Duration::from_millis(500));
        let Some((i1, t1)) = idle() else { return };
        if t1 > t0 && (i1 - i0) as f64 / (t1 - t0) as f64 >= 0.9 {
            return;
        }
    }
}

/// Deletes the namespace even when the run fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    cmd::require_root("cargo xtask bench")?;
    crate::setup::run()?;
    let wants = |s: &str| args.suite.iter().any(|x| x == s);
    if let Some(s) = args
        .suite
        .iter()
        .find(|s| !["sync", "packet", "throughput", "cluster", "dns"].contains(&s.as_str()))
    {
        anyhow::bail!("--suite {s:?}: want sync, packet, throughput, cluster or dns");
    }
    if wants("sync") || wants("packet") {
        cmd::run(Command::new(env!("CARGO")).args([
            "build",
            "--release",
            "-p",
            "rudder-proxy",
            "--bin",
            "rudder-sync-bench",
            "--bin",
            "rudder-packet-bench",
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
    Ok(())
}

/// Per-packet cases, each with the floor timed the same way.
const PACKET_CASES: [(&str, &str); 9] = [
    ("tc_non_service_repeat", "xdp_pass_repeat"),
    ("tc_non_service", "xdp_pass"),
    ("tc_new_flow", "xdp_pass"),
    ("tc_established", "xdp_pass"),
    ("tc_established_repeat", "xdp_pass_repeat"),
    ("xdp_non_service_repeat", "xdp_pass_repeat"),
    ("xdp_new_flow", "xdp_pass"),
    ("xdp_established", "xdp_pass"),
    ("xdp_established_repeat", "xdp_pass_repeat"),
];

fn case_label(case: &str) -> &'static str {
    match case {
        "tc_non_service_repeat" => "tc: no Service (repeat)",
        "tc_non_service" => "tc: no Service (single)",
        "tc_new_flow" => "tc: pod to ClusterIP, new flow (single)",
        "tc_established" => "tc: pod to ClusterIP, established (single)",
        "tc_established_repeat" => "tc: pod to ClusterIP, established (repeat, mirrored)",
        "xdp_non_service_repeat" => "XDP: no Service (repeat)",
        "xdp_new_flow" => "XDP: outside client to frontend, remote backend, new flow (single)",
        "xdp_established" => "XDP: same, established (single)",
        "xdp_established_repeat" => "XDP: same, established (repeat, mirrored)",
        _ => "?",
    }
}

/// The ebpf mode's per-packet cost (BPF_PROG_TEST_RUN) with N Services loaded, in a fresh
/// namespace per size; ratios to a bare XDP_PASS timed the same way, and 100k over 1k.
fn packet(args: &BenchArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/rudder-packet-bench");
    let mut raw: Vec<Value> = Vec::new();
    for round in 0..args.packet_rounds.max(1) {
        for (n, &size) in args.packet_sizes.iter().enumerate() {
            settle();
            let ns = Netns(format!("rdr-pbench-{}-{round}-{n}", std::process::id()));
            cmd::run(Command::new("ip").args(["netns", "add", &ns.0]))?;
            eprintln!("bench: per-packet cost with {size} Services (round {}) ...", round + 1);
            let out = cmd::stdout(Command::new("ip").args(["netns", "exec", &ns.0]).arg(&bin).args([
                "--services",
                &size.to_string(),
                "--runs",
                &args.packet_runs.to_string(),
            ]))?;
            let mut v: Value =
                serde_json::from_str(out.trim()).with_context(|| format!("packet bench output {out:?}"))?;
            v["round"] = json!(round + 1);
            raw.push(v);
        }
    }
    // Per size: the median of each figure over the rounds, then each case over the floor
    // timed the same way (repeat over repeat, single over single).
    let mut rows = Vec::new();
    for &size in &args.packet_sizes {
        let of_size: Vec<&Value> = raw
            .iter()
            .filter(|v| v["services"].as_u64() == Some(size as u64))
            .collect();
        let mut v = json!({"services": size, "rounds": of_size.len()});
        let keys: Vec<String> = of_size
            .first()
            .and_then(|r| r.as_object())
            .map(|o| o.keys().filter(|k| k.ends_with("_ns")).cloned().collect())
            .unwrap_or_default();
        for key in keys {
            v[&key] = json!(median(of_size.iter().filter_map(|r| r[&key].as_f64()).collect()));
        }
        for (case, floor) in PACKET_CASES {
            let ratio = v[format!("{case}_ns")].as_f64().unwrap_or(f64::NAN)
                / v[format!("{floor}_ns")].as_f64().unwrap_or(f64::NAN);
            v[format!("{case}_per_xdp_pass")] = json!(ratio);
        }
        rows.push(v);
    }
    let mut flatness = serde_json::Map::new();
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        // The floors too: how much the machine itself moved between sizes.
        for case in ["xdp_pass_repeat", "xdp_pass"]
            .into_iter()
            .chain(PACKET_CASES.iter().map(|(c, _)| *c))
        {
            let key = format!("{case}_ns");
            if let (Some(a), Some(b)) = (first[&key].as_f64(), last[&key].as_f64()) {
                flatness.insert(format!("{case}_largest_over_smallest"), json!(b / a));
            }
        }
    }
    let mut table = String::from("| Services | case | ns per packet | / XDP_PASS (timed alike) |\n|---|---|---|---|\n");
    for r in &rows {
        let f = |k: &str, p: usize| r[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.p$}"));
        table += &format!(
            "| {} | XDP_PASS (repeat / single) | {} / {} | 1 |\n",
            r["services"],
            f("xdp_pass_repeat_ns", 1),
            f("xdp_pass_ns", 1)
        );
        for (case, _) in PACKET_CASES {
            table += &format!(
                "| {} | {} | {} | {} |\n",
                r["services"],
                case_label(case),
                f(&format!("{case}_ns"), 1),
                f(&format!("{case}_per_xdp_pass"), 2)
            );
        }
    }
    table += &format!(
        "\nLargest over smallest size: {}\n",
        flatness
            .iter()
            .map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    table += "\n`repeat`: one BPF_PROG_TEST_RUN of `runs` repetitions (established flows are mirrored: a second conntrack entry translates the output back, so every repetition is an established hit). `single`: the kernel's time of one run on a fresh copy of the packet, averaged over `runs` (includes the test-run's per-call setup, as does the floor it is divided by). New flows: at most 100,000 per program, each a conntrack miss, to the frontends in turn. Each figure is the median of its rounds (sizes interleaved).\n";
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let result = json!({"benchmark": "packet", "endpoints_per_service": 4, "runs": args.packet_runs,
                        "rounds": args.packet_rounds, "results": rows, "largest_over_smallest": flatness, "raw": raw});
    std::fs::write(dir.join("packet.json"), serde_json::to_string_pretty(&result)?)?;
    std::fs::write(dir.join("packet.md"), &table)?;
    println!("{table}");
    println!(
        "wrote {} and {}",
        dir.join("packet.json").display(),
        dir.join("packet.md").display()
    );
    Ok(())
}

fn sync(args: &BenchArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/rudder-sync-bench");
    let sizes = if args.quick {
        vec![1000, 5000]
    } else {
        args.sizes.clone()
    };
    let modes: Vec<&str> = MODES
        .iter()
        .copied()
        .filter(|m| args.modes.is_empty() || args.modes.iter().any(|a| a == m))
        .collect();
    let mut rows = Vec::new();
    let mut n = 0;
    for &size in &sizes {
        for mode in &modes {
            let mut runs = Vec::new();
            for _ in 0..args.cold_reps.max(1) {
                n += 1;
                settle();
                let ns = Netns(format!("rdr-bench-{}-{n}", std::process::id()));
                let bench_args = [
                    "--mode".to_owned(),
                    (*mode).to_owned(),
                    "--services".to_owned(),
                    size.to_string(),
                    "--reps".to_owned(),
                    args.reps.to_string(),
                ];
                let out = if mode.ends_with("-ipvs") && !host_has_ipvs() {
                    eprintln!("bench: {mode} with {size} Services (in a guest with IP_VS: TCG, slower) ...");
                    let script = format!(
                        "ip netns add {0} && exec ip netns exec {0} {1} {2}",
                        ns.0,
                        bin.display(),
                        bench_args.join(" ")
                    );
                    let exe = std::env::current_exe()?;
                    cmd::stdout(Command::new(exe).args(["vm", "--mem", "3072", "--", "sh", "-c", &script]))?
                } else {
                    cmd::run(Command::new("ip").args(["netns", "add", &ns.0]))?;
                    eprintln!("bench: {mode} with {size} Services ...");
                    cmd::stdout(
                        Command::new("ip")
                            .args(["netns", "exec", &ns.0])
                            .arg(&bin)
                            .args(&bench_args),
                    )?
                };
                let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("bench output {out:?}"))?;
                runs.push(v);
            }
            let nums = |key: &str| -> Vec<f64> {
                runs.iter()
                    .flat_map(|r| match &r[key] {
                        Value::Array(a) => a.iter().filter_map(Value::as_f64).collect::<Vec<_>>(),
                        v => v.as_f64().into_iter().collect::<Vec<_>>(),
                    })
                    .collect()
            };
            let row = json!({
                "mode": mode, "family": runs[0]["family"], "services": size,
                "cold_s": median(nums("cold_s")), "cold_render_s": median(nums("cold_render_s")),
                "one_change_ms": median(nums("one_change_s")) * 1e3,
                "one_change_render_ms": median(nums("one_change_render_s")) * 1e3,
                "scale_change_ms": median(nums("scale_change_s")) * 1e3,
                "peak_rss_mib": nums("peak_rss_kib").into_iter().fold(0.0, f64::max) / 1024.0,
                "runs": runs,
            });
            eprintln!(
                "bench:   cold {:.2} s, one change {:.1} ms",
                row["cold_s"].as_f64().unwrap_or(f64::NAN),
                row["one_change_ms"].as_f64().unwrap_or(f64::NAN)
            );
            rows.push(row);
        }
    }
    // Ratios: ours over kube-proxy's layout of the same family and size.
    let snapshot = rows.clone();
    for row in &mut rows {
        let base = snapshot.iter().find(|b| {
            b["family"] == row["family"]
                && b["services"] == row["services"]
                && b["mode"].as_str().is_some_and(|m| m.starts_with("kube-proxy"))
        });
        if let (Some(b), true) = (base, row["mode"].as_str().is_some_and(|m| m.starts_with("rudder"))) {
            let ratio = |r: &Value, k: &str| r[k].as_f64().zip(b[k].as_f64()).map(|(a, b)| a / b);
            let (cold, one) = (ratio(row, "cold_s"), ratio(row, "one_change_ms"));
            row["cold_ratio_to_kube_proxy"] = json!(cold);
            row["one_change_ratio_to_kube_proxy"] = json!(one);
            row["scale_change_ratio_to_kube_proxy"] = json!(ratio(row, "scale_change_ms"));
        }
    }
    let mut table = String::from(
        "| mode | services | cold sync (s) | one-change sync (ms) | of which render (ms) | scale-up sync (ms) | peak RSS (MiB) | cold / kube-proxy | one-change / kube-proxy | scale-up / kube-proxy |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let f = |k: &str, p: usize| r[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.p$}"));
        table += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["mode"].as_str().unwrap_or("?"),
            r["services"],
            f("cold_s", 2),
            f("one_change_ms", 1),
            f("one_change_render_ms", 1),
            f("scale_change_ms", 1),
            f("peak_rss_mib", 0),
            f("cold_ratio_to_kube_proxy", 3),
            f("one_change_ratio_to_kube_proxy", 3),
            f("scale_change_ratio_to_kube_proxy", 3),
        );
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let result =
        json!({"benchmark": "sync", "endpoints_per_service": 10, "one_change_reps": args.reps, "results": rows});
    std::fs::write(dir.join("sync.json"), serde_json::to_string_pretty(&result)?)?;
    std::fs::write(dir.join("sync.md"), &table)?;
    println!("{table}");
    println!(
        "wrote {} and {}",
        dir.join("sync.json").display(),
        dir.join("sync.md").display()
    );
    Ok(())
}
