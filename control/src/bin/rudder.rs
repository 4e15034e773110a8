//! `rudder`: the control plane and the local cluster.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rudder_control::{
    apiserver::{Config, allocator::Cidr, launch},
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
    },
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
    /// The range ClusterIPs come from (kube-apiserver's --service-cluster-ip-range).
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
    /// Seconds between compactions of the store's history (0: never).
    #[arg(long, default_value_t = 300)]
    compaction_interval: u64,
    /// Seconds between watch bookmarks for clients that ask for them.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
    #[command(flatten)]
    controller_args: ControllerArgs,
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
}

impl ControllerArgs {
    fn config(&self) -> Result<rudder_control::controllers::Config> {
        let node_ipam = match &self.cluster_cidr {
            None => None,
            Some(cidr) => {
                let cidr: Cidr = cidr.parse().map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
                let range = rudder_control::controllers::nodeipam::RangeAllocator::new(cidr, self.node_cidr_mask_size)?;
                Some(rudder_control::controllers::nodeipam::Config { range })
            }
        };
        Ok(rudder_control::controllers::Config { node_ipam })
    }
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
    let (a, b) = s.split_once('-').with_context(|| format!("--service-node-port-range {s:?}: want FIRST-LAST"))?;
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a > b {
        bail!("--service-node-port-range {s:?}: FIRST must be between 1 and LAST");
    }
    Ok(a..=b)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Server(args) => server(args).await,
        Command::ControllerManager { kubeconfig, controllers } => {
            let config = controllers.config()?;
            let client = client_from(&kubeconfig).await?;
            println!("controller manager running against {}", kubeconfig.display());
            rudder_control::controllers::run_all(client, config, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
            Ok(())
        }
        Command::Snapshot { action: SnapshotAction::Save { data_dir, file } } => {
            // redb locks its file, so this opens the store itself: stop the server first.
            let store = EmbeddedStore::open(&database(&data_dir))
                .await
                .with_context(|| format!("opening {} (is `rudder server` still running on it? stop it first)", data_dir.display()))?;
            store
                .snapshot_save(&file)
                .await
                .with_context(|| format!("saving a snapshot of {} to {}", data_dir.display(), file.display()))?;
            println!("snapshot saved to {}", file.display());
            Ok(())
        }
        Command::Snapshot { action: SnapshotAction::Restore { data_dir, file } } => {
            std::fs::create_dir_all(&data_dir)?;
            rudder_control::store::embedded::snapshot_restore(&file, database(&data_dir))
                .with_context(|| format!("restoring {} into {}", file.display(), data_dir.display()))?;
            println!("snapshot {} restored into {}", file.display(), data_dir.display());
            Ok(())
        }
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    let controller_config = args.controller_args.config()?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut config = Config::new(args.data_dir.clone());
    config.listen = args.listen;
    config.service_cidr = args
        .service_cluster_ip_range
        .parse::<Cidr>()
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    config.node_port_range = parse_port_range(&args.service_node_port_range)?;
    config.token_auth_file = args.token_auth_file;
    config.extra_sans = args.tls_san;
    config.bookmark_interval = Duration::from_secs(args.bookmark_interval.max(1));
    config.compaction_interval = Duration::from_secs(args.compaction_interval);
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
    println!("rudder API server on {} ; kubeconfig: {}", running.url, running.admin_kubeconfig.display());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controllers = if args.controllers {
        let client = client_from(&running.admin_kubeconfig).await?;
        Some(tokio::spawn(rudder_control::controllers::run_all(client, controller_config, async {
            let _ = stop_rx.await;
        })))
    } else {
        None
    };
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(());
    if let Some(c) = controllers {
        let _ = c.await;
    }
    running.stop().await;
    Ok(())
}

/// A client from a kubeconfig file, as any other API client gets one.
async fn client_from(path: &std::path::Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}
