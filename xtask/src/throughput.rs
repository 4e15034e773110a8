//! `cargo xtask bench --suite throughput`: requests/s and latency through a ClusterIP in
//! the netns cluster for each mode, beside the pod IP directly, in one run
//! (`rudder-throughput-bench run`). Writes target/bench/throughput.{json,md}.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmd;

pub fn run() -> Result<()> {
    cmd::run(Command::new(env!("CARGO")).args([
        "build",
        "--release",
        "-p",
        "rudder-control",
        "-p",
        "rudder-proxy",
        "-p",
        "rudder-tests",
        "--bins",
    ]))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = cmd::stdout(Command::new(root.join("target/release/rudder-throughput-bench")).args([
        "run",
        "ebpf,nftables,iptables",
        "3",
    ]))?;
    // The last line: the backend it starts may print its own readiness first.
    let last = out.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).with_context(|| format!("throughput output {out:?}"))?;
    let mut table = String::from(
        "| mode | load | direct (per s) | ClusterIP (per s) | ClusterIP / direct (median) | rounds | direct p50 / p99 (µs) | ClusterIP p50 / p99 (µs) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in v["results"].as_array().into_iter().flatten() {
        let f = |x: &Value| x.as_f64().map_or("-".to_owned(), |v| format!("{v:.0}"));
        let rounds: Vec<String> = r["round_ratios"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_f64().map_or("-".to_owned(), |v| format!("{v:.3}")))
            .collect();
        table += &format!(
            "| {} | {} | {} | {} | {:.3} | {} | {} / {} | {} / {} |\n",
            r["mode"].as_str().unwrap_or("?"),
            r["kind"].as_str().unwrap_or("?"),
            f(&r["direct"]["per_s"]),
            f(&r["cluster_ip"]["per_s"]),
            r["ratio_to_direct"].as_f64().unwrap_or(f64::NAN),
            rounds.join(" "),
            f(&r["direct"]["p50_us"]),
            f(&r["direct"]["p99_us"]),
            f(&r["cluster_ip"]["p50_us"]),
            f(&r["cluster_ip"]["p99_us"]),
        );
    }
    table += "\nOne client pod on n1 (2 connections or sockets, run in n1's cgroup like a pod's processes), one backend pod on n2; 3 s per measurement; per mode and load, direct and ClusterIP alternate three times (d c d c d c d), each ClusterIP run divided by the mean of the direct runs on either side; medians shown.\n";
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("throughput.json"), serde_json::to_string_pretty(&v)?)?;
    std::fs::write(dir.join("throughput.md"), &table)?;
    println!("{table}");
    println!(
        "wrote {} and {}",
        dir.join("throughput.json").display(),
        dir.join("throughput.md").display()
    );
    Ok(())
}
