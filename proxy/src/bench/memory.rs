//! The memory suite: the resident memory of the real agent (`rudder-proxy run`, this very
//! binary) after its first full sync of N Services × E endpoints that a real API server
//! (`rudder server`) serves, per mode. Issue #17's target is ≤ 100 MB at 10k × 10.
//!
//! The API server runs in a network namespace of its own (`rbench-<pid>-api`), listening on
//! [`API_ADDRESS`] on its loopback device, so every agent, each in a fresh namespace of its
//! own, reaches it over one veth pair, and the agents' rules never see the bench's own
//! API traffic. Objects are created once per size through the API, concurrently; then
//! modes take turns over the rounds (nftables, iptables, ebpf, nftables, ...), so a slow
//! drift of the machine touches every mode alike. An agent counts as synced when it logs
//! its first full sync (`synced full=true`), which it does only after its initial lists
//! are complete; it is then left alone for `settle` before VmRSS and VmHWM are read.

use std::{
    fs::File,
    io::Read,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::PostParams};
use serde::{Deserialize, Serialize};

use super::synthetic;

/// The modes the suite knows; `ipvs` needs a kernel with IP_VS (see `cargo xtask vm`).
pub const MODES: [&str; 3] = ["nftables", "iptables", "ebpf"];
/// Issue #17's target for the agent at 10k Services × 10 endpoints, in bytes (100 MB).
pub const TARGET_BYTES: u64 = 100_000_000;
/// The API server's address, on the loopback of its namespace; agents reach it over a veth.
pub const API_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
const AGENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
const API_PORT: u16 = 6443;
const MIB: f64 = 1024.0 * 1024.0;

/// What to measure (the framework maps its flags onto this).
#[derive(Debug, Clone)]
pub struct Opts {
    /// The `rudder` binary (API server). `None`: next to the current executable, then PATH.
    pub rudder: Option<PathBuf>,
    /// The `rudder-proxy` binary run as the agent. `None`: the current executable.
    pub proxy: Option<PathBuf>,
    /// Numbers of Services, each with one port and `endpoints` ready endpoints in one slice.
    pub sizes: Vec<usize>,
    pub endpoints: usize,
    /// Modes, in the order they take turns in each round.
    pub modes: Vec<String>,
    pub rounds: usize,
    /// How long an agent runs after its first full sync before its memory is read.
    pub settle: Duration,
    /// Object creations in flight at once.
    pub concurrency: usize,
    /// How long an agent may take to its first full sync (and the server to come up).
    pub timeout: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            rudder: None,
            proxy: None,
            sizes: vec![1_000, 10_000, 30_000],
            endpoints: 10,
            modes: MODES.iter().map(|m| (*m).to_owned()).collect(),
            rounds: 3,
            settle: Duration::from_secs(5),
            concurrency: 64,
            timeout: Duration::from_secs(600),
        }
    }
}

