//! One task per pod bound to this node: it makes the sandbox, runs init containers in
//! order and then the containers, restarts them by `restartPolicy` with CrashLoopBackOff,
//! runs the probes, reports status, and on deletion stops everything within the grace
//! period, tears the sandbox down and confirms the delete.
//!
//! All state that must survive an agent restart is on disk (see `runtime`); the rest
//! (probe counters, backoff timers) starts afresh, as the kubelet's does.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};

use crate::scheduler::quantity::{milli, units};

use super::{
    Agent,
    cgroups::{self, Limits},
    container_env::{self, PodContext, Sources},
    events, network,
    probe::{self, Outcome},
    runtime::{self, RunState},
    shim::ShimSpec,
    volumes::{self, VolumeData},
};

/// The file (under the agent's root) listing mount points created on the host.
pub const CREATED_MOUNT_POINTS: &str = "created-mount-points";

const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without failing starts its backoff afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct ProbeState {
    next: Option<Instant>,
    successes: u32,
    failures: u32,
}

/// What the worker tracks per container beyond what is on disk.
#[derive(Debug, Default)]
struct Slot {
    /// The current (newest) run; `None` before the first start.
    attempt: Option<u32>,
    /// The newest run whose exit we have handled.
    handled_exit: Option<u32>,
    backoff: Duration,
    not_before: Option<Instant>,
    waiting: Option<(String, String)>,
    last_terminated: Option<Value>,
    ready: bool,
    started: bool,
    announced_start: Option<u32>,
    oom_before: u64,
    readiness: ProbeState,
    liveness: ProbeState,
    startup: ProbeState,
    /// Set when the agent is stopping this run (liveness failure): SIGKILL after this.
    kill_at: Option<Instant>,
}

struct Sandbox {
    ip: Ipv4Addr,
    netns: Option<PathBuf>,
}

pub struct PodWorker {
    agent: Arc<Agent>,
    uid: String,
    dir: PathBuf,
    slots: HashMap<String, Slot>,
    sandbox: Option<Sandbox>,
    start_time: Option<String>,
    last_status: Option<Value>,
    sandbox_error: Option<String>,
}

fn name_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// A limit in the scheduler's units (one parser for quantities); unset or zero: none.
fn quantity(q: &str, parse: fn(&str) -> i64) -> Option<u64> {
    u64::try_from(parse(q)).ok().filter(|v| *v > 0)
}

pub fn limits(c: &Container) -> Limits {
    let l = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    Limits {
        cpu_millis: l.and_then(|l| l.get("cpu")).and_then(|q| quantity(&q.0, milli)),
        memory_bytes: l.and_then(|l| l.get("memory")).and_then(|q| quantity(&q.0, units)),
    }
}

fn pod_limits(containers: &[Container]) -> Limits {
    let each: Vec<Limits> = containers.iter().map(limits).collect();
    let sum = |f: fn(&Limits) -> Option<u64>| each.iter().map(f).collect::<Option<Vec<u64>>>().map(|v| v.iter().sum());
    Limits {
        cpu_millis: sum(|l| l.cpu_millis),
        memory_bytes: sum(|l| l.memory_bytes),
    }
}

impl PodWorker {
    pub fn new(agent: Arc<Agent>, uid: String) -> Self {
        let dir = agent.config.root_dir.join("pods").join(&uid);
        Self {
            agent,
            uid,
            dir,
            slots: HashMap::new(),
            sandbox: None,
            start_time: None,
            last_status: None,
            sandbox_error: None,
        }
    }

