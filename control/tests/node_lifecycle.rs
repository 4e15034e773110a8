//! Node failure and namespace deletion, end to end.
//!
//! A local cluster (`rudder up`, two nodes, each a network namespace with its node agent
//! and real pods) with a short `--node-monitor-grace-period`: freezing one node's agent
//! (SIGSTOP: its pods keep running, it just stops being heard from, as a partitioned node)
//! turns that node Unknown with the unreachable taints, its pods not ready and out of the
//! Service's EndpointSlice, and evicts the pods whose toleration is short, whose Deployment
//! replaces them on the live node. Thawing the agent makes the node Ready and untainted.
//!
//! Namespace deletion through kubectl 1.33 against a test server running the namespace
//! controller: every kind of object in it goes (a CRD's too), the namespace says what it
//! waits for, refuses new content meanwhile, and disappears.

mod common;

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::up::{RUDDER, Up};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Pod, Secret},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
};
use rudder_control::{controllers::nodelifecycle, up::demo};
use serde_json::json;

/// Generous: two shared cores, several test binaries at once.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn the_grace_period_defaults_to_40s_and_is_a_flag_of_both_commands() {
    assert_eq!(
        rudder_control::controllers::Config::default()
            .node_lifecycle
            .grace_period,
        Duration::from_secs(40)
    );
    for command in ["controller-manager", "server"] {
        let out = Command::new(RUDDER)
            .args([command, "--help"])
            .output()
            .expect("rudder --help");
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .skip_while(|l| !l.contains("--node-monitor-grace-period"))
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.contains("[default: 40s]"), "rudder {command} --help: {line:?}");
    }
    let out = Command::new(RUDDER)
        .args([
            "controller-manager",
            "--kubeconfig",
            "/nonexistent",
            "--node-monitor-grace-period",
            "soon",
        ])
        .output()
        .expect("rudder controller-manager");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--node-monitor-grace-period") && err.contains("not a duration"),
        "{err}"
    );
    // A short grace period is watched more often than upstream's 5 s.
    let short = nodelifecycle::Config::with_grace_period(Duration::from_secs(8));
    assert_eq!(short.monitor_period, Duration::from_secs(2));
}

/// Thaws a frozen agent even when the test fails, so teardown can stop it.
struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A Deployment of the demo HTTP server; `toleration_seconds` for the unreachable taint
/// (None: DefaultTolerationSeconds' 300 s).
fn deployment(name: &str, replicas: u32, toleration_seconds: Option<i64>) -> serde_json::Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "web", "image": "python:3", "command": ["python3", "-u", "-c", demo::SERVER],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        }],
    });
    if let Some(s) = toleration_seconds {
        spec["tolerations"] = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                      "effect": "NoExecute", "tolerationSeconds": s}]);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, "tier": "front"}}, "spec": spec},
        },
    })
}

