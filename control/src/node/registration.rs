//! The node's own objects: its Node (registered once, status kept current) and its Lease
//! in `kube-node-lease`, renewed every 10 s as the kubelet does.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{api::coordination::v1::Lease, api::core::v1::Node, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::Config;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The kubelet's default `nodeLeaseDurationSeconds`.
pub const LEASE_DURATION_SECONDS: u32 = 40;

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// Labels every node carries (upstream's well-known ones).
pub fn labels(config: &Config) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), config.node_name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        ),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
    ]);
    l.extend(config.labels.clone());
    l
}

/// The status the node reports: addresses, capacity, conditions, its endpoint.
pub fn status(config: &Config, ip: Ipv4Addr) -> serde_json::Value {
    let resources = json!({
        "cpu": format!("{}m", config.cpu_millis),
        "memory": format!("{}Ki", config.memory_bytes / 1024),
        "pods": config.max_pods.to_string(),
        "ephemeral-storage": "10Gi",
    });
    let now = now();
    json!({
        "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": config.node_name}],
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "rudder node agent is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "osImage": "rudder process runtime", "containerRuntimeVersion": "rudder-process://0.1.0",
            "kubeletVersion": "v1.33.0-rudder", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
    })
}

/// Where the local-path provisioner puts this node's volumes: under its root, so simulated
/// nodes on one machine keep theirs apart.
pub fn annotations(config: &Config) -> BTreeMap<String, String> {
    let root = config.root_dir.join("local-path");
    BTreeMap::from([(
        crate::controllers::volume::LOCAL_PATH_ROOT_ANNOTATION.to_owned(),
        root.display().to_string(),
    )])
}

/// Creates the Node if it does not exist, then writes its labels and status.
pub async fn register(client: &Client, config: &Config, ip: Ipv4Addr) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let annotations = annotations(config);
    let body = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels(config), "annotations": annotations}});
    match nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).map_err(kube::Error::SerdeError)?,
        )
        .await
    {
        Ok(_) => tracing::info!(node = %config.node_name, "registered node"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            nodes
                .patch(
                    &config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels(config), "annotations": annotations}})),
                )
                .await?;
        }
        Err(e) => return Err(e),
    }
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status(config, ip)})),
        )
        .await
}

/// Renews the node's Lease for ever (the caller aborts the task to stop). After each
/// renewal, a node that the node lifecycle controller marked not Ready while this agent
/// was silent gets its status posted again, which lifts the controller's taints.
pub async fn renew_lease(client: Client, config: Config, ip: Ipv4Addr) {
    let node = config.node_name.clone();
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let seconds = config.lease_duration.as_secs().max(1);
    let renew_interval = config.lease_duration / 4;
    loop {
        let renew = MicroTime(jiff::Timestamp::now());
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": seconds, "renewTime": renew},
        });
        let result = match leases
            .patch(
                &node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": body["spec"]})),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => match serde_json::from_value::<Lease>(body) {
                Ok(lease) => leases.create(&PostParams::default(), &lease).await.map(|_| ()),
                Err(e) => Err(kube::Error::SerdeError(e)),
            },
            other => other.map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(%node, error = %e, "renewing node lease");
        } else if let Err(e) = repost_if_marked(&nodes, &config, ip).await {
            tracing::warn!(%node, error = %e, "posting node status");
        }
        tokio::time::sleep(renew_interval).await;
    }
}

/// Posts the node's status again when the API no longer says it is Ready.
async fn repost_if_marked(nodes: &Api<Node>, config: &Config, ip: Ipv4Addr) -> Result<(), kube::Error> {
    let node = nodes.get(&config.node_name).await?;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        tracing::info!(node = %config.node_name, "the node is not Ready in the API: posting its status again");
        nodes
            .patch_status(
                &config.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status(config, ip)})),
            )
            .await?;
    }
    Ok(())
}
