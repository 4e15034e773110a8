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