fn node_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn pods(client: &Client, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The IPs the Service `front`'s EndpointSlices have as ready.
async fn ready_endpoints(client: &Client) -> BTreeSet<String> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=front"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

fn node_state(node: &Node) -> (String, Vec<String>) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| ts.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect())
        .unwrap_or_default();
    (ready, taints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_its_pods_leave_the_service_and_it_recovers() {
    const GRACE: u64 = 8;
    let mut up = Up::start(
        "nl",
        Ipv4Addr::new(10, 253, 30, 0),
        &[
            "--nodes",
            "2",
            "--no-demo",
            "--mode",
            "iptables",
            "--node-monitor-grace-period",
            "8s",
        ],
    );
    up.wait_for("rudder-proxy running on every node", Duration::from_secs(180));
    let client = common::client_from(&up.kubeconfig()).await;
    let nodes: Api<Node> = Api::all(client.clone());

    // `steady` tolerates the unreachable node for the default 300 s: one pod on each node
    // (required anti-affinity); `web` tolerates it for 3 s. A Service selects both.
    let mut steady = deployment("steady", 2, None);
    steady["spec"]["template"]["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "steady"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    up.apply(&steady);
    up.apply(&deployment("web", 2, Some(3)));
    up.apply(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "front", "namespace": "default"},
                     "spec": {"selector": {"tier": "front"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    let web = common::wait_for("2 ready web and 2 ready steady pods, 4 endpoints", WAIT, || async {
        let (web, steady) = (pods(&client, "web").await, pods(&client, "steady").await);
        let ready = web.iter().chain(&steady).filter(|p| pod_ready(p)).count();
        (ready == 4 && ready_endpoints(&client).await.len() == 4).then_some(web)
    })
    .await;

    // The node of a web pod goes silent.
    let victim = node_of(&web[0]);
    let live = if victim == "n1" { "n2" } else { "n1" };
    let on_victim: Vec<Pod> = pods(&client, "steady")
        .await
        .into_iter()
        .chain(pods(&client, "web").await)
        .filter(|p| node_of(p) == victim)
        .collect();
    let victim_ips: BTreeSet<String> = on_victim
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let steady_on_victim = pods(&client, "steady")
        .await
        .into_iter()
        .find(|p| node_of(p) == victim)
        .and_then(|p| p.metadata.name)
        .expect("a steady pod on each node");
    let frozen = Frozen(up.agent_pid(&victim));
    assert_eq!(unsafe { libc::kill(frozen.0, libc::SIGSTOP) }, 0, "freeze the agent");
    let stopped = Instant::now();
    let stopped_at = jiff::Timestamp::now();
    println!("froze the agent of {victim} (pods there: {})", on_victim.len());

    let state = common::wait_for("the node Unknown with the unreachable taints", WAIT, || async {
        let state = node_state(&nodes.get(&victim).await.ok()?);
        (state.0 == "Unknown" && state.1.contains(&"node.kubernetes.io/unreachable:NoExecute".to_owned()))
            .then_some(state)
    })
    .await;
    let unknown_after = stopped.elapsed();
    println!(
        "{victim} {state:?} {:.1}s after its agent stopped",
        unknown_after.as_secs_f64()
    );
    let node = nodes.get(&victim).await.expect("node");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(ready.message.as_deref(), Some("Kubelet stopped posting node status."));
    assert!(
        state
            .1
            .contains(&"node.kubernetes.io/unreachable:NoSchedule".to_owned()),
        "{state:?}"
    );
    // Not before the grace period, counted from the node's last renewal (the agent renews
    // every quarter of its lease, which `rudder up` sets to the grace period). The
    // condition's transition time has whole seconds only.
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .get(&victim)
        .await
        .expect("the node's Lease");
    let spec = lease.spec.expect("Lease spec");
    assert_eq!(
        spec.lease_duration_seconds,
        Some(GRACE as i32),
        "the agent's lease follows the grace period"
    );
    let renewed = spec.renew_time.expect("renewTime").0;
    assert!(
        renewed <= stopped_at,
        "renewed {renewed} after the freeze at {stopped_at}"
    );
    let transition = ready.last_transition_time.as_ref().expect("lastTransitionTime").0;
    let silent_for = transition.duration_since(renewed);
    println!("{victim} marked Unknown {silent_for:#} after its last renewal");
    assert!(
        silent_for >= jiff::SignedDuration::from_secs(GRACE as i64 - 1),
        "marked Unknown {silent_for:#} after its last renewal, before the {GRACE} s grace period"
    );

    // Its pods are out of the Service at once.
    common::wait_for("the silent node's pods out of the EndpointSlice", WAIT, || async {
        let eps = ready_endpoints(&client).await;
        eps.is_disjoint(&victim_ips).then_some(())
    })
    .await;
    let out_after = stopped.elapsed();
    println!(
        "its pods left the EndpointSlice {:.1}s after the agent stopped",
        out_after.as_secs_f64()
    );
    // Grace period, one monitor period and one EndpointSlice sync, with room for a loaded machine.
    assert!(out_after < Duration::from_secs(GRACE + 30), "{out_after:?}");

    // The web pods there are evicted after their 3 s and replaced on the live node; the
    // steady pod, tolerating 300 s, stays (not ready).
    let web = common::wait_for("2 ready web pods on the live node", WAIT, || async {
        let web: Vec<Pod> = pods(&client, "web")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        (web.len() == 2 && web.iter().all(|p| pod_ready(p) && node_of(p) == live)).then_some(web)
    })
    .await;
    println!(
        "web pods evicted and replaced on {live} {:.1}s after the agent stopped",
        stopped.elapsed().as_secs_f64()
    );
    let old_web: Vec<String> = on_victim
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str)
                == Some("web")
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        web.iter()
            .all(|p| !old_web.contains(p.metadata.name.as_ref().expect("name")))
    );
    let steady_pod = Api::<Pod>::namespaced(client.clone(), "default")
        .get(&steady_on_victim)
        .await
        .expect("the steady pod stays");
    assert!(steady_pod.metadata.deletion_timestamp.is_none(), "300 s not yet over");
    assert!(!pod_ready(&steady_pod), "a pod of an unreachable node is not ready");
    // The scheduler keeps new pods off the tainted node.
    up.apply(&deployment("late", 1, None));
    let late = common::wait_for("the new pod scheduled", WAIT, || async {
        pods(&client, "late").await.into_iter().find(|p| !node_of(p).is_empty())
    })
    .await;
    assert_eq!(node_of(&late), live);

    // The agent comes back: Ready, untainted, its pod ready and serving again.
    drop(frozen);
    let back = Instant::now();
    common::wait_for("the node Ready and untainted", WAIT, || async {
        let (ready, taints) = node_state(&nodes.get(&victim).await.ok()?);
        (ready == "True" && !taints.iter().any(|t| t.contains("unreachable"))).then_some(())
    })
    .await;
    println!(
        "{victim} Ready and untainted {:.1}s after its agent resumed",
        back.elapsed().as_secs_f64()
    );
    common::wait_for("the steady pod ready and back in the Service", WAIT, || async {
        let p = Api::<Pod>::namespaced(client.clone(), "default")
            .get(&steady_on_victim)
            .await
            .ok()?;
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        (pod_ready(&p) && ready_endpoints(&client).await.contains(&ip)).then_some(())
    })
    .await;
    common::wait_for("the evicted web pods gone", WAIT, || async {
        let left = pods(&client, "web").await;
        left.iter()
            .all(|p| p.metadata.name.as_ref().is_none_or(|n| !old_web.contains(n)))
            .then_some(())
    })
    .await;
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> (bool, String, String) {
    common::run_kubectl(33, kubeconfig, cache, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_namespace_empties_it_of_every_kind_then_removes_it() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let _workloads = {
        let (a, b) = (server.client().await, server.client().await);
        (
            common::Background::start(move |s| rudder_control::controllers::deployment::run(a, s)),
            common::Background::start(move |s| rudder_control::controllers::replicaset::run(b, s)),
        )
    };
    let kubeconfig = server.kubeconfig();
    let cache = server.dir.path().join("kubectl-cache");
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    });
    let manifests = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        crd,
    ];
    let dir = server.dir.path();
    let write = |name: &str, v: &serde_json::Value| {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).expect("manifest");
        p.to_string_lossy().into_owned()
    };
    for (i, m) in manifests.iter().enumerate() {
        let (ok, _, err) = kubectl(&kubeconfig, &cache, &["apply", "-f", &write(&format!("m{i}.json"), m)]);
        assert!(ok, "{err}");
    }
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "x", &ApiResource::from_gvk(&gvk));
    common::wait_for("the Widget type served", WAIT, || async {
        widgets.list(&ListParams::default()).await.ok()
    })
    .await;
    let content = [
        deployment_in_x(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "x"}, "data": {"a": "1"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": "x"}, "stringData": {"t": "s"}}),
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "x"}}),
        // Held by a finalizer of its own, so the namespace's wait can be watched.
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "metadata": {"name": "held", "namespace": "x", "finalizers": ["example.com/hold"]}}),
    ];
    for (i, m) in content.iter().enumerate() {
        let (ok, _, err) = kubectl(&kubeconfig, &cache, &["apply", "-f", &write(&format!("c{i}.json"), m)]);
        assert!(ok, "{err}");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "x");
    common::wait_for("the Deployment's pods", WAIT, || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;

    let started = Instant::now();
    let deleting = {
        let (kubeconfig, cache) = (kubeconfig.clone(), cache.clone());
        tokio::task::spawn_blocking(move || {
            kubectl(&kubeconfig, &cache, &["delete", "ns", "x", "--wait", "--timeout=120s"])
        })
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = common::wait_for("the namespace waiting on the held widget", WAIT, || async {
        let ns = namespaces.get("x").await.ok()?;
        let conds = ns.status.as_ref()?.conditions.clone()?;
        conds
            .iter()
            .any(|c| c.type_ == "NamespaceFinalizersRemaining" && c.status == "True")
            .then_some(ns)
    })
    .await;
    let status = ns.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Terminating"));
    let conds = status.conditions.expect("conditions");
    let message = |kind: &str| {
        conds
            .iter()
            .find(|c| c.type_ == kind)
            .and_then(|c| c.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        message("NamespaceFinalizersRemaining"),
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        message("NamespaceContentRemaining"),
        "Some resources are remaining: widgets.example.com has 1 resource instances"
    );
    assert_eq!(
        message("NamespaceDeletionContentFailure"),
        "All content successfully deleted, may be waiting on finalization"
    );
    assert_eq!(ns.spec.and_then(|s| s.finalizers), Some(vec!["kubernetes".to_owned()]));
    // Everything else is gone already.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "x");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "x");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "x");
    assert!(cms.get_opt("settings").await.expect("get").is_none());
    assert!(secrets.get_opt("token").await.expect("get").is_none());
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(pods.list(&ListParams::default()).await.expect("list").items.is_empty());
    assert!(widgets.get_opt("w1").await.expect("get").is_none());

    // New content is refused while it terminates.
    let (ok, _, err) = kubectl(&kubeconfig, &cache, &["create", "configmap", "late", "-n", "x"]);
    assert!(!ok);
    // kubectl create prints the server's message after its own prefix.
    assert!(
        err.contains(
            "configmaps \"late\" is forbidden: unable to create new content in namespace x because it is being terminated"
        ),
        "{err}"
    );

    // Its finalizer done, the widget goes and so does the namespace; kubectl's wait ends.
    widgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("drop the widget's finalizer");
    let (ok, out, err) = deleting.await.expect("kubectl delete");
    assert!(ok, "kubectl delete ns x --wait: {out}{err}");
    assert_eq!(out.trim(), "namespace \"x\" deleted");
    assert!(namespaces.get_opt("x").await.expect("get").is_none());
    println!(
        "namespace x emptied (Deployment, pods, ConfigMap, Secret, widgets) and gone {:.1}s after kubectl delete",
        started.elapsed().as_secs_f64()
    );
    server.running.stop().await;
}

fn deployment_in_x() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": "x"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
                 "template": {"metadata": {"labels": {"app": "a"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    })
}
