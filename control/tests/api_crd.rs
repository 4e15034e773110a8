//! CustomResourceDefinitions through real clients: kube-rs with `#[derive(CustomResource)]`,
//! kubectl 1.27, 1.33 and 1.37, and the Python client's CustomObjectsApi and DynamicClient.

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResource, CustomResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        wait::{await_condition, conditions},
        watcher,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

fn default_color() -> String {
    "blue".into()
}

/// A namespaced custom resource with status and scale subresources and printer columns.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "rudder.test",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wg",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas")
)]
pub struct WidgetSpec {
    replicas: i32,
    #[serde(default = "default_color")]
    color: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct WidgetStatus {
    replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selector: Option<String>,
}

fn api_status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_derive_crd_validated_watched_status_and_scale() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .expect("create the CRD");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(crds.clone(), "widgets.rudder.test", conditions::is_crd_established()),
    )
    .await
    .expect("Established within 20 s")
    .expect("wait for Established");
    let crd = crds.get("widgets.rudder.test").await.expect("get the CRD");
    let status = crd.status.expect("CRD status");
    let conds = status.conditions.unwrap_or_default();
    for ty in ["NamesAccepted", "Established"] {
        assert!(
            conds.iter().any(|c| c.type_ == ty && c.status == "True"),
            "{ty}: {conds:?}"
        );
    }
    assert_eq!(status.accepted_names.map(|n| n.kind).as_deref(), Some("Widget"));
    assert_eq!(status.stored_versions, Some(vec!["v1".to_owned()]));

    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let watch = watcher(widgets.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);

    let mut w = Widget::new(
        "first",
        WidgetSpec {
            replicas: 2,
            color: "red".into(),
        },
    );
    w.status = Some(WidgetStatus {
        replicas: 9,
        selector: None,
    });
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create a Widget");
    assert!(
        created.status.is_none(),
        "status is ignored on create through the main resource"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let seen = tokio::time::timeout(Duration::from_secs(10), watch.try_next())
        .await
        .expect("watch event in time")
        .expect("watch")
        .expect("an object");
    assert_eq!(seen.metadata.name.as_deref(), Some("first"));

    // Defaulting and pruning, through an untyped client.
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rudder.test", "v1", "Widget"));
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let raw: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rudder.test/v1", "kind": "Widget", "metadata": {"name": "second"},
        "spec": {"replicas": 1, "unknown": "dropped"}, "extra": true,
    }))
    .expect("object");
    let stored = dynamic
        .create(&PostParams::default(), &raw)
        .await
        .expect("create untyped");
    assert_eq!(
        stored.data["spec"],
        json!({"replicas": 1, "color": "blue"}),
        "defaulted and pruned"
    );
    assert!(stored.data.get("extra").is_none(), "unknown top-level field pruned");

    // A bad object is refused with upstream's message naming the field.
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rudder.test/v1", "kind": "Widget", "metadata": {"name": "bad"},
        "spec": {"replicas": "string"},
    }))
    .expect("object");
    let (code, message) = api_status(dynamic.create(&PostParams::default(), &bad).await.expect_err("refused"));
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains(
            r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#
        ),
        "{message}"
    );
    let missing: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rudder.test/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {},
    }))
    .expect("object");
    let (code, message) = api_status(
        dynamic
            .create(&PostParams::default(), &missing)
            .await
            .expect_err("refused"),
    );
    assert!(
        code == 422 && message.contains("spec.replicas: Required value"),
        "{message}"
    );

    // The status subresource: /status changes only status, the main resource only the rest.
    let patched = widgets
        .patch_status(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}, "status": {"replicas": 2, "selector": "app=first"}})),
        )
        .await
        .expect("patch status");
    assert_eq!(patched.spec.replicas, 2, "spec ignored on /status");
    assert_eq!(patched.status.as_ref().map(|s| s.replicas), Some(2));
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "a status write is not a new generation"
    );
    let patched = widgets
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 100}})),
        )
        .await
        .expect("patch");
    assert_eq!(patched.spec.replicas, 3);
    assert_eq!(
        patched.status.as_ref().map(|s| s.replicas),
        Some(2),
        "status ignored on the main resource"
    );
    assert_eq!(patched.metadata.generation, Some(2));
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let w = watch.try_next().await.expect("watch").expect("object");
            if w.metadata.name.as_deref() == Some("first") && w.spec.replicas == 3 {
                return w;
            }
        }
    })
    .await
    .expect("the patch is watched");
    assert_eq!(ev.status.map(|s| s.replicas), Some(2));

    // Strategic merge is refused for custom objects, as upstream does.
    let (code, _) = api_status(
        widgets
            .patch(
                "first",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"replicas": 4}})),
            )
            .await
            .expect_err("strategic merge refused"),
    );
    assert_eq!(code, 415);

    // The scale subresource.
    let scale = widgets.get_scale("first").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let st = scale.status.expect("scale status");
    assert_eq!((st.replicas, st.selector.as_deref()), (2, Some("app=first")));
    widgets
        .patch_scale(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("patch scale");
    assert_eq!(widgets.get("first").await.expect("get").spec.replicas, 5);

    // Selectors.
    widgets
        .patch(
            "second",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "b"}}})),
        )
        .await
        .expect("label");
    let names =
        |l: kube::core::ObjectList<Widget>| l.items.into_iter().filter_map(|w| w.metadata.name).collect::<Vec<_>>();
    assert_eq!(
        names(
            widgets
                .list(&ListParams::default().labels("tier=b"))
                .await
                .expect("list")
        ),
        ["second"]
    );
    assert_eq!(
        names(
            widgets
                .list(&ListParams::default().fields("metadata.name=first"))
                .await
                .expect("list")
        ),
        ["first"]
    );

    // Deleting the CRD deletes its objects and stops serving the type.
    crds.delete("widgets.rudder.test", &DeleteParams::default())
        .await
        .expect("delete the CRD");
    common::wait_for("the CRD to go", Duration::from_secs(20), || {
        let crds = crds.clone();
        async move {
            crds.get_opt("widgets.rudder.test")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        }
    })
    .await;
    let (code, _) = api_status(
        widgets
            .list(&ListParams::default())
            .await
            .expect_err("no longer served"),
    );
    assert_eq!(code, 404);
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .expect("create again");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(crds.clone(), "widgets.rudder.test", conditions::is_crd_established()),
    )
    .await
    .expect("Established again")
    .expect("wait");
    assert!(
        widgets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "the old objects were deleted with their CRD"
    );
}

