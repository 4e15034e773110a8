//! Node IPAM, the DaemonSet controller and the garbage collector against an in-process
//! `rudder server`. There is no kubelet here: the test marks pods Ready itself.

mod common;

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, ReplicaSet},
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rudder_control::controllers::{daemonset, gc, nodeipam};
use serde_json::json;

/// Generous: two shared cores, several test binaries at once.
const WAIT: Duration = Duration::from_secs(30);

fn ipam(client: Client, cidr: &str, mask: u8) -> common::Background {
    let range = nodeipam::RangeAllocator::new(cidr.parse().expect("cidr"), mask).expect("range");
    common::Background::start(move |shutdown| nodeipam::run(client, nodeipam::Config { range }, shutdown))
}

async fn create_node(client: &Client, name: &str, taint: Option<&str>) {
    let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    if let Some(key) = taint {
        node["spec"] = json!({"taints": [{"key": key, "effect": "NoSchedule"}]});
    }
    let node: Node = serde_json::from_value(node).expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
}

async fn pod_cidrs(client: &Client) -> Vec<(String, Option<String>)> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    nodes
        .items
        .into_iter()
        .map(|n| (n.metadata.name.unwrap_or_default(), n.spec.and_then(|s| s.pod_cidr)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs_that_survive_a_restart() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller = ipam(server.client().await, "10.244.0.0/16", 24);
    for n in ["n1", "n2", "n3"] {
        create_node(&client, n, None).await;
    }
    let first = common::wait_for("three pod CIDRs", WAIT, || async {
        let all = pod_cidrs(&client).await;
        all.iter().all(|(_, c)| c.is_some()).then_some(all)
    })
    .await;
    let distinct: BTreeSet<_> = first.iter().filter_map(|(_, c)| c.clone()).collect();
    assert_eq!(distinct.len(), 3, "{first:?}");
    assert!(
        distinct.iter().all(|c| c.starts_with("10.244.") && c.ends_with("/24")),
        "{first:?}"
    );
    let n1 = Api::<Node>::all(client.clone()).get("n1").await.expect("n1");
    let spec = n1.spec.expect("spec");
    assert_eq!(spec.pod_cidrs, Some(vec![spec.pod_cidr.clone().expect("podCIDR")]));
    controller.stop(WAIT).await;

    // While it is down: a Node goes (its block is free again) and one comes.
    Api::<Node>::all(client.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete n2");
    create_node(&client, "n4", None).await;
    let controller = ipam(server.client().await, "10.244.0.0/16", 24);
    let second = common::wait_for("n4's pod CIDR", WAIT, || async {
        let all = pod_cidrs(&client).await;
        all.iter().all(|(_, c)| c.is_some()).then_some(all)
    })
    .await;
    for (name, cidr) in &first {
        if name != "n2" {
            assert!(
                second.contains(&(name.clone(), cidr.clone())),
                "{name} kept {cidr:?}: {second:?}"
            );
        }
    }
    let distinct: BTreeSet<_> = second.iter().filter_map(|(_, c)| c.clone()).collect();
    assert_eq!(distinct.len(), 3, "{second:?}");
    controller.stop(WAIT).await;
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_range_leaves_the_node_without_and_says_why() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller = ipam(server.client().await, "10.0.0.0/23", 24);
    for n in ["a", "b", "c"] {
        create_node(&client, n, None).await;
    }
    common::wait_for("two allocations", WAIT, || async {
        let all = pod_cidrs(&client).await;
        (all.iter().filter(|(_, c)| c.is_some()).count() == 2).then_some(())
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    common::wait_for("a CIDRNotAvailable event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
            .then_some(())
    })
    .await;
    // A Node going frees its block for the one without.
    let all = pod_cidrs(&client).await;
    let (with, _) = all.iter().find(|(_, c)| c.is_some()).expect("one has a block");
    Api::<Node>::all(client.clone())
        .delete(with, &DeleteParams::default())
        .await
        .expect("delete");
    common::wait_for("the freed block reused", WAIT, || async {
        let all = pod_cidrs(&client).await;
        (all.len() == 2 && all.iter().all(|(_, c)| c.is_some())).then_some(())
    })
    .await;
    controller.stop(WAIT).await;
    server.running.stop().await;
}

fn daemonset(name: &str, tolerate: Option<&str>) -> DaemonSet {
    let mut ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "agent:1"}]}},
        },
    });
    if let Some(key) = tolerate {
        ds["spec"]["template"]["spec"]["tolerations"] = json!([{"key": key, "operator": "Exists"}]);
    }
    serde_json::from_value(ds).expect("daemonset")
}

