//! `apps/v1` StatefulSets and ControllerRevisions as the API server serves them (no
//! controller runs here): upstream's defaults, kubectl's table columns, the scale
//! subresource, 422s naming the field, the fields an update may not change, and revisions
//! listed with their controller. Driven by kube-rs and real kubectl 1.27 and 1.33.

mod common;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "busybox:1.36", command: [sleep, "3600"]}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Mi}}
"#;

fn set(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        },
    })
}

/// The fields a 422 names, or the error when it is not a 422.
fn invalid_fields(err: kube::Error) -> Vec<String> {
    match err {
        kube::Error::Api(status) if status.code == 422 => {
            let body = serde_json::to_value(&status).unwrap_or_default();
            assert_eq!(status.reason, "Invalid", "{body}");
            body["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["field"].as_str().map(str::to_owned))
                .collect()
        }
        other => panic!("expected a 422, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_default_validate_scale_and_list_revisions() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");

    // Upstream's defaults, as kube-rs reads them back.
    let created: StatefulSet = sets
        .create(
            &PostParams::default(),
            &serde_json::from_value(set("db")).expect("typed"),
        )
        .await
        .expect("create");
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
    assert_eq!(spec.revision_history_limit, Some(10));
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(strategy.rolling_update.as_ref().and_then(|r| r.partition), Some(0));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .expect("retention");
    assert_eq!(
        (retention.when_deleted.as_deref(), retention.when_scaled.as_deref()),
        (Some("Retain"), Some("Retain"))
    );
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.status.as_ref().map(|s| s.replicas), Some(0));

    // 422s naming each field.
    let mut bad = set("bad");
    bad["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    bad["spec"]["replicas"] = json!(-1);
    bad["spec"]["podManagementPolicy"] = json!("Sometimes");
    bad["spec"]["updateStrategy"] = json!({"type": "Replace"});
    let err = sets
        .create(&PostParams::default(), &serde_json::from_value(bad).expect("typed"))
        .await
        .expect_err("invalid");
    let fields = invalid_fields(err);
    for want in [
        "spec.template.metadata.labels",
        "spec.replicas",
        "spec.podManagementPolicy",
        "spec.updateStrategy",
    ] {
        assert!(fields.iter().any(|f| f == want), "{want} missing from {fields:?}");
    }

    // Only upstream's list of fields may change: the image and replicas may, the
    // management policy may not.
    let patch = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}});
    let patched = sets
        .patch("db", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("replicas and template may change");
    assert_eq!(patched.metadata.generation, Some(2));
    let err = sets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podManagementPolicy": "Parallel"}})),
        )
        .await
        .expect_err("immutable");
    assert_eq!(invalid_fields(err), ["spec"]);

    // Revisions are plain objects with a controller; kubectl prints it.
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let revision = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "db-5d8f7c9b4", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": uid, "controller": true}]},
        "data": {"spec": {"template": {"$patch": "replace"}}},
        "revision": 1,
    });
    revisions
        .create(
            &PostParams::default(),
            &serde_json::from_value(revision.clone()).expect("typed"),
        )
        .await
        .expect("create a revision");
    let err = revisions
        .patch(
            "db-5d8f7c9b4",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"spec": {"replicas": 1}}})),
        )
        .await
        .expect_err("data is immutable");
    assert_eq!(invalid_fields(err), ["data"]);

    // kubectl: apply (twice: a re-apply must not trip the immutable fields), the table
    // columns, scale, `get all`, and the revision's controller.
    let kubeconfig = server.kubeconfig();
    let manifest = server.dir.path().join("web.yaml");
    std::fs::write(&manifest, MANIFEST).expect("manifest");
    let dir = server.dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        for minor in [27, 33] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
            let ns = format!("k{minor}");
            let (ok, _, err) = run(&["create", "namespace", &ns]);
            assert!(ok, "create namespace: {err}");
            let file = manifest.to_str().unwrap_or_default();
            for _ in 0..2 {
                let (ok, out, err) = run(&["apply", "-n", &ns, "-f", file]);
                assert!(ok, "kubectl 1.{minor} apply: {out} {err}");
            }
            let (ok, out, err) = run(&["get", "-n", &ns, "sts"]);
            assert!(ok, "kubectl 1.{minor} get sts: {err}");
            let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
            assert_eq!(header, ["NAME", "READY", "AGE"], "{out}");
            assert!(out.lines().any(|l| l.starts_with("web ") && l.contains("0/2")), "{out}");
            let (ok, out, _) = run(&["get", "-n", &ns, "statefulsets.apps", "-o", "wide"]);
            assert!(
                ok && out.contains("CONTAINERS") && out.contains("busybox:1.36"),
                "{out}"
            );

            let (ok, out, err) = run(&["scale", "-n", &ns, "sts/web", "--replicas=4"]);
            assert!(ok, "kubectl 1.{minor} scale: {out} {err}");
            let (ok, out, _) = run(&["get", "-n", &ns, "sts", "web", "-o", "jsonpath={.spec.replicas}"]);
            assert!(ok && out == "4", "replicas after scale: {out}");
            let (ok, out, _) = run(&["get", "-n", &ns, "all"]);
            assert!(ok && out.contains("statefulset.apps/web"), "get all: {out}");
            let (ok, out, _) = run(&[
                "get",
                "-n",
                &ns,
                "sts",
                "web",
                "-o",
                "jsonpath={.spec.volumeClaimTemplates[0].spec.volumeMode}",
            ]);
            assert!(ok && out == "Filesystem", "claim template defaults: {out}");

            let (ok, out, err) = run(&["get", "controllerrevisions", "-n", "default"]);
            assert!(ok, "kubectl 1.{minor} get controllerrevisions: {err}");
            let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
            assert_eq!(header, ["NAME", "CONTROLLER", "REVISION", "AGE"], "{out}");
            let row: Vec<&str> = out
                .lines()
                .find(|l| l.starts_with("db-"))
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            assert_eq!(row.get(1..3), Some(&["statefulset.apps/db", "1"][..]), "{out}");

            let (ok, _, err) = run(&[
                "patch",
                "-n",
                &ns,
                "sts",
                "web",
                "--type=merge",
                "-p",
                r#"{"spec":{"serviceName":"other"}}"#,
            ]);
            assert!(!ok && err.contains("Forbidden: updates to statefulset spec"), "{err}");
        }
    })
    .await
    .expect("kubectl checks");
}