/// A measured quantity over its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Some(Self {
            min: s[0],
            median,
            max: s[n - 1],
            n,
        })
    }

    fn cell(&self, digits: usize) -> String {
        format!(
            "{:.digits$} / {:.digits$} / {:.digits$}",
            self.min, self.median, self.max
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub endpoints_per_service: usize,
    pub rounds: usize,
    pub settle_s: f64,
    pub target_mb: f64,
    pub sizes: Vec<SizeReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeReport {
    pub services: usize,
    /// Services plus EndpointSlices created through the API.
    pub objects: usize,
    pub create_s: f64,
    /// The API server's VmRSS with the objects stored, read with each agent's.
    pub server_rss_mib: Stat,
    pub modes: Vec<ModeReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: String,
    /// VmRSS after the first full sync and the settle time.
    pub agent_rss_mib: Stat,
    /// VmHWM: the highest RSS the agent ever had (the cold sync's peak).
    pub agent_hwm_mib: Stat,
    /// From the agent's start to its first full sync's log line.
    pub first_sync_s: Stat,
    /// Every round's RSS ≤ [`TARGET_BYTES`].
    pub within_target: bool,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = format!(
            "Agent memory: `rudder-proxy run` after its first full sync of N Services × {} endpoints from `rudder server`, \
             {} s settled; min / median / max over {} round(s); target ≤ {} MB ({:.1} MiB)\n\n",
            self.endpoints_per_service,
            self.settle_s,
            self.rounds,
            self.target_mb,
            self.target_mb * 1e6 / MIB,
        );
        t += "| Services | mode | agent RSS (MiB) | agent peak RSS (MiB) | first sync (s) | API server RSS (MiB) | objects created in (s) | ≤ target |\n";
        t += "|---|---|---|---|---|---|---|---|\n";
        for size in &self.sizes {
            for m in &size.modes {
                t += &format!(
                    "| {} | {} | {} | {} | {} | {} | {:.1} ({} objects) | {} |\n",
                    size.services,
                    m.mode,
                    m.agent_rss_mib.cell(1),
                    m.agent_hwm_mib.cell(1),
                    m.first_sync_s.cell(2),
                    size.server_rss_mib.cell(0),
                    size.create_s,
                    size.objects,
                    if m.within_target { "yes" } else { "NO" },
                );
            }
        }
        t
    }
}

/// Runs the suite (root: it creates network namespaces, cgroups and bpffs pins).
pub fn run(opts: &Opts, progress: &dyn Fn(&str)) -> Result<Report> {
    ensure!(opts.rounds > 0, "rounds must be at least 1");
    ensure!(opts.endpoints > 0, "endpoints must be at least 1");
    ensure!(
        opts.sizes.iter().all(|&s| (1..=60_000).contains(&s)),
        "sizes must be 1..=60000 Services (ClusterIPs come from 10.96.0.0/16), got {:?}",
        opts.sizes
    );
    for mode in &opts.modes {
        ensure!(MODES.contains(&mode.as_str()), "mode {mode:?} is not one of {MODES:?}");
    }
    ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the memory suite needs root (network namespaces, cgroups, bpffs)"
    );
    let rudder = find_rudder(opts.rudder.as_deref())?;
    let proxy = match &opts.proxy {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("the path of this executable (the agent)")?,
    };
    ensure!(proxy.is_file(), "agent binary {} does not exist", proxy.display());
    let mut sizes = Vec::new();
    for &services in &opts.sizes {
        sizes.push(one_size(opts, &rudder, &proxy, services, progress)?);
    }
    Ok(Report {
        endpoints_per_service: opts.endpoints,
        rounds: opts.rounds,
        settle_s: opts.settle.as_secs_f64(),
        target_mb: TARGET_BYTES as f64 / 1e6,
        sizes,
    })
}

/// `rudder`: the given path, else next to the current executable, else on PATH.
pub fn find_rudder(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        ensure!(
            path.is_file(),
            "the rudder binary {} does not exist (build it: cargo build --release -p rudder-control --bin rudder)",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("rudder")));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("rudder")).collect::<Vec<_>>())
        .unwrap_or_default();
    let tried: Vec<PathBuf> = beside.into_iter().chain(on_path).collect();
    tried.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no rudder binary (the API server) next to this executable or on PATH (tried {tried:?}); \
             build it with `cargo build --release -p rudder-control --bin rudder` or name it"
        )
    })
}

