//! The ReplicaSet and Deployment controllers (through `controllers::run_all`) against an
//! in-process `rudder server`, driven by kube-rs and real kubectl binaries. There is no
//! scheduler or node agent here, so the test plays the kubelet: every pod becomes Running
//! and Ready through `pods/status` shortly after it appears.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::{sync::oneshot, task::JoinHandle};

const NS: &str = "shop";
/// Generous: the test machine is a loaded 2-core VM.
const WAIT: Duration = Duration::from_secs(60);

/// Marks every pod of the namespace Running and Ready, as a kubelet would once its
/// containers started.
fn play_kubelet(client: Client, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NS);
        while !stop.load(Ordering::Relaxed) {
            let Ok(list) = pods.list(&ListParams::default()).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for p in list.items {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready"));
                if ready || p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let now = jiff::Timestamp::now().to_string();
                let status = json!({"status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                }});
                let _ = pods
                    .patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(status))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

struct Kubectl {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    /// Runs kubectl 1.`minor` with its own cache directory; (success, stdout, stderr).
    async fn run(&self, minor: u32, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(common::kubectl(minor));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join(format!("cache-{minor}")));
        cmd.args(["-n", NS]).args(args).env("HOME", &self.dir);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, minor: u32, args: &[&str]) -> String {
        let (ok, out, err) = self.run(minor, args).await;
        assert!(ok, "kubectl 1.{minor} {args:?} failed: {out} {err}");
        out
    }
}

/// Active (not terminating) pods whose labels include `app=<app>`.
async fn active_pods(client: &Client, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn controller_name(meta: &kube::api::ObjectMeta, kind: &str) -> Option<String> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true) && r.block_owner_deletion == Some(true) && r.kind == kind)
        .map(|r| r.name.clone())
}

async fn replicasets(client: &Client, app: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list replicasets")
        .items
}

fn revision(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get("deployment.kubernetes.io/revision")
        .cloned()
}

