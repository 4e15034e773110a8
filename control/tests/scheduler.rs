//! The scheduler against a real `rudder server`, with the scheduler's own identity
//! (`system:kube-scheduler`, as the server's default RBAC names it): Pods in, bindings,
//! conditions and Events out.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use rudder_control::scheduler::{self, Config};
use serde_json::{Value, json};

const NS: &str = "apps";
/// Generous: the machine running the tests may be a loaded 2-core VM.
const WAIT: Duration = Duration::from_secs(10);

/// A Ready node with the given allocatable CPU, 4Gi of memory and room for 110 Pods.
async fn add_node(client: &Client, name: &str, cpu: &str, metadata: Value, spec: Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut meta = json!({"name": name, "labels": {"kubernetes.io/hostname": name}});
    merge(&mut meta, metadata);
    let node: Node = serde_json::from_value(json!({"metadata": meta, "spec": spec})).expect("node");
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A Pod requesting `cpu`, with `extra` merged into its JSON.
async fn add_pod(client: &Client, name: &str, cpu: &str, extra: Value) {
    let mut p = json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27",
                 "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    });
    merge(&mut p, extra);
    let pod: Pod = serde_json::from_value(p).expect("pod");
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

async fn node_of(client: &Client, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .expect("get pod");
    pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty())
}

async fn wait_bound(client: &Client, name: &str) -> String {
    common::wait_for(&format!("pod {name} to be bound"), WAIT, || node_of(client, name)).await
}

async fn events_about(client: &Client, pod: &str, reason: &str) -> Vec<Event> {
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list events");
    events
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason))
        .collect()
}

async fn setup() -> (common::TestServer, Client, common::Background) {
    let server = common::TestServer::start().await;
    let admin = server.client().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace");
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let client = server.cert_client("system:kube-scheduler", &[]).await;
    let scheduler = common::Background::start(|shutdown| scheduler::run(client, Config::default(), shutdown));
    (server, admin, scheduler)
}

#[tokio::test]
async fn pods_spread_a_pod_too_big_waits_for_a_node_and_other_schedulers_pods_are_left_alone() {
    let (_server, client, scheduler) = setup().await;
    for i in 1..=3 {
        add_node(&client, &format!("node-{i}"), "2", json!({}), json!({})).await;
    }

    // Three replicas of one ReplicaSet land on three different nodes.
    let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "web", "uid": "5f7c2b1e-0000-4000-8000-000000000001", "controller": true}]}});
    for i in 1..=3 {
        add_pod(&client, &format!("web-{i}"), "500m", owner.clone()).await;
    }
    let mut placed = Vec::new();
    for i in 1..=3 {
        placed.push(wait_bound(&client, &format!("web-{i}")).await);
    }
    placed.sort();
    assert_eq!(placed, ["node-1", "node-2", "node-3"], "replicas spread over the nodes");
    let scheduled = common::wait_for("a Scheduled event", WAIT, || async {
        events_about(&client, "web-1", "Scheduled").await.into_iter().next()
    })
    .await;
    assert_eq!(scheduled.type_.as_deref(), Some("Normal"));
    let node = node_of(&client, "web-1").await.expect("bound");
    assert_eq!(
        scheduled.message.as_deref(),
        Some(format!("Successfully assigned {NS}/web-1 to {node}").as_str())
    );
    assert_eq!(
        scheduled.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );

    // A Pod of another scheduler is not ours.
    add_pod(
        &client,
        "elsewhere",
        "100m",
        json!({"spec": {"schedulerName": "other"}}),
    )
    .await;

    // 3 CPUs fit on no node: the Pod says why, once.
    add_pod(&client, "big", "3", json!({})).await;
    let want = "0/3 nodes are available: 3 Insufficient cpu.";
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    common::wait_for("big's PodScheduled=False condition", WAIT, || async {
        let pod = pods.get("big").await.expect("get big");
        let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
        conditions.into_iter().find(|c| c.type_ == "PodScheduled").filter(|c| {
            c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(want)
        })
    })
    .await;
    let failed = common::wait_for("a FailedScheduling event", WAIT, || async {
        events_about(&client, "big", "FailedScheduling")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(failed.message.as_deref(), Some(want));
    assert_eq!(failed.reporting_component.as_deref(), Some("default-scheduler"));

    // Pods changing elsewhere make the scheduler try again, with no new event for the same message.
    add_pod(&client, "small", "100m", json!({})).await;
    wait_bound(&client, "small").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        events_about(&client, "big", "FailedScheduling").await.len(),
        1,
        "one event per distinct message"
    );
    assert_eq!(node_of(&client, "big").await, None);

    // A node big enough arrives: the Pod goes there.
    add_node(&client, "node-4", "8", json!({}), json!({})).await;
    assert_eq!(wait_bound(&client, "big").await, "node-4");
    // The binding, as upstream's, turns the verdict into PodScheduled=True.
    let big = pods.get("big").await.expect("get big");
    let scheduled = big
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled");
    assert_eq!(
        scheduled.map(|c| (c.status, c.reason)),
        Some(("True".to_string(), None))
    );

    // All this while, the other scheduler's Pod stayed untouched.
    let elsewhere = pods.get("elsewhere").await.expect("get elsewhere");
    assert_eq!(elsewhere.spec.and_then(|s| s.node_name), None);
    assert!(
        elsewhere
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .is_empty()
    );
    assert!(events_about(&client, "elsewhere", "FailedScheduling").await.is_empty());
    scheduler.stop(WAIT).await;
}

#[tokio::test]
async fn taints_tolerations_and_node_selectors() {
    let (_server, client, scheduler) = setup().await;
    add_node(
        &client,
        "gpu",
        "2",
        json!({"labels": {"accelerator": "yes"}}),
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    add_node(&client, "ssd", "2", json!({"labels": {"disk": "ssd"}}), json!({})).await;
    add_node(&client, "plain", "2", json!({}), json!({})).await;

    for i in 1..=4 {
        add_pod(&client, &format!("any-{i}"), "100m", json!({})).await;
    }
    for i in 1..=4 {
        assert_ne!(
            wait_bound(&client, &format!("any-{i}")).await,
            "gpu",
            "the taint keeps untolerating pods away"
        );
    }

    add_pod(
        &client,
        "fast",
        "100m",
        json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
    )
    .await;
    assert_eq!(wait_bound(&client, "fast").await, "ssd");

    let on_gpu = json!({"spec": {
        "nodeSelector": {"accelerator": "yes"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    }});
    add_pod(&client, "trainer", "100m", on_gpu).await;
    assert_eq!(wait_bound(&client, "trainer").await, "gpu");

    // Selecting the tainted node without tolerating it: no node.
    add_pod(
        &client,
        "intruder",
        "100m",
        json!({"spec": {"nodeSelector": {"accelerator": "yes"}}}),
    )
    .await;
    let failed = common::wait_for("a FailedScheduling event", WAIT, || async {
        events_about(&client, "intruder", "FailedScheduling")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        failed.message.as_deref(),
        Some(
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector."
        )
    );
    scheduler.stop(WAIT).await;
}