fn one_size(opts: &Opts, rudder: &Path, proxy: &Path, services: usize, progress: &dyn Fn(&str)) -> Result<SizeReport> {
    let pid = std::process::id();
    let api = Netns::create(format!("rbench-{pid}-api"))?;
    ip(&["-n", &api.name, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &api.name,
        "addr",
        "add",
        &format!("{API_ADDRESS}/32"),
        "dev",
        "lo",
    ])?;
    let data = ScratchDir::create(std::env::temp_dir().join(format!("rbench-{pid}-api-{services}")))?;
    let server_log = data.0.join("server.log");
    let mut server = Command::new(rudder);
    server
        .args(["server", "--controllers=false", "--scheduler=false"])
        .args(["--listen", &format!("{API_ADDRESS}:{API_PORT}")])
        .args(["--tls-san", &API_ADDRESS.to_string()])
        .args(["--service-cluster-ip-range", "10.96.0.0/16"])
        .arg("--data-dir")
        .arg(&data.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&server_log).context("the server's log file")?);
    let server = Killed::spawn_in(&api, &mut server).context("starting rudder server")?;
    let kubeconfig = data.0.join("admin.kubeconfig");
    let objects = 2 * services;
    progress(&format!("{services} Services: creating {objects} objects"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let create_s = std::thread::scope(|scope| {
        let creator = scope.spawn(|| in_netns(&api, || create_objects(opts, &kubeconfig, &server, services, tx)));
        for line in rx {
            progress(&line);
        }
        creator
            .join()
            .map_err(|_| anyhow::anyhow!("the thread creating the objects panicked"))?
    })
    .with_context(|| format!("creating the objects (server log: {})", server_log.display()))?;
    progress(&format!(
        "{services} Services: {objects} objects created in {create_s:.1} s ({:.0}/s)",
        objects as f64 / create_s
    ));

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); opts.modes.len()];
    let mut server_rss = Vec::new();
    for round in 0..opts.rounds {
        for (m, mode) in opts.modes.iter().enumerate() {
            let sample = one_agent(opts, proxy, &api, &kubeconfig, services, mode, round)?;
            progress(&format!(
                "{services} Services, {mode}, round {}: agent RSS {:.1} MiB (peak {:.1}), first sync after {:.1} s",
                round + 1,
                sample.rss as f64 / MIB,
                sample.hwm as f64 / MIB,
                sample.sync_s
            ));
            server_rss.push(status_kib(server.pid(), "VmRSS").unwrap_or(0) as f64 * 1024.0 / MIB);
            samples[m].push(sample);
        }
    }
    let modes = opts
        .modes
        .iter()
        .zip(samples)
        .map(|(mode, s)| {
            let mib = |f: fn(&Sample) -> u64| s.iter().map(|x| f(x) as f64 / MIB).collect::<Vec<_>>();
            ModeReport {
                mode: mode.clone(),
                agent_rss_mib: Stat::of(&mib(|x| x.rss)).expect("rounds ≥ 1"),
                agent_hwm_mib: Stat::of(&mib(|x| x.hwm)).expect("rounds ≥ 1"),
                first_sync_s: Stat::of(&s.iter().map(|x| x.sync_s).collect::<Vec<_>>()).expect("rounds ≥ 1"),
                within_target: s.iter().all(|x| x.rss <= TARGET_BYTES),
            }
        })
        .collect();
    Ok(SizeReport {
        services,
        objects,
        create_s,
        server_rss_mib: Stat::of(&server_rss).expect("rounds ≥ 1"),
        modes,
    })
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: u64,
    hwm: u64,
    sync_s: f64,
}

