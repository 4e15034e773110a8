//! Creating the objects a kubelet and a user would: Nodes and Pods (with status), Services.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as NodeObject, Pod as PodObject, Service};
use kube::api::{Api as KubeApi, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::Api;
use crate::netns::{Node, Pod};

pub const NAMESPACE: &str = "default";

impl Api {
    /// The Node object for a harness node, with its underlay address as InternalIP.
    pub fn register_node(&self, node: &Node) {
        let (name, ip) = (node.name().to_owned(), node.ip().to_string());
        let client = self.client.clone();
        self.run(async move {
            let nodes: KubeApi<NodeObject> = KubeApi::all(client);
            let object: NodeObject = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            }))
            .expect("a Node");
            nodes
                .create(&PostParams::default(), &object)
                .await
                .expect("create the Node");
            let status = json!({"status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .expect("set the Node's status");
        });
    }

    /// The Pod object for a harness pod: on its node, with `labels`, container port 8080
    /// named `http` (TCP and UDP), Running and Ready at its address.
    pub fn register_pod(&self, pod: &Pod, node: &Node, labels: Value) {
        let (name, node_name, ip) = (pod.name().to_owned(), node.name().to_owned(), pod.ip().to_string());
        let client = self.client.clone();
        self.run(async move {
            let pods: KubeApi<PodObject> = KubeApi::namespaced(client, NAMESPACE);
            let object: PodObject = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": node_name, "containers": [{
                    "name": "echo", "image": "rudder-echo",
                    "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "dns", "containerPort": 8080, "protocol": "UDP"}
                    ]
                }]},
            }))
            .expect("a Pod");
            pods.create(&PostParams::default(), &object)
                .await
                .expect("create the Pod");
            set_pod_ready(&pods, &name, &ip, true).await;
        });
    }

    pub fn set_pod_ready(&self, pod: &str, ip: &str, ready: bool) {
        let (pod, ip, client) = (pod.to_owned(), ip.to_owned(), self.client.clone());
        self.run(async move {
            let pods: KubeApi<PodObject> = KubeApi::namespaced(client, NAMESPACE);
            set_pod_ready(&pods, &pod, &ip, ready).await;
        });
    }

    /// Deletes a Pod object at once (no grace period), as a kubelet confirms a kill.
    pub fn delete_pod(&self, pod: &str) {
        let (pod, client) = (pod.to_owned(), self.client.clone());
        self.run(async move {
            let pods: KubeApi<PodObject> = KubeApi::namespaced(client, NAMESPACE);
            pods.delete(
                &pod,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .expect("delete the Pod");
            let deadline = Instant::now() + crate::slow(Duration::from_secs(10));
            while pods.get_opt(&pod).await.expect("get the Pod").is_some() {
                assert!(Instant::now() < deadline, "Pod {pod} not gone within 10 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// Creates a Service from the JSON a user would apply, returning it as stored (with its
    /// ClusterIP and NodePorts allocated).
    pub fn create_service(&self, object: Value) -> Service {
        let client = self.client.clone();
        self.run(async move {
            let services: KubeApi<Service> = KubeApi::namespaced(client, NAMESPACE);
            let object: Service = serde_json::from_value(object).expect("a Service");
            services
                .create(&PostParams::default(), &object)
                .await
                .expect("create the Service")
        })
    }

    pub fn patch_service(&self, name: &str, patch: Value) -> Service {
        let (name, client) = (name.to_owned(), self.client.clone());
        self.run(async move {
            let services: KubeApi<Service> = KubeApi::namespaced(client, NAMESPACE);
            services
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("patch the Service")
        })
    }

    /// Merge-patches the Service's status subresource, as a load balancer controller does
    /// when it publishes `status.loadBalancer.ingress`.
    pub fn patch_service_status(&self, name: &str, patch: Value) -> Service {
        let (name, client) = (name.to_owned(), self.client.clone());
        self.run(async move {
            let services: KubeApi<Service> = KubeApi::namespaced(client, NAMESPACE);
            services
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("patch the Service's status")
        })
    }

    pub fn delete_service(&self, name: &str) {
        let (name, client) = (name.to_owned(), self.client.clone());
        self.run(async move {
            let services: KubeApi<Service> = KubeApi::namespaced(client, NAMESPACE);
            services
                .delete(&name, &DeleteParams::default())
                .await
                .expect("delete the Service");
        });
    }
}

async fn set_pod_ready(pods: &KubeApi<PodObject>, name: &str, ip: &str, ready: bool) {
    let flag = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": flag}, {"type": "ContainersReady", "status": flag}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("set the Pod's status");
}

/// The ClusterIP the API server allocated.
pub fn cluster_ip(service: &Service) -> std::net::IpAddr {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .expect("the Service has a ClusterIP")
}

/// The NodePort of the Service's port named `port_name`.
pub fn node_port(service: &Service, port_name: &str) -> u16 {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(port_name)))
        .and_then(|p| p.node_port)
        .and_then(|p| u16::try_from(p).ok())
        .expect("the Service port has a NodePort")
}

pub fn health_check_node_port(service: &Service) -> u16 {
    service
        .spec
        .as_ref()
        .and_then(|s| s.health_check_node_port)
        .and_then(|p| u16::try_from(p).ok())
        .expect("the Service has a healthCheckNodePort")
}