/// Node name of each live pod of the DaemonSet, sorted.
async fn daemon_nodes(pods: &Api<Pod>, app: &str) -> Vec<String> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    let mut nodes: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default())
        .collect();
    nodes.sort();
    nodes
}

async fn mark_ready(pods: &Api<Pod>, app: &str) {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    for p in list.items {
        let name = p.metadata.name.unwrap_or_default();
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let controller_client = server.client().await;
    let controller = common::Background::start(move |shutdown| daemonset::run(controller_client, shutdown));
    for (n, taint) in [("a", None), ("b", None), ("t", Some("dedicated"))] {
        create_node(&client, n, taint).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    sets.create(&PostParams::default(), &daemonset("agent", None))
        .await
        .expect("create ds");
    sets.create(&PostParams::default(), &daemonset("tolerant", Some("dedicated")))
        .await
        .expect("create ds");

    common::wait_for("agent on a and b", WAIT, || async {
        (daemon_nodes(&pods, "agent").await == ["a", "b"]).then_some(())
    })
    .await;
    common::wait_for("tolerant on a, b and t", WAIT, || async {
        (daemon_nodes(&pods, "tolerant").await == ["a", "b", "t"]).then_some(())
    })
    .await;
    // Stays exactly one per node.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(daemon_nodes(&pods, "agent").await, ["a", "b"]);

    let pod = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .expect("list")
        .items
        .remove(0);
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert!(
        labels.contains_key("controller-revision-hash")
            && labels.get("pod-template-generation").map(String::as_str) == Some("1")
    );
    let owner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("DaemonSet", Some(true)));

    // The test is the kubelet: pods become Ready, the status says so, rollout status agrees.
    mark_ready(&pods, "agent").await;
    common::wait_for("agent status", WAIT, || async {
        let s = sets.get("agent").await.ok()?.status?;
        (s.desired_number_scheduled == 2
            && s.current_number_scheduled == 2
            && s.number_ready == 2
            && s.number_available == Some(2)
            && s.updated_number_scheduled == Some(2)
            && s.number_misscheduled == 0
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;
    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("kubectl-cache");
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        common::run_kubectl(
            33,
            &kubeconfig,
            &cache,
            &["rollout", "status", "daemonset/agent", "-n", "default", "--timeout=30s"],
        )
    })
    .await
    .expect("kubectl");
    assert!(
        ok && out.contains("successfully rolled out"),
        "rollout status: {out} {err}"
    );

    // A new template rolls out node by node; the test, as kubelet, finishes deletions and
    // reports the new pods Ready.
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}}}});
    sets.patch("agent", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("new template");
    common::wait_for("agent rolled out", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=agent")).await.ok()?;
        for p in &list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            if p.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..DeleteParams::default()
                        },
                    )
                    .await;
            }
        }
        mark_ready(&pods, "agent").await;
        let s = sets.get("agent").await.ok()?.status?;
        let generations: BTreeSet<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.labels.as_ref()?.get("pod-template-generation").cloned())
            .collect();
        (s.observed_generation == Some(2)
            && s.updated_number_scheduled == Some(2)
            && s.number_available == Some(2)
            && list.items.len() == 2
            && generations == BTreeSet::from(["2".to_owned()]))
        .then_some(())
    })
    .await;

    // A new Node gets one; a deleted Node loses its.
    create_node(&client, "c", None).await;
    common::wait_for("agent on c", WAIT, || async {
        (daemon_nodes(&pods, "agent").await == ["a", "b", "c"]).then_some(())
    })
    .await;
    Api::<Node>::all(client.clone())
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    common::wait_for("agent off a", WAIT, || async {
        (daemon_nodes(&pods, "agent").await == ["b", "c"]).then_some(())
    })
    .await;
    common::wait_for("tolerant off a", WAIT, || async {
        (daemon_nodes(&pods, "tolerant").await == ["b", "c", "t"]).then_some(())
    })
    .await;

    controller.stop(WAIT).await;
    server.running.stop().await;
}

