//! `rudder`: the control plane and the local cluster.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rudder_control::{
    apiserver::{Config, allocator, launch, pki},
    store::{Store, embedded::EmbeddedStore, etcd::EtcdStore},
};

#[derive(Parser)]
#[command(name = "rudder", version, about = "Rudder's control plane and local cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes-compatible API server.
    Server(ServerArgs),
    /// Run the controllers (EndpointSlices and Endpoints, DaemonSets, garbage collection,
    /// node IPAM) against an API server.
    ControllerManager {
        /// Credentials for the API server (the admin kubeconfig `rudder server` writes).
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        controllers: ControllerArgs,
        #[command(flatten)]
        leader_election: LeaderElectArgs,
        /// The Lease's name.
        #[arg(long, default_value = "kube-controller-manager")]
        leader_elect_resource_name: String,
        /// The Lease's namespace.
        #[arg(long, default_value = "kube-system")]
        leader_elect_resource_namespace: String,
    },
    /// Start a local cluster: control plane, N nodes with their agents, rudder-proxy as a
    /// DaemonSet, and a demo Service that answers from every node.
    Up(UpArgs),
    /// Run a node agent (the kubelet's job, with processes for containers).
    Node(NodeArgs),
    /// (internal) The per-container shim the node agent starts.
    #[command(hide = true)]
    NodeShim { state_dir: PathBuf },
    /// Run the scheduler (binds pending Pods to Nodes) against an API server.
    Scheduler {
        /// Credentials for the API server (the admin kubeconfig `rudder server` writes, or
        /// one for the user `system:kube-scheduler`).
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Schedule the Pods whose `spec.schedulerName` is this.
        #[arg(long, default_value = rudder_control::scheduler::DEFAULT_SCHEDULER_NAME)]
        scheduler_name: String,
        #[command(flatten)]
        leader_election: LeaderElectArgs,
        /// The Lease's name.
        #[arg(long, default_value = "kube-scheduler")]
        leader_elect_resource_name: String,
        /// The Lease's namespace.
        #[arg(long, default_value = "kube-system")]
        leader_elect_resource_namespace: String,
    },
    /// Run the cluster DNS server (CoreDNS's job): the cluster domain from Services,
    /// EndpointSlices and Pods, other names forwarded upstream.
    Dns(DnsArgs),
    /// Save or restore a snapshot of the embedded store (like `etcdctl snapshot`).
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreKind {
    /// A durable database file in --data-dir (redb).
    Embedded,
    /// A real etcd cluster (--etcd-servers).
    Etcd,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where certificates, the admin kubeconfig and the embedded database live.
    #[arg(long, default_value = "/var/lib/rudder")]
    data_dir: PathBuf,
    /// Address and port of the secure port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The range ClusterIPs come from (kube-apiserver's --service-cluster-ip-range): one
    /// CIDR, or an IPv4 and an IPv6 one, comma separated, for dual-stack Services (the
    /// first is the primary family).
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cluster_ip_range: String,
    /// NodePort range, as FIRST-LAST.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    #[arg(long, value_enum, default_value = "embedded")]
    store: StoreKind,
    /// etcd client URLs, comma separated (with --store etcd).
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Extra key prefix in etcd, so several clusters can share one (keys already start
    /// with /registry/).
    #[arg(long, default_value = "")]
    etcd_prefix: String,
    /// Static bearer tokens, in kube-apiserver's token CSV format.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Extra names or IPs for the serving certificate.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Also run the controllers in this process (as API clients, through the admin
    /// kubeconfig), as a single-binary cluster does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    controllers: bool,
    /// Also run the scheduler in this process (as an API client, with a certificate for
    /// the user system:kube-scheduler written to DIR/scheduler.kubeconfig).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scheduler: bool,
    /// Seconds between compactions of the store's history (0: never).
    #[arg(long, default_value_t = 300)]
    compaction_interval: u64,
    /// Seconds between watch bookmarks for clients that ask for them.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
    /// Admission plugins to run besides the default ones, comma separated (all of ours
    /// are on by default: NamespaceLifecycle, LimitRanger, ServiceAccount, NodeRestriction,
    /// DefaultTolerationSeconds).
    #[arg(long, value_delimiter = ',')]
    enable_admission_plugins: Vec<String>,
    /// Admission plugins to turn off, comma separated.
    #[arg(long, value_delimiter = ',')]
    disable_admission_plugins: Vec<String>,
    /// How long pods tolerate a not-ready node by default (DefaultTolerationSeconds).
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: u64,
    /// How long pods tolerate an unreachable node by default (DefaultTolerationSeconds).
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: u64,
    #[command(flatten)]
    controller_args: ControllerArgs,
    /// The embedded scheduler and controllers take the Leases `kube-system/kube-scheduler`
    /// and `kube-system/kube-controller-manager`, so a second server on the same etcd
    /// stands by for them.
    #[command(flatten)]
    leader_election: LeaderElectArgs,
}

/// Leader election, with kube-scheduler's and kube-controller-manager's flags.
#[derive(clap::Args, Clone)]
struct LeaderElectArgs {
    /// Act only while holding a Lease, so that of several copies one acts and the others
    /// stand by.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a standby waits, from the last change of the Lease it saw, before taking
    /// over (Go duration syntax: 15s, 1m).
    #[arg(long, default_value = "15s", value_parser = rudder_control::leaderelection::parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    #[arg(long, default_value = "10s", value_parser = rudder_control::leaderelection::parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often to try to acquire or renew the Lease.
    #[arg(long, default_value = "2s", value_parser = rudder_control::leaderelection::parse_duration)]
    leader_elect_retry_period: Duration,
}

impl LeaderElectArgs {
    /// `None`: no election (--leader-elect=false).
    fn config(&self, namespace: &str, name: &str) -> Result<Option<rudder_control::leaderelection::Config>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let mut config = rudder_control::leaderelection::Config::new(name);
        config.namespace = namespace.into();
        config.lease_duration = self.leader_elect_lease_duration;
        config.renew_deadline = self.leader_elect_renew_deadline;
        config.retry_period = self.leader_elect_retry_period;
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(config))
    }
}

