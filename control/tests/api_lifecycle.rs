//! Object lifecycles through the API: server-side apply, graceful pod deletion, finalizers,
//! namespace termination, and `rudder snapshot save|restore`.

mod common;
mod server_process;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn server_side_apply_creates_then_merges() {
    let server = common::TestServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let pp = PatchParams::apply("lifecycle-test");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    let created = cms
        .patch("ssa", &pp, &Patch::Apply(&first))
        .await
        .expect("apply creates");
    assert_eq!(
        created.data.as_ref().and_then(|d| d.get("a")).map(String::as_str),
        Some("1")
    );
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"b": "2"}});
    // Another manager: the first one's `a` stays (the same manager dropping it would
    // remove it, as upstream; tests/api_apply.rs covers that).
    let merged = cms
        .patch("ssa", &PatchParams::apply("lifecycle-test-2"), &Patch::Apply(&second))
        .await
        .expect("apply merges");
    let data = merged.data.unwrap_or_default();
    assert_eq!(
        (data.get("a").map(String::as_str), data.get("b").map(String::as_str)),
        (Some("1"), Some("2"))
    );
    println!("server-side apply: created, then merged a second field manager's apply");
    server.running.stop().await;
}

#[tokio::test]
async fn pods_on_a_node_terminate_gracefully_and_finalizers_hold_deletion() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("node"),
        )
        .await
        .expect("node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1"}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod")
    };
    pods.create(&PostParams::default(), &pod("bound", Some("n1")))
        .await
        .expect("bound pod");
    pods.create(&PostParams::default(), &pod("unbound", None))
        .await
        .expect("unbound pod");
    // The field selectors kubelets and schedulers use.
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .expect("list by node");
    assert_eq!(
        on_n1
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>(),
        ["bound"]
    );
    let unscheduled = pods
        .list(&ListParams::default().fields("spec.nodeName="))
        .await
        .expect("unscheduled");
    assert_eq!(
        unscheduled
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>(),
        ["unbound"]
    );
    let bad = pods
        .list(&ListParams::default().fields("spec.nope=x"))
        .await
        .expect_err("unsupported field");
    assert!(
        matches!(bad, kube::Error::Api(ref s) if s.code == 400 && s.message.contains("spec.nope")),
        "{bad:?}"
    );
    // JSON patch with a failing `test` op changes nothing.
    let jp: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/nodeName", "value": "n2"}, {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}])).expect("patch");
    let failed = pods
        .patch("bound", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect_err("test op fails");
    assert!(matches!(failed, kube::Error::Api(ref s) if s.code == 422), "{failed:?}");
    assert!(pods.get("bound").await.expect("get").metadata.labels.is_none());

    // Bound to a live node: marked, with the pod's grace period, until the node lets go.
    pods.delete("bound", &DeleteParams::default()).await.expect("delete");
    let marked = pods.get("bound").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("force");
    assert!(
        pods.get_opt("bound").await.expect("get").is_none(),
        "grace 0 removes it"
    );
    // Not on a node: gone at once.
    pods.delete("unbound", &DeleteParams::default()).await.expect("delete");
    assert!(pods.get_opt("unbound").await.expect("get").is_none());

    // A finalizer holds deletion until it is removed.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create");
    cms.delete("held", &DeleteParams::default()).await.expect("delete");
    assert!(
        cms.get("held")
            .await
            .expect("held")
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizer");
    assert!(
        cms.get_opt("held").await.expect("get").is_none(),
        "removing the last finalizer deletes"
    );

    // A namespace goes Terminating, takes its contents with it, and then disappears.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).expect("ns"),
        )
        .await
        .expect("ns");
    let in_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    in_ns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("cm"),
        )
        .await
        .expect("cm");
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete ns");
    // The namespace controller (which TestServer runs) empties it, then it goes.
    let mut gone = false;
    for _ in 0..300 {
        if namespaces.get_opt("doomed").await.expect("get").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "namespace still present after 30 s");
    assert!(in_ns.list(&ListParams::default()).await.expect("list").items.is_empty());
    println!(
        "lifecycle: graceful pod delete (30 s grace, then grace 0), immediate delete of unbound pod, finalizer hold, namespace termination"
    );
    server.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_and_restore_bring_back_the_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut server = server_process::ServerProcess::start(&data, &[]);
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    for i in 0..5 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("snap{i}")}})).expect("cm");
        cms.create(&PostParams::default(), &cm).await.expect("create");
    }
    server.kill9();
    let rudder = env!("CARGO_BIN_EXE_rudder");
    let snapshot = dir.path().join("backup.snap");
    let out = std::process::Command::new(rudder)
        .args(["snapshot", "save", "--data-dir"])
        .arg(&data)
        .arg(&snapshot)
        .output()
        .expect("rudder snapshot save");
    assert!(
        out.status.success(),
        "snapshot save: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let restored = dir.path().join("restored");
    let out = std::process::Command::new(rudder)
        .args(["snapshot", "restore", "--data-dir"])
        .arg(&restored)
        .arg(&snapshot)
        .output()
        .expect("rudder snapshot restore");
    assert!(
        out.status.success(),
        "snapshot restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restored store holds the objects; certificates come fresh with the new directory.
    let server = server_process::ServerProcess::start(&restored, &[]);
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for i in 0..5 {
        assert!(
            names.contains(&format!("snap{i}")),
            "snap{i} missing after restore: {names:?}"
        );
    }
    println!(
        "snapshot: saved {} bytes, restored into a new data dir, all 5 configmaps back",
        std::fs::metadata(&snapshot).map(|m| m.len()).unwrap_or(0)
    );
}
