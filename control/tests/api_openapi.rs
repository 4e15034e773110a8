//! OpenAPI v2 and v3 through real clients: kubectl 1.27, 1.33 and 1.37 `explain` (v3, and
//! v2 protobuf where kubectl still can), their validation of manifests with unknown or
//! mistyped fields, `apply` computing its patch from the published schemas, and kube-rs
//! reading the documents (parsing the Pod schema as a typed OpenAPI v3 schema), their ETags
//! and their refresh when a CRD appears.

mod common;

use std::{path::Path, time::Instant};

use http::{Request, header};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.rudder.test}
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
            description: What the gadget should be.
            properties:
              size: {type: integer, minimum: 1, description: How big the gadget is.}
              color: {type: string}
"#;

const UNKNOWN_FIELD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: typo}
spec:
  replicas: 1
  replicass: 2
  selector: {matchLabels: {app: typo}}
  template:
    metadata: {labels: {app: typo}}
    spec:
      containers: [{name: c, image: busybox}]
"#;

const WRONG_TYPE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: wrongtype}
spec:
  replicas: three
  selector: {matchLabels: {app: wrongtype}}
  template:
    metadata: {labels: {app: wrongtype}}
    spec:
      containers: [{name: c, image: busybox}]
"#;

/// A Deployment with the given containers, for `apply`'s patch computation.
fn deployment(containers: &[(&str, &str)]) -> String {
    let list: Vec<String> = containers
        .iter()
        .map(|(name, value)| format!("{{name: {name}, image: busybox, env: [{{name: MODE, value: {value}}}]}}"))
        .collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: merged}}\nspec:\n  selector: {{matchLabels: {{app: merged}}}}\n  template:\n    metadata: {{labels: {{app: merged}}}}\n    spec:\n      containers: [{}]\n",
        list.join(", ")
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("manifest");
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_builtin_kinds_and_crds() {
    let server = common::TestServer::start().await;
    let kubeconfig = server.kubeconfig();
    let dir = server.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let crd = write(&dir, "crd.yaml", GADGET_CRD);
        for minor in [27, 33, 37] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);

            let (ok, out, err) = run(&["explain", "deployment.spec.replicas"]);
            assert!(ok, "kubectl 1.{minor} explain deployment.spec.replicas: {err}");
            assert!(
                out.contains("replicas") && out.contains("<integer>") && out.contains("Number of desired pods"),
                "kubectl 1.{minor} explain deployment.spec.replicas:\n{out}"
            );

            let (ok, out, err) = run(&["explain", "pods.spec.containers"]);
            assert!(ok, "kubectl 1.{minor} explain pods.spec.containers: {err}");
            for field in [
                "image\t<string>",
                "env\t<[]EnvVar>",
                "resources\t<ResourceRequirements>",
            ] {
                assert!(
                    out.contains(field),
                    "kubectl 1.{minor} explain pods.spec.containers lacks {field:?}:\n{out}"
                );
            }
            assert!(out.contains("name\t<string> -required-"), "required marker:\n{out}");

            let (ok, out, err) = run(&["explain", "services.spec.ports.targetPort"]);
            assert!(ok, "kubectl 1.{minor} explain an IntOrString: {err}");
            assert!(out.contains("<IntOrString>"), "kubectl 1.{minor}:\n{out}");

            let (ok, _, err) = run(&["apply", "-f", &crd]);
            assert!(ok, "kubectl 1.{minor} apply CRD: {err}");
            let (ok, _, err) = run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/gadgets.rudder.test",
            ]);
            assert!(ok, "kubectl 1.{minor} wait Established: {err}");
            let (ok, out, err) = run(&["explain", "gadgets.spec"]);
            assert!(ok, "kubectl 1.{minor} explain gadgets.spec: {err}");
            assert!(
                out.contains("What the gadget should be") && out.contains("size\t<integer>"),
                "kubectl 1.{minor} explain gadgets.spec:\n{out}"
            );
            let (ok, _, err) = run(&["delete", "crd", "gadgets.rudder.test", "--timeout=60s"]);
            assert!(ok, "kubectl 1.{minor} delete crd: {err}");

            // The same from the gnostic protobuf /openapi/v2, which every version can still
            // be asked to use.
            let (ok, out, err) = run(&["explain", "deployment.spec.replicas", "--output=plaintext-openapiv2"]);
            assert!(ok, "kubectl 1.{minor} explain from openapi v2: {err}");
            assert!(
                out.contains("<integer>") && out.contains("Number of desired pods"),
                "kubectl 1.{minor} explain from openapi v2:\n{out}"
            );
        }
    })
    .await
    .expect("kubectl runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_refuses_unknown_and_mistyped_fields() {
    let server = common::TestServer::start().await;
    let kubeconfig = server.kubeconfig();
    let dir = server.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let unknown = write(&dir, "unknown.yaml", UNKNOWN_FIELD);
        let wrong = write(&dir, "wrong.yaml", WRONG_TYPE);
        for minor in [27, 33, 37] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
            for verb in ["create", "apply"] {
                // The default is --validate=strict: kubectl finds `fieldValidation` on the
                // kind's PATCH operation in /openapi/v3 and lets the server refuse.
                let (ok, _, err) = run(&[verb, "-f", &unknown]);
                assert!(
                    !ok && err.contains(r#"unknown field "spec.replicass""#),
                    "kubectl 1.{minor} {verb} with an unknown field: {err}"
                );
                let (ok, _, err) = run(&[verb, "-f", &wrong]);
                assert!(
                    !ok && err.contains("Go struct field DeploymentSpec.spec.replicas of type int32"),
                    "kubectl 1.{minor} {verb} with a string for an integer: {err}"
                );
                // Warn: created, with the unknown field named in a warning (whose quotes the
                // Warning header's quoting turns into apostrophes).
                let (ok, _, err) = run(&[verb, "--validate=warn", "-f", &unknown]);
                assert!(
                    ok && err.contains("Warning: unknown field") && err.contains("spec.replicass"),
                    "kubectl 1.{minor} {verb} --validate=warn: {err}"
                );
                let (ok, _, err) = run(&["delete", "deployment", "typo"]);
                assert!(ok, "kubectl 1.{minor} delete: {err}");
            }
        }
    })
    .await
    .expect("kubectl runner");
}

