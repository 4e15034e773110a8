//! Persistent volumes end to end: an in-process API server, the PV controller with the
//! local-path provisioner, the scheduler, and two real node agents (`rudder node`, as
//! `system:node:<name>`) running real pods (host processes; the pods use the host network,
//! so the nodes need no pod networking), driven by kubectl 1.33.
//!
//! It proves: a claim of the default class waits for its first pod, is then provisioned on
//! that pod's node and bound; data written by one pod is read by the next pod using the
//! claim, which lands on the same node; deleting the claim deletes the volume and its
//! directory (Delete), or leaves both, Released (Retain); a static volume binds by
//! `volumeName`; an invalid claim is refused naming its fields. Needs root (cgroups).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use rudder_control::{
    apiserver::pki::Credential,
    controllers::volume::{self, local_path},
    node::cgroups,
    scheduler,
};
use serde_json::json;

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");
/// Generous: two shared cores, several test binaries at once.
const WAIT: Duration = Duration::from_secs(90);
const NS: &str = "default";

/// A node agent process; killed on drop.
struct Agent {
    child: Child,
    name: String,
    root: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agents' cgroup parent in every hierarchy they use (cgroup2 and, on a hybrid host, the
/// v1 memory and cpu controllers); removed on drop, so also when the test panics. Declared
/// before the agents, it drops after them.
struct CgroupParent(String);

impl CgroupParent {
    fn new() -> Self {
        CgroupParent(format!("rudder-pv-test-{}", std::process::id()))
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let mut roots: Vec<PathBuf> = cgroups::cgroup2_root().into_iter().collect();
        roots.extend(["memory", "cpu"].map(|c| Path::new("/sys/fs/cgroup").join(c)));
        for root in roots {
            // remove_tree kills what is left inside (the pods' shims and processes) first.
            cgroups::remove_tree(&root.join(&self.0));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_agent(server: &common::TestServer, name: &str, dir: &Path, cgroup: &CgroupParent) -> Agent {
    let user = format!("system:node:{name}");
    let (cert_pem, key_pem) = server
        .running
        .pki
        .issue_client_cert(&user, &["system:nodes"])
        .expect("a node certificate");
    let kubeconfig = server.user_kubeconfig(&user, Credential::ClientCert { cert_pem, key_pem });
    let root = dir.join(name);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("agent log");
    let child = Command::new(RUDDER)
        .arg("node")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", name, "--node-ip", "127.0.0.1"])
        .arg("--port")
        .arg(free_port().to_string())
        .arg("--root-dir")
        .arg(&root)
        .arg("--cgroup-parent")
        .arg(format!("{}/{name}", cgroup.0))
        .arg("--netns-prefix")
        .arg(format!("rdr-pvt-{name}-"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start rudder node");
    Agent {
        child,
        name: name.to_owned(),
        root,
    }
}

struct Kubectl {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        common::run_kubectl(33, &self.kubeconfig, &self.dir.join("cache"), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    /// `kubectl apply` of one object, through a file.
    fn apply(&self, obj: &serde_json::Value) -> String {
        let file = self
            .dir
            .join(format!("{}.json", obj["metadata"]["name"].as_str().unwrap_or("object")));
        std::fs::write(&file, obj.to_string()).expect("write manifest");
        self.ok(&["apply", "-f", file.to_str().expect("utf-8 path")])
    }
}

fn claim(name: &str, class: Option<&str>, volume: Option<&str>) -> serde_json::Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}});
    if let Some(class) = class {
        c["spec"]["storageClassName"] = json!(class);
    }
    if let Some(v) = volume {
        c["spec"]["volumeName"] = json!(v);
    }
    c
}

/// A pod that runs `script` once with the claim mounted at /mnt/data.
fn pod(name: &str, claim: &str, script: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
        "spec": {"restartPolicy": "Never", "hostNetwork": true, "automountServiceAccountToken": false,
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", script],
                                 "volumeMounts": [{"name": "data", "mountPath": "/mnt/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

async fn get_claim(client: &Client, name: &str) -> PersistentVolumeClaim {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .expect("get claim")
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> String {
    c.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

/// Waits for the pod to finish; returns its phase and node.
async fn finished(client: &Client, name: &str) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    common::wait_for(&format!("pod {name} to finish"), WAIT, || async {
        let p = pods.get(name).await.ok()?;
        let phase = p.status.as_ref().and_then(|s| s.phase.clone())?;
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some((phase, node))
    })
    .await
}

async fn delete_pod(client: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let _ = pods.delete(name, &DeleteParams::default()).await;
    common::wait_for(&format!("pod {name} to go"), WAIT, || async {
        matches!(pods.get(name).await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
}

async fn volume_gone(client: &Client, name: &str) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    common::wait_for(&format!("volume {name} to be deleted"), WAIT, || async {
        matches!(pvs.get(name).await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;
}

fn local_path_of(pv: &PersistentVolume) -> PathBuf {
    PathBuf::from(
        pv.spec
            .as_ref()
            .and_then(|s| s.local.as_ref())
            .map(|l| l.path.clone())
            .expect("a local volume"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_provision_keep_data_and_reclaim() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the node agents need root (cgroups)");
    let cgroup = CgroupParent::new();
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let dir = tempfile::tempdir().expect("test dir");
    let kubectl = Kubectl {
        kubeconfig: server.kubeconfig(),
        dir: dir.path().to_path_buf(),
    };
    let scheduler_client = server.client().await;
    let scheduler =
        common::Background::start(|shutdown| scheduler::run(scheduler_client, scheduler::Config::default(), shutdown));
    let controller_client = server.client().await;
    let controller = common::Background::start(|shutdown| volume::run(controller_client, shutdown));
    let agents = [
        start_agent(&server, "n1", dir.path(), &cgroup),
        start_agent(&server, "n2", dir.path(), &cgroup),
    ];
    let nodes: Api<Node> = Api::all(client.clone());
    common::wait_for("both nodes Ready", WAIT, || async {
        let list = nodes.list(&Default::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 2).then_some(())
    })
    .await;
    // As `rudder up` creates it.
    rudder_control::up::apply_default_storage_class(&client)
        .await
        .expect("the default class");
    let sc_table = kubectl.ok(&["get", "sc"]);
    assert!(
        sc_table.contains("local-path (default)")
            && sc_table.contains("rudder.dev/local-path")
            && sc_table.contains("WaitForFirstConsumer"),
        "{sc_table}"
    );

    // The default class is filled in; the claim waits for its first consumer.
    kubectl.apply(&claim("data", None, None));
    let c = get_claim(&client, "data").await;
    assert_eq!(
        c.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()),
        Some("local-path")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = get_claim(&client, "data").await;
    assert_eq!(phase_of_claim(&c), "Pending", "no pod uses it yet");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    assert!(pvs.list(&Default::default()).await.expect("list").items.is_empty());

    // The first pod: scheduled, the claim provisioned on its node and bound, data written.
    kubectl.apply(&pod("writer", "data", "echo hello > /mnt/data/greeting"));
    let (phase, node) = finished(&client, "writer").await;
    assert_eq!(phase, "Succeeded");
    let c = get_claim(&client, "data").await;
    assert_eq!(phase_of_claim(&c), "Bound");
    let uid = c.metadata.uid.clone().expect("uid");
    let pv_name = format!("pvc-{uid}");
    assert_eq!(
        c.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some(pv_name.as_str())
    );
    assert_eq!(
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("volume.kubernetes.io/selected-node")),
        Some(&node)
    );
    let pv = pvs.get(&pv_name).await.expect("the provisioned volume");
    assert_eq!(local_path::location(&pv).map(|(n, _)| n), Some(node.clone()));
    let agent = agents.iter().find(|a| a.name == node).expect("the pod's node");
    let path = local_path_of(&pv);
    assert!(path.starts_with(agent.root.join("local-path")), "{path:?}");
    assert_eq!(
        std::fs::read_to_string(path.join("greeting")).expect("the pod's file on the node"),
        "hello\n"
    );
    let pvc_table = kubectl.ok(&["get", "pvc", "data"]);
    assert!(
        pvc_table.contains("Bound")
            && pvc_table.contains(&pv_name)
            && pvc_table.contains("64Mi")
            && pvc_table.contains("RWO"),
        "{pvc_table}"
    );
    let pv_table = kubectl.ok(&["get", "pv"]);
    assert!(
        pv_table.contains("default/data") && pv_table.contains("Delete") && pv_table.contains("Bound"),
        "{pv_table}"
    );

    // The next pod reads it, on the same node (the volume's node affinity).
    delete_pod(&client, "writer").await;
    kubectl.apply(&pod("reader", "data", "test \"$(cat /mnt/data/greeting)\" = hello"));
    let (phase, reader_node) = finished(&client, "reader").await;
    assert_eq!((phase.as_str(), reader_node.as_str()), ("Succeeded", node.as_str()));
    delete_pod(&client, "reader").await;

    // Delete: the volume and its directory go with the claim.
    kubectl.ok(&["delete", "pvc", "data"]);
    volume_gone(&client, &pv_name).await;
    common::wait_for("the volume's directory to be removed", WAIT, || async {
        (!path.exists()).then_some(())
    })
    .await;

    // Retain: the volume is Released and keeps its data.
    kubectl.apply(&json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "keep"}, "provisioner": local_path::PROVISIONER,
        "reclaimPolicy": "Retain", "volumeBindingMode": "WaitForFirstConsumer"}));
    kubectl.apply(&claim("kept", Some("keep"), None));
    kubectl.apply(&pod("keeper", "kept", "echo kept > /mnt/data/file"));
    assert_eq!(finished(&client, "keeper").await.0, "Succeeded");
    let kept = get_claim(&client, "kept").await;
    let kept_pv = format!("pvc-{}", kept.metadata.uid.clone().expect("uid"));
    delete_pod(&client, "keeper").await;
    kubectl.ok(&["delete", "pvc", "kept"]);
    let released = common::wait_for("the retained volume to be Released", WAIT, || async {
        let pv = pvs.get(&kept_pv).await.ok()?;
        (pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")).then_some(pv)
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(local_path_of(&released).join("file")).expect("retained data"),
        "kept\n"
    );

    // A static volume, bound by name, used by a pod on any node.
    let static_dir = dir.path().join("static");
    let static_pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "static-pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "hostPath": {"path": static_dir.to_str().expect("utf-8")}}});
    kubectl.apply(&static_pv);
    kubectl.apply(&claim("static", Some(""), Some("static-pv")));
    common::wait_for("the static claim to bind", WAIT, || async {
        (phase_of_claim(&get_claim(&client, "static").await) == "Bound").then_some(())
    })
    .await;
    let pv = pvs.get("static-pv").await.expect("static pv");
    assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    kubectl.apply(&pod("static-user", "static", "echo static > /mnt/data/s"));
    assert_eq!(finished(&client, "static-user").await.0, "Succeeded");
    assert_eq!(
        std::fs::read_to_string(static_dir.join("s")).expect("written through the static volume"),
        "static\n"
    );
    delete_pod(&client, "static-user").await;

    // Invalid claims are refused with each field named.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "bad", "namespace": NS},
            "spec": {"volumeMode": "Disk"}})
        .to_string(),
    )
    .expect("write");
    let (ok, _, err) = kubectl.run(&["create", "-f", bad.to_str().expect("utf-8")]);
    assert!(!ok);
    for want in [
        "spec.accessModes: Required value",
        "spec.resources.requests[storage]: Required value",
        "spec.volumeMode: Unsupported value: \"Disk\"",
    ] {
        assert!(err.contains(want), "{want:?} missing from {err}");
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let mut invalid: PersistentVolumeClaim = serde_json::from_value(claim("bad", None, None)).expect("claim");
    invalid.spec.as_mut().expect("spec").access_modes = Some(vec![]);
    match api.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (422, "Invalid")),
        other => panic!("an invalid claim was not refused: {other:?}"),
    }

    controller.stop(WAIT).await;
    scheduler.stop(WAIT).await;
    drop(agents);
    drop(cgroup);
    server.running.stop().await;
}
