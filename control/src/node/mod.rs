//! `rudder node`: the node agent, the kubelet's job with a process runtime (a container is
//! a process; there is no image). It registers its Node and renews its Lease, routes the
//! other nodes' pod CIDRs to them, and runs one [`pod_worker`] per pod bound to it.
//!
//! Layers: watchers (its own pods by `spec.nodeName`, all Nodes for routes) → one task per
//! pod, fed the newest object through a `watch` channel → sandbox (`network`, `cgroups`)
//! and container runs (`runtime`, started through a per-container `shim` process, so
//! containers and their logs survive an agent restart). It talks only to the API server,
//! as `system:node:<name>`.

pub mod attach;
pub mod bootstrap;
pub mod cgroups;
pub mod container_env;
pub mod events;
pub mod expand;
pub mod log_server;
pub mod network;
pub mod pod_worker;
pub mod probe;
pub mod registration;
pub mod resolv;
pub mod runtime;
pub mod shim;
pub mod streaming;
pub mod volumes;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceAccount};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::watch;

use self::{cgroups::Cgroups, network::Cidr, pod_worker::PodWorker, probe::Outcome};

/// How a node agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// The node's InternalIP: pods of other nodes are routed here.
    pub node_ip: Ipv4Addr,
    /// State (pods, addresses) and logs.
    pub root_dir: PathBuf,
    /// The node's cgroup, relative to each hierarchy's root (e.g. `rudder/n1`).
    pub cgroup_parent: PathBuf,
    /// Pod network namespaces are `<prefix><uid>`.
    pub netns_prefix: String,
    /// hostPath prefixes served from other directories (simulated nodes).
    pub host_path_map: Vec<(PathBuf, PathBuf)>,
    /// Commands (a container's first argument) run from another host path: the process
    /// runtime's stand-in for an image's contents (e.g. `/usr/local/bin/rudder-proxy`
    /// from the build directory).
    pub command_map: Vec<(String, PathBuf)>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub max_pods: u32,
    /// The HTTPS port of the log server (`log_server`), bound on `node_ip`.
    pub port: u16,
    /// The log server's certificate and key (PEM), issued by the cluster CA for
    /// `node_ip`; `None` makes a self-signed one, which the API server will not trust.
    pub serving_cert: Option<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub cluster_domain: String,
    pub cluster_dns: Option<String>,
    /// The Lease's `leaseDurationSeconds`; it is renewed every quarter of it, as the
    /// kubelet does. A control plane with a shorter `--node-monitor-grace-period` than the
    /// default needs agents that renew within it.
    pub lease_duration: std::time::Duration,
}

/// What every pod worker shares.
pub struct Agent {
    pub config: Config,
    pub client: Client,
    pub cgroups: Cgroups,
    pub ipam: network::Ipam,
    pod_cidr: watch::Receiver<Option<Cidr>>,
    ca_pem: Vec<u8>,
    service_env: tokio::sync::OnceCell<Vec<(String, String)>>,
    logs: Mutex<HashMap<String, PathBuf>>,
}

impl Agent {
    pub fn pod_cidr(&self) -> Option<Cidr> {
        *self.pod_cidr.borrow()
    }

    pub fn netns_name(&self, uid: &str) -> String {
        let short: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        format!("{}{short}", self.config.netns_prefix)
    }

    /// `<root>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`, as the kubelet lays out
    /// `/var/log/pods`.
    pub fn log_path(&self, ns: &str, pod: &str, uid: &str, container: &str, attempt: u32) -> PathBuf {
        let dir = self.config.root_dir.join("logs").join(format!("{ns}_{pod}_{uid}"));
        if let Ok(mut l) = self.logs.lock() {
            l.insert(uid.to_owned(), dir.clone());
        }
        dir.join(container).join(format!("{attempt}.log"))
    }

