//! Health reporting: the proxy's own `/healthz` and `/livez` (what a DaemonSet probe and an
//! external load balancer's node check read), and one server per `healthCheckNodePort`
//! that tells a load balancer whether this node has local endpoints of the Service.
//! Answers follow kube-proxy's JSON so existing checks keep working.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use super::http::{self, Handler, Reply};
use crate::model::{HealthCheck, ServiceName};
use serde_json::json;

/// Is the dataplane keeping up? Healthy once a sync succeeded, and as long as no change has
/// waited longer than the timeout (kube-proxy: twice the sync period) to be programmed.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            state: Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A change arrived that the next sync must program.
    pub fn queued(&self) {
        self.lock().oldest_pending.get_or_insert_with(Instant::now);
    }

    /// A sync that started at `started` succeeded: changes queued before it are programmed.
    pub fn updated(&self, started: Instant) {
        let mut s = self.lock();
        s.last_updated = Some(SystemTime::now());
        if s.oldest_pending.is_some_and(|t| t <= started) {
            s.oldest_pending = None;
        }
    }

    pub fn is_healthy(&self) -> bool {
        let s = self.lock();
        s.last_updated.is_some() && s.oldest_pending.is_none_or(|t| t.elapsed() <= self.timeout)
    }

    fn reply(&self) -> Reply {
        let healthy = self.is_healthy();
        let last = self.lock().last_updated;
        let body = json!({
            "lastUpdated": last.map(rfc3339).unwrap_or_default(),
            "currentTime": rfc3339(SystemTime::now()),
            "nodeEligible": true,
        });
        (if healthy { 200 } else { 503 }, "application/json", body.to_string())
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = Arc::clone(self);
        Arc::new(move |path| match path {
            "/healthz" | "/livez" => me.reply(),
            _ => (404, "text/plain", "404 page not found\n".into()),
        })
    }
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// One HTTP server per Service with a `healthCheckNodePort`, answering 200 while this node
/// has ready local endpoints and 503 otherwise.
pub struct HealthCheckServers {
    proxy: Arc<ProxyHealth>,
    servers: BTreeMap<ServiceName, Server>,
}

struct Server {
    port: u16,
    local: Arc<Mutex<usize>>,
    http: http::Server,
}

impl HealthCheckServers {
    pub fn new(proxy: Arc<ProxyHealth>) -> Self {
        Self {
            proxy,
            servers: BTreeMap::new(),
        }
    }

    /// Makes the running servers match `wanted`: starts new ones, updates counts, stops
    /// the others. A port that cannot be bound is logged and retried at the next sync.
    pub async fn update(&mut self, wanted: &BTreeMap<ServiceName, HealthCheck>) {
        self.servers
            .retain(|name, s| wanted.get(name).is_some_and(|hc| hc.node_port == s.port));
        for (name, hc) in wanted {
            if let Some(server) = self.servers.get(name) {
                *server.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = hc.local_endpoints;
                continue;
            }
            let local = Arc::new(Mutex::new(hc.local_endpoints));
            let handler = service_handler(name.clone(), Arc::clone(&local), Arc::clone(&self.proxy));
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, hc.node_port));
            match http::serve(addr, handler).await {
                Ok(server) => {
                    tracing::info!(service = %name, port = hc.node_port, "serving healthCheckNodePort");
                    self.servers.insert(
                        name.clone(),
                        Server {
                            port: hc.node_port,
                            local,
                            http: server,
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(service = %name, port = hc.node_port, %error, "cannot serve healthCheckNodePort")
                }
            }
        }
    }

    /// Shuts every server down at once, each draining its requests within `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        let servers = std::mem::take(&mut self.servers);
        futures::future::join_all(servers.into_values().map(|s| s.http.shutdown(grace))).await;
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.values().map(|s| s.port).collect()
    }
}

fn service_handler(name: ServiceName, local: Arc<Mutex<usize>>, proxy: Arc<ProxyHealth>) -> Handler {
    Arc::new(move |_path| {
        let count = *local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let healthy = proxy.is_healthy();
        let body = json!({
            "service": {"namespace": name.namespace, "name": name.name},
            "localEndpoints": count,
            "serviceProxyHealthy": healthy,
        });
        (
            if count > 0 && healthy { 200 } else { 503 },
            "application/json",
            body.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_until_the_first_sync_and_when_changes_wait_too_long() {
        let h = ProxyHealth::new(Duration::from_millis(50));
        assert!(!h.is_healthy(), "no sync yet");
        h.updated(Instant::now());
        assert!(h.is_healthy());
        h.queued();
        assert!(h.is_healthy(), "a fresh change is fine");
        std::thread::sleep(Duration::from_millis(80));
        assert!(!h.is_healthy(), "a change waited past the timeout");
        assert_eq!(h.reply().0, 503);
        h.updated(Instant::now());
        assert!(h.is_healthy());
        assert_eq!(h.reply().0, 200);
    }
}