    /// Runs until the pod is gone: deleted through the API (terminate, confirm) or
    /// vanished (`rx` closed: tear down).
    pub async fn run(mut self, mut rx: watch::Receiver<Option<Pod>>) {
        loop {
            let pod = rx.borrow_and_update().clone();
            let Some(pod) = pod else {
                self.teardown(None).await;
                return;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&pod).await;
                return;
            }
            let wake = self.step(&pod).await;
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    self.teardown(None).await;
                    return;
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn containers(pod: &Pod) -> (Vec<Container>, Vec<Container>) {
        let spec = pod.spec.clone().unwrap_or_default();
        (spec.init_containers.unwrap_or_default(), spec.containers)
    }

    fn restart_policy(pod: &Pod) -> String {
        pod.spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn host_network(pod: &Pod) -> bool {
        pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
    }

    /// One pass: make progress, report, and say when to look again.
    async fn step(&mut self, pod: &Pod) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        if self.sandbox.is_none() {
            match self.make_sandbox(pod).await {
                Ok(s) => {
                    self.sandbox = Some(s);
                    self.sandbox_error = None;
                }
                Err(e) => {
                    if self.sandbox_error.as_deref() != Some(&e) {
                        events::pod(&self.agent, pod, "Warning", "FailedCreatePodSandBox", &e);
                    }
                    self.sandbox_error = Some(e);
                    self.report(pod).await;
                    return Instant::now() + Duration::from_secs(2);
                }
            }
        }
        if self.start_time.is_none() {
            self.start_time = Some(
                pod.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(super::shim::now_rfc3339),
            );
        }
        let (inits, containers) = Self::containers(pod);
        let policy = Self::restart_policy(pod);
        let mut init_done = true;
        for c in &inits {
            let state = self.observe(pod, c, &policy).await;
            match state {
                Some(RunState::Exited { exited, .. }) if exited.exit_code == 0 && exited.start_error.is_none() => {
                    continue;
                }
                _ => {}
            }
            init_done = false;
            if let Some(t) = self.drive(pod, c, &policy, true).await {
                wake = wake.min(t);
            }
            break;
        }
        if init_done {
            for c in &containers {
                self.observe(pod, c, &policy).await;
                if let Some(t) = self.drive(pod, c, &policy, false).await {
                    wake = wake.min(t);
                }
                if let Some(t) = self.probe(pod, c).await {
                    wake = wake.min(t);
                }
            }
        }
        self.report(pod).await;
        wake.max(Instant::now() + Duration::from_millis(50))
            .min(Instant::now() + TICK.max(Duration::from_millis(50)) * 4)
    }

    /// Reads the current run's state and handles a new exit (restart bookkeeping, events).
    async fn observe(&mut self, pod: &Pod, c: &Container, policy: &str) -> Option<RunState> {
        let dir = self.dir.clone();
        let slot = self.slots.entry(c.name.clone()).or_default();
        if slot.attempt.is_none() {
            slot.attempt = runtime::latest_attempt(&dir, &c.name);
        }
        let attempt = slot.attempt?;
        let run_dir = runtime::run_dir(&dir, &c.name, attempt);
        let state = runtime::state(&run_dir);
        match &state {
            RunState::Running { started_at, .. } => {
                slot.waiting = None;
                if slot.announced_start != Some(attempt) {
                    slot.announced_start = Some(attempt);
                    let _ = started_at;
                    events::pod(
                        &self.agent,
                        pod,
                        "Normal",
                        "Started",
                        &format!("Started container {}", c.name),
                    );
                }
                if let Some(at) = slot.kill_at
                    && Instant::now() >= at
                {
                    cgroups::signal_all(&self.agent.cgroups.container(&self.uid, &c.name), libc::SIGKILL);
                }
            }
            RunState::Exited { .. } | RunState::Lost { .. } if slot.handled_exit != Some(attempt) => {
                slot.handled_exit = Some(attempt);
                slot.kill_at = None;
                slot.ready = false;
                slot.started = false;
                slot.readiness = ProbeState::default();
                slot.liveness = ProbeState::default();
                slot.startup = ProbeState::default();
                let dirs = self.agent.cgroups.container(&self.uid, &c.name);
                let oom = self.agent.cgroups.oom_kills(&dirs) > slot.oom_before;
                let (code, reason, message, started_at, finished_at, ran_for) = match &state {
                    RunState::Exited { started_at, exited } => {
                        let reason = if exited.start_error.is_some() {
                            "StartError"
                        } else if oom && exited.signal == Some(libc::SIGKILL) {
                            "OOMKilled"
                        } else if exited.exit_code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        };
                        let ran = started_at
                            .as_deref()
                            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                            .and_then(|s| {
                                exited
                                    .finished_at
                                    .parse::<jiff::Timestamp>()
                                    .ok()
                                    .map(|f| f.duration_since(s))
                            })
                            .and_then(|d| Duration::try_from(d).ok())
                            .unwrap_or_default();
                        (
                            exited.exit_code,
                            reason,
                            exited.start_error.clone(),
                            started_at.clone(),
                            Some(exited.finished_at.clone()),
                            ran,
                        )
                    }
                    RunState::Lost { started_at } => (
                        137,
                        "Error",
                        Some("the container's shim disappeared".into()),
                        started_at.clone(),
                        None,
                        Duration::ZERO,
                    ),
                    _ => unreachable!("matched above"),
                };
                let mut term = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at.unwrap_or_else(super::shim::now_rfc3339), "containerID": format!("rudder://{}/{}/{attempt}", self.uid, c.name)});
                if let Some(m) = message {
                    term["message"] = json!(m);
                }
                slot.last_terminated = Some(term);
                let restart = match policy {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if restart {
                    if ran_for >= BACKOFF_RESET {
                        slot.backoff = Duration::ZERO;
                    }
                    let delay = slot.backoff;
                    slot.backoff = if delay.is_zero() {
                        BACKOFF_BASE
                    } else {
                        (delay * 2).min(BACKOFF_MAX)
                    };
                    slot.not_before = Some(Instant::now() + delay);
                    if !delay.is_zero() {
                        let (ns, name) = name_of(pod);
                        let msg = format!(
                            "back-off {}s restarting failed container={} pod={name}_{ns}({})",
                            delay.as_secs(),
                            c.name,
                            self.uid
                        );
                        slot.waiting = Some(("CrashLoopBackOff".into(), msg));
                        events::pod(
                            &self.agent,
                            pod,
                            "Warning",
                            "BackOff",
                            "Back-off restarting failed container",
                        );
                    }
                } else {
                    slot.not_before = None;
                }
            }
            _ => {}
        }
        Some(state)
    }

    /// Starts the container when it should run and is not running. Returns when to look
    /// again if a timer is pending.
    async fn drive(&mut self, pod: &Pod, c: &Container, policy: &str, init: bool) -> Option<Instant> {
        let slot = self.slots.entry(c.name.clone()).or_default();
        let state = slot
            .attempt
            .map(|a| runtime::state(&runtime::run_dir(&self.dir, &c.name, a)));
        let should_start = match &state {
            None => true,
            Some(RunState::Starting) => return Some(Instant::now() + Duration::from_millis(50)),
            Some(RunState::Running { .. }) => false,
            Some(RunState::Exited { exited, .. }) => match policy {
                "Never" => false,
                "OnFailure" => exited.exit_code != 0 || exited.start_error.is_some(),
                _ => !(init && exited.exit_code == 0 && exited.start_error.is_none()),
            },
            Some(RunState::Lost { .. }) => policy != "Never",
        };
        if !should_start {
            return None;
        }
        if let Some(t) = slot.not_before
            && Instant::now() < t
        {
            return Some(t);
        }
        let attempt = slot.attempt.map_or(0, |a| a + 1);
        match self.start(pod, c, attempt).await {
            Ok(()) => {
                let slot = self.slots.entry(c.name.clone()).or_default();
                slot.attempt = Some(attempt);
                slot.waiting = None;
                // Look again soon: the shim reports the process within milliseconds, and
                // Running (and Ready, for a container without probes) should be reported
                // as soon, not at the next periodic pass.
                Some(Instant::now() + Duration::from_millis(50))
            }
            Err((reason, message)) => {
                let slot = self.slots.entry(c.name.clone()).or_default();
                if slot.waiting.as_ref().map(|w| &w.1) != Some(&message) {
                    events::pod(&self.agent, pod, "Warning", "Failed", &format!("Error: {message}"));
                }
                slot.waiting = Some((reason, message));
                Some(Instant::now() + Duration::from_secs(2))
            }
        }
    }

    async fn fetch_sources(
        &self,
        ns: &str,
        cms: &[String],
        secrets: &[String],
    ) -> (
        BTreeMap<String, BTreeMap<String, Vec<u8>>>,
        BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) {
        let mut out_cm = BTreeMap::new();
        let mut out_s = BTreeMap::new();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.agent.client.clone(), ns);
        for name in cms {
            if let Ok(Some(cm)) = cm_api.get_opt(name).await {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                out_cm.insert(name.clone(), data);
            }
        }
        let s_api: Api<Secret> = Api::namespaced(self.agent.client.clone(), ns);
        for name in secrets {
            if let Ok(Some(s)) = s_api.get_opt(name).await {
                let mut data: BTreeMap<String, Vec<u8>> =
                    s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                data.extend(
                    s.string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                out_s.insert(name.clone(), data);
            }
        }
        (out_cm, out_s)
    }

    /// Builds the shim spec for one run and starts it. Errors are (reason, message) for the
    /// container's waiting state.
    async fn start(&mut self, pod: &Pod, c: &Container, attempt: u32) -> Result<(), (String, String)> {
        let config_error = |m: String| ("CreateContainerConfigError".to_owned(), m);
        let (ns, name) = name_of(pod);
        let sandbox = self.sandbox.as_ref().ok_or_else(|| config_error("no sandbox".into()))?;
        let ctx = PodContext {
            pod_ip: sandbox.ip.to_string(),
            host_ip: self.agent.config.node_ip.to_string(),
            service_env: self.agent.service_env().await,
        };
        let (mut cms, mut secrets) = Sources::wanted(c);
        let (vcms, vsecrets) = volumes::wanted(pod);
        cms.extend(vcms);
        secrets.extend(vsecrets);
        let (cm_data, secret_data) = self.fetch_sources(&ns, &cms, &secrets).await;
        let text = |m: &BTreeMap<String, BTreeMap<String, Vec<u8>>>| -> HashMap<String, BTreeMap<String, String>> {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.iter()
                            .map(|(a, b)| (a.clone(), String::from_utf8_lossy(b).into_owned()))
                            .collect(),
                    )
                })
                .collect()
        };
        let sources = Sources {
            config_maps: text(&cm_data),
            secrets: text(&secret_data),
        };
        let env = container_env::env(pod, c, &ctx, &sources).map_err(|e| config_error(e.to_string()))?;
        let mut argv = container_env::argv(c, &env).map_err(|e| config_error(e.to_string()))?;
        if let Some((_, to)) = self
            .agent
            .config
            .command_map
            .iter()
            .find(|(from, _)| Some(from) == argv.first())
        {
            argv[0] = to.display().to_string();
        }
        let service_account = self.agent.service_account_files(pod).await.map_err(config_error)?;
        let data = VolumeData {
            config_maps: cm_data,
            secrets: secret_data,
            service_account,
            claims: volumes::claim_dirs(&self.agent.client, pod).await,
        };
        let mut mounts = volumes::mounts(pod, c, &self.dir, &data, &self.agent.config.host_path_map)
            .map_err(|e| config_error(e.to_string()))?;
        let host_network = Self::host_network(pod);
        // A hostNetwork pod keeps the host's files, unless its dnsPolicy asks for a
        // resolv.conf of its own.
        let own_resolv = host_network
            && matches!(
                pod.spec.as_ref().and_then(|s| s.dns_policy.as_deref()),
                Some("ClusterFirstWithHostNet" | "None")
            );
        let files: &[&str] = match (host_network, own_resolv) {
            (false, _) => &["hosts", "resolv.conf", "hostname"],
            (true, true) => &["resolv.conf"],
            (true, false) => &[],
        };
        {
            for file in files {
                let target = PathBuf::from("/etc").join(file);
                if target.exists() && !mounts.iter().any(|m| m.target == target) {
                    mounts.push(super::shim::BindMount {
                        source: self.dir.join("etc").join(file),
                        target,
                        read_only: false,
                    });
                }
            }
        }
        let dirs = self
            .agent
            .cgroups
            .create_container(&self.uid, &c.name, limits(c))
            .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
        let slot = self.slots.entry(c.name.clone()).or_default();
        slot.oom_before = self.agent.cgroups.oom_kills(&dirs);
        let spec = ShimSpec {
            argv,
            env,
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()).map(PathBuf::from),
            netns: sandbox.netns.clone(),
            hostname: (!host_network).then(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.hostname.clone())
                    .unwrap_or(name.clone())
            }),
            fresh_sysfs: true,
            mounts,
            cgroups: dirs.all(),
            log_path: self.agent.log_path(&ns, &name, &self.uid, &c.name, attempt),
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            created_mount_points: Some(self.agent.config.root_dir.join(CREATED_MOUNT_POINTS)),
        };
        let run_dir = runtime::run_dir(&self.dir, &c.name, attempt);
        runtime::start(&run_dir, &spec, &self.agent.cgroups.agent().all())
            .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
        tracing::info!(pod = %format!("{ns}/{name}"), container = %c.name, attempt, "container started");
        Ok(())
    }

    /// Runs the container's probes that are due; returns the next due time.
    async fn probe(&mut self, pod: &Pod, c: &Container) -> Option<Instant> {
        let slot = self.slots.get(&c.name)?;
        let attempt = slot.attempt?;
        let run_dir = runtime::run_dir(&self.dir, &c.name, attempt);
        let RunState::Running { pid, started_at } = runtime::state(&run_dir) else {
            return None;
        };
        if slot.kill_at.is_some() {
            return Some(Instant::now() + TICK);
        }
        let started: Instant = started_at
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| Duration::try_from(jiff::Timestamp::now().duration_since(t)).ok())
            .map_or_else(Instant::now, |age| {
                Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
            });
        let pod_ip: IpAddr = self
            .sandbox
            .as_ref()
            .map_or(IpAddr::V4(self.agent.config.node_ip), |s| IpAddr::V4(s.ip));
        let ports: Vec<(String, u16)> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let named = move |n: &str| ports.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        let uid = self.uid.clone();
        let agent = Arc::clone(&self.agent);
        let cname = c.name.clone();
        let mut next_due: Option<Instant> = None;
        // Startup gates the others; readiness and liveness run once it has succeeded.
        let kinds: [(&str, Option<&k8s_openapi::api::core::v1::Probe>); 3] = [
            ("Startup", c.startup_probe.as_ref()),
            ("Liveness", c.liveness_probe.as_ref()),
            ("Readiness", c.readiness_probe.as_ref()),
        ];
        for (kind, probe) in kinds {
            let slot = self.slots.get_mut(&c.name)?;
            if kind == "Startup" && probe.is_none() {
                slot.started = true;
                continue;
            }
            if kind != "Startup" && !slot.started {
                continue;
            }
            let Some(p) = probe else {
                if kind == "Readiness" {
                    slot.ready = true;
                }
                continue;
            };
            let t = probe::timing(p);
            let state = match kind {
                "Startup" => &mut slot.startup,
                "Liveness" => &mut slot.liveness,
                _ => &mut slot.readiness,
            };
            let due = *state.next.get_or_insert(started + t.initial_delay);
            if Instant::now() < due {
                next_due = Some(next_due.map_or(due, |n| n.min(due)));
                continue;
            }
            let (a, u, n) = (Arc::clone(&agent), uid.clone(), cname.clone());
            let outcome = probe::run(p, pod_ip, &named, async move |argv: Vec<String>, timeout: Duration| {
                a.exec_in(&u, &n, pid, argv, timeout).await
            })
            .await;
            let slot = self.slots.get_mut(&c.name)?;
            let state = match kind {
                "Startup" => &mut slot.startup,
                "Liveness" => &mut slot.liveness,
                _ => &mut slot.readiness,
            };
            state.next = Some(Instant::now() + t.period);
            next_due = Some(next_due.map_or(Instant::now() + t.period, |n| n.min(Instant::now() + t.period)));
            match outcome {
                Outcome::Success => {
                    state.failures = 0;
                    state.successes += 1;
                    if state.successes >= t.success_threshold {
                        match kind {
                            "Startup" => slot.started = true,
                            "Readiness" => slot.ready = true,
                            _ => {}
                        }
                    }
                }
                Outcome::Failure(why) => {
                    state.successes = 0;
                    state.failures += 1;
                    let failures = state.failures;
                    events::pod(
                        &self.agent,
                        pod,
                        "Warning",
                        "Unhealthy",
                        &format!("{kind} probe failed: {why}"),
                    );
                    if kind == "Readiness" && failures >= t.failure_threshold {
                        slot.ready = false;
                    }
                    if kind != "Readiness" && failures >= t.failure_threshold {
                        let verb = if kind == "Liveness" {
                            "failed liveness probe"
                        } else {
                            "failed startup probe"
                        };
                        events::pod(
                            &self.agent,
                            pod,
                            "Normal",
                            "Killing",
                            &format!("Container {} {verb}, will be restarted", c.name),
                        );
                        let grace = pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                            .unwrap_or(30)
                            .max(0) as u64;
                        slot.kill_at = Some(Instant::now() + Duration::from_secs(grace));
                        slot.ready = false;
                        cgroups::signal_all(&self.agent.cgroups.container(&self.uid, &c.name), libc::SIGTERM);
                    }
                }
            }
        }
        next_due
    }

    async fn make_sandbox(&mut self, pod: &Pod) -> Result<Sandbox, String> {
        let (inits, containers) = Self::containers(pod);
        let all: Vec<Container> = inits.into_iter().chain(containers).collect();
        self.agent
            .cgroups
            .create_pod(&self.uid, pod_limits(&all))
            .map_err(|e| e.to_string())?;
        let (ns, name) = name_of(pod);
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or(name.clone());
        let sandbox = if Self::host_network(pod) {
            Sandbox {
                ip: self.agent.config.node_ip,
                netns: None,
            }
        } else {
            let cidr = self
                .agent
                .pod_cidr()
                .ok_or("the node has no podCIDR yet (is node IPAM running with --cluster-cidr?)")?;
            let ip = self.agent.ipam.allocate(cidr, &self.uid).map_err(|e| e.to_string())?;
            let netns = self.agent.netns_name(&self.uid);
            network::create_sandbox(&netns, &self.uid, cidr, ip)
                .await
                .map_err(|e| e.to_string())?;
            Sandbox {
                ip,
                netns: Some(PathBuf::from("/run/netns").join(netns)),
            }
        };
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        let hosts = format!(
            "# Kubernetes-managed hosts file (rudder node agent).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname}\n",
            sandbox.ip
        );
        let resolv = match &pod.spec {
            Some(spec) => super::resolv::for_pod(
                spec,
                &ns,
                self.agent.config.cluster_dns.as_deref(),
                &self.agent.config.cluster_domain,
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )
            .render(),
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        for (file, text) in [
            ("hosts", hosts),
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname}\n")),
        ] {
            std::fs::write(etc.join(file), text).map_err(|e| e.to_string())?;
        }
        Ok(sandbox)
    }

    fn container_status(&self, c: &Container, init: bool) -> Value {
        let slot = self.slots.get(&c.name);
        let attempt = slot.and_then(|s| s.attempt);
        let restart_count = attempt.unwrap_or(0);
        let state = attempt.map(|a| runtime::state(&runtime::run_dir(&self.dir, &c.name, a)));
        let waiting = slot.and_then(|s| s.waiting.clone());
        let (state_json, running) = match (&state, waiting) {
            (_, Some((reason, message))) if !matches!(state, Some(RunState::Running { .. })) => {
                (json!({"waiting": {"reason": reason, "message": message}}), false)
            }
            (Some(RunState::Running { started_at, .. }), _) => (json!({"running": {"startedAt": started_at}}), true),
            (Some(RunState::Exited { .. } | RunState::Lost { .. }), _)
                if slot.and_then(|s| s.last_terminated.clone()).is_some() =>
            {
                let t = slot.and_then(|s| s.last_terminated.clone()).unwrap_or_default();
                let restarting = slot.and_then(|s| s.not_before).is_some();
                if restarting && !init {
                    (json!({"waiting": {"reason": "ContainerCreating"}}), false)
                } else {
                    (json!({"terminated": t}), false)
                }
            }
            _ => (
                json!({"waiting": {"reason": if self.sandbox.is_some() { "ContainerCreating" } else { "PodInitializing" }}}),
                false,
            ),
        };
        let ready = running && slot.is_some_and(|s| s.ready && s.started);
        let mut status = json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": ready,
            "started": running && slot.is_some_and(|s| s.started),
            "restartCount": restart_count,
            "state": state_json,
        });
        if let Some(a) = attempt {
            status["containerID"] = json!(format!("rudder://{}/{}/{a}", self.uid, c.name));
        }
        // The previous run's end, as `lastState` (kubectl shows it; `logs --previous` reads it).
        if let Some(t) = slot.and_then(|s| s.last_terminated.clone())
            && (running || status["state"].get("waiting").is_some())
        {
            status["lastState"] = json!({"terminated": t});
        }
        status
    }

    async fn report(&mut self, pod: &Pod) {
        let (inits, containers) = Self::containers(pod);
        let init_statuses: Vec<Value> = inits.iter().map(|c| self.container_status(c, true)).collect();
        let statuses: Vec<Value> = containers.iter().map(|c| self.container_status(c, false)).collect();
        let init_done = init_statuses.iter().all(|s| s["state"]["terminated"]["exitCode"] == 0);
        let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
        let terminated: Vec<&Value> = statuses.iter().filter_map(|s| s["state"].get("terminated")).collect();
        let policy = Self::restart_policy(pod);
        let init_failed = policy == "Never"
            && init_statuses
                .iter()
                .any(|s| s["state"]["terminated"]["exitCode"].as_i64().is_some_and(|c| c != 0));
        let phase = if init_failed {
            "Failed"
        } else if !statuses.is_empty() && terminated.len() == statuses.len() && policy != "Always" {
            if terminated.iter().all(|t| t["exitCode"] == 0) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if init_done
            && statuses
                .iter()
                .any(|s| s["state"].get("running").is_some() || s["restartCount"].as_u64() > Some(0))
        {
            "Running"
        } else {
            "Pending"
        };
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }});
            if let Some(r) = reason.filter(|_| !ok) {
                c["reason"] = json!(r);
            }
            c
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", self.sandbox.is_some(), None),
                cond("Initialized", init_done, Some("ContainersNotInitialized")),
                cond("Ready", all_ready, Some("ContainersNotReady")),
                cond("ContainersReady", all_ready, Some("ContainersNotReady")),
                cond("PodScheduled", true, None),
            ],
            "hostIP": self.agent.config.node_ip.to_string(),
            "hostIPs": [{"ip": self.agent.config.node_ip.to_string()}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        });
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if let Some(s) = &self.sandbox {
            status["podIP"] = json!(s.ip.to_string());
            status["podIPs"] = json!([{"ip": s.ip.to_string()}]);
        }
        if let Some(e) = &self.sandbox_error {
            status["message"] = json!(e);
        }
        // Unchanged here, and the API agrees on readiness (the node lifecycle controller
        // turns pods not Ready while the node is silent; once back, we say so again).
        if self.last_status.as_ref() == Some(&status) && api_ready(pod) == Some(all_ready) {
            return;
        }
        // Transition times: kept from what the API has when the status did not change.
        let mut with_times = status.clone();
        let now = super::shim::now_rfc3339();
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if let Some(conds) = with_times["conditions"].as_array_mut() {
            for c in conds {
                let same = previous.iter().find(|p| {
                    Some(p.type_.as_str()) == c["type"].as_str() && Some(p.status.as_str()) == c["status"].as_str()
                });
                c["lastTransitionTime"] = json!(
                    same.and_then(|p| p.last_transition_time.as_ref().map(|t| t.0.to_string()))
                        .unwrap_or_else(|| now.clone())
                );
            }
        }
        let (ns, name) = name_of(pod);
        let api: Api<Pod> = Api::namespaced(self.agent.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": with_times})),
            )
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "reporting pod status"),
        }
    }

    /// Graceful deletion: preStop hooks, SIGTERM, SIGKILL at the end of the grace period,
    /// then the sandbox goes and the delete is confirmed.
    async fn terminate(&mut self, pod: &Pod) {
        let (ns, name) = name_of(pod);
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let deadline = Instant::now() + Duration::from_secs(grace);
        let (inits, containers) = Self::containers(pod);
        let mut hooks = Vec::new();
        for c in inits.iter().chain(&containers) {
            let Some(attempt) = runtime::latest_attempt(&self.dir, &c.name) else {
                continue;
            };
            let RunState::Running { pid, .. } = runtime::state(&runtime::run_dir(&self.dir, &c.name, attempt)) else {
                continue;
            };
            events::pod(
                &self.agent,
                pod,
                "Normal",
                "Killing",
                &format!("Stopping container {}", c.name),
            );
            let pre_stop = c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone());
            let (agent, uid, cname) = (Arc::clone(&self.agent), self.uid.clone(), c.name.clone());
            hooks.push(tokio::spawn(async move {
                if let Some(argv) = pre_stop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    agent.exec_in(&uid, &cname, pid, argv, left).await;
                }
                cgroups::signal_all(&agent.cgroups.container(&uid, &cname), libc::SIGTERM);
            }));
        }
        for h in hooks {
            let _ = h.await;
        }
        let pod_cg = self.agent.cgroups.pod(&self.uid);
        while Instant::now() < deadline {
            let alive = pod_cg.all().iter().any(|d| !cgroup_tree_empty(d));
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.teardown(Some(pod)).await;
        let api: Api<Pod> = Api::namespaced(self.agent.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "confirming pod deletion"),
        }
    }

    /// Kills whatever is left and removes the sandbox, cgroups and state (logs stay until
    /// the pod object is gone, which is now).
    async fn teardown(&mut self, _pod: Option<&Pod>) {
        let uid = self.uid.clone();
        let cg = self.agent.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || cg.remove_pod(&uid)).await;
        network::delete_sandbox(&self.agent.netns_name(&self.uid)).await;
        self.agent.ipam.release(&self.uid);
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        self.agent.forget_logs(&self.uid);
    }
}