/// A ReplicaSet (no controller runs for it here) and two Pods it owns; returns its uid.
async fn owner_with_dependents(client: &Client, name: &str, pod_finalizer: Option<&str>) -> String {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"owner": name}},
                 "template": {"metadata": {"labels": {"owner": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}},
    }))
    .expect("rs");
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .expect("create rs");
    let uid = rs.metadata.uid.expect("uid");
    for i in 0..2 {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-{i}"), "namespace": "default", "labels": {"owner": name},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid,
                                              "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        });
        if let (Some(f), 0) = (pod_finalizer, i) {
            pod["metadata"]["finalizers"] = json!([f]);
        }
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        Api::<Pod>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    uid
}

async fn dependents(pods: &Api<Pod>, owner: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("owner={owner}")))
        .await
        .expect("list")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_cascades_through_the_garbage_collector() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let gc_client = server.client().await;
    let collector = common::Background::start(move |shutdown| gc::run(gc_client, shutdown));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("kubectl-cache");
    let run = |args: Vec<String>| {
        let (kc, cache) = (kubeconfig.clone(), cache.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run_kubectl(33, &kc, &cache, &args)
        })
    };
    let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();

    // Background (kubectl's default): the owner goes at once, the collector takes the pods.
    owner_with_dependents(&client, "bg", None).await;
    let (ok, _, err) = run(args("delete replicaset bg -n default")).await.expect("kubectl");
    assert!(ok, "kubectl delete: {err}");
    common::wait_for("bg's pods gone", WAIT, || async {
        dependents(&pods, "bg").await.is_empty().then_some(())
    })
    .await;

    // Orphan: the pods stay, without their ownerReferences.
    owner_with_dependents(&client, "orph", None).await;
    let (ok, _, err) = run(args("delete replicaset orph -n default --cascade=orphan"))
        .await
        .expect("kubectl");
    assert!(ok, "kubectl delete --cascade=orphan: {err}");
    common::wait_for("orph gone", WAIT, || async {
        sets.get_opt("orph").await.ok()?.is_none().then_some(())
    })
    .await;
    let left = dependents(&pods, "orph").await;
    assert_eq!(left.len(), 2);
    assert!(
        left.iter()
            .all(|p| p.metadata.owner_references.as_ref().is_none_or(Vec::is_empty)),
        "{left:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dependents(&pods, "orph").await.len(), 2, "orphans are not collected");

    // Foreground: the owner waits, marked, until its blocking dependents are gone. One pod
    // holds a finalizer of the test's, so the wait can be seen.
    owner_with_dependents(&client, "fg", Some("example.com/hold")).await;
    let (ok, _, err) = run(args(
        "delete replicaset fg -n default --cascade=foreground --wait=false",
    ))
    .await
    .expect("kubectl");
    assert!(ok, "kubectl delete --cascade=foreground: {err}");
    common::wait_for("fg-1 deleted, fg-0 terminating", WAIT, || async {
        let left = dependents(&pods, "fg").await;
        (left.len() == 1 && left[0].metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    let rs = sets.get("fg").await.expect("the owner waits for its dependents");
    assert!(rs.metadata.deletion_timestamp.is_some());
    assert_eq!(
        rs.metadata.finalizers.clone().unwrap_or_default(),
        ["foregroundDeletion"]
    );
    // The "kubelet" lets the last pod go; then the owner goes.
    pods.patch(
        "fg-0",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the test finalizer");
    common::wait_for("fg gone", WAIT, || async {
        sets.get_opt("fg").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(dependents(&pods, "fg").await.is_empty());

    collector.stop(WAIT).await;
    server.running.stop().await;
}