    pub fn forget_logs(&self, uid: &str) {
        let dir = self.logs.lock().ok().and_then(|mut l| l.remove(uid));
        if let Some(d) = dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// `KUBERNETES_SERVICE_HOST`/`_PORT` (and the docker-link style variables in-cluster
    /// clients read), from the `kubernetes` Service.
    pub async fn service_env(&self) -> Vec<(String, String)> {
        self.service_env
            .get_or_init(|| async {
                let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
                let Ok(svc) = api.get("kubernetes").await else {
                    return Vec::new();
                };
                let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
                let port = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .and_then(|p| p.first())
                    .map_or(443, |p| p.port);
                vec![
                    ("KUBERNETES_SERVICE_HOST".into(), ip.clone()),
                    ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
                    ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
                    ("KUBERNETES_PORT".into(), format!("tcp://{ip}:{port}")),
                    (format!("KUBERNETES_PORT_{port}_TCP"), format!("tcp://{ip}:{port}")),
                    (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
                    (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
                    (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip),
                ]
            })
            .await
            .clone()
    }

    /// The ServiceAccount directory's files (a token from the TokenRequest API, the CA,
    /// the namespace), unless the pod or its ServiceAccount opts out.
    pub async fn service_account_files(&self, pod: &Pod) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let spec = pod.spec.clone().unwrap_or_default();
        if spec.automount_service_account_token == Some(false) {
            return Ok(None);
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let sa_name = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let sa = match api.get_opt(&sa_name).await {
            Ok(Some(sa)) => sa,
            // Without a ServiceAccount there is nothing to authenticate as: the pod runs
            // without the token (as with automountServiceAccountToken: false).
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("reading serviceaccount {ns}/{sa_name}: {e}")),
        };
        if sa.automount_service_account_token == Some(false) && spec.automount_service_account_token.is_none() {
            return Ok(None);
        }
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 3607,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid}},
        });
        let token: serde_json::Value = api
            .create_subresource("token", &sa_name, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("requesting a token for serviceaccount {ns}/{sa_name}: {e}"))?;
        let token = token["status"]["token"]
            .as_str()
            .ok_or("TokenRequest returned no token")?
            .to_owned();
        Ok(Some(BTreeMap::from([
            ("token".to_owned(), token.into_bytes()),
            ("ca.crt".to_owned(), self.ca_pem.clone()),
            ("namespace".to_owned(), ns.into_bytes()),
        ])))
    }

    /// Runs `argv` inside a running container (its network, mount and UTS namespaces and
    /// its cgroup), for exec probes and preStop hooks.
    pub async fn exec_in(&self, uid: &str, container: &str, pid: i32, argv: Vec<String>, timeout: Duration) -> Outcome {
        let Some(program) = argv.first().cloned() else {
            return Outcome::Failure("empty exec command".into());
        };
        let mut fds = Vec::new();
        for ns in ["net", "uts", "mnt"] {
            match std::fs::File::open(format!("/proc/{pid}/ns/{ns}")) {
                Ok(f) => fds.push((f, ns)),
                Err(e) => return Outcome::Failure(format!("entering container {container}: {e}")),
            }
        }
        let procs: Vec<std::fs::File> = self
            .cgroups
            .container(uid, container)
            .all()
            .iter()
            .filter_map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .ok()
            })
            .collect();
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                for f in &procs {
                    libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
                }
                for (f, ns) in &fds {
                    let flag = match *ns {
                        "net" => libc::CLONE_NEWNET,
                        "uts" => libc::CLONE_NEWUTS,
                        _ => libc::CLONE_NEWNS,
                    };
                    if libc::setns(f.as_raw_fd(), flag) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        match tokio::time::timeout(timeout, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => Outcome::Success,
            Ok(Ok(out)) => Outcome::Failure(format!(
                "command {argv:?} exited with {}: {}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Ok(Err(e)) => Outcome::Failure(format!("exec {program}: {e}")),
            Err(_) => Outcome::Failure(format!("command timed out after {}s", timeout.as_secs())),
        }
    }
}

/// Moves this process into `dirs` (every hierarchy).
fn join_cgroup(dirs: &cgroups::Dirs) {
    for d in dirs.all() {
        if let Err(e) = std::fs::write(d.join("cgroup.procs"), std::process::id().to_string()) {
            tracing::warn!(path = %d.display(), error = %e, "moving the agent into its cgroup");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cgroups: {0}")]
    Cgroups(#[from] cgroups::CgroupError),
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the agent until `shutdown`. Containers keep running when it stops: a restarted
/// agent adopts them.
pub async fn run(
    client: Client,
    config: Config,
    ca_pem: Vec<u8>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let cgroups = Cgroups::open(&config.cgroup_parent)?;
    join_cgroup(&cgroups.agent());
    std::fs::create_dir_all(config.root_dir.join("pods")).ok();
    let node = registration::register(&client, &config, config.node_ip)
        .await
        .map_err(|source| AgentError::Register {
            node: config.node_name.clone(),
            source,
        })?;
    let lease = tokio::spawn(registration::renew_lease(
        client.clone(),
        config.clone(),
        config.node_ip,
    ));
    let initial_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| Cidr::parse(c).ok());
    let (cidr_tx, cidr_rx) = watch::channel(initial_cidr);
    let (stop_logs, logs_stopped) = tokio::sync::oneshot::channel::<()>();
    let log_server = {
        let (config, ca_pem) = (config.clone(), ca_pem.clone());
        tokio::spawn(async move {
            let stopped = async {
                let _ = logs_stopped.await;
            };
            if let Err(e) = log_server::run(&config, &ca_pem, stopped).await {
                tracing::error!(error = %e, "the log server is not running: kubectl logs will fail for this node");
            }
        })
    };
    if let Some(c) = initial_cidr
        && let Err(e) = network::ensure_bridge(c).await
    {
        tracing::warn!(error = %e, "setting up the pod bridge");
    }
    let agent = Arc::new(Agent {
        ipam: network::Ipam::new(config.root_dir.join("ipam")),
        config,
        client: client.clone(),
        cgroups,
        pod_cidr: cidr_rx,
        ca_pem,
        service_env: tokio::sync::OnceCell::new(),
        logs: Mutex::new(HashMap::new()),
    });
    tracing::info!(node = %agent.config.node_name, ip = %agent.config.node_ip, "node agent running");
    let nodes = tokio::spawn(watch_nodes(Arc::clone(&agent), cidr_tx));
    let pods = tokio::spawn(watch_pods(Arc::clone(&agent)));
    shutdown.await;
    let _ = stop_logs.send(());
    log_server.abort();
    lease.abort();
    nodes.abort();
    pods.abort();
    Ok(())
}

/// Routes to other nodes' pod CIDRs, and this node's own podCIDR (the bridge).
async fn watch_nodes(agent: Arc<Agent>, cidr_tx: watch::Sender<Option<Cidr>>) {
    let api: Api<Node> = Api::all(agent.client.clone());
    let mut routes = BTreeMap::new();
    let mut store: BTreeMap<String, Node> = BTreeMap::new();
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                store.insert(n.metadata.name.clone().unwrap_or_default(), n);
            }
            Ok(watcher::Event::Delete(n)) => {
                store.remove(&n.metadata.name.clone().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => store.clear(),
            Ok(watcher::Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching nodes");
                continue;
            }
        }
        let mut want = BTreeMap::new();
        for (name, n) in &store {
            let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            if name == &agent.config.node_name {
                let parsed = cidr.as_deref().and_then(|c| Cidr::parse(c).ok());
                if parsed.is_some() && parsed != *cidr_tx.borrow() {
                    if let Some(c) = parsed {
                        match network::ensure_bridge(c).await {
                            Ok(()) => tracing::info!(cidr = %c, "pod bridge ready"),
                            Err(e) => tracing::warn!(error = %e, "setting up the pod bridge"),
                        }
                    }
                    let _ = cidr_tx.send(parsed);
                }
                continue;
            }
            let ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
            if let (Some(c), Some(ip)) = (cidr, ip) {
                want.insert(c, ip);
            }
        }
        network::sync_routes(&want, &mut routes).await;
    }
}

/// One worker per pod bound here; pods found on disk but gone from the API are torn down.
async fn watch_pods(agent: Arc<Agent>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let selector = format!("spec.nodeName={}", agent.config.node_name);
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut seen_in_init: Vec<String> = Vec::new();
    let mut stream = watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watching pods");
                continue;
            }
        };
        match event {
            watcher::Event::Init => seen_in_init.clear(),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                let Some(uid) = p.metadata.uid.clone() else { continue };
                seen_in_init.push(uid.clone());
                let finished = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
                    && p.metadata.deletion_timestamp.is_none();
                match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(p));
                    }
                    None if finished && !agent.config.root_dir.join("pods").join(&uid).exists() => {}
                    None => {
                        let (tx, rx) = watch::channel(Some(p));
                        workers.insert(uid.clone(), tx);
                        let worker = PodWorker::new(Arc::clone(&agent), uid);
                        tokio::spawn(worker.run(rx));
                    }
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(tx) = p.metadata.uid.as_ref().and_then(|u| workers.remove(u)) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                // Pods this node ran that the API no longer has: tear them down.
                let gone: Vec<String> = workers.keys().filter(|u| !seen_in_init.contains(u)).cloned().collect();
                for uid in gone {
                    if let Some(tx) = workers.remove(&uid) {
                        let _ = tx.send(None);
                    }
                }
                let on_disk = std::fs::read_dir(agent.config.root_dir.join("pods"))
                    .into_iter()
                    .flatten()
                    .flatten();
                for e in on_disk {
                    let uid = e.file_name().to_string_lossy().into_owned();
                    if !workers.contains_key(&uid) {
                        tracing::info!(%uid, "tearing down a pod the API no longer has");
                        let (tx, rx) = watch::channel(None);
                        drop(tx);
                        tokio::spawn(PodWorker::new(Arc::clone(&agent), uid).run(rx));
                    }
                }
            }
        }
    }
}