/// Runs a standalone component's work, elected when configured. Losing the lease ends the
/// process, as upstream's components do (their state is rebuilt from the API by whichever
/// copy leads next).
async fn run_standalone(
    client: kube::Client,
    election: Option<rudder_control::leaderelection::Config>,
    work: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let Some(election) = election else {
        tokio::select! {
            () = work => {}
            () = shutdown => {}
        }
        return Ok(());
    };
    match rudder_control::leaderelection::lead(client, &election, shutdown, work).await {
        rudder_control::leaderelection::Ended::LostLease => bail!(
            "leaderelection lost: the Lease {}/{} was not renewed within {:?}",
            election.namespace,
            election.name,
            election.renew_deadline
        ),
        _ => Ok(()),
    }
}

/// Options of the controllers, for `rudder server` and `rudder controller-manager`.
#[derive(clap::Args)]
struct ControllerArgs {
    /// The Pod range to give every Node a block of (`spec.podCIDR`); without it Node IPAM
    /// does not run (kube-controller-manager's --allocate-node-cidrs). IPv4 only.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Prefix length of each Node's block.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node may stop renewing its Lease before it is marked `Unknown`, tainted
    /// unreachable and its pods not ready (kube-controller-manager's flag), e.g. `40s`.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
}

/// A duration as `40s`, `1m30s` or `500ms` (a Go duration's common forms).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 40s or 1m30s: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?}: must not be negative"))
}

impl ControllerArgs {
    fn config(&self) -> Result<rudder_control::controllers::Config> {
        let node_ipam = match &self.cluster_cidr {
            None => None,
            Some(cidr) => {
                let cidr: ipnet::Ipv4Net = cidr.parse().map_err(|_| {
                    anyhow::anyhow!("--cluster-cidr: {cidr:?} is not an IPv4 CIDR (node IPAM is IPv4 only)")
                })?;
                let range = rudder_control::controllers::nodeipam::RangeAllocator::new(cidr, self.node_cidr_mask_size)?;
                Some(rudder_control::controllers::nodeipam::Config { range })
            }
        };
        if self.node_monitor_grace_period.is_zero() {
            bail!("--node-monitor-grace-period: must be more than 0");
        }
        Ok(rudder_control::controllers::Config {
            node_ipam,
            node_lifecycle: rudder_control::controllers::nodelifecycle::Config::with_grace_period(
                self.node_monitor_grace_period,
            ),
            ..Default::default()
        })
    }
}

