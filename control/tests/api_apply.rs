//! Server-side apply with field ownership, through real clients: kubectl 1.27, 1.33 and
//! 1.37 (`apply --server-side`, conflicts, `--force-conflicts`, `scale`, the upgrade from
//! client-side apply) and kube-rs (`Patch::Apply`, 409 causes, `force`, pruning).

mod common;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn deployment(name: &str, replicas: i64) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: web, image: "nginx:1.27", ports: [{{containerPort: 8080}}]}}]
"#
    )
}

/// The managedFields entry of `manager`, from `kubectl get -o json --show-managed-fields`.
fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_server_side_conflicts_force_and_upgrade() {
    let server = common::TestServer::start().await;
    let kubeconfig = server.kubeconfig();
    let mut report = Vec::new();
    for minor in [27, 33, 37] {
        let cache = server.dir.path().join(format!("cache-{minor}"));
        let kc = kubeconfig.clone();
        let dir = server.dir.path().to_path_buf();
        let line = tokio::task::spawn_blocking(move || {
            let run = |args: &[&str]| common::run_kubectl(minor, &kc, &cache, args);
            let ns = format!("ssa{minor}");
            let file = |name: &str, text: String| {
                let path = dir.join(format!("{name}-{minor}.yaml"));
                std::fs::write(&path, text).expect("manifest");
                path.to_string_lossy().into_owned()
            };
            let (ok, _, err) = run(&["create", "namespace", &ns]);
            assert!(ok, "kubectl 1.{minor} create namespace: {err}");

            // Manager `alpha` applies; `other` asks for different replicas: refused.
            let two = file("web2", deployment("web", 2));
            let (ok, out, err) = run(&["apply", "--server-side", "--field-manager=alpha", "-n", &ns, "-f", &two]);
            assert!(
                ok && out.contains("serverside-applied"),
                "kubectl 1.{minor} apply: {out} {err}"
            );
            let five = file("web5", deployment("web", 5));
            let (ok, out, err) = run(&[
                "apply",
                "--server-side",
                "--field-manager=other",
                "-n",
                &ns,
                "-f",
                &five,
            ]);
            assert!(!ok, "kubectl 1.{minor}: a conflicting apply must fail: {out}");
            assert!(
                err.contains(r#"conflict with "alpha""#) && err.contains(".spec.replicas"),
                "kubectl 1.{minor} shows the manager and field: {err}"
            );
            assert!(err.contains("--force-conflicts"), "kubectl's advice follows: {err}");
            let conflict_text = err.lines().next().unwrap_or_default().to_owned();

            // Forced, `other` takes the field; alpha keeps the rest.
            let (ok, out, err) = run(&[
                "apply",
                "--server-side",
                "--field-manager=other",
                "--force-conflicts",
                "-n",
                &ns,
                "-f",
                &five,
            ]);
            assert!(ok, "kubectl 1.{minor} --force-conflicts: {out} {err}");
            let (ok, out, err) = run(&["get", "deploy", "web", "-n", &ns, "-o", "json", "--show-managed-fields"]);
            assert!(ok, "{err}");
            let obj: Value = serde_json::from_str(&out).expect("json");
            assert_eq!(obj["spec"]["replicas"], 5);
            let other = entry(&obj, "other").expect("other's entry");
            assert_eq!(other["operation"], "Apply");
            assert_eq!(other["fieldsV1"]["f:spec"]["f:replicas"], json!({}), "{other}");
            let alpha = entry(&obj, "alpha").expect("alpha's entry");
            assert!(alpha["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "{alpha}");
            assert!(alpha["fieldsV1"]["f:spec"]["f:template"].is_object(), "{alpha}");
            let (ok, out, _) = run(&["get", "deploy", "web", "-n", &ns, "-o", "yaml", "--show-managed-fields"]);
            assert!(
                ok && out.contains("manager: other") && out.contains("f:replicas: {}"),
                "{out}"
            );

            // `kubectl scale` is an update: it takes replicas; `other` re-applying 5 conflicts with it.
            let (ok, _, err) = run(&["scale", "deploy", "web", "-n", &ns, "--replicas=7"]);
            assert!(ok, "kubectl 1.{minor} scale: {err}");
            let (ok, _, err) = run(&[
                "apply",
                "--server-side",
                "--field-manager=other",
                "-n",
                &ns,
                "-f",
                &five,
            ]);
            assert!(
                !ok && err.contains(".spec.replicas"),
                "kubectl 1.{minor} after scale: {err}"
            );
            let scale_conflict = err.lines().next().unwrap_or_default().to_owned();
            assert!(
                scale_conflict.contains("with subresource \"scale\""),
                "{scale_conflict}"
            );

            // Client-side apply first, then the upgrade to server-side apply with a change.
            let csa = file("csa", deployment("csa", 1));
            let (ok, out, err) = run(&["apply", "-n", &ns, "-f", &csa]);
            assert!(
                ok && out.contains("created"),
                "kubectl 1.{minor} client-side apply: {out} {err}"
            );
            let csa3 = file("csa3", deployment("csa", 3));
            let (ok, out, err) = run(&["apply", "--server-side", "-n", &ns, "-f", &csa3]);
            assert!(
                ok && out.contains("serverside-applied"),
                "kubectl 1.{minor} upgrade: {out} {err}"
            );
            let (ok, out, err) = run(&["get", "deploy", "csa", "-n", &ns, "-o", "json", "--show-managed-fields"]);
            assert!(ok, "{err}");
            let obj: Value = serde_json::from_str(&out).expect("json");
            assert_eq!(obj["spec"]["replicas"], 3);
            let kubectl = entry(&obj, "kubectl").expect("kubectl's apply entry");
            assert_eq!(kubectl["operation"], "Apply");
            assert_eq!(kubectl["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
            let last: Value = serde_json::from_str(
                obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                    .as_str()
                    .unwrap_or("{}"),
            )
            .expect("last-applied is JSON");
            assert_eq!(
                last["spec"]["replicas"], 3,
                "the annotation follows the server-side apply"
            );
            // And back to client-side apply, which diffs against that annotation.
            let csa4 = file("csa4", deployment("csa", 4));
            let (ok, out, err) = run(&["apply", "-n", &ns, "-f", &csa4]);
            assert!(
                ok && out.contains("configured"),
                "kubectl 1.{minor} client-side again: {out} {err}"
            );
            let (_, out, _) = run(&["get", "deploy", "csa", "-n", &ns, "-o", "jsonpath={.spec.replicas}"]);
            assert_eq!(out, "4");
            format!("kubectl 1.{minor}: {conflict_text} | after scale: {scale_conflict}")
        })
        .await
        .expect("kubectl steps");
        report.push(line);
    }
    for line in report {
        eprintln!("{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_apply_conflicts_force_and_removal() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let config = |replicas: i64, labels: Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
            }
        })
    };
    let a = PatchParams::apply("a");
    let created = deployments
        .patch(
            "web",
            &a,
            &Patch::Apply(config(2, json!({"app": "web", "tier": "front"}))),
        )
        .await
        .expect("a's first apply creates");
    let fields = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].manager.as_deref(), Some("a"));
    assert_eq!(fields[0].operation.as_deref(), Some("Apply"));

    // Re-applying the same configuration changes nothing, not even the resourceVersion.
    let again = deployments
        .patch(
            "web",
            &a,
            &Patch::Apply(config(2, json!({"app": "web", "tier": "front"}))),
        )
        .await
        .expect("no-op apply");
    assert_eq!(again.metadata.resource_version, created.metadata.resource_version);

    // b wants other replicas: 409 Conflict with one cause naming a and the field.
    let b = PatchParams::apply("b");
    let other =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    let err = deployments
        .patch("web", &b, &Patch::Apply(other.clone()))
        .await
        .expect_err("conflict");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
    );
    let causes = status.details.expect("details").causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".spec.replicas");
    assert_eq!(causes[0].message, "conflict with \"a\"");

    // Forced, b owns replicas; a no longer does.
    let taken = deployments
        .patch("web", &b.clone().force(), &Patch::Apply(other))
        .await
        .expect("forced apply");
    assert_eq!(taken.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let fields = taken.metadata.managed_fields.unwrap_or_default();
    let owns_replicas = |who: &str| {
        fields
            .iter()
            .find(|e| e.manager.as_deref() == Some(who))
            .and_then(|e| e.fields_v1.as_ref())
            .is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
    };
    assert!(owns_replicas("b") && !owns_replicas("a"));

    // a drops the `tier` label (and no longer asks for replicas): the label goes, replicas stay b's.
    let dropped = config(2, json!({"app": "web"}));
    let mut dropped = dropped;
    dropped["spec"].as_object_mut().expect("spec").remove("replicas");
    let after = deployments
        .patch("web", &a, &Patch::Apply(dropped))
        .await
        .expect("apply without the label");
    let labels = after.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key("tier") && labels.get("app").map(String::as_str) == Some("web"),
        "{labels:?}"
    );
    assert_eq!(after.spec.and_then(|s| s.replicas), Some(3));

    // A plain create by kube-rs is an Update owned by its field manager.
    let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("settings".into());
    cm.data = Some([("a".to_owned(), "1".to_owned())].into());
    let pp = PostParams {
        field_manager: Some("my-operator".into()),
        ..Default::default()
    };
    let made = configmaps.create(&pp, &cm).await.expect("create");
    let fields = made.metadata.managed_fields.unwrap_or_default();
    assert_eq!(fields[0].manager.as_deref(), Some("my-operator"));
    assert_eq!(fields[0].operation.as_deref(), Some("Update"));
    assert_eq!(
        fields[0].fields_v1.as_ref().map(|f| f.0.clone()),
        Some(json!({"f:data": {"f:a": {}}}))
    );
    // Applying the same value shares the field; a different one conflicts with the updater.
    let shared = configmaps
        .patch(
            "settings",
            &PatchParams::apply("c"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}}),
            ),
        )
        .await
        .expect("same value, no conflict");
    assert_eq!(shared.metadata.managed_fields.map(|f| f.len()), Some(2));
    let err = configmaps
        .patch(
            "settings",
            &PatchParams::apply("c"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "2"}}),
            ),
        )
        .await
        .expect_err("conflict with the creator");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}")
    };
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"my-operator\" using v1: .data.a"
    );
}
