//! Controllers: API clients that keep derived objects in line with the objects they come
//! from, as kube-controller-manager's do. They never touch the store; they watch and write
//! through the API like any other client, so each one also runs against a real cluster.
//!
//! Start them with [`run_all`] (what `rudder` does) or one by one with each module's `run`.

pub mod endpointslice;
pub mod queue;

use std::future::Future;

use futures::FutureExt;

/// Runs every controller against the API `client` talks to, until `shutdown` completes.
/// The client needs to list and watch Services, Pods, Nodes, Endpoints and EndpointSlices
/// cluster-wide, and to write Endpoints and EndpointSlices.
pub async fn run_all(client: kube::Client, shutdown: impl Future<Output = ()>) {
    let shutdown = shutdown.shared();
    endpointslice::run(client, endpointslice::Config::default(), shutdown).await;
}
