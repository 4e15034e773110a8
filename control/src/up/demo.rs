//! The demo workload and the proof: a Deployment of three small HTTP servers that answer
//! with their pod name, its Service, and requests to the ClusterIP from inside every node's
//! network namespace and one pod's, until every backend has answered each of them.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{Api, Client, api::ListParams};
use serde_json::json;

use super::{Cluster, manifests};

/// The demo server: answers every GET with the pod's hostname (its name).
pub const SERVER: &str = r#"import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = (socket.gethostname() + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving on :8080 as", socket.gethostname(), flush=True)
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"#;

pub async fn wait_nodes_ready(cluster: &mut Cluster, client: &Client, n: usize) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        cluster.check_alive()?;
        let nodes = api.list(&ListParams::default()).await?.items;
        let ready = nodes
            .iter()
            .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some())
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ready} of {n} nodes became Ready with a podCIDR within 60 s; see the node-*.log files");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pods of `selector` in `ns` that are Running and Ready.
pub async fn ready_pods(client: &Client, ns: &str, selector: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = api.list(&ListParams::default().labels(selector)).await?.items;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect())
}

pub async fn wait_daemonset(cluster: &mut Cluster, client: &Client, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        cluster.check_alive()?;
        let ready = ready_pods(client, "kube-system", "k8s-app=rudder-proxy").await?.len();
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{ready} of {n} rudder-proxy pods became Ready within 90 s (kubectl -n kube-system describe pods; node logs in {})",
                cluster.layout.logs().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a ready `rudder-dns` pod (the kube-dns Service then has an endpoint).
pub async fn wait_dns(cluster: &mut Cluster, client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        cluster.check_alive()?;
        if !ready_pods(client, "kube-system", "k8s-app=kube-dns").await?.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no rudder-dns pod became Ready within 90 s (kubectl -n kube-system describe pods -l k8s-app=kube-dns; node logs in {})",
                cluster.layout.logs().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks `dns` for the A records of `name` from inside the network namespace `netns`.
pub fn resolve_in(netns: &PathBuf, dns: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    use hickory_proto::rr::{RData, RecordType};
    let reply = query_in(netns, dns, name, RecordType::A)?;
    Ok(reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

/// One DNS question of type `qtype` for `name`, sent over UDP to `dns` from inside the
/// network namespace `netns`, as a pod there would send it; the whole reply.
pub fn query_in(
    netns: &PathBuf,
    dns: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Result<hickory_proto::op::Message> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::Name,
    };
    let mut query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name)?, qtype));
    let bytes = query.to_vec()?;
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let reply = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<u8>> {
            use std::os::fd::AsRawFd;
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.connect(dns)?;
            socket.send(&bytes)?;
            let mut buf = vec![0u8; 4096];
            let n = socket.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    })?;
    Ok(Message::from_vec(&reply)?)
}

pub async fn deploy(client: &Client) -> Result<()> {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web", "image": "python:3",
                        "command": ["python3", "-c", SERVER],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    });
    manifests::apply(client, &deployment).await?;
    manifests::apply(client, &service).await?;
    Ok(())
}

/// What the proof saw.
pub struct Proof {
    pub cluster_ip: Ipv4Addr,
    /// What the pod's cluster DNS said `web.default.svc.cluster.local` is.
    pub resolved: Ipv4Addr,
    pub backends: Vec<String>,
    pub nodes: Vec<String>,
}

/// One HTTP GET from inside the network namespace `netns`; returns the body.
pub fn get_in(netns: &PathBuf, addr: SocketAddr) -> Result<String> {
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            use std::os::fd::AsRawFd;
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
            let mut resp = String::new();
            c.read_to_string(&mut resp)?;
            let body = resp.split("\r\n\r\n").nth(1).context("no HTTP body")?;
            Ok(body.trim().to_owned())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    })
}

/// Asks `addr` from `netns` until every name in `want` has answered (or the deadline).
pub fn sees_all(netns: &PathBuf, addr: SocketAddr, want: &BTreeSet<String>, deadline: Instant) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut last_err = None;
    while Instant::now() < deadline {
        match get_in(netns, addr) {
            Ok(name) => {
                seen.insert(name);
                if want.is_subset(&seen) {
                    return Ok(());
                }
            }
            Err(e) => {
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    bail!(
        "from {}: {addr} answered from {seen:?}, not from all of {want:?}{}",
        netns.display(),
        last_err.map(|e| format!(" (last error: {e:#})")).unwrap_or_default()
    )
}

pub async fn prove(cluster: &mut Cluster, client: &Client) -> Result<Proof> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let pods = loop {
        cluster.check_alive()?;
        let pods = ready_pods(client, "default", "app=web").await?;
        if pods.len() >= 3 {
            break pods;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of 3 web pods became Ready within 60 s (kubectl describe pods -l app=web)",
                pods.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tracing::debug!("proof: {} web pods ready", pods.len());
    let svc: Service = Api::namespaced(client.clone(), "default").get("web").await?;
    let cluster_ip: Ipv4Addr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("web has no ClusterIP")?
        .parse()?;
    let want: BTreeSet<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let nodes: BTreeSet<String> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    let layout = cluster.layout.clone();
    let mut from: Vec<PathBuf> = (1..=cluster.nodes)
        .map(|k| PathBuf::from("/run/netns").join(layout.node_netns(k)))
        .collect();
    let first = &pods[0];
    let uid: String = first
        .metadata
        .uid
        .clone()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    let node = first
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    from.push(PathBuf::from("/run/netns").join(format!("rdr-{}-{node}-{uid}", layout.name)));
    let addr = SocketAddr::from((cluster_ip, 80));
    let deadline = Instant::now() + Duration::from_secs(30);
    let dns = SocketAddr::from((super::dns::cluster_dns_ip()?, 53));
    let resolved = tokio::task::spawn_blocking(move || -> Result<Ipv4Addr> {
        let started = Instant::now();
        for netns in &from {
            sees_all(netns, addr, &want, deadline)?;
            tracing::debug!(from = %netns.display(), after = ?started.elapsed(), "proof: every backend answered");
        }
        // The pod's resolv.conf names the kube-dns Service; ask it as the pod would.
        let pod_netns = from.last().context("no pod namespace")?;
        let mut last = String::new();
        while Instant::now() < deadline {
            match resolve_in(pod_netns, dns, "web.default.svc.cluster.local.") {
                Ok(ips) if ips.contains(&cluster_ip) => {
                    // Once it answers, every query does: each one is a new flow, which the
                    // Service sends to either DNS replica, the one on the pod's node too.
                    for _ in 0..8 {
                        let ips = resolve_in(pod_netns, dns, "web.default.svc.cluster.local.")
                            .with_context(|| format!("from {}: a later query to {dns}", pod_netns.display()))?;
                        ensure!(
                            ips.contains(&cluster_ip),
                            "from {}: a later query to {dns} answered {ips:?}",
                            pod_netns.display()
                        );
                    }
                    tracing::debug!(after = ?started.elapsed(), "proof: the pod resolved the Service, 9 times");
                    return Ok(cluster_ip);
                }
                Ok(ips) => last = format!("answered {ips:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            tracing::debug!(after = ?started.elapsed(), "proof: the pod's DNS query: {last}");
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "from {}: {dns} did not resolve web.default.svc.cluster.local to {cluster_ip} ({last})",
            pod_netns.display()
        )
    })
    .await??;
    Ok(Proof {
        cluster_ip,
        resolved,
        backends: pods.iter().filter_map(|p| p.metadata.name.clone()).collect(),
        nodes: nodes.into_iter().collect(),
    })
}
