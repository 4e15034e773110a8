//! `rudder up`: a whole cluster on one machine. The control plane runs on the host; every
//! node is a network namespace on a shared underlay bridge with its own node agent; the
//! proxy runs on every node as the DaemonSet shipped for real clusters (the mode's
//! kustomize overlay under `proxy/deploy/overlays`, rendered), created through the API. A demo Deployment and its
//! Service prove that a ClusterIP reaches pods on every node from every node and a pod.
//!
//! Everything it makes is named from [`Layout`], so a second `rudder up` after a crash
//! finds and removes what the first left (processes through the cgroup tree that holds
//! them all, then namespaces, mounts, cgroups and directories).

pub mod demo;
pub mod dns;
mod etcd;
pub mod host;
mod join;
mod manifests;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::apiserver::pki::{self, Credential, Pki};

pub use host::teardown;

/// What `rudder up` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub mode: String,
    /// `embedded`, `etcd` (a three-member etcd on loopback and two API servers on it) or
    /// `etcd=<urls>`.
    pub store: String,
    pub data_dir: PathBuf,
    /// Exit after the proof instead of running until Ctrl-C (tests, benchmarks).
    pub exit_after_proof: bool,
    /// Cluster name: namespaces, cgroups and mounts are named after it.
    pub name: String,
    /// The underlay's /24 (the host gets .1, node k gets .(10+k)).
    pub underlay: Ipv4Addr,
    /// Skip the demo (tests that deploy their own workloads).
    pub demo: bool,
    /// The server's `--node-monitor-grace-period` (its default when None).
    pub node_monitor_grace_period: Option<String>,
    /// `rudder dns --upstream` (the node's resolv.conf when empty).
    pub dns_upstream: Vec<String>,
}

/// Every name and path one cluster uses.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    pub data_dir: PathBuf,
    pub underlay: Ipv4Addr,
}

impl Layout {
    pub fn underlay_netns(&self) -> String {
        format!("rdr-{}-net", self.name)
    }
    pub fn node_name(&self, k: usize) -> String {
        format!("n{k}")
    }
    pub fn node_netns(&self, k: usize) -> String {
        format!("rdr-{}-n{k}", self.name)
    }
    pub fn host_veth(&self) -> String {
        format!("rdr-{}", self.name).chars().take(15).collect()
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        let o = self.underlay.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }
    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        let o = self.underlay.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 10 + k as u8)
    }
    /// The cgroup (relative to each hierarchy's root) holding every process of the cluster.
    pub fn cgroup(&self) -> PathBuf {
        PathBuf::from("rudder").join(&self.name)
    }
    pub fn node_cgroup(&self, k: usize) -> PathBuf {
        self.cgroup().join(self.node_name(k))
    }
    /// Runtime state that must not outlive the machine (bpffs mounts).
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from("/run/rudder").join(&self.name)
    }
    pub fn node_bpffs(&self, k: usize) -> PathBuf {
        self.run_dir().join(self.node_name(k)).join("bpf")
    }
    pub fn logs(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn server_dir(&self) -> PathBuf {
        self.data_dir.join("server")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.server_dir().join("admin.kubeconfig")
    }
    pub fn api_url(&self) -> String {
        format!("https://{}:6443", self.host_ip())
    }
    /// The second API server of `--store etcd` (same store, same CA, its own port).
    pub fn second_server_dir(&self) -> PathBuf {
        self.data_dir.join("server-2")
    }
    pub fn second_kubeconfig(&self) -> PathBuf {
        self.second_server_dir().join("admin.kubeconfig")
    }
    pub const SECOND_API_PORT: u16 = 6444;
}

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Prints a step as it happens, with the time since start.
pub struct Progress {
    start: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self { start: Instant::now() }
    }
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
    pub fn step(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.start.elapsed().as_secs_f64());
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// The processes of a running cluster, stopped by [`Cluster::down`].
pub struct Cluster {
    pub layout: Layout,
    pub nodes: usize,
    children: Vec<(String, Child, PathBuf)>,
    /// How to start each node agent again (node index → command, netns, cgroup, log).
    agents: Vec<(usize, std::process::Command, PathBuf, PathBuf, PathBuf)>,
    /// API servers that may be restarted (those sharing an etcd: the other keeps the
    /// cluster running meanwhile): name → command, cgroup, log.
    servers: Vec<(String, std::process::Command, PathBuf, PathBuf)>,
}