/// Whether the API has the pod Ready (None: no Ready condition yet).
fn api_ready(pod: &Pod) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

fn cgroup_tree_empty(dir: &std::path::Path) -> bool {
    if !cgroups::procs(dir).is_empty() {
        return false;
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .all(|e| cgroup_tree_empty(&e.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("250m", milli), Some(250));
        assert_eq!(quantity("2", milli), Some(2000));
        assert_eq!(quantity("0.5", milli), Some(500));
        assert_eq!(quantity("64Mi", units), Some(64 << 20));
        assert_eq!(quantity("1G", units), Some(1_000_000_000));
        assert_eq!(quantity("1000", units), Some(1000));
    }

    #[test]
    fn pod_limits_need_every_container_limited() {
        let c = |v: serde_json::Value| -> Container { serde_json::from_value(v).expect("c") };
        let a = c(json!({"name": "a", "resources": {"limits": {"memory": "10Mi", "cpu": "100m"}}}));
        let b = c(json!({"name": "b", "resources": {"limits": {"memory": "20Mi"}}}));
        let l = pod_limits(&[a.clone(), b]);
        assert_eq!(l.memory_bytes, Some(30 << 20));
        assert_eq!(l.cpu_millis, None, "b has no cpu limit, so the pod has none");
        assert_eq!(pod_limits(&[a]).cpu_millis, Some(100));
    }
}
