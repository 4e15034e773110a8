//! Cluster DNS (`rudder dns`, CoreDNS's job in a cluster): the cluster domain answered from
//! watches of Services, EndpointSlices and Pods, everything else forwarded upstream.
//!
//! - [`index`]: the watched objects reduced to what names mean (pure);
//! - [`answer`]: one question against the index, CoreDNS's kubernetes plugin rules (pure);
//! - [`forward`]: relaying other names to the upstream resolvers;
//! - [`server`]: hickory-server's request handler tying both together;
//! - [`watch`]: the reflectors that keep the index current.

pub mod answer;
pub mod forward;
pub mod index;
pub mod server;
pub mod watch;

#[cfg(test)]
mod answer_tests;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use hickory_proto::rr::Name;
use tokio::net::{TcpListener, UdpSocket};

use self::{forward::Forwarder, index::Index, server::Handler};

/// How long an idle TCP client may keep its connection.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    /// UDP and TCP, the same address.
    pub listen: SocketAddr,
    /// `cluster.local`.
    pub cluster_domain: String,
    pub upstreams: Vec<SocketAddr>,
    /// `/health` (alive) and `/ready` (watches synced), as CoreDNS's health and ready plugins.
    pub health_listen: Option<SocketAddr>,
}

/// The zone name for a cluster domain (`cluster.local` → `cluster.local.`).
pub fn zone(cluster_domain: &str) -> anyhow::Result<Name> {
    let mut name = Name::from_ascii(cluster_domain.trim_end_matches('.'))
        .with_context(|| format!("cluster domain {cluster_domain:?} is not a DNS name"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Serves until `stop` resolves.
pub async fn run(
    client: kube::Client,
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let zone = zone(&config.cluster_domain)?;
    let index: server::SharedIndex = Arc::new(RwLock::new(Arc::new(Index::empty(zone.clone()))));
    let ready = watch::start(&client, zone, Arc::clone(&index));
    let udp = UdpSocket::bind(config.listen)
        .await
        .with_context(|| format!("binding UDP {}", config.listen))?;
    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding TCP {}", config.listen))?;
    let mut server = hickory_server::Server::new(Handler {
        index,
        forwarder: Forwarder {
            upstreams: config.upstreams.clone(),
        },
    });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, 64);
    if let Some(addr) = config.health_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the health port {addr}"))?;
        tokio::spawn(health(listener, ready));
    }
    tracing::info!(listen = %config.listen, domain = %config.cluster_domain, upstreams = ?config.upstreams, "cluster DNS serving");
    stop.await;
    server.shutdown_gracefully().await.context("stopping the DNS server")?;
    Ok(())
}

/// `/health` is 200 while the process serves; `/ready` is 200 once every watch has listed
/// (before that, answers would say NXDOMAIN for names that exist).
async fn health(listener: TcpListener, ready: tokio::sync::watch::Receiver<bool>) {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, service::service_fn};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let ok = match req.uri().path() {
                    "/health" => true,
                    "/ready" => *ready.borrow(),
                    _ => false,
                };
                let (status, body) = match (req.uri().path(), ok) {
                    ("/health" | "/ready", true) => (200, "OK"),
                    ("/ready", false) => (503, "watches not synced"),
                    _ => (404, "not found"),
                };
                async move {
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
