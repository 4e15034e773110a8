//! Controllers: API clients that keep derived objects in line with the objects they come
//! from, as kube-controller-manager's do. They never touch the store; they watch and write
//! through the API like any other client, so each one also runs against a real cluster.
//!
//! Start them with [`run_all`] (what `rudder` does) or one by one with each module's `run`.

pub mod deployment;
pub mod endpointslice;
pub mod queue;
pub mod replicaset;
pub mod workload;

use std::future::Future;

use futures::FutureExt;

/// Runs every controller against the API `client` talks to, until `shutdown` completes.
/// The client needs to list and watch Services, Pods, Nodes, Endpoints, EndpointSlices,
/// ReplicaSets and Deployments cluster-wide; to write Endpoints, EndpointSlices, Pods and
/// ReplicaSets; and to update Deployments and the status of ReplicaSets and Deployments.
pub async fn run_all(client: kube::Client, shutdown: impl Future<Output = ()>) {
    let shutdown = shutdown.shared();
    futures::join!(
        endpointslice::run(client.clone(), endpointslice::Config::default(), shutdown.clone()),
        replicaset::run(client.clone(), shutdown.clone()),
        deployment::run(client, shutdown),
    );
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
