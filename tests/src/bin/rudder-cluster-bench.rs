//! `rudder-cluster-bench RUDDER [ROUNDS] [PODS]`: `rudder up` itself, per round:
//!
//! 1. the time to the proof: `rudder up --exit-after-proof`, the seconds it prints on the
//!    "answers from every node" line and the wall-clock time until that line;
//! 2. pod startup: `rudder up --no-demo` kept running, then a Deployment of PODS
//!    `sleep` pods (no probes), each pod's time from its creation to Ready as seen by one
//!    watch (creationTimestamp has whole seconds, too coarse for this);
//! 3. resident memory with those pods running: the control plane (`rudder server`), every
//!    node agent, the shims, found through the cluster's cgroup tree.
//!
//! Then Ctrl-C (SIGINT) to `rudder up`, which tears the cluster down. Prints one JSON
//! document (`{"rounds": [...]}`) on stdout; progress goes to stderr.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::watcher::{self, Event},
};
use serde_json::{Value, json};

/// Names that do not collide with `rudder up`'s defaults (or a developer's running cluster).
const NAME: &str = "bench";
const UNDERLAY: &str = "10.252.0.0";
const PROOF_LINE: &str = "answers from every node";
const PROXY_LINE: &str = "rudder-proxy running on every node";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(rudder) = args.first().map(PathBuf::from) else {
        bail!("usage: rudder-cluster-bench RUDDER [ROUNDS] [PODS]");
    };
    let rounds: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let pods: usize = args.get(2).map_or(Ok(30), |s| s.parse())?;
    let data_dir = std::env::temp_dir().join(format!("rudder-cluster-bench-{}", std::process::id()));
    let runtime = tokio::runtime::Runtime::new()?;
    let mut out = Vec::new();
    for round in 1..=rounds {
        let mut r = json!({"round": round});
        eprintln!("cluster bench: round {round}: rudder up --exit-after-proof ...");
        proof(&rudder, &data_dir, &mut r)?;
        eprintln!("cluster bench: round {round}: rudder up --no-demo, then {pods} pods ...");
        startup_and_rss(&runtime, &rudder, &data_dir, pods, &mut r)?;
        out.push(r);
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    println!(
        "{}",
        serde_json::to_string(&json!({"rounds": out, "pods": pods, "nodes": 3}))?
    );
    Ok(())
}

/// `rudder up` as a child, its stdout read line by line with the time each line arrived.
struct Up {
    child: Child,
    start: Instant,
    lines: mpsc::Receiver<(Duration, String)>,
    /// Progress lines seen so far (`[  1.2s] ...`), with their wall-clock arrival.
    steps: Vec<Value>,
}

impl Up {
    fn start(rudder: &Path, data_dir: &Path, extra: &[&str]) -> Result<Self> {
        let _ = std::fs::remove_dir_all(data_dir);
        let start = Instant::now();
        let mut child = Command::new(rudder)
            .arg("up")
            .args(["--name", NAME, "--underlay", UNDERLAY, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} up", rudder.display()))?;
        let stdout = child.stdout.take().context("rudder up's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("  rudder up: {line}");
                if tx.send((start.elapsed(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            start,
            lines,
            steps: Vec::new(),
        })
    }

    /// Waits for a stdout line containing `needle`; returns its arrival (since start) and text.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<(Duration, String)> {
        let deadline = self.start + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    if let Some(s) = printed_seconds(&line) {
                        self.steps
                            .push(json!({"printed_s": s, "wall_s": at.as_secs_f64(), "line": line}));
                    }
                    if line.contains(needle) {
                        return Ok((at, line));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("no line {needle:?} from rudder up within {timeout:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("rudder up exited ({status}) before printing {needle:?}");
                }
            }
        }
    }

    /// Waits for the exit; SIGKILL after `timeout` (then the next `rudder up` cleans up).
    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                bail!("rudder up did not exit within {timeout:?}; killed ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT (Ctrl-C: `rudder up` tears everything down), then waits for the exit.
    fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.child.try_wait()?.is_none() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        }
        self.wait_exit(timeout)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.interrupt(Duration::from_secs(60));
    }
}

