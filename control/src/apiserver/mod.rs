//! `rudder server`: a Kubernetes-compatible API server over the revisioned store.
//!
//! Layers, outermost first: `server` (TLS, connections, authentication) → `handlers`
//! (HTTP, content types, watch streams) → `registry` (Kubernetes object semantics; the only
//! code that touches the store) → `crate::store`. Per-type rules live in `strategy`, the
//! served types in `resources`.

pub mod admission;
pub mod allocator;
pub mod authn;
pub mod authz;
pub mod batch;
pub mod certificates;
pub mod crd;
pub mod discovery;
pub mod discovery_aggregated;
pub mod dryrun;
pub mod escalation;
pub mod events;
pub mod eviction;
pub mod filter;
pub mod handlers;
pub mod ipfamily;
pub mod launch;
pub mod logs;
pub mod managed;
pub mod meta;
pub mod negotiate;
pub mod node_graph;
pub mod openapi;
pub mod patch;
pub mod pdb;
pub mod pki;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod resourcequota;
pub mod resources;
pub mod sa_token;
pub mod scale;
pub mod selector;
pub mod server;
pub mod statefulset;
pub mod status;
pub mod strategy;
pub mod streaming;
pub mod table;
pub mod versionmatch;
pub mod volumes;

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, sync::Arc, time::Duration};

use serde_json::json;

use crate::store::Store;

use self::{
    allocator::Allocator,
    authn::{Authenticator, UserInfo},
    authz::Authorizer,
    registry::Registry,
    request::ResourceRequest,
    status::ApiError,
};

/// Everything `rudder server` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Certificates, the admin kubeconfig and (for the embedded store) the database.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The primary family's Service range (`kubernetes` takes its first address).
    pub service_cidr: ipnet::IpNet,
    /// The other family's range on a dual-stack cluster.
    pub secondary_service_cidr: Option<ipnet::IpNet>,
    pub node_port_range: RangeInclusive<u16>,
    /// Extra names and IPs for the serving certificate.
    pub extra_sans: Vec<String>,
    /// Static bearer tokens (Kubernetes' token CSV format).
    pub token_auth_file: Option<PathBuf>,
    /// How often idle watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// History older than one interval is compacted away each interval (as
    /// kube-apiserver's --etcd-compaction-interval); zero turns compaction off.
    pub compaction_interval: Duration,
    /// Which admission plugins run, and their options.
    pub admission: admission::Config,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            service_cidr: ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 96, 0, 0), 16)),
            secondary_service_cidr: None,
            node_port_range: 30000..=32767,
            extra_sans: vec![],
            token_auth_file: None,
            bookmark_interval: Duration::from_secs(60),
            compaction_interval: Duration::from_secs(300),
            admission: admission::Config::default(),
        }
    }

    /// The Service ranges, primary family first.
    pub fn service_cidrs(&self) -> Vec<ipnet::IpNet> {
        std::iter::once(self.service_cidr)
            .chain(self.secondary_service_cidr)
            .collect()
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }
}

/// Shared state of a running server.
pub struct App {
    pub registry: Arc<Registry>,
    pub authn: Authenticator,
    pub authz: Authorizer,
    pub bookmark_interval: Duration,
    /// TLS for the API server's own connections to node agents (`pods/log`); `None`
    /// leaves logs unavailable.
    pub kubelet_tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    pub admission: admission::Config,
    /// Serves CustomResourceDefinitions; stops with the server.
    _crd_controller: crd::controller::Handle,
}

impl App {
    pub async fn new(
        store: Arc<dyn Store>,
        config: &Config,
        authn: Authenticator,
    ) -> Result<Self, crate::store::StoreError> {
        let alloc = Allocator::new(
            Arc::clone(&store),
            config.service_cidrs(),
            config.node_port_range.clone(),
        );
        let rbac = rbac::Rbac::start(Arc::clone(&store)).await?;
        let registry = Arc::new(Registry {
            store,
            alloc,
            crds: crd::Catalog::default(),
        });
        let crd_controller = crd::controller::start(Arc::clone(&registry)).await?;
        Ok(Self {
            registry,
            authn,
            authz: Authorizer { rbac },
            bookmark_interval: config.bookmark_interval,
            kubelet_tls: None,
            admission: config.admission.clone(),
            _crd_controller: crd_controller,
        })
    }

    pub async fn authorize(&self, user: &UserInfo, req: &ResourceRequest) -> Result<(), ApiError> {
        self.authz.authorize(user, req, &self.registry).await
    }

    /// Creates what every cluster has: the standard namespaces and the `kubernetes`
    /// Service on the first address of the service range. Idempotent.
    pub async fn bootstrap(&self, service_cidr: ipnet::IpNet, port: u16) -> Result<(), ApiError> {
        let namespaces = resources::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces"))?;
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            match self
                .registry
                .create(namespaces, None, json!({"metadata": {"name": ns}}))
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        for (plural, object) in authz::bootstrap_policy() {
            let rt =
                resources::find("rbac.authorization.k8s.io", "v1", plural).ok_or_else(|| ApiError::internal("rbac"))?;
            match self.registry.create(rt, None, object).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        let services = resources::find("", "v1", "services").ok_or_else(|| ApiError::internal("services"))?;
        let kubernetes = json!({
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": allocator::nth(&service_cidr, 1).to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            },
        });
        match self.registry.create(services, Some("default"), kubernetes).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}