/// Waits until the Deployment's pods are exactly `n` ready pods of one ReplicaSet it
/// controls, with `spec.replicas` = n; returns that ReplicaSet.
async fn wait_settled(client: &Client, app: &str, n: usize) -> ReplicaSet {
    common::wait_for(&format!("{app}: {n} ready pods of one ReplicaSet"), WAIT, || async {
        let pods = active_pods(client, app).await;
        let rses = replicasets(client, app).await;
        let active: Vec<&ReplicaSet> = rses
            .iter()
            .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
            .collect();
        let [rs] = active.as_slice() else { return None };
        if rs.spec.as_ref().and_then(|s| s.replicas) != Some(n as i32)
            || controller_name(&rs.metadata, "Deployment").as_deref() != Some(app)
        {
            return None;
        }
        let owned = pods
            .iter()
            .filter(|p| controller_name(&p.metadata, "ReplicaSet") == Some(rs.name_any()))
            .count();
        (pods.len() == n && owned == n && pods.iter().all(is_ready)).then(|| (*rs).clone())
    })
    .await
}

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}},
        },
    }))
    .expect("deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_scale_and_roll_back_through_replicasets() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let (stop_controllers, stopped) = oneshot::channel::<()>();
    let controllers = tokio::spawn(rudder_control::controllers::run_all(
        server.client().await,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace"),
        )
        .await
        .expect("create namespace");
    let stop_kubelet = Arc::new(AtomicBool::new(false));
    let kubelet = play_kubelet(client.clone(), stop_kubelet.clone());
    let kubectl = Kubectl {
        kubeconfig: server.kubeconfig(),
        dir: server.dir.path().to_path_buf(),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);

    // 3 pods through one ReplicaSet, each with a controller reference.
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 3, "nginx:1.27", json!({"type": "RollingUpdate"})),
        )
        .await
        .expect("create deployment");
    let first = wait_settled(&client, "web", 3).await;
    let hash = first
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("pod-template-hash label");
    assert_eq!(first.name_any(), format!("web-{hash}"));
    assert_eq!(revision(&first.metadata).as_deref(), Some("1"));
    let out = kubectl
        .ok(33, &["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    // kubectl scale goes through the scale subresource; pods follow.
    let out = kubectl.ok(33, &["scale", "deployment", "web", "--replicas=5"]).await;
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(wait_settled(&client, "web", 5).await.name_any(), first.name_any());
    kubectl.ok(27, &["scale", "deployment/web", "--replicas=2"]).await;
    assert_eq!(wait_settled(&client, "web", 2).await.name_any(), first.name_any());
    let scale = kubectl
        .ok(
            27,
            &[
                "get",
                "--raw",
                &format!("/apis/apps/v1/namespaces/{NS}/deployments/web/scale"),
            ],
        )
        .await;
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("Scale JSON");
    assert_eq!(
        (scale["kind"].clone(), scale["spec"]["replicas"].clone()),
        (json!("Scale"), json!(2))
    );
    assert_eq!(scale["status"]["selector"], "app=web");

    // A Scale written back under a stale resourceVersion conflicts; a fresh one wins.
    let read = deployments.get_scale("web").await.expect("get scale");
    let mut grow = read.clone();
    grow.spec.get_or_insert_with(Default::default).replicas = Some(3);
    let written = deployments
        .replace_scale("web", &PostParams::default(), &grow)
        .await
        .expect("replace scale");
    assert_eq!(written.spec.and_then(|s| s.replicas), Some(3));
    match deployments.replace_scale("web", &PostParams::default(), &read).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a stale Scale was accepted: {other:?}"),
    }
    let d = deployments.get("web").await.expect("get deployment");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(wait_settled(&client, "web", 3).await.name_any(), first.name_any());
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("patch scale");
    assert_eq!(wait_settled(&client, "web", 2).await.name_any(), first.name_any());
    // Status writes by the controllers never moved the generation: only spec writes do
    // (create, two scales by kubectl, one by PUT, one by PATCH).
    let d = deployments.get("web").await.expect("get deployment");
    assert_eq!(d.metadata.generation, Some(5));

    // A new image rolls out through a second ReplicaSet; the first ends at 0.
    kubectl
        .ok(33, &["set", "image", "deployment/web", "c=nginx:1.28"])
        .await;
    let out = kubectl
        .ok(33, &["rollout", "status", "deployment/web", "--timeout=90s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let second = wait_settled(&client, "web", 2).await;
    assert_ne!(second.name_any(), first.name_any());
    assert_eq!(revision(&second.metadata).as_deref(), Some("2"));
    let rses = replicasets(&client, "web").await;
    assert_eq!(rses.len(), 2);
    let old = rses
        .iter()
        .find(|rs| rs.name_any() == first.name_any())
        .expect("old ReplicaSet kept");
    assert_eq!(old.spec.as_ref().and_then(|s| s.replicas), Some(0));
    let d = deployments.get("web").await.expect("get deployment");
    assert_eq!(revision(&d.metadata).as_deref(), Some("2"));
    let st = d.status.clone().expect("status");
    assert_eq!(
        (st.replicas, st.updated_replicas, st.available_replicas),
        (Some(2), Some(2), Some(2))
    );
    assert!(st.observed_generation >= d.metadata.generation);

    // Undo goes back to the first template: the same ReplicaSet, now revision 3.
    kubectl.ok(27, &["rollout", "undo", "deployment/web"]).await;
    let out = kubectl
        .ok(27, &["rollout", "status", "deployment/web", "--timeout=90s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let back = wait_settled(&client, "web", 2).await;
    assert_eq!(
        back.name_any(),
        first.name_any(),
        "undo reuses the first ReplicaSet (same hash)"
    );
    assert_eq!(revision(&back.metadata).as_deref(), Some("3"));
    let d = deployments.get("web").await.expect("get deployment");
    assert_eq!(revision(&d.metadata).as_deref(), Some("3"));
    let image = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers[0].image.clone());
    assert_eq!(image.as_deref(), Some("nginx:1.27"));

    // Recreate: the old pods are gone before any new one exists.
    deployments
        .create(
            &PostParams::default(),
            &deployment("batch", 2, "busybox:1", json!({"type": "Recreate"})),
        )
        .await
        .expect("create recreate deployment");
    let old_rs = wait_settled(&client, "batch", 2).await;
    let watching = Arc::new(AtomicBool::new(true));
    let overlap_watch = {
        let client = client.clone();
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut seen: Vec<BTreeSet<String>> = Vec::new();
            while watching.load(Ordering::Relaxed) {
                let api: Api<Pod> = Api::namespaced(client.clone(), NS);
                let pods = api
                    .list(&ListParams::default().labels("app=batch"))
                    .await
                    .expect("list pods")
                    .items;
                let hashes: BTreeSet<String> = pods
                    .iter()
                    .filter_map(|p| p.labels().get("pod-template-hash").cloned())
                    .collect();
                seen.push(hashes);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    deployments
        .patch("batch", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("new image");
    let new_rs = common::wait_for("batch: 2 ready pods of a new ReplicaSet", WAIT, || async {
        let rs = wait_settled(&client, "batch", 2).await;
        (rs.name_any() != old_rs.name_any()).then_some(rs)
    })
    .await;
    watching.store(false, Ordering::Relaxed);
    let seen = overlap_watch.await.expect("overlap watcher");
    assert!(
        seen.iter().all(|h| h.len() <= 1),
        "old and new pods at once: {:?}",
        seen.iter().filter(|h| h.len() > 1).collect::<Vec<_>>()
    );
    let hashes: BTreeMap<String, usize> = seen.iter().flatten().fold(BTreeMap::new(), |mut m, h| {
        *m.entry(h.clone()).or_default() += 1;
        m
    });
    assert!(
        hashes.len() == 2,
        "saw both generations of pods: {hashes:?} (new {})",
        new_rs.name_any()
    );

    stop_kubelet.store(true, Ordering::Relaxed);
    let _ = kubelet.await;
    let _ = stop_controllers.send(());
    tokio::time::timeout(Duration::from_secs(10), controllers)
        .await
        .expect("controllers stop")
        .expect("controllers task");
    server.running.stop().await;
}