/// Two served versions (one storage), cluster scope, generateName and optimistic
/// concurrency, through kube-rs' untyped API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_cluster_scope_and_concurrency() {
    let server = common::TestServer::start().await;
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}});
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
    "metadata": {"name": "clusterthings.rudder.test"},
    "spec": {"group": "rudder.test", "scope": "Cluster",
        "names": {"plural": "clusterthings", "kind": "ClusterThing"},
        "versions": [
            {"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": schema}},
            {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}},
        ]}}))
    .expect("crd");
    crds.create(&PostParams::default(), &crd).await.expect("create");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(
            crds.clone(),
            "clusterthings.rudder.test",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("Established")
    .expect("wait");

    // Discovery lists both versions, v1 preferred.
    let group: serde_json::Value = client
        .request(
            http::Request::get("/apis/rudder.test")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("group discovery");
    assert_eq!(group["preferredVersion"]["version"], "v1");
    assert_eq!(group["versions"].as_array().map(Vec::len), Some(2));
    let list: serde_json::Value = client
        .request(
            http::Request::get("/apis/rudder.test/v1beta1")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("resource list");
    assert_eq!(list["resources"][0]["namespaced"], false);

    let gvk = |v: &str| ApiResource::from_gvk(&GroupVersionKind::gvk("rudder.test", v, "ClusterThing"));
    let beta: Api<DynamicObject> = Api::all_with(client.clone(), &gvk("v1beta1"));
    let ga: Api<DynamicObject> = Api::all_with(client.clone(), &gvk("v1"));
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rudder.test/v1beta1", "kind": "ClusterThing",
        "metadata": {"generateName": "thing-"}, "spec": {"size": 1},
    }))
    .expect("object");
    let created = beta
        .create(&PostParams::default(), &obj)
        .await
        .expect("create via v1beta1");
    let name = created.metadata.name.clone().expect("generated name");
    assert!(name.starts_with("thing-") && name.len() > 6, "{name}");
    assert_eq!(
        created.types.as_ref().map(|t| t.api_version.as_str()),
        Some("rudder.test/v1beta1")
    );
    let via_ga = ga.get(&name).await.expect("read via v1");
    assert_eq!(
        via_ga.types.as_ref().map(|t| t.api_version.as_str()),
        Some("rudder.test/v1")
    );
    assert_eq!(via_ga.data["spec"]["size"], 1);

    // A stale resourceVersion is a conflict.
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data["spec"]["size"] = json!(2);
    beta.replace(&name, &PostParams::default(), &fresh)
        .await
        .expect("replace");
    stale.data["spec"]["size"] = json!(3);
    let (code, _) = api_status(
        beta.replace(&name, &PostParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!(code, 409);

    // JSON patch, and a watch from v1 sees it in v1.
    let rv = ga.get(&name).await.expect("get").metadata.resource_version.expect("rv");
    let mut events = ga
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/size", "value": 4}])).expect("patch");
    beta.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .expect("json patch");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("event in time")
        .expect("event")
        .expect("ok");
    match ev {
        kube::api::WatchEvent::Modified(o) => {
            assert_eq!(o.types.map(|t| t.api_version), Some("rudder.test/v1".to_owned()));
            assert_eq!(o.data["spec"]["size"], 4);
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // Table output without printer columns has Name and Age.
    let table: serde_json::Value = client
        .request(
            http::Request::get("/apis/rudder.test/v1/clusterthings")
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("table");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, ["Name", "Age"]);
    assert_eq!(table["rows"][0]["cells"][0], json!(name));

    // OpenAPI v3 lists the group-version with the schema.
    let index: serde_json::Value = client
        .request(http::Request::get("/openapi/v3").body(Vec::new()).expect("request"))
        .await
        .expect("openapi index");
    let url = index["paths"]["apis/rudder.test/v1"]["serverRelativeURL"]
        .as_str()
        .expect("rudder.test/v1 in the index")
        .to_owned();
    let doc: serde_json::Value = client
        .request(http::Request::get(url).body(Vec::new()).expect("request"))
        .await
        .expect("openapi doc");
    assert_eq!(
        doc["components"]["schemas"]["test.rudder.v1.ClusterThing"]["properties"]["spec"]["properties"]["size"]["type"],
        "integer"
    );
}

const KUBECTL_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.rudder.test
spec:
  group: rudder.test
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: blue, enum: [blue, red]}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
"#;

const KUBECTL_OBJECTS: &str = r#"
apiVersion: rudder.test/v1
kind: Gadget
metadata: {name: small}
spec: {size: 3}
---
apiVersion: rudder.test/v1
kind: Gadget
metadata: {name: large}
spec: {size: 40, color: red}
"#;

const KUBECTL_BAD: &str = r#"
apiVersion: rudder.test/v1
kind: Gadget
metadata: {name: broken}
spec: {size: 0}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_crd_printer_columns_short_names_and_delete() {
    let server = common::TestServer::start().await;
    let kubeconfig = server.kubeconfig();
    let dir = server.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("manifest");
            p.to_string_lossy().into_owned()
        };
        let (crd, objects, bad) = (
            write("crd.yaml", KUBECTL_CRD),
            write("objects.yaml", KUBECTL_OBJECTS),
            write("bad.yaml", KUBECTL_BAD),
        );
        for minor in [27, 33, 37] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
            let (ok, _, err) = run(&["apply", "-f", &crd]);
            assert!(ok, "kubectl 1.{minor} apply CRD: {err}");
            let (ok, _, err) = run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/gadgets.rudder.test",
            ]);
            assert!(ok, "kubectl 1.{minor} wait Established: {err}");
            let (ok, _, err) = run(&["apply", "-f", &objects]);
            assert!(ok, "kubectl 1.{minor} apply objects: {err}");
            for resource in ["gadgets", "gd", "gadget.rudder.test"] {
                let (ok, out, err) = run(&["get", resource]);
                assert!(ok, "kubectl 1.{minor} get {resource}: {err}");
                let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
                assert_eq!(
                    header,
                    ["NAME", "SIZE", "COLOR", "AGE"],
                    "kubectl 1.{minor} get {resource}:\n{out}"
                );
                let row = |name: &str| {
                    out.lines()
                        .find(|l| l.starts_with(name))
                        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>())
                };
                assert_eq!(
                    row("small"),
                    Some(vec!["small", "3", "blue"]),
                    "defaulted color:\n{out}"
                );
                assert_eq!(row("large"), Some(vec!["large", "40", "red"]), "{out}");
            }
            let (ok, _, err) = run(&["apply", "-f", &bad]);
            assert!(
                !ok && err.contains("spec.size") && err.contains("greater than or equal to 1"),
                "kubectl 1.{minor} bad object: {err}"
            );
            // kubectl patch defaults to strategic merge, which custom objects refuse;
            // merge works.
            let (ok, _, err) = run(&[
                "patch",
                "gadget",
                "small",
                "--type=merge",
                "-p",
                r#"{"spec":{"size":5}}"#,
            ]);
            assert!(ok, "kubectl 1.{minor} patch --type=merge: {err}");
            let (ok, out, _) = run(&["get", "gd", "small", "-o", "jsonpath={.spec.size}"]);
            assert!(ok && out == "5", "patched size: {out}");
            let (ok, _, err) = run(&["delete", "crd", "gadgets.rudder.test", "--timeout=60s"]);
            assert!(ok, "kubectl 1.{minor} delete crd: {err}");
            let (ok, _, err) = run(&["get", "gadgets"]);
            assert!(
                !ok,
                "gadgets are no longer served after kubectl 1.{minor} delete crd: {err}"
            );
            // Recreated, the type starts empty: deleting the CRD deleted its objects.
            let (ok, _, err) = run(&["apply", "-f", &crd]);
            assert!(ok, "kubectl 1.{minor} apply CRD again: {err}");
            let (ok, _, err) = run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/gadgets.rudder.test",
            ]);
            assert!(ok, "kubectl 1.{minor} wait Established again: {err}");
            let (ok, out, err) = run(&["get", "gadgets", "-A", "-o", "name"]);
            assert!(
                ok && out.trim().is_empty(),
                "kubectl 1.{minor}: objects survived their CRD: {out} {err}"
            );
            let (ok, _, err) = run(&["delete", "crd", "gadgets.rudder.test"]);
            assert!(ok, "kubectl 1.{minor} delete crd: {err}");
        }
    })
    .await
    .expect("kubectl runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_custom_objects_and_dynamic_client() {
    let server = common::TestServer::start().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/crd_test.py");
    let kubeconfig = server.kubeconfig();
    let python = common::venv_python();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .arg("120")
            .arg(&python)
            .arg(&script)
            .env("KUBECONFIG", &kubeconfig)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run python")
    })
    .await
    .expect("python runner");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "tests/python/crd_test.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