/// Once a kind has a v3 schema, kubectl computes `apply`'s strategic merge patch from it:
/// removing a container and changing another's env must come out as the new list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_merges_lists_by_the_published_keys() {
    let server = common::TestServer::start().await;
    let kubeconfig = server.kubeconfig();
    let dir = server.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        for minor in [27, 33, 37] {
            let cache = dir.join(format!("cache-{minor}"));
            let run = |args: &[&str]| common::run_kubectl(minor, &kubeconfig, &cache, args);
            let first = write(&dir, "first.yaml", &deployment(&[("a", "one"), ("b", "one")]));
            let second = write(&dir, "second.yaml", &deployment(&[("b", "two")]));
            let (ok, _, err) = run(&["apply", "-f", &first]);
            assert!(ok, "kubectl 1.{minor} apply: {err}");
            let (ok, _, err) = run(&["apply", "-f", &second]);
            assert!(ok, "kubectl 1.{minor} apply again: {err}");
            let (ok, out, err) = run(&[
                "get",
                "deployment",
                "merged",
                "-o",
                "jsonpath={range .spec.template.spec.containers[*]}{.name}={.env[0].value};{end}",
            ]);
            assert!(ok, "kubectl 1.{minor} get: {err}");
            assert_eq!(out, "b=two;", "kubectl 1.{minor} applied containers");
            let (ok, _, err) = run(&["delete", "deployment", "merged"]);
            assert!(ok, "kubectl 1.{minor} delete: {err}");
        }
    })
    .await
    .expect("kubectl runner");
}