/// Waits for the server, then creates the namespace, the Services and their slices.
/// Returns the seconds the objects took. Runs on a thread inside the server's namespace.
fn create_objects(
    opts: &Opts,
    kubeconfig: &Path,
    server: &Killed,
    services: usize,
    progress: std::sync::mpsc::Sender<String>,
) -> Result<f64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let deadline = Instant::now() + opts.timeout.min(Duration::from_secs(120));
        let client = loop {
            if let Some(status) = server.exited() {
                bail!("rudder server exited with {status}");
            }
            if kubeconfig.exists()
                && let Ok(c) = client(kubeconfig).await
                && c.apiserver_version().await.is_ok()
            {
                break c;
            }
            ensure!(Instant::now() < deadline, "rudder server did not answer within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": synthetic::NAMESPACE}}))?;
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .context("create the namespace")?;
        let svcs: Api<Service> = Api::namespaced(client.clone(), synthetic::NAMESPACE);
        let slices: Api<EndpointSlice> = Api::namespaced(client, synthetic::NAMESPACE);
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut done = 0usize;
        let mut creations = futures::stream::iter(0..2 * services)
            .map(|k| {
                let (svcs, slices) = (svcs.clone(), slices.clone());
                async move {
                    // Services first, each slice after: a slice's Service may or may not
                    // exist yet, as in a cluster; the agent joins them by name.
                    if k < services {
                        // The server allocates the ClusterIP (10.96.0.1 is `kubernetes`'s).
                        let mut svc = synthetic::service(k);
                        if let Some(spec) = svc.spec.as_mut() {
                            (spec.cluster_ip, spec.cluster_ips) = (None, None);
                        }
                        svcs.create(&PostParams::default(), &svc)
                            .await
                            .with_context(|| format!("create Service svc-{k}"))?;
                    } else {
                        let i = k - services;
                        slices
                            .create(&PostParams::default(), &synthetic::slice(i, opts.endpoints, 0))
                            .await
                            .with_context(|| format!("create EndpointSlice svc-{i}-1"))?;
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(opts.concurrency.max(1));
        while let Some(result) = creations.next().await {
            result?;
            done += 1;
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                let _ = progress.send(format!(
                    "{services} Services: {done}/{} objects after {:.0} s",
                    2 * services,
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        Ok(started.elapsed().as_secs_f64())
    })
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// One agent in a fresh namespace, connected to the server's by a veth pair, until its
/// first full sync plus the settle time; everything it had goes when this returns.
fn one_agent(
    opts: &Opts,
    proxy: &Path,
    api: &Netns,
    kubeconfig: &Path,
    services: usize,
    mode: &str,
    round: usize,
) -> Result<Sample> {
    let pid = std::process::id();
    let what = format!("{mode}-{round}");
    let node = Netns::create(format!("rbench-{pid}-{what}"))?;
    // Interface names stay within 15 characters; one agent runs at a time.
    let (api_side, node_side) = (format!("rb{}a", pid % 10_000), format!("rb{}n", pid % 10_000));
    ip(&[
        "link", "add", &api_side, "netns", &api.name, "type", "veth", "peer", "name", &node_side, "netns", &node.name,
    ])?;
    // Deleted explicitly (both ends go at once): a deleted namespace's devices leave
    // asynchronously, and the next agent's pair has the same names.
    let veth = Veth {
        netns: api.name.clone(),
        name: api_side.clone(),
    };
    ip(&["-n", &api.name, "link", "set", &api_side, "up"])?;
    ip(&[
        "-n",
        &api.name,
        "route",
        "add",
        &format!("{AGENT_ADDRESS}/32"),
        "dev",
        &api_side,
    ])?;
    ip(&["-n", &node.name, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &node.name,
        "addr",
        "add",
        &format!("{AGENT_ADDRESS}/24"),
        "dev",
        &node_side,
    ])?;
    ip(&["-n", &node.name, "link", "set", &node_side, "up"])?;

    let scratch = ScratchDir::create(std::env::temp_dir().join(format!("rbench-{pid}-{what}")))?;
    let log = scratch.0.join("agent.log");
    let mut agent = Command::new(proxy);
    agent
        .args(["run", "--mode", mode, "--hostname-override", "rbench-node"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--cluster-cidr",
            "10.128.0.0/10",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).context("the agent's log file")?);
    let mut _cgroup = None;
    let mut _pins = None;
    if mode == "ebpf" {
        let cgroup = ScratchDir::create(cgroup2_root()?.join(format!("rbench-{pid}-{what}")))?;
        let pins = PathBuf::from(format!("/sys/fs/bpf/rbench-{pid}-{what}"));
        // Backends get as many map entries as frontends: room for every endpoint.
        let map_max = (services * (opts.endpoints + 1)).next_power_of_two().max(65_536);
        agent
            .args(["--cgroup-path", &format!("rbench-{pid}-{what}")])
            .arg("--bpf-root")
            .arg(&pins)
            .args(["--bpf-lb-map-max", &map_max.to_string()])
            .args(["--ebpf-devices", &node_side]);
        _cgroup = Some(CgroupDir(cgroup));
        _pins = Some(ScratchDir(pins));
    }
    let started = Instant::now();
    let agent = Killed::spawn_in(&node, &mut agent).with_context(|| format!("starting {}", proxy.display()))?;
    let deadline = started + opts.timeout;
    let sync_s = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(is_first_full_sync) {
            break started.elapsed().as_secs_f64();
        }
        if let Some(status) = agent.exited() {
            bail!(
                "the {mode} agent exited with {status} before its first sync:\n{}",
                tail(&text, 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the {mode} agent did not sync {services} Services within {:?}:\n{}",
                opts.timeout,
                tail(&text, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(opts.settle);
    if let Some(status) = agent.exited() {
        bail!(
            "the {mode} agent exited with {status} while settling:\n{}",
            tail(&read(&log), 30)
        );
    }
    let rss = status_kib(agent.pid(), "VmRSS").context("the agent's VmRSS")? * 1024;
    let hwm = status_kib(agent.pid(), "VmHWM").context("the agent's VmHWM")? * 1024;
    // Order matters: the agent goes first (it holds the pins, the cgroup attachment and the
    // veth's programs), then its pins and cgroup, then the namespace with the veth pair.
    drop(agent);
    drop(_pins);
    drop(_cgroup);
    drop(veth);
    drop(node);
    drop(scratch);
    Ok(Sample { rss, hwm, sync_s })
}

/// The agent's log line for a full sync (`synced full=true ...`), with or without colour.
fn is_first_full_sync(line: &str) -> bool {
    let plain: String = strip_ansi(line);
    plain.contains(" synced ") && plain.contains("full=true")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let mut status = String::new();
    File::open(format!("/proc/{pid}/status"))
        .ok()?
        .read_to_string(&mut status)
        .ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs `f` in `netns` (sockets it opens live there). Call it only on a thread of its own
/// that ends afterwards: setns changes the calling thread for good.
fn in_netns<T>(netns: &Netns, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let file = File::open(netns.path()).with_context(|| format!("open {}", netns.path().display()))?;
    // SAFETY: an open namespace file; setns changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("enter the server's namespace");
    }
    f()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self> {
        // A namespace of that name left by a killed run of this pid cannot exist, but one
        // by an earlier process with the same pid can: start clean.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name])?;
        Ok(Self { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair, deleted (both ends) on drop.
struct Veth {
    netns: String,
    name: String,
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.netns, "link", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process killed (SIGKILL) and reaped on drop.
struct Killed(std::sync::Mutex<Child>);

impl Killed {
    /// Starts `cmd` inside `netns` (entered between fork and exec, so the pid is the
    /// program's own and /sys stays the host's, where bpffs and cgroup2 are).
    fn spawn_in(netns: &Netns, cmd: &mut Command) -> Result<Self> {
        let file = File::open(netns.path()).with_context(|| format!("open {}", netns.path().display()))?;
        let fd = file.as_raw_fd();
        // SAFETY: only setns, async-signal-safe, runs between fork and exec; `file` outlives
        // the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(file);
        Ok(Self(std::sync::Mutex::new(child)))
    }

    fn pid(&self) -> u32 {
        self.0.lock().map(|c| c.id()).unwrap_or(0)
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.0.lock().ok()?.try_wait().ok().flatten()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(child) = self.0.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory (scratch files, bpffs pins) created now and removed with its contents on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cgroup directory, removed on drop (rmdir: a cgroup's files cannot be deleted); its
/// processes may still be leaving, so it is retried briefly.
struct CgroupDir(ScratchDir);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.0.0);
        for _ in 0..100 {
            if std::fs::remove_dir(&path).is_ok() || !path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where cgroup2 is mounted.
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("cgroup v2 is not mounted (the ebpf mode needs it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_has_min_median_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]).expect("samples");
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.5, 10.0, 4));
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\trudder-proxy\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn the_full_sync_line_is_found_with_and_without_colour() {
        let plain = "2026-12-07T19:00:00.000Z  INFO rudder_proxy::agent::sync: synced full=true skipped=false ports=10 took_ms=3";
        let coloured = "\u{1b}[2m2026-12-07T19:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mrudder_proxy::agent::sync\u{1b}[0m\u{1b}[2m:\u{1b}[0m synced \u{1b}[3mfull\u{1b}[0m\u{1b}[2m=\u{1b}[0mtrue";
        assert!(is_first_full_sync(plain));
        assert!(is_first_full_sync(coloured));
        assert!(!is_first_full_sync(&plain.replace("full=true", "full=false")));
    }

    #[test]
    fn a_missing_rudder_binary_is_refused_by_name() {
        let err = find_rudder(Some(Path::new("/nonexistent/rudder"))).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/rudder"), "{err}");
    }

    #[test]
    fn the_table_has_a_row_per_size_and_mode() {
        let stat = |x: f64| Stat {
            min: x,
            median: x,
            max: x,
            n: 1,
        };
        let report = Report {
            endpoints_per_service: 10,
            rounds: 1,
            settle_s: 5.0,
            target_mb: 100.0,
            sizes: vec![SizeReport {
                services: 1000,
                objects: 2000,
                create_s: 4.0,
                server_rss_mib: stat(80.0),
                modes: vec![ModeReport {
                    mode: "nftables".into(),
                    agent_rss_mib: stat(30.0),
                    agent_hwm_mib: stat(40.0),
                    first_sync_s: stat(1.5),
                    within_target: true,
                }],
            }],
        };
        let t = report.table();
        assert!(
            t.contains("| 1000 | nftables | 30.0 / 30.0 / 30.0 | 40.0 / 40.0 / 40.0 | 1.50 / 1.50 / 1.50 | 80 / 80 / 80 | 4.0 (2000 objects) | yes |"),
            "{t}"
        );
    }
}