impl Cluster {
    /// Fails naming the first component that exited, with its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, child, log) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited ({status}); its log is {}", log.display());
            }
        }
        Ok(())
    }

    /// Like a service manager: a node agent that exited is started again (its pods keep
    /// running meanwhile, and the new agent adopts them); anything else that exited is a
    /// failure.
    pub fn supervise(&mut self) -> Result<()> {
        for i in 0..self.children.len() {
            let (name, child, log) = &mut self.children[i];
            let Ok(Some(status)) = child.try_wait() else { continue };
            if let Some((_, cmd, cgroup, log_path)) = self.servers.iter_mut().find(|s| s.0 == *name) {
                println!(
                    "{name} exited ({status}); starting it again; it runs for the Leases like the other (log: {})",
                    log_path.display()
                );
                let new =
                    host::spawn_appending(cmd, None, cgroup, log_path).with_context(|| format!("restarting {name}"))?;
                self.children[i].1 = new;
                continue;
            }
            let Some(agent) = self.agents.iter_mut().find(|a| name.ends_with(&format!("n{}", a.0))) else {
                bail!("{name} exited ({status}); its log is {}", log.display());
            };
            println!("{name} exited ({status}); starting it again (log: {})", log.display());
            let (_, cmd, netns, cgroup, log_path) = agent;
            let previous = fs_err_tail(log_path);
            let new = host::spawn_appending(cmd, Some(netns), cgroup, log_path)
                .with_context(|| format!("restarting {name} (last log lines: {previous})"))?;
            self.children[i].1 = new;
        }
        Ok(())
    }

    pub fn down(mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        host::teardown(&self.layout);
    }
}

