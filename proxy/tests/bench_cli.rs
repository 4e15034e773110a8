//! `rudder-proxy bench` end to end, as root: the real suites at a tiny size produce a
//! report that matches SCHEMA.md, plots that are SVG documents, and leave no `rbench`
//! namespace, cgroup or pin behind; interrupted mid-run, it sweeps and exits 130.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn require_root() {
    // SAFETY: no arguments, no memory.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the bench tests create network namespaces and load BPF programs: run them as root (uid {uid})"
    );
}

fn out_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rudder-bench-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn bench(args: &[&str], out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rudder-proxy"))
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rudder-proxy bench")
}

/// Waits for `child` at most `limit`; kills it and fails when it takes longer.
fn wait(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for rudder-proxy bench") {
            let out = child.wait_with_output().expect("its output");
            return (
                status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("its output");
            panic!(
                "rudder-proxy bench ran longer than {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn netns_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let prefix = format!("rbench-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Everything the bench run `pid` may have created and left: namespaces, cgroups (top level
/// of the cgroup2 mount and one below), bpffs pins.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("rbench-{pid}-");
    let mut left: Vec<String> = netns_of(pid).into_iter().map(|n| format!("netns {n}")).collect();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let cgroup2 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    });
    let list = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let named = |p: &Path| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
    if let Some(root) = cgroup2 {
        for top in list(&root).into_iter().filter(|p| p.is_dir()) {
            if named(&top) {
                left.push(format!("cgroup {}", top.display()));
            }
            for below in list(&top).into_iter().filter(|p| p.is_dir() && named(p)) {
                left.push(format!("cgroup {}", below.display()));
            }
        }
    }
    for pin in list(Path::new("/sys/fs/bpf")).into_iter().filter(|p| named(p)) {
        left.push(format!("pin {}", pin.display()));
    }
    left
}

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut at = v;
    for key in path.split('.') {
        at = at
            .get(key)
            .unwrap_or_else(|| panic!("report.json has no {path:?} (missing {key:?})"));
    }
    at
}

fn assert_stat(v: &Value, what: &str) {
    for key in ["min", "median", "max"] {
        assert!(v[key].is_f64() || v[key].is_u64(), "{what}.{key} is a number: {v}");
    }
    assert!(v["n"].as_u64().is_some_and(|n| n >= 1), "{what}.n: {v}");
    let (min, med, max) = (v["min"].as_f64(), v["median"].as_f64(), v["max"].as_f64());
    assert!(min <= med && med <= max, "{what}: min <= median <= max: {v}");
}

fn assert_ratio(v: &Value, what: &str) {
    for key in ["median", "low", "high"] {
        assert!(v[key].is_number(), "{what}.{key} is a number: {v}");
    }
    assert!(v["within_spread"].is_boolean(), "{what}.within_spread: {v}");
}

/// Well-formed enough to be an SVG document: it opens with `<svg`, every element that
/// opens closes, in order.
fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let body = text.trim_start();
    let body = if body.starts_with("<?xml") {
        body.split_once("?>").map_or(body, |(_, rest)| rest.trim_start())
    } else {
        body
    };
    assert!(body.starts_with("<svg"), "{} does not start with <svg", path.display());
    let mut open: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find('<') {
        let end = rest[i..]
            .find('>')
            .unwrap_or_else(|| panic!("{}: unclosed tag", path.display()));
        let tag = &rest[i + 1..i + end];
        rest = &rest[i + end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') || tag.ends_with('/') {
            continue;
        }
        let name = tag
            .trim_start_matches('/')
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
        if tag.starts_with('/') {
            assert_eq!(
                open.pop().as_deref(),
                Some(name.as_str()),
                "{}: mismatched </{name}>",
                path.display()
            );
        } else {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "{}: unclosed elements {open:?}", path.display());
}