#[derive(clap::Args)]
struct UpArgs {
    /// Nodes (network namespaces, each with its own agent).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The proxy's mode on every node.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "nftables", "iptables", "ipvs"])]
    mode: String,
    /// `embedded`; `etcd` for a three-member etcd on loopback with two API servers on it
    /// (one runs the scheduler and controllers, the other stands by); or `etcd=<url>,...`
    /// for an etcd of your own.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Where state and logs go (wiped at start and on teardown, except the logs).
    #[arg(long, default_value = "/var/lib/rudder/up")]
    data_dir: PathBuf,
    /// Cluster name (namespace, cgroup and mount names derive from it).
    #[arg(long, default_value = "up")]
    name: String,
    /// The underlay network's /24, given by its first address.
    #[arg(long, default_value = "10.250.0.0")]
    underlay: std::net::Ipv4Addr,
    /// Tear down and exit once the demo answers (for benchmarks and tests).
    #[arg(long)]
    exit_after_proof: bool,
    /// Do not deploy the demo Deployment and Service.
    #[arg(long)]
    no_demo: bool,
    /// Passed to the API server's embedded controllers (default 40s).
    #[arg(long)]
    node_monitor_grace_period: Option<String>,
    /// Resolvers the cluster DNS forwards other names to, IP or IP:PORT, comma separated
    /// (reachable from the nodes; the host is the underlay's .1). Default: each node's
    /// /etc/resolv.conf.
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Credentials for the API server: a kubeconfig for `system:node:<name>`.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Credentials (usually a bootstrap token) to ask for a node certificate with when
    /// --kubeconfig has no valid one; --kubeconfig is then written (TLS bootstrapping).
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// The Node's name (kubelet's --hostname-override).
    #[arg(long)]
    node_name: String,
    /// The node's InternalIP (kubelet's --node-ip).
    #[arg(long)]
    node_ip: std::net::Ipv4Addr,
    /// Pods' state and logs (kubelet's --root-dir).
    #[arg(long, default_value = "/var/lib/rudder/node")]
    root_dir: PathBuf,
    /// The node's cgroup, relative to each hierarchy's root.
    #[arg(long, default_value = "rudder/node")]
    cgroup_parent: PathBuf,
    /// Prefix of pod network namespace names.
    #[arg(long, default_value = "rdr-pod-")]
    netns_prefix: String,
    /// hostPath prefixes served from other directories, FROM=TO (for simulated nodes that
    /// share one host, e.g. /sys/fs/bpf=/run/rudder/n1/bpf).
    #[arg(long, value_delimiter = ',')]
    host_path_map: Vec<String>,
    /// Container commands run from another host path, FROM=TO (the process runtime has no
    /// images: e.g. /usr/local/bin/rudder-proxy=/build/rudder-proxy).
    #[arg(long, value_delimiter = ',')]
    command_map: Vec<String>,
    /// Capacity reported for the node.
    #[arg(long, default_value = "2000m")]
    cpu: String,
    #[arg(long, default_value = "4Gi")]
    memory: String,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// The agent's HTTPS port (reported in the Node's daemonEndpoints).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The HTTPS port's certificate (PEM), issued by the cluster CA for --node-ip
    /// (kubelet's flag). Without it the agent makes a self-signed one, which the API
    /// server does not trust, so `kubectl logs` fails for the node.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Extra node labels, KEY=VALUE.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The cluster DNS server written into pods' resolv.conf (none: the host's resolv.conf).
    #[arg(long)]
    cluster_dns: Option<String>,
    /// The node Lease's duration (the kubelet's nodeLeaseDurationSeconds); the agent renews
    /// it every quarter of this. Keep it at most the controller manager's
    /// --node-monitor-grace-period, or a healthy node is marked Unknown between renewals.
    #[arg(long, default_value_t = rudder_control::node::registration::LEASE_DURATION_SECONDS,
          value_parser = clap::value_parser!(u32).range(1..))]
    node_lease_duration_seconds: u32,
}

