//! Events about pods, as the kubelet reports them (fire and forget: an event that cannot
//! be written is logged, never retried, never blocks the pod).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{Api, api::PostParams};
use serde_json::json;

use super::Agent;

pub fn pod(agent: &Arc<Agent>, pod: &Pod, type_: &str, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let body = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": ns},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "firstTimestamp": now.round(jiff::Unit::Second).unwrap_or(now).to_string(),
        "lastTimestamp": now.round(jiff::Unit::Second).unwrap_or(now).to_string(),
        "source": {"component": "kubelet", "host": agent.config.node_name},
        "reportingComponent": "kubelet", "reportingInstance": agent.config.node_name,
    });
    let api: Api<Event> = Api::namespaced(agent.client.clone(), &ns);
    tokio::spawn(async move {
        let Ok(ev) = serde_json::from_value::<Event>(body) else {
            return;
        };
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, "writing event");
        }
    });
}
