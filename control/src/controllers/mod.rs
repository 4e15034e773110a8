//! Controllers: API clients that keep derived objects in line with the objects they come
//! from, as kube-controller-manager's do. They never touch the store; they watch and write
//! through the API like any other client, so each one also runs against a real cluster.
//!
//! Start them with [`run_all`] (what `rudder` does) or one by one with each module's `run`.

pub mod cronjob;
pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod queue;
pub mod ready;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccounts;
pub mod statefulset;
pub mod volume;
pub mod workload;

use std::future::Future;

use futures::FutureExt;

/// Options of the controllers that have any.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Node IPAM runs only with a range (upstream's `--allocate-node-cidrs` with
    /// `--cluster-cidr` and `--node-cidr-mask-size`).
    pub node_ipam: Option<nodeipam::Config>,
    /// The CSR signer runs only with a CA to sign with (upstream's
    /// `--cluster-signing-cert-file`); the CSR approver always runs.
    pub csr_signing: Option<csr::signing::Config>,
    /// The node lifecycle controller's grace period and monitor period.
    pub node_lifecycle: nodelifecycle::Config,
}

/// Runs every controller against the API `client` talks to, until `shutdown` completes.
/// The client needs to list and watch cluster-wide, and write, every kind the controllers
/// touch (the garbage collector's [`gc::KINDS`] cover them); `system:kube-controller-manager`
/// in the bootstrap RBAC may.
pub async fn run_all(client: kube::Client, config: Config, shutdown: impl Future<Output = ()> + Send + 'static) {
    let shutdown = shutdown.boxed().shared();
    let mut others = vec![
        replicaset::run(client.clone(), shutdown.clone()).boxed(),
        deployment::run(client.clone(), shutdown.clone()).boxed(),
        daemonset::run(client.clone(), shutdown.clone()).boxed(),
        statefulset::run(client.clone(), shutdown.clone()).boxed(),
        job::run(client.clone(), shutdown.clone()).boxed(),
        cronjob::run(client.clone(), shutdown.clone()).boxed(),
        gc::run(client.clone(), shutdown.clone()).boxed(),
        csr::approving::run(client.clone(), shutdown.clone()).boxed(),
        disruption::run(client.clone(), shutdown.clone()).boxed(),
        serviceaccounts::run(client.clone(), shutdown.clone()).boxed(),
        resourcequota::run(client.clone(), shutdown.clone()).boxed(),
        volume::run(client.clone(), shutdown.clone()).boxed(),
        nodelifecycle::run(client.clone(), config.node_lifecycle, shutdown.clone()).boxed(),
        namespace::run(client.clone(), shutdown.clone()).boxed(),
    ];
    if let Some(signing) = config.csr_signing {
        others.push(csr::signing::run(client.clone(), signing, shutdown.clone()).boxed());
    }
    if let Some(ipam) = config.node_ipam {
        others.push(nodeipam::run(client.clone(), ipam, shutdown.clone()).boxed());
    }
    futures::future::join(
        endpointslice::run(client, endpointslice::Config::default(), shutdown),
        futures::future::join_all(others),
    )
    .await;
}

/// An error with its sources, `outer: inner: innermost`, for one log line.
pub(crate) fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