/// Brings the cluster up to the point where nodes are registered and the proxy is
/// deployed; returns the running cluster.
pub async fn start(opts: &Options, progress: &Progress) -> Result<(Cluster, kube::Client)> {
    let layout = Layout {
        name: opts.name.clone(),
        data_dir: opts.data_dir.clone(),
        underlay: opts.underlay,
    };
    if unsafe { libc::geteuid() } != 0 {
        bail!("rudder up needs root: it creates network namespaces, cgroups and loads eBPF programs");
    }
    host::teardown(&layout);
    std::fs::create_dir_all(layout.logs()).context("creating the log directory")?;
    let exe = std::env::current_exe().context("finding the rudder binary")?;
    let proxy = exe.with_file_name("rudder-proxy");
    if !proxy.exists() {
        bail!(
            "{} not found: build it first (cargo build -p rudder-proxy)",
            proxy.display()
        );
    }
    let cgroups = host::cgroups(&layout).context("setting up the cluster's cgroups")?;
    host::underlay(&layout, opts.nodes).context("creating the underlay network")?;
    progress.step(&format!(
        "underlay {}/24 with {} node namespaces",
        layout.underlay, opts.nodes
    ));

    let mut children = Vec::new();
    let mut store_args: Vec<String> = Vec::new();
    let two_servers = opts.store == "etcd";
    match opts.store.split_once('=') {
        Some(("etcd", urls)) => {
            store_args.extend(["--store".into(), "etcd".into(), "--etcd-servers".into(), urls.into()])
        }
        None if two_servers => {
            let (members, urls) = etcd::start(&layout, &cgroups.join("control"))
                .await
                .context("starting the etcd cluster")?;
            children.extend(members);
            progress.step(&format!(
                "etcd: {} members on {} (logs: {}/etcd-*.log)",
                etcd::MEMBERS,
                urls.join(","),
                layout.logs().display()
            ));
            store_args.extend(["--store".into(), "etcd".into(), "--etcd-servers".into(), urls.join(",")]);
        }
        _ if opts.store == "embedded" => {}
        _ => bail!("--store {:?}: want embedded, etcd or etcd=<urls>", opts.store),
    }
    let server_log = layout.logs().join("server.log");
    let server_command = |dir: &Path, port: u16| {
        let mut server = std::process::Command::new(&exe);
        server
            .arg("server")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("{}:{port}", layout.host_ip()))
            .arg("--tls-san")
            .arg(layout.host_ip().to_string())
            .arg("--service-cluster-ip-range")
            .arg(SERVICE_CIDR)
            .arg("--cluster-cidr")
            .arg(CLUSTER_CIDR)
            .args(&store_args);
        if let Some(grace) = &opts.node_monitor_grace_period {
            server.arg("--node-monitor-grace-period").arg(grace);
        }
        server
    };
    let mut server = server_command(&layout.server_dir(), 6443);
    let child =
        host::spawn(&mut server, None, &cgroups.join("control"), &server_log).context("starting rudder server")?;
    children.push(("the API server".to_owned(), child, server_log.clone()));
    let mut cluster = Cluster {
        layout: layout.clone(),
        nodes: opts.nodes,
        children,
        agents: Vec::new(),
        servers: Vec::new(),
    };
    if two_servers {
        cluster.servers.push((
            "the API server".into(),
            server,
            cgroups.join("control"),
            server_log.clone(),
        ));
    }
    let client = wait_for_api(&mut cluster, &layout.kubeconfig(), &server_log).await?;
    progress.step(&format!(
        "API server, scheduler and controllers on {} (log: {})",
        layout.api_url(),
        server_log.display()
    ));
    if two_servers {
        // The same CA and service-account keys, so every client and token works with both.
        copy_dir(
            &layout.server_dir().join("pki"),
            &layout.second_server_dir().join("pki"),
        )
        .context("sharing the CA with the second API server")?;
        let log = layout.logs().join("server-2.log");
        let mut second = server_command(&layout.second_server_dir(), Layout::SECOND_API_PORT);
        let child =
            host::spawn(&mut second, None, &cgroups.join("control"), &log).context("starting the second API server")?;
        cluster
            .children
            .push(("the second API server".to_owned(), child, log.clone()));
        cluster.servers.push((
            "the second API server".into(),
            second,
            cgroups.join("control"),
            log.clone(),
        ));
        wait_for_api(&mut cluster, &layout.second_kubeconfig(), &log).await?;
        progress.step(&format!(
            "second API server on https://{}:{} on the same etcd; the scheduler and controllers \
             run on whichever holds the Leases kube-system/kube-scheduler and kube-controller-manager \
             (log: {})",
            layout.host_ip(),
            Layout::SECOND_API_PORT,
            log.display()
        ));
    }

    let pki = Pki::load_or_create(&layout.server_dir().join("pki"), &[layout.host_ip().to_string()])
        .context("reading the cluster's CA")?;
    let bootstrap_token = join::create_bootstrap_token(&client).await?;
    for k in 1..=opts.nodes {
        let node = layout.node_name(k);
        // The agent writes `kubeconfig` itself, with the certificate its CSR is signed
        // with; a cluster started again reuses a certificate that is still valid.
        let kubeconfig = layout.data_dir.join("nodes").join(&node).join("kubeconfig");
        let bootstrap_kubeconfig = kubeconfig.with_file_name("bootstrap-kubeconfig");
        std::fs::create_dir_all(kubeconfig.parent().unwrap_or(Path::new("/")))?;
        pki::write_kubeconfig(
            &bootstrap_kubeconfig,
            &layout.api_url(),
            pki.ca_pem(),
            "rudder",
            "kubelet-bootstrap",
            Credential::Token(bootstrap_token.clone()),
        )
        .context("writing a bootstrap kubeconfig")?;
        // The agent's HTTPS port (logs) serves a CA-issued certificate for the node IP,
        // so the API server can verify it.
        let (serving_cert, serving_key) = pki
            .issue_serving_cert(&node, &[layout.node_ip(k).to_string(), node.clone()])
            .context("issuing a node serving certificate")?;
        let node_dir = kubeconfig.parent().unwrap_or(Path::new("/")).to_path_buf();
        std::fs::write(node_dir.join("serving.crt"), serving_cert)?;
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(node_dir.join("serving.key"))?;
            std::io::Write::write_all(&mut f, serving_key.as_bytes())?;
        }
        let bpffs = layout.node_bpffs(k);
        host::mount_bpffs(&bpffs).with_context(|| format!("mounting a bpffs at {}", bpffs.display()))?;
        let node_cgroup_v2 = crate::node::cgroups::cgroup2_root()?.join(layout.node_cgroup(k));
        // The DaemonSet mounts the host's /lib/modules as kube-proxy's does; a machine
        // without one (a container) gives the simulated nodes an empty directory.
        let mut host_paths = format!(
            "/sys/fs/bpf={},/sys/fs/cgroup={}",
            bpffs.display(),
            node_cgroup_v2.display()
        );
        if !Path::new("/lib/modules").exists() {
            let empty = layout.run_dir().join(&node).join("lib-modules");
            std::fs::create_dir_all(&empty).with_context(|| format!("creating {}", empty.display()))?;
            host_paths.push_str(&format!(",/lib/modules={}", empty.display()));
        }
        let log = layout.logs().join(format!("node-{node}.log"));
        let mut agent = std::process::Command::new(&exe);
        agent
            .arg("node")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--bootstrap-kubeconfig")
            .arg(&bootstrap_kubeconfig)
            .arg("--node-name")
            .arg(&node)
            .arg("--node-ip")
            .arg(layout.node_ip(k).to_string())
            .arg("--root-dir")
            .arg(layout.data_dir.join("nodes").join(&node))
            .arg("--cgroup-parent")
            .arg(layout.node_cgroup(k))
            .arg("--netns-prefix")
            .arg(format!("rdr-{}-{node}-", layout.name))
            .arg("--host-path-map")
            .arg(&host_paths)
            .arg("--command-map")
            .arg(format!(
                "/usr/local/bin/rudder-proxy={},{}={}",
                proxy.display(),
                dns::DNS_COMMAND,
                exe.display()
            ))
            .arg("--cluster-dns")
            .arg(dns::cluster_dns_ip()?.to_string())
            .arg("--tls-cert-file")
            .arg(node_dir.join("serving.crt"))
            .arg("--tls-private-key-file")
            .arg(node_dir.join("serving.key"));
        if let Some(seconds) = lease_seconds(opts.node_monitor_grace_period.as_deref())? {
            agent.arg("--node-lease-duration-seconds").arg(seconds.to_string());
        }
        let netns = PathBuf::from("/run/netns").join(layout.node_netns(k));
        let agent_cgroup = cgroups.join(layout.node_name(k)).join("agent");
        let child = host::spawn(&mut agent, Some(&netns), &agent_cgroup, &log)
            .with_context(|| format!("starting the node agent of {node}"))?;
        cluster
            .children
            .push((format!("the node agent of {node}"), child, log.clone()));
        cluster.agents.push((k, agent, netns, agent_cgroup, log));
    }
    demo::wait_nodes_ready(&mut cluster, &client, opts.nodes).await?;
    progress.step(&format!(
        "{} nodes Ready with pod CIDRs from {CLUSTER_CIDR} (logs: {}/node-*.log)",
        opts.nodes,
        layout.logs().display()
    ));

    manifests::deploy_proxy(&client, &opts.mode, &layout)
        .await
        .context("deploying rudder-proxy")?;
    demo::wait_daemonset(&mut cluster, &client, opts.nodes).await?;
    apply_default_storage_class(&client).await?;
    progress.step(&format!(
        "rudder-proxy running on every node as a DaemonSet ({} mode)",
        opts.mode
    ));
    dns::deploy(&client, &layout.api_url(), &opts.dns_upstream)
        .await
        .context("deploying cluster DNS")?;
    demo::wait_dns(&mut cluster, &client).await?;
    progress.step(&format!(
        "cluster DNS (rudder-dns) ready behind Service kube-system/kube-dns at {}",
        dns::cluster_dns_ip()?
    ));
    Ok((cluster, client))
}