/// The seconds of a progress line, `[  4.0s] ...`.
fn printed_seconds(line: &str) -> Option<f64> {
    line.trim_start()
        .strip_prefix('[')?
        .split_once("s]")?
        .0
        .trim()
        .parse()
        .ok()
}

fn proof(rudder: &Path, data_dir: &Path, r: &mut Value) -> Result<()> {
    let mut up = Up::start(rudder, data_dir, &["--exit-after-proof"])?;
    let (wall, line) = up.wait_line(PROOF_LINE, Duration::from_secs(180))?;
    let status = up.wait_exit(Duration::from_secs(90))?;
    if !status.success() {
        bail!("rudder up --exit-after-proof exited with {status}");
    }
    r["proof_printed_s"] = json!(printed_seconds(&line).context("the proof line's seconds")?);
    r["proof_wall_s"] = json!(wall.as_secs_f64());
    r["proof_exit_wall_s"] = json!(up.start.elapsed().as_secs_f64());
    r["proof_steps"] = json!(std::mem::take(&mut up.steps));
    Ok(())
}

fn startup_and_rss(
    runtime: &tokio::runtime::Runtime,
    rudder: &Path,
    data_dir: &Path,
    pods: usize,
    r: &mut Value,
) -> Result<()> {
    let mut up = Up::start(rudder, data_dir, &["--no-demo"])?;
    let (wall, _) = up.wait_line(PROXY_LINE, Duration::from_secs(180))?;
    r["proxy_ready_wall_s"] = json!(wall.as_secs_f64());
    let kubeconfig = data_dir.join("server/admin.kubeconfig");
    let startup = runtime.block_on(startup(&kubeconfig, pods))?;
    for (k, v) in startup.as_object().into_iter().flatten() {
        r[k] = v.clone();
    }
    for (k, v) in rss()?.as_object().into_iter().flatten() {
        r[k] = v.clone();
    }
    let t = Instant::now();
    let status = up.interrupt(Duration::from_secs(120))?;
    r["teardown_s"] = json!(t.elapsed().as_secs_f64());
    r["startup_steps"] = json!(std::mem::take(&mut up.steps));
    if !status.success() {
        bail!("rudder up exited with {status} after Ctrl-C");
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Default)]
struct Seen {
    created: Option<Instant>,
    ready: Option<Instant>,
    /// From the pod's own timestamps (creationTimestamp has whole seconds).
    timestamps_s: Option<f64>,
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Deployment of `pods` sleepers; each pod's creation and Ready as a watch sees them.
async fn startup(kubeconfig: &Path, pods: usize) -> Result<Value> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).context("reading the admin kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = Client::try_from(config)?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher::watcher(api, watcher::Config::default().labels("app=bench-startup"));
    let watch = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            let msg = match ev {
                Ok(Event::Apply(p) | Event::InitApply(p)) => Some(p),
                Ok(Event::InitDone) => None,
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("cluster bench: watch: {e}");
                    continue;
                }
            };
            if tx.send((now, msg)).is_err() {
                break;
            }
        }
    });
    // The watch is established (its initial list done) before the pods exist, so each
    // pod's first event is its creation.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some((_, None))) => break,
            Ok(Some(_)) => continue,
            _ => bail!("the pod watch did not start"),
        }
    }
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench-startup", "namespace": "default"},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "bench-startup"}},
            "template": {
                "metadata": {"labels": {"app": "bench-startup"}},
                "spec": {"containers": [{"name": "sleep", "image": "busybox", "command": ["sleep", "3600"]}]},
            },
        },
    }))?;
    let created = Instant::now();
    Api::<Deployment>::namespaced(client, "default")
        .create(&PostParams::default(), &deployment)
        .await
        .context("creating the Deployment")?;
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let deadline = created + Duration::from_secs(180);
    while seen.values().filter(|s| s.ready.is_some()).count() < pods {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((at, Some(pod)))) = tokio::time::timeout(left, rx.recv()).await else {
            let ready = seen.values().filter(|s| s.ready.is_some()).count();
            bail!("{ready} of {pods} pods Ready within 180 s ({} seen)", seen.len());
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let s = seen.entry(name).or_default();
        s.created.get_or_insert(at);
        if s.ready.is_none() && is_ready(&pod) {
            s.ready = Some(at);
            let ready_at = pod
                .status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref());
            if let (Some(c), Some(t)) = (pod.metadata.creation_timestamp.as_ref(), ready_at) {
                s.timestamps_s = Some(t.0.duration_since(c.0).as_secs_f64());
            }
        }
    }
    let all_ready = created.elapsed();
    watch.abort();
    let mut lat: Vec<f64> = seen
        .values()
        .filter_map(|s| Some((s.ready? - s.created?).as_secs_f64()))
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut ts: Vec<f64> = seen.values().filter_map(|s| s.timestamps_s).collect();
    ts.sort_by(f64::total_cmp);
    Ok(json!({
        "startup_p50_s": percentile(&lat, 50.0),
        "startup_p99_s": percentile(&lat, 99.0),
        "startup_max_s": lat.last(),
        "startup_all_ready_s": all_ready.as_secs_f64(),
        "startup_timestamps_p50_s": percentile(&ts, 50.0),
        "startup_timestamps_p99_s": percentile(&ts, 99.0),
        "startup_latencies_s": lat,
    }))
}

fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
        .context("no cgroup2 mount")
}

fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// argv of a process, NUL-separated in /proc.
fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every process below `dir`, recursively.
fn procs_below(dir: &Path, out: &mut Vec<u32>) {
    out.extend(procs(dir));
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            procs_below(&e.path(), out);
        }
    }
}

/// VmRSS of the control plane, each node agent and the shims, from the cgroup tree.
fn rss() -> Result<Value> {
    let cluster = cgroup2_root()?.join("rudder").join(NAME);
    let mib = |kib: f64| kib / 1024.0;
    let server: Vec<u32> = procs(&cluster.join("control"))
        .into_iter()
        .filter(|&p| argv(p).get(1).is_some_and(|a| a == "server"))
        .collect();
    let [server] = server.as_slice() else {
        bail!(
            "want one `rudder server` in {}/control, found {server:?}",
            cluster.display()
        );
    };
    let mut agents = BTreeMap::new();
    let (mut shims, mut shims_kib, mut proxies_kib) = (0usize, 0.0, 0.0);
    for k in 1.. {
        let node = cluster.join(format!("n{k}"));
        if !node.is_dir() {
            break;
        }
        for pid in procs(&node.join("agent")) {
            match argv(pid).get(1).map(String::as_str) {
                Some("node") => {
                    agents.insert(format!("n{k}"), mib(rss_kib(pid).unwrap_or(f64::NAN)));
                }
                Some("node-shim") => {
                    shims += 1;
                    shims_kib += rss_kib(pid).unwrap_or(0.0);
                }
                _ => {}
            }
        }
        let mut all = Vec::new();
        procs_below(&node, &mut all);
        proxies_kib += all
            .iter()
            .filter(|&&p| argv(p).first().is_some_and(|a| a.ends_with("rudder-proxy")))
            .filter_map(|&p| rss_kib(p))
            .sum::<f64>();
    }
    if agents.is_empty() {
        bail!("no node agents under {}", cluster.display());
    }
    Ok(json!({
        "rss_server_mib": mib(rss_kib(*server).context("the server's VmRSS")?),
        "rss_agent_max_mib": agents.values().copied().fold(0.0, f64::max),
        "rss_agents_mib": agents,
        "shims": shims,
        "rss_shims_total_mib": mib(shims_kib),
        "rss_shim_avg_mib": if shims > 0 { mib(shims_kib) / shims as f64 } else { f64::NAN },
        "rss_proxies_total_mib": mib(proxies_kib),
    }))
}
