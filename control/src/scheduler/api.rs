//! The scheduler's writes: the binding, the PodScheduled condition and Events.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Binding, Event, ObjectReference, Pod};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::cache::PodKey;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("binding the pod to node {node}")]
    Bind {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting the pod's PodScheduled condition")]
    Status(#[source] kube::Error),
    #[error("creating a {reason} event")]
    Event {
        reason: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl WriteError {
    /// The write can never succeed for this Pod as it is (gone, or bound by someone else
    /// meanwhile): retrying is pointless.
    pub fn is_final(&self) -> bool {
        let api = match self {
            Self::Bind { source, .. } | Self::Status(source) | Self::Event { source, .. } => source,
        };
        matches!(api, kube::Error::Api(s) if s.code == 404 || s.code == 409)
    }
}

pub async fn bind(client: &Client, key: &PodKey, node: &str) -> Result<(), WriteError> {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    Api::<Pod>::namespaced(client.clone(), &key.namespace)
        .create_subresource::<_, serde_json::Value>("binding", &key.name, &PostParams::default(), &binding)
        .await
        .map(drop)
        .map_err(|source| WriteError::Bind {
            node: node.into(),
            source,
        })
}

/// Whether the Pod already says PodScheduled=False with this message.
pub fn already_unschedulable(pod: &Pod, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        })
}

/// PodScheduled=False, reason Unschedulable. A strategic merge patch, so the Pod's other
/// conditions (merged by `type`) stay as they are.
pub async fn mark_unschedulable(client: &Client, key: &PodKey, message: &str) -> Result<(), WriteError> {
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }]}});
    Api::<Pod>::namespaced(client.clone(), &key.namespace)
        .patch_status(&key.name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(drop)
        .map_err(WriteError::Status)
}

pub struct EventInfo<'a> {
    pub reason: &'static str,
    pub type_: &'static str,
    /// Upstream's `action` (events.k8s.io): "Scheduling" or "Binding".
    pub action: &'static str,
    pub message: &'a str,
}

/// A core/v1 Event about the Pod, reported as the scheduler `component`.
pub async fn record(client: &Client, pod: &Pod, component: &str, info: EventInfo<'_>) -> Result<(), WriteError> {
    let key = PodKey::of(pod);
    let now = Timestamp::now();
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    let event = Event {
        metadata: ObjectMeta {
            // Upstream's naming: the object's name and the time in hex nanoseconds.
            name: Some(format!("{}.{:x}", key.name, now.as_nanosecond())),
            namespace: Some(key.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(info.reason.into()),
        message: Some(info.message.into()),
        type_: Some(info.type_.into()),
        action: Some(info.action.into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        count: Some(1),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &key.namespace)
        .create(&PostParams::default(), &event)
        .await
        .map(drop)
        .map_err(|source| WriteError::Event {
            reason: info.reason,
            source,
        })
}