/// The cluster's default StorageClass, `local-path` (server-side applied, so a restart of
/// `rudder up` on the same data leaves it as it is).
pub async fn apply_default_storage_class(client: &kube::Client) -> Result<()> {
    manifests::apply(client, &crate::controllers::volume::local_path::default_class())
        .await
        .context("creating the default StorageClass")
}

/// `rudder up` itself: start, deploy the demo, prove it, then wait for Ctrl-C.
pub async fn up(opts: Options) -> Result<()> {
    let progress = Progress::new();
    let (mut cluster, client) = match start(&opts, &progress).await {
        Ok(c) => c,
        Err(e) => {
            let layout = Layout {
                name: opts.name.clone(),
                data_dir: opts.data_dir.clone(),
                underlay: opts.underlay,
            };
            eprintln!("rudder up failed: {e:#}");
            eprintln!("logs are in {}", layout.logs().display());
            host::teardown(&layout);
            return Err(e);
        }
    };
    let result = async {
        if opts.demo {
            demo::deploy(&client).await?;
            let proof = demo::prove(&mut cluster, &client).await?;
            println!(
                "[{:>5.1}s] Service web ({}) answers from every node and from a pod: backends {} on {}; \
                 the pod resolves web.default.svc.cluster.local to {}",
                progress.elapsed().as_secs_f64(),
                proof.cluster_ip,
                proof.backends.join(", "),
                proof.nodes.join(", "),
                proof.resolved,
            );
        }
        println!(
            "kubeconfig: {}   (kubectl --kubeconfig {} get pods -A -o wide)",
            cluster.layout.kubeconfig().display(),
            cluster.layout.kubeconfig().display()
        );
        if opts.exit_after_proof {
            return Ok(());
        }
        println!("running; Ctrl-C tears everything down");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => cluster.supervise()?,
            }
        }
    }
    .await;
    if let Err(e) = &result {
        eprintln!("rudder up: {e:#}");
    }
    println!("tearing down");
    cluster.down();
    result
}