#[derive(clap::Args)]
struct DnsArgs {
    /// UDP and TCP address to answer on. Behind a Service with host networking, give the
    /// node's address: UDP replies from a wildcard address leave with the route's source
    /// address, which a client on the same node (DNATed to this one) does not accept.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Credentials for the API server; without it, the pod's ServiceAccount (in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Resolvers for names outside the cluster, IP or IP:PORT, comma separated; `none`
    /// refuses them. Default: the nameservers of --resolv-conf.
    #[arg(long, value_delimiter = ',')]
    upstream: Vec<String>,
    /// Where the default upstreams come from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// HTTP address of /health and /ready (empty: none).
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_listen: String,
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Copy the database of --data-dir to FILE (stop the server first).
    Save {
        #[arg(long, default_value = "/var/lib/rudder")]
        data_dir: PathBuf,
        file: PathBuf,
    },
    /// Restore FILE into --data-dir (the server must be stopped; the directory's database must not exist).
    Restore {
        #[arg(long, default_value = "/var/lib/rudder")]
        data_dir: PathBuf,
        file: PathBuf,
    },
}

fn database(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store.redb")
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--service-node-port-range {s:?}: want FIRST-LAST"))?;
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a > b {
        bail!("--service-node-port-range {s:?}: FIRST must be between 1 and LAST");
    }
    Ok(a..=b)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The shim forks: it must run before any runtime thread exists.
    if let Command::NodeShim { state_dir } = &cli.command {
        return rudder_control::node::shim::main(state_dir)
            .with_context(|| format!("node-shim {}", state_dir.display()));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Command::NodeShim { .. } => Ok(()),
        Command::Node(args) => node(args).await,
        Command::Up(a) => {
            rudder_control::up::up(rudder_control::up::Options {
                nodes: a.nodes,
                mode: a.mode,
                store: a.store,
                data_dir: a.data_dir,
                exit_after_proof: a.exit_after_proof,
                name: a.name,
                underlay: a.underlay,
                demo: !a.no_demo,
                node_monitor_grace_period: a.node_monitor_grace_period,
                dns_upstream: a.dns_upstream,
            })
            .await
        }
        Command::Server(args) => server(args).await,
        Command::Dns(args) => dns(args).await,
        Command::ControllerManager {
            kubeconfig,
            controllers,
            leader_election,
            leader_elect_resource_name,
            leader_elect_resource_namespace,
        } => {
            let config = controllers.config()?;
            let election = leader_election.config(&leader_elect_resource_namespace, &leader_elect_resource_name)?;
            let client = client_from(&kubeconfig).await?;
            println!("controller manager running against {}", kubeconfig.display());
            let work = rudder_control::controllers::run_all(client.clone(), config, std::future::pending());
            run_standalone(client, election, work).await
        }
        Command::Scheduler {
            kubeconfig,
            scheduler_name,
            leader_election,
            leader_elect_resource_name,
            leader_elect_resource_namespace,
        } => {
            let election = leader_election.config(&leader_elect_resource_namespace, &leader_elect_resource_name)?;
            let client = client_from(&kubeconfig).await?;
            println!("scheduler {scheduler_name} running against {}", kubeconfig.display());
            let config = rudder_control::scheduler::Config {
                scheduler_name,
                ..Default::default()
            };
            let work = rudder_control::scheduler::run(client.clone(), config, std::future::pending());
            run_standalone(client, election, work).await
        }
        Command::Snapshot {
            action: SnapshotAction::Save { data_dir, file },
        } => {
            // redb locks its file, so this opens the store itself: stop the server first.
            let store = EmbeddedStore::open(&database(&data_dir)).await.with_context(|| {
                format!(
                    "opening {} (is `rudder server` still running on it? stop it first)",
                    data_dir.display()
                )
            })?;
            store
                .snapshot_save(&file)
                .await
                .with_context(|| format!("saving a snapshot of {} to {}", data_dir.display(), file.display()))?;
            println!("snapshot saved to {}", file.display());
            Ok(())
        }
        Command::Snapshot {
            action: SnapshotAction::Restore { data_dir, file },
        } => {
            std::fs::create_dir_all(&data_dir)?;
            rudder_control::store::embedded::snapshot_restore(&file, database(&data_dir))
                .with_context(|| format!("restoring {} into {}", file.display(), data_dir.display()))?;
            println!("snapshot {} restored into {}", file.display(), data_dir.display());
            Ok(())
        }
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    let mut controller_config = args.controller_args.config()?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut config = Config::new(args.data_dir.clone());
    config.listen = args.listen;
    let cidrs = allocator::parse_service_cidrs(&args.service_cluster_ip_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    config.service_cidr = cidrs[0];
    config.secondary_service_cidr = cidrs.get(1).copied();
    config.node_port_range = parse_port_range(&args.service_node_port_range)?;
    config.token_auth_file = args.token_auth_file;
    config.extra_sans = args.tls_san;
    config.bookmark_interval = Duration::from_secs(args.bookmark_interval.max(1));
    config.compaction_interval = Duration::from_secs(args.compaction_interval);
    config.admission = rudder_control::apiserver::admission::Config::with_flags(
        &args.enable_admission_plugins,
        &args.disable_admission_plugins,
    )?;
    config.admission.not_ready_toleration = Duration::from_secs(args.default_not_ready_toleration_seconds);
    config.admission.unreachable_toleration = Duration::from_secs(args.default_unreachable_toleration_seconds);
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Embedded => Arc::new(
            EmbeddedStore::open(&database(&args.data_dir))
                .await
                .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
        ),
        StoreKind::Etcd => {
            if args.etcd_servers.is_empty() {
                bail!("--store etcd needs --etcd-servers");
            }
            Arc::new(
                EtcdStore::connect(&args.etcd_servers, &args.etcd_prefix)
                    .await
                    .with_context(|| format!("connecting to etcd at {}", args.etcd_servers.join(",")))?,
            )
        }
    };
    let running = launch::start(config, store).await?;
    println!(
        "rudder API server on {} ; kubeconfig: {}",
        running.url,
        running.admin_kubeconfig.display()
    );
    // One stop signal for every in-process client; each waits for it on its own receiver.
    let (stop_tx, _) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks = Vec::new();
    if args.controllers {
        // In-process, the controllers sign CSRs with the server's own CA.
        controller_config.csr_signing = Some(rudder_control::controllers::csr::signing::Config::new(Arc::clone(
            &running.pki,
        )));
        let client = client_from(&running.admin_kubeconfig).await?;
        tasks.push(tokio::spawn(embedded(
            client,
            args.leader_election.config("kube-system", "kube-controller-manager")?,
            stopped(stop_tx.subscribe()),
            move |client| {
                rudder_control::controllers::run_all(client, controller_config.clone(), std::future::pending())
            },
        )));
    }
    if args.scheduler {
        // Its own identity, so the audit trail and RBAC see `system:kube-scheduler` (bound
        // to its role by the default policy), not the admin.
        let kubeconfig = args.data_dir.join("scheduler.kubeconfig");
        let (cert_pem, key_pem) = running.pki.issue_client_cert("system:kube-scheduler", &[])?;
        pki::write_kubeconfig(
            &kubeconfig,
            &running.url,
            running.pki.ca_pem(),
            "rudder",
            "system:kube-scheduler",
            pki::Credential::ClientCert { cert_pem, key_pem },
        )
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let client = client_from(&kubeconfig).await?;
        tasks.push(tokio::spawn(embedded(
            client,
            args.leader_election.config("kube-system", "kube-scheduler")?,
            stopped(stop_tx.subscribe()),
            |client| {
                rudder_control::scheduler::run(
                    client,
                    rudder_control::scheduler::Config::default(),
                    std::future::pending(),
                )
            },
        )));
    }
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    running.stop().await;
    Ok(())
}

async fn dns(args: DnsArgs) -> Result<()> {
    let upstreams = if args.upstream.is_empty() {
        rudder_control::dns::forward::nameservers_of(&args.resolv_conf)
            .with_context(|| format!("--resolv-conf {}", args.resolv_conf.display()))?
    } else if args.upstream.iter().any(|u| u == "none") {
        Vec::new()
    } else {
        args.upstream
            .iter()
            .map(|u| rudder_control::dns::forward::parse_upstream(u).map_err(|e| anyhow::anyhow!("--upstream: {e}")))
            .collect::<Result<_>>()?
    };
    let health_listen = match args.health_listen.as_str() {
        "" => None,
        s => Some(s.parse().with_context(|| format!("--health-listen {s:?}"))?),
    };
    let client = match &args.kubeconfig {
        Some(path) => client_from(path).await?,
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig and no in-cluster credentials")?,
    };
    let config = rudder_control::dns::Config {
        listen: args.listen,
        cluster_domain: args.cluster_domain,
        upstreams,
        health_listen,
    };
    rudder_control::dns::run(client, config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    })
    .await
}