#[test]
fn packet_and_sync_at_the_smallest_size_write_a_valid_report_and_clean_up() {
    require_root();
    let out = out_dir("report");
    let child = bench(
        &[
            "--suite",
            "packet,sync",
            "--sizes",
            "20",
            "--rounds",
            "1",
            "--runs",
            "200",
            "--reps",
            "1",
            "--settle",
            "0",
        ],
        &out,
    );
    let pid = child.id();
    let (status, stdout, stderr) = wait(child, Duration::from_secs(600));
    assert!(status.success(), "exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("## packet") && stdout.contains("## sync"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json written"))
            .expect("report.json is JSON");
    assert_eq!(field(&report, "schema_version").as_u64(), Some(1));
    for key in [
        "machine.kernel_release",
        "machine.cpu_model",
        "started_at",
        "finished_at",
    ] {
        assert!(
            field(&report, key).as_str().is_some_and(|s| !s.is_empty()),
            "{key} is a non-empty string"
        );
    }
    assert!(field(&report, "machine.cores").as_u64().is_some_and(|n| n >= 1));
    assert!(field(&report, "machine.memory_bytes").as_u64().is_some_and(|n| n > 0));
    let command = field(&report, "command").as_array().expect("command is a list");
    assert!(command.iter().any(|a| a == "bench") && command.iter().any(|a| a == "packet,sync"));
    for cap in ["root", "bpf", "nft", "iptables_legacy", "iptables_nft", "ip_vs"] {
        let c = field(&report, &format!("capabilities.{cap}"));
        assert!(c["available"].is_boolean() && c["detail"].is_string(), "{cap}: {c}");
    }
    let refused = field(&report, "refused").as_array().expect("refused is a list");
    for r in refused {
        assert!(
            r["suite"].is_string() && r["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{r}"
        );
    }
    // What the node cannot run is refused by name, not failed.
    if !Path::new("/proc/net/ip_vs").exists() {
        assert!(
            refused
                .iter()
                .any(|r| r["mode"] == "rudder-ipvs" && r["reason"].as_str().is_some_and(|s| s.contains("IP_VS"))),
            "{refused:?}"
        );
    }
    assert_eq!(field(&report, "failed").as_array().map(Vec::len), Some(0), "{report}");

    let packet = field(&report, "suites.packet");
    let sizes = packet["sizes"].as_array().expect("packet.sizes");
    assert_eq!(sizes.len(), 1);
    assert_eq!(sizes[0]["services"], 20);
    for case in ["xdp_pass", "xdp_pass_repeat", "tc_new_flow", "xdp_established_repeat"] {
        assert_stat(&sizes[0]["ns"][case], &format!("packet ns.{case}"));
    }
    assert_ratio(
        &sizes[0]["per_xdp_pass"]["xdp_new_flow"],
        "packet per_xdp_pass.xdp_new_flow",
    );
    assert!(!packet["raw"].as_array().expect("packet.raw").is_empty());

    let rows = field(&report, "suites.sync.rows").as_array().expect("sync.rows");
    let ran: Vec<&str> = rows.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert!(
        ran.contains(&"rudder-nftables") && ran.contains(&"kube-proxy-nftables"),
        "{ran:?}"
    );
    for r in rows {
        assert_eq!(r["services"], 20);
        assert_stat(&r["cold_s"], "sync cold_s");
        assert_stat(&r["one_change_ms"], "sync one_change_ms");
    }
    let nft = rows
        .iter()
        .find(|r| r["mode"] == "rudder-nftables")
        .expect("rudder-nftables row");
    assert_ratio(&nft["cold_vs_kube_proxy"], "rudder-nftables cold_vs_kube_proxy");

    let files = field(&report, "files").as_array().expect("files");
    for svg in ["packet.svg", "sync-cold.svg", "sync-one-change.svg"] {
        assert!(files.iter().any(|f| f == svg), "{svg} listed in {files:?}");
        assert_svg(&out.join(svg));
    }
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .expect("report.md")
            .contains("| Services | case |")
    );
    let left = leftovers(pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sigint_mid_run_sweeps_and_exits_130() {
    require_root();
    let out = out_dir("sigint");
    // Long enough to be interrupted: many rounds of the sync suite.
    let child = bench(
        &[
            "--suite",
            "sync",
            "--modes",
            "rudder-nftables,kube-proxy-iptables-nft",
            "--sizes",
            "500",
            "--rounds",
            "200",
            "--settle",
            "0",
        ],
        &out,
    );
    let pid = child.id();
    let start = Instant::now();
    while netns_of(pid).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no rbench-{pid}-* namespace appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let (status, _, stderr) = wait(child, Duration::from_secs(120));
    assert_eq!(status.code(), Some(130), "exit {status}; stderr:\n{stderr}");
    let left = leftovers(pid);
    assert!(left.is_empty(), "left behind after SIGINT: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}