async fn wait_for_api(cluster: &mut Cluster, kubeconfig: &Path, log: &Path) -> Result<kube::Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        cluster.check_alive()?;
        if kubeconfig.exists()
            && let Ok(kc) = kube::config::Kubeconfig::read_from(kubeconfig)
            && let Ok(config) = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
            && let Ok(client) = kube::Client::try_from(config)
            && client.apiserver_version().await.is_ok()
        {
            return Ok(client);
        }
        if Instant::now() > deadline {
            bail!(
                "the API server did not answer within 30 s; its log is {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies the files of `from` (not its subdirectories) into `to`, keeping their modes.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn fs_err_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// A shorter `--node-monitor-grace-period` than the kubelet's 40 s lease needs agents that
/// renew within it: the lease lasts the grace period, renewed every quarter of it (the
/// kubelet's ratio), or a healthy node would be marked Unknown between renewals.
fn lease_seconds(grace: Option<&str>) -> Result<Option<u64>> {
    let Some(grace) = grace else { return Ok(None) };
    let d: jiff::SignedDuration = grace
        .parse()
        .with_context(|| format!("--node-monitor-grace-period {grace:?}: not a duration like 40s"))?;
    let seconds = u64::try_from(d.as_secs()).unwrap_or(0).max(1);
    Ok((seconds < u64::from(crate::node::registration::LEASE_DURATION_SECONDS)).then_some(seconds))
}
