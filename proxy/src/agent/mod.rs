//! The node agent behind `rudder-proxy run`: watches → trackers → sync loop → backend,
//! plus the health and metrics endpoints. Layered like kube-rs' runtime (watcher, then
//! a store of what was seen, then a controller loop) and kube-proxy's `pkg/proxy` (change
//! trackers under a per-mode proxier).
//!
//! - [`config`]: the flags, kube-proxy's names and defaults; [`config_file`]: kube-proxy's
//!   `KubeProxyConfiguration` behind `--config`.
//! - [`inputs`]: the watches and the trackers they feed.
//! - [`sync`]: the rate-limited loop that computes the desired state and calls the backend.
//! - [`health`], [`metrics`], [`http`]: what operators and load balancers read.

pub mod config;
pub mod config_file;
pub mod health;
pub mod http;
pub mod inputs;
pub mod metrics;
pub mod sync;

use std::sync::Arc;

use kube::{Client, config::KubeConfigOptions};

pub use config::RunArgs;

use self::{
    health::ProxyHealth,
    inputs::Shared,
    metrics::Metrics,
    sync::{SyncLoop, SyncSettings},
};
use crate::{
    dataplane::{self, DataplaneError},
    model::ModelConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start --mode {mode:?}: {source}")]
    Backend {
        mode: dataplane::Mode,
        source: DataplaneError,
    },
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("creating the API client: {0}")]
    Client(#[from] kube::Error),
    #[error("--{flag} {addr}: cannot listen: {source}")]
    Listen {
        flag: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("finding this node's name (use --hostname-override): {0}")]
    NodeName(std::io::Error),
    #[error("--cleanup could not remove everything: {0}")]
    Cleanup(String),
}

/// `rudder-proxy run --cleanup`: remove what every mode installed.
pub fn cleanup(args: &RunArgs) -> Result<(), AgentError> {
    let failed = dataplane::seam::cleanup_others(None, &args.ebpf_options());
    if failed.is_empty() {
        return Ok(());
    }
    Err(AgentError::Cleanup(
        failed
            .iter()
            .map(|(m, e)| format!("{m:?}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

async fn client(args: &RunArgs) -> Result<Client, AgentError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| AgentError::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| AgentError::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| AgentError::Kubeconfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// How long in-flight health and metrics requests may take to finish at shutdown.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the agent until `shutdown` completes, then stops serving health and metrics
/// (answering the requests in flight, within [`SHUTDOWN_GRACE`]). The rules stay.
pub async fn run(args: RunArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let mode = args.mode;
    // Before anything else: a kernel that cannot run the mode is refused with the reason.
    let backend = dataplane::seam::open(mode, &args.ebpf_options(), args.ipvs_scheduler)
        .map_err(|source| AgentError::Backend { mode, source })?;
    for (other, error) in dataplane::seam::cleanup_others(Some(mode), &args.ebpf_options()) {
        tracing::warn!(mode = ?other, %error, "could not remove another mode's leftovers");
    }
    let node_name = config::node_name(args.hostname_override.as_deref()).map_err(AgentError::NodeName)?;
    let client = client(&args).await?;

    let health = Arc::new(ProxyHealth::new(args.sync_period * 2));
    let metrics = Arc::new(Metrics::new(mode));
    let shared = Arc::new(Shared::new(&node_name, Arc::clone(&health)));

    let mut servers = Vec::new();
    if let Some(addr) = args.healthz_bind_address.0 {
        servers.push(
            http::serve(addr, health.handler())
                .await
                .map_err(|source| AgentError::Listen {
                    flag: "healthz-bind-address",
                    addr,
                    source,
                })?,
        );
    }
    if let Some(addr) = args.metrics_bind_address.0 {
        let (m, s, h) = (Arc::clone(&metrics), Arc::clone(&shared), Arc::clone(&health));
        let extra = backend.extra_metrics();
        let handler: http::Handler = Arc::new(move |path| match path {
            "/metrics" => {
                let mut text = m.render(s.lock().stats());
                if let Some(extra) = &extra {
                    text.push_str(&extra());
                }
                (200, crate::exposition::CONTENT_TYPE, text)
            }
            "/healthz" | "/livez" => (if h.is_healthy() { 200 } else { 503 }, "text/plain", "ok\n".into()),
            _ => (404, "text/plain", "404 page not found\n".into()),
        });
        servers.push(http::serve(addr, handler).await.map_err(|source| AgentError::Listen {
            flag: "metrics-bind-address",
            addr,
            source,
        })?);
    }

    let settings = SyncSettings {
        node_name: node_name.clone(),
        model: ModelConfig {
            cluster_cidrs: args.cluster_cidr.clone(),
            nodeport_addresses: Vec::new(),
            masquerade_all: args.masquerade_all,
            service_cidrs: args.service_cluster_ip_range.clone(),
        },
        nodeport_addresses: args.nodeport_addresses.clone(),
        min_sync_period: args.min_sync_period,
        sync_period: args.sync_period,
    };
    tracing::info!(?mode, node = %node_name, "starting");
    inputs::spawn_watches(&client, &node_name, &shared);
    let mut sync = SyncLoop::new(Arc::clone(&shared), backend, settings, Arc::clone(&metrics), health);
    if mode != dataplane::Mode::Ebpf {
        // The kernel's conntrack does the NAT in these modes, so its UDP entries outlive
        // endpoint changes unless we delete them.
        sync.after_sync(move |state| match crate::conntrack::cleanup_stale_udp(state) {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, "deleted stale UDP conntrack entries");
                metrics.conntrack_cleaned(deleted, false);
            }
            Err(error) => {
                tracing::warn!(%error, "UDP conntrack cleanup failed");
                metrics.conntrack_cleaned(0, true);
            }
        });
    }
    tokio::select! {
        () = sync.run() => {}
        () = shutdown => tracing::info!("shutting down; the rules stay in place (use --cleanup to remove them)"),
    }
    futures::future::join(
        sync.shutdown_health_checks(SHUTDOWN_GRACE),
        futures::future::join_all(servers.into_iter().map(|s| s.shutdown(SHUTDOWN_GRACE))),
    )
    .await;
    Ok(())
}
