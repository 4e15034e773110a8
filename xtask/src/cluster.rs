//! `cargo xtask bench --suite cluster`: `rudder up` itself, over a few rounds
//! (`rudder-cluster-bench`): the time to the proof line, pod startup latency for a
//! Deployment of 30 (creation to Ready, as one watch sees them), and resident memory of
//! the control plane and node agents with those pods running. Writes
//! target/bench/cluster.{json,md}.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cmd;

/// Where cargo puts binaries: $CARGO_TARGET_DIR when set, else the workspace's target/.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).map_or_else(
        || root.join("target"),
        |d| if d.is_absolute() { d } else { root.join(d) },
    )
}

/// Min, median and max of one figure over the rounds.
fn spread(rounds: &[Value], key: &str) -> Value {
    let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[key].as_f64()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Value::Null;
    }
    json!({"min": v[0], "median": crate::bench::median(v.clone()), "max": v[v.len() - 1]})
}

/// (figure, JSON key, unit, target as text, pass when the median is at most this).
const ROWS: &[(&str, &str, &str, &str, Option<f64>)] = &[
    (
        "time to the proof line (printed by rudder up)",
        "proof_printed_s",
        "s",
        "≤ 20 s",
        Some(20.0),
    ),
    (
        "time to the proof line (wall clock)",
        "proof_wall_s",
        "s",
        "≤ 20 s",
        Some(20.0),
    ),
    (
        "`rudder up --exit-after-proof` until exit (incl. teardown)",
        "proof_exit_wall_s",
        "s",
        "",
        None,
    ),
    (
        "time to rudder-proxy on every node (--no-demo)",
        "proxy_ready_wall_s",
        "s",
        "",
        None,
    ),
    ("pod startup p50 (creation → Ready)", "startup_p50_s", "s", "", None),
    (
        "pod startup p99 (creation → Ready)",
        "startup_p99_s",
        "s",
        "≤ 2 s",
        Some(2.0),
    ),
    ("pod startup max", "startup_max_s", "s", "", None),
    (
        "Deployment created → all pods Ready",
        "startup_all_ready_s",
        "s",
        "",
        None,
    ),
    (
        "control plane RSS (`rudder server`)",
        "rss_server_mib",
        "MiB",
        "≤ 150 MB",
        Some(150.0e6 / 1048576.0),
    ),
    (
        "node agent RSS (largest of the nodes)",
        "rss_agent_max_mib",
        "MiB",
        "≤ 40 MB",
        Some(40.0e6 / 1048576.0),
    ),
    ("shims RSS, total", "rss_shims_total_mib", "MiB", "", None),
    ("shim RSS, average", "rss_shim_avg_mib", "MiB", "", None),
    (
        "rudder-proxy RSS, total of the nodes",
        "rss_proxies_total_mib",
        "MiB",
        "",
        None,
    ),
];

pub fn run(rounds: usize, pods: usize) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // One invocation: the binaries share dependencies with one feature set.
    cmd::run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "-p",
        "rudder-proxy",
        "-p",
        "rudder-control",
        "-p",
        "rudder-tests",
        "--bin",
        "rudder",
        "--bin",
        "rudder-proxy",
        "--bin",
        "rudder-cluster-bench",
    ]))?;
    let bin = target_dir(&root).join("debug");
    let out = Command::new(bin.join("rudder-cluster-bench"))
        .arg(bin.join("rudder"))
        .args([rounds.to_string(), pods.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("starting rudder-cluster-bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("rudder-cluster-bench failed with {}", out.status);
    }
    let last = text.lines().last().unwrap_or_default();
    let raw: Value = serde_json::from_str(last).with_context(|| format!("cluster bench output {text:?}"))?;
    let rounds_v = raw["rounds"].as_array().cloned().unwrap_or_default();
    let mut summary = serde_json::Map::new();
    let mut table = format!(
        "| figure ({} nodes, {} pods) | min | median | max | target | pass |\n|---|---|---|---|---|---|\n",
        raw["nodes"], raw["pods"]
    );
    for &(label, key, unit, target, limit) in ROWS {
        let s = spread(&rounds_v, key);
        let f = |k: &str| s[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.2} {unit}"));
        let pass = match (limit, s["median"].as_f64()) {
            (Some(l), Some(m)) => {
                if m <= l {
                    "pass"
                } else {
                    "FAIL"
                }
            }
            (Some(_), None) => "-",
            (None, _) => "",
        };
        table += &format!(
            "| {label} | {} | {} | {} | {target} | {pass} |\n",
            f("min"),
            f("median"),
            f("max")
        );
        summary.insert(key.to_owned(), s);
    }
    table += &format!(
        "\n{} rounds; pass/fail judged on the median. Each round: `rudder up --exit-after-proof` (3 nodes, ebpf mode, the demo and its proof), then `rudder up --no-demo`, a Deployment of {} `sleep` pods without probes, each pod's time from creation to Ready as one watch observes both (creationTimestamp has whole seconds), VmRSS with the pods running (processes found through the cluster's cgroup tree), Ctrl-C. Debug build (`target/debug`, opt-level 1). MB = 10^6 bytes, MiB = 2^20.\n\nFor reference, published figures, not measured here: k3s reports about 30 s to a Ready node, kind about 60 s to a cluster.\n",
        rounds_v.len(),
        raw["pods"],
    );
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let result = json!({"benchmark": "cluster", "nodes": raw["nodes"], "pods": raw["pods"], "summary": summary,
                        "targets": {"proof_s": 20, "startup_p99_s": 2, "rss_server_mb": 150, "rss_agent_mb": 40},
                        "reference_published": {"k3s_ready_node_s": 30, "kind_cluster_s": 60},
                        "rounds": rounds_v});
    std::fs::write(dir.join("cluster.json"), serde_json::to_string_pretty(&result)?)?;
    std::fs::write(dir.join("cluster.md"), &table)?;
    println!("{table}");
    println!(
        "wrote {} and {}",
        dir.join("cluster.json").display(),
        dir.join("cluster.md").display()
    );
    Ok(())
}