async fn get(client: &kube::Client, uri: &str, headers: &[(header::HeaderName, &str)]) -> http::Response<Vec<u8>> {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    let resp = client
        .send(req.body(kube::client::Body::from(Vec::new())).expect("request"))
        .await
        .expect("send");
    let (parts, body) = resp.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .expect("read body")
        .to_bytes()
        .to_vec();
    http::Response::from_parts(parts, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_reads_the_documents_with_etags() {
    let server = common::TestServer::start().await;
    let client = server.client().await;

    let started = Instant::now();
    let index = get(&client, "/openapi/v3", &[]).await;
    let first_index = started.elapsed();
    assert_eq!(index.status(), 200);
    let index: Value = serde_json::from_slice(index.body()).expect("index is JSON");
    let core_url = index["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .expect("api/v1 in the index")
        .to_owned();

    let started = Instant::now();
    let core = get(&client, &core_url, &[]).await;
    let core_time = started.elapsed();
    assert_eq!(core.status(), 200);
    assert_eq!(core.headers()[header::CACHE_CONTROL], "public, immutable");
    let etag = core.headers()[header::ETAG].to_str().expect("etag").to_owned();
    let doc: Value = serde_json::from_slice(core.body()).expect("api/v1 document is JSON");
    let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "", "version": "v1", "kind": "Pod"}])
    );
    let typed: JSONSchemaProps =
        serde_json::from_value(pod.clone()).expect("Pod schema parses as an OpenAPI v3 schema");
    let spec = &typed.properties.as_ref().expect("properties")["spec"];
    let all_of = spec.all_of.as_ref().expect("spec wraps its $ref in allOf");
    assert_eq!(
        all_of[0].ref_path.as_deref(),
        Some("#/components/schemas/io.k8s.api.core.v1.PodSpec")
    );
    assert!(
        doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["required"]
            .as_array()
            .is_some_and(|r| r.contains(&"containers".into()))
    );

    let again = get(&client, &core_url, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(again.status(), 304, "If-None-Match with the current ETag");
    let outdated = get(&client, "/openapi/v3/api/v1?hash=0123", &[]).await;
    assert_eq!(outdated.status(), 301);
    assert_eq!(outdated.headers()[header::LOCATION], core_url.as_str());

    let started = Instant::now();
    let v2 = get(&client, "/openapi/v2", &[(header::ACCEPT, "application/json")]).await;
    let v2_time = started.elapsed();
    assert_eq!(v2.status(), 200);
    let v2_doc: Value = serde_json::from_slice(v2.body()).expect("v2 JSON");
    assert_eq!(v2_doc["swagger"], "2.0");
    assert_eq!(
        v2_doc["definitions"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    let pb = get(
        &client,
        "/openapi/v2",
        &[(
            header::ACCEPT,
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )],
    )
    .await;
    assert_eq!(pb.status(), 200);
    assert!(pb.body().starts_with(b"\x0a\x032.0"), "a gnostic Document");
    let refused = get(&client, "/openapi/v2", &[(header::ACCEPT, "application/yaml")]).await;
    assert_eq!(refused.status(), 406);

    // A CRD adds its group-version to the index and its schema to v2.
    let crd: Value = serde_saphyr::from_str(GADGET_CRD).expect("CRD yaml");
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(client.clone());
    crds.create(&Default::default(), &serde_json::from_value(crd).expect("CRD"))
        .await
        .expect("create CRD");
    let url = common::wait_for("the CRD in /openapi/v3", std::time::Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let index: Value = serde_json::from_slice(get(&client, "/openapi/v3", &[]).await.body()).ok()?;
            index["paths"]["apis/rudder.test/v1"]["serverRelativeURL"]
                .as_str()
                .map(str::to_owned)
        }
    })
    .await;
    let gadgets: Value = serde_json::from_slice(get(&client, &url, &[]).await.body()).expect("CRD document");
    assert_eq!(
        gadgets["components"]["schemas"]["test.rudder.v1.Gadget"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Gadget"
    );
    let merged: Value = serde_json::from_slice(get(&client, "/openapi/v2", &[]).await.body()).expect("v2 JSON");
    assert!(merged["definitions"].get("test.rudder.v1.Gadget").is_some());
    assert!(merged["definitions"].get("io.k8s.api.core.v1.Pod").is_some());

    println!(
        "openapi sizes: api/v1 {} bytes, v2 JSON {} bytes, v2 protobuf {} bytes; \
         first /openapi/v3 {first_index:?} (generation included), api/v1 {core_time:?}, v2 JSON {v2_time:?}",
        core.body().len(),
        v2.body().len(),
        pb.body().len()
    );
}
