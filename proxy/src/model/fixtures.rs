//! Test objects written as the JSON a user would `kubectl apply`, so a test reads like the
//! manifest it models.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

pub fn service(object: Value) -> Service {
    serde_json::from_value(object).expect("fixture is a valid Service")
}

pub fn slice(object: Value) -> EndpointSlice {
    serde_json::from_value(object).expect("fixture is a valid EndpointSlice")
}

/// A ready IPv4 endpoint on `node`, the common case.
pub fn ready(address: &str, node: &str) -> Value {
    json!({"addresses": [address], "nodeName": node, "conditions": {"ready": true}})
}

/// An EndpointSlice of `service` with one port named `port_name`.
pub fn simple_slice(
    service: &str,
    slice_name: &str,
    port_name: &str,
    port: u16,
    endpoints: Vec<Value>,
) -> EndpointSlice {
    slice(json!({
        "metadata": {"namespace": "ns", "name": slice_name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

/// The desired state of node-1 for `services` and `slices` (cluster CIDR 10.244.0.0/16,
/// service CIDR 10.96.0.0/16, node address 10.250.0.11).
pub fn state_of(services: &[Value], slices: &[Value]) -> super::DesiredState {
    let mut ports = super::ServicePortMap::new();
    for s in services {
        ports.extend(super::service::service_ports(&service(s.clone())).expect("valid ports"));
    }
    let slices: Vec<EndpointSlice> = slices.iter().map(|s| slice(s.clone())).collect();
    let node = super::NodeInfo {
        name: "node-1".into(),
        addresses: vec!["10.250.0.11".parse().expect("an address")],
        labels: Default::default(),
    };
    let config = super::ModelConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("a CIDR")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..Default::default()
    };
    let eps = super::endpoints::endpoints_map(&slices, &node.name).expect("valid slices");
    super::DesiredState::build(&ports, &eps, &node, &config)
}

/// Service `web` (10.96.0.10:80/TCP, port `http`) with `endpoints` (IPv4, on node-2, target
/// port 8080).
pub fn web_state(endpoints: &[&str]) -> super::DesiredState {
    let svc = json!({"metadata": {"namespace": "ns", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}});
    let eps: Vec<Value> = endpoints.iter().map(|a| ready(a, "node-2")).collect();
    let slice = json!({
        "metadata": {"namespace": "ns", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    });
    state_of(&[svc], &[slice])
}

/// [`web_state`] with three endpoints.
pub fn simple_state() -> super::DesiredState {
    web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.12"])
}
