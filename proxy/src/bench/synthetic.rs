//! A synthetic cluster, shaped like kube-proxy's `BenchmarkSyncProxyRules`: ClusterIP
//! Services with one TCP port and E ready endpoints each.

use std::net::Ipv4Addr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

pub const NAMESPACE: &str = "bench";

/// The i-th Service's ClusterIP: 10.96.0.0/16 without .0 and .255 hosts.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Endpoint number j (globally unique) in 10.128.0.0/10.
pub fn endpoint_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (j >> 16) as u8, (j >> 8) as u8, j as u8)
}

pub fn service(i: usize) -> Service {
    let ip = cluster_ip(i).to_string();
    serde_json::from_value(json!({
        "metadata": {"namespace": NAMESPACE, "name": format!("svc-{i}")},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .expect("a valid synthetic Service")
}

/// Service i's slice; `generation` shifts its first endpoint (0 = the original set).
pub fn slice(i: usize, endpoints: usize, generation: usize) -> EndpointSlice {
    let ips = (0..endpoints).map(|k| {
        if k == 0 && generation > 0 {
            2_000_000 + i * 64 + generation
        } else {
            i * endpoints + k
        }
    });
    slice_with(i, ips)
}

/// Service i's original slice of `endpoints`, plus `extra` endpoints from a range no
/// other Service uses.
pub fn slice_plus(i: usize, endpoints: usize, extra: usize) -> EndpointSlice {
    slice_with(
        i,
        (0..endpoints)
            .map(|k| i * endpoints + k)
            .chain((0..extra).map(|k| 3_000_000 + i * 64 + k)),
    )
}

/// Service i's slice with exactly these endpoints (numbers for [`endpoint_ip`]).
pub fn slice_with(i: usize, ips: impl Iterator<Item = usize>) -> EndpointSlice {
    let eps: Vec<_> = ips
        .map(|j| {
            json!({"addresses": [endpoint_ip(j).to_string()], "nodeName": "bench-node", "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": NAMESPACE, "name": format!("svc-{i}-1"),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .expect("a valid synthetic EndpointSlice")
}