/// A component inside `rudder server`: elected when configured, standing by again when
/// it loses the lease (the server itself keeps serving).
async fn embedded<F, W>(
    client: kube::Client,
    election: Option<rudder_control::leaderelection::Config>,
    shutdown: impl std::future::Future<Output = ()>,
    mut make_work: F,
) where
    F: FnMut(kube::Client) -> W,
    W: std::future::Future<Output = ()>,
{
    match election {
        None => {
            tokio::select! {
                () = make_work(client) => {}
                () = shutdown => {}
            }
        }
        Some(election) => {
            let c = client.clone();
            rudder_control::leaderelection::lead_repeatedly(client, &election, shutdown, || make_work(c.clone())).await
        }
    }
}

/// A client from a kubeconfig file, as any other API client gets one.
async fn client_from(path: &std::path::Path) -> Result<kube::Client> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// A capacity flag in the scheduler's units (one parser for quantities).
fn parse_quantity(flag: &str, s: &str, parse: fn(&str) -> i64) -> Result<u64> {
    u64::try_from(parse(s))
        .ok()
        .filter(|v| *v > 0)
        .with_context(|| format!("{flag} {s:?}: not a positive quantity"))
}

async fn node(args: NodeArgs) -> Result<()> {
    if let Some(bootstrap) = &args.bootstrap_kubeconfig {
        rudder_control::node::bootstrap::ensure_kubeconfig(
            bootstrap,
            &args.kubeconfig,
            &args.node_name,
            Duration::from_secs(15 * 60),
        )
        .await?;
    }
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let ca_pem = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .map(|b64| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b64)
        })
        .transpose()
        .context("--kubeconfig: certificate-authority-data is not base64")?
        .unwrap_or_default();
    let client = client_from(&args.kubeconfig).await?;
    let mut host_path_map = Vec::new();
    for m in &args.host_path_map {
        let (from, to) = m
            .split_once('=')
            .with_context(|| format!("--host-path-map {m:?}: want FROM=TO"))?;
        host_path_map.push((PathBuf::from(from), PathBuf::from(to)));
    }
    let mut command_map = Vec::new();
    for m in &args.command_map {
        let (from, to) = m
            .split_once('=')
            .with_context(|| format!("--command-map {m:?}: want FROM=TO"))?;
        command_map.push((from.to_owned(), PathBuf::from(to)));
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-labels {l:?}: want KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let serving_cert = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c).with_context(|| format!("--tls-cert-file {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("--tls-private-key-file {}", k.display()))?,
        )),
        _ => None,
    };
    let config = rudder_control::node::Config {
        node_name: args.node_name,
        node_ip: args.node_ip,
        root_dir: args.root_dir,
        cgroup_parent: args.cgroup_parent,
        netns_prefix: args.netns_prefix,
        host_path_map,
        command_map,
        cpu_millis: parse_quantity("--cpu", &args.cpu, rudder_control::scheduler::quantity::milli)?,
        memory_bytes: parse_quantity("--memory", &args.memory, rudder_control::scheduler::quantity::units)?,
        max_pods: args.max_pods,
        port: args.port,
        serving_cert,
        labels,
        cluster_domain: args.cluster_domain,
        cluster_dns: args.cluster_dns,
        lease_duration: Duration::from_secs(args.node_lease_duration_seconds.into()),
    };
    rudder_control::node::run(client, config, ca_pem, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    })
    .await?;
    Ok(())
}
